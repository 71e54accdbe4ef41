"""Generate the built-in demo data (:mod:`backbones.runtime.demo_data` says what it holds).

    python tools/demo_data.py [--out data/demo] [--num-train 480] [--num-val 100] [--size 128] [--seed 0]

The defaults are the data of ``make demo``. Generation is deterministic for a seed, and skipped when OUT
already holds the same data. OUT must be new, empty or generated into before (its settings.json): the user's
files are never deleted or overwritten.
"""
import argparse
import os.path as osp

from backbones.runtime import cli
from backbones.runtime.demo_data import ensure_demo_data


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument('--out', default=osp.join('data', 'demo'))
    parser.add_argument('--num-train', type=cli.at_least(1, 100_000), default=480)
    parser.add_argument('--num-val', type=cli.at_least(1, 100_000), default=100)
    parser.add_argument('--size', type=cli.at_least(32, 1024), default=128, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    made = ensure_demo_data(args.out, args.num_train, args.num_val, args.size, args.seed)
    print(f'{"generated" if made else "already present"}: {args.out}')


if __name__ == '__main__':
    cli.run_tool(main)
