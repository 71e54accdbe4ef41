"""tools/demo_data.py: it generates into a new or empty folder, or over its own earlier data; the user's files are
never deleted or overwritten."""
import json
import runpy
import sys
from pathlib import Path

import pytest

from backbones.runtime.demo_data import demo_files


def demo_data(monkeypatch: pytest.MonkeyPatch, out: Path, *args: str) -> None:
    monkeypatch.setattr(sys, 'argv', ['tools/demo_data.py', '--out', str(out), '--num-train', '2', '--num-val', '1',
                                      '--size', '32', *args])
    runpy.run_path('tools/demo_data.py', run_name='__main__')


def files_under(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob('*') if not path.is_dir())


def test_it_regenerates_its_own_folder_only(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / 'demo'
    demo_data(monkeypatch, out)
    demo_data(monkeypatch, out)
    assert capsys.readouterr().out == f'generated: {out}\nalready present: {out}\n'
    assert files_under(out) == sorted(demo_files(2, 1))
    demo_data(monkeypatch, out, '--num-train', '1', '--seed', '1')  # its own folder, other settings: made again
    assert files_under(out) == sorted(demo_files(1, 1))
    assert json.loads((out / 'settings.json').read_text())['seed'] == 1

    (out / 'coco' / 'mine.txt').write_text('mine')
    user = tmp_path / 'user'
    user.mkdir()
    (user / 'photos').mkdir()
    (user / 'settings.json').write_text('{"theme": "dark"}')
    (tmp_path / 'file').write_text('mine')
    cases = [(out, f'{out}: holds coco/mine.txt (1 entries in all) that the demo data generator did not make, and '
                   'it deletes nothing else. Give --out a new or empty folder.'),
             (user, f"{user}/settings.json: not the demo data's stamp. Give another --out."),
             (tmp_path / 'file', f'{tmp_path}/file: not a folder. Give --out a new or empty folder for the demo data.')]
    for folder, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            demo_data(monkeypatch, folder, '--seed', '2')
        assert exit_info.value.code == f'error: {message}'
    assert (out / 'coco' / 'mine.txt').read_text() == 'mine' and files_under(out) == sorted(
        demo_files(1, 1) | {'coco/mine.txt'})
    assert files_under(user) == ['settings.json'] and (tmp_path / 'file').read_text() == 'mine'
