"""tools/infer.py on generated demo images, a video and broken inputs, against mmdet's and mmseg's own inference
with the same weights."""
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
import torch._inductor.config
from mmdet.apis import DetInferencer
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.registry import MODELS, init_default_scope
from mmseg.apis import inference_model, init_model

from backbones.runtime.config import enable_tta
from backbones.runtime.demo_data import ensure_demo_data
from tests.helpers import gif_with_frame, limit_address_space, png_declaring, within

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONUNBUFFERED='1', PYTHONPATH=str(ROOT))  # this checkout's backbones, not an installed one
DET_CONFIG = 'configs/demo/mask_rcnn_convnext_demo.py'
SEG_CONFIG = 'configs/demo/upernet_convnext_demo.py'
SIZE = 96
MAX_DETECTIONS = 10  # per image: drawing the 100 of the config takes most of the time
BACKENDS = ('pytorch', 'onnxruntime')


@pytest.fixture(scope='module')
def demo(tmp_path_factory) -> Path:
    """Demo images (images/: two good ones and a corrupt one), a 3-frame video and a randomly initialised
    checkpoint of each demo model (det.pth, seg.pth)."""
    root = tmp_path_factory.mktemp('infer')
    ensure_demo_data(root / 'data', num_train=1, num_val=2, image_size=SIZE, seed=1)
    shutil.copytree(root / 'data' / 'coco' / 'val', root / 'images')
    (root / 'images' / 'broken.jpg').write_bytes(b'\xff\xd8\xff' + bytes(200))
    frame = cv2.imread(str(root / 'images' / 'val_00000.jpg'))
    video = cv2.VideoWriter(str(root / 'clip.avi'), cv2.VideoWriter_fourcc(*'MJPG'), 5, (SIZE, SIZE))
    for shift in range(3):
        video.write(np.roll(frame, 8 * shift, axis=1))
    video.release()
    for name, config in (('det', DET_CONFIG), ('seg', SEG_CONFIG)):
        cfg = Config.fromfile(config)
        init_default_scope(cfg.default_scope)
        cfg.model.backbone.init_cfg = None
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        model.init_weights()
        # The classes the checkpoints of tools/train.py carry (the demo data's, in the annotation files' order).
        classes = dict(classes=cfg.demo_classes, category_ids=(1, 2, 3, 4), palette=cfg.demo_palette) \
            if name == 'det' else dict(classes=cfg.demo_seg_classes, palette=cfg.demo_seg_palette)
        torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': classes}}, root / f'{name}.pth')
    return root


# fp32, as the peers it is compared with run (the tool's default, auto, is bf16 on CPUs that compute it natively).
FP32 = ['--precision', 'fp32']


def infer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, 'tools/infer.py', *args, *FP32], capture_output=True, text=True, env=ENV)


def infer_here(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    """Run the tool in this process: a subprocess spends most of its time importing. Python prints the
    message of a SystemExit as one line on stderr and exits with status 1."""
    monkeypatch.setattr(sys, 'argv', ['tools/infer.py', *args, *FP32])
    runpy.run_path('tools/infer.py', run_name='__main__')


def warning_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith('warning:')]


def test_detection_writes_coco_results_equal_to_mmdets_inferencer(demo, tmp_path) -> None:
    out = tmp_path / 'out'
    result = infer(DET_CONFIG, str(demo / 'det.pth'), str(demo / 'images'), '--out', str(out), '--score-thr', '0.1',
                   '--device', 'cpu', '--cfg-options', f'model.test_cfg.rcnn.max_per_img={MAX_DETECTIONS}')
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    assert warning_lines(result) == [f'warning: skipping {demo / "images" / "broken.jpg"}: not a readable image']

    records = json.loads((out / 'results.json').read_text())
    assert {record['image'] for record in records} == {'val_00000.jpg', 'val_00001.jpg'}
    cfg = Config.fromfile(DET_CONFIG)
    cfg.model.test_cfg.rcnn.max_per_img = MAX_DETECTIONS
    mmdet = DetInferencer(cfg, weights=str(demo / 'det.pth'), device='cpu', show_progress=False)
    classes = cfg.demo_classes
    for image in ('val_00000.jpg', 'val_00001.jpg'):
        ours = [record for record in records if record['image'] == image]
        theirs = mmdet(str(demo / 'images' / image), return_datasamples=True)['predictions'][0].pred_instances
        theirs = theirs[theirs.scores >= 0.1].numpy()
        assert 0 < len(ours) == len(theirs) <= MAX_DETECTIONS
        boxes = np.array([record['bbox'] for record in ours])
        np.testing.assert_allclose(boxes[:, :2], theirs.bboxes[:, :2], atol=1e-3)
        np.testing.assert_allclose(boxes[:, :2] + boxes[:, 2:], theirs.bboxes[:, 2:], atol=1e-3)
        np.testing.assert_array_equal([record['score'] for record in ours], theirs.scores)
        assert [record['category_id'] for record in ours] == [label + 1 for label in theirs.labels]  # the files' ids
        assert [record['category_name'] for record in ours] == [classes[label] for label in theirs.labels]
        masks = np.stack([mask_utils.decode(record['segmentation']) for record in ours])
        assert masks.shape == (len(ours), SIZE, SIZE)
        assert (masks == theirs.masks).all()
        assert cv2.imread(str(out / 'vis' / image.replace('.jpg', '.png'))).shape == (SIZE, SIZE, 3)


def test_segmentation_labels_are_the_models_argmax_for_images_and_video_frames(demo, tmp_path) -> None:
    out = tmp_path / 'out'
    result = infer(SEG_CONFIG, str(demo / 'seg.pth'), str(demo / 'images' / 'val_*.jpg'), str(demo / 'clip.avi'),
                   '--out', str(out), '--batch-size', '2', '--device', 'cpu')
    assert result.returncode == 0, result.stderr[-3000:]
    assert warning_lines(result) == []

    model = init_model(SEG_CONFIG, str(demo / 'seg.pth'), device='cpu')
    capture = cv2.VideoCapture(str(demo / 'clip.avi'))
    frames = [capture.read()[1] for _ in range(3)]
    inputs = {'val_00000': str(demo / 'images' / 'val_00000.jpg'), 'val_00001': str(demo / 'images' / 'val_00001.jpg'),
              **{f'clip_{index}': frame for index, frame in enumerate(frames)}}
    assert sorted(path.name for path in (out / 'labels').iterdir()) == sorted(f'{stem}.png' for stem in inputs)
    for stem, image in inputs.items():
        labels = cv2.imread(str(out / 'labels' / f'{stem}.png'), cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint8 and labels.shape == (SIZE, SIZE)
        expected = inference_model(model, image).seg_logits.data.argmax(dim=0).numpy()
        assert (labels == expected).all()
        assert cv2.imread(str(out / 'vis' / f'{stem}.png')).shape == (SIZE, SIZE, 3)


def test_segmentation_tta_is_the_configs_tta_model(demo, tmp_path, monkeypatch) -> None:
    image = tmp_path / 'crop.png'  # 12 passes, at 0.5 to 1.75 times the size: a small image, lossless
    cv2.imwrite(str(image), cv2.imread(str(demo / 'images' / 'val_00001.jpg'))[8:72, 16:80])
    infer_here(monkeypatch, SEG_CONFIG, str(demo / 'seg.pth'), str(image), '--tta', '--out', str(tmp_path),
               '--device', 'cpu')

    cfg = Config.fromfile(SEG_CONFIG)
    enable_tta(cfg)
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model).eval()
    model.module.load_state_dict(torch.load(demo / 'seg.pth')['state_dict'])
    test_time_aug = cfg.tta_pipeline[1]
    test_time_aug.transforms = [step for step in test_time_aug.transforms if step[0].type != 'LoadAnnotations']
    assert len(test_time_aug.transforms[0]) * len(test_time_aug.transforms[1]) == 12  # scales x flips
    data = pseudo_collate([Compose(cfg.tta_pipeline)(dict(img_path=str(image)))])
    with torch.no_grad():
        expected = model.test_step(data)[0].pred_sem_seg.data[0].numpy()
    labels = cv2.imread(str(tmp_path / 'labels' / 'crop.png'), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (64, 64) and (labels == expected).all()


@pytest.mark.parametrize('case', ['pattern matching nothing', 'broken checkpoint', 'missing config', 'no C++ compiler'])
def test_unusable_arguments_are_one_error_line(demo, tmp_path, monkeypatch, capsys, case: str) -> None:
    pattern, checkpoint, config, flags = str(tmp_path / '*.png'), demo / 'det.pth', DET_CONFIG, []
    expected = f'error: nothing to run on: {pattern}: no file matches it'
    if case == 'broken checkpoint':
        pattern, checkpoint = str(demo / 'images'), tmp_path / 'det.pth'
        checkpoint.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(100))
        expected = f'error: Cannot load {checkpoint}: it is a PNG image, not a checkpoint.'
    elif case == 'missing config':
        config = 'configs/demo/no_such_config.py'
        expected = (f'error: Config not found: {config}. Give the path of a config file, '
                    'e.g. configs/demo/mask_rcnn_convnext_demo.py.')
    elif case == 'no C++ compiler':
        pattern, flags = str(demo / 'images'), ['--compile']
        expected = ('error: --compile on a CPU needs a C++ compiler (torch.compile builds its kernels with it): '
                    'install g++ or set CXX, or leave out --compile.')
    no_compiler = {'cpp.cxx': ('no-such-c++-compiler',)} if flags else {}
    with pytest.raises(SystemExit) as exit_info, torch._inductor.config.patch(no_compiler):
        infer_here(monkeypatch, config, str(checkpoint), pattern, '--out', str(tmp_path / 'out'), '--device', 'cpu',
                   *flags)
    assert exit_info.value.code == expected
    assert capsys.readouterr().err == ''


def test_an_input_named_with_dots_after_a_wildcard_writes_nothing_outside_out(demo, tmp_path, monkeypatch) -> None:
    """A pattern whose wildcard is followed by '..' names an image above its root: its outputs would go above
    --out. One error line, before anything is written."""
    root = tmp_path / 'above' / 'inside' / 'root'
    (root / 'any').mkdir(parents=True)
    shutil.copyfile(demo / 'images' / 'val_00000.jpg', tmp_path / 'above' / 'escape.jpg')
    out = tmp_path / 'above' / 'inside' / 'out'
    with pytest.raises(SystemExit) as exit_info:
        infer_here(monkeypatch, DET_CONFIG, str(demo / 'det.pth'), f'{root}/*/../../../escape.jpg', '--out', str(out),
                   '--device', 'cpu')
    assert exit_info.value.code == (f"error: ../../escape: its output vis/../../escape.png would be written outside "
                                    f"--out {out}. Name the inputs by a folder or a pattern with no '..' after its "
                                    'wildcards.')
    assert sorted(path.name for path in (tmp_path / 'above').rglob('*')) == ['any', 'escape.jpg', 'inside', 'root']


def test_a_folder_input_finds_images_in_any_case_through_links_once_and_no_fifo(tmp_path) -> None:
    find_inputs = runpy.run_path('tools/infer.py')['find_inputs']
    folder, outside = tmp_path / 'in', tmp_path / 'outside'
    for path in (folder / 'a.Jpg', folder / 'sub' / 'b.png', outside / 'c.jpg'):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'image')
    (folder / 'linked').symlink_to(outside)
    (folder / 'loop').symlink_to(folder)
    os.mkfifo(folder / 'fifo.jpg')  # reading it would block
    os.mkfifo(tmp_path / 'alone.jpg')
    with within(10):
        files, unmatched = find_inputs([str(folder), str(tmp_path / '*.jpg'), str(tmp_path / 'alone.jpg')])
    assert [file.name for file in files] == ['a.Jpg', 'linked/c.jpg', 'sub/b.png']
    assert unmatched == [f'{tmp_path}/*.jpg: no file matches it',
                         f'{tmp_path}/alone.jpg: not a regular file (a FIFO, socket or device)']


def test_images_and_gifs_over_the_pixel_cap_are_skipped_before_decoding_in_bounded_memory(demo, tmp_path) -> None:
    """A 30000x30000 PNG (2.7 GB decoded) and a GIF whose frame spans 16000x16000 (FFmpeg probes it by decoding
    a frame: 1 GB): each is one warning line from its header, and the good image is still processed, under 6 GiB
    of address space."""
    inputs = tmp_path / 'in'
    inputs.mkdir()
    shutil.copyfile(demo / 'images' / 'val_00000.jpg', inputs / 'good.jpg')
    (inputs / 'big.png').write_bytes(png_declaring(30000, 30000))
    (tmp_path / 'wide.gif').write_bytes(gif_with_frame((10, 10), (0, 0, 16000, 16000)))
    result = subprocess.run([sys.executable, 'tools/infer.py', SEG_CONFIG, str(demo / 'seg.pth'), str(inputs),
                             str(tmp_path / 'wide.gif'), '--out', str(tmp_path / 'out'), '--device', 'cpu', *FP32],
                            capture_output=True, text=True, env=ENV, timeout=300,
                            preexec_fn=limit_address_space(6 << 30))
    assert result.returncode == 0, result.stderr[-3000:]
    cap = 'over the cap of 100000000 (raise it with CONVNEXT_DENSE_MAX_IMAGE_PIXELS)'
    assert warning_lines(result) == [
        f'warning: skipping {tmp_path / "wide.gif"}: it declares 16000x16000 pixels, {cap}',
        f'warning: skipping {inputs / "big.png"}: it declares 30000x30000 pixels, {cap}']
    assert sorted(path.name for path in (tmp_path / 'out' / 'labels').iterdir()) == ['good.png']


def test_a_video_whose_frames_are_over_the_pixel_cap_is_refused_before_its_frames_are_read(demo, monkeypatch) -> None:
    video_frames = runpy.run_path('tools/infer.py')['video_frames']
    assert video_frames(demo / 'clip.avi') == (3, None)
    monkeypatch.setenv('CONVNEXT_DENSE_MAX_IMAGE_PIXELS', str(SIZE * SIZE - 1))
    assert video_frames(demo / 'clip.avi') == (
        3, f'it declares {SIZE}x{SIZE} pixels, over the cap of {SIZE * SIZE - 1} (raise it with '
        'CONVNEXT_DENSE_MAX_IMAGE_PIXELS)')


def test_an_image_file_over_the_byte_cap_is_skipped_unread(demo, monkeypatch) -> None:
    read_image = runpy.run_path('tools/infer.py')['read_image']
    pixels, problem = read_image(demo / 'images' / 'val_00000.jpg')
    assert pixels.shape == (SIZE, SIZE, 3) and problem is None
    monkeypatch.setenv('CONVNEXT_DENSE_MAX_IMAGE_MB', '0.001')
    assert read_image(demo / 'images' / 'val_00000.jpg') == (
        None, 'it has more than 1048 bytes, the cap for an image; raise it with CONVNEXT_DENSE_MAX_IMAGE_MB')


def test_onnx_runtime_backend_writes_what_the_pytorch_backend_writes(demo, tmp_path, monkeypatch) -> None:
    """tools/export.py, then tools/infer.py --backend onnxruntime on the same images: the same detections
    (boxes within 1e-3 px, scores within 1e-4, the same masks and classes) and the same label maps."""
    exported = subprocess.run([sys.executable, 'tools/export.py', DET_CONFIG, str(demo / 'det.pth'), '--out',
                               str(tmp_path / 'det')], capture_output=True, text=True, env=ENV)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert 'ONNX Runtime against PyTorch on the sample: largest difference' in exported.stdout
    monkeypatch.setattr(sys, 'argv', ['tools/export.py', SEG_CONFIG, str(demo / 'seg.pth'), '--out',
                                      str(tmp_path / 'seg'), '--shape', str(SIZE), str(SIZE)])
    runpy.run_path('tools/export.py', run_name='__main__')
    images = [str(demo / 'images' / name) for name in ('val_00000.jpg', 'val_00001.jpg')]
    for backend, det, seg in (('pytorch', demo / 'det.pth', demo / 'seg.pth'),
                              ('onnxruntime', tmp_path / 'det' / 'model.onnx', tmp_path / 'seg' / 'model.onnx')):
        infer_here(monkeypatch, DET_CONFIG, str(det), *images, '--out', str(tmp_path / backend), '--score-thr', '0.1',
                   '--backend', backend)
        infer_here(monkeypatch, SEG_CONFIG, str(seg), *images, '--out', str(tmp_path / backend), '--backend', backend)
    ours, theirs = (json.loads((tmp_path / backend / 'results.json').read_text()) for backend in BACKENDS)
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert (a['image'], a['category_id'], a['category_name']) == (b['image'], b['category_id'], b['category_name'])
        np.testing.assert_allclose(a['bbox'], b['bbox'], atol=1e-3)
        assert abs(a['score'] - b['score']) <= 1e-4
        assert a['segmentation'] == b['segmentation']
    for name in ('val_00000.png', 'val_00001.png'):
        labels = [cv2.imread(str(tmp_path / backend / 'labels' / name), cv2.IMREAD_UNCHANGED) for backend in BACKENDS]
        assert labels[0].shape == (SIZE, SIZE) and (labels[0] == labels[1]).all()


def test_each_tool_reads_the_file_it_is_given_once(demo, tmp_path, monkeypatch) -> None:
    """tools/test.py and tools/infer.py read a checkpoint once (classes and weights from one read), and with
    --backend onnxruntime the exported file once (classes, model type and verification from one read)."""
    import backbones.checkpoints.loading as loading
    import backbones.deploy.onnx_file as onnx_file

    reads = []
    for module, name in ((loading, 'read_source'), (onnx_file, '_read')):
        def counted(path, *args, _original=getattr(module, name), **kwargs):
            reads.append(str(path))
            return _original(path, *args, **kwargs)
        monkeypatch.setattr(module, name, counted)
    monkeypatch.setattr(sys, 'argv', ['tools/export.py', SEG_CONFIG, str(demo / 'seg.pth'), '--out',
                                      str(tmp_path / 'seg'), '--shape', str(SIZE), str(SIZE)])
    runpy.run_path('tools/export.py', run_name='__main__')
    assert reads == [str(demo / 'seg.pth')]
    exported = str(tmp_path / 'seg' / 'model.onnx')
    image = str(demo / 'images' / 'val_00000.jpg')
    for file, backend in ((str(demo / 'seg.pth'), 'pytorch'), (exported, 'onnxruntime')):
        reads.clear()
        infer_here(monkeypatch, SEG_CONFIG, file, image, '--out', str(tmp_path / backend), '--backend', backend)
        assert reads == [file], backend
        reads.clear()
        monkeypatch.setattr(sys, 'argv', ['tools/test.py', SEG_CONFIG, file, '--data-root', str(demo / 'data' / 'ade'),
                                          '--work-dir', str(tmp_path / f'test_{backend}'), '--backend', backend])
        runpy.run_path('tools/test.py', run_name='__main__')
        assert reads == [file], backend
