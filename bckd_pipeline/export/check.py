"""Numerical checks between two artifacts, on the same real inputs (ONNX-simplifier's ``check_n``,
timm's ``check_forward``). Every rewrite of the model returns one of these."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import StageCheckError
from ..tasks.segmentation import labels_of

Feed = Mapping[str, np.ndarray]
InferFn = Callable[[Feed], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class CheckReport:
    stage: str
    against: str
    inputs: int
    max_abs_diff: dict[str, float]  # per output
    label_agreement: float | None  # argmax (or label) agreement over all pixels; None: no per-pixel output
    atol: float
    passed: bool

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "against": self.against,
            "inputs": self.inputs,
            "max_abs_diff": self.max_abs_diff,
            "label_agreement": self.label_agreement,
            "atol": self.atol,
            "passed": self.passed,
        }


def compare(
    stage: str,
    against: str,
    reference: InferFn,
    candidate: InferFn,
    feeds: Iterable[Feed],
    *,
    atol: float,
    min_label_agreement: float = 0.999,
) -> CheckReport:
    """Run both on every feed. Float outputs: the largest absolute difference must be <= ``atol``.
    Integer (label) outputs: the fraction of equal pixels must be >= ``min_label_agreement``."""
    worst: dict[str, float] = {}
    same = total = 0
    n = 0
    integer_outputs: set[str] = set()
    for feed in feeds:
        ref, cand = reference(feed), candidate(feed)
        if set(ref) != set(cand):
            raise StageCheckError(
                f"{stage}: outputs {sorted(cand)} differ from {against}'s {sorted(ref)}; the rewrite renamed or "
                "dropped an output."
            )
        for name, r in ref.items():
            c = cand[name]
            if r.shape != c.shape:
                raise StageCheckError(f"{stage}: output {name!r} has shape {c.shape}, {against} has {r.shape}.")
            if not np.issubdtype(r.dtype, np.floating):
                integer_outputs.add(name)
            diff = float(np.max(np.abs(r.astype(np.float64) - c.astype(np.float64)))) if r.size else 0.0
            worst[name] = max(worst.get(name, 0.0), diff)
            if name in integer_outputs or r.ndim == 4:  # a label map, or class scores per pixel
                lr, lc = labels_of(r), labels_of(c)
                same += int((lr == lc).sum())
                total += lr.size
        n += 1
    if n == 0:
        raise StageCheckError(f"{stage}: no inputs to check against {against}; the feed source was empty.")
    float_ok = all(v <= atol for k, v in worst.items() if k not in integer_outputs)
    agreement = same / total if total else None
    passed = float_ok and (not integer_outputs or (agreement is not None and agreement >= min_label_agreement))
    return CheckReport(stage, against, n, worst, agreement, atol, passed)


def require(report: CheckReport, how_to_fix: str) -> CheckReport:
    """Raise when a check failed: the max-abs-diff, the output name, and what to do."""
    if not report.passed:
        name, diff = max(report.max_abs_diff.items(), key=lambda kv: kv[1])
        agree = "" if report.label_agreement is None else f", label agreement {100 * report.label_agreement:.3f}%"
        raise StageCheckError(
            f"{report.stage} changed the model's outputs: max |diff| on {name!r} is {diff:.3g} over "
            f"{report.inputs} real inputs (allowed {report.atol:g}){agree}, against {report.against}. {how_to_fix}"
        )
    return report
