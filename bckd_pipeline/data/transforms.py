"""Sample transforms: numpy/PIL in, ``(float32 3xHxW, int64 HxW)`` tensors out.

They run in DataLoader workers on few CPU cores, so each step is one vectorised numpy or PIL call.
Sizes are ``(height, width)`` everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from bckd_pipeline.data.base import IGNORE_INDEX, Normalization, to_tensors
from bckd_pipeline.errors import ConfigError


def _size(name: str, value: tuple[int, int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    if len(value) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in value):
        raise ConfigError(
            f"{name}={value!r} is not a size. Give (height, width) as two positive integers, e.g. (96, 128)."
        )
    return (int(value[0]), int(value[1]))


def resize_pair(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``size`` (H, W): the image bilinearly, the mask by nearest neighbour (labels stay labels)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image, mask
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    rows = np.minimum(((np.arange(h) + 0.5) * mask.shape[0] / h).astype(np.intp), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * mask.shape[1] / w).astype(np.intp), mask.shape[1] - 1)
    return resized, mask[rows[:, None], cols[None, :]]


@dataclass(kw_only=True)
class TrainTransform:
    """The BCKD paper's training augmentation: resize, random scale, pad + random crop, flip, brightness.

    Brightness (multiply by U(1-b, 1+b), clip to 0..255) commutes with the geometric steps, so it is
    applied to the crop before normalisation; padding (bottom/right, to reach ``crop``) comes after
    normalisation so it is exactly 0 (the mean colour), with the mask padded with ``ignore_index``, or
    with ``pad_label`` when given (``PAD_LABEL``: the trainer then knows which pixels are padding, and
    keeps them out of the distillation terms; the CE ignores them either way).
    Without ``seed`` the global ``np.random`` state is used, which the trainer reseeds per DataLoader
    worker; with ``seed`` the transform owns its own stream (reproducible in one process only).
    ``crop=None`` keeps the scaled size, so batching then needs equal sizes (e.g. scale_range=(1, 1)).
    """

    resize: tuple[int, int] | None
    crop: tuple[int, int] | None
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    brightness: float = 0.2
    normalization: Normalization = Normalization()
    ignore_index: int = IGNORE_INDEX
    pad_label: int | None = None
    seed: int | None = None
    _state: np.random.RandomState | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.resize = _size("resize", self.resize)
        self.crop = _size("crop", self.crop)
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ConfigError(
                f"scale_range={self.scale_range!r} is not a range of positive factors. "
                "Give (low, high) with 0 < low <= high, e.g. (0.5, 2.0); (1, 1) disables scaling."
            )
        if not 0 <= self.brightness < 1:
            raise ConfigError(
                f"brightness={self.brightness!r} is outside [0, 1). It is the jitter amplitude b of a factor "
                "drawn from U(1-b, 1+b); use e.g. 0.2, or 0 to disable."
            )
        self._state = None if self.seed is None else np.random.RandomState(self.seed)

    @property
    def _rng(self) -> np.random.RandomState:
        # The unseeded case returns the np.random module itself (same methods as a RandomState). It is
        # looked up per call, not stored, because a module cannot be pickled into spawned workers.
        return np.random if self._state is None else self._state

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self._rng
        if self.resize is not None:
            image, mask = resize_pair(image, mask, self.resize)
        scale = rng.uniform(*self.scale_range)
        h, w = mask.shape
        image, mask = resize_pair(image, mask, (max(1, round(h * scale)), max(1, round(w * scale))))
        if self.crop is not None:  # cut first, so the float work below touches only the crop
            (ch, cw), (h, w) = self.crop, mask.shape
            top, left = rng.randint(0, max(h - ch, 0) + 1), rng.randint(0, max(w - cw, 0) + 1)
            image, mask = image[top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]
        if self.brightness:
            factor = rng.uniform(1 - self.brightness, 1 + self.brightness)
            image = np.clip(image.astype(np.float32) * factor, 0, 255)
        image = self.normalization(image)
        if self.crop is not None and mask.shape != self.crop:
            pad_h, pad_w = self.crop[0] - mask.shape[0], self.crop[1] - mask.shape[1]
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
            fill = self.ignore_index if self.pad_label is None else self.pad_label
            mask = np.pad(mask.astype(np.int64), ((0, pad_h), (0, pad_w)), constant_values=fill)
        if self.flip and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return to_tensors(image, mask)


@dataclass(kw_only=True)
class EvalTransform:
    """Resize (if given) and normalise. The mask is resized too, so metrics are computed at ``resize``."""

    resize: tuple[int, int] | None
    normalization: Normalization = Normalization()

    def __post_init__(self) -> None:
        self.resize = _size("resize", self.resize)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.resize is not None:
            image, mask = resize_pair(image, mask, self.resize)
        return to_tensors(self.normalization(image), mask)
