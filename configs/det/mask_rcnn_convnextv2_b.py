# Mask R-CNN, ConvNeXt V2-B (FCMAE pre-trained, ImageNet-1K fine-tuned), 3x with large-scale jitter,
# as in the V2 paper: 52.9 box AP / 46.6 mask AP, 486G FLOPs. The paper gives batch 32, lr 1e-4, weight
# decay 0.05 and LSJ at 1024 (scale 0.1-2.0); drop path and layer decay are not in it and follow V1 B.
_base_ = './mask_rcnn_convnext_t.py'
image_size = (1024, 1024)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=image_size, recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
# 4 images per GPU x 8 GPUs = 32 per iteration.
train_dataloader = dict(batch_size=4, dataset=dict(pipeline=train_pipeline))
auto_scale_lr = dict(base_batch_size=32)
model = dict(
    data_preprocessor=dict(batch_augments=[dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)]),
    backbone=dict(
        arch='base',
        version='v2',
        layer_scale_init_value=None,
        drop_path_rate=0.7,
        init_cfg=dict(
            checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_base_1k_224_ema.pt')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8, num_layers=12), optimizer=dict(lr=1e-4))
