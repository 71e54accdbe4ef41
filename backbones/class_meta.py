"""The schema of the class metadata files carry: a checkpoint's ``meta.dataset_meta`` (classes, palette,
category ids), and the class names of COCO categories and ``classes.json``.

Every class name the project takes from a file passes :func:`names_problem` before anything is built from
it (a config copy, a palette, a head size, a log line): 1 to :data:`MAX_CLASSES` names, each 1 to
:data:`MAX_NAME_CHARS` printable characters, so that a name shown in a log is shown as it is (no newline,
tab, terminal escape or other control or format character can reach one). The count is checked first, so
a list of millions of names is refused before any of them is looked at.

A checkpoint's class metadata (:func:`checkpoint_class_meta`; :func:`checked_class_meta` applies the same rule
to the class metadata of other files, an exported ONNX model's):

* ``classes``: names as above. Without them (another tool's checkpoint) the checkpoint carries no classes.
* ``palette``: one ``(r, g, b)`` of ints 0-255 per class. More colours than classes are cut to the classes
  (mmdet's datasets keep COCO's 80 colours for fewer classes, and our training writes what they hold); fewer
  are not used, as for a dataset without a palette (the tools choose the colours), and the log line says
  so. Colours of another type or out of range are an error, like every other broken entry.
* ``category_ids``: one unique int (not a bool) of int64's range per class.
"""
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import CheckpointError

MAX_CLASSES = 10_000  # ADE20K-full, the largest dense-prediction label set we know of, has 3688
MAX_NAME_CHARS = 256
INT64 = (-2**63, 2**63)


def names_problem(names: Any) -> str | None:
    """What makes ``names`` unusable as class names (the module doc's rule), in a few words; None when
    nothing does. A name shown in the answer is shown escaped."""
    if not isinstance(names, (list, tuple)):
        return f'are of type {type(names).__name__}, not a list of names'
    if not 0 < len(names) <= MAX_CLASSES:
        return f'are {len(names)} names, not 1 to {MAX_CLASSES}'
    for index, name in enumerate(names):
        if not isinstance(name, str):
            return f'hold a value of type {type(name).__name__} at {index}, not a name'
        if not 0 < len(name) <= MAX_NAME_CHARS:
            return f'hold a name of {len(name)} characters at {index}, not 1 to {MAX_NAME_CHARS}'
        if not name.isprintable():
            return f'hold the name {name[:40]!r} at {index}, with a control character'
    return None


def category_ids_problem(ids: Any, count: int) -> str | None:
    """What makes ``ids`` unusable as the category ids of ``count`` classes (one unique int of int64's range
    each, not a bool); None when nothing does."""
    if not isinstance(ids, (list, tuple)) or len(ids) != count:
        return f'are not a list of {count} ids, one per class'
    if not all(type(value) is int and INT64[0] <= value < INT64[1] for value in ids):
        return 'hold a value that is not an int of int64\'s range'
    if len(set(ids)) != count:
        return 'repeat an id'
    return None


def _palette_problem(palette: Any) -> str | None:
    if not isinstance(palette, (list, tuple)) or len(palette) > MAX_CLASSES:
        return f'is not a list of at most {MAX_CLASSES} colours'
    if not all(isinstance(colour, (list, tuple)) and len(colour) == 3
               and all(type(value) is int and 0 <= value <= 255 for value in colour) for colour in palette):
        return 'holds a colour that is not an (r, g, b) of ints 0-255'
    return None


@dataclass(frozen=True)
class ClassMeta:
    """A checkpoint's class metadata, checked.

    Attributes:
        classes: The class names, in label order.
        category_ids: One id per class, or None when the checkpoint has none.
        palette: One colour per class, or None when the checkpoint has none (or too few, see ``note``).
        note: What was left out and why, for the log; None when nothing was.
    """

    classes: tuple[str, ...]
    category_ids: tuple[int, ...] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None
    note: str | None = None


def checkpoint_class_meta(contents: Any, source: str) -> ClassMeta | None:
    """The classes, category ids and palette of a checkpoint's ``meta.dataset_meta``, checked (module doc);
    None when it carries no classes.

    Args:
        contents: The checkpoint as read.
        source: Where it was read from, for the error.

    Raises:
        CheckpointError: An entry that does not fit the schema, naming the file and the problem in one line.
    """
    meta = contents.get('meta') if isinstance(contents, dict) else None
    dataset_meta = meta.get('dataset_meta') if isinstance(meta, dict) else None
    if not isinstance(dataset_meta, dict) or dataset_meta.get('classes') is None:
        return None

    def fail(key: str, problem: str) -> CheckpointError:
        return CheckpointError(f'{source}: its meta.dataset_meta {key} {problem}. A checkpoint carries 1 to '
                               f'{MAX_CLASSES} class names of 1 to {MAX_NAME_CHARS} printable characters, and per '
                               'class one (r, g, b) of 0-255 and one unique int id; fix the meta, or keep the weights '
                               'alone with tools/convert_checkpoint.py IN OUT.pth.')

    return checked_class_meta(dataset_meta['classes'], dataset_meta.get('category_ids'),
                              dataset_meta.get('palette'), fail)


def checked_class_meta(classes: Any, category_ids: Any, palette: Any,
                       fail: Callable[[str, str], Exception]) -> ClassMeta:
    """Classes, category ids and a palette that a file carries, checked (module doc): the rule of a
    checkpoint's ``meta.dataset_meta``, for every file format that carries class metadata.

    Args:
        classes: The class names as read.
        category_ids: The category ids as read, or None when the file has none.
        palette: The colours as read, or None when the file has none.
        fail: Makes the exception to raise from the entry's key (``'classes'``, ``'category_ids'`` or
            ``'palette'``) and the problem (``'repeat an id'``), for a message that names the file.

    Raises:
        Exception: What ``fail`` makes, for the first entry that does not fit the schema.
    """
    if problem := names_problem(classes):
        raise fail('classes', problem)
    if category_ids is not None and (problem := category_ids_problem(category_ids, len(classes))):
        raise fail('category_ids', problem)
    note = None
    if palette is not None:
        if problem := _palette_problem(palette):
            raise fail('palette', problem)
        if len(palette) < len(classes):
            palette, note = None, f'its palette of {len(palette)} colours for {len(classes)} classes is not used'
    return ClassMeta(tuple(classes), None if category_ids is None else tuple(category_ids),
                     None if palette is None else tuple(tuple(colour) for colour in palette[:len(classes)]), note)
