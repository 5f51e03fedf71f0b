"""The CI gate: a run's report against a budgets file (and optionally a baseline report).

Which stages are gated: a target table's keys budget the **deployed stage** (the report's last
row: the target's shipped artifact, on its device); ``[T.stages.NAME]`` tables budget other stages
or override the deployed one. Every budget gives one :class:`Check` with status

- ``pass``: measured and within budget;
- ``fail``: measured and outside it; the message names stage, budget, measured value and by how much;
- ``pending``: the value was not measured (null, or the row's status is ``pending``/``parity_on_host``
  for latency): never counted as passed.

Noise (docs/ci.md): latency and FPS budgets get a relative ``latency_tolerance`` and are judged on
the median of the timed runs; a task's ``drop`` budget (segmentation: ``max_miou_drop``) is judged on the
one-sided lower confidence bound of the metric's delta from the task's paired bootstrap over evaluation
images (``Task.bootstrap_delta``; the report's ``task`` says which task, tasks/); against a baseline, a
latency regression needs the median to grow by more than the tolerance *and* the bootstrap lower bound of
the ratio of medians to exceed 1 + tolerance.

A deployed row whose predictions are degenerate (the task's ``degenerate`` field: one class everywhere,
the same output for every image) fails the ``degenerate`` check, which runs whatever the budgets: its
accuracy figures say nothing. ``allow_degenerate = true`` in the ``[gate]`` table passes it, still named.

Exit codes: 0 every check passed; 1 a budget was violated; 2 bad input; 3 nothing violated but a
check is pending (0 with ``--allow-pending``).

About 400 lines, one idea: a check per budget kind, then ``gate()`` that runs them in order; the
statistics behind them are in noise.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..ledger import PENDING, QAT_ROW, REPORT_FORMAT
from ..machine import machine_differences
from ..parity_images import ParityImages, load_parity_images
from ..tasks import DEFAULT_TASK, Interval, Task, get_task
from .budgets import Budgets, GateSettings, all_budget_keys, budget_keys
from .noise import bootstrap_median_ratio, latency_regressed

PASS, FAIL, NOT_MEASURED = "pass", "fail", "pending"
EXIT_OK, EXIT_VIOLATED, EXIT_PENDING = 0, 1, 3
COMBINED_FORMAT = "bckd-pipeline/combined-report-v1"  # a run folder's report.json over several targets


@dataclass(frozen=True)
class Check:
    stage: str
    budget: str  # a budget key name, or "baseline_p50_ms" / "baseline_<metric>" (e.g. baseline_miou) for --baseline
    status: str  # PASS, FAIL or NOT_MEASURED
    measured: float | None
    limit: float | None
    unit: str
    message: str
    detail: dict = field(default_factory=dict)
    shown: str = ""  # the measured figure as the message writes it (the Markdown table's "measured" cell)


def signed(delta: float) -> str:
    """A Δ as every gate output writes it: its sign and three decimals; zero is +0.000, never -0.000."""
    text = f"{delta:+.3f}"
    return "+0.000" if text == "-0.000" else text


@dataclass(frozen=True)
class GateResult:
    target: str
    report: str
    baseline: str | None
    settings: GateSettings
    checks: tuple[Check, ...]
    allow_pending: bool = False
    labels: str = "ground_truth"  # what the report's task metric is computed against (its parity_labels)
    key: str | None = None  # the report's target key (e.g. onnxruntime-cpu-fp32: a target at another precision)

    @property
    def label(self) -> str:
        """The target as outputs name it: its key where that differs from the target's name."""
        return self.key or self.target

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.checks)

    @property
    def exit_code(self) -> int:
        if self.count(FAIL):
            return EXIT_VIOLATED
        if self.count(NOT_MEASURED) and not self.allow_pending:
            return EXIT_PENDING
        return EXIT_OK

    @property
    def verdict(self) -> str:
        code = self.exit_code
        n, f, p = len(self.checks), self.count(FAIL), self.count(NOT_MEASURED)
        if code == EXIT_VIOLATED:
            return f"FAILED: {f} of {n} budget checks violated" + (f", {p} not measured" if p else "")
        if p:
            return f"{'PASSED' if self.allow_pending else 'PENDING'}: {n - p} of {n} checks passed, {p} not measured"
        return f"PASSED: all {n} budget checks within budget"


# ---------------------------------------------------------------------------------------------
# reading reports
# ---------------------------------------------------------------------------------------------
def read_report(path: Path, flag: str = "REPORT") -> tuple[dict, Path]:
    """A report.json (or a run folder holding one), checked to be a bckd-pipeline report."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{flag} {str(path)!r} does not exist. Pass OUT/report.json of a `run` or `deploy`.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{flag} {str(path)!r} is not a JSON report ({exc}). Pass OUT/report.json of a run.") from None
    if isinstance(report, dict) and report.get("format") == COMBINED_FORMAT:
        files = ", ".join(str(path.parent / v["report"]) for v in (report.get("per_target") or {}).values())
        raise DataError(
            f"{flag} {str(path)!r} combines {len(report.get('targets') or [])} targets "
            f"({', '.join(report.get('targets') or [])}); a baseline is compared target by target. Pass the "
            f"baseline's run folder with the gated run folder, or one target's own report: {files}."
        )
    if (
        not isinstance(report, dict)
        or report.get("format") != REPORT_FORMAT
        or not isinstance(report.get("stages"), list)
    ):
        got = report.get("format") if isinstance(report, dict) else type(report).__name__
        raise DataError(
            f"{flag} {str(path)!r} is not a bckd-pipeline report (format {got!r}, expected {REPORT_FORMAT!r}). "
            "Pass the report.json that `bckd-pipeline run` or `deploy` wrote."
        )
    return report, path


def _rows(report: dict) -> dict[str, dict]:
    return {r["name"]: r for r in report["stages"]}


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def _pending(stage: str, budget: str, limit: float, row: dict, what: str) -> Check:
    # The row's own note says why (device absent, ...): its first sentence, without a repeated prefix.
    note = (row.get("note") or f"status {row.get('status')!r}").removeprefix("not measured: ").split(". ")[0]
    return Check(
        stage,
        budget,
        NOT_MEASURED,
        None,
        limit,
        all_budget_keys()[budget].unit,
        f"{stage}: {budget} {limit:g} not checked: {what} was not measured ({note})",
    )


def _samples(row: dict) -> np.ndarray | None:
    lat = row.get("latency") or {}
    s = lat.get("samples_ms")
    return np.asarray(s, np.float64) if s else None


def _latency_check(stage: str, key: str, limit: float, row: dict, tol: float) -> Check:
    unit = all_budget_keys()[key].unit
    samples = _samples(row)
    if key == "min_fps":
        value = row.get("fps")
        if value is None or row.get("status") == PENDING:
            return _pending(stage, key, limit, row, "FPS")
        floor = limit / (1 + tol)
        ok = value >= floor
        verb = "below" if value < limit else "above"
        msg = (
            f"{stage}: {value:.1f} FPS is {verb} budget min_fps {limit:g}"
            + (f" (tolerance {tol:.0%}: fails below {floor:.1f})" if tol else "")
            + ("" if ok else f", short by {limit - value:.1f} FPS ({(limit - value) / limit:.1%})")
        )
        detail = {"tolerance": tol, "floor": floor}
        return Check(stage, key, PASS if ok else FAIL, value, limit, unit, msg, detail, f"{value:.1f} FPS")
    pct = 50 if key == "max_p50_ms" else 99
    if samples is not None:
        value, source = float(np.percentile(samples, pct)), f"of {samples.size} timed runs"
    else:
        value, source = (row.get("latency_ms") or {}).get(f"p{pct}"), "(report value; no timed runs kept)"
    if value is None or row.get("status") == PENDING:
        return _pending(stage, key, limit, row, "latency")
    ceiling = limit * (1 + tol)
    ok = value <= ceiling
    name = "median" if pct == 50 else "p99"
    msg = (
        f"{stage}: {name} {value:.3f} ms {source} vs budget {key} {limit:g} ms"
        + (f" + {tol:.0%} tolerance = {ceiling:.3f} ms" if tol else "")
        + (": within budget" if ok else f": over by {value - limit:.3f} ms ({(value - limit) / limit:+.1%})")
    )
    detail = {"tolerance": tol, "ceiling": ceiling, "runs": None if samples is None else int(samples.size)}
    return Check(stage, key, PASS if ok else FAIL, value, limit, unit, msg, detail, f"{value:.3f} ms")


def _drop_check(
    task: Task,
    stage: str,
    key: str,
    limit: float,
    row: dict,
    images: ParityImages | None,
    reference: str,
    s: GateSettings,
) -> Check:
    """A ``drop`` budget: the task's metric against the reference stage, on the bootstrap's lower bound."""
    spec, label = task.budget_keys[key], task.metric_label
    if row.get(spec.field) is None:
        return _pending(stage, key, limit, row, label)
    ci = _delta_interval(task, images, stage, images, reference, s)
    if ci is None:
        value = row[spec.field]
        ok = value >= -limit
        msg = (
            f"{stage}: Δ{label} {signed(value)} vs {reference} (point estimate; no per-image {task.evidence} "
            f"of this figure in the report) vs budget {key} {limit:g}"
            + ("" if ok else f": dropped {-value - limit:.3f} points too far")
        )
        return Check(stage, key, PASS if ok else FAIL, -value, limit, spec.unit, msg, {}, f"Δ{label} {signed(value)}")
    ok = ci.lower >= -limit
    msg = (
        f"{stage}: Δ{label} {signed(ci.point)} vs {reference}; with {s.confidence:.0%} confidence Δ{label} >= "
        f"{signed(ci.lower)} (paired bootstrap over {len(images.names)} images, {ci.resamples} resamples) vs budget "
        f"{key} {limit:g}"
        + (": within budget" if ok else f": the bound is {-ci.lower - limit:.3f} points past -{limit:g}")
    )
    detail = {"point": ci.point, "lower": ci.lower, "upper": ci.upper, "confidence": ci.confidence}
    shown = f"Δ{label} ≥ {signed(ci.lower)}"
    return Check(stage, key, PASS if ok else FAIL, -ci.lower, limit, spec.unit, msg, detail, shown)


def _delta_interval(
    task: Task, new: ParityImages | None, new_stage: str, ref: ParityImages | None, ref_stage: str, s: GateSettings
) -> Interval | None:
    """The task's paired bootstrap of Δmetric between two stages' per-image evidence; None when either is missing."""
    if new is None or ref is None or new_stage not in new.evidence or ref_stage not in ref.evidence:
        return None
    return task.bootstrap_delta(
        new.evidence[new_stage],
        ref.evidence[ref_stage],
        confidence=s.confidence,
        resamples=s.bootstrap_resamples,
        seed=s.seed,
    )


def _simple_check(task: Task, stage: str, key: str, limit: float, row: dict) -> Check:
    """A ``value`` budget (a field of the row against the limit) or the artifact's size."""
    spec = budget_keys(task)[key]
    if spec.check == "artifact":
        size = row.get("artifact_bytes")
        if row.get("artifact") is None:
            return Check(
                stage,
                key,
                NOT_MEASURED,
                None,
                limit,
                spec.unit,
                f"{stage}: {key} {limit:g} not checked: no artifact (the PyTorch reference runs from the checkpoint)",
            )
        value, label, fmt = (None if size is None else size / 1e6), "artifact", ".3f"
    else:
        value, label, fmt = row.get(spec.field), spec.label, spec.fmt
    if value is None:
        return _pending(stage, key, limit, row, label)
    ok = value <= limit if spec.direction == "max" else value >= limit
    points = spec.unit.endswith(" points")  # e.g. "mIoU points": the number is the unit
    unit = "" if spec.unit == "fraction" or points else f" {spec.unit}"
    by = abs(value - limit)
    by_unit = " points" if points else unit
    msg = f"{stage}: {label} {value:{fmt}}{unit} vs budget {key} {limit:g}" + (
        ": within budget" if ok else f": {'over' if spec.direction == 'max' else 'short'} by {by:{fmt}}{by_unit}"
    )
    shown = f"{value:{fmt}}{unit}"
    return Check(stage, key, PASS if ok else FAIL, value, limit, spec.unit, msg, {}, shown)


def _baseline_checks(
    task: Task,
    stage: str,
    row: dict,
    old: dict | None,
    images: ParityImages | None,
    old_images: ParityImages | None,
    limits: dict[str, float],
    s: GateSettings,
    other_machine: str = "",
) -> list[Check]:
    """Latency against the baseline's same stage, and each of the task's ``baseline_drop`` budgets."""
    checks = []
    tol = s.latency_tolerance
    if old is None:
        return [
            Check(
                stage,
                "baseline",
                NOT_MEASURED,
                None,
                None,
                "",
                f"{stage}: not in the baseline report; nothing to compare",
            )
        ]
    new_s, old_s = _samples(row), _samples(old)
    if new_s is None or old_s is None:
        side = "this report" if new_s is None else "the baseline"
        checks.append(
            Check(
                stage,
                "baseline_p50_ms",
                NOT_MEASURED,
                None,
                None,
                "ratio",
                f"{stage}: latency regression not checked: {side} has no timed runs for this stage",
            )
        )
    else:
        r = bootstrap_median_ratio(new_s, old_s, confidence=s.confidence, resamples=s.bootstrap_resamples, seed=s.seed)
        bad = latency_regressed(r, tol)
        msg = (
            f"{stage}: median {np.median(new_s):.3f} ms vs baseline {np.median(old_s):.3f} ms (x{r.point:.3f}; "
            f"with {s.confidence:.0%} confidence >= x{r.lower:.3f}); a regression needs both above x{1 + tol:.2f} "
            f"(tolerance {tol:.0%})" + (": REGRESSED" if bad else ": within noise and tolerance") + other_machine
        )
        detail = {"ratio": r.point, "lower": r.lower, "upper": r.upper, "tolerance": tol}
        checks.append(Check(stage, "baseline_p50_ms", FAIL if bad else PASS, r.point, 1 + tol, "ratio", msg, detail))
    for key, limit in limits.items():
        checks.append(_baseline_drop_check(task, stage, key, limit, row, old, images, old_images, s))
    return checks


def _baseline_drop_check(
    task: Task,
    stage: str,
    key: str,
    limit_drop: float,
    row: dict,
    old: dict,
    images: ParityImages | None,
    old_images: ParityImages | None,
    s: GateSettings,
) -> Check:
    """The task's metric against the baseline's same stage: the bootstrap's lower bound (paired by image)."""
    spec = task.budget_keys[key]
    field, label, name = spec.field, spec.label, f"baseline_{spec.field}"
    if row.get(field) is None or old.get(field) is None:
        return Check(
            stage,
            name,
            NOT_MEASURED,
            None,
            limit_drop,
            spec.unit,
            f"{stage}: {label} against the baseline not checked: one side was not measured",
        )
    ci = _delta_interval(task, images, stage, old_images, stage, s)
    if ci is not None:
        point, lower, how = ci.point, ci.lower, f"with {s.confidence:.0%} confidence Δ{label} >= {signed(ci.lower)}"
    else:
        point = lower = row[field] - old[field]
        how = f"point estimate (per-image {task.evidence} missing on one side)"
    ok = lower >= -limit_drop
    msg = (
        f"{stage}: {label} {row[field]:.3f} vs baseline {old[field]:.3f} (Δ{label} {signed(point)}; {how}) vs budget "
        f"{key} {limit_drop:g}" + (": within budget" if ok else f": {-lower - limit_drop:.3f} points past")
    )
    detail = {"point": point, "lower": lower}
    shown = f"Δ{label} ≥ {signed(lower)}" if ci is not None else f"Δ{label} {signed(lower)}"
    return Check(stage, name, PASS if ok else FAIL, -lower, limit_drop, spec.unit, msg, detail, shown)


def _pair_images(
    task: Task, report_path: Path, images: ParityImages | None, base_path: Path, old: ParityImages | None
) -> None:
    if images is None or old is None:
        return
    if images.digests != old.digests:
        shared = len(set(images.digests) & set(old.digests))
        raise DataError(
            f"{base_path} was evaluated on other images than {report_path} ({len(old.digests)} vs "
            f"{len(images.digests)} images, {shared} shared): Δ{task.metric_label} must be paired image by image. "
            "Make the baseline with the same --data, --eval-split and --parity-images."
        )


def gate(
    report_path: Path,
    budgets: Budgets,
    *,
    baseline: Path | None = None,
    confidence: float | None = None,
    allow_pending: bool = False,
    compare_other_machine: bool = False,
) -> GateResult:
    """Check one report against its target's budgets (and a baseline report); never raises for a violation.

    A baseline measured on another CPU model or vector ISA is refused (its latencies are not comparable)
    unless ``compare_other_machine``; then each latency comparison says so.
    """
    report, report_path = read_report(report_path)
    task = get_task(report.get("task", DEFAULT_TASK))
    keys = budget_keys(task)
    settings = budgets.settings if confidence is None else replace(budgets.settings, confidence=confidence)
    if not 0.5 < settings.confidence < 1:
        raise ConfigError(f"--confidence {settings.confidence!r} must be a fraction in (0.5, 1), e.g. 0.95.")
    target = report.get("target")
    tb = budgets.for_target(target, f"report {report_path}")
    rows = _rows(report)
    if not rows:
        raise DataError(f"{report_path} has no ledger stages. Pass the report of a finished run.")
    # `--qat auto` that found the PTQ row within budget deploys it and makes no qat-int8 row: that row's table
    # has nothing to check, and the deployed (PTQ) row is gated by the target's own budgets.
    qat_skipped = (report.get("qat") or {}).get("ran") is False
    stage_tables = {s: v for s, v in tb.stages.items() if not (qat_skipped and s == QAT_ROW)}
    missing = [s for s in stage_tables if s not in rows]
    if missing:
        raise DataError(
            f"{budgets.path} budgets stage(s) {', '.join(missing)} of target {target!r}, but {report_path} has no "
            f"such row (its stages: {', '.join(rows)}). Gate a complete report, or remove the stage table."
        )
    deployed = report["stages"][-1]["name"]
    reference = report["stages"][0]["name"]
    images = load_parity_images(report, report_path)
    old_report = old_images = base_path = None
    if baseline is not None:
        old_report, base_path = read_report(baseline, "--baseline")
        if old_report.get("target") != target:
            raise DataError(
                f"--baseline {str(base_path)!r} is a report of target {old_report.get('target')!r}, {report_path} of "
                f"{target!r}. Compare reports of the same target."
            )
        old_images = load_parity_images(old_report, base_path)
        _pair_images(task, report_path, images, base_path, old_images)
        diffs = machine_differences(old_report.get("machine"), report.get("machine"))
        if diffs and not compare_other_machine:
            raise DataError(
                f"--baseline {str(base_path)!r} was measured on another machine than {report_path}: "
                f"{'; '.join(diffs)} (first: the baseline, second: this report). Latencies from different CPUs or "
                "vector ISAs are not comparable. Make the baseline on this machine (CI: the same runner type), or "
                "pass --compare-other-machine to compare anyway."
            )
        other_machine = f" [other machine: {'; '.join(diffs)}]" if diffs else ""

    plan = {deployed: dict(tb.deployed)}
    for stage, values in stage_tables.items():
        plan[stage] = plan.get(stage, {}) | values
    checks: list[Check] = []
    tol = settings.latency_tolerance
    baseline_keys = [k for k, spec in keys.items() if spec.check == "baseline_drop"]
    scored = report.get("parity_labels", GROUND_TRUTH)  # what the report's task metric was computed against
    for stage, values in plan.items():
        row = rows[stage]
        for key, limit in values.items():
            default = key in tb.from_defaults and key not in tb.stages.get(stage, {})
            spec = keys.get(key)
            if spec is None and key in tb.from_defaults:  # a target's default budget of another task
                continue
            if spec is None:
                raise ConfigError(
                    f"{budgets.path} budgets {key!r} for [{target}], a budget of another task than {report_path}'s "
                    f"({task.name}: {', '.join(keys)}). Gate it with a budgets file for {task.name}."
                )
            if spec.check == "baseline_drop":
                continue
            if spec.labels == GROUND_TRUTH and scored != GROUND_TRUTH:
                twin = labels_twin(keys, key)
                if key in tb.from_defaults and twin is not None and twin not in values:
                    key, spec = twin, keys[twin]  # a profile default applies to the figures the report has
                elif key in tb.from_defaults:
                    continue
                else:
                    checks.append(_other_labels(stage, key, limit, spec, scored, twin))
                    continue
            if spec.check == "latency":
                check = _latency_check(stage, key, limit, row, tol)
            elif spec.check == "drop":
                # The per-image evidence is against the labels the report was scored on: a figure against the
                # other labels (a _vs_reference key on a labelled report) is judged on its point estimate.
                evidence = images if spec.labels in (None, scored) else None
                check = _drop_check(task, stage, key, limit, row, evidence, reference, settings)
            else:
                check = _simple_check(task, stage, key, limit, row)
            if stage == deployed and default:
                check = replace(check, message=f"{check.message} [default budget of target {target}]")
            checks.append(check)
        if old_report is not None:
            limits = {k: values.get(k, keys[k].default) for k in baseline_keys}
            old_row = _rows(old_report).get(stage)
            checks += _baseline_checks(task, stage, row, old_row, images, old_images, limits, settings, other_machine)
    checks += _degenerate_check(task, deployed, rows[deployed], settings)
    return GateResult(
        target,
        str(report_path),
        None if base_path is None else str(base_path),
        settings,
        tuple(checks),
        allow_pending,
        scored,
        report.get("target_key") or target,
    )


def target_reports(path: Path) -> list[Path]:
    """The report(s) a gate call checks: a run folder's combined report.json (several targets) -> each target's
    own report beside it, in the folder's order; any other report -> itself."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    try:
        report = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return [path]  # read_report says what is wrong with it
    if not isinstance(report, dict) or report.get("format") != COMBINED_FORMAT:
        return [path]
    per_target = report.get("per_target") or {}
    if not per_target:
        raise DataError(f"{file} combines no target (empty per_target). Pass the report.json of a finished run.")
    return [file.parent / v["report"] for v in per_target.values()]


def gate_all(report_path: Path, budgets: Budgets, *, baseline: Path | None = None, **options) -> list[GateResult]:
    """``gate`` of each target of a run folder (one report: that one), each against its own ``[target]`` table.
    With several targets, ``baseline`` is a run folder (or its combined report.json) holding the same targets:
    each is compared with its own report there."""
    paths = target_reports(report_path)
    if len(paths) == 1:
        return [gate(paths[0], budgets, baseline=baseline, **options)]
    bases = [None] * len(paths)
    if baseline is not None:
        folder = Path(baseline) if Path(baseline).is_dir() else Path(baseline).parent
        bases = [folder / p.name for p in paths]
        missing = [str(b) for b in bases if not b.is_file()]
        if missing:
            raise DataError(
                f"--baseline {str(baseline)!r}: {report_path} holds {len(paths)} targets, and the baseline folder has "
                f"no report for {', '.join(missing)}. Pass the run folder of a baseline with the same targets."
            )
    return [gate(p, budgets, baseline=b, **options) for p, b in zip(paths, bases, strict=True)]


def worst_exit_code(results: list[GateResult]) -> int:
    """One exit code for several gates: a violation (1) wins over pending (3), which wins over passed (0)."""
    codes = {r.exit_code for r in results}
    return EXIT_VIOLATED if EXIT_VIOLATED in codes else EXIT_PENDING if EXIT_PENDING in codes else EXIT_OK


GROUND_TRUTH, REFERENCE = "ground_truth", "reference"
VS_REFERENCE = "_vs_reference"
LABEL_KINDS = {
    GROUND_TRUTH: "against ground-truth labels",
    REFERENCE: "label-free, against the FP32 reference's own predictions",
}


def labels_twin(keys: dict, key: str) -> str | None:
    """The budget of the same figure scored against the other labels (max_miou_drop <-> max_miou_drop_vs_reference)."""
    twin = key.removesuffix(VS_REFERENCE) if key.endswith(VS_REFERENCE) else key + VS_REFERENCE
    return twin if twin in keys else None


def _other_labels(stage: str, key: str, limit: float, spec, scored: str, twin: str | None) -> Check:
    """A budget on figures scored against labels the report does not have: not measured, and which key would be."""
    use = f"; budget it with {twin}" if twin else ""
    return Check(
        stage,
        key,
        NOT_MEASURED,
        None,
        limit,
        spec.unit,
        f"{stage}: {key} {limit:g} not checked: it judges figures {LABEL_KINDS[spec.labels]}, and this report's "
        f"parity is {LABEL_KINDS.get(scored, scored)} (parity_labels: {scored}){use}",
    )


def _degenerate_check(task: Task, stage: str, row: dict, settings: GateSettings) -> list[Check]:
    """The deployed row's predictions are not degenerate (no check for a row, or a report, without the field)."""
    why = row.get("degenerate")
    if not why:
        return []
    allowed = settings.allow_degenerate
    verdict = (
        "model (allowed: [gate] allow_degenerate = true)."
        if allowed
        else "model. Fix the model or its preprocessing; [gate] allow_degenerate = true passes it knowingly."
    )
    what = f"its {task.metric_label} and agreement say nothing about the"
    message = f"{stage}: degenerate predictions, {why}; {what} {verdict}"
    return [Check(stage, "degenerate", PASS if allowed else FAIL, None, None, "", message)]
