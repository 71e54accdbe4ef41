# Cascade Mask R-CNN, ConvNeXt-B (ImageNet-22K), 3x: 54.0 box AP / 46.9 mask AP in the paper.
_base_ = './cascade_convnext_b.py'
model = dict(
    backbone=dict(drop_path_rate=0.6, init_cfg=dict(
        checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_22k_224.pth')))
optim_wrapper = dict(optimizer=dict(lr=1e-4))
