"""tools/convert_checkpoint.py converts offline and refuses untrusted pickles unless told."""
import argparse
import runpy
import sys

import pytest
import torch

from backbones import ConvNeXt, load_local_checkpoint
from tests.helpers import TINY_ARCH, randomize, to_fcmae, to_official


def convert(monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, 'argv', ['convert_checkpoint.py', *argv])
    runpy.run_path('tools/convert_checkpoint.py', run_name='__main__')
    written = load_local_checkpoint(argv[1])['state_dict']
    for key, value in written.items():  # plain tensors, not views into a larger or permuted storage
        assert value.is_contiguous() and value.untyped_storage().nbytes() == value.numel() * value.element_size(), key


def test_fcmae_converts_to_a_loadable_backbone(tmp_path, monkeypatch, capsys) -> None:
    source = randomize(ConvNeXt(arch=TINY_ARCH, version='v2')).eval()
    torch.save({'model': to_fcmae(source.state_dict())}, tmp_path / 'fcmae.pt')
    convert(monkeypatch, str(tmp_path / 'fcmae.pt'), str(tmp_path / 'out.pth'))
    assert 'fcmae format' in capsys.readouterr().out

    converted = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert converted['meta']['source_format'] == 'fcmae'
    loaded = ConvNeXt(arch=TINY_ARCH, version='v2').eval()
    missing, unexpected = loaded.load_state_dict(converted['state_dict'], strict=False)
    assert unexpected == [] and all(k.startswith('out_norms.') for k in missing)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(loaded.forward_stages(image), source.forward_stages(image)):
            torch.testing.assert_close(ours, theirs)


def test_official_detector_keeps_its_heads(tmp_path, monkeypatch) -> None:
    source = randomize(ConvNeXt(arch=TINY_ARCH))
    heads = {'roi_head.bbox_head.0.fc_cls.weight': torch.randn(81, 16)}
    backbone = {f'backbone.{k}': v for k, v in to_official(source.state_dict(), dense=True).items()}
    torch.save({'state_dict': {**backbone, **heads}, 'meta': {'CLASSES': ('a',)}}, tmp_path / 'cascade.pth')
    convert(monkeypatch, str(tmp_path / 'cascade.pth'), str(tmp_path / 'out.pth'))
    state = torch.load(tmp_path / 'out.pth', weights_only=True)['state_dict']
    torch.testing.assert_close(state['roi_head.bbox_head.0.fc_cls.weight'], heads['roi_head.bbox_head.0.fc_cls.weight'])
    expected = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    assert set(state) == set(expected) | set(heads)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, msg=key)


def test_objects_beside_the_weights_are_left_out(tmp_path, monkeypatch) -> None:
    """A checkpoint that pickles other objects (here argparse.Namespace) converts: they are inert records."""
    source = randomize(ConvNeXt(arch=TINY_ARCH))
    path = tmp_path / 'with_args.pth'
    torch.save({'model': to_official(source.state_dict()), 'args': argparse.Namespace(lr=1e-3)}, path)
    convert(monkeypatch, str(path), str(tmp_path / 'out.pth'))
    converted = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert converted['meta']['source_format'] == 'official' and set(converted) == {'state_dict', 'meta'}


def test_safetensors_out_and_in(tmp_path, monkeypatch, capsys) -> None:
    source = randomize(ConvNeXt(arch=TINY_ARCH, version='v2')).eval()
    torch.save({'model': to_official(source.state_dict())}, tmp_path / 'official.pth')
    convert(monkeypatch, str(tmp_path / 'official.pth'), str(tmp_path / 'backbone.safetensors'))
    assert (tmp_path / 'backbone.safetensors').read_bytes()[8:9] == b'{'  # a safetensors header, no pickle
    loaded = ConvNeXt(arch=TINY_ARCH, version='v2',
                      init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'backbone.safetensors')))
    loaded.init_weights()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(loaded.eval().forward_stages(image), source.forward_stages(image)):
            torch.testing.assert_close(ours, theirs)
    # A safetensors file converts again (timm-layout state dict; metadata says where it came from).
    assert load_local_checkpoint(str(tmp_path / 'backbone.safetensors'))['meta']['source_format'] == 'official'
    convert(monkeypatch, str(tmp_path / 'backbone.safetensors'), str(tmp_path / 'again.pth'))
    assert 'timm format' in capsys.readouterr().out.splitlines()[-1]


def test_broken_input_is_one_line(tmp_path, monkeypatch) -> None:
    (tmp_path / 'weights.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": broken')
    message = r'^error: Cannot load .*weights\.safetensors: it is not a valid safetensors file'
    with pytest.raises(SystemExit, match=message):
        convert(monkeypatch, str(tmp_path / 'weights.safetensors'), str(tmp_path / 'out.pth'))
    (tmp_path / 'photo.pth').write_bytes(b'\xff\xd8\xff\xe0' + bytes(50))
    with pytest.raises(SystemExit, match=r'^error: Cannot load .*photo\.pth: it is a JPEG image, not a checkpoint\.$'):
        convert(monkeypatch, str(tmp_path / 'photo.pth'), str(tmp_path / 'out.pth'))
    assert not (tmp_path / 'out.pth').exists()
    torch.save({'state_dict': {'w': torch.ones(1000)}}, tmp_path / 'whole.pth')
    (tmp_path / 'cut.pth').write_bytes((tmp_path / 'whole.pth').read_bytes()[:1500])
    with pytest.raises(SystemExit, match=r'^error: Cannot load .*cut\.pth: it is a truncated or damaged'):
        convert(monkeypatch, str(tmp_path / 'cut.pth'), str(tmp_path / 'out.pth'))


def test_outputs_it_would_not_write_whole_are_one_line(tmp_path, monkeypatch) -> None:
    """A directory as the output file, a file or a folder of other files as the --to hf folder: one line, before
    anything is read, and the user's files untouched. A file, or a folder the tool wrote, is replaced."""
    torch.save({'model': to_official(randomize(ConvNeXt(arch=TINY_ARCH)).state_dict())}, tmp_path / 'official.pth')
    folder, file, stale = tmp_path / 'folder', tmp_path / 'notes.txt', tmp_path / 'stale'
    folder.mkdir()
    (folder / 'notes.txt').write_text('mine')
    file.write_text('mine')
    stale.mkdir()
    (stale / 'config.json').write_text('{}')
    (stale / 'pytorch_model.bin').write_text('old weights')
    cases = [(folder, [], f'{folder}: it is a directory; give the name of the file to write, e.g. '
                         f'{folder}/converted.pth.'),
             (folder, ['--to', 'hf'], f'{folder}: a folder of other files, not a transformers model folder (no '
                                      'config.json). Give a new or empty folder.'),
             (file, ['--to', 'hf'], f'{file}: it is a file; --to hf writes a folder (config.json, model.safetensors). '
                                    'Give a new or empty folder.'),
             (stale, ['--to', 'hf'], f'{stale}: a transformers model folder with pytorch_model.bin, which would be '
                                     'read instead of the model.safetensors written beside it. Give a new or empty '
                                     'folder.'),
             (file / 'out.pth', [], f'{file}/out.pth: cannot write it (File exists).')]
    for output, flags, message in cases:
        monkeypatch.setattr(sys, 'argv', ['convert_checkpoint.py', str(tmp_path / 'official.pth'), str(output), *flags])
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path('tools/convert_checkpoint.py', run_name='__main__')
        assert exit_info.value.code == f'error: {message}'
    assert sorted(path.name for path in folder.iterdir()) == ['notes.txt'] and file.read_text() == 'mine'
    assert (stale / 'pytorch_model.bin').read_text() == 'old weights'

    file.write_text('an old conversion')
    convert(monkeypatch, str(tmp_path / 'official.pth'), str(file))
    for _ in range(2):
        convert(monkeypatch, str(tmp_path / 'official.pth'), str(tmp_path / 'hf'), '--to', 'hf')
    assert sorted(path.name for path in (tmp_path / 'hf').iterdir()) == ['config.json', 'model.safetensors']


def test_class_names_outside_the_schema_are_one_line(tmp_path, monkeypatch) -> None:
    """id2label is written from the checkpoint's class names: checked first (backbones/class_meta.py)."""
    state = {f'backbone.{k}': v for k, v in to_official(randomize(ConvNeXt(arch=TINY_ARCH)).state_dict(), True).items()}
    path = tmp_path / 'trained.pth'
    torch.save({'state_dict': state, 'meta': {'dataset_meta': {'classes': ['road', 'car\x1b[8m']}}}, path)
    monkeypatch.setattr(sys, 'argv', ['convert_checkpoint.py', str(path), str(tmp_path / 'hf'), '--to', 'hf'])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path('tools/convert_checkpoint.py', run_name='__main__')
    assert exit_info.value.code.startswith(f"error: {path}: its meta.dataset_meta classes hold the name 'car\\x1b[8m' "
                                           'at 1, with a control character.')
    assert not (tmp_path / 'hf').exists()


@pytest.mark.parametrize('output', ['out.safetensors', 'hf'])
def test_a_tensor_stored_under_two_keys_converts_to_safetensors(tmp_path, monkeypatch, output: str) -> None:
    """safetensors refuses tensors that share memory: a tied tensor (one storage under two keys, within the bound
    on repeated views) was a raw RuntimeError; each key is written with memory of its own."""
    state = randomize(ConvNeXt(arch=TINY_ARCH)).state_dict()
    state['stages.0.blocks.0.gamma'] = state['stages.0.blocks.0.norm.weight']
    torch.save({'state_dict': state}, tmp_path / 'tied.pth')
    monkeypatch.setattr(sys, 'argv', ['convert_checkpoint.py', str(tmp_path / 'tied.pth'), str(tmp_path / output),
                                      *(['--to', 'hf'] if output == 'hf' else [])])
    runpy.run_path('tools/convert_checkpoint.py', run_name='__main__')
    written = load_local_checkpoint(str(tmp_path / output))['state_dict']
    gamma = 'stages.0.blocks.0.gamma' if output != 'hf' else 'encoder.stages.0.layers.0.layer_scale_parameter'
    norm = 'stages.0.blocks.0.norm.weight' if output != 'hf' else 'encoder.stages.0.layers.0.layernorm.weight'
    torch.testing.assert_close(written[gamma], state['stages.0.blocks.0.gamma'])
    torch.testing.assert_close(written[norm], state['stages.0.blocks.0.norm.weight'])
