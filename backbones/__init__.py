"""ConvNeXt V1/V2 for mmdet and mmseg: the backbone, checkpoint loading and the LR-decay constructor.

Importing this package (``custom_imports=dict(imports=['backbones'])`` in a config) registers, in
mmengine's root registries, which the mmdet and mmseg registries both fall back to: ``ConvNeXt``
(``MODELS``), ``LRDecayOptimWrapperConstructor`` (``OPTIM_WRAPPER_CONSTRUCTORS``) and
``RandomStateHook`` (``HOOKS``: a resumed run continues the original's random numbers) and
``AutocastOptimWrapper`` (``OPTIM_WRAPPERS``: bf16 training on CPUs). It also routes mmengine's
loading of local checkpoints through a loader that runs no code from the file
(:mod:`backbones.checkpoint_io`), and keeps mmcv's RoIAlign and nms in fp32 under CPU autocast
(:mod:`backbones.precision`).
"""
from .checkpoint import ConvertedWeights, convert_state_dict, load_backbone_weights, read_checkpoint
from .convnext import ConvNeXt
from .layer_decay import LRDecayOptimWrapperConstructor
from .checkpoint_io import CheckpointError, load_local_checkpoint
from .precision import AutocastOptimWrapper
from .randomness import RandomStateHook

__all__ = ['AutocastOptimWrapper', 'CheckpointError', 'ConvNeXt', 'ConvertedWeights', 'convert_state_dict', 'load_backbone_weights',
           'load_local_checkpoint', 'LRDecayOptimWrapperConstructor', 'RandomStateHook', 'read_checkpoint']
