"""Parameters and FLOPs of a detector or segmentor config, counted the way the ConvNeXt papers count
(:mod:`backbones.runtime.complexity` says what is counted).

    python tools/analysis/get_flops.py CONFIG [--shape H W]

The default shape is the papers': 800x1280 for detection, four crops wide for segmentation.
"""
import argparse

from mmengine.config import Config

from backbones.runtime.cli import run_tool
from backbones.runtime.complexity import complexity, paper_shape


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), help='input height and width')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    shape = tuple(args.shape) if args.shape else paper_shape(cfg)
    params, counts = complexity(cfg, shape)
    print(f'{args.config} at {shape[0]}x{shape[1]}')
    for part, macs in counts.items():
        print(f'  {part:<32} {macs / 1e9:9.1f} G')
    print(f'  {"total":<32} {sum(counts.values()) / 1e9:9.1f} G multiply-adds, {params / 1e6:.1f} M parameters')


if __name__ == '__main__':
    run_tool(main)
