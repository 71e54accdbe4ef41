# UperNet, ConvNeXt-XL (ImageNet-22K), 640x640: 53.6 / 54.0 mIoU in the paper.
_base_ = './upernet_convnext_l_in22k.py'
model = dict(
    backbone=dict(arch='xlarge', init_cfg=dict(
        checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_xlarge_22k_224.pth')),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024))
optim_wrapper = dict(optimizer=dict(lr=8e-5))
