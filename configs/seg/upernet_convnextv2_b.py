# UperNet, ConvNeXt V2-B (FCMAE, ImageNet-1K fine-tuned), 512x512, 160k, as in the V2 paper: 52.1 mIoU
# (multi-scale), 122M, 1170G. The recipe follows V1 B; the V2 paper does not list its hyper-parameters.
_base_ = './upernet_convnext_b.py'
model = dict(
    backbone=dict(
        version='v2', layer_scale_init_value=None,
        init_cfg=dict(
            checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_base_1k_224_ema.pt')))
