"""Read every released ConvNeXt checkpoint format into the backbone's (timm) parameter layout.

Formats, detected from the keys:

* ``official``: the official classification checkpoints, V1 and V2 (``{'model': state_dict}``; keys
  ``downsample_layers.i.j``, ``stages.i.j.dwconv/norm/pwconv1/pwconv2/gamma``, V2
  ``grn.gamma/beta``, final ``norm.*`` and ``head.*``). Mapped by timm's ``checkpoint_filter_fn``.
* ``fcmae``: V2 FCMAE pre-training checkpoints (sparse encoder: ``encoder.`` prefix, MinkowskiEngine
  kernels, ``.ln.``/``.linear.`` wrappers, (1, C) biases and GRN); the decoder is dropped.
* ``timm``: timm state dicts (``stem.*``, ``stages.i.blocks.j.*``, ``head.*``), and this backbone's
  own state dicts (the same plus ``out_norms.*``).
* ``fcmae-timm``: checkpoints of our FCMAE pre-training (:class:`backbones.FCMAE`): this backbone's
  layout under ``backbone.``; the decoder (``proj``, ``mask_token``, ``decoder.*``, ``pred``) is dropped.
* ``mmpretrain``: mmpretrain ConvNeXt (``depthwise_conv``, ``pointwise_conv1/2``, ``norm{i}``).
* ``transformers``: Hugging Face ``ConvNextModel``/``ConvNextV2Model``, ``ConvNextBackbone``/``ConvNextV2Backbone``
  and the ``*ForImageClassification`` models (``embeddings.``, ``encoder.stages.i.layers.j.``,
  ``hidden_states_norms.stageK``; ``convnext.``/``convnextv2.`` prefixes), read from a model folder or
  ``hf://`` name by :mod:`.huggingface`; ``transformers-dense``: ``UperNetForSemanticSegmentation`` with a
  ConvNeXt backbone, its heads renamed to mmseg's (``batch_norm`` -> ``bn``, ``classifier`` -> ``conv_seg``).
* any of the above inside a detector/segmentor checkpoint (``backbone.`` prefix, ``-dense`` in the
  format name): the official ConvNeXt COCO/ADE20K release (mmdet 2.x / mmseg 0.x, output norms
  ``backbone.norm{i}``), mmdet 3 / mmseg 1 checkpoints with an mmpretrain backbone, and checkpoints
  written with our own configs.

GRN parameters are reshaped to (C,) whatever their stored shape ((1, 1, 1, C) in classification
checkpoints, (1, C) in FCMAE ones, and (1, 1, 1, 1, 1, C) after the official remap script has
unsqueezed already 4-D tensors), so they never silently stay at their zero initialisation.

Keys that a checkpoint is expected to carry without the backbone using them (a classifier head and
final norm, an FCMAE decoder, a detector's neck and heads) and the output norms that classification
checkpoints cannot have are named in the load report; any other mismatch is an error that names the
first mismatched key and both shapes.
"""
import math
import re
from dataclasses import dataclass, field
from logging import Logger

import torch
from mmengine.runner.checkpoint import CheckpointLoader
from timm.models.convnext import ConvNeXt as TimmConvNeXt
from timm.models.convnext import checkpoint_filter_fn
from torch import nn

from ..errors import CheckpointError
from .huggingface import Arch, stored_arch, transformers_to_timm

StateDict = dict[str, torch.Tensor]

# Reasons in ConvertedWeights.leftovers that callers test for.
HEAD = 'classifier head and final norm'
FCMAE_DECODER = 'FCMAE decoder'
DENSE_PARTS = 'detector/segmentor parts (neck, heads)'
UNBUILT = 'stages/output norms not built (out_indices, norm_outputs)'
# The heads' output layers whose shapes follow the number of classes: Mask R-CNN's and Cascade's box
# classifiers and class-specific box regressors, the mask head's logits, UperNet's decode and auxiliary heads.
CLASS_LAYER = re.compile(r'(^|\.)(bbox_head(\.\d+)?\.(fc_cls|fc_reg)|mask_head(\.\d+)?\.conv_logits|'
                         r'(decode_head|auxiliary_head)(\.\d+)?\.conv_seg)\.(weight|bias)$')
FCMAE_DECODER_PREFIXES = ('decoder.', 'mask_token', 'proj.', 'pred.')
MMPRETRAIN_RENAMES = (('.depthwise_conv.', '.dwconv.'), ('.pointwise_conv1.', '.pwconv1.'),
                      ('.pointwise_conv2.', '.pwconv2.'))


@dataclass
class ConvertedWeights:
    """Backbone weights in this backbone's layout, and what was left out on the way.

    Attributes:
        source_format: Detected format (see the module docstring).
        backbone: Tensors named as in :class:`backbones.ConvNeXt` (``stem.*``, ``stages.*``,
            ``out_norms.*``).
        leftovers: Keys the backbone does not use, by reason (e.g. ``classifier head and final norm``).
        other: The non-backbone part of a detector/segmentor checkpoint (neck, heads), as stored.
    """
    source_format: str
    backbone: StateDict
    leftovers: dict[str, list[str]] = field(default_factory=dict)
    other: StateDict = field(default_factory=dict)
    arch: Arch | None = None


def unwrap_state_dict(checkpoint: dict) -> StateDict:
    """Return the state dict inside a checkpoint (``state_dict``, ``model`` or the dict itself)."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'Expected a checkpoint dict, got {type(checkpoint).__name__}.')
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state_dict = {k.removeprefix('module.'): v for k, v in checkpoint.items()}
    if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError("Not a model checkpoint: expected a dict of tensors, optionally under 'state_dict' "
                              "or 'model'.")
    return state_dict


def read_checkpoint(path: str) -> StateDict:
    """Read a local path or URL (``weights_only=True``) and return its state dict."""
    return unwrap_state_dict(CheckpointLoader.load_checkpoint(path, map_location='cpu'))


def _fcmae_to_official(encoder: StateDict) -> StateDict:
    """Densify a sparse FCMAE encoder: MinkowskiEngine kernels become conv weights.

    A Minkowski kernel stores one (in, out) matrix per kernel offset, offsets ordered with the width
    index outermost (offset = w * k + h): (k*k, in, out) for a convolution, (k*k, C) depthwise.
    """
    out = {}
    for key, value in encoder.items():
        key = key.replace('.ln.', '.').replace('.linear.', '.')
        if key.endswith('.kernel'):
            key = key.removesuffix('.kernel') + '.weight'
            size = math.isqrt(value.shape[0])
            if value.ndim == 3:  # (w, h, in, out) -> (out, in, h, w)
                value = value.reshape(size, size, *value.shape[1:]).permute(3, 2, 1, 0)
            else:  # depthwise (w, h, C) -> (C, 1, h, w)
                value = value.reshape(size, size, -1).permute(2, 1, 0).unsqueeze(1)
        elif key.endswith('.bias') and value.ndim == 2:
            value = value.reshape(-1)
        out[key] = value.contiguous()
    return out


def _official_shape_model(trunk: StateDict) -> nn.Module:
    """A parameter-less (meta) timm ConvNeXt of the arch stored in official-layout ``trunk``."""
    depths = [0, 0, 0, 0]
    for key in trunk:
        if match := re.match(r'stages\.(\d)\.(\d+)\.', key):
            depths[int(match[1])] = max(depths[int(match[1])], int(match[2]) + 1)
    dim_keys = ['downsample_layers.0.0.weight', *(f'downsample_layers.{i}.1.weight' for i in (1, 2, 3))]
    if 0 in depths or any(key not in trunk for key in dim_keys):
        raise CheckpointError('The checkpoint does not hold all four ConvNeXt stages (blocks and downsample layers).')
    dims = [trunk[key].shape[0] for key in dim_keys]
    use_grn = any('.grn.' in k for k in trunk)
    with torch.device('meta'):
        return TimmConvNeXt(num_classes=0, depths=depths, dims=dims, use_grn=use_grn,
                            ls_init_value=None if use_grn else 1.0)


def _official_to_timm(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """Map official-layout keys with timm's filter; ``norm{i}`` are output norms.

    Returns the converted tensors and the classifier keys left out.
    """
    head, trunk, out_norms = [], {}, {}
    for key, value in state_dict.items():
        if key.startswith(('head.', 'norm.')):
            head.append(key)
        elif match := re.match(r'norm(\d)\.(.*)', key):
            out_norms[f'out_norms.{match[1]}.{match[2]}'] = value
        else:
            trunk[key] = value
    # timm's filter reads the model's shape for 2-D tensors; give it a model of the stored arch.
    return {**checkpoint_filter_fn(trunk, _official_shape_model(trunk)), **out_norms}, head


def _mmpretrain_to_official(state_dict: StateDict) -> StateDict:
    renamed = {}
    for key, value in state_dict.items():
        for old, new in MMPRETRAIN_RENAMES:
            key = key.replace(old, new)
        renamed[key] = value
    # In an mmpretrain classifier, norm3 alone is the final norm after pooling, not an output norm.
    if {k.split('.')[0] for k in renamed if re.match(r'norm\d\.', k)} == {'norm3'}:
        renamed = {re.sub(r'^norm3\.', 'norm.', k): v for k, v in renamed.items()}
    return renamed


def convert_state_dict(state_dict: StateDict) -> ConvertedWeights:
    """Detect the format of ``state_dict`` and convert its backbone to this backbone's layout.

    Raises:
        CheckpointError: No ConvNeXt backbone was recognised.
    """
    if any(re.match(r'((convnext|convnextv2|backbone)\.)?embeddings\.patch_embeddings\.', k) for k in state_dict):
        backbone, head, heads = transformers_to_timm(state_dict)
        leftovers = {DENSE_PARTS: list(heads), HEAD: head}
        return ConvertedWeights('transformers' + ('-dense' if heads else ''), backbone,
                                {reason: names for reason, names in leftovers.items() if names}, heads,
                                stored_arch(backbone))
    leftovers: dict[str, list[str]] = {}
    other: StateDict = {}
    classifier_head: list[str] = []
    if any(k.startswith('backbone.') for k in state_dict):
        other = {k: v for k, v in state_dict.items() if not k.startswith('backbone.')}
        state_dict = {k.removeprefix('backbone.'): v for k, v in state_dict.items() if k.startswith('backbone.')}
        if all(k.startswith('head.') for k in other):  # an mmpretrain classifier, not a detector/segmentor
            classifier_head, other = list(other), {}
        elif all(k.startswith(FCMAE_DECODER_PREFIXES) for k in other):  # our FCMAE model (backbones.fcmae)
            leftovers[FCMAE_DECODER], other = list(other), {}
    dense = bool(other)
    if dense:
        leftovers[DENSE_PARTS] = list(other)

    keys = list(state_dict)
    if any(k.startswith('encoder.') for k in keys):
        source_format = 'fcmae'
        leftovers[FCMAE_DECODER] = [k for k in keys if k.startswith(FCMAE_DECODER_PREFIXES)]
        encoder = {k.removeprefix('encoder.'): v for k, v in state_dict.items() if k.startswith('encoder.')}
        backbone, head = _official_to_timm(_fcmae_to_official(encoder))
    elif any('.depthwise_conv.' in k for k in keys):
        source_format = 'mmpretrain'
        backbone, head = _official_to_timm(_mmpretrain_to_official(state_dict))
    elif any(k.startswith('downsample_layers.') for k in keys):
        source_format = 'official'
        backbone, head = _official_to_timm(state_dict)
    elif any(k.startswith('stem.') for k in keys) and any(k.startswith('stages.') for k in keys):
        source_format = 'fcmae-timm' if FCMAE_DECODER in leftovers else 'timm'
        head = [k for k in keys if k.startswith(('head.', 'norm_pre.'))]
        # timm builds V2 atto..nano with 1x1-conv MLPs; this backbone uses Linear layers.
        backbone = {k: v.flatten(1) if re.search(r'mlp\.fc\d\.weight$', k) and v.ndim == 4 else v
                    for k, v in state_dict.items() if k not in head}
    else:
        raise CheckpointError(
            f'No ConvNeXt backbone found in the checkpoint (first keys: {keys[:3]}). Supported: official V1/V2 '
            'classification, V2 FCMAE, timm, mmpretrain, and detector/segmentor checkpoints with these backbones.')
    leftovers[HEAD] = classifier_head + head
    return ConvertedWeights(source_format + ('-dense' if dense else ''), backbone,
                            {reason: names for reason, names in leftovers.items() if names}, other)


def check_compatible(weights: ConvertedWeights, backbone: nn.Module) -> list[str]:
    """Check ``weights.backbone`` against ``backbone``; return the keys it leaves initialised.

    Stages after the last of ``out_indices`` and output norms the backbone does not build (stages not
    in ``out_indices``, or ``norm_outputs=False``) are moved to ``weights.leftovers``. Only the output norms may be
    missing, and only when the checkpoint has none (classification and pre-training checkpoints).

    Raises:
        CheckpointError: A key without a place in ``backbone``, a shape mismatch, or a missing key,
            naming the first one and what to check.
    """
    expected = backbone.state_dict()
    given = weights.backbone
    unbuilt = [k for k in given if k not in expected and (
        re.match(r'stages\.\d\.', k) and int(k.split('.')[1]) >= len(backbone.stages)
        or re.match(r'out_norms\.\d\.', k))]
    if unbuilt:
        weights.leftovers[UNBUILT] = unbuilt
        weights.backbone = given = {k: v for k, v in given.items() if k not in unbuilt}
    arch = f'the backbone is {backbone.version} depths {backbone.depths} dims {backbone.dims}'
    wanted = Arch(backbone.version, list(backbone.depths), list(backbone.dims))
    if weights.arch is not None and weights.arch != wanted:
        raise CheckpointError(f'The checkpoint is {weights.arch} ({weights.source_format} format); the config builds '
                              f'{wanted}. Use the config of the checkpoint\'s arch, or a checkpoint of this one.')
    hint = _version_hint(given, expected)
    for key, value in given.items():
        if key not in expected:
            raise CheckpointError(f"Checkpoint key '{key}' {tuple(value.shape)} has no place in the backbone "
                                  f'({arch}).{hint} Check arch and version.')
        if value.shape != expected[key].shape:
            raise CheckpointError(f"Shape mismatch at '{key}': checkpoint {tuple(value.shape)}, backbone "
                                  f'{tuple(expected[key].shape)}; {arch}. Check arch: the checkpoint is for another.')
    missing = [k for k in expected if k not in given]
    has_out_norms = any(k.startswith('out_norms.') for k in given)
    not_allowed = [k for k in missing if has_out_norms or not k.startswith('out_norms.')]
    if not_allowed:
        key = not_allowed[0]
        raise CheckpointError(f"Backbone parameter '{key}' {tuple(expected[key].shape)} is missing from the "
                              f'checkpoint ({len(not_allowed)} missing in all; {arch}).{hint} Check arch and version.')
    return missing


def _version_hint(given: StateDict, expected: StateDict) -> str:
    has_grn, wants_grn = (any('.grn.' in k for k in d) for d in (given, expected))
    if has_grn and not wants_grn:
        return " The checkpoint is ConvNeXt V2 (GRN): set version='v2'."
    if wants_grn and not has_grn:
        return " The checkpoint is ConvNeXt V1 (no GRN): set version='v1'."
    return ''


def load_backbone_weights(backbone: nn.Module, path: str, logger: Logger) -> ConvertedWeights:
    """Load any supported checkpoint into a :class:`backbones.ConvNeXt` and log what did not match.

    Args:
        backbone: The backbone to load into.
        path: Local path or URL of the checkpoint.
        logger: Where the load report goes.

    Raises:
        CheckpointError: Unrecognised format, or keys/shapes that do not fit ``backbone``.
    """
    weights = convert_state_dict(read_checkpoint(path))
    left_initialised = check_compatible(weights, backbone)
    backbone.load_state_dict(weights.backbone, strict=False)
    logger.info(f'Loaded ConvNeXt backbone weights from {path} ({weights.source_format} format, '
                f'{len(weights.backbone)} tensors).')
    for reason, names in weights.leftovers.items():
        logger.info(f'  not used ({reason}): {len(names)} tensors, e.g. {names[0]}')
    if left_initialised:
        logger.info(f'  not in the checkpoint, newly initialised (output norms): {", ".join(left_initialised)}')
    return weights


def load_exactly(model: nn.Module, state_dict: StateDict, source: str, check: str) -> None:
    """Load ``state_dict`` into ``model`` strictly.

    Args:
        model: The module to load into.
        state_dict: Its weights, in ``model``'s own names.
        source: Where the weights come from, for the error (the path and format).
        check: What the user should check when a key does not fit.

    Raises:
        CheckpointError: The first missing, unexpected or mis-shaped key, in one line.
    """
    expected = model.state_dict()
    for key in [*expected, *state_dict]:
        if key not in state_dict or key not in expected:
            where = 'missing from the checkpoint' if key not in state_dict else 'not in the model'
            raise CheckpointError(f"'{key}' is {where} ({source}). Check that {check}.")
        if state_dict[key].shape != expected[key].shape:
            raise CheckpointError(f"Shape mismatch at '{key}': checkpoint {tuple(state_dict[key].shape)}, model "
                                  f'{tuple(expected[key].shape)} ({source}). Check that {check}.')
    model.load_state_dict(state_dict, strict=True)


def class_layers_afresh(model: nn.Module, state_dict: StateDict) -> list[str]:
    """Take out of ``state_dict`` the class-specific output layers whose shapes differ from ``model``'s
    (another number of classes), so that they keep their initialisation; one line per layer, with both shapes.
    """
    expected = model.state_dict()
    afresh = [key for key, value in state_dict.items() if CLASS_LAYER.search(key) and key in expected
              and value.shape != expected[key].shape]
    lines = [f'{key} {tuple(state_dict[key].shape)} -> {tuple(expected[key].shape)}' for key in afresh]
    for key in afresh:
        state_dict[key] = expected[key]
    return lines


def load_model_weights(model: nn.Module, path: str, logger: Logger, new_classes: bool = False) -> None:
    """Load a whole detector/segmentor checkpoint of any supported format into ``model``, strictly.

    The backbone part is converted as in :func:`convert_state_dict`; every other key must match
    ``model`` exactly, except, with ``new_classes``, the class-specific output layers of the heads
    (:data:`CLASS_LAYER`) when the model has another number of classes: those keep their initialisation,
    and the report names them.

    Raises:
        CheckpointError: Missing, unexpected or mis-shaped keys, naming the first one.
    """
    weights = convert_state_dict(read_checkpoint(path))
    if not weights.source_format.endswith('-dense'):
        raise CheckpointError(f'{path} holds only a backbone ({weights.source_format} format), not a whole '
                              "model: use it as the backbone's init_cfg=dict(type='Pretrained', checkpoint=...).")
    check_compatible(weights, model.backbone)
    state_dict = {**{f'backbone.{k}': v for k, v in weights.backbone.items()}, **weights.other}
    afresh = class_layers_afresh(model, state_dict) if new_classes else []
    load_exactly(model, state_dict, f'{path}, {weights.source_format} format',
                 'the config matches the checkpoint (model type, arch, number of classes)')
    logger.info(f'Loaded {path} ({weights.source_format} format, {len(state_dict) - len(afresh)} tensors).')
    if afresh:
        logger.info(f'  initialised afresh for the config\'s classes ({len(afresh)} tensors of another number of '
                    f'classes): {"; ".join(afresh)}')
