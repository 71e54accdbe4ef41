"""Config preparation shared by the tools (train, test, infer; mmdet and mmseg alike).

* :func:`load_config`: read a config, apply ``--cfg-options`` and set the launcher and work dir.
* :func:`set_data_root`: point every dataloader and evaluator at another dataset folder.
* :func:`check_datasets`: a one-line error naming the missing file and the README section.
* :func:`enable_tta`: ``--tta``, the config's test-time augmentation model and pipeline;
  :func:`unwrap_model`: the model inside it and inside DDP.
* :func:`resolve_precision`, :func:`autocast`, :func:`set_training_precision` and
  :func:`autocast_test_step`: ``--precision {auto,fp32,bf16,fp16}`` of the tools. The papers'
  AMP recipes train in bf16 on CPUs that compute it natively (mmengine's ``AmpOptimWrapper`` needs a
  GPU; :class:`backbones.precision.AutocastOptimWrapper` does the CPU's part), in fp32 on others.
* :func:`adapt_to_cpu`: run the paper's GPU recipes on a machine without CUDA: gloo instead of NCCL,
  and :class:`CPUDistributedDataParallel` for multi-process CPU training.
"""
import contextlib
import functools
import os
import os.path as osp
from typing import Any

import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, MMDistributedDataParallel, is_model_wrapper, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS
from mmengine.structures import BaseDataElement
from torch import nn

__all__ = ['DictAction', 'DatasetNotFoundError', 'PRECISIONS', 'adapt_to_cpu', 'autocast', 'autocast_test_step',
           'check_datasets', 'cpu_supports_bf16', 'default_device', 'enable_tta',
           'load_config', 'resolve_precision', 'set_data_root', 'set_training_precision', 'unwrap_model']

PRECISIONS = ('auto', 'fp32', 'bf16', 'fp16')
AUTOCAST_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
README_SECTIONS = {'CocoDataset': 'Datasets: COCO', 'ADE20KDataset': 'Datasets: ADE20K',
                   'ImageFolderDataset': 'Pre-train on your own images'}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file or folder that a config needs does not exist."""


def load_config(path: str, cfg_options: dict | None = None, launcher: str = 'none',
                work_dir: str | None = None) -> Config:
    """Read a config for a run of the tools.

    Args:
        path: The config file.
        cfg_options: ``--cfg-options key=value`` pairs, merged into the config.
        launcher: The job launcher (``none``, ``pytorch``, ``slurm`` or ``mpi``).
        work_dir: Folder for checkpoints and logs; by default the config's own ``work_dir``, else
            ``work_dirs/<config name>``.
    """
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get('work_dir') or osp.join('work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


def _dataset_cfgs(dataset: ConfigDict) -> list[ConfigDict]:
    """The leaf dataset configs inside wrappers such as RepeatDataset and ConcatDataset."""
    if 'datasets' in dataset:
        return [leaf for child in dataset.datasets for leaf in _dataset_cfgs(child)]
    if 'dataset' in dataset:
        return _dataset_cfgs(dataset.dataset)
    return [dataset]


def _evaluator_cfgs(cfg: Config) -> list[ConfigDict]:
    evaluators = []
    for key in ('val_evaluator', 'test_evaluator'):
        evaluator = cfg.get(key)
        evaluators += evaluator if isinstance(evaluator, list) else [evaluator] if evaluator else []
    return evaluators


def set_data_root(cfg: Config, data_root: str) -> None:
    """Use ``data_root`` for every dataset and for evaluator annotation files under the old roots."""
    old_roots = set()
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        for dataset in _dataset_cfgs(loader.dataset) if loader else []:
            old_roots.add(dataset.get('data_root', ''))
            dataset.data_root = data_root
    rewritten = set()
    for evaluator in _evaluator_cfgs(cfg):
        ann_file = str(evaluator.get('ann_file', ''))
        old_root = next((root for root in old_roots if root and ann_file.startswith(root)), None)
        if old_root and id(evaluator) not in rewritten:
            evaluator.ann_file = osp.join(data_root, ann_file[len(old_root):].lstrip('/'))
            rewritten.add(id(evaluator))
    cfg.data_root = data_root


def check_datasets(cfg: Config, splits: list[str]) -> None:
    """Check that the files and folders of the ``splits`` dataloaders exist.

    Raises:
        DatasetNotFoundError: The first missing path, the dataset and the README section to read.
    """
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        for dataset in _dataset_cfgs(loader.dataset) if loader else []:
            root = dataset.get('data_root', '')
            paths = [dataset.get('ann_file') or None, *dict(dataset.get('data_prefix', {})).values()]
            for path in (p for p in paths if p is not None):  # a prefix '' is the data root itself
                full = osp.join(root, path)
                if full and not osp.exists(full):
                    section = README_SECTIONS.get(dataset.get('type'), 'Datasets')
                    raise DatasetNotFoundError(
                        f"{dataset.get('type', 'Dataset')} {split} split not found: {full} does not exist. Prepare "
                        f"the data as README section '{section}' describes, or point --data-root at it.")
    for evaluator in _evaluator_cfgs(cfg):
        if evaluator.get('ann_file') and not osp.exists(evaluator.ann_file):
            raise DatasetNotFoundError(f"Annotation file of the {evaluator.type} evaluator not found: "
                                       f"{evaluator.ann_file}. Prepare the data as the README describes, or point "
                                       '--data-root at it.')


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
        raise ValueError(f'Unknown precision {precision!r}: choose one of {", ".join(PRECISIONS)}.')
    device_type = torch.device(device).type
    if precision == 'fp16' and device_type == 'cpu':
        raise ValueError('fp16 needs a GPU: on a CPU use bf16 (or auto, which picks it where the CPU computes it '
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
    return torch.autocast(device_type=torch.device(device).type, dtype=AUTOCAST_DTYPES[precision])


def default_device() -> str:
    """The device the tools run on: ``cuda`` where available, else ``cpu``."""
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def set_training_precision(cfg: Config, precision: str) -> None:
    """Train ``cfg`` in ``precision`` (resolved, not ``auto``): the optim wrapper that does it.

    fp32: ``OptimWrapper``. CUDA: mmengine's ``AmpOptimWrapper`` (fp16 or bf16, dynamic loss
    scaling). CPU bf16: :class:`backbones.precision.AutocastOptimWrapper` (no loss scaling needed).
    """
    optim_wrapper = cfg.optim_wrapper
    for amp_only in ('loss_scale', 'dtype', 'use_fsdp'):
        optim_wrapper.pop(amp_only, None)
    if precision == 'fp32':
        optim_wrapper.type = 'OptimWrapper'
    elif torch.cuda.is_available():
        optim_wrapper.update(type='AmpOptimWrapper', dtype={'fp16': 'float16', 'bf16': 'bfloat16'}[precision])
    else:
        optim_wrapper.update(type='AutocastOptimWrapper', dtype='bfloat16')
    print_log(f'Training precision: {precision} ({optim_wrapper.type}).', logger='current')


def _floats_to_fp32(value: Any) -> Any:
    """``value`` with its bf16/fp16 tensors as fp32, inside data samples, lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, BaseDataElement):
        for key, item in list(value.items()):
            setattr(value, key, _floats_to_fp32(item))
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_floats_to_fp32(item) for item in value)
    if isinstance(value, dict):
        return {key: _floats_to_fp32(item) for key, item in value.items()}
    return value


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


def unwrap_model(model: nn.Module) -> nn.Module:
    """The detector or segmentor inside ``model``'s model wrappers (DDP) and test-time augmentation models."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def enable_tta(cfg: Config) -> None:
    """Swap in the config's test-time augmentation: ``tta_model`` around ``model``, ``tta_pipeline`` as the
    test pipeline (segmentation: scales 0.5 to 1.75 with flip).

    Raises:
        ValueError: The config has no ``tta_model`` or no ``tta_pipeline``.
    """
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise ValueError(f'--tta needs tta_model and tta_pipeline in the config; {cfg.filename} has none.')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel for CPU processes (gloo): no device ids, and SyncBN layers, which
    need CUDA, reverted to per-process BN."""

    def __init__(self, module: nn.Module, **kwargs) -> None:
        kwargs.pop('device_ids', None)
        super().__init__(module=revert_sync_batchnorm(module), device_ids=None, **kwargs)


def adapt_to_cpu(cfg: Config) -> None:
    """Make a GPU recipe runnable without CUDA; a no-op where CUDA is available.

    The optimizer, lr and schedule are unchanged, so results stay comparable; precision is set apart
    (:func:`set_training_precision`).
    """
    if torch.cuda.is_available():
        return
    cfg.setdefault('env_cfg', ConfigDict()).setdefault('dist_cfg', ConfigDict()).backend = 'gloo'
    cfg.model_wrapper_cfg = dict(type='CPUDistributedDataParallel', broadcast_buffers=False,
                                 find_unused_parameters=cfg.get('find_unused_parameters', False))
    if cfg.get('launcher', 'none') == 'pytorch' and not torch.distributed.is_initialized():
        # mmengine's init_dist calls torch.cuda.set_device first, which fails without a GPU.
        torch.distributed.init_process_group(backend='gloo', rank=int(os.environ['RANK']),
                                             world_size=int(os.environ['WORLD_SIZE']))
