"""backbones/runtime/prepare.py: the tools' one config chain."""
import argparse
import ast
import json
from pathlib import Path

import pytest
import torch

from backbones.errors import DatasetError, UsageError
from backbones.runtime.prepare import TOOLS, prepare_config
from tests.helpers import OWN_CLASSES, make_own_coco, png_declaring

DET_CONFIG = 'configs/demo/mask_rcnn_convnext_demo.py'
# What the chain does; a tool that calls one of these itself has a second chain.
CHAIN_STEPS = {'load_config', 'set_data_root', 'classes_from_data', 'apply_checkpoint_classes', 'apply_onnx_classes',
               'check_datasets', 'check_hook_options', 'check_work_dir', 'check_before_training',
               'check_before_testing', 'skip_unreadable_images', 'adapt_to_cpu', 'enable_tta', 'set_training_precision',
               'skip_pretrained_init', 'use_onnx_model', 'open_checkpoint', 'read_exported'}


@pytest.mark.parametrize('tool', TOOLS)
def test_each_tool_prepares_its_config_through_the_chain_alone(tool: str) -> None:
    tree = ast.parse(Path(f'tools/{tool}.py').read_text())
    called = {node.func.id if isinstance(node.func, ast.Name) else node.func.attr
              for node in ast.walk(tree) if isinstance(node, ast.Call)
              and isinstance(node.func, (ast.Name, ast.Attribute))}
    assert 'prepare_config' in called
    assert called & CHAIN_STEPS == set(), f'tools/{tool}.py applies chain steps itself'


def test_the_data_root_comes_before_the_classes_read_from_the_data(tmp_path) -> None:
    data = make_own_coco(tmp_path / 'own', num_train=2, num_val=1, image_size=64, seed=3)
    args = argparse.Namespace(config=DET_CONFIG, data_root=str(data), splits=['train', 'val'], cfg_options=None)
    prepared = prepare_config(args, 'check_dataset')
    assert prepared.cfg.train_dataloader.dataset.metainfo.classes == tuple(OWN_CLASSES.values())
    assert prepared.cfg.model.roi_head.bbox_head.num_classes == len(OWN_CLASSES)
    assert prepared.log_lines[0].startswith(f'{len(OWN_CLASSES)} classes from ')


def test_infer_and_export_take_detection_and_segmentation_configs_only() -> None:
    args = argparse.Namespace(config='configs/demo/fcmae_convnext_demo.py', checkpoint='never-read.pth')
    for tool in ('infer', 'export'):
        with pytest.raises(UsageError, match=f'is not a Mask R-CNN, Cascade Mask R-CNN or UperNet model: tools/{tool}'):
            prepare_config(args, tool)


def test_test_stops_on_test_images_it_could_not_decode_or_would_decode_past_the_pixel_cap(tmp_path) -> None:
    """Evaluation never leaves an image out, and mmcv would decode a 30000x30000 PNG (2.7 GB) in full: the test
    split's headers are read first, before the model is built; annotation problems are left to the evaluation."""
    data = make_own_coco(tmp_path / 'own', num_train=1, num_val=2, image_size=64, seed=3)
    content = json.loads((data / 'annotations' / 'val.json').read_text())
    big = content['images'][0]
    (data / big['file_name']).write_bytes(png_declaring(30000, 30000))
    missing = content['images'][1]
    (data / missing['file_name']).unlink()
    content['annotations'][0]['bbox'] = [0, 0, -1, 5]  # a bad box: the evaluation's to score, not a stop
    (data / 'annotations' / 'val.json').write_text(json.dumps(content))
    checkpoint = tmp_path / 'trained.pth'
    torch.save({'state_dict': {}, 'meta': {'dataset_meta': {'classes': tuple(OWN_CLASSES.values())}}}, checkpoint)
    args = argparse.Namespace(config=DET_CONFIG, checkpoint=str(checkpoint), data_root=str(data),
                              work_dir=str(tmp_path / 'work'), cfg_options=None)
    with pytest.raises(DatasetError) as error:
        prepare_config(args, 'test')
    source = data / 'annotations' / 'val.json'
    assert str(error.value).splitlines() == [
        f"test ({source}): 1 images missing on disk, e.g. {missing['file_name']}",
        f'test ({source}): 1 images or label maps whose header declares more pixels than '
        f"CONVNEXT_DENSE_MAX_IMAGE_PIXELS allows (raise it), e.g. {big['file_name']} (30000x30000)",
        'Fix these items or leave them out of the annotation file (tools/check_dataset.py lists every one): an '
        'evaluation scores every image.']
