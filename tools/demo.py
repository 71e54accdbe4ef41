"""Train and evaluate ConvNeXt segmenters and detectors on built-in data, on a CPU, in minutes.

    make demo        # = python tools/demo.py
    python tools/demo.py [--models upernet mask_rcnn cascade] [--pretrain {upernet,fcmae}] [--quick]
                         [--precision fp32|bf16|auto]
                         [--work-dir work_dirs/demo]

1. backbones/runtime/demo_data.py generates data/demo/ once: 480 + 100 shape scenes in COCO and ADE20K layouts.
2. UperNet trains from scratch (tools/train.py) and is evaluated (tools/test.py, mIoU). Its backbone
   is extracted (tools/convert_checkpoint.py --backbone-only) and stands in for the ImageNet
   weights the paper starts from.
3. Mask R-CNN and Cascade Mask R-CNN fine-tune from that backbone with layer-wise LR decay, then are
   evaluated (COCO box and mask AP).
4. WORK_DIR gets each model's checkpoints, logs and prediction PNGs, curves.png (losses and metrics),
   predictions.png (a few held-out predictions per model) and summary.txt.

--pretrain fcmae replaces step 2's role: the backbone is first pre-trained self-supervised with FCMAE
(configs/demo/fcmae_convnext_demo.py) on the demo images without their labels, and UperNet and the
detectors, switched to ConvNeXt V2 (GRN) by --cfg-options, fine-tune from it.

--quick runs the same steps on 64 images with a few iterations each (a smoke test, used by the tests).
--precision is that of training and evaluation; the README's numbers were measured in fp32, the default.
"""
import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure
from mmengine.config import Config

from backbones.runtime import cli
from backbones.runtime.demo_data import ensure_demo_data
from backbones.runtime.precision import PRECISIONS

TOOLS = Path(__file__).resolve().parent
PRETRAINED_NAME = 'convnext_demo_pretrained.pth'  # where the detection demo configs look for it
FCMAE_CONFIG = 'configs/demo/fcmae_convnext_demo.py'
FCMAE_PRETRAINED_NAME = 'convnext_demo_fcmae.pth'
FCMAE_QUICK = ['train_cfg.max_epochs=1', 'param_scheduler.0.end=1', 'param_scheduler.1.begin=1',
               'param_scheduler.1.end=2', 'param_scheduler.1.T_max=1', 'default_hooks.logger.interval=2']
# Fine-tuning from the FCMAE backbone: ConvNeXt V2 blocks (GRN, no LayerScale) and its weights.
FROM_FCMAE = ['model.backbone.version=v2', 'model.backbone.layer_scale_init_value=None',
              'model.backbone.init_cfg._delete_=True', 'model.backbone.init_cfg.type=Pretrained']


@dataclass
class Model:
    """One demo model: its config, task and what its evaluation reports."""
    key: str
    title: str
    config: str
    metrics: dict[str, str]  # summary name -> key in the test log
    scale: float = 1.0  # mmseg reports percentages
    quick_options: list[str] = field(default_factory=list)  # --cfg-options of --quick


DETECTION_METRICS = {'box AP': 'coco/bbox_mAP', 'box AP50': 'coco/bbox_mAP_50', 'mask AP': 'coco/segm_mAP'}
DETECTION_QUICK = ['train_cfg.max_epochs=1', 'param_scheduler.0.end=5', 'default_hooks.logger.interval=5',
                   'default_hooks.checkpoint.interval=1', 'model.test_cfg.rcnn.score_thr=0.0']
MODELS = [
    Model('upernet', 'UperNet', 'configs/demo/upernet_convnext_demo.py', {'mIoU': 'mIoU'}, scale=0.01,
          quick_options=['train_cfg.max_iters=30', 'train_cfg.val_interval=30', 'param_scheduler.0.end=10',
                         'default_hooks.logger.interval=5', 'default_hooks.checkpoint.interval=30']),
    Model('mask_rcnn', 'Mask R-CNN', 'configs/demo/mask_rcnn_convnext_demo.py', DETECTION_METRICS,
          quick_options=DETECTION_QUICK),
    Model('cascade', 'Cascade Mask R-CNN', 'configs/demo/cascade_convnext_demo.py', DETECTION_METRICS,
          quick_options=DETECTION_QUICK),
]
PROGRESS = re.compile(r'(?:Iter|Epoch)\(train\)\s+(?:\[(\d+)\])?\[\s*(\d+)/(\d+)\].*?loss: ([\d.]+)')


def run_step(args: list[str], log_path: Path, label: str, epochs: int = 1) -> None:
    """Run a tool, log its output to ``log_path`` and show one progress line that updates in place.

    ``epochs`` is the number of training epochs of an epoch-based run, for the progress total.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log_path, 'w') as log, subprocess.Popen([sys.executable, '-u', *args], stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            log.write(line)
            if match := PROGRESS.search(line):
                epoch, step, steps, loss = match.groups()
                done = (int(epoch) - 1) * int(steps) + int(step) if epoch else int(step)
                total = epochs * int(steps) if epoch else int(steps)
                bar = '#' * int(30 * done / total)
                print(f'\r  {label:<28} [{bar:<30}] {done}/{total} loss {float(loss):.3f} '
                      f'{time.time() - start:5.0f}s', end='', flush=True)
    print(f'\r  {label:<28} done in {time.time() - start:.0f}s {" " * 40}')
    if process.returncode:
        tail = ''.join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise SystemExit(f'{label} failed (exit {process.returncode}); last lines of {log_path}:\n{tail}')


def latest_run(work_dir: Path) -> Path:
    """The newest timestamped log folder mmengine made in ``work_dir``."""
    return max(p for p in work_dir.iterdir() if p.is_dir() and re.fullmatch(r'\d{8}_\d{6}', p.name))


def read_scalars(run_dir: Path) -> list[dict]:
    """The scalars (losses, learning rates, metrics) mmengine logged in ``run_dir``, one dict per entry."""
    path = run_dir / 'vis_data' / 'scalars.json'
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def train_and_test(model: Model, work_dir: Path, data_root: Path, quick: bool, pretrained: Path,
                   precision: str, from_fcmae: bool) -> dict:
    """Train ``model`` and test its final checkpoint in ``precision``; return its summary row.

    The detectors start from ``pretrained``; with ``from_fcmae`` every model does, as ConvNeXt V2.
    """
    model_dir = work_dir / model.key
    data = data_root / ('ade' if model.key == 'upernet' else 'coco')
    options = list(model.quick_options) if quick else []
    if from_fcmae:
        options += FROM_FCMAE
    if from_fcmae or model.key != 'upernet':
        options.append(f'model.backbone.init_cfg.checkpoint={pretrained}')
    common = ['--work-dir', str(model_dir), '--data-root', f'{data}/']
    common += ['--cfg-options', *options] if options else []
    overrides = dict(option.split('=', 1) for option in options)
    epochs = int(overrides.get('train_cfg.max_epochs') or Config.fromfile(model.config).train_cfg.get('max_epochs', 1))
    start = time.time()
    run_step([str(TOOLS / 'train.py'), model.config, *common, '--precision', precision], model_dir / 'train.log',
             f'{model.title}: training', epochs)
    train_seconds = time.time() - start
    train_run = latest_run(model_dir)
    checkpoint = (model_dir / 'last_checkpoint').read_text().strip()
    run_step([str(TOOLS / 'test.py'), model.config, checkpoint, *common, '--precision', precision,
              '--show-dir', str(model_dir / 'predictions')],
             model_dir / 'test.log', f'{model.title}: evaluation')
    test_run = latest_run(model_dir)
    metrics = json.loads((test_run / f'{test_run.name}.json').read_text())
    return dict(model=model, train_seconds=train_seconds, checkpoint=checkpoint, scalars=read_scalars(train_run),
                metrics={name: metrics[key] * model.scale for name, key in model.metrics.items()},
                predictions=model_dir / 'predictions')


def plot_curves(results: list[dict], path: Path) -> None:
    """Training loss and validation metrics of every model, against the fraction of its training done."""
    figure = Figure(figsize=(11, 4))  # no pyplot: no global backend or figure state
    loss_axis, metric_axis = figure.subplots(1, 2)
    for result in results:
        train = [s for s in result['scalars'] if 'loss' in s]
        epochs = max((s.get('epoch', 0) for s in train), default=0)  # validation steps count epochs then
        last_iter = max(s['step'] for s in train)
        loss_axis.plot([s['step'] / last_iter for s in train], [s['loss'] for s in train], label=result['model'].title)
        for name, key in result['model'].metrics.items():
            points = [(s['step'] / (epochs or last_iter), s[key] * result['model'].scale)
                      for s in result['scalars'] if key in s]
            if points:
                metric_axis.plot(*zip(*points), marker='o', label=f'{result["model"].title} {name}')
    loss_axis.set(title='training loss', xlabel='fraction of training', yscale='log')
    metric_axis.set(title='held-out metrics (validation)', xlabel='fraction of training', ylim=(0, 1), xlim=(0, 1.05))
    for axis in (loss_axis, metric_axis):
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def prediction_montage(results: list[dict], path: Path, per_model: int = 3) -> None:
    """A few held-out predictions of each model (ground truth left, prediction right), one row per model."""
    rows = []
    for result in results:
        images = sorted(p for p in result['predictions'].rglob('*') if p.suffix in ('.png', '.jpg'))[:per_model]
        if images:
            tiles = [cv2.imread(str(p)) for p in images]
            height = max(t.shape[0] for t in tiles)
            tiles = [cv2.copyMakeBorder(t, 0, height - t.shape[0], 0, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255))
                     for t in tiles]
            row = np.concatenate(tiles, axis=1)
            banner = np.full((22, row.shape[1], 3), 255, np.uint8)
            cv2.putText(banner, result['model'].title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
            rows.append(np.concatenate([banner, row]))
    if rows:
        width = max(r.shape[1] for r in rows)
        rows = [cv2.copyMakeBorder(r, 0, 0, 0, width - r.shape[1], cv2.BORDER_CONSTANT, value=(255, 255, 255))
                for r in rows]
        cv2.imwrite(str(path), np.concatenate(rows))


def summary_text(results: list[dict], total_seconds: float, work_dir: Path) -> str:
    """The one-screen summary: each model's training time and held-out metrics, and where the outputs are."""
    lines = ['ConvNeXt-Dense demo: held-out split of the built-in data', '',
             f'{"model":<20} {"train":>7} {"box AP":>7} {"AP50":>6} {"mask AP":>8} {"mIoU":>6}']
    for result in results:
        metrics = result['metrics']
        cells = [f'{metrics[name]:.3f}' if name in metrics else '-'
                 for name in ('box AP', 'box AP50', 'mask AP', 'mIoU')]
        lines.append(f'{result["model"].title:<20} {result["train_seconds"]:>6.0f}s {cells[0]:>7} {cells[1]:>6} '
                     f'{cells[2]:>8} {cells[3]:>6}')
    lines += ['', f'total {total_seconds / 60:.1f} min on this machine; outputs in {work_dir}/:',
              '  curves.png, predictions.png, <model>/ (checkpoints, train.log, test.log, predictions/)',
              'Next: docs/training.md, from the demo to COCO and ADE20K.']
    return '\n'.join(lines)


def pretrain_fcmae(work_dir: Path, data_root: Path, quick: bool, pretrained: Path) -> None:
    """Pre-train the demo backbone with FCMAE on the demo's training images (labels unused) and extract
    it to ``pretrained``."""
    fcmae_dir = work_dir / 'fcmae'
    options = ['--cfg-options', *FCMAE_QUICK] if quick else []
    epochs = 1 if quick else Config.fromfile(FCMAE_CONFIG).train_cfg.max_epochs
    run_step([str(TOOLS / 'train.py'), FCMAE_CONFIG, '--work-dir', str(fcmae_dir), '--data-root',
              f'{data_root}/coco/train/', *options], fcmae_dir / 'train.log', 'FCMAE: pre-training', epochs)
    checkpoint = (fcmae_dir / 'last_checkpoint').read_text().strip()
    run_step([str(TOOLS / 'convert_checkpoint.py'), checkpoint, str(pretrained), '--backbone-only'],
             fcmae_dir / 'convert.log', 'extracting the backbone')


def build_parser() -> argparse.ArgumentParser:
    """The demo's command line."""
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument('--models', nargs='+', choices=[m.key for m in MODELS], default=[m.key for m in MODELS],
                        help='which models to run (detectors need the UperNet backbone, which is trained if missing)')
    parser.add_argument('--pretrain', choices=['upernet', 'fcmae'], default='upernet',
                        help='where the backbone the detectors start from comes from: the UperNet demo trained '
                             'with labels, or FCMAE self-supervised pre-training (then UperNet starts from it too)')
    parser.add_argument('--quick', action='store_true', help='a few iterations on 64 images (smoke test)')
    parser.add_argument('--precision', choices=[p for p in PRECISIONS if p != 'fp16'], default='fp32',
                        help='of training and evaluation (auto: bf16 where the CPU computes it natively)')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    return parser


def main() -> None:
    args = build_parser().parse_args()
    start = time.time()
    work_dir = Path(args.work_dir)
    data_root = Path('data/demo_quick' if args.quick else 'data/demo')
    if ensure_demo_data(data_root, *((64, 16) if args.quick else (480, 100)), image_size=128, seed=0):
        print(f'generated the demo data in {data_root}/ ({time.time() - start:.0f}s)')
    from_fcmae = args.pretrain == 'fcmae'
    pretrained = work_dir / (FCMAE_PRETRAINED_NAME if from_fcmae else PRETRAINED_NAME)
    wanted = [m for m in MODELS if m.key in args.models]
    if from_fcmae:
        pretrain_fcmae(work_dir, data_root, args.quick, pretrained)
    elif wanted[0].key != 'upernet' and not pretrained.exists():
        print(f'{pretrained} is missing: training the UperNet demo first, whose backbone the detectors start from.')
        wanted.insert(0, MODELS[0])

    results = []
    for model in wanted:
        results.append(train_and_test(model, work_dir, data_root, args.quick, pretrained, args.precision,
                                      from_fcmae))
        if model.key == 'upernet' and not from_fcmae:
            run_step([str(TOOLS / 'convert_checkpoint.py'), results[-1]['checkpoint'], str(pretrained),
                      '--backbone-only'], work_dir / 'upernet' / 'convert.log', 'extracting the backbone')

    plot_curves(results, work_dir / 'curves.png')
    prediction_montage(results, work_dir / 'predictions.png')
    summary = summary_text(results, time.time() - start, work_dir)
    (work_dir / 'summary.txt').write_text(summary + '\n')
    (work_dir / 'metrics.json').write_text(json.dumps(
        {r['model'].key: dict(r['metrics'], train_seconds=r['train_seconds']) for r in results}, indent=1))
    print('\n' + summary)


if __name__ == '__main__':
    cli.run_tool(main)
