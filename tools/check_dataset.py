"""Check a dataset before training on it: every annotation, every image decoded, every label map read.

    python tools/check_dataset.py CONFIG [--data-root DIR] [--splits train val] [--workers N]
                                  [--cfg-options KEY=VALUE ...]

The datasets are those tools/train.py would read (the same --data-root, layout search and classes from
the data, docs/own_data.md). Reported, one line per kind with the count and the first examples:
unreadable or truncated images, images missing on disk or of another size than the annotation file says,
annotations of unknown images or categories, boxes of zero or negative size or outside the image,
polygons of fewer than 3 points, empty segmentations; label maps missing, not 8/16-bit single-channel,
of another size than their image, or with values that are neither a class nor the ignore value. Images
without annotations are counted, not an error. Exit status 1 when something is wrong; tools/train.py
--skip-bad trains without the bad items.
"""
import argparse
from collections.abc import Callable

from mmengine.utils import ProgressBar

from backbones.errors import DatasetError
from backbones.runtime import cli
from backbones.runtime.dataset_check import check_config_datasets
from backbones.runtime.prepare import prepare_config


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument('config', help='the detection or segmentation config to train with')
    cli.add_data_root(parser)
    parser.add_argument('--splits', nargs='+', default=['train', 'val'], choices=['train', 'val', 'test'],
                        help='the splits to check (default: train val)')
    parser.add_argument('--workers', type=cli.at_least(1), default=8, help='threads that read images (default 8)')
    cli.add_config_options(parser)
    return parser


def progress_bar() -> Callable[[int, int], None]:
    """A progress callback that starts an mmengine ProgressBar of the right length on its first call."""
    state = {}

    def update(done: int, total: int) -> None:
        if 'bar' not in state or state['total'] != total:
            state.update(bar=ProgressBar(total), total=total, done=0)
        state['bar'].update(done - state['done'])
        state['done'] = done
    return update


def main() -> None:
    args = build_parser().parse_args()
    prepared = prepare_config(args, 'check_dataset')
    cfg = prepared.cfg
    for line in prepared.log_lines:  # the classes and where they came from
        print(line)
    problems = []
    for _, report in check_config_datasets(cfg, tuple(args.splits), open_images=True, workers=args.workers,
                                           progress=progress_bar()):
        summary, *found = report.lines()
        print(f'\n{summary}')
        for line in found:
            print(line)
        problems += found
    if problems:
        raise DatasetError(f'{len(problems)} kinds of problem (above). Fix those items, or train with '
                           'tools/train.py --skip-bad to leave them out.')
    print('No problems found.')


if __name__ == '__main__':
    cli.run_tool(main)
