"""Every change this project makes to mmengine and mmcv, applied by :func:`apply_patches`.

``import backbones`` calls :func:`apply_patches` once; nothing else in the project changes another
library's globals. What each patch does, and why no plugin point serves instead:

1. ``CheckpointLoader`` scheme ``''`` (local paths) -> :func:`backbones.checkpoints.loading.load_local_checkpoint`.
   mmengine's own loader unpickles with ``torch.load``; ours reads data only. mmengine has no
   per-config choice of loader: ``init_cfg``, ``load_from`` and every ``load_checkpoint`` go through
   this registry.
2. ``mmengine.runner.checkpoint.load_url`` -> :func:`backbones.checkpoints.loading.load_url_checkpoint`.
   mmengine's ``http(s)://``, ``torchvision://``, ``open-mmlab://`` and ``mmcls://`` loaders all call
   this name, which is torch hub's ``load_state_dict_from_url`` (unpickles with ``weights_only=False``, no
   timeout, no size cap, cache keyed by file name alone).
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

Each is pinned by a test in ``tests/test_backbones/test_patches.py`` that fails without it.
"""
import functools
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from mmcv.ops.nms import NMSop
from mmcv.ops.roi_align import RoIAlign
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from .checkpoints.loading import load_local_checkpoint, load_url_checkpoint, refuse_remote_checkpoint

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
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)
    mmengine_checkpoint.load_url = load_url_checkpoint
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
