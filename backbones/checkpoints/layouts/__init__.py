"""Every released ConvNeXt weight layout, recognised from its keys and converted into this backbone's (timm's)
names: one module per layout, listed in :data:`LAYOUTS`.

| layout       | module               | recognised by                     | back (ours -> layout)           |
|--------------|----------------------|-----------------------------------|---------------------------------|
| transformers | :mod:`.transformers` | ``embeddings.patch_embeddings.*`` | :func:`.transformers.from_ours` |
| fcmae        | :mod:`.fcmae`        | ``encoder.*`` (sparse kernels)    | -                               |
| mmpretrain   | :mod:`.mmpretrain`   | ``*.depthwise_conv.*``            | -                               |
| official     | :mod:`.official`     | ``downsample_layers.*``           | -                               |
| timm         | :mod:`.timm`         | ``stem.*`` and ``stages.*``       | :func:`.timm.from_ours`         |

Each converts to ours (``to_ours``). The first layout of the table whose ``recognise`` accepts the keys
converts them (transformers' names are checked first: they are the only ones that can carry a ``backbone.``
prefix of their own). Any of them inside a detector/segmentor checkpoint (``backbone.`` prefix) is that layout
with ``-dense``: the official COCO/ADE20K release (mmdet 2.x / mmseg 0.x, output norms ``backbone.norm{i}``),
mmdet 3 / mmseg 1 checkpoints with an mmpretrain backbone, and checkpoints of our own configs (``timm-dense``).
``fcmae-timm`` is our FCMAE model's (this backbone under ``backbone.`` beside its decoder). Our models take
:data:`OUR_LAYOUTS` as stored.

A new weight source is one module here (``recognise(keys)``, ``to_ours(state_dict) -> (backbone, left out)``,
and ``from_ours`` where it can be written) and one row of :data:`LAYOUTS`.

GRN parameters are reshaped to (C,) whatever their stored shape ((1, 1, 1, C) in classification checkpoints,
(1, C) in FCMAE ones, and (1, 1, 1, 1, 1, C) after the official remap script has unsqueezed already 4-D
tensors), so they never silently stay at their zero initialisation. Keys that a checkpoint is expected to
carry without the backbone using them (a classifier head and final norm, an FCMAE decoder, a detector's neck
and heads) are named in :attr:`ConvertedWeights.leftovers`.
"""
from collections.abc import Callable
from types import ModuleType

import torch

from ...errors import CheckpointError
from . import fcmae, mmpretrain, official, timm, transformers
from .base import (
    DENSE_PARTS,
    FCMAE_DECODER,
    HEAD,
    UNBUILT,
    Arch,
    ConvertedWeights,
    NotConvNeXtError,
    StateDict,
    stored_arch,
)

__all__ = ['Arch', 'ConvertedWeights', 'DENSE_PARTS', 'FCMAE_DECODER', 'HEAD', 'LAYOUTS', 'NotConvNeXtError',
           'OUR_LAYOUTS', 'StateDict', 'UNBUILT', 'convert_state_dict', 'model_layout', 'stored_arch',
           'unwrap_state_dict']

# name -> module, in the order they are tried (transformers' keys first).
LAYOUTS: dict[str, ModuleType] = {'transformers': transformers, 'fcmae': fcmae, 'mmpretrain': mmpretrain,
                                  'official': official, 'timm': timm}
# The layouts our models take as stored: this backbone's (timm's names), in a whole model, in our FCMAE model.
OUR_LAYOUTS = ('timm', 'timm-dense', 'fcmae-timm')


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


def _transformers(state_dict: StateDict) -> ConvertedWeights:
    backbone, head, heads = transformers.to_ours(state_dict)
    leftovers = {DENSE_PARTS: list(heads), HEAD: head}
    return ConvertedWeights('transformers' + ('-dense' if heads else ''), backbone,
                            {reason: names for reason, names in leftovers.items() if names}, heads,
                            stored_arch(backbone))


def convert_state_dict(state_dict: StateDict) -> ConvertedWeights:
    """Recognise the layout of ``state_dict`` (:data:`LAYOUTS`) and convert its backbone to this backbone's.

    Raises:
        NotConvNeXtError: No ConvNeXt backbone was recognised.
        CheckpointError: A recognised layout that does not convert (stages missing, an arch beyond any ConvNeXt).
    """
    if transformers.recognise(list(state_dict)):
        return _transformers(state_dict)
    leftovers: dict[str, list[str]] = {}
    other: StateDict = {}
    classifier_head: list[str] = []
    if any(k.startswith('backbone.') for k in state_dict):
        other = {k: v for k, v in state_dict.items() if not k.startswith('backbone.')}
        state_dict = {k.removeprefix('backbone.'): v for k, v in state_dict.items() if k.startswith('backbone.')}
        if all(k.startswith('head.') for k in other):  # an mmpretrain classifier, not a detector/segmentor
            classifier_head, other = list(other), {}
        elif all(k.startswith(fcmae.DECODER_PREFIXES) for k in other):  # our FCMAE model (backbones.fcmae)
            leftovers[FCMAE_DECODER], other = list(other), {}
    dense = bool(other)
    if dense:
        leftovers[DENSE_PARTS] = list(other)

    keys = list(state_dict)
    name = next((name for name, layout in LAYOUTS.items() if name != 'transformers' and layout.recognise(keys)), None)
    if name is None:
        raise NotConvNeXtError(
            f'No ConvNeXt backbone found in the checkpoint (first keys: {keys[:3]}). Supported: official V1/V2 '
            'classification, V2 FCMAE, timm, mmpretrain, and detector/segmentor checkpoints with these backbones.')
    convert: Callable = LAYOUTS[name].to_ours
    backbone, head = convert(state_dict)
    if name == 'fcmae':
        leftovers[FCMAE_DECODER] = [k for k in keys if k.startswith(fcmae.DECODER_PREFIXES)]
    elif name == 'timm' and FCMAE_DECODER in leftovers:
        name = 'fcmae-timm'
    leftovers[HEAD] = classifier_head + head
    return ConvertedWeights(name + ('-dense' if dense else ''), backbone,
                            {reason: names for reason, names in leftovers.items() if names}, other)


def model_layout(weights: ConvertedWeights, backbone_only: bool = False) -> StateDict:
    """The state dict our models take: a whole model's ``backbone.*`` beside its neck and heads, or (a backbone
    alone, or ``backbone_only``) the backbone's own names."""
    if weights.other and not backbone_only:
        return {**{f'backbone.{k}': v for k, v in weights.backbone.items()}, **weights.other}
    return dict(weights.backbone)
