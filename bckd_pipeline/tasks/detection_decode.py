"""A detector's raw head outputs as detections: the host decoding and NMS shared by every backend (numpy only).

The contract between an exported detector and this module (the exported graph's inputs and outputs):

- input ``image``: ``[N, 3, H, W]`` float32, normalised as the model's metadata says;
- anchor points: ``A = sum_l ceil(H / s_l) * ceil(W / s_l)`` over the levels' strides ``s_l`` (default
  ``(8, 16, 32)``; the strides are metadata of the model), in level order, then row-major (y, then x). The
  point of cell ``(i, j)`` at stride ``s`` is ``((j + 0.5) * s, (i + 0.5) * s)`` in input pixels;
- output ``scores``: ``[N, A, C]`` class logits, one sigmoid per class (FCOS/RetinaNet style, no softmax);
- output ``boxes``: ``[N, A, 4]`` distances (left, top, right, bottom) from the point to the box's sides,
  in input pixels, already positive;
- output ``centerness``: ``[N, A, 1]`` logits.

Decoding (torchvision's ``FCOS.postprocess_detections``, with its defaults): per level, the score of
(anchor, class) is ``sqrt(sigmoid(cls) * sigmoid(ctr))`` (FCOS's test-time score); candidates scoring
above ``score_thresh = 0.2`` are kept, at most ``topk_candidates = 1000`` per level (highest first); the
box is ``(x - l, y - t, x + r, y + b)`` clipped to the image; then class-wise NMS at IoU
``nms_thresh = 0.6`` (a box is suppressed by a higher-scoring box of its class with IoU > 0.6) and the
``detections_per_img = 100`` highest scores are kept.

A decoded image is a fixed-size ``[100, 6]`` float32 array of rows ``(x1, y1, x2, y2, score, label)``,
highest score first, padded with rows of label -1 (``DetectionRows``): fixed-size, so that a batch is one
array and the evidence files can stack it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Tuple

import numpy as np

from ..errors import DataError

DEFAULT_STRIDES = (8, 16, 32)
OUTPUT_NAMES = ("scores", "boxes", "centerness")
PAD_LABEL = -1


@dataclass(frozen=True)
class DecodeSettings:
    """torchvision's FCOS defaults (``torchvision.models.detection.FCOS.__init__``; detectron2's FCOS the same)."""

    score_thresh: float = 0.2
    topk_candidates: int = 1000
    nms_thresh: float = 0.6
    detections_per_img: int = 100


DEFAULT_DECODE = DecodeSettings()


@dataclass(frozen=True)
class HeadOutputs:
    """A detector's raw output batch: the three named outputs, the input's (H, W) and the model's strides."""

    scores: np.ndarray  # [N, A, C] class logits
    boxes: np.ndarray  # [N, A, 4] (l, t, r, b) distances in input pixels
    centerness: np.ndarray  # [N, A, 1] logits
    image_size: Tuple[int, int]  # (H, W) of the network input
    strides: Tuple[int, ...] = DEFAULT_STRIDES

    @classmethod
    def of(
        cls, outputs: Mapping[str, Any], image_size: Sequence[int], strides: Sequence[int] = DEFAULT_STRIDES
    ) -> HeadOutputs:
        """From a runtime's named outputs (``scores``, ``boxes``, ``centerness``)."""
        missing = [n for n in OUTPUT_NAMES if n not in outputs]
        if missing:
            raise DataError(
                f"A detector's outputs are named {', '.join(OUTPUT_NAMES)}; this model gives {', '.join(outputs)} "
                f"(missing {', '.join(missing)}). Export the raw head outputs under those names."
            )
        h, w = (int(v) for v in image_size)
        return cls(*(np.asarray(outputs[n]) for n in OUTPUT_NAMES), (h, w), tuple(int(s) for s in strides))


def level_shapes(height: int, width: int, strides: Sequence[int] = DEFAULT_STRIDES) -> list:
    """The (rows, columns) of each level's grid: ``ceil(H / s)`` x ``ceil(W / s)`` (a stride-2 conv's arithmetic)."""
    return [(-(-height // s), -(-width // s)) for s in strides]


def anchor_points(height: int, width: int, strides: Sequence[int] = DEFAULT_STRIDES) -> list:
    """Per level, the ``[h_l * w_l, 2]`` float32 (x, y) points, row-major: cell (i, j) -> ((j + .5) s, (i + .5) s)."""
    points = []
    for (rows, cols), s in zip(level_shapes(height, width, strides), strides):  # noqa: B905 (Python 3.8)
        ys, xs = np.meshgrid((np.arange(rows) + 0.5) * s, (np.arange(cols) + 0.5) * s, indexing="ij")
        points.append(np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32))
    return points


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x.astype(np.float32)))).astype(np.float32)


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes ``[n, 4]`` x ``[m, 4]`` (no +1 on widths, as torchvision's ``box_iou``), in their dtype."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS (torchvision.ops.nms): indices of kept boxes, highest score first; a box is dropped when a kept,
    higher-scoring box overlaps it with IoU > ``iou_threshold``. Ties in score keep the earlier box first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        iou = box_iou_matrix(boxes[i : i + 1], boxes[order[1:]])[0]
        order = order[1:][~(iou > iou_threshold)]  # NaN (two empty boxes) is not an overlap, as in torchvision
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each class (torchvision.ops.batched_nms): kept indices, highest score first."""
    keep = [np.flatnonzero(labels == c)[nms(boxes[labels == c], scores[labels == c], iou_threshold)]
            for c in np.unique(labels)]  # fmt: skip
    kept = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    return kept[np.argsort(-scores[kept], kind="stable")]


def decode_image(
    scores: np.ndarray,
    boxes: np.ndarray,
    centerness: np.ndarray,
    image_size: Sequence[int],
    strides: Sequence[int] = DEFAULT_STRIDES,
    settings: DecodeSettings = DEFAULT_DECODE,
) -> np.ndarray:
    """One image's raw outputs (``[A, C]``, ``[A, 4]``, ``[A, 1]``) as ``[detections_per_img, 6]`` rows."""
    height, width = (int(v) for v in image_size)
    points = anchor_points(height, width, strides)
    sizes = [len(p) for p in points]
    if scores.shape[0] != sum(sizes) or boxes.shape[0] != sum(sizes) or centerness.shape[0] != sum(sizes):
        raise DataError(
            f"The detector's outputs hold {scores.shape[0]} anchor points (boxes {boxes.shape[0]}, centerness "
            f"{centerness.shape[0]}); an input of {height}x{width} at strides {tuple(strides)} has {sum(sizes)}. "
            "Give the strides the model was built with (its metadata), and the input size it ran at."
        )
    num_classes = scores.shape[1]
    out_boxes, out_scores, out_labels = [], [], []
    start = 0
    for pts, n in zip(points, sizes):  # noqa: B905 (Python 3.8: no strict=)
        cls, reg, ctr = scores[start : start + n], boxes[start : start + n], centerness[start : start + n]
        start += n
        prob = np.sqrt(_sigmoid(cls) * _sigmoid(ctr)).ravel()  # anchor-major, class-minor
        idx = np.flatnonzero(prob > settings.score_thresh)
        idx = idx[np.argsort(-prob[idx], kind="stable")[: settings.topk_candidates]]
        anchor, label = idx // num_classes, idx % num_classes
        p, d = pts[anchor], reg[anchor].astype(np.float32)
        b = np.stack([p[:, 0] - d[:, 0], p[:, 1] - d[:, 1], p[:, 0] + d[:, 2], p[:, 1] + d[:, 3]], axis=1)
        b[:, 0::2] = np.clip(b[:, 0::2], 0, width)
        b[:, 1::2] = np.clip(b[:, 1::2], 0, height)
        out_boxes.append(b)
        out_scores.append(prob[idx])
        out_labels.append(label)
    b, s, lab = np.concatenate(out_boxes), np.concatenate(out_scores), np.concatenate(out_labels)
    keep = batched_nms(b, s, lab, settings.nms_thresh)[: settings.detections_per_img]
    rows = np.zeros((settings.detections_per_img, 6), np.float32)
    rows[:, 5] = PAD_LABEL
    rows[: len(keep), :4], rows[: len(keep), 4], rows[: len(keep), 5] = b[keep], s[keep], lab[keep]
    return rows


def decode(head: HeadOutputs, settings: DecodeSettings = DEFAULT_DECODE) -> np.ndarray:
    """A raw output batch as ``[N, detections_per_img, 6]`` detection rows."""
    return np.stack(
        [
            decode_image(head.scores[i], head.boxes[i], head.centerness[i], head.image_size, head.strides, settings)
            for i in range(len(head.scores))
        ]
    )


def valid_rows(rows: np.ndarray) -> np.ndarray:
    """The rows of one image that are detections (label >= 0), not padding."""
    return rows[rows[:, 5] >= 0]


def to_source(rows: np.ndarray, *, source: Sequence[int], inner: Sequence[int], top: int = 0, left: int = 0):
    """Detections in input pixels -> the original image's pixels, for an image of ``source`` (h, w) placed at
    ``inner`` (h, w) pixels from (``top``, ``left``) of the input (a plain resize: inner = input, no offset).
    Boxes are clipped to the image; padding rows stay padding."""
    out = rows.astype(np.float32, copy=True)
    valid = out[:, 5] >= 0
    sy, sx = source[0] / inner[0], source[1] / inner[1]
    b = out[valid, :4]
    b[:, 0::2] = np.clip((b[:, 0::2] - left) * sx, 0, source[1])
    b[:, 1::2] = np.clip((b[:, 1::2] - top) * sy, 0, source[0])
    out[valid, :4] = b
    return out
