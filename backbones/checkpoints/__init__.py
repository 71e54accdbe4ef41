"""Checkpoints: reading files as data, the released layouts, loading into models, and writing files atomically.

Every module here reports a file it cannot use as :class:`backbones.errors.CheckpointError`, in one line.

* :mod:`.pickle_data`: a pickle interpreter that builds data and nothing else.
* :mod:`.reader`: torch (zip and legacy) and safetensors files as data (:func:`read_checkpoint_file`).
* :mod:`.download`: URLs downloaded once into a cache, capped, with a deadline.
* :mod:`.huggingface`: transformers model folders and ``hf://`` names (read and written).
* :mod:`.layouts`: every released ConvNeXt layout, one module each, recognised and converted into the backbone's.
* :mod:`.loading`: :func:`open_checkpoint`, the one way in (read once), the backbone and whole-model loaders,
  and mmengine's loaders for the schemes they serve (registered by :mod:`backbones.patches`).
* :mod:`.training`: what training writes (data only) and how ``--resume`` reads it back.
* :mod:`.writing`: atomic writes of checkpoints (the ``convnext_dense_atomic`` file backend).
"""
from ..errors import CheckpointError, CheckpointNotFoundError
from .layouts import ConvertedWeights, convert_state_dict
from .loading import (
    Checkpoint,
    load_backbone_weights,
    load_exactly,
    load_local_checkpoint,
    load_model_weights,
    open_checkpoint,
)
from .reader import ReadLimits, read_checkpoint_file

__all__ = ['Checkpoint', 'CheckpointError', 'CheckpointNotFoundError', 'ConvertedWeights', 'ReadLimits',
           'convert_state_dict', 'load_backbone_weights', 'load_exactly', 'load_local_checkpoint', 'load_model_weights',
           'open_checkpoint', 'read_checkpoint_file']
