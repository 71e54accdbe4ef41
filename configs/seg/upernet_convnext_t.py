# UperNet, ConvNeXt-T (ImageNet-1K), 512x512, 160k: 46.0 mIoU single-scale / 46.7 multi-scale in the paper.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    './_base_/convnext_ade20k_160k.py',
    '../_base_/convnext_t_backbone.py',
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone={{_base_.convnext_t_backbone}},
    decode_head=dict(in_channels={{_base_.convnext_t_channels}}, num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=6))
