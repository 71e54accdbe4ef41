"""Your own data: find a dataset's files under its root, and take the classes from the data.

Detection (COCO format). For each split, the annotation file is the config's if it exists under the data
root, else the first of ``annotations/instances_<split>.json``, ``annotations/<split>.json`` and
``<split>.json`` (``test`` falls back to ``val``'s names); images are found where the file's first
``file_name`` values are: under the config's image folder, ``<split>/``, ``images/<split>/``, ``images/`` or the root
itself, so nested folders named in ``file_name`` work as they are. The classes are the training file's
``categories`` in the order the file lists them (mmdet and its COCO metric number labels in that order).

Segmentation (label maps): a ``classes.json`` in the data root,
``{"classes": [...], "palette": [[r, g, b], ...], "ignore": 255}`` (palette optional), turns any
``images/<split>/`` + ``annotations/<split>/`` folder pair (split ``training``/``validation`` as ADE20K, or
``train``/``val``) into a dataset of those classes. ``ignore`` is the label value of unlabelled pixels:
255 (the default) means values 0..N-1 are the classes; 0 means values 1..N are (ADE20K's convention,
``reduce_zero_label``).

Either way every dataloader's ``metainfo`` and the ``num_classes`` of every class-specific head (all but
the RPN's) are set, and a log line lists the classes and the heads. A config that names its classes
keeps them; then a different class list in the data, or a head with another ``num_classes``, is one line
naming both. Trained checkpoints carry the classes (and the category ids) in ``meta.dataset_meta``, and
:func:`apply_checkpoint_classes` gives them to the config that evaluates or runs the model.
"""
import os.path as osp
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
from mmengine.config import Config, ConfigDict

from ..boundary import walk_files
from ..checkpoints.loading import Checkpoint, open_checkpoint
from ..class_meta import MAX_NAME_CHARS, category_ids_problem, checkpoint_class_meta, names_problem
from ..datasets.checks import read_json
from ..errors import DatasetError, UsageError
from .cli import TASKS
from .config import split_datasets

CLASS_FILE = 'classes.json'
# Segmentation datasets whose class defines its classes.
NAMED_CLASS_DATASETS = ('ADE20KDataset', 'CityscapesDataset', 'PascalVOCDataset', 'COCOStuffDataset')
SEG_SPLIT_FOLDERS = {'train': ('training', 'train'), 'val': ('validation', 'val'), 'test': ('validation', 'val')}
MAX_CLASS_FILE_BYTES = 1 << 20
COCO_PALETTE_SIZE = 80  # CocoDataset's own palette: enough colours for up to 80 classes


def explicit_classes(dataset: ConfigDict) -> tuple[str, ...] | None:
    """The classes a dataset config names itself (its ``metainfo.classes``), or None."""
    classes = (dataset.get('metainfo') or {}).get('classes')
    return tuple(classes) if classes else None


def class_heads(node: Any, path: str = 'model') -> Iterator[tuple[str, ConfigDict]]:
    """The ``(path, config)`` of every part of a model config with ``num_classes``, the RPN's excepted."""
    if isinstance(node, dict):
        if 'num_classes' in node and not path.endswith('rpn_head'):
            yield path, node
        for key, child in node.items():
            yield from class_heads(child, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for index, child in enumerate(node):
            yield from class_heads(child, f'{path}.{index}')


def _palette(count: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(0)
    return [tuple(int(c) for c in rng.integers(40, 256, 3)) for _ in range(count)]


def set_classes(cfg: Config, classes: tuple[str, ...], source: str, named_by: str = 'the config',
                **metainfo: Any) -> str:
    """Give every dataloader ``classes`` (and ``metainfo``) and every class-specific head their number.
    ``ADE20KDataset`` becomes the equivalent ``BaseSegDataset`` (with ADE20K's ``reduce_zero_label``
    unless set), since it refuses classes other than ADE20K's.

    Args:
        cfg: The config.
        classes: The class names, in label order.
        source: Where they come from, for the log line and errors (a file).
        named_by: What named the classes the config already has, for the error when they differ.
        **metainfo: More dataset metainfo (``category_ids``, ``palette``).

    Returns:
        The line for the log: the classes, where from, and the heads set.

    Raises:
        UsageError: The config names other classes, or a head another ``num_classes`` while the config names
            its classes.
    """
    named = next((explicit_classes(dataset) for _, dataset in split_datasets(cfg) if explicit_classes(dataset)), None)
    if named is not None and named != classes:
        raise UsageError(f'The classes of {named_by} ({", ".join(named)}) are not those of {source} '
                         f'({", ".join(classes)}): make them equal (same names, same order), or remove '
                         'metainfo.classes from the config to take them from the data.')
    heads = list(class_heads(cfg.model))
    if named is not None:
        for path, head in heads:
            if head.num_classes != len(classes):
                raise UsageError(f'{path}.num_classes is {head.num_classes} but the config names {len(classes)} '
                                 f'classes: set it to {len(classes)}, or remove num_classes and metainfo.classes '
                                 'to take both from the data.')
    for _, dataset in split_datasets(cfg):
        if dataset.get('type') == 'ADE20KDataset':  # it takes only ADE20K's own classes: the same dataset, generic
            dataset.type = 'BaseSegDataset'
            dataset.setdefault('reduce_zero_label', True)  # ADE20KDataset's default, which its pipelines assume
        dataset.metainfo = dict(dataset.get('metainfo') or {}, classes=classes, **metainfo)
        if len(dataset.metainfo.get('palette') or ()) < len(classes):  # a palette for other classes does not fit
            dataset.metainfo.pop('palette', None)
            if TASKS.get(cfg.get('default_scope')) == 'detection' and len(classes) > COCO_PALETTE_SIZE:
                dataset.metainfo.palette = _palette(len(classes))
    for _, head in heads:
        head.num_classes = len(classes)
    return (f'{len(classes)} classes from {source}: {", ".join(classes)}; num_classes={len(classes)} in '
            f'{", ".join(path for path, _ in heads)}.')


def _coco_categories(ann_file: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The category names and ids of a COCO annotation file, in the file's order (mmdet's labels)."""
    content = read_json(ann_file)
    categories = content.get('categories')
    if not isinstance(categories, list) or not categories or not all(
            isinstance(c, dict) and isinstance(c.get('name'), str) and type(c.get('id')) is int
            for c in categories):
        raise DatasetError(f'{ann_file} has no "categories" list of {{"id": int, "name": str}}: a COCO annotation '
                           'file lists its categories there.')
    names = tuple(c['name'] for c in categories)
    ids = tuple(c['id'] for c in categories)
    if problem := names_problem(names):
        raise DatasetError(f'{ann_file}: its category names {problem}: give each category a name of 1 to '
                           f'{MAX_NAME_CHARS} printable characters.')
    if problem := category_ids_problem(ids, len(ids)):
        raise DatasetError(f'{ann_file}: its category ids {problem}: give each category a unique int id.')
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise DatasetError(f'{ann_file} lists the category {repeated[0]} more than once: give each category a '
                           'unique name and id.')
    return names, ids


def _some_file_names(ann_file: str, count: int = 10) -> list[str]:
    """The first ``count`` image ``file_name`` values of a COCO file.

    Raises:
        DatasetError: The file holds no images.
    """
    content = read_json(ann_file)
    images = content.get('images')
    if not isinstance(images, list) or not images:
        raise DatasetError(f'{ann_file} holds no images (no "images" list, or an empty one): an empty split. '
                           'Export the split again, or point the config at another file.')
    names = [image.get('file_name') for image in images[:count] if isinstance(image, dict)]
    return [name for name in names if isinstance(name, str)]


def resolve_coco_files(cfg: Config) -> None:
    """Point every COCO dataset and evaluator of ``cfg`` at the files found under its data root (module doc)."""
    for split, dataset in split_datasets(cfg):
        if not str(dataset.get('ann_file', '')).endswith('.json'):
            continue
        root = dataset.get('data_root', '')
        names = ('test', 'val') if split == 'test' else (split,)
        candidates = [dataset.ann_file, *(pattern.format(name) for name in names for pattern in (
            'annotations/instances_{}.json', 'annotations/{}.json', '{}.json'))]
        dataset.ann_file = next((c for c in candidates if osp.isfile(osp.join(root, c))), dataset.ann_file)
        ann_file = osp.join(root, dataset.ann_file)
        if not osp.isfile(ann_file):
            continue  # check_datasets names it
        file_names = _some_file_names(ann_file)
        prefix = dict(dataset.get('data_prefix') or {}).get('img', '')
        folders = [prefix] + [f'{name}/' for name in names] + [f'images/{name}/' for name in names] + ['images/', '']
        found = next((folder for folder in folders if any(osp.isfile(osp.join(root, folder, file_name))
                                                          for file_name in file_names)), prefix)
        dataset.data_prefix = dict(dataset.get('data_prefix') or {}, img=found)
        evaluator = cfg.get(f'{split}_evaluator')
        if isinstance(evaluator, dict) and 'ann_file' in evaluator:
            evaluator.ann_file = ann_file


def _train_dataset(cfg: Config) -> ConfigDict | None:
    return next((dataset for _, dataset in split_datasets(cfg, ['train'])), None)


def classes_from_coco(cfg: Config, split: str = 'train', named_by: str = 'the config') -> str | None:
    """Set the classes of a detection config from its ``split`` annotation file, and check that the other
    splits' files have the same categories (see the module doc).

    Raises:
        DatasetError: A file without categories or with repeated ones, or splits that differ.
        UsageError: The config names other classes (see :func:`set_classes`).
    """
    resolve_coco_files(cfg)
    files = {}
    for name, dataset in split_datasets(cfg):
        ann_file = osp.join(dataset.get('data_root', ''), str(dataset.get('ann_file', '')))
        if ann_file.endswith('.json') and osp.isfile(ann_file):
            files.setdefault(name, ann_file)
    if split not in files:
        return None
    names, ids = _coco_categories(files[split])
    for other, ann_file in files.items():
        if ann_file != files[split] and _coco_categories(ann_file) != (names, ids):
            raise DatasetError(f'{ann_file} has other categories than {files[split]}: every split needs the same '
                               'categories (names and ids).')
    return set_classes(cfg, names, files[split], named_by, category_ids=ids)


def _folder(root: str, kind: str, split: str) -> str | None:
    return next((f'{kind}/{name}' for name in SEG_SPLIT_FOLDERS[split] if osp.isdir(osp.join(root, kind, name))),
                None)


def read_class_file(path: str) -> tuple[tuple[str, ...], list | None, bool]:
    """The classes, palette (or None) and ``reduce_zero_label`` of a ``classes.json`` (module doc).

    Raises:
        DatasetError: A file that does not hold them, naming what is wrong.
    """
    content = read_json(path, MAX_CLASS_FILE_BYTES)
    classes = content.get('classes')
    if not isinstance(classes, list) or not classes or not all(isinstance(name, str) for name in classes):
        raise DatasetError(f'{path} has no "classes" list of names: write {{"classes": ["road", "car", ...]}}.')
    if problem := names_problem(classes):
        raise DatasetError(f'{path}: its "classes" {problem}: give each class a name of 1 to {MAX_NAME_CHARS} '
                           'printable characters.')
    if len(set(classes)) != len(classes):
        raise DatasetError(f'{path} names a class more than once: give each class once.')
    palette = content.get('palette')
    if palette is not None and not (isinstance(palette, list) and len(palette) == len(classes) and all(
            isinstance(colour, list) and len(colour) == 3 and all(isinstance(c, int) and 0 <= c < 256 for c in colour)
            for colour in palette)):
        raise DatasetError(f'{path}: "palette" must give one [r, g, b] of 0-255 integers per class '
                           f'({len(classes)}), or be left out.')
    ignore = content.get('ignore', 255)
    if ignore not in (0, 255):
        raise DatasetError(f'{path}: "ignore" is {ignore!r}; use 255 (classes are values 0..N-1) or 0 (classes are '
                           'values 1..N, as in ADE20K).')
    most = 254 if ignore == 0 else 255  # values 1..N with 255 left as ignore, or 0..N-1 below 255
    if len(classes) > most:
        raise DatasetError(f'{path} has {len(classes)} classes: mmseg reads label maps as 8-bit, so at most {most} '
                           f'with "ignore": {ignore}.')
    return tuple(classes), palette, ignore == 0


def _set_reduce_zero_label(node: Any, value: bool) -> None:
    if isinstance(node, dict):
        if str(node.get('type', '')).endswith('LoadAnnotations') and 'reduce_zero_label' in node:
            node.reduce_zero_label = value
        for child in node.values():
            _set_reduce_zero_label(child, value)
    elif isinstance(node, (list, tuple)):
        for child in node:
            _set_reduce_zero_label(child, value)


def _image_suffix(folder: str) -> str:
    suffixes = Counter(osp.splitext(path)[1] for path in walk_files(folder))
    return suffixes.most_common(1)[0][0] if suffixes else '.jpg'


def classes_from_label_maps(cfg: Config, named_by: str = 'the config') -> str | None:
    """Turn a segmentation config's datasets into datasets of the ``classes.json`` in the training data root
    (module doc); return the log line (None without a class file).

    Raises:
        DatasetError: A class file that cannot be used.
        UsageError: The config names other classes (see :func:`set_classes`).
    """
    train = _train_dataset(cfg)
    class_file = osp.join(train.get('data_root', ''), CLASS_FILE) if train else ''
    if not osp.isfile(class_file):
        return None
    classes, palette, reduce_zero_label = read_class_file(class_file)
    for split, dataset in split_datasets(cfg):
        root = dataset.get('data_root', '')
        images, labels = _folder(root, 'images', split), _folder(root, 'annotations', split)
        if images and labels:
            dataset.data_prefix = dict(img_path=images, seg_map_path=labels)
            dataset.img_suffix = _image_suffix(osp.join(root, images))
        dataset.seg_map_suffix = '.png'
        dataset.reduce_zero_label = reduce_zero_label
    for key in list(cfg.keys()):
        _set_reduce_zero_label(cfg[key], reduce_zero_label)
    extra = {'palette': [tuple(colour) for colour in palette]} if palette else {}
    return set_classes(cfg, classes, class_file, named_by, **extra)


def classes_from_data(cfg: Config, split: str = 'train', named_by: str = 'the config') -> str | None:
    """Set the classes of a detection or segmentation config from its ``split`` data (module doc); for
    segmentation without a ``classes.json``, check the heads against the config's own classes. Returns the
    line for the log (None for other configs)."""
    task = TASKS.get(cfg.get('default_scope'))
    if task == 'detection':
        return classes_from_coco(cfg, split, named_by)
    if task == 'segmentation':
        line = classes_from_label_maps(cfg, named_by)
        train = _train_dataset(cfg)
        if line is None and train is not None and explicit_classes(train):
            line = set_classes(cfg, explicit_classes(train), 'the config')
        if line is None and train is not None and train.get('type') not in NAMED_CLASS_DATASETS:
            raise UsageError(f"{cfg.filename} names no classes and {train.get('data_root', '')} has no {CLASS_FILE}: "
                             'write one (docs/own_data.md) or name them in metainfo.classes.')
        return line
    return None


def apply_checkpoint_classes(cfg: Config, checkpoint: 'str | Checkpoint') -> str | None:
    """Give ``cfg`` the classes (and category ids, palette) that ``checkpoint`` (read once, or a source to read)
    was trained on, when it carries them (checked: :func:`backbones.class_meta.checkpoint_class_meta`); return the line
    for the log (None when it carries none).

    Raises:
        CheckpointError: Class metadata that does not fit the schema.
        UsageError: The config names other classes (see :func:`set_classes`).
    """
    checkpoint = open_checkpoint(checkpoint)
    meta = checkpoint_class_meta(checkpoint.contents, checkpoint.source)
    if meta is None:
        return None
    extra = {} if meta.category_ids is None else {'category_ids': meta.category_ids}
    if meta.palette is not None:
        extra['palette'] = list(meta.palette)
    line = set_classes(cfg, meta.classes, checkpoint.source, **extra)
    return line if meta.note is None else f'{line} Note: {meta.note}.'
