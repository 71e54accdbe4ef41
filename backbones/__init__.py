"""ConvNeXt V1/V2 for mmdet and mmseg.

Importing this package makes checkpoints written by mmengine's Runner loadable with
``weights_only=True`` (see :mod:`backbones.safe_load`).
"""
from .safe_load import CheckpointError, load_local_checkpoint

__all__ = ['CheckpointError', 'load_local_checkpoint']
