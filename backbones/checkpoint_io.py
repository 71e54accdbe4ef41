"""Checkpoint I/O policy: safe loading for torch >= 2.6 and mmengine 0.10.7, atomic writes.

torch >= 2.6 loads with ``weights_only=True`` by default, which refuses every pickled global that is
not on an allow-list. mmengine 0.10.7 calls ``torch.load`` without the argument, and a checkpoint
written by its Runner pickles its message hub (``HistoryBuffer`` objects holding numpy arrays and
references to their statistic methods), so resume, ``load_from`` and ``tools/test.py CKPT`` fail.

Importing this module (done by ``import backbones``) fixes that once:

* :data:`RUNNER_CHECKPOINT_GLOBALS`, exactly the globals a Runner checkpoint contains, are added to
  torch's allow-list. ``builtins.getattr`` is among them because pickle stores the bound statistic
  methods as ``getattr(HistoryBuffer, 'min')``; the weights-only unpickler still refuses to *call*
  anything that is not allow-listed, so this adds no code execution path during loading.
* mmengine's loader for local files is replaced by :func:`load_local_checkpoint`, which always loads
  with ``weights_only=True`` and turns a refusal into an error that names the offending global and
  what to do. Any checkpoint that pickles another object (a callable, a custom class) is refused.

mmengine writes checkpoints with its local file backend, which opens the final path and writes into
it: a crash or a full disk mid-write leaves a truncated checkpoint under the real name, which resume
then picks up. :class:`AtomicLocalBackend` replaces that backend: every write goes to a temporary file
in the same folder and is renamed over the target only when complete.
"""
import builtins
import os
import pickle
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

RUNNER_CHECKPOINT_GLOBALS = [
    HistoryBuffer,
    np.ndarray,
    np.dtype,
    np._core.multiarray._reconstruct,
    np._core.multiarray.scalar,
    # numpy 2 pickles a dtype through its class, e.g. numpy.dtypes.Float64DType.
    *(getattr(np.dtypes, name) for name in np.dtypes.__all__),
    builtins.getattr,
]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used, with the reason and the fix in the message."""


def _refusal_message(path: str, error: Exception) -> str:
    text = str(error)
    if found := re.search(r'GLOBAL ([\w.]+) ([\w.]+)', text):
        name = '.'.join(found.groups())
    elif found := re.search(r'globals? ([\w.]+)', text):
        name = found[1]
    elif found := re.search(r'reduce for unrecognized function (.+?) which belongs', text):
        name = f'a call of {found[1]}'
    else:
        name = 'an object'
    return (f'Refusing to load {path}: it pickles {name}, which is not a tensor or part of an '
            f'mmengine checkpoint, and could run code when unpickled. If you trust the file, extract its '
            f'weights with `python tools/convert_checkpoint.py {path} OUT.pth --trust-pickle` and use OUT.pth.')


def load_local_checkpoint(filename: str, map_location: str | torch.device | None = None) -> dict:
    """Load a local checkpoint with ``weights_only=True`` (mmengine's loader for plain paths).

    Args:
        filename: Path of the checkpoint file (``~`` is expanded).
        map_location: As for :func:`torch.load`.

    Raises:
        FileNotFoundError: The file does not exist.
        CheckpointError: The file pickles a global outside the allow-list.
    """
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'Checkpoint not found: {filename}. See checkpoints/README.md for the official '
                                f'weights and where to put them.')
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(_refusal_message(filename, error)) from None


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: ``path`` holds either its old
    content or all of ``data``, never a part."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with atomic writes (see :func:`write_atomic`)."""

    def put(self, obj: bytes, filepath: str | Path) -> None:
        """Write bytes to ``filepath`` atomically."""
        write_atomic(filepath, obj)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = 'utf-8') -> None:
        """Write text to ``filepath`` atomically."""
        write_atomic(filepath, obj.encode(encoding))


torch.serialization.add_safe_globals(RUNNER_CHECKPOINT_GLOBALS)
CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)
register_backend('local', AtomicLocalBackend, force=True, prefixes='')
