"""``fcmae``: ConvNeXt V2's FCMAE pre-training checkpoints (the official sparse encoder and its decoder).

Recognised by the ``encoder.`` prefix: MinkowskiEngine kernels, ``.ln.``/``.linear.`` wrappers, (1, C) biases
and GRN. The encoder is densified into the official layout and converted as :mod:`.official` does; the decoder
(``decoder.*``, ``mask_token``, ``proj.*``, ``pred.*``) is left out. Back: not written (our FCMAE model saves
this backbone's layout under ``backbone.``: ``fcmae-timm``).
"""
import math

import torch

from ...errors import CheckpointError
from .base import StateDict
from .official import to_ours as official_to_ours

DECODER_PREFIXES = ('decoder.', 'mask_token', 'proj.', 'pred.')


def recognise(keys: list[str]) -> bool:
    """Whether the keys are an FCMAE encoder's."""
    return any(k.startswith('encoder.') for k in keys)


def kernel_size(key: str, kernel: torch.Tensor) -> int:
    """The side k of a Minkowski kernel: (k*k, C) depthwise or (k*k, in, out), every size above 0.

    Raises:
        CheckpointError: Another shape (another number of dimensions, a first size that is not a square, a size
            0), naming ``key`` and the shapes expected, before anything is reshaped.
    """
    shape = tuple(kernel.shape)
    size = math.isqrt(shape[0]) if kernel.ndim in (2, 3) else 0
    if size == 0 or size * size != shape[0] or 0 in shape:
        raise CheckpointError(f"FCMAE kernel '{key}' has shape {shape}; expected (k*k, C) (depthwise) or (k*k, in, "
                              'out), with k*k a square number and no size 0: it is not an FCMAE checkpoint.')
    return size


def to_official(encoder: StateDict) -> StateDict:
    """Densify a sparse FCMAE encoder: MinkowskiEngine kernels become conv weights.

    A Minkowski kernel stores one (in, out) matrix per kernel offset, offsets ordered with the width
    index outermost (offset = w * k + h): (k*k, in, out) for a convolution, (k*k, C) depthwise.
    """
    out = {}
    for stored, value in encoder.items():
        key = stored.replace('.ln.', '.').replace('.linear.', '.')
        if key.endswith('.kernel'):
            size = kernel_size(f'encoder.{stored}', value)
            key = key.removesuffix('.kernel') + '.weight'
            if value.ndim == 3:  # (w, h, in, out) -> (out, in, h, w)
                value = value.reshape(size, size, *value.shape[1:]).permute(3, 2, 1, 0)
            else:  # depthwise (w, h, C) -> (C, 1, h, w)
                value = value.reshape(size, size, -1).permute(2, 1, 0).unsqueeze(1)
        elif key.endswith('.bias') and value.ndim == 2:
            value = value.reshape(-1)
        out[key] = value.contiguous()
    return out


def to_ours(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """The encoder in this backbone's names, and the classifier keys left out (none in pre-training)."""
    encoder = {k.removeprefix('encoder.'): v for k, v in state_dict.items() if k.startswith('encoder.')}
    return official_to_ours(to_official(encoder))
