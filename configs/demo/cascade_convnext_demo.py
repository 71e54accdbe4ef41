# Cascade Mask R-CNN on the built-in demo data: the real Cascade-T recipe (three 4conv1fc GIoU box
# heads, AdamW, layer-wise LR decay, warm-up + steps) on 128x128 scenes, with a small ConvNeXt, narrow
# heads and fewer RoIs so that it trains on a 2-core CPU in minutes. The backbone starts from the demo
# UperNet's, which tools/demo.py extracts first.
_base_ = ['../det/cascade_convnext_t.py', './_base_/demo_coco.py']

train_dataloader = {{_base_.demo_train_dataloader}}
val_dataloader = {{_base_.demo_val_dataloader}}
test_dataloader = val_dataloader
val_evaluator = {{_base_.demo_val_evaluator}}
test_evaluator = val_evaluator

channels = 64  # FPN and head width
# Lists replace, not merge, in mmengine configs: the three stages are spelled out, as in the real config
# but narrower, with 64 sampled RoIs per image instead of 512 (tests/test_configs.py checks that nothing else
# differs).
stage_target_stds = [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
stage_iou_thresholds = [0.5, 0.6, 0.7]
model = dict(
    backbone=dict(
        arch={{_base_.demo_arch}},
        drop_path_rate=0.1,
        init_cfg=dict(checkpoint='work_dirs/demo/convnext_demo_pretrained.pth')),
    neck=dict(in_channels={{_base_.demo_arch.dims}}, out_channels=channels),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels, roi_layer=dict(sampling_ratio=1)),
        bbox_head=[
            dict(
                type='ConvFCBBoxHead',
                num_shared_convs=4,
                num_shared_fcs=1,
                in_channels=channels,
                conv_out_channels=channels,
                fc_out_channels=256,
                roi_feat_size=7,
                num_classes=4,
                bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0, 0.0, 0.0, 0.0], target_stds=stds),
                reg_class_agnostic=False,
                reg_decoded_bbox=True,
                norm_cfg=dict(type='SyncBN', requires_grad=True),
                loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type='GIoULoss', loss_weight=10.0)) for stds in stage_target_stds
        ],
        mask_roi_extractor=dict(out_channels=channels, roi_layer=dict(sampling_ratio=1)),
        mask_head=dict(in_channels=channels, conv_out_channels=channels, num_classes=4)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=[
            dict(
                assigner=dict(type='MaxIoUAssigner', pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                              match_low_quality=False, ignore_iof_thr=-1),
                sampler=dict(type='RandomSampler', num=64, pos_fraction=0.25, neg_pos_ub=-1,
                             add_gt_as_proposals=True),
                mask_size=28,
                pos_weight=-1,
                debug=False) for iou in stage_iou_thresholds
        ]),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100)))

optim_wrapper = {{_base_.demo_optim_wrapper}}
param_scheduler = {{_base_.demo_param_scheduler}}
train_cfg = {{_base_.demo_train_cfg}}
default_hooks = {{_base_.demo_default_hooks}}
auto_scale_lr = dict(enable=False)
randomness = dict(seed=0)  # the same demo result on every run of a machine
