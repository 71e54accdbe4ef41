# Mask R-CNN, ConvNeXt-B (ImageNet-1K), 3x. Not in the papers' tables: drop path as Cascade B, lr and
# decay rate as Mask R-CNN T.
_base_ = './mask_rcnn_convnext_t.py'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.7, init_cfg=dict(
        checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_1k_224.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
