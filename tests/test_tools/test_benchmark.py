"""tools/analysis/benchmark.py: the rows it reports, the precision our backbone ran in, that --compare gives
mmdet's and timm's ConvNeXt-T our weights, and its one-line errors. 64x64 inputs, one warm-up run, two timed
runs, one thread; what the timings are is never asserted, only how they relate."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOOL = 'tools/analysis/benchmark.py'
QUICK = ['--shape', '64', '64', '--warmup', '1', '--repeats', '2', '--threads', '1']
NO_PRETRAINED = ['--cfg-options', 'model.backbone.init_cfg=None']
RANDOM = 'no CKPT: random weights (the timing does not depend on them; give CKPT for a trained model)'
# The tool as this checkout has it, whatever an editable install of the package points to.
ENV = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))


@pytest.fixture(autouse=True)
def _restore_threads() -> None:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def benchmark(monkeypatch, tmp_path: Path, config: str, *options: str) -> dict:
    """Run the tool in this process (sharing its imports) and return what it wrote with --json."""
    out = tmp_path / 'benchmark.json'
    monkeypatch.setattr(sys, 'argv', [TOOL, config, *QUICK, '--json', str(out), *options])
    runpy.run_path(TOOL, run_name='__main__')
    return json.loads(out.read_text())


def cases(result: dict) -> list[tuple[str, str]]:
    return [(row['model'], row['implementation']) for row in result['rows']]


def assert_consistent_timings(rows: list[dict], batch: int) -> None:
    for row in rows:
        assert row['p50_ms'] > 0, row
        assert row['images_per_s'] == pytest.approx(batch * 1000 / row['p50_ms']), row
        assert row['batch'] == batch and row['shape'] == '64x64', row
        if row['model'].endswith('train step'):  # gradients and optimizer state are new memory
            assert row['peak_mb'] > 0, row


def test_detector_inference_and_training_rows(monkeypatch, tmp_path, capsys) -> None:
    result = benchmark(monkeypatch, tmp_path, 'configs/demo/mask_rcnn_convnext_demo.py', '--batch-size', '2',
                       '--precision', 'bf16', '--train', *NO_PRETRAINED)
    assert cases(result) == [('backbone', 'ours'), ('MaskRCNN test_step', 'ours'), ('MaskRCNN train step', 'ours'),
                             ('MaskRCNN train step', 'ours with_cp')]
    rows = result['rows']
    assert_consistent_timings(rows, batch=2)
    for row in rows:  # bf16 in every case: autocast test_step, AutocastOptimWrapper training
        assert row['precision'] == 'bf16' and row['compute_dtype'] == 'bfloat16'
        assert row['backbone_inputs'] == [[2, 3, 64, 64]]  # one call per run, 64 is already a multiple of 32
        assert row['max_abs_diff'] is None
    assert [row['ratio'] for row in rows[:3]] == [1.0, 1.0, 1.0]
    assert rows[3]['ratio'] == pytest.approx(rows[3]['p50_ms'] / rows[2]['p50_ms'])
    assert result['environment']['threads'] == 1 and result['environment']['weights'] == RANDOM

    stdout = capsys.readouterr().out
    assert 'CPU avx512_bf16=' in stdout and ', 1 threads' in stdout and f'weights: {RANDOM}' in stdout
    assert '| model | implementation | precision | batch | shape | images/s |' in stdout
    assert '| MaskRCNN train step | ours with_cp | bf16 | 2 | 64x64 |' in stdout
    assert 'with_cp: peak memory ' in stdout


def test_bf16_runs_our_backbone_in_bf16_and_compare_without_peer_says_so(monkeypatch, tmp_path) -> None:
    compute_dtypes = {}
    for precision in ('fp32', 'bf16'):
        result = benchmark(monkeypatch, tmp_path, 'configs/demo/upernet_convnext_demo.py', '--precision', precision,
                           '--compare')
        assert cases(result) == [('backbone', 'ours'), ('EncoderDecoder test_step', 'ours')]
        assert_consistent_timings(result['rows'], batch=1)
        assert {row['precision'] for row in result['rows']} == {precision}
        compute_dtypes[precision] = {row['compute_dtype'] for row in result['rows']}
        # The demo's custom arch has no counterpart in mmseg or timm: one line, and ours alone.
        assert result['notes'] == ['--compare: no peer for ConvNeXt v1 depths (2, 2, 4, 2) dims (32, 64, 128, 256) '
                                   'out_indices (0, 1, 2, 3) (mmdet, mmseg and timm have ConvNeXt-T V1, all four '
                                   'stages out); benchmarking ours only.']
    # What the backbone's convolutions and linear layers computed in, in the backbone and whole-model cases.
    assert compute_dtypes == {'fp32': {'float32'}, 'bf16': {'bfloat16'}}


def test_compare_runs_mmdet_and_timm_convnext_t_with_our_weights(monkeypatch, tmp_path) -> None:
    # No CKPT and no --cfg-options: random weights, and the pre-trained URL of the config is not fetched.
    result = benchmark(monkeypatch, tmp_path, 'configs/det/mask_rcnn_convnext_t.py', '--precision', 'bf16',
                       '--channels-last', '--compare')
    ours = 'ours, channels_last'
    assert cases(result) == [('backbone', ours), ('backbone', 'mmdet config'), ('backbone', 'timm features_only'),
                             ('MaskRCNN test_step', ours), ('MaskRCNN test_step', 'mmdet config')]
    assert result['environment']['weights'] == RANDOM
    assert result['notes'] == ['workload: model.test_cfg.rcnn.score_thr=0, so 100 detections per image reach the '
                               'mask head (--cfg-options model.test_cfg.rcnn.score_thr=X for another)']
    rows = result['rows']
    assert_consistent_timings(rows, batch=1)
    ours_p50 = {row['model']: row['p50_ms'] for row in rows if row['implementation'] == ours}
    for row in rows:
        assert row['ratio'] == pytest.approx(row['p50_ms'] / ours_p50[row['model']])
        if row['implementation'] == ours:
            assert (row['precision'], row['compute_dtype'], row['max_abs_diff']) == ('bf16', 'bfloat16', None)
        else:  # the peers run as their own tools run them
            assert (row['precision'], row['compute_dtype']) == ('fp32', 'float32')
    # Same weights: the peers' backbone outputs equal ours (checked in fp32), for mmdet's through the output norms.
    for row in rows[1:3]:
        assert 0 <= row['max_abs_diff'] <= 1e-4, row


def test_onnxruntime_rows_time_our_exports_beside_ours(monkeypatch, tmp_path) -> None:
    result = benchmark(monkeypatch, tmp_path, 'configs/demo/upernet_convnext_demo.py', '--precision', 'fp32',
                       '--onnxruntime', 'fp32', 'fp16', '--device', 'cpu')
    step = 'EncoderDecoder test_step'
    assert cases(result) == [('backbone', 'ours'), ('backbone', 'onnxruntime fp32'), ('backbone', 'onnxruntime fp16'),
                             (step, 'ours'), (step, 'onnxruntime fp32'), (step, 'onnxruntime fp16')]
    rows = result['rows']
    assert_consistent_timings(rows, batch=1)
    assert [row['precision'] for row in rows] == ['fp32', 'fp32', 'fp16'] * 2
    assert rows[1]['ratio'] == pytest.approx(rows[1]['p50_ms'] / rows[0]['p50_ms'])
    assert rows[1]['max_abs_diff'] < 1e-4 and rows[2]['max_abs_diff'] < 2e-2  # their backbone outputs against ours


def test_a_missing_config_is_one_error_line() -> None:
    result = subprocess.run([sys.executable, TOOL, 'configs/demo/nowhere.py'], capture_output=True, text=True, env=ENV)
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        'error: Config not found: configs/demo/nowhere.py. Give the path of a config file, '
        'e.g. configs/demo/mask_rcnn_convnext_demo.py.')


def test_precision_errors_are_one_line(monkeypatch, capsys) -> None:
    # SystemExit with a message: Python prints it alone on stderr and exits with status 1 (as above).
    monkeypatch.setattr(sys, 'argv', [TOOL, 'configs/demo/upernet_convnext_demo.py', '--precision', 'fp16',
                                      '--device', 'cpu'])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(TOOL, run_name='__main__')
    assert exit_info.value.code == (
        'error: fp16 needs a GPU: on a CPU use bf16 (or auto, which picks it where the CPU computes it natively).')
    # A precision that does not exist is one line too (argparse's own error, exit status 1), naming the choices.
    monkeypatch.setattr(sys, 'argv', [TOOL, 'configs/demo/upernet_convnext_demo.py', '--precision', 'fp8'])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(TOOL, run_name='__main__')
    assert exit_info.value.code == (
        "error: --precision: invalid choice: 'fp8' (choose from 'auto', 'fp32', 'bf16', 'fp16'). "
        'See benchmark.py --help for the options.')
    assert capsys.readouterr().err == ''


def test_the_workload_reaches_the_mask_head_with_random_weights() -> None:
    """Without the threshold, random weights on random images leave the mask head idle; with it, every
    detection the config keeps per image (max_per_img) gets a mask."""
    from mmengine.registry import MODELS, init_default_scope

    from backbones.runtime.config import load_config

    tool = runpy.run_path(TOOL)
    cfg = load_config('configs/demo/mask_rcnn_convnext_demo.py', {'model.backbone.init_cfg': None})
    assert tool['full_workload'](cfg, {}) is not None and cfg.model.test_cfg.rcnn.score_thr == 0
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    model.init_weights()
    batch = tool['synthetic_batch'](model, 'detection', 1, (64, 64), with_targets=False)
    with torch.no_grad():
        predictions = model.test_step(batch)[0].pred_instances
    assert len(predictions) == cfg.model.test_cfg.rcnn.max_per_img
    assert predictions.masks.shape[0] == len(predictions)
    # A threshold given by --cfg-options is kept.
    cfg = load_config('configs/demo/mask_rcnn_convnext_demo.py', {'model.test_cfg.rcnn.score_thr': 0.5})
    assert tool['full_workload'](cfg, {'model.test_cfg.rcnn.score_thr': 0.5}) is None
    assert cfg.model.test_cfg.rcnn.score_thr == 0.5
