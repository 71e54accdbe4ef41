# UperNet on the built-in demo data (backbones/runtime/demo_data.py): the real UperNet-T recipe (AdamW,
# stage-wise LR decay, warm-up + poly) on 128x128 scenes, with a small ConvNeXt trained from scratch
# and narrow heads so that it trains on a 2-core CPU in minutes.
_base_ = ['../seg/upernet_convnext_t.py', './_base_/demo_common.py']

data_root = 'data/demo/ade'
crop_size = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
# ADE20K layout and label convention; the classes come from the data's classes.json (backbones/runtime/own_data.py),
# as for your own data.
dataset = dict(
    type='BaseSegDataset', data_root=data_root, img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(dataset, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch={{_base_.demo_arch}}, drop_path_rate=0.1, layer_scale_init_value=1e-6, init_cfg=None),
    decode_head=dict(in_channels={{_base_.demo_arch.dims}}, channels=64, num_classes=5),
    auxiliary_head=dict(in_channels=128, channels=32, num_classes=5),  # 128: the width of the third stage
    test_cfg=dict(mode='whole'))

max_iters = 400
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=50, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=100)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
randomness = dict(seed=0)  # the same demo result on every run of a machine
