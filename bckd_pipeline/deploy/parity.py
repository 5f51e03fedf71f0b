"""The parity ledger: every stage evaluated on the same images, a drop pinned on the stage that made it.

Each stage is compared with the PyTorch student (the reference) and with its parent, the artifact
it was made from (``pytorch -> onnx -> onnx-simplified -> ort-int8``; ``onnx-simplified ->
openvino-fp32 -> openvino-int8``). Per stage:

- ``miou`` (dataset-level confusion matrix against the labels, percent), ``miou_delta`` = miou - miou(reference)
  and ``miou_delta_vs_parent``;
- ``per_class_iou`` and ``per_class_delta`` (against the reference, IoU points);
- ``pixel_agreement``: the fraction of pixels whose argmax label equals the reference's (all pixels,
  ignore-labelled ones included, since they are pixels the deployed model still labels);
- ``boundary_f`` (:class:`bckd_pipeline.metrics.BoundaryFScore` against the labels, 2 px);
- ``max_abs_logit`` / ``mean_abs_logit``: |logits - reference logits| (when both output logits).

Besides the dataset-level numbers, the ledger keeps one confusion matrix per stage *per image*
(``LedgerReport.per_image``): summed they give the same mIoU, and resampled over images they give
the bootstrap confidence interval of a stage's ΔmIoU that the CI gate uses (gate/noise.py).

A stage fails when it moves further from its parent than its precision's ``ParityCriteria`` allow
(mIoU drop, agreement, and for float-to-float steps the logit difference). ``culprit`` is the first
failing stage in pipeline order: the one that caused the drop, not the ones that inherited it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..calibrate.data import DatasetFeeds
from ..metrics import BoundaryFScore, ConfusionMatrix
from ..targets.profiles import ParityCriteria
from ..runtimes.base import Runtime


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
    name: str
    backend: str
    precision: str
    parent: str | None
    miou: float
    miou_delta: float
    miou_delta_vs_parent: float | None
    per_class_iou: list[float | None]
    per_class_delta: list[float | None]
    pixel_agreement: float
    pixel_agreement_vs_parent: float | None
    boundary_f: float | None
    max_abs_logit: float | None
    mean_abs_logit: float | None
    max_abs_logit_vs_parent: float | None
    images: int
    passed: bool = True
    failures: list[str] = field(default_factory=list)


@dataclass
class LedgerReport:
    stages: list[StageParity]
    # stage name -> int32 (images, classes, classes) confusion matrices [target, pred], one per image
    per_image: dict[str, np.ndarray] = field(default_factory=dict)
    # stage name -> int16 (keep_labels, H, W): the label maps of the first images (report.html's masks)
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def culprit(self) -> StageParity | None:
        return next((s for s in self.stages if not s.passed), None)

    def __bool__(self) -> bool:
        return self.culprit is None

    def stage(self, name: str) -> StageParity:
        return next(s for s in self.stages if s.name == name)


class _Accumulator:
    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.confusion = ConfusionMatrix(num_classes, ignore_index)
        self.boundary = BoundaryFScore(2, ignore_index)
        self.agree_ref = self.agree_parent = self.pixels = 0
        self.max_ref = self.max_parent = self.sum_ref = 0.0
        self.logit_values = 0
        self.has_logits = True
        self.per_image: list[np.ndarray] = []
        self.kept_labels: list[np.ndarray] = []


def labels_of(output: np.ndarray) -> np.ndarray:
    """A model output (N x C x H x W logits, or N x H x W labels) as N x H x W labels."""
    return output.argmax(1) if output.ndim == 4 else output.astype(np.int64)


def ledger(
    stages: list[LedgerStage],
    feeds: DatasetFeeds,
    *,
    num_classes: int,
    ignore_index: int,
    criteria: Callable[[str], ParityCriteria],
    keep_labels: int = 0,
    tick: Callable[[], None] | None = None,
    fine_tuned: frozenset[str] = frozenset(),
) -> LedgerReport:
    """Run every stage's runtime on every image of ``feeds``; ``stages[0]`` is the reference.

    ``keep_labels``: also return every stage's label maps of that many first images; ``tick``: called after
    each image (a progress bar). ``fine_tuned``: stages whose weights were trained again (the QAT row). They
    are meant to compute something else than their parent, so they are judged by the mIoU drop alone; their
    agreement and logit distance are reported, not required.
    """
    names = [s.name for s in stages]
    for s in stages[1:]:
        if s.parent not in names[: names.index(s.name)]:
            raise ValueError(f"stage {s.name!r} names parent {s.parent!r}, which is not an earlier stage")
    acc = {s.name: _Accumulator(num_classes, ignore_index) for s in stages}
    n = 0
    for feed, label in feeds.pairs():
        outputs = {s.name: next(iter(s.runtime.infer(feed).values())) for s in stages}
        if tick is not None:
            tick()
        labels = {k: labels_of(v) for k, v in outputs.items()}
        ref = stages[0].name
        for s in stages:
            a, out, lab = acc[s.name], outputs[s.name], labels[s.name]
            image_cm = ConfusionMatrix(num_classes, ignore_index)
            image_cm.update(lab[0], label)
            a.per_image.append(image_cm.matrix.astype(np.int32))  # one image's counts fit; halves the memory
            if n < keep_labels:
                a.kept_labels.append(lab[0].astype(np.int16))
            a.confusion.merge(image_cm)
            a.boundary.update(lab[0], label)
            a.pixels += lab.size
            a.agree_ref += int((lab == labels[ref]).sum())
            if s.parent is not None:
                a.agree_parent += int((lab == labels[s.parent]).sum())
            if out.ndim == 4 and outputs[ref].ndim == 4:
                d = np.abs(out.astype(np.float64) - outputs[ref].astype(np.float64))
                a.max_ref, a.sum_ref, a.logit_values = (
                    max(a.max_ref, float(d.max())),
                    a.sum_ref + float(d.sum()),
                    a.logit_values + d.size,
                )
            else:
                a.has_logits = False
            if s.parent is not None and out.ndim == 4 and outputs[s.parent].ndim == 4:
                a.max_parent = max(a.max_parent, float(np.abs(out - outputs[s.parent]).max()))
        n += 1
    if n == 0:
        raise ValueError("the parity ledger needs at least one evaluation image")

    results: dict[str, StageParity] = {}
    ref_iou = acc[stages[0].name].confusion.per_class_iou() * 100
    ref_miou = acc[stages[0].name].confusion.miou()
    for s in stages:
        a = acc[s.name]
        iou = a.confusion.per_class_iou() * 100
        parent = results.get(s.parent) if s.parent else None
        miou = a.confusion.miou()
        row = StageParity(
            name=s.name,
            backend=s.backend,
            precision=s.precision,
            parent=s.parent,
            miou=miou,
            miou_delta=miou - ref_miou,
            miou_delta_vs_parent=None if parent is None else miou - parent.miou,
            per_class_iou=[None if np.isnan(v) else float(v) for v in iou],
            per_class_delta=[
                None if np.isnan(v) or np.isnan(r) else float(v - r) for v, r in zip(iou, ref_iou, strict=True)
            ],
            pixel_agreement=a.agree_ref / a.pixels,
            pixel_agreement_vs_parent=None if s.parent is None else a.agree_parent / a.pixels,
            boundary_f=a.boundary.compute().get("f_score"),
            max_abs_logit=a.max_ref if a.has_logits else None,
            mean_abs_logit=a.sum_ref / a.logit_values if a.has_logits and a.logit_values else None,
            max_abs_logit_vs_parent=a.max_parent if a.has_logits and s.parent else None,
            images=n,
        )
        if parent is not None:
            c = criteria(s.precision)
            if s.name in fine_tuned:
                c = replace(c, min_pixel_agreement=0.0, max_abs_logit=None)
            _judge(row, parent, c)
        results[s.name] = row
    per_image = {s.name: np.stack(acc[s.name].per_image) for s in stages}
    labels = {s.name: np.stack(acc[s.name].kept_labels) for s in stages if acc[s.name].kept_labels}
    return LedgerReport(list(results.values()), per_image, labels)


def _judge(row: StageParity, parent: StageParity, c: ParityCriteria) -> None:
    drop = -(row.miou_delta_vs_parent or 0.0)
    if drop > c.max_miou_drop:
        row.failures.append(f"mIoU fell {drop:.3f} points from {parent.name} (allowed {c.max_miou_drop:g})")
    if row.pixel_agreement_vs_parent is not None and row.pixel_agreement_vs_parent < c.min_pixel_agreement:
        row.failures.append(
            f"pixel agreement with {parent.name} is {100 * row.pixel_agreement_vs_parent:.3f}% "
            f"(allowed >= {100 * c.min_pixel_agreement:g}%)"
        )
    if (
        c.max_abs_logit is not None
        and row.precision == parent.precision
        and row.max_abs_logit_vs_parent is not None
        and row.max_abs_logit_vs_parent > c.max_abs_logit
    ):
        row.failures.append(
            f"max |logit diff| from {parent.name} is {row.max_abs_logit_vs_parent:.3g} (allowed {c.max_abs_logit:g})"
        )
    row.passed = not row.failures


def compare(
    reference: Runtime,
    candidate: Runtime,
    feeds: DatasetFeeds,
    *,
    criteria: ParityCriteria,
    num_classes: int,
    ignore_index: int = 255,
) -> StageParity:
    """Two-stage ledger: the candidate judged against the reference. ``bool(result.passed)`` is pass/fail."""
    stages = [
        LedgerStage("reference", reference.backend, reference.precision, reference, None),
        LedgerStage("candidate", candidate.backend, candidate.precision, candidate, "reference"),
    ]
    report = ledger(stages, feeds, num_classes=num_classes, ignore_index=ignore_index, criteria=lambda _: criteria)
    return report.stages[1]
