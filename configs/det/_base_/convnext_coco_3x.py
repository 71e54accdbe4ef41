# The ConvNeXt COCO fine-tuning recipe shared by every detector here (official release, 3x schedule):
# multi-scale + crop augmentation, 36 epochs, AdamW with layer-wise LR decay, AMP.
# Detector configs add the model, lr and decay rate.
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['backbones'], allow_failed_imports=False)
custom_hooks = [dict(type='RandomStateHook')]  # --resume continues the random numbers of the run
# Checkpoints of plain data, written atomically, and a --resume that reads them through a schema.
runner_type = 'ConvNeXtDenseRunner'
default_hooks = dict(checkpoint=dict(type='ConvNeXtDenseCheckpointHook'))

# Flip, then either multi-scale resize (short side 480..800) or resize + crop + multi-scale resize.
multi_scales = [(short, 1333) for short in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
# 2 images per GPU x 8 GPUs = 16 per iteration (auto_scale_lr.base_batch_size in the mmdet base).
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(
    type='AmpOptimWrapper',
    constructor='LRDecayOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6),
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05))
