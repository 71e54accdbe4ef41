# UperNet, ConvNeXt-S (ImageNet-1K), 512x512: 48.7 / 49.6 mIoU in the paper.
_base_ = './upernet_convnext_t.py'
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=dict(
        checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_small_1k_224.pth')))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
