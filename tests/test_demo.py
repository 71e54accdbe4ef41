"""`make demo`'s quick mode: the real tools train and evaluate every demo model on generated data."""
import json
import subprocess
import sys


def test_quick_demo_trains_evaluates_and_reports(tmp_path) -> None:
    work_dir = tmp_path / 'demo'
    result = subprocess.run([sys.executable, 'tools/demo.py', '--quick', '--work-dir', str(work_dir)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    metrics = json.loads((work_dir / 'metrics.json').read_text())
    assert set(metrics) == {'upernet', 'mask_rcnn', 'cascade'}
    # The quick mode checks the demo's steps, not learning (tests/test_tools/test_detectors_learn.py does):
    # above chance for UperNet (labelling every pixel background scores about 0.17 mIoU over the five
    # classes); the detectors' evaluation ran and found something.
    assert metrics['upernet']['mIoU'] > 0.2
    for detector in ('mask_rcnn', 'cascade'):
        assert metrics[detector]['box AP'] > 0
    # What the demo reports is what tools/test.py measured (mmseg's mIoU in %, shown as a fraction).
    tool_keys = {'mIoU': ('mIoU', 0.01), 'box AP': ('coco/bbox_mAP', 1), 'box AP50': ('coco/bbox_mAP_50', 1),
                 'mask AP': ('coco/segm_mAP', 1)}
    summary = (work_dir / 'summary.txt').read_text()
    for model, reported in metrics.items():
        test_runs = [run / f'{run.name}.json' for run in (work_dir / model).iterdir() if run.name[:8].isdigit()]
        measured = json.loads(max(path for path in test_runs if path.exists()).read_text())
        reported = {name: value for name, value in reported.items() if name in tool_keys}
        assert reported == {name: measured[key] * scale for name, (key, scale) in tool_keys.items() if key in measured}
        assert ' '.join(f'{value:.3f}' for value in reported.values()) in ' '.join(summary.split()), model

    for model in metrics:  # training lowered the loss (the training run is the one that logged a learning rate)
        logs = [run / 'vis_data' / 'scalars.json' for run in (work_dir / model).iterdir() if run.name[:8].isdigit()]
        train_log = max(log for log in logs if log.exists() and '"lr"' in log.read_text())
        losses = [entry['loss'] for entry in map(json.loads, train_log.read_text().splitlines()) if 'loss' in entry]
        assert len(losses) >= 3 and losses[-1] < losses[0], (model, losses)

    for output in ('summary.txt', 'curves.png', 'predictions.png', 'convnext_demo_pretrained.pth'):
        assert (work_dir / output).stat().st_size > 0
    assert 'box AP' in result.stdout and 'mIoU' in result.stdout
    for model in metrics:  # one visualisation per held-out image (mmdet: .jpg like the input; mmseg: .png)
        images = [p for p in (work_dir / model / 'predictions').rglob('*') if p.suffix in ('.jpg', '.png')]
        assert len(images) == 16, model
