"""backbones/checkpoints/loading.py: URL checkpoints, against servers on 127.0.0.1 that misbehave."""
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import torch
from mmengine.runner.checkpoint import CheckpointLoader

from backbones.checkpoints import CheckpointError
from backbones.errors import UsageError
from tests.helpers import limit_address_space

from . import payloads as p

GOOD = p.torch_file({'state_dict': {'w': torch.ones(2)}})
OTHER = p.torch_file({'state_dict': {'w': torch.zeros(3)}})
EVIL = p.archive(p.checkpoint(p.call('os.system', p.text('touch executed'))))


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/a/<name>`` and ``/b/<name>``: two checkpoints of the same file name; ``/stream``: bytes without end;
    ``/big``: a Content-Length over the cap; ``/short``: fewer bytes than it says; ``/evil``: a payload;
    ``/trickle``: a byte every 0.2 s, each well within the read timeout. ``requests`` counts every request."""

    requests = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).requests += 1
        if self.path.startswith(('/a/', '/b/', '/evil', '/short')):
            body = {'/a': GOOD, '/b': OTHER, '/e': EVIL}.get(self.path[:2], GOOD)
            self.send_response(200)
            self.send_header('Content-Length', str(len(body) + (100 if self.path.startswith('/short') else 0)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == '/big':
            self.send_response(200)
            self.send_header('Content-Length', str(10 << 30))
            self.end_headers()
        elif self.path == '/trickle':
            self.send_response(200)
            self.send_header('Content-Length', '100')
            self.end_headers()
            try:
                for _ in range(100):  # 20 s at most, then the server stops by itself
                    self.wfile.write(b'\0')
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
        elif self.path == '/stream':
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(64):  # 64 MiB at most, then the server stops by itself
                    self.wfile.write(b'\0' * (1 << 20))
            except OSError:
                pass
        else:
            self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_port}'
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    return tmp_path / 'hub' / 'checkpoints'


def load(url: str) -> dict:
    return CheckpointLoader.load_checkpoint(url, map_location='cpu')


def test_the_cache_is_named_by_the_whole_url(server, hub) -> None:
    """Class 9: http://a/x/NAME silently served a later http://b/y/NAME."""
    assert torch.equal(load(f'{server}/a/convnext_tiny_1k_224.pth')['state_dict']['w'], torch.ones(2))
    assert torch.equal(load(f'{server}/b/convnext_tiny_1k_224.pth')['state_dict']['w'], torch.zeros(3))
    assert len(list(hub.glob('*-convnext_tiny_1k_224.pth'))) == 2
    assert torch.equal(load(f'{server}/a/convnext_tiny_1k_224.pth')['state_dict']['w'], torch.ones(2))  # cached


def test_a_url_file_is_read_as_data(server, hub, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load(f'{server}/evil.pth')['meta'].name == 'os.system'
    assert not (tmp_path / 'executed').exists()


@pytest.mark.parametrize('case, message', [
    ('big', r'it has 10737418240 bytes, more than CONVNEXT_DENSE_DOWNLOAD_MAX_MB=1; raise it'),
    ('stream', r'it sends more than CONVNEXT_DENSE_DOWNLOAD_MAX_MB=1 MB; raise it'),
    ('short', r'the connection ended after \d+ of \d+ bytes'),
    ('missing', r'[Nn]ot [Ff]ound\. Check the URL'),
])
def test_a_download_over_the_cap_or_broken_leaves_nothing(server, hub, monkeypatch, case: str, message: str) -> None:
    monkeypatch.setenv('CONVNEXT_DENSE_DOWNLOAD_MAX_MB', '1')
    monkeypatch.setenv('CONVNEXT_DENSE_DOWNLOAD_TIMEOUT', '5')
    with pytest.raises(CheckpointError, match=f'^Cannot download {server}/{case}: {message}'):
        load(f'{server}/{case}')
    assert list(hub.iterdir()) == []  # no partial file left behind


def test_a_silent_server_times_out(hub, monkeypatch) -> None:
    """Class 9: a server that accepts and never answers hung the load forever."""
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(1)
    monkeypatch.setenv('CONVNEXT_DENSE_DOWNLOAD_TIMEOUT', '1')
    url = f'http://127.0.0.1:{listener.getsockname()[1]}/silent.pth'
    started = time.perf_counter()
    try:
        with pytest.raises(CheckpointError, match=r'no answer within 1 s \(CONVNEXT_DENSE_DOWNLOAD_TIMEOUT\)'):
            load(url)
    finally:
        listener.close()
    assert time.perf_counter() - started < 10 and list(hub.iterdir()) == []


def test_remote_storage_schemes_are_refused() -> None:
    with pytest.raises(CheckpointError, match='s3://bucket/x.pth: checkpoints on this storage are not read here'):
        load('s3://bucket/x.pth')


def test_a_download_shows_its_progress_and_a_failure_names_the_cache_folder(server, hub, capsys) -> None:
    load(f'{server}/a/convnext_tiny_1k_224.pth')
    progress = capsys.readouterr().err
    assert 'convnext_tiny_1k_224.pth' in progress and '100%' in progress
    with pytest.raises(CheckpointError) as error:
        load(f'{server}/missing.pth')
    assert str(error.value).endswith(f'(cache folder {hub}; or download the file elsewhere and pass its local path).')


def test_a_server_that_trickles_bytes_meets_the_overall_deadline(server, hub, monkeypatch) -> None:
    """Each byte comes well within the read timeout, so only an overall deadline ends the download."""
    monkeypatch.setenv('CONVNEXT_DENSE_DOWNLOAD_TIMEOUT', '5')
    monkeypatch.setenv('CONVNEXT_DENSE_DOWNLOAD_DEADLINE', '1')
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf'^Cannot download {server}/trickle: not complete after 1 s \(\d+ '
                                              r'bytes; CONVNEXT_DENSE_DOWNLOAD_DEADLINE\); raise it'):
        load(f'{server}/trickle')
    assert time.perf_counter() - started < 5
    assert list(hub.iterdir()) == []  # no partial file left behind


def test_offline_mode_reads_the_cache_and_never_the_network(server, hub, monkeypatch) -> None:
    url = f'{server}/a/convnext_tiny_1k_224.pth'
    monkeypatch.setenv('CONVNEXT_DENSE_OFFLINE', '1')
    before = _Handler.requests
    with pytest.raises(CheckpointError, match=rf'^Cannot load {url}: CONVNEXT_DENSE_OFFLINE is set and it is not in '
                                              rf'the cache; download it where there is a network and put it at {hub}/'):
        load(url)
    assert _Handler.requests == before and not hub.exists()
    monkeypatch.delenv('CONVNEXT_DENSE_OFFLINE')
    assert torch.equal(load(url)['state_dict']['w'], torch.ones(2))  # downloaded once
    monkeypatch.setenv('CONVNEXT_DENSE_OFFLINE', '1')
    assert torch.equal(load(url)['state_dict']['w'], torch.ones(2))  # then read from the cache, offline
    assert _Handler.requests == before + 1


@pytest.mark.parametrize('value', ['0', '-1', 'inf', 'soon'])
def test_download_bounds_must_be_positive_numbers(monkeypatch, value: str) -> None:
    monkeypatch.setenv('CONVNEXT_DENSE_DOWNLOAD_DEADLINE', value)
    with pytest.raises(UsageError, match=f"^CONVNEXT_DENSE_DOWNLOAD_DEADLINE='{value}': set it to a positive number "
                                         r'of seconds \(default 7200\), or unset it\.$'):
        load('http://127.0.0.1:9/never.pth')


# A 4 MiB storage, transposed (so that .contiguous(), .reshape() and .flatten() copy it), under 2000 keys of each
# layout whose conversion works key by key: 8 GB of copies from a file of 4 MiB.
REPEATED_KEYS = 2000
REPEATED_LAYOUTS = {
    'fcmae': lambda view: {f'encoder.extra{i}': view for i in range(REPEATED_KEYS)},
    'transformers': lambda view: {'embeddings.patch_embeddings.weight': torch.zeros(2),
                                  **{f'encoder.stages.0.layers.0.grn.extra{i}': view for i in range(REPEATED_KEYS)}},
    'timm': lambda view: {'stem.0.weight': torch.zeros(2),
                          **{f'stages.0.blocks.{i}.mlp.fc1.weight': view[..., None, None]
                             for i in range(REPEATED_KEYS)}},
}


@pytest.mark.parametrize('layout', list(REPEATED_LAYOUTS))
def test_a_storage_viewed_under_thousands_of_keys_is_one_line_in_bounded_memory(tmp_path, layout: str) -> None:
    """Each layout made each key a copy of its own (fcmae's .contiguous(), transformers' GRN .reshape(), timm's
    .flatten()): a MemoryError under 6 GiB. tools/convert_checkpoint.py, in a child process with that address space
    and a timeout, refuses the file in one line before converting."""
    path = tmp_path / f'{layout}.pth'
    torch.save({'state_dict': REPEATED_LAYOUTS[layout](torch.zeros(1024, 1024).t())}, path)
    assert path.stat().st_size < 5 << 20
    result = subprocess.run([sys.executable, 'tools/convert_checkpoint.py', str(path), str(tmp_path / 'out.pth')],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=os.getcwd()),
                            preexec_fn=limit_address_space(6 << 30))
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert re.fullmatch(rf'error: Cannot use {re.escape(str(path))}: its \d+ tensors view 83886080\d\d bytes of '
                        r'storages that hold 41943\d\d: the same storage under many keys, each of which a conversion '
                        r'would copy \(at most twice the bytes held may be viewed\)\. Use another checkpoint\.',
                        result.stderr.strip().splitlines()[-1]), result.stderr[-1000:]
    assert not (tmp_path / 'out.pth').exists()
