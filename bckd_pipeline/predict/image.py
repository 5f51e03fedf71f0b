"""Images in and label maps out: decoding, fitting an image of any size to the model's input, and undoing it.

``fit`` resizes an image to the model's input (bilinear, as evaluation and calibration do) or, with
``letterbox=True``, scales it to fit inside keeping its aspect ratio and pads the rest with the
normalisation mean colour (which normalises to exactly 0, as training pads). It returns the
``Placement`` that ``unfit`` uses to map a label map at the input size back to the image's own size:
the padding is cut away first, then labels are resized by nearest neighbour (labels stay labels).
numpy and PIL only; files and PIL images are decoded by imagefile.py (EXIF orientation, modes, the pixel limit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..imagefile import decode_image, from_pil

Size = tuple[int, int]  # (height, width) everywhere


@dataclass(frozen=True)
class Placement:
    """Where an image of ``source`` size sits in the model input of ``input`` size: ``inner`` pixels at
    (``top``, ``left``); a plain resize has inner == input and no offset."""

    source: Size
    input: Size
    inner: Size
    top: int = 0
    left: int = 0


def to_rgb(image, *, name: str = "image") -> np.ndarray:
    """A path, a PIL image or a uint8 H x W x 3 RGB array -> uint8 H x W x 3 RGB array (a file or a PIL image
    as displayed: its EXIF orientation applied)."""
    if isinstance(image, (str, Path)):
        return decode_image(Path(image)).rgb
    if isinstance(image, Image.Image):
        return from_pil(image).rgb
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ConfigError(
                f"{name} is an array of shape {image.shape}; a Segmenter takes H x W x 3 RGB. Convert grey or "
                "RGBA images first (e.g. PIL: Image.open(path).convert('RGB')), or pass the file path."
            )
        if image.dtype != np.uint8:
            raise ConfigError(
                f"{name} is a {image.dtype} array; a Segmenter takes uint8 RGB in 0..255 (the model's own "
                "normalisation is applied inside). Convert with np.clip(x * 255, 0, 255).astype(np.uint8) for "
                "0..1 floats, or pass the file path."
            )
        return image
    raise ConfigError(
        f"{name} is a {type(image).__name__}; a Segmenter takes a file path, a PIL image, or a uint8 H x W x 3 RGB "
        "numpy array."
    )


def fit(image: np.ndarray, size: Size, *, letterbox: bool, fill: tuple[int, int, int]) -> tuple[np.ndarray, Placement]:
    """uint8 H x W x 3 -> uint8 ``size`` x 3 for the model, and the placement that ``unfit`` undoes."""
    h, w = image.shape[:2]
    H, W = size
    if not letterbox:
        return _resize(image, size), Placement((h, w), size, size)
    scale = min(H / h, W / w)
    inner = (min(H, max(1, round(h * scale))), min(W, max(1, round(w * scale))))
    top, left = (H - inner[0]) // 2, (W - inner[1]) // 2
    canvas = np.empty((H, W, 3), np.uint8)
    canvas[:] = np.asarray(fill, np.uint8)
    canvas[top : top + inner[0], left : left + inner[1]] = _resize(image, inner)
    return canvas, Placement((h, w), size, inner, top, left)


def unfit(labels: np.ndarray, placement: Placement) -> np.ndarray:
    """A label map at the model's output size -> the label map at the source image's size.

    An output smaller than the input (a model that predicts at a stride) is first brought to the input
    size by nearest neighbour, so the placement's offsets apply unchanged.
    """
    if labels.shape != placement.input:
        labels = nearest(labels, placement.input)
    (top, left), (ih, iw) = (placement.top, placement.left), placement.inner
    return nearest(labels[top : top + ih, left : left + iw], placement.source)


def nearest(labels: np.ndarray, size: Size) -> np.ndarray:
    """Nearest-neighbour resize sampling pixel centres (data/transforms.py::resize_pair's rule for masks)."""
    h, w = size
    if labels.shape == (h, w):
        return labels
    rows = np.minimum(((np.arange(h) + 0.5) * labels.shape[0] / h).astype(np.intp), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * labels.shape[1] / w).astype(np.intp), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


def _resize(image: np.ndarray, size: Size) -> np.ndarray:
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
