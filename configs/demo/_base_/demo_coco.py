# The built-in demo data in COCO format (backbones/runtime/demo_data.py) and the CPU schedule, for the detection demo
# configs. The values are named demo_* so that this file can sit beside a real config in `_base_`
# (mmengine does not allow two bases to define the same key); the demo configs assign them to the real keys.
_base_ = './demo_common.py'

demo_data_root = 'data/demo/coco/'
demo_image_size = (128, 128)
# The classes come from the annotation files' categories (backbones/runtime/own_data.py), as for your own data.
demo_metainfo = dict(palette={{_base_.demo_palette}})
demo_train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=demo_data_root,
        metainfo=demo_metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
            dict(type='RandomFlip', prob=0.5),
            dict(type='RandomResize', scale=demo_image_size, ratio_range=(0.8, 1.25), keep_ratio=True),
            dict(type='PackDetInputs'),
        ]))
demo_val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=demo_data_root,
        metainfo=demo_metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=demo_image_size, keep_ratio=True),
            dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
            dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
        ]))
demo_val_evaluator = dict(ann_file=demo_data_root + 'annotations/instances_val.json')

# 3 epochs of 120 iterations (batch 4), a step down for the last: a few minutes on 2 cores. AdamW and layer-wise
# decay as in the recipe, at a higher lr than COCO's for the short schedule. Validation once, at the end.
demo_max_epochs = 3
demo_optim_wrapper = dict(optimizer=dict(lr=1e-3))
demo_param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=demo_max_epochs, by_epoch=True, milestones=[demo_max_epochs - 1], gamma=0.1),
]
demo_train_cfg = dict(max_epochs=demo_max_epochs, val_interval=demo_max_epochs)
demo_default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=demo_max_epochs, max_keep_ckpts=1))
