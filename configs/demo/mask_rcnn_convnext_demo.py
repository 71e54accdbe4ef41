# Mask R-CNN on the built-in demo data: the real Mask R-CNN-T recipe (AdamW, layer-wise LR decay,
# warm-up + steps) on 128x128 scenes, with a small ConvNeXt, narrow heads and fewer RoIs so that it
# trains on a 2-core CPU in minutes. Like the paper's detectors start from ImageNet weights, the
# backbone starts from the demo UperNet's, which tools/demo.py extracts first.
_base_ = ['../det/mask_rcnn_convnext_t.py', './_base_/demo_coco.py']

train_dataloader = {{_base_.demo_train_dataloader}}
val_dataloader = {{_base_.demo_val_dataloader}}
test_dataloader = val_dataloader
val_evaluator = {{_base_.demo_val_evaluator}}
test_evaluator = val_evaluator

channels = 64  # FPN and head width
model = dict(
    backbone=dict(
        arch={{_base_.demo_arch}},
        drop_path_rate=0.1,
        init_cfg=dict(checkpoint='work_dirs/demo/convnext_demo_pretrained.pth')),
    neck=dict(in_channels={{_base_.demo_arch.dims}}, out_channels=channels),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels, roi_layer=dict(sampling_ratio=1)),
        bbox_head=dict(in_channels=channels, fc_out_channels=256, num_classes=4),
        mask_roi_extractor=dict(out_channels=channels, roi_layer=dict(sampling_ratio=1)),
        mask_head=dict(in_channels=channels, conv_out_channels=channels, num_classes=4)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=300), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100)))

# One epoch more than the Cascade demo (its iterations cost a third): 4 epochs, the last at a tenth of the lr.
max_epochs = 4
optim_wrapper = {{_base_.demo_optim_wrapper}}
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[max_epochs - 1], gamma=0.1),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
auto_scale_lr = dict(enable=False)
randomness = dict(seed=0)  # the same demo result on every run of a machine
