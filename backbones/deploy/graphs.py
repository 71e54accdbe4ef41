"""The inference of our models as traceable modules: what :mod:`backbones.deploy.export` writes to ONNX.

mmdet's and mmseg's ``predict`` paths branch in Python on data (how many boxes passed a threshold, which
NMS strategy fits their count, which FPN level a RoI maps to), which a trace would freeze at the values of
the sample image. These modules run the same computation with the models' own submodules (backbone, neck,
heads, anchor generator, box coders, RoI-level rule) and keep every data-dependent step inside the graph as
a standard ONNX operator: ``TopK``, ``NonMaxSuppression`` (:class:`PerClassNMS`), ``RoiAlign``
(torchvision's ``roi_align``, exported as ``RoiAlign`` with ``half_pixel`` coordinates, which is mmcv's
``aligned=True``), ``NonZero`` and ``ScatterND``.

Inputs are the config's preprocessed batch (``data_preprocessor`` output: normalised, RGB, padded), so the
same Python pipeline feeds PyTorch and ONNX Runtime. Outputs:

* :class:`BackboneGraph`: the four stage features (strides 4 to 32), any batch and size;
* :class:`SegmentorGraph`: UperNet's class logits at the input size, or its label map; any batch and size
  (the pyramid pooling's adaptive average pools become :class:`AdaptiveAvgPoolMatrix`, which the exporter
  can write for any input size);
* :class:`TwoStageDetectorGraph`: one image (batch 1, any size) and its ``(height, width)`` before padding
  (the box clip), to boxes (in input pixels), scores, labels and mask probabilities at the mask head's
  resolution (28x28) for each detection, as mmdet's Mask R-CNN and Cascade Mask R-CNN ``predict`` give
  them before rescaling to the original image and pasting (which stay in Python:
  :mod:`backbones.deploy.onnx_runtime`).

In ``fp16`` (:func:`half_with_fp32_norms`) the backbone and neck (UperNet: backbone and decode head) run in
fp16 with every LayerNorm and GRN computing in fp32; box coordinates, NMS, RoIAlign and the RoI heads stay in
fp32, and every output is fp32.
"""
import torch
import torch.nn.functional as F
import torchvision
from mmcv.ops import RoIAlign
from mmdet.models.task_modules.coders.delta_xywh_bbox_coder import delta2bbox
from timm.layers.grn import GlobalResponseNorm
from torch import nn

__all__ = ['AdaptiveAvgPoolMatrix', 'BackboneGraph', 'PerClassNMS', 'SegmentorGraph', 'TwoStageDetectorGraph',
           'half_with_fp32_norms', 'replace_adaptive_pools']

NORM_TYPES = (nn.LayerNorm, GlobalResponseNorm)  # timm's LayerNorm and LayerNorm2d are nn.LayerNorm


def _to_fp32_input(_: nn.Module, args: tuple) -> tuple:
    return (args[0].float(), *args[1:])


def _to_fp16_output(_: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.half()


def half_with_fp32_norms(module: nn.Module) -> int:
    """Cast ``module`` to fp16 except its LayerNorms and GRNs, which take fp32 in and give fp16 out.

    ConvNeXt's channels-first LayerNorm squares deviations of activations that reach the hundreds in the last
    stage, past fp16's 65504; GRN sums squares over the whole image. Both stay in fp32 here (their inputs are
    cast up, their parameters stay fp32, their outputs are cast back), which the exported graph shows as a Cast
    to float before each normalisation's reduction (:func:`backbones.deploy.export.check_fp32_norms`).

    Returns:
        How many normalisation modules were kept in fp32.
    """
    module.half()
    norms = [layer for layer in module.modules() if isinstance(layer, NORM_TYPES)]
    for layer in norms:
        layer.float()
        layer.register_forward_pre_hook(_to_fp32_input)
        layer.register_forward_hook(_to_fp16_output)
    return len(norms)


def _bin_matrix(size: torch.Tensor, bins: int, dtype: torch.dtype) -> torch.Tensor:
    """The (bins, size) averaging matrix of adaptive average pooling along one axis: bin ``i`` covers
    ``floor(i * size / bins)`` to ``ceil((i + 1) * size / bins)``, as ``nn.AdaptiveAvgPool2d`` does."""
    index = torch.arange(bins, device=size.device)
    start = torch.div(index * size, bins, rounding_mode='floor')
    end = torch.div((index + 1) * size + bins - 1, bins, rounding_mode='floor')
    position = torch.arange(size, device=size.device)
    inside = (position[None, :] >= start[:, None]) & (position[None, :] < end[:, None])
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


class AdaptiveAvgPoolMatrix(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` as two matrix products, for any input size in an ONNX graph.

    The exporter writes adaptive pooling only where the input size divides by the output size at export time
    (then as a fixed ``AvgPool``); UperNet pools its last stage to 1, 2, 3 and 6 bins, which 16 (a 512-pixel
    image) does not divide. The bins here are computed from the input's shape inside the graph.
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = torch._shape_as_tensor(x)[2], torch._shape_as_tensor(x)[3]
        rows = _bin_matrix(height, self.output_size[0], x.dtype)
        columns = _bin_matrix(width, self.output_size[1], x.dtype)
        return torch.matmul(torch.matmul(rows, x), columns.transpose(0, 1))


def replace_adaptive_pools(module: nn.Module) -> int:
    """Replace every ``nn.AdaptiveAvgPool2d`` of ``module`` by :class:`AdaptiveAvgPoolMatrix`; return how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size not in (1, (1, 1)):
            setattr(module, name, AdaptiveAvgPoolMatrix(child.output_size))
            count += 1
        else:
            count += replace_adaptive_pools(child)
    return count


class BackboneGraph(nn.Module):
    """The backbone of a detector or segmentor: image batch to its stage features (fp32)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtype = next(self.backbone.parameters()).dtype
        return tuple(feature.float() for feature in self.backbone(image.to(dtype)))


class SegmentorGraph(nn.Module):
    """An mmseg ``EncoderDecoder``'s ``whole`` inference: class logits at the input size, or their argmax.

    Args:
        segmentor: The built segmentor (eval mode).
        labels: Return the label map (int64, N x H x W) instead of the logits (N x classes x H x W).
    """

    def __init__(self, segmentor: nn.Module, labels: bool = False) -> None:
        super().__init__()
        self.segmentor = segmentor
        self.labels = labels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dtype = next(self.segmentor.backbone.parameters()).dtype
        features = self.segmentor.extract_feat(image.to(dtype))
        logits = self.segmentor.decode_head(features).float()
        logits = F.interpolate(logits, size=image.shape[2:], mode='bilinear',
                               align_corners=self.segmentor.align_corners)
        return logits.argmax(1) if self.labels else logits


class PerClassNMS(torch.autograd.Function):
    """NMS of each class on its own boxes: ONNX's ``NonMaxSuppression`` with the classes as its batch.

    Args (of ``apply``):
        boxes: (classes, n, 4) boxes, x1 y1 x2 y2.
        scores: (classes, n).
        iou_threshold: A box is dropped where its IoU with a kept box of its class is above this.
        score_threshold: Only boxes scoring above this take part.
        max_per_class: The most boxes kept per class.

    Returns:
        (k, 3) int64 rows ``(class, 0, box index)``, each class's boxes by descending score (ONNX's layout).
    """

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float,
                max_per_class: int) -> torch.Tensor:
        rows = []
        for index, (class_boxes, class_scores) in enumerate(zip(boxes, scores)):
            candidates = torch.nonzero(class_scores > score_threshold).squeeze(1)
            keep = candidates[torchvision.ops.nms(class_boxes[candidates], class_scores[candidates],
                                                  iou_threshold)][:max_per_class]
            rows.append(torch.stack([torch.full_like(keep, index), torch.zeros_like(keep), keep], 1))
        return torch.cat(rows) if rows else boxes.new_zeros((0, 3), dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold: float, score_threshold: float, max_per_class: int):
        scores = g.op('Unsqueeze', scores, g.op('Constant', value_t=torch.tensor([1])))
        return g.op('NonMaxSuppression', boxes, scores,
                    g.op('Constant', value_t=torch.tensor([max_per_class], dtype=torch.long)),
                    g.op('Constant', value_t=torch.tensor([iou_threshold], dtype=torch.float)),
                    g.op('Constant', value_t=torch.tensor([score_threshold], dtype=torch.float)))


def _first(tensor: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the ``count`` largest values of a 1-D tensor (all of them when it is shorter), for any
    length inside the graph."""
    length = torch._shape_as_tensor(tensor)[0]
    k = torch.minimum(length, torch.tensor(count, dtype=length.dtype))
    if not torch.jit.is_tracing():
        k = int(k)
    return tensor.topk(k).indices


def _pool_rois(extractor: nn.Module, features: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
    """mmdet's ``SingleRoIExtractor``: each RoI pooled from the FPN level its size maps to.

    The RoIs of each level are pooled together and the results put back in RoI order by the inverse of the
    level order (a sort), not by an indexed write: the exporter writes an indexed write differently where the
    traced sample had no RoI at a level, which would make the graph depend on the sample.
    """
    layers = extractor.roi_layers
    levels = extractor.map_roi_levels(rois, len(layers))
    if not all(isinstance(layer, RoIAlign) and layer.pool_mode == 'avg' for layer in layers):
        raise TypeError('only mmcv RoIAlign (avg) RoI layers export')
    order, pooled = [], []
    for level, layer in enumerate(layers):
        index = torch.nonzero(levels == level).squeeze(1)
        order.append(index)
        pooled.append(torchvision.ops.roi_align(features[level], rois[index], layer.output_size,
                                                layer.spatial_scale, layer.sampling_ratio, layer.aligned))
    return torch.cat(pooled)[torch.argsort(torch.cat(order))]


def _decode(coder: nn.Module, priors: torch.Tensor, deltas: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """``DeltaXYWHBBoxCoder.decode`` of (n, 4) deltas, clipped to the float ``(height, width)`` tensor
    ``image_size``: mmdet's own ``delta2bbox``, which its coder calls outside an export (inside one it takes a
    path that mmdet 3 no longer ships).

    ``delta2bbox`` returns early, in Python, for no boxes; one extra zero box, dropped after, keeps that branch
    out of the trace, so that the graph does not depend on how many boxes the traced sample had."""
    zero = priors.new_zeros((1, 4))
    boxes = delta2bbox(torch.cat([priors, zero]), torch.cat([deltas, zero]), coder.means, coder.stds, image_size,
                       16 / 1000, coder.clip_border, coder.add_ctr_clamp, coder.ctr_clamp)
    return boxes[:-1]


def _with_batch_index(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes], 1)


class TwoStageDetectorGraph(nn.Module):
    """Mask R-CNN or Cascade Mask R-CNN inference of one image, from the preprocessed image to detections.

    The steps are mmdet's ``predict`` with the model's ``test_cfg``: RPN scores and boxes per level, the top
    ``rpn.nms_pre`` of each, decoded and clipped, boxes not wider and taller than ``min_bbox_size`` removed,
    NMS across levels with mmdet's level offsets, the first ``rpn.max_per_img``; the RoI head on them (each
    Cascade stage refining the boxes of the last, the class scores averaged over stages), class-wise boxes
    clipped, per-class NMS of the scores above ``rcnn.score_thr``, the ``rcnn.max_per_img`` best; the mask
    head (Cascade: the mean of its stages' probabilities) on the detected boxes, each detection's class map.

    Forward args:
        image: (1, 3, H, W) preprocessed image.
        image_size: (2,) int64, the image's height and width before padding (mmdet's ``img_shape``).

    Forward returns:
        boxes (k, 4) fp32, scores (k,), labels (k,) int64, masks (k, 28, 28) fp32 probabilities.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.rpn_cfg = detector.test_cfg.rpn
        self.rcnn_cfg = detector.test_cfg.rcnn
        roi_head = detector.roi_head
        self.cascade = hasattr(roi_head, 'num_stages')
        self.stages = roi_head.num_stages if self.cascade else 1
        if not roi_head.with_mask:
            raise TypeError('only detectors with a mask head export')

    def _stage(self, part: str, stage: int) -> nn.Module:
        module = getattr(self.detector.roi_head, part)
        return module[stage] if self.cascade else module

    def proposals(self, features: list[torch.Tensor], image_size: torch.Tensor) -> torch.Tensor:
        head = self.detector.rpn_head
        cls_scores, box_deltas = head(features)
        priors = head.prior_generator.grid_priors([score.shape[-2:] for score in cls_scores],
                                                  dtype=features[0].dtype, device=features[0].device)
        scores, deltas, anchors, levels = [], [], [], []
        for level, (score, delta, prior) in enumerate(zip(cls_scores, box_deltas, priors)):
            score = score[0].permute(1, 2, 0).reshape(-1)
            score = score.sigmoid() if head.use_sigmoid_cls else score.reshape(-1, 2).softmax(-1)[:, 0]
            keep = _first(score, self.rpn_cfg.get('nms_pre', -1)) if self.rpn_cfg.get('nms_pre', -1) > 0 else None
            delta = delta[0].permute(1, 2, 0).reshape(-1, head.bbox_coder.encode_size)
            if keep is not None:
                score, delta, prior = score[keep], delta[keep], prior[keep]
            scores.append(score)
            deltas.append(delta)
            anchors.append(prior)
            levels.append(torch.full_like(score, level))
        scores, levels = torch.cat(scores), torch.cat(levels)
        boxes = _decode(head.bbox_coder, torch.cat(anchors), torch.cat(deltas), image_size)
        min_size = self.rpn_cfg.get('min_bbox_size', -1)
        if min_size >= 0:
            valid = torch.nonzero(((boxes[:, 2] - boxes[:, 0]) > min_size)
                                  & ((boxes[:, 3] - boxes[:, 1]) > min_size)).squeeze(1)
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        # mmcv's batched_nms for fewer than split_thr (10000) boxes, as the RPN always has: one NMS with each
        # level's boxes moved beyond the others' (the same float operations as mmdet's).
        highest = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()  # 0 when no box is left
        offset_boxes = boxes + (levels * (highest + 1))[:, None]
        kept = PerClassNMS.apply(offset_boxes[None], scores[None], float(self.rpn_cfg.nms.iou_threshold), -1.0,
                                 int(self.rpn_cfg.max_per_img))[:, 2]
        return boxes[kept]

    def classify(self, features: list[torch.Tensor], proposals: torch.Tensor,
                 image_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities (n, classes + 1) and class-wise boxes (n, classes, 4) of the proposals."""
        rois = _with_batch_index(proposals)
        logits = []
        for stage in range(self.stages):
            head = self._stage('bbox_head', stage)
            cls_score, box_delta = head(_pool_rois(self._stage('bbox_roi_extractor', stage), features, rois))
            logits.append(cls_score)
            if stage < self.stages - 1:  # Cascade: the next stage pools the refined boxes of the top class
                if not head.reg_class_agnostic:
                    label = cls_score[:, :-1].argmax(1) * 4
                    box_delta = torch.gather(box_delta, 1, torch.stack([label + i for i in range(4)], 1))
                rois = _with_batch_index(_decode(head.bbox_coder, rois[:, 1:], box_delta, image_size))
        probabilities = (sum(logits) / len(logits) if self.cascade else logits[0]).softmax(-1)
        classes = head.num_classes
        if head.reg_class_agnostic:
            boxes = _decode(head.bbox_coder, rois[:, 1:], box_delta, image_size)[:, None, :].expand(-1, classes, 4)
        else:
            boxes = _decode(head.bbox_coder, rois[:, 1:].repeat_interleave(classes, 0), box_delta.reshape(-1, 4),
                            image_size).reshape(-1, classes, 4)
        return probabilities, boxes

    def masks(self, features: list[torch.Tensor], boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rois = _with_batch_index(boxes)
        probabilities = [self._stage('mask_head', stage)(
            _pool_rois(self._stage('mask_roi_extractor', stage), features, rois)).sigmoid()
            for stage in range(self.stages)]
        merged = sum(probabilities) / len(probabilities) if self.cascade else probabilities[0]
        return merged[torch.arange(merged.shape[0]), labels]

    def forward(self, image: torch.Tensor, image_size: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtype = next(self.detector.backbone.parameters()).dtype
        features = [feature.float() for feature in self.detector.extract_feat(image.to(dtype))]
        image_size = image_size.float()
        probabilities, boxes = self.classify(features, self.proposals(features, image_size), image_size)
        classes = boxes.shape[1]
        class_boxes = boxes.permute(1, 0, 2)
        class_scores = probabilities[:, :classes].transpose(0, 1)
        selected = PerClassNMS.apply(class_boxes, class_scores, float(self.rcnn_cfg.nms.iou_threshold),
                                     float(self.rcnn_cfg.score_thr), int(self.rcnn_cfg.max_per_img))
        labels, index = selected[:, 0], selected[:, 2]
        scores = class_scores[labels, index]
        best = _first(scores, int(self.rcnn_cfg.max_per_img))
        labels, boxes, scores = labels[best], class_boxes[labels[best], index[best]], scores[best]
        return boxes, scores, labels, self.masks(features, boxes, labels)
