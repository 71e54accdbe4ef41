"""Downloads of checkpoints: once into a cache, within a size cap, a read timeout and an overall deadline,
complete or not at all, with a progress bar; ``CONVNEXT_DENSE_OFFLINE=1`` uses the cache only.

:func:`fetch` gives the local path of a URL's file; reading it is :mod:`.reader`'s job.
"""
import dataclasses
import hashlib
import http.client
import os
import re
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import torch
import tqdm
from mmengine.logging import print_log

from ..boundary import cap_from_environment, number_from_environment
from ..errors import CheckpointError

TIMEOUT_VARIABLE = 'CONVNEXT_DENSE_DOWNLOAD_TIMEOUT'
DEADLINE_VARIABLE = 'CONVNEXT_DENSE_DOWNLOAD_DEADLINE'
MAX_BYTES_VARIABLE = 'CONVNEXT_DENSE_DOWNLOAD_MAX_MB'
OFFLINE_VARIABLE = 'CONVNEXT_DENSE_OFFLINE'
DEFAULT_TIMEOUT_S = 60
DEFAULT_DEADLINE_S = 7200
DEFAULT_MAX_MB = 8192
CHUNK_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class DownloadSettings:
    """The bounds of one download, from the environment (:func:`download_settings`).

    Attributes:
        timeout: Seconds to connect and for each read (``CONVNEXT_DENSE_DOWNLOAD_TIMEOUT``, default 60).
        deadline: Seconds for the whole download (``CONVNEXT_DENSE_DOWNLOAD_DEADLINE``, default 7200), so a
            server that sends a byte just under the read timeout cannot keep it going forever.
        max_bytes: The size cap (``CONVNEXT_DENSE_DOWNLOAD_MAX_MB``, default 8192 MB).
        offline: ``CONVNEXT_DENSE_OFFLINE=1``: use the cache only, never the network.
    """

    timeout: float
    deadline: float
    max_bytes: int
    offline: bool

def download_settings() -> DownloadSettings:
    """The download bounds from ``CONVNEXT_DENSE_DOWNLOAD_TIMEOUT``, ``CONVNEXT_DENSE_DOWNLOAD_DEADLINE``,
    ``CONVNEXT_DENSE_DOWNLOAD_MAX_MB`` and ``CONVNEXT_DENSE_OFFLINE``.

    Raises:
        UsageError: A bound that is not a positive number (:func:`backbones.boundary.number_from_environment`).
    """
    offline = os.environ.get(OFFLINE_VARIABLE, '').strip().lower() not in ('', '0', 'false', 'no')
    return DownloadSettings(number_from_environment(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_S, 'seconds'),
                            number_from_environment(DEADLINE_VARIABLE, DEFAULT_DEADLINE_S, 'seconds'),
                            cap_from_environment(MAX_BYTES_VARIABLE, DEFAULT_MAX_MB), offline)


def cache_path(url: str, folder: str) -> str:
    """Where ``url`` is cached in ``folder``: named by a hash of the whole URL and its file name."""
    name = re.sub(r'[^A-Za-z0-9._-]', '_', os.path.basename(urllib.parse.urlparse(url).path))[-100:]
    return os.path.join(folder, f'{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name or "checkpoint.pth"}')


def _download(url: str, path: str, settings: DownloadSettings) -> None:
    """Write ``url`` to ``path`` through a temporary file in its folder: complete, or not at all.

    Each read takes what one arrival of bytes brings (``read1``), so the deadline is checked between
    arrivals, not after a whole chunk that a slow server could stretch without end. A progress bar goes to
    stderr: updated every second on a terminal, every 30 s into a log file.
    """
    fd, partial = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.download-', suffix='.partial')
    started = time.monotonic()
    try:
        with (os.fdopen(fd, 'wb') as file, urllib.request.urlopen(url, timeout=settings.timeout) as response,
              tqdm.tqdm(total=None, unit='B', unit_scale=True, unit_divisor=1024, file=sys.stderr,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0,
                        desc=os.path.basename(path).split('-', 1)[-1]) as bar):
            declared = response.headers.get('Content-Length')
            declared = int(declared) if declared and declared.isdigit() else None
            if declared is not None and declared > settings.max_bytes:
                raise CheckpointError(f'Cannot download {url}: it has {declared} bytes, more than '
                                      f'{MAX_BYTES_VARIABLE}={settings.max_bytes >> 20}; raise it if you trust the '
                                      'file.')
            bar.total = declared
            received = 0
            while chunk := response.read1(CHUNK_BYTES):
                received += len(chunk)
                if received > settings.max_bytes:
                    raise CheckpointError(f'Cannot download {url}: it sends more than {MAX_BYTES_VARIABLE}='
                                          f'{settings.max_bytes >> 20} MB; raise it if you trust the file.')
                if time.monotonic() - started > settings.deadline:
                    raise CheckpointError(f'Cannot download {url}: not complete after {settings.deadline:g} s '
                                          f'({received} bytes; {DEADLINE_VARIABLE}); raise it for a slow network.')
                file.write(chunk)
                bar.update(len(chunk))
            if declared is not None and received != declared:
                raise CheckpointError(f'Cannot download {url}: the connection ended after {received} of '
                                      f'{declared} bytes; try again.')
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise


def fetch(url: str, model_dir: str | None = None) -> str:
    """The local path of ``url``'s file: downloaded once into ``model_dir``, by default torch hub's
    ``checkpoints`` folder (``$TORCH_HOME/hub/checkpoints``), then read from there.

    Raises:
        CheckpointError: Offline and not cached, or the download failed, timed out, ran past its deadline
            or over the size cap: one line with the URL, the reason, the setting to change and the cache folder.
    """
    folder = model_dir or os.path.join(torch.hub.get_dir(), 'checkpoints')
    path = cache_path(url, folder)
    if not os.path.exists(path):
        settings = download_settings()
        if settings.offline:
            raise CheckpointError(f'Cannot load {url}: {OFFLINE_VARIABLE} is set and it is not in the cache; '
                                  f'download it where there is a network and put it at {path}.')
        os.makedirs(folder, exist_ok=True)
        print_log(f'Downloading {url} to {path} (once; {OFFLINE_VARIABLE}=1 uses the cache only)',
                  logger='current')
        where = f'(cache folder {folder}; or download the file elsewhere and pass its local path)'
        try:
            _download(url, path, settings)
        except CheckpointError as error:
            raise CheckpointError(f'{error} {where}.') from None
        except (socket.timeout, TimeoutError):
            raise CheckpointError(f'Cannot download {url}: no answer within {settings.timeout:g} s '
                                  f'({TIMEOUT_VARIABLE}). Check the URL and the network {where}.') from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as error:
            reason = getattr(error, 'reason', None) or error
            raise CheckpointError(f'Cannot download {url}: {reason}. Check the URL and the network {where}.') from None
    return path
