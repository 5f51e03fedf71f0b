"""Semantic segmentation: per-pixel class labels, scored by mIoU over a dataset-level confusion matrix.

- Prediction: a model's raw output is N x C x H x W logits (the ``logits`` export head) or N x H x W
  labels (the ``argmax`` head); the prediction is the N x H x W label map (argmax over classes).
- Evidence per image: its confusion matrix ``[target, pred]`` (int64, C x C; ``ignore_index`` pixels of
  the target skipped). Summed over a split it gives the split's mIoU; resampled over images it gives
  the gate's bootstrap interval of ΔmIoU.
- Metric: IoU_c = TP_c / (TP_c + FP_c + FN_c) on the summed counts (the mmseg/Cityscapes protocol,
  not a mean of per-image IoUs); mIoU = 100 * nanmean_c IoU_c over classes with a non-empty union.
- Parity (``SegmentationParityMeter``): mIoU and its deltas against the reference and the parent,
  per-class IoU and its delta, the share of pixels labelled as the reference (and the parent), the
  boundary F-score (2 px), and |logit differences| between float stages.
- Degenerate predictions (``degenerate`` in a parity row, None when not): one class on every pixel
  while the labels hold more, or the same output for every image (``DEGENERATE_SPREAD``). Agreement and
  deltas against a reference say nothing then; the report warns, and the gate fails such a deployed row.
- Criteria (``ParityCriteria``): how far a stage may move from its parent, per precision.
- Budgets: ``min_miou``, ``max_miou_drop``, ``min_pixel_agreement``, ``max_baseline_miou_drop``.
- Files and pictures (``tasks/segmentation_draw.py``): ``predict`` writes a palette PNG label map per
  image (and with ``--save-overlay`` the classes blended over the image); report.html draws label maps
  in class colours, wrong pixels darkened and those near a ground-truth boundary in magenta.

Only numpy and the standard library: the gate and the device agent (Python 3.8) import this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from .base import BudgetKey, Column, ParityMeter, Task

BOUNDARY_TOLERANCE_PX = 2
# The largest |difference| between two images' outputs that still counts as "the same output for every image":
# a model that ignores its input gives bit-identical outputs; float noise of a real one is far above this.
DEGENERATE_SPREAD = 1e-6


def confusion_of(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """The confusion matrix ``[target, pred]`` (int64, C x C) of label maps of one matching shape."""
    p, t = np.asarray(pred), np.asarray(target)
    if p.shape != t.shape:
        raise DataError(
            f"pred shape {p.shape} != target shape {t.shape}. Upsample logits to the label size "
            "and take the argmax before updating."
        )
    valid = t != ignore_index
    p, t = p[valid].astype(np.int64), t[valid].astype(np.int64)
    for name, v in (("target", t), ("pred", p)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise DataError(
                f"{name} holds label {int(v.min() if v.min() < 0 else v.max())}; allowed are "
                f"0..{num_classes - 1} and ignore_index={ignore_index}. Check num_classes "
                "and the dataset's label mapping."
            )
    n = num_classes
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def per_class_iou_of(confusion: np.ndarray) -> np.ndarray:
    """IoU_c = TP / (TP + FP + FN) as fractions of confusion matrices ``[..., C, C]``; NaN for an empty union."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    union = cm.sum(-1) + cm.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou_of(confusion: np.ndarray) -> np.ndarray:
    """mIoU (points) of confusion matrices ``[..., C, C]`` (``[target, pred]``), vectorised.

    mIoU = 100 * nanmean_c IoU_c over classes with a non-empty union; NaN when no class was seen.
    """
    iou = per_class_iou_of(confusion)
    seen = (~np.isnan(iou)).sum(-1)
    total = np.nansum(iou, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen > 0, 100.0 * (total / np.maximum(seen, 1)), np.nan)


def labels_of(output: np.ndarray) -> np.ndarray:
    """A model output (N x C x H x W logits, or N x H x W labels) as N x H x W labels."""
    return output.argmax(1) if output.ndim == 4 else output.astype(np.int64)


def saved_labels(labels: np.ndarray) -> np.ndarray:
    """Label maps as the run's evidence files keep them: int16 (class ids and an ignore index of 255 fit)."""
    return labels.astype(np.int16)


# ---------------------------------------------------------------------------------------------
# parity
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParityCriteria:
    """How far a stage may move from the stage before it (mIoU points, fraction of pixels, logits).

    ``max_abs_logit`` is checked only between float stages of the same precision family; quantized
    stages are judged on labels (mIoU and agreement), where their error matters.
    """

    max_miou_drop: float
    min_pixel_agreement: float
    max_abs_logit: float | None = None

    def for_fine_tuned(self) -> ParityCriteria:
        """A stage trained again (QAT) computes something else than its parent: judged by the mIoU drop alone."""
        return ParityCriteria(self.max_miou_drop, 0.0, None)


FLOAT_PARITY = ParityCriteria(max_miou_drop=0.01, min_pixel_agreement=0.999, max_abs_logit=1e-3)
FP16_PARITY = ParityCriteria(max_miou_drop=0.1, min_pixel_agreement=0.99)
INT8_PARITY = ParityCriteria(max_miou_drop=1.0, min_pixel_agreement=0.95)

# The budgets an INT8 target gets when the budgets file names none.
INT8_BUDGETS = {"max_miou_drop": 1.0, "min_pixel_agreement": 0.95}


class SegmentationParityMeter(ParityMeter):
    """One ledger stage: confusion per image, pixel agreement, boundary F and logit distances."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        from .segmentation_metrics import BoundaryFScore  # imported here: scipy, which the device agent lacks

        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.boundary = BoundaryFScore(BOUNDARY_TOLERANCE_PX, ignore_index)
        self.agree_ref = self.agree_parent = self.pixels = 0
        self.max_ref = self.max_parent = self.sum_ref = 0.0
        self.logit_values = 0
        self.has_logits = True
        self.has_parent = False
        self.per_image: list[np.ndarray] = []
        self.kept: list[np.ndarray] = []
        self.predicted = np.zeros(num_classes, dtype=np.int64)  # pixels predicted per class
        self.labelled = np.zeros(num_classes, dtype=np.int64)  # pixels labelled per class (ignore skipped)
        self.first_output: np.ndarray | None = None
        self.spread = 0.0  # max |output - the first image's output| over the images

    def update(self, output, prediction, reference, parent, label, keep) -> None:
        ref_out, ref_lab = reference
        image_cm = confusion_of(prediction[0], label, self.num_classes, self.ignore_index)
        self.predicted += image_cm.sum(0)
        self.labelled += image_cm.sum(1)
        if self.first_output is None:
            self.first_output = np.array(output, dtype=np.float64)
        elif output.shape != self.first_output.shape:
            self.spread = float("inf")
        else:
            self.spread = max(self.spread, float(np.abs(output.astype(np.float64) - self.first_output).max()))
        self.per_image.append(image_cm.astype(np.int32))  # one image's counts fit; halves the memory
        if keep:
            self.kept.append(saved_labels(prediction[0]))
        self.confusion += image_cm
        self.boundary.update(prediction[0], label)
        self.pixels += prediction.size
        self.agree_ref += int((prediction == ref_lab).sum())
        if parent is not None:
            self.has_parent = True
            self.agree_parent += int((prediction == parent[1]).sum())
        if output.ndim == 4 and ref_out.ndim == 4:
            d = np.abs(output.astype(np.float64) - ref_out.astype(np.float64))
            self.max_ref, self.sum_ref, self.logit_values = (
                max(self.max_ref, float(d.max())),
                self.sum_ref + float(d.sum()),
                self.logit_values + d.size,
            )
        else:
            self.has_logits = False
        if parent is not None and output.ndim == 4 and parent[0].ndim == 4:
            self.max_parent = max(self.max_parent, float(np.abs(output - parent[0]).max()))

    def fields(self, reference: ParityMeter, parent: Mapping[str, Any] | None) -> dict[str, Any]:
        ref_iou = per_class_iou_of(reference.confusion) * 100
        ref_miou = float(miou_of(reference.confusion))
        iou = per_class_iou_of(self.confusion) * 100
        miou = float(miou_of(self.confusion))
        logits = self.has_logits
        return {
            "miou": miou,
            "miou_delta": miou - ref_miou,
            "miou_delta_vs_parent": None if parent is None else miou - parent["miou"],
            "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
            "per_class_delta": [None if np.isnan(d) else float(d) for d in iou - ref_iou],
            "pixel_agreement": self.agree_ref / self.pixels,
            "pixel_agreement_vs_parent": self.agree_parent / self.pixels if self.has_parent else None,
            "boundary_f": self.boundary.compute().get("f_score"),
            "max_abs_logit": self.max_ref if logits else None,
            "mean_abs_logit": self.sum_ref / self.logit_values if logits and self.logit_values else None,
            "max_abs_logit_vs_parent": self.max_parent if logits and self.has_parent else None,
            "degenerate": self.degenerate(),
        }

    def degenerate(self) -> str | None:
        """Why this stage's predictions say nothing about the model (None: they do): one class on every pixel
        where the labels hold several, or the same output for every image (a model that ignores its input)."""
        images = len(self.per_image)
        predicted = np.flatnonzero(self.predicted)
        labelled = int(np.count_nonzero(self.labelled))
        if len(predicted) == 1 and labelled > 1:
            return (
                f"predicts class {int(predicted[0])} on every pixel of {images} image{'s' if images != 1 else ''}, "
                f"where the labels hold {labelled} classes"
            )
        if images > 1 and self.spread <= DEGENERATE_SPREAD:
            what = "logits" if self.first_output.ndim == 4 else "label map"
            return (
                f"gives the same {what} for all {images} images (max |difference| {self.spread:.1e}): "
                "it ignores its input"
            )
        return None


# ---------------------------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------------------------
class Segmentation(Task):
    name = "segmentation"
    metric = "miou"
    metric_label = "mIoU"
    metric_unit = "mIoU points"
    evidence = "confusions"
    # report.json row keys, in their order there
    parity_fields = (
        "miou",
        "miou_delta",
        "miou_delta_vs_parent",
        "miou_vs_reference",  # against the reference's own predictions (deploy/parity.py), labels or none
        "miou_delta_vs_reference",
        "pixel_agreement",
        "pixel_agreement_vs_parent",
        "boundary_f",
        "max_abs_logit",
        "mean_abs_logit",
        "per_class_iou",
        "per_class_delta",
        "degenerate",
    )
    budget_keys = {
        "min_miou": BudgetKey(
            "mIoU points",
            "min",
            0.0,
            100.0,
            "mIoU on the evaluation images",
            field="miou",
            label="mIoU",
            fmt=".2f",
            example="1.0",
            labels="ground_truth",
        ),
        "min_miou_vs_reference": BudgetKey(
            "mIoU points",
            "min",
            0.0,
            100.0,
            "mIoU of the stage's label maps scored against the FP32 reference's (100 = identical)",
            field="miou_vs_reference",
            label="mIoU vs the reference",
            fmt=".2f",
            example="95",
            labels="reference",
        ),
        "max_miou_drop": BudgetKey(
            "mIoU points",
            "max",
            0.0,
            100.0,
            "drop of mIoU against the PyTorch student, at the stated confidence",
            check="drop",
            field="miou_delta",
            label="mIoU",
            example="1.0",
            labels="ground_truth",
        ),
        "max_miou_drop_vs_reference": BudgetKey(
            "mIoU points",
            "max",
            0.0,
            100.0,
            "drop of mIoU against the FP32 reference's own predictions, at the stated confidence",
            check="drop",
            field="miou_delta_vs_reference",
            label="mIoU vs the reference",
            example="5.0",
            labels="reference",
        ),
        "min_pixel_agreement": BudgetKey(
            "fraction",
            "min",
            0.0,
            1.0,
            "share of pixels labelled as the PyTorch student",
            field="pixel_agreement",
            label="pixel agreement with the PyTorch student",
            fmt=".4f",
            example="0.95",
        ),
        "max_baseline_miou_drop": BudgetKey(
            "mIoU points",
            "max",
            0.0,
            100.0,
            "with --baseline: drop of mIoU against the baseline's same stage",
            check="baseline_drop",
            field="miou",
            label="mIoU",
            example="1.0",
            default=0.5,
        ),
    }
    export_heads = ("logits", "argmax")
    columns = (
        Column("mIoU", "miou"),
        Column("ΔmIoU", "miou_delta", "+.3f"),
        Column("agreement %", "pixel_agreement", ".3f", 100.0),
    )
    output_folders = ("labels", "overlays")
    criteria = {"fp32": FLOAT_PARITY, "fp16": FP16_PARITY, "int8": INT8_PARITY}
    int8_budgets = INT8_BUDGETS

    def prediction_of(self, output: np.ndarray) -> np.ndarray:
        return labels_of(output)

    def image_evidence(self, prediction, target, *, num_classes: int, ignore_index: int) -> np.ndarray:
        return confusion_of(prediction, target, num_classes, ignore_index)

    def metric_of(self, evidence: np.ndarray) -> np.ndarray:
        return miou_of(evidence)

    def parity_meter(self, num_classes: int, ignore_index: int) -> SegmentationParityMeter:
        return SegmentationParityMeter(num_classes, ignore_index)

    @property
    def legend(self) -> tuple[tuple[str, str], ...]:
        from .segmentation_draw import LEGEND

        return LEGEND

    def as_saved(self, prediction: np.ndarray) -> np.ndarray:
        return saved_labels(prediction)

    def write_prediction(self, prediction, out, stem, *, colors, classes) -> dict:
        from .segmentation_draw import write_prediction  # PIL, which the gate and the device agent lack

        return write_prediction(prediction, out, stem, colors=colors, classes=classes)

    def write_overlay(self, prediction, rgb, out, stem, *, colors, classes=()) -> dict:
        from .segmentation_draw import write_overlay_file

        return write_overlay_file(prediction, rgb, out, stem, colors=colors)

    def draw(self, prediction, colors, *, ignore_index: int, truth=None, image=None) -> np.ndarray:
        """The label map in the class colours (``image`` is not drawn on: the map is the picture)."""
        from .segmentation_draw import colorize

        return colorize(prediction, colors, ignore_index, truth)

    def caption(self, prediction, truth, *, ignore_index: int) -> str:
        from .segmentation_draw import pixels_correct

        return pixels_correct(prediction, truth, ignore_index)

    def headline(self, row) -> list[str]:
        """Pixel agreement with the reference first, then the mIoU change."""
        agree = row.get("pixel_agreement")
        return ([] if agree is None else [f"agreement {100 * agree:.2f} %"]) + super().headline(row)

    def judge(self, row, parent_name: str, same_precision: bool, criteria: ParityCriteria) -> list[str]:
        c = criteria
        failures = []
        drop = -(row["miou_delta_vs_parent"] or 0.0)
        if drop > c.max_miou_drop:
            failures.append(f"mIoU fell {drop:.3f} points from {parent_name} (allowed {c.max_miou_drop:g})")
        agreement = row["pixel_agreement_vs_parent"]
        if agreement is not None and agreement < c.min_pixel_agreement:
            failures.append(
                f"pixel agreement with {parent_name} is {100 * agreement:.3f}% "
                f"(allowed >= {100 * c.min_pixel_agreement:g}%)"
            )
        logit = row["max_abs_logit_vs_parent"]
        if c.max_abs_logit is not None and same_precision and logit is not None and logit > c.max_abs_logit:
            failures.append(f"max |logit diff| from {parent_name} is {logit:.3g} (allowed {c.max_abs_logit:g})")
        return failures


SEGMENTATION = Segmentation()
