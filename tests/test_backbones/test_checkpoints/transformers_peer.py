"""transformers, run in a subprocess from its peer folder (transformers beside mmpretrain breaks mmdet: see
requirements/peers/), to make model folders and compute their outputs for the parity tests."""
import os
import subprocess
import sys
from pathlib import Path

import safetensors.torch
import torch

from backbones.patches import peers_dir

WORKER = Path(__file__).with_name('transformers_worker.py')
TRANSFORMERS = os.path.join(peers_dir(), 'transformers')
IMAGE_SIZE = 224


def transformers_env() -> dict[str, str]:
    return {**os.environ, 'PYTHONPATH': os.pathsep.join([TRANSFORMERS, os.getcwd()]), 'HF_HUB_OFFLINE': '1',
            'TRANSFORMERS_VERBOSITY': 'error'}


def run_worker(command: str, folder: Path) -> dict[str, torch.Tensor]:
    result = subprocess.run([sys.executable, str(WORKER), command, str(folder)], env=transformers_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return safetensors.torch.load_file(folder / f'{command}.safetensors')
