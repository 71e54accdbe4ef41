"""``official``: the official ConvNeXt classification checkpoints, V1 and V2 (``{'model': state_dict}``).

Recognised by ``downsample_layers.*`` (with ``stages.i.j.dwconv/norm/pwconv1/pwconv2/gamma``, V2 ``grn.gamma/beta``,
a final ``norm.*`` and ``head.*``); in a whole model (the official COCO/ADE20K release, mmdet 2.x / mmseg 0.x) the
output norms are ``norm{i}``. Converted by timm's ``checkpoint_filter_fn``, given a parameter-less model of the
stored arch. Back: not written (timm's layout is the one we write).
"""
import re

import torch
from timm.models.convnext import ConvNeXt as TimmConvNeXt
from timm.models.convnext import checkpoint_filter_fn
from torch import nn

from ...errors import CheckpointError
from .base import StateDict, rename, stored_arch

# Enough of the official names -> ours for the arch inference (stored_arch reads stages, blocks and widths).
ARCH_NAMES = ((r'^downsample_layers\.0\.', 'stem.'), (r'^downsample_layers\.(\d)\.', r'stages.\1.downsample.'),
              (r'^stages\.(\d)\.(\d+)\.', r'stages.\1.blocks.\2.'))
# The names timm's filter gives the tensors it reshapes (GRN and 2-D weights), to check their shapes first.
TIMM_NAMES = (*ARCH_NAMES, (r'\.dwconv\.', '.conv_dw.'), (r'\.pwconv', '.mlp.fc'), (r'\.grn\.beta$', '.mlp.grn.bias'),
              (r'\.grn\.gamma$', '.mlp.grn.weight'))


def recognise(keys: list[str]) -> bool:
    """Whether the backbone keys are in the official layout."""
    return any(k.startswith('downsample_layers.') for k in keys)


def _shape_model(trunk: StateDict) -> nn.Module:
    """A parameter-less (meta) timm ConvNeXt of the arch stored in official-layout ``trunk``."""
    arch = stored_arch({rename(key, ARCH_NAMES): value for key, value in trunk.items()})
    if arch is None:
        raise CheckpointError('The checkpoint does not hold all four ConvNeXt stages (blocks and downsample layers).')
    use_grn = arch.version == 'v2'
    with torch.device('meta'):
        return TimmConvNeXt(num_classes=0, depths=arch.depths, dims=arch.dims, use_grn=use_grn,
                            ls_init_value=None if use_grn else 1.0)


def to_ours(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """Official-layout keys in this backbone's names (timm's filter); ``norm{i}`` are output norms.

    Returns:
        The converted tensors and the classifier keys left out (``head.*``, the final ``norm.*``).
    """
    head, trunk, out_norms = [], {}, {}
    for key, value in state_dict.items():
        if key.startswith(('head.', 'norm.')):
            head.append(key)
        elif match := re.match(r'norm(\d)\.(.*)', key):
            out_norms[f'out_norms.{match[1]}.{match[2]}'] = value
        else:
            trunk[key] = value
    # timm's filter reads the model's shape for 2-D tensors; give it a model of the stored arch.
    model = _shape_model(trunk)
    _check_reshapes(trunk, model.state_dict())
    return {**checkpoint_filter_fn(trunk, model), **out_norms}, head


def _check_reshapes(trunk: StateDict, expected: StateDict) -> None:
    """Refuse, naming the key, a tensor that timm's filter would fail to reshape: a GRN tensor that is not C
    values along its last dimension, a 2-D weight without a tensor of as many elements in the stored arch.

    Raises:
        CheckpointError: The first such tensor, with its shape and the shape expected.
    """
    for key, value in trunk.items():
        if key.startswith(('projectors.', 'norms.')):  # timm's filter drops these
            continue
        shape = tuple(value.shape)
        if 'grn' in key and (value.ndim == 0 or value.numel() != shape[-1]):
            raise CheckpointError(f"GRN tensor '{key}' has shape {shape}; expected (C,) or (1, ..., 1, C).")
        name = rename(key, TIMM_NAMES)
        if value.ndim == 2 and 'head' not in name:
            target = expected.get(name)
            if target is None or target.numel() != value.numel():
                wanted = f'{tuple(target.shape)} there' if target is not None else 'no such tensor'
                raise CheckpointError(f"Tensor '{key}' has shape {shape}; the ConvNeXt the checkpoint describes has "
                                      f'{wanted}: it is not a ConvNeXt checkpoint of this layout.')
