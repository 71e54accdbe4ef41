"""ConvNeXt V1/V2 for mmdet and mmseg: the backbone, FCMAE pre-training, checkpoint loading, the LR-decay
constructor, and what the configs name around them. ``docs/architecture.md`` draws the rooms.

Importing this package (``custom_imports=dict(imports=['backbones'])`` in a config) registers, in
mmengine's root registries, which the mmdet and mmseg registries both fall back to:

* ``MODELS``: ``ConvNeXt`` (:mod:`.models.convnext`), ``FCMAE`` (:mod:`.models.fcmae`);
* ``OPTIM_WRAPPER_CONSTRUCTORS``: ``LRDecayOptimWrapperConstructor``; ``OPTIM_WRAPPERS``:
  ``AutocastOptimWrapper`` (:mod:`.engine`);
* ``HOOKS``: ``RandomStateHook``, ``FCMAEReconstructionHook`` (:mod:`.engine`),
  ``ConvNeXtDenseCheckpointHook``; ``RUNNERS``: ``ConvNeXtDenseRunner`` (:mod:`.engine.runner`);
* ``DATASETS``: ``ImageFolderDataset``, and its transforms under the scope ``convnext_dense``
  (:mod:`.datasets.image_folder`), with ``LoadImageOrSkip`` (:mod:`.datasets.skip_unreadable`); the file
  backend ``convnext_dense_atomic`` (:mod:`.checkpoints.writing`).

It then calls :func:`backbones.patches.apply_patches`, the one place that changes mmengine and mmcv.
The tools' own code (:mod:`backbones.runtime`) is not imported here: a config never needs it.
"""
from .checkpoints import (
    CheckpointError,
    ConvertedWeights,
    convert_state_dict,
    load_backbone_weights,
    load_local_checkpoint,
    open_checkpoint,
    read_checkpoint_file,
)
from .datasets.image_folder import ImageFolderDataset
from .datasets.skip_unreadable import LoadImageOrSkip
from .engine.autocast import AutocastOptimWrapper
from .engine.layer_decay import LRDecayOptimWrapperConstructor
from .engine.randomness import RandomStateHook
from .engine.reconstruction_hook import FCMAEReconstructionHook
from .engine.runner import ConvNeXtDenseCheckpointHook, ConvNeXtDenseRunner
from .models.convnext import ConvNeXt
from .models.fcmae import FCMAE
from .patches import apply_patches

apply_patches()

__all__ = ['AutocastOptimWrapper', 'CheckpointError', 'ConvNeXt', 'ConvNeXtDenseCheckpointHook', 'ConvNeXtDenseRunner',
           'ConvertedWeights', 'convert_state_dict', 'FCMAE', 'FCMAEReconstructionHook', 'ImageFolderDataset',
           'LoadImageOrSkip',
           'load_backbone_weights', 'load_local_checkpoint', 'LRDecayOptimWrapperConstructor', 'RandomStateHook',
           'open_checkpoint', 'read_checkpoint_file']
