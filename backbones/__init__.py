"""ConvNeXt V1/V2 for mmdet and mmseg: the backbone, checkpoint loading, the LR-decay constructor, and
FCMAE pre-training on unlabelled images.

Importing this package (``custom_imports=dict(imports=['backbones'])`` in a config) registers, in
mmengine's root registries, which the mmdet and mmseg registries both fall back to: ``ConvNeXt`` and
``FCMAE`` (``MODELS``), ``LRDecayOptimWrapperConstructor`` (``OPTIM_WRAPPER_CONSTRUCTORS``),
``AutocastOptimWrapper`` (``OPTIM_WRAPPERS``: bf16 training on CPUs), ``ConvNeXtDenseRunner``
(``RUNNERS``: resume through a schema), ``ConvNeXtDenseCheckpointHook``, ``RandomStateHook`` and
``FCMAEReconstructionHook`` (``HOOKS``), ``ImageFolderDataset`` (``DATASETS``), the transforms
``RandomResizedCrop`` and ``PackImageInputs`` (``TRANSFORMS``) and the file backend
``convnext_dense_atomic``. It then applies :func:`backbones.patches.apply_patches`, the one place that
changes mmengine and mmcv: checkpoints are read as data only, and mmcv's RoIAlign and nms get fp32 on CPUs.
"""
from .checkpoints import (CheckpointError, ConvertedWeights, convert_state_dict, load_backbone_weights,
                          load_local_checkpoint, read_checkpoint, read_checkpoint_file)
from .checkpoints.training import ConvNeXtDenseCheckpointHook, ConvNeXtDenseRunner
from .convnext import ConvNeXt
from .fcmae import FCMAE, FCMAEReconstructionHook
from .image_folder import ImageFolderDataset, PackImageInputs, RandomResizedCrop
from .layer_decay import LRDecayOptimWrapperConstructor
from .patches import apply_patches
from .precision import AutocastOptimWrapper
from .randomness import RandomStateHook

apply_patches()

__all__ = ['AutocastOptimWrapper', 'CheckpointError', 'ConvNeXt', 'ConvNeXtDenseCheckpointHook', 'ConvNeXtDenseRunner',
           'ConvertedWeights', 'convert_state_dict', 'FCMAE', 'FCMAEReconstructionHook', 'ImageFolderDataset',
           'load_backbone_weights', 'load_local_checkpoint', 'LRDecayOptimWrapperConstructor', 'PackImageInputs',
           'RandomResizedCrop', 'RandomStateHook', 'read_checkpoint', 'read_checkpoint_file']
