# Mask R-CNN, ConvNeXt V2-H (FCMAE, ImageNet-1K fine-tuned), 3x LSJ: 55.7 box AP / 48.9 mask AP, 2525G.
_base_ = './mask_rcnn_convnextv2_b.py'
model = dict(
    backbone=dict(arch='huge', init_cfg=dict(
        checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_huge_1k_224_ema.pt')),
    neck=dict(in_channels=[352, 704, 1408, 2816]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.7))  # as V2-L
