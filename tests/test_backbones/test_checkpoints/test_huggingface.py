"""backbones/checkpoints/huggingface.py: transformers checkpoints in and out, against transformers itself.

transformers (``.venv/peers/transformers``) runs in a subprocess (``transformers_worker.py``): it builds its own
ConvNeXt V1-T, V2-atto and UperNet-ConvNeXt-T models with random weights, saves them with
``save_pretrained`` and runs them on one image; our loaders read those folders and our models must give the
same stage features and logits. The reverse direction: folders we write with ``--to hf`` are loaded by
transformers' ``from_pretrained`` and must give our outputs.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope

from backbones import ConvNeXt
from backbones.checkpoints.layouts import convert_state_dict
from backbones.checkpoints.layouts.transformers import from_ours as write_transformers_folder
from backbones.checkpoints.loading import load_model_weights, open_checkpoint
from backbones.engine.runner import ConvNeXtDenseRunner
from backbones.errors import CheckpointError

from .transformers_peer import run_worker

UPERNET_CONFIG = 'configs/seg/upernet_convnext_t.py'
RELATIVE_TOLERANCE = 1e-4


def read_checkpoint(source: str) -> dict:
    """The state dict of ``source`` as stored, read through the project's one way in."""
    return open_checkpoint(source).state_dict


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def assert_close(ours: list[torch.Tensor], theirs: list[torch.Tensor], what: str) -> None:
    assert len(ours) == len(theirs) == 4 or len(ours) == len(theirs) == 1, what
    for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
        error = relative_error(mine, other)
        assert error < RELATIVE_TOLERANCE, f'{what} output {index}: max relative difference {error:.2e}'


def backbone(arch: str, version: str, checkpoint: str | None, norm_outputs: bool) -> ConvNeXt:
    init_cfg = dict(type='Pretrained', checkpoint=checkpoint) if checkpoint else None
    model = ConvNeXt(arch=arch, version=version, norm_outputs=norm_outputs, init_cfg=init_cfg)
    model.init_weights()
    return model.eval()


def features(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(model(images))


def theirs(outputs: dict[str, torch.Tensor], name: str, kind: str) -> list[torch.Tensor]:
    return [outputs[f'{name}.{kind}.{i}'] for i in range(4)]


@pytest.mark.parametrize('name, arch, version', [
    ('v1_model', 'tiny', 'v1'), ('v1_classifier', 'tiny', 'v1'), ('v2_model', 'atto', 'v2'),
    ('v2_classifier', 'atto', 'v2')])
def test_transformers_models_load_as_our_backbone(made, name: str, arch: str, version: str) -> None:
    folder, outputs, images = made
    ours = backbone(arch, version, str(folder / name), norm_outputs=False)
    assert_close(features(ours, images), theirs(outputs, name, 'hidden'), name)


@pytest.mark.parametrize('name, arch, version', [('v1_backbone', 'tiny', 'v1'), ('v2_backbone', 'atto', 'v2')])
def test_transformers_backbones_load_with_their_output_norms(made, name: str, arch: str, version: str) -> None:
    folder, outputs, images = made
    ours = backbone(arch, version, str(folder / name / 'model.safetensors'), norm_outputs=True)  # the file itself
    assert_close(features(ours, images), theirs(outputs, name, 'features'), name)


def upernet_t() -> torch.nn.Module:
    cfg = Config.fromfile(UPERNET_CONFIG)
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model).eval()


def upernet_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    metas = [dict(img_shape=images.shape[2:], ori_shape=images.shape[2:], pad_shape=images.shape[2:])]
    with torch.no_grad():
        return model.encode_decode(images, metas)


def test_transformers_upernet_loads_as_our_upernet(made) -> None:
    folder, outputs, images = made
    model = upernet_t()
    load_model_weights(model, str(folder / 'upernet'), MMLogger.get_current_instance())
    assert_close([upernet_logits(model, images)], [outputs['upernet.logits']], 'UperNet logits')
    weights = convert_state_dict(read_checkpoint(str(folder / 'upernet')))
    assert weights.source_format == 'transformers-dense'


def test_our_folders_load_in_transformers(made, tmp_path) -> None:
    folder, _, images = made
    (folder / 'ours').mkdir(exist_ok=True)
    ours = {}
    for name, arch, version in (('v1_tiny', 'tiny', 'v1'), ('v2_atto', 'atto', 'v2')):
        model = backbone(arch, version, None, norm_outputs=True)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))))
        written = write_transformers_folder(folder / 'ours' / name, model.state_dict(), {})
        assert written == ('ConvNextBackbone' if version == 'v1' else 'ConvNextV2Backbone')
        ours[f'{name}.features'] = features(model, images)
        ours[f'{name}_model.hidden'] = stage_outputs(model, images)  # before the norms, as ConvNextModel's
    segmentor = upernet_t()
    for param in segmentor.parameters():
        with torch.no_grad():
            param.add_(0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(3)))
    state = segmentor.state_dict()
    backbone_state = {k.removeprefix('backbone.'): v for k, v in state.items() if k.startswith('backbone.')}
    heads = {k: v for k, v in state.items() if k.startswith(('decode_head.', 'auxiliary_head.'))}
    classes = [f'class {i}' for i in range(150)]
    assert write_transformers_folder(folder / 'ours' / 'upernet_t', backbone_state, heads, classes) == \
        'UperNetForSemanticSegmentation'
    config = json.loads((folder / 'ours' / 'upernet_t' / 'config.json').read_text())
    assert config['id2label']['149'] == 'class 149' and config['hidden_size'] == 512
    outputs = run_worker('run', folder)
    for name in ('v1_tiny', 'v2_atto'):
        assert_close(ours[f'{name}.features'], theirs(outputs, name, 'features'), f'{name} as transformers backbone')
        assert_close(ours[f'{name}_model.hidden'], theirs(outputs, f'{name}_model', 'hidden'),
                     f'{name} as transformers model')
    assert_close([upernet_logits(segmentor, images)], [outputs['upernet_t.logits']], 'UperNet as transformers')


def stage_outputs(model: ConvNeXt, images: torch.Tensor) -> list[torch.Tensor]:
    """The four stage outputs of our backbone before its output norms."""
    found = []
    with torch.no_grad():
        x = model.stem(images)
        for stage in model.stages:
            x = stage(x)
            found.append(x)
    return found


def corrupt_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_corrupted_transformers_folders_are_one_line(made, tmp_path) -> None:
    folder, _, _ = made
    renamed = corrupt_copy(folder / 'v1_model', tmp_path / 'renamed')
    tensors = safetensors.torch.load_file(renamed / 'model.safetensors')
    tensors['encoder.stages.2.layers.4.dwconv.wieght'] = tensors.pop('encoder.stages.2.layers.4.dwconv.weight')
    safetensors.torch.save_file(tensors, renamed / 'model.safetensors', metadata={'format': 'pt'})
    with pytest.raises(CheckpointError, match=r"'stages\.2\.blocks\.4\.conv_dw\.wieght' .* has no place"):
        backbone('tiny', 'v1', str(renamed), norm_outputs=False)

    reshaped = corrupt_copy(folder / 'v1_model', tmp_path / 'reshaped')
    tensors = safetensors.torch.load_file(reshaped / 'model.safetensors')
    tensors['encoder.stages.1.layers.0.pwconv1.weight'] = tensors['encoder.stages.1.layers.0.pwconv1.weight'][:-1]
    safetensors.torch.save_file(tensors, reshaped / 'model.safetensors', metadata={'format': 'pt'})
    with pytest.raises(CheckpointError, match=r"Shape mismatch at 'stages\.1\.blocks\.0\.mlp\.fc1\.weight'"):
        backbone('tiny', 'v1', str(reshaped), norm_outputs=False)

    declared = corrupt_copy(folder / 'v1_model', tmp_path / 'declared')
    config = json.loads((declared / 'config.json').read_text())
    config['depths'] = [3, 3, 27, 3]
    (declared / 'config.json').write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r'config\.json declares ConvNeXt V1 depths \[3, 3, 27, 3\].* but the '
                                              r'weights hold ConvNeXt V1 depths \[3, 3, 9, 3\]'):
        read_checkpoint(str(declared))

    (declared / 'config.json').write_text('{"model_type": "convnext", ')
    with pytest.raises(CheckpointError, match=r'config\.json: not readable JSON'):
        read_checkpoint(str(declared))

    with pytest.raises(CheckpointError, match=r'The checkpoint is ConvNeXt V2 depths \[2, 2, 6, 2\] dims '
                                              r'\[40, 80, 160, 320\] \(transformers format\); the config builds '
                                              r'ConvNeXt V1 depths \[3, 3, 9, 3\]'):
        backbone('tiny', 'v1', str(folder / 'v2_model'), norm_outputs=False)


def test_sharded_folder_and_shard_names_outside_it(made, tmp_path) -> None:
    folder, outputs, images = made
    sharded = tmp_path / 'sharded'
    sharded.mkdir()
    shutil.copy(folder / 'v2_model' / 'config.json', sharded)
    tensors = safetensors.torch.load_file(folder / 'v2_model' / 'model.safetensors')
    names = sorted(tensors)
    weight_map = {}
    for index, part in enumerate((names[:len(names) // 2], names[len(names) // 2:])):
        shard = f'model-0000{index + 1}-of-00002.safetensors'
        safetensors.torch.save_file({k: tensors[k] for k in part}, sharded / shard, metadata={'format': 'pt'})
        weight_map.update({k: shard for k in part})
    (sharded / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': weight_map}))
    ours = backbone('atto', 'v2', str(sharded), norm_outputs=False)
    assert_close(features(ours, images), theirs(outputs, 'v2_model', 'hidden'), 'sharded V2-atto')

    weight_map[names[0]] = '../outside.safetensors'
    (sharded / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': weight_map}))
    with pytest.raises(CheckpointError, match=r"shard '\.\./outside\.safetensors' is not a \.safetensors/\.bin file "
                                              'of this folder'):
        read_checkpoint(str(sharded))


def hub_cache(root: Path, repo: str, source: Path, commit: str) -> None:
    """``source`` laid out in ``root`` as huggingface_hub's cache lays out a snapshot of ``repo`` at ``commit``."""
    model = root / f"models--{repo.replace('/', '--')}"
    snapshot = model / 'snapshots' / commit
    (model / 'blobs').mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        blob = model / 'blobs' / f'blob-{file.name}'
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (model / 'refs').mkdir()
    (model / 'refs' / 'main').write_text(commit)


def test_hub_names_resolve_through_the_huggingface_hub_cache_offline(made, tmp_path) -> None:
    folder, _, _ = made
    commit = 'a' * 40
    hub_cache(tmp_path / 'cache', 'openmmlab/upernet-convnext-tiny', folder / 'upernet', commit)
    env = {**os.environ, 'HF_HUB_CACHE': str(tmp_path / 'cache'), 'HF_HUB_OFFLINE': '1'}
    for name in ('hf://openmmlab/upernet-convnext-tiny', f'hf://openmmlab/upernet-convnext-tiny@{commit}'):
        result = subprocess.run([sys.executable, 'tools/convert_checkpoint.py', name, str(tmp_path / 'out.pth')],
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert 'transformers-dense format' in result.stdout
    from_folder = convert_state_dict(read_checkpoint(str(folder / 'upernet')))
    converted = read_checkpoint(str(tmp_path / 'out.pth'))
    expected = {**{f'backbone.{k}': v for k, v in from_folder.backbone.items()}, **from_folder.other}
    assert set(converted) == set(expected)
    assert all(torch.equal(converted[k], expected[k]) for k in expected)

    result = subprocess.run([sys.executable, 'tools/convert_checkpoint.py', 'hf://facebook/convnextv2-tiny-1k-224',
                             str(tmp_path / 'other.pth')], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().count('\n') == 0, result.stderr
    assert 'Cannot load hf://facebook/convnextv2-tiny-1k-224: huggingface_hub could not provide it' in result.stderr
    assert 'HF_HUB_OFFLINE' in result.stderr


def test_load_from_reads_a_transformers_folder_strictly(made) -> None:
    folder, outputs, images = made
    state = SimpleNamespace(_has_loaded=False, _resume=False, _load_from=str(folder / 'upernet'), model=upernet_t(),
                            logger=MMLogger.get_current_instance())
    ConvNeXtDenseRunner.load_or_resume(state)  # the runner's load_from step, on the attributes it reads
    assert_close([upernet_logits(state.model, images)], [outputs['upernet.logits']], 'UperNet through load_from')
    state = SimpleNamespace(_has_loaded=False, _resume=False, _load_from=str(folder / 'v1_model'), model=upernet_t(),
                            logger=MMLogger.get_current_instance())
    with pytest.raises(CheckpointError, match=r'holds only a backbone \(transformers format\)'):
        ConvNeXtDenseRunner.load_or_resume(state)


@pytest.mark.parametrize('name', ['hf://openmmlab', 'hf://org/..', 'hf://org/name@../../refs', 'hf://org/name@a//b'])
def test_hub_names_that_could_name_other_paths_are_refused(name: str) -> None:
    with pytest.raises(CheckpointError, match=r'^Cannot load hf://.*: (a Hub name is|.* not allowed)'):
        read_checkpoint(name)


def test_infer_tool_predicts_with_a_transformers_folder(made, tmp_path) -> None:
    import cv2
    import numpy as np
    from mmseg.apis import inference_model, init_model

    folder, _, _ = made
    image = tmp_path / 'photo.png'
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    result = subprocess.run([sys.executable, 'tools/infer.py', UPERNET_CONFIG, str(folder / 'upernet'), str(image),
                             '--out', str(tmp_path / 'out'), '--device', 'cpu', '--precision', 'fp32'],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    model = init_model(UPERNET_CONFIG, None, device='cpu')
    load_model_weights(model, str(folder / 'upernet'), MMLogger.get_current_instance())
    expected = inference_model(model, str(image)).seg_logits.data.argmax(dim=0).numpy()
    labels = cv2.imread(str(tmp_path / 'out' / 'labels' / 'photo.png'), cv2.IMREAD_UNCHANGED)
    assert labels.shape == expected.shape and (labels == expected).all()
    assert len(np.unique(labels)) > 1  # the random UperNet predicts several classes, not a constant map


def small_folder(folder: Path) -> Path:
    """A transformers folder of a tiny ConvNeXt V1, written by the project (no transformers needed)."""
    write_transformers_folder(folder, ConvNeXt(arch=dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))).state_dict(), {})
    return folder


def test_files_linked_out_of_the_model_folder_are_refused(tmp_path) -> None:
    """A shard, an index or a config.json that is a link to a file outside the folder is never read; the links of
    huggingface_hub's cache (a snapshot's files into its repository's blobs/) are read."""
    source = small_folder(tmp_path / 'source')
    outside = tmp_path / 'outside'
    outside.mkdir()
    shutil.copy(source / 'model.safetensors', outside / 'model.safetensors')
    shard = tmp_path / 'shard'
    shutil.copytree(source, shard, ignore=shutil.ignore_patterns('model.safetensors'))
    (shard / 'model-00001-of-00001.safetensors').symlink_to(outside / 'model.safetensors')
    names = safetensors.torch.load_file(source / 'model.safetensors')
    (shard / 'model.safetensors.index.json').write_text(
        json.dumps({'weight_map': {name: 'model-00001-of-00001.safetensors' for name in names}}))
    config = shutil.copytree(source, tmp_path / 'config', ignore=shutil.ignore_patterns('config.json'))
    shutil.copy(source / 'config.json', outside / 'config.json')
    (config / 'config.json').symlink_to(outside / 'config.json')
    for folder, name, target in ((shard, 'model-00001-of-00001.safetensors', 'model.safetensors'),
                                 (config, 'config.json', 'config.json')):
        with pytest.raises(CheckpointError) as error:
            read_checkpoint(str(folder))
        assert str(error.value) == (f'Cannot load {folder / name}: it resolves to {outside / target}, outside the '
                                    f'model folder {folder}. The files of a transformers model folder lie in it.')
    (shard / 'model-00001-of-00001.safetensors').unlink()
    shutil.copy(outside / 'model.safetensors', shard / 'model-00001-of-00001.safetensors')
    assert set(read_checkpoint(str(shard))) == set(names)  # the same folder, its shard a file of its own

    hub_cache(tmp_path / 'cache', 'org/name', source, 'a' * 40)
    snapshot = tmp_path / 'cache' / 'models--org--name' / 'snapshots' / ('a' * 40)
    assert (snapshot / 'config.json').is_symlink() and set(read_checkpoint(str(snapshot))) == set(names)


def test_a_fifo_as_config_json_in_the_hub_cache_is_one_line(tmp_path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the cache's config.json is refused at once."""
    hub_cache(tmp_path / 'cache', 'org/name', small_folder(tmp_path / 'source'), 'a' * 40)
    blob = tmp_path / 'cache' / 'models--org--name' / 'blobs' / 'blob-config.json'
    blob.unlink()
    os.mkfifo(blob)
    env = {**os.environ, 'HF_HUB_CACHE': str(tmp_path / 'cache'), 'HF_HUB_OFFLINE': '1', 'PYTHONPATH': os.getcwd()}
    result = subprocess.run([sys.executable, 'tools/convert_checkpoint.py', 'hf://org/name', str(tmp_path / 'out.pth')],
                            env=env, capture_output=True, text=True, timeout=120)
    config = tmp_path / 'cache' / 'models--org--name' / 'snapshots' / ('a' * 40) / 'config.json'
    assert (result.returncode, result.stderr) == (
        1, f'error: Cannot load {config}: it is not a regular file (a device, FIFO or socket).\n')
