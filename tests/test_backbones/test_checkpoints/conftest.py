"""Fixtures shared by the checkpoint tests."""
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from .transformers_peer import IMAGE_SIZE, TRANSFORMERS, run_worker


@pytest.fixture(scope='session')
def made(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], torch.Tensor]:
    """transformers' models saved in DIR/NAME, their outputs, and the image they ran on."""
    if not os.path.isdir(TRANSFORMERS):
        pytest.fail(f'transformers is not installed in {TRANSFORMERS}: run make install')
    folder = tmp_path_factory.mktemp('transformers')
    images = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    safetensors.torch.save_file({'images': images}, folder / 'input.safetensors')
    return folder, run_worker('make', folder), images
