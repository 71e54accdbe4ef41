"""Train a ConvNeXt detector (mmdet) or segmentor (mmseg), or pre-train one with FCMAE, from a config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--precision {auto,fp32,bf16,fp16}]
                          [--data-root DIR] [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Checkpoints and logs go to --work-dir (default work_dirs/<config name>). --resume alone continues from
the latest checkpoint there (and stops with an error when there is none); --resume CKPT from that file. --precision: by default the config's (the
papers' AMP recipes: auto); auto is fp16 on CUDA, bf16 on a CPU that computes it natively (AVX512-BF16
or AMX), fp32 on other CPUs; --amp is --precision auto. Multi-GPU and multi-node: tools/dist_train.sh, tools/slurm_train.sh.
"""
import argparse
import warnings

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

from mmengine.registry import RUNNERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from backbones.checkpoints import CheckpointError  # noqa: E402
from backbones.runtime import DatasetNotFoundError, DictAction, adapt_to_cpu, check_datasets, load_config  # noqa: E402
from backbones.runtime import PRECISIONS, default_device, resolve_precision  # noqa: E402
from backbones.runtime import set_data_root, set_training_precision  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file, e.g. configs/det/cascade_convnext_t.py or '
                        'configs/pretrain/fcmae_convnextv2_atto.py')
    parser.add_argument('--work-dir', help='folder for checkpoints and logs')
    parser.add_argument('--resume', nargs='?', const='auto', help='resume from CKPT, or the latest in --work-dir')
    parser.add_argument('--precision', choices=PRECISIONS, help="default: the config's (AMP recipes: auto)")
    parser.add_argument('--amp', action='store_const', const='auto', dest='precision', help='--precision auto')
    parser.add_argument('--data-root', help='dataset folder instead of the config\'s (data/coco/, data/ade/...)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys: key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    precision = args.precision or ('auto' if cfg.optim_wrapper.get('type') == 'AmpOptimWrapper' else 'fp32')
    try:
        set_training_precision(cfg, resolve_precision(precision, default_device()))
    except ValueError as error:
        raise SystemExit(f'error: {error}') from None
    if args.resume:  # the runner finds what to resume from in the work dir (ConvNeXtDenseRunner)
        cfg.resume, cfg.load_from = True, None if args.resume == 'auto' else args.resume
    if args.data_root:
        set_data_root(cfg, args.data_root)
    try:
        check_datasets(cfg, ['train', 'val'])
    except DatasetNotFoundError as error:
        raise SystemExit(f'error: {error}') from None
    adapt_to_cpu(cfg)

    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    try:
        runner.train()
    except (CheckpointError, DatasetNotFoundError) as error:  # checkpoints to load; a folder without images
        raise SystemExit(f'error: {error}') from None


if __name__ == '__main__':
    main()
