"""Pictures of what FCMAE reconstructs, written during pre-training."""
import os
import os.path as osp

import cv2
import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

from ..models.convnext import upsample_mask
from ..models.fcmae import PATCH_SIZE


@HOOKS.register_module()
class FCMAEReconstructionHook(Hook):
    """Writes a reconstruction grid (input, masked input, reconstruction; one row per image) as a PNG
    every ``interval`` training iterations and after the last, to ``WORK_DIR/reconstructions/``.

    The images are the first of the current batch; the mask comes from a generator of its own, so the
    pictures do not change the training run's random numbers.

    Args:
        interval: Iterations between pictures.
        num_images: Rows of the grid (at most the batch size).
        seed: Seed of the masks drawn for the pictures.
    """

    priority = 'LOW'

    def __init__(self, interval: int = 5000, num_images: int = 4, seed: int = 0) -> None:
        self.interval = interval
        self.num_images = num_images
        self.seed = seed

    def after_train_iter(self, runner, batch_idx: int, data_batch: dict | None = None, outputs=None) -> None:
        if runner.rank != 0 or not (self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner)):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        batch = dict(data_batch, inputs=data_batch['inputs'][:self.num_images])
        was_training = model.training
        model.eval()
        with torch.no_grad():
            images = model.data_preprocessor(batch, False)['inputs']
            mask = model.random_mask(images, torch.Generator(images.device).manual_seed(self.seed))
            reconstruction = model.reconstruct(images, mask)
        model.train(was_training)
        masked = images.masked_fill(upsample_mask(mask, PATCH_SIZE)[:, None], float('nan'))
        path = osp.join(runner.work_dir, 'reconstructions', f'iter_{runner.iter + 1}.png')
        write_grid(path, [images, masked, reconstruction], model.data_preprocessor)
        runner.logger.info(f'Wrote the FCMAE reconstructions to {path}')


def write_grid(path: str, columns: list[torch.Tensor], preprocessor: nn.Module) -> None:
    """Write images side by side, one row per image; NaN pixels (hidden patches) are grey.

    Args:
        path: The PNG to write.
        columns: Batches of normalised (N, 3, H, W) images, one per column.
        preprocessor: The data preprocessor that normalised them (its ``mean``/``std`` are undone).
    """
    rows = []
    for images in columns:
        pixels = images.float() * preprocessor.std.float() + preprocessor.mean.float()
        pixels = torch.nan_to_num(pixels, nan=128.0).clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
        rows.append(np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=255) for p in pixels]))
    os.makedirs(osp.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.concatenate(rows, axis=1)[..., ::-1])  # RGB -> BGR
