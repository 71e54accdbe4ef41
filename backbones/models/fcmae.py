"""FCMAE: ConvNeXt V2's fully convolutional masked autoencoder, for pre-training on unlabelled images.

Paper: "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders" (arXiv 2301.00808),
section 3 and appendix. Random 32x32 patches (one per position of the last stage) are hidden, mask
ratio 0.6; the encoder is :class:`backbones.ConvNeXt` (V2) itself in masked mode, computing the
paper's sparse encoder densely (see :meth:`backbones.ConvNeXt.masking`); the decoder is a 1x1
projection, mask tokens at hidden positions, one ConvNeXt V2 block and a 1x1 prediction of each
patch's 32 * 32 * 3 pixels; the loss is the mean squared error on hidden patches against per-patch
normalised pixels.

The parameter names follow the official FCMAE (``proj``, ``mask_token``, ``pred``; the decoder blocks
are timm's, named as in the backbone), with the encoder under ``backbone.`` in the backbone's own
layout, so that the pre-training checkpoint loads into every V2 detector and segmentor config through
``init_cfg=dict(type='Pretrained', checkpoint=...)``. Official ``convnextv2_*_1k_224_fcmae.pt`` files
load into this model, decoder included (:func:`convert_fcmae_checkpoint`).

:class:`backbones.engine.reconstruction_hook.FCMAEReconstructionHook` writes reconstruction pictures
during pre-training.
"""
import re

import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from timm.layers import trunc_normal_
from timm.models.convnext import ConvNeXtBlock
from torch import nn

from ..checkpoints.layouts import StateDict, convert_state_dict
from ..checkpoints.layouts.fcmae import DECODER_PREFIXES as FCMAE_DECODER_PREFIXES
from ..checkpoints.loading import load_exactly, open_checkpoint
from ..errors import CheckpointError, UsageError
from .convnext import MASK_STRIDE, ConvNeXt, upsample_mask

PATCH_SIZE = MASK_STRIDE
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# Official decoder block names -> timm's (the GRN of the official dense block is stored as (1, 1, 1, C)).
OFFICIAL_BLOCK_RENAMES = (('.dwconv.', '.conv_dw.'), ('.pwconv1.', '.mlp.fc1.'), ('.pwconv2.', '.mlp.fc2.'),
                          ('.grn.gamma', '.mlp.grn.weight'), ('.grn.beta', '.mlp.grn.bias'))


def patchify(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images -> (N, H / 32, W / 32, 32 * 32 * C) patches, pixels in (row, column, channel)
    order as the official prediction layer emits them."""
    n, c, height, width = images.shape
    h, w = height // PATCH_SIZE, width // PATCH_SIZE
    patches = images.reshape(n, c, h, PATCH_SIZE, w, PATCH_SIZE).permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(n, h, w, PATCH_SIZE * PATCH_SIZE * c)


def unpatchify(patches: torch.Tensor, channels: int) -> torch.Tensor:
    """The inverse of :func:`patchify`."""
    n, h, w, _ = patches.shape
    images = patches.reshape(n, h, w, PATCH_SIZE, PATCH_SIZE, channels).permute(0, 5, 1, 3, 2, 4)
    return images.reshape(n, channels, h * PATCH_SIZE, w * PATCH_SIZE)


def normalise_patches(patches: torch.Tensor) -> torch.Tensor:
    """Each patch to zero mean and unit variance over its pixels (the paper's per-patch targets)."""
    return (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()


@MODELS.register_module()
class FCMAE(BaseModel):
    """Fully convolutional masked autoencoder with a ConvNeXt V2 encoder.

    Registered in mmengine's root ``MODELS``. ``forward(inputs, mode='loss')`` draws a random mask,
    reconstructs and returns ``dict(loss=...)``; ``mode='tensor'`` returns ``(prediction, mask)``.

    Args:
        arch: V2 size (atto ... huge) or ``dict(depths=[...], dims=[...])`` of the encoder.
        mask_ratio: Fraction of the 32x32 patches hidden from the encoder.
        decoder_dim: Width of the decoder.
        decoder_depth: Number of ConvNeXt V2 blocks in the decoder.
        norm_pix_loss: Targets are each patch's pixels normalised to zero mean and unit variance
            (the paper's recipe); False: the pixels as the data preprocessor gives them.
        drop_path_rate: Stochastic depth rate of the encoder.
        in_channels: Number of image channels.
        data_preprocessor: mmengine data preprocessor; by default ImageNet mean/std, BGR to RGB.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH_OR_URL)`` continues from a checkpoint of
            this model or an official FCMAE checkpoint (:func:`convert_fcmae_checkpoint`).
    """

    def __init__(self,
                 arch: str | dict = 'atto',
                 mask_ratio: float = 0.6,
                 decoder_dim: int = 512,
                 decoder_depth: int = 1,
                 norm_pix_loss: bool = True,
                 drop_path_rate: float = 0.0,
                 in_channels: int = 3,
                 data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        if data_preprocessor is None:
            data_preprocessor = dict(type='ImgDataPreprocessor', mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr_to_rgb=True)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if not 0 < mask_ratio < 1:
            raise UsageError(f'mask_ratio must be between 0 and 1 (the paper uses 0.6), got {mask_ratio}.')
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.in_channels = in_channels
        self.backbone = ConvNeXt(arch=arch, version='v2', in_channels=in_channels, out_indices=(3,),
                                 drop_path_rate=drop_path_rate, norm_outputs=False)
        self.proj = nn.Conv2d(self.backbone.dims[-1], decoder_dim, kernel_size=1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))
        self.decoder = nn.Sequential(*(ConvNeXtBlock(decoder_dim, ls_init_value=None, use_grn=True)
                                       for _ in range(decoder_depth)))
        self.pred = nn.Conv2d(decoder_dim, PATCH_SIZE * PATCH_SIZE * in_channels, kernel_size=1)
        for module in [self.proj, *self.decoder.modules(), self.pred]:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def random_mask(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random (N, H / 32, W / 32) bool mask, True where hidden: each image hides the same number
        of patches, ``int(L * (1 - mask_ratio))`` of its L patches staying visible."""
        n, _, height, width = images.shape
        h, w = height // PATCH_SIZE, width // PATCH_SIZE
        noise = torch.rand(n, h * w, generator=generator, device=generator.device if generator else images.device)
        rank = noise.argsort(dim=1).argsort(dim=1)
        return (rank >= int(h * w * (1 - self.mask_ratio))).reshape(n, h, w).to(images.device)

    def predict_patches(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode the visible patches and predict every patch: (N, 32 * 32 * C, H / 32, W / 32)."""
        features = self.backbone(images, mask)[0]
        hidden = mask[:, None]
        x = self.proj(features)
        x = torch.where(hidden, self.mask_token.to(x.dtype), x)
        return self.pred(self.decoder(x))

    def loss(self, images: torch.Tensor, prediction: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the pixels of the hidden patches only.

        Args:
            images: The encoder's input, (N, C, H, W).
            prediction: :meth:`predict_patches` output.
            mask: The mask the prediction was made with, True where hidden.
        """
        target = patchify(images.float())
        if self.norm_pix_loss:
            target = normalise_patches(target)
        per_patch = (prediction.float().permute(0, 2, 3, 1) - target).pow(2).mean(-1)
        return per_patch[mask].mean()

    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Images with their hidden patches replaced by the prediction, in the input's pixel space.

        With ``norm_pix_loss`` the prediction is of normalised patches; it is shown with each true
        patch's mean and variance put back, as MAE-style visualisations do.
        """
        predicted = self.predict_patches(images, mask).float().permute(0, 2, 3, 1)
        if self.norm_pix_loss:
            target = patchify(images.float())
            predicted = predicted * (target.var(-1, keepdim=True) + 1e-6).sqrt() + target.mean(-1, keepdim=True)
        predicted = unpatchify(predicted, self.in_channels)
        hidden = upsample_mask(mask, PATCH_SIZE)[:, None]
        return torch.where(hidden, predicted, images.float())

    def forward(self, inputs: torch.Tensor, data_samples: list | None = None,
                mode: str = 'tensor') -> dict[str, torch.Tensor] | tuple[torch.Tensor, torch.Tensor]:
        """``mode='loss'``: ``dict(loss=...)`` for a random mask; ``mode='tensor'``: ``(prediction,
        mask)``. Images only: ``data_samples`` is ignored (there are no labels)."""
        if mode not in ('loss', 'tensor'):
            raise UsageError(f"FCMAE has no {mode!r} mode (it has no predictions to evaluate): use 'loss' or 'tensor'.")
        mask = self.random_mask(inputs)
        prediction = self.predict_patches(inputs, mask)
        if mode == 'loss':
            return dict(loss=self.loss(inputs, prediction, mask))
        return prediction, mask

    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', checkpoint=...)`` strictly (this model's or the
        official FCMAE layout); any other init_cfg is handled by mmengine."""
        cfg = self.init_cfg
        if not (isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'):
            super().init_weights()
            return
        state_dict, source_format = convert_fcmae_checkpoint(open_checkpoint(cfg['checkpoint']).state_dict)
        load_exactly(self, state_dict, f"{cfg['checkpoint']}, {source_format} format",
                     'the FCMAE arch and decoder_dim/decoder_depth match the checkpoint')
        MMLogger.get_current_instance().info(
            f"Loaded FCMAE weights from {cfg['checkpoint']} ({source_format} format, {len(state_dict)} tensors).")
        self._is_init = True


def convert_fcmae_checkpoint(state_dict: StateDict) -> tuple[StateDict, str]:
    """A whole FCMAE checkpoint (encoder and decoder) in :class:`FCMAE`'s layout, and its format.

    The encoder goes through :func:`backbones.checkpoints.layouts.convert_state_dict` (official sparse layout
    or this model's ``backbone.`` layout); the official decoder's blocks are renamed to timm's and
    their GRN reshaped to (C,).

    Raises:
        CheckpointError: Not an FCMAE checkpoint (no decoder).
    """
    weights = convert_state_dict(state_dict)
    decoder = {k.removeprefix('backbone.'): v for k, v in state_dict.items()
               if k.removeprefix('backbone.').startswith(FCMAE_DECODER_PREFIXES)}
    if not weights.source_format.startswith('fcmae') or not decoder:
        raise CheckpointError(f'Not an FCMAE checkpoint (no decoder; {weights.source_format} format): to start '
                              "pre-training from backbone weights, set model.backbone's weights after building.")
    converted = {f'backbone.{k}': v for k, v in weights.backbone.items()}
    for key, value in decoder.items():
        if re.match(r'decoder\.\d+\.', key):
            for old, new in OFFICIAL_BLOCK_RENAMES:
                key = key.replace(old, new)
            value = value.reshape(-1) if '.grn.' in key else value
        converted[key] = value
    return converted, weights.source_format
