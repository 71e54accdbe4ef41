# Cascade Mask R-CNN, ConvNeXt-S (ImageNet-1K), 3x: 51.9 box AP / 45.0 mask AP in the paper.
_base_ = './cascade_convnext_t.py'
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.6,
                  init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_small_1k_224.pth')))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
