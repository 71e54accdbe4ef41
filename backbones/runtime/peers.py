"""The peers our models are compared with: mmdet's and mmseg's own ConvNeXt-T configs (mmpretrain backbone)
and timm's ConvNeXt-T, and our backbone's weights in their parameter names.

Used by the benchmark's ``--compare`` and by ``tests/test_configs_peers.py``.
"""
import os.path as osp
import re

import torch
from mmengine.config import Config
from mmengine.utils import get_installed_path

from ..patches import import_mmpretrain

# mmdet's and mmseg's own ConvNeXt-T configs, by model type: (package, config path inside the package).
MM_PEERS = {
    'MaskRCNN': ('mmdet', 'convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py'),
    'CascadeRCNN': ('mmdet', 'convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'),
    'EncoderDecoder': ('mmseg', 'convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py'),
}
TIMM_PEER = 'convnext_tiny'
# Our (timm) backbone names -> mmpretrain's, for ConvNeXt V1 (backbones.checkpoints.layouts.mmpretrain reads them back).
MMPRETRAIN_NAMES = (
    (r'^stem\.(\d)\.', r'downsample_layers.0.\1.'),
    (r'^stages\.(\d)\.downsample\.(\d)\.', r'downsample_layers.\1.\2.'),
    (r'^stages\.(\d)\.blocks\.(\d+)\.', r'stages.\1.\2.'),
    (r'\.conv_dw\.', '.depthwise_conv.'),
    (r'\.mlp\.fc(\d)\.', r'.pointwise_conv\1.'),
    (r'^out_norms\.(\d)\.', r'norm\1.'),
)


def peer_config(model_type: str) -> tuple[str, Config]:
    """``package::path`` and the config of the mmdet/mmseg peer of a model type (a key of :data:`MM_PEERS`)."""
    package, relative_path = MM_PEERS[model_type]
    import_mmpretrain()  # the peer configs' custom_imports
    return f'{package}::{relative_path}', Config.fromfile(
        osp.join(get_installed_path(package), '.mim', 'configs', relative_path))


def to_mmpretrain(backbone_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ConvNeXt V1 backbone's state dict in mmpretrain's parameter names."""
    renamed = {}
    for key, value in backbone_state.items():
        for pattern, name in MMPRETRAIN_NAMES:
            key = re.sub(pattern, name, key)
        renamed[key] = value
    return renamed


def to_timm_features(backbone_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our backbone's stages in the names of timm's ``features_only`` model (which has no output norms)."""
    return {re.sub(r'^(stem|stages)\.(\d)\.', r'\1_\2.', key): value for key, value in backbone_state.items()
            if not key.startswith('out_norms.')}
