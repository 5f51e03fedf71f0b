"""Decoding an image file to uint8 H x W x 3 RGB, the one way every reader of user images does it
(predict's sources and Segmenter, the datasets on disk).

- **Size first.** The width and height are read from the header (``Image.open`` reads no pixels) and
  an image of more than ``max_pixels`` pixels is refused before it is decoded. The default is PIL's
  own ``Image.MAX_IMAGE_PIXELS`` (89,478,485: about 9459 x 9459, 256 MiB as 8-bit RGB);
  ``predict --max-pixels N`` raises it. PIL's own check (a ``DecompressionBombWarning`` over its limit,
  a ``DecompressionBombError`` over twice it) is switched off while the file is open, so that this one,
  which names the size and the flag, decides; ``Image.MAX_IMAGE_PIXELS`` is process-wide, so another
  thread opening images at that moment goes without PIL's check.
- **EXIF orientation applied** (``PIL.ImageOps.exif_transpose``, as OpenCV's ``imread`` and
  Ultralytics do): a phone photo stored 200 x 100 with orientation 6 decodes to its displayed
  100 x 200. ``Decoded.orientation`` is the tag's value (1 when there is none).
- **Modes.** 16-bit grey (``I;16``/``I;16B``/``I;16L``, and ``I``, as which older PIL opens a
  16-bit PNG) is scaled to 8 bit by ``round(v / 257)`` (65535 -> 255), never clipped at 255; CMYK goes
  to RGB by PIL's conversion (no ICC colour management); transparency (RGBA, LA, PA, a palette or
  RGB with a transparent colour) is dropped and the colour channels kept, as OpenCV's ``imread`` and
  torchvision read them; anything else through ``convert("RGB")``.

numpy and PIL only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import DataError

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS
ORIENTATION_TAG = 0x0112
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class Decoded:
    """An image as RGB, the EXIF orientation applied to it (1: none) and the mode it was stored in."""

    rgb: np.ndarray
    orientation: int = 1
    mode: str = "RGB"


class ImageTooLargeError(DataError):
    """An image whose header declares more pixels than the limit."""


def decode_image(path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode an image file, with an error naming the file when it is missing, too large, truncated or no image."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Image {str(path)!r} does not exist. Pass an existing image file, a folder, or a video.")
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # PIL's own bomb check off while ours, which names the size, runs
        with Image.open(path) as im:
            check_size(path, im.size, max_pixels)  # from the header: no pixel decoded yet
            return from_pil(im)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(
            f"Could not decode {str(path)!r} as an image ({type(exc).__name__}: {str(exc)[:160]}). The file is "
            "truncated or not an image; remove it or convert it to PNG/JPEG."
        ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit


def check_size(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    """Refuse a (width, height) over ``max_pixels`` pixels."""
    w, h = size
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"Image {str(path)!r} is too large to decode: {w}x{h} (width x height) = {w * h:,} pixels, over the "
            f"limit of {max_pixels:,} pixels. Downscale or tile it, or raise the limit with --max-pixels N where "
            "the memory is there (3 bytes a pixel, several times over while it is resized)."
        )


def from_pil(im: Image.Image) -> Decoded:
    """A PIL image (its EXIF orientation applied) -> ``Decoded``."""
    exif = im.getexif()
    orientation = exif.get(ORIENTATION_TAG, 1)
    orientation = orientation if isinstance(orientation, int) and 2 <= orientation <= 8 else 1
    mode = im.mode
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
    return Decoded(np.ascontiguousarray(to_rgb_array(im)), orientation, mode)


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """uint8 H x W x 3 RGB from any PIL mode (the rules in the module docstring)."""
    if im.mode == "RGB":
        return np.asarray(im)
    if im.mode in SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(im, dtype=np.float64), 0, 65535)
        grey = np.floor(grey / 257 + 0.5).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        return np.asarray(im.convert("RGBA"))[..., :3]  # the colour under the alpha, as imread keeps it
    return np.asarray(im.convert("RGB"))
