"""Hugging Face transformers' own ConvNeXt and UperNet models, for the parity tests (run in a subprocess).

    python transformers_worker.py make DIR   # random models saved with save_pretrained, and their outputs
    python transformers_worker.py run DIR    # the folders our converter wrote (DIR/ours/*), run by transformers

``from_pretrained`` gets ``use_kernels=False``: transformers 5.25 otherwise asks for the ``kernels`` package
(Hub kernels), which the peer folder does not install. The backbones load through their own classes:
transformers 5.25's ``AutoBackbone.from_pretrained`` takes a local folder for a Hub name.

Runs with ``.venv/peers/transformers`` on PYTHONPATH and imports nothing of this project, so the outputs
are transformers' own. Both commands read the image batch ``DIR/input.safetensors`` and write
``DIR/<command>.safetensors``: ``NAME.hidden.I`` (stage outputs before any norm) and ``NAME.features.I``
(a backbone's normed feature maps), ``NAME.logits`` (UperNet, at the input's size).
"""
import sys
from pathlib import Path

import safetensors.torch
import torch
from transformers import (
    ConvNextBackbone,
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextModel,
    ConvNextV2Backbone,
    ConvNextV2Config,
    ConvNextV2ForImageClassification,
    ConvNextV2Model,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

ALL_STAGES = ['stage1', 'stage2', 'stage3', 'stage4']
TINY = dict(depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768])
ATTO = dict(depths=[2, 2, 6, 2], hidden_sizes=[40, 80, 160, 320])


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights at the scale of a trained network (1/sqrt(fan-in)); vectors (norms, biases, LayerScale, GRN)
    moved off their constant init, BatchNorm statistics random, so that a mis-mapped tensor shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim > 1 and 'grn' not in name:
                param.copy_(torch.randn(param.shape, generator=generator) / param[0].numel()**0.5)
            else:
                param.copy_(0.5 + 0.3 * torch.randn(param.shape, generator=generator))
        for name, buffer in model.named_buffers():
            if name.endswith('running_mean'):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))
            elif name.endswith('running_var'):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
    return model.eval()


def outputs_of(name: str, model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        if isinstance(model, UperNetForSemanticSegmentation):
            return {f'{name}.logits': model(pixel_values=images).logits}
        output = model(images, output_hidden_states=True)
    found = {}
    if getattr(output, 'feature_maps', None) is not None:
        found.update({f'{name}.features.{i}': f for i, f in enumerate(output.feature_maps)})
    hidden = output.hidden_states
    found.update({f'{name}.hidden.{i}': h for i, h in enumerate(hidden[1:])})  # [0] is the stem's output
    return found


def make(folder: Path, images: torch.Tensor) -> dict[str, torch.Tensor]:
    v1, v2 = ConvNextConfig(**TINY), ConvNextV2Config(**ATTO)
    models = {
        'v1_model': ConvNextModel(v1),
        'v1_classifier': ConvNextForImageClassification(v1),
        'v1_backbone': ConvNextBackbone(ConvNextConfig(**TINY, out_features=ALL_STAGES)),
        'v2_model': ConvNextV2Model(v2),
        'v2_classifier': ConvNextV2ForImageClassification(v2),
        'v2_backbone': ConvNextV2Backbone(ConvNextV2Config(**ATTO, out_features=ALL_STAGES)),
        'upernet': UperNetForSemanticSegmentation(UperNetConfig(
            backbone_config=ConvNextConfig(**TINY, out_features=ALL_STAGES), hidden_size=512, auxiliary_channels=256,
            num_labels=150)),
    }
    found = {}
    for seed, (name, model) in enumerate(models.items()):
        randomize(model, seed).save_pretrained(folder / name)
        found.update(outputs_of(name, model, images))
    return found


def run(folder: Path, images: torch.Tensor) -> dict[str, torch.Tensor]:
    found = {}
    for path in sorted((folder / 'ours').iterdir()):
        if path.name.startswith('upernet'):
            model = UperNetForSemanticSegmentation.from_pretrained(path, use_kernels=False).eval()
            found.update(outputs_of(path.name, model, images))
        else:
            v1 = path.name.startswith('v1')
            classes = (ConvNextBackbone, ConvNextModel) if v1 else (ConvNextV2Backbone, ConvNextV2Model)
            for name, model_class in zip((path.name, f'{path.name}_model'), classes, strict=True):
                model = model_class.from_pretrained(path, use_kernels=False).eval()
                found.update(outputs_of(name, model, images))
    return found


if __name__ == '__main__':
    command, folder = sys.argv[1], Path(sys.argv[2])
    images = safetensors.torch.load_file(folder / 'input.safetensors')['images']
    result = {'make': make, 'run': run}[command](folder, images)
    safetensors.torch.save_file({k: v.contiguous() for k, v in result.items()}, folder / f'{command}.safetensors')
