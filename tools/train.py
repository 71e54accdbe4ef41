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
from backbones.runtime.prepare import prepare_config


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
    run = prepare_config(args, 'train')
    runner = RUNNERS.build(run.cfg)
    for line in run.log_lines:
        runner.logger.info(line)
    runner.train()


if __name__ == '__main__':
    cli.run_tool(main)
