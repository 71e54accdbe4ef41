"""tools/train.py, tools/test.py and tools/dist_train.sh on small generated COCO and ADE20K sets."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from backbones import load_local_checkpoint

ensure_demo_data = runpy.run_path('tools/demo_data.py')['ensure_demo_data']
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


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV)
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


def test_training_resumes_from_the_latest_checkpoint(tmp_path, data_root) -> None:
    config = 'configs/demo/mask_rcnn_convnext_demo.py'
    common = ['--work-dir', str(tmp_path), '--data-root', f'{data_root}/coco/']
    options = [o for o in DET_OPTIONS if not o.startswith('train_cfg')] + ['train_cfg.val_interval=10']
    run('tools/train.py', config, *common, '--cfg-options', *options, 'train_cfg.max_epochs=1')
    (tmp_path / 'last_checkpoint').write_text('')  # mmengine writes it in place: a crash can leave it empty
    result = run('tools/train.py', config, *common, '--resume', '--cfg-options', *options, 'train_cfg.max_epochs=2')
    assert 'resumed epoch: 1, iter: 2' in result.stdout
    assert (tmp_path / 'epoch_2.pth').exists()
    resumed = load_local_checkpoint(str(tmp_path / 'epoch_2.pth'))
    assert resumed['meta']['epoch'] == 2 and resumed['meta']['iter'] == 4


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
    result = run('tools/train.py', 'configs/demo/mask_rcnn_convnext_demo.py', '--work-dir', str(tmp_path), '--data-root',
                 f'{data_root}/coco/', '--resume', str(broken), '--cfg-options', *DET_OPTIONS, check=False)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f'error: Cannot load {broken}: it is a PNG image, not a checkpoint.'


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
