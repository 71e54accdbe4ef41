"""FCMAE: loss on hidden patches only, checkpoints both ways (official in, ours out to det/seg)."""
import importlib
import logging

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from backbones import FCMAE, CheckpointError, ConvNeXt, load_backbone_weights
from backbones.models.fcmae import normalise_patches, patchify
from tests.helpers import TINY_ARCH, randomize, to_fcmae

FROM_FCMAE = {'model.backbone.version': 'v2', 'model.backbone.layer_scale_init_value': None,
              'model.backbone.init_cfg._delete_': True, 'model.backbone.init_cfg.type': 'Pretrained'}


def tiny_fcmae(**kwargs) -> FCMAE:
    return randomize(FCMAE(arch=TINY_ARCH, decoder_dim=64, **kwargs)).eval()


def test_loss_counts_hidden_patches_only_against_normalised_pixels() -> None:
    model = tiny_fcmae()
    images = torch.randn(2, 3, 64, 96)
    mask = model.random_mask(images)
    assert mask.sum() == 2 * (6 - int(6 * 0.4))  # int(L * (1 - ratio)) visible per image
    prediction = torch.randn(2, 32 * 32 * 3, 2, 3)
    loss = model.loss(images, prediction, mask)

    at_visible = prediction + 10 * (~mask)[:, None]
    torch.testing.assert_close(model.loss(images, at_visible, mask), loss)
    at_hidden = prediction + 10 * mask[:, None]
    assert model.loss(images, at_hidden, mask) > loss + 50
    # Per-patch normalised targets: a per-patch gain and offset of the pixels does not change the loss,
    # and predicting the normalised pixels gives zero.
    gain = 1 + torch.rand(2, 1, 2, 3).repeat_interleave(32, 2).repeat_interleave(32, 3)
    torch.testing.assert_close(model.loss(images * gain + 3 * gain, prediction, mask), loss, rtol=1e-4, atol=1e-4)
    exact = normalise_patches(patchify(images)).permute(0, 3, 1, 2)
    assert model.loss(images, exact, mask) < 1e-8
    # Without norm_pix_loss the target is the pixels themselves.
    plain = tiny_fcmae(norm_pix_loss=False)
    assert plain.loss(images, patchify(images).permute(0, 3, 1, 2), mask) < 1e-10


def test_masked_patches_do_not_reach_the_encoder() -> None:
    model = tiny_fcmae()
    images = torch.randn(2, 3, 64, 64)
    mask = model.random_mask(images)
    hidden = mask.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, None].expand_as(images)
    changed = images.masked_fill(hidden, 7.0)
    with torch.no_grad():
        torch.testing.assert_close(model.predict_patches(images, mask), model.predict_patches(changed, mask))


def official_checkpoint(tmp_path) -> tuple[str, ConvNeXt]:
    """An official-layout FCMAE file (sparse kernels, official decoder names) and its source backbone."""
    source = randomize(ConvNeXt(arch=TINY_ARCH, version='v2', out_indices=(3,), norm_outputs=False))
    path = str(tmp_path / 'convnextv2_tiny_arch_1k_224_fcmae.pt')
    torch.save({'model': to_fcmae(source.state_dict())}, path)
    return path, source


def test_official_checkpoint_loads_whole_into_fcmae(tmp_path) -> None:
    path, source = official_checkpoint(tmp_path)
    official = torch.load(path)['model']
    model = FCMAE(arch=TINY_ARCH, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()  # strict: raises on any missing or unexpected key
    backbone = ConvNeXt(arch=TINY_ARCH, version='v2', init_cfg=dict(type='Pretrained', checkpoint=path))
    backbone.init_weights()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs, truth in zip(model.backbone.forward_stages(image), backbone.forward_stages(image),
                                       source.forward_stages(image)):
            torch.testing.assert_close(ours, theirs)
            torch.testing.assert_close(ours, truth, atol=1e-5, rtol=1e-5)
    decoder = model.state_dict()
    torch.testing.assert_close(decoder['decoder.0.conv_dw.weight'], official['decoder.0.dwconv.weight'])
    torch.testing.assert_close(decoder['decoder.0.mlp.fc1.weight'], official['decoder.0.pwconv1.weight'])
    torch.testing.assert_close(decoder['decoder.0.mlp.grn.weight'], official['decoder.0.grn.gamma'].flatten())
    torch.testing.assert_close(decoder['decoder.0.mlp.grn.bias'], official['decoder.0.grn.beta'].flatten())
    for key in ('proj.weight', 'mask_token', 'pred.weight', 'pred.bias'):
        torch.testing.assert_close(decoder[key], official[key])


def test_wrong_fcmae_arch_is_a_one_line_error(tmp_path) -> None:
    path, _ = official_checkpoint(tmp_path)
    model = FCMAE(arch='atto', init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointError, match='Check that the FCMAE arch and decoder_dim') as error:
        model.init_weights()
    assert '\n' not in str(error.value)


@pytest.mark.parametrize('config', ['configs/demo/upernet_convnext_demo.py', 'configs/demo/mask_rcnn_convnext_demo.py'])
def test_pretraining_checkpoint_fine_tunes_in_the_demo_configs(tmp_path, caplog, config: str) -> None:
    demo_arch = dict(depths=(2, 2, 4, 2), dims=(32, 64, 128, 256))
    pretrained = randomize(FCMAE(arch=demo_arch, decoder_dim=64))
    path = tmp_path / 'iter_10.pth'
    torch.save({'meta': {}, 'state_dict': pretrained.state_dict()}, path)  # as mmengine's runner writes it
    cfg = Config.fromfile(config)
    cfg.merge_from_dict({**FROM_FCMAE, 'model.backbone.init_cfg.checkpoint': str(path)})
    registry = importlib.import_module(f"{'mmseg' if 'upernet' in config else 'mmdet'}.registry").MODELS
    with DefaultScope.overwrite_default_scope(registry.scope):
        model = registry.build(cfg.model)
    with caplog.at_level(logging.INFO):  # the report the backbone's init_weights logs; raises on unexpected keys
        load_backbone_weights(model.backbone, cfg.model.backbone.init_cfg.checkpoint, logging.getLogger('test'))
    assert 'fcmae-timm format, 116 tensors' in caplog.text
    assert 'not used (FCMAE decoder): 15 tensors' in caplog.text
    loaded = model.backbone.state_dict()
    for key, value in pretrained.backbone.state_dict().items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('shape', [(16,), (0, 16), (10, 16), (4, 16, 32, 1)], ids=str)
def test_an_fcmae_kernel_of_another_shape_is_one_line_in_init_weights(tmp_path, shape: tuple) -> None:
    """The official downsample kernels are (k*k, in, out): another shape reached ``reshape`` in a raw traceback."""
    path, _ = official_checkpoint(tmp_path)
    state = torch.load(path)
    state['model']['encoder.downsample_layers.1.1.kernel'] = torch.zeros(shape)
    torch.save(state, path)
    model = FCMAE(arch=TINY_ARCH, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointError) as error:
        model.init_weights()
    assert str(error.value).startswith(f"FCMAE kernel 'encoder.downsample_layers.1.1.kernel' has shape {shape}; "
                                       'expected (k*k, C) (depthwise) or (k*k, in, out)')
    assert '\n' not in str(error.value)
