"""Detection transforms: the image and its :class:`Instances` moved together.

``resize_instances`` (a plain resize, or a letterbox that keeps the aspect ratio and pads, placed as
predict/image.py's ``fit`` places it) and ``hflip_instances`` are numpy functions; the two transforms
compose them and return (float32 3 x H x W tensor, target dict) for :func:`collate_detection`.
Boxes scale with the image exactly (pixel edges: x -> x * W' / W); masks are resized by nearest
neighbour at pixel centres, the rule of data/transforms.py for label maps. Sizes are (height, width).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from bckd_pipeline.data.base import Normalization
from bckd_pipeline.data.instances import Instances
from bckd_pipeline.data.transforms import _size


def _nearest(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    rows = np.minimum(((np.arange(h) + 0.5) * masks.shape[1] / h).astype(np.intp), masks.shape[1] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * masks.shape[2] / w).astype(np.intp), masks.shape[2] - 1)
    return masks[:, rows[:, None], cols[None, :]]


def _mean_fill(normalization: Normalization) -> tuple[int, int, int]:
    """The padding colour that normalises to (about) 0: the mean on the 0..255 scale."""
    return tuple(int(round(m * 255)) for m in normalization.mean)


def resize_instances(
    image: np.ndarray,
    inst: Instances,
    size: tuple[int, int],
    *,
    letterbox: bool = False,
    fill: tuple[int, int, int] = (0, 0, 0),
) -> tuple[np.ndarray, Instances]:
    """Resize ``image`` (uint8 H x W x 3) and its objects to ``size``.

    ``letterbox`` scales by ``min(H'/H, W'/W)`` to an inner size that fits, centres it and pads the rest
    with ``fill``; boxes are scaled and shifted by the same placement.
    """
    h, w = image.shape[:2]
    H, W = size
    if letterbox:
        scale = min(H / h, W / w)
        inner = (min(H, max(1, round(h * scale))), min(W, max(1, round(w * scale))))
        top, left = (H - inner[0]) // 2, (W - inner[1]) // 2
    else:
        inner, top, left = (H, W), 0, 0
    if (h, w) == (H, W):
        return image, inst
    out = np.asarray(Image.fromarray(image).resize((inner[1], inner[0]), Image.BILINEAR))
    sx, sy = inner[1] / w, inner[0] / h
    boxes = inst.boxes * np.array([sx, sy, sx, sy], np.float32) + np.array([left, top, left, top], np.float32)
    masks = None
    if inst.masks is not None:
        masks = np.zeros((len(inst), H, W), np.uint8)
        masks[:, top : top + inner[0], left : left + inner[1]] = _nearest(inst.masks, inner)
    if letterbox:
        canvas = np.empty((H, W, 3), np.uint8)
        canvas[:] = np.asarray(fill, np.uint8)
        canvas[top : top + inner[0], left : left + inner[1]] = out
        out = canvas
    return out, Instances(boxes, inst.labels, inst.iscrowd, masks)


def hflip_instances(image: np.ndarray, inst: Instances) -> tuple[np.ndarray, Instances]:
    """Mirror left-right: column j -> W - 1 - j, so a box (x0, x1) -> (W - x1, W - x0)."""
    w = image.shape[1]
    b = inst.boxes
    boxes = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1)
    masks = None if inst.masks is None else inst.masks[:, :, ::-1]
    return image[:, ::-1], Instances(boxes, inst.labels, inst.iscrowd, masks)


def _to_sample(image: np.ndarray, inst: Instances, normalization: Normalization) -> tuple:
    import torch

    chw = np.ascontiguousarray(normalization(image).transpose(2, 0, 1))
    return torch.from_numpy(chw), inst.to_target()


@dataclass(kw_only=True)
class DetEvalTransform:
    """Resize (or letterbox) to ``resize`` when given, then normalise."""

    resize: tuple[int, int] | None
    letterbox: bool = False
    normalization: Normalization = Normalization()

    def __post_init__(self) -> None:
        self.resize = _size("resize", self.resize)

    def __call__(self, image: np.ndarray, inst: Instances) -> tuple:
        if self.resize is not None:
            image, inst = resize_instances(
                image, inst, self.resize, letterbox=self.letterbox, fill=_mean_fill(self.normalization)
            )
        return _to_sample(image, inst, self.normalization)


@dataclass(kw_only=True)
class DetTrainTransform:
    """Resize (or letterbox), random horizontal flip (p = 0.5), brightness jitter U(1-b, 1+b), normalise.

    No random crop or scale: a crop would cut objects, which then need a rule for partial boxes. The
    flip is the default augmentation of torchvision's detection references ("hflip"); the brightness
    jitter is the segmentation training's, with the same amplitude.
    Randomness as in :class:`~bckd_pipeline.data.transforms.TrainTransform` (global ``np.random`` unless
    ``seed``).
    """

    resize: tuple[int, int] | None
    letterbox: bool = False
    flip: bool = True
    brightness: float = 0.2
    normalization: Normalization = Normalization()
    seed: int | None = None
    _state: np.random.RandomState | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.resize = _size("resize", self.resize)
        self._state = None if self.seed is None else np.random.RandomState(self.seed)

    def __call__(self, image: np.ndarray, inst: Instances) -> tuple:
        rng = np.random if self._state is None else self._state
        if self.resize is not None:
            image, inst = resize_instances(
                image, inst, self.resize, letterbox=self.letterbox, fill=_mean_fill(self.normalization)
            )
        if self.flip and rng.random() < 0.5:
            image, inst = hflip_instances(image, inst)
        if self.brightness:
            image = np.clip(image.astype(np.float32) * rng.uniform(1 - self.brightness, 1 + self.brightness), 0, 255)
        return _to_sample(image, inst, self.normalization)
