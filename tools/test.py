"""Evaluate a ConvNeXt detector (COCO box/mask AP) or segmentor (ADE20K mIoU) checkpoint.

    python tools/test.py CONFIG CKPT [--work-dir DIR] [--out PATH] [--show-dir DIR] [--tta]
                         [--precision {auto,fp32,bf16,fp16}] [--channels-last] [--compile]
                         [--data-root DIR] [--cfg-options KEY=VALUE ...] [--launcher ...]

CKPT may be a checkpoint written by tools/train.py or one of the official ConvNeXt COCO/ADE20K
release (converted on the fly, see checkpoints/README.md); it is loaded strictly, so a config that
does not match the checkpoint is an error, not a silently wrong score. --out writes the raw results
(detection: a .pkl of predictions; segmentation: a folder of label PNGs), --show-dir writes a
visualisation per image, --tta runs the config's test-time augmentation (segmentation: scales 0.5 to
1.75 with flip). --precision (default fp32, the exact scores): bf16 or fp16 run the model under
autocast; auto is fp16 on CUDA, bf16 on a CPU that computes it natively, fp32 on other CPUs.
--channels-last runs the convolutions in NHWC, --compile torch.compiles the backbone (the first image of
each new size compiles; for long evaluations); README "Speed" has what each buys. On a CPU, RoIAlign
always runs on all cores (backbones/inference.py).
"""
import argparse
import os.path as osp
import warnings

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

from mmengine.config import Config  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from backbones.checkpoints.formats import load_model_weights  # noqa: E402
from backbones.checkpoints import CheckpointError  # noqa: E402
from backbones.inference import prepare_inference  # noqa: E402
from backbones.runtime import DatasetNotFoundError, DictAction, adapt_to_cpu, check_datasets, load_config  # noqa: E402
from backbones.runtime import PRECISIONS, default_device, enable_tta, resolve_precision, set_data_root  # noqa: E402
from backbones.runtime import unwrap_model  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='folder for the evaluation logs')
    parser.add_argument('--out', help='write raw results: a .pkl file (detection) or a folder (segmentation)')
    parser.add_argument('--show-dir', help='write a visualisation of every prediction to this folder')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (multi-scale + flip)')
    parser.add_argument('--precision', choices=PRECISIONS, default='fp32', help='autocast the model (default fp32)')
    parser.add_argument('--channels-last', action='store_true', help='convolutions in channels_last (NHWC)')
    parser.add_argument('--compile', action='store_true', help='torch.compile the backbone (long evaluations)')
    parser.add_argument('--data-root', help='dataset folder instead of the config\'s')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys: key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


def enable_outputs(cfg: Config, out: str | None, show_dir: str | None) -> None:
    """Raw-result dumping and visualisation, in the way each framework names them."""
    is_det = cfg.default_scope == 'mmdet'
    if out and is_det:
        if not out.endswith(('.pkl', '.pickle')):
            raise SystemExit('error: --out for detection must be a .pkl file')
        cfg.test_evaluator = [*(cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]),
                              dict(type='DumpDetResults', out_file_path=out)]
    elif out:
        cfg.test_evaluator.update(output_dir=out, keep_results=True)
    if show_dir:
        hook = cfg.default_hooks.visualization
        hook.draw = True
        if is_det:
            hook.test_out_dir = osp.abspath(show_dir)
        else:
            hook.interval = 1
            cfg.visualizer.save_dir = show_dir


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    cfg.load_from = None  # loaded below, strictly and in any supported format
    enable_outputs(cfg, args.out, args.show_dir)
    if args.tta:
        try:
            enable_tta(cfg)
        except ValueError as error:
            raise SystemExit(f'error: {error}') from None
    if args.data_root:
        set_data_root(cfg, args.data_root)
    try:
        precision = resolve_precision(args.precision, default_device())
        check_datasets(cfg, ['test'])
    except (ValueError, DatasetNotFoundError) as error:
        raise SystemExit(f'error: {error}') from None
    adapt_to_cpu(cfg)

    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    try:
        load_model_weights(unwrap_model(runner.model), args.checkpoint, runner.logger)
    except (CheckpointError, FileNotFoundError) as error:
        raise SystemExit(f'error: {error}') from None
    try:
        prepare_inference(runner.model, precision, args.channels_last, args.compile)
    except ValueError as error:
        raise SystemExit(f'error: {error}') from None
    runner.test()


if __name__ == '__main__':
    main()
