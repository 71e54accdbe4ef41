"""backbones/datasets/image_folder.py: a folder tree of unlabelled images as FCMAE's dataset."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.registry import DATASETS, TRANSFORMS

import backbones  # noqa: F401  registers the dataset and the transforms
from backbones.errors import DatasetNotFoundError
from tests.helpers import png_declaring, within

PIPELINE = [dict(type='convnext_dense.RandomResizedCrop', size=16, scale=(0.5, 1.0)),
            dict(type='convnext_dense.PackImageInputs')]


def write_image(path: Path, bgr: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((*size, 3), bgr, np.uint8))


def folder_dataset(root: Path) -> torch.utils.data.Dataset:
    return DATASETS.build(dict(type='ImageFolderDataset', data_root=str(root), pipeline=PIPELINE))


def test_every_image_of_the_tree_in_sorted_order_and_nothing_else(tmp_path) -> None:
    for name in ('b.png', 'a/z.JPG', 'a/y/x.jpeg', 'c.bmp'):
        write_image(tmp_path / name, (0, 0, 255))
    (tmp_path / 'notes.txt').write_text('not an image')
    (tmp_path / 'a' / 'labels.json').write_text('{}')
    dataset = folder_dataset(tmp_path)
    assert [Path(dataset.get_data_info(i)['img_path']).relative_to(tmp_path).as_posix()
            for i in range(len(dataset))] == ['a/y/x.jpeg', 'a/z.JPG', 'b.png', 'c.bmp']


def test_images_in_any_case_and_linked_folders_once_without_loops_or_fifos(tmp_path) -> None:
    for name in ('data/a.Jpg', 'data/b.PNG', 'outside/c.jpg'):
        write_image(tmp_path / name, (0, 0, 255))
    (tmp_path / 'data' / 'linked').symlink_to(tmp_path / 'outside')
    (tmp_path / 'data' / 'loop').symlink_to(tmp_path / 'data')
    os.mkfifo(tmp_path / 'data' / 'fifo.jpg')  # reading it would block
    with within(10):
        dataset = folder_dataset(tmp_path / 'data')
    assert [Path(dataset.get_data_info(i)['img_path']).relative_to(tmp_path / 'data').as_posix()
            for i in range(len(dataset))] == ['a.Jpg', 'b.PNG', 'linked/c.jpg']


def test_items_are_crops_of_the_image_in_bgr_as_chw_uint8(tmp_path) -> None:
    write_image(tmp_path / 'red.png', (0, 0, 255))
    item = folder_dataset(tmp_path)[0]
    assert set(item) == {'inputs'}
    inputs = item['inputs']
    assert inputs.dtype == torch.uint8 and inputs.shape == (3, 16, 16)
    assert inputs[:, 8, 8].tolist() == [0, 0, 255]  # BGR as mmcv reads it; the model's preprocessor swaps


def test_crops_take_random_areas_of_the_image(tmp_path) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = 255  # left half black, right half white
    cv2.imwrite(str(tmp_path / 'halves.png'), image)
    crop = TRANSFORMS.build(dict(type='convnext_dense.RandomResizedCrop', size=16, scale=(0.05, 0.1)))
    torch.manual_seed(0)
    means = {float(crop(dict(img=image.copy()))['img'].mean()) for _ in range(20)}
    assert min(means) < 64 and max(means) > 192  # small crops land in either half


def test_an_undecodable_image_is_skipped_with_one_warning_and_another_is_drawn(tmp_path, capsys) -> None:
    write_image(tmp_path / 'good.png', (255, 0, 0))
    (tmp_path / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
    dataset = folder_dataset(tmp_path)
    items = [dataset[0] for _ in range(3)]  # index 0 is broken.jpg (sorted first)
    assert all(item['inputs'][:, 0, 0].tolist() == [255, 0, 0] for item in items)
    warnings = [line for line in capsys.readouterr().out.splitlines() if 'cannot be decoded' in line]
    assert len(warnings) == 1  # once per file, however often it is drawn
    assert warnings[0].endswith(f'WARNING - Skipping an image that cannot be decoded: {tmp_path}/broken.jpg')


def test_an_image_over_the_pixel_cap_is_skipped_by_its_header_without_decoding(tmp_path, capsys) -> None:
    write_image(tmp_path / 'good.png', (255, 0, 0))
    (tmp_path / 'big.png').write_bytes(png_declaring(30000, 30000))  # 2.7 GB decoded
    dataset = folder_dataset(tmp_path)
    with within(20):
        items = [dataset[0] for _ in range(2)]  # index 0 is big.png (sorted first)
    assert all(item['inputs'][:, 0, 0].tolist() == [255, 0, 0] for item in items)
    warnings = [line for line in capsys.readouterr().out.splitlines() if 'Skipping' in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        f'Skipping an image: {tmp_path}/big.png: it declares 30000x30000 pixels, over the cap of 100000000 (raise it '
        'with CONVNEXT_DENSE_MAX_IMAGE_PIXELS)')


def test_no_decodable_image_is_one_error(tmp_path) -> None:
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG broken')
    with pytest.raises(DatasetNotFoundError, match=r'^None of the 1 images under .* can be decoded\.$'):
        folder_dataset(tmp_path)[0]


@pytest.mark.parametrize('make, message', [
    (lambda root: root / 'missing', r'^Image folder not found: .*missing\. Point --data-root at a folder of images\.$'),
    (lambda root: root, r'^No images in .* \(looked for \.jpg, .*\)\. Point --data-root at a folder of images\.$'),
])
def test_a_missing_or_empty_folder_is_one_error(tmp_path, make, message: str) -> None:
    (tmp_path / 'readme.txt').write_text('no images here')
    with pytest.raises(DatasetNotFoundError, match=message):
        folder_dataset(make(tmp_path))
