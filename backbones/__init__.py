"""ConvNeXt V1/V2 for mmdet and mmseg: the backbone, checkpoint loading and the LR-decay constructor.

Importing this package (``custom_imports=dict(imports=['backbones'])`` in a config) registers
``ConvNeXt`` in mmengine's root ``MODELS`` registry and ``LRDecayOptimWrapperConstructor`` in its
root ``OPTIM_WRAPPER_CONSTRUCTORS``, which the mmdet and mmseg registries both fall back to, and
routes mmengine's loading of local checkpoints through a loader that runs no code from the file
(:mod:`backbones.checkpoint_io`).
"""
from .checkpoint import ConvertedWeights, convert_state_dict, load_backbone_weights, read_checkpoint
from .convnext import ConvNeXt
from .layer_decay import LRDecayOptimWrapperConstructor
from .checkpoint_io import CheckpointError, load_local_checkpoint

__all__ = ['CheckpointError', 'ConvNeXt', 'ConvertedWeights', 'convert_state_dict', 'load_backbone_weights',
           'load_local_checkpoint', 'LRDecayOptimWrapperConstructor', 'read_checkpoint']
