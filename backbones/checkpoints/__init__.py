"""Checkpoints: reading files as data, the released formats, loading into models, and training's checkpoints.

Every module here reports a file it cannot use as :class:`backbones.errors.CheckpointError`, in one line.

* :mod:`.pickle_data`: a pickle interpreter that builds data and nothing else.
* :mod:`.reader`: torch (zip and legacy) and safetensors files as data (:func:`read_checkpoint_file`).
* :mod:`.loading`: mmengine's loaders for paths and URLs (pointed here by :mod:`backbones.patches`).
* :mod:`.formats`: every released ConvNeXt layout into the backbone's, and the strict whole-model load.
* :mod:`.training`: what training writes (data only) and how ``--resume`` reads it back.
* :mod:`.writing`: atomic writes of checkpoints (the ``convnext_dense_atomic`` file backend).
"""
from ..errors import CheckpointError, CheckpointNotFoundError
from .formats import (
    ConvertedWeights,
    convert_state_dict,
    load_backbone_weights,
    load_exactly,
    load_model_weights,
    read_checkpoint,
)
from .loading import load_local_checkpoint
from .reader import ReadLimits, read_checkpoint_file

__all__ = ['CheckpointError', 'CheckpointNotFoundError', 'ConvertedWeights', 'ReadLimits', 'convert_state_dict',
           'load_backbone_weights', 'load_exactly', 'load_local_checkpoint', 'load_model_weights', 'read_checkpoint',
           'read_checkpoint_file']
