"""What every layout module shares: the state-dict type, the one inference of a backbone's arch from its
keys, and the result of a conversion (:class:`ConvertedWeights`)."""
import re
from dataclasses import dataclass, field

import torch

from ...errors import CheckpointError

StateDict = dict[str, torch.Tensor]

# Reasons in ConvertedWeights.leftovers that callers test for.
HEAD = 'classifier head and final norm'
FCMAE_DECODER = 'FCMAE decoder'
DENSE_PARTS = 'detector/segmentor parts (neck, heads)'
UNBUILT = 'stages/output norms not built (out_indices, norm_outputs)'

# The largest arch a key may describe: ConvNeXt's archs have at most 27 blocks in a stage and 2816 channels
# (V2-H), so a key such as ``stages.0.<huge>.gamma`` cannot make a model of its choosing.
MAX_BLOCKS = 64
MAX_CHANNELS = 8192


class NotConvNeXtError(CheckpointError):
    """A checkpoint in which no ConvNeXt backbone was recognised (a checkpoint of another model)."""


@dataclass
class Arch:
    """A ConvNeXt backbone's arch: ``v1``/``v2``, blocks per stage, channels per stage."""
    version: str
    depths: list[int]
    dims: list[int]

    def __str__(self) -> str:
        return f'ConvNeXt {self.version.upper()} depths {self.depths} dims {self.dims}'


def stored_arch(backbone: StateDict) -> Arch | None:
    """The arch of a backbone state dict in this backbone's (timm) names; None without all four stages.

    Raises:
        CheckpointError: Keys or shapes of an arch beyond :data:`MAX_BLOCKS` blocks or :data:`MAX_CHANNELS`
            channels per stage.
    """
    depths = [0, 0, 0, 0]
    for key in backbone:
        if match := re.match(r'stages\.(\d)\.blocks\.(\d+)\.', key):
            depths[int(match[1])] = max(depths[int(match[1])], int(match[2]) + 1)
    dims = [backbone.get(key) for key in ('stem.0.weight', *(f'stages.{i}.downsample.1.weight' for i in (1, 2, 3)))]
    if 0 in depths or any(d is None or d.ndim == 0 for d in dims):
        return None
    arch = Arch('v2' if any('.grn.' in k for k in backbone) else 'v1', depths, [int(d.shape[0]) for d in dims])
    if max(arch.depths) > MAX_BLOCKS or max(arch.dims) > MAX_CHANNELS:
        raise CheckpointError(f'The checkpoint describes {arch}, beyond any ConvNeXt (at most {MAX_BLOCKS} blocks '
                              f'and {MAX_CHANNELS} channels a stage): it is not a ConvNeXt checkpoint.')
    return arch


@dataclass
class ConvertedWeights:
    """Backbone weights in this backbone's layout, and what was left out on the way.

    Attributes:
        source_format: The layout recognised (a name of :data:`backbones.checkpoints.layouts.LAYOUTS`, with
            ``-dense`` for a whole detector/segmentor).
        backbone: Tensors named as in :class:`backbones.ConvNeXt` (``stem.*``, ``stages.*``,
            ``out_norms.*``).
        leftovers: Keys the backbone does not use, by reason (e.g. ``classifier head and final norm``).
        other: The non-backbone part of a detector/segmentor checkpoint (neck, heads), in our models' names.
        arch: The arch the checkpoint declares where it declares one (transformers' config.json).
    """
    source_format: str
    backbone: StateDict
    leftovers: dict[str, list[str]] = field(default_factory=dict)
    other: StateDict = field(default_factory=dict)
    arch: Arch | None = None


def rename(key: str, rules: tuple) -> str:
    """``key`` with every rule of ``rules`` (pattern, replacement) applied in order."""
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key
