"""Every released checkpoint format loads into the backbone and gives the features of its source."""
import logging

import pytest
import timm
import torch

from backbones import CheckpointError, ConvNeXt, load_backbone_weights
from backbones.checkpoints.layouts import UNBUILT, convert_state_dict, unwrap_state_dict
from backbones.checkpoints.layouts.fcmae import to_official as _fcmae_to_official
from backbones.checkpoints.loading import load_exactly
from tests.helpers import TINY_ARCH, randomize, to_fcmae, to_mmpretrain, to_official


def source_backbone(version: str) -> ConvNeXt:
    return randomize(ConvNeXt(arch=TINY_ARCH, version=version)).eval()


def loaded_backbone(path, version: str = 'v1', arch=TINY_ARCH) -> ConvNeXt:
    backbone = ConvNeXt(arch=arch, version=version, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    return backbone.eval()


def timm_classifier_state(source: ConvNeXt, version: str) -> dict:
    """A timm classification model's state dict carrying ``source``'s weights (V2: 1x1-conv MLPs)."""
    name = 'convnextv2_atto' if version == 'v2' else 'convnext_tiny'
    model = timm.create_model(name, pretrained=False, num_classes=10, **TINY_ARCH)
    target = model.state_dict()
    trunk = {k: v.reshape(target[k].shape) for k, v in source.state_dict().items() if not k.startswith('out_norms.')}
    model.load_state_dict(trunk, strict=False)
    return model.state_dict()


def build_checkpoint(source: ConvNeXt, fmt: str, version: str) -> dict:
    state = source.state_dict()
    detector_parts = {'neck.lateral_convs.0.conv.weight': torch.randn(8, 16, 1, 1),
                      'rpn_head.rpn_cls.bias': torch.zeros(3)}
    return {
        'official': lambda: {'model': to_official(state)},
        'official-dense': lambda: {
            'state_dict': {**{f'backbone.{k}': v for k, v in to_official(state, dense=True).items()}, **detector_parts},
            'meta': {'CLASSES': ('a', 'b')}},
        'fcmae': lambda: {'model': to_fcmae(state)},
        'timm': lambda: timm_classifier_state(source, version),
        'mmpretrain': lambda: {'state_dict': to_mmpretrain(state)},
        'mmpretrain-dense': lambda: {'state_dict': {**to_mmpretrain(state, dense=True), **detector_parts}},
        'timm-dense': lambda: {'state_dict': {**{f'backbone.{k}': v for k, v in state.items()}, **detector_parts}},
        'timm-own': lambda: state,
    }[fmt]()


FORMATS = [('official', 'v1'), ('official', 'v2'), ('official-dense', 'v1'), ('fcmae', 'v2'), ('timm', 'v1'),
           ('timm', 'v2'), ('mmpretrain', 'v1'), ('mmpretrain', 'v2'), ('mmpretrain-dense', 'v1'),
           ('timm-dense', 'v2'), ('timm-own', 'v1')]


@pytest.mark.parametrize('fmt, version', FORMATS, ids=[f'{f}-{v}' for f, v in FORMATS])
def test_each_format_gives_the_source_features(tmp_path, fmt: str, version: str) -> None:
    source = source_backbone(version)
    checkpoint = build_checkpoint(source, fmt, version)
    assert convert_state_dict(unwrap_state_dict(checkpoint)).source_format == fmt.removesuffix('-own')
    path = tmp_path / 'weights.pth'
    torch.save(checkpoint, path)
    loaded = loaded_backbone(path, version)

    image = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for ours, theirs in zip(loaded.forward_stages(image), source.forward_stages(image)):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        has_output_norms = fmt.endswith(('-dense', '-own'))
        for ours, theirs in zip(loaded(image), source(image)):
            assert torch.allclose(ours, theirs, atol=1e-5) is has_output_norms


def test_fcmae_kernel_layout_matches_the_official_remap() -> None:
    kernel = torch.randn(49, 6)  # depthwise: (offsets, C)
    conv = torch.randn(4, 5, 7)  # (offsets, in, out)
    ours = _fcmae_to_official({'a.dwconv.kernel': kernel, 'b.1.kernel': conv})
    # The official remap: permute to (out, in, offsets), reshape to (out, in, k, k), swap the last two axes.
    torch.testing.assert_close(ours['a.dwconv.weight'], kernel.permute(1, 0).reshape(6, 1, 7, 7).transpose(3, 2))
    torch.testing.assert_close(ours['b.1.weight'], conv.permute(2, 1, 0).reshape(7, 5, 2, 2).transpose(3, 2))


def test_grn_survives_the_official_remap_trap(tmp_path) -> None:
    """The official remap unsqueezes GRN tensors that are already 4-D; they must still load, not stay zero."""
    source = source_backbone('v2')
    official = to_official(source.state_dict())
    trapped = {k: v.reshape(1, 1, *v.shape) if '.grn.' in k else v for k, v in official.items()}
    assert trapped['stages.0.0.grn.gamma'].shape == (1, 1, 1, 1, 1, 4 * TINY_ARCH['dims'][0])
    path = tmp_path / 'remapped.pth'
    torch.save({'model': trapped}, path)
    loaded = loaded_backbone(path, 'v2')
    grn = loaded.stages[0].blocks[0].mlp.grn
    assert grn.weight.abs().sum() > 0
    torch.testing.assert_close(grn.weight, source.stages[0].blocks[0].mlp.grn.weight)
    torch.testing.assert_close(grn.bias, source.stages[0].blocks[0].mlp.grn.bias)


def test_load_report_names_expected_leftovers(tmp_path, caplog) -> None:
    path = tmp_path / 'fcmae.pth'
    torch.save({'model': to_fcmae(source_backbone('v2').state_dict())}, path)
    backbone = ConvNeXt(arch=TINY_ARCH, version='v2')
    with caplog.at_level(logging.INFO):
        load_backbone_weights(backbone, str(path), logging.getLogger('test'))
    report = caplog.text
    assert 'fcmae format' in report
    assert 'not used (FCMAE decoder): 15 tensors' in report
    assert 'newly initialised (output norms): out_norms.0.weight' in report


def test_unbuilt_stages_and_norms_are_leftovers(tmp_path) -> None:
    source = source_backbone('v1')
    path = tmp_path / 'dense.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()}}, path)
    partial = ConvNeXt(arch=TINY_ARCH, out_indices=(1, 2))
    weights = load_backbone_weights(partial, str(path), logging.getLogger(__name__))
    # Stage 3 is not built (no output after stage 2), nor the output norms of stages 0 and 3.
    assert sorted(weights.leftovers[UNBUILT]) == sorted(
        k for k in source.state_dict() if k.startswith(('stages.3.', 'out_norms.0.', 'out_norms.3.')))
    for name, value in partial.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize('target, message', [
    (dict(arch=dict(depths=(1, 1, 3, 1), dims=TINY_ARCH['dims'])),
     r"Backbone parameter 'stages\.2\.blocks\.2\.gamma' \(64,\) is missing from the checkpoint \(9 missing"),
    (dict(arch=dict(depths=TINY_ARCH['depths'], dims=(24, 48, 96, 192))),
     r"Shape mismatch at 'stem\.0\.weight': checkpoint \(16, 3, 4, 4\), backbone \(24, 3, 4, 4\)"),
    (dict(arch=dict(depths=(1, 1, 1, 1), dims=TINY_ARCH['dims'])),
     r"Checkpoint key 'stages\.2\.blocks\.1\.gamma' \(64,\) has no place in the backbone"),
    (dict(arch=TINY_ARCH, version='v2'), r"set version='v1'"),
])
def test_wrong_arch_is_a_one_line_error(tmp_path, target: dict, message: str) -> None:
    path = tmp_path / 'v1.pth'
    torch.save({'model': to_official(source_backbone('v1').state_dict())}, path)
    backbone = ConvNeXt(**target, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError, match=message) as error:
        backbone.init_weights()
    assert '\n' not in str(error.value)


def test_foreign_checkpoint_is_rejected(tmp_path) -> None:
    path = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(10, 64)}}, path)
    with pytest.raises(CheckpointError, match=r"No ConvNeXt backbone found in the checkpoint \(first keys: \['conv1"):
        loaded_backbone(path)


def test_whole_model_loading_names_the_first_key_that_does_not_fit() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    good = {key: torch.ones_like(value) for key, value in model.state_dict().items()}
    load_exactly(model, good, 'ckpt.pth', 'the config matches')
    assert torch.equal(model[1].weight, torch.ones(1, 3))
    cases = {
        "'1.bias' is missing from the checkpoint (ckpt.pth). Check that the config matches.":
            {k: v for k, v in good.items() if k != '1.bias'},
        "'2.weight' is not in the model (ckpt.pth). Check that the config matches.":
            {**good, '2.weight': torch.ones(1)},
        "Shape mismatch at '0.weight': checkpoint (4, 2), model (3, 2) (ckpt.pth). Check that the config matches.":
            {**good, '0.weight': torch.ones(4, 2)},
    }
    for message, state_dict in cases.items():
        with pytest.raises(CheckpointError) as error:
            load_exactly(model, state_dict, 'ckpt.pth', 'the config matches')
        assert str(error.value) == message


def test_every_layout_module_recognises_and_converts() -> None:
    """The table is the list of layouts: each module recognises its keys (and no other layout's) and converts."""
    from backbones.checkpoints.layouts import LAYOUTS

    source = source_backbone('v2')
    examples = {'transformers': None, 'fcmae': build_checkpoint(source, 'fcmae', 'v2')['model'],
                'mmpretrain': build_checkpoint(source, 'mmpretrain', 'v2')['state_dict'],
                'official': build_checkpoint(source, 'official', 'v2')['model'],
                'timm': build_checkpoint(source, 'timm', 'v2')}
    assert list(LAYOUTS) == list(examples)
    for name, state_dict in examples.items():
        assert callable(LAYOUTS[name].recognise) and callable(LAYOUTS[name].to_ours)
        if state_dict is None:
            continue
        recognised = [other for other, layout in LAYOUTS.items() if layout.recognise(list(state_dict))]
        assert recognised[0] == name, (name, recognised)
        assert convert_state_dict(state_dict).source_format == name


@pytest.mark.parametrize('version', ['v1', 'v2'])
def test_timm_round_trip_is_the_identity(version: str) -> None:
    from backbones.checkpoints.layouts import timm as timm_layout

    ours = source_backbone(version).state_dict()
    back, left_out = timm_layout.to_ours(timm_layout.from_ours(ours))
    assert left_out == [] and set(back) == {k for k in ours if not k.startswith('out_norms.')}
    for key, value in back.items():
        assert torch.equal(value, ours[key]), key
    # timm's own model takes what from_ours writes (all but its classifier head).
    from timm.models.convnext import ConvNeXt as TimmConvNeXt

    model = TimmConvNeXt(depths=TINY_ARCH['depths'], dims=TINY_ARCH['dims'], use_grn=version == 'v2',
                         ls_init_value=None if version == 'v2' else 1.0, conv_mlp=False, num_classes=0)
    missing, unexpected = model.load_state_dict(timm_layout.from_ours(ours), strict=False)
    assert unexpected == [] and missing and all(k.startswith('head.') for k in missing)


@pytest.mark.parametrize('with_heads', [False, True])
def test_transformers_round_trip_is_the_identity(tmp_path, with_heads: bool) -> None:
    """ours -> a transformers model folder -> ours gives the same tensors (the backbone, and an UperNet's heads)."""
    from backbones.checkpoints.layouts.transformers import from_ours
    from backbones.checkpoints.loading import open_checkpoint

    ours = randomize(ConvNeXt(arch=TINY_ARCH, version='v2')).state_dict()
    heads = {}
    if with_heads:
        heads = {'decode_head.conv_seg.weight': torch.randn(5, 8, 1, 1), 'decode_head.conv_seg.bias': torch.randn(5),
                 'decode_head.bottleneck.conv.weight': torch.randn(8, 32, 3, 3),
                 'decode_head.bottleneck.bn.weight': torch.randn(8),
                 **{f'decode_head.psp_modules.{i}.1.conv.weight': torch.randn(8, 256, 1, 1) for i in range(4)}}
    from_ours(tmp_path / 'folder', ours, heads, ['a', 'b', 'c', 'd', 'e'] if with_heads else None)
    weights = open_checkpoint(str(tmp_path / 'folder')).weights
    assert weights.source_format == ('transformers-dense' if with_heads else 'transformers')
    assert set(weights.backbone) == set(ours) and set(weights.other) == set(heads)
    for key, value in {**ours, **heads}.items():
        assert torch.equal({**weights.backbone, **weights.other}[key], value), key


def test_a_key_cannot_choose_the_size_of_the_model(tmp_path) -> None:
    """``stages.0.<huge>.gamma`` in an official-layout file asked for a model of that depth (gigabytes and minutes);
    it is one line at once."""
    state = build_checkpoint(source_backbone('v1'), 'official', 'v1')['model']
    state['stages.0.100000000.gamma'] = torch.ones(16)
    with pytest.raises(CheckpointError, match=r'depths \[100000001, .*beyond any ConvNeXt .* not a ConvNeXt'):
        convert_state_dict(state)


FCMAE_DWCONV = 'encoder.stages.0.0.dwconv.kernel'  # (49, 16) in TINY_ARCH


@pytest.mark.parametrize('shape', [(49,), (), (0, 16), (49, 0), (48, 16), (50, 16), (7, 7, 16), (49, 16, 1, 1)],
                         ids=str)
def test_an_fcmae_kernel_of_another_shape_is_one_line_naming_it(tmp_path, shape: tuple) -> None:
    """A Minkowski kernel is (k*k, C) or (k*k, in, out): a 1-D, 0-d, empty, non-square or 4-D one reached
    ``reshape`` (IndexError, RuntimeError) or passed through as a weight of another shape."""
    state = to_fcmae(source_backbone('v2').state_dict())
    state[FCMAE_DWCONV] = torch.zeros(shape)
    torch.save({'model': state}, tmp_path / 'fcmae.pt')
    with pytest.raises(CheckpointError) as error:
        loaded_backbone(tmp_path / 'fcmae.pt', version='v2')
    assert str(error.value) == (f"FCMAE kernel '{FCMAE_DWCONV}' has shape {shape}; expected (k*k, C) (depthwise) or "
                                '(k*k, in, out), with k*k a square number and no size 0: it is not an FCMAE '
                                'checkpoint.')


@pytest.mark.parametrize('key, shape, message', [
    ('stages.0.0.grn.gamma', (), r"GRN tensor 'stages.0.0.grn.gamma' has shape \(\); expected \(C,\)"),
    ('stages.0.0.grn.beta', (2, 3), r"GRN tensor 'stages.0.0.grn.beta' has shape \(2, 3\); expected \(C,\)"),
    ('stages.0.0.pwconv1.weight', (5, 5), r"Tensor 'stages.0.0.pwconv1.weight' has shape \(5, 5\); the ConvNeXt "
                                          r'the checkpoint describes has \(64, 16\) there'),
    ('stages.0.0.extra', (3, 3), r"Tensor 'stages.0.0.extra' has shape \(3, 3\); the ConvNeXt the checkpoint "
                                 'describes has no such tensor'),
])
def test_an_official_tensor_timm_cannot_reshape_is_one_line_naming_it(tmp_path, key: str, shape: tuple,
                                                                      message: str) -> None:
    """timm's filter reshapes GRN and 2-D tensors by name: an odd shape or an unknown 2-D name was a raw
    IndexError, RuntimeError or KeyError (FCMAE encoders go through it too)."""
    state = to_official(source_backbone('v2').state_dict())
    state[key] = torch.zeros(shape)
    torch.save({'model': state}, tmp_path / 'official.pth')
    with pytest.raises(CheckpointError, match=f'^{message}') as error:
        loaded_backbone(tmp_path / 'official.pth', version='v2')
    assert '\n' not in str(error.value)
