"""The installed stack: compiled mmcv ops, framework imports, image I/O and checkpoint loading."""
import functools
import http.server
import os
import pickle
import re
import threading

import numpy as np
import pytest
import torch
import torchvision
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader

import backbones  # noqa: F401  (installs the checkpoint loading policy)
from backbones.checkpoints import CheckpointError


def random_boxes(n: int, size: float, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 3 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_framework_versions_and_imports() -> None:
    import mmcv
    import mmdet
    import mmdet.models  # noqa: F401
    import mmengine
    import mmseg
    import mmseg.models  # noqa: F401
    import timm
    from mmcv import _ext  # noqa: F401

    assert torch.__version__.startswith('2.14.1')
    assert torchvision.__version__.startswith('0.29.1')
    assert (mmcv.__version__, mmengine.__version__, mmdet.__version__, mmseg.__version__) == (
        '2.1.0', '0.10.7', '3.3.0', '1.2.2')
    assert timm.__version__ == '1.0.31'
    assert int(np.__version__.split('.')[0]) >= 2


def test_mmcv_nms_matches_torchvision() -> None:
    from mmcv.ops import batched_nms, nms

    generator = torch.Generator().manual_seed(1)
    boxes = random_boxes(500, 200, generator)
    scores = torch.rand(500, generator=generator)
    _, keep = nms(boxes, scores, iou_threshold=0.5)
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    assert 0 < len(expected) < 500
    assert torch.equal(keep, expected)

    labels = torch.randint(0, 3, (500,), generator=generator)
    _, keep = batched_nms(boxes, scores, labels, dict(type='nms', iou_threshold=0.5))
    expected = torchvision.ops.batched_nms(boxes, scores, labels, 0.5)
    assert torch.equal(keep.sort().values, expected.sort().values)


def test_mmcv_roi_align_matches_torchvision() -> None:
    from mmcv.ops import RoIAlign, roi_align

    generator = torch.Generator().manual_seed(2)
    features = torch.randn(2, 8, 32, 48, generator=generator, requires_grad=True)
    boxes = random_boxes(64, 120, generator)
    rois = torch.cat([torch.randint(0, 2, (64, 1), generator=generator).float(), boxes], dim=1)

    ours = RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)(features, rois)
    reference = torchvision.ops.roi_align(features, rois, (7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)

    grad_out = torch.randn_like(ours)
    (ours_grad,) = torch.autograd.grad(ours, features, grad_out)
    (reference_grad,) = torch.autograd.grad(reference, features, grad_out)
    torch.testing.assert_close(ours_grad, reference_grad, atol=1e-4, rtol=1e-4)

    functional = roi_align(features, rois, (7, 7), 0.25, 0, 'avg', False)
    reference = torchvision.ops.roi_align(features, rois, (7, 7), spatial_scale=0.25, sampling_ratio=0, aligned=False)
    torch.testing.assert_close(functional, reference, atol=1e-5, rtol=1e-4)


def test_mmcv_image_io_with_headless_opencv(tmp_path) -> None:
    import cv2
    import mmcv

    gui_line = next(line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith('GUI:'))
    assert 'NONE' in gui_line  # the headless build
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    path = str(tmp_path / 'image.png')
    assert mmcv.imwrite(image, path)
    np.testing.assert_array_equal(mmcv.imread(path), image)
    np.testing.assert_array_equal(mmcv.imread(path, channel_order='rgb'), image[..., ::-1])
    assert mmcv.imresize(image, (15, 10)).shape == (10, 15, 3)


class _Payload:
    """Pickles as a call to os.system, the classic malicious checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_checkpoint_with_pickled_callable_is_refused(tmp_path) -> None:
    marker = tmp_path / 'executed'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r'Refusing to load .*evil\.pth: it pickles (posix|os)\.system'):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert not marker.exists()


@pytest.fixture
def served_folder(tmp_path):
    """A folder served over HTTP on localhost, and its URL."""
    folder = tmp_path / 'served'
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f'http://127.0.0.1:{server.server_port}'
    server.shutdown()


def test_url_checkpoints_load_like_local_files(tmp_path, served_folder, monkeypatch) -> None:
    """mmengine loads URLs through torch hub's load_state_dict_from_url, which unpickles with weights_only=False."""
    folder, url = served_folder
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    torch.save({'state_dict': {'w': torch.ones(2)}}, folder / 'good.pth')
    marker = tmp_path / 'executed'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': _Payload(str(marker))}, folder / 'evil.pth')

    checkpoint = CheckpointLoader.load_checkpoint(f'{url}/good.pth', map_location='cpu')
    assert torch.equal(checkpoint['state_dict']['w'], torch.ones(2))
    assert (tmp_path / 'hub' / 'checkpoints' / 'good.pth').exists()  # cached once, like torch hub
    CheckpointLoader.load_checkpoint(f'{url}/good.pth?version=2', map_location='cpu')
    assert len(list((tmp_path / 'hub' / 'checkpoints').glob('*-good.pth'))) == 1  # the query names another file
    with pytest.raises(CheckpointError, match=r'Refusing to load .*evil\.pth: it pickles (posix|os)\.system'):
        CheckpointLoader.load_checkpoint(f'{url}/evil.pth', map_location='cpu')
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=rf'^Cannot download {url}/missing\.pth: [Ff]ile not found\. Check the URL'):
        CheckpointLoader.load_checkpoint(f'{url}/missing.pth', map_location='cpu')


class _Call:
    """Pickles as ``func(*args)``: a building block for hand-made malicious pickles."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __call__(self) -> None:  # pickle writes a call only of something callable
        pass

    def __reduce__(self):
        return self.func, self.args


def _builtin_via_getattr(name: str) -> _Call:
    """``getattr(getattr(getattr, '__self__'), name)``: the builtins module reached from getattr alone."""
    return _Call(getattr, _Call(getattr, getattr, '__self__'), name)


def test_getattr_cannot_reach_builtins(tmp_path) -> None:
    marker = tmp_path / 'executed'
    path = tmp_path / 'chained.pth'
    payload = _Call(_builtin_via_getattr('exec'), f"open({str(marker)!r}, 'w').write('ran')")
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': payload}, path)
    refusal = r'Refusing to load .*chained\.pth: it pickles a getattr call that is not part of an mmengine'
    with pytest.raises(CheckpointError, match=refusal):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert not marker.exists()


def _save_history_buffer_with_state(path, state: dict, monkeypatch) -> None:
    """A checkpoint whose message hub holds a HistoryBuffer that unpickles with ``state`` (pickle BUILD)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    with monkeypatch.context() as patch:
        patch.setattr(HistoryBuffer, '__getstate__', lambda self: state)
        torch.save({'state_dict': {'w': torch.zeros(1)},
                    'message_hub': {'log_scalars': {'train/loss': HistoryBuffer()}}}, path)


@pytest.mark.parametrize('poison', ['max', 'exit'])
def test_checkpoint_cannot_rewrite_the_history_buffer_statistics(tmp_path, monkeypatch, poison: str) -> None:
    """mmengine's HistoryBuffer.__setstate__ copies the pickled statistic methods into a class-wide table that
    every later buffer calls; a checkpoint must not be able to put anything there."""
    from mmengine.logging.history_buffer import HistoryBuffer

    HistoryBuffer()  # registers mmengine's own statistic methods
    table = dict(HistoryBuffer._statistics_methods)
    method = HistoryBuffer.max if poison == 'max' else _builtin_via_getattr('exit')
    state = {'max_length': 10, '_log_history': np.array([1.0, 3.0]), '_count_history': np.array([1, 1]),
             'statistics_methods': {'mean': method}}
    path = tmp_path / 'poisoned.pth'
    _save_history_buffer_with_state(path, state, monkeypatch)
    if poison == 'max':  # only a reference to HistoryBuffer.max: loads, and is not used
        buffer = CheckpointLoader.load_checkpoint(str(path), map_location='cpu')['message_hub']['log_scalars']
        assert type(buffer['train/loss']) is HistoryBuffer and buffer['train/loss'].mean() == 2.0
    else:
        with pytest.raises(CheckpointError, match='it pickles a getattr call that is not part of an mmengine checkpoint'):
            CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert HistoryBuffer._statistics_methods == table
    fresh = HistoryBuffer([4.0, 6.0], [1, 1])
    assert fresh.mean() == 5.0 and fresh.max() == 6.0


def test_history_buffer_of_non_numbers_is_refused(tmp_path, monkeypatch) -> None:
    state = {'max_length': 10, '_log_history': 'not numbers', '_count_history': np.array([1])}
    _save_history_buffer_with_state(tmp_path / 'odd.pth', state, monkeypatch)
    with pytest.raises(CheckpointError, match='odd.pth: its message hub holds a HistoryBuffer that is not one of'):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'odd.pth'), map_location='cpu')


def test_missing_checkpoint_names_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match='Checkpoint not found: .*nope.pth. See checkpoints/README.md'):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'nope.pth'), map_location='cpu')


def _broken_file(tmp_path, kind: str):
    """A file that is not a usable checkpoint, of the given kind."""
    import cv2
    import zipfile

    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.zeros(1000)}}, good)
    data = good.read_bytes()
    path = tmp_path / f'{kind}.pth'
    if kind == 'directory':
        path.mkdir()
    elif kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'truncated':
        path.write_bytes(data[:len(data) // 2])
    elif kind == 'text':
        path.write_text('model weights go here\n')
    elif kind in ('jpeg', 'png'):
        cv2.imwrite(str(tmp_path / f'image.{kind[:3]}'), np.zeros((8, 8, 3), np.uint8))
        path.write_bytes((tmp_path / f'image.{kind[:3]}').read_bytes())
    elif kind == 'other-zip':
        with zipfile.ZipFile(path, 'w') as archive:
            archive.writestr('notes.txt', 'x')
    elif kind == 'damaged-pickle':
        with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, 'w') as archive:
            for info in source.infolist():
                content = source.read(info.filename)
                archive.writestr(info, b'\x80\x02\x99' + content[3:] if info.filename.endswith('data.pkl') else content)
    elif kind == 'truncated-legacy':
        torch.save({'w': torch.zeros(1000)}, good, _use_new_zipfile_serialization=False)
        path.write_bytes(good.read_bytes()[:2000])
    return path


BROKEN_FILES = {
    'directory': 'it is a directory, not a checkpoint file',
    'empty': r'it is empty \(0 bytes\)',
    'truncated': r'it is a truncated or damaged PyTorch archive \(\d+ bytes\)',
    'text': r'it is not a PyTorch checkpoint \(22 bytes of text starting',
    'jpeg': 'it is a JPEG image, not a checkpoint',
    'png': 'it is a PNG image, not a checkpoint',
    'other-zip': r'it is a zip archive without data.pkl, not a PyTorch checkpoint \(1 files\)',
    'damaged-pickle': r'its pickled data is damaged \(\d+ bytes',
    'truncated-legacy': r'it is truncated or damaged \(2000 bytes; RuntimeError\)',
}


@pytest.mark.parametrize('kind', list(BROKEN_FILES))
def test_broken_file_is_one_line_naming_file_and_problem(tmp_path, kind: str) -> None:
    path = _broken_file(tmp_path, kind)
    with pytest.raises(CheckpointError) as error:
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    message = str(error.value)
    assert re.search(f'^Cannot load {re.escape(str(path))}: {BROKEN_FILES[kind]}', message), message
    assert '\n' not in message and 'trust-pickle' not in message


class _ForgedDtype:
    """Pickles as a numpy dtype whose state claims an object field with the object flags off: reading
    elements of such a dtype dereferences bytes from the file as pointers."""

    def __reduce__(self):
        return np.dtype, ('V8', False, True), (3, '|', None, ('a',), {'a': (np.dtype('O'), 0)}, 8, 1, 0)


def test_forged_numpy_dtype_is_refused(tmp_path) -> None:
    path = tmp_path / 'forged.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': {'dtype': _ForgedDtype()}}, path)
    with pytest.raises(CheckpointError, match=r"forged\.pth: it holds numpy data of dtype '\|V8', not plain numbers"):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')


def test_shared_and_self_referencing_containers_load_in_one_pass(tmp_path) -> None:
    shared: list = []
    for _ in range(64):  # 64 levels of [inner, inner]: 2**64 paths through a few hundred bytes
        shared = [shared, shared]
    loop: list = []
    loop.append(loop)
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': {'shared': shared, 'loop': loop}}, tmp_path / 'memo.pth')
    loaded = CheckpointLoader.load_checkpoint(str(tmp_path / 'memo.pth'), map_location='cpu')
    assert loaded['meta']['loop'][0] is loaded['meta']['loop']


def test_safetensors_metadata_config_is_never_executed(tmp_path) -> None:
    import safetensors.torch

    path = tmp_path / 'weights.safetensors'
    safetensors.torch.save_file({'w': torch.zeros(2)}, str(path), metadata={'config': 'import os', 'epoch': '0'})
    loaded = CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert loaded['meta'] == {'config_text': 'import os', 'epoch': '0'}
    torch.testing.assert_close(loaded['state_dict']['w'], torch.zeros(2))


def test_plain_pickle_of_unlisted_class_is_refused(tmp_path) -> None:
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'extra': pickle.PickleError('x')}, path)
    with pytest.raises(CheckpointError, match='PickleError'):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')


class _ToyModel(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, targets=None, mode='tensor'):
        out = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=((out - targets)**2).mean())
        return out


class _ToyDataset(torch.utils.data.Dataset):
    metainfo = dict(classes=('a', 'b'), palette=[(1, 2, 3), (4, 5, 6)])

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        return dict(inputs=torch.full((2,), float(index)), targets=torch.ones(1))


def _toy_runner(work_dir, max_epochs: int, **kwargs) -> Runner:
    return Runner(
        model=_ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=_ToyDataset(), sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=2, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=3),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        **kwargs)


def test_runner_checkpoint_loads_and_resumes_without_widening_torch_load(tmp_path) -> None:
    runner = _toy_runner(tmp_path, max_epochs=1)
    runner.train()
    path = tmp_path / 'epoch_1.pth'
    # Importing backbones allow-lists nothing for torch.load itself: plain weights-only loading still refuses.
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in torch.serialization.get_unsafe_globals_in_checkpoint(
        str(path))

    checkpoint = CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert checkpoint['meta']['epoch'] == 1
    torch.testing.assert_close(checkpoint['state_dict']['linear.weight'], runner.model.linear.weight.detach())
    loss, expected = checkpoint['message_hub']['log_scalars']['train/loss'], runner.message_hub.get_scalar('train/loss')
    np.testing.assert_array_equal(loss.data[0], expected.data[0])
    assert (loss.current(), loss.mean(), loss.max_length) == (expected.current(), expected.mean(), expected.max_length)

    resumed = _toy_runner(tmp_path / 'resumed', max_epochs=2, resume=True, load_from=str(path))
    resumed.train()
    assert resumed.iter == 8 and resumed.epoch == 2


def test_resume_never_executes_the_stored_config(tmp_path) -> None:
    """mmengine's Runner.resume runs ``Config.fromstring(checkpoint['meta']['config'])``, i.e. Python from the file."""
    runner = _toy_runner(tmp_path, max_epochs=1)
    runner.train()
    marker = tmp_path / 'executed'
    checkpoint = CheckpointLoader.load_checkpoint(str(tmp_path / 'epoch_1.pth'), map_location='cpu')
    checkpoint['meta']['config'] = f"open({str(marker)!r}, 'w').write('ran')\ngpu_ids = [0]\n"
    checkpoint['meta'].pop('config_text', None)
    checkpoint['message_hub'] = {'log_scalars': {}, 'runtime_info': {}, 'resumed_keys': {}}
    torch.save(checkpoint, tmp_path / 'tampered.pth')
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / 'tampered.pth')) == []  # plain data

    resumed = _toy_runner(tmp_path / 'resumed', max_epochs=2, resume=True, load_from=str(tmp_path / 'tampered.pth'))
    resumed.train()
    assert not marker.exists()
    assert resumed.epoch == 2
    loaded = CheckpointLoader.load_checkpoint(str(tmp_path / 'tampered.pth'), map_location='cpu')
    assert 'config' not in loaded['meta'] and 'gpu_ids' in loaded['meta']['config_text']


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch) -> None:
    from mmengine.runner.checkpoint import save_checkpoint

    path = tmp_path / 'epoch_1.pth'
    umask = os.umask(0o027)
    try:
        save_checkpoint({'state_dict': {'w': torch.ones(3)}}, str(path))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o640  # what open() gives under the umask, not mkstemp's 0600
    saved = path.read_bytes()

    def fail_midway(fd: int) -> None:
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'fsync', fail_midway)
    with pytest.raises(OSError, match='No space left'):
        save_checkpoint({'state_dict': {'w': torch.zeros(10_000)}}, str(path))
    assert path.read_bytes() == saved  # the earlier checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ['epoch_1.pth']  # and no temporary file is left


def test_last_checkpoint_record_is_written_atomically(tmp_path) -> None:
    """mmengine's CheckpointHook writes ``last_checkpoint`` with ``open(path, 'w')``, i.e. truncates it first."""
    from mmengine.hooks import checkpoint_hook

    record = tmp_path / 'last_checkpoint'
    record.write_text('work/epoch_1.pth')
    with pytest.raises(KeyboardInterrupt), checkpoint_hook.open(str(record), 'w') as file:
        file.write('work/epoch_')
        raise KeyboardInterrupt  # interrupted mid-write
    assert record.read_text() == 'work/epoch_1.pth'

    runner = _toy_runner(tmp_path / 'run', max_epochs=1)
    runner.train()
    assert (tmp_path / 'run' / 'last_checkpoint').read_text() == str(tmp_path / 'run' / 'epoch_1.pth')
    assert sorted(p.name for p in (tmp_path / 'run').iterdir() if not p.name[:8].isdigit()) == [
        'epoch_1.pth', 'last_checkpoint']
