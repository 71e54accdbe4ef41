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
    assert 0.2 < metrics['upernet']['mIoU'] <= 1.0
    for detector in ('mask_rcnn', 'cascade'):
        assert 0.0 < metrics[detector]['box AP'] <= 1.0 and 0.0 <= metrics[detector]['mask AP'] <= 1.0

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
