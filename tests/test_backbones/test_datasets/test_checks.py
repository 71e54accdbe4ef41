"""backbones/datasets/checks.py: every bad item of a COCO or label-map dataset, by kind of problem."""
import contextlib
import json
import os
import subprocess
import sys
import unittest.mock
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from backbones.boundary import PIXELS_VARIABLE
from backbones.datasets import checks
from backbones.datasets.checks import DatasetError, check_coco, check_label_maps, read_json
from backbones.errors import DatasetNotFoundError, UsageError
from tests.helpers import png_declaring

SIZE = 16


def write_image(path: Path, size: tuple[int, int] = (SIZE, SIZE), fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def write_label(path: Path, values: np.ndarray | int, size: tuple[int, int] = (SIZE, SIZE),
                dtype: type = np.uint8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.broadcast_to(np.asarray(values, dtype), (size[1], size[0])).copy()).save(path)


@contextlib.contextmanager
def monkeypatch_decoding(decoded: list[str]) -> Iterator[None]:
    """Record the name of every file Pillow loads (decodes) in the block."""
    load = ImageFile.ImageFile.load

    def recorded(image: ImageFile.ImageFile) -> Any:
        decoded.append(Path(getattr(image.fp, 'name', '?')).name)
        return load(image)
    with unittest.mock.patch.object(ImageFile.ImageFile, 'load', recorded):
        yield


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def damage(path: Path, how: str) -> None:
    """Make an image unreadable: text under its name, or its first half only."""
    if how == 'text':
        path.write_text('not an image, whatever its name says')
    else:
        truncate(path)


def image_entry(image_id: int, file_name: str, width: Any = SIZE, height: Any = SIZE) -> dict:
    return dict(id=image_id, file_name=file_name, width=width, height=height)


def box_ann(ann_id: int, image_id: int, **fields: Any) -> dict:
    return dict(id=ann_id, image_id=image_id, category_id=1, bbox=[2, 2, 8, 8], area=64, iscrowd=0,
                segmentation=[[2, 2, 10, 2, 10, 10]]) | fields


def coco_set(root: Path, annotations: list[dict] | None = None, images: list[dict] | None = None,
             drop: str | None = None, **top: Any) -> tuple[str, str]:
    """A COCO split under ``root``: the images a.jpg, sub/b.jpg and c.jpg (unannotated) on disk, and its
    annotation file, with ``top`` replacing top-level keys and without the key ``drop``; returns
    (annotation file, image root)."""
    images = images if images is not None else [image_entry(1, 'a.jpg'), image_entry(2, 'sub/b.jpg'),
                                                 image_entry(3, 'c.jpg')]
    for name in ('a.jpg', 'sub/b.jpg', 'c.jpg'):
        write_image(root / 'images' / name)
    annotations = annotations if annotations is not None else [box_ann(1, 1), box_ann(2, 2), box_ann(3, 2)]
    data = dict(images=images, annotations=annotations, categories=[dict(id=1, name='thing')]) | top
    ann_file = root / 'annotations' / 'train.json'
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps({key: value for key, value in data.items() if key != drop}))
    return str(ann_file), str(root / 'images')


def check(root: Path, annotations: list[dict] | None = None, images: list[dict] | None = None,
          open_images: bool = False) -> checks.DatasetReport:
    ann_file, image_root = coco_set(root, annotations, images)
    return check_coco(ann_file, image_root, 'train', open_images=open_images, workers=2)


def test_a_clean_coco_set_is_ok_with_only_the_summary_line(tmp_path) -> None:
    calls = []
    ann_file, image_root = coco_set(tmp_path)
    report = check_coco(ann_file, image_root, 'train', open_images=True, workers=2,
                        progress=lambda done, total: calls.append((done, total)))
    assert report.ok()
    assert report.problems == {} and report.bad_images == set()
    assert (report.split, report.source, report.num_images, report.num_unannotated) == ('train', ann_file, 3, 1)
    assert report.lines() == [f'train ({ann_file}): 3 images, 1 without annotations']
    assert calls[-1] == (3, 3) and [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_missing_images_are_named_by_file_name(tmp_path) -> None:
    ann_file, image_root = coco_set(tmp_path)
    (tmp_path / 'images' / 'sub' / 'b.jpg').unlink()
    (tmp_path / 'images' / 'c.jpg').unlink()
    report = check_coco(ann_file, image_root, 'train', open_images=False)
    assert report.problems == {checks.MISSING_IMAGE: ['sub/b.jpg', 'c.jpg']}
    assert report.bad_images == {'sub/b.jpg', 'c.jpg'}
    assert not report.ok()


@pytest.mark.parametrize('how', ['text', 'truncated'])
def test_text_and_truncated_jpegs_are_unreadable_by_their_header_without_opening_images(tmp_path, how: str) -> None:
    ann_file, image_root = coco_set(tmp_path)
    damage(tmp_path / 'images' / 'sub' / 'b.jpg', how)
    report = check_coco(ann_file, image_root, 'train', open_images=True, workers=2)
    assert report.problems == {checks.UNREADABLE_IMAGE: ['sub/b.jpg']}
    assert report.bad_images == {'sub/b.jpg'}
    # Without decoding, the header is read: a 16x16 JPEG's first half ends before its frame header.
    assert check_coco(ann_file, image_root, 'train', open_images=False).problems == report.problems


@pytest.mark.parametrize('open_images', [False, True])
def test_images_over_the_pixel_cap_are_refused_by_their_header_before_decoding(tmp_path, open_images) -> None:
    """A 30000x30000 PNG of a hundred bytes decodes to 2.7 GB: every image's header is read, never decoded
    past the cap, with or without opening images; --skip-bad leaves it out."""
    ann_file, image_root = coco_set(tmp_path, images=[image_entry(1, 'a.jpg'), image_entry(2, 'big.png', 30000, 30000),
                                                      image_entry(3, 'c.jpg')])
    (tmp_path / 'images' / 'big.png').write_bytes(png_declaring(30000, 30000))
    decoded = []
    with monkeypatch_decoding(decoded):
        report = check_coco(ann_file, image_root, 'train', open_images=open_images, workers=2)
    assert report.problems == {checks.OVERSIZED_IMAGE: ['big.png (30000x30000)']}
    assert report.bad_images == {'big.png'}
    assert 'big.png' not in decoded and ('a.jpg' in decoded) == open_images  # the others are decoded when opened
    assert report.lines()[1].endswith(f'1 {checks.OVERSIZED_IMAGE}, e.g. big.png (30000x30000)')


def test_images_are_decoded_under_pillows_setting_which_the_check_leaves_alone(tmp_path, monkeypatch) -> None:
    # LOAD_TRUNCATED_IMAGES is one global that every thread reads, the caller's too: a process that set it True
    # has asked Pillow to read truncated files (padded), and the check reads them so.
    ann_file, image_root = coco_set(tmp_path, images=[image_entry(1, 'a.jpg'), image_entry(2, 'sub/b.jpg', 64, 64),
                                                      image_entry(3, 'c.jpg')])
    write_image(tmp_path / 'images' / 'sub' / 'b.jpg', (64, 64))  # its half lacks pixels only (16x16's, headers)
    truncate(tmp_path / 'images' / 'sub' / 'b.jpg')
    assert check_coco(ann_file, image_root, 'train', open_images=True).problems == {
        checks.UNREADABLE_IMAGE: ['sub/b.jpg']}  # under Pillow's default
    monkeypatch.setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', True)
    seen, open_image = [], Image.open
    monkeypatch.setattr(Image, 'open', lambda *args: seen.append(ImageFile.LOAD_TRUNCATED_IMAGES) or open_image(*args))
    assert check_coco(ann_file, image_root, 'train', open_images=True, workers=2).ok()
    assert seen == [True] * 3


@pytest.mark.parametrize('open_images', [False, True])
def test_an_image_of_another_size_than_the_file_says_by_its_header(tmp_path, open_images: bool) -> None:
    images = [image_entry(1, 'a.jpg', width=20), image_entry(2, 'sub/b.jpg'), image_entry(3, 'c.jpg')]
    report = check(tmp_path, images=images, open_images=open_images)
    assert report.problems == {checks.SIZE_MISMATCH: ['a.jpg (16x16 on disk, 20x16 in the file)']}
    assert report.bad_images == {'a.jpg'}


def test_images_without_a_positive_width_and_height(tmp_path) -> None:
    images = [dict(id=1, file_name='a.jpg', height=SIZE), image_entry(2, 'sub/b.jpg', height=0),
              image_entry(3, 'c.jpg')]
    report = check(tmp_path, images=images)
    assert report.problems == {checks.BAD_IMAGE_SIZE: ['a.jpg', 'sub/b.jpg']}
    assert report.bad_images == {'a.jpg', 'sub/b.jpg'}


def test_annotations_of_unknown_images_name_the_image_id_and_drop_no_image(tmp_path) -> None:
    report = check(tmp_path, annotations=[box_ann(1, 1), box_ann(7, 99)])
    assert report.problems == {checks.UNKNOWN_IMAGE: ['ann id 7 (image id 99)']}
    assert report.bad_images == set()
    assert report.num_unannotated == 2


def test_annotations_of_unknown_categories(tmp_path) -> None:
    report = check(tmp_path, annotations=[box_ann(1, 1), box_ann(2, 2, category_id=5),
                                          box_ann(3, 2, category_id=None)])
    assert report.problems == {checks.UNKNOWN_CATEGORY: ['ann id 2 (image sub/b.jpg)', 'ann id 3 (image sub/b.jpg)']}
    assert report.bad_images == {'sub/b.jpg'}


@pytest.mark.parametrize('box', [None, [1, 2, 3], [0, 0, 0, 5], [0, 0, 5, -1], ['0', 0, 5, 5], [0, 0, True, 5],
                                 [0, 0, float('inf'), 5], [0, 0, 5, float('nan')], [0, 0, 10**400, 5], [[0], 0, 5, 5]])
def test_boxes_that_are_missing_malformed_or_of_no_size(tmp_path, box: list | None) -> None:
    bad = box_ann(2, 2, bbox=box)
    if box is None:
        del bad['bbox']
    report = check(tmp_path, annotations=[box_ann(1, 1), bad])
    assert report.problems == {checks.BAD_BOX: ['ann id 2 (image sub/b.jpg)']}
    assert report.bad_images == {'sub/b.jpg'}


def test_boxes_outside_the_image_beyond_one_pixel(tmp_path) -> None:
    report = check(tmp_path, annotations=[box_ann(1, 1, bbox=[-0.5, -1, SIZE + 1.5, SIZE + 1]),
                                          box_ann(2, 2, bbox=[10, 10, 7.5, 2]), box_ann(3, 3, bbox=[-2, 0, 4, 4])])
    assert report.problems == {checks.OUTSIDE_BOX: ['ann id 2 (image sub/b.jpg)', 'ann id 3 (image c.jpg)']}
    assert report.bad_images == {'sub/b.jpg', 'c.jpg'}


def test_polygons_of_fewer_than_three_points_or_odd_coordinates(tmp_path) -> None:
    report = check(tmp_path, annotations=[box_ann(1, 1, segmentation=[[0, 0, 4, 4]]),
                                          box_ann(2, 2, segmentation=[[2, 2, 10, 2, 10, 10], [1, 2, 3, 4, 5, 6, 7]]),
                                          box_ann(3, 2)])
    assert report.problems == {checks.BAD_POLYGON: ['ann id 1 (image a.jpg)', 'ann id 2 (image sub/b.jpg)']}


def test_polygons_of_values_that_are_not_finite_numbers_within_float32(tmp_path) -> None:
    """Python's JSON reads 1e400 as infinity and NaN as NaN; a 400-digit integer overflows mmdet's float32 arrays."""
    polygon = [2, 2, 10, 2, 10, 10]
    report = check(tmp_path, annotations=[box_ann(1, 1, segmentation=[polygon[:5] + [float('nan')]]),
                                          box_ann(2, 2, segmentation=[polygon[:5] + [10**400]]),
                                          box_ann(3, 3, segmentation=[polygon[:5] + [[[10]]]]),
                                          box_ann(4, 3, area=float('inf'))])
    assert report.problems == {checks.BAD_POLYGON: ['ann id 1 (image a.jpg)', 'ann id 2 (image sub/b.jpg)',
                                                    'ann id 3 (image c.jpg)'],
                               checks.MISSING_AREA: ['ann id 4 (image c.jpg)']}


def test_nan_huge_and_nested_numbers_in_the_json_text_are_bad_items_not_tracebacks(tmp_path) -> None:
    """The same through the file: the text holds what Python's JSON module reads as infinity, NaN and a 400-digit
    integer, and a nested list where a width belongs."""
    ann_file, image_root = coco_set(tmp_path)
    text = Path(ann_file).read_text()
    data = json.loads(text)
    data['annotations'][0]['bbox'] = ['INF', 0, 5, 5]
    data['annotations'][1]['bbox'] = [0, 0, 'NAN', 5]
    data['annotations'][2]['area'] = 'BIG'
    data['images'][2]['width'] = [[16]]
    text = json.dumps(data).replace('"INF"', '1e400').replace('"NAN"', 'NaN').replace('"BIG"', '9' * 400)
    Path(ann_file).write_text(text)
    report = check_coco(ann_file, image_root, 'train', open_images=False, workers=2)
    assert report.problems == {checks.BAD_IMAGE_SIZE: ['c.jpg'],
                               checks.BAD_BOX: ['ann id 1 (image a.jpg)', 'ann id 2 (image sub/b.jpg)'],
                               checks.MISSING_AREA: ['ann id 3 (image sub/b.jpg)']}


@pytest.mark.parametrize('rle', [dict(counts='PPYo0', size=[100000, 100000]), dict(counts='PPYo0', size=[SIZE]),
                                 dict(counts=[1, 2.5], size=[SIZE, SIZE]), dict(counts={'a': 1}, size=[SIZE, SIZE]),
                                 dict(counts=[-1], size=[SIZE, SIZE]), dict(size=[SIZE, SIZE]), 'PPYo0'])
def test_rle_segmentations_must_have_the_images_size_and_counts_pycocotools_reads(tmp_path, rle: Any) -> None:
    """pycocotools allocates height x width bytes from an RLE's size: 10 GB for [100000, 100000]."""
    report = check(tmp_path, annotations=[box_ann(1, 1, iscrowd=1, segmentation=rle), box_ann(2, 2)])
    assert report.problems == {checks.BAD_RLE: ['ann id 1 (image a.jpg)']}
    assert report.bad_images == {'a.jpg'}


def test_empty_or_missing_segmentations_but_not_rle_crowds(tmp_path) -> None:
    # Every config trains masks: a box-only annotation would fail in mmdet's mask loading (KeyError: 'mask').
    crowd = box_ann(3, 2, iscrowd=1, segmentation=dict(counts='PPYo0', size=[SIZE, SIZE]))
    box_only = box_ann(4, 3)
    del box_only['segmentation']
    no_area = box_ann(5, 2)
    del no_area['area']
    report = check(tmp_path, annotations=[box_ann(1, 1, segmentation=[]), box_ann(2, 2, segmentation=[[], []]),
                                          crowd, box_only, no_area])
    assert report.problems == {
        checks.EMPTY_MASK: ['ann id 1 (image a.jpg)', 'ann id 2 (image sub/b.jpg)', 'ann id 4 (image c.jpg)'],
        checks.MISSING_AREA: ['ann id 5 (image sub/b.jpg)']}
    assert report.num_unannotated == 0


def test_one_annotation_can_have_several_kinds_of_problem(tmp_path) -> None:
    report = check(tmp_path, annotations=[box_ann(1, 1, category_id=9, bbox=[0, 0, 0, 0], segmentation=[])])
    assert report.problems == {kind: ['ann id 1 (image a.jpg)']
                               for kind in (checks.UNKNOWN_CATEGORY, checks.BAD_BOX, checks.EMPTY_MASK)}


def test_lines_are_one_per_kind_with_the_count_and_the_first_examples(tmp_path) -> None:
    names = [f'{i}.jpg' for i in range(5)]
    images = [image_entry(i + 10, name) for i, name in enumerate(names)] + [image_entry(1, 'a.jpg')]
    annotations = [box_ann(1, 1, category_id=2), box_ann(2, 99)]
    ann_file, image_root = coco_set(tmp_path, annotations, images)
    report = check_coco(ann_file, image_root, 'val', open_images=False)
    assert report.lines() == [
        f'val ({ann_file}): 6 images, 5 without annotations',
        f'val ({ann_file}): 5 images missing on disk, e.g. 0.jpg, 1.jpg, 2.jpg',
        f'val ({ann_file}): 1 annotations of unknown images, e.g. ann id 2 (image id 99)',
        f'val ({ann_file}): 1 annotations of unknown categories, e.g. ann id 1 (image a.jpg)',
    ]
    assert report.lines(examples=1)[1] == f'val ({ann_file}): 5 images missing on disk, e.g. 0.jpg'
    assert report.problems[checks.MISSING_IMAGE] == names


def test_invalid_json_names_the_file_and_the_line(tmp_path) -> None:
    path = tmp_path / 'train.json'
    path.write_text('{\n  "images": [],\n  "annotations": [,]\n}')
    with pytest.raises(DatasetError, match=r'train\.json is not valid JSON: .* at line 3, column 19') as error:
        read_json(str(path))
    assert '\n' not in str(error.value)
    with pytest.raises(DatasetError, match='train.json is not valid JSON'):
        check_coco(str(path), str(tmp_path), 'train', open_images=False)


def test_a_missing_file_or_a_top_level_that_is_not_an_object(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match='nowhere.json does not exist'):
        read_json(str(tmp_path / 'nowhere.json'))
    (tmp_path / 'list.json').write_text('[1, 2]')
    with pytest.raises(DatasetError, match='list.json holds a JSON list, not an object'):
        read_json(str(tmp_path / 'list.json'))
    (tmp_path / 'ok.json').write_text('{"a": 1}')
    assert read_json(str(tmp_path / 'ok.json')) == {'a': 1}



@pytest.mark.parametrize('content, problem', [
    ('{"images": [{"id": 1' + '0' * 5000 + '}]}', 'Exceeds the limit (4300 digits) for integer string conversion'),
    ('{"images": ' + '[' * 100_000 + ']' * 100_000 + '}', 'nested deeper than Python parses'),
    ('{"images": "\xff"}'.encode('latin1'), 'not UTF-8 text (invalid start byte at byte 12)'),
])
def test_json_that_python_cannot_parse_is_one_line(tmp_path, content: str | bytes, problem: str) -> None:
    """Huge or deeply nested numbers and lists, and bytes that are not UTF-8: one DatasetError line each."""
    path = tmp_path / 'train.json'
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DatasetError) as error:
        check_coco(str(path), str(tmp_path), 'train', open_images=False)
    assert str(error.value) == f'{path} is not valid JSON: {problem}; fix the file there or export it again.'


def test_json_is_capped_while_read_and_the_cap_is_a_setting(tmp_path, monkeypatch) -> None:
    path = tmp_path / 'train.json'
    path.write_text(json.dumps({'images': [], 'pad': 'x' * 2000}))
    monkeypatch.setenv('CONVNEXT_DENSE_MAX_JSON_MB', '0.001')  # 1048 bytes
    with pytest.raises(DatasetError) as error:
        read_json(str(path))
    assert str(error.value) == (f'{path}: it has more than 1048 bytes, the cap for a JSON file; raise it with '
                                'CONVNEXT_DENSE_MAX_JSON_MB.')
    monkeypatch.setenv('CONVNEXT_DENSE_MAX_JSON_MB', '0.01')
    assert read_json(str(path))['images'] == []
    monkeypatch.setenv('CONVNEXT_DENSE_MAX_JSON_MB', 'lots')
    with pytest.raises(UsageError, match=r"^CONVNEXT_DENSE_MAX_JSON_MB='lots': set it to a positive number of MiB "
                                         r'\(default 2048\), or unset it\.$'):
        read_json(str(path))


def test_an_annotation_file_that_is_not_a_regular_file_is_one_line(tmp_path) -> None:
    """A FIFO would block the reader in open(), /dev/zero never ends: in a subprocess, so a hang fails the test."""
    fifo, device, folder = (tmp_path / f'{kind}.json' for kind in ('fifo', 'device', 'folder'))
    os.mkfifo(fifo)
    device.symlink_to('/dev/zero')
    folder.mkdir()
    script = ('import sys; from backbones.datasets.checks import DatasetError, check_coco\n'
              'for path in sys.argv[2:]:\n'
              '    try: check_coco(path, sys.argv[1], "train", open_images=False)\n'
              '    except DatasetError as error: print(error)')
    result = subprocess.run([sys.executable, '-c', script, str(tmp_path), str(fifo), str(device), str(folder)],
                            capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert result.stdout.splitlines() == [f'{fifo}: it is not a regular file (a device, FIFO or socket).',
                                          f'{device}: it is not a regular file (a device, FIFO or socket).',
                                          f'{folder}: it is a directory, not a JSON file.'], result.stderr[-2000:]

@pytest.mark.parametrize(('top', 'message'), [
    (dict(drop='images'), "'images' has none"),
    (dict(images={}), "'images' holds a JSON dict"),
    (dict(images=[]), 'holds no images: an empty split'),
    (dict(drop='annotations'), "'annotations' has none"),
    (dict(annotations=dict(a=1)), "'annotations' holds a JSON dict"),
    (dict(drop='categories'), "'categories' has none"),
])
def test_files_without_the_coco_lists_or_without_images_are_one_line_errors(tmp_path, top: dict,
                                                                             message: str) -> None:
    ann_file, image_root = coco_set(tmp_path, **top)
    with pytest.raises(DatasetError, match=message) as error:
        check_coco(ann_file, image_root, 'train', open_images=False)
    assert ann_file in str(error.value) and '\n' not in str(error.value)


def test_an_empty_annotation_list_is_fine(tmp_path) -> None:
    report = check(tmp_path, annotations=[])
    assert report.ok() and report.num_unannotated == 3


def test_image_entries_without_an_id_or_file_name_are_an_error(tmp_path) -> None:
    with pytest.raises(DatasetError, match=r"images\[1\] has no 'id' and 'file_name'"):
        check(tmp_path, images=[image_entry(1, 'a.jpg'), dict(id=2, width=SIZE, height=SIZE)])


def test_a_coco_size_annotation_list_is_checked_without_opening_images(tmp_path) -> None:
    images = [image_entry(i, f'{i}.jpg') for i in range(1, 2001)]
    annotations = [box_ann(i, i % 2000 + 1, bbox=[1, 1, 4, 4]) for i in range(200_000)]
    annotations[1234]['bbox'] = [1, 1, 0, 4]
    ann_file, image_root = coco_set(tmp_path, annotations, images)
    report = check_coco(ann_file, image_root, 'train', open_images=False)
    assert report.problems[checks.BAD_BOX] == ['ann id 1234 (image 1235.jpg)']
    assert len(report.problems[checks.MISSING_IMAGE]) == 2000
    assert report.num_images == 2000 and report.num_unannotated == 0


def seg_set(root: Path, labels: dict[str, np.ndarray | int] | None = None) -> tuple[str, str]:
    """Images a.jpg and sub/b.jpg with label maps a.png and sub/b.png (``labels`` replaces their values);
    returns (image folder, label folder)."""
    labels = {'a': 1, 'sub/b': np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 3} | (labels or {})
    for stem, values in labels.items():
        write_image(root / 'images' / f'{stem}.jpg')
        write_label(root / 'labels' / f'{stem}.png', values)
    (root / 'images' / 'notes.txt').write_text('not an image')
    return str(root / 'images'), str(root / 'labels')


def check_seg(image_dir: str, label_dir: str, num_classes: int = 3, reduce_zero_label: bool = False,
              **kwargs: Any) -> checks.DatasetReport:
    return check_label_maps(image_dir, label_dir, 'val', '.jpg', '.png', num_classes, reduce_zero_label,
                            workers=2, **kwargs)


def test_a_clean_label_map_set_is_ok_with_only_the_summary_line(tmp_path) -> None:
    image_dir, label_dir = seg_set(tmp_path, {'c': 255})
    calls = []
    report = check_seg(image_dir, label_dir, progress=lambda done, total: calls.append((done, total)))
    assert report.ok() and report.bad_images == set()
    assert (report.split, report.source, report.num_images) == ('val', label_dir, 3)
    assert report.lines() == [f'val ({label_dir}): 3 images']
    assert calls[-1] == (3, 3)


def test_missing_label_maps_are_named_and_their_image_stems_dropped(tmp_path) -> None:
    image_dir, label_dir = seg_set(tmp_path)
    (tmp_path / 'labels' / 'sub' / 'b.png').unlink()
    report = check_seg(image_dir, label_dir)
    assert report.problems == {checks.MISSING_LABEL: ['sub/b.png']}
    assert report.bad_images == {'sub/b'}


def test_rgb_jpeg_and_unreadable_label_maps_are_bad_formats(tmp_path) -> None:
    image_dir, label_dir = seg_set(tmp_path)
    write_image(tmp_path / 'labels' / 'a.png')
    write_image(tmp_path / 'images' / 'c.jpg')
    Image.fromarray(np.ones((SIZE, SIZE), np.uint8)).save(tmp_path / 'labels' / 'c.png', format='JPEG')
    truncate(tmp_path / 'labels' / 'sub' / 'b.png')
    report = check_seg(image_dir, label_dir)
    assert report.problems == {checks.BAD_LABEL_FORMAT: ['a.png (PNG RGB)', 'c.png (JPEG L)', 'sub/b.png (unreadable)']}
    assert report.bad_images == {'a', 'c', 'sub/b'}


def test_label_maps_of_another_size_than_their_image(tmp_path) -> None:
    image_dir, label_dir = seg_set(tmp_path)
    write_label(tmp_path / 'labels' / 'a.png', 1, size=(SIZE, SIZE + 4))
    report = check_seg(image_dir, label_dir)
    assert report.problems == {checks.LABEL_SIZE: ['a.png (16x20, image 16x16)']}
    assert report.bad_images == {'a'}


def test_label_values_that_are_neither_a_class_nor_the_ignore_value(tmp_path) -> None:
    image_dir, label_dir = seg_set(tmp_path, {'a': np.array([0, 7, 9, 255] * (SIZE * SIZE // 4)).reshape(SIZE, SIZE)})
    report = check_seg(image_dir, label_dir, num_classes=5)
    assert report.problems == {checks.BAD_LABEL_VALUE: ['a.png (values 7, 9)']}
    assert report.bad_images == {'a'}
    assert check_seg(image_dir, label_dir, num_classes=10).ok()


def test_reduce_zero_label_makes_the_classes_one_to_num_classes(tmp_path) -> None:
    image_dir, label_dir = seg_set(tmp_path, {'a': 3, 'sub/b': 0, 'c': 255})
    assert check_seg(image_dir, label_dir, num_classes=3, reduce_zero_label=True).ok()
    assert check_seg(image_dir, label_dir, num_classes=3).problems == {checks.BAD_LABEL_VALUE: ['a.png (values 3)']}
    report = check_seg(image_dir, label_dir, num_classes=2, reduce_zero_label=True, ignore_index=254)
    assert report.problems == {checks.BAD_LABEL_VALUE: ['a.png (values 3)', 'c.png (values 255)']}


def test_linked_image_folders_are_checked_once_without_loops_or_fifos(tmp_path) -> None:
    image_dir, label_dir = seg_set(tmp_path / 'data')
    write_image(tmp_path / 'outside' / 'c.jpg')
    write_label(Path(label_dir) / 'linked' / 'c.png', 1)
    (Path(image_dir) / 'linked').symlink_to(tmp_path / 'outside')
    (Path(image_dir) / 'sub' / 'up').symlink_to(image_dir)  # a loop
    (Path(image_dir) / 'again').symlink_to(image_dir)
    os.mkfifo(Path(image_dir) / 'fifo.jpg')  # decoding it would block a worker thread: run where a timeout ends it
    script = ('import sys; from backbones.datasets.checks import check_label_maps\n'
              'report = check_label_maps(*sys.argv[1:3], "val", ".jpg", ".png", 3, False, workers=2)\n'
              'print(report.lines())')
    result = subprocess.run([sys.executable, '-c', script, image_dir, label_dir], capture_output=True, text=True,
                            timeout=60, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert (result.returncode, result.stdout) == (0, f"['val ({label_dir}): 3 images']\n"), result.stderr[-2000:]


def test_16_bit_label_maps_with_values_above_255_would_wrap(tmp_path) -> None:
    image_dir, label_dir = seg_set(tmp_path)
    write_label(tmp_path / 'labels' / 'a.png', np.array([1, 300] * (SIZE * SIZE // 2)).reshape(SIZE, SIZE),
                dtype=np.uint16)
    report = check_seg(image_dir, label_dir, num_classes=3)
    assert report.problems == {checks.BAD_LABEL_VALUE: ['a.png (values 300)'],
                               checks.LABEL_OVER_255: ['a.png (values 300)']}
    assert check_seg(image_dir, label_dir, num_classes=400).problems == {checks.LABEL_OVER_255: ['a.png (values 300)']}


def test_16_bit_label_maps_with_small_valid_values_are_fine(tmp_path) -> None:
    image_dir, label_dir = seg_set(tmp_path)
    write_label(tmp_path / 'labels' / 'a.png', np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 3, dtype=np.uint16)
    assert Image.open(tmp_path / 'labels' / 'a.png').mode == 'I;16'
    assert check_seg(image_dir, label_dir).ok()


@pytest.mark.parametrize('how', ['text', 'truncated'])
def test_unreadable_images_of_a_label_map_set_also_by_their_header_alone(tmp_path, how: str) -> None:
    image_dir, label_dir = seg_set(tmp_path)
    damage(tmp_path / 'images' / 'sub' / 'b.jpg', how)
    report = check_seg(image_dir, label_dir)
    assert report.problems == {checks.UNREADABLE_IMAGE: ['sub/b.jpg']}
    assert report.bad_images == {'sub/b'}
    assert check_seg(image_dir, label_dir, open_images=False).problems == report.problems  # the header is cut too


def test_images_and_16_bit_label_maps_over_the_pixel_cap_are_refused_before_decoding(tmp_path, monkeypatch) -> None:
    """A 13000x13000 16-bit label map decodes to 338 MB, and the check decodes every label map it reads."""
    image_dir, label_dir = seg_set(tmp_path)
    (tmp_path / 'images' / 'a.jpg').write_bytes(png_declaring(30000, 30000))  # a PNG under .jpg: the header decides
    (tmp_path / 'labels' / 'sub' / 'b.png').write_bytes(png_declaring(13000, 13000, bit_depth=16, colour_type=0))
    monkeypatch.setenv(PIXELS_VARIABLE, str(13000 * 13000 - 1))
    decoded = []
    with monkeypatch_decoding(decoded):
        report = check_seg(image_dir, label_dir)
    assert report.problems == {checks.OVERSIZED_IMAGE: ['a.jpg (30000x30000)', 'sub/b.png (13000x13000)']}
    assert report.bad_images == {'a', 'sub/b'}
    assert not {'a.jpg', 'b.png'} & set(decoded) and {'a.png', 'b.jpg'} <= set(decoded)  # each pair's other file


def test_without_opening_images_a_sample_of_label_maps_is_read_but_all_must_exist(tmp_path) -> None:
    image_dir, label_dir = seg_set(tmp_path, {name: 7 for name in ('a', 'b', 'c', 'd', 'sub/b')})
    write_image(tmp_path / 'images' / 'e.jpg')
    report = check_seg(image_dir, label_dir, open_images=False, sample=2)
    assert report.problems == {checks.BAD_LABEL_VALUE: ['a.png (values 7)', 'd.png (values 7)'],
                               checks.MISSING_LABEL: ['e.png']}
    assert report.num_images == 6
    report = check_seg(image_dir, label_dir, open_images=False)
    assert len(report.problems[checks.BAD_LABEL_VALUE]) == 5


def test_folders_without_images_or_that_do_not_exist_are_one_line_errors(tmp_path) -> None:
    image_dir, label_dir = seg_set(tmp_path)
    with pytest.raises(DatasetError, match=f"{image_dir} holds no images ending with '.tif'"):
        check_label_maps(image_dir, label_dir, 'val', '.tif', '.png', 3, False)
    with pytest.raises(DatasetNotFoundError, match='nowhere is not a folder'):
        check_seg(image_dir, str(tmp_path / 'nowhere'))
