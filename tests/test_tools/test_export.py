"""tools/export.py and --backend onnxruntime on unusable input: one error line each, before any work. (What the
exports compute is tested in tests/test_backbones/test_deploy/, through the tools in test_infer.py, and the
metrics of trained models through tools/test.py in test_detectors_learn.py and test_train_test.py.)"""
import runpy
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import backbones  # noqa: F401  registers ConvNeXt

DET_CONFIG = 'configs/demo/mask_rcnn_convnext_demo.py'
SEG_CONFIG = 'configs/demo/upernet_convnext_demo.py'


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> Path:
    """A random-weight demo UperNet checkpoint (seg.pth) and its backbone exported (backbone.onnx)."""
    root = tmp_path_factory.mktemp('export')
    cfg = Config.fromfile(SEG_CONFIG)
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.init_cfg = None
    torch.save({'state_dict': MODELS.build(cfg.model).state_dict()}, root / 'seg.pth')
    cv2.imwrite(str(root / 'image.png'), np.zeros((32, 32, 3), np.uint8))
    run('tools/export.py', SEG_CONFIG, str(root / 'seg.pth'), '--out', str(root), '--part', 'backbone',
        '--precision', 'fp16', '--shape', '64', '64')
    return root


def run(tool: str, *args: str) -> None:
    sys.argv = [tool, *args]
    runpy.run_path(tool, run_name='__main__')


def test_fp16_export_prints_the_rule_it_checked(files, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, 'argv', sys.argv)
    run('tools/export.py', SEG_CONFIG, str(files / 'seg.pth'), '--out', str(files / 'again'), '--part', 'backbone',
        '--precision', 'fp16', '--shape', '64', '64')
    out = capsys.readouterr().out
    assert 'backbone, fp16, traced at 64x64, inputs image, outputs stage0, stage1, stage2, stage3' in out
    assert 'fp16 rule: 18 normalisation reductions read fp32; 14 convolutions read fp16' in out


CASES = {
    'a checkpoint given as the ONNX model': (
        'tools/test.py', [SEG_CONFIG, '{seg.pth}', '--backend', 'onnxruntime'],
        '{seg.pth} is not an ONNX model (it does not parse): export it again with tools/export.py'),
    'a backbone export to evaluate': (
        'tools/test.py', [SEG_CONFIG, '{backbone.onnx}', '--backend', 'onnxruntime'],
        '{backbone.onnx} is a backbone export: tools/test.py and tools/infer.py run the full model'),
    'a backbone export to infer with': (
        'tools/infer.py', [DET_CONFIG, '{backbone.onnx}', '{image.png}', '--out', '{out}', '--backend', 'onnxruntime'],
        'is a backbone export'),
    'PyTorch options with ONNX Runtime': (
        'tools/test.py', [SEG_CONFIG, '{backbone.onnx}', '--backend', 'onnxruntime', '--channels-last'],
        '--channels-last apply to the PyTorch backend: an ONNX model runs in the precision it was exported in'),
    'labels of a detector': (
        'tools/export.py', [DET_CONFIG, '{seg.pth}', '--out', '{out}', '--labels'],
        '--labels is for UperNet'),
    'a pre-training config': (
        'tools/export.py', ['configs/demo/fcmae_convnext_demo.py', '{seg.pth}', '--out', '{out}'],
        'is not a Mask R-CNN, Cascade Mask R-CNN or UperNet model'),
}


@pytest.mark.parametrize('case', list(CASES))
def test_unusable_input_is_one_error_line(files, tmp_path, monkeypatch, capsys, case: str) -> None:
    tool, args, expected = CASES[case]
    names = {'{seg.pth}': str(files / 'seg.pth'), '{backbone.onnx}': str(files / 'backbone.onnx'),
             '{image.png}': str(files / 'image.png'),
             '{out}': str(tmp_path / 'out')}
    args = [names.get(arg, arg) for arg in args]
    for name, path in names.items():
        expected = expected.replace(name, path)
    monkeypatch.setattr(sys, 'argv', sys.argv)
    with pytest.raises(SystemExit) as exit_info:
        run(tool, *args)
    message = str(exit_info.value.code)
    assert message.startswith('error: ') and '\n' not in message and expected in message, message
    assert 'Traceback' not in capsys.readouterr().err
