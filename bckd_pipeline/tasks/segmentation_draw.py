"""Segmentation's files and pictures: what ``predict`` writes per image and how report.html draws a label map.

- ``labels/<stem>.png``: the label map, a palette PNG whose pixel values are the class ids (read it back
  with ``np.asarray(Image.open(path))``); the palette is report.html's class colours;
- ``overlays/<stem>.jpg`` (``--save-overlay``): the image with the classes blended over it;
- the predictions.json entry's fields: the label PNG, the image's size, the classes present with their
  pixel shares;
- report.html: a label map in class colours; against the ground truth, wrong pixels darkened and wrong
  pixels near a ground-truth boundary in magenta.

Not shipped to the device agent; PIL and scipy are imported inside the functions that use them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import atomic_write

OVERLAY_ALPHA = 0.5
BOUNDARY_PX = 2  # a wrong pixel within this many pixels of a ground-truth boundary is a boundary error
BOUNDARY_ERROR = (255, 0, 255)  # magenta: no class colour uses it
IGNORE = (0, 0, 0)
WRONG_SHADE = 0.45  # a wrong pixel's class colour is darkened to this share

# The marks ``colorize`` adds beside the class colours, as report.html's legend names them.
LEGEND = (
    (f"rgb{BOUNDARY_ERROR}", f"wrong within {BOUNDARY_PX} px of a ground-truth boundary"),
    ("#333", "other wrong pixels (darkened class colour)"),
    ("#000", "ignore"),
)


# ---------------------------------------------------------------------------------------------
# predict's files
# ---------------------------------------------------------------------------------------------
def write_label_png(path: Path, labels: np.ndarray, colors: np.ndarray) -> None:
    """uint8 class ids -> a palette ("P") PNG: pixel value = class id, colour = ``colors[id]``."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))  # mode L
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(colors)] = colors
    image.putpalette(flat.tobytes())  # an L image with a palette becomes a P image
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))


def write_overlay(path: Path, rgb: np.ndarray, labels: np.ndarray, colors: np.ndarray) -> None:
    """The image with the class colours blended over it (``OVERLAY_ALPHA``), as a JPEG."""
    from PIL import Image

    blend = rgb.astype(np.float32) * (1 - OVERLAY_ALPHA) + colors[labels].astype(np.float32) * OVERLAY_ALPHA
    image = Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8))
    atomic_write(path, lambda tmp: image.save(tmp, format="JPEG", quality=90))


def class_shares(labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
    """The classes present, largest first, with the share of the image's pixels each covers."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    order = np.argsort(-counts, kind="stable")
    return {
        (class_names[i] if i < len(class_names) else str(i)): round(float(counts[i]) / labels.size, 6)
        for i in order
        if counts[i]
    }


def write_prediction(labels: np.ndarray, out: Path, stem: str, *, colors: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Write ``labels/<stem>.png``; return the entry's fields: that file, the image's size, its class shares."""
    path = out / "labels" / f"{stem}.png"
    write_label_png(path, labels, colors)
    return {
        "labels": path.relative_to(out).as_posix(),
        "size": [int(labels.shape[0]), int(labels.shape[1])],
        "classes": class_shares(labels, classes),
    }


def write_overlay_file(labels: np.ndarray, rgb: np.ndarray, out: Path, stem: str, *, colors: np.ndarray) -> dict:
    """Write ``overlays/<stem>.jpg``; return the entry's ``overlay`` field."""
    path = out / "overlays" / f"{stem}.jpg"
    write_overlay(path, rgb, labels, colors)
    return {"overlay": path.relative_to(out).as_posix()}


# ---------------------------------------------------------------------------------------------
# report.html's pictures
# ---------------------------------------------------------------------------------------------
def boundary_band(truth: np.ndarray, radius: int = BOUNDARY_PX) -> np.ndarray:
    """Pixels within ``radius`` of a ground-truth class boundary (4-neighbour label change), as a bool mask."""
    from scipy import ndimage

    edge = np.zeros(truth.shape, bool)
    dv = truth[1:, :] != truth[:-1, :]
    dh = truth[:, 1:] != truth[:, :-1]
    edge[1:, :] |= dv
    edge[:-1, :] |= dv
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    return ndimage.binary_dilation(edge, iterations=radius) if radius > 0 else edge


def colorize(
    labels: np.ndarray,
    colors: np.ndarray,
    ignore_index: int,
    truth: np.ndarray | None = None,
) -> np.ndarray:
    """Class colours; with ``truth``, wrong pixels darkened and wrong pixels near a boundary in magenta."""
    lab = labels.astype(np.int64)
    valid = (lab >= 0) & (lab < len(colors))
    rgb = np.zeros((*lab.shape, 3), np.uint8)
    rgb[valid] = colors[lab[valid]]
    if truth is None:
        rgb[lab == ignore_index] = IGNORE
        return rgb
    scored = truth != ignore_index
    wrong = scored & (lab != truth)
    rgb[wrong] = (rgb[wrong] * WRONG_SHADE).astype(np.uint8)
    rgb[wrong & boundary_band(truth)] = BOUNDARY_ERROR
    return rgb


def pixels_correct(labels: np.ndarray, truth: np.ndarray, ignore_index: int) -> str:
    """The caption under a prediction's picture: the share of scored pixels labelled as the ground truth."""
    scored = truth != ignore_index
    acc = float((labels[scored] == truth[scored]).mean() * 100) if scored.any() else float("nan")
    return f"{acc:.1f}% px correct"
