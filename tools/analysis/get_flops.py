"""Parameters and FLOPs of a detector or segmentor config, counted the way the ConvNeXt papers count
(:mod:`backbones.runtime.complexity` says what is counted).

    python tools/analysis/get_flops.py CONFIG [--shape H W]

The default shape is the papers': 800x1280 for detection, four crops wide for segmentation.
"""
import argparse

from mmengine.config import Config

from backbones.runtime import cli
from backbones.runtime.complexity import complexity, paper_shape


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument('config')
    parser.add_argument('--shape', type=cli.at_least(16), nargs=2, metavar=('H', 'W'), help='input height and width')
    return parser


def main() -> None:
    args = build_parser().parse_args()
    cfg = Config.fromfile(args.config)
    shape = tuple(args.shape) if args.shape else paper_shape(cfg)
    params, counts = complexity(cfg, shape)
    print(f'{args.config} at {shape[0]}x{shape[1]}')
    for part, macs in counts.items():
        print(f'  {part:<32} {macs / 1e9:9.1f} G')
    print(f'  {"total":<32} {sum(counts.values()) / 1e9:9.1f} G multiply-adds, {params / 1e6:.1f} M parameters')


if __name__ == '__main__':
    cli.run_tool(main)
