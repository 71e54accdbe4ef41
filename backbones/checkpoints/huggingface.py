"""Hugging Face transformers checkpoints: model folders and ``hf://`` Hub names in, model folders out.

Read (:func:`read_transformers_checkpoint`, reached through :func:`backbones.checkpoints.loading.
load_local_checkpoint`, so wherever a checkpoint is accepted):

* a transformers model folder: ``config.json`` and ``model.safetensors``, sharded
  (``model.safetensors.index.json``) or not, or ``pytorch_model.bin`` (sharded or not), read by the
  project's data-only reader;
* one of those weight files, when its ``config.json`` lies beside it;
* ``hf://ORG/NAME[@REVISION]``: resolved by ``huggingface_hub.snapshot_download``, so its cache,
  ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and tokens apply; nothing is downloaded by code of ours.

``config.json`` is read as JSON (capped in size); its ``model_type`` (``convnext``, ``convnextv2`` or
``upernet`` with a ConvNeXt backbone) and arch must agree with the weights. Shard names in an index are
plain file names inside the folder, nothing else. The state dict comes back with transformers' names;
:mod:`.formats` maps them (:func:`transformers_to_timm`).

Write (:func:`write_transformers_folder`, used by ``tools/convert_checkpoint.py --to hf``): a backbone as a
``ConvNextBackbone``/``ConvNextV2Backbone`` folder (loadable as ``ConvNextModel``/``ConvNextV2Model`` too),
an mmseg UperNet as ``UperNetForSemanticSegmentation``.
"""
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from ..errors import CheckpointError
from .reader import read_checkpoint_file
from .writing import write_atomic

HUB_SCHEME = 'hf://'
CONFIG_NAME = 'config.json'
MAX_JSON_BYTES = 16 << 20
BACKBONE_TYPES = {'convnext': 'v1', 'convnextv2': 'v2'}
MODEL_TYPES = (*BACKBONE_TYPES, 'upernet')
WEIGHT_FILES = ('model.safetensors.index.json', 'model.safetensors', 'pytorch_model.bin.index.json',
                'pytorch_model.bin')
SHARD_NAME = re.compile(r'[A-Za-z0-9_][A-Za-z0-9._-]*\.(safetensors|bin)')
HUB_NAME = re.compile(r'hf://([A-Za-z0-9][\w.-]*/[\w.-]+)(?:@([\w./-]+))?')
# transformers' names -> this backbone's (timm) names, applied in order; grn tensors are reshaped too.
TO_TIMM = (
    (r'^embeddings\.patch_embeddings\.', 'stem.0.'),
    (r'^embeddings\.layernorm\.', 'stem.1.'),
    (r'^encoder\.stages\.(\d)\.downsampling_layer\.', r'stages.\1.downsample.'),
    (r'^encoder\.stages\.(\d)\.layers\.(\d+)\.', r'stages.\1.blocks.\2.'),
    (r'\.dwconv\.', '.conv_dw.'),
    (r'\.layernorm\.', '.norm.'),
    (r'\.pwconv(\d)\.', r'.mlp.fc\1.'),
    (r'\.grn\.', '.mlp.grn.'),
    (r'\.layer_scale_parameter$', '.gamma'),
    (r'^hidden_states_norms\.stage(\d)\.', lambda m: f'out_norms.{int(m[1]) - 1}.'),
)
TO_TRANSFORMERS = (
    (r'^stem\.0\.', 'embeddings.patch_embeddings.'),
    (r'^stem\.1\.', 'embeddings.layernorm.'),
    (r'^stages\.(\d)\.downsample\.', r'encoder.stages.\1.downsampling_layer.'),
    (r'^stages\.(\d)\.blocks\.(\d+)\.', r'encoder.stages.\1.layers.\2.'),
    (r'\.conv_dw\.', '.dwconv.'),
    (r'\.norm\.', '.layernorm.'),
    (r'\.mlp\.grn\.', '.grn.'),
    (r'\.mlp\.fc(\d)\.', r'.pwconv\1.'),
    (r'\.gamma$', '.layer_scale_parameter'),
    (r'^out_norms\.(\d)\.', lambda m: f'hidden_states_norms.stage{int(m[1]) + 1}.'),
)
# mmseg's UPerHead/FCNHead names <-> transformers' UperNet heads: the rest of the names are the same.
HEAD_TO_MMSEG = ((r'\.batch_norm\.', '.bn.'), (r'^(decode_head|auxiliary_head)\.classifier\.', r'\1.conv_seg.'))
HEAD_TO_TRANSFORMERS = ((r'\.bn\.', '.batch_norm.'), (r'^(decode_head|auxiliary_head)\.conv_seg\.', r'\1.classifier.'))


@dataclass
class Arch:
    """A ConvNeXt backbone's arch: ``v1``/``v2``, blocks per stage, channels per stage."""
    version: str
    depths: list[int]
    dims: list[int]

    def __str__(self) -> str:
        return f'ConvNeXt {self.version.upper()} depths {self.depths} dims {self.dims}'


def rename(key: str, rules: tuple) -> str:
    """``key`` with every rule of ``rules`` (pattern, replacement) applied in order."""
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


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
        return _read_json(os.path.join(os.path.dirname(weights_path), CONFIG_NAME)).get('model_type') in MODEL_TYPES
    except CheckpointError:
        return False


def _read_json(path: str) -> dict:
    try:
        size = os.path.getsize(path)
        if size > MAX_JSON_BYTES:
            raise CheckpointError(f'Cannot load {path}: {size} bytes, more than the {MAX_JSON_BYTES >> 20} MiB a '
                                  'transformers JSON file may have.')
        with open(path, encoding='utf-8') as file:
            value = json.loads(file.read())
    except FileNotFoundError:
        raise CheckpointError(f'Cannot load {path}: no such file. A transformers model folder holds config.json '
                              'and model.safetensors (as save_pretrained writes them).') from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        reason = getattr(error, 'strerror', None) or str(error).splitlines()[0][:100]
        raise CheckpointError(f'Cannot load {path}: not readable JSON ({reason}).') from None
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
        return [os.path.join(folder, name)]
    index_path = os.path.join(folder, name)
    weight_map = _read_json(index_path).get('weight_map')
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"Cannot load {index_path}: it has no 'weight_map' of tensor names to shard files.")
    shards = sorted({str(shard) for shard in weight_map.values()})
    for shard in shards:
        if not SHARD_NAME.fullmatch(shard) or not os.path.isfile(os.path.join(folder, shard)):
            raise CheckpointError(f"Cannot load {index_path}: shard '{shard[:100]}' is not a .safetensors/.bin file "
                                  'of this folder. Shards must be plain file names beside the index.')
    return [os.path.join(folder, shard) for shard in shards]


def _plain_state_dict(checkpoint: object, path: str) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('state_dict'), dict):
        checkpoint = checkpoint['state_dict']
    if not isinstance(checkpoint, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in checkpoint.items()):
        raise CheckpointError(f'Cannot load {path}: a transformers weight file holds a flat dict of tensors.')
    return checkpoint


def stored_arch(backbone: dict[str, torch.Tensor]) -> Arch | None:
    """The arch of a backbone state dict in this backbone's (timm) names; None without all four stages."""
    depths = [0, 0, 0, 0]
    for key in backbone:
        if match := re.match(r'stages\.(\d)\.blocks\.(\d+)\.', key):
            depths[int(match[1])] = max(depths[int(match[1])], int(match[2]) + 1)
    dims = [backbone.get(key) for key in ('stem.0.weight', *(f'stages.{i}.downsample.1.weight' for i in (1, 2, 3)))]
    if 0 in depths or any(d is None for d in dims):
        return None
    version = 'v2' if any('.grn.' in k for k in backbone) else 'v1'
    return Arch(version, depths, [int(d.shape[0]) for d in dims])


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
    config = _read_json(config_path)
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
    backbone = {rename(_backbone_key(k), TO_TIMM): v for k, v in state_dict.items() if _backbone_key(k) is not None}
    found = stored_arch(backbone)
    if found is None:
        raise CheckpointError(f'Cannot load {source}: its weights do not hold all four ConvNeXt stages '
                              f'(first keys: {list(state_dict)[:3]}).')
    if found != declared:
        raise CheckpointError(f'Cannot load {source}: config.json declares {declared} but the weights hold {found}.')
    return {'state_dict': state_dict, 'meta': {'transformers_config': config, 'source': source}}


def _backbone_key(key: str) -> str | None:
    """A transformers key without its model prefix, if it belongs to the ConvNeXt backbone."""
    key = re.sub(r'^(convnext|convnextv2|backbone)\.', '', key)
    return key if key.startswith(('embeddings.', 'encoder.', 'hidden_states_norms.')) else None


def transformers_to_timm(state_dict: dict[str, torch.Tensor]) -> tuple[dict, list[str], dict]:
    """Split and rename a transformers state dict.

    Returns:
        The backbone in this backbone's names, the keys of the classifier and pooled final norm (which
        the backbone has no place for), and the UperNet heads in mmseg's names.
    """
    backbone, head, heads = {}, [], {}
    for key, value in state_dict.items():
        inner = _backbone_key(key)
        if inner is not None:
            new = rename(inner, TO_TIMM)
            backbone[new] = value.reshape(-1) if '.grn.' in new else value
        elif key.startswith(('decode_head.', 'auxiliary_head.')):
            heads[rename(key, HEAD_TO_MMSEG)] = value
        else:
            head.append(key)
    return backbone, head, heads


def _backbone_config(arch: Arch, out_norms: list[int]) -> dict:
    model_type = 'convnext' if arch.version == 'v1' else 'convnextv2'
    return dict(model_type=model_type, depths=arch.depths, hidden_sizes=arch.dims, num_channels=3, patch_size=4,
                num_stages=4, hidden_act='gelu', drop_path_rate=0.0,
                out_features=[f'stage{i + 1}' for i in out_norms], out_indices=[i + 1 for i in out_norms],
                stage_names=['stem', 'stage1', 'stage2', 'stage3', 'stage4'])


def _upernet_config(backbone_config: dict, heads: dict, class_names: list[str] | None) -> dict:
    num_labels = int(heads['decode_head.conv_seg.weight'].shape[0])
    names = class_names if class_names and len(class_names) == num_labels else [f'LABEL_{i}' for i in range(num_labels)]
    aux_convs = sorted({int(m[1]) for k in heads if (m := re.match(r'auxiliary_head\.convs\.(\d+)\.', k))})
    pool_count = len({k.split('.')[2] for k in heads if k.startswith('decode_head.psp_modules.')})
    if pool_count != 4:
        raise CheckpointError(f'The decode head has {pool_count} pooling branches; transformers UperNet writes '
                              'pool_scales (1, 2, 3, 6), four of them.')
    config = dict(model_type='upernet', architectures=['UperNetForSemanticSegmentation'],
                  backbone_config=backbone_config,
                  hidden_size=int(heads['decode_head.bottleneck.conv.weight'].shape[0]),
                  pool_scales=[1, 2, 3, 6], use_auxiliary_head=bool(aux_convs), auxiliary_loss_weight=0.4,
                  auxiliary_num_convs=len(aux_convs),
                  auxiliary_concat_input='auxiliary_head.conv_cat.conv.weight' in heads,
                  loss_ignore_index=255, id2label={str(i): n for i, n in enumerate(names)},
                  label2id={n: i for i, n in enumerate(names)})
    if aux_convs:
        config['auxiliary_channels'] = int(heads['auxiliary_head.convs.0.conv.weight'].shape[0])
    return config


def write_transformers_folder(folder: str | Path, backbone: dict[str, torch.Tensor], heads: dict[str, torch.Tensor],
                              class_names: list[str] | None = None) -> str:
    """Write a transformers model folder (``config.json``, ``model.safetensors``) of our weights.

    Args:
        folder: The folder to write (created; files in it are replaced atomically).
        backbone: A backbone state dict in this backbone's names (all four stages).
        heads: mmseg UPerHead/FCNHead tensors (``decode_head.*``, ``auxiliary_head.*``) for an UperNet, or
            empty for a backbone alone.
        class_names: ``id2label`` of an UperNet, by class index.

    Returns:
        The transformers class the folder is written for.

    Raises:
        CheckpointError: Weights transformers has no model for, in one line.
    """
    arch = stored_arch(backbone)
    if arch is None:
        raise CheckpointError('--to hf needs a whole ConvNeXt backbone (all four stages).')
    out_norms = sorted({int(k.split('.')[1]) for k in backbone if k.startswith('out_norms.')})
    backbone_config = _backbone_config(arch, out_norms or [0, 1, 2, 3])
    backbone_class = 'ConvNextBackbone' if arch.version == 'v1' else 'ConvNextV2Backbone'
    tensors = {}
    for key, value in backbone.items():
        new = rename(key, TO_TRANSFORMERS)
        tensors[new] = value.reshape(1, 1, 1, -1) if '.grn.' in new else value
    if heads:
        if 'decode_head.conv_seg.weight' not in heads or 'decode_head.bottleneck.conv.weight' not in heads:
            raise CheckpointError('--to hf writes backbones and UperNet segmentors (transformers has no Mask R-CNN or '
                                  'Cascade): for a detector, add --backbone-only.')
        if not out_norms:
            raise CheckpointError('--to hf: an UperNet backbone needs its output norms (out_norms.*).')
        config = _upernet_config(backbone_config, heads, class_names)
        tensors = {**{f'backbone.{k}': v for k, v in tensors.items()},
                   **{rename(k, HEAD_TO_TRANSFORMERS): v for k, v in heads.items()}}
        model_class = 'UperNetForSemanticSegmentation'
    else:
        config = {**backbone_config, 'architectures': [backbone_class]}
        model_class = backbone_class
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    write_atomic(folder / 'model.safetensors', safetensors.torch.save(tensors, metadata={'format': 'pt'}))
    write_atomic(folder / CONFIG_NAME, (json.dumps(config, indent=2) + '\n').encode())
    return model_class
