"""Read a checkpoint file as data: torch's zip and legacy formats, and safetensors.

:func:`read_checkpoint_file` is the one way this project opens a checkpoint (mmengine's loaders for
local paths and URLs are pointed at it, see :mod:`backbones.patches`). The pickle inside a torch file
is run by :mod:`backbones.checkpoints.pickle_data`, which imports and calls nothing the file names; the
only names it builds from are ours:

* ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_tensor`` / ``_rebuild_parameter(_with_state)``: a
  tensor made here, as a view of a storage read from the file, after its dtype, shape, strides and
  offset have been checked against the storage's size. A tensor never views more elements than its
  storage holds, so no tensor (an expanded one, with stride 0) is larger than the bytes in the file.
  Storages are read into buffers of ours that no opcode can reach.
* ``collections.OrderedDict`` and ``torch.Size``: a plain dict, a tuple.
* numpy arrays, scalars and dtypes of plain numbers, rebuilt from their bytes (never ``object`` or
  structured dtypes); protocol 2's ``_codecs.encode`` for bytes.

Every other name (a class, a function, mmengine's ``HistoryBuffer``) becomes an inert
:class:`~backbones.checkpoints.pickle_data.Record`. Before anything is allocated, a zip archive must
store its records uncompressed and without overlap (their sizes add up to at most the file's size),
with a storage record exactly as large as its tensors' storage; a legacy file's storages must lie
inside the file. So what a file can make the process allocate is bounded by the file's size and the
pickle limits. Any file that is not usable gives one :class:`CheckpointError` line naming it.
"""
import io
import math
import os
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any

import safetensors
import torch

from ..boundary import open_regular_file
from ..errors import CheckpointError, CheckpointNotFoundError
from .pickle_data import DataUnpickler, Global, PickleDataError, PickleLimits, describe, numpy_calls, ordered_dict

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # what torch's legacy (non-zip) format starts with
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {
    f'torch.{name}Storage': dtype for name, dtype in [
        ('Double', torch.float64), ('Float', torch.float32), ('Half', torch.float16), ('BFloat16', torch.bfloat16),
        ('Long', torch.int64), ('Int', torch.int32), ('Short', torch.int16), ('Char', torch.int8),
        ('Byte', torch.uint8), ('Bool', torch.bool), ('ComplexFloat', torch.complex64),
        ('ComplexDouble', torch.complex128)]}
IMAGE_SIGNATURES = {b'\xff\xd8\xff': 'a JPEG image', b'\x89PNG': 'a PNG image', b'GIF8': 'a GIF image',
                    b'RIFF': 'a RIFF (WebP or video) file', b'BM': 'a BMP image'}
ZIP_SIGNATURE = b'PK\x03\x04'
PICKLE_START = b'\x80'  # the PROTO opcode: torch's legacy format and plain pickles start with it
# What Python's zipfile raises for archives it cannot read.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError, struct.error,
              OverflowError, KeyError, IndexError, OSError)


@dataclass(frozen=True)
class ReadLimits:
    """What one checkpoint file may hold, checked before reading it.

    Attributes:
        max_file_bytes: Size of the file.
        max_pickle_bytes: Size of its pickle (``data.pkl``): the non-tensor part of a checkpoint.
        pickle: The limits of the pickle interpreter (objects, nesting, tree size, integer size).
    """
    max_file_bytes: int = 256 << 30
    max_pickle_bytes: int = 512 << 20
    pickle: PickleLimits = field(default_factory=PickleLimits)


class _Storage:
    """A storage of the file: its dtype and, once read, its elements (a tensor of ours)."""
    __slots__ = ('key', 'dtype', 'numel', 'elements')

    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel, self.elements = key, dtype, numel, None


def _storage_dtype(storage_type: Any) -> torch.dtype:
    name = storage_type.name if isinstance(storage_type, Global) else None
    if name not in STORAGE_DTYPES:
        raise PickleDataError(f'a storage of type {name or type(storage_type).__name__}, not a plain tensor storage')
    return STORAGE_DTYPES[name]


def _check_ints(values: Any, what: str) -> tuple[int, ...]:
    if not (isinstance(values, tuple) and len(values) <= 32 and all(type(v) is int and 0 <= v < 2**62 for v in values)):
        raise PickleDataError(f'a tensor {what} that is not a tuple of at most 32 non-negative ints')
    return values


def _tensor(storage: Any, offset: Any, size: Any, stride: Any) -> torch.Tensor | None:
    """A view of ``storage`` with ``size``, ``stride`` and ``offset``, checked to lie inside it."""
    if not isinstance(storage, _Storage):
        raise PickleDataError('a tensor whose storage is not a storage of the file')
    size, stride = _check_ints(size, 'size'), _check_ints(stride, 'stride')
    if len(size) != len(stride) or type(offset) is not int or offset < 0:
        raise PickleDataError(f'a tensor with size {size}, stride {stride} and offset {offset}')
    numel = math.prod(size)
    extent = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if numel else offset
    if extent > storage.numel or numel > storage.numel:
        raise PickleDataError(f'a tensor of size {size} (stride {stride}, offset {offset}) that views more than '
                              f'its storage of {storage.numel} elements holds')
    if storage.elements is None:  # the first pass over a legacy file: storages are not read yet
        return None
    return storage.elements.as_strided(size, stride, offset)


def _rebuild_tensor_v2(args: tuple) -> torch.Tensor | None:
    # (storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
    hooks_empty = len(args) == 6 or args[6] in (None, {})
    if not (len(args) in (6, 7) and type(args[4]) is bool and args[5] == {} and hooks_empty):
        raise PickleDataError('a torch tensor rebuilt with arguments other than a plain tensor has')
    return _tensor(*args[:4])


def _rebuild_tensor(args: tuple) -> torch.Tensor | None:
    if len(args) != 4:
        raise PickleDataError('a torch tensor rebuilt with arguments other than a plain tensor has')
    return _tensor(*args)


def _rebuild_parameter(args: tuple) -> torch.Tensor | None:
    # (data, requires_grad, backward_hooks[, state]): the parameter's data as a plain tensor
    if not (len(args) in (3, 4) and (args[0] is None or isinstance(args[0], torch.Tensor)) and type(args[1]) is bool
            and args[2] == {} and (len(args) == 3 or args[3] in (None, {}))):
        raise PickleDataError('a torch parameter rebuilt with arguments other than a plain parameter has')
    return args[0]


def _size(args: tuple) -> tuple:
    if len(args) != 1:
        raise PickleDataError('torch.Size called with other than one tuple')
    return _check_ints(args[0], 'size')


TORCH_CALLS = {
    'torch._utils._rebuild_tensor_v2': _rebuild_tensor_v2,
    'torch._utils._rebuild_tensor': _rebuild_tensor,
    'torch._utils._rebuild_parameter': _rebuild_parameter,
    'torch._utils._rebuild_parameter_with_state': _rebuild_parameter,
    'torch.Size': _size,
    'collections.OrderedDict': ordered_dict,
    **numpy_calls(),
}


class _TorchFile:
    """The pickles and storages of one torch file, read within ``limits``."""

    def __init__(self, path: str, file: io.BufferedReader, size: int, limits: ReadLimits) -> None:
        self.path, self.file, self.size, self.limits = path, file, size, limits
        self.storages: dict[str, _Storage] = {}
        self.read_storage = None  # zip archives: reads a storage's record when the pickle first names it

    def _persistent_load(self, pid: Any) -> _Storage:
        # zip: ('storage', type, key, location, numel); legacy: the same and view metadata (None)
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == 'storage' and isinstance(pid[2], str)
                and isinstance(pid[3], str) and type(pid[4]) is int and 0 <= pid[4] < 2**62
                and (len(pid) == 5 or pid[5] is None)):
            raise PickleDataError(f'a persistent id that is not a storage: {describe(pid)}')
        dtype, key, numel = _storage_dtype(pid[1]), pid[2], pid[4]
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, dtype, numel)
            if self.read_storage:
                self.read_storage(storage)
        elif (storage.dtype, storage.numel) != (dtype, numel):
            raise PickleDataError(f'storage {key!r} named with two dtypes or sizes')
        return storage

    def _unpickle(self, data: bytes | memoryview, start: int = 0, persistent: bool = True) -> tuple[Any, int]:
        unpickler = DataUnpickler(data, TORCH_CALLS, self._persistent_load if persistent else None,
                                  self.limits.pickle, start)
        return unpickler.load(), unpickler.pos

    def read_zip(self) -> Any:
        archive = zipfile.ZipFile(self.file)
        infos = archive.infolist()
        pickles = [info for info in infos if info.filename.endswith('/data.pkl') and info.filename.count('/') == 1]
        if len(pickles) != 1:
            raise CheckpointError(f'Cannot load {self.path}: it is a zip archive without data.pkl, not a PyTorch '
                                  f'checkpoint ({len(infos)} files).')
        if any(info.compress_type != zipfile.ZIP_STORED for info in infos):
            raise PickleDataError('a compressed zip record (torch stores its records uncompressed)')
        if sum(info.file_size for info in infos) > self.size:
            raise PickleDataError('zip records larger together than the file: records that overlap')
        prefix = pickles[0].filename.removesuffix('data.pkl')
        records = {info.filename: info for info in infos}
        if (order := records.get(f'{prefix}byteorder')) and archive.read(order) != b'little':
            raise PickleDataError('tensors saved in big-endian byte order')
        if pickles[0].file_size > self.limits.max_pickle_bytes:
            raise PickleDataError(f'a pickle of {pickles[0].file_size} bytes (limit max_pickle_bytes '
                                  f'{self.limits.max_pickle_bytes})')
        self.read_storage = lambda storage: self._read_record(archive, records.get(f'{prefix}data/{storage.key}'),
                                                              storage)
        return self._unpickle(archive.read(pickles[0]))[0]

    def _read_record(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo | None, storage: _Storage) -> None:
        nbytes = storage.numel * storage.dtype.itemsize
        if info is None or info.file_size != nbytes:
            raise PickleDataError(f'storage {storage.key!r} of {nbytes} bytes without a record of that size')
        buffer = bytearray(nbytes)
        with archive.open(info) as record:
            if record.readinto(buffer) != nbytes or record.read(1):
                raise PickleDataError(f'storage record {storage.key!r} shorter than it says')
        storage.elements = self._elements(buffer, storage.dtype)

    def read_legacy(self) -> Any:
        data = self.file.read()
        magic, position = self._unpickle(data, persistent=False)
        if magic != LEGACY_MAGIC:
            raise CheckpointError(f'Cannot load {self.path}: it is a pickle, not a PyTorch checkpoint.')
        protocol, position = self._unpickle(data, position, persistent=False)
        if protocol != LEGACY_PROTOCOL:
            raise PickleDataError(f'a legacy checkpoint of protocol {describe(protocol, 20)}, not {LEGACY_PROTOCOL}')
        sys_info, position = self._unpickle(data, position, persistent=False)
        if not isinstance(sys_info, dict) or sys_info.get('little_endian') is not True:
            raise PickleDataError('tensors saved in big-endian byte order, or without the system record')
        start = position
        _, position = self._unpickle(data, start)  # learn the storages and where the pickle ends
        if position - start > self.limits.max_pickle_bytes:
            raise PickleDataError(f'a pickle of {position - start} bytes (limit max_pickle_bytes '
                                  f'{self.limits.max_pickle_bytes})')
        keys, position = self._unpickle(data, position, persistent=False)
        if not (isinstance(keys, list) and all(isinstance(key, str) for key in keys)) or \
                sorted(keys) != sorted(self.storages) or len(set(keys)) != len(keys):
            raise PickleDataError('a storage list that does not match the storages the checkpoint names')
        for key in keys:
            storage = self.storages[key]
            if position + 8 > len(data) or struct.unpack('<q', data[position:position + 8])[0] != storage.numel:
                raise PickleDataError(f'storage {key!r} without its {storage.numel} elements')
            nbytes = storage.numel * storage.dtype.itemsize
            position += 8
            if position + nbytes > len(data):
                raise PickleDataError(f'storage {key!r} of {nbytes} bytes past the end of the file')
            storage.elements = self._elements(bytearray(data[position:position + nbytes]), storage.dtype)
            position += nbytes
        return self._unpickle(data, start)[0]

    @staticmethod
    def _elements(buffer: bytearray, dtype: torch.dtype) -> torch.Tensor:
        raw = torch.frombuffer(buffer, dtype=torch.uint8) if buffer else torch.empty(0, dtype=torch.uint8)
        return raw.view(dtype)


def _unusable_file(path: str, head: bytes, size: int) -> str | None:
    """Why a file that starts with ``head`` cannot be a PyTorch checkpoint; None if it may be one."""
    if size == 0:
        return 'it is empty (0 bytes): it was not written completely; use another checkpoint'
    for signature, kind in IMAGE_SIGNATURES.items():
        if head.startswith(signature):
            return f'it is {kind}, not a checkpoint'
    if head.startswith((ZIP_SIGNATURE, PICKLE_START)):
        return None
    kind = 'text' if head.isascii() and head.decode('ascii').isprintable() else 'data'
    return f'it is not a PyTorch checkpoint ({size} bytes of {kind} starting {head!r})'


def _read_safetensors(path: str) -> dict:
    """A ``.safetensors`` file (tensors and string metadata only, nothing to unpickle) as a checkpoint dict."""
    try:
        with safetensors.safe_open(path, framework='pt', device='cpu') as file:
            return {'state_dict': {key: file.get_tensor(key) for key in file.keys()}, 'meta': file.metadata() or {}}
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f'Cannot load {path}: it is not a valid safetensors file ({os.path.getsize(path)} '
                              f'bytes; {str(error).splitlines()[0][:100]}).') from None


def map_tensors(value: Any, device: str | torch.device) -> Any:
    """``value`` with every tensor moved to ``device``; tensors and containers shared in ``value`` are moved
    (and rebuilt) once and stay shared.

    Raises:
        CheckpointError: Containers nested deeper than Python's recursion limit (the reader's files nest at
            most ``PickleLimits.max_depth``).
    """
    # Not torch's pytree: its tree_map rebuilds a shared container (and moves a shared tensor) once per place that
    # refers to it, which a small file can make up to the reader's max_tree_size places; this memo does each once.
    done: dict[int, Any] = {}  # all of value is alive, so an id is one object's

    def move(item: Any) -> Any:
        if not isinstance(item, torch.Tensor) and type(item) not in (list, tuple, dict):
            return item
        if id(item) not in done:
            if isinstance(item, torch.Tensor):
                done[id(item)] = item.to(device)
            elif type(item) is dict:
                done[id(item)] = {key: move(child) for key, child in item.items()}
            else:
                done[id(item)] = type(item)(move(child) for child in item)
        return done[id(item)]

    try:
        return move(value)
    except RecursionError:
        raise CheckpointError(f'Cannot move the checkpoint to {device}: its containers nest deeper than Python\'s '
                              'recursion limit.') from None


def read_checkpoint_file(path: str, map_location: str | torch.device | None = None,
                         limits: ReadLimits = ReadLimits()) -> Any:
    """Read a checkpoint as data (see the module docstring).

    Args:
        path: A regular file (``~`` is expanded): a torch checkpoint (zip or legacy format) or, by its name
            ending in ``.safetensors``, a safetensors file.
        map_location: The device for the tensors (a device or its name; other forms of
            :func:`torch.load`'s argument are not supported and load onto the CPU).
        limits: The caps.

    Returns:
        The checkpoint: plain data, tensors, numpy arrays, and inert records of everything else.

    Raises:
        CheckpointNotFoundError: The file does not exist.
        CheckpointError: Anything else that makes the file unusable (not a regular file, not a checkpoint,
            truncated, damaged, over a limit, or holding what a checkpoint may not), in one line naming it.
    """
    path = os.path.expanduser(str(path))

    def refuse(reason: str) -> CheckpointError:
        return CheckpointError(f'Cannot load {path}: {reason}.')
    try:
        fd, status = open_regular_file(path, 'a checkpoint file', refuse)  # never blocks, on a FIFO either
    except FileNotFoundError:
        raise CheckpointNotFoundError(f'Checkpoint not found: {path}. See checkpoints/README.md for the official '
                                      'weights and where to put them.') from None
    with os.fdopen(fd, 'rb') as file:
        if status.st_size > limits.max_file_bytes:
            raise CheckpointError(f'Cannot load {path}: it has {status.st_size} bytes, more than the limit '
                                  f'max_file_bytes ({limits.max_file_bytes}).')
        if path.endswith('.safetensors'):
            checkpoint = _read_safetensors(path)
        else:
            head = file.read(8)
            if reason := _unusable_file(path, head, status.st_size):
                raise CheckpointError(f'Cannot load {path}: {reason}.')
            file.seek(0)
            checkpoint = _read_torch_file(path, file, status.st_size, head, limits)
    if map_location is not None and not callable(map_location) and torch.device(map_location).type != 'cpu':
        checkpoint = map_tensors(checkpoint, map_location)
    return checkpoint


def _read_torch_file(path: str, file: io.BufferedReader, size: int, head: bytes, limits: ReadLimits) -> Any:
    reader = _TorchFile(path, file, size, limits)
    is_zip = head.startswith(ZIP_SIGNATURE)
    try:
        return reader.read_zip() if is_zip else reader.read_legacy()
    except PickleDataError as error:
        raise CheckpointError(f'Cannot load {path}: {error}.') from None
    except ZIP_ERRORS as error:
        kind = 'PyTorch archive' if is_zip else 'legacy PyTorch checkpoint'
        raise CheckpointError(f'Cannot load {path}: it is a truncated or damaged {kind} ({size} bytes; '
                              f'{type(error).__name__}); use another checkpoint.') from None
