"""Evaluate a ConvNeXt detector (COCO box/mask AP) or segmentor (ADE20K mIoU) checkpoint.

    python tools/test.py CONFIG CKPT [--work-dir DIR] [--out PATH] [--show-dir DIR] [--tta]
                         [--precision {auto,fp32,bf16,fp16}] [--channels-last] [--compile]
                         [--backend {pytorch,onnxruntime}]
                         [--data-root DIR] [--cfg-options KEY=VALUE ...] [--launcher ...]

CKPT may be a checkpoint written by tools/train.py or one of the official ConvNeXt COCO/ADE20K
release (converted on the fly, see checkpoints/README.md); it is loaded strictly, so a config that
does not match the checkpoint is an error, not a silently wrong score. A checkpoint of tools/train.py
carries the classes it was trained on: the model and the test set get them (the test annotation file
must have the same categories). --out writes the raw results
(detection: a .pkl of predictions; segmentation: a folder of label PNGs), --show-dir writes a
visualisation per image, --tta runs the config's test-time augmentation (segmentation: scales 0.5 to
1.75 with flip). --precision (default fp32, the exact scores): bf16 or fp16 run the model under
autocast; auto is fp16 on CUDA, bf16 on a CPU that computes it natively, fp32 on other CPUs.
--channels-last runs the convolutions in NHWC, --compile torch.compiles the backbone (the first image of
each new size compiles; for long evaluations); docs/speed.md has what each buys. On a CPU,
RoIAlign always runs on all cores (backbones/runtime/inference.py).
--backend onnxruntime evaluates an exported model instead (CKPT: the model.onnx of tools/export.py, with the
config it was exported from): the same pipeline, metrics and output files, the network run by ONNX Runtime on
the CPU in the precision it was exported in (docs/deploy.md).
"""
import argparse
import os.path as osp

from mmengine.config import Config
from mmengine.registry import RUNNERS

from backbones.checkpoints.loading import load_model_weights, open_checkpoint
from backbones.datasets.checks import forget_json
from backbones.deploy.onnx_file import read_exported
from backbones.errors import UsageError
from backbones.runtime import cli
from backbones.runtime.config import check_datasets, check_work_dir, enable_tta, load_config, set_data_root
from backbones.runtime.device import adapt_to_cpu, default_device, unwrap_model
from backbones.runtime.inference import prepare_inference
from backbones.runtime.onnx_backend import add_backend, apply_onnx_classes, check_backend_options, use_onnx_model
from backbones.runtime.own_data import apply_checkpoint_classes, classes_from_data
from backbones.runtime.precision import resolve_precision


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='folder for the evaluation logs')
    parser.add_argument('--out', help='write raw results: a .pkl file (detection) or a folder (segmentation)')
    parser.add_argument('--show-dir', help='write a visualisation of every prediction to this folder')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (multi-scale + flip)')
    cli.add_precision(parser, default='fp32', default_help='fp32, the exact scores')
    cli.add_inference_options(parser)
    add_backend(parser)
    cli.add_data_root(parser)
    cli.add_config_options(parser)
    cli.add_launcher(parser)
    return parser


def enable_outputs(cfg: Config, out: str | None, show_dir: str | None) -> None:
    """Raw-result dumping and visualisation, in the way each framework names them."""
    is_det = cli.task_of(cfg) == 'detection'
    if out and is_det:
        if not out.endswith(('.pkl', '.pickle')):
            raise UsageError(f'--out for detection must be a .pkl file, got {out}.')
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
    args = build_parser().parse_args()
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    cfg.load_from = None  # loaded below, strictly and in any supported format
    enable_outputs(cfg, args.out, args.show_dir)
    if args.tta:
        enable_tta(cfg)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    check_backend_options(args)
    precision = resolve_precision(args.precision, default_device())
    onnx = args.backend == 'onnxruntime'
    # The file is read once, here: its classes now, its weights once the model is built.
    checkpoint = read_exported(args.checkpoint) if onnx else open_checkpoint(args.checkpoint)
    trained_on = apply_onnx_classes(cfg, checkpoint) if onnx else apply_checkpoint_classes(cfg, checkpoint)
    log_lines = [trained_on, classes_from_data(cfg, 'test', f'the checkpoint {args.checkpoint}' if trained_on
                                               else 'the config')]
    forget_json()  # the annotation files parsed for the classes: mmdet reads them itself
    check_datasets(cfg, ['test'])
    check_work_dir(cfg.work_dir)
    adapt_to_cpu(cfg)
    if onnx:
        use_onnx_model(cfg, checkpoint)

    runner = RUNNERS.build(cfg)
    for line in filter(None, log_lines):
        runner.logger.info(line)
    if not onnx:
        load_model_weights(unwrap_model(runner.model), checkpoint, runner.logger)
        prepare_inference(runner.model, precision, args.channels_last, args.compile)
    runner.test()


if __name__ == '__main__':
    cli.run_tool(main)
