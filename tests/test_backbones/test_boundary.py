"""backbones/boundary.py: the bounded primitives every outside input passes."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from backbones.boundary import (
    DEFAULT_MAX_PIXELS,
    MAX_FILES_VARIABLE,
    PIXELS_VARIABLE,
    cap_from_environment,
    declared_image_size,
    oversized_image,
    parse_json,
    read_regular_file,
    resolve_inside,
    too_many_pixels,
    walk_files,
)
from backbones.errors import DatasetError, UsageError
from tests.helpers import gif_with_frame, limit_address_space, png_declaring, within

HOSTILE_SECONDS = 10  # a hostile case that takes longer has hung: the test fails instead of the run


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'data')


def test_every_regular_file_in_sorted_order(tmp_path) -> None:
    touch(tmp_path / 'b.jpg', tmp_path / 'a' / 'z.txt', tmp_path / 'a' / 'y' / 'x.png')
    assert walk_files(tmp_path) == walk_files(f'{tmp_path}/') == ['a/y/x.png', 'a/z.txt', 'b.jpg']
    assert walk_files(tmp_path / 'b.jpg') == walk_files(tmp_path / 'missing') == []


def test_suffixes_match_in_any_case(tmp_path) -> None:
    touch(*(tmp_path / name for name in ('a.jpg', 'b.JPG', 'c.Jpg', 'd.jpeg', 'e.png', 'f.txt', 'jpg')))
    assert walk_files(tmp_path, ('.jpg', '.PNG')) == ['a.jpg', 'b.JPG', 'c.Jpg', 'e.png']


def test_symlink_loops_end_and_each_real_folder_is_walked_once(tmp_path) -> None:
    touch(tmp_path / 'top.jpg', tmp_path / 'sub' / 'inner.jpg')
    (tmp_path / 'sub' / 'up').symlink_to(tmp_path)  # a loop through the parent
    (tmp_path / 'again').symlink_to(tmp_path)  # two links to the root: a walk that follows both doubles per level
    (tmp_path / 'self').symlink_to('.')
    with within(HOSTILE_SECONDS):
        assert walk_files(tmp_path) == ['sub/inner.jpg', 'top.jpg']


def test_a_linked_folder_is_followed_and_its_files_found_once(tmp_path) -> None:
    data, outside = tmp_path / 'data', tmp_path / 'outside'
    touch(data / 'real' / 'a.jpg', outside / 'b.jpg')
    (data / 'linked').symlink_to(outside)
    (data / 'also_real').symlink_to(data / 'real')  # sorts before 'real', which still keeps its own path
    (outside / 'back').symlink_to(data / 'real')
    assert walk_files(data) == ['linked/b.jpg', 'real/a.jpg']


def test_fifos_and_broken_links_are_left_out_without_blocking(tmp_path) -> None:
    touch(tmp_path / 'good.jpg')
    os.mkfifo(tmp_path / 'fifo.jpg')
    (tmp_path / 'dangling.jpg').symlink_to(tmp_path / 'gone.jpg')
    with within(HOSTILE_SECONDS):
        files = walk_files(tmp_path, ('.jpg',))
        assert [(tmp_path / name).read_bytes() for name in files] == [b'data']  # a FIFO would block here
    assert files == ['good.jpg']


def test_more_entries_than_the_cap_is_one_line_naming_the_folder_cap_and_variable(tmp_path, monkeypatch) -> None:
    touch(*(tmp_path / 'sub' / f'{index}.jpg' for index in range(5)))
    assert len(walk_files(tmp_path, max_entries=6)) == 5  # sub and its 5 files
    with pytest.raises(DatasetError) as error:
        walk_files(tmp_path, max_entries=5)
    assert str(error.value) == (f'{tmp_path} holds more than 5 files and folders (counted through its linked '
                                f'folders): point at a smaller folder, or raise the cap with {MAX_FILES_VARIABLE}=N.')
    monkeypatch.setenv(MAX_FILES_VARIABLE, '3')
    with pytest.raises(DatasetError, match=f'more than 3 .* {MAX_FILES_VARIABLE}=N'):
        walk_files(tmp_path)
    monkeypatch.setenv(MAX_FILES_VARIABLE, 'lots')
    with pytest.raises(UsageError, match=f"^{MAX_FILES_VARIABLE}='lots': set it to a positive number"):
        walk_files(tmp_path)


# ---- read_regular_file, parse_json, cap_from_environment, resolve_inside ----

CASES = {  # what read_regular_file gives for each kind of path, with a cap of 10 bytes
    'regular': '10',
    'over the cap': 'it has more than 10 bytes, the cap for a JSON file; raise it with SETTING',
    'size 0 but not empty': 'it has more than 10 bytes, the cap for a JSON file; raise it with SETTING',
    'fifo': 'it is not a regular file (a device, FIFO or socket)',
    'device': 'it is not a regular file (a device, FIFO or socket)',
    'directory': 'it is a directory, not a JSON file',
    'link loop': 'Too many levels of symbolic links',
}


def test_only_regular_files_are_read_and_their_bytes_are_counted(tmp_path) -> None:
    """A FIFO (open would block), /dev/zero (endless, size 0), a /proc file (size 0, not empty), a folder and a
    link loop each meet read_regular_file: the file's bytes or one line. In one subprocess with a timeout, so that
    a regression that blocks fails the test."""
    paths = [tmp_path / f'{index}.json' for index in range(len(CASES))]
    for path, kind in zip(paths, CASES):
        if kind in ('regular', 'over the cap'):
            path.write_bytes(b'x' * (10 if kind == 'regular' else 11))
        elif kind == 'size 0 but not empty':
            path.symlink_to('/proc/self/maps')  # st_size 0: a cap checked by getsize passes it
            assert path.stat().st_size == 0
        elif kind == 'fifo':
            os.mkfifo(path)
        elif kind == 'device':
            path.symlink_to('/dev/zero')
        elif kind == 'directory':
            path.mkdir()
        else:
            path.symlink_to(tmp_path / 'loop')
            (tmp_path / 'loop').symlink_to(path)
    script = ('import sys; from backbones.boundary import read_regular_file; from backbones.errors import UsageError\n'
              'for path in sys.argv[1:]:\n'
              '    try: print(len(read_regular_file(path, 10, "a JSON file", "SETTING")))\n'
              '    except UsageError as error: print(error)')
    result = subprocess.run([sys.executable, '-c', script, *map(str, paths)], capture_output=True, text=True,
                            timeout=60, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    expected = [outcome if kind == 'regular' else f'{path}: {outcome}.'
                for path, (kind, outcome) in zip(paths, CASES.items())]
    assert result.stdout.splitlines() == expected, result.stderr[-2000:]


def test_a_missing_file_is_left_to_the_caller_and_refusals_are_the_callers_type(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / 'nowhere.json', 10, 'a JSON file')
    (tmp_path / 'big.json').write_bytes(b'x' * (3 << 20))
    with pytest.raises(DatasetError, match=r'^big: it has more than 2 MiB, the cap for a JSON file$'):
        read_regular_file(tmp_path / 'big.json', 2 << 20, 'a JSON file', refuse=lambda reason: DatasetError(
            f'big: {reason}'))
    assert read_regular_file(tmp_path / 'big.json', 3 << 20, 'a JSON file') == b'x' * (3 << 20)


@pytest.mark.parametrize('data, message', [
    (b'{"a": 1' + b'0' * 5000 + b'}', 'Exceeds the limit (4300 digits) for integer string conversion'),
    (b'[' * 100_000 + b']' * 100_000, 'nested deeper than Python parses'),
    (b'{"a": [1, 2,]}', 'Expecting value at line 1, column 13'),
    (b'\xff', 'not UTF-8 text (invalid start byte at byte 0)'),
])
def test_json_that_python_cannot_parse_is_one_value_error_line(data: bytes, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_json(data)
    assert str(error.value) == message


def test_caps_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv('SOME_CAP_MB', raising=False)
    assert cap_from_environment('SOME_CAP_MB', 16) == 16 << 20
    monkeypatch.setenv('SOME_CAP_MB', '0.5')
    assert cap_from_environment('SOME_CAP_MB', 16) == 1 << 19
    for text in ('0', '-1', 'inf', 'nan', 'many'):
        monkeypatch.setenv('SOME_CAP_MB', text)
        with pytest.raises(UsageError, match=f"^SOME_CAP_MB='{text}': set it to a positive number of MiB "
                                             r'\(default 16\), or unset it\.$'):
            cap_from_environment('SOME_CAP_MB', 16)


def test_resolve_inside_follows_links_and_dots_and_keeps_paths_in_their_folder(tmp_path) -> None:
    root, outside = tmp_path / 'root', tmp_path / 'outside'
    (root / 'sub').mkdir(parents=True)
    outside.mkdir()
    (root / 'out_link').symlink_to(outside)
    (root / 'in_link').symlink_to(root / 'sub')
    assert resolve_inside(root / 'in_link' / 'a.png', root, 'the folder') == root / 'sub' / 'a.png'
    assert resolve_inside(root / 'sub' / '..' / 'b.png', root, 'the folder') == root / 'b.png'
    for path, resolved in ((root / 'out_link' / 'a.png', outside / 'a.png'), (root / 'sub' / '..' / '..' / 'b.png',
                                                                              tmp_path / 'b.png')):
        with pytest.raises(UsageError) as error:
            resolve_inside(path, root, 'the folder')
        assert str(error.value) == f'{path}: it resolves to {resolved}, outside the folder {root}.'


# ---- declared_image_size, too_many_pixels, oversized_image ----

def encoded(image_format: str, size: tuple[int, int]) -> bytes:
    stream = io.BytesIO()
    Image.new('RGB', size).save(stream, image_format)
    return stream.getvalue()


@pytest.mark.parametrize('image_format', ['PNG', 'JPEG', 'GIF', 'TIFF', 'WEBP', 'BMP', 'PPM'])
def test_the_declared_size_is_read_from_the_header_of_every_format_a_dataset_holds(image_format, tmp_path) -> None:
    data = encoded(image_format, (37, 21))
    (tmp_path / 'image').write_bytes(data)
    assert declared_image_size(data) == declared_image_size(tmp_path / 'image') == (37, 21)
    assert oversized_image(data) is None
    assert oversized_image(data, max_pixels=37 * 21 - 1) == (
        f'it declares 37x21 pixels, over the cap of {37 * 21 - 1} (raise it with {PIXELS_VARIABLE})')


def test_a_gif_frame_outside_its_screen_counts_with_the_frames_extent() -> None:
    assert declared_image_size(gif_with_frame((10, 10), (0, 0, 4, 4))) == (10, 10)
    assert declared_image_size(gif_with_frame((10, 10), (15990, 3, 10, 16000))) == (16000, 16003)
    assert oversized_image(gif_with_frame((10, 10), (0, 0, 16000, 16000))).startswith('it declares 16000x16000 pixels')


@pytest.mark.parametrize('source', [b'', b'x', b'GIF89a', b'\x89PNG\r\n\x1a\n' + bytes(30), 'missing', 'fifo',
                                    '/dev/zero', 'folder'])
def test_no_readable_header_is_no_size_without_blocking(source, tmp_path) -> None:
    if source in ('missing', 'fifo', 'folder'):
        path = tmp_path / source
        if source == 'fifo':
            os.mkfifo(path)  # opening it blocking would wait for a writer
        elif source == 'folder':
            path.mkdir()
        source = path
    with within(HOSTILE_SECONDS):
        assert declared_image_size(source) is None
        assert oversized_image(source) == 'it is not an image with a readable header'


def test_huge_declared_images_are_refused_before_decoding_in_bounded_memory(tmp_path) -> None:
    """A 30000x30000 PNG and a 16000x16000 GIF of a few bytes each: decoded, gigabytes. The header check
    refuses them under 6 GiB of address space (torch and PIL imported) in milliseconds."""
    (tmp_path / 'big.png').write_bytes(png_declaring(30000, 30000))
    (tmp_path / 'big.gif').write_bytes(gif_with_frame((10, 10), (0, 0, 16000, 16000)))
    script = ('import sys; from backbones.boundary import oversized_image\n'
              'for path in sys.argv[1:]: print(oversized_image(path))')
    result = subprocess.run([sys.executable, '-c', script, str(tmp_path / 'big.png'), str(tmp_path / 'big.gif')],
                            capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=os.getcwd()),
                            preexec_fn=limit_address_space(6 << 30))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        f'it declares 30000x30000 pixels, over the cap of {DEFAULT_MAX_PIXELS} (raise it with {PIXELS_VARIABLE})',
        f'it declares 16000x16000 pixels, over the cap of {DEFAULT_MAX_PIXELS} (raise it with {PIXELS_VARIABLE})']


def test_the_pixel_cap_is_set_by_its_variable(monkeypatch) -> None:
    assert too_many_pixels((10000, 10000)) is None and too_many_pixels((10000, 10001)) is not None
    monkeypatch.setenv(PIXELS_VARIABLE, '1000000000')
    assert too_many_pixels((30000, 30000)) is None
    monkeypatch.setenv(PIXELS_VARIABLE, '-5')
    with pytest.raises(UsageError, match=f"^{PIXELS_VARIABLE}='-5': set it to a positive number of pixels"):
        too_many_pixels((1, 1))
