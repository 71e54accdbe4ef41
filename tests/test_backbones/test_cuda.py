"""The backbone and the LR-decay constructor on a CUDA GPU, as the recipes train them (AMP, fp16).

Skipped where there is no GPU, as on CI; run them on a GPU machine with
`python -m pytest tests/test_backbones/test_cuda.py`.
"""
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from mmengine.optim import build_optim_wrapper

from backbones import ConvNeXt
from tests.helpers import TINY_ARCH, randomize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


@pytest.fixture(autouse=True)
def _exact_float32() -> Iterator[None]:
    """TF32 matrix products and convolutions would differ from the CPU by about 1e-3."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize('arch, version', [('tiny', 'v1'), ('atto', 'v2')])
def test_features_on_cuda_equal_cpu(arch: str, version: str) -> None:
    backbone = randomize(ConvNeXt(arch=arch, version=version)).eval()
    image = torch.randn(2, 3, 97, 130)
    with torch.no_grad():
        on_cpu = backbone(image)
        on_gpu = backbone.cuda()(image.cuda())
    for cpu_features, gpu_features in zip(on_cpu, on_gpu, strict=True):
        torch.testing.assert_close(gpu_features.cpu(), cpu_features, atol=1e-4, rtol=1e-4)


class _Classifier(torch.nn.Module):
    """A backbone and a head named as in mmdet/mmseg models, which the LR-decay constructor reads."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = ConvNeXt(arch=TINY_ARCH, drop_path_rate=0.1, with_cp=True)
        self.head = torch.nn.Linear(TINY_ARCH['dims'][-1], 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images)[-1].mean((2, 3)))


def test_amp_training_with_layer_decay_and_checkpointing() -> None:
    model = _Classifier().cuda().train()
    optim_wrapper = build_optim_wrapper(model, dict(  # the COCO recipe's wrapper (configs/det/)
        type='AmpOptimWrapper', dtype='float16', loss_scale='dynamic',
        constructor='LRDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6)))
    images = torch.randn(16, 3, 64, 64, device='cuda')
    labels = torch.arange(16, device='cuda') % 4
    losses = []
    for _ in range(40):
        with optim_wrapper.optim_context(model):
            logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
        optim_wrapper.update_params(loss)
        losses.append(loss.item())

    assert logits.dtype == torch.float16  # autocast ran the network in half precision
    assert all(param.dtype == torch.float32 for param in model.parameters())  # master weights stay fp32
    assert torch.isfinite(torch.tensor(losses)).all() and losses[-1] < 0.5 * losses[0], losses
    groups = {group['group_name']: group for group in optim_wrapper.optimizer.param_groups}
    assert groups['layer_0_decay']['lr'] == pytest.approx(1e-3 * 0.7**7)
    assert groups['layer_7_decay']['lr'] == pytest.approx(1e-3)


def test_random_state_loaded_onto_the_gpu_is_put_back() -> None:
    """mmengine's resume loads checkpoints onto the run's device, the random state included."""
    from backbones.engine.randomness import get_random_state, set_random_state

    state = get_random_state()
    drawn = torch.rand(3), torch.rand(3, device='cuda')
    on_gpu = {**state, 'torch': state['torch'].cuda(), 'cuda': [s.cuda() for s in state['cuda']],
              'numpy': {**state['numpy'], 'key': state['numpy']['key'].cuda()}}
    set_random_state(on_gpu)
    assert torch.equal(torch.rand(3), drawn[0]) and torch.equal(torch.rand(3, device='cuda'), drawn[1])
