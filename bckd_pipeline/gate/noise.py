"""The gate's noise statistics for latency: bootstrap of a ratio of medians, and the regression rule.

Why these (docs/ci.md, "Noise"): a latency regression must clear the tolerance on the median and on its
bound. The accuracy side (a metric's delta judged on a lower confidence bound, not on the point value) is
the task's paired bootstrap over images: ``Task.bootstrap_delta`` (tasks/base.py).
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..tasks import Interval


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
