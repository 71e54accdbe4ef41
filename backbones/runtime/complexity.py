"""Parameters and FLOPs of a detector or segmentor, counted the way the ConvNeXt papers count.

FLOPs are multiply-adds of convolutions, linear layers and matrix products (norms, activations,
pooling, resizing and RoIAlign are not counted), at the input shape (default :func:`paper_shape`:
800x1280 for detection, 512x2048 for 512 crops, 640x2560 for 640 crops, as the papers use):

* detection: backbone, neck and RPN head on the whole input; each box head (every cascade stage) on
  1000 proposals; each mask head (every cascade stage) on 100 detections;
* segmentation: backbone and decode head on the whole input (the auxiliary head is training-only).

Parameters are those of the whole model (auxiliary head included). Counting runs on the meta device,
so even the largest configs take seconds and no memory. Used by ``tools/analysis/get_flops.py`` and
``tests/test_configs.py``.
"""
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from torch.utils.flop_counter import FlopCounterMode

from .cli import task_of

NUM_PROPOSALS = 1000
NUM_DETECTIONS = 100


def multiply_adds(function, *args) -> tuple[int, object]:
    """Multiply-adds of ``function(*args)`` (torch counts a multiply-add as 2 FLOPs), and its output."""
    with FlopCounterMode(display=False) as counter:
        output = function(*args)
    return counter.get_total_flops() // 2, output


def build_on_meta(cfg: Config) -> torch.nn.Module:
    """The model of ``cfg`` on the meta device, in eval mode, without loading pre-trained weights."""
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    if cfg.model.get('type') in ('SegTTAModel', 'DetTTAModel'):
        cfg.model = cfg.model.module
    cfg.model.backbone.init_cfg = None
    with torch.device('meta'):
        return MODELS.build(cfg.model).eval()


def paper_shape(cfg: Config) -> tuple[int, int]:
    """The papers' input (H, W): 800x1280 for detection, four crops wide for segmentation."""
    if task_of(cfg) == 'detection':
        return 800, 1280
    crop = cfg.model.test_cfg.get('crop_size', (512, 512))
    return crop[0], crop[0] * 4


def per_stage(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The per-stage modules of a cascade RoI head part (a ModuleList), or the single module of Mask R-CNN."""
    return list(module) if isinstance(module, torch.nn.ModuleList) else [module]


def count_detector(model: torch.nn.Module, image: torch.Tensor) -> dict[str, int]:
    """Multiply-adds per part of a (Cascade) Mask R-CNN."""
    counts = {}
    counts['backbone'], stage_features = multiply_adds(model.backbone, image)
    counts['neck'], pyramid = multiply_adds(model.neck, stage_features)
    counts['rpn head'], _ = multiply_adds(model.rpn_head, pyramid)
    roi_head = model.roi_head
    bbox_heads, mask_heads = per_stage(roi_head.bbox_head), per_stage(roi_head.mask_head)
    box_extractor, mask_extractor = per_stage(roi_head.bbox_roi_extractor)[0], per_stage(roi_head.mask_roi_extractor)[0]
    box_features = torch.empty(NUM_PROPOSALS, box_extractor.out_channels, *box_extractor.roi_layers[0].output_size,
                               device=image.device)
    mask_features = torch.empty(NUM_DETECTIONS, mask_extractor.out_channels, *mask_extractor.roi_layers[0].output_size,
                                device=image.device)
    counts[f'box heads ({len(bbox_heads)} x {NUM_PROPOSALS} RoIs)'] = sum(
        multiply_adds(head, box_features)[0] for head in bbox_heads)
    counts[f'mask heads ({len(mask_heads)} x {NUM_DETECTIONS} RoIs)'] = sum(
        multiply_adds(head, mask_features)[0] for head in mask_heads)
    return counts


def count_segmentor(model: torch.nn.Module, image: torch.Tensor) -> dict[str, int]:
    """Multiply-adds of the backbone and decode head of an encoder-decoder."""
    backbone, stage_features = multiply_adds(model.backbone, image)
    return {'backbone': backbone, 'decode head': multiply_adds(model.decode_head, stage_features)[0]}


def complexity(cfg: Config, shape: tuple[int, int] | None = None) -> tuple[int, dict[str, int]]:
    """Number of parameters and multiply-adds per part of the model of ``cfg`` at ``shape`` (H, W)."""
    model = build_on_meta(cfg)
    image = torch.empty(1, 3, *(shape or paper_shape(cfg)), device='meta')
    with torch.no_grad():
        counts = count_detector(model, image) if task_of(cfg) == 'detection' else count_segmentor(model, image)
    return sum(p.numel() for p in model.parameters()), counts
