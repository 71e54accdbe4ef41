"""Our configs against mmdet's and mmseg's own ConvNeXt configs (mmpretrain backbone), same weights.

The peer model is built from the framework's config with random weights and saved; our config's
model loads that file through our own loader (format conversion included), and both run on identical
inputs: backbone and neck features, RPN outputs, RoI-head outputs on the same proposals (every
cascade stage, box and mask), the segmentor's logits. Neither side was written here, so a scrambled
feature layout (as mmcv's RoIAlign reading channels_last features as NCHW) or a mis-mapped weight
shows up as a difference.
"""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

import backbones  # noqa: F401  registers ConvNeXt
from backbones.checkpoints.loading import load_model_weights
from backbones.patches import import_mmpretrain
from backbones.runtime.peers import peer_config
from tests.helpers import randomize_at_fan_in_scale

import_mmpretrain()  # registers mmpretrain.ConvNeXt, the peers' backbone

# Our config -> the model type whose mmdet/mmseg config is its peer (backbones.runtime.peers.MM_PEERS).
DETECTION_PEERS = {'mask_rcnn': ('configs/det/mask_rcnn_convnext_t.py', 'MaskRCNN'),
                   'cascade': ('configs/det/cascade_convnext_t.py', 'CascadeRCNN')}
SEGMENTATION_PEER = ('configs/seg/upernet_convnext_t.py', 'EncoderDecoder')
IMAGE_SHAPE = (224, 320)
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def build(cfg: Config, scope: str) -> torch.nn.Module:
    """The model of ``cfg`` without pre-trained weights, in eval mode."""
    init_default_scope(scope)
    from mmengine.registry import MODELS
    cfg.model.backbone.init_cfg = None
    cfg.model.pop('data_preprocessor', None)
    return MODELS.build(cfg.model).eval()


def peer_and_ours(ours_config: str, peer_type: str, scope: str, tmp_path: Path) -> tuple:
    """The peer model with random weights, and our config's model loaded from the peer's state dict."""
    peer_model = build(peer_config(peer_type)[1], scope)
    randomize_at_fan_in_scale(peer_model)
    path = tmp_path / 'peer.pth'
    torch.save({'state_dict': peer_model.state_dict()}, path)
    our_model = build(Config.fromfile(ours_config), scope)
    load_model_weights(our_model, str(path), MMLogger.get_instance('test_configs_peers'))
    return peer_model, our_model


def assert_all_close(ours, theirs, what: str) -> None:
    """Nested tuples/lists/dicts of tensors are equal within TOLERANCE."""
    if isinstance(theirs, torch.Tensor):
        torch.testing.assert_close(ours, theirs, **TOLERANCE, msg=lambda message: f'{what}: {message}')
    elif isinstance(theirs, dict):
        assert ours.keys() == theirs.keys(), what
        for key in theirs:
            assert_all_close(ours[key], theirs[key], f'{what}.{key}')
    else:
        assert len(ours) == len(theirs), what
        for index, (a, b) in enumerate(zip(ours, theirs)):
            assert_all_close(a, b, f'{what}[{index}]')


def random_proposals(num: int, generator: torch.Generator) -> InstanceData:
    """``num`` boxes of varied size and place inside the image, as RPN results."""
    height, width = IMAGE_SHAPE
    centres = torch.rand(num, 2, generator=generator) * torch.tensor([width, height])
    sizes = 8 + torch.rand(num, 2, generator=generator) * torch.tensor([width, height]) / 2
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return InstanceData(bboxes=boxes, scores=torch.rand(num, generator=generator))


@pytest.mark.parametrize('detector', list(DETECTION_PEERS))
def test_detector_equals_mmdet_convnext_config(detector: str, tmp_path) -> None:
    from mmdet.structures import DetDataSample

    theirs, ours = peer_and_ours(*DETECTION_PEERS[detector], 'mmdet', tmp_path)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, *IMAGE_SHAPE, generator=generator)
    samples = [DetDataSample(metainfo=dict(img_shape=IMAGE_SHAPE, ori_shape=IMAGE_SHAPE, scale_factor=(1.0, 1.0),
                                           pad_shape=IMAGE_SHAPE, batch_input_shape=IMAGE_SHAPE)) for _ in range(2)]
    proposals = [random_proposals(60, generator) for _ in range(2)]
    outputs = {}
    with torch.no_grad():
        for name, model in (('theirs', theirs), ('ours', ours)):
            stages = model.backbone(images)
            levels = model.neck(stages)
            outputs[name] = dict(backbone=stages, neck=levels, rpn=model.rpn_head(levels),
                                 roi_head=model.roi_head.forward(levels, [p.clone() for p in proposals], samples))
    for part in ('backbone', 'neck', 'rpn', 'roi_head'):
        assert_all_close(outputs['ours'][part], outputs['theirs'][part], f'{detector} {part}')
    # The comparison has teeth: the RoI heads' outputs depend on the proposals' features.
    scores = outputs['theirs']['roi_head'][0]  # Mask R-CNN: one tensor; Cascade: one per image
    scores = scores if isinstance(scores, torch.Tensor) else torch.cat(scores)
    assert scores.std(dim=0).mean() > 1e-2


def test_upernet_equals_mmseg_convnext_config(tmp_path) -> None:
    theirs, ours = peer_and_ours(*SEGMENTATION_PEER, 'mmseg', tmp_path)
    images = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    outputs = {}
    with torch.no_grad():
        for name, model in (('theirs', theirs), ('ours', ours)):
            stages = model.backbone(images)
            outputs[name] = dict(backbone=stages, logits=model.decode_head(stages),
                                 auxiliary=model.auxiliary_head(stages))
    for part in ('backbone', 'logits', 'auxiliary'):
        assert_all_close(outputs['ours'][part], outputs['theirs'][part], f'UperNet {part}')
