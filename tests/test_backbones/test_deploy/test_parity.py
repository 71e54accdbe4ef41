"""Exported models run by ONNX Runtime against the PyTorch models they came from, through the same test step.

Both sides get the same batch through the config's data preprocessor: the PyTorch side is mmdet's or mmseg's own
model (its ``predict``, mmcv's NMS and RoIAlign), the other the exported graph in ONNX Runtime with the Python
steps of :mod:`backbones.deploy.onnx_runtime`. Detectors run with ``score_thr=0`` (a fixed workload of
``max_per_img`` detections). The bars are the issue's: the same detections (count and labels), boxes within
1e-3 px, scores within 1e-4, mask IoU at least 0.99 per detection; UperNet logits within 1e-4 of PyTorch's.
Random full-size heads put mask probabilities near the 0.5 threshold, where float differences flip single
pixels: a mask of under 200 pixels with at most 2 pixels flipped (IoU 0.979 for a 96-pixel mask, measured)
also passes.

Demo-size models run on the demo images; the full-size ConvNeXt-T models (random weights at fan-in scale, 80 COCO
or 150 ADE20K classes) on one random image of a smaller size than the recipe's, which the exported graph takes
as it takes any size.
"""
import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DATASETS, MODELS, init_default_scope
from mmseg.structures import SegDataSample

import backbones  # noqa: F401  registers ConvNeXt
from backbones.deploy.export import ExportInfo, build_graph, export_graph
from backbones.deploy.onnx_runtime import onnx_model_cfg
from backbones.runtime.demo_data import ensure_demo_data
from backbones.runtime.onnx_backend import export_model
from tests.helpers import randomize_at_fan_in_scale

DEMO = {'mask_rcnn': 'configs/demo/mask_rcnn_convnext_demo.py',
        'cascade_mask_rcnn': 'configs/demo/cascade_convnext_demo.py',
        'upernet': 'configs/demo/upernet_convnext_demo.py'}
FULL = {'mask_rcnn': 'configs/det/mask_rcnn_convnext_t.py', 'cascade_mask_rcnn': 'configs/det/cascade_convnext_t.py',
        'upernet': 'configs/seg/upernet_convnext_t.py'}
FULL_IMAGE = (320, 448)  # (height, width): a multiple of 32, as the recipes' padding makes it


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('deploy')
    ensure_demo_data(root, num_train=1, num_val=3, image_size=128, seed=5)
    return root


def load_cfg(path: str) -> Config:
    cfg = Config.fromfile(path)
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.init_cfg = None
    if 'rcnn' in cfg.model.get('test_cfg', {}):
        cfg.model.test_cfg.rcnn.score_thr = 0.0  # a fixed workload: max_per_img detections
    return cfg


def pytorch_and_onnx(cfg: Config, tmp_path: Path, full_size: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The config's model with random weights, and its export through ``export_model`` run by ONNX Runtime."""
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()
    if full_size:
        randomize_at_fan_in_scale(model)
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'model.pth')
    report = export_model(copy.deepcopy(cfg), str(tmp_path / 'model.pth'), str(tmp_path / 'model.onnx'))
    assert report.same_detections is not False and (report.max_abs_diff or 0) < 1e-3
    return model.eval(), MODELS.build(onnx_model_cfg(cfg.model, report.path)).eval()


def demo_batch(cfg: Config, data_root: Path) -> dict:
    dataset = cfg.test_dataloader.dataset
    task_root = data_root / ('coco' if cfg.default_scope == 'mmdet' else 'ade')
    dataset.data_root = str(task_root)
    if cfg.default_scope == 'mmdet':
        dataset.ann_file = str(task_root / 'annotations' / 'instances_val.json')
        dataset.data_prefix = dict(img=str(task_root / 'val') + '/')
    else:
        dataset.data_prefix = dict(img_path='images/validation', seg_map_path='annotations/validation')
    built = DATASETS.build(dataset)
    return pseudo_collate([built[index] for index in range(len(built))])


def random_batch(cfg: Config, shape: tuple[int, int]) -> dict:
    image = torch.randint(0, 256, (3, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    meta = dict(img_shape=shape, ori_shape=shape, scale_factor=(1.0, 1.0), img_path='random.png')
    sample = DetDataSample(metainfo=meta) if cfg.default_scope == 'mmdet' else SegDataSample(metainfo=meta)
    return dict(inputs=[image], data_samples=[sample])


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def assert_same_detections(ours: DetDataSample, theirs: DetDataSample) -> dict:
    """The issue's bars; returns the largest differences seen."""
    a, b = ours.pred_instances, theirs.pred_instances
    assert len(a) == len(b) > 0
    unmatched = list(range(len(b)))
    worst = dict(box=0.0, score=0.0, mask_iou=1.0, flipped_pixels=0)
    for index in range(len(a)):
        # The best candidate of the same label and (nearly) the same score: equal scores may come in either order.
        candidates = [j for j in unmatched if b.labels[j] == a.labels[index]
                      and abs(float(b.scores[j] - a.scores[index])) <= 1e-4]
        assert candidates, f'detection {index} of PyTorch has no ONNX Runtime counterpart'
        j = min(candidates, key=lambda j: float((b.bboxes[j] - a.bboxes[index]).abs().max()))
        unmatched.remove(j)
        worst['box'] = max(worst['box'], float((b.bboxes[j] - a.bboxes[index]).abs().max()))
        worst['score'] = max(worst['score'], abs(float(b.scores[j] - a.scores[index])))
        iou, flipped = mask_iou(a.masks[index], b.masks[j]), int((a.masks[index] ^ b.masks[j]).sum())
        if iou < 0.99:
            assert flipped <= 2 and int((a.masks[index] | b.masks[j]).sum()) < 200, (index, iou, flipped)
        worst['mask_iou'], worst['flipped_pixels'] = min(worst['mask_iou'], iou), max(worst['flipped_pixels'], flipped)
    assert worst['box'] <= 1e-3 and worst['score'] <= 1e-4, worst
    return worst


def run_both(cfg: Config, tmp_path: Path, batch: dict, full_size: bool) -> tuple[list, list]:
    model, onnx_model = pytorch_and_onnx(cfg, tmp_path, full_size)
    with torch.no_grad():
        return model.test_step(copy.deepcopy(batch)), onnx_model.test_step(copy.deepcopy(batch))


@pytest.mark.parametrize('family', ['mask_rcnn', 'cascade_mask_rcnn'])
def test_demo_detector_detections_equal_pytorchs(tmp_path, demo_data, family) -> None:
    cfg = load_cfg(DEMO[family])
    ours, theirs = run_both(cfg, tmp_path, demo_batch(cfg, demo_data), full_size=False)
    for a, b in zip(ours, theirs):
        assert len(a.pred_instances) == cfg.model.test_cfg.rcnn.max_per_img
        assert_same_detections(a, b)


@pytest.mark.parametrize('family', ['mask_rcnn', 'cascade_mask_rcnn'])
def test_full_size_detector_detections_equal_pytorchs(tmp_path, family) -> None:
    cfg = load_cfg(FULL[family])
    ours, theirs = run_both(cfg, tmp_path, random_batch(cfg, FULL_IMAGE), full_size=True)
    assert_same_detections(ours[0], theirs[0])


@pytest.mark.parametrize('size', ['demo', 'full'])
def test_upernet_logits_equal_pytorchs(tmp_path, demo_data, size) -> None:
    cfg = load_cfg(DEMO['upernet'] if size == 'demo' else FULL['upernet'])
    if size == 'full':
        cfg.model.test_cfg = dict(mode='whole')
    batch = demo_batch(cfg, demo_data) if size == 'demo' else random_batch(cfg, (256, 352))
    ours, theirs = run_both(cfg, tmp_path, batch, full_size=size == 'full')
    for a, b in zip(ours, theirs):
        scale = a.seg_logits.data.abs().max()
        assert float((a.seg_logits.data - b.seg_logits.data).abs().max() / scale) <= 1e-4
        assert torch.equal(a.pred_sem_seg.data, b.pred_sem_seg.data)


def test_graph_runs_at_sizes_and_batches_it_was_not_traced_at(tmp_path) -> None:
    """The dynamic axes: a backbone traced at one size and batch runs at others, as PyTorch does."""
    import onnxruntime

    cfg = load_cfg(DEMO['upernet'])
    model = MODELS.build(cfg.model).eval()
    graph = build_graph(model, 'backbone', 'fp32')
    data = export_graph(graph, ExportInfo('backbone', 'fp32', (64, 96)), tmp_path / 'backbone.onnx')
    session = onnxruntime.InferenceSession(data, providers=['CPUExecutionProvider'])
    assert [value.name for value in onnx.load_from_string(data).graph.output] == [f'stage{i}' for i in range(4)]
    for batch, shape in ((1, (64, 96)), (3, (160, 96)), (2, (224, 288))):
        image = torch.randn(batch, 3, *shape)
        with torch.no_grad():
            expected = graph(image)
        for feature, stride, theirs in zip(expected, (4, 8, 16, 32), session.run(None, {'image': image.numpy()})):
            assert theirs.shape == (batch, feature.shape[1], shape[0] // stride, shape[1] // stride)
            np.testing.assert_allclose(theirs, feature.numpy(), rtol=1e-4, atol=1e-4)
