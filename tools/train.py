"""Train a ConvNeXt detector (mmdet) or segmentor (mmseg), or pre-train one with FCMAE, from a config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--data-root DIR]
                          [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Checkpoints and logs go to --work-dir (default work_dirs/<config name>). --resume alone continues from
the latest checkpoint there; --resume CKPT from that file. On a machine without CUDA the recipe runs in
fp32 (AMP needs a GPU). Multi-GPU and multi-node: tools/dist_train.sh, tools/slurm_train.sh.
"""
import argparse
import warnings

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

from mmengine.registry import RUNNERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from backbones.checkpoint_io import CheckpointError  # noqa: E402
from backbones.runtime import DatasetNotFoundError, DictAction, adapt_to_cpu, check_datasets, load_config  # noqa: E402
from backbones.runtime import find_resume_checkpoint, set_data_root  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file, e.g. configs/det/cascade_convnext_t.py or configs/pretrain/fcmae_convnextv2_atto.py')
    parser.add_argument('--work-dir', help='folder for checkpoints and logs')
    parser.add_argument('--resume', nargs='?', const='auto', help='resume from CKPT, or the latest in --work-dir')
    parser.add_argument('--amp', action='store_true', help='mixed precision (AmpOptimWrapper), where not on already')
    parser.add_argument('--data-root', help='dataset folder instead of the config\'s (data/coco/, data/ade/...)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys: key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, find_resume_checkpoint(cfg.work_dir)
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
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
