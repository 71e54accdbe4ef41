"""Fast inference of our models in the tools (``tools/test.py``, ``tools/infer.py``, the benchmark).

:func:`prepare_inference` is what the tools do to a built model before its first ``test_step``:

* autocast to the run's precision (:func:`backbones.runtime.precision.autocast_test_step`);
* :func:`roi_align_on_all_cores`: mmcv's CPU kernel of ``RoIAlign`` runs on one core. On a CPU each
  ``RoIAlign`` of the model runs torchvision's kernel of the same operation (mmcv's own
  ``use_torchvision`` path; the numbers are the same), on ``torch.get_num_threads()`` slices of the
  RoIs at once: torchvision's op releases the GIL, so the slices run in parallel. It also makes the
  features contiguous on every device, as mmcv's kernels (CPU and CUDA) read them as contiguous NCHW
  whatever their strides; that is what lets :func:`to_channels_last` reach the necks and heads;
* optionally :func:`to_channels_last` and :func:`compile_backbone`.

These change our model only, never mmcv's classes, so peers built in the same process (the
benchmark's ``--compare``) run the way their own tools run them.
"""
import types
from concurrent.futures import ThreadPoolExecutor

import torch
import torchvision
from mmcv.ops import RoIAlign
from torch import nn
from torch._inductor import cpp_builder
from torch._inductor.exc import InvalidCxxCompiler

from ..errors import UsageError
from ..patches import enable_inductor_freezing
from .device import unwrap_model
from .precision import autocast_test_step

__all__ = ['compile_backbone', 'feed_channels_last', 'prepare_inference', 'roi_align_on_all_cores', 'to_channels_last']


def _parallel_roi_align(self: RoIAlign, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """``RoIAlign.forward`` of :func:`roi_align_on_all_cores`."""
    features = features.contiguous()
    if features.device.type != 'cpu' or self.pool_mode != 'avg':
        return RoIAlign.forward(self, features, rois)
    slices = min(torch.get_num_threads(), len(rois))

    def pool(part: torch.Tensor) -> torch.Tensor:
        return torchvision.ops.roi_align(fp32_features, part, self.output_size, self.spatial_scale,
                                         self.sampling_ratio, self.aligned)

    fp32_features, fp32_rois = features.float(), rois.float()  # torchvision's CPU kernel has no bf16
    if slices <= 1:
        pooled = pool(fp32_rois)
    else:
        with ThreadPoolExecutor(slices) as threads:
            pooled = torch.cat(list(threads.map(pool, fp32_rois.chunk(slices))))
    return pooled.to(features.dtype)


def roi_align_on_all_cores(model: nn.Module) -> int:
    """Give every mmcv ``RoIAlign`` of ``model`` the parallel CPU forward described above.

    Returns:
        How many ``RoIAlign`` modules were changed (0 for a segmentor).
    """
    layers = [module for module in model.modules() if isinstance(module, RoIAlign)]
    for layer in layers:
        layer.forward = types.MethodType(_parallel_roi_align, layer)
    return len(layers)


def _channels_last_input(_: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def feed_channels_last(module: nn.Module) -> None:
    """Give ``module`` channels_last weights and, through a forward pre-hook, a channels_last first input.

    The parameters stay the same objects (their data is converted), so an optimizer holds them whether
    it is built before or after. For a backbone this is safe in training too: it returns contiguous NCHW.
    """
    module.to(memory_format=torch.channels_last)
    module.register_forward_pre_hook(_channels_last_input)


def to_channels_last(model: nn.Module) -> None:
    """Run all of ``model``'s convolutions in channels_last (NHWC), which oneDNN computes faster on CPUs.

    The backbone is fed a channels_last image and every 4-D weight becomes channels_last; the backbone
    still returns contiguous NCHW features, and the convolutions after it take channels_last again from
    their weights. Detectors need :func:`roi_align_on_all_cores` with it (their RoI features must be
    contiguous), which is why this is for inference only.
    """
    feed_channels_last(model.backbone)
    model.to(memory_format=torch.channels_last)


def compile_backbone(model: nn.Module) -> None:
    """``torch.compile`` the backbone in place (its state-dict keys unchanged), weights frozen.

    Inductor then folds the weights as constants and fuses the elementwise work of each block into its
    matrix products. Freezing is inductor's process-wide ``freezing`` setting, set by
    :func:`backbones.patches.enable_inductor_freezing` (patch 6 there says why not the per-call option), so
    this is for processes that only infer: frozen weights do not follow later updates. The first
    image of each new size compiles (tens of seconds on a small CPU); after the second size the graph is
    compiled for dynamic sizes. Pays on long evaluations only.

    Raises:
        UsageError: On a CPU without a C++ compiler, which inductor needs to build its kernels.
    """
    if next(model.backbone.parameters()).device.type == 'cpu':
        try:
            cpp_builder.get_cpp_compiler()
        except InvalidCxxCompiler:
            raise UsageError('--compile on a CPU needs a C++ compiler (torch.compile builds its kernels with it): '
                             'install g++ or set CXX, or leave out --compile.') from None
    enable_inductor_freezing()
    model.backbone.compile()


def prepare_inference(model: nn.Module, precision: str, channels_last: bool = False, compile: bool = False) -> None:
    """Everything the tools do to ``model`` before inference (see the module's docstring).

    Args:
        model: A built mmdet detector or mmseg segmentor with a ``backbone``, or a model wrapper or
            TTA model around one (``test_step`` is wrapped on the outer model).
        precision: ``fp32``, ``bf16`` or ``fp16`` (resolved, not ``auto``).
        channels_last: :func:`to_channels_last`.
        compile: :func:`compile_backbone`.

    Raises:
        UsageError: ``compile`` on a CPU without a C++ compiler.
    """
    autocast_test_step(model, precision)
    roi_align_on_all_cores(model)
    inner = unwrap_model(model)
    if channels_last:
        to_channels_last(inner)
    if compile:
        compile_backbone(inner)
