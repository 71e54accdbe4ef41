# Cascade Mask R-CNN, ConvNeXt-L (ImageNet-22K), 3x, fp32: 54.8 box AP / 47.6 mask AP in the paper.
_base_ = './cascade_convnext_t.py'
model = dict(
    backbone=dict(arch='large', drop_path_rate=0.7,
                  init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_large_22k_224.pth')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
optim_wrapper = dict(type='OptimWrapper', paramwise_cfg=dict(decay_rate=0.7, num_layers=12), optimizer=dict(lr=1e-4))
