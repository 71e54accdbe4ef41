"""The dataset check of ``tools/train.py`` and ``tools/check_dataset.py``, on the datasets a config names.

Before training (:func:`check_before_training`) the cheap part runs: every annotation, every file's
existence, and the values of a sample of label maps. ``tools/check_dataset.py`` also decodes every image
and reads every label map (:func:`check_config_datasets` with ``open_images``). A problem stops training
with one line per kind (count and first examples) before the model is built; with ``--skip-bad`` the
bad images are left out instead: the training run's annotation file (or, for label maps, image list)
without them is written to ``<work_dir>/skip_bad/`` and the datasets read that, and the log names how
many and which.
"""
import json
import os
import os.path as osp
from collections.abc import Iterator

from mmengine.config import Config, ConfigDict

from ..boundary import walk_files
from ..datasets.checks import (
    MISSING_IMAGE,
    MISSING_LABEL,
    OVERSIZED_IMAGE,
    UNREADABLE_IMAGE,
    DatasetReport,
    Progress,
    check_coco,
    check_label_maps,
    forget_json,
    read_json,
)
from ..errors import DatasetError
from .config import split_datasets

LABEL_SAMPLE = 200  # label maps whose values the check before training reads
SKIP_BAD_DIR = 'skip_bad'
DEFAULT_REDUCE_ZERO_LABEL = {'ADE20KDataset': True}
EXAMPLES = 3
# What stops an evaluation before it starts: the items its pipeline could not decode, or would decode past the
# pixel cap. The other kinds are the evaluation's to score as the annotation file has them.
UNDECODABLE = (MISSING_IMAGE, UNREADABLE_IMAGE, OVERSIZED_IMAGE, MISSING_LABEL)


def _reduce_zero_label(dataset: ConfigDict) -> bool:
    return bool(dataset.get('reduce_zero_label', DEFAULT_REDUCE_ZERO_LABEL.get(dataset.get('type'), False)))


def _num_classes(cfg: Config) -> int | None:
    decode_head = cfg.model.get('decode_head')
    return decode_head.get('num_classes') if isinstance(decode_head, dict) else None


def check_dataset(cfg: Config, dataset: ConfigDict, split: str, open_images: bool, workers: int = 8,
                  progress: Progress | None = None) -> DatasetReport | None:
    """Check one leaf dataset config: COCO (an ``ann_file`` ending ``.json``) or label maps (``img_path`` and
    ``seg_map_path`` prefixes); None for datasets of another kind."""
    root = dataset.get('data_root', '')
    prefix = dict(dataset.get('data_prefix') or {})
    if str(dataset.get('ann_file', '')).endswith('.json'):
        return check_coco(osp.join(root, dataset.ann_file), osp.join(root, prefix.get('img', '')), split,
                          open_images, workers, progress)
    if 'img_path' in prefix and 'seg_map_path' in prefix and _num_classes(cfg):
        return check_label_maps(osp.join(root, prefix['img_path']), osp.join(root, prefix['seg_map_path']), split,
                                dataset.get('img_suffix', '.jpg'), dataset.get('seg_map_suffix', '.png'),
                                _num_classes(cfg), _reduce_zero_label(dataset),
                                cfg.model.decode_head.get('ignore_index', 255), open_images,
                                None if open_images else LABEL_SAMPLE, workers, progress)
    return None


def check_config_datasets(cfg: Config, splits: tuple[str, ...], open_images: bool, workers: int = 8,
                          progress: Progress | None = None) -> Iterator[tuple[ConfigDict, DatasetReport]]:
    """The report of every checkable leaf dataset of the ``splits`` dataloaders, each file once."""
    seen = set()
    for split, dataset in split_datasets(cfg, splits):
        key = (dataset.get('data_root'), dataset.get('ann_file'), str(dataset.get('data_prefix')))
        if key not in seen:
            seen.add(key)
            report = check_dataset(cfg, dataset, split, open_images, workers, progress)
            if report is not None:
                yield dataset, report


def _leave_out(dataset: ConfigDict, report: DatasetReport, folder: str) -> str:
    """Point ``dataset`` at a copy of its data without ``report.bad_images``; return the copy's path."""
    os.makedirs(folder, exist_ok=True)
    if str(dataset.get('ann_file', '')).endswith('.json'):
        content = read_json(osp.join(dataset.get('data_root', ''), dataset.ann_file))
        images = [image for image in content['images'] if image.get('file_name') not in report.bad_images]
        kept = {image['id'] for image in images}
        annotations = [ann for ann in content.get('annotations', []) if ann.get('image_id') in kept]
        path = osp.join(folder, f'{report.split}.json')
        with open(path, 'w', encoding='utf-8') as file:
            json.dump(dict(content, images=images, annotations=annotations), file)
    else:
        image_dir = osp.join(dataset.get('data_root', ''), dataset.data_prefix.img_path)
        suffix = dataset.get('img_suffix', '.jpg')
        # The images mmseg lists (and the check saw): names ending with img_suffix as written, linked folders in.
        stems = sorted(path[:-len(suffix)] for path in walk_files(image_dir) if path.endswith(suffix))
        path = osp.join(folder, f'{report.split}.txt')
        with open(path, 'w', encoding='utf-8') as file:
            file.writelines(f'{stem}\n' for stem in stems if stem not in report.bad_images)
    dataset.ann_file = osp.abspath(path)
    return dataset.ann_file


def check_before_training(cfg: Config, skip_bad: bool) -> list[str]:
    """Check the training and validation data (the cheap part, see the module doc).

    Args:
        cfg: The training config, with its data root and classes set.
        skip_bad: Leave bad images out (and say so) instead of stopping.

    Returns:
        Lines for the log: each split's summary, and what ``skip_bad`` left out.

    Raises:
        DatasetError: Problems and no ``skip_bad``: one line per kind of problem, and the fix.
    """
    lines, problems = [], []
    for dataset, report in check_config_datasets(cfg, ('train', 'val'), open_images=False):
        summary, *found = report.lines(EXAMPLES)
        lines.append(summary)
        if found and skip_bad:
            copy = _leave_out(dataset, report, osp.join(cfg.work_dir, SKIP_BAD_DIR))
            for evaluator in (cfg.get('val_evaluator'), cfg.get('test_evaluator')):
                if report.split == 'val' and isinstance(evaluator, dict) and 'ann_file' in evaluator:
                    evaluator.ann_file = copy
            lines += [f'{line} (left out: --skip-bad)' for line in found]
            lines.append(f'{report.split}: {len(report.bad_images)} images left out, e.g. '
                         f'{", ".join(sorted(report.bad_images)[:EXAMPLES])}; the rest is in {copy}.')
        else:
            problems += found
    forget_json()
    if problems:
        raise DatasetError('\n'.join([*problems, 'Fix these items (tools/check_dataset.py also decodes every '
                                      'image), or pass --skip-bad to train without them.']))
    return lines


def check_before_testing(cfg: Config) -> None:
    """Check the test split's files before the model is built (the cheap part: every image's and label map's
    existence and header, and a sample of label maps), so that no image the evaluation would decode is
    missing, unreadable or over the pixel cap (:func:`backbones.boundary.too_many_pixels`): the evaluation
    never leaves an image out, and mmcv would decode such an image in full.

    Raises:
        DatasetError: One line per kind of :data:`UNDECODABLE` problem found, and the fix.
    """
    problems = []
    for _, report in check_config_datasets(cfg, ('test',), open_images=False):
        found = DatasetReport(report.split, report.source, {kind: items for kind, items in report.problems.items()
                                                            if kind in UNDECODABLE})
        problems += found.lines(EXAMPLES)[1:]
    forget_json()
    if problems:
        raise DatasetError('\n'.join([*problems, 'Fix these items or leave them out of the annotation file '
                                      '(tools/check_dataset.py lists every one): an evaluation scores every image.']))


def skip_unreadable_images(cfg: Config) -> None:
    """Load training images with ``convnext_dense.LoadImageOrSkip`` (see
    :mod:`backbones.datasets.skip_unreadable`) instead of mmcv's ``LoadImageFromFile``."""
    for _, dataset in split_datasets(cfg, ['train']):
        for transform in dataset.get('pipeline') or []:
            if transform.get('type') in ('LoadImageFromFile', 'mmcv.LoadImageFromFile'):
                transform.type = 'convnext_dense.LoadImageOrSkip'
