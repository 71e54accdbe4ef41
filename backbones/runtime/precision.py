"""``--precision {auto,fp32,bf16,fp16}`` of the tools.

The papers' AMP recipes train in bf16 on CPUs that compute it natively (mmengine's ``AmpOptimWrapper``
needs a GPU; :class:`backbones.engine.autocast.AutocastOptimWrapper` does the CPU's part), in fp32 on
others, and in fp16 on CUDA.
"""
import contextlib
import functools
from typing import Any

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.structures import BaseDataElement
from torch import nn
from torch.utils._pytree import tree_map

from ..engine.autocast import DTYPES
from ..errors import UsageError

PRECISIONS = ('auto', 'fp32', 'bf16', 'fp16')
DTYPE_NAMES = {'bf16': 'bfloat16', 'fp16': 'float16'}  # the names mmengine's and our optim wrappers take


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), by torch's own CPU checks.

    Without it, bf16 is emulated and slower than fp32.
    """
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The precision a run uses, logged: ``auto`` is fp16 on CUDA, bf16 on a CPU that computes in
    bf16 natively and fp32 on other CPUs; any other choice is kept.

    Args:
        precision: One of :data:`PRECISIONS`.
        device: The device the model runs on, e.g. ``cpu`` or ``cuda:0``.
    """
    if precision not in PRECISIONS:
        raise UsageError(f'Unknown precision {precision!r}: choose one of {", ".join(PRECISIONS)}.')
    device_type = torch.device(device).type
    if precision == 'fp16' and device_type == 'cpu':
        raise UsageError('fp16 needs a GPU: on a CPU use bf16 (or auto, which picks it where the CPU computes it '
                         'natively).')
    if precision == 'auto':
        if device_type == 'cuda':
            precision, reason = 'fp16', 'CUDA device'
        elif cpu_supports_bf16():
            precision, reason = 'bf16', 'this CPU computes in bf16 natively (AVX512-BF16 or AMX)'
        else:
            precision, reason = 'fp32', 'this CPU has no native bf16 (no AVX512-BF16 or AMX)'
        print_log(f'Precision auto -> {precision}: {reason}.', logger='current')
    return precision


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward passes of a run: torch autocast to bf16 or fp16, or nothing
    for fp32.

    Args:
        precision: ``fp32``, ``bf16`` or ``fp16`` (resolve ``auto`` first with :func:`resolve_precision`).
        device: The device the model runs on.
    """
    if precision == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[DTYPE_NAMES[precision]])


def set_training_precision(cfg: Config, precision: str) -> None:
    """Train ``cfg`` in ``precision`` (resolved, not ``auto``): the optim wrapper that does it.

    fp32: ``OptimWrapper``. CUDA: mmengine's ``AmpOptimWrapper`` (fp16 or bf16, dynamic loss
    scaling). CPU bf16: :class:`backbones.engine.autocast.AutocastOptimWrapper` (no loss scaling needed).
    """
    optim_wrapper = cfg.optim_wrapper
    for amp_only in ('loss_scale', 'dtype', 'use_fsdp'):
        optim_wrapper.pop(amp_only, None)
    if precision == 'fp32':
        optim_wrapper.type = 'OptimWrapper'
    elif torch.cuda.is_available():
        optim_wrapper.update(type='AmpOptimWrapper', dtype=DTYPE_NAMES[precision])
    else:
        optim_wrapper.update(type='AutocastOptimWrapper', dtype='bfloat16')
    print_log(f'Training precision: {precision} ({optim_wrapper.type}).', logger='current')


def _floats_to_fp32(value: Any) -> Any:
    """``value`` with its floating-point tensors as fp32, inside data samples (changed in place) and the
    containers torch's pytree walks (lists, tuples, dicts, named tuples, ordered and default dicts)."""
    def to_fp32(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            return item.float() if item.is_floating_point() else item
        if isinstance(item, BaseDataElement):  # a leaf to pytree: its fields are walked here
            for key, field in list(item.items()):
                setattr(item, key, _floats_to_fp32(field))
        return item

    return tree_map(to_fp32, value)


def autocast_test_step(model: nn.Module, precision: str) -> None:
    """Run ``model.test_step`` (evaluation and inference) under autocast to ``precision`` (resolved),
    its predictions returned in fp32 as the evaluators and visualisers expect; fp32 changes nothing.
    """
    if precision == 'fp32':
        return
    test_step = model.test_step
    device = next(model.parameters()).device

    @functools.wraps(test_step)
    def autocast_step(data: Any) -> Any:
        with autocast(precision, device):
            predictions = test_step(data)
        return _floats_to_fp32(predictions)

    model.test_step = autocast_step


