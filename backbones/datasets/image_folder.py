"""Unlabelled images for self-supervised pre-training: any folder tree of images, no annotations.

Registered: ``ImageFolderDataset`` in mmengine's root ``DATASETS``, and the transforms of the FCMAE
recipe under this project's scope, ``convnext_dense.RandomResizedCrop`` and
``convnext_dense.PackImageInputs`` (their names are generic: in the root registry they would be the
silent fallback of every scope); flipping is mmcv's ``mmcv.RandomFlip``.

An image that cannot be decoded, or whose header declares more pixels than the cap
(:func:`backbones.boundary.too_many_pixels`, read before decoding), is skipped with one warning line naming it
(once per file and process), and another image is drawn in its place: one damaged file in a large crawl should not end a
long run. A folder without any images, or whose images all fail to decode, is a one-line error.
"""
import os.path as osp
from collections.abc import Sequence
from logging import WARNING

import mmcv
import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset
from mmengine.logging import print_log
from mmengine.registry import DATASETS, Registry
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from torchvision.transforms import InterpolationMode, v2

from ..boundary import declared_image_size, too_many_pixels, walk_files
from ..errors import DatasetNotFoundError

TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='convnext_dense')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')


@DATASETS.register_module()
class ImageFolderDataset(BaseDataset):
    """Every image under ``data_root/data_prefix['img_path']``, recursively, in sorted order: the files whose
    names end with one of :data:`IMAGE_SUFFIXES` in any case, found by :func:`~backbones.boundary.walk_files`.

    Items are the ``pipeline`` applied to ``dict(img=HxWx3 BGR uint8, img_path=..., img_shape=...,
    ori_shape=...)``.

    Args:
        data_root: The folder (or the root that ``data_prefix`` is relative to).
        data_prefix: ``dict(img_path=SUBFOLDER)``; ``''`` takes the whole of ``data_root``.
        pipeline: Transforms (configs or callables).
        **kwargs: Other :class:`mmengine.dataset.BaseDataset` arguments (``indices``, ``max_refetch``...).

    Raises:
        DatasetNotFoundError: The folder is missing or holds no images.
    """

    def __init__(self, data_root: str = '', data_prefix: dict | None = None, pipeline: Sequence = (),
                 **kwargs) -> None:
        self._unreadable: set[str] = set()
        super().__init__(ann_file='', data_root=data_root, data_prefix=data_prefix or dict(img_path=''),
                         pipeline=list(pipeline), **kwargs)

    def load_data_list(self) -> list[dict]:
        """The image files of the folder tree."""
        folder = osp.normpath(self.data_prefix['img_path'] or self.data_root)
        if not osp.isdir(folder):
            raise DatasetNotFoundError(f'Image folder not found: {folder}. Point --data-root at a folder of images.')
        files = walk_files(folder, IMAGE_SUFFIXES)
        if not files:
            raise DatasetNotFoundError(f'No images in {folder} (looked for {", ".join(IMAGE_SUFFIXES)} in it and its '
                                       'subfolders). Point --data-root at a folder of images.')
        return [dict(img_path=osp.join(folder, name)) for name in files]

    def prepare_data(self, idx: int) -> dict | None:
        """Read image ``idx`` and run the pipeline; None (BaseDataset then draws another) if it cannot
        be decoded."""
        results = self.get_data_info(idx)
        path = results['img_path']
        image, oversized = None, None
        if path not in self._unreadable:
            size = declared_image_size(path)
            oversized = too_many_pixels(size) if size is not None else None
            if size is not None and oversized is None:  # a readable header within the pixel cap
                image = mmcv.imread(path, flag='color')
        if image is None:
            if path not in self._unreadable:
                self._unreadable.add(path)
                print_log(f'Skipping an image: {path}: {oversized}' if oversized else
                          f'Skipping an image that cannot be decoded: {path}', logger='current', level=WARNING)
                if len(self._unreadable) == len(self):
                    raise DatasetNotFoundError(f'None of the {len(self)} images under {self.data_root} can be '
                                               'decoded.')
            return None
        results.update(img=image, img_shape=image.shape[:2], ori_shape=image.shape[:2])
        return self.pipeline(results)


@TRANSFORMS.register_module()
class RandomResizedCrop(BaseTransform):
    """torchvision's ``RandomResizedCrop`` (random area and aspect ratio, resized to ``size``) on
    ``results['img']``.

    Args:
        size: Output side, or (height, width).
        scale: Range of the crop's area relative to the image (the FCMAE recipe: 0.2 to 1).
        ratio: Range of the crop's aspect ratio.
        interpolation: ``'bicubic'`` (the recipe), ``'bilinear'`` or ``'nearest'``.
    """

    def __init__(self, size: int | Sequence[int], scale: Sequence[float] = (0.2, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), interpolation: str = 'bicubic') -> None:
        self.crop = v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio),
                                         interpolation=InterpolationMode(interpolation), antialias=True)

    def transform(self, results: dict) -> dict:
        image = self.crop(torch.from_numpy(results['img']).permute(2, 0, 1))
        results['img'] = image.permute(1, 2, 0).numpy()
        results['img_shape'] = results['img'].shape[:2]
        return results


@TRANSFORMS.register_module()
class PackImageInputs(BaseTransform):
    """``results['img']`` (H, W, C) -> ``dict(inputs=(C, H, W) uint8 tensor)``: images without labels."""

    def transform(self, results: dict) -> dict:
        return dict(inputs=torch.from_numpy(np.ascontiguousarray(results['img'].transpose(2, 0, 1))))
