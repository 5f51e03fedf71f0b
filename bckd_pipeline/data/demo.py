"""A synthetic street scene generated on the fly: the two failure modes BCKD targets, with no download.

Every image is drawn from ``np.random.default_rng((seed, split_id, index))``, so a sample is the same on
every call and machine, and train and val never share one. Nothing is written to disk.

- Broken boundaries of thin structures: poles are vertical bars 1-3 px wide, wires are sagging,
  often diagonal curves 1-2 px wide, fences are lattices of 1 px lines (grid or chain-link).
- Fragmented regions: large textured vehicles and buildings are cut into pieces by poles and fences
  drawn in front of them (the first pole always crosses a vehicle).

Colours vary per image and overlap between classes (an overcast sky is grey like a building, a
pole can be any grey), textures (clouds, stripes, windows) and pixel noise are added on top, so
shape and context matter, not colour alone.

The generator also knows every object it draws (:func:`generate_scene`): each vehicle and each pole is
an instance (things; ground, sky, buildings, wires and fences are stuff, as in the panoptic
convention). An instance's mask is the pixels it owns after every later layer is drawn over it, its
box the tight box of that mask; an object drawn over entirely is dropped, and one with fewer than
:data:`MIN_VISIBLE_PIXELS` visible pixels is kept as ``iscrowd`` (ignored in evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from bckd_pipeline.data.base import DatasetInfo, SegDataset, Transform, check_sample
from bckd_pipeline.data.instances import DetectionDataset, DetTransform, Instances, box_of_mask, check_instances
from bckd_pipeline.errors import ConfigError, DataError

DEMO_CLASSES = ("ground", "sky", "building", "vehicle", "pole", "wire", "fence")
GROUND, SKY, BUILDING, VEHICLE, POLE, WIRE, FENCE = range(len(DEMO_CLASSES))
DEMO_SPLITS = {"train": 0, "val": 1}
DEMO_COUNTS = {"train": 240, "val": 60}
MIN_SIZE = 32
# The object classes of the detection view, in the order of their ids there, and their segmentation ids.
DEMO_OBJECT_CLASSES = ("vehicle", "pole")
OBJECT_LABELS = {VEHICLE: 0, POLE: 1}
# Fewer visible pixels than this and an instance is a sliver: kept, marked iscrowd (ignored by evaluation).
MIN_VISIBLE_PIXELS = 16


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Unit-scale noise varying over about ``cell`` pixels (bilinear upsampling of a coarse grid)."""
    h, w = shape
    coarse = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))


def _paint(image: np.ndarray, mask: np.ndarray, region: np.ndarray, label: int, colour: np.ndarray) -> None:
    """Draw ``region`` over what is there: ``colour`` is an RGB triple or an H x W x 3 texture."""
    mask[region] = label
    image[region] = colour[region] if colour.ndim == 3 else colour


@dataclass
class _Canvas:
    """The scene being drawn: its image and mask, the pixel grid, the horizon row, and which object owns
    each pixel (``owner``: index into ``objects``, the class of each object drawn; -1 = stuff)."""

    image: np.ndarray  # H x W x 3 float32
    mask: np.ndarray  # H x W int64
    yy: np.ndarray
    xx: np.ndarray
    horizon: float
    owner: np.ndarray  # H x W int32
    objects: list[int] = field(default_factory=list)

    @property
    def h(self) -> int:
        return self.mask.shape[0]

    @property
    def w(self) -> int:
        return self.mask.shape[1]

    def paint(self, region: np.ndarray, label: int, colour: np.ndarray) -> None:
        """Draw ``region``; a label in :data:`OBJECT_LABELS` makes it a new object owning those pixels."""
        _paint(self.image, self.mask, region, label, colour)
        if label in OBJECT_LABELS:
            self.owner[region] = len(self.objects)
            self.objects.append(label)
        else:
            self.owner[region] = -1


def generate(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One scene of ``size`` (H, W): uint8 RGB image and int64 mask with ids into :data:`DEMO_CLASSES`."""
    image, mask, _ = generate_scene(rng, size)
    return image, mask


def generate_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, Instances]:
    """One scene of ``size`` (H, W): the image, the mask and its objects (:func:`scene_instances`).

    Layers are drawn back to front, each over what is there; the order of the random draws is the scene.
    """
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = rng.uniform(0.35, 0.6) * h
    owner = np.full((h, w), -1, np.int32)
    c = _Canvas(np.empty((h, w, 3), np.float32), np.empty((h, w), np.int64), yy, xx, horizon, owner)
    _ground_and_sky(rng, c)
    _buildings(rng, c)
    vehicles = _vehicles(rng, c)
    if rng.uniform() < 0.85:
        _fence(rng, c, *vehicles[0])
    _poles(rng, c, *vehicles[0])
    _wires(rng, c)
    image = c.image
    image *= rng.uniform(0.8, 1.2, 3)
    image += rng.normal(0, rng.uniform(3, 10), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), c.mask, scene_instances(c.owner, c.objects)


def scene_instances(owner: np.ndarray, objects: list[int]) -> Instances:
    """The visible objects of a drawn scene: object ``k`` owns the pixels where ``owner == k``.

    Objects with no pixel left are dropped; those under :data:`MIN_VISIBLE_PIXELS` are ``iscrowd``.
    Labels are detection ids (:data:`DEMO_OBJECT_CLASSES`), masks uint8 K x H x W.
    """
    visible = [k for k in range(len(objects)) if (owner == k).any()]
    if not visible:
        return Instances.empty(owner.shape)
    masks = np.stack([owner == k for k in visible]).astype(np.uint8)
    boxes = np.stack([box_of_mask(m) for m in masks])
    labels = [OBJECT_LABELS[objects[k]] for k in visible]
    return Instances(boxes, labels, masks.sum(axis=(1, 2)) < MIN_VISIBLE_PIXELS, masks)


def _ground_and_sky(rng: np.random.Generator, c: _Canvas) -> None:
    """Ground: perspective stripes and blotches; sky: a blue-to-grey gradient with clouds."""
    xx, yy, horizon, size = c.xx, c.yy, c.horizon, (c.h, c.w)
    ground = rng.uniform((60, 55, 45), (150, 145, 130))
    stripes = np.sin(xx * rng.uniform(0.2, 0.8) + (yy - horizon) * rng.uniform(-0.6, 0.6) + rng.uniform(0, 6))
    ground_tex = ground + (stripes * rng.uniform(5, 20) + _smooth_noise(rng, size, 8) * 12)[..., None]
    c.paint(np.ones(size, bool), GROUND, ground_tex)
    overcast = rng.uniform(0, 1)
    sky = (1 - overcast) * rng.uniform((70, 120, 170), (140, 190, 250)) + overcast * rng.uniform(120, 210)
    sky_tex = sky * (0.8 + 0.3 * yy / horizon)[..., None] + (_smooth_noise(rng, size, 16) * 18)[..., None]
    c.paint(yy < horizon, SKY, sky_tex)


def _buildings(rng: np.random.Generator, c: _Canvas) -> None:
    """1-3 walls standing on the horizon, with a grid of windows."""
    xx, yy, horizon, h, w = c.xx, c.yy, c.horizon, c.h, c.w
    for _ in range(rng.integers(1, 4)):
        x0, top = rng.uniform(-0.1, 0.85) * w, rng.uniform(0.05, 0.8) * horizon
        region = (xx >= x0) & (xx < x0 + rng.uniform(0.15, 0.4) * w) & (yy >= top)
        region &= yy < horizon + rng.uniform(0, 0.08) * h
        period_x, period_y = rng.integers(4, 9), rng.integers(5, 10)
        windows = (((xx - x0) % period_x) < period_x / 2) & (((yy - top) % period_y) < period_y / 2)
        wall = rng.uniform(70, 200) * rng.uniform(0.85, 1.15, 3)
        c.paint(region, BUILDING, wall * np.where(windows, rng.uniform(0.4, 0.7), 1.0)[..., None])


def _vehicles(rng: np.random.Generator, c: _Canvas) -> list[tuple[float, float, float]]:
    """1-2 vehicles (a body and a cabin with glass) below the horizon; returns each one's centre, half width
    and bottom row."""
    xx, yy, horizon, h, w = c.xx, c.yy, c.horizon, c.h, c.w
    vehicles = []
    for _ in range(rng.integers(1, 3)):
        cx, half = rng.uniform(0.15, 0.85) * w, rng.uniform(0.12, 0.25) * w
        bottom = rng.uniform(horizon + 0.2 * h, h - 1)
        body_h = rng.uniform(0.1, 0.18) * h
        body = (np.abs(xx - cx) < half) & (yy < bottom) & (yy >= bottom - body_h)
        cabin_cx = cx + rng.uniform(-0.2, 0.2) * half
        cabin = (((xx - cabin_cx) / (0.6 * half)) ** 2 + ((yy - bottom + body_h) / (0.9 * body_h)) ** 2 < 1) & (
            yy < bottom - body_h
        )
        paint = rng.uniform(30, 230, 3) * (1 + 0.15 * np.cos((yy - bottom) * 0.5))[..., None]
        glass = cabin & (np.abs(xx - cabin_cx) < 0.45 * half) & (yy > bottom - body_h - 0.6 * body_h)
        c.paint(body | cabin, VEHICLE, np.where(glass[..., None], paint * 0.35, paint))
        vehicles.append((cx, half, bottom))
    return vehicles


def _fence(rng: np.random.Generator, c: _Canvas, cx: float, half: float, bottom: float) -> None:
    """A fence of 1 px lines (grid or chain-link) in front of the vehicle at ``cx``."""
    xx, yy, h, w = c.xx, c.yy, c.h, c.w
    centre = cx + rng.normal(0, 0.6 * half)
    x0, x1 = int(centre - rng.uniform(0.15, 0.35) * w), int(centre + rng.uniform(0.15, 0.35) * w)
    period = int(rng.integers(4, 8))
    # Integer rows, the height a whole number of periods: the grid's rows then fall on the rails.
    last = int(min(h, bottom + rng.uniform(0, 0.1) * h)) - 1
    first = last - period * max(2, round(rng.uniform(0.12, 0.3) * h / period))
    inside = (xx >= x0) & (xx <= x1) & (yy >= first) & (yy <= last)
    rails = (yy == first) | (yy == last)
    if rng.uniform() < 0.5:
        lattice = ((xx - x0) % period == 0) | ((yy - first) % period == 0)
    else:
        lattice = ((xx + yy) % period == 0) | ((xx - yy) % period == 0)
    c.paint(inside & (lattice | rails), FENCE, rng.uniform(40, 220) * rng.uniform(0.85, 1.15, 3))


def _poles(rng: np.random.Generator, c: _Canvas, cx: float, half: float, bottom: float) -> None:
    """Poles 1-3 px wide; the first stands in front of the vehicle at ``cx`` and splits it.

    All poles are at least 6 px apart, so two of them never merge into one thick bar.
    """
    xx, yy, horizon, h, w = c.xx, c.yy, c.horizon, c.h, c.w
    poles = [(cx + rng.uniform(-0.8, 0.8) * half, min(h, bottom + rng.uniform(0, 0.1) * h))]
    for _ in range(rng.integers(0, 3)):
        x = rng.uniform(0, w - 3)
        if all(abs(x - other) > 6 for other, _ in poles):
            poles.append((x, rng.uniform(horizon + 0.1 * h, h)))
    for x, foot in poles:
        x, width = int(np.clip(x, 0, w - 3)), int(rng.integers(1, 4))
        region = (xx >= x) & (xx < x + width) & (yy >= rng.uniform(0, 0.6) * horizon) & (yy < foot)
        c.paint(region, POLE, rng.uniform(30, 200) * rng.uniform(0.9, 1.1, 3))


def _wires(rng: np.random.Generator, c: _Canvas) -> None:
    """One bundle of 1-3 wires along a sagging curve, spaced 4-7 px apart so they never merge into a thick band.

    The distance to the curve is measured perpendicularly, so a steep wire keeps its width.
    """
    xx, yy, horizon, h, w = c.xx, c.yy, c.horizon, c.h, c.w
    y0, y1 = rng.uniform(0.05, 0.9, 2) * horizon
    x0 = rng.uniform(0, 0.4) * w
    x1 = x0 + rng.uniform(0.4, 1.0) * (w - x0)
    sag, t = rng.uniform(0, 0.15) * h, (xx - x0) / (x1 - x0)
    slope = ((y1 - y0) + 4 * sag * (1 - 2 * t)) / (x1 - x0)
    distance = (yy - y0 - (y1 - y0) * t - 4 * sag * t * (1 - t)) / np.sqrt(1 + slope**2)
    span = (t >= 0) & (t <= 1)
    offset = 0.0
    for _ in range(rng.integers(1, 4)):
        region = span & (np.abs(distance - offset) < rng.integers(1, 3) / 2)
        c.paint(region, WIRE, rng.uniform(10, 90) * rng.uniform(0.9, 1.1, 3))
        offset += rng.uniform(4, 7)


class DemoDataset(SegDataset):
    """The synthetic scenes; split ``train`` has 240 images and ``val`` 60, unless ``count`` is given."""

    def __init__(
        self,
        split: str,
        *,
        seed: int = 0,
        size: tuple[int, int] = (96, 128),
        count: int | None = None,
        transform: Transform | None = None,
    ) -> None:
        _check_demo_args(split, size, count)
        super().__init__(DatasetInfo("demo", "", len(DEMO_CLASSES), DEMO_CLASSES), split, transform)
        self.seed = seed
        self.size = (int(size[0]), int(size[1]))
        self.count = DEMO_COUNTS[split] if count is None else count

    def __len__(self) -> int:
        return self.count

    def name(self, index: int) -> str:
        return f"demo{self.seed}-{self.split}-{index:04d}"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.count:
            raise IndexError(f"demo {self.split} index {index} out of range 0..{self.count - 1}")
        image, mask = generate(np.random.default_rng((self.seed, DEMO_SPLITS[self.split], index)), self.size)
        name = self.name(index)
        check_sample(self.info, image, mask, image_name=name, mask_name=name)
        return image, mask


def _check_demo_args(split: str, size: tuple[int, int], count: int | None) -> None:
    if split not in DEMO_SPLITS:
        raise DataError(f"The demo dataset has no split {split!r}. Available splits: {', '.join(DEMO_SPLITS)}.")
    if len(size) != 2 or min(size) < MIN_SIZE:
        raise ConfigError(f"demo_size={size!r} is too small. Give (height, width), both >= {MIN_SIZE}, e.g. (96, 128).")
    if count is not None and count < 1:
        raise ConfigError(f"demo_count={count!r} must be a positive number of images, e.g. 32.")


class DemoDetectionDataset(DetectionDataset):
    """The synthetic scenes' objects (vehicles and poles, with masks): the same images as
    :class:`DemoDataset` for the same seed, split and size."""

    def __init__(
        self,
        split: str,
        *,
        seed: int = 0,
        size: tuple[int, int] = (96, 128),
        count: int | None = None,
        transform: DetTransform | None = None,
    ) -> None:
        _check_demo_args(split, size, count)
        info = DatasetInfo("demo", "", len(DEMO_OBJECT_CLASSES), DEMO_OBJECT_CLASSES)
        super().__init__(info, split, transform=transform)
        self.seed = seed
        self.size = (int(size[0]), int(size[1]))
        self.count = DEMO_COUNTS[split] if count is None else count

    def __len__(self) -> int:
        return self.count

    def name(self, index: int) -> str:
        return f"demo{self.seed}-{self.split}-{index:04d}"

    def load(self, index: int) -> tuple[np.ndarray, Instances]:
        if not 0 <= index < self.count:
            raise IndexError(f"demo {self.split} index {index} out of range 0..{self.count - 1}")
        image, _, inst = generate_scene(np.random.default_rng((self.seed, DEMO_SPLITS[self.split], index)), self.size)
        check_instances(self.info, inst, self.size, name=self.name(index))
        return image, inst
