"""ONNX export of a built detector, segmentor or backbone (the graphs of :mod:`backbones.deploy.graphs`).

:func:`export_graph` traces with torch's TorchScript-based ONNX exporter (``dynamo=False``, opset 17: ONNX's
``LayerNormalization``, and torchvision's ``RoiAlign`` with ``half_pixel`` coordinates): it writes
torchvision's ``nms`` and ``roi_align`` and our :class:`~backbones.deploy.graphs.PerClassNMS` as standard
operators, and needs no ``onnxscript``. The file carries what running it needs as plain JSON in its metadata
(:data:`METADATA_KEY`): the family, precision, sample shape it was traced at, classes and the few test
settings applied outside the graph.

:func:`check_fp32_norms` is the fp16 rule checked on the graph itself.
"""
import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import onnx
import torch
from torch import nn

from ..checkpoints.writing import write_atomic
from .graphs import BackboneGraph, SegmentorGraph, TwoStageDetectorGraph, half_with_fp32_norms, replace_adaptive_pools

__all__ = ['FAMILIES', 'METADATA_KEY', 'OPSET', 'ExportInfo', 'build_graph', 'check_fp32_norms', 'export_graph',
           'family_of', 'graph_bytes', 'sample_inputs']

METADATA_KEY = 'convnext_dense'
FORMAT_VERSION = 1
OPSET = 17
FAMILIES = ('mask_rcnn', 'cascade_mask_rcnn', 'upernet', 'backbone')
# ONNX reductions a normalisation computes its statistics with (LayerNorm is one operator; GRN is ReduceL2 and
# ReduceMean, or Pow, ReduceSum and Sqrt in some exporter versions).
NORM_REDUCTIONS = ('LayerNormalization', 'ReduceL2', 'ReduceMean', 'ReduceSum', 'ReduceSumSquare')


@dataclass
class ExportInfo:
    """What an exported file says of itself (its :data:`METADATA_KEY` metadata, JSON).

    Attributes:
        family: One of :data:`FAMILIES`.
        precision: ``fp32`` or ``fp16``.
        sample_shape: ``(height, width)`` of the traced sample (the graph runs at any size unless ``static``).
        labels: Segmentation: the graph returns the label map, not logits.
        classes: The class names; category_ids and palette where the checkpoint carried them.
        category_ids: COCO category id of each class (detection), or empty.
        palette: An RGB colour per class, or empty.
        mask_thr_binary: Detection: the mask probability threshold applied when pasting (Python).
        align_corners: Segmentation: the decode head's resize rule, which the Python resize to the original
            image follows.
        inputs: Input names, in order. outputs: Output names.
    """
    family: str
    precision: str
    sample_shape: tuple[int, int]
    labels: bool = False
    classes: tuple[str, ...] = ()
    category_ids: tuple[int, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    mask_thr_binary: float = 0.5
    align_corners: bool = False
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    version: int = field(default=FORMAT_VERSION)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def family_of(model: nn.Module, part: str) -> str:
    """The export family of a built model: ``backbone`` for ``part='backbone'``, else by its heads.

    Raises:
        TypeError: A model of none of our families (the tool turns it into one line).
    """
    if part == 'backbone':
        return 'backbone'
    if hasattr(model, 'decode_head'):
        return 'upernet'
    roi_head = getattr(model, 'roi_head', None)
    if roi_head is not None and getattr(roi_head, 'with_mask', False):
        return 'cascade_mask_rcnn' if hasattr(roi_head, 'num_stages') else 'mask_rcnn'
    raise TypeError(f'{type(model).__name__} is not a Mask R-CNN, Cascade Mask R-CNN or UperNet model')


def build_graph(model: nn.Module, family: str, precision: str, labels: bool = False) -> nn.Module:
    """The traceable module of ``family`` around ``model`` (changed in place: eval mode, fp16 casts, pools)."""
    model.eval()
    if family == 'backbone':
        graph = BackboneGraph(model.backbone)
    elif family == 'upernet':
        replace_adaptive_pools(model.decode_head)
        graph = SegmentorGraph(model, labels)
    else:
        graph = TwoStageDetectorGraph(model)
    if precision == 'fp16':
        half_with_fp32_norms(model.backbone)
        if family == 'upernet':
            half_with_fp32_norms(model.decode_head)
        elif family != 'backbone' and getattr(model, 'neck', None) is not None:
            half_with_fp32_norms(model.neck)
    return graph.eval()


def sample_inputs(family: str, shape: tuple[int, int], batch: int = 1) -> tuple[torch.Tensor, ...]:
    """A traced sample: a preprocessed-looking batch (and the detectors' unpadded size)."""
    image = torch.randn(1 if family in ('mask_rcnn', 'cascade_mask_rcnn') else batch, 3, *shape)
    if family in ('mask_rcnn', 'cascade_mask_rcnn'):
        return image, torch.tensor(shape, dtype=torch.long)
    return (image,)


def _names(family: str, labels: bool) -> tuple[tuple[str, ...], tuple[str, ...], dict]:
    """Input names, output names and dynamic axes of a family's graph."""
    if family in ('mask_rcnn', 'cascade_mask_rcnn'):
        outputs = ('boxes', 'scores', 'labels', 'masks')
        axes = {'image': {2: 'height', 3: 'width'}, **{name: {0: 'detections'} for name in outputs}}
        return ('image', 'image_size'), outputs, axes
    if family == 'upernet':
        output = 'labels' if labels else 'logits'
        return ('image',), (output,), {'image': {0: 'batch', 2: 'height', 3: 'width'},
                                       output: {0: 'batch', **({1: 'height', 2: 'width'} if labels
                                                               else {2: 'height', 3: 'width'})}}
    outputs = tuple(f'stage{index}' for index in range(4))
    return ('image',), outputs, {'image': {0: 'batch', 2: 'height', 3: 'width'},
                                 **{name: {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'} for name in outputs}}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The legacy exporter's notices (its deprecation, tracer notes on mmdet's shape checks) are not the
    user's to act on; what the traced graph computes is checked against PyTorch by the tool instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        warnings.filterwarnings('ignore', category=UserWarning)
        warnings.filterwarnings('ignore', category=FutureWarning)
        yield


def graph_bytes(graph: nn.Module, info: ExportInfo) -> bytes:
    """Trace ``graph`` on a sample of ``info.sample_shape`` and return the ONNX model, metadata included."""
    inputs, outputs, axes = _names(info.family, info.labels)
    info.inputs, info.outputs = inputs, outputs
    buffer = io.BytesIO()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        sample = sample_inputs(info.family, info.sample_shape)
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(graph, sample, buffer, dynamo=False,
                          opset_version=OPSET, input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=axes, do_constant_folding=True)
    model = onnx.load_from_string(buffer.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    model.producer_name = 'convnext-dense tools/export.py'
    return model.SerializeToString()


def export_graph(graph: nn.Module, info: ExportInfo, path: str) -> bytes:
    """Write ``graph`` to ``path`` as ONNX (atomically) and return the bytes written."""
    data = graph_bytes(graph, info)
    write_atomic(os.fspath(path), data)
    return data


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every value of the graph that ONNX's shape inference can tell."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == 'Constant':
            for attribute in node.attribute:
                if attribute.name == 'value':
                    types[node.output[0]] = attribute.t.data_type
    return types


def check_fp32_norms(model: onnx.ModelProto) -> tuple[int, int]:
    """Check the fp16 rule on a graph: every normalisation's reduction reads fp32.

    Returns:
        (reductions checked, fp16 convolutions): the second shows that the graph really computes in fp16.

    Raises:
        ValueError: A reduction that reads fp16 (or a type shape inference cannot tell), naming the node.
    """
    types = _value_types(model)
    checked = 0
    for node in model.graph.node:
        if node.op_type in NORM_REDUCTIONS:
            dtype = types.get(node.input[0])
            if dtype != onnx.TensorProto.FLOAT:
                name = onnx.TensorProto.DataType.Name(dtype) if dtype else 'an unknown type'
                raise ValueError(f'{node.op_type} node {node.name!r} reads {name}, not FLOAT')
            checked += 1
    half_convs = sum(node.op_type == 'Conv' and types.get(node.input[0]) == onnx.TensorProto.FLOAT16
                     for node in model.graph.node)
    return checked, half_convs
