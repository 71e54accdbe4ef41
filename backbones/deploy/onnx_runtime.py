"""Exported models run by ONNX Runtime (CPU) inside mmdet's and mmseg's test loops and inferencers.

:func:`onnx_model_cfg` turns a config's ``model`` into one of the models below, which ``tools/test.py``,
``tools/infer.py`` and the benchmark then build as they build the PyTorch model: the config's
``data_preprocessor`` prepares the batch (so the pipeline is the one PyTorch gets), the graph computes, and
the steps mmdet and mmseg take after the network stay in Python, with their own code where they have it:

* detection: boxes scaled back to the original image, masks pasted at the box and thresholded at the
  config's ``mask_thr_binary`` (mmdet's ``_do_paste_mask``, one detection at a time as mmdet does on a CPU);
* segmentation: mmseg's ``EncoderDecoder`` inference (``whole`` or ``slide`` windows of the exported graph,
  test-time augmentation through the config's TTA model), padding removed and logits resized to the
  original image by mmseg's ``postprocess_result``.

A config never names these classes: :func:`onnx_model_cfg`, which writes the model config that names one,
registers both in mmengine's root ``MODELS`` first (:func:`register_onnx_models`). Importing this module
registers nothing.
"""
from collections.abc import Sequence

import numpy as np
import torch
from mmdet.models.detectors.base import BaseDetector
from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
from mmengine.config import ConfigDict
from mmengine.registry import MODELS
from mmengine.structures import InstanceData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.segmentors.base import BaseSegmentor

from ..errors import UsageError
from .onnx_file import ExportedFile, hand_over, load_exported, read_exported

__all__ = ['OnnxRuntimeDetector', 'OnnxRuntimeSegmentor', 'onnx_model_cfg', 'register_onnx_models']


def onnx_model_cfg(model_cfg: ConfigDict, exported: 'ExportedFile | str') -> dict:
    """The config of the ONNX Runtime model that runs the exported file in place of ``model_cfg``, with the
    model's class registered (:func:`register_onnx_models`).

    ``model_cfg`` must already have the file's classes (its :class:`~.onnx_file.ExportedFile`'s ``info``), as
    the file is verified against it when the model is built. The file is read once: ``exported`` (or the read
    of a path given instead) is handed to the model built from the returned config (:func:`.onnx_file.hand_over`).

    Raises:
        CheckpointError: A path that is not an export of tools/export.py.
        UsageError: A backbone-only or label-map export (they have no predictions for the tools).
    """
    exported = read_exported(exported) if isinstance(exported, str) else exported
    info = exported.info
    if info.family == 'backbone' or info.labels:
        raise UsageError(f'{exported.path} is a {info.family} export with no predictions for the tools')
    kind = 'OnnxRuntimeSegmentor' if info.family == 'upernet' else 'OnnxRuntimeDetector'
    register_onnx_models()
    hand_over(exported)
    return dict(type=kind, onnx_file=exported.path, reference=model_cfg.to_dict(),
                data_preprocessor=model_cfg.data_preprocessor.to_dict(), test_cfg=model_cfg.get('test_cfg'))


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


class OnnxRuntimeDetector(BaseDetector):
    """An exported Mask R-CNN or Cascade Mask R-CNN (``TwoStageDetectorGraph``) as an mmdet detector.

    Args:
        onnx_file: A file of tools/export.py.
        reference: The config's model, which the file is verified against.
        data_preprocessor: The config's data preprocessor.
        test_cfg: The config's ``test_cfg`` (its ``rcnn.mask_thr_binary`` is the paste threshold).
    """

    def __init__(self, onnx_file: str, reference: dict, data_preprocessor: dict, test_cfg: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        self.session, self.info = load_exported(onnx_file, reference)
        self.mask_thr_binary = float((test_cfg or {}).get('rcnn', {}).get('mask_thr_binary', 0.5))

    def _detect(self, image: torch.Tensor, meta: dict) -> InstanceData:
        height, width = meta['img_shape'][:2]
        boxes, scores, labels, masks = (torch.from_numpy(array) for array in self.session.run(None, {
            'image': _as_numpy(image[None]), 'image_size': np.array([height, width], dtype=np.int64)}))
        boxes = boxes / boxes.new_tensor(meta['scale_factor']).repeat(2)  # mmdet's FCNMaskHead rescale
        ori_height, ori_width = meta['ori_shape'][:2]
        pasted = torch.zeros((len(boxes), ori_height, ori_width), dtype=torch.bool)
        for index in range(len(boxes)):
            mask, region = _do_paste_mask(masks[index:index + 1, None], boxes[index:index + 1], ori_height,
                                          ori_width, skip_empty=True)
            pasted[(slice(index, index + 1), *region)] = mask >= self.mask_thr_binary
        return InstanceData(bboxes=boxes, scores=scores, labels=labels, masks=pasted)

    def predict(self, batch_inputs: torch.Tensor, batch_data_samples: Sequence, rescale: bool = True) -> Sequence:
        """Detections of each image of the batch, in original image pixels (``rescale`` must be True)."""
        if not rescale:
            raise UsageError('the ONNX Runtime detector gives detections in original image pixels only')
        results = [self._detect(image, sample.metainfo) for image, sample in zip(batch_inputs, batch_data_samples)]
        return self.add_pred_to_datasample(batch_data_samples, results)

    def loss(self, *args, **kwargs) -> dict:
        raise UsageError('an exported model does not train: train the PyTorch model with tools/train.py')

    def _forward(self, *args, **kwargs) -> tuple:
        raise UsageError('an exported detector gives predictions only (mode="predict")')

    def extract_feat(self, *args, **kwargs) -> tuple:
        raise UsageError('an exported detector gives predictions only (mode="predict")')


class OnnxRuntimeSegmentor(BaseSegmentor):
    """An exported UperNet (``SegmentorGraph``, logits) as an mmseg segmentor with ``EncoderDecoder``'s
    ``whole``/``slide`` inference and post-processing.

    Args:
        onnx_file: A file of tools/export.py.
        reference: The config's model, which the file is verified against.
        data_preprocessor: The config's data preprocessor.
        test_cfg: The config's ``test_cfg`` (``mode``, and ``crop_size``/``stride`` for ``slide``).
    """

    inference = EncoderDecoder.inference
    whole_inference = EncoderDecoder.whole_inference
    slide_inference = EncoderDecoder.slide_inference
    predict = EncoderDecoder.predict

    def __init__(self, onnx_file: str, reference: dict, data_preprocessor: dict, test_cfg: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        self.session, self.info = load_exported(onnx_file, reference)
        self.test_cfg = ConfigDict(test_cfg or dict(mode='whole'))
        self.align_corners = self.info.align_corners
        self.num_classes = self.out_channels = len(self.info.classes)

    def encode_decode(self, inputs: torch.Tensor, batch_img_metas: list[dict]) -> torch.Tensor:
        """Class logits at the size of ``inputs`` (what mmseg's ``encode_decode`` returns)."""
        return torch.from_numpy(self.session.run(None, {'image': _as_numpy(inputs)})[0])

    def loss(self, *args, **kwargs) -> dict:
        raise UsageError('an exported model does not train: train the PyTorch model with tools/train.py')

    def _forward(self, *args, **kwargs) -> torch.Tensor:
        raise UsageError('an exported segmentor gives predictions only (mode="predict")')

    def extract_feat(self, *args, **kwargs) -> tuple:
        raise UsageError('an exported segmentor gives predictions only (mode="predict")')


def register_onnx_models() -> None:
    """Register :class:`OnnxRuntimeDetector` and :class:`OnnxRuntimeSegmentor` in mmengine's root ``MODELS``
    (whose mmdet and mmseg scopes fall back to it), once: a later call changes nothing.

    Raises:
        KeyError: Another class holds one of the names (mmengine's error).
    """
    for model in (OnnxRuntimeDetector, OnnxRuntimeSegmentor):
        if MODELS.module_dict.get(model.__name__) is not model:
            MODELS.register_module(module=model)
