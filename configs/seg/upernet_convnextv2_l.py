# UperNet, ConvNeXt V2-L (FCMAE, ImageNet-1K fine-tuned), 512x512: 53.7 mIoU (multi-scale), 235M, 1573G.
_base_ = './upernet_convnextv2_b.py'
model = dict(
    backbone=dict(arch='large', init_cfg=dict(
        checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_large_1k_224_ema.pt')),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))
