"""The installed stack: compiled mmcv ops, framework imports and image I/O."""
import os
import subprocess
import sys

import numpy as np
import torch
import torchvision

from backbones.patches import peers_dir
from tests.helpers import toy_config


def random_boxes(n: int, size: float, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 3 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_framework_versions_and_imports() -> None:
    import mmcv
    import mmdet
    import mmdet.models  # noqa: F401
    import mmengine
    import mmseg
    import mmseg.models  # noqa: F401
    import timm
    from mmcv import _ext  # noqa: F401

    assert torch.__version__.startswith('2.14.1')
    assert torchvision.__version__.startswith('0.29.1')
    assert (mmcv.__version__, mmengine.__version__, mmdet.__version__, mmseg.__version__) == (
        '2.1.0', '0.10.7', '3.3.0', '1.2.2')
    assert timm.__version__ == '1.0.31'
    assert int(np.__version__.split('.')[0]) >= 2


def test_mmcv_nms_matches_torchvision() -> None:
    from mmcv.ops import batched_nms, nms

    generator = torch.Generator().manual_seed(1)
    boxes = random_boxes(500, 200, generator)
    scores = torch.rand(500, generator=generator)
    _, keep = nms(boxes, scores, iou_threshold=0.5)
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    assert 0 < len(expected) < 500
    assert torch.equal(keep, expected)

    labels = torch.randint(0, 3, (500,), generator=generator)
    _, keep = batched_nms(boxes, scores, labels, dict(type='nms', iou_threshold=0.5))
    expected = torchvision.ops.batched_nms(boxes, scores, labels, 0.5)
    assert torch.equal(keep.sort().values, expected.sort().values)


def test_mmcv_roi_align_matches_torchvision() -> None:
    from mmcv.ops import RoIAlign, roi_align

    generator = torch.Generator().manual_seed(2)
    features = torch.randn(2, 8, 32, 48, generator=generator, requires_grad=True)
    boxes = random_boxes(64, 120, generator)
    rois = torch.cat([torch.randint(0, 2, (64, 1), generator=generator).float(), boxes], dim=1)

    ours = RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)(features, rois)
    reference = torchvision.ops.roi_align(features, rois, (7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)

    grad_out = torch.randn_like(ours)
    (ours_grad,) = torch.autograd.grad(ours, features, grad_out)
    (reference_grad,) = torch.autograd.grad(reference, features, grad_out)
    torch.testing.assert_close(ours_grad, reference_grad, atol=1e-4, rtol=1e-4)

    functional = roi_align(features, rois, (7, 7), 0.25, 0, 'avg', False)
    reference = torchvision.ops.roi_align(features, rois, (7, 7), spatial_scale=0.25, sampling_ratio=0, aligned=False)
    torch.testing.assert_close(functional, reference, atol=1e-5, rtol=1e-4)


def test_mmcv_image_io_with_headless_opencv(tmp_path) -> None:
    import cv2
    import mmcv

    gui_line = next(line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith('GUI:'))
    assert 'NONE' in gui_line  # the headless build
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    path = str(tmp_path / 'image.png')
    assert mmcv.imwrite(image, path)
    np.testing.assert_array_equal(mmcv.imread(path), image)
    np.testing.assert_array_equal(mmcv.imread(path, channel_order='rgb'), image[..., ::-1])
    assert mmcv.imresize(image, (15, 10)).shape == (10, 15, 3)


def test_the_stack_works_with_transformers_importable(tmp_path) -> None:
    """What a user's `pip install transformers` into .venv does: the frameworks, a tool, the patches and the
    mmpretrain peers still work (transformers 5 on the path; mmpretrain's multimodal models need transformers 4)."""
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([os.getcwd(), os.path.join(peers_dir(), 'transformers')])}
    imports = ('import transformers, mmdet.models, mmseg.models, backbones\n'
               'from backbones.patches import import_mmpretrain\n'
               'import_mmpretrain()\n'
               'import mmpretrain\n'
               'print(transformers.__version__, mmpretrain.__version__)\n')
    result = subprocess.run([sys.executable, '-c', imports], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['5.25.0', '1.2.0']
    train = subprocess.run([sys.executable, 'tools/train.py', toy_config(tmp_path / 'toy.py', 1), '--work-dir',
                            str(tmp_path / 'work')], env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (tmp_path / 'work' / 'epoch_1.pth').is_file()
    tests = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                            'tests/test_backbones/test_patches.py',
                            'tests/test_configs_peers.py::test_upernet_equals_mmseg_convnext_config'],
                           env=env, capture_output=True, text=True, timeout=900)
    assert tests.returncode == 0, tests.stdout[-3000:]
