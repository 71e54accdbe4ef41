"""Mixed precision on CPUs: bf16 autocast for training and inference, mmcv's ops kept in fp32.

mmengine's ``AmpOptimWrapper`` refuses to be built without a GPU, so a CPU runs the papers' AMP
recipes in fp32. :class:`AutocastOptimWrapper` is the CPU counterpart: the forward pass and loss
under ``torch.autocast`` to bf16, the backward pass and the update in the parameters' fp32, and no
loss scaling (bf16 has fp32's exponent range, so gradients do not underflow as in fp16).

mmcv 2.1's compiled CPU kernels of ``RoIAlign`` and ``nms`` accept fp32 only (a bf16 input raises
``"ROIAlign_forward" not implemented for 'BFloat16'``). Here, once, both are wrapped: on a CPU their
bf16 inputs go in as fp32, and RoIAlign's features come back in bf16, as mmcv's CUDA kernels return
fp16 features under AMP (mmdet's RoI extractor writes them into a tensor of the input's dtype). fp32
inputs and CUDA tensors pass through unchanged.
"""
import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from mmcv.ops.nms import NMSop
from mmcv.ops.roi_align import RoIAlign
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn

DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16}


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """An ``OptimWrapper`` whose forward passes run under ``torch.autocast`` on the model's device.

    Args:
        dtype: ``'bfloat16'`` (any device) or ``'float16'`` (CUDA only; there, prefer mmengine's
            ``AmpOptimWrapper``, which scales the loss).
        **kwargs: As for ``OptimWrapper`` (optimizer, clip_grad, accumulative_counts).
    """

    def __init__(self, dtype: str = 'bfloat16', **kwargs) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"AutocastOptimWrapper dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
        super().__init__(**kwargs)
        self.dtype = DTYPES[dtype]

    @contextlib.contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        """mmengine's context of a training step (gradient accumulation), with autocast added."""
        device_type = next(model.parameters()).device.type
        with super().optim_context(model), torch.autocast(device_type=device_type, dtype=self.dtype):
            yield


def _in_fp32_on_cpu(forward: Callable) -> Callable:
    """Wrap ``forward(owner, a, b, *args)`` of a compiled op: on a CPU, bf16/fp16 tensors ``a`` and
    ``b`` go in as fp32 and a floating result comes back in ``a``'s dtype (as the CUDA kernels give
    under AMP). The casts are ordinary tensor ops, so gradients flow through them."""

    @functools.wraps(forward)
    def wrapped(owner: Any, a: torch.Tensor, b: torch.Tensor, *args, **kwargs) -> Any:
        if a.device.type != 'cpu' or a.dtype == b.dtype == torch.float32:
            return forward(owner, a, b, *args, **kwargs)
        out = forward(owner, a.float(), b.float(), *args, **kwargs)
        return out.to(a.dtype) if out.is_floating_point() else out

    return wrapped


RoIAlign.forward = _in_fp32_on_cpu(RoIAlign.forward)
NMSop.forward = staticmethod(_in_fp32_on_cpu(NMSop.forward))
