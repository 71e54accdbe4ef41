# The ConvNeXt ADE20K recipe shared by every UperNet here (official release): 512x512 crops, 160k
# iterations of 16 images, AdamW with stage-wise LR decay, warm-up then poly decay, AMP.
_base_ = [
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['backbones'], allow_failed_imports=False)
custom_hooks = [dict(type='RandomStateHook')]  # --resume continues the random numbers of the run
# Checkpoints of plain data, written atomically, and a --resume that reads them through a schema.
runner_type = 'ConvNeXtDenseRunner'
default_hooks = dict(checkpoint=dict(type='ConvNeXtDenseCheckpointHook'))

# 2 images per GPU x 8 GPUs = 16 per iteration: --cfg-options auto_scale_lr.enable=True scales the LR to
# another total batch by mmengine's linear rule (mmseg's schedules define no auto_scale_lr).
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    constructor='LRDecayOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
