"""Generate the built-in demo data: COCO-format instances and ADE20K-layout semantic maps.

Written by ``tools/demo_data.py`` and ``tools/demo.py``, and by the tests for their own small copies.

Each image shows 1-4 objects of four classes, each class a distinct shape with its own colour family
(jittered), at varied scale and rotation, overlapping and occluding one another, on a textured
background. Instance masks are the visible parts; they are stored as polygons, or as compressed RLE
where occlusion splits an object or cuts a hole in it. The same scenes are written twice:

    OUT/coco/{train,val}/*.jpg  OUT/coco/annotations/instances_{train,val}.json
    OUT/ade/images/{training,validation}/*.jpg  OUT/ade/annotations/{training,validation}/*.png
    OUT/ade/classes.json (the class names and colours, 0 = unlabelled: see backbones/runtime/own_data.py)

The ADE20K maps follow ADE20K's convention (0 = unlabelled, loaded with reduce_zero_label): 1 is
background, 2-5 the four classes, so the segmentor learns and is scored on background too.
Generation is deterministic for a seed, and skipped when OUT already holds the same data.

OUT/settings.json is the generator's mark, written before anything else: OUT is generated into only when it
is missing, empty, or holds that mark and nothing but the files its settings make (which are then replaced);
anything else in it (the user's files) is never deleted or overwritten.
"""
import functools
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
from mmengine.config import Config

from ..boundary import parse_json, read_regular_file
from ..errors import UsageError

DEMO_COMMON_CONFIG = Path(__file__).resolve().parents[2] / 'configs' / 'demo' / '_base_' / 'demo_common.py'
# Mean BGR colour of each class; instances jitter around it.
CLASS_COLOURS = np.array([(40, 40, 220), (40, 190, 40), (220, 90, 30), (30, 210, 230)], dtype=np.float32)
MIN_VISIBLE_FRACTION = 0.35
SPLITS = (('train', 'training'), ('val', 'validation'))  # COCO's and ADE20K's name of each split
STAMP = 'settings.json'
MAX_STAMP_BYTES = 4096
MAX_IMAGES = 100_000  # per split: what tools/demo_data.py accepts


@functools.cache
def demo_common() -> Config:
    """The demo configs' shared settings (``configs/demo/_base_/demo_common.py``), read on first use: the class
    names (and palettes), in the order :func:`shape_mask` draws them."""
    return Config.fromfile(DEMO_COMMON_CONFIG)


def shape_mask(rng: np.random.Generator, label: int, size: int, image_size: int) -> np.ndarray:
    """A filled mask of one object of class ``label``, ``size`` pixels across, at a random place."""
    mask = np.zeros((image_size, image_size), np.uint8)
    radius = size / 2
    cx, cy = rng.uniform(radius * 0.6, image_size - radius * 0.6, 2)
    angle = rng.uniform(0, 2 * np.pi)
    if label == 0:  # circle
        cv2.circle(mask, (round(cx), round(cy)), round(radius), 1, -1)
        return mask
    if label == 1:  # square
        corners = [angle + k * np.pi / 2 for k in range(4)]
        radii = [radius] * 4
    elif label == 2:  # triangle
        corners = [angle + k * 2 * np.pi / 3 for k in range(3)]
        radii = [radius * 1.1] * 3
    else:  # cross: 12 corners alternating between arm tips and the inner corners
        corners = [angle + k * np.pi / 2 + offset for k in range(4) for offset in (-0.32, 0.32, np.pi / 4)]
        radii = [radius, radius, radius * 0.42] * 4
    points = np.array([(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(corners, radii)])
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask


def textured_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Muted colour gradient, low-frequency blobs, stripes and pixel noise."""
    base = rng.uniform(80, 170) + rng.uniform(-30, 30, 3)
    ramp = np.linspace(-1, 1, image_size)
    gradient = (ramp[None, :, None] * rng.uniform(-25, 25, 3) + ramp[:, None, None] * rng.uniform(-25, 25, 3))
    blobs = cv2.resize(rng.normal(0, 18, (6, 6, 3)).astype(np.float32), (image_size, image_size),
                       interpolation=cv2.INTER_CUBIC)
    period, phase, tilt = rng.uniform(6, 20), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
    yy, xx = np.mgrid[:image_size, :image_size]
    wave = (xx * np.cos(tilt) + yy * np.sin(tilt)) * 2 * np.pi / period + phase
    stripes = np.sin(wave)[..., None] * rng.uniform(0, 12)
    return base + gradient + blobs + stripes + rng.normal(0, 6, (image_size, image_size, 3))


def make_scene(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image and its (label, visible mask) instances, back to front.

    An object is only placed where it leaves every earlier object at least MIN_VISIBLE_FRACTION of
    its area visible, so that every object in the image is annotated.
    """
    image = textured_background(rng, image_size)
    objects: list[tuple[int, int, np.ndarray]] = []  # label, full area, visible mask
    for _ in range(rng.integers(1, 5)):
        label = int(rng.integers(len(demo_common().demo_classes)))
        for _attempt in range(10):
            mask = shape_mask(rng, label, int(rng.uniform(0.18, 0.55) * image_size), image_size)
            occluded = [(other, area, visible & (1 - mask)) for other, area, visible in objects]
            if all(visible.sum() >= max(MIN_VISIBLE_FRACTION * area, 40) for _, area, visible in occluded):
                break
        else:
            continue
        colour = CLASS_COLOURS[label] + rng.normal(0, 18, 3)
        shading = 1 + 0.12 * np.linspace(-1, 1, image_size)[None, :, None] * rng.choice([-1, 1])
        image = np.where(mask[..., None] > 0, colour * shading + rng.normal(0, 5, image.shape), image)
        objects = occluded + [(label, int(mask.sum()), mask)]
    return np.clip(image, 0, 255).astype(np.uint8), [(label, visible) for label, _, visible in objects]


def mask_annotation(mask: np.ndarray) -> list | dict:
    """Polygon for a simple visible region; compressed RLE where occlusion split it or cut a hole."""
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) == 1 and hierarchy[0][0][3] < 0 and len(contours[0]) >= 3:
        return [contours[0].reshape(-1).astype(float).tolist()]
    rle = mask_utils.encode(np.asfortranarray(mask))
    return dict(size=rle['size'], counts=rle['counts'].decode('ascii'))


def scene_files(coco_split: str, ade_split: str, index: int) -> tuple[str, str, str]:
    """Where scene ``index`` of a split goes, relative to OUT: its COCO image, its ADE20K image and label map."""
    name = f'{coco_split}_{index:05d}'
    return (f'coco/{coco_split}/{name}.jpg', f'ade/images/{ade_split}/{name}.jpg',
            f'ade/annotations/{ade_split}/{name}.png')


def demo_files(num_train: int, num_val: int) -> set[str]:
    """Every file :func:`ensure_demo_data` writes for these counts, relative to OUT, its stamp included."""
    files = {STAMP, 'ade/classes.json'}
    for (coco_split, ade_split), count in zip(SPLITS, (num_train, num_val)):
        files.add(f'coco/annotations/instances_{coco_split}.json')
        for index in range(count):
            files.update(scene_files(coco_split, ade_split, index))
    return files


def generate(out: Path, num_train: int, num_val: int, image_size: int, seed: int) -> None:
    """Write both datasets under ``out`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    common = demo_common()
    for (coco_split, ade_split), count in zip(SPLITS, (num_train, num_val)):
        for folder in (out / 'coco' / coco_split, out / 'coco' / 'annotations', out / 'ade' / 'images' / ade_split,
                       out / 'ade' / 'annotations' / ade_split):
            folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image, instances = make_scene(rng, image_size)
            image_path, ade_image_path, label_path = (out / file for file in scene_files(coco_split, ade_split, index))
            cv2.imwrite(str(image_path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            shutil.copyfile(image_path, ade_image_path)
            semantic = np.ones((image_size, image_size), np.uint8)  # 1 = background
            images.append(dict(id=index + 1, file_name=image_path.name, width=image_size, height=image_size))
            for label, mask in instances:
                semantic[mask > 0] = label + 2
                x, y, w, h = cv2.boundingRect(mask)
                annotations.append(dict(id=len(annotations) + 1, image_id=index + 1, category_id=label + 1,
                                        bbox=[x, y, w, h], area=int(mask.sum()), iscrowd=0,
                                        segmentation=mask_annotation(mask)))
            cv2.imwrite(str(label_path), semantic)
        coco = dict(images=images, annotations=annotations,
                    categories=[dict(id=i + 1, name=name) for i, name in enumerate(common.demo_classes)])
        (out / 'coco' / 'annotations' / f'instances_{coco_split}.json').write_text(json.dumps(coco))
    classes = dict(classes=list(common.demo_seg_classes), palette=[list(c) for c in common.demo_seg_palette],
                   ignore=0)
    (out / 'ade' / 'classes.json').write_text(json.dumps(classes))


def _stamp(out: Path) -> dict | None:
    """The settings of the stamp in ``out`` (with ``generating`` while it is written), None without one."""
    try:
        content = read_regular_file(out / STAMP, MAX_STAMP_BYTES, 'a demo data stamp')
    except FileNotFoundError:
        return None
    try:
        stamp = parse_json(content)
    except ValueError as error:
        raise UsageError(f'{out / STAMP}: not the demo data\'s stamp ({error}). Give another --out.') from None
    counts = [stamp.get(key) for key in ('num_train', 'num_val')] if isinstance(stamp, dict) else [None]
    if not all(type(count) is int and 0 <= count <= MAX_IMAGES for count in counts):
        raise UsageError(f'{out / STAMP}: not the demo data\'s stamp. Give another --out.')
    return stamp


def _entries(out: Path) -> tuple[set[str], set[str]]:
    """The files (and links, FIFOs...) and the folders below ``out``, relative to it, links not followed."""
    files, folders = set(), set()
    for top, dirs, names in os.walk(out):
        relative = Path(top).relative_to(out)
        for name in dirs:
            (files if os.path.islink(os.path.join(top, name)) else folders).add((relative / name).as_posix())
        files.update((relative / name).as_posix() for name in names)
    return files, folders


def ensure_demo_data(out: str | Path, num_train: int, num_val: int, image_size: int, seed: int) -> bool:
    """Generate the data unless ``out`` already holds data made with these settings; return whether it did.

    ``out`` must be missing, empty, or a folder this function generated into: one with its stamp and nothing but
    the files of the stamp's settings, which are removed first. Nothing else is ever deleted or overwritten.

    Raises:
        UsageError: ``out`` is not a folder, or holds what the generator did not make there (or a stamp that is
            not its own), naming the first such entry.
    """
    out = Path(out)
    settings = dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed, version=2)
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f'{out}: not a folder. Give --out a new or empty folder for the demo data.')
    stamp = _stamp(out) if out.is_dir() else None
    if stamp == settings:
        return False
    files, folders = _entries(out) if out.is_dir() else (set(), set())
    ours = demo_files(stamp['num_train'], stamp['num_val']) if stamp else set()
    foreign = sorted(files - ours) + sorted(folders - {str(parent) for file in ours
                                                       for parent in Path(file).parents if str(parent) != '.'})
    if foreign:
        raise UsageError(f'{out}: holds {foreign[0]} ({len(foreign)} entries in all) that the demo data generator '
                         'did not make, and it deletes nothing else. Give --out a new or empty folder.')
    for file in files - {STAMP}:  # the old stamp stays until they are gone
        (out / file).unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP).write_text(json.dumps(dict(settings, generating=True)))  # the mark, before anything else
    generate(out, num_train, num_val, image_size, seed)
    (out / STAMP).write_text(json.dumps(settings))
    return True
