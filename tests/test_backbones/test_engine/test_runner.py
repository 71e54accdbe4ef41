"""backbones/engine/runner.py: what training writes is data, and --resume reads it through a schema.

The attacks run through ``tools/train.py --resume`` on a toy training of a second (``tests.helpers``).
"""
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper

from backbones import ConvNeXtDenseRunner
from backbones.checkpoints import CheckpointError, read_checkpoint_file
from backbones.checkpoints.pickle_data import Record
from backbones.engine.runner import check_plain, checked_optimizer_state, find_resume_checkpoint, plain_data, same_data
from tests.helpers import limit_address_space, toy_config, within

ENV = dict(os.environ, PYTHONUNBUFFERED='1', PYTHONPATH=os.getcwd())  # tests.helpers importable


def train(config: str, work_dir: Path, *args: str, **limits) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, 'tools/train.py', config, '--work-dir', str(work_dir), *args],
                          capture_output=True, text=True, env=ENV, **{'timeout': 300, **limits})


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


def test_plain_data_makes_subclasses_their_base_type_and_names_where_the_rest_is() -> None:
    value = OrderedDict(a=np.float64(1.5), b=[np.arange(3), (1, None, OrderedDict(c=b'x'))])
    plain = plain_data(value, 'meta')
    assert type(plain) is dict and type(plain['b'][1][2]) is dict and plain['a'] == 1.5
    assert torch.equal(plain['b'][0], torch.arange(3)) and plain['b'][1] == (1, None, {'c': b'x'})
    with pytest.raises(TypeError, match=r"^meta\['b'\]\[1\]\['c'\] is a object, which a checkpoint"):
        plain_data({'b': [0, OrderedDict(c=object())]}, 'meta')


def test_checking_and_comparing_look_at_a_shared_container_once_and_any_depth_is_one_line() -> None:
    level = [torch.ones(1), {'k': (1, 'a', None)}]
    for _ in range(60):  # 2**60 places as a tree: a walk that goes to each place never ends
        level = [level, level]
    with within(10):
        check_plain(level, 'optimizer', 'f.pth')
        assert not same_data(level, {'classes': ('a',)})
    bad = [Record('numpy.ndarray', ())]
    for _ in range(60):
        bad = [bad, bad]
    with within(10), pytest.raises(CheckpointError, match=r'f.pth: optimizer(\[[01]\]){60}\[0\] is a numpy.ndarray, '
                                                         'not plain data'):
        check_plain(bad, 'optimizer', 'f.pth')
    deep = []
    for _ in range(50_000):
        deep = [deep]
    check_plain(deep, 'optimizer', 'f.pth')
    assert not same_data(deep, deep)  # as plain data it nests too deep: False, not a RecursionError
    with pytest.raises(TypeError, match="^meta nests containers deeper than Python's recursion limit"):
        plain_data(deep, 'meta')


# --- resume state that the run's own optimizer, schedulers, loop and model must take --------------------------

@pytest.fixture(scope='module')
def resumed(trained, tmp_path_factory) -> ConvNeXtDenseRunner:
    """The third epoch's runner, built in this process and resumed from epoch_1.pth (a genuine checkpoint)."""
    work_dir, config3 = trained
    cfg = Config.fromfile(config3)
    cfg.work_dir = str(tmp_path_factory.mktemp('in_process'))
    runner = ConvNeXtDenseRunner.from_cfg(cfg)
    runner.resume(str(work_dir / 'epoch_1.pth'))
    assert (runner.epoch, runner.iter) == (1, 4)
    return runner


def run_state(runner: ConvNeXtDenseRunner) -> dict:
    """What resuming sets: the loop's position, the weights, the optimizer's and the schedulers' states."""
    return {'position': [runner.epoch, runner.iter], 'weights': runner.model.state_dict(),
            'optimizer': runner.optim_wrapper.state_dict(),
            'schedulers': [scheduler.state_dict() for scheduler in runner.param_schedulers]}


NAN = float('nan')


@pytest.mark.parametrize('changes, problem', [
    (dict(optimizer__param_groups__0__lr=NAN), "its optimizer parameter group 0 'lr' is not a finite number"),
    (dict(optimizer__param_groups__0__betas=(0.9, 0.999, 0.5)), "parameter group 0 'betas' is not a sequence of 2"),
    (dict(optimizer__param_groups=[]), "its optimizer has 0 parameter groups, the config's 1"),
    (dict(optimizer__param_groups__0__params=[0]), 'parameter group 0 does not hold the 2 parameters'),
    (dict(optimizer__state__0__exp_avg=torch.zeros(1, 2, dtype=torch.int64)),
     "state 'exp_avg' of parameter 0 has shape (1, 2) and dtype torch.int64, the parameter (1, 2) and torch.float32"),
    (dict(optimizer__state__1__exp_avg_sq=torch.tensor([NAN])), "state 'exp_avg_sq' of parameter 1 holds NaN"),
    (dict(optimizer__state__0__step=torch.tensor(-1.0)), "state 'step' of parameter 0 is not a non-negative number"),
    (dict(state_dict={}), "its state_dict lacks 2 of the model's 2 weights, e.g. 'linear.weight'"),
    (dict(state_dict__extra=torch.zeros(1)), "its state_dict has 1 weights the model does not have, e.g. 'extra'"),
    (dict(**{'state_dict__linear.weight': torch.zeros(3, 3)}), "weight 'linear.weight' has shape (3, 3), the model's"),
    (dict(param_schedulers=[]), 'its parameter schedulers are not those of the config'),
    (dict(param_schedulers__0__start_factor=float('inf')), "'start_factor' is not a finite number"),
    (dict(param_schedulers__0__end=0), 'is a schedule of no length'),
    (dict(param_schedulers__0__total_iters=0), 'is a schedule of no length'),
    (dict(meta__iter=10**12), "its epoch 2 and iter 1000000000000 are beyond the config's schedule (3 epochs, 12 "),
    (dict(meta__epoch=10**6), "its epoch 1000000 and iter 8 are beyond the config's schedule"),
    (dict(random_state__0__torch=torch.full((5056,), 255, dtype=torch.uint8)), "torch's state is not a generator "
                                                                               'state of its size that its generator'),
    (dict(random_state__0__numpy__gauss=NAN), "numpy's state is not an MT19937 key"),
], ids=['nan-lr', 'three-betas', 'no-groups', 'group-params', 'moment-dtype', 'moment-nan', 'step', 'no-weights',
        'extra-weight', 'weight-shape', 'no-schedulers', 'scheduler-inf', 'zero-length', 'total-iters', 'huge-iter',
        'huge-epoch', 'torch-generator', 'nan-gauss'])
def test_resume_state_the_run_cannot_take_is_one_line_before_anything_is_loaded(
        trained, resumed, tmp_path, changes: dict, problem: str) -> None:
    """Raw tracebacks in the optimizer, scheduler or generator, or silent NaN and random weights, before."""
    path = copy_run(trained[0], tmp_path / 'run', **changes) / 'epoch_2.pth'
    before = run_state(resumed)
    with pytest.raises(CheckpointError) as error:
        resumed.resume(str(path))
    message = str(error.value)
    assert message.startswith(f'Cannot resume from {path}: ') and problem in message and '\n' not in message, message
    assert same_data(before, run_state(resumed))  # nothing of it was loaded


class _ScaledOptimWrapper(OptimWrapper):
    """The state an AmpOptimWrapper saves (mmengine's needs a GPU; torch's GradScaler also runs on CPUs)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        super().__init__(optimizer)
        self.loss_scaler = torch.amp.GradScaler('cpu')

    def state_dict(self) -> dict:
        return dict(super().state_dict(), loss_scaler=self.loss_scaler.state_dict())


def test_a_loss_scale_the_scaler_cannot_take_is_one_line() -> None:
    wrapper = _ScaledOptimWrapper(torch.optim.AdamW(torch.nn.Linear(2, 1).parameters()))
    genuine = wrapper.state_dict()
    assert checked_optimizer_state(genuine, wrapper, 'x.pth') is genuine
    assert 'loss_scaler' not in checked_optimizer_state(dict(genuine, loss_scaler={}), wrapper, 'x.pth')  # no CUDA
    for scale, problem in ((NAN, "its loss scaler['scale'] is not a finite number"),
                           (0.0, 'its loss scaler is not a positive scale, factors and interval')):
        with pytest.raises(CheckpointError, match=r'^Cannot resume from x.pth: ' + re.escape(problem)):
            checked_optimizer_state(dict(genuine, loss_scaler=dict(genuine['loss_scaler'], scale=scale)), wrapper,
                                    'x.pth')


def test_an_iter_beyond_the_schedule_does_not_replay_the_dataloader(trained, tmp_path) -> None:
    """An iteration-based loop replays the dataloader up to the checkpoint's iter: a file's 10**12 was a hang."""
    work_dir, config3 = trained
    config = tmp_path / 'toy_iters.py'
    config.write_text(Path(config3).read_text().replace(
        'train_cfg = dict(by_epoch=True, max_epochs=3, val_interval=1)',
        'train_cfg = dict(by_epoch=False, max_iters=12, val_interval=4)'))
    run = copy_run(work_dir, tmp_path / 'run', meta__iter=10**12)
    line = last_line(train(str(config), run, '--resume', timeout=60, preexec_fn=limit_address_space(6 << 30)))
    assert line == (f'error: Cannot resume from {run / "epoch_2.pth"}: its iter 1000000000000 is beyond the config\'s '
                    'schedule of 12 iterations. Resume from another checkpoint, or train without --resume.')
