"""Export a ConvNeXt detector, segmentor or backbone to ONNX, checked against PyTorch (docs/deploy.md).

    python tools/export.py CONFIG CKPT --out DIR [--part {model,backbone}] [--precision {fp32,fp16}]
                           [--labels] [--shape H W] [--cfg-options KEY=VALUE ...]

Writes DIR/model.onnx (DIR/backbone.onnx with --part backbone), a graph of standard ONNX operators (opset 17)
that ONNX Runtime runs with no custom operator library. Its input is the config's preprocessed batch: the
data_preprocessor's output (normalised with the config's mean and std, RGB, padded), float32, so that one
pipeline feeds PyTorch and the exported model; the file's metadata (docs/deploy.md) says what it needs.

  Mask R-CNN, Cascade Mask R-CNN   image (1, 3, H, W) and image_size (2,) int64, the height and width before
                                   padding, to boxes (k, 4) in input pixels, scores (k,), labels (k,) and masks
                                   (k, 28, 28) probabilities at the box; RPN, RoIAlign and NMS in the graph, with
                                   the config's test_cfg (set its thresholds with --cfg-options). Batch 1, any size.
  UperNet                          image (N, 3, H, W) to logits (N, classes, H, W), or with --labels the label map
                                   (N, H, W); any batch and size (the sliding window and test-time augmentation
                                   stay in Python: tools/test.py and tools/infer.py --backend onnxruntime).
  --part backbone                  image (N, 3, H, W) to the four stage features stage0..stage3; any batch and size.

--precision fp16 runs the backbone and neck (UperNet: backbone and decode head) in fp16 with every LayerNorm
and GRN in fp32, and the box coordinates, NMS, RoIAlign and RoI heads in fp32; inputs and outputs stay fp32.
The graph is traced on a random sample of --shape (default 64x64: the graph then runs at any size); the
tool checks the fp16 rule on the written graph and ONNX Runtime against PyTorch on that sample, and prints both.
"""
import argparse
from pathlib import Path

from backbones.runtime import cli
from backbones.runtime.onnx_backend import export_model
from backbones.runtime.prepare import prepare_config


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (any format tools/test.py reads)')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--part', choices=['model', 'backbone'], default='model',
                        help='the whole model (default) or its backbone alone')
    parser.add_argument('--precision', choices=['fp32', 'fp16'], default='fp32',
                        help='fp32 (default) or fp16 with LayerNorm and GRN statistics in fp32')
    parser.add_argument('--labels', action='store_true', help='UperNet: output the label map instead of logits')
    parser.add_argument('--shape', type=cli.at_least(16, 4096), nargs=2, metavar=('H', 'W'),
                        help="the traced sample's height and width (default 64 64; the graph takes any size)")
    cli.add_config_options(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    prepared = prepare_config(args, 'export')
    out = Path(args.out)
    report = export_model(prepared.cfg, prepared.checkpoint, str(out / f'{args.part}.onnx'), args.part,
                          args.precision, args.labels, tuple(args.shape) if args.shape else None)
    info = report.info
    print(f'{args.checkpoint} -> {report.path}: {info.family}, {info.precision}, traced at '
          f'{info.sample_shape[0]}x{info.sample_shape[1]}, inputs {", ".join(info.inputs)}, outputs '
          f'{", ".join(info.outputs)}')
    if info.precision == 'fp16':
        print(f'fp16 rule: {report.norm_reductions} normalisation reductions read fp32; '
              f'{report.fp16_convolutions} convolutions read fp16')
    if report.same_detections is False:
        print('ONNX Runtime against PyTorch on the sample: different detections (ties of random-sample scores '
              'can reorder them; tools/test.py --backend onnxruntime compares on data)')
    else:
        print(f'ONNX Runtime against PyTorch on the sample: largest difference {report.max_abs_diff:.3g}')


if __name__ == '__main__':
    cli.run_tool(main)
