"""Loading: every checkpoint enters through :func:`open_checkpoint`, read once, and goes from there to the
models (:func:`load_backbone_weights`, :func:`load_model_weights`) and to mmengine (its loaders, below).

* :func:`open_checkpoint`: a local file, a transformers model folder or ``hf://`` name, or an ``http(s)://``
  URL (downloaded once, :mod:`.download`), read as data (:mod:`.reader`, :mod:`.huggingface`) into a
  :class:`Checkpoint`: the contents as stored, the state dict, and its weights converted from the layout
  :mod:`.layouts` recognises (computed on first use). A tool opens its file once and hands the
  :class:`Checkpoint` to every consumer (classes, weights).
* :func:`load_backbone_weights`, :func:`load_model_weights`: a :class:`Checkpoint` (or a source to open)
  into a backbone or a whole detector/segmentor, with a load report and one-line errors.
* mmengine's loaders, registered by :mod:`backbones.patches` for the schemes they serve (mmengine's log names
  them: "Loads checkpoint by local/hf/http backend"): :func:`load_from_local` (paths and transformers folders),
  :func:`load_from_hf` (``hf://``), :func:`load_from_http` (``http(s)://``), :func:`load_from_url` (mmengine's
  ``load_url``, which its ``torchvision://``, ``open-mmlab://`` and ``mmcls://`` loaders call), and
  :func:`refuse_remote_checkpoint` (``pavi://``, ``s3://``, ``petrel://``). They return the checkpoint with its
  state dict in the layout the model takes (:meth:`Checkpoint.in_model_layout`), so ``load_checkpoint``,
  ``init_model``, ``init_detector`` and the inferencers load every format the tools load, with the same weights.
"""
import functools
import re
from dataclasses import dataclass
from logging import Logger
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from .download import fetch
from .huggingface import HUB_SCHEME, is_transformers_source, read_transformers_checkpoint
from .layouts import (
    OUR_LAYOUTS,
    UNBUILT,
    Arch,
    ConvertedWeights,
    NotConvNeXtError,
    StateDict,
    convert_state_dict,
    model_layout,
    unwrap_state_dict,
)
from .reader import map_tensors, read_checkpoint_file

URL_SCHEMES = ('http://', 'https://')
# How many bytes a state dict's tensors may view beyond what their storages hold (the same storage under several
# keys: tied weights), at least: every conversion copies each key, so repeated views are what it can multiply.
MIN_REPEATED_VIEW_BYTES = 64 << 20
# The heads' output layers whose shapes follow the number of classes: Mask R-CNN's and Cascade's box
# classifiers and class-specific box regressors, the mask head's logits, UperNet's decode and auxiliary heads.
CLASS_LAYER = re.compile(r'(^|\.)(bbox_head(\.\d+)?\.(fc_cls|fc_reg)|mask_head(\.\d+)?\.conv_logits|'
                         r'(decode_head|auxiliary_head)(\.\d+)?\.conv_seg)\.(weight|bias)$')


def load_local_checkpoint(filename: str, map_location: str | torch.device | None = None) -> Any:
    """A local checkpoint, read as data by :func:`~backbones.checkpoints.reader.read_checkpoint_file`.

    A transformers model folder, a weight file beside its ``config.json``, or an ``hf://`` Hub name is read
    by :func:`~backbones.checkpoints.huggingface.read_transformers_checkpoint` (names kept as stored;
    :mod:`backbones.checkpoints.layouts` maps them).
    mmengine's ``Runner.resume`` executes ``meta['config']`` as Python (``Config.fromstring``); here
    that text moves to ``meta['config_text']``, kept for reading and never executed.
    """
    if is_transformers_source(filename):
        checkpoint = read_transformers_checkpoint(filename)
        if map_location is not None and not callable(map_location) and torch.device(map_location).type != 'cpu':
            checkpoint = map_tensors(checkpoint, map_location)
        return checkpoint
    checkpoint = read_checkpoint_file(filename, map_location)
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if isinstance(meta, dict) and 'config' in meta:
        meta['config_text'] = meta.pop('config')
    return checkpoint


def read_source(source: str, map_location: str | torch.device | None = 'cpu') -> Any:
    """The checkpoint ``source`` names, as stored: an ``http(s)://`` URL (downloaded once), an ``hf://`` name, a
    transformers model folder or a local file.

    Raises:
        CheckpointError: Another scheme (``s3://``...), or anything that makes the source unusable, in one line.
    """
    source = str(source)
    if source.startswith(URL_SCHEMES):
        return load_local_checkpoint(fetch(source), map_location)
    if '://' in source and not source.startswith(HUB_SCHEME):
        raise CheckpointError(f'Cannot load {source}: give a local path, an http(s):// URL or an hf:// name.')
    return load_local_checkpoint(source, map_location)


@dataclass
class Checkpoint:
    """A checkpoint read once.

    Attributes:
        source: What it was read from (path, URL or ``hf://`` name).
        contents: The checkpoint as stored (plain data: ``state_dict``, ``meta``, an optimizer's state...).
    """

    source: str
    contents: Any

    @functools.cached_property
    def state_dict(self) -> StateDict:
        """The tensors, as stored (``state_dict``, ``model`` or the checkpoint itself).

        Raises:
            CheckpointError: The checkpoint holds no dict of tensors, or tensors that view its storages again and
                again (:func:`check_repeated_views`).
        """
        state_dict = unwrap_state_dict(self.contents)
        check_repeated_views(state_dict, self.source)
        return state_dict

    @functools.cached_property
    def weights(self) -> ConvertedWeights:
        """The backbone in this backbone's layout and the rest as stored (see :func:`.layouts.convert_state_dict`).

        Raises:
            CheckpointError: No ConvNeXt backbone was recognised, or its layout does not convert.
        """
        return convert_state_dict(self.state_dict)

    @property
    def meta(self) -> dict:
        """``meta`` as stored, {} when there is none."""
        meta = self.contents.get('meta') if isinstance(self.contents, dict) else None
        return meta if isinstance(meta, dict) else {}

    def in_model_layout(self) -> Any:
        """The checkpoint for mmengine's loaders: a ConvNeXt checkpoint of a foreign layout with its state dict
        converted to the layout our models take (a whole model: ``backbone.*`` and its neck and heads; a backbone
        alone: the backbone's own names); our own layouts and checkpoints of other models as stored.

        Raises:
            CheckpointError: A ConvNeXt checkpoint whose layout does not convert.
        """
        try:
            weights = self.weights
        except NotConvNeXtError:
            return self.contents
        except CheckpointError:
            if not isinstance(self.contents, dict) or is_transformers_source(self.source):
                raise
            return self.contents  # not a dict of tensors: mmengine reports what it finds
        if weights.source_format in OUR_LAYOUTS:
            return self.contents
        return {'state_dict': model_layout(weights), 'meta': {**self.meta, 'converted_from': weights.source_format}}


def check_repeated_views(state_dict: StateDict, source: str) -> None:
    """Refuse a state dict whose tensors view more than twice the bytes their storages hold (and more than
    :data:`MIN_REPEATED_VIEW_BYTES` beyond them).

    A file can store one storage once and name a view of it (a transposed one, which ``.contiguous()`` and
    ``.reshape()`` copy) under thousands of keys; each layout conversion, and each writer, works key by key and
    would make each key a copy of its own: gigabytes from a file of megabytes. With this bound what a conversion
    makes stays within a small multiple of the file, while tied weights (a tensor under two keys) still load.

    Raises:
        CheckpointError: The sizes, in one line naming ``source``.
    """
    storages: dict[int, int] = {}  # the storages alive, by address: their sizes
    viewed = 0
    for value in state_dict.values():
        storage = value.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        viewed += value.numel() * value.element_size()
    held = sum(storages.values())
    if viewed - held > max(held, MIN_REPEATED_VIEW_BYTES):
        raise CheckpointError(f'Cannot use {source}: its {len(state_dict)} tensors view {viewed} bytes of storages '
                              f'that hold {held}: the same storage under many keys, each of which a conversion '
                              'would copy (at most twice the bytes held may be viewed). Use another checkpoint.')


def open_checkpoint(source: 'str | Checkpoint') -> Checkpoint:
    """Read ``source`` once (see :func:`read_source`); a :class:`Checkpoint` is returned as it is.

    Raises:
        CheckpointError: The source cannot be read (see :func:`read_source`).
    """
    if isinstance(source, Checkpoint):
        return source
    return Checkpoint(str(source), read_source(source))


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


def load_backbone_weights(backbone: nn.Module, source: 'str | Checkpoint', logger: Logger) -> ConvertedWeights:
    """Load any supported checkpoint into a :class:`backbones.ConvNeXt` and log what did not match.

    Args:
        backbone: The backbone to load into.
        source: A :class:`Checkpoint`, or what :func:`open_checkpoint` opens (path, folder, URL, ``hf://`` name).
        logger: Where the load report goes.

    Raises:
        CheckpointError: Unrecognised format, or keys/shapes that do not fit ``backbone``.
    """
    checkpoint = open_checkpoint(source)
    path, weights = checkpoint.source, checkpoint.weights
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


def load_model_weights(model: nn.Module, source: 'str | Checkpoint', logger: Logger,
                       new_classes: bool = False) -> None:
    """Load a whole detector/segmentor checkpoint of any supported format into ``model``, strictly.

    ``source`` is a :class:`Checkpoint`, or what :func:`open_checkpoint` opens. The backbone part is converted
    as in :func:`.layouts.convert_state_dict`; every other key must match
    ``model`` exactly, except, with ``new_classes``, the class-specific output layers of the heads
    (:data:`CLASS_LAYER`) when the model has another number of classes: those keep their initialisation,
    and the report names them.

    Raises:
        CheckpointError: Missing, unexpected or mis-shaped keys, naming the first one.
    """
    checkpoint = open_checkpoint(source)
    path, weights = checkpoint.source, checkpoint.weights
    if not weights.source_format.endswith('-dense'):
        raise CheckpointError(f'{path} holds only a backbone ({weights.source_format} format), not a whole '
                              "model: use it as the backbone's init_cfg=dict(type='Pretrained', checkpoint=...).")
    check_compatible(weights, model.backbone)
    state_dict = model_layout(weights)
    afresh = class_layers_afresh(model, state_dict) if new_classes else []
    load_exactly(model, state_dict, f'{path}, {weights.source_format} format',
                 'the config matches the checkpoint (model type, arch, number of classes)')
    logger.info(f'Loaded {path} ({weights.source_format} format, {len(state_dict) - len(afresh)} tensors).')
    if afresh:
        logger.info(f'  initialised afresh for the config\'s classes ({len(afresh)} tensors of another number of '
                    f'classes): {"; ".join(afresh)}')


def _for_mmengine(source: str, map_location: Any) -> Any:
    checkpoint = Checkpoint(source, read_source(source, 'cpu')).in_model_layout()
    if map_location is not None and not callable(map_location) and torch.device(map_location).type != 'cpu':
        checkpoint = map_tensors(checkpoint, map_location)
    return checkpoint


def load_from_local(filename: str, map_location: str | torch.device | None = None) -> Any:
    """mmengine's loader for local paths and transformers model folders (:meth:`Checkpoint.in_model_layout`)."""
    return _for_mmengine(filename, map_location)


def load_from_hf(filename: str, map_location: str | torch.device | None = None) -> Any:
    """mmengine's loader for ``hf://ORG/NAME[@REVISION]`` (:meth:`Checkpoint.in_model_layout`)."""
    return _for_mmengine(filename, map_location)


def load_from_http(filename: str, map_location: str | torch.device | None = None, model_dir: str | None = None,
                   **kwargs: Any) -> Any:
    """mmengine's loader for ``http(s)://`` (downloaded once into ``model_dir``, by default torch hub's cache).

    Args:
        filename: The URL.
        map_location: Where the tensors go.
        model_dir: The cache folder.
        **kwargs: What mmengine passes on (``progress``): ignored, the download always shows its progress.
    """
    return load_from_url(filename, model_dir, map_location)


def load_from_url(url: str, model_dir: str | None = None, map_location: str | torch.device | None = None,
                  progress: bool = True, **kwargs: Any) -> Any:
    """mmengine's ``load_url`` (torch hub's ``load_state_dict_from_url``, which unpickles with
    ``weights_only=False``), which its ``torchvision://``, ``open-mmlab://`` and ``mmcls://`` loaders call:
    downloaded once (:func:`.download.fetch`) and read as data, in the model's layout.

    Args:
        url: The checkpoint's URL.
        model_dir: The cache folder; by default torch hub's ``checkpoints`` folder.
        map_location: Where the tensors go.
        progress: Ignored: mmengine passes whether stdin is a terminal; the download always shows its progress.
        **kwargs: What mmengine passes on for torch hub (``file_name``, ``check_hash``): ignored.

    Raises:
        CheckpointError: The download or the file is unusable, in one line.
    """
    return _for_mmengine(fetch(url, model_dir), map_location)


def refuse_remote_checkpoint(filename: str, map_location: Any = None) -> None:
    """mmengine's loader for ``pavi://``, ``s3://`` and ``petrel://``, which would read with ``torch.load``.

    Raises:
        CheckpointError: Always, with what to do instead.
    """
    raise CheckpointError(f'Cannot load {filename}: checkpoints on this storage are not read here (mmengine would '
                          'unpickle them with torch.load); copy the file to a local path and pass that path.')
