"""The parity ledger: every stage evaluated on the same images, a drop pinned on the stage that made it.

Each stage is compared with the reference (the PyTorch student) and with its parent, the artifact
it was made from (``pytorch -> onnx -> onnx-simplified -> ort-int8``; ``onnx-simplified ->
openvino-fp32 -> openvino-int8``). What is measured per stage is the task's (``Task.parity_meter``;
for segmentation: mIoU and its deltas, per-class IoU, pixel agreement, boundary F, logit distances,
tasks/segmentation.py), and so is the judgement of a stage against its parent (``Task.judge`` under
the precision's criteria).

Besides the dataset-level numbers, the ledger keeps each stage's evidence *per image*
(``LedgerReport.per_image``, segmentation: one confusion matrix per image): summed it gives the same
metric, and resampled over images it gives the bootstrap confidence interval of a stage's delta that
the CI gate uses (``Task.bootstrap_delta``).

``culprit`` is the first failing stage in pipeline order: the one that caused the drop, not the ones
that inherited it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.feeds import DatasetFeeds
from ..runtimes.base import Runtime
from ..tasks import DEFAULT_TASK, Task, get_task

GROUND_TRUTH, REFERENCE = "ground_truth", "reference"  # what a ledger's task metric is computed against


@dataclass
class LedgerStage:
    name: str
    backend: str
    precision: str
    runtime: Runtime
    parent: str | None  # None for the reference
    artifact: str | None = None


@dataclass
class StageParity:
    """One ledger row: which stage, what the task measured (``metrics``, read as attributes too), the verdict."""

    name: str
    backend: str
    precision: str
    parent: str | None
    metrics: dict[str, Any]
    images: int
    passed: bool = True
    failures: list[str] = field(default_factory=list)

    def __getattr__(self, key: str) -> Any:
        metrics = self.__dict__.get("metrics")
        if metrics is not None and key in metrics:
            return metrics[key]
        raise AttributeError(f"{type(self).__name__!r} has no attribute {key!r}")

    def as_dict(self) -> dict[str, Any]:
        """The row as one flat dict (the task's fields beside name, precision, passed, failures...)."""
        return {
            "name": self.name,
            "backend": self.backend,
            "precision": self.precision,
            "parent": self.parent,
            **self.metrics,
            "images": self.images,
            "passed": self.passed,
            "failures": list(self.failures),
        }


@dataclass
class LedgerReport:
    stages: list[StageParity]
    # stage name -> the task's evidence per image (segmentation: int32 [images, classes, classes] confusions)
    per_image: dict[str, np.ndarray] = field(default_factory=dict)
    # stage name -> int16 (keep_labels, H, W): the label maps of the first images (report.html's masks)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    # what the rows are scored against: the dataset's labels, or the reference's own predictions (label-free)
    scored_against: str = GROUND_TRUTH

    @property
    def culprit(self) -> StageParity | None:
        return next((s for s in self.stages if not s.passed), None)

    def __bool__(self) -> bool:
        return self.culprit is None

    def stage(self, name: str) -> StageParity:
        return next(s for s in self.stages if s.name == name)


def ledger(
    stages: list[LedgerStage],
    feeds: DatasetFeeds,
    *,
    num_classes: int,
    ignore_index: int,
    criteria: Callable[[str], Any],
    keep_labels: int = 0,
    tick: Callable[[], None] | None = None,
    fine_tuned: frozenset[str] = frozenset(),
    task: Task | None = None,
    labels: str = GROUND_TRUTH,
) -> LedgerReport:
    """Run every stage's runtime on every image of ``feeds``; ``stages[0]`` is the reference.

    ``criteria(precision)``: the task's parity criteria for a stage of that precision. ``keep_labels``: also
    return every stage's predictions of that many first images; ``tick``: called after each image (a progress
    bar). ``fine_tuned``: stages whose weights were trained again (the QAT row). They are meant to compute
    something else than their parent, so they are judged by their criteria's ``for_fine_tuned()`` (for
    segmentation: the mIoU drop alone; agreement and logit distance are reported, not required).
    ``task``: the run's task (default: segmentation). ``labels``: ``"reference"`` scores every row against the
    reference's own predictions (``Task.reference_labels``) instead of the feeds' labels: a label-free ledger,
    whose task metric is the agreement in the task's terms (segmentation: each row's mIoU against the reference
    row's label maps), with the same per-image evidence, bootstrap and culprit.
    """
    if labels not in (GROUND_TRUTH, REFERENCE):
        raise ValueError(f"labels must be {GROUND_TRUTH!r} or {REFERENCE!r}, got {labels!r}")
    task = task if task is not None else get_task(DEFAULT_TASK)
    names = [s.name for s in stages]
    for s in stages[1:]:
        if s.parent not in names[: names.index(s.name)]:
            raise ValueError(f"stage {s.name!r} names parent {s.parent!r}, which is not an earlier stage")
    meters = {s.name: task.parity_meter(num_classes, ignore_index) for s in stages}
    ref = stages[0].name
    # Every row's evidence against the reference's own predictions too: with labels, both kinds of figures
    # (``<metric>_vs_reference``, ``<metric>_delta_vs_reference``, where the task's parity_fields list them).
    vs_reference: dict[str, np.ndarray] = {}
    n = 0
    for feed, label in feeds.pairs():
        outputs = {s.name: task.raw_output(s.runtime.infer(feed), feed) for s in stages}
        if tick is not None:
            tick()
        predictions = {k: task.prediction_of(v) for k, v in outputs.items()}
        reference_label = task.reference_labels(predictions[ref], label)
        for s in stages:
            e = task.image_evidence(
                task.reference_labels(predictions[s.name], label),
                reference_label,
                num_classes=num_classes,
                ignore_index=ignore_index,
            ).astype(np.int64)
            vs_reference[s.name] = e if s.name not in vs_reference else vs_reference[s.name] + e
        if labels == REFERENCE:
            label = reference_label
        for s in stages:
            parent = None if s.parent is None else (outputs[s.parent], predictions[s.parent])
            meters[s.name].update(
                outputs[s.name], predictions[s.name], (outputs[ref], predictions[ref]), parent, label, n < keep_labels
            )
        n += 1
    if n == 0:
        raise ValueError("the parity ledger needs at least one evaluation image")

    results: dict[str, StageParity] = {}
    for s in stages:
        parent = results.get(s.parent) if s.parent else None
        metrics = meters[s.name].fields(meters[ref], None if parent is None else parent.metrics)
        if f"{task.metric}_vs_reference" in task.parity_fields:  # a task that reports them lists them
            metrics |= _against_reference(task, vs_reference[s.name], vs_reference[ref])
        row = StageParity(s.name, s.backend, s.precision, s.parent, metrics, images=n)
        if parent is not None:
            c = criteria(s.precision)
            if s.name in fine_tuned:
                c = c.for_fine_tuned()
            row.failures = task.judge(metrics, parent.name, s.precision == parent.precision, c)
            row.passed = not row.failures
        results[s.name] = row
    per_image = {s.name: np.stack(meters[s.name].per_image) for s in stages}
    kept = {s.name: np.stack(meters[s.name].kept) for s in stages if meters[s.name].kept}
    return LedgerReport(list(results.values()), per_image, kept, labels)


def _against_reference(task: Task, evidence: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """The task metric of a row against the reference's predictions (``<metric>_vs_reference``) and its change
    from the reference's own score (``<metric>_delta_vs_reference``; segmentation: 100 against itself)."""
    value, own = float(task.metric_of(evidence)), float(task.metric_of(reference))
    return {f"{task.metric}_vs_reference": value, f"{task.metric}_delta_vs_reference": value - own}


def compare(
    reference: Runtime,
    candidate: Runtime,
    feeds: DatasetFeeds,
    *,
    criteria: Any,
    num_classes: int,
    ignore_index: int = 255,
    task: Task | None = None,
) -> StageParity:
    """Two-stage ledger: the candidate judged against the reference. ``bool(result.passed)`` is pass/fail."""
    stages = [
        LedgerStage("reference", reference.backend, reference.precision, reference, None),
        LedgerStage("candidate", candidate.backend, candidate.precision, candidate, "reference"),
    ]
    report = ledger(
        stages, feeds, num_classes=num_classes, ignore_index=ignore_index, criteria=lambda _: criteria, task=task
    )
    return report.stages[1]
