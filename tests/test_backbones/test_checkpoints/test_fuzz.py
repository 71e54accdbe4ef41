"""A bounded fuzz of the reader: mutated real checkpoints end in data or one CheckpointError line, in a subprocess.

Seeds: a checkpoint of our training (plain data), an mmengine Runner checkpoint as mmdet/mmseg write them
(HistoryBuffer objects, numpy arrays), an official-layout classification checkpoint (zip and legacy
format) and a safetensors file. A crash (negative return code) or a hang of the worker, or any other
exception, fails the test with the case number (``random.Random(case)`` replays it).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from mmengine.logging import HistoryBuffer

from backbones.engine.runner import plain_data

WORKER = 'tests.test_backbones.test_checkpoints.fuzz_worker'
CASES = 3000
WORKER_TIMEOUT_S = 240


def write_seeds(folder: Path) -> None:
    folder.mkdir()
    weights = {'downsample_layers.0.0.weight': torch.randn(8, 3, 4, 4), 'stages.0.0.gamma': torch.randn(8),
               'head.weight': torch.randn(10, 8).t()}
    hub = {'log_scalars': {'train/loss': HistoryBuffer([1.0, 0.5], [1, 1])},
           'runtime_info': {'epoch': 1, 'eta': np.float64(3.0), 'best_ckpt': '/x/best.pth'},
           'resumed_keys': {'epoch': True}}
    runner = {'meta': {'epoch': 1, 'iter': 4, 'cfg': 'model = dict()', 'dataset_meta': {'classes': ('a', 'b')}},
              'state_dict': weights, 'message_hub': hub,
              'optimizer': {'state': {0: {'step': torch.tensor(4.0), 'exp_avg': torch.zeros(8)}},
                            'param_groups': [{'lr': 0.1, 'betas': (0.9, 0.999), 'params': [0]}]},
              'random_state': [{'python': (3, tuple(range(625)), None), 'numpy': {'key': torch.arange(624), 'pos': 3}}]}
    torch.save(runner, folder / 'mmengine_runner.pth')
    torch.save(dict(plain_data(runner), message_hub=plain_data(hub)), folder / 'ours.pth')
    torch.save({'model': weights}, folder / 'official.pth')
    torch.save({'model': weights}, folder / 'official_legacy.pth', _use_new_zipfile_serialization=False)
    safetensors.torch.save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / 'weights.safetensors'),
                                metadata={'format': 'pt'})


def test_mutated_checkpoints_give_data_or_one_line(tmp_path) -> None:
    seeds = tmp_path / 'seeds'
    write_seeds(seeds)
    report = tmp_path / 'report.txt'
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS='1')
    outcomes: dict[int, str] = {}
    next_case = 0
    while next_case < CASES:
        result = subprocess.run([sys.executable, '-m', WORKER, str(seeds), str(next_case), str(CASES - next_case),
                                 str(report)], capture_output=True, text=True, env=env, timeout=WORKER_TIMEOUT_S)
        assert report.exists(), result.stderr[-3000:]  # the worker started and reached its first case
        for line in report.read_text().splitlines():
            case, outcome = line.split(' ', 1)
            outcomes[int(case)] = outcome
        last = max(outcomes, default=next_case - 1)
        if result.returncode:  # the case it started last crashed the process
            assert result.returncode >= 0 or outcomes.get(last) != 'start', \
                f'case {last} crashed the worker (return code {result.returncode})'
            raise AssertionError(f'the worker failed at case {last}: {result.stderr[-2000:]}')
        next_case = last + 1
    bad = {case: outcome for case, outcome in outcomes.items() if outcome not in ('data', 'refused')}
    assert not bad, f'{len(bad)} cases ended otherwise, e.g. {list(bad.items())[:5]}'
    counts = {kind: sum(outcome == kind for outcome in outcomes.values()) for kind in ('data', 'refused')}
    assert len(outcomes) == CASES and counts['data'] > 100 and counts['refused'] > 100, counts
