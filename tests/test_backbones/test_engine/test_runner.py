"""backbones/engine/runner.py: what training writes is data, and --resume reads it through a schema.

The attacks run through ``tools/train.py --resume`` on a toy training of a second (``tests.helpers``).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backbones.checkpoints import read_checkpoint_file
from backbones.engine.runner import find_resume_checkpoint
from tests.helpers import toy_config

ENV = dict(os.environ, PYTHONUNBUFFERED='1', PYTHONPATH=os.getcwd())  # tests.helpers importable


def train(config: str, work_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, 'tools/train.py', config, '--work-dir', str(work_dir), *args],
                          capture_output=True, text=True, env=ENV, timeout=300)


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A toy run of 2 epochs (checkpoints epoch_1, epoch_2, best_toy_error_epoch_2) and the config of a third."""
    folder = tmp_path_factory.mktemp('toy')
    result = train(toy_config(folder / 'toy.py', 2), folder / 'work')
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / 'work', Path(toy_config(folder / 'toy3.py', 3))


def copy_run(trained_dir: Path, destination: Path, **changes) -> Path:
    """The trained run's epoch_2.pth in a fresh work dir, with entries of the checkpoint changed."""
    destination.mkdir()
    checkpoint = read_checkpoint_file(trained_dir / 'epoch_2.pth')
    for path, value in changes.items():
        target = checkpoint
        *parents, last = [int(key) if key.isdigit() else key for key in path.split('__')]
        for key in parents:
            target = target[key]
        target[last] = value
    torch.save(checkpoint, destination / 'epoch_2.pth')
    return destination


def last_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def test_our_checkpoints_are_data_that_torch_loads_without_any_allow_list(trained) -> None:
    work_dir, _ = trained
    path = work_dir / 'epoch_2.pth'
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    plain = torch.load(path, weights_only=True)
    ours = read_checkpoint_file(path)
    assert ours['meta']['epoch'] == plain['meta']['epoch'] == 2
    history = ours['message_hub']['log_scalars']['train/loss']
    assert history['log_history'].dtype == torch.float64 and len(history['log_history']) == 8
    assert sorted(ours['random_state'][0]) == ['cuda', 'numpy', 'python', 'torch']


def test_resume_continues_and_takes_no_path_from_the_file(trained, tmp_path) -> None:
    """Class 1 and 7: config text in meta is never executed; best_ckpt and keep_ckpt_ids name nothing to delete."""
    work_dir, config3 = trained
    marker, precious = tmp_path / 'executed', tmp_path / 'precious'
    precious.mkdir()
    (precious / 'keep.txt').write_text('user data')
    run = copy_run(work_dir, tmp_path / 'run', meta__config=f"open({str(marker)!r}, 'w')\ngpu_ids = [0, 1]\n",
                   message_hub__runtime_info__best_ckpt=str(precious),
                   message_hub__runtime_info__keep_ckpt_ids=[-1, 0, 1, 2],
                   message_hub__runtime_info__best_score=10.0)  # any new score is better: the best is replaced
    result = train(str(config3), run, '--resume')
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists() and (precious / 'keep.txt').read_text() == 'user data'
    assert f'Resuming from {run / "epoch_2.pth"}' in result.stdout and 'resumed epoch: 2, iter: 8' in result.stdout
    assert (run / 'epoch_3.pth').exists() and (run / 'best_toy_error_epoch_3.pth').exists()


@pytest.mark.parametrize('record', ['url', 'fifo', 'dev-zero', 'outside'])
def test_last_checkpoint_never_names_what_resume_loads(trained, tmp_path, record: str) -> None:
    """Class 2: the record is followed only to a regular file in the work dir; mmengine's lookup is never used."""
    _, config3 = trained
    run = tmp_path / 'run'
    run.mkdir()
    target = {'url': 'http://127.0.0.1:9/epoch_2.pth', 'fifo': str(run / 'pipe.pth'),
              'dev-zero': str(run / 'zero.pth'), 'outside': str(tmp_path / 'epoch_2.pth')}[record]
    if record == 'fifo':
        os.mkfifo(target)
    elif record == 'dev-zero':
        os.symlink('/dev/zero', target)
    elif record == 'outside':
        Path(target).write_bytes(b'not ours')
    (run / 'last_checkpoint').write_text(target)
    assert find_resume_checkpoint(str(run)) is None
    line = last_line(train(str(config3), run, '--resume'))
    assert line == (f'error: Nothing to resume in {run}: it has no epoch_N.pth or iter_N.pth checkpoint. Train '
                    'without --resume, or pass --resume CKPT.')


@pytest.mark.parametrize('case', ['numpy-position', 'python-position', 'torch-size', 'epoch', 'history',
                                  'optimizer-shape', 'safetensors'])
def test_a_checkpoint_outside_the_schema_is_one_line(trained, tmp_path, case: str) -> None:
    """Class 6 and 10: numpy's MT19937 position out of range segfaulted at the first RandomFlip."""
    work_dir, config3 = trained
    state = read_checkpoint_file(work_dir / 'epoch_2.pth')['random_state'][0]
    if case == 'safetensors':
        import safetensors.torch
        run = tmp_path / 'run'
        run.mkdir()
        safetensors.torch.save_file({'linear.weight': torch.zeros(1, 2)}, str(run / 'w.safetensors'))
        line = last_line(train(str(config3), run, '--resume', str(run / 'w.safetensors')))
        assert 'it has no meta record: it is a weights file, not a training checkpoint' in line
        return
    changes = {
        'numpy-position': dict(random_state=[dict(state, numpy=dict(state['numpy'], pos=10**9))]),
        'python-position': dict(random_state=[dict(state, python=(3, (*state['python'][1][:-1], 5000), None))]),
        'torch-size': dict(random_state=[dict(state, torch=state['torch'][:100])]),
        'epoch': dict(meta__epoch=-3),
        'history': dict(message_hub__log_scalars__x={'log_history': [1.0, 2.0], 'count_history': [1],
                                                     'max_length': 10}),
        'optimizer-shape': dict(optimizer__state__0__exp_avg=torch.zeros(7, 7)),
    }[case]
    run = copy_run(work_dir, tmp_path / 'run', **changes)
    line = last_line(train(str(config3), run, '--resume'))
    expected = {
        'numpy-position': "numpy's state is not an MT19937 key", 'python-position': "python's state is not",
        'torch-size': "torch's state is not a generator state", 'epoch': 'are not both non-negative',
        'history': "log scalar 'x' has 2 values, 1 counts", 'optimizer-shape': "state 'exp_avg' of parameter 0 has "
                                                                              'shape (7, 7)'}[case]
    assert line.startswith('error: Cannot resume') and expected in line, line


def test_resume_finds_the_latest_checkpoint_also_after_a_crash(tmp_path) -> None:
    assert find_resume_checkpoint(str(tmp_path)) is None
    for name in ('epoch_2.pth', 'epoch_10.pth', 'best_coco_bbox_mAP_epoch_3.pth'):
        (tmp_path / name).write_bytes(b'')
    record = tmp_path / 'last_checkpoint'
    record.write_text(str(tmp_path / 'epoch_2.pth'))
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_2.pth')  # what the record names
    for left_by_a_crash in ('', str(tmp_path / 'epoch_')):  # empty, or cut mid-path by an older writer
        record.write_text(left_by_a_crash)
        assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_10.pth')  # newest by number
