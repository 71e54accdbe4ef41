"""backbones/runtime/prepare.py: the tools' one config chain."""
import argparse
import ast
from pathlib import Path

import pytest

from backbones.errors import UsageError
from backbones.runtime.prepare import TOOLS, prepare_config
from tests.helpers import OWN_CLASSES, make_own_coco

DET_CONFIG = 'configs/demo/mask_rcnn_convnext_demo.py'
# What the chain does; a tool that calls one of these itself has a second chain.
CHAIN_STEPS = {'load_config', 'set_data_root', 'classes_from_data', 'apply_checkpoint_classes', 'apply_onnx_classes',
               'check_datasets', 'check_hook_options', 'check_work_dir', 'check_before_training',
               'skip_unreadable_images', 'adapt_to_cpu', 'enable_tta', 'set_training_precision',
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
