"""The pieces of the exported graphs on their own: adaptive pooling for any size, per-class NMS as ONNX Runtime
computes it, and the fp16 rule, on the graph and on ONNX Runtime's outputs."""
import io

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision
from torch import nn

from backbones.deploy.export import OPSET, ExportInfo, build_graph, check_fp32_norms, graph_bytes
from backbones.deploy.graphs import AdaptiveAvgPoolMatrix, PerClassNMS, replace_adaptive_pools
from backbones.models.convnext import ConvNeXt

TINY = dict(depths=[1, 1, 2, 1], dims=[32, 64, 128, 256])


def session(data: bytes) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(data, providers=['CPUExecutionProvider'])


@pytest.mark.parametrize('bins', [1, 2, 3, 6])
def test_adaptive_pool_matrix_is_adaptive_avg_pool_at_any_size(bins: int) -> None:
    pool = AdaptiveAvgPoolMatrix(bins)
    for shape in ((16, 16), (7, 11), (32, 21), (6, 6)):
        x = torch.randn(2, 3, *shape)
        torch.testing.assert_close(pool(x), nn.AdaptiveAvgPool2d(bins)(x), rtol=1e-5, atol=1e-6)
    module = nn.Sequential(nn.Conv2d(3, 3, 1), nn.AdaptiveAvgPool2d(bins))
    assert replace_adaptive_pools(module) == (bins != 1)


class _NMS(nn.Module):
    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return PerClassNMS.apply(boxes, scores, 0.5, 0.25, 5)


def test_per_class_nms_in_onnx_runtime_is_torchvisions_nms_of_each_class() -> None:
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(3, 40, 2, generator=generator) * 50
    boxes = torch.cat([corners, corners + 5 + torch.rand(3, 40, 2, generator=generator) * 30], -1)
    scores = torch.rand(3, 40, generator=generator)
    scores[0, :3] = 0.25  # at the threshold: left out (mmdet keeps scores above score_thr)
    buffer = io.BytesIO()
    torch.onnx.export(_NMS(), (boxes, scores), buffer, dynamo=False, opset_version=OPSET,
                      input_names=['boxes', 'scores'], dynamic_axes={'boxes': {1: 'n'}, 'scores': {1: 'n'}})
    selected = session(buffer.getvalue()).run(None, {'boxes': boxes.numpy(), 'scores': scores.numpy()})[0]
    for index in range(3):
        keep = torch.nonzero(scores[index] > 0.25).squeeze(1)
        expected = keep[torchvision.ops.nms(boxes[index, keep], scores[index, keep], 0.5)][:5]
        rows = selected[selected[:, 0] == index]
        assert (rows[:, 1] == 0).all() and rows[:, 2].tolist() == expected.tolist()


class _Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = ConvNeXt(arch=TINY, version='v2', init_cfg=None)


def _fp16_graph(model: nn.Module, rule: bool) -> bytes:
    """The backbone in fp16, with our rule (norms in fp32) or naively (everything in fp16)."""
    if rule:
        graph = build_graph(model, 'backbone', 'fp16')
    else:
        graph = build_graph(model.half(), 'backbone', 'fp32')  # fp32 export of an fp16 model: no casts
    return graph_bytes(graph, ExportInfo('backbone', 'fp16', (64, 64)))


def test_fp16_graph_keeps_every_normalisation_in_fp32_and_the_check_catches_one_that_is_not() -> None:
    torch.manual_seed(0)
    model = _Backbone().eval()
    norms = sum(isinstance(m, nn.LayerNorm) for m in model.modules())
    grns = sum(type(m).__name__ == 'GlobalResponseNorm' for m in model.modules())
    checked, half_convs = check_fp32_norms(onnx.load_from_string(_fp16_graph(model, rule=True)))
    assert grns == sum(TINY['depths']) and checked == norms + 2 * grns  # LayerNormalization; ReduceL2 + ReduceMean
    assert half_convs == sum(TINY['depths']) + 4  # every depthwise conv, the stem and three downsamples
    torch.manual_seed(0)
    with pytest.raises(ValueError, match='reads FLOAT16, not FLOAT'):
        check_fp32_norms(onnx.load_from_string(_fp16_graph(_Backbone().eval(), rule=False)))


def test_fp16_outputs_in_onnx_runtime_follow_fp32_with_large_activations() -> None:
    """GRN sums squares over the image: with fc1 weights 100 times larger its sums are far past fp16's 65504.
    (ONNX Runtime's CPU kernels accumulate fp16 reductions in fp32, so a graph with GRN in fp16 gave finite
    outputs here too, measured; the rule is for runtimes that accumulate in fp16, and is checked on the graph.)"""
    torch.manual_seed(0)
    model = _Backbone().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if 'fc1.weight' in name:
                parameter.mul_(100)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = [feature.numpy() for feature in build_graph(model, 'backbone', 'fp32')(image)]
    fp32 = graph_bytes(build_graph(model, 'backbone', 'fp32'), ExportInfo('backbone', 'fp32', (64, 64)))
    ours = _fp16_graph(model, rule=True)
    for theirs, expected in zip(session(fp32).run(None, {'image': image.numpy()}), reference):
        np.testing.assert_allclose(theirs, expected, rtol=1e-4, atol=1e-3)
    for theirs, expected in zip(session(ours).run(None, {'image': image.numpy()}), reference):
        assert theirs.dtype == np.float32 and np.isfinite(theirs).all()
        assert np.abs(theirs - expected).max() <= 0.01 * np.abs(expected).max()  # measured: at most 1.2e-3
