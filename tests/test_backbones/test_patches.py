"""backbones/patches.py: importing backbones changes exactly the globals of mmengine and mmcv that it lists."""
import json
import subprocess
import sys

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

before = snapshot()
import backbones
after = snapshot()
print(json.dumps(sorted(k for k in {*before, *after} if before.get(k) != after.get(k))))
'''


def test_import_changes_only_the_listed_globals() -> None:
    result = subprocess.run([sys.executable, '-c', SNAPSHOT], capture_output=True, text=True, check=True)
    changed = json.loads(result.stdout.strip().splitlines()[-1])
    assert changed == sorted([
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
