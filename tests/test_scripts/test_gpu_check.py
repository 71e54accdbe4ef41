"""scripts/gpu_check.sh and scripts/gpu_prepare.sh without a GPU: the check's dry run on the CPU, and that the
prepared wheels cover what the check imports.

The dry run (about 40 s on 2 cores) runs the script's own runner: every demo and benchmark command line of a GPU run
parsed by its tool, the CUDA tests (skipped here), and one benchmark step for real at 64x64 on the CPU.
"""
import fnmatch
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).parents[2]
CHECK = ROOT / 'scripts' / 'gpu_check.sh'
PREPARE = ROOT / 'scripts' / 'gpu_prepare.sh'
STEPS = ['parse', 'env', 'install', 'mmcv', 'test_cuda', 'demo', 'eval_mask_rcnn', 'bench_mask_rcnn', 'bench_upernet',
         'bench_cascade', 'bench_mask_rcnn_fast', 'bench_upernet_fast', 'bench_cascade_fast', 'total']
# What the GPU check's steps import: its tools, the CUDA tests, the registries that configs build from, the peer.
PROBE = """
import importlib, json, pkgutil, runpy, sys
sys.path.insert(0, '.')
import backbones
for module in pkgutil.walk_packages(backbones.__path__, 'backbones.'):
    importlib.import_module(module.name)
for tool in ('tools/demo.py', 'tools/train.py', 'tools/test.py', 'tools/convert_checkpoint.py',
             'tools/analysis/benchmark.py', 'tests/test_backbones/test_cuda.py'):
    runpy.run_path(tool, run_name='probe')
from mmdet.utils import register_all_modules as register_mmdet
from mmseg.utils import register_all_modules as register_mmseg
register_mmdet()
register_mmseg(init_default_scope=False)
from backbones.patches import import_mmpretrain
import_mmpretrain()
import pytest
from importlib.metadata import packages_distributions  # in this process: the peer's folder is on sys.path now
owners = packages_distributions()
print(json.dumps({top: owners.get(top, []) for top in sorted({name.partition('.')[0] for name in sys.modules})}))
"""


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r'[-_.]+', '-', name).lower()


def prepared() -> dict[str, list[str]]:
    """``gpu_prepare.sh --list``: the names of each kind (carried, peer, sdist, image, gpu, hub, unused)."""
    listing = subprocess.run(['bash', str(PREPARE), '--list'], capture_output=True, text=True, check=True).stdout
    kinds: dict[str, list[str]] = {}
    for line in listing.splitlines():
        kind, name = line.split(' ', 1)
        kinds.setdefault(kind, []).append(name)
    return kinds


def lock_pins() -> dict[str, str]:
    """requirements/lock.txt as normalized name -> version."""
    pins = {}
    for line in (ROOT / 'requirements' / 'lock.txt').read_text().splitlines():
        if line.strip() and not line.startswith('#'):
            name, version = line.split('==')
            pins[normalize(name)] = version.strip()
    return pins


def test_dry_run_runs_every_step_of_the_check(tmp_path: Path) -> None:
    """``gpu_check.sh --dry-run``: every step in the summary with exit code 0, each as the dry run treats it."""
    out = tmp_path / 'out'
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop('OUT', None)
    result = subprocess.run(['bash', str(CHECK), '--dry-run', str(out)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

    rows = [line.split('\t') for line in (out / 'summary.tsv').read_text().splitlines()]
    assert rows[0] == ['step', 'exit', 'seconds', 'limit', 'note']
    assert [row[0] for row in rows[1:]] == STEPS
    assert all(row[1] == '0' for row in rows[1:]), rows
    notes = {row[0]: row[4] for row in rows[1:]}
    assert 'ran on the CPU at 64x64' in notes['bench_mask_rcnn'] and 'ran on the CPU' in notes['test_cuda']
    for step in ('demo', 'bench_upernet', 'bench_cascade', 'bench_mask_rcnn_fast'):
        assert 'parsed by its tool' in notes[step]
    # What parsing checked: the GPU run's own options, as the tool read them.
    parsed = {step: (out / 'work' / 'run' / 'parse' / f'{step}.txt').read_text() for step in STEPS[5:-1]}
    for option in ("'device': 'cuda'", "'precision': 'fp16'", "'compare': True", "'batch_size': 2"):
        assert option in parsed['bench_cascade'] and option in parsed['bench_cascade_fast'], parsed
    assert "'train': True" in parsed['bench_cascade'] and "'compile': False" in parsed['bench_cascade']
    assert "'compile': True" in parsed['bench_cascade_fast'] and "'channels_last': True" in parsed['bench_cascade_fast']
    assert "'precision': 'auto'" in parsed['demo'] and "'precision': 'fp16'" in parsed['eval_mask_rcnn']

    # The benchmark step that ran: ours beside mmdet's config and timm, and both training steps.
    benchmark = json.loads((out / 'work' / 'run' / 'bench' / 'bench_mask_rcnn.json').read_text())
    cases = [(row['model'], row['implementation']) for row in benchmark['rows']]
    assert cases == [('backbone', 'ours'), ('backbone', 'mmdet config'), ('backbone', 'timm features_only'),
                     ('MaskRCNN test_step', 'ours'), ('MaskRCNN test_step', 'mmdet config'),
                     ('MaskRCNN train step', 'ours'), ('MaskRCNN train step', 'ours with_cp')]
    report = (out / 'report.md').read_text()
    assert '| MaskRCNN test_step | mmdet config | fp32 | 2 | 64x64 |' in report
    assert '| bench_cascade_fast | 0 |' in report and '## Machine' in report
    with tarfile.open(out / 'logs.tar.gz') as archive:
        names = archive.getnames()
    expected = {'summary.tsv', 'report.md', 'work/run/logs/bench_mask_rcnn.log', 'work/run/logs/test_cuda.log'}
    assert expected <= set(names), names


def test_check_refuses_to_start_without_an_output_folder() -> None:
    """No argument and no ``$OUT``: one line and exit code 2, before anything runs."""
    env = {key: value for key, value in os.environ.items() if key != 'OUT'}
    result = subprocess.run(['bash', str(CHECK), '--quick'], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and 'give the output folder' in result.stderr


def test_prepare_classifies_every_locked_package_once() -> None:
    """Every name of requirements/lock.txt is carried at its locked version, on the GPU image, the GPU machine's
    own torch stack, or unused; a name added to the lock without a decision fails here."""
    kinds = prepared()
    pins = lock_pins()
    carried = {normalize(pin.split('==')[0]): pin.split('==')[1] for pin in kinds['carried']}
    assert {name: pins[name] for name in carried} == carried  # the lock's versions
    classified = [*carried, *map(normalize, kinds['image'] + kinds['hub'] + kinds['unused'])]
    classified += [name for name in pins if any(fnmatch.fnmatch(name, pattern) for pattern in kinds['gpu'])]
    assert sorted(classified) == sorted(pins), 'each name of lock.txt in exactly one list of gpu_prepare.sh'
    assert 'torch' not in carried and not any(name.startswith('nvidia') for name in carried)
    peers = [line for line in (ROOT / 'requirements' / 'peers' / 'mmpretrain.txt').read_text().splitlines()
             if '==' in line and not line.startswith('#')]
    assert kinds['peer'] == peers and kinds['sdist'] == ['mmcv==2.1.0']


def test_prepared_wheels_cover_every_distribution_the_check_imports() -> None:
    """Import what the check's steps import (here, from .venv) and map each top-level module to its distribution:
    each must be carried, a peer, mmcv's sdist, on the GPU image or the GPU machine's own torch stack."""
    result = subprocess.run([sys.executable, '-c', PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, MPLBACKEND='Agg'))
    assert result.returncode == 0, result.stderr[-3000:]
    owners = json.loads(result.stdout.splitlines()[-1])  # top-level module -> its distributions
    imported = {normalize(dist) for module, dists in owners.items() if module not in sys.stdlib_module_names
                and module not in ('backbones', 'tools', 'tests') for dist in dists}
    kinds = prepared()
    covered = {normalize(name.split('==')[0]) for name in kinds['carried'] + kinds['peer'] + kinds['sdist']}
    covered |= {normalize(name) for name in kinds['image'] + kinds['hub']}
    uncovered = {dist for dist in imported - covered - {'convnext-dense'}
                 if not any(fnmatch.fnmatch(dist, pattern) for pattern in kinds['gpu'])}
    assert not uncovered, f'imported by the check, but neither carried nor on the GPU machine: {sorted(uncovered)}'
    assert {'mmdet', 'mmengine', 'mmsegmentation', 'mmcv', 'mmpretrain', 'pycocotools', 'timm'} <= imported
    unused = {normalize(name) for name in kinds['unused']} & imported
    assert not unused, f'gpu_prepare.sh calls these unused, but the check imports them: {sorted(unused)}'
