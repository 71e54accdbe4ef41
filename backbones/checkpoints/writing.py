"""Checkpoints written so that a crash never leaves a partial file under the real name.

mmengine's local file backend opens the final path and writes into it: a crash or a full disk
mid-write leaves a truncated checkpoint under the real name, which resume then picks up.
:class:`AtomicLocalBackend` (backend name ``convnext_dense_atomic``, which
:class:`~backbones.engine.runner.ConvNeXtDenseCheckpointHook` uses for its checkpoints) writes
each file through :func:`write_atomic`. It is registered under its own name only: mmengine's ``local``
backend, and every other file mmengine writes, are left as they are.
"""
import os
import tempfile
from pathlib import Path

import torch
from mmengine.fileio import LocalBackend, register_backend

ATOMIC_BACKEND = 'convnext_dense_atomic'


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


def separate_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors``, each contiguous and in memory of its own, as safetensors writes them.

    safetensors refuses tensors that share memory (a RuntimeError); a checkpoint may store one tensor under two
    keys (tied weights). Such a tensor is copied for its second key; how many bytes that adds is bounded when the
    checkpoint is opened (:func:`~backbones.checkpoints.loading.check_repeated_views`).
    """
    separate, used = {}, set()
    for key, value in tensors.items():
        value = value.contiguous()
        address = value.untyped_storage().data_ptr()
        if address in used:
            value = value.clone()
        used.add(address)
        separate[key] = value
    return separate


@register_backend(ATOMIC_BACKEND)
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with atomic writes (see :func:`write_atomic`)."""

    def put(self, obj: bytes, filepath: str | Path) -> None:
        """Write bytes to ``filepath`` atomically."""
        write_atomic(filepath, obj)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = 'utf-8') -> None:
        """Write text to ``filepath`` atomically."""
        write_atomic(filepath, obj.encode(encoding))
