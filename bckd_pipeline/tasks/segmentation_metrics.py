"""Segmentation's boundary metric, numpy and scipy only: boundary maps and the boundary F-score.

The parity ledger measures the boundary F of every deployed stage through the segmentation task, where
torch may be absent; ``metrics.py`` (LHD, fragmentation, the torch evaluation loop) builds on the same
boundary maps. Conventions (``metrics.py`` states them in full): labels are integer maps, ``ignore_index``
marks pixels that count for nothing, and a prediction is masked with the reference's ignore pixels first.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..errors import ConfigError, DataError


def _pair_hw(pred, ref, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Check that ``pred`` and ``ref`` are matching HxW label maps and return them as numpy."""
    p, r = np.asarray(pred), np.asarray(ref)
    if p.ndim != 2 or p.shape != r.shape:
        raise DataError(
            f"{what} takes two HxW label maps of the same shape; got pred {p.shape} and reference "
            f"{r.shape}. Pass one image at a time (index the batch) at label resolution."
        )
    return p, r


def mask_ignored(pred: np.ndarray, ref: np.ndarray, ignore_index: int) -> np.ndarray:
    """Return a copy of ``pred`` with the reference's ignore pixels set to ``ignore_index``."""
    out = pred.astype(np.int64, copy=True)
    out[ref == ignore_index] = ignore_index
    return out


def boundary_map(labels, ignore_index: int = 255) -> np.ndarray:
    """Boolean HxW map of class-agnostic semantic boundary pixels.

    A pixel p is a boundary pixel when p is valid and some q in its 8-neighbourhood is valid with
    label(q) != label(p) (spec section 2, Eq. 24-25 "Boundaries"). Ignore pixels are never boundary
    pixels and never make a neighbour one; the image border is not a boundary. Consequence: a class
    change hidden behind an ignore band (e.g. VOC's 255 outlines) yields no boundary.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise DataError(f"boundary_map takes one HxW label map; got shape {lab.shape}. Index the batch.")
    h, w = lab.shape
    valid = lab != ignore_index
    lab_p = np.pad(lab, 1, mode="edge")
    valid_p = np.pad(valid, 1, constant_values=False)
    out = np.zeros((h, w), dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                sl = (slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w))
                out |= valid_p[sl] & (lab_p[sl] != lab)
    return out & valid


def distance_to(mask: np.ndarray, empty: float = math.inf) -> np.ndarray:
    """Euclidean distance from every pixel to the nearest True pixel of ``mask`` (``empty`` if none)."""
    if not mask.any():
        return np.full(mask.shape, empty)
    return ndimage.distance_transform_edt(~mask)


class BoundaryFScore:
    """Dataset-level boundary F-score with a pixel tolerance, on class-agnostic boundaries.

    With ∂P, ∂G the boundary pixels of prediction and target (:func:`boundary_map`) and d(x, S) the
    Euclidean distance from x to the set S (distance transform), summed over all images:

        precision = #{a ∈ ∂P : d(a, ∂G) <= tol} / #∂P
        recall    = #{b ∈ ∂G : d(b, ∂P) <= tol} / #∂G
        F         = 2 P R / (P + R)

    All three are in percent. P (R) is NaN while no predicted (target) boundary pixel has been seen; F is
    NaN when both are, and otherwise treats an undefined side as 0.
    """

    def __init__(self, tolerance_px: int = 2, ignore_index: int = 255) -> None:
        if tolerance_px < 0:
            raise ConfigError(f"tolerance_px must be >= 0; got {tolerance_px}. 2 px is the usual value.")
        self.tolerance_px = tolerance_px
        self.ignore_index = ignore_index
        self.pred_matched = self.pred_total = self.target_matched = self.target_total = 0

    def update(self, pred_hw, target_hw) -> None:
        """Add one HxW prediction/target pair; prediction pixels under target ignore pixels are dropped."""
        pred, target = _pair_hw(pred_hw, target_hw, "BoundaryFScore.update")
        bp = boundary_map(mask_ignored(pred, target, self.ignore_index), self.ignore_index)
        bg = boundary_map(target, self.ignore_index)
        self.pred_total += int(bp.sum())
        self.target_total += int(bg.sum())
        self.pred_matched += int((distance_to(bg)[bp] <= self.tolerance_px).sum())
        self.target_matched += int((distance_to(bp)[bg] <= self.tolerance_px).sum())

    def compute(self) -> dict[str, float]:
        """Return ``{"precision", "recall", "f_score"}`` in percent (see the class docstring for NaNs)."""
        p = 100.0 * self.pred_matched / self.pred_total if self.pred_total else math.nan
        r = 100.0 * self.target_matched / self.target_total if self.target_total else math.nan
        if math.isnan(p) and math.isnan(r):
            f = math.nan
        else:
            p0, r0 = np.nan_to_num(p), np.nan_to_num(r)
            f = float(2 * p0 * r0 / (p0 + r0)) if p0 + r0 > 0 else 0.0
        return {"precision": p, "recall": r, "f_score": f}
