"""Every config loads and builds; full-size configs match the papers' recipes, parameters and FLOPs."""
from pathlib import Path

import pytest
from mmengine.config import Config

from backbones.runtime.complexity import complexity

CONFIGS = sorted(str(p) for p in Path('configs').rglob('*.py') if '_base_' not in p.parts)
PRETRAIN_CONFIGS = [path for path in CONFIGS if 'fcmae' in Path(path).name]  # FCMAE pre-training
DENSE_CONFIGS = [path for path in CONFIGS if path not in PRETRAIN_CONFIGS]  # detectors and segmentors

# config: (drop path, lr, decay rate, decay type, num_layers, AMP, params M, FLOPs G) from the papers and
# the official release; FLOPs at 1280x800 (detection), 2048x512 / 2560x640 (segmentation).
PAPER = {
    'det/mask_rcnn_convnext_t': (0.4, 1e-4, 0.95, 'layer_wise', 6, True, 48, 262),
    'det/cascade_convnext_t': (0.4, 2e-4, 0.7, 'layer_wise', 6, True, 86, 741),
    'det/cascade_convnext_s': (0.6, 2e-4, 0.7, 'layer_wise', 12, True, 108, 827),
    'det/cascade_convnext_b': (0.7, 2e-4, 0.8, 'layer_wise', 12, True, 146, 964),
    'det/cascade_convnext_b_in22k': (0.6, 1e-4, 0.8, 'layer_wise', 12, True, 146, 964),
    'det/cascade_convnext_l_in22k': (0.7, 1e-4, 0.7, 'layer_wise', 12, False, 255, 1354),
    'det/cascade_convnext_xl_in22k': (0.8, 1e-4, 0.7, 'layer_wise', 12, False, 407, 1898),
    'seg/upernet_convnext_t': (0.4, 1e-4, 0.9, 'stage_wise', 6, True, 60, 939),
    'seg/upernet_convnext_s': (0.3, 1e-4, 0.9, 'stage_wise', 12, True, 82, 1027),
    'seg/upernet_convnext_b': (0.4, 1e-4, 0.9, 'stage_wise', 12, True, 122, 1170),
    'seg/upernet_convnext_b_in22k': (0.4, 1e-4, 0.9, 'stage_wise', 12, True, 122, 1828),
    'seg/upernet_convnext_l_in22k': (0.4, 1e-4, 0.9, 'stage_wise', 12, True, 235, 2458),
    'seg/upernet_convnext_xl_in22k': (0.4, 8e-5, 0.9, 'stage_wise', 12, True, 391, 3335),
}
# Not in the papers' tables (the configs say how their recipe is chosen). Parameters and FLOPs are Mask R-CNN T's
# plus the paper's Cascade S (or B) minus Cascade T: the two detectors differ from T to S/B only in the backbone
# and the FPN's input widths, which Mask R-CNN and Cascade share.
PAPER['det/mask_rcnn_convnext_s'] = (0.6, 1e-4, 0.95, 'layer_wise', 12, True, 48 + 108 - 86, 262 + 827 - 741)
PAPER['det/mask_rcnn_convnext_b'] = (0.7, 1e-4, 0.95, 'layer_wise', 12, True, 48 + 146 - 86, 262 + 964 - 741)


# ConvNeXt V2 paper: (params M or None where the paper does not give them, FLOPs G); 512 crops for UperNet.
V2_PAPER = {
    'det/mask_rcnn_convnextv2_b': (None, 486),
    'det/mask_rcnn_convnextv2_l': (None, 875),
    'det/mask_rcnn_convnextv2_h': (None, 2525),
    'seg/upernet_convnextv2_b': (122, 1170),
    'seg/upernet_convnextv2_l': (235, 1573),
    'seg/upernet_convnextv2_h': (707, 3272),
}


def test_every_config_is_listed() -> None:
    listed = {f'configs/{name}.py' for name in [*PAPER, *V2_PAPER]}
    assert listed == {path for path in DENSE_CONFIGS if '/demo/' not in path}


@pytest.mark.parametrize('path', DENSE_CONFIGS)
def test_config_builds_with_consistent_channels(path: str) -> None:
    import torch
    from mmengine.registry import MODELS, init_default_scope

    cfg = Config.fromfile(path)
    assert cfg.custom_imports.imports == ['backbones']
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.init_cfg = None
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    backbone = model.backbone
    assert type(backbone).__name__ == 'ConvNeXt' and backbone.out_strides == (4, 8, 16, 32)
    if cfg.default_scope == 'mmdet':
        assert tuple(model.neck.in_channels) == backbone.out_channels
    else:
        assert tuple(model.decode_head.in_channels) == backbone.out_channels
        assert model.auxiliary_head.in_channels == backbone.out_channels[2]


@pytest.mark.parametrize('path', PRETRAIN_CONFIGS)
def test_pretraining_config_builds_the_papers_fcmae(path: str) -> None:
    import torch
    from mmengine.registry import MODELS

    from backbones.models.convnext import V2_ARCHS

    cfg = Config.fromfile(path)
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    assert type(model).__name__ == 'FCMAE' and model.backbone.version == 'v2' and model.mask_ratio == 0.6
    assert cfg.optim_wrapper.optimizer.betas == (0.9, 0.95) and cfg.optim_wrapper.optimizer.weight_decay == 0.05
    if 'demo' in path:
        return
    size = Path(path).stem.rsplit('_', 1)[1]
    assert (model.backbone.depths, model.backbone.dims) == (V2_ARCHS[size]['depths'], V2_ARCHS[size]['dims'])
    assert model.proj.out_channels == 512 and len(model.decoder) == 1  # one block of width 512
    assert cfg.optim_wrapper.optimizer.lr == 1.5e-4 and cfg.auto_scale_lr.base_batch_size == 256  # x batch / 256
    assert (cfg.param_scheduler[0].end, cfg.train_cfg.max_epochs) == (40, 800)


@pytest.mark.parametrize('name', list(PAPER))
def test_recipe_parameters_and_flops_match_the_paper(name: str) -> None:
    drop_path, lr, decay_rate, decay_type, num_layers, amp, params_m, flops_g = PAPER[name]
    cfg = Config.fromfile(f'configs/{name}.py')
    assert cfg.model.backbone.drop_path_rate == drop_path
    assert cfg.model.backbone.layer_scale_init_value == 1.0
    optim = cfg.optim_wrapper
    assert (optim.optimizer.type, optim.optimizer.lr, optim.optimizer.betas, optim.optimizer.weight_decay) == (
        'AdamW', lr, (0.9, 0.999), 0.05)
    assert optim.constructor == 'LRDecayOptimWrapperConstructor'
    assert (optim.paramwise_cfg.decay_rate, optim.paramwise_cfg.decay_type, optim.paramwise_cfg.num_layers) == (
        decay_rate, decay_type, num_layers)
    assert (optim.type == 'AmpOptimWrapper') is amp

    params, counts = complexity(cfg)
    assert round(params / 1e6) == params_m
    assert sum(counts.values()) / 1e9 == pytest.approx(flops_g, rel=0.01)


@pytest.mark.parametrize('name', list(V2_PAPER))
def test_v2_configs_match_the_v2_paper(name: str) -> None:
    params_m, flops_g = V2_PAPER[name]
    cfg = Config.fromfile(f'configs/{name}.py')
    assert cfg.model.backbone.version == 'v2' and cfg.model.backbone.layer_scale_init_value is None
    params, counts = complexity(cfg)
    assert params_m is None or round(params / 1e6) == params_m
    assert sum(counts.values()) / 1e9 == pytest.approx(flops_g, rel=0.01)
    if name.startswith('det/'):  # 3x, batch 32 (4 x 8 GPUs), lr 1e-4, large-scale jitter 1024 at 0.1-2.0
        assert (cfg.train_cfg.max_epochs, cfg.train_dataloader.batch_size * 8, cfg.auto_scale_lr.base_batch_size,
                cfg.optim_wrapper.optimizer.lr) == (36, 32, 32, 1e-4)
        jitter = cfg.train_pipeline[2]
        assert (jitter.type, jitter.scale, jitter.ratio_range) == ('RandomResize', (1024, 1024), (0.1, 2.0))


def test_detection_schedule_and_augmentation() -> None:
    cfg = Config.fromfile('configs/det/cascade_convnext_t.py')
    assert cfg.train_cfg.max_epochs == 36
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end, warmup.by_epoch) == ('LinearLR', 0.001, 500, False)
    assert (steps.type, steps.milestones, steps.gamma) == ('MultiStepLR', [27, 33], 0.1)
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    flip, choice = cfg.train_pipeline[2:4]
    assert flip.prob == 0.5
    resize_only, crop_branch = choice.transforms
    assert [s[0] for s in resize_only[0].scales] == list(range(480, 801, 32))
    assert [s[0] for s in crop_branch[0].scales] == [400, 500, 600]
    assert (crop_branch[1].crop_type, crop_branch[1].crop_size, crop_branch[1].allow_negative_crop) == (
        'absolute_range', (384, 600), True)
    heads = cfg.model.roi_head.bbox_head
    assert [h.bbox_coder.target_stds for h in heads] == [
        [0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
    assert all((h.type, h.num_shared_convs, h.num_shared_fcs, h.reg_decoded_bbox, h.loss_bbox.type,
                h.loss_bbox.loss_weight) == ('ConvFCBBoxHead', 4, 1, True, 'GIoULoss', 10.0) for h in heads)
    assert cfg.model.roi_head.stage_loss_weights == [1, 0.5, 0.25]


def test_spelled_out_lists_equal_what_they_copy() -> None:
    """Where mmengine's inheritance forces a copied list, the copy is what the config says it copies."""
    from mmengine.utils import get_installed_path

    ours = Config.fromfile('configs/seg/upernet_convnext_b_in22k.py')
    mmseg = Config.fromfile(f"{get_installed_path('mmseg')}/.mim/configs/_base_/datasets/ade20k_640x640.py")
    assert ours.train_dataloader.dataset.pipeline == mmseg.train_pipeline
    assert ours.test_dataloader.dataset.pipeline == mmseg.test_pipeline

    real, demo = (Config.fromfile(f'configs/{name}.py').model for name in ('det/cascade_convnext_t',
                                                                             'demo/cascade_convnext_demo'))
    narrowed = dict(in_channels=64, conv_out_channels=64, fc_out_channels=256, num_classes=4)
    assert demo.roi_head.bbox_head == [dict(head, **narrowed) for head in real.roi_head.bbox_head]
    assert demo.train_cfg.rcnn == [dict(stage, sampler=dict(stage.sampler, num=64)) for stage in real.train_cfg.rcnn]


def test_segmentation_schedule_heads_and_evaluation() -> None:
    cfg = Config.fromfile('configs/seg/upernet_convnext_t.py')
    assert cfg.train_cfg.max_iters == 160000
    warmup, poly = cfg.param_scheduler
    assert (warmup.start_factor, warmup.end, poly.type, poly.power, poly.eta_min, poly.end) == (
        1e-6, 1500, 'PolyLR', 1.0, 0.0, 160000)
    assert cfg.train_dataloader.batch_size * 8 == 16
    head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert (head.type, head.pool_scales, head.channels, head.dropout_ratio, head.num_classes) == (
        'UPerHead', (1, 2, 3, 6), 512, 0.1, 150)
    assert (aux.type, aux.in_index, aux.channels, aux.loss_decode.loss_weight) == ('FCNHead', 2, 256, 0.4)
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(512, 512), stride=(341, 341))
    ratios = [t.scale_factor for t in cfg.tta_pipeline[1].transforms[0]]
    assert ratios == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    large = Config.fromfile('configs/seg/upernet_convnext_l_in22k.py')
    assert large.model.test_cfg.stride == (426, 426) and large.train_pipeline[2].scale == (2560, 640)


@pytest.mark.parametrize('path', ['configs/det/mask_rcnn_convnext_t.py', 'configs/det/cascade_convnext_t.py'])
def test_compiled_ops_receive_contiguous_tensors(path: str, monkeypatch) -> None:
    """mmcv's compiled ops (RoIAlign, nms) index their inputs' storage as contiguous NCHW whatever the
    strides: every tensor handed to them in a training step and a test step must be contiguous."""
    import mmcv._ext
    import torch
    from mmdet.testing import demo_mm_inputs
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope

    calls, strided = [], []

    def recording(name: str, op):
        def call(*args, **kwargs):
            calls.append(name)
            strided.extend(f'{name} argument {i}: shape {tuple(v.shape)}, strides {v.stride()}'
                           for i, v in enumerate([*args, *kwargs.values()])
                           if isinstance(v, torch.Tensor) and not v.is_contiguous())
            return op(*args, **kwargs)
        return call

    for name in dir(mmcv._ext):  # every mmcv op module calls its kernels through this one extension module
        if not name.startswith('_') and callable(getattr(mmcv._ext, name)):
            monkeypatch.setattr(mmcv._ext, name, recording(name, getattr(mmcv._ext, name)))

    cfg = Config.fromfile(path)
    init_default_scope('mmdet')
    cfg.model.backbone.init_cfg = None
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # an untrained detector: keep its boxes for the mask head
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    packed = demo_mm_inputs(batch_size=2, image_shapes=[(3, 160, 224), (3, 192, 160)], num_items=[3, 2],
                            num_classes=80, with_mask=True)
    model.train()
    losses = model(**model.data_preprocessor(packed, True), mode='loss')
    sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if 'loss' in k).backward()
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(packed, False), mode='predict')
    assert all(len(r.pred_instances) > 0 for r in results)
    assert {'roi_align_forward', 'roi_align_backward', 'nms'} <= set(calls)
    assert not strided, strided[:5]


@pytest.mark.parametrize('path', [p for p in DENSE_CONFIGS if '/demo/' not in p])
def test_pretrained_weights_are_the_released_urls_and_auto_scale_lr_works(path: str) -> None:
    """Weights download on first use (checkpoints/manifest.json lists each URL, the weights' license with it),
    and ``--cfg-options auto_scale_lr.enable=True`` finds the recipe's total batch size in every config."""
    import json

    manifest = {entry['url']: entry for entry in json.loads(Path('checkpoints/manifest.json').read_text())['weights']}
    cfg = Config.fromfile(path)
    url = cfg.model.backbone.init_cfg.checkpoint
    assert url in manifest and manifest[url]['kind'].startswith(('V1 ImageNet', 'V2 ImageNet')), url
    assert (manifest[url]['license'] == 'CC-BY-NC-4.0') == ('convnextv2' in url), url
    batch = cfg.train_dataloader.batch_size * 8  # the papers' 8 GPUs
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=batch), path
