# UperNet, ConvNeXt V2-H (FCMAE, ImageNet-1K fine-tuned), 512x512: 55.0 mIoU (multi-scale), 707M, 3272G.
_base_ = './upernet_convnextv2_b.py'
model = dict(
    backbone=dict(arch='huge', init_cfg=dict(
        checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_huge_1k_224_ema.pt')),
    decode_head=dict(in_channels=[352, 704, 1408, 2816]),
    auxiliary_head=dict(in_channels=1408))
