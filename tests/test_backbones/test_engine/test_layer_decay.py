"""Layer-wise / stage-wise LR decay: the official rule on the real configs, schedulers, errors."""
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, init_default_scope

from backbones import ConvNeXt
from tests.helpers import TINY_ARCH, official_name


def official_layer_id(name: str, num_layers: int, decay_type: str) -> int:
    """The rule of the official release, applied to official parameter names (``backbone.`` stripped)."""
    if not name.startswith('backbone.') or name.startswith('backbone.out_norms.'):
        return num_layers + 1
    name = official_name(name.removeprefix('backbone.'))
    stage = int(re.match(r'(?:downsample_layers|stages)\.(\d)', name)[1])
    if decay_type == 'stage_wise':
        return 0 if name.startswith('downsample_layers') else stage + 1
    if name.startswith('downsample_layers'):
        return {0: 0, 1: 2, 2: 3, 3: num_layers}[stage]
    if stage == 2:
        return 3 + int(name.split('.')[2]) // 3
    return {0: 1, 1: 2, 3: num_layers}[stage]


def build_from_config(path: str, scope: str, **backbone_overrides):
    cfg = Config.fromfile(path)
    init_default_scope(scope)
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.update(backbone_overrides)
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    cfg.optim_wrapper.type = 'OptimWrapper'  # AmpOptimWrapper needs a GPU; the grouping is the same
    cfg.optim_wrapper.pop('loss_scale', None)
    return cfg, model, build_optim_wrapper(model, cfg.optim_wrapper)


@pytest.mark.parametrize('path, scope, decay_rate, decay_type, num_layers, last_stage2_id', [
    ('configs/det/cascade_convnext_t.py', 'mmdet', 0.7, 'layer_wise', 6, 5),
    ('configs/det/cascade_convnext_b.py', 'mmdet', 0.8, 'layer_wise', 12, 11),
    ('configs/seg/upernet_convnext_b.py', 'mmseg', 0.9, 'stage_wise', 12, 3),
], ids=['cascade-t', 'cascade-b', 'upernet-b'])
def test_groups_follow_the_official_rule(path, scope, decay_rate, decay_type, num_layers, last_stage2_id) -> None:
    cfg, model, optim_wrapper = build_from_config(path, scope)
    paramwise = cfg.optim_wrapper.paramwise_cfg
    assert (paramwise.decay_rate, paramwise.decay_type, paramwise.num_layers) == (decay_rate, decay_type, num_layers)
    base_lr, base_wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay
    group_of = {id(p): g for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    assert sum(len(g['params']) for g in optim_wrapper.optimizer.param_groups) == len(group_of)  # no duplicates

    names = dict(model.named_parameters())
    for name, param in names.items():
        group = group_of[id(param)]
        layer_id = official_layer_id(name, num_layers, decay_type)
        assert group['lr'] == pytest.approx(base_lr * decay_rate**(num_layers + 1 - layer_id)), name
        no_decay = param.ndim == 1 or name.endswith('.bias')
        assert group['weight_decay'] == (0.0 if no_decay else base_wd), name

    def scale(name: str) -> float:
        return group_of[id(names[name])]['lr'] / base_lr

    last_block = model.backbone.depths[2] - 1
    layer_wise = decay_type == 'layer_wise'
    # Spot checks of the rule as the issue states it, on representative parameters.
    expected_ids = {
        'backbone.stem.0.weight': 0,
        'backbone.stages.0.blocks.0.conv_dw.weight': 1,
        'backbone.stages.1.downsample.1.weight': 2 if layer_wise else 0,
        f'backbone.stages.2.blocks.{last_block}.mlp.fc1.weight': last_stage2_id,
        'backbone.stages.3.downsample.1.weight': num_layers if layer_wise else 0,
        'backbone.stages.3.blocks.0.mlp.fc2.weight': num_layers if layer_wise else 4,
        'backbone.out_norms.3.weight': num_layers + 1,
    }
    for name, layer_id in expected_ids.items():
        assert scale(name) == pytest.approx(decay_rate**(num_layers + 1 - layer_id)), name
    head_param = next(n for n in names if n.startswith(('roi_head.', 'decode_head.')) and n.endswith('weight'))
    neck_param = next(n for n in names if n.startswith(('neck.', 'decode_head.lateral_convs')) and n.endswith('weight'))
    for name in (head_param, neck_param):
        assert scale(name) == 1.0 and group_of[id(names[name])]['weight_decay'] == base_wd
    for name in ('backbone.stages.0.blocks.0.gamma', 'backbone.out_norms.0.bias', 'backbone.stem.1.weight'):
        assert group_of[id(names[name])]['weight_decay'] == 0.0


def test_frozen_parameters_are_left_out() -> None:
    _, model, optim_wrapper = build_from_config('configs/det/cascade_convnext_t.py', 'mmdet', frozen_stages=2)
    in_optimizer = {id(p) for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    for name, param in model.named_parameters():
        assert (id(param) in in_optimizer) is param.requires_grad, name
    assert not model.backbone.stem[0].weight.requires_grad and model.backbone.stages[2].blocks[0].gamma.requires_grad


def test_v2_depths_spread_stage_two_evenly() -> None:
    backbone = ConvNeXt(arch='atto', version='v2')  # depths 2-2-6-2
    ids = [backbone.get_layer_id(f'stages.2.blocks.{b}.conv_dw.weight', 6, 'layer_wise') for b in range(6)]
    assert ids == [3, 3, 4, 4, 5, 5]
    assert backbone.get_layer_id('stages.3.blocks.1.gamma', 6, 'layer_wise') == 6


class _TinyDetector(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = ConvNeXt(arch=TINY_ARCH)
        self.head = torch.nn.Linear(4, 2)


def test_relative_scales_survive_warmup_and_steps() -> None:
    from mmengine.optim import LinearLR, MultiStepLR

    optim_wrapper = build_optim_wrapper(_TinyDetector(), dict(
        constructor='LRDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6)))
    groups = optim_wrapper.optimizer.param_groups
    stem = next(g for g in groups if g['group_name'] == 'layer_0_decay')
    head = next(g for g in groups if g['group_name'] == 'layer_7_decay')
    schedulers = [LinearLR(optim_wrapper, start_factor=0.001, by_epoch=False, begin=0, end=5),
                  MultiStepLR(optim_wrapper, milestones=[7], gamma=0.1, by_epoch=False)]
    seen = []
    for _ in range(10):
        seen.append(head['lr'])
        assert stem['lr'] / head['lr'] == pytest.approx(0.7**7)
        optim_wrapper.optimizer.step()  # no gradients: parameters stay, only the schedules move
        for scheduler in schedulers:
            scheduler.step()
    assert seen[0] == pytest.approx(1e-6) and seen[6] == pytest.approx(1e-3) and seen[9] == pytest.approx(1e-4)


@pytest.mark.parametrize('paramwise_cfg, message', [
    (dict(decay_rate=0.7, decay_type='block_wise', num_layers=6), "Unknown paramwise_cfg.decay_type 'block_wise'"),
    (dict(decay_rate=0.7, decay_type='layer_wise'), 'needs paramwise_cfg.num_layers'),
    (dict(num_layers=6), 'needs paramwise_cfg.decay_rate'),
    (dict(decay_rate=0.7, num_layers=2), 'num_layers must be an int >= 4'),
])
def test_bad_paramwise_cfg_is_a_clear_error(paramwise_cfg: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_optim_wrapper(_TinyDetector(), dict(
            constructor='LRDecayOptimWrapperConstructor', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
            paramwise_cfg=paramwise_cfg))
