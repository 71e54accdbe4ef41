"""Checks of a user's dataset before training: every bad item, grouped by kind of problem.

:func:`check_coco` checks a COCO instances file against its image folder, :func:`check_label_maps` a
folder of images against its folder of label maps (mmseg's layout). Each returns a :class:`DatasetReport`
whose :meth:`DatasetReport.lines` are one line per kind of problem, with the count and the first
examples, and whose ``bad_images`` are the images to leave out when training should go on without them.

A file that cannot be checked at all (no annotation file, JSON that does not parse, a file without
images) is a one-line error naming the file and the fix. Images are read with Pillow on a thread pool;
nothing here imports mmdet, mmseg or mmengine.

A truncated image or label map fails to decode under Pillow's default (``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``
False, which nothing in the project or the libraries it installs changes) and is reported as unreadable. The
checks decode under the process's setting and never change it, as every thread (the checks' own included)
reads that one global: a process that sets it True has asked Pillow to read truncated files (their missing
rows padded), and its checks report only the files that Pillow still cannot read.
"""
import functools
import math
import os
import os.path as osp
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from ..boundary import (
    DEFAULT_JSON_CAP_MB,
    JSON_CAP_VARIABLE,
    PIXELS_VARIABLE,
    cap_from_environment,
    declared_image_size,
    parse_json,
    read_regular_file,
    too_many_pixels,
    walk_files,
)
from ..errors import DatasetError, DatasetNotFoundError

MISSING_IMAGE = 'images missing on disk'
UNREADABLE_IMAGE = 'unreadable or truncated images'
SIZE_MISMATCH = 'images whose size differs from the annotation file'
BAD_IMAGE_SIZE = 'images without a positive width and height in the annotation file'
UNKNOWN_IMAGE = 'annotations of unknown images'
UNKNOWN_CATEGORY = 'annotations of unknown categories'
BAD_BOX = 'boxes of zero or negative size'
OUTSIDE_BOX = 'boxes outside the image'
BAD_POLYGON = 'polygons with fewer than 3 points, or of values that are not finite numbers'
BAD_RLE = "RLE segmentations whose size is not the image's [height, width] or whose counts are not a string or ints"
EMPTY_MASK = 'annotations without a segmentation (missing or empty; the configs train masks)'
MISSING_AREA = 'annotations without a numeric area (mmdet reads it)'
MISSING_LABEL = 'label maps missing on disk'
BAD_LABEL_FORMAT = 'label maps that are not 8- or 16-bit single-channel PNGs'
LABEL_SIZE = 'label maps whose size differs from the image'
BAD_LABEL_VALUE = 'label maps with values that are neither a class nor the ignore value'
LABEL_OVER_255 = 'label maps with values above 255 (read as 8-bit by mmseg, so they would wrap)'
OVERSIZED_IMAGE = f'images or label maps whose header declares more pixels than {PIXELS_VARIABLE} allows (raise it)'

KINDS = (MISSING_IMAGE, UNREADABLE_IMAGE, SIZE_MISMATCH, BAD_IMAGE_SIZE, UNKNOWN_IMAGE, UNKNOWN_CATEGORY,
         BAD_BOX, OUTSIDE_BOX, BAD_POLYGON, BAD_RLE, EMPTY_MASK, MISSING_AREA, MISSING_LABEL, BAD_LABEL_FORMAT,
         LABEL_SIZE, BAD_LABEL_VALUE, LABEL_OVER_255, OVERSIZED_IMAGE)

LABEL_MODES = ('L', 'P', 'I;16', 'I;16L', 'I;16B', 'I')
BOX_TOLERANCE = 1.0
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_LISTED_VALUES = 8

Problem = tuple[str, str]
Progress = Callable[[int, int], None]
T = TypeVar('T')


@dataclass
class DatasetReport:
    """What a check found in one split.

    Attributes:
        split: The split's name (``'train'``, ``'val'``...).
        source: The annotation file or the label folder that was checked.
        problems: Kind of problem (one of the module's constants) -> every offending item, in dataset
            order: a file name (with details in parentheses for some kinds), or ``'ann id N (image FILE)'``
            for an annotation. Only kinds with items are keys.
        bad_images: The images to leave out to train without the problems: COCO ``file_name`` values, or
            for label maps the image paths relative to the image folder without the image suffix.
        num_images: The images of the split.
        num_unannotated: Images that no annotation refers to: counted, not a problem; None for label maps
            (every image has its map, or the map is missing).
    """

    split: str
    source: str
    problems: dict[str, list[str]] = field(default_factory=dict)
    bad_images: set[str] = field(default_factory=set)
    num_images: int = 0
    num_unannotated: int | None = 0

    def ok(self) -> bool:
        """Whether the check found no problem."""
        return not any(self.problems.values())

    def lines(self, examples: int = 3) -> list[str]:
        """A summary line, then one line per kind of problem with its count and first examples.

        Args:
            examples: How many items each problem line names.

        Returns:
            Lines such as ``'train (annotations/train.json): 2 images missing on disk, e.g. a/b.jpg, c.jpg'``.
        """
        where = f'{self.split} ({self.source})'
        unannotated = '' if self.num_unannotated is None else f', {self.num_unannotated} without annotations'
        lines = [f'{where}: {self.num_images} images{unannotated}']
        for kind, items in self.problems.items():
            if items:
                lines.append(f'{where}: {len(items)} {kind}, e.g. {", ".join(items[:examples])}')
        return lines


def read_json(path: str, max_bytes: int | None = None) -> dict[str, Any]:
    """Read a JSON file that must hold an object, with one-line errors.

    The file is read through :func:`backbones.boundary.read_regular_file`: a regular file only (a FIFO or a
    device is refused, never waited on), its bytes counted against the cap while read. The last two files read
    stay cached (by path, size and modification time), so that the class lookup, the check and the layout
    search before training parse a large annotation file once; :func:`forget_json` empties the cache. Callers
    must not change what it returns.

    Args:
        path: The JSON file.
        max_bytes: The cap; None: ``CONVNEXT_DENSE_MAX_JSON_MB`` MiB (default 2048, above COCO's and LVIS's
            largest annotation files).

    Returns:
        The file's top-level object.

    Raises:
        DatasetNotFoundError: The file does not exist.
        DatasetError: The file is not a regular file, is larger than the cap, not UTF-8 JSON (or nested deeper or
            holding a longer number than Python parses), or its top level is not an object.
        UsageError: ``CONVNEXT_DENSE_MAX_JSON_MB`` is not a positive number.
    """
    cap, setting = (max_bytes, None) if max_bytes is not None else (
        cap_from_environment(JSON_CAP_VARIABLE, DEFAULT_JSON_CAP_MB), JSON_CAP_VARIABLE)
    try:
        status = os.stat(path)
        return _read_json(path, osp.realpath(path), status.st_size, status.st_mtime_ns, cap, setting)
    except FileNotFoundError:
        raise DatasetNotFoundError(f'{path} does not exist: point the config (or --data-root) at the '
                                   'annotation file.') from None
    except OSError as error:  # a file where a folder of the path should be, a link loop, no permission
        raise DatasetError(f'{path}: {error.strerror or error}.') from None


@functools.lru_cache(maxsize=2)
def _read_json(path: str, real_path: str, size: int, mtime_ns: int, max_bytes: int,
               setting: str | None) -> dict[str, Any]:
    def refuse(reason: str) -> DatasetError:
        return DatasetError(f'{path}: {reason}.')
    content = read_regular_file(real_path, max_bytes, 'a JSON file', setting, refuse)
    try:
        data = parse_json(content)
    except ValueError as error:
        raise DatasetError(f'{path} is not valid JSON: {error}; fix the file there or export it again.') from None
    if not isinstance(data, dict):
        raise DatasetError(f'{path} holds a JSON {type(data).__name__}, not an object; a COCO file is an '
                           "object with 'images', 'annotations' and 'categories'.")
    return data


def forget_json() -> None:
    """Empty :func:`read_json`'s cache."""
    _read_json.cache_clear()


def check_coco(ann_file: str, image_root: str, split: str, open_images: bool, workers: int = 8,
               progress: Progress | None = None) -> DatasetReport:
    """Check a COCO instances file and the images it names.

    An ``'iscrowd'`` annotation's RLE segmentation is taken as it is (not decoded). An annotation without a
    ``'segmentation'``, or with one that is empty (``None``, ``[]``, ``{}``, only empty polygons) is an
    :data:`EMPTY_MASK` (every config trains masks, and mmdet's mask loading fails on it with
    ``KeyError: 'mask'``); one without a numeric ``area`` a :data:`MISSING_AREA`; other polygons of fewer
    than 6 coordinates, or of an odd number, are :data:`BAD_POLYGON`.

    Args:
        ann_file: The COCO JSON file.
        image_root: The folder that the images' ``file_name`` values are relative to.
        split: The split's name, for the report.
        open_images: Also decode every image fully (catching unreadable and truncated files) and compare
            its size with the annotation file's; otherwise only check that each image file exists.
        workers: Threads that check the images.
        progress: Called as ``progress(done, total)`` with the count of images checked so far.

    Returns:
        The report of the split.

    Raises:
        DatasetNotFoundError: ``ann_file`` does not exist.
        DatasetError: ``ann_file`` is not JSON, or lacks the lists of images, annotations or categories,
            or lists no images, or an image without an id and a file name.
    """
    data = read_json(ann_file)
    images, annotations, categories = _coco_lists(data, ann_file)
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    bad_images: set[str] = set()

    def report(kind: str, item: str, file_name: str | None) -> None:
        found[kind].append(item)
        if file_name is not None:
            bad_images.add(file_name)

    names: dict[Any, str] = {}
    sizes: dict[Any, tuple[float, float]] = {}
    for index, image in enumerate(images):
        if not isinstance(image, dict) or not _is_key(image.get('id')) or not isinstance(image.get('file_name'), str):
            raise DatasetError(f"{ann_file}: images[{index}] has no 'id' and 'file_name'; every image entry "
                               "needs both (and a 'width' and 'height').")
        names[image['id']] = image['file_name']
        width, height = image.get('width'), image.get('height')
        if _is_number(width) and _is_number(height) and width > 0 and height > 0:
            sizes[image['id']] = (width, height)
        else:
            report(BAD_IMAGE_SIZE, image['file_name'], image['file_name'])

    category_ids = {category.get('id') for category in categories if isinstance(category, dict)}
    annotated: set[Any] = set()
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise DatasetError(f'{ann_file}: annotations[{index}] is a JSON {type(ann).__name__}, not an '
                               'object; fix the file or export it again.')
        image_id = ann.get('image_id')
        file_name = names.get(image_id) if _is_key(image_id) else None
        if file_name is not None:
            annotated.add(image_id)
        for kind in _annotation_problems(ann, file_name is not None, sizes, category_ids):
            report(kind, _annotation_name(ann, index, file_name), file_name)

    probes = [(osp.join(image_root, image['file_name']), image['file_name'], sizes.get(image['id']), open_images)
              for image in images]
    for (_, file_name, *_), problems in zip(probes, _in_threads(_check_image, probes, workers, progress)):
        for kind, item in problems:
            report(kind, item, file_name)
    return DatasetReport(split=split, source=ann_file, problems=_non_empty(found), bad_images=bad_images,
                         num_images=len(images), num_unannotated=len(names.keys() - annotated))


def check_label_maps(image_dir: str, label_dir: str, split: str, img_suffix: str, seg_map_suffix: str,
                     num_classes: int, reduce_zero_label: bool, ignore_index: int = 255, open_images: bool = True,
                     sample: int | None = None, workers: int = 8, progress: Progress | None = None) -> DatasetReport:
    """Check a folder of images against its folder of label maps, paired as mmseg pairs them.

    Every regular file under ``image_dir`` (recursively, linked folders followed once:
    :func:`~backbones.boundary.walk_files`) whose name ends with ``img_suffix`` (in its case, as mmseg matches it)
    is an image; its label map is the same relative path under ``label_dir`` with ``seg_map_suffix`` in place
    of ``img_suffix``.
    Valid label values are ``0..num_classes-1`` and ``ignore_index``, or with ``reduce_zero_label``,
    ``0..num_classes`` and ``ignore_index`` (0 becomes the ignore value).

    Args:
        image_dir: The folder of images.
        label_dir: The folder of label maps.
        split: The split's name, for the report.
        img_suffix: The images' file name ending (``'.jpg'``).
        seg_map_suffix: The label maps' file name ending (``'.png'``).
        num_classes: The classes of the dataset.
        reduce_zero_label: Whether label 0 is the ignored background and classes start at 1.
        ignore_index: The ignored label value.
        open_images: Also decode every image fully (catching unreadable and truncated files), and read
            every label map. Otherwise every label map's existence is checked, but only ``sample`` of them
            (evenly spaced) are read, all when ``sample`` is ``None``.
        sample: How many label maps to read when ``open_images`` is false.
        workers: Threads that check the pairs.
        progress: Called as ``progress(done, total)`` with the count of pairs checked so far.

    Returns:
        The report of the split.

    Raises:
        DatasetNotFoundError: ``image_dir`` or ``label_dir`` is not a folder.
        DatasetError: ``image_dir`` holds no file ending with ``img_suffix``.
    """
    for folder in (image_dir, label_dir):
        if not osp.isdir(folder):
            raise DatasetNotFoundError(f'{folder} is not a folder: point the config (or --data-root) at the '
                                       "dataset's image and label folders.")
    stems = [path[:-len(img_suffix)] for path in walk_files(image_dir) if path.endswith(img_suffix)]
    if not stems:
        raise DatasetError(f"{image_dir} holds no images ending with '{img_suffix}': set the config's "
                           'img_suffix to the images\' suffix, or point the image folder at them.')
    if open_images or sample is None:
        read = set(range(len(stems)))
    else:
        count = min(max(sample, 0), len(stems))
        read = {i * len(stems) // count for i in range(count)}
    valid = _LabelValues(num_classes, reduce_zero_label, ignore_index)
    pairs = [(stem, img_suffix, seg_map_suffix, image_dir, label_dir, open_images, index in read, valid)
             for index, stem in enumerate(stems)]

    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    bad_images: set[str] = set()
    for (stem, *_), problems in zip(pairs, _in_threads(_check_pair, pairs, workers, progress)):
        for kind, item in problems:
            found[kind].append(item)
            bad_images.add(stem)
    return DatasetReport(split=split, source=label_dir, problems=_non_empty(found), bad_images=bad_images,
                         num_images=len(stems), num_unannotated=None)


def _coco_lists(data: dict[str, Any], ann_file: str) -> tuple[list, list, list]:
    """The images, annotations and categories of a COCO file, or a one-line error for a missing one."""
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(data.get(key), list):
            found = 'has none' if key not in data else f'holds a JSON {type(data[key]).__name__}'
            raise DatasetError(f"{ann_file}: '{key}' {found}; a COCO instances file needs the lists 'images', "
                               "'annotations' (may be empty) and 'categories'.")
    if not data['images']:
        raise DatasetError(f"{ann_file} holds no images: an empty split; point the config at the split's "
                           'annotation file or leave the split out.')
    return data['images'], data['annotations'], data['categories']


def _annotation_problems(ann: dict, known_image: bool, sizes: dict[Any, tuple[float, float]],
                         category_ids: set) -> Iterator[str]:
    """The kinds of problem of one COCO annotation."""
    if not known_image:
        yield UNKNOWN_IMAGE
    category_id = ann.get('category_id')
    if not _is_key(category_id) or category_id not in category_ids:
        yield UNKNOWN_CATEGORY
    box = ann.get('bbox')
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(value) for value in box):
        yield BAD_BOX
    else:
        x, y, w, h = box
        size = sizes.get(ann['image_id']) if known_image else None
        if not (w > 0 and h > 0):
            yield BAD_BOX
        elif size is not None and (x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > size[0] + BOX_TOLERANCE
                                   or y + h > size[1] + BOX_TOLERANCE):
            yield OUTSIDE_BOX
    if not _is_number(ann.get('area')):
        yield MISSING_AREA
    segmentation = ann.get('segmentation')
    if not segmentation or isinstance(segmentation, list) and not any(segmentation):
        yield EMPTY_MASK
    elif isinstance(segmentation, list):
        if any(not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2
               or not all(_is_number(value) for value in polygon) for polygon in segmentation):
            yield BAD_POLYGON
    elif not _is_rle(segmentation, sizes.get(ann['image_id']) if known_image else None):
        yield BAD_RLE


def _is_rle(segmentation: Any, image_size: tuple[float, float] | None) -> bool:
    """Whether a COCO segmentation is an RLE that pycocotools decodes to the image's size: ``size`` is the image's
    ``[height, width]`` (it sets what decoding allocates), ``counts`` a compressed string or a list of ints."""
    if not isinstance(segmentation, dict) or image_size is None:
        return False
    size, counts = segmentation.get('size'), segmentation.get('counts')
    width, height = image_size
    return (isinstance(size, list) and len(size) == 2 and size == [height, width]
            and (isinstance(counts, str) or isinstance(counts, list) and all(
                isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= height * width
                for count in counts)))


def _annotation_name(ann: dict, index: int, file_name: str | None) -> str:
    """How a report names an annotation: its id and its image's file name (or image id, when unknown)."""
    name = f"ann id {ann['id']}" if 'id' in ann else f'annotations[{index}]'
    return f'{name} (image {file_name})' if file_name is not None else f"{name} (image id {ann.get('image_id')})"


def _check_image(path: str, name: str, size: tuple[float, float] | None, decode: bool) -> list[Problem]:
    """The problems of one image file: missing, without a readable header, over the pixel cap, of another size
    than the annotation file's, or (when decoding) unreadable."""
    if not osp.isfile(path):
        return [(MISSING_IMAGE, name)]
    declared, problems = _checked_header(path, name, UNREADABLE_IMAGE)
    if problems:
        return problems
    if size is not None and declared != tuple(size):  # masks are made at the file's size: compared without decoding
        return [(SIZE_MISMATCH, f'{name} ({declared[0]}x{declared[1]} on disk, {size[0]}x{size[1]} in the file)')]
    if decode and _decoded_size(path) != declared:
        return [(UNREADABLE_IMAGE, name)]
    return []


def _check_pair(stem: str, img_suffix: str, seg_map_suffix: str, image_dir: str, label_dir: str, decode: bool,
                read_label: bool, valid: '_LabelValues') -> list[Problem]:
    """The problems of one image and its label map; each file's header is read (and its pixels capped)
    before anything decodes it."""
    image_name, label_name = stem + img_suffix, stem + seg_map_suffix
    image_size, problems = _checked_header(osp.join(image_dir, image_name), image_name, UNREADABLE_IMAGE)
    if decode and not problems:
        image_size = _decoded_size(osp.join(image_dir, image_name))
        if image_size is None:
            problems.append((UNREADABLE_IMAGE, image_name))
    label_path = osp.join(label_dir, label_name)
    if not osp.isfile(label_path):
        problems.append((MISSING_LABEL, label_name))
        return problems
    _, label_problems = _checked_header(label_path, label_name, BAD_LABEL_FORMAT)
    if label_problems:
        problems.extend(label_problems)
    elif read_label:
        problems.extend(_check_label(label_path, label_name, image_size, valid))
    return problems


def _checked_header(path: str, name: str, unreadable: str) -> tuple[tuple[int, int] | None, list[Problem]]:
    """The size an image's header declares, and its problems: ``unreadable`` without a readable header,
    :data:`OVERSIZED_IMAGE` over the pixel cap (:func:`~backbones.boundary.too_many_pixels`)."""
    size = declared_image_size(path)
    if size is None:
        return None, [(unreadable, f'{name} (unreadable)' if unreadable == BAD_LABEL_FORMAT else name)]
    if too_many_pixels(size):
        return None, [(OVERSIZED_IMAGE, f'{name} ({size[0]}x{size[1]})')]
    return size, []


class _LabelValues:
    """Which raw label values are classes or the ignore value."""

    def __init__(self, num_classes: int, reduce_zero_label: bool, ignore_index: int) -> None:
        self.lowest, self.highest = (0, num_classes) if reduce_zero_label else (0, num_classes - 1)
        self.ignore_index = ignore_index

    def invalid(self, values: np.ndarray) -> np.ndarray:
        """The values (sorted, distinct) that are neither a class nor the ignore value."""
        return values[((values < self.lowest) | (values > self.highest)) & (values != self.ignore_index)]


def _check_label(path: str, name: str, image_size: tuple[int, int] | None, valid: _LabelValues) -> list[Problem]:
    """The problems of one label map that exists: its format, size and values."""
    try:
        with Image.open(path) as label:
            if label.format != 'PNG' or label.mode not in LABEL_MODES:
                return [(BAD_LABEL_FORMAT, f'{name} ({label.format} {label.mode})')]
            label.load()
            values = np.unique(np.asarray(label))
            size = label.size
    except Exception:  # Pillow raises many types (OSError, SyntaxError, ValueError...) on bad files
        return [(BAD_LABEL_FORMAT, f'{name} (unreadable)')]
    if values[0] < 0 or values[-1] > np.iinfo(np.uint16).max:
        return [(BAD_LABEL_FORMAT, f'{name} (32-bit values)')]
    problems: list[Problem] = []
    if image_size is not None and size != image_size:
        problems.append((LABEL_SIZE, f'{name} ({size[0]}x{size[1]}, image {image_size[0]}x{image_size[1]})'))
    invalid = valid.invalid(values)
    if invalid.size:
        problems.append((BAD_LABEL_VALUE, f'{name} (values {_listed(invalid)})'))
    if values[-1] > np.iinfo(np.uint8).max:
        problems.append((LABEL_OVER_255, f'{name} (values {_listed(values[values > np.iinfo(np.uint8).max])})'))
    return problems


def _listed(values: np.ndarray) -> str:
    """The first values, comma-separated, with ``...`` when there are more."""
    listed = ', '.join(str(value) for value in values[:MAX_LISTED_VALUES].tolist())
    return listed + (', ...' if values.size > MAX_LISTED_VALUES else '')


def _decoded_size(path: str) -> tuple[int, int] | None:
    """The size of a fully decoded image, or ``None`` when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except Exception:  # Pillow raises many types (OSError, SyntaxError, ValueError...) on bad files
        return None


def _in_threads(func: Callable[..., T], calls: Sequence[tuple], workers: int, progress: Progress | None) -> list[T]:
    """``func(*args)`` for each of ``calls`` on ``workers`` threads, in chunks, in the order of ``calls``."""
    chunk = max(1, min(256, math.ceil(len(calls) / (workers * 4))))
    chunks = [calls[start:start + chunk] for start in range(0, len(calls), chunk)]
    results: list[list[T]] = [[] for _ in chunks]
    done = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(lambda part: [func(*args) for args in part], part): index
                   for index, part in enumerate(chunks)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            done += len(chunks[futures[future]])
            if progress is not None:
                progress(done, len(calls))
    return [result for part in results for result in part]


def _non_empty(found: dict[str, list[str]]) -> dict[str, list[str]]:
    """The kinds that have items, in the order of :data:`KINDS`."""
    return {kind: items for kind, items in found.items() if items}


def _is_number(value: Any) -> bool:
    """Whether a JSON value is a number (not a boolean) that mmdet can take: finite and within float32's range
    (mmdet converts boxes to float32 arrays; Python's JSON reads ``1e400`` as infinity and ``NaN`` as NaN, and
    an integer of thousands of digits overflows the conversion)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < FLOAT32_MAX


def _is_key(value: Any) -> bool:
    """Whether a JSON value can be an id (a number or a string, not a list or an object)."""
    return isinstance(value, (int, float, str))
