"""Convert a ConvNeXt checkpoint of any released format to this project's layout, offline.

    python tools/convert_checkpoint.py IN OUT.pth|OUT.safetensors [--backbone-only]
    python tools/convert_checkpoint.py IN OUT_FOLDER --to hf [--backbone-only]

IN is a file, a URL, a transformers model folder or an hf://ORG/NAME[@REVISION] Hub name.

A backbone-only checkpoint (official V1/V2 classification, V2 FCMAE, timm, mmpretrain) becomes a
backbone state dict for ``init_cfg=dict(type='Pretrained', checkpoint=OUT.pth)``. A whole
detector/segmentor checkpoint (e.g. the official ConvNeXt COCO/ADE20K release) becomes a model state
dict for our configs: ``python tools/test.py CONFIG OUT.pth``; with ``--backbone-only`` only its
backbone is kept, to initialise another model from it. The input is read as data only
(``backbones.checkpoints.reader``): objects it pickles besides tensors are left out. An output name
ending in ``.safetensors`` writes safetensors (tensors and string metadata only, safe to load anywhere);
any other name a PyTorch checkpoint.

``--to hf`` writes a transformers model folder (``config.json``, ``model.safetensors``) instead: a backbone
(or ``--backbone-only``) as ``ConvNextBackbone``/``ConvNextV2Backbone`` (which also loads as
``ConvNextModel``/``ConvNextV2Model``; that model's pooled final norm is not in our weights and is
initialised by transformers), an UperNet segmentor as ``UperNetForSemanticSegmentation`` with ``id2label``
from the checkpoint's class names (``meta.dataset_meta.classes``, which our training writes) or
``LABEL_i``. transformers has no Mask R-CNN or Cascade: for a detector, add ``--backbone-only``.
"""
import argparse
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import safetensors.torch
import torch

from backbones.checkpoints.huggingface import WEIGHT_FILES
from backbones.checkpoints.layouts import DENSE_PARTS, model_layout
from backbones.checkpoints.layouts.transformers import CONFIG_NAME
from backbones.checkpoints.layouts.transformers import from_ours as write_transformers_folder
from backbones.checkpoints.loading import Checkpoint, open_checkpoint
from backbones.checkpoints.writing import separate_tensors, write_atomic
from backbones.class_meta import checkpoint_class_meta
from backbones.errors import UsageError
from backbones.runtime import cli


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument('input', help='checkpoint to convert (path, URL, transformers folder or hf:// name)')
    parser.add_argument('output', help='where to write the converted checkpoint (a folder with --to hf)')
    parser.add_argument('--to', choices=['ours', 'hf'], default='ours',
                        help="ours: this project's layout (default); hf: a transformers model folder")
    parser.add_argument('--backbone-only', action='store_true', help='keep only the backbone of a whole model')
    return parser


def class_names(checkpoint: Checkpoint) -> list[str] | None:
    """The class names our training stores in a checkpoint (``meta.dataset_meta.classes``), checked, if any.

    Raises:
        CheckpointError: Class metadata that does not fit the schema (:func:`checkpoint_class_meta`).
    """
    meta = checkpoint_class_meta(checkpoint.contents, checkpoint.source)
    return None if meta is None else list(meta.classes)


def check_output(output: str, to: str) -> None:
    """Refuse, before anything is read, an output the conversion would not write whole or that holds what it did
    not write.

    ``--to ours`` writes a file: an existing file is replaced atomically (as ``torch.save``, mmengine and timm
    overwrite), a directory is refused. ``--to hf`` writes a folder, created if missing: an existing one must be
    empty or a transformers model folder (a ``config.json``) whose weights are ``model.safetensors`` alone, as this
    tool writes them, and its ``config.json`` and ``model.safetensors`` are replaced. Nothing is ever deleted.

    Raises:
        UsageError: The output is a directory (ours), a file or a folder of other files (hf), in one line.
    """
    path = Path(output)
    if to == 'ours':
        if path.is_dir():
            raise UsageError(f'{output}: it is a directory; give the name of the file to write, e.g. '
                             f'{path / "converted.pth"}.')
        return
    if path.exists() and not path.is_dir():
        raise UsageError(f'{output}: it is a file; --to hf writes a folder (config.json, model.safetensors). Give a '
                         'new or empty folder.')
    names = {entry.name for entry in path.iterdir()} if path.is_dir() else set()
    if names and CONFIG_NAME not in names:
        raise UsageError(f'{output}: a folder of other files, not a transformers model folder (no config.json). '
                         'Give a new or empty folder.')
    others = sorted(names & set(WEIGHT_FILES) - {'model.safetensors'})
    if others:
        raise UsageError(f'{output}: a transformers model folder with {others[0]}, which would be read instead of the '
                         'model.safetensors written beside it. Give a new or empty folder.')


@contextlib.contextmanager
def writing(output: str) -> Iterator[None]:
    """An ``OSError`` of writing ``output`` (permissions, a full disk, a file where a folder should be) as one line."""
    try:
        yield
    except OSError as error:
        raise UsageError(f'{output}: cannot write it ({error.strerror or error}).') from None


def main() -> None:
    args = build_parser().parse_args()
    with writing(args.output):
        check_output(args.output, args.to)
    checkpoint = open_checkpoint(args.input)
    weights = checkpoint.weights
    if args.to == 'hf':
        heads = {} if args.backbone_only else weights.other
        with writing(args.output):
            model_class = write_transformers_folder(args.output, weights.backbone, heads, class_names(checkpoint))
        print(f'{args.input}: {weights.source_format} format -> {args.output}/ (transformers {model_class})')
        return

    keep_dense_parts = bool(weights.other) and not args.backbone_only  # a whole model: keep its neck and heads
    converted = model_layout(weights, args.backbone_only)
    meta = dict(source=args.input, source_format=weights.source_format)
    if args.output.endswith('.safetensors'):
        data = safetensors.torch.save(separate_tensors(converted), metadata=meta)
    else:
        buffer = io.BytesIO()
        torch.save({'state_dict': {key: value.contiguous() for key, value in converted.items()}, 'meta': meta}, buffer)
        data = buffer.getvalue()
    with writing(args.output):
        write_atomic(args.output, data)

    print(f'{args.input}: {weights.source_format} format -> {args.output} ({len(converted)} tensors)')
    for reason, names in weights.leftovers.items():
        if not (reason == DENSE_PARTS and keep_dense_parts):
            print(f'  dropped ({reason}): {len(names)} tensors, e.g. {names[0]}')


if __name__ == '__main__':
    cli.run_tool(main)
