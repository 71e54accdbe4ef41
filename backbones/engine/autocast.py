"""Mixed precision on CPUs: bf16 autocast for training and inference, mmcv's ops kept in fp32.

mmengine's ``AmpOptimWrapper`` refuses to be built without a GPU, so a CPU runs the papers' AMP
recipes in fp32. :class:`AutocastOptimWrapper` is the CPU counterpart: the forward pass and loss
under ``torch.autocast`` to bf16, the backward pass and the update in the parameters' fp32, and no
loss scaling (bf16 has fp32's exponent range, so gradients do not underflow as in fp16).

mmcv 2.1's compiled CPU kernels of ``RoIAlign`` and ``nms`` accept fp32 only; :mod:`backbones.patches`
feeds them fp32 on CPUs, so that bf16 runs reach them.
"""
import contextlib
from collections.abc import Iterator

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn

from ..errors import UsageError

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
            raise UsageError(f"AutocastOptimWrapper dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
        super().__init__(**kwargs)
        self.dtype = DTYPES[dtype]

    @contextlib.contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        """mmengine's context of a training step (gradient accumulation), with autocast added."""
        device_type = next(model.parameters()).device.type
        with super().optim_context(model), torch.autocast(device_type=device_type, dtype=self.dtype):
            yield
