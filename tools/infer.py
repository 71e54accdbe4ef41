"""Run a ConvNeXt detector (mmdet) or segmentor (mmseg) on your own images, folders, patterns and videos.

    python tools/infer.py CONFIG CKPT INPUTS... --out DIR [--batch-size N] [--score-thr T] [--tta]
                          [--precision {auto,fp32,bf16,fp16}] [--channels-last] [--compile] [--device DEVICE]
                          [--backend {pytorch,onnxruntime}] [--cfg-options KEY=VALUE ...]

INPUTS: image files, folders (searched recursively for .jpg, .png, .bmp, .tif, .webp, ... images), glob
patterns (quoted: 'photos/**/*.jpg') and video files that OpenCV reads, whose frames become images named
<video stem>_<frame index>. An image found in a folder or by a pattern is named by its path below that
folder or below the pattern's wildcards, a file given by itself by its file name. DIR gets, for an image
named <name> (<stem> without the extension):

    vis/<stem>.png     the image with the predictions drawn. Detection: boxes, masks, class names and
                       scores of the instances scoring at least --score-thr; segmentation: the class
                       colours over the image, each class present labelled with its name.
    results.json       detection: one list of COCO-style results, the instances scoring at least
                       --score-thr: image (<name>), bbox [x, y, w, h], score, category_id (the dataset's
                       category id for a model of tools/train.py, else the class index), category_name,
                       segmentation (RLE, pycocotools; mask models).
    labels/<stem>.png  segmentation: the class index (in the config) of every pixel, 8-bit below 256
                       classes, else 16-bit.

CKPT is loaded as tools/test.py loads it: checkpoints of tools/train.py or the official release, strictly.
The class names and colours are those a checkpoint of tools/train.py carries (the classes it was
trained on), else the config's (its test set). --tta runs the config's test-time augmentation
(segmentation: scales 0.5 to 1.75 with flip). --precision (default auto: fp16 on CUDA, bf16 on a CPU that
computes it natively, else fp32) runs the model under autocast, as tools/test.py does; --channels-last and
--compile are tools/test.py's too. --backend onnxruntime runs an exported model instead (CKPT: the
model.onnx of tools/export.py) on the CPU, with the same outputs (docs/deploy.md). A batch holds
consecutive images of one size. A file that is not a readable image or video is skipped with one warning
line; the exit status is 0 when at least one image was processed.
"""
import argparse
import glob
import itertools
import json
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import mmcv
import numpy as np
from mmdet.apis import DetInferencer
from mmdet.apis.det_inferencer import IMG_EXTENSIONS
from mmdet.structures.mask import encode_mask_results
from mmengine.config import Config
from mmengine.infer import BaseInferencer
from mmengine.logging import MMLogger
from mmengine.registry import DATASETS
from mmengine.structures import BaseDataElement
from mmengine.utils import ProgressBar
from mmseg.apis import MMSegInferencer

from backbones.boundary import (
    DEFAULT_IMAGE_CAP_MB,
    IMAGE_CAP_VARIABLE,
    cap_from_environment,
    declared_image_size,
    read_regular_file,
    resolve_inside,
    too_many_pixels,
    walk_files,
)
from backbones.checkpoints.loading import Checkpoint, load_model_weights
from backbones.deploy.onnx_file import ExportedFile
from backbones.errors import UsageError
from backbones.patches import quiet_ffmpeg_logs
from backbones.runtime import cli
from backbones.runtime.device import resolve_device, unwrap_model
from backbones.runtime.inference import prepare_inference
from backbones.runtime.onnx_backend import add_backend, check_backend_options
from backbones.runtime.own_data import class_heads
from backbones.runtime.precision import resolve_precision
from backbones.runtime.prepare import prepare_config

INFERENCERS = {'detection': DetInferencer, 'segmentation': MMSegInferencer}


@dataclass
class InputFile:
    """A file found from INPUTS.

    Attributes:
        path: The file, as found.
        name: Its path below the folder or pattern that found it (its file name if given by itself).
        stem: ``name`` without the extension: its outputs are ``<stem>.png``.
        frames: The number of frames OpenCV reports for a file without an image extension (0: unreadable).
    """
    path: Path
    name: str
    stem: str
    frames: int = 0


@dataclass
class Image:
    """An image to run the model on: its name in results.json, the stem of its output files, its BGR pixels."""
    name: str
    stem: str
    pixels: np.ndarray


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('inputs', nargs='+', help='images, folders, glob patterns (quoted) and videos')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--batch-size', type=cli.at_least(1), default=1, help='images per model call (default 1)')
    parser.add_argument('--score-thr', type=cli.in_range(0, 1, 'scores are probabilities'), default=0.3,
                        help='detection: lowest score kept (default 0.3)')
    parser.add_argument('--tta', action='store_true', help="the config's test-time augmentation (segmentation)")
    cli.add_precision(parser, default='auto', default_help="auto, the machine's fastest")
    cli.add_inference_options(parser)
    cli.add_device(parser)
    add_backend(parser)
    cli.add_config_options(parser)
    return parser


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f'warning: {message}', file=sys.stderr)


def without_annotation_loading(pipeline: list) -> list:
    """``pipeline`` without its annotation loading, also among TestTimeAug's steps: there are no annotations
    here (MMSegInferencer drops only a top-level ``LoadAnnotations``, and mmseg's fails without one)."""
    kept = []
    for transform in pipeline:
        if transform['type'].endswith(('LoadAnnotations', 'LoadDepthAnnotation')):
            continue
        if transform['type'].endswith('TestTimeAug'):
            steps = (without_annotation_loading(choices) for choices in transform['transforms'])
            transform = dict(transform, transforms=[choices for choices in steps if choices])
        kept.append(transform)
    return kept


def video_frames(path: Path) -> tuple[int, str | None]:
    """The number of frames OpenCV reports for ``path`` (0 if it cannot open it as a video), and why its frames
    must not be decoded (None when they may be): over the pixel cap, declared by an image header (a GIF: checked
    before FFmpeg decodes its first frames to probe it) or by the video's frame size."""
    declared = declared_image_size(path)
    if declared is not None and (problem := too_many_pixels(declared)):
        return 0, problem
    capture = cv2.VideoCapture(str(path))
    frames, problem = 0, None
    if capture.isOpened():
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        size = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        problem = too_many_pixels(size)
    capture.release()
    return frames, problem


def expand_input(spec: str) -> tuple[Path, list[Path], str]:
    """What one INPUT names: the folder its files are named relative to, the files (regular files only; a
    folder's images recursively, by :func:`backbones.boundary.walk_files`) and, for when there are none, why."""
    if glob.has_magic(spec):
        parts = Path(spec).parts
        root = Path(*parts[:next(i for i, part in enumerate(parts) if glob.has_magic(part))])
        matches, problem = [Path(match) for match in sorted(glob.glob(spec, recursive=True))], 'no file matches it'
    elif os.path.isdir(spec):
        root, matches, problem = Path(spec), [Path(spec)], 'no images in this folder'
    else:
        root, matches = Path(spec).parent, [Path(spec)] if os.path.exists(spec) else []
        problem = 'not a regular file (a FIFO, socket or device)' if matches else 'no such file'
    files = []
    for match in matches:
        if match.is_dir():
            files += sorted(match / name for name in walk_files(match, IMG_EXTENSIONS))
        elif match.is_file():  # not a FIFO, socket or device: opening one could block
            files.append(match)
    return root, files, problem


def read_image(path: Path) -> tuple[np.ndarray | None, str | None]:
    """The BGR pixels of the image file ``path``, decoded as mmcv's ``LoadImageFromFile`` decodes, or None and why:
    its bytes are read within ``$CONVNEXT_DENSE_MAX_IMAGE_MB``, and its header must declare no more pixels than
    the cap (:func:`backbones.boundary.too_many_pixels`) before anything decodes it.

    Raises:
        UsageError: A cap's environment variable is not a positive number.
    """
    try:
        content = read_regular_file(path, cap_from_environment(IMAGE_CAP_VARIABLE, DEFAULT_IMAGE_CAP_MB),
                                    'an image', IMAGE_CAP_VARIABLE, refuse=ValueError)
    except FileNotFoundError:
        return None, 'it no longer exists'
    except ValueError as error:
        return None, str(error)
    size = declared_image_size(content)
    problem = 'not a readable image' if size is None else too_many_pixels(size)
    if problem:
        return None, problem
    pixels = mmcv.imfrombytes(content)
    return (None, 'not a readable image') if pixels is None else (pixels, None)


def find_inputs(inputs: list[str]) -> tuple[list[InputFile], list[str]]:
    """The files that ``inputs`` name, in order and each once, and why each input that names none does not.

    A file whose outputs would have the names of an earlier one's is left out with a warning.
    """
    files, unmatched, seen, stems = [], [], set(), {}
    for spec in inputs:
        root, paths, problem = expand_input(spec)
        if not paths:
            unmatched.append(f'{spec}: {problem}')
        for path in paths:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            name = Path(os.path.relpath(path, root)).as_posix()
            stem = Path(name).with_suffix('').as_posix()
            if stem in stems:
                warn(f'skipping {path}: its outputs would overwrite those of {stems[stem]}')
                continue
            stems[stem] = path
            frames, oversized = (0, None) if path.suffix.lower() in IMG_EXTENSIONS else video_frames(path)
            if oversized:
                warn(f'skipping {path}: {oversized}')
                continue
            files.append(InputFile(path, name, stem, frames))
    return files, unmatched


def read_images(files: list[InputFile], progress: ProgressBar) -> Iterator[Image]:
    """The images of ``files``, a video's frame by frame; a file that cannot be read gets a warning and
    counts as done in ``progress``."""
    for file in files:
        if file.frames:
            capture = cv2.VideoCapture(str(file.path))
            for index in itertools.count():
                readable, frame = capture.read()
                if not readable:
                    break
                yield Image(f'{file.stem}_{index}', f'{file.stem}_{index}', frame)
            capture.release()
            if index < file.frames:
                warn(f'{file.path} ended after {index} of the {file.frames} frames it reports: the rest cannot be read')
                progress.update(file.frames - index)
            continue
        pixels, problem = None, 'not a readable image or video'
        if file.path.suffix.lower() in IMG_EXTENSIONS:
            pixels, problem = read_image(file.path)
        if pixels is None:
            warn(f'skipping {file.path}: {problem}')
            progress.update()
        else:
            yield Image(file.name, file.stem, pixels)


def batches(images: Iterable[Image], size: int) -> Iterator[list[Image]]:
    """Consecutive images of one size, up to ``size`` at a time (mmseg stacks a test batch without padding)."""
    batch = []
    for image in images:
        if batch and (len(batch) == size or image.pixels.shape != batch[0].pixels.shape):
            yield batch
            batch = []
        batch.append(image)
    if batch:
        yield batch


def build_inferencer(cfg: Config, checkpoint: 'Checkpoint | ExportedFile', device: str,
                     onnx: bool = False) -> BaseInferencer:
    """mmdet's DetInferencer or mmseg's MMSegInferencer for ``cfg``, with the weights of ``checkpoint`` loaded
    as tools/test.py loads them (``onnx``: ``checkpoint`` is the exported model, run by ONNX Runtime, which
    ``cfg`` already names) and the class names and palette of the config's test set.

    Raises:
        CheckpointError: A checkpoint that cannot be read or does not fit the model, in one line.
    """
    with warnings.catch_warnings():  # both warn that no weights were given: they are loaded below
        warnings.filterwarnings('ignore', message='(Checkpoint is not loaded|weights is None)')
        inferencer = INFERENCERS[cli.task_of(cfg)](model=cfg, device=device)
    if not onnx:
        load_model_weights(unwrap_model(inferencer.model), checkpoint, MMLogger.get_current_instance())
    metainfo = DATASETS.build(dict(cfg.test_dataloader.dataset, lazy_init=True)).metainfo
    heads = {path: head.num_classes for path, head in class_heads(cfg.model)}
    classes = metainfo.get('classes') or ()
    if not classes or any(count != len(classes) for count in heads.values()):
        source = checkpoint.path if onnx else checkpoint.source
        raise UsageError(f'{source} does not carry its class names, and the config\'s test set has '
                         f'{len(classes)} classes for heads of {max(heads.values(), default=0)}: name the classes '
                         'with --cfg-options test_dataloader.dataset.metainfo.classes="(a,b,...)".')
    inferencer.visualizer.dataset_meta = dict(classes=metainfo['classes'], palette=metainfo.get('palette'),
                                              category_ids=metainfo.get('category_ids'))
    return inferencer


def predict(inferencer: BaseInferencer, images: list[np.ndarray]) -> list[BaseDataElement]:
    """The model's predictions for a batch of BGR images, through the config's test pipeline."""
    return inferencer.forward(inferencer.collate_fn([inferencer.pipeline(image) for image in images]))


def detection_results(name: str, sample: BaseDataElement, classes: Sequence[str], score_thr: float,
                      category_ids: Sequence[int] | None = None) -> list[dict]:
    """COCO-style results of the instances of one image that score at least ``score_thr``; ``category_id`` is
    the dataset's id of the class where ``category_ids`` gives them, else the class index."""
    instances = sample.pred_instances
    instances = instances[instances.scores >= score_thr].cpu().numpy()
    masks = encode_mask_results(instances.masks) if 'masks' in instances else [None] * len(instances)
    results = []
    for (x1, y1, x2, y2), score, label, mask in zip(instances.bboxes.tolist(), instances.scores.tolist(),
                                                    instances.labels.tolist(), masks):
        result = dict(image=name, bbox=[x1, y1, x2 - x1, y2 - y1], score=score,
                      category_id=category_ids[label] if category_ids else label, category_name=classes[label])
        if mask is not None:
            result['segmentation'] = dict(size=mask['size'], counts=mask['counts'].decode())
        results.append(result)
    return results


def output_file(out: Path, folder: str, stem: str) -> Path:
    """``out/<folder>/<stem>.png`` resolved, which must lie inside ``out/<folder>``: an input's name below its
    folder or pattern can hold ``..`` (a pattern with ``..`` after a wildcard), and no output goes above --out.

    Raises:
        UsageError: The output would resolve outside ``out/<folder>``, naming the input.
    """
    def refuse(reason: str) -> UsageError:
        return UsageError(f"{stem}: its output {folder}/{stem}.png would be written outside --out {out}. Name the "
                          "inputs by a folder or a pattern with no '..' after its wildcards.")
    return resolve_inside(out / folder / f'{stem}.png', out / folder, f'--out {folder}/', refuse)


def run(inferencer: BaseInferencer, files: list[InputFile], out: Path, batch_size: int, score_thr: float) -> int:
    """Predict every image of ``files`` and write its outputs to ``out``; return how many images were processed.

    Raises:
        UsageError: An output would lie outside ``out`` (:func:`output_file`), before anything is written.
    """
    for file in files:  # a video's frames (<stem>_<index>.png) go beside <stem>.png
        for folder in ('vis', 'labels'):
            output_file(out, folder, file.stem)
    detection = isinstance(inferencer, DetInferencer)
    classes, category_ids = (inferencer.visualizer.dataset_meta[key] for key in ('classes', 'category_ids'))
    draw_options = dict(pred_score_thr=score_thr) if detection else {}
    results, processed = [], 0
    progress = ProgressBar(sum(file.frames or 1 for file in files))
    for batch in batches(read_images(files, progress), batch_size):
        for image, sample in zip(batch, predict(inferencer, [image.pixels for image in batch])):
            inferencer.visualizer.add_datasample(image.name, mmcv.bgr2rgb(image.pixels), sample, draw_gt=False,
                                                 out_file=str(output_file(out, 'vis', image.stem)), **draw_options)
            if detection:
                results += detection_results(image.name, sample, classes, score_thr, category_ids)
            else:
                labels = sample.pred_sem_seg.data[0].cpu().numpy()
                mmcv.imwrite(labels.astype(np.uint8 if len(classes) < 256 else np.uint16),
                             str(output_file(out, 'labels', image.stem)))
        processed += len(batch)
        progress.update(len(batch))
    progress.file.write('\n')
    if detection and processed:
        (out / 'results.json').write_text(json.dumps(results))
    return processed


def main() -> None:
    args = build_parser().parse_args()
    check_backend_options(args)
    prepared = prepare_config(args, 'infer')
    cfg, onnx = prepared.cfg, args.backend == 'onnxruntime'
    for line in prepared.log_lines:
        MMLogger.get_current_instance().info(line)
    cfg.test_dataloader.dataset.pipeline = without_annotation_loading(cfg.test_dataloader.dataset.pipeline)
    cfg.visualizer.vis_backends = []  # each drawing goes to its own out_file; a backend would want a save_dir

    quiet_ffmpeg_logs()  # FFmpeg's own messages about a file it cannot read would add lines to our warning line
    files, unmatched = find_inputs(args.inputs)
    if len(unmatched) == len(args.inputs):
        raise UsageError(f'nothing to run on: {"; ".join(unmatched)}')
    for problem in unmatched:
        warn(f'skipping {problem}')
    device = resolve_device(args.device)
    inferencer = build_inferencer(cfg, prepared.checkpoint, 'cpu' if onnx else str(device), onnx)
    if not onnx:
        prepare_inference(inferencer.model, resolve_precision(args.precision, device), args.channels_last,
                          args.compile)
    if not run(inferencer, files, Path(args.out), args.batch_size, args.score_thr):
        raise UsageError('no input could be read as an image')


if __name__ == '__main__':
    cli.run_tool(main)
