"""What the tools share for exported models: export from a config and checkpoint, and ``--backend onnxruntime``.

:func:`export_model` is ``tools/export.py``'s work; :func:`use_onnx_model` turns a config into one that
runs an exported file through ONNX Runtime (:mod:`backbones.deploy.onnx_runtime`), for ``tools/test.py``,
``tools/infer.py`` and the benchmark.
"""
import argparse
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import DATASETS, MODELS, init_default_scope

from ..checkpoints.loading import Checkpoint, load_model_weights, open_checkpoint
from ..deploy.export import ExportInfo, build_graph, check_fp32_norms, export_graph, family_of, sample_inputs
from ..deploy.onnx_file import ExportedFile
from ..errors import UsageError
from .cli import task_of
from .own_data import apply_checkpoint_classes, set_classes

__all__ = ['BACKENDS', 'ExportReport', 'add_backend', 'apply_onnx_classes', 'check_backend_options',
           'TRACE_SHAPE', 'export_built', 'export_model', 'use_onnx_model']

BACKENDS = ('pytorch', 'onnxruntime')
# The traced sample: the graphs take any size (and UperNet and the backbone any batch), so a small one is
# traced; tracing runs the model once, the tool's check once more, and --backend onnxruntime once when it
# verifies a file (fp16 convolutions are slow on CPUs).
TRACE_SHAPE = (64, 64)


def add_backend(parser: argparse.ArgumentParser) -> None:
    """``--backend {pytorch,onnxruntime}``: with onnxruntime, CKPT is a model.onnx of tools/export.py."""
    parser.add_argument('--backend', choices=BACKENDS, default='pytorch',
                        help='pytorch (CKPT a checkpoint, default) or onnxruntime (CKPT a model.onnx of '
                             'tools/export.py, run on the CPU in the precision it was exported in)')


def check_backend_options(args: argparse.Namespace) -> None:
    """The PyTorch-only options are an error with ``--backend onnxruntime``.

    Raises:
        UsageError: --precision other than fp32 (the file's precision applies), --channels-last, --compile or a
            distributed --launcher.
    """
    if args.backend != 'onnxruntime':
        return
    used = [flag for flag, value in (('--channels-last', args.channels_last), ('--compile', args.compile),
                                     ('--precision', getattr(args, 'precision', 'fp32') not in ('fp32', 'auto')))
            if value]
    if used:
        raise UsageError(f'{", ".join(used)} apply to the PyTorch backend: an ONNX model runs in the precision it '
                         'was exported in (tools/export.py --precision).')
    if getattr(args, 'launcher', 'none') != 'none':
        raise UsageError('--backend onnxruntime evaluates in one process: leave out --launcher.')


def apply_onnx_classes(cfg: Config, exported: ExportedFile) -> str | None:
    """Give ``cfg`` the classes (category ids, palette) that the ``exported`` file was exported with, as
    :func:`backbones.runtime.own_data.apply_checkpoint_classes` does for a checkpoint; the line for the log.

    The classes are the file's :class:`~backbones.class_meta.ClassMeta`, checked when it was read by the
    rule of a checkpoint's (:func:`backbones.class_meta.checked_class_meta`).

    Raises:
        UsageError: A backbone-only or label-map file, or the config names other classes than the file.
    """
    onnx_file, info, meta = exported.path, exported.info, exported.class_meta
    if info.family == 'backbone' or info.labels:
        raise UsageError(f'{onnx_file} is a {"backbone" if info.family == "backbone" else "label-map"} export: '
                         'tools/test.py and tools/infer.py run the full model exported with its default outputs.')
    if meta is None:
        return None
    extra = {} if meta.category_ids is None else {'category_ids': meta.category_ids}
    if meta.palette is not None:
        extra['palette'] = list(meta.palette)
    line = set_classes(cfg, meta.classes, onnx_file, **extra)
    return line if meta.note is None else f'{line} Note: {meta.note}.'


def use_onnx_model(cfg: Config, exported: ExportedFile) -> None:
    """Replace ``cfg.model`` by the ONNX Runtime model of the ``exported`` file (the tool's one read of it,
    handed to the model), which is verified against it when
    built (:mod:`backbones.deploy.onnx_file`); call after :func:`apply_onnx_classes` (which refuses files the
    tools cannot run), once the classes are final."""
    from ..deploy.onnx_runtime import onnx_model_cfg  # mmdet's and mmseg's model code: for this backend only

    if 'module' in cfg.model:  # a TTA model (--tta) around the model
        cfg.model.module = onnx_model_cfg(cfg.model.module, exported)
    else:
        cfg.model = onnx_model_cfg(cfg.model, exported)


@dataclass
class ExportReport:
    """What :func:`export_model` measured.

    Attributes:
        path: The file written.
        info: Its metadata.
        max_abs_diff: The largest difference of any output between ONNX Runtime and the PyTorch graph on the
            sample (detection: boxes, scores and masks where both give the same detections), or None.
        same_detections: Detection: ONNX Runtime gave the same number and labels of detections.
        norm_reductions: fp16: how many normalisation reductions were checked to read fp32.
        fp16_convolutions: fp16: how many convolutions read fp16.
    """
    path: str
    info: ExportInfo
    max_abs_diff: float | None
    same_detections: bool | None
    norm_reductions: int
    fp16_convolutions: int


def _class_meta(cfg: Config) -> dict:
    metainfo = DATASETS.build(dict(cfg.test_dataloader.dataset, lazy_init=True)).metainfo
    palette = metainfo.get('palette') or ()
    return dict(classes=tuple(metainfo.get('classes') or ()),
                category_ids=tuple(int(i) for i in metainfo.get('category_ids') or ()),
                palette=tuple(tuple(int(c) for c in colour) for colour in palette))


def export_model(cfg: Config, checkpoint: 'str | Checkpoint', path: str, part: str = 'model',
                 precision: str = 'fp32', labels: bool = False, shape: tuple[int, int] | None = None) -> ExportReport:
    """Build ``cfg``'s model with ``checkpoint``'s weights (a :class:`~backbones.checkpoints.loading.Checkpoint`
    read once, or a source to read) and export it (:func:`export_built`); the checkpoint's classes go to ``cfg``
    (again, when :func:`backbones.runtime.prepare.prepare_config` gave them: the same classes change nothing).

    Raises:
        UsageError: A config of another model family, or ``labels`` for a detector.
        CheckpointError: A checkpoint that does not fit the config.
    """
    if task_of(cfg) not in ('detection', 'segmentation'):
        raise UsageError(f'{cfg.filename} is not a Mask R-CNN, Cascade Mask R-CNN or UperNet model: tools/export.py '
                         'exports those (or --part backbone of them).')
    opened = open_checkpoint(checkpoint)  # read once: its classes, then its weights
    apply_checkpoint_classes(cfg, opened)
    init_default_scope(cfg.default_scope)
    if 'init_cfg' in cfg.model.backbone:
        cfg.model.backbone.init_cfg = None  # the checkpoint below has all the weights
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    _checked_family(model, cfg, part, labels)
    load_model_weights(model, opened, MMLogger.get_current_instance())
    return export_built(model, cfg, path, part, precision, labels, shape)


def _checked_family(model: torch.nn.Module, cfg: Config, part: str, labels: bool) -> str:
    try:
        family = family_of(model, part)
    except TypeError as error:
        raise UsageError(f'{cfg.filename}: {error}; tools/export.py exports those (or --part backbone).') from None
    if labels and family != 'upernet':
        raise UsageError('--labels is for UperNet (the label map instead of logits).')
    return family


def export_built(model: torch.nn.Module, cfg: Config, path: str, part: str = 'model', precision: str = 'fp32',
                 labels: bool = False, shape: tuple[int, int] | None = None, check: bool = True) -> ExportReport:
    """Export the built ``model`` of ``cfg`` to ``path``, traced at ``shape`` (default :data:`TRACE_SHAPE`;
    ``model`` is changed: see ``build_graph``) and check the file: the fp16 rule on the graph
    (:func:`backbones.deploy.export.check_fp32_norms`), and with ``check`` ONNX Runtime against the PyTorch graph on
    a random sample of the traced size.

    Raises:
        UsageError: A model of another family, or ``labels`` for a detector.
    """
    family = _checked_family(model, cfg, part, labels)
    shape = shape or TRACE_SHAPE
    rcnn_cfg = cfg.model.get('test_cfg', {}).get('rcnn', {})
    info = ExportInfo(family, precision, shape, labels=labels,
                      mask_thr_binary=float(rcnn_cfg.get('mask_thr_binary', 0.5)),
                      align_corners=bool(getattr(model, 'align_corners', False)), **_class_meta(cfg))
    graph = build_graph(model, family, precision, labels)
    written = onnx.load_from_string(export_graph(graph, info, path))
    norms, half_convs = check_fp32_norms(written) if precision == 'fp16' else (0, 0)
    diff, same = _compare_on_sample(graph, written, info) if check else (None, None)
    return ExportReport(path, info, diff, same, norms, half_convs)


def _compare_on_sample(graph: torch.nn.Module, written: onnx.ModelProto,
                       info: ExportInfo) -> tuple[float | None, bool | None]:
    import onnxruntime

    torch.manual_seed(0)
    inputs = sample_inputs(info.family, info.sample_shape)
    session = onnxruntime.InferenceSession(written.SerializeToString(), providers=['CPUExecutionProvider'])
    theirs = session.run(None, {name: tensor.numpy() for name, tensor in zip(info.inputs, inputs)})
    with torch.no_grad():
        ours = graph(*inputs)
    ours = [tensor.numpy() for tensor in (ours if isinstance(ours, tuple) else (ours,))]
    same = None
    if info.family in ('mask_rcnn', 'cascade_mask_rcnn'):
        same = ours[0].shape == theirs[0].shape and bool(np.array_equal(ours[2], theirs[2]))
        if not same:
            return None, False
    return max(float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0 for a, b in zip(ours, theirs)), same
