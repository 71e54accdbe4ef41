"""backbones/precision.py and the precision glue of the tools: bf16 on CPUs, mmcv's ops fed fp32."""
import pytest
import torch
from mmcv.ops import RoIAlign, nms
from mmengine.config import Config
from mmengine.registry import OPTIM_WRAPPERS
from mmengine.structures import InstanceData

from backbones.precision import AutocastOptimWrapper
from backbones.runtime import autocast_test_step, set_training_precision


def test_roi_align_takes_bf16_features_and_returns_them_in_bf16() -> None:
    features = torch.randn(2, 8, 24, 32).bfloat16().requires_grad_()
    rois = torch.tensor([[0, 1.0, 2.0, 20.0, 15.0], [1, 4.5, 3.0, 30.0, 22.5], [1, 0.0, 0.0, 8.0, 8.0]])
    roi_align = RoIAlign((7, 7), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    pooled = roi_align(features, rois)
    reference_input = features.detach().float().requires_grad_()
    reference = roi_align(reference_input, rois)
    assert pooled.dtype == torch.bfloat16
    torch.testing.assert_close(pooled, reference.bfloat16(), rtol=0, atol=0)  # the fp32 kernel, rounded once

    pooled.float().sum().backward()
    reference.sum().backward()
    assert features.grad.dtype == torch.bfloat16
    torch.testing.assert_close(features.grad, reference_input.grad.bfloat16(), rtol=0, atol=0)


def test_nms_takes_bf16_boxes_and_scores() -> None:
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=generator) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=generator) * 30], 1).bfloat16()
    scores = torch.rand(200, generator=generator).bfloat16()
    kept, indices = nms(boxes, scores, iou_threshold=0.5)
    _, reference = nms(boxes.float(), scores.float(), iou_threshold=0.5)
    assert torch.equal(indices, reference) and 0 < len(indices) < 200


class _Toy(torch.nn.Module):

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 1)

    def test_step(self, data: torch.Tensor) -> list[InstanceData]:
        return [InstanceData(scores=self.linear(data).squeeze(1), labels=torch.arange(len(data)))]


def test_autocast_optim_wrapper_trains_in_bf16_with_fp32_weights() -> None:
    model = _Toy()
    wrapper = OPTIM_WRAPPERS.build(dict(type='AutocastOptimWrapper', optimizer=torch.optim.SGD(model.parameters(), lr=1)))
    assert isinstance(wrapper, AutocastOptimWrapper)
    before = model.linear.weight.detach().clone()
    with wrapper.optim_context(model):
        out = model.linear(torch.randn(4, 8))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().pow(2).mean())
    assert model.linear.weight.dtype == torch.float32 and not torch.equal(model.linear.weight, before)
    with pytest.raises(ValueError, match='dtype must be one of bfloat16, float16'):
        AutocastOptimWrapper(dtype='float8', optimizer=torch.optim.SGD(model.parameters(), lr=1))


@pytest.mark.parametrize('precision, wrapper', [('fp32', 'OptimWrapper'), ('bf16', 'AutocastOptimWrapper')])
def test_training_precision_picks_the_optim_wrapper(precision: str, wrapper: str) -> None:
    cfg = Config(dict(optim_wrapper=dict(type='AmpOptimWrapper', loss_scale='dynamic', optimizer=dict(type='SGD', lr=1))))
    set_training_precision(cfg, precision)
    built = OPTIM_WRAPPERS.build(dict(cfg.optim_wrapper, optimizer=torch.optim.SGD(_Toy().parameters(), lr=1)))
    assert type(built).__name__ == wrapper  # and it builds: no AMP-only keys left


def test_autocast_test_step_runs_in_bf16_and_returns_fp32() -> None:
    model, data = _Toy(), torch.randn(3, 8)
    reference = model.test_step(data)[0]
    autocast_test_step(model, 'bf16')
    prediction = model.test_step(data)[0]
    assert prediction.scores.dtype == torch.float32 and prediction.labels.dtype == torch.int64
    with torch.autocast('cpu', dtype=torch.bfloat16):
        in_bf16 = model.linear(data).squeeze(1).float()
    torch.testing.assert_close(prediction.scores, in_bf16, rtol=0, atol=0)  # computed in bf16, not fp32
    assert not torch.equal(prediction.scores, reference.scores)
