"""tools/train.py, tools/test.py and tools/dist_train.sh on small generated COCO and ADE20K sets."""
import json
import os
import pickle
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

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


def coco_ap(results_file: Path, ann_file: Path) -> dict[str, float]:
    """Box and mask AP of tools/test.py's ``--out`` results, by pycocotools alone (categories 1.. in order)."""
    with results_file.open('rb') as file:
        results = pickle.load(file)  # written by this test's own tools/test.py run
    ground_truth = COCO(str(ann_file))
    detections = {'bbox': [], 'segm': []}
    for sample in results:
        predicted = sample['pred_instances']
        for (x1, y1, x2, y2), score, label, mask in zip(predicted['bboxes'].tolist(), predicted['scores'].tolist(),
                                                          predicted['labels'].tolist(), predicted['masks']):
            common = dict(image_id=sample['img_id'], category_id=label + 1, score=score)
            detections['bbox'].append(dict(common, bbox=[x1, y1, x2 - x1, y2 - y1]))
            detections['segm'].append(dict(common, segmentation=mask))
    found = {}
    for iou_type, dets in detections.items():
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(dets), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        found[f'coco/{iou_type}_mAP'], found[f'coco/{iou_type}_mAP_50'] = evaluation.stats[:2]
    return found


def miou(predictions: Path, annotations: Path) -> float:
    """mIoU in % of label maps in the ADE20K convention (0 unlabelled, class k stored as k + 1)."""
    intersection, union = Counter(), Counter()
    for truth_file in annotations.glob('*.png'):
        truth = np.array(Image.open(truth_file)).astype(int) - 1
        predicted = np.array(Image.open(predictions / truth_file.name)).astype(int) - 1
        labelled = truth >= 0
        for label in np.union1d(truth[labelled], predicted[labelled]):
            intersection[label] += int(np.sum((truth == label) & (predicted == label) & labelled))
            union[label] += int(np.sum(((truth == label) | (predicted == label)) & labelled))
    return 100 * float(np.mean([intersection[label] / union[label] for label in union]))


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
    # The reported AP is pycocotools' on the raw results, evaluated here without mmdet (mmdet rounds to 3 places).
    independent = coco_ap(tmp_path / 'results.pkl', data_root / 'coco' / 'annotations' / 'instances_val.json')
    for key, value in independent.items():
        assert metrics[key] == pytest.approx(value, abs=5e-4 + 1e-9), key
    assert independent['coco/bbox_mAP_50'] > 0  # an untrained detector scores above nothing on these scenes


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

    # The model exported to ONNX and evaluated by ONNX Runtime (whole images, and the config's TTA around the
    # graph): the same mIoU (within 0.002, 0.2 in mmseg's percent) and label maps.
    run('tools/export.py', config, str(work_dir / 'iter_6.pth'), '--out', str(tmp_path / 'onnx'))
    for tta in ([], ['--tta']):
        results = {}
        for backend, checkpoint in (('pytorch', work_dir / 'iter_6.pth'),
                                    ('onnxruntime', tmp_path / 'onnx' / 'model.onnx')):
            out = tmp_path / f'predictions-{backend}{"-tta" if tta else ""}'
            run('tools/test.py', config, str(checkpoint), *common, *tta, '--out', str(out), '--backend', backend,
                '--cfg-options', *SEG_OPTIONS)
            # mmseg's mIoU (rounded to 2 places) is the one of the written label maps against the ground truth.
            independent = miou(out, data_root / 'ade' / 'annotations' / 'validation')
            results[backend] = evaluation_metrics(work_dir)['mIoU']
            assert results[backend] == pytest.approx(independent, abs=5e-3 + 1e-9)
            assert len(list(out.glob('*.png'))) == 4
        assert abs(results['onnxruntime'] - results['pytorch']) <= 0.2, results


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
    assert 'docs/datasets.md#' in message
