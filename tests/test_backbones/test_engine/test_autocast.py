"""backbones/engine/autocast.py: AutocastOptimWrapper trains in bf16 on CPUs with fp32 weights."""
import pytest
import torch
from mmengine.registry import OPTIM_WRAPPERS

from backbones.engine.autocast import AutocastOptimWrapper


def test_autocast_optim_wrapper_trains_in_bf16_with_fp32_weights() -> None:
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1)
    wrapper = OPTIM_WRAPPERS.build(dict(type='AutocastOptimWrapper', optimizer=optimizer))
    assert isinstance(wrapper, AutocastOptimWrapper)
    before = model.weight.detach().clone()
    with wrapper.optim_context(model):
        out = model(torch.randn(4, 8))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().pow(2).mean())
    assert model.weight.dtype == torch.float32 and not torch.equal(model.weight, before)
    with pytest.raises(ValueError, match='dtype must be one of bfloat16, float16'):
        AutocastOptimWrapper(dtype='float8', optimizer=optimizer)
