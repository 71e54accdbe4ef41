"""backbones/runtime.py: what --resume continues from, and the precision a run uses."""
import pytest
import torch

from backbones.checkpoints.training import find_resume_checkpoint
from backbones.runtime import autocast, cpu_supports_bf16, resolve_precision


def test_resume_finds_the_latest_checkpoint_also_after_a_crash(tmp_path) -> None:
    assert find_resume_checkpoint(str(tmp_path)) is None
    for name in ('epoch_2.pth', 'epoch_10.pth', 'best_coco_bbox_mAP_epoch_3.pth'):
        (tmp_path / name).write_bytes(b'')
    record = tmp_path / 'last_checkpoint'
    record.write_text(str(tmp_path / 'epoch_2.pth'))
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_2.pth')  # what the record names
    for left_by_a_crash in ('', str(tmp_path / 'epoch_')):  # empty, or cut mid-path by an older writer
        record.write_text(left_by_a_crash)
        assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_10.pth')  # newest by number


def test_auto_precision_follows_the_device_and_the_cpu(monkeypatch) -> None:
    assert resolve_precision('auto', 'cuda:0') == 'fp16'
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: native)
        monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: False)
        assert cpu_supports_bf16() is native
        assert resolve_precision('auto', 'cpu') == ('bf16' if native else 'fp32')
    assert resolve_precision('fp32', 'cpu') == 'fp32'
    with pytest.raises(ValueError, match="Unknown precision 'fp8'"):
        resolve_precision('fp8', 'cpu')


def test_autocast_computes_in_the_chosen_precision() -> None:
    layer = torch.nn.Linear(8, 8)
    for precision, dtype in (('fp32', torch.float32), ('bf16', torch.bfloat16)):
        with autocast(precision, 'cpu'):
            assert layer(torch.randn(2, 8)).dtype == dtype
