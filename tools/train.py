"""Train a ConvNeXt detector (mmdet) or segmentor (mmseg), or pre-train one with FCMAE, from a config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--precision {auto,fp32,bf16,fp16}]
                          [--data-root DIR] [--load-from CKPT] [--skip-bad] [--cfg-options KEY=VALUE ...]
                          [--launcher {none,pytorch,slurm,mpi}]

Checkpoints and logs go to --work-dir (default work_dirs/<config name>). --resume alone continues from
the latest checkpoint there (and stops with an error when there is none); --resume CKPT from that file.
--precision: by default the config's (the papers' AMP recipes: auto); --amp is --precision auto.

Your own data (docs/own_data.md): --data-root DIR with a COCO-format dataset (detection) or images and
label maps with a classes.json (segmentation). The classes come from the data, every head gets their
number, and the dataset is checked before the model is built: annotations, files on disk, label values
(a sample). A bad item stops the run with one line per kind of problem; --skip-bad leaves those items out
instead. --load-from CKPT starts from a detector or segmentor checkpoint (COCO, ADE20K or your own, any
format tools/test.py reads); with another number of classes its class layers are initialised afresh, and
the log says which (with as many classes but other names they are kept: the log of the classes shows them).
--load-from and --resume skip the pre-trained initialisation of the config (its download or file): the
checkpoint replaces those weights, and the log says so.
Multi-GPU and multi-node: tools/dist_train.sh, tools/slurm_train.sh.
"""
import argparse

from mmengine.registry import RUNNERS

from backbones.runtime import cli
from backbones.runtime.config import (
    check_datasets,
    check_hook_options,
    check_work_dir,
    load_config,
    set_data_root,
    skip_pretrained_init,
)
from backbones.runtime.dataset_check import check_before_training, skip_unreadable_images
from backbones.runtime.device import adapt_to_cpu, default_device
from backbones.runtime.own_data import classes_from_data
from backbones.runtime.precision import resolve_precision, set_training_precision


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument('config', help='config file, e.g. configs/det/cascade_convnext_t.py or '
                        'configs/pretrain/fcmae_convnextv2_atto.py')
    parser.add_argument('--work-dir', help='folder for checkpoints and logs')
    parser.add_argument('--resume', nargs='?', const='auto', help='resume from CKPT, or the latest in --work-dir')
    cli.add_precision(parser, default=None, default_help="the config's: auto for the papers' AMP recipes")
    parser.add_argument('--amp', action='store_const', const='auto', dest='precision', help='--precision auto')
    cli.add_data_root(parser)
    parser.add_argument('--load-from', help='start from the weights of this detector/segmentor checkpoint')
    parser.add_argument('--skip-bad', action='store_true',
                        help='leave out the dataset items the check finds bad (the log lists them) instead of stopping')
    cli.add_config_options(parser)
    cli.add_launcher(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    precision = args.precision or ('auto' if cfg.optim_wrapper.get('type') == 'AmpOptimWrapper' else 'fp32')
    set_training_precision(cfg, resolve_precision(precision, default_device()))
    if args.load_from:
        cfg.load_from = args.load_from
    if args.resume:  # the runner finds what to resume from in the work dir (ConvNeXtDenseRunner)
        cfg.resume, cfg.load_from = True, None if args.resume == 'auto' else args.resume
    skipped_init = skip_pretrained_init(cfg)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    log_lines = [skipped_init, classes_from_data(cfg)]
    check_datasets(cfg, ['train', 'val'])
    check_hook_options(cfg)
    check_work_dir(cfg.work_dir)
    log_lines += check_before_training(cfg, args.skip_bad)
    skip_unreadable_images(cfg)
    adapt_to_cpu(cfg)
    runner = RUNNERS.build(cfg)
    for line in filter(None, log_lines):
        runner.logger.info(line)
    runner.train()


if __name__ == '__main__':
    cli.run_tool(main)
