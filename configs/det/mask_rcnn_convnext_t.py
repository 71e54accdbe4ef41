# Mask R-CNN, ConvNeXt-T (ImageNet-1K), FPN, 3x: 46.2 box AP / 41.7 mask AP in the paper.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    './_base_/convnext_coco_3x.py',
    '../_base_/convnext_t_backbone.py',
]
model = dict(
    backbone={{_base_.convnext_t_backbone}},
    neck=dict(in_channels={{_base_.convnext_t_channels}}))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.95, num_layers=6), optimizer=dict(lr=1e-4))
