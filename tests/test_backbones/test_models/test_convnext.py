"""The ConvNeXt adapter: equal to timm, paper parameter counts, options and errors."""
import re

import pytest
import timm
import torch
from mmengine.registry import DefaultScope

from backbones import ConvNeXt
from backbones.models.convnext import V1_ARCHS, V2_ARCHS
from tests.helpers import TINY_ARCH

# Parameters with the ImageNet-1K head, in millions, as the papers print them.
PAPER_PARAMS_M = {
    ('v1', 'tiny'): 28.6, ('v1', 'small'): 50.2, ('v1', 'base'): 88.6, ('v1', 'large'): 197.8, ('v1', 'xlarge'): 350.2,
    ('v2', 'atto'): 3.7, ('v2', 'femto'): 5.2, ('v2', 'pico'): 9.1, ('v2', 'nano'): 15.6, ('v2', 'tiny'): 28.6,
    ('v2', 'base'): 89, ('v2', 'large'): 198, ('v2', 'huge'): 660.3,
}


def load_into_timm_features(backbone: ConvNeXt, timm_name: str, **timm_kwargs) -> torch.nn.Module:
    """timm's features_only model carrying the backbone's weights."""
    reference = timm.create_model(timm_name, pretrained=False, features_only=True, **timm_kwargs).eval()
    target = reference.state_dict()
    weights = {}
    for key, value in backbone.state_dict().items():
        if key.startswith('out_norms.'):
            continue
        key = re.sub(r'^(stem|stages)\.(\d+)\.', r'\1_\2.', key)
        weights[key] = value.reshape(target[key].shape)  # timm's V2 atto uses 1x1 convs for the MLP
    reference.load_state_dict(weights, strict=True)
    return reference


@pytest.mark.parametrize('arch, version, timm_name, timm_kwargs', [
    ('tiny', 'v1', 'convnext_tiny', {}),
    ('atto', 'v2', 'convnextv2_atto', {}),
    (TINY_ARCH, 'v1', 'convnext_tiny', dict(TINY_ARCH)),
], ids=['v1-tiny', 'v2-atto', 'custom-tiny'])
def test_stage_features_equal_timm(arch, version: str, timm_name: str, timm_kwargs: dict) -> None:
    backbone = ConvNeXt(arch=arch, version=version).eval()
    for param in backbone.parameters():  # break symmetry of the zero-initialised GRN and LayerScale
        torch.nn.init.normal_(param, std=0.02 if param.ndim > 1 else 0.2)
    reference = load_into_timm_features(backbone, timm_name, **timm_kwargs)
    image = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ours, theirs = backbone.forward_stages(image), reference(image)
        outputs = backbone(image)
    assert len(ours) == len(theirs) == 4
    for stage, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f'stage {stage}')
        normed = torch.nn.functional.layer_norm(a.permute(0, 2, 3, 1), a.shape[1:2], eps=1e-6).permute(0, 3, 1, 2)
        norm = backbone.out_norms[stage]
        expected = normed * norm.weight[:, None, None] + norm.bias[:, None, None]
        torch.testing.assert_close(outputs[stage], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('version, arch', list(PAPER_PARAMS_M), ids=[f'{v}-{a}' for v, a in PAPER_PARAMS_M])
def test_parameter_count_matches_paper(version: str, arch: str) -> None:
    with torch.device('meta'):
        backbone = ConvNeXt(arch=arch, version=version)
    trunk = sum(p.numel() for name, p in backbone.named_parameters() if not name.startswith('out_norms.'))
    channels = backbone.dims[-1]
    classifier_head = 2 * channels + channels * 1000 + 1000  # final LayerNorm + fc to 1000 classes
    paper = PAPER_PARAMS_M[(version, arch)]
    decimals = 0 if float(paper).is_integer() else 1
    assert round((trunk + classifier_head) / 1e6, decimals) == paper


def test_outputs_channels_strides_and_odd_sizes() -> None:
    backbone = ConvNeXt(arch=TINY_ARCH).eval()
    assert backbone.out_channels == TINY_ARCH['dims'] and backbone.out_strides == (4, 8, 16, 32)
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 225, 333))
    assert [tuple(o.shape) for o in outputs] == [(1, 16, 56, 83), (1, 32, 28, 41), (1, 64, 14, 20), (1, 128, 7, 10)]

    partial = ConvNeXt(arch=TINY_ARCH, out_indices=(1, 2))
    assert partial.out_channels == (32, 64) and partial.out_strides == (8, 16)
    assert len(partial.stages) == 3 and [type(n).__name__ for n in partial.out_norms] == [
        'Identity', 'LayerNorm2d', 'LayerNorm2d']
    assert [o.shape[1] for o in partial(torch.randn(1, 3, 64, 64))] == [32, 64]


def test_frozen_stages_have_no_gradients_and_stay_in_eval() -> None:
    backbone = ConvNeXt(arch=TINY_ARCH, drop_path_rate=0.1, frozen_stages=2)
    backbone.train()
    frozen = [backbone.stem, backbone.stages[0], backbone.stages[1]]
    assert all(not m.training for module in frozen for m in module.modules())
    assert backbone.stages[2].training and backbone.out_norms[0].training
    sum(o.sum() for o in backbone(torch.randn(2, 3, 64, 64))).backward()
    for name, param in backbone.named_parameters():
        is_frozen = name.startswith(('stem.', 'stages.0.', 'stages.1.'))
        assert param.requires_grad is not is_frozen, name
        assert (param.grad is None) is is_frozen, name


def test_gradient_checkpointing_gives_same_outputs_and_gradients() -> None:
    plain = ConvNeXt(arch=TINY_ARCH, drop_path_rate=0.2).train()
    checkpointed = ConvNeXt(arch=TINY_ARCH, drop_path_rate=0.2, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    assert all(stage.grad_checkpointing for stage in checkpointed.stages)
    image = torch.randn(2, 3, 64, 64)
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(3)  # same drop-path draws
        loss = sum((o**2).mean() for o in model(image))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize('kwargs, message', [
    (dict(arch='gigantic'), r"Unknown ConvNeXt v1 arch 'gigantic'; choose one of tiny, small, base, large, xlarge"),
    (dict(arch='atto'), r"'atto' is a v2 arch: set version='v2'"),
    (dict(arch='tiny', version='v3'), r"Unknown ConvNeXt version 'v3'"),
    (dict(arch=dict(depths=(1, 1, 1), dims=(8, 8, 8))), 'needs 4 positive depths and 4 positive dims'),
    (dict(out_indices=(0, 4)), r'out_indices must be distinct stage indices in 0\.\.3, got \(0, 4\)'),
    (dict(out_indices=()), 'out_indices must be distinct'),
    (dict(frozen_stages=5), 'frozen_stages must be in 0..4'),
    (dict(arch='atto', version='v2', layer_scale_init_value=1.0), 'V2 blocks have no LayerScale'),
])
def test_bad_arguments_give_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        ConvNeXt(**kwargs)
    assert '\n' not in str(error.value)


def test_arch_tables_cover_the_papers() -> None:
    assert list(V1_ARCHS) == ['tiny', 'small', 'base', 'large', 'xlarge']
    assert list(V2_ARCHS) == ['atto', 'femto', 'pico', 'nano', 'tiny', 'base', 'large', 'huge']


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_buildable_from_mmdet_and_mmseg_registries(scope: str) -> None:
    if scope == 'mmdet':
        from mmdet.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
    else:
        from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
    with DefaultScope.overwrite_default_scope(scope):
        backbone = MODELS.build(dict(type='ConvNeXt', arch=TINY_ARCH, version='v2'))
        constructor_cls = OPTIM_WRAPPER_CONSTRUCTORS.get('LRDecayOptimWrapperConstructor')
    assert type(backbone) is ConvNeXt and backbone.version == 'v2'
    assert constructor_cls.__module__ == 'backbones.engine.layer_decay'


LAYOUT_CASES = {
    'v1-tiny': dict(arch='tiny'),
    'v2-atto': dict(arch='atto', version='v2'),
    'custom-v2-with-cp': dict(arch=TINY_ARCH, version='v2', with_cp=True, drop_path_rate=0.1),
    'custom-frozen-2': dict(arch=TINY_ARCH, frozen_stages=2),
    'custom-out-1-3': dict(arch=TINY_ARCH, out_indices=(1, 3)),
    'custom-out-2': dict(arch=TINY_ARCH, out_indices=(2,)),
}


@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('kwargs', list(LAYOUT_CASES.values()), ids=list(LAYOUT_CASES))
@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last], ids=['nchw', 'nhwc-input'])
def test_every_output_is_contiguous_nchw(kwargs: dict, mode: str, memory_format: torch.memory_format) -> None:
    # mmcv's compiled ops (RoIAlign) read a feature map's storage as contiguous NCHW whatever its strides.
    backbone = ConvNeXt(**kwargs).train(mode == 'train')
    for batch, height, width in ((1, 67, 93), (2, 64, 96)):
        image = torch.randn(batch, 3, height, width).to(memory_format=memory_format)
        with torch.set_grad_enabled(mode == 'train'):
            outputs = backbone(image)
        assert len(outputs) == len(backbone.out_indices)
        for output, channels in zip(outputs, backbone.out_channels):
            assert output.shape[:2] == (batch, channels)
            assert output.is_contiguous(), (output.shape, output.stride())


def fan_in_random(backbone: ConvNeXt) -> ConvNeXt:
    """Random weights that keep activations of order one through every stage (std 1 / sqrt(fan-in)),
    so that any leak from hidden positions is large; GRN and norms random too."""
    for param in backbone.parameters():
        torch.nn.init.normal_(param, std=param[0].numel() ** -0.5 if param.ndim > 1 else 0.5)
    return backbone


def hidden_pixels(mask: torch.Tensor) -> torch.Tensor:
    """The (N, 3, H, W) pixels of the hidden 32x32 patches of an (N, h, w) mask."""
    return mask.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, None].expand(-1, 3, -1, -1)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_masked_features_ignore_hidden_pixels_and_are_zero_there(seed: int) -> None:
    torch.manual_seed(seed)
    backbone = fan_in_random(ConvNeXt(arch=TINY_ARCH, version='v2')).eval()
    image = torch.randn(2, 3, 96, 128)
    mask = torch.rand(2, 3, 4) < 0.6
    hidden = hidden_pixels(mask)
    changed = image.masked_scatter(hidden, torch.randn(int(hidden.sum())) * 5)
    with torch.no_grad():
        masked, masked_changed = backbone.forward_stages(image, mask), backbone.forward_stages(changed, mask)
        plain, plain_changed = backbone.forward_stages(image), backbone.forward_stages(changed)
    for stage, stride in enumerate((4, 8, 16, 32)):
        cells = mask.repeat_interleave(32 // stride, 1).repeat_interleave(32 // stride, 2)[:, None]
        torch.testing.assert_close(masked[stage], masked_changed[stage], atol=1e-5, rtol=0)
        assert masked[stage].masked_select(cells).eq(0).all()
        # Without the mask the receptive fields cross patches: the hidden pixels do reach visible positions.
        assert (plain[stage] - plain_changed[stage]).masked_select(~cells).abs().max() > 1e-2


def test_masked_encoder_equals_the_dense_network_on_the_visible_region() -> None:
    """A sparse encoder sees zeros beyond its entries, like zero padding, and its GRN statistics cover
    visible positions only: on a rectangle of visible patches it equals the network run on that crop."""
    backbone = fan_in_random(ConvNeXt(arch=TINY_ARCH, version='v2')).eval()
    image = torch.randn(2, 3, 96, 128)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[:, :2, 1:3] = False  # visible: rows 0-63, columns 32-95
    with torch.no_grad():
        masked, crop = backbone.forward_stages(image, mask), backbone.forward_stages(image[:, :, :64, 32:96])
    for stage, stride in enumerate((4, 8, 16, 32)):
        cell = 32 // stride
        torch.testing.assert_close(masked[stage][:, :, :2 * cell, cell:3 * cell], crop[stage], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_all_visible_mask_equals_the_plain_backbone(mode: str) -> None:
    backbone = fan_in_random(ConvNeXt(arch=TINY_ARCH, version='v2'))
    backbone.train(mode == 'train')
    image = torch.randn(2, 3, 64, 96)
    visible = torch.zeros(2, 2, 3, dtype=torch.bool)
    torch.manual_seed(1)
    masked = backbone(image, visible)
    torch.manual_seed(1)
    plain = backbone(image)
    for a, b in zip(masked, plain):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_masked_mode_leaves_no_hooks_behind() -> None:
    backbone = fan_in_random(ConvNeXt(arch=TINY_ARCH, version='v2')).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = backbone(image)
        backbone(image, torch.ones(1, 2, 2, dtype=torch.bool))
        after = backbone(image)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize('mask, kwargs, message', [
    (torch.zeros(1, 3, 3, dtype=torch.bool), {}, r'mask must be a bool tensor of shape .* \(1, 2, 2\)'),
    (torch.zeros(1, 2, 2), {}, 'mask must be a bool tensor'),
    (torch.zeros(1, 2, 2, dtype=torch.bool), dict(with_cp=True), 'does not support gradient checkpointing'),
])
def test_bad_masks_give_one_line_errors(mask: torch.Tensor, kwargs: dict, message: str) -> None:
    backbone = ConvNeXt(arch=TINY_ARCH, version='v2', **kwargs)
    with pytest.raises(ValueError, match=message) as error:
        backbone(torch.randn(1, 3, 64, 64), mask)
    assert '\n' not in str(error.value)
