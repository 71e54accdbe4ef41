"""mmengine's checkpoint loading, through the data-only reader: local paths, transformers folders and ``hf://``
names, and URLs.

:mod:`backbones.patches` points mmengine at these: :func:`load_local_checkpoint` is its loader for
plain paths, :func:`load_url_checkpoint` its ``load_url`` (every ``http(s)://``, ``torchvision://``,
``open-mmlab://`` and ``mmcls://`` checkpoint), and :func:`refuse_remote_checkpoint` its loader for
``pavi://``, ``s3://`` and ``petrel://`` (which mmengine reads with ``torch.load``).
"""
import hashlib
import os
import re
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import torch
from mmengine.logging import print_log

from ..errors import CheckpointError
from .huggingface import is_transformers_source, read_transformers_checkpoint
from .reader import map_tensors, read_checkpoint_file

TIMEOUT_VARIABLE = 'CONVNEXT_DENSE_DOWNLOAD_TIMEOUT'
MAX_BYTES_VARIABLE = 'CONVNEXT_DENSE_DOWNLOAD_MAX_MB'
DEFAULT_TIMEOUT_S = 60
DEFAULT_MAX_MB = 8192
CHUNK_BYTES = 1 << 20


def load_local_checkpoint(filename: str, map_location: str | torch.device | None = None) -> Any:
    """A local checkpoint, read as data by :func:`~backbones.checkpoints.reader.read_checkpoint_file`.

    A transformers model folder, a weight file beside its ``config.json``, or an ``hf://`` Hub name is read
    by :func:`~backbones.checkpoints.huggingface.read_transformers_checkpoint` (names kept as stored;
    :mod:`backbones.checkpoints.formats` maps them).
    mmengine's ``Runner.resume`` executes ``meta['config']`` as Python (``Config.fromstring``); here
    that text moves to ``meta['config_text']``, kept for reading and never executed.
    """
    if is_transformers_source(filename):
        checkpoint = read_transformers_checkpoint(filename)
        if map_location is not None and not callable(map_location) and torch.device(map_location).type != 'cpu':
            checkpoint = map_tensors(checkpoint, map_location)
        return checkpoint
    checkpoint = read_checkpoint_file(filename, map_location)
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if isinstance(meta, dict) and 'config' in meta:
        meta['config_text'] = meta.pop('config')
    return checkpoint


def download_settings() -> tuple[float, int]:
    """The socket timeout (seconds, for connecting and for each read) and the size cap (bytes) of downloads,
    from ``CONVNEXT_DENSE_DOWNLOAD_TIMEOUT`` and ``CONVNEXT_DENSE_DOWNLOAD_MAX_MB``.

    Raises:
        CheckpointError: A setting that is not a positive number.
    """
    settings = []
    for name, default in ((TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_S), (MAX_BYTES_VARIABLE, DEFAULT_MAX_MB)):
        text = os.environ.get(name, str(default))
        try:
            value = float(text)
        except ValueError:
            value = -1
        if not value > 0:
            raise CheckpointError(f'{name}={text!r} is not a positive number.')
        settings.append(value)
    return settings[0], int(settings[1] * (1 << 20))


def cache_path(url: str, folder: str) -> str:
    """Where ``url`` is cached in ``folder``: named by a hash of the whole URL and its file name."""
    name = re.sub(r'[^A-Za-z0-9._-]', '_', os.path.basename(urllib.parse.urlparse(url).path))[-100:]
    return os.path.join(folder, f'{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name or "checkpoint.pth"}')


def _download(url: str, path: str, timeout: float, max_bytes: int) -> None:
    """Write ``url`` to ``path`` through a temporary file in its folder: complete, or not at all."""
    fd, partial = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.download-', suffix='.partial')
    try:
        with os.fdopen(fd, 'wb') as file, urllib.request.urlopen(url, timeout=timeout) as response:
            declared = response.headers.get('Content-Length')
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise CheckpointError(f'Cannot download {url}: it has {int(declared)} bytes, more than '
                                      f'{MAX_BYTES_VARIABLE}={max_bytes >> 20}; raise it if you trust the file.')
            received = 0
            while chunk := response.read(CHUNK_BYTES):
                received += len(chunk)
                if received > max_bytes:
                    raise CheckpointError(f'Cannot download {url}: it sends more than {MAX_BYTES_VARIABLE}='
                                          f'{max_bytes >> 20} MB; raise it if you trust the file.')
                file.write(chunk)
            if declared and declared.isdigit() and received != int(declared):
                raise CheckpointError(f'Cannot download {url}: the connection ended after {received} of '
                                      f'{declared} bytes; try again.')
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise


def load_url_checkpoint(url: str, model_dir: str | None = None, map_location: str | torch.device | None = None,
                        progress: bool = True, **kwargs: Any) -> Any:
    """Download a checkpoint once into torch hub's cache (``model_dir``) and read it like a local file.

    Args:
        url: The checkpoint's URL.
        model_dir: The cache folder; by default torch hub's ``checkpoints`` folder.
        map_location: As for :func:`load_local_checkpoint`.
        progress: Log the download.
        **kwargs: What mmengine passes on for torch hub (``file_name``, ``check_hash``): ignored.

    Raises:
        CheckpointError: The download failed, timed out or is over the size cap (one line with the URL, the
            reason and the setting to change), or the file cannot be loaded.
    """
    folder = model_dir or os.path.join(torch.hub.get_dir(), 'checkpoints')
    path = cache_path(url, folder)
    if not os.path.exists(path):
        timeout, max_bytes = download_settings()
        os.makedirs(folder, exist_ok=True)
        if progress:
            print_log(f'Downloading {url} to {path}', logger='current')
        try:
            _download(url, path, timeout, max_bytes)
        except (socket.timeout, TimeoutError):
            raise CheckpointError(f'Cannot download {url}: no answer within {timeout:g} s ({TIMEOUT_VARIABLE}). '
                                  'Check the URL, or download the file elsewhere and pass its local path.') from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, 'reason', None) or error
            raise CheckpointError(f'Cannot download {url}: {reason}. Check the URL, or download the file elsewhere '
                                  'and pass its local path (checkpoints/README.md).') from None
    return load_local_checkpoint(path, map_location)


def refuse_remote_checkpoint(filename: str, map_location: Any = None) -> None:
    """mmengine's loader for ``pavi://``, ``s3://`` and ``petrel://``, which would read with ``torch.load``.

    Raises:
        CheckpointError: Always, with what to do instead.
    """
    raise CheckpointError(f'Cannot load {filename}: checkpoints on this storage are not read here (mmengine would '
                          'unpickle them with torch.load); copy the file to a local path and pass that path.')
