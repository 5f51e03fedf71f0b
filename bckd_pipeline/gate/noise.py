"""The gate's noise statistics: paired bootstrap of ΔmIoU over images, bootstrap of a latency ratio.

Why these (docs/ci.md, "Noise"): a ΔmIoU budget is judged on a lower confidence bound, not on the
point value, and a latency regression must clear the tolerance on the median and on its bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError


def miou_of(confusion: np.ndarray) -> np.ndarray:
    """mIoU (points) of confusion matrices ``[..., C, C]`` (``[target, pred]``), vectorised.

    IoU_c = TP_c / (TP_c + FP_c + FN_c); mIoU = 100 * nanmean_c IoU_c over classes with a non-empty
    union (the report's ConfusionMatrix.miou); NaN when no class was seen.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    union = cm.sum(-1) + cm.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    seen = (~np.isnan(iou)).sum(-1)
    total = np.nansum(iou, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen > 0, 100.0 * total / np.maximum(seen, 1), np.nan)


@dataclass(frozen=True)
class Interval:
    point: float
    lower: float  # one-sided lower bound at ``confidence``
    upper: float  # one-sided upper bound at ``confidence``
    confidence: float
    resamples: int


def bootstrap_delta_miou(
    new: np.ndarray, ref: np.ndarray, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Interval:
    """Paired bootstrap of ΔmIoU = mIoU(new) - mIoU(ref) over images.

    ``new`` and ``ref`` are per-image confusion matrices ``[N, C, C]`` of the same N images. Each
    resample b draws N image indices i_1..i_N with replacement (the same indices for both, so the
    pairing cancels the variation shared by the two models) and computes
    Δ_b = mIoU(Σ_k new[i_k]) - mIoU(Σ_k ref[i_k]), i.e. the report's dataset-level mIoU of the
    resampled set. ``point`` is Δ on all images; ``lower``/``upper`` are the (1 - confidence) and
    confidence percentiles of Δ_b: "ΔmIoU >= lower with `confidence` confidence" (percentile method).
    """
    new, ref = np.asarray(new, np.int64), np.asarray(ref, np.int64)
    if new.shape != ref.shape or new.ndim != 3 or len(new) == 0:
        raise DataError(
            f"Paired ΔmIoU needs per-image confusion matrices of the same images, got shapes {new.shape} and "
            f"{ref.shape}. Compare reports evaluated on the same images."
        )
    n, c = new.shape[0], new.shape[1]
    rng = np.random.default_rng(seed)
    # Resample b's summed confusion = (how often each image was drawn) @ the per-image matrices. In
    # float64, which NumPy multiplies with BLAS (int64 products do not use it and are far slower) and which holds pixel
    # counts exactly below 2^53.
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]).astype(np.float64)

    def resampled_miou(cm: np.ndarray) -> np.ndarray:
        return miou_of((weights @ cm.reshape(n, -1).astype(np.float64)).reshape(-1, c, c))

    deltas = resampled_miou(new) - resampled_miou(ref)
    deltas = deltas[~np.isnan(deltas)]
    point = float(miou_of(new.sum(0)) - miou_of(ref.sum(0)))
    lower, upper = np.percentile(deltas, [100 * (1 - confidence), 100 * confidence])
    return Interval(point, float(lower), float(upper), confidence, resamples)


def bootstrap_median_ratio(
    new: np.ndarray, old: np.ndarray, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Interval:
    """Bootstrap of the ratio of median latencies r = median(new) / median(old).

    The two sample sets are timed runs of two separate processes, so each is resampled on its own
    (unpaired): r_b = median(new*_b) / median(old*_b). ``point`` is the ratio of the full medians;
    ``lower``/``upper`` the (1 - confidence) and confidence percentiles of r_b. Timed runs are treated
    as independent draws; slow drift within one run (thermal throttling) widens nothing here, which
    is why the gate also asks for the median to exceed the tolerance.
    """
    new, old = np.asarray(new, np.float64), np.asarray(old, np.float64)
    if new.size == 0 or old.size == 0:
        raise DataError("A latency comparison needs timed runs on both sides; one side has none.")
    rng = np.random.default_rng(seed)
    med_new = np.median(rng.choice(new, (resamples, new.size)), axis=1)
    med_old = np.median(rng.choice(old, (resamples, old.size)), axis=1)
    ratios = med_new / med_old
    lower, upper = np.percentile(ratios, [100 * (1 - confidence), 100 * confidence])
    return Interval(float(np.median(new) / np.median(old)), float(lower), float(upper), confidence, resamples)


def latency_regressed(ratio: Interval, tolerance: float) -> bool:
    """The noise rule: slower by more than the tolerance, and the bound on the slowdown says so too."""
    return ratio.point > 1 + tolerance and ratio.lower > 1 + tolerance
