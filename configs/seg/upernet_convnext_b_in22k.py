# UperNet, ConvNeXt-B (ImageNet-22K), 640x640: 52.6 / 53.1 mIoU in the paper.
_base_ = './upernet_convnext_b.py'
# 640x640 crops from images resized to 2560x640: mmseg's _base_/datasets/ade20k_640x640.py pipelines, spelled out
# because mmengine lets no config inherit two dataset bases nor change one element of a list
# (tests/test_configs.py checks that they equal mmseg's).
crop_size = (640, 640)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(2560, 640), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_22k_224.pth')),
    test_cfg=dict(crop_size=crop_size, stride=(426, 426)))
