# UperNet, ConvNeXt-T (ImageNet-1K), 512x512, 160k: 46.0 mIoU single-scale / 46.7 multi-scale in the paper.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    './_base_/convnext_ade20k_160k.py',
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='tiny',
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/convnext_tiny_1k_224.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=6))
