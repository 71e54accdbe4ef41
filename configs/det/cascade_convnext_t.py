# Cascade Mask R-CNN, ConvNeXt-T (ImageNet-1K), FPN, 4conv1fc GIoU heads, 3x: 50.4 box AP / 43.7 mask AP.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    './_base_/convnext_coco_3x.py',
    '../_base_/convnext_t_backbone.py',
]
# Three stages of 4conv1fc box heads regressing decoded boxes with GIoU; finer target stds per stage.
stage_target_stds = [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
model = dict(
    backbone={{_base_.convnext_t_backbone}},
    neck=dict(in_channels={{_base_.convnext_t_channels}}),
    roi_head=dict(bbox_head=[
        dict(
            type='ConvFCBBoxHead',
            num_shared_convs=4,
            num_shared_fcs=1,
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0, 0.0, 0.0, 0.0], target_stds=stds),
            reg_class_agnostic=False,
            reg_decoded_bbox=True,
            norm_cfg=dict(type='SyncBN', requires_grad=True),  # mmengine reverts it to BN on one device
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0)) for stds in stage_target_stds
    ]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.7, num_layers=6), optimizer=dict(lr=2e-4))
