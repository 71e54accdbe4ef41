# FCMAE pre-training of the demo backbone on the built-in demo images (backbones/runtime/demo_data.py), their labels
# unused: the paper's recipe (AdamW (0.9, 0.95), warm-up + cosine, mask ratio 0.6 of 32x32 patches,
# per-patch normalised targets) on 128x128 images, with a narrower decoder, a higher lr and a schedule of
# minutes on a 2-core CPU. tools/demo.py --pretrain fcmae starts UperNet and the detectors from its backbone.
_base_ = ['../pretrain/fcmae_convnextv2_atto.py', './_base_/demo_common.py']

model = dict(arch={{_base_.demo_arch}}, decoder_dim=128)
train_pipeline = [
    dict(type='convnext_dense.RandomResizedCrop', size=128, scale=(0.2, 1.0), interpolation='bicubic'),
    dict(type='mmcv.RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='convnext_dense.PackImageInputs'),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    pin_memory=False,
    dataset=dict(data_root='data/demo/coco/train/', pipeline=train_pipeline))

# 480 images / 16 = 30 iterations an epoch: 8 epochs, 1 of warm-up, at a fixed lr (no scaling by batch).
max_epochs = 8
warmup_epochs = 1
optim_wrapper = dict(optimizer=dict(lr=2e-3))
auto_scale_lr = dict(enable=False)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=0.0, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
custom_hooks = [
    dict(type='RandomStateHook'),
    dict(type='FCMAEReconstructionHook', interval=120, num_images=4),
]
log_processor = dict(window_size=10)
