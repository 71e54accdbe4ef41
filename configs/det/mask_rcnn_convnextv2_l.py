# Mask R-CNN, ConvNeXt V2-L (FCMAE, ImageNet-1K fine-tuned), 3x LSJ: 54.4 box AP / 47.7 mask AP, 875G.
_base_ = './mask_rcnn_convnextv2_b.py'
model = dict(
    backbone=dict(arch='large', init_cfg=dict(
        checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_large_1k_224_ema.pt')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.7))
