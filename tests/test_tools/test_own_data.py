"""Your own data through the tools: classes from the data, fine-tuning to other classes, the classes a
checkpoint carries, the dataset check and its one-line reports, and UperNet learning on label maps.

The datasets (tests/helpers.py) are unlike the demo's: three detection classes with COCO ids 3, 7 and 12,
images in nested folders, another image size and an unannotated image; label maps with values 0-3 and
255 unlabelled (every other map 16-bit) and their classes.json. Mask R-CNN learning on such a set is
tests/test_tools/test_detectors_learn.py.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from backbones.datasets.checks import (
    BAD_BOX,
    BAD_LABEL_VALUE,
    EMPTY_MASK,
    LABEL_SIZE,
    MISSING_IMAGE,
    MISSING_LABEL,
    UNKNOWN_CATEGORY,
    UNREADABLE_IMAGE,
)
from backbones.datasets.skip_unreadable import LoadImageOrSkip
from backbones.errors import CheckpointError, DatasetError, UsageError
from backbones.runtime.config import load_config, set_data_root
from backbones.runtime.dataset_check import check_before_training
from backbones.runtime.demo_data import ensure_demo_data
from backbones.runtime.own_data import apply_checkpoint_classes, classes_from_data
from tests.helpers import OWN_CLASSES, OWN_SEG_CLASSES, limit_address_space, make_own_coco, make_own_label_maps

DET_CONFIG = 'configs/demo/mask_rcnn_convnext_demo.py'
SEG_CONFIG = 'configs/demo/upernet_convnext_demo.py'
SHORT = ['model.backbone.init_cfg=None', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
         'default_hooks.checkpoint.interval=1']
# UperNet on 200 label maps: 200 iterations of 8. Labelling every pixel background scores about 0.2 mIoU;
# measured 0.648 on the 2-core AMD EPYC (2026-12-04).
SEG_LEARN = ['train_cfg.max_iters=200', 'train_cfg.val_interval=200', 'param_scheduler.1.end=200',
             'default_hooks.checkpoint.interval=200']
MIN_MIOU = 45.0  # mmseg reports %


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if check and result.returncode:
        raise AssertionError(f'{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result


@pytest.fixture(scope='module')
def own_coco(tmp_path_factory) -> Path:
    return make_own_coco(tmp_path_factory.mktemp('own_coco'), num_train=12, num_val=4, image_size=96, seed=21)


@pytest.fixture(scope='module')
def own_maps(tmp_path_factory) -> Path:
    return make_own_label_maps(tmp_path_factory.mktemp('own_maps'), num_train=8, num_val=4, image_size=64, seed=22)


@pytest.fixture(scope='module')
def trained_detector(tmp_path_factory, own_coco) -> Path:
    """A Mask R-CNN trained for one epoch on the own-data set with the one command: its checkpoint."""
    work_dir = tmp_path_factory.mktemp('trained')
    result = run('tools/train.py', DET_CONFIG, '--work-dir', str(work_dir), '--data-root', str(own_coco),
                 '--cfg-options', *SHORT)
    assert f'3 classes from {own_coco}/annotations/train.json: disc, polygon, plus' in result.stdout
    assert '13 images, 1 without annotations' in result.stdout
    return work_dir / 'epoch_1.pth'


def prepared(config: str, data_root: Path, options: dict | None = None) -> tuple[Config, str | None]:
    cfg = load_config(config, options)
    set_data_root(cfg, str(data_root))
    return cfg, classes_from_data(cfg)


def test_classes_come_from_the_annotation_file_for_every_head(own_coco) -> None:
    cfg, line = prepared('configs/det/cascade_convnext_t.py', own_coco)
    heads = ['model.roi_head.bbox_head.0', 'model.roi_head.bbox_head.1', 'model.roi_head.bbox_head.2',
             'model.roi_head.mask_head']
    assert line.endswith(f'num_classes=3 in {", ".join(heads)}.')
    assert [head.num_classes for head in cfg.model.roi_head.bbox_head] == [3, 3, 3]
    assert cfg.model.rpn_head.get('num_classes', 1) == 1
    for split in ('train', 'val', 'test'):
        dataset = cfg[f'{split}_dataloader'].dataset
        assert dataset.metainfo.classes == tuple(OWN_CLASSES.values())
        assert dataset.metainfo.category_ids == tuple(OWN_CLASSES)
        assert dataset.ann_file == f'annotations/{"train" if split == "train" else "val"}.json'
        assert dataset.data_prefix.img == ''  # file_name holds the nested folders
    assert cfg.test_evaluator.ann_file == f'{own_coco}/annotations/val.json'


def test_label_map_classes_come_from_classes_json(own_maps) -> None:
    cfg, line = prepared('configs/seg/upernet_convnext_t.py', own_maps)
    assert line.startswith(f'4 classes from {own_maps}/classes.json: background, disc, polygon, plus')
    assert cfg.model.decode_head.num_classes == 4 and cfg.model.auxiliary_head.num_classes == 4
    dataset = cfg.train_dataloader.dataset
    assert dataset.type == 'BaseSegDataset' and dataset.reduce_zero_label is False  # "ignore": 255
    assert dict(dataset.data_prefix) == dict(img_path='images/train', seg_map_path='annotations/train')
    assert all(step.reduce_zero_label is False for step in dataset.pipeline if step.type == 'LoadAnnotations')
    assert cfg.val_dataloader.dataset.data_prefix.img_path == 'images/val'


def test_an_ade20k_config_takes_a_checkpoints_classes_with_ade20ks_label_convention(tmp_path) -> None:
    checkpoint = tmp_path / 'trained.pth'
    torch.save({'state_dict': {}, 'meta': {'dataset_meta': {'classes': ('crack', 'rust')}}}, checkpoint)
    cfg = load_config('configs/seg/upernet_convnext_t.py')
    assert apply_checkpoint_classes(cfg, str(checkpoint)).startswith(f'2 classes from {checkpoint}: crack, rust')
    for split in ('train', 'val', 'test'):
        dataset = cfg[f'{split}_dataloader'].dataset
        assert dataset.type == 'BaseSegDataset' and dataset.metainfo.classes == ('crack', 'rust')
        # mmseg asserts that the dataset and its LoadAnnotations agree: ADE20KDataset's default, kept.
        loading = [step for step in dataset.pipeline if step.type == 'LoadAnnotations']
        assert dataset.reduce_zero_label is True and loading and all(step.reduce_zero_label for step in loading)
    assert cfg.model.decode_head.num_classes == 2 and cfg.model.auxiliary_head.num_classes == 2


def test_class_mismatches_are_one_line(own_coco) -> None:
    swapped = {'train_dataloader.dataset.metainfo.classes': ('polygon', 'disc', 'plus')}
    with pytest.raises(UsageError, match=r'The classes of the config \(polygon, disc, plus\) are not those of .*'
                                         r'train.json \(disc, polygon, plus\)'):
        prepared(DET_CONFIG, own_coco, swapped)
    named = {'train_dataloader.dataset.metainfo.classes': tuple(OWN_CLASSES.values()),
             'model.roi_head.mask_head.num_classes': 4}
    cfg = load_config(DET_CONFIG, named)
    set_data_root(cfg, str(own_coco))
    cfg.model.roi_head.bbox_head.num_classes = 3
    with pytest.raises(UsageError, match='model.roi_head.mask_head.num_classes is 4 but the config names 3 classes'):
        classes_from_data(cfg)


def test_val_overrides_reach_the_test_keys() -> None:
    cfg = load_config(DET_CONFIG, {'val_evaluator.ann_file': 'elsewhere.json', 'val_dataloader.batch_size': 2})
    assert cfg.test_evaluator.ann_file == 'elsewhere.json' and cfg.test_dataloader.batch_size == 2


def test_test_and_infer_take_the_classes_and_ids_from_the_checkpoint(tmp_path, trained_detector, own_coco) -> None:
    result = run('tools/test.py', DET_CONFIG, str(trained_detector), '--work-dir', str(tmp_path / 'test'),
                 '--data-root', str(own_coco))
    assert f'3 classes from {trained_detector}: disc, polygon, plus' in result.stdout
    out = tmp_path / 'infer'
    run('tools/infer.py', DET_CONFIG, str(trained_detector), str(own_coco / 'pictures' / 'val'), '--out', str(out),
        '--score-thr', '0')
    results = json.loads((out / 'results.json').read_text())
    assert results and {(r['category_id'], r['category_name']) for r in results} <= set(OWN_CLASSES.items())


def test_fine_tuning_to_other_classes_initialises_the_class_layers_afresh(tmp_path, trained_detector) -> None:
    ensure_demo_data(tmp_path / 'demo', num_train=4, num_val=2, image_size=64, seed=23)  # 4 classes, not 3
    # The backbone's pre-training file is absent, as on a new machine: --load-from replaces those weights anyway.
    absent = tmp_path / 'absent.pth'
    result = run('tools/train.py', DET_CONFIG, '--work-dir', str(tmp_path / 'work'), '--data-root',
                 str(tmp_path / 'demo' / 'coco'), '--load-from', str(trained_detector), '--cfg-options',
                 f'model.backbone.init_cfg.checkpoint={absent}', *SHORT[1:])
    assert (f'Skipped the pre-trained initialisation of model.backbone.init_cfg ({absent}): the checkpoint of '
            '--load-from replaces those weights.') in result.stdout
    assert "initialised afresh for the config's classes (6 tensors of another number of classes): " \
           'roi_head.bbox_head.fc_cls.weight (4, 256) -> (5, 256)' in result.stdout
    assert 'roi_head.mask_head.conv_logits.weight (3, 64, 1, 1) -> (4, 64, 1, 1)' in result.stdout
    # Any other shape is still an error: a detector of another FPN width.
    result = run('tools/train.py', DET_CONFIG, '--work-dir', str(tmp_path / 'other'), '--data-root',
                 str(tmp_path / 'demo' / 'coco'), '--load-from', str(trained_detector), '--cfg-options', *SHORT,
                 'model.roi_head.bbox_head.fc_out_channels=128', check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: Shape mismatch at 'roi_head.bbox_head.shared_fcs")


def test_upernet_learns_label_maps_with_the_one_command(tmp_path) -> None:
    data = make_own_label_maps(tmp_path / 'maps', num_train=200, num_val=30, image_size=96, seed=11)
    work_dir = tmp_path / 'work'
    run('tools/train.py', SEG_CONFIG, '--work-dir', str(work_dir), '--data-root', str(data), '--cfg-options',
        *SEG_LEARN)
    result = run('tools/test.py', SEG_CONFIG, str(work_dir / 'iter_200.pth'), '--work-dir', str(work_dir),
                 '--data-root', str(data))
    assert f'4 classes from {work_dir / "iter_200.pth"}: {", ".join(OWN_SEG_CLASSES)}' in result.stdout
    test_run = max(p for p in work_dir.iterdir() if p.is_dir() and p.name[:8].isdigit())
    metrics = json.loads((test_run / f'{test_run.name}.json').read_text())
    assert metrics['mIoU'] >= MIN_MIOU, metrics


# --- the dataset check: each bad item is one line, before the model is built ---------------------------

def broken_coco(source: Path, target: Path, break_it) -> Path:
    shutil.copytree(source, target)
    ann_file = target / 'annotations' / 'train.json'
    content = json.loads(ann_file.read_text())
    break_it(content, target)
    ann_file.write_text(json.dumps(content))
    return target


def missing_image(content: dict, root: Path) -> None:
    (root / content['images'][0]['file_name']).unlink()


def empty_segmentation(content: dict, root: Path) -> None:
    content['annotations'][0]['segmentation'] = []


def unknown_category(content: dict, root: Path) -> None:
    content['annotations'][1]['category_id'] = 99


def zero_box(content: dict, root: Path) -> None:
    content['annotations'][2]['bbox'][2] = 0


@pytest.mark.parametrize('break_it, kind', [(missing_image, MISSING_IMAGE), (empty_segmentation, EMPTY_MASK),
                                            (unknown_category, UNKNOWN_CATEGORY), (zero_box, BAD_BOX)])
def test_bad_coco_items_are_one_line_each_before_training(tmp_path, own_coco, break_it, kind: str) -> None:
    data = broken_coco(own_coco, tmp_path / 'data', break_it)
    cfg, _ = prepared(DET_CONFIG, data)
    cfg.work_dir = str(tmp_path / 'work')
    with pytest.raises(DatasetError) as error:
        check_before_training(cfg, skip_bad=False)
    lines = str(error.value).splitlines()
    assert lines[0].startswith(f'train ({data}/annotations/train.json): 1 {kind}, e.g. ')
    assert lines[-1].startswith('Fix these items') and len(lines) == 2
    assert any(line.startswith('train: 1 images left out') for line in check_before_training(cfg, skip_bad=True))
    assert Path(cfg.train_dataloader.dataset.ann_file) == tmp_path / 'work' / 'skip_bad' / 'train.json'


@pytest.mark.parametrize('content, problem', [
    ('{"images": [', 'is not valid JSON: Expecting value at line 1, column 13'),
    ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}', 'holds no images'),
])
def test_unusable_annotation_files_are_one_line(tmp_path, own_coco, content: str, problem: str) -> None:
    data = shutil.copytree(own_coco, tmp_path / 'data')
    (data / 'annotations' / 'train.json').write_text(content)
    with pytest.raises(DatasetError, match=problem):
        cfg, _ = prepared(DET_CONFIG, data)


def broken_maps(source: Path, target: Path, break_it) -> tuple[Path, str]:
    shutil.copytree(source, target)
    label = sorted((target / 'annotations' / 'train').glob('*.png'))[0]
    break_it(label)
    return target, label.name


@pytest.mark.parametrize('break_it, kind', [
    (lambda label: label.unlink(), MISSING_LABEL),
    (lambda label: cv2.imwrite(str(label), np.full((64, 64), 9, np.uint8)), BAD_LABEL_VALUE),
    (lambda label: cv2.imwrite(str(label), np.zeros((32, 64), np.uint8)), LABEL_SIZE),
])
def test_bad_label_maps_are_one_line_each_before_training(tmp_path, own_maps, break_it, kind: str) -> None:
    data, name = broken_maps(own_maps, tmp_path / 'data', break_it)
    cfg, _ = prepared(SEG_CONFIG, data)
    cfg.work_dir = str(tmp_path / 'work')
    with pytest.raises(DatasetError) as error:
        check_before_training(cfg, skip_bad=False)
    assert str(error.value).startswith(f'train ({data}/annotations/train): 1 {kind}, e.g. {name}')


def test_skip_bad_keeps_the_good_images_of_a_linked_folder(tmp_path, own_maps) -> None:
    data, name = broken_maps(own_maps, tmp_path / 'data', lambda label: label.unlink())
    images, labels, outside = data / 'images' / 'train', data / 'annotations' / 'train', tmp_path / 'outside'
    outside.mkdir()
    moved = sorted(images.glob('*.jpg'))[-2:]  # the broken one is the first
    (labels / 'linked').mkdir()
    for image in moved:
        image.rename(outside / image.name)
        (labels / f'{image.stem}.png').rename(labels / 'linked' / f'{image.stem}.png')
    (images / 'linked').symlink_to(outside)
    cfg, _ = prepared(SEG_CONFIG, data)
    cfg.work_dir = str(tmp_path / 'work')
    assert any(line.startswith('train: 1 images left out') for line in check_before_training(cfg, skip_bad=True))
    kept = Path(cfg.train_dataloader.dataset.ann_file).read_text().split()
    assert len(kept) == len(list(own_maps.glob('images/train/*.jpg'))) - 1
    assert {f'linked/{image.stem}' for image in moved} <= set(kept) and Path(name).stem not in kept


def test_check_dataset_tool_decodes_every_image(tmp_path, own_coco) -> None:
    data = shutil.copytree(own_coco, tmp_path / 'data')
    content = json.loads((data / 'annotations' / 'val.json').read_text())
    truncated, text = (data / image['file_name'] for image in content['images'][:2])
    truncated.write_bytes(truncated.read_bytes()[:300])
    text.write_text('not an image')
    result = run('tools/check_dataset.py', DET_CONFIG, '--data-root', str(data), check=False)
    assert result.returncode == 1, result.stderr
    assert f'val ({data}/annotations/val.json): 2 {UNREADABLE_IMAGE}, e.g. ' in result.stdout
    assert 'train (' in result.stdout and '13 images, 1 without annotations' in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith('error: 1 kinds of problem')


def test_skip_bad_trains_on_the_rest(tmp_path, own_coco) -> None:
    data = broken_coco(own_coco, tmp_path / 'data', missing_image)
    result = run('tools/train.py', DET_CONFIG, '--work-dir', str(tmp_path / 'work'), '--data-root', str(data),
                 '--skip-bad', '--cfg-options', *SHORT)
    assert f'1 {MISSING_IMAGE}, e.g. pictures/train/batch_0/train_00000.jpg (left out: --skip-bad)' in result.stdout
    assert (tmp_path / 'work' / 'epoch_1.pth').is_file()


def test_an_image_unreadable_during_training_is_skipped_with_one_warning(tmp_path) -> None:
    path = tmp_path / 'gone.jpg'
    path.write_text('not an image')
    loader = LoadImageOrSkip()
    logger = MMLogger.get_instance('skip_test', log_file=str(tmp_path / 'log.txt'))
    assert logger is MMLogger.get_current_instance()
    assert loader.transform(dict(img_path=str(path))) is None
    assert loader.transform(dict(img_path=str(path))) is None
    warnings = [line for line in (tmp_path / 'log.txt').read_text().splitlines() if 'Skipping an image' in line]
    assert len(warnings) == 1 and str(path) in warnings[0]


# --- other bad input: one line at start ---------------------------------------------------------------

def test_bad_starts_are_one_line(tmp_path, own_coco) -> None:
    syntax = tmp_path / 'bad.py'
    syntax.write_text("_base_ = ['" + str(Path(DET_CONFIG).resolve()) + "']\nmodel = dict(\n  a=1,,\n)\n")
    not_a_folder = tmp_path / 'file'  # (a read-only folder would not do: the tests may run as root)
    not_a_folder.write_text('')
    cases = [
        (['tools/train.py', str(syntax)], f'error: Syntax error in {syntax}, line 3: invalid syntax'),
        (['tools/train.py', DET_CONFIG, '--data-root', str(own_coco), '--work-dir', str(tmp_path / 'w'),
          '--cfg-options', 'default_hooks.checkpoint.intervl=1'],
         "error: default_hooks.checkpoint (ConvNeXtDenseCheckpointHook) has no option 'intervl'"),
        (['tools/train.py', DET_CONFIG, '--data-root', str(own_coco), '--work-dir', str(not_a_folder / 'sub')],
         f'error: Cannot create the work dir {not_a_folder / "sub"}: Not a directory'),
        (['tools/infer.py', DET_CONFIG, 'x.pth', 'x.jpg', '--out', str(tmp_path), '--score-thr', '2'],
         'error: --score-thr: must be between 0 and 1'),
        (['tools/infer.py', DET_CONFIG, 'x.pth', 'x.jpg', '--out', str(tmp_path), '--batch-size', '0'],
         'error: --batch-size: must be at least 1, got 0. See infer.py --help for the options.'),
        (['tools/check_dataset.py', DET_CONFIG, '--workers', 'many'],
         "error: --workers: 'many' is not a whole number. See check_dataset.py --help for the options."),
        (['tools/export.py', DET_CONFIG, 'x.pth', '--out', str(tmp_path), '--shape', '8', '64'],
         'error: --shape: must be between 16 and 4096, got 8. See export.py --help for the options.'),
    ]
    for args, line in cases:
        result = run(*args, check=False)
        assert result.returncode == 1 and line in result.stderr.strip().splitlines()[-1], (args, result.stderr[-2000:])
        assert 'Traceback' not in result.stderr


# --- class metadata that files carry: one schema (backbones/class_meta.py) ----------------------------

CLASSES_TOO_MANY = 2_000_000  # one short name shared: a 9 MB checkpoint
MEMORY_CAP = 6 << 30  # address space for a tool run (torch and mmdet map about 4 GiB at import)


@pytest.mark.parametrize('dataset_meta, problem', [
    ({'classes': 'disc'}, 'classes are of type str, not a list of names'),
    ({'classes': ['disc', 'red\n\x1b[31mALERT']}, r"classes hold the name 'red\n\x1b[31mALERT' at 1, with a control"),
    ({'classes': ['disc', '']}, 'classes hold a name of 0 characters at 1, not 1 to 256'),
    ({'classes': ['disc', 'x' * 300]}, 'classes hold a name of 300 characters at 1, not 1 to 256'),
    ({'classes': ['disc', 7]}, 'classes hold a value of type int at 1, not a name'),
    ({'classes': ['a', 'b'], 'palette': [1, 2]}, 'palette holds a colour that is not an (r, g, b) of ints 0-255'),
    ({'classes': ['a', 'b'], 'palette': [(0, 0, 0), (0, 0, 256)]}, 'palette holds a colour that is not an (r, g, b)'),
    ({'classes': ['a', 'b'], 'category_ids': ['1', '2']}, "category_ids hold a value that is not an int of int64's"),
    ({'classes': ['a', 'b'], 'category_ids': [True, False]}, "category_ids hold a value that is not an int of int64's"),
    ({'classes': ['a', 'b'], 'category_ids': [1]}, 'category_ids are not a list of 2 ids, one per class'),
    ({'classes': ['a', 'b'], 'category_ids': [3, 3]}, 'category_ids repeat an id'),
])
def test_checkpoint_classes_outside_the_schema_are_one_line(tmp_path, dataset_meta: dict, problem: str) -> None:
    """Wrong types were tracebacks, and names with newlines and terminal codes reached the log as they were."""
    checkpoint = tmp_path / 'trained.pth'
    torch.save({'state_dict': {}, 'meta': {'dataset_meta': dataset_meta}}, checkpoint)
    with pytest.raises(CheckpointError) as error:
        apply_checkpoint_classes(load_config(DET_CONFIG), str(checkpoint))
    message = str(error.value)
    assert message.startswith(f'{checkpoint}: its meta.dataset_meta {problem}') and message.isprintable(), message


def test_checkpoint_classes_keep_a_palette_of_one_colour_per_class(tmp_path) -> None:
    """mmdet's datasets keep COCO's 80 colours for fewer classes: the first ones are used; too few are not."""
    checkpoint = tmp_path / 'trained.pth'
    colours = [(index, 0, 0) for index in range(80)]
    torch.save({'meta': {'dataset_meta': {'classes': ('a', 'b'), 'palette': colours, 'category_ids': (3, 7)}}},
               checkpoint)
    cfg = load_config(DET_CONFIG)
    assert apply_checkpoint_classes(cfg, str(checkpoint)).startswith(f'2 classes from {checkpoint}: a, b;')
    metainfo = cfg.test_dataloader.dataset.metainfo
    assert metainfo.palette == [(0, 0, 0), (1, 0, 0)] and metainfo.category_ids == (3, 7)
    torch.save({'meta': {'dataset_meta': {'classes': ('a', 'b', 'c'), 'palette': colours[:2]}}}, checkpoint)
    cfg = load_config(DET_CONFIG)
    line = apply_checkpoint_classes(cfg, str(checkpoint))
    assert line.endswith('Note: its palette of 2 colours for 3 classes is not used.')
    assert cfg.test_dataloader.dataset.metainfo.get('palette') == load_config(DET_CONFIG).test_dataloader.dataset.get(
        'metainfo', {}).get('palette')  # the config's, as for a checkpoint without a palette


def test_millions_of_checkpoint_classes_are_one_line_in_bounded_memory(tmp_path) -> None:
    """They flowed into palettes and config copies: gigabytes and minutes. Refused by their count, before use."""
    checkpoint = tmp_path / 'many.pth'
    torch.save({'state_dict': {}, 'meta': {'dataset_meta': {'classes': ['a'] * CLASSES_TOO_MANY}}}, checkpoint)
    result = subprocess.run([sys.executable, 'tools/test.py', DET_CONFIG, str(checkpoint), '--work-dir',
                             str(tmp_path / 'work')], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=os.getcwd()), preexec_fn=limit_address_space(MEMORY_CAP))
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f'error: {checkpoint}: its meta.dataset_meta classes are {CLASSES_TOO_MANY} names, not 1 to 10000.')


def test_classes_in_annotation_and_class_files_are_printable(tmp_path) -> None:
    """COCO category names and classes.json names are shown in the log: the same rule applies to them."""
    coco = tmp_path / 'coco'
    (coco / 'annotations').mkdir(parents=True)
    (coco / 'annotations' / 'train.json').write_text(json.dumps({
        'images': [{'id': 1, 'file_name': 'a.jpg', 'width': 8, 'height': 8}], 'annotations': [],
        'categories': [{'id': 1, 'name': 'disc'}, {'id': 2, 'name': 'plus\x1b]0;owned\x07'}]}))
    with pytest.raises(DatasetError, match=r"train.json: its category names hold the name 'plus\\x1b]0;owned\\x07' "
                                           'at 1, with a control character'):
        prepared(DET_CONFIG, coco)
    maps = tmp_path / 'maps'
    maps.mkdir()
    (maps / 'classes.json').write_text(json.dumps({'classes': ['road', 'car\r\nINFO fake line']}))
    with pytest.raises(DatasetError, match=r"classes.json: its \"classes\" hold the name 'car\\r\\nINFO fake line' at "
                                           '1, with a control character'):
        prepared(SEG_CONFIG, maps)
