"""``convnext_dense.LoadImageOrSkip``: mmcv's ``LoadImageFromFile`` for training, where an image that has become
unreadable since the dataset check is skipped with one warning line (once per file and process) instead of
ending the run; the dataset then draws another item (mmengine's ``BaseDataset`` does on ``None``).

``tools/train.py`` puts it in place of ``LoadImageFromFile`` in the training pipelines
(:func:`backbones.runtime.dataset_check.skip_unreadable_images`); evaluation keeps mmcv's, so that a
score never silently leaves an image out.
"""
from logging import WARNING

from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log

from .image_folder import TRANSFORMS


@TRANSFORMS.register_module()
class LoadImageOrSkip(LoadImageFromFile):
    """``LoadImageFromFile`` (same arguments) that returns None, with one warning line, for an image that
    cannot be read or decoded."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._skipped: set[str] = set()

    def transform(self, results: dict) -> dict | None:
        """Load the image of ``results['img_path']``; None if it cannot be read or decoded."""
        try:
            return super().transform(results)
        except Exception as error:  # mmcv raises AssertionError, OSError or cv2.error here
            path = results.get('img_path')
            if path not in self._skipped:
                self._skipped.add(path)
                print_log(f'Skipping an image that cannot be read any more: {path} ({type(error).__name__}: '
                          f'{error}). It passed the dataset check before training: check the disk.',
                          logger='current', level=WARNING)
            return None
