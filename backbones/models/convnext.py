"""ConvNeXt V1/V2 as a multi-scale backbone for mmdet and mmseg.

Papers: "A ConvNet for the 2020s" (arXiv 2201.03545) and "ConvNeXt V2: Co-designing and Scaling
ConvNets with Masked Autoencoders" (arXiv 2301.00808).

The network itself is timm's ``ConvNeXt`` (stem, stages, blocks, LayerScale, GRN, drop path,
gradient checkpointing). This module adapts it to the OpenMMLab backbone contract: it returns the
stage features of ``out_indices`` (strides 4, 8, 16, 32) as contiguous NCHW tensors, each through its
own channels-first LayerNorm as the official detection/segmentation backbone does, supports ``frozen_stages`` and
``init_cfg=dict(type='Pretrained', ...)`` with any released checkpoint format
(see :mod:`backbones.checkpoints`), and maps its parameter names to LR-decay layer ids.

FCMAE pre-training (V2 paper, section 3) runs this same backbone in masked mode
(``forward(x, mask)``): the sparse encoder of the paper is computed densely, with masked positions
set to zero around every operator that mixes positions (see :meth:`ConvNeXt.masking`).
"""
import contextlib
from typing import Callable, Iterator, Literal, Sequence

import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from timm.layers import LayerNorm2d
from timm.models.convnext import ConvNeXt as TimmConvNeXt
from torch import nn

from ..checkpoints.loading import load_backbone_weights
from ..errors import UsageError

# depths and dims of the paper sizes; V2 blocks add GRN and drop LayerScale.
V1_ARCHS: dict[str, dict[str, tuple[int, ...]]] = {
    'tiny': dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    'small': dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    'base': dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
    'large': dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
    'xlarge': dict(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048)),
}
V2_ARCHS: dict[str, dict[str, tuple[int, ...]]] = {
    'atto': dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320)),
    'femto': dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384)),
    'pico': dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512)),
    'nano': dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640)),
    'tiny': dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    'base': dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
    'large': dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
    'huge': dict(depths=(3, 3, 27, 3), dims=(352, 704, 1408, 2816)),
}
ARCHS = {'v1': V1_ARCHS, 'v2': V2_ARCHS}
STAGE_STRIDES = (4, 8, 16, 32)
MASK_STRIDE = STAGE_STRIDES[-1]  # one mask cell per position of the last stage (a 32x32 patch)
DecayType = Literal['layer_wise', 'stage_wise']


def resolve_arch(arch: str | dict, version: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Return ``(depths, dims)`` for a named arch of ``version`` or a custom dict.

    Args:
        arch: A name from :data:`V1_ARCHS` / :data:`V2_ARCHS`, or ``dict(depths=[4 ints],
            dims=[4 ints])``.
        version: ``'v1'`` or ``'v2'``.

    Raises:
        ValueError: For an unknown version or arch, or a malformed custom arch.
    """
    if version not in ARCHS:
        raise UsageError(f"Unknown ConvNeXt version {version!r}: use 'v1' or 'v2'.")
    if isinstance(arch, str):
        if arch not in ARCHS[version]:
            other = 'v2' if version == 'v1' else 'v1'
            hint = f" ('{arch}' is a {other} arch: set version='{other}')" if arch in ARCHS[other] else ''
            raise UsageError(
                f"Unknown ConvNeXt {version} arch {arch!r}{hint}; choose one of "
                f"{', '.join(ARCHS[version])}, or pass dict(depths=[4 ints], dims=[4 ints]).")
        spec = ARCHS[version][arch]
    elif isinstance(arch, dict):
        spec = arch
    else:
        raise UsageError(f'ConvNeXt arch must be a name or a dict, got {type(arch).__name__}.')
    depths, dims = tuple(spec.get('depths', ())), tuple(spec.get('dims', ()))
    if len(depths) != 4 or len(dims) != 4 or not all(isinstance(v, int) and v > 0 for v in depths + dims):
        raise UsageError(f'A custom ConvNeXt arch needs 4 positive depths and 4 positive dims, got {spec}.')
    return depths, dims


def _layer_scale(version: str, init_value: float | None) -> float | None:
    """timm's ``ls_init_value``: ``None`` (no LayerScale) for V2 and for an explicit 0, 1e-6 when unset."""
    if version == 'v2' or init_value == 0:
        return None
    return 1e-6 if init_value is None else init_value


def upsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Repeat each cell of an (N, h, w) mask ``factor`` times along both spatial axes."""
    return mask.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


def _zero_output(hidden: torch.Tensor) -> Callable:
    """A forward hook that sets the ``hidden`` positions of a module's output to zero."""
    return lambda module, args, output: output.masked_fill(hidden, 0)


def _zero_input(hidden: torch.Tensor) -> Callable:
    """A forward pre-hook that sets the ``hidden`` positions of a module's input to zero."""
    return lambda module, args: (args[0].masked_fill(hidden, 0), *args[1:])


@MODELS.register_module()
class ConvNeXt(BaseModule):
    """ConvNeXt V1/V2 backbone returning multi-scale, LayerNorm-ed stage features.

    Registered in mmengine's root ``MODELS`` registry, so mmdet and mmseg configs both build it with
    ``type='ConvNeXt'`` after ``custom_imports=dict(imports=['backbones'])``.

    Args:
        arch: Paper size (V1: tiny, small, base, large, xlarge; V2: atto, femto, pico, nano, tiny,
            base, large, huge) or ``dict(depths=[...], dims=[...])`` with four entries each.
        version: ``'v1'`` (LayerScale) or ``'v2'`` (GRN, no LayerScale).
        in_channels: Number of input image channels.
        out_indices: Stages whose features are returned, a subset of ``(0, 1, 2, 3)``.
        drop_path_rate: Stochastic depth rate, increasing linearly over all blocks.
        layer_scale_init_value: Initial LayerScale value of V1 blocks (the official detection and
            segmentation configs use 1.0); ``None`` means timm's classification default 1e-6, and 0
            turns LayerScale off (as in the official code). V2 blocks have no LayerScale.
        frozen_stages: Number of leading stages to freeze (the stem goes with the first): their
            parameters get no gradients and ``train()`` keeps them in eval mode. 0 freezes nothing.
            Output norms are never frozen.
        with_cp: Gradient checkpointing of the blocks (same outputs, less memory); not in masked mode.
        norm_outputs: Pass each returned feature through its own LayerNorm (the detection and
            segmentation backbone). FCMAE pre-training feeds the raw last stage to its decoder and
            builds the backbone without them.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH_OR_URL)`` loads any format that
            :func:`backbones.checkpoints.loading.load_backbone_weights` detects; other init configs go to
            mmengine.
    """

    def __init__(self,
                 arch: str | dict = 'tiny',
                 version: str = 'v1',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: float = 0.0,
                 layer_scale_init_value: float | None = None,
                 frozen_stages: int = 0,
                 with_cp: bool = False,
                 norm_outputs: bool = True,
                 init_cfg: dict | list[dict] | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.depths, self.dims = resolve_arch(arch, version)
        self.version = version
        self.out_indices = tuple(out_indices)
        if not self.out_indices or len(set(self.out_indices)) != len(self.out_indices) or not all(
                isinstance(i, int) and 0 <= i <= 3 for i in self.out_indices):
            raise UsageError(f'out_indices must be distinct stage indices in 0..3, got {out_indices!r}.')
        if not 0 <= frozen_stages <= 4:
            raise UsageError(f'frozen_stages must be in 0..4 (number of leading stages), got {frozen_stages}.')
        if version == 'v2' and layer_scale_init_value is not None:
            raise UsageError('ConvNeXt V2 blocks have no LayerScale: leave layer_scale_init_value unset.')
        self.frozen_stages = frozen_stages

        trunk = TimmConvNeXt(
            in_chans=in_channels,
            num_classes=0,
            depths=self.depths,
            dims=self.dims,
            ls_init_value=_layer_scale(version, layer_scale_init_value),
            use_grn=version == 'v2',
            norm_eps=1e-6,
            drop_path_rate=drop_path_rate)
        trunk.set_grad_checkpointing(with_cp)
        # Keep timm's stem and stages (and their parameter names); the classifier head is not used.
        self.stem = trunk.stem
        self.stages = trunk.stages[:max(self.out_indices) + 1]
        self.out_norms = nn.ModuleList(
            LayerNorm2d(dim, eps=1e-6) if norm_outputs and i in self.out_indices else nn.Identity()
            for i, dim in enumerate(self.dims[:len(self.stages)]))
        self._freeze_stages()

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each returned feature map, in ``out_indices`` order."""
        return tuple(self.dims[i] for i in self.out_indices)

    @property
    def out_strides(self) -> tuple[int, ...]:
        """Stride of each returned feature map with respect to the input, in ``out_indices`` order."""
        return tuple(STAGE_STRIDES[i] for i in self.out_indices)

    def forward_stages(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Return the raw output of every built stage (before the output norms).

        Args:
            x: Images, (N, C, H, W).
            mask: Optional FCMAE mask, (N, H / 32, W / 32), True where a 32x32 patch is hidden; see
                :meth:`masking`.
        """
        with self.masking(mask, x.shape) if mask is not None else contextlib.nullcontext():
            x = self.stem(x)
            stage_outputs = []
            for stage in self.stages:
                x = stage(x)
                stage_outputs.append(x)
        return stage_outputs

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Return the (normalised) features of ``out_indices`` as contiguous NCHW tensors.

        timm's ``LayerNorm2d`` normalises in NHWC and permutes back, which leaves channels_last
        strides; a channels_last input does the same. Compiled ops downstream (mmcv's RoIAlign on the
        FPN levels built from these features) read the storage as contiguous NCHW whatever the
        strides, so every output is made contiguous here, once, for every consumer.

        Args:
            x: Images, (N, C, H, W).
            mask: Optional FCMAE mask, (N, H / 32, W / 32), True where a 32x32 patch is hidden: the
                features then depend on the visible patches only and are zero at hidden positions.
        """
        stage_outputs = self.forward_stages(x, mask)
        outputs = []
        for i in self.out_indices:
            feature = self.out_norms[i](stage_outputs[i])
            if mask is not None:
                feature = feature.masked_fill(upsample_mask(mask, MASK_STRIDE // STAGE_STRIDES[i])[:, None], 0)
            outputs.append(feature.contiguous())
        return tuple(outputs)

    @contextlib.contextmanager
    def masking(self, mask: torch.Tensor, image_shape: Sequence[int]) -> Iterator[None]:
        """Run the backbone as FCMAE's sparse encoder while the context is open.

        A sparse convolution equals a dense one whose input and output are zero at the positions
        the sparse tensor has no entries for (V2 paper, section 3). This context registers hooks on
        timm's own modules that zero the hidden positions (the mask upsampled to each stage's
        resolution) wherever a value there would reach a visible position or the output:

        * the stem's output (its LayerNorm maps zeros to its bias);
        * the input and output of each downsampling convolution (the LayerNorm before it, its bias);
        * the input of every GRN (V2), so that its L2 norm over H, W counts visible positions only; the
          statistics stay per image (the official sparse GRN pools them over the whole batch);
        * every block's output (MLP biases, GRN's beta).

        The depthwise convolution then sees zeros at hidden positions, as a sparse convolution does;
        LayerNorm, the MLP and GELU act per position, so their values at hidden positions reach nothing
        before one of the zeroings above. Hidden positions are zero in every stage's output.

        Args:
            mask: (N, H / 32, W / 32) bool, True where a 32x32 patch is hidden.
            image_shape: Shape of the input images, (N, C, H, W).

        Raises:
            ValueError: A mask of the wrong shape or type, or gradient checkpointing (its recomputation
                in the backward pass would run without the hooks).
        """
        n, _, height, width = image_shape
        grid = (n, height // MASK_STRIDE, width // MASK_STRIDE)
        if mask.dtype != torch.bool or tuple(mask.shape) != grid or height % MASK_STRIDE or width % MASK_STRIDE:
            raise UsageError(f'The FCMAE mask must be a bool tensor of shape (N, H/{MASK_STRIDE}, W/{MASK_STRIDE}) = '
                             f'{grid} for images {tuple(image_shape)} with H and W multiples of {MASK_STRIDE}; got '
                             f'{mask.dtype} {tuple(mask.shape)}.')
        if torch.is_grad_enabled() and any(stage.grad_checkpointing for stage in self.stages):
            raise UsageError('Masked (FCMAE) forward does not support gradient checkpointing: set with_cp=False.')
        hidden = [upsample_mask(mask, MASK_STRIDE // stride)[:, None] for stride in STAGE_STRIDES]
        handles = [self.stem.register_forward_hook(_zero_output(hidden[0]))]
        for i, stage in enumerate(self.stages):
            if i > 0:
                conv = stage.downsample[1]
                handles += [conv.register_forward_pre_hook(_zero_input(hidden[i - 1])),
                            conv.register_forward_hook(_zero_output(hidden[i]))]
            for block in stage.blocks:
                handles.append(block.register_forward_hook(_zero_output(hidden[i])))
                if grn := getattr(block.mlp, 'grn', None):  # V2 blocks
                    grn_hidden = hidden[i].permute(0, 2, 3, 1) if grn.channel_dim == -1 else hidden[i]
                    handles.append(grn.register_forward_pre_hook(_zero_input(grn_hidden)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _freeze_stages(self) -> None:
        frozen = [self.stem, *self.stages[:self.frozen_stages]] if self.frozen_stages else []
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'ConvNeXt':
        """Set train/eval mode; frozen stages stay in eval mode."""
        super().train(mode)
        self._freeze_stages()
        return self

    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', checkpoint=...)`` with format detection and a
        report of what did not match; any other init_cfg is handled by mmengine."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            load_backbone_weights(self, cfg['checkpoint'], logger=MMLogger.get_current_instance())
            self._is_init = True
        else:
            super().init_weights()

    def get_layer_id(self, param_name: str, num_layers: int, decay_type: DecayType) -> int:
        """LR-decay layer id of one of this backbone's parameters.

        ``num_layers`` is N in the official rule; ids run from 0 (stem) to N + 1 (everything after
        the trunk: output norms, and outside the backbone, neck and heads).

        layer_wise: stem -> 0; stage 0 -> 1; stage 1 (with its downsample) -> 2; the stage-2
        downsample -> 3; stage-2 block b of D -> 3 + b * (N - 3) // D; stage 3 -> N. For the official
        depths (D = 9 with N = 6, D = 27 with N = 12) this is the official 3 + b // 3; for other depths
        (V2 atto..nano) it spreads the stage-2 blocks evenly over ids 3..N-1.

        stage_wise: stem and downsample layers -> 0; blocks of stage s -> s + 1; N only sets the id of
        everything else.

        Args:
            param_name: Parameter name relative to this backbone (``stages.2.blocks.4.conv_dw.weight``).
            num_layers: N of the rule; layer_wise needs N >= 4.
            decay_type: ``'layer_wise'`` or ``'stage_wise'``.
        """
        parts = param_name.split('.')
        if parts[0] == 'stem':
            return 0
        if parts[0] != 'stages':
            return num_layers + 1
        stage, is_block = int(parts[1]), parts[2] == 'blocks'
        if decay_type == 'stage_wise':
            return stage + 1 if is_block else 0
        if stage < 2:
            return stage + 1
        if stage == 3:
            return num_layers
        if not is_block:
            return 3
        return 3 + int(parts[3]) * (num_layers - 3) // self.depths[2]
