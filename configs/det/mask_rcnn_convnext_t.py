# Mask R-CNN, ConvNeXt-T (ImageNet-1K), FPN, 3x: 46.2 box AP / 41.7 mask AP in the paper.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    './_base_/convnext_coco_3x.py',
]
model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='tiny',
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/convnext_tiny_1k_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.95, num_layers=6), optimizer=dict(lr=1e-4))
