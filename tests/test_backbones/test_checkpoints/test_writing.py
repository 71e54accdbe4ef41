"""backbones/checkpoints/writing.py: a checkpoint file holds its old content or all of the new one."""
import os

import pytest
import torch
from mmengine.runner.checkpoint import save_checkpoint

from backbones.checkpoints.writing import ATOMIC_BACKEND


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch) -> None:
    path = tmp_path / 'epoch_1.pth'
    umask = os.umask(0o027)
    try:
        save_checkpoint({'state_dict': {'w': torch.ones(3)}}, str(path), backend_args={'backend': ATOMIC_BACKEND})
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o640  # what open() gives under the umask, not mkstemp's 0600
    saved = path.read_bytes()

    def fail_midway(fd: int) -> None:
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'fsync', fail_midway)
    with pytest.raises(OSError, match='No space left'):
        save_checkpoint({'state_dict': {'w': torch.zeros(10_000)}}, str(path), backend_args={'backend': ATOMIC_BACKEND})
    assert path.read_bytes() == saved  # the earlier checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ['epoch_1.pth']  # and no temporary file is left



def test_mmengine_local_backend_is_left_as_it_is() -> None:
    """Every other file mmengine writes (configs, logs, mmengine.dump) goes through its own backend."""
    from mmengine.fileio import LocalBackend
    from mmengine.fileio.backends.registry_utils import backends, prefix_to_backends

    assert backends['local'] is LocalBackend and prefix_to_backends[''] is LocalBackend
