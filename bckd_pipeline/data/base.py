"""The sample contract every dataset honours, and the checks that enforce it.

A sample is an RGB ``uint8`` image (H x W x 3) and an ``int64`` mask (H x W) whose values are class
ids ``0..num_classes-1`` or :data:`IGNORE_INDEX`. :meth:`SegDataset.load` returns it validated, so
a wrong mask fails at the file that is wrong, not as a CUDA assert deep inside a loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bckd_pipeline.errors import ConfigError, DataError
from bckd_pipeline.imagefile import decode_image

IGNORE_INDEX = 255
# Mask value of the pixels a training crop was padded with, when the transform is asked to mark them
# (TrainTransform(pad_label=PAD_LABEL)): the distillation losses leave them out, the CE ignores them.
PAD_LABEL = -1

Transform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std on the 0..1 scale (ImageNet by default), applied as ``(x/255 - mean) / std``."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(
                f"Normalization needs 3 means and 3 positive stds, got mean={self.mean} std={self.std}. "
                "Use RGB statistics on the 0..1 scale, e.g. the ImageNet defaults."
            )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Normalise an H x W x 3 image holding 0..255 values; returns float32."""
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return (image.astype(np.float32) * np.float32(1 / 255) - mean) / std


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a report need to know about a dataset."""

    kind: str
    root: str
    num_classes: int
    class_names: tuple[str, ...]
    ignore_index: int = IGNORE_INDEX
    colors: tuple[tuple[int, int, int], ...] | None = None  # one RGB 0..255 per class, when the data gives them

    def __post_init__(self) -> None:
        if self.colors is not None and len(self.colors) != self.num_classes:
            raise DataError(
                f"Dataset {self.kind!r} at {self.root!r} gives {len(self.colors)} colours for {self.num_classes} "
                "classes. Give one colour per class, or none."
            )
        if not 0 < self.num_classes <= self.ignore_index:
            raise DataError(
                f"Dataset {self.kind!r} at {self.root!r} has {self.num_classes} classes; allowed is "
                f"1..{self.ignore_index}, because label {self.ignore_index} means ignore."
            )
        if len(self.class_names) != self.num_classes:
            raise DataError(
                f"Dataset {self.kind!r} at {self.root!r} declares {self.num_classes} classes "
                f"but names {len(self.class_names)}. Give exactly one name per class."
            )


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float32 H x W x 3 and int64 H x W arrays -> (3 x H x W, H x W) tensors."""
    return (
        torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
    )


def check_sample(
    info: DatasetInfo,
    image: np.ndarray,
    mask: np.ndarray,
    *,
    image_name: str,
    mask_name: str,
    stored_mask: np.ndarray | None = None,
) -> None:
    """Raise :class:`DataError` unless ``image``/``mask`` follow the sample contract.

    ``stored_mask`` is the mask as written in the file, before the dataset's label mapping; the
    message quotes its values because those are what the user can look up and fix.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"Image {image_name!r} decoded to {image.dtype} {image.shape}, expected uint8 H x W x 3.")
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"Image {image_name!r} is {image.shape[0]}x{image.shape[1]} (H x W) but its mask {mask_name!r} "
            f"is {mask.shape[0]}x{mask.shape[1]}. Each mask must have its image's size; "
            "check that the two files belong together."
        )
    bad = ((mask < 0) | (mask >= info.num_classes)) & (mask != info.ignore_index)
    if bad.any():
        values = np.unique((mask if stored_mask is None else stored_mask)[bad])
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise DataError(
            f"Mask {mask_name!r} holds label values [{shown}] that are not classes of {info.kind!r} "
            f"(allowed: 0..{info.num_classes - 1}, and {info.ignore_index} = ignore). "
            f"Map those pixels to {info.ignore_index} in the mask, or pick the KIND whose labels match "
            "this dataset (see --data KIND:PATH)."
        )


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to uint8 H x W x 3 RGB as displayed (imagefile.py: its EXIF orientation applied, 16-bit
    scaled, the pixel limit). A mask is read as stored: the convention is that masks are drawn on the displayed
    image, so a photo with an EXIF rotation is turned to match its mask."""
    return decode_image(path).rgb


def read_index_png(path: Path) -> np.ndarray:
    """Decode a label PNG whose pixel values are class ids (palette index or grey level) to int64."""
    with Image.open(path) as im:
        labels, mode = np.asarray(im), im.mode
    if labels.ndim != 2:
        raise DataError(
            f"Mask {str(path)!r} is a {mode} image with {labels.shape[-1]} channels; a mask must be "
            "single-channel (palette or greyscale PNG) with the class id as pixel value. "
            "Convert colour-coded masks to class ids first."
        )
    return labels.astype(np.int64)


class SegDataset(torch.utils.data.Dataset):
    """A split of a segmentation dataset: validated numpy samples via :meth:`load`, tensors via indexing."""

    def __init__(self, info: DatasetInfo, split: str, transform: Transform | None = None) -> None:
        self.info = info
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Validated sample ``index``: uint8 H x W x 3 RGB image, int64 H x W mask (ignore = 255)."""
        raise NotImplementedError

    def name(self, index: int) -> str:
        """A stable id of sample ``index`` for reports (the file stem for datasets on disk)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if self.transform is None:
            return to_tensors(Normalization()(image), mask)
        return self.transform(image, mask)


class FileSegDataset(SegDataset):
    """Image/mask file pairs, with an optional lookup table from stored label values to class ids."""

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        pairs: Sequence[tuple[Path, Path]],
        *,
        lut: np.ndarray | None = None,
        read_mask: Callable[[Path], np.ndarray] = read_index_png,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(info, split, transform)
        self.pairs = list(pairs)
        self.lut = lut
        self.read_mask = read_mask

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return self.pairs[index][0].stem

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[index]
        image, stored = read_rgb(image_path), self.read_mask(mask_path)
        mask = stored if self.lut is None else apply_lut(stored, self.lut)
        check_sample(self.info, image, mask, image_name=str(image_path), mask_name=str(mask_path), stored_mask=stored)
        return image, mask


def apply_lut(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map ``labels`` through ``lut``; values outside the table pass through so validation can name them."""
    inside = (labels >= 0) & (labels < len(lut))
    return np.where(inside, lut[np.clip(labels, 0, len(lut) - 1)], labels)
