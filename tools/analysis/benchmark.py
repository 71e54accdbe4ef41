"""Speed and memory of a detector or segmentor config, and of mmdet's, mmseg's and timm's ConvNeXt beside it.

    python tools/analysis/benchmark.py CONFIG [CKPT] [--shape H W] [--batch-size N] [--precision P]
        [--device DEV] [--threads N] [--warmup N] [--repeats N] [--channels-last] [--compile] [--compare] [--train]
        [--onnxruntime {fp32,fp16} ...] [--json OUT] [--cfg-options KEY=VALUE ...]

One table row per case:

* ``backbone``: ``model.backbone`` on a batch of random normalised images of ``--shape``;
* ``<model> test_step``: the whole model's ``test_step`` (data preprocessor, inference, post-processing)
  on a batch of random uint8 images of ``--shape`` with their metadata, as a dataloader yields them;
* with ``--train``, ``<model> train step``: ``train_step`` (forward, losses, backward and a step of the
  config's optimizer with its LR-decay groups) on random images with random boxes and masks, or label
  maps, once as configured and once with ``with_cp=True`` (gradient checkpointing) on the backbone;
* with ``--onnxruntime fp32 fp16``, our model exported in each precision (``tools/export.py``'s graphs, the same
  weights) and run by ONNX Runtime on the CPU in both inference cases: the backbone graph on the same images,
  and the exported model through its ``test_step`` (:mod:`backbones.deploy.onnx_runtime`) on the same batch;
  Max abs diff is then its backbone outputs against ours in fp32;
* with ``--compare``, for the ConvNeXt-T V1 configs: mmdet's or mmseg's own ConvNeXt config (mmpretrain
  backbone) in both inference cases, and timm's ``features_only`` ConvNeXt-T in the backbone case, all
  with our model's weights. Other archs have no peer: ``--compare`` says so and benchmarks ours only.

Columns: p50/p90 ms are the latency of one batch over ``--repeats`` timed runs. Each case first has its
``--warmup`` runs; then the inference cases are timed in rounds of one run of each, so that a drift in the
machine's speed reaches ours and the peers alike. The two training steps are measured one after the other,
each model freed before the next is built, so that one's freed memory cannot hide the other's growth.
images/s is batch size / p50. Peak MB is the most memory a case needed in its warm-up runs above what the
process held when they began (models already built do not count; the gradients and optimizer state of a
training step do): on a CPU the rise of the resident-set high-water mark (Linux VmHWM, reset per case through
/proc/self/clear_refs, after glibc's malloc_trim has returned freed heap, so that heap kept from an
earlier case cannot hide a case's growth), on CUDA ``torch.cuda.max_memory_allocated``. Ratio is the
row's p50 over ours in the same case: peer time / ours, with_cp time / without. Max abs diff is the
largest difference between a peer's backbone outputs and ours (for timm, our stages before the output
norms, which its features_only model does not have), both in fp32 on the benchmark input: it shows that
both run the same weights. The JSON rows also hold the dtype the backbone's convolutions and linear
layers computed in and the shape of every backbone input of the first run (sliding-window inference
calls the backbone once per crop; training pads to the data preprocessor's ``size``).

``--precision`` applies to our model as ``tools/test.py`` and ``tools/train.py`` apply it: autocast
around the backbone case and the whole ``test_step`` (predictions back in fp32; on CPUs mmcv's RoIAlign
and nms compute in fp32, see :mod:`backbones.patches`), and the training precision's optim wrapper
(``set_training_precision``: OptimWrapper, AmpOptimWrapper on CUDA, AutocastOptimWrapper for bf16 on
CPUs). Our inference cases are prepared as the tools prepare them
(:func:`backbones.runtime.inference.prepare_inference`:
on CPUs RoIAlign on all cores; ``--channels-last`` the convolutions in NHWC, ``--compile`` the backbone
through ``torch.compile``, compiled in the warm-up runs, which ``--warmup`` must cover). The training step takes
``--channels-last`` for the backbone only. The peers run in fp32, NCHW and with mmcv's own kernels, as their
own tools run them.

Weights: CKPT, read strictly in any format ``tools/test.py`` reads (through mmengine's checkpoint
loader, which ``import backbones`` makes the project's safe one); without CKPT, random weights (the
config's pre-trained file is neither downloaded nor read: speed does not depend on the values), and the
report says so. SyncBN layers (Cascade's box heads) run as BatchNorm: one process.

Workload: on random images how many detections pass a detector's score threshold is arbitrary (with COCO's
80 classes and random weights usually none, leaving the mask head idle), so detectors run with
``model.test_cfg.rcnn.score_thr=0``: ``max_per_img`` detections (100) reach the mask head, whatever the
weights. ``--cfg-options model.test_cfg.rcnn.score_thr=X`` sets another; ``model.test_cfg`` is given to the
peers as well.
"""
import argparse
import contextlib
import copy
import ctypes
import gc
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import timm
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, init_default_scope
from mmengine.structures import InstanceData, PixelData
from mmengine.utils import ProgressBar
from torch import nn

from backbones.checkpoints.loading import load_exactly, load_model_weights
from backbones.deploy.onnx_runtime import onnx_model_cfg
from backbones.errors import CheckpointError, UsageError
from backbones.models.convnext import V1_ARCHS, ConvNeXt
from backbones.runtime import cli
from backbones.runtime.config import drop_pretrained_init, load_config
from backbones.runtime.device import resolve_device
from backbones.runtime.inference import feed_channels_last, prepare_inference
from backbones.runtime.onnx_backend import export_built
from backbones.runtime.peers import MM_PEERS, TIMM_PEER, peer_config, to_mmpretrain, to_timm_features
from backbones.runtime.precision import autocast, resolve_precision, set_training_precision

PEER_ARCH = ('v1', V1_ARCHS['tiny']['depths'], V1_ARCHS['tiny']['dims'], (0, 1, 2, 3))  # with out_indices
BOXES_PER_IMAGE = 3
MB = 2**20
COLUMNS = ('model', 'implementation', 'precision', 'batch', 'shape', 'images/s', 'p50 ms', 'p90 ms', 'peak MB',
           'ratio', 'max abs diff')


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint to load (default: the config\'s initialisation)')
    parser.add_argument('--shape', type=cli.at_least(16), nargs=2, metavar=('H', 'W'),
                        help='input height and width (default: 800 1344 for detection, one crop for segmentation)')
    parser.add_argument('--batch-size', type=cli.at_least(1), default=1, help='images per batch (default: 1)')
    cli.add_precision(parser, default='auto', default_help="auto, the machine's fastest")
    cli.add_device(parser)
    parser.add_argument('--threads', type=cli.at_least(1), help='torch CPU threads (torch.set_num_threads)')
    parser.add_argument('--warmup', type=cli.at_least(1), default=3, help='untimed runs first, at least 1 (default: 3)')
    parser.add_argument('--repeats', type=cli.at_least(1), default=20, help='timed runs (default: 20)')
    cli.add_inference_options(parser)
    parser.add_argument('--compare', action='store_true', help='also mmdet\'s/mmseg\'s and timm\'s ConvNeXt-T')
    parser.add_argument('--train', action='store_true', help='also training steps, with and without with_cp')
    parser.add_argument('--onnxruntime', nargs='+', choices=['fp32', 'fp16'], default=[],
                        help='also our model exported to ONNX in these precisions, run by ONNX Runtime (CPU)')
    parser.add_argument('--json', metavar='OUT', help='write the rows to this JSON file')
    cli.add_config_options(parser)
    return parser


def default_shape(cfg: Config) -> tuple[int, int]:
    """800x1344 for detection (an 800x1333 COCO image padded to a multiple of 32), the crop size for
    segmentation (one sliding window)."""
    if cli.task_of(cfg) == 'detection':
        return 800, 1344
    return tuple(cfg.model.data_preprocessor.size)


def inference(run: Callable[[], Any], precision: str, device: torch.device) -> Callable[[], Any]:
    """``run`` without gradients and under autocast to ``precision``."""

    def wrapped() -> Any:
        with torch.no_grad(), autocast(precision, device):
            return run()

    return wrapped


@dataclass
class Peer:
    """Another implementation with our weights.

    Attributes:
        implementation: Its name in the table.
        backbone: Its backbone (timm: the whole features_only model).
        model: Its whole model; None for a backbone alone.
        raw_stages: Whether its backbone outputs are stage outputs without output norms (timm).
    """
    implementation: str
    backbone: nn.Module
    model: nn.Module | None
    raw_stages: bool


@dataclass
class Case:
    """One benchmarked callable and its table labels; ``backbone`` is observed in the first run."""
    model: str
    implementation: str
    precision: str
    run: Callable[[], Any]
    backbone: nn.Module
    max_abs_diff: float | None = None


@dataclass
class Observed:
    """What a backbone did in one run: the dtypes its convolutions and linear layers output, and the
    shape of each of its inputs."""
    dtypes: set[str] = field(default_factory=set)
    inputs: list[list[int]] = field(default_factory=list)


@dataclass
class Row:
    """One line of the table and of the JSON file (see the module docstring for the columns)."""
    model: str
    implementation: str
    precision: str
    batch: int
    shape: str
    images_per_s: float
    p50_ms: float
    p90_ms: float
    peak_mb: float
    ratio: float | None
    max_abs_diff: float | None
    compute_dtype: str
    backbone_inputs: list[list[int]]


def build_model(model_cfg: dict) -> nn.Module:
    """The model of ``model_cfg`` on the CPU in eval mode, SyncBN layers as BatchNorm (one process)."""
    return revert_sync_batchnorm(MODELS.build(model_cfg)).eval()


def initialise(model: nn.Module, checkpoint: str | None) -> str:
    """Load ``checkpoint`` strictly into ``model``, else initialise it at random; say which.

    Raises:
        CheckpointError: A missing or unusable checkpoint, or one that does not fit the model.
    """
    if checkpoint:
        load_model_weights(model, checkpoint, MMLogger.get_current_instance())
        return checkpoint
    model.init_weights()
    return 'no CKPT: random weights (the timing does not depend on them; give CKPT for a trained model)'


def full_workload(cfg: Config, cfg_options: dict) -> str | None:
    """A detector's ``test_cfg.rcnn.score_thr`` to 0 (unless ``--cfg-options`` sets it), so that
    ``max_per_img`` detections reach the mask head whatever the weights; the note saying so, or None."""
    rcnn = cfg.model.get('test_cfg', {}).get('rcnn')
    if cli.task_of(cfg) != 'detection' or not rcnn or 'model.test_cfg.rcnn.score_thr' in cfg_options:
        return None
    rcnn.score_thr = 0.0
    return (f'workload: model.test_cfg.rcnn.score_thr=0, so {rcnn.get("max_per_img")} detections per image reach '
            'the mask head (--cfg-options model.test_cfg.rcnn.score_thr=X for another)')


def build_peers(cfg: Config, ours: nn.Module, device: torch.device) -> tuple[list[Peer], list[str]]:
    """timm's ConvNeXt-T and the mmdet/mmseg config of our model's type, with our model's weights, on
    ``device``; and one line for each peer that cannot be compared."""
    backbone = ours.backbone
    arch = (backbone.version, backbone.depths, backbone.dims, backbone.out_indices)
    if arch != PEER_ARCH:
        return [], ['--compare: no peer for ConvNeXt {} depths {} dims {} out_indices {} (mmdet, mmseg and timm have '
                    'ConvNeXt-T V1, all four stages out); benchmarking ours only.'.format(*arch)]
    backbone_state = backbone.state_dict()
    features = timm.create_model(TIMM_PEER, features_only=True, out_indices=backbone.out_indices)
    features.load_state_dict(to_timm_features(backbone_state))
    peers = [Peer('timm features_only', features.to(device).eval(), None, raw_stages=True)]
    if cfg.model.type not in MM_PEERS:
        return peers, [f'--compare: no mmdet/mmseg ConvNeXt config for {cfg.model.type}; comparing backbones '
                       'with timm only.']
    peer_name, peer_cfg = peer_config(cfg.model.type)
    peer_cfg.model.backbone.init_cfg = None
    peer_cfg.model.test_cfg = cfg.model.test_cfg  # the same work after the backbone, --cfg-options included
    peer = build_model(peer_cfg.model)
    state = {**{f'backbone.{k}': v for k, v in to_mmpretrain(backbone_state).items()},
             **{k: v for k, v in ours.state_dict().items() if not k.startswith('backbone.')}}
    try:
        load_exactly(peer, state, f'our weights for {peer_name}', 'both configs build the same model')
    except CheckpointError as error:
        return peers, [f'--compare: {peer_name} does not have this config\'s model ({error}); '
                       'comparing backbones with timm only.']
    peer.to(device)
    peers.insert(0, Peer(f"{peer_name.split('::')[0]} config", peer.backbone, peer, raw_stages=False))
    return peers, []


@torch.no_grad()
def max_abs_diff(ours: ConvNeXt, peer: Peer, images: torch.Tensor) -> float:
    """The largest difference between the peer's backbone outputs and ours on ``images``, in fp32."""
    if peer.raw_stages:
        stages = ours.forward_stages(images)
        mine = [stages[i] for i in ours.out_indices]
    else:
        mine = ours(images)
    theirs = peer.backbone(images)
    return max((a - b).abs().max().item() for a, b in zip(mine, theirs, strict=True))


def synthetic_batch(model: nn.Module, task: str, batch_size: int, shape: tuple[int, int],
                    with_targets: bool) -> dict:
    """Random uint8 images of ``shape`` with their metadata, as a dataloader yields them; with
    ``with_targets``, random boxes and masks of class 0 (detection) or random label maps (segmentation)."""
    generator = torch.Generator().manual_seed(0)
    height, width = shape
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, scale_factor=(1.0, 1.0), flip=False)
    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator))
        if task == 'detection':
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            sample = DetDataSample(metainfo=meta)
            if with_targets:
                corners = torch.rand(BOXES_PER_IMAGE, 2, 2, generator=generator) * torch.tensor([width, height])
                boxes = torch.cat([corners.amin(dim=1), corners.amax(dim=1) + 4], dim=1).round()
                boxes[:, 0::2] = boxes[:, 0::2].clamp(max=width)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(max=height)
                masks = np.zeros((BOXES_PER_IMAGE, height, width), dtype=np.uint8)
                for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
                    mask[y1:y2, x1:x2] = 1
                sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.zeros(BOXES_PER_IMAGE, dtype=torch.long),
                                                   masks=BitmapMasks(masks, height, width))
        else:
            from mmseg.structures import SegDataSample
            sample = SegDataSample(metainfo=meta)
            if with_targets:
                labels = torch.randint(0, model.decode_head.num_classes, (1, height, width), generator=generator)
                sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def train_case(cfg: Config, weights: dict[str, torch.Tensor], with_cp: bool, args: argparse.Namespace,
               precision: str, device: torch.device) -> Case:
    """A training step of our model with ``weights``, ``with_cp`` on the backbone, the optimizer of
    ``cfg`` (its precision set already) and a batch with random targets."""
    model = build_model(dict(cfg.model, backbone=dict(cfg.model.backbone, with_cp=with_cp)))
    model.load_state_dict(weights)
    model.to(device).train()
    if args.channels_last:
        feed_channels_last(model.backbone)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    batch = synthetic_batch(model, cli.task_of(cfg), args.batch_size, args.shape, with_targets=True)
    label = 'ours, channels_last backbone' if args.channels_last else 'ours'
    return Case(f'{cfg.model.type} train step', label + (' with_cp' if with_cp else ''), precision,
                lambda: model.train_step(batch, optim_wrapper), model.backbone)


@contextlib.contextmanager
def observe(backbone: nn.Module) -> Iterator[Observed]:
    """Record what ``backbone`` does inside the ``with`` block."""
    observed = Observed()
    handles = [backbone.register_forward_pre_hook(lambda _, args: observed.inputs.append(list(args[0].shape)))]
    handles += [layer.register_forward_hook(lambda _, __, out: observed.dtypes.add(str(out.dtype).split('.')[1]))
                for layer in backbone.modules() if isinstance(layer, (nn.Conv2d, nn.Linear))]
    try:
        yield observed
    finally:
        for handle in handles:
            handle.remove()


def status_mb(field_name: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB."""
    with open('/proc/self/status') as status:
        line = next(line for line in status if line.startswith(f'{field_name}:'))
    return int(line.split()[1]) / 1024


def start_memory_window(device: torch.device) -> float:
    """Start a case's memory window (see the module docstring); return the memory in use now, in MB."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / MB
    ctypes.CDLL('libc.so.6').malloc_trim(0)
    with open('/proc/self/clear_refs', 'w') as clear_refs:
        clear_refs.write('5')  # VmHWM := VmRSS
    return status_mb('VmRSS')


def peak_memory(device: torch.device) -> float:
    """The memory high-water mark since :func:`start_memory_window`, in MB."""
    return torch.cuda.max_memory_allocated(device) / MB if device.type == 'cuda' else status_mb('VmHWM')


def timed(run: Callable[[], Any], device: torch.device) -> float:
    """Seconds that ``run()`` takes, its CUDA work included."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    begin = time.perf_counter()
    run()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - begin


def measure(cases: list[Case], args: argparse.Namespace, device: torch.device, bar: ProgressBar) -> list[Row]:
    """Warm each case up in turn (``args.warmup`` runs in its memory window, the first observed), then time
    them in rounds of one run each, ``args.repeats`` rounds: a drift of the machine's speed reaches every
    case alike, so the ratios hold better than with the cases timed one after the other."""
    warm = []
    for case in cases:
        start = start_memory_window(device)
        with observe(case.backbone) as observed:
            timed(case.run, device)
        bar.update()
        for _ in range(args.warmup - 1):
            timed(case.run, device)
            bar.update()
        warm.append((observed, peak_memory(device) - start))
    latencies = [[] for _ in cases]
    for _ in range(args.repeats):
        for case, runs in zip(cases, latencies):
            runs.append(timed(case.run, device))
            bar.update()
    rows = []
    for case, (observed, peak_mb), runs in zip(cases, warm, latencies):
        p50, p90 = (float(value) for value in np.percentile(runs, [50, 90]) * 1000)
        rows.append(Row(case.model, case.implementation, case.precision, args.batch_size,
                        f'{args.shape[0]}x{args.shape[1]}', images_per_s=args.batch_size * 1000 / p50, p50_ms=p50,
                        p90_ms=p90, peak_mb=peak_mb, ratio=None, max_abs_diff=case.max_abs_diff,
                        compute_dtype='+'.join(sorted(observed.dtypes)), backbone_inputs=observed.inputs))
    return rows


def onnx_cases(cfg: Config, model: nn.Module, precisions: list[str], images: torch.Tensor, batch: dict,
               folder: str) -> list[Case]:
    """The ``--onnxruntime`` cases: ``model`` (not yet prepared for inference) exported in each precision to
    ``folder``, its backbone graph on ``images`` and its whole graph through the ONNX Runtime model's test_step."""
    import onnxruntime

    with torch.no_grad():
        expected = [feature.float() for feature in model.backbone(images)]
    cases = []
    for precision in precisions:
        backbone_file = export_built(copy.deepcopy(model), cfg, f'{folder}/backbone_{precision}.onnx', 'backbone',
                                     precision, check=False).path
        session = onnxruntime.InferenceSession(backbone_file, providers=['CPUExecutionProvider'])
        feeds = {'image': images.cpu().numpy()}
        diff = max(float((torch.from_numpy(theirs) - ours.cpu()).abs().max())
                   for theirs, ours in zip(session.run(None, feeds), expected))
        cases.append(Case('backbone', f'onnxruntime {precision}', precision,
                          lambda s=session: s.run(None, feeds), nn.Identity(), diff))
        model_file = export_built(copy.deepcopy(model), cfg, f'{folder}/model_{precision}.onnx', 'model', precision,
                                  check=False).path
        exported = MODELS.build(onnx_model_cfg(cfg.model, model_file)).eval()
        cases.append(Case(f'{cfg.model.type} test_step', f'onnxruntime {precision}', precision,
                          torch.no_grad()(lambda m=exported: m.test_step(batch)), nn.Identity()))
    return cases


def environment(device: torch.device, weights: str) -> dict:
    """The hardware and thread count of the run, and where its ``weights`` came from."""
    if device.type == 'cuda':
        hardware = dict(gpu=torch.cuda.get_device_name(device))
    else:
        hardware = dict(cpu_flags=dict(avx512_bf16=torch.cpu._is_avx512_bf16_supported(),
                                       amx=torch.cpu._is_amx_tile_supported(), avx2=torch.cpu._is_avx2_supported()))
    return dict(device=str(device), **hardware, threads=torch.get_num_threads(), torch=torch.__version__,
                weights=weights)


def shape_cell(row: Row) -> str:
    """The input shape, and the backbone's input shapes where they differ (padding, sliding-window crops)."""
    seen = Counter(f'{height}x{width}' for *_, height, width in row.backbone_inputs)
    if not seen or list(seen) == [row.shape] and seen[row.shape] == 1:
        return row.shape
    return f'{row.shape} (backbone: {", ".join(f"{count} x {shape}" for shape, count in seen.items())})'


def report(env: dict, notes: list[str], rows: list[Row]) -> str:
    """The header line, the weights, the notes, the markdown table and, with training rows, what with_cp saved."""
    if 'gpu' in env:
        hardware = f'GPU {env["gpu"]}'
    else:
        hardware = 'CPU ' + ' '.join(f'{flag}={"yes" if on else "no"}' for flag, on in env['cpu_flags'].items())
    lines = [f'{hardware}; torch {env["torch"]}, {env["threads"]} threads', f'weights: {env["weights"]}', *notes, '',
             '| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    for row in rows:
        cells = (row.model, row.implementation, row.precision, row.batch, shape_cell(row), f'{row.images_per_s:.2f}',
                 f'{row.p50_ms:.1f}', f'{row.p90_ms:.1f}', f'{row.peak_mb:.0f}', f'{row.ratio:.2f}',
                 '-' if row.max_abs_diff is None else f'{row.max_abs_diff:.1e}')
        lines.append('| ' + ' | '.join(map(str, cells)) + ' |')
    training = [row for row in rows if row.model.endswith('train step')]
    if training:
        plain, checkpointed = training
        saved = plain.peak_mb - checkpointed.peak_mb
        lines += ['', f'with_cp: peak memory {plain.peak_mb:.0f} MB -> {checkpointed.peak_mb:.0f} MB ({saved:.0f} MB, '
                      f'{100 * saved / plain.peak_mb:.0f}% less); step time x{checkpointed.ratio:.2f}']
    return '\n'.join(lines)


def main() -> None:
    args = build_parser().parse_args()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    cfg = load_config(args.config, args.cfg_options)
    if not args.checkpoint:
        drop_pretrained_init(cfg.model)
    workload = full_workload(cfg, args.cfg_options or {})
    args.shape = tuple(args.shape or default_shape(cfg))
    if args.threads:
        torch.set_num_threads(args.threads)

    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    ours = build_model(cfg.model)
    origin = initialise(ours, args.checkpoint)
    if args.onnxruntime and (device.type != 'cpu' or cli.task_of(cfg) == 'detection' and args.batch_size != 1):
        raise UsageError('--onnxruntime runs on the CPU (--device cpu), detectors at --batch-size 1 (their graph '
                         'takes one image)')
    exported = copy.deepcopy(ours) if args.onnxruntime else None
    ours.to(device)
    prepare_inference(ours, precision, args.channels_last, args.compile)
    images = torch.randn(args.batch_size, 3, *args.shape, generator=torch.Generator().manual_seed(0)).to(device)
    peers, notes = build_peers(cfg, ours, device) if args.compare else ([], [])
    notes = [workload] * bool(workload) + notes
    label = ', '.join(['ours'] + ['channels_last'] * args.channels_last + ['compiled'] * args.compile)
    batch = synthetic_batch(ours, cli.task_of(cfg), args.batch_size, args.shape, with_targets=False)
    test_step = f'{cfg.model.type} test_step'
    cases = [Case('backbone', label, precision, inference(lambda: ours.backbone(images), precision, device),
                  ours.backbone)]
    cases += [Case('backbone', peer.implementation, 'fp32',
                   inference(lambda p=peer: p.backbone(images), 'fp32', device),
                   peer.backbone, max_abs_diff(ours.backbone, peer, images)) for peer in peers]
    cases.append(Case(test_step, label, precision, torch.no_grad()(lambda: ours.test_step(batch)), ours.backbone))
    cases += [Case(test_step, peer.implementation, 'fp32', torch.no_grad()(lambda p=peer: p.model.test_step(batch)),
                   peer.backbone) for peer in peers if peer.model]
    if exported is not None:
        with tempfile.TemporaryDirectory(prefix='benchmark_onnx_') as folder:  # read into the sessions, then removed
            cases += onnx_cases(cfg, exported, args.onnxruntime, images, batch, folder)
        cases.sort(key=lambda case: case.model != 'backbone')  # the backbone rows first, ours first in each

    bar = ProgressBar((len(cases) + 2 * args.train) * (args.warmup + args.repeats), file=sys.stderr)
    rows = measure(cases, args, device, bar)
    if args.train:
        set_training_precision(cfg, precision)
        state = ours.state_dict()
        try:
            for with_cp in (False, True):  # one at a time: the first is freed before the second's memory window
                rows += measure([train_case(cfg, state, with_cp, args, precision, device)], args, device, bar)
        except ValueError as error:  # e.g. BatchNorm after global pooling (UperNet's PPM) at --batch-size 1
            sys.stderr.write('\n')  # end the progress bar's line
            raise UsageError(f'the training step failed: {error}') from None
    print(file=sys.stderr)
    ours_p50 = {}
    for row in rows:  # ours comes first in each case
        ours_p50.setdefault(row.model, row.p50_ms)
    for row in rows:
        row.ratio = row.p50_ms / ours_p50[row.model]

    env = environment(device, origin)
    print(report(env, notes, rows))
    if args.json:
        with open(args.json, 'w') as file:
            json.dump(dict(environment=env, notes=notes, rows=[asdict(row) for row in rows]), file, indent=2)


if __name__ == '__main__':
    cli.run_tool(main)
