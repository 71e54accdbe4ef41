"""ConvNeXt V1/V2 for mmdet and mmseg: the backbone, checkpoint loading, the LR-decay constructor, and
FCMAE pre-training on unlabelled images.

Importing this package (``custom_imports=dict(imports=['backbones'])`` in a config) registers, in
mmengine's root registries, which the mmdet and mmseg registries both fall back to: ``ConvNeXt`` and
``FCMAE`` (``MODELS``), ``LRDecayOptimWrapperConstructor`` (``OPTIM_WRAPPER_CONSTRUCTORS``),
``AutocastOptimWrapper`` (``OPTIM_WRAPPERS``: bf16 training on CPUs), ``RandomStateHook`` (``HOOKS``:
a resumed run continues the original's random numbers), ``FCMAEReconstructionHook`` (``HOOKS``),
``ImageFolderDataset`` (``DATASETS``), and the transforms ``RandomResizedCrop`` and ``PackImageInputs``
(``TRANSFORMS``). It also routes mmengine's loading of local checkpoints through a loader that runs
no code from the file (:mod:`backbones.checkpoint_io`), and feeds mmcv's RoIAlign and nms fp32 on CPUs
(:mod:`backbones.precision`).
"""
from .checkpoint import ConvertedWeights, convert_state_dict, load_backbone_weights, read_checkpoint
from .convnext import ConvNeXt
from .fcmae import FCMAE, FCMAEReconstructionHook
from .image_folder import ImageFolderDataset, PackImageInputs, RandomResizedCrop
from .layer_decay import LRDecayOptimWrapperConstructor
from .checkpoint_io import CheckpointError, load_local_checkpoint
from .precision import AutocastOptimWrapper
from .randomness import RandomStateHook

__all__ = ['AutocastOptimWrapper', 'CheckpointError', 'ConvNeXt', 'ConvertedWeights', 'convert_state_dict', 'FCMAE',
           'FCMAEReconstructionHook', 'ImageFolderDataset', 'load_backbone_weights', 'load_local_checkpoint',
           'LRDecayOptimWrapperConstructor', 'PackImageInputs', 'RandomResizedCrop', 'RandomStateHook',
           'read_checkpoint']
