"""The project's bounded input boundary: the primitives through which bytes and names from outside enter.

Each primitive bounds the work an input can cause and refuses what it cannot take with one line (a
:mod:`backbones.errors` type). So far:

* :func:`walk_files`: the one folder walk (datasets, the dataset checks, ``--skip-bad`` copies, the inputs of
  ``tools/infer.py``). It follows linked folders, since datasets are often linked in, but enters each real
  folder once, so a link loop ends; it lists regular files only (a FIFO, socket or device is never opened
  later, where it could block), and counts the entries it reads against a cap.
* :func:`read_regular_file` (on :func:`open_regular_file`): a file's bytes, from a regular file only (opened
  without blocking, checked on the descriptor), counted against a cap while read, never by its reported size;
  :func:`parse_json` for the JSON files among them; :func:`cap_from_environment` (on
  :func:`number_from_environment`, the one reader of settings) for caps users can raise.
* :func:`resolve_inside`: a path resolved, links and ``..`` included, that must stay inside a given folder.
* :func:`oversized_image` (:func:`declared_image_size`, :func:`too_many_pixels`): an image's pixel count, read
  from its header before anything decodes it (for a GIF, the canvas that its screen and every frame span),
  against a cap users can raise; the same cap for a video's frames.
"""
import io
import json
import os
import stat
import struct
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from PIL import Image

from .errors import DatasetError, UsageError

MAX_FILES_VARIABLE = 'CONVNEXT_DENSE_MAX_FILES'
DEFAULT_MAX_FILES = 1_000_000


def number_from_environment(variable: str, default: float, unit: str, integer: bool = False) -> float:
    """A positive number from the environment variable ``variable``, or ``default`` if it is unset or empty: the
    one reader of the settings users raise caps and bounds with.

    Args:
        variable: The variable's name.
        default: The value when it is unset.
        unit: What the number counts, for the error (``'MiB'``, ``'folder entries'``).
        integer: Only whole numbers written as digits.

    Raises:
        UsageError: The variable is set to something other than a positive (finite) number.
    """
    text = os.environ.get(variable, '').strip()
    if not text:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = -1
    if not 0 < value < 2**43:  # also refuses inf and nan
        raise UsageError(f'{variable}={text[:40]!r}: set it to a positive number of {unit} (default {default}), '
                         'or unset it.')
    return value


def max_files() -> int:
    """The cap on the entries one folder walk reads: ``$CONVNEXT_DENSE_MAX_FILES``, else 1,000,000.

    Raises:
        UsageError: The variable is set to something other than a positive integer.
    """
    return int(number_from_environment(MAX_FILES_VARIABLE, DEFAULT_MAX_FILES, 'folder entries', integer=True))


def walk_files(root: str | os.PathLike, suffixes: Sequence[str] | None = None,
               max_entries: int | None = None) -> list[str]:
    """Every regular file under ``root``, recursively: the paths relative to ``root``, sorted.

    The link policy: a linked folder is followed, but each real folder (by device and inode) is entered
    once, so a link loop ends and a folder reached by several paths is listed once. Real subfolders are
    walked before linked ones, so a folder inside ``root`` keeps its own path when a link also points at
    it; between links, the first in sorted order wins. Only regular files are listed (links to them
    included): FIFOs, sockets, devices and broken links are left out. Folders that cannot be read are left
    out, as ``os.walk`` does.

    Args:
        root: The folder. A path that is not a folder (or does not exist) has no files.
        suffixes: Keep only the files whose names end with one of these, in any case (``.jpg`` finds
            ``a.JPG`` and ``a.Jpg``); None keeps every file.
        max_entries: The cap on the folder entries read (files, folders, links and what is left out, counted
            in every folder entered); None reads :func:`max_files`.

    Returns:
        The files' paths relative to ``root`` (through the links followed), with ``/`` separators, in sorted
        order (strings: a ``Path`` per file would cost several times the walk).

    Raises:
        DatasetError: The walk read more than ``max_entries`` entries, naming ``root``, the cap and its variable.
        UsageError: ``$CONVNEXT_DENSE_MAX_FILES`` is not a positive integer (only when ``max_entries`` is None).
    """
    cap = max_files() if max_entries is None else max_entries
    endings = None if suffixes is None else tuple(suffix.lower() for suffix in suffixes)
    # (path, relative path with a trailing /): real subfolders depth-first, then linked ones in the order found
    folders, linked = [(os.fspath(root), '')], deque()
    entered: set[tuple[int, int]] = set()
    files, entries = [], 0
    while folders or linked:
        folder, relative = folders.pop() if folders else linked.popleft()
        try:
            status = os.stat(folder)
            if not stat.S_ISDIR(status.st_mode) or (status.st_dev, status.st_ino) in entered:
                continue
            entered.add((status.st_dev, status.st_ino))
            with os.scandir(folder) as scan:
                children = []
                for child in scan:
                    entries += 1
                    if entries > cap:
                        raise DatasetError(f'{root} holds more than {cap} files and folders (counted through its '
                                           f'linked folders): point at a smaller folder, or raise the cap with '
                                           f'{MAX_FILES_VARIABLE}=N.')
                    children.append(child)
        except OSError:  # gone, not a folder, or not readable: no files, as os.walk does
            continue
        subfolders = []
        for child in sorted(children, key=lambda entry: entry.name):
            try:
                if child.is_dir():
                    place = (child.path, f'{relative}{child.name}/')
                    (linked if child.is_symlink() else subfolders).append(place)
                elif child.is_file() and (endings is None or child.name.lower().endswith(endings)):
                    files.append(relative + child.name)
            except OSError:  # the entry went away or cannot be examined: left out, as os.walk does
                continue
        folders.extend(reversed(subfolders))
    return sorted(files)


# ---- Regular files, read within a cap ----

JSON_CAP_VARIABLE = 'CONVNEXT_DENSE_MAX_JSON_MB'
DEFAULT_JSON_CAP_MB = 2048  # above COCO's instances_train2017.json (448 MB) and LVIS v1's train file (1.1 GB)
READ_CHUNK_BYTES = 1 << 20


def _usage_error(path: str | os.PathLike) -> Callable[[str], Exception]:
    return lambda reason: UsageError(f'{os.fspath(path)}: {reason}.')


def _in_units(size: int) -> str:
    return f'{size >> 20} MiB' if size >= 1 << 20 else f'{size} bytes'


def open_regular_file(path: str | os.PathLike, what: str,
                      refuse: Callable[[str], Exception] | None = None) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without ever blocking, and check on the open descriptor that it is a regular file.

    Args:
        path: The file; a symlink to a regular file is one.
        what: What the file should be, for the error (``'a checkpoint file'``).
        refuse: Makes the exception to raise from a reason (``'it is a directory, not a checkpoint file'``);
            by default a :class:`~backbones.errors.UsageError` ``<path>: <reason>.``.

    Returns:
        The open descriptor (the caller closes it) and its status.

    Raises:
        FileNotFoundError: ``path`` does not exist (the caller says where the file should come from).
        Exception: What ``refuse`` makes: ``path`` cannot be opened, or is a directory, a FIFO, a device or a
            socket (opened with ``O_NONBLOCK``, so a FIFO without a writer does not block).
    """
    refuse = refuse or _usage_error(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise refuse(error.strerror or type(error).__name__) from None
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        os.close(fd)
        if stat.S_ISDIR(status.st_mode):
            raise refuse(f'it is a directory, not {what}')
        raise refuse('it is not a regular file (a device, FIFO or socket)')
    return fd, status


def read_regular_file(path: str | os.PathLike, max_bytes: int, what: str, setting: str | None = None,
                      refuse: Callable[[str], Exception] | None = None) -> bytes:
    """The bytes of the regular file ``path``, counted against ``max_bytes`` while they are read.

    The size the file system reports is never trusted (it is 0 for ``/dev/zero`` or a FIFO, and a file can
    grow): reading stops at the first byte over the cap.

    Args:
        path: The file; a symlink to a regular file is one.
        max_bytes: The cap.
        what: What the file should be, for the errors (``'a COCO JSON file'``).
        setting: How to raise the cap (an environment variable's name), for the error; None: it is fixed.
        refuse: Makes the exception to raise from a reason; by default a
            :class:`~backbones.errors.UsageError` ``<path>: <reason>.``.

    Returns:
        The file's bytes.

    Raises:
        FileNotFoundError: ``path`` does not exist (the caller says where the file should come from).
        Exception: What ``refuse`` makes: not a regular file (see :func:`open_regular_file`), not readable,
            or more than ``max_bytes``.
    """
    refuse = refuse or _usage_error(path)
    fd, _ = open_regular_file(path, what, refuse)
    content, size = io.BytesIO(), 0
    with os.fdopen(fd, 'rb', buffering=0) as file:
        try:
            while chunk := file.read(min(READ_CHUNK_BYTES, max_bytes + 1 - size)):
                size += len(chunk)
                if size > max_bytes:
                    how = f'; raise it with {setting}' if setting else ''
                    raise refuse(f'it has more than {_in_units(max_bytes)}, the cap for {what}{how}')
                content.write(chunk)
        except OSError as error:
            raise refuse(f'cannot read it ({error.strerror or type(error).__name__})') from None
    return content.getvalue()


def cap_from_environment(variable: str, default_mb: int) -> int:
    """A cap in bytes from the environment variable ``variable`` (MiB), or ``default_mb`` MiB if it is unset.

    Raises:
        UsageError: The variable is set to something other than a positive number.
    """
    return int(number_from_environment(variable, default_mb, 'MiB') * (1 << 20))


def parse_json(data: bytes) -> Any:
    """``json.loads`` of UTF-8 ``data``, with every way it can fail one :class:`ValueError` line.

    Raises:
        ValueError: Not UTF-8, not JSON (the message gives the line and column), nested deeper than Python's
            recursion limit, or holding an integer of more digits than Python converts
            (``sys.get_int_max_str_digits()``).
    """
    try:
        return json.loads(data.decode('utf-8'))
    except UnicodeDecodeError as error:
        raise ValueError(f'not UTF-8 text ({error.reason} at byte {error.start})') from None
    except json.JSONDecodeError as error:
        raise ValueError(f'{error.msg} at line {error.lineno}, column {error.colno}') from None
    except RecursionError:
        raise ValueError('nested deeper than Python parses') from None
    except ValueError as error:  # an integer of more digits than Python converts to an int
        raise ValueError(str(error).split(':')[0][:120]) from None


def resolve_inside(path: str | os.PathLike, root: str | os.PathLike, what: str,
                   refuse: Callable[[str], Exception] | None = None) -> Path:
    """``path`` with every symlink and ``..`` resolved, which must lie inside ``root`` (resolved likewise).

    Args:
        path: A path the project derived or took from a file, inside ``root`` by the format's promise.
        root: The folder it must stay in.
        what: What ``root`` is, for the error (``'the model folder'``).
        refuse: Makes the exception to raise from a reason; by default a
            :class:`~backbones.errors.UsageError` ``<path>: <reason>.``.

    Returns:
        The resolved path.

    Raises:
        Exception: What ``refuse`` makes, when ``path`` resolves outside ``root`` or through a symlink loop.
    """
    refuse = refuse or _usage_error(path)
    try:
        resolved, folder = Path(path).resolve(), Path(root).resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop (Python 3.11 and 3.12)
        raise refuse(f'cannot resolve it ({error})') from None
    if not resolved.is_relative_to(folder):
        raise refuse(f'it resolves to {resolved}, outside {what} {folder}')
    return resolved


# ---- Images: the pixel count declared in the header, before decoding ----

PIXELS_VARIABLE = 'CONVNEXT_DENSE_MAX_IMAGE_PIXELS'
DEFAULT_MAX_PIXELS = 100_000_000  # 10000 x 10000: 300 MB decoded as 8-bit BGR, 4x COCO's largest image
GIF_SIGNATURES = (b'GIF87a', b'GIF89a')
IMAGE_CAP_VARIABLE = 'CONVNEXT_DENSE_MAX_IMAGE_MB'
DEFAULT_IMAGE_CAP_MB = 1024  # an image file's bytes (a 100-megapixel PNG without compression is 300 MB)


def max_image_pixels() -> int:
    """The cap on an image's pixels (width x height): ``$CONVNEXT_DENSE_MAX_IMAGE_PIXELS``, else 100,000,000.

    Raises:
        UsageError: The variable is set to something other than a positive integer.
    """
    return int(number_from_environment(PIXELS_VARIABLE, DEFAULT_MAX_PIXELS, 'pixels', integer=True))


def declared_image_size(source: bytes | str | os.PathLike) -> tuple[int, int] | None:
    """The (width, height) that an image's header declares, read without decoding it; None when ``source`` is
    not an image with a readable header (or, for a path, not a readable regular file).

    Pillow parses the header (PNG, JPEG, GIF, TIFF, WebP, BMP, PPM/PGM and its other formats) without its own
    decompression-bomb check, whose warning and limit would otherwise come before the project's cap. A GIF's
    size is the canvas that its screen and every frame span (a frame can lie outside the screen, and decoders
    allocate what the frames span), found by walking its blocks without decompressing them.

    Args:
        source: The image's bytes, or the path of a file (a FIFO or device is never opened blocking).
    """
    if isinstance(source, bytes):
        return _declared_size(io.BytesIO(source))
    try:
        fd, _ = open_regular_file(source, 'an image', refuse=ValueError)
    except (OSError, ValueError):
        return None
    with os.fdopen(fd, 'rb') as stream:
        try:
            return _declared_size(stream)
        except OSError:
            return None


def too_many_pixels(size: tuple[int, int], max_pixels: int | None = None) -> str | None:
    """Why an image or video frame of ``size`` (width, height) must not be decoded; None when it may be.

    Args:
        size: The width and height declared before decoding.
        max_pixels: The cap; None reads :func:`max_image_pixels`.

    Returns:
        ``'it declares WxH pixels, over the cap of N (raise it with CONVNEXT_DENSE_MAX_IMAGE_PIXELS)'`` or None.

    Raises:
        UsageError: ``$CONVNEXT_DENSE_MAX_IMAGE_PIXELS`` is not a positive integer (only when ``max_pixels`` is None).
    """
    cap = max_image_pixels() if max_pixels is None else max_pixels
    width, height = size
    if width * height <= cap:
        return None
    return f'it declares {width}x{height} pixels, over the cap of {cap} (raise it with {PIXELS_VARIABLE})'


def oversized_image(source: bytes | str | os.PathLike, max_pixels: int | None = None) -> str | None:
    """Why the image ``source`` must not be decoded, from its header alone (:func:`declared_image_size`,
    :func:`too_many_pixels`): over the pixel cap, or no readable image header; None when it may be decoded.

    Raises:
        UsageError: ``$CONVNEXT_DENSE_MAX_IMAGE_PIXELS`` is not a positive integer (only when ``max_pixels`` is None).
    """
    size = declared_image_size(source)
    if size is None:
        return 'it is not an image with a readable header'
    return too_many_pixels(size, max_pixels)


def _declared_size(stream: IO[bytes]) -> tuple[int, int] | None:
    """The (width, height) an image's header declares (a GIF's whole canvas), None for no readable header."""
    prefix = stream.read(16)
    if prefix[:6] in GIF_SIGNATURES:
        stream.seek(0)
        return _gif_canvas(stream)
    Image.init()
    for name in Image.ID:  # the formats Pillow registered, in its own order of trying them
        factory, accept = Image.OPEN[name]
        try:
            accepted = accept is None or accept(prefix)
        except (struct.error, IndexError, ValueError):  # a prefix shorter than the format's signature
            continue
        if not accepted or isinstance(accepted, str):  # a string names a format Pillow cannot read
            continue
        stream.seek(0)
        try:
            image = factory(stream, '')
        except (SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, struct.error, OSError):
            continue  # Pillow's plugins refuse a header that is not theirs, or a broken one, with these
        width, height = image.size
        return (width, height) if width > 0 and height > 0 else None
    return None


def _gif_canvas(stream: IO[bytes]) -> tuple[int, int] | None:
    """The width and height that a GIF's logical screen and all its frames span; None when it is broken.

    Walks the block structure (extensions and image descriptors, each followed by length-prefixed
    sub-blocks), seeking over the data, so the work is linear in the file and nothing is decompressed.
    """
    header = stream.read(13)
    if len(header) < 13:
        return None
    width, height, flags = struct.unpack('<HHB', header[6:11])
    if flags & 0x80:  # a global colour table
        stream.seek(3 << ((flags & 7) + 1), os.SEEK_CUR)
    while (introducer := stream.read(1)) not in (b'', b';'):
        if introducer == b',':  # an image descriptor: left, top, width, height, flags
            descriptor = stream.read(9)
            if len(descriptor) < 9:
                return None
            left, top, frame_width, frame_height, frame_flags = struct.unpack('<HHHHB', descriptor)
            width, height = max(width, left + frame_width), max(height, top + frame_height)
            if frame_flags & 0x80:  # a local colour table
                stream.seek(3 << ((frame_flags & 7) + 1), os.SEEK_CUR)
            stream.read(1)  # the LZW minimum code size
        elif introducer == b'!':  # an extension: its label, then sub-blocks
            stream.read(1)
        else:
            return None
        while (length := stream.read(1)) not in (b'', b'\x00'):
            stream.seek(length[0], os.SEEK_CUR)
    return (width, height) if width > 0 and height > 0 else None
