"""backbones/patches.py: importing backbones changes exactly the globals of mmengine and mmcv that it lists;
importing any other module of backbones changes, registers and reads nothing; the on-demand changes."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch._inductor.config as inductor_config
import torchvision
from mmcv.ops import RoIAlign, nms
from torch._inductor import cpp_builder

from backbones.runtime.inference import compile_backbone

SNAPSHOT = r'''
import importlib, json, os, pkgutil, sys

opened = []
sys.addaudithook(lambda event, args: opened.append(args[0]) if event == 'open' else None)

from mmcv.ops.nms import NMSop
from mmcv.ops.roi_align import RoIAlign
from PIL import ImageFile
import mmengine.fileio.backends.registry_utils as backends
import mmengine.fileio.io, mmengine.hooks.checkpoint_hook, mmengine.runner.checkpoint as checkpoint
import torch._inductor.config as inductor_config

def snapshot():
    found = {'os.environ': sorted(os.environ.items()), 'torch._inductor.config': inductor_config.save_config(),
             'PIL.ImageFile.LOAD_TRUNCATED_IMAGES': ImageFile.LOAD_TRUNCATED_IMAGES}
    for module in (checkpoint, mmengine.hooks.checkpoint_hook, mmengine.fileio.io):
        found.update({f'{module.__name__}.{k}': id(v) for k, v in vars(module).items() if not k.startswith('__')})
    for cls in (RoIAlign, NMSop, checkpoint.CheckpointLoader):
        found.update({f'{cls.__name__}.{k}': id(v) for k, v in vars(cls).items() if not k.startswith('__')})
    found.update({f'scheme {k!r}': id(v) for k, v in checkpoint.CheckpointLoader._schemes.items()})
    found.update({f'backend {k!r}': id(v) for k, v in backends.backends.items()})
    found.update({f'backend prefix {k!r}': id(v) for k, v in backends.prefix_to_backends.items()})
    return found

def registered():
    import mmengine.registry as registries
    found = {}
    for name, registry in vars(registries).items():
        if isinstance(registry, registries.Registry):
            for scoped in (registry, *registry.children.values()):
                for key, value in scoped.module_dict.items():
                    found[f'{name}/{scoped.scope}/{key}'] = (id(value), value.__module__)
    return found

def differ(old, new):
    return sorted(k for k in {*old, *new} if old.get(k) != new.get(k))

before, names_before = snapshot(), registered()
import backbones
after, names_after = snapshot(), registered()
tool_modules = sorted(m for m in sys.modules if m.startswith(('backbones.runtime', 'backbones.deploy')))
import mmdet.models, mmseg.models  # their own import-time changes (mmseg's sets TOKENIZERS_PARALLELISM)
frameworks, names_frameworks = snapshot(), registered()
for module in pkgutil.walk_packages(backbones.__path__, 'backbones.'):  # the tools' modules too
    importlib.import_module(module.name)
every, names_every = snapshot(), registered()
from backbones.deploy.onnx_runtime import register_onnx_models
from backbones.runtime.device import register_cpu_ddp
for register in (register_onnx_models, register_cpu_ddp, register_onnx_models, register_cpu_ddp):  # again: no-op
    register()
root = os.path.dirname(os.path.dirname(os.path.abspath(backbones.__file__)))
files = {os.path.abspath(os.fsdecode(path)) for path in opened if isinstance(path, (str, bytes, os.PathLike))}
print(json.dumps({
    'changed': differ(before, after),
    'replaced': sorted(k for k in names_before if names_after.get(k) != names_before[k]),
    'ours': sorted(k for k, (_, module) in names_after.items() if module.startswith('backbones')),
    'tool_modules': tool_modules,
    'changed_by_modules': differ(frameworks, every),
    'registered_by_modules': differ(names_frameworks, names_every),
    'registered_on_use': differ(names_every, registered()),
    'read': sorted(os.path.relpath(path, root) for path in files if path.startswith(root + os.sep)
                   and not path.startswith((os.path.join(root, 'backbones', ''), os.path.join(sys.prefix, '')))),
}))
'''
# Every name the project registers (mmengine's root registries, so that the mmdet and mmseg scopes find them;
# generic names in the project's own scope).
REGISTERED = [
    'DATASETS/mmengine/ImageFolderDataset', 'HOOKS/mmengine/ConvNeXtDenseCheckpointHook',
    'HOOKS/mmengine/FCMAEReconstructionHook', 'HOOKS/mmengine/RandomStateHook', 'MODELS/mmengine/ConvNeXt',
    'MODELS/mmengine/FCMAE', 'OPTIM_WRAPPERS/mmengine/AutocastOptimWrapper',
    'OPTIM_WRAPPER_CONSTRUCTORS/mmengine/LRDecayOptimWrapperConstructor', 'RUNNERS/mmengine/ConvNeXtDenseRunner',
    'TRANSFORMS/convnext_dense/LoadImageOrSkip', 'TRANSFORMS/convnext_dense/PackImageInputs',
    'TRANSFORMS/convnext_dense/RandomResizedCrop',
]


@pytest.fixture(scope='module')
def report() -> dict:
    """What importing backbones, then every module of backbones, then the tools' registrations did, in a fresh
    process (:data:`SNAPSHOT`)."""
    result = subprocess.run([sys.executable, '-c', SNAPSHOT], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_changes_only_the_listed_globals(report: dict) -> None:
    assert report['replaced'] == []  # no name another library registered is taken over
    assert report['ours'] == sorted(REGISTERED)
    assert report['tool_modules'] == []  # what the tools use is not loaded by a config's import
    assert report['changed'] == sorted([
        'scheme \'\'', "scheme 'hf://'", "scheme 'http://'", "scheme 'https://'",  # patch 1
        "scheme 'pavi://'", "scheme 's3://'", "scheme 'petrel://'",  # patch 3
        'mmengine.runner.checkpoint.load_url',  # patch 2
        'RoIAlign.forward', 'NMSop.forward',  # patch 4
        "backend 'convnext_dense_atomic'",  # a new name only: mmengine's 'local' backend is unchanged
    ])


def test_importing_any_module_changes_registers_and_reads_nothing(report: dict) -> None:
    assert report['changed_by_modules'] == []  # no global of the list above, os.environ, inductor or Pillow
    assert report['registered_by_modules'] == []  # the tools' classes register on use (below)
    assert report['read'] == []  # no file of the project but its own code: a wheel has no configs/


def test_the_tools_register_the_classes_their_configs_name_on_use(report: dict) -> None:
    assert report['registered_on_use'] == [  # register_onnx_models, register_cpu_ddp
        'MODELS/mmengine/OnnxRuntimeDetector', 'MODELS/mmengine/OnnxRuntimeSegmentor',
        'MODEL_WRAPPERS/mmengine/CPUDistributedDataParallel']


def test_patches_are_documented_where_they_are_applied() -> None:
    import backbones.patches

    doc = backbones.patches.__doc__
    for named in ("``''`` (local paths and transformers model folders) -> ``load_from_local``",
                  '``hf://`` -> ``load_from_hf``', '``http://`` and ``https://`` -> ``load_from_http``',
                  '``mmengine.runner.checkpoint.load_url``',
                  '``pavi://``, ``s3://``, ``petrel://``', '``mmcv.ops.RoIAlign.forward``',
                  '``torch._inductor.config.freezing``'):
        assert named in doc


# Patch 4: without it mmcv 2.1's CPU kernels refuse bf16 ("not implemented for 'BFloat16'").
def test_roi_align_takes_bf16_features_and_returns_them_in_bf16() -> None:
    features = torch.randn(2, 8, 24, 32).bfloat16().requires_grad_()
    rois = torch.tensor([[0, 1.0, 2.0, 20.0, 15.0], [1, 4.5, 3.0, 30.0, 22.5], [1, 0.0, 0.0, 8.0, 8.0]])
    roi_align = RoIAlign((7, 7), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    pooled = roi_align(features, rois)
    # The reference is torchvision's RoIAlign (not mmcv's), in fp32 on the same bf16 values.
    reference_input = features.detach().float().requires_grad_()
    reference = torchvision.ops.roi_align(reference_input, rois, (7, 7), spatial_scale=1.0, sampling_ratio=2,
                                          aligned=True)
    assert pooled.dtype == torch.bfloat16
    torch.testing.assert_close(pooled.float(), reference, rtol=2**-8, atol=1e-6)  # within bf16's rounding

    pooled.float().sum().backward()
    reference.sum().backward()
    assert features.grad.dtype == torch.bfloat16
    torch.testing.assert_close(features.grad.float(), reference_input.grad, rtol=2**-8, atol=1e-6)


def test_nms_takes_bf16_boxes_and_scores() -> None:
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=generator) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=generator) * 30], 1).bfloat16()
    scores = ((torch.randperm(200, generator=generator) + 1) / 256).bfloat16()  # distinct, exact in bf16: no ties
    kept, indices = nms(boxes, scores, iou_threshold=0.5)
    reference = torchvision.ops.nms(boxes.float(), scores.float(), iou_threshold=0.5)  # a peer's kernel, in fp32
    assert torch.equal(indices, reference) and 0 < len(indices) < 200
    assert kept.dtype == torch.bfloat16 and torch.equal(kept[:, :4], boxes[indices])


# Patch 6: without it inductor compiles the backbone with its weights as graph inputs (not folded as constants).
def test_compile_backbone_turns_on_inductor_freezing_before_it_compiles(monkeypatch) -> None:
    monkeypatch.setattr(inductor_config, 'freezing', False)
    monkeypatch.setattr(cpp_builder, 'get_cpp_compiler', lambda: 'c++')  # what is checked first, not this test's
    holder = torch.nn.Module()
    holder.backbone = torch.nn.Linear(2, 2)
    seen = []
    holder.backbone.compile = lambda: seen.append(inductor_config.freezing)
    compile_backbone(holder)
    assert seen == [True]


# Patch 7: without it OpenCV's FFmpeg backend prints its own lines about an unreadable video.
def test_infer_quiets_ffmpeg_unless_the_user_set_its_level(monkeypatch) -> None:
    from backbones.patches import quiet_ffmpeg_logs

    monkeypatch.delenv('OPENCV_FFMPEG_LOGLEVEL', raising=False)
    quiet_ffmpeg_logs()
    assert os.environ['OPENCV_FFMPEG_LOGLEVEL'] == '-8'
    monkeypatch.setenv('OPENCV_FFMPEG_LOGLEVEL', '24')
    quiet_ffmpeg_logs()
    assert os.environ['OPENCV_FFMPEG_LOGLEVEL'] == '24'
