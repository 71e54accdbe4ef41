# FCMAE pre-training of ConvNeXt V2 on ImageNet-1K at 224 (V2 paper, section 3 and appendix), or on any
# folder tree of images: python tools/train.py configs/pretrain/fcmae_convnextv2_<size>.py --data-root DIR
# AdamW (0.9, 0.95), weight decay 0.05, lr = 1.5e-4 x batch / 256, 40 warm-up epochs then cosine,
# RandomResizedCrop (area 0.2-1, bicubic) and flip, mask ratio 0.6 of the 32x32 patches, per-patch
# normalised targets. The paper's batch is 4096: 64 per GPU on 64 GPUs.
custom_imports = dict(imports=['backbones'], allow_failed_imports=False)

model = dict(type='FCMAE', arch='atto', mask_ratio=0.6, decoder_dim=512, decoder_depth=1, norm_pix_loss=True)

data_root = 'data/imagenet/train/'  # any folder tree of images: labels and annotations are not read
train_pipeline = [
    dict(type='convnext_dense.RandomResizedCrop', size=224, scale=(0.2, 1.0), interpolation='bicubic'),
    dict(type='mmcv.RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='convnext_dense.PackImageInputs'),
]
train_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='ImageFolderDataset', data_root=data_root, data_prefix=dict(img_path=''),
                 pipeline=train_pipeline))

max_epochs = 800  # the appendix lists 800 or 1600 epochs
warmup_epochs = 40
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05),
    paramwise_cfg=dict(flat_decay_mult=0.0))  # no decay of biases, norms and GRN (1-D parameters)
# lr = 1.5e-4 x (GPUs x batch_size) / 256: 2.4e-3 at the paper's 4096.
auto_scale_lr = dict(enable=True, base_batch_size=256)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=0.0, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)

default_scope = None
default_hooks = dict(
    runtime_info=dict(type='RuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # Checkpoints of plain data, written atomically, and a --resume that reads them through a schema.
    checkpoint=dict(type='ConvNeXtDenseCheckpointHook', interval=1, max_keep_ckpts=2, save_last=True))
runner_type = 'ConvNeXtDenseRunner'
custom_hooks = [
    dict(type='RandomStateHook'),  # --resume continues the masks; the crops too without persistent workers
    dict(type='FCMAEReconstructionHook', interval=5000, num_images=4),  # WORK_DIR/reconstructions/*.png
]
env_cfg = dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
log_processor = dict(by_epoch=True, window_size=50)
visualizer = dict(type='Visualizer', vis_backends=[dict(type='LocalVisBackend')])
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
