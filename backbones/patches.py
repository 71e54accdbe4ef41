"""Every change this project makes to another library's globals: mmengine's and mmcv's by :func:`apply_patches`,
the others on demand by the function named with each.

``import backbones`` calls :func:`apply_patches` once; nothing else in the project changes another
library's globals. What each patch does, and why no plugin point serves instead:

1. ``CheckpointLoader`` schemes -> :mod:`backbones.checkpoints.loading`'s loaders, one per scheme they serve:
   ``''`` (local paths and transformers model folders) -> ``load_from_local``, ``hf://`` -> ``load_from_hf``,
   ``http://`` and ``https://`` -> ``load_from_http`` (mmengine's log names them: "Loads checkpoint by local /
   hf / http backend"). mmengine's own loaders unpickle with ``torch.load`` and know neither transformers
   folders nor other ConvNeXt layouts; ours read data only and return the state dict in the layout the model
   takes, so mmengine's ``load_checkpoint``, mmdet's ``init_detector``, mmseg's ``init_model`` and the
   inferencers load what the tools load. mmengine has no per-config choice of loader: ``init_cfg``,
   ``load_from`` and every ``load_checkpoint`` go through this registry.
2. ``mmengine.runner.checkpoint.load_url`` -> :func:`backbones.checkpoints.loading.load_from_url`.
   mmengine's ``torchvision://``, ``open-mmlab://`` and ``mmcls://`` loaders call this name, which is torch
   hub's ``load_state_dict_from_url`` (unpickles with ``weights_only=False``, no timeout, no size cap, cache
   keyed by file name alone).
3. ``CheckpointLoader`` schemes ``pavi://``, ``s3://``, ``petrel://`` ->
   :func:`backbones.checkpoints.loading.refuse_remote_checkpoint`: mmengine reads them with ``torch.load``.
4. ``mmcv.ops.RoIAlign.forward`` and ``mmcv.ops.nms.NMSop.forward``: on a CPU, bf16/fp16 inputs go in as
   fp32 and a floating result comes back in the input's dtype. mmcv 2.1's CPU kernels accept fp32 only
   (``"ROIAlign_forward" not implemented for 'BFloat16'``), and mmdet calls them from deep inside its
   heads, so bf16 training and inference on CPUs (:mod:`backbones.engine.autocast`) need every instance
   changed; fp32 inputs and CUDA tensors pass through unchanged.

5. On demand only, by :func:`import_mmpretrain` (the peers: ``tests/test_configs_peers.py``, the benchmark's
   ``--compare``): ``.venv/peers/mmpretrain`` goes on ``sys.path`` and ``mmpretrain.utils.dependency.
   WITH_MULTIMODAL`` is set to False before ``mmpretrain.models`` is imported. mmpretrain lives outside
   ``.venv`` (``requirements/peers/mmpretrain.txt`` says why); its multimodal models subclass transformers
   classes that transformers 5 no longer has, and the peers need none of them.
6. On demand only, by :func:`enable_inductor_freezing` (``--compile`` of ``tools/test.py``, ``tools/infer.py``
   and the benchmark, through :func:`backbones.runtime.inference.compile_backbone`, just before the backbone is
   compiled): ``torch._inductor.config.freezing`` is set to True, so inductor folds the weights as constants.
   The per-call option ``torch.compile(options={'freezing': True})`` does the same for one model but measured
   831 ms per ConvNeXt-T call at 800x1344 in bf16, against 672 ms with the process-wide setting; the setting
   then holds for every later compilation in the process, which is why only processes that infer set it
   (frozen weights do not follow later updates).
7. On demand only, by :func:`quiet_ffmpeg_logs` (``tools/infer.py``, before it opens any video):
   ``OPENCV_FFMPEG_LOGLEVEL`` in ``os.environ`` is set to ``-8`` (quiet), unless the user set it. OpenCV's
   FFmpeg backend reads it and prints its own messages about a file it cannot read on stderr, which would add
   lines to the tool's one warning line per unreadable input; OpenCV has no per-call setting.

Each is pinned by a test in ``tests/test_backbones/test_patches.py`` that fails without it.

New names in mmengine's registries take nothing over, so they are not patches: ``import backbones`` registers
what ``backbones/__init__.py`` lists, and two functions of the tools register the classes that the configs they
write name, when they write them: :func:`backbones.deploy.onnx_runtime.register_onnx_models` (called by
:func:`~backbones.deploy.onnx_runtime.onnx_model_cfg`) and :func:`backbones.runtime.device.register_cpu_ddp`
(called by :func:`~backbones.runtime.device.adapt_to_cpu`). No module of ``backbones`` changes a global, registers
a name or reads a file other than its own code when it is imported, except as this docstring says.
"""
import functools
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch._inductor.config as inductor_config
from mmcv.ops.nms import NMSop
from mmcv.ops.roi_align import RoIAlign
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from .checkpoints.loading import (
    load_from_hf,
    load_from_http,
    load_from_local,
    load_from_url,
    refuse_remote_checkpoint,
)

REMOTE_PREFIXES = ('pavi://', 's3://', 'petrel://')
PEERS_VARIABLE = 'CONVNEXT_DENSE_PEERS'
_applied = False


def in_fp32_on_cpu(forward: Callable) -> Callable:
    """Wrap ``forward(owner, a, b, *args)`` of a compiled op: on a CPU, bf16/fp16 tensors ``a`` and ``b`` go
    in as fp32 and a floating result comes back in ``a``'s dtype (as the CUDA kernels give under AMP). The
    casts are ordinary tensor ops, so gradients flow through them."""

    @functools.wraps(forward)
    def wrapped(owner: Any, a: torch.Tensor, b: torch.Tensor, *args, **kwargs) -> Any:
        if a.device.type != 'cpu' or a.dtype == b.dtype == torch.float32:
            return forward(owner, a, b, *args, **kwargs)
        out = forward(owner, a.float(), b.float(), *args, **kwargs)
        return out.to(a.dtype) if out.is_floating_point() else out

    wrapped.convnext_dense_patch = True
    return wrapped


def apply_patches() -> None:
    """Apply the patches of the module docstring, once per process."""
    global _applied
    if _applied:
        return
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
    CheckpointLoader.register_scheme(prefixes='hf://', loader=load_from_hf, force=True)
    CheckpointLoader.register_scheme(prefixes=['http://', 'https://'], loader=load_from_http, force=True)
    mmengine_checkpoint.load_url = load_from_url
    CheckpointLoader.register_scheme(prefixes=REMOTE_PREFIXES, loader=refuse_remote_checkpoint, force=True)
    RoIAlign.forward = in_fp32_on_cpu(RoIAlign.forward)
    NMSop.forward = staticmethod(in_fp32_on_cpu(NMSop.forward))
    _applied = True


def peers_dir() -> str:
    """The folder of the peers' own installs (``$CONVNEXT_DENSE_PEERS``, by default ``.venv/peers``)."""
    return os.environ.get(PEERS_VARIABLE) or os.path.join(sys.prefix, 'peers')


def import_mmpretrain() -> None:
    """Make mmpretrain importable for the peers and import ``mmpretrain.models`` (patch 5 of the docstring).

    Raises:
        ImportError: mmpretrain is neither importable nor in :func:`peers_dir`, with what to run.
    """
    folder = os.path.join(peers_dir(), 'mmpretrain')
    if importlib.util.find_spec('mmpretrain') is None and os.path.isdir(folder):
        sys.path.append(folder)
    if importlib.util.find_spec('mmpretrain') is None:
        raise ImportError(f'The peers need mmpretrain, which is not in {folder}: run make install '
                          f'(or set {PEERS_VARIABLE} to the folder that holds mmpretrain/).')
    import mmpretrain.utils.dependency as dependency
    dependency.WITH_MULTIMODAL = False
    import mmpretrain.models  # noqa: F401  registers mmpretrain.ConvNeXt


def enable_inductor_freezing() -> None:
    """Make inductor freeze the weights of every later compilation in this process (patch 6 of the docstring)."""
    inductor_config.freezing = True


def quiet_ffmpeg_logs() -> None:
    """Silence OpenCV's FFmpeg messages, unless the user set their level (patch 7 of the docstring)."""
    os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '-8')
