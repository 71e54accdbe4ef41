"""``timm``: timm's ConvNeXt state dicts, and this backbone's own (the same names plus ``out_norms.*``).

Recognised by ``stem.*`` beside ``stages.*``. timm builds V2 atto..nano with 1x1-conv MLPs where this backbone
has Linear layers: those weights are flattened. timm's classifier (``head.*``, ``norm_pre.*``) is left out.
Back: this backbone's state dict is timm's layout (:func:`from_ours` is what timm's ``features_only`` model
takes: no output norms).
"""
import re

from .base import StateDict


def recognise(keys: list[str]) -> bool:
    """Whether the backbone keys are timm's (or ours)."""
    return any(k.startswith('stem.') for k in keys) and any(k.startswith('stages.') for k in keys)


def to_ours(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """timm's tensors in this backbone's shapes, and the classifier keys left out."""
    head = [k for k in state_dict if k.startswith(('head.', 'norm_pre.'))]
    backbone = {k: v.flatten(1) if re.search(r'mlp\.fc\d\.weight$', k) and v.ndim == 4 else v
                for k, v in state_dict.items() if k not in head}
    return backbone, head


def from_ours(backbone: StateDict) -> StateDict:
    """This backbone's weights as timm's ConvNeXt names them (without the output norms timm does not have)."""
    return {k: v for k, v in backbone.items() if not k.startswith('out_norms.')}
