"""Layer-wise / stage-wise learning-rate decay for detection and segmentation fine-tuning.

One optimizer-wrapper constructor for mmdet and mmseg configs. The backbone supplies each parameter's
layer id (:meth:`backbones.ConvNeXt.get_layer_id`); everything outside the backbone (neck, heads) gets
the top id N + 1. A parameter with layer id ``i`` trains with ``lr * decay_rate ** (N + 1 - i)``, so
the heads get the base lr and the stem ``decay_rate ** (N + 1)`` of it. Weight decay is 0 for 1-D
parameters (norms, LayerScale, GRN) and biases. Frozen parameters (``requires_grad=False``) are left
out of the optimizer.

Usage::

    optim_wrapper = dict(
        type='OptimWrapper',  # or AmpOptimWrapper
        constructor='LRDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6))
"""
from mmengine.dist import is_main_process
from mmengine.logging import MMLogger
from mmengine.model import is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from ..errors import UsageError

DECAY_TYPES = ('layer_wise', 'stage_wise')


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LRDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Build parameter groups with layer-wise or stage-wise LR decay.

    ``paramwise_cfg`` keys:

    * ``decay_rate``: LR ratio between consecutive layer ids (e.g. 0.7).
    * ``decay_type``: ``'layer_wise'`` (default) or ``'stage_wise'``.
    * ``num_layers``: N of the rule (6 for depths 3-3-9-3, 12 for 3-3-27-3).

    Args:
        optim_wrapper_cfg: The optim wrapper config (``type``, ``optimizer``, ...).
        paramwise_cfg: The keys above.

    Raises:
        UsageError: A key is missing or has an invalid value.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        cfg = self.paramwise_cfg
        for key in ('decay_rate', 'num_layers'):
            if key not in cfg:
                raise UsageError(f"LRDecayOptimWrapperConstructor needs paramwise_cfg.{key}; e.g. paramwise_cfg="
                                 "dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6).")
        self.decay_rate = float(cfg['decay_rate'])
        self.decay_type = cfg.get('decay_type', 'layer_wise')
        self.num_layers = cfg['num_layers']
        if self.decay_type not in DECAY_TYPES:
            raise UsageError(f'Unknown paramwise_cfg.decay_type {self.decay_type!r}: use one of {DECAY_TYPES}.')
        if not isinstance(self.num_layers, int) or self.num_layers < 4:
            raise UsageError(f'paramwise_cfg.num_layers must be an int >= 4 (6 for depths 3-3-9-3, 12 for '
                             f'3-3-27-3), got {self.num_layers!r}.')
        if self.base_lr is None or self.base_wd is None:
            raise UsageError('LR decay sets lr and weight decay per group: '
                             'give optimizer.lr and optimizer.weight_decay.')
        if not 0 < self.decay_rate <= 1:
            raise UsageError(f'paramwise_cfg.decay_rate must be in (0, 1], got {self.decay_rate}.')

    def add_params(self, params: list[dict], module: nn.Module, **kwargs) -> None:
        """Append one parameter group per (layer id, decay / no decay) to ``params``."""
        if is_model_wrapper(module):
            module = module.module
        backbone = getattr(module, 'backbone', None)
        if not hasattr(backbone, 'get_layer_id'):
            raise UsageError(f'LR decay needs a model with a .backbone that has get_layer_id() (e.g. '
                             f'backbones.ConvNeXt); got {type(backbone).__name__}.')
        top_id = self.num_layers + 1
        groups: dict[str, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith('backbone.'):
                layer_id = backbone.get_layer_id(name.removeprefix('backbone.'), self.num_layers, self.decay_type)
            else:
                layer_id = top_id
            no_decay = param.ndim == 1 or name.endswith('.bias')
            group_name = f'layer_{layer_id}_{"no_decay" if no_decay else "decay"}'
            if group_name not in groups:
                lr_scale = self.decay_rate**(top_id - layer_id)
                groups[group_name] = dict(
                    params=[],
                    lr=self.base_lr * lr_scale,
                    weight_decay=0.0 if no_decay else self.base_wd,
                    group_name=group_name,
                    layer_id=layer_id,
                    lr_scale=lr_scale)
            groups[group_name]['params'].append(param)
        ordered = sorted(groups.values(), key=lambda g: (g['layer_id'], g['group_name']))
        params.extend(ordered)
        if is_main_process():
            MMLogger.get_current_instance().info(self._format_table(ordered))

    def _format_table(self, groups: list[dict]) -> str:
        rows = [f'LR decay ({self.decay_type}, rate {self.decay_rate}, N {self.num_layers}, base lr {self.base_lr}):',
                f'{"group":<20} {"layer":>5} {"lr scale":>10} {"wd":>7} {"tensors":>7} {"params":>11}']
        for group in groups:
            rows.append(f'{group["group_name"]:<20} {group["layer_id"]:>5} {group["lr_scale"]:>10.5f} '
                        f'{group["weight_decay"]:>7g} {len(group["params"]):>7} '
                        f'{sum(p.numel() for p in group["params"]):>11,}')
        return '\n'.join(rows)
