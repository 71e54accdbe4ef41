# Mask R-CNN, ConvNeXt-S (ImageNet-1K), 3x. Not in the papers' tables: drop path as Cascade S, lr and
# decay rate as Mask R-CNN T.
_base_ = './mask_rcnn_convnext_t.py'
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.6, init_cfg=dict(
        checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_small_1k_224.pth')))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
