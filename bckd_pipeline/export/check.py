"""Numerical checks between two artifacts, on the same real inputs (ONNX-simplifier's ``check_n``,
timm's ``check_forward``). Every rewrite of the model returns one of these."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

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
    rtol: Mapping[str, float] = field(default_factory=dict)  # per output, beside ``atol`` (see ``compare``)
    # per float output, the largest |difference| - rtol * |reference|: what ``atol`` bounds
    excess: Mapping[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "against": self.against,
            "inputs": self.inputs,
            "max_abs_diff": self.max_abs_diff,
            "label_agreement": self.label_agreement,
            "atol": self.atol,
            **({"rtol": dict(self.rtol)} if self.rtol else {}),
            "passed": self.passed,
        }

    def allowed(self, name: str) -> str:
        """The tolerance of output ``name``, for messages."""
        r = self.rtol.get(name)
        return f"{self.atol:g}" if not r else f"{self.atol:g} + {r:g} x |reference|"


def compare(
    stage: str,
    against: str,
    reference: InferFn,
    candidate: InferFn,
    feeds: Iterable[Feed],
    *,
    atol: float,
    rtol: Mapping[str, float] | None = None,
    min_label_agreement: float = 0.999,
) -> CheckReport:
    """Run both on every feed. Float outputs: every element must have ``|reference - candidate| <= atol + rtol *
    |reference|``, ``rtol`` of that output's name (0 when not given: an absolute tolerance, right for logits;
    a task gives one for outputs in pixels, whose rounding differences grow with the value). Integer (label)
    outputs: the fraction of equal pixels must be >= ``min_label_agreement``."""
    rtol = dict(rtol or {})
    worst: dict[str, float] = {}
    over: dict[str, float] = {}  # per output, the largest |difference| - rtol * |reference|
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
            r64 = r.astype(np.float64)
            delta = np.abs(r64 - c.astype(np.float64))
            diff = float(np.max(delta)) if r.size else 0.0
            worst[name] = max(worst.get(name, 0.0), diff)
            excess = float(np.max(delta - rtol.get(name, 0.0) * np.abs(r64))) if r.size else 0.0
            over[name] = max(over.get(name, excess), excess)
            if name in integer_outputs or r.ndim == 4:  # a label map, or class scores per pixel
                lr, lc = labels_of(r), labels_of(c)
                same += int((lr == lc).sum())
                total += lr.size
        n += 1
    if n == 0:
        raise StageCheckError(f"{stage}: no inputs to check against {against}; the feed source was empty.")
    float_ok = all(v <= atol for k, v in over.items() if k not in integer_outputs)
    agreement = same / total if total else None
    passed = float_ok and (not integer_outputs or (agreement is not None and agreement >= min_label_agreement))
    used = {k: v for k, v in rtol.items() if k in worst}
    floats = {k: v for k, v in over.items() if k not in integer_outputs}
    return CheckReport(stage, against, n, worst, agreement, atol, passed, used, floats)


def require(report: CheckReport, how_to_fix: str) -> CheckReport:
    """Raise when a check failed: the max-abs-diff, the output name, and what to do."""
    if not report.passed:
        # the output furthest over its tolerance (the largest difference when none is: a label check failed)
        scores = report.excess or report.max_abs_diff
        name = max(scores, key=scores.__getitem__)
        diff = report.max_abs_diff[name]
        agree = "" if report.label_agreement is None else f", label agreement {100 * report.label_agreement:.3f}%"
        raise StageCheckError(
            f"{report.stage} changed the model's outputs: max |diff| on {name!r} is {diff:.3g} over "
            f"{report.inputs} real inputs (allowed {report.allowed(name)}){agree}, against {report.against}. "
            + how_to_fix
        )
    return report
