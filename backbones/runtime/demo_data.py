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
"""
import functools
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
from mmengine.config import Config

DEMO_COMMON_CONFIG = Path(__file__).resolve().parents[2] / 'configs' / 'demo' / '_base_' / 'demo_common.py'
# Mean BGR colour of each class; instances jitter around it.
CLASS_COLOURS = np.array([(40, 40, 220), (40, 190, 40), (220, 90, 30), (30, 210, 230)], dtype=np.float32)
MIN_VISIBLE_FRACTION = 0.35


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


def generate(out: Path, num_train: int, num_val: int, image_size: int, seed: int) -> None:
    """Write both datasets under ``out`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    common = demo_common()
    for coco_split, ade_split, count in (('train', 'training', num_train), ('val', 'validation', num_val)):
        for folder in (out / 'coco' / coco_split, out / 'coco' / 'annotations', out / 'ade' / 'images' / ade_split,
                       out / 'ade' / 'annotations' / ade_split):
            folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image, instances = make_scene(rng, image_size)
            name = f'{coco_split}_{index:05d}'
            image_path = out / 'coco' / coco_split / f'{name}.jpg'
            cv2.imwrite(str(image_path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            shutil.copyfile(image_path, out / 'ade' / 'images' / ade_split / image_path.name)
            semantic = np.ones((image_size, image_size), np.uint8)  # 1 = background
            images.append(dict(id=index + 1, file_name=f'{name}.jpg', width=image_size, height=image_size))
            for label, mask in instances:
                semantic[mask > 0] = label + 2
                x, y, w, h = cv2.boundingRect(mask)
                annotations.append(dict(id=len(annotations) + 1, image_id=index + 1, category_id=label + 1,
                                        bbox=[x, y, w, h], area=int(mask.sum()), iscrowd=0,
                                        segmentation=mask_annotation(mask)))
            cv2.imwrite(str(out / 'ade' / 'annotations' / ade_split / f'{name}.png'), semantic)
        coco = dict(images=images, annotations=annotations,
                    categories=[dict(id=i + 1, name=name) for i, name in enumerate(common.demo_classes)])
        (out / 'coco' / 'annotations' / f'instances_{coco_split}.json').write_text(json.dumps(coco))
    classes = dict(classes=list(common.demo_seg_classes), palette=[list(c) for c in common.demo_seg_palette],
                   ignore=0)
    (out / 'ade' / 'classes.json').write_text(json.dumps(classes))


def ensure_demo_data(out: str | Path, num_train: int, num_val: int, image_size: int, seed: int) -> bool:
    """Generate the data unless ``out`` already holds data made with these settings; return whether it did."""
    out = Path(out)
    stamp = out / 'settings.json'
    settings = dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed, version=2)
    if stamp.exists() and json.loads(stamp.read_text()) == settings:
        return False
    if out.exists():
        shutil.rmtree(out)
    generate(out, num_train, num_val, image_size, seed)
    stamp.write_text(json.dumps(settings))
    return True
