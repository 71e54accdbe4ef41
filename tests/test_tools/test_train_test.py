"""tools/train.py, tools/test.py and tools/dist_train.sh on small generated COCO and ADE20K sets."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backbones import load_local_checkpoint
from backbones.runtime.demo_data import ensure_demo_data

ENV = dict(os.environ, PYTHONUNBUFFERED='1')
# A few iterations of batch 4 on 8 training images.
DET_OPTIONS = ['model.backbone.init_cfg=None', 'train_dataloader.batch_size=4', 'train_cfg.max_epochs=3',
               'train_cfg.val_interval=3', 'param_scheduler.0.end=2', 'default_hooks.logger.interval=1',
               'model.test_cfg.rcnn.score_thr=0.0']  # an untrained detector's scores are low: keep them all
SEG_OPTIONS = ['train_dataloader.batch_size=4', 'train_cfg.max_iters=6', 'train_cfg.val_interval=6',
               'param_scheduler.0.end=2', 'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=6']


@pytest.fixture(scope='module')
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('data')
    ensure_demo_data(root, num_train=8, num_val=4, image_size=96, seed=1)
    return root


def run(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env or ENV)
    if check and result.returncode:
        raise AssertionError(f'{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result


def latest_run(work_dir: Path) -> Path:
    return max(p for p in work_dir.iterdir() if p.is_dir() and p.name[:8].isdigit())


def train_losses(work_dir: Path) -> list[float]:
    lines = (latest_run(work_dir) / 'vis_data' / 'scalars.json').read_text().splitlines()
    return [record['loss'] for record in map(json.loads, lines) if 'loss' in record]


def evaluation_metrics(work_dir: Path) -> dict:
    run_dir = latest_run(work_dir)
    return json.loads((run_dir / f'{run_dir.name}.json').read_text())


@pytest.mark.parametrize('config', ['configs/demo/mask_rcnn_convnext_demo.py', 'configs/demo/cascade_convnext_demo.py'])
def test_detector_trains_and_reports_coco_ap(tmp_path, data_root, config) -> None:
    work_dir = tmp_path / 'work'
    common = ['--work-dir', str(work_dir), '--data-root', f'{data_root}/coco/']
    run('tools/train.py', config, *common, '--cfg-options', *DET_OPTIONS)
    losses = train_losses(work_dir)
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2])

    checkpoint = work_dir / 'epoch_3.pth'
    result = run('tools/test.py', config, str(checkpoint), *common, '--out', str(tmp_path / 'results.pkl'),
                 '--cfg-options', *DET_OPTIONS)
    assert 'Loaded' in result.stdout
    metrics = evaluation_metrics(work_dir)
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50'):
        assert 0.0 <= metrics[key] <= 1.0
    assert (tmp_path / 'results.pkl').stat().st_size > 0


# Tiny runs of 12 iterations with a checkpoint and a validation every 4 (epochs of 4 iterations for the detector).
CRASH_RUNS = {
    'detection, epoch-based': ('configs/demo/mask_rcnn_convnext_demo.py', 'coco/', 'epoch_1.pth', 'epoch_3.pth', [
        'model.backbone.init_cfg=None', 'train_dataloader.batch_size=2', 'train_cfg.max_epochs=3',
        'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1', 'default_hooks.checkpoint.max_keep_ckpts=3',
        'default_hooks.logger.interval=1', 'param_scheduler.0.end=4']),
    'segmentation, iteration-based': ('configs/demo/upernet_convnext_demo.py', 'ade', 'iter_4.pth', 'iter_12.pth', [
        'train_dataloader.batch_size=2', 'train_cfg.max_iters=12', 'train_cfg.val_interval=4',
        'default_hooks.checkpoint.interval=4', 'default_hooks.logger.interval=1', 'param_scheduler.0.end=4']),
}


def losses_by_iteration(work_dir: Path) -> dict[int, float]:
    lines = (latest_run(work_dir) / 'vis_data' / 'scalars.json').read_text().splitlines()
    return {record['step']: record['loss'] for record in map(json.loads, lines) if 'loss' in record}


@pytest.mark.parametrize('case', list(CRASH_RUNS))
def test_kill_9_then_resume_continues_the_uninterrupted_loss_curve(tmp_path, data_root, case: str) -> None:
    config, data, kept, final, options = CRASH_RUNS[case]
    common = ['--data-root', f'{data_root}/{data}', '--cfg-options', *options]
    run('tools/train.py', config, '--work-dir', str(tmp_path / 'whole'), *common)
    uninterrupted = losses_by_iteration(tmp_path / 'whole')
    assert sorted(uninterrupted) == list(range(1, 13))

    crashing = tmp_path / 'crashing.py'  # the same config, killed with SIGKILL after 6 iterations
    crashing.write_text(f"_base_ = [{str(Path(config).resolve())!r}]\n"
                        "custom_imports = dict(imports=['backbones', 'tests.helpers'], allow_failed_imports=False)\n"
                        "custom_hooks = [dict(type='RandomStateHook'),\n"
                        "                dict(type='KillAfterIterationHook', iterations=6)]\n")
    work_dir = tmp_path / 'crashed'
    killed = run('tools/train.py', str(crashing), '--work-dir', str(work_dir), *common, check=False,
                 env=dict(ENV, PYTHONPATH=os.getcwd()))  # tests.helpers importable
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in work_dir.glob('*.pth')) == [kept]  # killed between two checkpoints
    assert load_local_checkpoint(str(work_dir / kept))['meta']['iter'] == 4

    result = run('tools/train.py', config, '--work-dir', str(work_dir), '--resume', *common)
    assert f'Resuming from {work_dir / kept}.' in result.stdout
    resumed = losses_by_iteration(work_dir)
    assert sorted(resumed) == list(range(5, 13))
    assert resumed == {step: uninterrupted[step] for step in resumed}  # the same numbers, not close ones
    for name, weight in load_local_checkpoint(str(tmp_path / 'whole' / final))['state_dict'].items():
        assert torch.equal(load_local_checkpoint(str(work_dir / final))['state_dict'][name], weight), name


def test_segmentor_trains_and_reports_miou_with_and_without_tta(tmp_path, data_root) -> None:
    config = 'configs/demo/upernet_convnext_demo.py'
    work_dir = tmp_path / 'work'
    common = ['--work-dir', str(work_dir), '--data-root', f'{data_root}/ade']
    run('tools/train.py', config, *common, '--cfg-options', *SEG_OPTIONS)
    losses = train_losses(work_dir)
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2])

    for tta in ([], ['--tta']):
        run('tools/test.py', config, str(work_dir / 'iter_6.pth'), *common, *tta, '--cfg-options', *SEG_OPTIONS)
        metrics = evaluation_metrics(work_dir)
        assert 0.0 <= metrics['mIoU'] <= 100.0 and 'aAcc' in metrics


def test_two_process_cpu_training_with_dist_train(tmp_path, data_root) -> None:
    env = dict(ENV, PYTHON=sys.executable, PORT='29517', OMP_NUM_THREADS='1')
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', 'configs/demo/upernet_convnext_demo.py', '2', '--work-dir', str(tmp_path),
         '--data-root', f'{data_root}/ade', '--cfg-options', *SEG_OPTIONS, 'train_dataloader.batch_size=2'],
        capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'Distributed training: True' in result.stdout and "dist_cfg: {'backend': 'gloo'}" in result.stdout
    assert (tmp_path / 'iter_6.pth').exists()


def test_resuming_from_a_broken_checkpoint_is_one_clear_line(tmp_path, data_root) -> None:
    broken = tmp_path / 'epoch_1.pth'
    broken.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(100))
    result = run('tools/train.py', 'configs/demo/mask_rcnn_convnext_demo.py', '--work-dir', str(tmp_path),
                 '--data-root', f'{data_root}/coco/', '--resume', str(broken), '--cfg-options', *DET_OPTIONS,
                 check=False)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    expected = f'error: Cannot load {broken}: it is a PNG image, not a checkpoint.'
    assert result.stderr.strip().splitlines()[-1] == expected


@pytest.mark.parametrize('tool, config', [
    ('tools/train.py', 'configs/det/cascade_convnext_t.py'),
    ('tools/train.py', 'configs/seg/upernet_convnext_t.py'),
])
def test_missing_dataset_is_one_clear_line(tmp_path, tool: str, config: str) -> None:
    result = run(tool, config, '--data-root', str(tmp_path / 'nowhere'), check=False)
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith('error: ') and str(tmp_path / 'nowhere') in message
    assert "README section 'Datasets: " in message
