"""``transformers``: Hugging Face's ConvNeXt models, and ``transformers-dense``: its UperNet with a ConvNeXt backbone.

Recognised by ``embeddings.patch_embeddings.*`` (``ConvNextModel``/``ConvNextV2Model``, ``ConvNextBackbone``/
``ConvNextV2Backbone`` and the ``*ForImageClassification`` models: ``embeddings.``, ``encoder.stages.i.layers.j.``,
``hidden_states_norms.stageK``; ``convnext.``/``convnextv2.``/``backbone.`` prefixes), read from a model folder
or an ``hf://`` name by :mod:`..huggingface`. ``UperNetForSemanticSegmentation``'s heads are renamed to mmseg's
(``batch_norm`` -> ``bn``, ``classifier`` -> ``conv_seg``). Back: :func:`from_ours` writes a model folder
(``tools/convert_checkpoint.py --to hf``).
"""
import json
import re
from pathlib import Path

import safetensors.torch

from ...errors import CheckpointError
from ..writing import separate_tensors, write_atomic
from .base import Arch, StateDict, rename, stored_arch

CONFIG_NAME = 'config.json'

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




def recognise(keys: list[str]) -> bool:
    """Whether the keys are a transformers ConvNeXt's (alone, in a classifier or in an UperNet)."""
    return any(re.match(r'((convnext|convnextv2|backbone)\.)?embeddings\.patch_embeddings\.', k) for k in keys)


def backbone_key(key: str) -> str | None:
    """A transformers key without its model prefix, if it belongs to the ConvNeXt backbone."""
    key = re.sub(r'^(convnext|convnextv2|backbone)\.', '', key)
    return key if key.startswith(('embeddings.', 'encoder.', 'hidden_states_norms.')) else None


def to_ours(state_dict: StateDict) -> tuple[StateDict, list[str], StateDict]:
    """Split and rename a transformers state dict.

    Returns:
        The backbone in this backbone's names, the keys of the classifier and pooled final norm (which
        the backbone has no place for), and the UperNet heads in mmseg's names.
    """
    backbone, head, heads = {}, [], {}
    for key, value in state_dict.items():
        inner = backbone_key(key)
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


def from_ours(folder: str | Path, backbone: StateDict, heads: StateDict,
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
    write_atomic(folder / 'model.safetensors', safetensors.torch.save(separate_tensors(tensors),
                                                                      metadata={'format': 'pt'}))
    write_atomic(folder / CONFIG_NAME, (json.dumps(config, indent=2) + '\n').encode())
    return model_class
