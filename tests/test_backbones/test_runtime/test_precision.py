"""backbones/runtime/precision.py: the precision a run uses, its optim wrapper and its autocast test step."""
from collections import OrderedDict, namedtuple

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import OPTIM_WRAPPERS
from mmengine.structures import InstanceData

from backbones.runtime.precision import (
    autocast,
    autocast_test_step,
    cpu_supports_bf16,
    resolve_precision,
    set_training_precision,
)


def test_auto_precision_follows_the_device_and_the_cpu(monkeypatch) -> None:
    assert resolve_precision('auto', 'cuda:0') == 'fp16'
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: native)
        monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: False)
        assert cpu_supports_bf16() is native
        assert resolve_precision('auto', 'cpu') == ('bf16' if native else 'fp32')
    assert resolve_precision('fp32', 'cpu') == 'fp32'
    with pytest.raises(ValueError, match="Unknown precision 'fp8'"):
        resolve_precision('fp8', 'cpu')


def test_autocast_computes_in_the_chosen_precision() -> None:
    layer = torch.nn.Linear(8, 8)
    for precision, dtype in (('fp32', torch.float32), ('bf16', torch.bfloat16)):
        with autocast(precision, 'cpu'):
            assert layer(torch.randn(2, 8)).dtype == dtype


class _Toy(torch.nn.Module):

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 1)

    def test_step(self, data: torch.Tensor) -> list[InstanceData]:
        return [InstanceData(scores=self.linear(data).squeeze(1), labels=torch.arange(len(data)))]


@pytest.mark.parametrize('precision, wrapper', [('fp32', 'OptimWrapper'), ('bf16', 'AutocastOptimWrapper')])
def test_training_precision_picks_the_optim_wrapper(precision: str, wrapper: str) -> None:
    optimizer = dict(type='SGD', lr=1)
    cfg = Config(dict(optim_wrapper=dict(type='AmpOptimWrapper', loss_scale='dynamic', optimizer=optimizer)))
    set_training_precision(cfg, precision)
    built = OPTIM_WRAPPERS.build(dict(cfg.optim_wrapper, optimizer=torch.optim.SGD(_Toy().parameters(), lr=1)))
    assert type(built).__name__ == wrapper  # and it builds: no AMP-only keys left


def test_autocast_test_step_runs_in_bf16_and_returns_fp32() -> None:
    model, data = _Toy(), torch.randn(3, 8)
    reference = model.test_step(data)[0]
    autocast_test_step(model, 'bf16')
    prediction = model.test_step(data)[0]
    assert prediction.scores.dtype == torch.float32 and prediction.labels.dtype == torch.int64
    with torch.autocast('cpu', dtype=torch.bfloat16):
        in_bf16 = model.linear(data).squeeze(1).float()
    torch.testing.assert_close(prediction.scores, in_bf16, rtol=0, atol=0)  # computed in bf16, not fp32
    assert not torch.equal(prediction.scores, reference.scores)


def test_autocast_test_step_returns_fp32_inside_any_container_and_data_sample() -> None:
    pair = namedtuple('pair', 'scores labels')
    half, labels = torch.ones(2, dtype=torch.bfloat16), torch.arange(2)
    model = _Toy()
    model.test_step = lambda data: [{'sample': InstanceData(scores=half, nested=[half, half])},
                                    (pair(half, labels), OrderedDict(x=half))]
    autocast_test_step(model, 'bf16')
    (first, (named, ordered)) = model.test_step(torch.randn(2, 8))
    assert first['sample'].scores.dtype == first['sample'].nested[0].dtype == torch.float32
    assert type(named) is pair and named.scores.dtype == torch.float32 and named.labels.dtype == torch.int64
    assert type(ordered) is OrderedDict and ordered['x'].dtype == torch.float32
