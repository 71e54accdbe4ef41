"""Where a run computes: the default device, the model inside its wrappers, and the papers' GPU recipes
run on a machine without CUDA (gloo instead of NCCL, :class:`CPUDistributedDataParallel`)."""
import os

import torch
from mmengine.config import Config, ConfigDict
from mmengine.model import BaseTTAModel, MMDistributedDataParallel, is_model_wrapper, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS
from torch import nn

from ..errors import UsageError


def default_device() -> str:
    """The device the tools run on: ``cuda`` where available, else ``cpu``."""
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def unwrap_model(model: nn.Module) -> nn.Module:
    """The detector or segmentor inside ``model``'s model wrappers (DDP) and test-time augmentation models."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


class CPUDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel for CPU processes (gloo): no device ids, and SyncBN layers, which
    need CUDA, reverted to per-process BN."""

    def __init__(self, module: nn.Module, **kwargs) -> None:
        kwargs.pop('device_ids', None)
        super().__init__(module=revert_sync_batchnorm(module), device_ids=None, **kwargs)


def register_cpu_ddp() -> None:
    """Register :class:`CPUDistributedDataParallel` in mmengine's root ``MODEL_WRAPPERS``, once: a later call
    changes nothing.

    Raises:
        KeyError: Another class holds the name (mmengine's error).
    """
    if MODEL_WRAPPERS.module_dict.get(CPUDistributedDataParallel.__name__) is not CPUDistributedDataParallel:
        MODEL_WRAPPERS.register_module(module=CPUDistributedDataParallel)


def adapt_to_cpu(cfg: Config) -> None:
    """Make a GPU recipe runnable without CUDA; where CUDA is available, only register the wrapper.

    The optimizer, lr and schedule are unchanged, so results stay comparable; precision is set apart
    (:func:`set_training_precision`). :class:`CPUDistributedDataParallel` is registered
    (:func:`register_cpu_ddp`) on every machine, as a config that a CPU run wrote names it.
    """
    register_cpu_ddp()
    if torch.cuda.is_available():
        return
    cfg.setdefault('env_cfg', ConfigDict()).setdefault('dist_cfg', ConfigDict()).backend = 'gloo'
    cfg.model_wrapper_cfg = dict(type='CPUDistributedDataParallel', broadcast_buffers=False,
                                 find_unused_parameters=cfg.get('find_unused_parameters', False))
    if cfg.get('launcher', 'none') == 'pytorch' and not torch.distributed.is_initialized():
        # mmengine's init_dist calls torch.cuda.set_device first, which fails without a GPU.
        torch.distributed.init_process_group(backend='gloo', rank=int(os.environ['RANK']),
                                             world_size=int(os.environ['WORLD_SIZE']))


def resolve_device(name: str) -> torch.device:
    """The device a ``--device`` names.

    Raises:
        UsageError: Not a device name, or a device this machine does not have.
    """
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f'--device {name}: {error}') from None
    if device.type != 'cpu' and not (device.type == 'cuda' and torch.cuda.is_available()):
        raise UsageError(f'device {name} is not available: use cpu or, with a CUDA GPU, cuda.')
    return device
