"""Detection's files and pictures: what ``predict`` writes per image and how report.html draws boxes.

- predictions.json entry fields: ``detections``, COCO-style results in the original image's pixels, highest
  score first: ``{"bbox": [x, y, w, h], "score", "category_id", "category_name"}`` (``category_id``: the class's
  index in the model's class list, ``category_name``: its name), and ``count``;
- ``overlays/<stem>.jpg`` (``--save-overlay``): the boxes drawn over the image, each in its class colour
  with its class name and score;
- report.html: the boxes over the image (or a grey canvas), the ground truth's boxes as thin white
  outlines beneath a prediction's, crowd boxes of the ground truth dashed.

Not shipped to the device agent; PIL is imported inside the functions that use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import atomic_write
from .detection_ap import target_parts

CANVAS = (96, 96, 96)  # the background when no image is given
TRUTH = (255, 255, 255)  # ground-truth outlines
LINE_PX = 2
LEGEND = (
    ("#fff", "ground-truth box (thin white; a crowd region dashed)"),
    ("#888", "no image given: boxes on a grey canvas"),
)


def _rows(prediction) -> np.ndarray:
    rows = np.asarray(prediction, np.float32).reshape(-1, 6)
    return rows[rows[:, 5] >= 0]


def coco_entries(prediction, classes: tuple) -> list:
    """One image's detections as COCO-style results (``bbox`` x, y, w, h in pixels), highest score first."""
    rows = _rows(prediction)
    rows = rows[np.argsort(-rows[:, 4], kind="stable")]
    out = []
    for x1, y1, x2, y2, score, label in rows.astype(np.float64):
        c = int(label)
        out.append(
            {
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(score, 4),
                "category_id": c,
                "category_name": classes[c] if c < len(classes) else str(c),
            }
        )
    return out


def write_prediction(prediction, out: Path, stem: str, *, colors: np.ndarray, classes: tuple) -> dict:
    """No file of its own: the entry's fields are the detections (original image pixels) and their count."""
    entries = coco_entries(prediction, classes)
    return {"detections": entries, "count": len(entries)}


def _draw_rectangle(draw, box, color, width: int, dashed: bool = False) -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    if not dashed:
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        return
    dash = 4
    for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(b[0] - a[0]), abs(b[1] - a[1]))
        steps = max(1, int(length // dash))
        for k in range(0, steps, 2):
            t0, t1 = k / steps, min(1.0, (k + 1) / steps)
            p0 = (a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0)
            p1 = (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)
            draw.line([p0, p1], fill=color, width=width)


def draw_boxes(prediction, colors: np.ndarray, *, truth=None, image=None, classes: tuple = ()) -> np.ndarray:
    """H x W x 3 uint8: the prediction's boxes in class colours over ``image`` (else a grey canvas large enough
    for every box), each labelled with its class and score; ``truth`` (a target or saved rows) beneath, white."""
    from PIL import Image, ImageDraw

    rows = _rows(prediction)
    t_boxes, t_labels, t_crowd = target_parts(truth) if truth is not None else (np.zeros((0, 4)), (), ())
    if image is None:
        extent = np.concatenate([rows[:, :4], t_boxes]).reshape(-1, 4)
        w = int(np.ceil(max(extent[:, 2].max(initial=0), 16)))
        h = int(np.ceil(max(extent[:, 3].max(initial=0), 16)))
        canvas = Image.new("RGB", (w, h), CANVAS)
    else:
        canvas = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(canvas)
    for box, crowd in zip(t_boxes, t_crowd):  # noqa: B905 (Python 3.8: no strict=)
        _draw_rectangle(draw, box, TRUTH, 1, dashed=bool(crowd))
    for x1, y1, x2, y2, score, label in rows[np.argsort(rows[:, 4], kind="stable")]:  # highest score on top
        c = int(label)
        color = tuple(int(v) for v in colors[c % len(colors)]) if len(colors) else (255, 0, 0)
        _draw_rectangle(draw, (x1, y1, x2, y2), color, LINE_PX)
        name = classes[c] if c < len(classes) else str(c)
        draw.text((float(x1) + 2, max(0.0, float(y1) - 11)), f"{name} {score:.2f}", fill=color)
    return np.asarray(canvas)


def write_overlay_file(
    prediction, rgb: np.ndarray, out: Path, stem: str, *, colors: np.ndarray, classes: tuple = ()
) -> dict:
    """Write ``overlays/<stem>.jpg``, the boxes over the image labelled with ``classes``' names; return the entry's
    ``overlay`` field."""
    from PIL import Image

    path = out / "overlays" / f"{stem}.jpg"
    picture = Image.fromarray(draw_boxes(prediction, colors, image=rgb, classes=classes))
    atomic_write(path, lambda tmp: picture.save(tmp, format="JPEG", quality=90))
    return {"overlay": path.relative_to(out).as_posix()}


def boxes_found(prediction, truth) -> str:
    """The caption under a prediction's picture: its detections, and the ground-truth boxes (not crowd) that a
    detection of their class overlaps with IoU >= 0.5."""
    from .detection_decode import box_iou_matrix

    rows = _rows(prediction)
    boxes, labels, crowd = target_parts(truth)
    boxes, labels = boxes[~crowd], labels[~crowd]
    if not len(boxes):
        return f"{len(rows)} boxes, no ground truth"
    iou = box_iou_matrix(boxes, rows[:, :4].astype(np.float64)) if len(rows) else np.zeros((len(boxes), 0))
    hit = ((iou >= 0.5) & (labels[:, None] == rows[None, :, 5])).any(1) if len(rows) else np.zeros(len(boxes), bool)
    return f"{len(rows)} boxes, {int(hit.sum())}/{len(boxes)} objects found (IoU ≥ 0.5)"
