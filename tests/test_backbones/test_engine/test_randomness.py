"""RandomStateHook: a run resumed from any of its checkpoints draws the random numbers the original drew."""
import random

import numpy as np
import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel

from backbones import ConvNeXtDenseRunner
from backbones.engine import randomness
from backbones.engine.randomness import RandomStateHook, get_random_state, set_random_state


class _NoisyModel(BaseModel):
    """Dropout and explicit noise: the loss depends on torch's generator."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, inputs, targets=None, mode='tensor'):
        out = self.linear(self.dropout(inputs)) + 0.1 * torch.rand(len(inputs), 1)
        if mode == 'loss':
            return dict(loss=((out - targets)**2).mean())
        return [dict(pred=float(o)) for o in out]


class _NoisyDataset(torch.utils.data.Dataset):
    """Augmentation drawn from python's and numpy's generators, as mmcv/mmdet transforms do."""
    metainfo = dict(classes=('a', ))

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        inputs = torch.full((4, ), float(index)) + torch.from_numpy(np.random.rand(4)).float() + random.random()
        return dict(inputs=inputs, targets=torch.ones(1))


class _MeanPrediction(BaseMetric):

    def process(self, data_batch, data_samples) -> None:
        self.results.extend(sample['pred'] for sample in data_samples)

    def compute_metrics(self, results) -> dict:
        return dict(mean=float(np.mean(results)))


class _RecordLosses(Hook):

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.losses[runner.iter + 1] = outputs['loss'].item()


def _run(work_dir, by_epoch: bool, with_hook: bool = True, resume_from: str | None = None,
         **loader_options) -> dict[int, float]:
    """Train 12 iterations (3 epochs of 4, or 12 iterations) with checkpoints and validation every 4."""
    recorder = _RecordLosses()
    loader = dict(dataset=_NoisyDataset(), batch_size=2, collate_fn=dict(type='default_collate'),
                  sampler=dict(type='DefaultSampler' if by_epoch else 'InfiniteSampler', shuffle=True),
                  **loader_options)
    schedule = dict(by_epoch=True, max_epochs=3, val_interval=1) if by_epoch else dict(
        by_epoch=False, max_iters=12, val_interval=4)
    runner = ConvNeXtDenseRunner(
        model=_NoisyModel(), work_dir=str(work_dir), train_dataloader=loader, train_cfg=schedule,
        val_dataloader=dict(loader, sampler=dict(type='DefaultSampler', shuffle=False), num_workers=0,
                            persistent_workers=False), val_cfg=dict(),
        val_evaluator=dict(type=_MeanPrediction), optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=dict(type='ConvNeXtDenseCheckpointHook', interval=1 if by_epoch else 4,
                                           by_epoch=by_epoch)),
        custom_hooks=[recorder, RandomStateHook()] if with_hook else [recorder],
        randomness=dict(seed=3), resume=resume_from is not None, load_from=resume_from)
    runner.train()
    return recorder.losses


@pytest.mark.parametrize('by_epoch', [True, False], ids=['epoch-based', 'iter-based'])
def test_resumed_run_continues_the_original_random_numbers(tmp_path, by_epoch: bool) -> None:
    original = _run(tmp_path / 'original', by_epoch)
    checkpoint = tmp_path / 'original' / ('epoch_1.pth' if by_epoch else 'iter_4.pth')
    resumed = _run(tmp_path / 'resumed', by_epoch, resume_from=str(checkpoint))
    assert sorted(resumed) == list(range(5, 13))
    assert resumed == {i: original[i] for i in resumed}  # equal, not close: the same numbers in the same order

    # Without the hook the same resume draws other numbers: the comparison above can fail.
    plain = _run(tmp_path / 'plain', by_epoch, with_hook=False)
    unhooked = _run(tmp_path / 'unhooked', by_epoch, with_hook=False,
                    resume_from=str(tmp_path / 'plain' / checkpoint.name))
    assert any(unhooked[i] != plain[i] for i in unhooked)


def test_persistent_workers_of_an_epoch_based_run_get_a_warning(tmp_path, monkeypatch) -> None:
    """Their generators live on in the worker processes, out of the checkpoint's reach."""
    messages = []
    monkeypatch.setattr(randomness, 'print_log', lambda message, **kwargs: messages.append(message))
    _run(tmp_path / 'original', True, num_workers=1, persistent_workers=True)
    assert not messages
    _run(tmp_path / 'resumed', True, resume_from=str(tmp_path / 'original' / 'epoch_1.pth'), num_workers=1,
         persistent_workers=True)
    assert [m for m in messages if m.startswith('Persistent dataloader workers keep their random state')]


def test_random_state_round_trips_through_plain_data() -> None:
    state = get_random_state()
    drawn = (random.random(), np.random.rand(), torch.rand(1).item())
    set_random_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == drawn
