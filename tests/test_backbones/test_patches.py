"""backbones/patches.py: importing backbones changes exactly the globals of mmengine and mmcv that it lists."""
import json
import subprocess
import sys

import torch
import torchvision
from mmcv.ops import RoIAlign, nms

SNAPSHOT = r'''
import json, sys
from mmcv.ops.nms import NMSop
from mmcv.ops.roi_align import RoIAlign
import mmengine.fileio.backends.registry_utils as backends
import mmengine.fileio.io, mmengine.hooks.checkpoint_hook, mmengine.runner.checkpoint as checkpoint

def snapshot():
    found = {}
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

before, names_before = snapshot(), registered()
import backbones
after, names_after = snapshot(), registered()
print(json.dumps({
    'changed': sorted(k for k in {*before, *after} if before.get(k) != after.get(k)),
    'replaced': sorted(k for k in names_before if names_after.get(k) != names_before[k]),
    'ours': sorted(k for k, (_, module) in names_after.items() if module.startswith('backbones')),
    'tool_modules': sorted(m for m in sys.modules if m.startswith(('backbones.runtime', 'backbones.deploy'))),
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


def test_import_changes_only_the_listed_globals() -> None:
    result = subprocess.run([sys.executable, '-c', SNAPSHOT], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report['replaced'] == []  # no name another library registered is taken over
    assert report['ours'] == sorted(REGISTERED)
    assert report['tool_modules'] == []  # what the tools use is not loaded by a config's import
    assert report['changed'] == sorted([
        'scheme \'\'', "scheme 'pavi://'", "scheme 's3://'", "scheme 'petrel://'",  # patches 1 and 3
        'mmengine.runner.checkpoint.load_url',  # patch 2
        'RoIAlign.forward', 'NMSop.forward',  # patch 4
        "backend 'convnext_dense_atomic'",  # a new name only: mmengine's 'local' backend is unchanged
    ])


def test_patches_are_documented_where_they_are_applied() -> None:
    import backbones.patches

    doc = backbones.patches.__doc__
    for named in ('``CheckpointLoader`` scheme ``\'\'``', '``mmengine.runner.checkpoint.load_url``',
                  '``pavi://``, ``s3://``, ``petrel://``', '``mmcv.ops.RoIAlign.forward``'):
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
