"""COCO-style AP from per-image evidence that sums over images (numpy only).

Per image, ``image_evidence`` runs COCOeval's greedy matching exactly (``pycocotools.cocoeval.COCOeval.
evaluateImg``, bbox IoU): per class and per area range, detections in score order (at most ``MAX_DETS``
per image and class) each take the unmatched ground truth of highest IoU >= t (ties: the later one);
non-ignored ground truths first, then ignored ones (crowd, or outside the area range); a crowd ground
truth is matched by IoU = intersection / detection area and may take any number of detections. A
detection matched to an ignored ground truth, or unmatched with an area outside the range, is neither
a TP nor an FP.

The image's evidence is a histogram over score bins: for each IoU threshold ``t`` (0.50:0.05:0.95),
area range ``a`` (all, small < 32², medium, large > 96², by box area w*h), class ``c`` and score bin ``b``
(``SCORE_BINS`` equal bins over [0, 1]), the counts of TPs and FPs; and per (a, c) the count of
non-ignored ground truths. Flattened: ``T*A*C*B*2`` counts then ``A*C`` ground-truth counts (int16: at
most 100 detections per image and class; a ground-truth count over 32767 is refused).

Summed over images, ``ap_table`` reads the precision/recall curve from the bins, highest score first:
after bin ``k``, TP_k and FP_k are the cumulative counts, recall_k = TP_k / G, precision = TP / (TP + FP +
eps); the interpolated precision at recall r is the best precision of the curve at recall >= r (0 when
none reaches r), and AP(t, a, c) = mean over the 101 recall thresholds r in {0, 0.01, ..., 1}
(COCOeval.accumulate, the 101-point interpolation of Lin et al., "Microsoft COCO", 2014). The one thing
the bins lose is the order of detections within a bin (scores within 1/200 of each other): ranked FPs
first, a bin adds only its end point, precision_k = TP_k / (TP_k + FP_k); ranked TPs first, its best
point is TP_k / (TP_k + FP_{k-1}). COCOeval's AP lies between the two; the metric is their mean
(``within_bin="mid"``), within half their gap of COCOeval's (tests/test_detection_task.py measures it
against pycocotools). With one detection per bin the two are equal and equal COCOeval's AP.

AP = 100 * mean over classes with ground truth of mean_t AP(t, all, c); AP50, AP75 at t = 0.5, 0.75;
AP small/medium/large the same over the area ranges (COCO's summarize, maxDets 100). One difference from
COCO's own files: the area of a ground truth here is its box area, where COCO's annotations carry the
mask area.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from ..errors import DataError

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCOeval Params: np.linspace(.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AREA_NAMES = ("all", "small", "medium", "large")
AREA_RANGES = np.array([[0, 1e5**2], [0, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
MAX_DETS = 100
SCORE_BINS = 200  # finer bins cut the within-bin error further, at the same factor of evidence and bootstrap time
EVIDENCE_DTYPE = np.int16
T, NA = len(IOU_THRESHOLDS), len(AREA_NAMES)


def evidence_length(num_classes: int, bins: int = SCORE_BINS) -> int:
    """Length of one image's flattened evidence."""
    return num_classes * (T * NA * bins * 2 + NA)


def target_parts(target: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes float64 [K, 4] xyxy, labels int64 [K], iscrowd bool [K]) of a target dict (``boxes``, ``labels``,
    optional ``iscrowd``) or of saved rows ``[K, 6]`` (x1, y1, x2, y2, 1 or 0 for a crowd, label; label -1: padding)."""
    if isinstance(target, dict):
        boxes = np.asarray(target["boxes"], np.float64).reshape(-1, 4)
        labels = np.asarray(target["labels"], np.int64).reshape(-1)
        crowd = target.get("iscrowd")
        crowd = np.zeros(len(labels), bool) if crowd is None else np.asarray(crowd, bool).reshape(-1)
        return boxes, labels, crowd
    rows = np.asarray(target)
    rows = rows[rows[:, 5] >= 0]
    return rows[:, :4].astype(np.float64), rows[:, 5].astype(np.int64), rows[:, 4] == 0


def _xywh(b: np.ndarray) -> np.ndarray:
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def coco_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """``[D, G]`` IoU of xyxy boxes as pycocotools computes it (maskApi ``bbIou``, from x, y, w, h in float64):
    intersection / union, or intersection / detection area for a crowd ground truth."""
    d, g = _xywh(dt.astype(np.float64)), _xywh(gt.astype(np.float64))
    lo_x, lo_y = np.maximum(d[:, None, 0], g[None, :, 0]), np.maximum(d[:, None, 1], g[None, :, 1])
    w = np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2]) - lo_x
    h = np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3]) - lo_y
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    da, ga = d[:, 2] * d[:, 3], g[:, 2] * g[:, 3]
    union = np.where(crowd[None, :], da[:, None], da[:, None] + ga[None, :] - inter)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _last_best(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Over the last axis: the index of the last maximum and whether any value is >= 0 (-1 marks "not a candidate")."""
    g = values.shape[-1]
    return g - 1 - np.argmax(values[..., ::-1], axis=-1), values.max(axis=-1) >= 0


def match_class(dt_boxes, dt_scores, gt_boxes, gt_crowd):
    """COCOeval's greedy matching of one image and class for every area range and IoU threshold at once.

    Returns (tp, fp) bool ``[A, T, D]`` for the detections in score order (stable; the first ``MAX_DETS``)
    and the ``[A]`` counts of non-ignored ground truths, and the order used.
    """
    order = np.argsort(-dt_scores, kind="stable")[:MAX_DETS]
    dt = dt_boxes[order]
    g_area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    lo, hi = AREA_RANGES[:, :1], AREA_RANGES[:, 1:]
    g_ig = np.logical_or(gt_crowd[None, :], (g_area[None, :] < lo) | (g_area[None, :] > hi))  # [A, G]
    n_gt = (~g_ig).sum(1)
    n_dt, n_g = len(dt), len(gt_boxes)
    matched = np.zeros((NA, T, n_dt), bool)
    dt_ig = np.zeros((NA, T, n_dt), bool)
    if n_dt and n_g:
        iou = coco_iou(dt, gt_boxes, gt_crowd)
        thr = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, :, None]  # [1, T, 1]
        gt_taken = np.zeros((NA, T, n_g), bool)
        a_idx, t_idx = np.meshgrid(np.arange(NA), np.arange(T), indexing="ij")
        for k in range(n_dt):
            cand = (iou[k][None, None, :] >= thr) & np.logical_or(~gt_taken, gt_crowd[None, None, :])  # [A, T, G]
            free = np.where(cand & ~g_ig[:, None, :], iou[k], -1.0)
            ignored = np.where(cand & g_ig[:, None, :], iou[k], -1.0)
            m_free, has_free = _last_best(free)
            m_ig, has_ig = _last_best(ignored)
            m = np.where(has_free, m_free, m_ig)
            hit = has_free | has_ig
            matched[:, :, k] = hit
            dt_ig[:, :, k] = hit & g_ig[a_idx, m]
            gt_taken[a_idx[hit], t_idx[hit], m[hit]] = True
    d_area = (dt[:, 2] - dt[:, 0]) * (dt[:, 3] - dt[:, 1])
    outside = (d_area[None, :] < lo) | (d_area[None, :] > hi)  # [A, D]
    dt_ig |= ~matched & outside[:, None, :]
    return matched & ~dt_ig, ~matched & ~dt_ig, n_gt, order


def image_evidence(detections: np.ndarray, target: Any, num_classes: int, bins: int = SCORE_BINS) -> np.ndarray:
    """One image's flattened evidence (see the module docstring) from its ``[D, 6]`` detection rows and target."""
    dets = np.asarray(detections)
    dets = dets[dets[:, 5] >= 0]
    gt_boxes, gt_labels, gt_crowd = target_parts(target)
    for name, labels in (("detection", dets[:, 5].astype(np.int64)), ("ground-truth", gt_labels)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(
                f"A {name} has class {int(labels.max())}; allowed are 0..{num_classes - 1}. Check num_classes and "
                "the dataset's category mapping."
            )
    counts = np.zeros((T, NA, num_classes, bins, 2), np.int64)
    gts = np.zeros((NA, num_classes), np.int64)
    score_bin = np.minimum((dets[:, 4].astype(np.float64) * bins).astype(np.int64), bins - 1).clip(0)
    for c in np.union1d(gt_labels, dets[:, 5].astype(np.int64)):
        d, g = dets[:, 5] == c, gt_labels == c
        tp, fp, n_gt, order = match_class(dets[d, :4].astype(np.float64), dets[d, 4], gt_boxes[g], gt_crowd[g])
        gts[:, c] = n_gt
        b = score_bin[d][order]
        for which, flags in ((0, tp), (1, fp)):
            a, t, k = np.nonzero(flags)
            np.add.at(counts[:, :, c, :, which], (t, a, b[k]), 1)
    if gts.max(initial=0) > np.iinfo(EVIDENCE_DTYPE).max:
        raise DataError(f"An image has {int(gts.max())} ground truths of one class; at most 32767 are counted.")
    return np.concatenate([counts.ravel(), gts.ravel()]).astype(EVIDENCE_DTYPE)


def split_evidence(evidence: np.ndarray, bins: int = SCORE_BINS) -> Tuple[np.ndarray, np.ndarray]:
    """Flattened evidence ``[..., L]`` -> counts ``[..., T, A, C, B, 2]`` and ground-truth counts ``[..., A, C]``."""
    e = np.asarray(evidence)
    per_class = T * NA * bins * 2 + NA
    if e.shape[-1] % per_class:
        raise DataError(
            f"Detection evidence of length {e.shape[-1]} is not a whole number of classes at {bins} score bins "
            f"({per_class} values per class). Evidence from another task or bin count cannot be scored here."
        )
    c = e.shape[-1] // per_class
    lead = e.shape[:-1]
    n = T * NA * c * bins * 2
    return e[..., :n].reshape(lead + (T, NA, c, bins, 2)), e[..., n:].reshape(lead + (NA, c))


WITHIN_BIN = {"worst": (1.0, 0.0), "best": (0.0, 1.0), "mid": (0.5, 0.5)}  # weights of the (FP-first, TP-first) APs


def ap_table(evidence: np.ndarray, bins: int = SCORE_BINS, within_bin: str = "mid", areas: slice = slice(None)):
    """AP(t, a, c) as fractions ``[..., T, A, C]`` of summed evidence (NaN where a class has no ground truth), for
    the area ranges ``areas`` selects (all four by default).

    ``within_bin``: how the detections inside one score bin are ranked: ``"worst"`` (its FPs first: the curve
    has only the bins' ends, a subset of COCOeval's points), ``"best"`` (its TPs first), ``"mid"`` (the mean of
    the two). COCOeval's AP lies between worst and best; mid is within half their gap of it.
    """
    counts, gts = split_evidence(evidence, bins)
    counts, gts = counts[..., areas, :, :, :], gts[..., areas, :]
    # Cumulative counts, highest score bin first.
    tp = np.cumsum(np.asarray(counts[..., ::-1, 0], np.float64), axis=-1)
    fp = np.cumsum(np.asarray(counts[..., ::-1, 1], np.float64), axis=-1)
    n_gt = gts.astype(np.float64)[..., None, :, :, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / n_gt
    reached = np.searchsorted(RECALL_THRESHOLDS, np.nan_to_num(recall, nan=-1.0), side="right")  # r_i <= recall
    first = reached.copy()  # the recall thresholds first reached at this bin
    first[..., 1:] -= reached[..., :-1]
    fp_before = np.concatenate([np.zeros_like(fp[..., :1]), fp[..., :-1]], axis=-1)
    ap = np.zeros(tp.shape[:-1])
    for weight, fp_at in ((WITHIN_BIN[within_bin][0], fp), (WITHIN_BIN[within_bin][1], fp_before)):
        if weight:
            # The interpolated precision at a recall first reached in bin k: the best precision from there on.
            # Ranked FP-first, the best point of bin k is its end; ranked TP-first, it is after its last TP.
            precision = tp / (tp + fp_at + np.spacing(1))
            envelope = np.maximum.accumulate(precision[..., ::-1], axis=-1)[..., ::-1]
            ap += weight * (envelope * first).sum(-1) / len(RECALL_THRESHOLDS)
    return np.where(n_gt[..., 0] > 0, ap, np.nan)


def _class_mean(ap: np.ndarray) -> np.ndarray:
    """100 * mean over classes (last axis) with ground truth; NaN when none has any."""
    seen = (~np.isnan(ap)).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen > 0, 100.0 * np.nansum(ap, axis=-1) / np.maximum(seen, 1), np.nan)


def map_of(evidence: np.ndarray, bins: int = SCORE_BINS) -> np.ndarray:
    """AP@[.5:.95] in points of summed evidence ``[..., L]``, vectorised over leading axes."""
    return _class_mean(ap_table(evidence, bins, areas=slice(0, 1))[..., :, 0, :].mean(-2))


def coco_summary(evidence: np.ndarray, bins: int = SCORE_BINS, within_bin: str = "mid") -> Dict[str, Any]:
    """COCO's summary (points) of one split's summed evidence, and AP@[.5:.95] per class (None: no ground truth)."""
    table = ap_table(evidence, bins, within_bin)

    def points(v) -> Any:
        v = float(v)
        return None if np.isnan(v) else v

    per_class = table[:, 0, :].mean(0)
    return {
        "map": points(_class_mean(per_class)),
        "ap50": points(_class_mean(table[0, 0])),
        "ap75": points(_class_mean(table[5, 0])),
        "ap_small": points(_class_mean(table[:, 1].mean(0))),
        "ap_medium": points(_class_mean(table[:, 2].mean(0))),
        "ap_large": points(_class_mean(table[:, 3].mean(0))),
        "per_class_ap": [points(100 * v) for v in per_class],
    }
