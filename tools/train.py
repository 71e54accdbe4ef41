"""Train a ConvNeXt detector (mmdet) or segmentor (mmseg), or pre-train one with FCMAE, from a config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--precision {auto,fp32,bf16,fp16}]
                          [--data-root DIR] [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Checkpoints and logs go to --work-dir (default work_dirs/<config name>). --resume alone continues from
the latest checkpoint there (and stops with an error when there is none); --resume CKPT from that file.
--precision: by default the config's (the papers' AMP recipes: auto); --amp is --precision auto.
Multi-GPU and multi-node: tools/dist_train.sh, tools/slurm_train.sh.
"""
import argparse

from mmengine.registry import RUNNERS

from backbones.runtime import cli
from backbones.runtime.config import check_datasets, load_config, set_data_root
from backbones.runtime.device import adapt_to_cpu, default_device
from backbones.runtime.precision import resolve_precision, set_training_precision


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file, e.g. configs/det/cascade_convnext_t.py or '
                        'configs/pretrain/fcmae_convnextv2_atto.py')
    parser.add_argument('--work-dir', help='folder for checkpoints and logs')
    parser.add_argument('--resume', nargs='?', const='auto', help='resume from CKPT, or the latest in --work-dir')
    cli.add_precision(parser, default=None, default_help="the config's: auto for the papers' AMP recipes")
    parser.add_argument('--amp', action='store_const', const='auto', dest='precision', help='--precision auto')
    cli.add_data_root(parser)
    cli.add_config_options(parser)
    cli.add_launcher(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    precision = args.precision or ('auto' if cfg.optim_wrapper.get('type') == 'AmpOptimWrapper' else 'fp32')
    set_training_precision(cfg, resolve_precision(precision, default_device()))
    if args.resume:  # the runner finds what to resume from in the work dir (ConvNeXtDenseRunner)
        cfg.resume, cfg.load_from = True, None if args.resume == 'auto' else args.resume
    if args.data_root:
        set_data_root(cfg, args.data_root)
    check_datasets(cfg, ['train', 'val'])
    adapt_to_cpu(cfg)
    RUNNERS.build(cfg).train()


if __name__ == '__main__':
    cli.run_tool(main)
