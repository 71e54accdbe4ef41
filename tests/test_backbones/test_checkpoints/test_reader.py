"""backbones/checkpoints/reader.py and pickle_data.py: files are read as data, attacks are inert or refused."""
import os
import re
import signal
import time
import zipfile

import numpy as np
import pytest
import torch
from mmengine.runner.checkpoint import CheckpointLoader

import backbones.checkpoints.reader as reader_module
from backbones.checkpoints import CheckpointError, load_local_checkpoint, read_checkpoint_file
from backbones.checkpoints.pickle_data import Global, Record
from tests.helpers import within

from . import payloads as p


def load(path) -> object:
    """Through mmengine's own entry point, as init_cfg, load_from and the tools reach the reader."""
    return CheckpointLoader.load_checkpoint(str(path), map_location='cpu')


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_what_torch_saves_loads_as_the_same_data(tmp_path, legacy: bool) -> None:
    value = {'state_dict': {'w': torch.randn(2, 3), 'b': torch.arange(3, dtype=torch.bfloat16),
                            'flag': torch.tensor([True, False])},
             'view': torch.arange(10.0)[2:5], 'transposed': torch.arange(12).reshape(3, 4).t(),
             'array': np.arange(6, dtype=np.int16).reshape(2, 3), 'scalar': np.float64(2.5),
             'plain': (1, 'a', None, 2.5, b'xy', True, 2**100, -7), 'nested': [{'k': [1, 2]}]}
    path = tmp_path / 'file.pth'
    path.write_bytes(p.torch_file(value, legacy))
    loaded, expected = load(path), torch.load(path, weights_only=False)
    for key in ('w', 'b', 'flag'):
        assert torch.equal(loaded['state_dict'][key], expected['state_dict'][key])
        assert loaded['state_dict'][key].dtype == expected['state_dict'][key].dtype
    assert torch.equal(loaded['view'], expected['view']) and loaded['transposed'].stride() == (1, 4)
    np.testing.assert_array_equal(loaded['array'], expected['array'])
    assert loaded['array'].dtype == np.int16 and loaded['scalar'] == 2.5
    assert loaded['plain'] == expected['plain'] and loaded['nested'] == expected['nested']
    assert type(loaded['state_dict']) is dict  # an OrderedDict's pickle gives a plain dict


def test_the_reader_imports_and_calls_nothing_the_file_names(tmp_path, monkeypatch) -> None:
    marker = tmp_path / 'executed'
    calls = []
    for owner, attribute in ((torch, 'load'), (np, 'frombuffer'), (reader_module, 'read_checkpoint_file'),
                             (os, 'system')):
        monkeypatch.setattr(owner, attribute, lambda *args, _name=attribute, **kwargs: calls.append(_name))
    body = p.dict_of(
        system=p.call('os.system', p.text(f'touch {marker}')),
        eval=p.call('builtins.eval', p.text(f"open({str(marker)!r}, 'w')")),
        load=p.call('torch.load', p.text(str(tmp_path / 'other.pth'))),
        frombuffer=p.call('numpy.frombuffer', p.raw(b'\0' * 8)),
        ours=p.call('backbones.checkpoints.reader.read_checkpoint_file', p.text('/etc/passwd')),
        getattr_chain=p.call('builtins.getattr', p.call('builtins.getattr', p.name('builtins.getattr'),
                                                        p.text('__self__')), p.text('exec')),
        popen=p.name('subprocess.Popen') + p.tuple_of(p.text('id')) + b'\x81',  # NEWOBJ
        inst=b'(' + p.text('id') + b'ios\nsystem\n')  # INST
    path = p.write_archive(tmp_path / 'names.pth', p.checkpoint(body))
    monkeypatch.undo()  # the reader itself uses np.frombuffer for arrays; nothing in this file is an array
    meta = load(path)['meta']
    assert not marker.exists() and calls == []
    assert {key: value.name for key, value in meta.items()} == {
        'system': 'os.system', 'eval': 'builtins.eval', 'load': 'torch.load', 'frombuffer': 'numpy.frombuffer',
        'ours': 'backbones.checkpoints.reader.read_checkpoint_file', 'getattr_chain': 'builtins.getattr',
        'popen': 'subprocess.Popen', 'inst': 'os.system'}
    assert all(isinstance(value, Record) for value in meta.values())
    assert meta['system'].args == (f'touch {marker}',) and isinstance(meta['popen'].args, tuple)


def test_build_cannot_shadow_a_containers_methods(tmp_path) -> None:
    """Class 1: torch's unpickler lets BUILD set attributes of an allow-listed OrderedDict (its pop, get...)."""
    shadowed = p.call('collections.OrderedDict') + p.dict_of(pop=p.name('builtins.set'), get=p.name('builtins.set'),
                                                              keys=p.name('builtins.set')) + b'b'
    body = shadowed + b'(' + p.text('config') + p.text('import os') + p.text('epoch') + p.integer(1) + b'u'
    path = p.write_archive(tmp_path / 'shadow.pth', p.checkpoint(body))
    meta = load(path)['meta']
    assert type(meta) is dict and meta == {'epoch': 1, 'config_text': 'import os'}  # config moved, never executed


@pytest.mark.parametrize('route', ['forged-dtype', 'object-dtype', 'string-dtype-array', 'forged-in-exception',
                                   'forged-in-set'])
def test_numpy_cannot_be_made_to_read_pointers(tmp_path, route: str) -> None:
    """Class 3 and 4: forged dtypes, StringDType, and such arrays inside exceptions or sets."""
    forged = p.array(b'\x01' * 8, p.forged_dtype(), (1,))
    bodies = {
        'forged-dtype': forged,
        'object-dtype': p.array(b'\x01' * 8, p.call('numpy.dtype', p.text('O8'), b'\x89\x88'), (1,)),
        'string-dtype-array': p.array(b'\x01' * 16, p.call('numpy.dtypes.StringDType'), (1,)),
        'forged-in-exception': p.call('builtins.ValueError', forged),
        'forged-in-set': p.call('builtins.set', p.tuple_of(forged)),
    }
    path = p.write_archive(tmp_path / f'{route}.pth', p.checkpoint(bodies[route]))
    with pytest.raises(CheckpointError, match=r'numpy (array or scalar whose dtype is not|dtype .* is not plain)'):
        load(path)


def test_an_inert_string_dtype_array_stays_a_record(tmp_path) -> None:
    """The second route of class 3 (``ndarray.__new__`` with StringDType) builds no array at all."""
    body = p.name('numpy.ndarray') + p.tuple_of(p.tuple_of(p.integer(3)), p.call('numpy.dtypes.StringDType')) + b'\x81'
    body += p.tuple_of(p.integer(1), p.tuple_of(p.integer(3)), p.call('numpy.dtypes.StringDType'), b'\x89',
                       p.raw(b'\xff' * 48)) + b'b'
    meta = load(p.write_archive(tmp_path / 'new.pth', p.checkpoint(body)))['meta']
    assert isinstance(meta, Record) and meta.name == 'numpy.ndarray' and repr(meta) == 'Record(numpy.ndarray)'


def test_a_memoised_array_cannot_be_built_twice(tmp_path) -> None:
    """Class 5: a second BUILD on a memoised array released the buffer a tensor still used."""
    first = p.call('numpy._core.multiarray._reconstruct', p.name('numpy.ndarray'), p.tuple_of(p.integer(0)),
                   p.raw(b'b')) + p.put(9)
    state = p.tuple_of(p.integer(1), p.tuple_of(p.integer(1)), p.plain_dtype(), b'\x89', p.raw(b'\0' * 8))
    body = b'(' + first + state + b'b' + p.get(9) + state + b'b' + b'l'
    with pytest.raises(CheckpointError, match='a numpy array given its data twice'):
        load(p.write_archive(tmp_path / 'twice.pth', p.checkpoint(body)))


def test_an_expanded_tensor_is_refused(tmp_path) -> None:
    """Class 8: a stride-0 tensor views more elements than the file holds; .contiguous() would allocate them."""
    path = tmp_path / 'expanded.pth'
    path.write_bytes(p.torch_file({'w': torch.ones(4)[None].expand(1000, 4)}))
    with pytest.raises(CheckpointError, match=r'a tensor of size \(1000, 4\) \(stride \(0, 1\), offset 0\) that '
                                              'views more than its storage of 4 elements holds'):
        load(path)


def test_a_tensor_cannot_reach_past_its_storage(tmp_path) -> None:
    storage = p.tuple_of(p.text('storage'), p.name('torch.FloatStorage'), p.text('0'), p.text('cpu'), p.integer(2))
    tensor = p.call('torch._utils._rebuild_tensor_v2', storage + b'Q', p.integer(1), p.tuple_of(p.integer(4)),
                    p.tuple_of(p.integer(1)), b'\x89', p.call('collections.OrderedDict'))
    path = p.write_archive(tmp_path / 'past.pth', p.checkpoint(tensor), {'0': b'\0' * 8})
    with pytest.raises(CheckpointError, match='views more than its storage of 2 elements holds'):
        load(path)
    short = p.write_archive(tmp_path / 'short.pth', p.checkpoint(tensor), {'0': b'\0' * 4})
    with pytest.raises(CheckpointError, match="storage '0' of 8 bytes without a record of that size"):
        load(short)


@pytest.mark.parametrize('bomb', ['bytearray', 'deflated', 'colliding-keys', 'shared-tree', 'deep', 'self-loop',
                                  'huge-int', 'overlapping-records'])
def test_memory_and_cpu_bombs_are_bounded(tmp_path, bomb: str) -> None:
    """Class 8: small files that allocated gigabytes or took quadratic time."""
    path = tmp_path / f'{bomb}.pth'
    if bomb == 'bytearray':
        p.write_archive(path, p.checkpoint(p.call('builtins.bytearray', p.integer(1_500_000_000))))
    elif bomb == 'deflated':
        p.write_archive(path, p.checkpoint(p.raw(b'\0' * 200)), {'0': b'\0' * 10_000_000}, zipfile.ZIP_DEFLATED)
    elif bomb == 'colliding-keys':  # ints that all hash alike: quadratic dict building in CPython
        keys = b''.join(b'\x8a\x0a' + (i * (2**61 - 1)).to_bytes(10, 'little', signed=True) + b'N'
                        for i in range(1, 30000))
        p.write_archive(path, p.checkpoint(b'}(' + keys + b'u'))
    elif bomb == 'shared-tree':  # 2**64 paths through a few hundred bytes
        p.write_archive(path, p.checkpoint(b']' + b''.join(b'q\x000h\x00h\x00\x86' for _ in range(64))))
    elif bomb == 'deep':
        p.write_archive(path, p.checkpoint(b']' * 5000 + b'a' * 4999))
    elif bomb == 'self-loop':
        p.write_archive(path, p.checkpoint(b']q\x00h\x00a'))
    elif bomb == 'huge-int':
        p.write_archive(path, p.checkpoint(b'\x8b' + (10**6).to_bytes(4, 'little') + b'\x01' * 10**6))
    elif bomb == 'overlapping-records':  # two zip entries over the same bytes
        p.write_archive(path, p.checkpoint(p.raw(b'x')), {'0': b'\0' * 1000})
        data = bytearray(path.read_bytes())
        data += data[data.index(b'PK\x01\x02'):]  # central directory twice
        path.write_bytes(bytes(data))
    started = time.perf_counter()
    if bomb == 'bytearray':
        assert load(path)['meta'].name == 'builtins.bytearray'  # an inert record: nothing allocated
    else:
        expected = {'deflated': 'a compressed zip record', 'colliding-keys': 'a dict key of type int',
                    'shared-tree': 'larger than 100000000 values as a tree', 'deep': 'deeper than 100',
                    'self-loop': 'a container that contains itself', 'huge-int': 'an integer of 1000000 bytes',
                    'overlapping-records': r'(records that overlap|damaged PyTorch archive)'}[bomb]
        with pytest.raises(CheckpointError, match=expected):
            load(path)
    assert time.perf_counter() - started < 60  # a guard against hangs, not a speed claim


@pytest.mark.parametrize('kind, message', [
    ('fifo', 'it is not a regular file'),
    ('device', 'it is not a regular file'),
    ('directory', 'it is a directory, not a checkpoint file'),
    ('empty', r'it is empty \(0 bytes\)'),
    ('truncated', r'it is a truncated or damaged PyTorch archive \(\d+ bytes'),
    ('text', r'it is not a PyTorch checkpoint \(22 bytes of text starting'),
    ('png', 'it is a PNG image, not a checkpoint'),
    ('other-zip', r'it is a zip archive without data.pkl, not a PyTorch checkpoint \(1 files\)'),
    ('damaged-pickle', 'unknown opcode'),
    ('truncated-legacy', 'storage .* past the end of the file'),
    ('plain-pickle', 'it is a pickle, not a PyTorch checkpoint'),
])
def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, kind: str, message: str) -> None:
    """Class 10 and the old broken-file cases: one line naming the file, never a hang or another error."""
    good = p.torch_file({'state_dict': {'w': torch.zeros(1000)}})
    path = tmp_path / f'{kind}.pth'
    if kind == 'fifo':
        os.mkfifo(path)  # opening it for reading would block
    elif kind == 'device':
        path.symlink_to('/dev/zero')  # reading it never ends
    elif kind == 'directory':
        path.mkdir()
    elif kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'truncated':
        path.write_bytes(good[:len(good) // 2])
    elif kind == 'text':
        path.write_text('model weights go here\n')
    elif kind == 'png':
        path.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(100))
    elif kind == 'other-zip':
        with zipfile.ZipFile(path, 'w') as archive:
            archive.writestr('notes.txt', 'x')
    elif kind == 'damaged-pickle':
        p.write_archive(path, b'\x80\x02\x99' + b'.')
    elif kind == 'truncated-legacy':
        path.write_bytes(p.torch_file({'w': torch.zeros(1000)}, legacy=True)[:2000])
    elif kind == 'plain-pickle':
        import pickle
        path.write_bytes(pickle.dumps({'w': 1}, protocol=2))
    with pytest.raises(CheckpointError) as error:
        load(path)
    text = str(error.value)
    assert re.search(f'^Cannot load {re.escape(str(path))}: {message}', text), text
    assert '\n' not in text


def test_text_opcodes_cost_the_bytes_they_read(tmp_path) -> None:
    """Protocol 0's line-reading opcodes (INT, LONG, FLOAT, STRING, UNICODE, PUT, GET) cost their line, not a
    fixed copy of 1 MiB each (which made a 7 MB file of them take about a minute): under an alarm, so that a
    regression fails the test instead of stalling the run."""
    opcodes = b'I7\nL-12\nF1.5\nS\'a\'\nVb\np0\n0g0\n'  # 5 values: 'b' memoised, popped and fetched again
    path = p.write_archive(tmp_path / 'text.pth', p.checkpoint(b'(' + opcodes * 250_000 + b'l'))
    assert path.stat().st_size > 7_000_000

    def too_slow(signum: int, frame: object) -> None:
        raise TimeoutError('7 MB of text opcodes took more than 30 s')
    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(30)
    try:
        meta = read_checkpoint_file(path)['meta']
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert len(meta) == 1_250_000 and meta[:7] == [7, -12, 1.5, 'a', 'b', 7, -12]


def test_missing_checkpoint_names_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match='Checkpoint not found: .*nope.pth. See checkpoints/README.md'):
        load(tmp_path / 'nope.pth')


def test_an_mmengine_runner_checkpoint_loads_its_weights_with_inert_history(tmp_path) -> None:
    """mmengine checkpoints written elsewhere (mmdet's, mmseg's) pickle HistoryBuffer objects and getattr calls."""
    from mmengine.logging import HistoryBuffer

    buffer = HistoryBuffer([1.0, 3.0], [1, 1])
    hub = {'log_scalars': {'loss': buffer}}
    torch.save({'state_dict': {'w': torch.ones(2)}, 'message_hub': hub}, tmp_path / 'm.pth')
    table = dict(HistoryBuffer._statistics_methods)
    loaded = load(tmp_path / 'm.pth')
    stored = loaded['message_hub']['log_scalars']['loss']
    assert isinstance(stored, Record) and stored.name == 'mmengine.logging.history_buffer.HistoryBuffer'
    assert stored.get_state()['statistics_methods']['mean'].name == 'builtins.getattr'  # inert, never called
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2)) and HistoryBuffer._statistics_methods == table


def test_safetensors_loads_and_its_config_is_never_executed(tmp_path) -> None:
    import safetensors.torch

    path = tmp_path / 'weights.safetensors'
    safetensors.torch.save_file({'w': torch.zeros(2)}, str(path), metadata={'config': 'import os', 'epoch': '0'})
    loaded = load(path)
    assert loaded['meta'] == {'config_text': 'import os', 'epoch': '0'}
    torch.testing.assert_close(loaded['state_dict']['w'], torch.zeros(2))


def test_globals_are_never_resolved(tmp_path) -> None:
    path = p.write_archive(tmp_path / 'g.pth', p.checkpoint(p.name('torch.nn.Module')))
    meta = read_checkpoint_file(path)['meta']
    assert isinstance(meta, Global) and meta.name == 'torch.nn.Module'
    assert load_local_checkpoint(str(path))['meta'].name == 'torch.nn.Module'


def test_moving_to_a_device_moves_each_shared_tensor_and_container_once_and_keeps_it_shared() -> None:
    tensor = torch.ones(2)
    level = [tensor, {'k': (tensor, 1)}]
    for _ in range(60):  # 2**60 places as a tree: a walk that goes to each place never ends
        level = [level, level]
    with within(10):
        moved = reader_module.map_tensors({'a': tensor, 'b': tensor, 'tree': level}, 'meta')
    assert moved['a'] is moved['b'] and moved['a'].device.type == 'meta'
    level = moved['tree']
    for _ in range(60):
        assert level[0] is level[1]
        level = level[0]
    assert level[0] is level[1]['k'][0] is moved['a']


def test_a_nest_deeper_than_python_recurses_is_one_line_when_moved_to_a_device() -> None:
    deep = []
    for _ in range(50_000):
        deep = [deep]
    with pytest.raises(CheckpointError, match="^Cannot move the checkpoint to meta: its containers nest deeper than "
                                              "Python's recursion limit.$"):
        reader_module.map_tensors(deep, 'meta')


@pytest.mark.parametrize('place', ['persistent-id', 'shared-persistent-id', 'global-module', 'array-shape'])
def test_a_value_nested_past_the_recursion_limit_is_described_in_one_line(tmp_path, place: str) -> None:
    """TUPLE1 nests without a MARK, so a value reaching the reader before the depth check (a persistent id, a
    global's module, an array's shape) can nest 5000 deep, or be shared at 2**64 places: its ``str`` in the error
    raised RecursionError or never ended. It is described one level deep."""
    deep = p.text('x') + b'\x85' * 5000
    shared = p.text('x') + b'q\x000h\x00h\x00\x86' * 64  # 2**64 paths to 'x'
    body = {'persistent-id': deep + b'Q', 'shared-persistent-id': shared + b'Q',
            'global-module': deep + p.text('name') + b'\x93',
            'array-shape': p.call('numpy._core.multiarray._reconstruct', p.name('numpy.ndarray'),
                                  p.tuple_of(p.integer(0)), p.raw(b'b'))
            + p.tuple_of(p.integer(1), deep, p.plain_dtype(), b'\x89', p.raw(b'')) + b'b'}[place]
    path = p.write_archive(tmp_path / f'{place}.pth', p.checkpoint(body))
    expected = {'persistent-id': r'a persistent id that is not a storage: \(<tuple of 1>\)',
                'shared-persistent-id': r'a persistent id that is not a storage: \(<tuple of 2>, <tuple of 2>\)',
                'global-module': r"a global that is not a dotted name: \(<tuple of 1>\) 'name'",
                'array-shape': r'a shape that is not a tuple of at most 32 sizes: \(<tuple of 1>\)'}[place]
    with within(10), pytest.raises(CheckpointError) as error:
        load(path)
    assert re.fullmatch(f'Cannot load {re.escape(str(path))}: {expected}.', str(error.value)), str(error.value)
