"""backbones/inference.py: what the tools do to a model before inference gives the same predictions."""
import pytest
import torch
from mmcv.ops import RoIAlign
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from backbones.models.convnext import ConvNeXt
from backbones.runtime.inference import compile_backbone, prepare_inference, roi_align_on_all_cores, to_channels_last


def random_rois(count: int, height: int, width: int, images: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.8
    size = 1 + torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.5
    index = torch.randint(0, images, (count, 1), generator=generator).float()
    return torch.cat([index, corner, corner + size], 1)


@pytest.mark.parametrize('aligned, sampling_ratio', [(True, 0), (False, 2), (True, 1)])
def test_parallel_roi_align_gives_mmcv_numbers(aligned: bool, sampling_ratio: int) -> None:
    features = torch.randn(2, 16, 40, 56, generator=torch.Generator().manual_seed(1))
    rois = random_rois(37, 160, 224, images=2)  # odd: uneven slices
    layer = RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=sampling_ratio, aligned=aligned)
    reference = layer(features, rois)
    from_bf16 = layer(features.bfloat16().float(), rois).bfloat16()  # the fp32 kernel on bf16 features, rounded once
    assert roi_align_on_all_cores(torch.nn.Sequential(layer)) == 1
    assert layer.forward.__func__ is not RoIAlign.forward
    torch.testing.assert_close(layer(features, rois), reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(features.bfloat16(), rois), from_bf16, rtol=0, atol=0)
    assert layer(features, rois[:0]).shape == (0, 16, 7, 7)


def test_parallel_roi_align_reads_channels_last_features_right_and_leaves_other_layers_alone() -> None:
    features = torch.randn(1, 16, 40, 56, generator=torch.Generator().manual_seed(2))
    rois = random_rois(20, 160, 224, images=1)
    stock, ours = RoIAlign((7, 7), 0.25, 0), RoIAlign((7, 7), 0.25, 0)
    roi_align_on_all_cores(ours)
    reference = stock(features, rois)
    channels_last = features.contiguous(memory_format=torch.channels_last)
    assert not torch.allclose(stock(channels_last, rois), reference)  # mmcv's kernel reads the storage as NCHW
    torch.testing.assert_close(ours(channels_last, rois), reference, rtol=0, atol=1e-6)
    assert 'forward' not in vars(stock)  # a peer in the same process keeps mmcv's kernel


def demo_mask_rcnn() -> torch.nn.Module:
    cfg = Config.fromfile('configs/demo/mask_rcnn_convnext_demo.py')
    init_default_scope('mmdet')
    torch.manual_seed(0)
    cfg.model.backbone.init_cfg = None
    cfg.model.test_cfg.rcnn.score_thr = 0  # every image sends max_per_img RoIs to the mask head
    return MODELS.build(cfg.model).eval()


def demo_batch(model: torch.nn.Module) -> dict:
    from mmdet.structures import DetDataSample
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    sample = DetDataSample(metainfo=dict(img_shape=(96, 128), ori_shape=(96, 128), scale_factor=(1.0, 1.0),
                                         pad_shape=(96, 128), batch_input_shape=(96, 128)))
    return dict(inputs=[image], data_samples=[sample])


def predictions(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        result = model.test_step(demo_batch(model))[0].pred_instances
    return result.bboxes, result.scores, result.masks.float()


def test_channels_last_detector_predicts_as_the_plain_one() -> None:
    model = demo_mask_rcnn()
    boxes, scores, masks = predictions(model)
    assert len(scores) >= 20

    to_channels_last(model)  # without the RoIAlign change: the RoI heads read NHWC storage as NCHW
    scrambled_boxes, _, _ = predictions(model)
    assert not torch.allclose(scrambled_boxes, boxes, atol=1e-2)

    prepare_inference(model, 'fp32')
    fast_boxes, fast_scores, fast_masks = predictions(model)
    torch.testing.assert_close(fast_boxes, boxes, rtol=0, atol=1e-3)
    torch.testing.assert_close(fast_scores, scores, rtol=0, atol=1e-5)
    assert (fast_masks != masks).float().mean() < 1e-3


def test_compiled_backbone_gives_the_same_features_and_keeps_its_keys() -> None:
    backbone = ConvNeXt(arch=dict(depths=[1, 1, 2, 1], dims=[16, 32, 64, 128])).eval()
    holder = torch.nn.Module()
    holder.backbone = backbone
    keys = list(backbone.state_dict())
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    graphs = torch._dynamo.utils.counters['stats']['unique_graphs']
    with torch.no_grad():
        reference = backbone(image)
        compile_backbone(holder)
        compiled = backbone(image)
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] > graphs  # it did compile
    assert list(backbone.state_dict()) == keys
    for got, want in zip(compiled, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
