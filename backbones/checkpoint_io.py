"""Checkpoint I/O policy: loading that runs no code from the file, atomic writes.

torch >= 2.6 loads with ``weights_only=True``: its unpickler builds only tensors, containers and
allow-listed globals. mmengine 0.10.7 calls ``torch.load`` without the argument, and a checkpoint
written by its Runner pickles its message hub: ``HistoryBuffer`` objects holding numpy arrays, whose
state carries the statistic methods pickled as ``getattr(HistoryBuffer, 'mean')``.

Allow-listing ``HistoryBuffer`` and ``builtins.getattr`` would make those load, and would make
loading run code: ``getattr`` reaches the builtins module from any object (``getattr(getattr,
'__self__')``), and the unpickler's BUILD calls ``HistoryBuffer.__setstate__``, which writes the
file's callables into the class-wide statistics table. So neither is allow-listed. Instead, only
while :func:`load_local_checkpoint` unpickles, the two names a Runner checkpoint uses resolve to inert
stand-ins:

* ``mmengine.logging.history_buffer.HistoryBuffer`` -> :class:`StoredHistoryBuffer`, whose only
  method, the ``__setstate__`` that BUILD calls, keeps the stored (already unpickled, hence inert)
  state dict as data.
* ``builtins.getattr`` -> :func:`statistic_reference`, which returns the method name for
  ``getattr(HistoryBuffer, '<public name>')`` and refuses every other use.

After unpickling, each stand-in is rebuilt into a real ``HistoryBuffer`` from its numbers (log and
count histories, max length); the stored statistic methods are dropped, so the class-wide table is
never touched (mmengine registers its own at import). Before that, every numpy value must be plain
numbers: the numpy globals let a pickle forge a dtype whose elements are read as object pointers.
Both walks are iterative and visit each container once (a pickle's memo can share containers).

This keeps mmengine's checkpoint format as it is: checkpoints we write are ordinary mmengine
checkpoints, and mmengine checkpoints load here.

Checkpoints named by a URL (``http(s)://``, and ``open-mmlab://``, ``torchvision://`` which resolve
to one) go through mmengine's ``load_url``, i.e. torch hub's ``load_state_dict_from_url``, which
unpickles with ``weights_only=False``: any code in the file runs. That name in mmengine's checkpoint
module is pointed at :func:`load_url_checkpoint`, which downloads into torch hub's cache and loads
the file like a local one.

mmengine's ``Runner.resume`` also passes ``checkpoint['meta']['config']`` to ``Config.fromstring``,
which executes it as Python. :func:`load_local_checkpoint` moves that text to
``meta['config_text']``: kept for reading, never executed.

:func:`load_local_checkpoint` replaces mmengine's loader for local files; a file that pickles any
other global is refused with an error naming it, and a file that is not a checkpoint at all (empty,
truncated, an image, another zip) gets one line saying so. ``.safetensors`` files, which hold only
tensors and string metadata, are read without any unpickling.

mmengine writes checkpoints with its local file backend, which opens the final path and writes into
it: a crash or a full disk mid-write leaves a truncated checkpoint under the real name, which resume
then picks up. :class:`AtomicLocalBackend` replaces that backend: every write goes to a temporary file
in the same folder and is renamed over the target only when complete. Its ``CheckpointHook`` then
records the checkpoint's path in ``work_dir/last_checkpoint`` with a plain ``open(path, 'w')``, which
truncates the record before writing it: the name ``open`` in that module is pointed at
:func:`open_record`, which writes the record the same atomic way.
"""
import hashlib
import io
import os
import pickle
import re
import struct
import tempfile
import urllib.error
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import checkpoint_hook
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

HISTORY_BUFFER_NAME = 'mmengine.logging.history_buffer.HistoryBuffer'
NUMPY_GLOBALS = [
    np.ndarray,
    np.dtype,
    np._core.multiarray._reconstruct,
    np._core.multiarray.scalar,
    # numpy 2 pickles a dtype through its class, e.g. numpy.dtypes.Float64DType.
    *(getattr(np.dtypes, name) for name in np.dtypes.__all__),
]


class StoredHistoryBuffer:
    """A pickled ``HistoryBuffer`` as inert data, until :func:`restore_checkpoint_data` rebuilds it.

    The unpickler's BUILD calls :meth:`__setstate__`, which keeps the state dict and nothing else;
    with ``__slots__`` there is no instance ``__dict__`` in which the file could shadow a method.
    """
    __slots__ = ('state',)

    def __setstate__(self, state: Any) -> None:
        """Keep ``state`` (a dict of the buffer's attributes) as data."""
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f'BUILD of HistoryBuffer with a {type(state).__name__}, not a dict')
        self.state = state


def statistic_reference(owner: Any, name: Any) -> str:
    """Stand-in for ``builtins.getattr`` while unpickling: the name of a ``HistoryBuffer`` method.

    Raises:
        pickle.UnpicklingError: For any other use of ``getattr`` (another object, a private name).
    """
    if owner is StoredHistoryBuffer and isinstance(name, str) and re.fullmatch(r'[a-z][a-z0-9_]*', name):
        return name
    raise pickle.UnpicklingError(f'GLOBAL builtins.getattr used on {type(owner).__name__} {name!r}')


LOAD_GLOBALS = [*NUMPY_GLOBALS, (StoredHistoryBuffer, HISTORY_BUFFER_NAME), (statistic_reference, 'builtins.getattr')]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used, with the reason and the fix in the message."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist."""


# What a file that is not a checkpoint starts with, for the one-line error.
IMAGE_SIGNATURES = {b'\xff\xd8\xff': 'a JPEG image', b'\x89PNG': 'a PNG image', b'GIF8': 'a GIF image',
                    b'RIFF': 'a RIFF (WebP or video) file', b'BM': 'a BMP image'}
ZIP_SIGNATURE = b'PK\x03\x04'
PICKLE_PROTOCOL_OPCODE = b'\x80'  # how torch's legacy format and plain pickles start


def _unusable_file(path: str) -> str | None:
    """Why the file ``path`` cannot be a PyTorch checkpoint, judged from its size and first bytes; None if it
    may be one."""
    size = os.path.getsize(path)
    if size == 0:
        return 'it is empty (0 bytes): it was not written completely; use another checkpoint'
    with open(path, 'rb') as file:
        head = file.read(8)
    for signature, kind in IMAGE_SIGNATURES.items():
        if head.startswith(signature):
            return f'it is {kind}, not a checkpoint'
    if head.startswith(ZIP_SIGNATURE):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return f'it is a truncated or damaged PyTorch archive ({size} bytes); use another checkpoint'
        if not any(name.endswith('/data.pkl') for name in names):
            return f'it is a zip archive without data.pkl, not a PyTorch checkpoint ({len(names)} files)'
        return None
    if head.startswith(PICKLE_PROTOCOL_OPCODE):
        return None
    kind = 'text' if head.isascii() and head.decode('ascii').isprintable() else 'data'
    return f'it is not a PyTorch checkpoint ({size} bytes of {kind} starting {head!r})'


def _refusal_message(path: str, error: Exception) -> str:
    """A refused global (offer ``--trust-pickle``) or a pickle that does not parse (the file is damaged)."""
    text = str(error)
    cause = text.split('WeightsUnpickler error:', 1)[-1].strip().splitlines()[0][:120] if text.strip() else ''
    if 'builtins.getattr used on' in text:
        return (f'Refusing to load {path}: it pickles a getattr call that is not part of an mmengine checkpoint '
                f'({cause.removeprefix("GLOBAL ")}), which could reach code when unpickled.')
    if not re.search(r'GLOBAL|[Gg]lobal|reduce for unrecognized function', text):
        return f'Cannot load {path}: its pickled data is damaged ({os.path.getsize(path)} bytes; {cause}).'
    if found := re.search(r'GLOBAL ([\w.]+)', text):
        name = found[1]
    elif found := re.search(r'globals? ([\w.]+)', text):
        name = found[1]
    elif found := re.search(r'reduce for unrecognized function (.+?) which belongs', text):
        name = f'a call of {found[1]}'
    else:
        name = 'an object'
    return (f'Refusing to load {path}: it pickles {name}, which is not a tensor or part of an '
            f'mmengine checkpoint, and could run code when unpickled. If you trust the file, extract its '
            f'weights with `python tools/convert_checkpoint.py {path} OUT.pth --trust-pickle` and use OUT.pth.')


def _history_buffer(stored: StoredHistoryBuffer) -> HistoryBuffer:
    """A real ``HistoryBuffer`` with the numbers of ``stored``; its statistic methods are not used."""
    state = getattr(stored, 'state', {})
    logs, counts, max_length = (state.get(key) for key in ('_log_history', '_count_history', 'max_length'))
    if not (isinstance(logs, np.ndarray) and isinstance(counts, np.ndarray) and isinstance(max_length, int)
            and logs.ndim == counts.ndim == 1 and len(logs) == len(counts)):
        raise CheckpointError('its message hub holds a HistoryBuffer that is not one of numbers')
    return HistoryBuffer(logs.tolist(), counts.tolist(), max_length)


def _check_numpy(value: np.ndarray | np.generic | np.dtype) -> None:
    """Refuse numpy data that is not plain numbers: a pickle can forge a dtype (fields holding object
    pointers) whose elements crash or corrupt the process when read."""
    dtype = value if isinstance(value, np.dtype) else value.dtype
    if dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject or dtype.kind not in 'biufc':
        raise CheckpointError(f'it holds numpy data of dtype {dtype.str!r}, not plain numbers')


def restore_checkpoint_data(checkpoint: Any) -> None:
    """Check and finish what the unpickler built, in place: every numpy value must be plain numbers,
    and every :class:`StoredHistoryBuffer` in a dict or list becomes a real ``HistoryBuffer``.

    The walk is iterative and visits each container once, so shared or self-referencing containers
    (which a pickle can make with its memo) cost no more than their size.

    Raises:
        CheckpointError: Numpy data that is not plain numbers, or a HistoryBuffer that is not one of numbers.
    """
    pending, seen = [checkpoint], set()
    while pending:
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, (np.ndarray, np.generic, np.dtype)):
            _check_numpy(value)
        elif isinstance(value, StoredHistoryBuffer):
            pending.extend(getattr(value, 'state', {}).values())
        elif isinstance(value, dict):
            pending.extend([*value.keys(), *value.values()])
        elif isinstance(value, (list, tuple, set)):
            pending.extend(value)
    # Rebuild after every array has been checked.
    pending, seen = [checkpoint], set()
    while pending:
        value = pending.pop()
        if id(value) in seen or not isinstance(value, (dict, list)):
            continue
        seen.add(id(value))
        for key, item in list(value.items() if isinstance(value, dict) else enumerate(value)):
            if isinstance(item, StoredHistoryBuffer):
                value[key] = _history_buffer(item)
            else:
                pending.append(item)


def _load_safetensors(filename: str, map_location: str | torch.device | None) -> dict:
    """A ``.safetensors`` file (tensors and string metadata only, nothing to unpickle) as a checkpoint dict."""
    device = str(map_location) if isinstance(map_location, (str, torch.device)) else 'cpu'
    try:
        with safetensors.safe_open(filename, framework='pt', device=device) as file:
            return {'state_dict': {key: file.get_tensor(key) for key in file.keys()}, 'meta': file.metadata() or {}}
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f'Cannot load {filename}: it is not a valid safetensors file '
                              f'({os.path.getsize(filename)} bytes; {str(error).splitlines()[0][:100]}).') from None


def _unpickle(filename: str, map_location: str | torch.device | None, trust_pickle: bool) -> Any:
    """``torch.load(weights_only=True)`` with the stand-ins, checked and finished, or with
    ``trust_pickle`` a plain ``torch.load``; one-line errors."""
    if reason := _unusable_file(filename):
        raise CheckpointError(f'Cannot load {filename}: {reason}.')
    if trust_pickle:
        try:
            return torch.load(filename, map_location=map_location, weights_only=False)
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ImportError) as error:
            raise CheckpointError(f'Cannot load {filename}: it is truncated or damaged, or pickles objects of a '
                                  f'module that is not installed ({type(error).__name__}: '
                                  f'{str(error).splitlines()[0][:100]}).') from None
    registered = torch.serialization.get_safe_globals()
    if any(isinstance(g, tuple) and g[1] in (HISTORY_BUFFER_NAME, 'builtins.getattr') or g in (HistoryBuffer, getattr)
           for g in registered):
        raise CheckpointError(f'Refusing to load {filename}: this process allow-listed HistoryBuffer or getattr for '
                              'torch.load (torch.serialization.add_safe_globals), which lets a checkpoint run code.')
    try:
        with torch.serialization.safe_globals([g for g in LOAD_GLOBALS if g not in registered]):
            checkpoint = torch.load(filename, map_location=map_location, weights_only=True)
        restore_checkpoint_data(checkpoint)
    except pickle.UnpicklingError as error:
        raise CheckpointError(_refusal_message(filename, error)) from None
    except CheckpointError as error:
        raise CheckpointError(f'Refusing to load {filename}: {error}.') from None
    except (RuntimeError, EOFError, KeyError, ValueError, TypeError, IndexError, UnicodeDecodeError,
            struct.error) as error:
        if isinstance(error, RuntimeError) and re.search(r'CUDA|cuda|device', str(error)):
            raise  # not the file's fault (e.g. a CUDA map_location without a GPU)
        raise CheckpointError(f'Cannot load {filename}: it is truncated or damaged ({os.path.getsize(filename)} '
                              f'bytes; {type(error).__name__}); use another checkpoint.') from None
    return checkpoint


def load_local_checkpoint(filename: str, map_location: str | torch.device | None = None,
                          trust_pickle: bool = False) -> Any:
    """Load a local checkpoint with ``weights_only=True`` (mmengine's loader for plain paths).

    A ``.safetensors`` file is read with safetensors (no pickle at all) as ``{'state_dict': tensors,
    'meta': its string metadata}``.

    Runner checkpoints load through the stand-ins of the module docstring; ``meta['config']`` becomes
    ``meta['config_text']`` so that resuming never executes it.

    Args:
        filename: Path of the checkpoint file (``~`` is expanded).
        map_location: As for :func:`torch.load`.
        trust_pickle: Unpickle without the weights-only restriction: only for files you trust, and
            only on request (``tools/convert_checkpoint.py --trust-pickle``).

    Raises:
        CheckpointNotFoundError: The file does not exist.
        CheckpointError: The file is not a readable PyTorch checkpoint (empty, truncated, an image, ...),
            pickles a global outside the allow-list, or misuses a stand-in; one line naming the file.
    """
    filename = os.path.expanduser(filename)
    if not os.path.exists(filename):
        raise CheckpointNotFoundError(f'Checkpoint not found: {filename}. See checkpoints/README.md for the '
                                      'official weights and where to put them.')
    if os.path.isdir(filename):
        raise CheckpointError(f'Cannot load {filename}: it is a directory, not a checkpoint file.')
    if filename.endswith('.safetensors'):
        checkpoint = _load_safetensors(filename, map_location)
    else:
        checkpoint = _unpickle(filename, map_location, trust_pickle)
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if isinstance(meta, dict) and 'config' in meta:
        meta['config_text'] = meta.pop('config')
    return checkpoint


def load_url_checkpoint(url: str, model_dir: str | None = None, map_location: str | torch.device | None = None,
                        progress: bool = True) -> Any:
    """Download a checkpoint once into torch hub's cache (``model_dir``) and load it as a local file
    (:func:`load_local_checkpoint`): mmengine's ``load_url`` for every URL checkpoint.

    Raises:
        CheckpointError: The download failed (one line with the URL and the reason), or the file
            cannot be loaded.
    """
    folder = model_dir or os.path.join(torch.hub.get_dir(), 'checkpoints')
    parsed = urllib.parse.urlparse(url)
    name = os.path.basename(parsed.path)
    if not name or parsed.query:  # the path alone does not tell such URLs apart
        name = f'{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name or "checkpoint.pth"}'
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        try:  # torch hub writes a temporary file and renames it when complete
            torch.hub.download_url_to_file(url, path, progress=progress)
        except (urllib.error.URLError, OSError) as error:
            raise CheckpointError(f'Cannot download {url}: {getattr(error, "reason", error)}. Check the URL, or '
                                  'download the file elsewhere and pass its local path (checkpoints/README.md).'
                                  ) from None
    return load_local_checkpoint(path, map_location)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: ``path`` holds either its old
    content or all of ``data``, never a part."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    umask = os.umask(0)
    os.umask(umask)
    try:
        with os.fdopen(fd, 'wb') as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp_path, 0o666 & ~umask)  # the mode open() would give, not mkstemp's 0600
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise
    folder_fd = os.open(folder, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with atomic writes (see :func:`write_atomic`)."""

    def put(self, obj: bytes, filepath: str | Path) -> None:
        """Write bytes to ``filepath`` atomically."""
        write_atomic(filepath, obj)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = 'utf-8') -> None:
        """Write text to ``filepath`` atomically."""
        write_atomic(filepath, obj.encode(encoding))


class AtomicTextFile(io.StringIO):
    """A text file being written: its content replaces ``path`` atomically when the ``with`` block
    ends without an error, and not at all otherwise."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = path

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            write_atomic(self.path, self.getvalue().encode('utf-8'))
        super().__exit__(error_type, error, traceback)


def open_record(file: str | Path, mode: str = 'r', *args, **kwargs) -> io.IOBase:
    """``open`` as mmengine's CheckpointHook sees it: writing text (``last_checkpoint``) is atomic."""
    if mode == 'w':
        return AtomicTextFile(file)
    return open(file, mode, *args, **kwargs)


checkpoint_hook.open = open_record
mmengine_checkpoint.load_url = load_url_checkpoint
CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)
register_backend('local', AtomicLocalBackend, force=True, prefixes='')
