"""Object detection: boxes with classes and scores from an anchor-free (FCOS-style) head, scored by COCO AP.

- Raw output (the contract, tasks/detection_decode.py): ``scores`` ``[N, A, C]`` class logits (sigmoid),
  ``boxes`` ``[N, A, 4]`` (left, top, right, bottom) distances in input pixels, ``centerness`` ``[N, A, 1]``
  logits, over the anchor points of strides (8, 16, 32). ``raw_output`` takes the three named outputs and
  the input's size from the feed (``HeadOutputs``); the ``nms`` head's outputs (``NMS_OUTPUT_NAMES``, made by
  export/detection_nms.py) are read as ``NmsOutputs``, whose rows are already decoded and suppressed.
- Prediction: per image ``[100, 6]`` float32 rows ``(x1, y1, x2, y2, score, label)`` in input pixels,
  highest score first, padded with label -1: torchvision FCOS's decoding and class-wise NMS, in numpy,
  one implementation for every backend (``decode``).
- Target (the loaders'): a dict ``boxes`` float32 ``[K, 4]`` xyxy pixels, ``labels`` int64 ``[K]``,
  ``iscrowd`` bool ``[K]``; saved as ``[max(K, 100), 6]`` rows (score column 1, 0 for a crowd box).
- Evidence per image (tasks/detection_ap.py): COCOeval's matching as TP/FP histograms over 200 score bins
  per IoU threshold, area range and class, and the ground-truth counts; summed over images it gives COCO
  AP (101-point interpolation, maxDets 100) up to the order of detections within one score bin.
- Metric: AP@[.5:.95] in points (``map``); the parity rows add AP50, AP75, AP small/medium/large, per-class AP.
- Parity (``DetectionParityMeter``): AP and its deltas against the reference and the parent, per-class AP
  and delta, the share of the reference's (and the parent's) detections found again (same class, IoU >=
  0.9, score within 0.05), score agreement per anchor (the top class above the score threshold, or none),
  and |differences| of the raw head tensors.
- Criteria (``DetectionCriteria``): how far a stage may move from its parent, per precision.
- Budgets: ``min_map``, ``max_map_drop``, ``min_matched_share``, ``max_baseline_map_drop``.
- Files and pictures (tasks/detection_draw.py): ``predict`` writes COCO-style entries in the original
  image's pixels into predictions.json (and with ``--save-overlay`` the boxes drawn over the image);
  report.html draws boxes in class colours with their labels.

Only numpy and the standard library: the gate and the device agent (Python 3.8) may import this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from ..errors import DataError
from . import detection_ap as ap
from .base import BudgetKey, Column, ParityMeter, Task
from .detection_decode import (
    DEFAULT_DECODE,
    DEFAULT_STRIDES,
    PAD_LABEL,
    DecodeSettings,
    HeadOutputs,
    anchor_points,
    box_iou_matrix,
    decode,
    valid_rows,
)

# The outputs of the graph with NMS inside (export/detection_nms.py: num_dets [N, 1] int32, det_boxes [N, K, 4],
# det_scores [N, K], det_labels [N, K] int32; rows at and after num_dets are padding).
NMS_OUTPUT_NAMES = ("num_dets", "det_boxes", "det_scores", "det_labels")


@dataclass(frozen=True)
class NmsOutputs:
    """The outputs of a graph that decodes and suppresses inside (the ``nms`` head), as a runtime gives them. Named
    as the outputs, not as ``HeadOutputs``' fields: code that reads head tensors fails loudly on these."""

    num_dets: np.ndarray  # [N, 1] int
    det_boxes: np.ndarray  # [N, K, 4] x1, y1, x2, y2 in input pixels
    det_scores: np.ndarray  # [N, K]
    det_labels: np.ndarray  # [N, K] int

    @classmethod
    def of(cls, outputs: Mapping[str, Any]) -> NmsOutputs:
        return cls(*(np.asarray(outputs[n]) for n in NMS_OUTPUT_NAMES))

    def rows(self, detections_per_img: int) -> np.ndarray:
        """``[N, detections_per_img, 6]`` rows as ``decode`` writes them: the first ``num_dets`` detections of each
        image, highest score first, then padding (label -1)."""
        n = len(self.det_boxes)
        out = np.zeros((n, detections_per_img, 6), np.float32)
        out[:, :, 5] = PAD_LABEL
        for i in range(n):
            k = min(int(np.asarray(self.num_dets[i]).reshape(-1)[0]), self.det_boxes.shape[1], detections_per_img)
            if k < 0:
                raise DataError(f"The NMS graph says image {i} has {k} detections; a count is never negative.")
            order = np.argsort(-self.det_scores[i, :k].astype(np.float32), kind="stable")
            out[i, :k, :4] = self.det_boxes[i, order]
            out[i, :k, 4] = self.det_scores[i, order]
            out[i, :k, 5] = self.det_labels[i, order]
        return out


MATCH_IOU = 0.9  # a detection is found again when a box of its class overlaps it this much ...
MATCH_SCORE_TOL = 0.05  # ... and its score moved at most this much (absolute)


def saved_rows(prediction: Any) -> np.ndarray:
    """One image's detections (``[D, 6]`` rows) or target dict as float32 rows for the evidence files.

    A target's rows carry 1 in the score column (0 for a crowd box); both are padded with label -1 to at
    least 100 rows, so that the images of a split stack into one array.
    """
    if isinstance(prediction, dict):
        boxes, labels, crowd = ap.target_parts(prediction)
        rows = np.concatenate([boxes, (~crowd)[:, None], labels[:, None]], axis=1).astype(np.float32)
    else:
        rows = np.asarray(prediction, np.float32).reshape(-1, 6)
    out = np.zeros((max(len(rows), DEFAULT_DECODE.detections_per_img), 6), np.float32)
    out[:, 5] = PAD_LABEL
    out[: len(rows)] = rows
    return out


def matched_share(rows: np.ndarray, reference: np.ndarray) -> tuple:
    """(found, total): how many of ``reference``'s detections ``rows`` has again: greedily in the reference's
    score order, each takes the unused detection of its class with the highest IoU >= ``MATCH_IOU`` among those
    whose score is within ``MATCH_SCORE_TOL``."""
    ref, got = valid_rows(reference), valid_rows(rows)
    if not len(ref) or not len(got):
        return 0, len(ref)
    iou = box_iou_matrix(ref[:, :4].astype(np.float64), got[:, :4].astype(np.float64))
    ok = (iou >= MATCH_IOU) & (ref[:, None, 5] == got[None, :, 5])
    ok &= np.abs(ref[:, None, 4].astype(np.float64) - got[None, :, 4]) <= MATCH_SCORE_TOL + 1e-7
    used = np.zeros(len(got), bool)
    found = 0
    for i in np.argsort(-ref[:, 4], kind="stable"):
        cand = np.where(ok[i] & ~used, iou[i], -1.0)
        j = int(np.argmax(cand))
        if cand[j] >= 0:
            used[j] = True
            found += 1
    return found, len(ref)


def top_class(head: HeadOutputs, settings: DecodeSettings = DEFAULT_DECODE) -> np.ndarray:
    """Per anchor ``[N, A]``: the class of the highest score ``sqrt(sigmoid(cls) * sigmoid(ctr))`` if it is above
    the score threshold, else -1 (nothing detected there)."""
    with np.errstate(over="ignore"):
        cls = 1.0 / (1.0 + np.exp(-head.scores.astype(np.float64)))
        ctr = 1.0 / (1.0 + np.exp(-head.centerness.astype(np.float64)))
    score = np.sqrt(cls * ctr)
    best = score.argmax(-1)
    return np.where(score.max(-1) > settings.score_thresh, best, -1)


# ---------------------------------------------------------------------------------------------
# parity
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectionCriteria:
    """How far a stage may move from the stage before it (AP points, share of detections, logits, pixels).

    ``max_abs_logit`` (scores and centerness) and ``max_abs_box_px`` (box distances) are checked only between
    float stages of the same precision; quantized stages are judged on detections (AP and the matched share).
    """

    max_map_drop: float
    min_matched_share: float
    max_abs_logit: float | None = None
    max_abs_box_px: float | None = None

    def for_fine_tuned(self) -> DetectionCriteria:
        """A stage trained again (QAT) computes something else than its parent: judged by the AP drop alone."""
        return DetectionCriteria(self.max_map_drop, 0.0)


# Float: the same graph; NMS is discontinuous (a box at IoU ~0.6 kept or not), so AP may move a little.
FLOAT_PARITY = DetectionCriteria(max_map_drop=0.05, min_matched_share=0.99, max_abs_logit=1e-3, max_abs_box_px=1e-2)
FP16_PARITY = DetectionCriteria(max_map_drop=0.2, min_matched_share=0.95)
# INT8: the drop segmentation allows its mIoU. Matched share 0.8: IoU >= 0.9 leaves a 32 px box (COCO's small
# limit) about 1 px per side (a 1 px shift of every side gives IoU 0.94, 2 px gives 0.79), about an INT8 step
# of a box output spanning a few hundred pixels; a fifth of the detections may move more or change score.
INT8_PARITY = DetectionCriteria(max_map_drop=1.0, min_matched_share=0.8)

# The budgets an INT8 target gets when the budgets file names none.
INT8_BUDGETS = {"max_map_drop": 1.0, "min_matched_share": 0.8}

HEAD_NAMES = ("scores", "boxes", "centerness")


class DetectionParityMeter(ParityMeter):
    """One ledger stage: AP evidence per image, matched detections, score agreement, head tensor distances."""

    def __init__(self, num_classes: int, bins: int = ap.SCORE_BINS) -> None:
        self.num_classes, self.bins = num_classes, bins
        self.evidence = np.zeros(ap.evidence_length(num_classes, bins), np.int64)
        self.found_ref = self.found_parent = self.total_ref = self.total_parent = 0
        self.agree_ref = self.agree_parent = self.anchors = 0
        self.max_ref = dict.fromkeys(HEAD_NAMES, 0.0)
        self.sum_ref = dict.fromkeys(HEAD_NAMES, 0.0)
        self.values = dict.fromkeys(HEAD_NAMES, 0)
        self.max_parent = dict.fromkeys(HEAD_NAMES, 0.0)
        self.has_parent = self.parent_heads = False  # a parent; one whose head tensors were compared
        self.parent_anchors = 0
        self.per_image: list = []
        self.kept: list = []

    def update(self, output, prediction, reference, parent, label, keep) -> None:
        ref_out, ref_pred = reference
        e = ap.image_evidence(prediction[0], label, self.num_classes, self.bins)
        self.per_image.append(e)
        self.evidence += e
        if keep:
            self.kept.append(saved_rows(prediction[0]))
        found, total = matched_share(prediction[0], ref_pred[0])
        self.found_ref, self.total_ref = self.found_ref + found, self.total_ref + total
        # A graph with NMS inside (NmsOutputs) has no head tensors: it is compared by its detections alone.
        heads = isinstance(output, HeadOutputs) and isinstance(ref_out, HeadOutputs)
        top = top_class(output) if isinstance(output, HeadOutputs) else None
        if heads:
            self.anchors += top.size
            self.agree_ref += int((top == top_class(ref_out)).sum())
            for name in HEAD_NAMES:
                d = np.abs(getattr(output, name).astype(np.float64) - getattr(ref_out, name).astype(np.float64))
                self.max_ref[name] = max(self.max_ref[name], float(d.max(initial=0.0)))
                self.sum_ref[name] += float(d.sum())
                self.values[name] += d.size
        if parent is not None:
            self.has_parent = True
            par_out, par_pred = parent
            found, total = matched_share(prediction[0], par_pred[0])
            self.found_parent, self.total_parent = self.found_parent + found, self.total_parent + total
            if top is not None and isinstance(par_out, HeadOutputs):
                self.parent_heads = True
                self.parent_anchors += top.size
                self.agree_parent += int((top == top_class(par_out)).sum())
                for name in HEAD_NAMES:
                    d = np.abs(getattr(output, name).astype(np.float64) - getattr(par_out, name).astype(np.float64))
                    self.max_parent[name] = max(self.max_parent[name], float(d.max(initial=0.0)))

    def fields(self, reference: ParityMeter, parent: Mapping[str, Any] | None) -> dict:
        mine, ref = ap.coco_summary(self.evidence, self.bins), ap.coco_summary(reference.evidence, self.bins)

        def delta(a, b):
            return None if a is None or b is None else a - b

        def share(found, total):
            return found / total if total else 1.0  # nothing to find: nothing was lost

        p, ph = self.has_parent, self.parent_heads
        heads = bool(self.anchors)  # head tensors compared with the reference's (None: a graph with NMS inside)
        return {
            **{k: mine[k] for k in ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")},
            "map_delta": delta(mine["map"], ref["map"]),
            "map_delta_vs_parent": None if parent is None else delta(mine["map"], parent["map"]),
            "per_class_ap": mine["per_class_ap"],
            "per_class_delta": [delta(a, ref["per_class_ap"][c]) for c, a in enumerate(mine["per_class_ap"])],
            "matched_share": share(self.found_ref, self.total_ref),
            "matched_share_vs_parent": share(self.found_parent, self.total_parent) if p else None,
            "score_agreement": self.agree_ref / self.anchors if heads else None,
            "score_agreement_vs_parent": self.agree_parent / self.parent_anchors if ph else None,
            **{f"max_abs_{n}": self.max_ref[n] if heads else None for n in HEAD_NAMES},
            **{f"mean_abs_{n}": self.sum_ref[n] / self.values[n] if self.values[n] else None for n in HEAD_NAMES},
            "max_abs_logit_vs_parent": max(self.max_parent["scores"], self.max_parent["centerness"]) if ph else None,
            "max_abs_box_vs_parent": self.max_parent["boxes"] if ph else None,
        }


# ---------------------------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------------------------
class Detection(Task):
    name = "detection"
    metric = "map"
    metric_label = "AP"
    metric_unit = "AP points"
    evidence = "score histograms"
    # report.json row keys, in their order there
    parity_fields = (
        "map",
        "map_delta",
        "map_delta_vs_parent",
        "ap50",
        "ap75",
        "ap_small",
        "ap_medium",
        "ap_large",
        "matched_share",
        "matched_share_vs_parent",
        "score_agreement",
        "score_agreement_vs_parent",
        "max_abs_scores",
        "max_abs_boxes",
        "max_abs_centerness",
        "mean_abs_scores",
        "mean_abs_boxes",
        "mean_abs_centerness",
        "max_abs_logit_vs_parent",
        "max_abs_box_vs_parent",
        "per_class_ap",
        "per_class_delta",
    )
    budget_keys = {
        "min_map": BudgetKey(
            "AP points", "min", 0.0, 100.0, "COCO AP@[.5:.95] on the evaluation images", field="map", label="AP",
            fmt=".2f", example="20",
        ),
        "max_map_drop": BudgetKey(
            "AP points", "max", 0.0, 100.0, "drop of AP against the PyTorch student, at the stated confidence",
            check="drop", field="map_delta", label="AP", example="1.0",
        ),
        "min_matched_share": BudgetKey(
            "fraction", "min", 0.0, 1.0,
            f"share of the PyTorch student's detections found again (same class, IoU >= {MATCH_IOU:g}, score within "
            f"{MATCH_SCORE_TOL:g})",
            field="matched_share", label="detections matched with the PyTorch student", fmt=".4f", example="0.8",
        ),
        "max_baseline_map_drop": BudgetKey(
            "AP points", "max", 0.0, 100.0, "with --baseline: drop of AP against the baseline's same stage",
            check="baseline_drop", field="map", label="AP", example="1.0", default=0.5,
        ),
    }  # fmt: skip
    export_heads = ("raw", "nms")
    columns = (
        Column("AP", "map"),
        Column("ΔAP", "map_delta", "+.3f"),
        Column("matched %", "matched_share", ".1f", 100.0),
    )
    output_folders = ("overlays",)
    int8_float_tail = True  # exp(s * x) * stride of the box distances, and the outputs' reshapes, stay in float
    times_postprocess = True  # decoding and NMS run on the host for every backend: timed beside the network
    # Box distances and corners are pixels, up to the input size: ONNX Runtime's float32 differs from PyTorch's by
    # about 1e-5 of the value (summation order), more than the absolute 1e-3 at a few hundred pixels.
    export_rtol = MappingProxyType({"boxes": 1e-4, "det_boxes": 1e-4})
    criteria = {"fp32": FLOAT_PARITY, "fp16": FP16_PARITY, "int8": INT8_PARITY}
    int8_budgets = INT8_BUDGETS

    def __init__(self, settings: DecodeSettings = DEFAULT_DECODE, strides=DEFAULT_STRIDES, bins: int = ap.SCORE_BINS):
        self.settings, self.strides, self.bins = settings, tuple(strides), bins

    def raw_output(self, outputs, feed) -> HeadOutputs | NmsOutputs:
        """The named outputs of a raw head (``HeadOutputs``), or of a graph with NMS inside (``NmsOutputs``, when the
        outputs are ``NMS_OUTPUT_NAMES``)."""
        if all(n in outputs for n in NMS_OUTPUT_NAMES):
            return NmsOutputs.of(outputs)
        images = [v for v in feed.values() if np.ndim(v) == 4]
        if len(images) != 1:
            raise DataError(f"A detector takes one [N, 3, H, W] image input; the feed holds {', '.join(feed)}.")
        return HeadOutputs.of(outputs, images[0].shape[2:], self.strides)

    def prediction_of(self, output: HeadOutputs | NmsOutputs) -> np.ndarray:
        if isinstance(output, NmsOutputs):
            # The graph applied its own score threshold; a higher one of these settings (predict's
            # --score-threshold) drops the rows at or under it, which sit last (highest score first).
            rows = output.rows(self.settings.detections_per_img)
            low = (rows[..., 5] != PAD_LABEL) & (rows[..., 4] <= self.settings.score_thresh)
            rows[low] = 0.0
            rows[low, 5] = PAD_LABEL
            return rows
        return decode(output, self.settings)

    def replayed_outputs(self, saved) -> dict:
        """One image's ``[D, 6]`` rows as the device saved them, as the outputs of a graph with NMS inside
        (``NMS_OUTPUT_NAMES``): the valid rows (label not -1) come first, highest score first, as ``decode``
        writes them."""
        rows = np.asarray(saved, np.float32).reshape(-1, 6)
        count = int((rows[:, 5] != PAD_LABEL).sum())
        return {
            "num_dets": np.array([[count]], np.int32),
            "det_boxes": rows[None, :, :4].copy(),
            "det_scores": rows[None, :, 4].copy(),
            "det_labels": rows[None, :, 5].astype(np.int32),
        }

    def reference_labels(self, prediction, like) -> np.ndarray:
        """The reference's detections of one image as the ground truth a label-free ledger scores against: its
        ``[D, 6]`` rows, every detection an object (padding rows, label -1, are dropped by the evaluation)."""
        rows = np.asarray(prediction)
        return rows[0] if rows.ndim == 3 else rows

    def image_evidence(self, prediction, target, *, num_classes: int, ignore_index: int = -1) -> np.ndarray:
        return ap.image_evidence(prediction, target, num_classes, self.bins)

    def metric_of(self, evidence: np.ndarray) -> np.ndarray:
        return ap.map_of(evidence, self.bins)

    def summary(self, evidence: np.ndarray) -> dict:
        """COCO's six numbers and per-class AP (points) of summed evidence."""
        return ap.coco_summary(evidence, self.bins)

    def parity_meter(self, num_classes: int, ignore_index: int = -1) -> DetectionParityMeter:
        return DetectionParityMeter(num_classes, self.bins)

    def anchor_points(self, height: int, width: int) -> list:
        """Each level's anchor points of an input of ``height`` x ``width`` (the contract's layout)."""
        return anchor_points(height, width, self.strides)

    @property
    def legend(self) -> tuple:
        from .detection_draw import LEGEND

        return LEGEND

    def as_saved(self, prediction: Any) -> np.ndarray:
        """One image's rows or target (``saved_rows``); a list of targets (a split's ground truth) stacked."""
        if isinstance(prediction, (list, tuple)):
            rows = [saved_rows(p) for p in prediction]
            n = max(len(r) for r in rows)
            out = np.zeros((len(rows), n, 6), np.float32)
            out[:, :, 5] = PAD_LABEL
            for i, r in enumerate(rows):
                out[i, : len(r)] = r
            return out
        return saved_rows(prediction)

    def write_prediction(self, prediction, out, stem, *, colors, classes) -> dict:
        from .detection_draw import write_prediction

        return write_prediction(prediction, out, stem, colors=colors, classes=classes)

    def write_overlay(self, prediction, rgb, out, stem, *, colors, classes=()) -> dict:
        from .detection_draw import write_overlay_file

        return write_overlay_file(prediction, rgb, out, stem, colors=colors, classes=classes)

    def draw(self, prediction, colors, *, ignore_index: int = -1, truth=None, image=None) -> np.ndarray:
        """The boxes over ``image`` (H x W x 3 uint8; without it, a grey canvas holding every box); with ``truth``,
        the ground truth's boxes dashed beneath the prediction's."""
        from .detection_draw import draw_boxes

        return draw_boxes(prediction, colors, truth=truth, image=image)

    def caption(self, prediction, truth, *, ignore_index: int = -1) -> str:
        from .detection_draw import boxes_found

        return boxes_found(prediction, truth)

    def headline(self, row) -> list:
        """The matched share with the reference first, then the AP change."""
        share = row.get("matched_share")
        return ([] if share is None else [f"matched {100 * share:.1f} %"]) + super().headline(row)

    def judge(self, row, parent_name: str, same_precision: bool, criteria: DetectionCriteria) -> list:
        c = criteria
        failures = []
        drop = -(row["map_delta_vs_parent"] or 0.0)
        if drop > c.max_map_drop:
            failures.append(f"AP fell {drop:.3f} points from {parent_name} (allowed {c.max_map_drop:g})")
        share = row["matched_share_vs_parent"]
        if share is not None and share < c.min_matched_share:
            allowed = 100 * c.min_matched_share
            failures.append(f"{100 * share:.2f}% of {parent_name}'s detections found again (allowed >= {allowed:g}%)")
        if same_precision:
            logit, box = row["max_abs_logit_vs_parent"], row["max_abs_box_vs_parent"]
            if c.max_abs_logit is not None and logit is not None and logit > c.max_abs_logit:
                failures.append(f"max |logit diff| from {parent_name} is {logit:.3g} (allowed {c.max_abs_logit:g})")
            if c.max_abs_box_px is not None and box is not None and box > c.max_abs_box_px:
                failures.append(f"max |box diff| from {parent_name} is {box:.3g} px (allowed {c.max_abs_box_px:g})")
        return failures


DETECTION = Detection()
