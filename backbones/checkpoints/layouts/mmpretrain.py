"""``mmpretrain``: mmpretrain's ConvNeXt (the backbone of mmdet's and mmseg's own ConvNeXt configs).

Recognised by ``.depthwise_conv.``; its names (``depthwise_conv``, ``pointwise_conv1/2``, ``norm{i}``) are the
official ones renamed, so it is renamed back and converted as :mod:`.official` does. In an mmpretrain
classifier ``norm3`` alone is the final norm after pooling, not an output norm. Back: not written.
"""
import re

from .base import StateDict
from .official import to_ours as official_to_ours

RENAMES = (('.depthwise_conv.', '.dwconv.'), ('.pointwise_conv1.', '.pwconv1.'), ('.pointwise_conv2.', '.pwconv2.'))


def recognise(keys: list[str]) -> bool:
    """Whether the backbone keys are mmpretrain's."""
    return any('.depthwise_conv.' in k for k in keys)


def to_ours(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """mmpretrain's names in this backbone's, and the classifier keys left out."""
    renamed = {}
    for key, value in state_dict.items():
        for old, new in RENAMES:
            key = key.replace(old, new)
        renamed[key] = value
    if {k.split('.')[0] for k in renamed if re.match(r'norm\d\.', k)} == {'norm3'}:
        renamed = {re.sub(r'^norm3\.', 'norm.', k): v for k, v in renamed.items()}
    return official_to_ours(renamed)
