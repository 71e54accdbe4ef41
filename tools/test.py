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

from mmengine.registry import RUNNERS

from backbones.checkpoints.loading import load_model_weights
from backbones.runtime import cli
from backbones.runtime.device import default_device, unwrap_model
from backbones.runtime.inference import prepare_inference
from backbones.runtime.onnx_backend import add_backend, check_backend_options
from backbones.runtime.precision import resolve_precision
from backbones.runtime.prepare import prepare_config


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


def main() -> None:
    args = build_parser().parse_args()
    check_backend_options(args)
    run = prepare_config(args, 'test')
    runner = RUNNERS.build(run.cfg)
    for line in run.log_lines:
        runner.logger.info(line)
    if args.backend == 'pytorch':  # an exported model is verified and run by the model its config names
        load_model_weights(unwrap_model(runner.model), run.checkpoint, runner.logger)
        prepare_inference(runner.model, resolve_precision(args.precision, default_device()), args.channels_last,
                          args.compile)
    runner.test()


if __name__ == '__main__':
    cli.run_tool(main)
