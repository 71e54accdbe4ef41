# UperNet, ConvNeXt-B (ImageNet-1K), 512x512: 49.1 / 49.9 mIoU in the paper.
_base_ = './upernet_convnext_t.py'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.4, init_cfg=dict(
        checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_1k_224.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
