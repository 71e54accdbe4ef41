"""Hugging Face transformers checkpoints: model folders and ``hf://`` Hub names in, model folders out.

Read (:func:`read_transformers_checkpoint`, reached through :func:`backbones.checkpoints.loading.
load_local_checkpoint`, so wherever a checkpoint is accepted):

* a transformers model folder: ``config.json`` and ``model.safetensors``, sharded
  (``model.safetensors.index.json``) or not, or ``pytorch_model.bin`` (sharded or not), read by the
  project's data-only reader;
* one of those weight files, when its ``config.json`` lies beside it;
* ``hf://ORG/NAME[@REVISION]``: resolved by ``huggingface_hub.snapshot_download``, so its cache,
  ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and tokens apply; nothing is downloaded by code of ours.

``config.json`` and an index are read as JSON through :func:`backbones.boundary.read_regular_file` (regular
files only, at most :data:`MAX_JSON_BYTES` counted while reading); its ``model_type`` (``convnext``,
``convnextv2`` or ``upernet`` with a ConvNeXt backbone) and arch must agree with the weights. Shard names in an
index are plain file names inside the folder, nothing else. Every file read (config, index, weights) must
resolve, links followed, inside the model folder (for a snapshot of huggingface_hub's cache, inside its
repository's folder, whose ``blobs/`` its links point to). The state dict comes back with transformers' names;
:mod:`.layouts.transformers` maps them.

Written by :func:`.layouts.transformers.from_ours` (``tools/convert_checkpoint.py --to hf``).
"""
import os
import re
from pathlib import Path

import torch

from ..boundary import parse_json, read_regular_file, resolve_inside
from ..errors import CheckpointError
from .layouts.base import Arch, rename, stored_arch
from .layouts.transformers import CONFIG_NAME, TO_TIMM, backbone_key
from .reader import read_checkpoint_file

HUB_SCHEME = 'hf://'
MAX_JSON_BYTES = 16 << 20
BACKBONE_TYPES = {'convnext': 'v1', 'convnextv2': 'v2'}
MODEL_TYPES = (*BACKBONE_TYPES, 'upernet')
WEIGHT_FILES = ('model.safetensors.index.json', 'model.safetensors', 'pytorch_model.bin.index.json',
                'pytorch_model.bin')
SHARD_NAME = re.compile(r'[A-Za-z0-9_][A-Za-z0-9._-]*\.(safetensors|bin)')
HUB_NAME = re.compile(r'hf://([A-Za-z0-9][\w.-]*/[\w.-]+)(?:@([\w./-]+))?')


def is_transformers_source(path: str) -> bool:
    """Whether ``path`` is a Hub name, a transformers model folder, or a weight file beside its config.json."""
    path = os.path.expanduser(str(path))
    if path.startswith(HUB_SCHEME):
        return True
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, CONFIG_NAME))
    return (os.path.isfile(path) and path.endswith(('.safetensors', '.bin', '.index.json'))
            and os.path.isfile(os.path.join(os.path.dirname(path), CONFIG_NAME)) and _has_our_model_type(path))


def _has_our_model_type(weights_path: str) -> bool:
    try:
        folder = os.path.dirname(weights_path) or '.'
        return _read_json(_member(folder, CONFIG_NAME)).get('model_type') in MODEL_TYPES
    except CheckpointError:
        return False


def _member(folder: str, name: str) -> str:
    """``folder/name``, checked to lie, links resolved, inside the model folder: ``folder`` itself, or for a
    snapshot of huggingface_hub's cache (``<repo>/snapshots/<revision>``, its files links to ``<repo>/blobs``)
    the repository's folder.

    Raises:
        CheckpointError: It resolves outside, or through a symlink loop.
    """
    path, root = os.path.join(folder, name), Path(folder).resolve()
    if root.parent.name == 'snapshots' and (root.parent.parent / 'blobs').is_dir():
        root = root.parent.parent

    def refuse(reason: str) -> CheckpointError:
        return CheckpointError(f'Cannot load {path}: {reason}. The files of a transformers model folder lie in it.')
    resolve_inside(path, root, 'the model folder', refuse)
    return path


def _read_json(path: str) -> dict:
    def refuse(reason: str) -> CheckpointError:
        return CheckpointError(f'Cannot load {path}: {reason}.')
    try:
        content = read_regular_file(path, MAX_JSON_BYTES, 'a transformers JSON file', refuse=refuse)
    except FileNotFoundError:
        raise CheckpointError(f'Cannot load {path}: no such file. A transformers model folder holds config.json '
                              'and model.safetensors (as save_pretrained writes them).') from None
    try:
        value = parse_json(content)
    except ValueError as error:
        raise CheckpointError(f'Cannot load {path}: not readable JSON ({error}).') from None
    if not isinstance(value, dict):
        raise CheckpointError(f'Cannot load {path}: expected a JSON object, got {type(value).__name__}.')
    return value


def hub_snapshot(name: str) -> str:
    """The local folder of ``hf://ORG/NAME[@REVISION]``, from huggingface_hub's cache or the Hub.

    Raises:
        CheckpointError: A malformed name, or huggingface_hub could not provide the files (offline and not
            cached, unknown repository or revision, network error), in one line.
    """
    match = HUB_NAME.fullmatch(name)
    if not match:
        raise CheckpointError(f'Cannot load {name}: a Hub name is hf://ORG/NAME or hf://ORG/NAME@REVISION '
                              '(e.g. hf://openmmlab/upernet-convnext-tiny).')
    repo_id, revision = match[1], match[2]
    parts = [*repo_id.split('/'), *(revision.split('/') if revision else [])]
    if any(part in ('', '.', '..') for part in parts):
        raise CheckpointError(f"Cannot load {name}: '.', '..' and empty parts are not allowed in a Hub name or "
                              'revision.')
    import huggingface_hub  # only for Hub names
    try:
        folder = huggingface_hub.snapshot_download(repo_id, revision=revision,
                                                   allow_patterns=['*.json', '*.safetensors'])
        if not any(Path(folder).glob('*.safetensors')):
            folder = huggingface_hub.snapshot_download(repo_id, revision=revision,
                                                       allow_patterns=['*.json', 'pytorch_model*.bin'])
    except Exception as error:  # huggingface_hub's errors have no common base besides Exception
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise CheckpointError(f'Cannot load {name}: huggingface_hub could not provide it ({type(error).__name__}: '
                              f'{reason}). Check the name and revision and the network; offline '
                              '(HF_HUB_OFFLINE=1) it must be in the cache (HF_HUB_CACHE).') from None
    return folder


def _weight_files(folder: str, chosen: str | None) -> list[str]:
    """The weight files to read: ``chosen`` (an index or a single file), or the folder's, by preference."""
    names = [os.path.basename(chosen)] if chosen else [
        name for name in WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    if not names:
        raise CheckpointError(f'Cannot load {folder}: no model.safetensors, model.safetensors.index.json or '
                              'pytorch_model.bin beside its config.json.')
    name = names[0]
    if not name.endswith('.index.json'):
        return [_member(folder, name)]
    index_path = os.path.join(folder, name)
    weight_map = _read_json(_member(folder, name)).get('weight_map')
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"Cannot load {index_path}: it has no 'weight_map' of tensor names to shard files.")
    shards = sorted({str(shard) for shard in weight_map.values()})
    for shard in shards:
        if not SHARD_NAME.fullmatch(shard) or not os.path.isfile(os.path.join(folder, shard)):
            raise CheckpointError(f"Cannot load {index_path}: shard '{shard[:100]}' is not a .safetensors/.bin file "
                                  'of this folder. Shards must be plain file names beside the index.')
    return [_member(folder, shard) for shard in shards]


def _plain_state_dict(checkpoint: object, path: str) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('state_dict'), dict):
        checkpoint = checkpoint['state_dict']
    if not isinstance(checkpoint, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in checkpoint.items()):
        raise CheckpointError(f'Cannot load {path}: a transformers weight file holds a flat dict of tensors.')
    return checkpoint


def config_arch(config: dict, where: str) -> Arch:
    """The backbone arch a transformers ``config.json`` declares (UperNet: its ``backbone_config``)."""
    if config.get('model_type') == 'upernet':
        config = config.get('backbone_config')
        if not isinstance(config, dict):
            raise CheckpointError(f'Cannot load {where}: an UperNet config.json without a backbone_config.')
    model_type = config.get('model_type')
    if model_type not in BACKBONE_TYPES:
        raise CheckpointError(f"Cannot load {where}: model_type '{model_type}' is not a ConvNeXt (supported: "
                              f'{", ".join(MODEL_TYPES)}, UperNet with a ConvNeXt backbone).')
    depths, dims = config.get('depths'), config.get('hidden_sizes')
    if not (isinstance(depths, list) and isinstance(dims, list) and len(depths) == len(dims) == 4
            and all(type(v) is int and v > 0 for v in depths + dims)):
        raise CheckpointError(f'Cannot load {where}: config.json needs four positive depths and hidden_sizes.')
    return Arch(BACKBONE_TYPES[model_type], depths, dims)


def read_transformers_checkpoint(path: str) -> dict:
    """Read a transformers model (see the module docstring) as ``{'state_dict': ..., 'meta': ...}``.

    The state dict keeps transformers' names; ``meta['transformers_config']`` is the parsed config.json.

    Raises:
        CheckpointError: Anything that makes it unusable, in one line naming the file.
    """
    path = os.path.expanduser(str(path))
    source = path
    if path.startswith(HUB_SCHEME):
        path = hub_snapshot(path)
    folder, chosen = (path, None) if os.path.isdir(path) else (os.path.dirname(path) or '.', path)
    config_path = os.path.join(folder, CONFIG_NAME)
    config = _read_json(_member(folder, CONFIG_NAME))
    if config.get('model_type') not in MODEL_TYPES:
        raise CheckpointError(f"Cannot load {source}: config.json has model_type '{config.get('model_type')}'; "
                              f'supported: {", ".join(MODEL_TYPES)} (UperNet with a ConvNeXt backbone).')
    declared = config_arch(config, config_path)
    state_dict: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder, chosen):
        for key, value in _plain_state_dict(read_checkpoint_file(file, 'cpu'), file).items():
            if key in state_dict:
                raise CheckpointError(f"Cannot load {source}: tensor '{key}' is in two shards.")
            state_dict[key] = value
    backbone = {rename(backbone_key(k), TO_TIMM): v for k, v in state_dict.items() if backbone_key(k) is not None}
    found = stored_arch(backbone)
    if found is None:
        raise CheckpointError(f'Cannot load {source}: its weights do not hold all four ConvNeXt stages '
                              f'(first keys: {list(state_dict)[:3]}).')
    if found != declared:
        raise CheckpointError(f'Cannot load {source}: config.json declares {declared} but the weights hold {found}.')
    return {'state_dict': state_dict, 'meta': {'transformers_config': config, 'source': source}}


