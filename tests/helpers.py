"""Small architectures and checkpoint-format builders shared by the tests.

The builders turn a backbone's state dict (timm layout) into each released checkpoint format, as
documented by the releases, so that loading can be checked without downloading weights.
"""
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, HOOKS, METRICS, MODELS

from backbones.runtime.demo_data import ensure_demo_data, textured_background

# A custom ConvNeXt small enough for CPU training steps in tests.
TINY_ARCH = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))

StateDict = dict[str, torch.Tensor]


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere (std 0.02, vectors 0.2), zero-initialised GRN, LayerScale and norms included."""
    for param in module.parameters():
        torch.nn.init.normal_(param, std=0.02 if param.ndim > 1 else 0.2)
    return module


def randomize_at_fan_in_scale(model: torch.nn.Module) -> None:
    """Random weights of the scale a trained network has (std 1/sqrt(fan-in)); norms, biases and LayerScale moved
    off their constant init by noise of 0.1, so that two models compared on them give features of the usual size."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim > 1:
                param.copy_(torch.randn(param.shape, generator=generator) / param[0].numel()**0.5)
            else:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


def official_name(key: str) -> str:
    """The official ConvNeXt name of a backbone parameter named in timm's layout."""
    key = re.sub(r'^stem\.(\d)', r'downsample_layers.0.\1', key)
    key = re.sub(r'^stages\.(\d)\.downsample\.(\d)', r'downsample_layers.\1.\2', key)
    key = re.sub(r'^stages\.(\d)\.blocks\.(\d+)', r'stages.\1.\2', key)
    key = key.replace('.conv_dw.', '.dwconv.').replace('.mlp.fc', '.pwconv')
    return key.replace('.mlp.grn.weight', '.grn.gamma').replace('.mlp.grn.bias', '.grn.beta')


def to_official(backbone_state: StateDict, dense: bool = False) -> StateDict:
    """Official ConvNeXt layout: classification (with head and final norm) or, with ``dense``, the
    backbone of the official detection/segmentation release (output norms ``norm{i}``)."""
    out = {}
    for key, value in backbone_state.items():
        if key.startswith('out_norms.'):
            if dense:
                out[re.sub(r'^out_norms\.(\d)', r'norm\1', key)] = value
            continue
        key = official_name(key)
        out[key] = value.reshape(1, 1, 1, -1) if '.grn.' in key else value
    if not dense:
        channels = out['downsample_layers.3.1.weight'].shape[0]
        out.update({'norm.weight': torch.ones(channels), 'norm.bias': torch.zeros(channels),
                    'head.weight': torch.randn(1000, channels), 'head.bias': torch.zeros(1000)})
    return out


def to_fcmae(backbone_state: StateDict) -> StateDict:
    """V2 FCMAE pre-training layout: sparse encoder (MinkowskiEngine kernels) plus decoder."""
    out = {}
    for key, value in to_official(backbone_state).items():
        if key.startswith(('norm.', 'head.')):
            continue
        if re.match(r'downsample_layers\.[123]\.1\.weight', key):  # (out, in, h, w) -> (w * k + h, in, out)
            key, value = key.replace('.weight', '.kernel'), value.permute(3, 2, 1, 0).reshape(-1, *value.shape[1::-1])
        elif key.endswith('.dwconv.weight'):  # (C, 1, h, w) -> (w * k + h, C)
            key, value = key.replace('.weight', '.kernel'), value[:, 0].permute(2, 1, 0).reshape(-1, value.shape[0])
        elif re.match(r'downsample_layers\.[123]\.1\.bias', key) or key.endswith('.dwconv.bias') or '.grn.' in key:
            value = value.reshape(1, -1)
        key = re.sub(r'^(downsample_layers\.[123]\.0)\.', r'\1.ln.', key)
        key = key.replace('.norm.', '.norm.ln.')
        key = re.sub(r'\.(pwconv\d)\.', r'.\1.linear.', key)
        out[f'encoder.{key}'] = value
    return {**out, **official_fcmae_decoder(backbone_state['stages.3.blocks.0.conv_dw.weight'].shape[0])}


def official_fcmae_decoder(encoder_dim: int, dim: int = 512) -> StateDict:
    """The official FCMAE decoder with random values: ``proj`` (1x1 conv), ``mask_token``, one dense
    ConvNeXt V2 block ``decoder.0`` (GRN stored as (1, 1, 1, C)) and ``pred`` (1x1 conv to 32*32*3)."""
    shapes = {'proj.weight': (dim, encoder_dim, 1, 1), 'proj.bias': (dim,), 'mask_token': (1, dim, 1, 1),
              'decoder.0.dwconv.weight': (dim, 1, 7, 7), 'decoder.0.dwconv.bias': (dim,),
              'decoder.0.norm.weight': (dim,), 'decoder.0.norm.bias': (dim,),
              'decoder.0.pwconv1.weight': (4 * dim, dim), 'decoder.0.pwconv1.bias': (4 * dim,),
              'decoder.0.grn.gamma': (1, 1, 1, 4 * dim), 'decoder.0.grn.beta': (1, 1, 1, 4 * dim),
              'decoder.0.pwconv2.weight': (dim, 4 * dim), 'decoder.0.pwconv2.bias': (dim,),
              'pred.weight': (32 * 32 * 3, dim, 1, 1), 'pred.bias': (32 * 32 * 3,)}
    return {key: torch.randn(shape) * 0.02 for key, shape in shapes.items()}


def to_mmpretrain(backbone_state: StateDict, dense: bool = False) -> StateDict:
    """mmpretrain ConvNeXt layout under ``backbone.``: a classifier (``norm3`` is the final norm,
    ``head.fc``) or, with ``dense``, a detector backbone with output norms ``norm{i}``."""
    out = {}
    for key, value in to_official(backbone_state, dense=dense).items():
        key = key.replace('.dwconv.', '.depthwise_conv.').replace('.pwconv', '.pointwise_conv')
        if '.grn.' in key:
            value = value.reshape(-1)
        if key.startswith('head.'):
            out[key.replace('head.', 'head.fc.')] = value
            continue
        if key.startswith('norm.'):
            key = key.replace('norm.', 'norm3.')
        out[f'backbone.{key}'] = value
    return out


@HOOKS.register_module()
class KillAfterIterationHook(Hook):
    """Ends its process with SIGKILL (``kill -9``) after a number of training iterations: a crash at a
    known point, with no chance to clean up.

    Args:
        iterations: Training iterations to complete before the kill.
    """

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.iterations:
            os.kill(os.getpid(), signal.SIGKILL)


@MODELS.register_module()
class ToyRegressor(BaseModel):
    """A linear model of two inputs: what the training-checkpoint tests train in a second."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, targets=None, mode='tensor'):
        out = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=((out - targets)**2).mean())
        if mode == 'predict':
            return [dict(error=((o - t)**2).sum()) for o, t in zip(out, targets)]
        return out


@DATASETS.register_module()
class ToyDataset(torch.utils.data.Dataset):
    """Eight points on a line, with a dataset metainfo as mmdet's and mmseg's datasets have."""
    metainfo = dict(classes=('a', 'b'), palette=[(1, 2, 3), (4, 5, 6)])

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        return dict(inputs=torch.full((2,), index / 8), targets=torch.full((1,), index / 4))


@METRICS.register_module()
class ToyError(BaseMetric):
    """The mean squared error of :class:`ToyRegressor`, as ``toy/error``."""
    default_prefix = 'toy'

    def process(self, data_batch, data_samples) -> None:
        self.results.extend(float(sample['error']) for sample in data_samples)

    def compute_metrics(self, results: list) -> dict:
        return dict(error=sum(results) / len(results))


TOY_CONFIG = """
custom_imports = dict(imports=['backbones', 'tests.helpers'], allow_failed_imports=False)
runner_type = 'ConvNeXtDenseRunner'
model = dict(type='ToyRegressor')
loader = dict(dataset=dict(type='ToyDataset'), batch_size=2, collate_fn=dict(type='default_collate'))
train_dataloader = dict(loader, sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(loader, sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='ToyError')
val_cfg = dict()
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=0.01))
param_scheduler = dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=3)
train_cfg = dict(by_epoch=True, max_epochs={max_epochs}, val_interval=1)
default_hooks = dict(checkpoint=dict(type='ConvNeXtDenseCheckpointHook', interval=1, save_best='toy/error',
                                     rule='less'))
custom_hooks = [dict(type='RandomStateHook')]
randomness = dict(seed=0)
"""


def toy_config(path: Path, max_epochs: int) -> str:
    """Write the config of a toy training of ``max_epochs`` epochs (for ``tools/train.py``) to ``path``."""
    path.write_text(TOY_CONFIG.format(max_epochs=max_epochs))
    return str(path)


# A dataset unlike the demo's, made from its scenes: three classes (the square and the triangle are one,
# 'polygon') with non-contiguous COCO ids, images in nested folders named by file_name, another image size,
# and one training image without annotations.
OWN_CLASSES = {3: 'disc', 7: 'polygon', 12: 'plus'}
OWN_IDS = (3, 7, 7, 12)  # by demo class: circle, square, triangle, cross
OWN_SEG_CLASSES = ('background', 'disc', 'polygon', 'plus')
OWN_SEG_VALUES = (255, 0, 1, 2, 2, 3)  # by demo map value: unlabelled, background, circle, square, triangle, cross


def make_own_coco(root: Path, num_train: int, num_val: int, image_size: int, seed: int) -> Path:
    """Write the own-data COCO set (above) to ``root``: ``annotations/{train,val}.json`` and
    ``pictures/<split>/batch_<k>/*.jpg``; return ``root``."""
    source = root / 'source'
    ensure_demo_data(source, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    for split in ('train', 'val'):
        content = json.loads((source / 'coco' / 'annotations' / f'instances_{split}.json').read_text())
        for index, image in enumerate(content['images']):
            name = f'pictures/{split}/batch_{index % 3}/{image["file_name"]}'
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / 'coco' / split / image['file_name'], root / name)
            image['file_name'] = name
        for annotation in content['annotations']:
            annotation['category_id'] = OWN_IDS[annotation['category_id'] - 1]
        content['categories'] = [dict(id=i, name=name) for i, name in OWN_CLASSES.items()]
        if split == 'train':
            empty = f'pictures/{split}/empty.jpg'
            background = textured_background(np.random.default_rng(seed), image_size)
            cv2.imwrite(str(root / empty), np.clip(background, 0, 255).astype(np.uint8))
            content['images'].append(dict(id=len(content['images']) + 1, file_name=empty, width=image_size,
                                          height=image_size))
        (root / 'annotations' / f'{split}.json').write_text(json.dumps(content))
    shutil.rmtree(source)
    return root


def make_own_label_maps(root: Path, num_train: int, num_val: int, image_size: int, seed: int) -> Path:
    """Write the own-data label-map set to ``root``: ``images/{train,val}/*.jpg``, ``annotations/{train,val}/*.png``
    (values 0-3, 255 unlabelled; every other map 16-bit) and ``classes.json`` (ignore 255); return ``root``."""
    source = root / 'source'
    ensure_demo_data(source, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed)
    relabel = np.array(OWN_SEG_VALUES + (255,) * (256 - len(OWN_SEG_VALUES)), np.uint16)
    for split, ade_split in (('train', 'training'), ('val', 'validation')):
        for folder in ('images', 'annotations'):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        for index, label_file in enumerate(sorted((source / 'ade' / 'annotations' / ade_split).glob('*.png'))):
            shutil.copyfile(source / 'ade' / 'images' / ade_split / f'{label_file.stem}.jpg',
                            root / 'images' / split / f'{label_file.stem}.jpg')
            values = relabel[cv2.imread(str(label_file), cv2.IMREAD_UNCHANGED)]
            cv2.imwrite(str(root / 'annotations' / split / label_file.name),
                        values if index % 2 else values.astype(np.uint8))
    (root / 'classes.json').write_text(json.dumps(dict(classes=list(OWN_SEG_CLASSES), ignore=255)))
    shutil.rmtree(source)
    return root


def limit_address_space(max_bytes: int) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess``: the child may map at most ``max_bytes`` of address space, so that a
    payload that allocates without bound ends in a MemoryError (a failed test), not in a killed test runner."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
    return limit


@contextlib.contextmanager
def within(seconds: int) -> Iterator[None]:
    """Fail the test if its block runs longer than ``seconds`` in this (the main) thread: a hostile input that
    hangs is a failed test, not a hung run. SIGALRM also interrupts a blocking ``open`` (of a FIFO). The failure is
    pytest's, a BaseException: no ``except OSError`` in the code under test (``os.walk``'s) swallows it, as it
    would a TimeoutError. A block that waits on other threads needs a subprocess with a timeout instead."""
    def hung(signum: int, frame: object) -> None:
        pytest.fail(f'still running after {seconds} s: it hangs')
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def png_declaring(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` pixels (by default 8-bit RGB; ``16, 0``: 16-bit
    grey), its data one empty row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    header = struct.pack('>IIBBBBB', width, height, bit_depth, colour_type, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\x00')) + chunk(b'IEND', b'')


def gif_with_frame(screen: tuple[int, int], frame: tuple[int, int, int, int]) -> bytes:
    """A GIF89a of logical screen ``screen`` (width, height) with one frame (left, top, width, height) whose image
    data is a single empty sub-block: the frame may lie outside the screen, as decoders allow."""
    return (b'GIF89a' + struct.pack('<HHBBB', *screen, 0, 0, 0) + b',' + struct.pack('<HHHHB', *frame, 0)
            + b'\x02\x01\x00\x00;')
