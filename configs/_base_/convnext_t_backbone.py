# The ConvNeXt-T backbone (ImageNet-1K weights) of every T detector and segmentor, replacing their bases' ResNet,
# and the widths of its four outputs, which the neck or decode head takes. Named convnext_t_* so that this file
# can sit beside a model base in `_base_` (mmengine does not allow two bases to define the same key).
convnext_t_backbone = dict(
    _delete_=True,
    type='ConvNeXt',
    arch='tiny',
    drop_path_rate=0.4,
    layer_scale_init_value=1.0,
    out_indices=(0, 1, 2, 3),
    init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224.pth'))
convnext_t_channels = [96, 192, 384, 768]
