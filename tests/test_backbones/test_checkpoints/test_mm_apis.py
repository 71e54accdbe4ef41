"""mmengine's, mmdet's and mmseg's own loading APIs (``load_checkpoint``, ``init_detector``, ``init_model``) load
every layout the tools load, with the same weights and outputs: each scheme reaches the project's loader for it,
which returns the weights in the layout the model takes."""
import logging
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import CheckpointLoader, load_checkpoint

from backbones import ConvNeXt
from backbones.checkpoints.loading import Checkpoint, load_model_weights, open_checkpoint
from tests.helpers import randomize, to_official

from .test_huggingface import UPERNET_CONFIG, assert_close, upernet_logits

DET_CONFIG = 'configs/demo/mask_rcnn_convnext_demo.py'


def config(path: str) -> Config:
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None
    return cfg


def test_each_scheme_has_its_named_loader() -> None:
    """mmengine's log names the loader ("Loads checkpoint by <name> backend"): no catch-all for unknown schemes."""
    names = {scheme: CheckpointLoader._get_checkpoint_loader(scheme + 'x').__name__
             for scheme in ('', 'hf://', 'http://', 'https://')}
    assert names == {'': 'load_from_local', 'hf://': 'load_from_hf', 'http://': 'load_from_http',
                     'https://': 'load_from_http'}


def test_mmseg_init_model_loads_a_transformers_upernet_folder_as_the_tools_do(made) -> None:
    """This loaded nothing (transformers' names reached mmengine) and gave logits 1.1 (relative) off."""
    from mmseg.apis import init_model
    from mmseg.registry import MODELS

    folder, outputs, images = made
    model = init_model(config(UPERNET_CONFIG), str(folder / 'upernet'), device='cpu').eval()
    assert_close([upernet_logits(model, images)], [outputs['upernet.logits']], 'UperNet logits through init_model')
    init_default_scope('mmseg')
    ours = MODELS.build(config(UPERNET_CONFIG).model).eval()
    load_model_weights(ours, str(folder / 'upernet'), logging.getLogger('test'))
    for name, tensor in ours.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_mmdet_init_detector_loads_an_official_layout_detector_as_the_tools_do(tmp_path: Path) -> None:
    """The official release's layout (mmdet 2.x: ``backbone.downsample_layers``, ``backbone.norm{i}``)."""
    from mmdet.apis import init_detector
    from mmdet.registry import MODELS

    init_default_scope('mmdet')
    source = randomize(MODELS.build(config(DET_CONFIG).model)).eval()
    state = source.state_dict()
    backbone = {k.removeprefix('backbone.'): v for k, v in state.items() if k.startswith('backbone.')}
    official = {**{f'backbone.{k}': v for k, v in to_official(backbone, dense=True).items()},
                **{k: v for k, v in state.items() if not k.startswith('backbone.')}}
    path = tmp_path / 'official_detector.pth'
    torch.save({'state_dict': official, 'meta': {}}, path)
    assert open_checkpoint(str(path)).weights.source_format == 'official-dense'

    model = init_detector(config(DET_CONFIG), str(path), device='cpu').eval()
    ours = MODELS.build(config(DET_CONFIG).model).eval()
    load_model_weights(ours, str(path), logging.getLogger('test'))
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = source.extract_feat(image)
        for loaded in (model, ours):
            for got, want in zip(loaded.extract_feat(image), expected, strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_load_checkpoint_gives_a_backbone_an_official_classification_file(tmp_path: Path) -> None:
    source = randomize(ConvNeXt(arch='atto', version='v2', norm_outputs=False)).eval()
    path = tmp_path / 'official.pth'
    torch.save({'model': to_official(source.state_dict())}, path)
    target = ConvNeXt(arch='atto', version='v2', norm_outputs=False).eval()
    load_checkpoint(target, str(path), map_location='cpu', strict=False)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(target(image), source(image), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_other_checkpoints_pass_as_stored() -> None:
    """A checkpoint of another model reaches mmengine as it is (mmengine then reports its keys)."""
    contents = {'state_dict': {'fc.weight': torch.ones(2)}}
    assert Checkpoint('x.pth', contents).in_model_layout() is contents


@pytest.mark.parametrize('scheme', ['ftp://host/x.pth', 's3://bucket/x.pth'])
def test_the_tools_refuse_other_schemes_in_one_line(scheme: str) -> None:
    from backbones.errors import CheckpointError

    with pytest.raises(CheckpointError, match=f'^Cannot load {scheme}: give a local path, an http'):
        open_checkpoint(scheme)
