"""FCMAE pre-training through tools/train.py on the demo images: the loss falls, pictures are written,
and a folder without images is a one-line error."""
import json
import os
import subprocess
import sys

import cv2

from backbones.runtime.demo_data import ensure_demo_data


def train(config: str, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS='1')  # this worktree's backbones
    return subprocess.run([sys.executable, 'tools/train.py', config, *args], capture_output=True, text=True, env=env)


def test_a_few_hundred_iterations_lower_the_loss_and_write_pictures(tmp_path) -> None:
    ensure_demo_data(tmp_path / 'data', num_train=48, num_val=1, image_size=96, seed=0)
    # Tiny arch and decoder, 96x96 crops (3x3 patches of 32), 300 iterations at batch 8, a fixed lr.
    result = train('configs/demo/fcmae_convnext_demo.py', [
                    '--data-root', str(tmp_path / 'data' / 'coco' / 'train'), '--work-dir', str(tmp_path / 'work'),
                    '--cfg-options', 'model.arch.depths=[1,1,2,1]', 'model.arch.dims=[16,32,64,128]',
                    'model.decoder_dim=64', 'train_dataloader.batch_size=8', 'train_dataloader.num_workers=0',
                    'train_dataloader.persistent_workers=False', 'train_dataloader.pin_memory=False',
                    'train_dataloader.dataset.pipeline.0.size=96',
                    'train_dataloader.dataset.pipeline.0.scale=[0.5,1.0]',
                    'train_cfg.max_epochs=50',
                    'param_scheduler.0.end=1', 'param_scheduler.1.begin=1', 'param_scheduler.1.end=50',
                    'param_scheduler.1.T_max=49', 'default_hooks.logger.interval=10', 'log_processor.window_size=10',
                    'default_hooks.checkpoint.interval=50', 'custom_hooks.1.interval=100'])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = next(p for p in (tmp_path / 'work').iterdir() if p.name[:8].isdigit())
    logged = [e for e in map(json.loads, (run / 'vis_data' / 'scalars.json').read_text().splitlines()) if 'loss' in e]
    losses = [e['loss'] for e in logged]
    assert logged[-1]['step'] == 300
    assert sum(losses[-5:]) / 5 < 0.9 * losses[0], losses
    pictures = sorted((tmp_path / 'work' / 'reconstructions').iterdir())
    assert [p.name for p in pictures] == ['iter_100.png', 'iter_200.png', 'iter_300.png']
    grid = cv2.imread(str(pictures[-1]))
    assert grid.shape == (4 * 100, 3 * 100, 3)  # 4 images x (input, masked, reconstruction), 2-pixel borders


def test_a_missing_or_empty_folder_is_one_line(tmp_path) -> None:
    for folder, message in [(tmp_path / 'missing', 'does not exist'), (tmp_path, 'No images in')]:
        result = train('configs/pretrain/fcmae_convnextv2_atto.py',
                       ['--data-root', str(folder), '--work-dir', str(tmp_path / 'work')])
        assert result.returncode != 0
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith('error: ') and message in error and str(folder) in error, result.stderr[-2000:]
        assert 'Traceback' not in result.stderr
