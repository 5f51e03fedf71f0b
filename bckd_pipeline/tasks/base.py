"""What a task is: everything in the pipeline that depends on what the model predicts.

The stages (distil, export, calibrate, deploy, parity, report, gate, predict, the device agent) are the
same for every dense-prediction task; what differs is how a model's raw output becomes a prediction,
how a prediction is scored against the labels, and how two deployments of one model are compared.
A task answers those questions, and the stages ask it instead of naming a metric themselves.

A new task is one file under ``tasks/`` with a subclass of :class:`Task`, registered in
``tasks/__init__.py::TASKS``. It implements:

- ``prediction_of(output)``: a model's raw output batch (what the exported graph returns; ``raw_output``
  picks it from the runtime's named outputs: the first by default) as the prediction batch that is scored
  and written;
- ``image_evidence(prediction, target)``: one image's sufficient statistics, a numpy array that sums
  over images (segmentation: the image's confusion matrix). The ledger keeps it per image; summed it
  gives the split's metric and resampled over images it gives the gate's bootstrap interval;
- ``metric_of(evidence)``: the headline metric (``metric``, in ``metric_unit``) of evidence summed over
  images, vectorised over leading axes;
- ``parity_meter()``: what the parity ledger measures for one stage against the reference and its
  parent (:class:`ParityMeter`), ``parity_fields`` (the report row keys it fills) and ``judge()``
  (the failures of a stage against its parent under the precision's criteria);
- ``budget_keys``: the budgets the gate reads from a budgets file for this task;
- ``export_heads``: the heads the exported graph may end in (the first is the default);
- ``columns``: the accuracy columns the report's ledger tables draw (:class:`Column`);
- ``as_saved(prediction)``: one image's prediction (or label) as the run's evidence files keep it
  (parity_images.npz, qualitative.npz; segmentation: the int16 label map);
- ``write_prediction(prediction, out, stem, ...)``: ``predict``'s files of one image under ``out`` and
  its predictions.json entry fields (paths relative to ``out``); ``write_overlay(...)``: the picture
  ``--save-overlay`` adds, and the entry field naming it; ``output_folders``: the folders under ``out``
  they write into (a rerun into the same ``out`` replaces them);
- ``draw(prediction, colors, ...)``: one prediction (or label) as an RGB picture for report.html, its
  errors against the label marked; ``caption(prediction, label, ...)``: the line under that picture;
  ``legend``: what the marks ``draw`` adds beside the class colours mean.

The generic parts (the split loop, the paired bootstrap of the metric's delta) are written once here
on top of those. This module and every task module import only numpy and the standard library at
module level: the CI gate has no torch, and the device agent ships them under Python 3.8. The files and
pictures need PIL: a task imports it inside those hooks (segmentation: ``tasks/segmentation_draw.py``).
"""

from __future__ import annotations

from types import MappingProxyType

from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError

if TYPE_CHECKING:
    from pathlib import Path


BOOTSTRAP_CHUNK_VALUES = 1 << 22  # summed evidence values per bootstrap chunk (float64: 32 MiB)


@dataclass(frozen=True)
class Interval:
    """A bootstrap estimate: the point value and its one-sided bounds at ``confidence``."""

    point: float
    lower: float  # one-sided lower bound at ``confidence``
    upper: float  # one-sided upper bound at ``confidence``
    confidence: float
    resamples: int


@dataclass(frozen=True)
class BudgetKey:
    """One budget of the CI gate: its unit, whether the measured value must stay at or below it ("max")
    or above ("min"), and the range a sensible value lies in.

    ``check`` says how the gate judges it: ``"latency"`` and ``"artifact"`` (the task-independent budgets),
    ``"value"`` (the report row's ``field`` against the limit), ``"drop"`` (the headline metric's drop
    against the reference stage, on the bootstrap bound) or ``"baseline_drop"`` (its drop against the
    same stage of a ``--baseline`` report). ``label`` names the measured value in messages, ``fmt`` formats it.
    """

    unit: str
    direction: str  # "max" or "min"
    low: float
    high: float | None
    what: str
    check: str = "value"
    field: str | None = None
    label: str = ""
    fmt: str = ".3f"
    example: str = "12"  # a sensible value, for messages
    default: float | None = None  # the limit when the budgets file sets none (``baseline_drop``: --baseline is
    # always judged)
    # Which labels the figure is scored against: "ground_truth" (the dataset's), "reference" (the FP32
    # reference's own predictions, a label-free run) or None (either: e.g. agreement with the reference).
    labels: str | None = None


@dataclass(frozen=True)
class Column:
    """One accuracy column of the report's ledger tables: its header, the row field, its format and scale."""

    header: str
    field: str
    fmt: str = ".2f"
    scale: float = 1.0  # e.g. 100 for a fraction shown in percent

    def value(self, row: Mapping[str, Any]) -> float | None:
        """The row's value in the column's scale (None: not measured)."""
        v = row.get(self.field)
        return v if v is None or self.scale == 1.0 else self.scale * v


class SplitScore:
    """The headline metric accumulated over the images of a split: ``update`` per batch, then ``value``."""

    def __init__(self, task: Task, num_classes: int, ignore_index: int) -> None:
        self.task, self.num_classes, self.ignore_index = task, num_classes, ignore_index
        self.evidence: np.ndarray | None = None
        self.images = 0

    def update(self, predictions: np.ndarray, targets: np.ndarray) -> None:
        """Add a batch of predictions and their targets (matching leading batch axes)."""
        for i in range(len(predictions)):
            e = self.task.image_evidence(
                predictions[i], targets[i], num_classes=self.num_classes, ignore_index=self.ignore_index
            )
            self.evidence = e.astype(np.int64) if self.evidence is None else self.evidence + e
            self.images += 1

    def value(self) -> float:
        """The metric of everything added so far (NaN before any update)."""
        if self.evidence is None:
            return float("nan")
        return float(self.task.metric_of(self.evidence))


class ParityMeter(ABC):
    """What the parity ledger measures for one stage, image by image.

    ``update`` gets the stage's raw output and prediction for one image, the same for the reference
    stage and the stage's parent (None for the reference itself), and the image's label map. ``fields``
    returns the report row's parity fields (``Task.parity_fields``) given the reference's meter and the
    parent's finished fields. ``per_image`` is the evidence per image (stacked: the gate's bootstrap).
    """

    per_image: list[np.ndarray]
    kept: list[np.ndarray]

    @abstractmethod
    def update(
        self,
        output: np.ndarray,
        prediction: np.ndarray,
        reference: tuple[np.ndarray, np.ndarray],
        parent: tuple[np.ndarray, np.ndarray] | None,
        label: np.ndarray,
        keep: bool,
    ) -> None: ...

    @abstractmethod
    def fields(self, reference: ParityMeter, parent: Mapping[str, Any] | None) -> dict[str, Any]: ...


class Task(ABC):
    """The task-specific half of the pipeline (see the module docstring for what a task implements)."""

    name: str
    metric: str  # the report row field of the headline metric, e.g. "miou"
    metric_label: str  # how messages name it, e.g. "mIoU"
    metric_unit: str  # e.g. "mIoU points"
    evidence: str  # what the per-image evidence is, for messages, e.g. "confusions"
    parity_fields: tuple[str, ...]
    budget_keys: Mapping[str, BudgetKey]
    export_heads: tuple[str, ...]
    columns: tuple[Column, ...]  # the accuracy columns of the report's ledger tables
    output_folders: tuple[str, ...]  # the folders ``write_prediction`` and ``write_overlay`` write under --out
    legend: tuple[tuple[str, str], ...]  # (CSS colour, meaning) of the marks ``draw`` adds to a prediction
    # INT8 keeps the ops between the last convolution of each branch and the graph's outputs in float (a detector's
    # box decoding: calibrate/exclude.py ``output_tail_names``)
    int8_float_tail: bool = False
    # The latency stage also times ``prediction_of`` on the host beside the network (detection: decoding and NMS)
    times_postprocess: bool = False
    # Per output name, a relative tolerance the export and simplify checks add to their absolute one
    # (export/check.py ``compare``): for outputs whose values grow with the input size, such as box coordinates
    # in pixels, where float32 rounding differs between runtimes by a share of the value.
    export_rtol: Mapping[str, float] = MappingProxyType({})

    def raw_output(self, outputs: Mapping[str, np.ndarray], feed: Mapping[str, np.ndarray]) -> Any:
        """What ``prediction_of`` takes, from a runtime's named outputs for the input ``feed``: the first output
        (segmentation's logits or labels); a task whose model has several outputs takes them all (detection)."""
        return next(iter(outputs.values()))

    @abstractmethod
    def prediction_of(self, output: np.ndarray) -> np.ndarray:
        """A model's raw output batch (``raw_output``) as the prediction batch."""

    def replayed_outputs(self, saved: np.ndarray) -> dict[str, np.ndarray]:
        """One image's prediction as the device agent saves it (``prediction_of(...)[0]``, device/agent.py) as
        the named outputs of a runtime of batch 1 whose ``raw_output`` and ``prediction_of`` give it back: how
        the parity ledger replays a device row (deploy/replay.py). Segmentation: the label map as ``labels``."""
        return {"labels": np.asarray(saved)[None].astype(np.int64)}

    def reference_labels(self, prediction: np.ndarray, like: np.ndarray) -> np.ndarray:
        """The reference's prediction of one image as the labels a label-free ledger scores every row against
        (``like``: the dataset's labels of that image, for their shape and dtype; a static batch's first image)."""
        p = np.asarray(prediction)
        if p.ndim == like.ndim + 1:
            p = p[0]
        return p.astype(like.dtype).reshape(like.shape)

    @abstractmethod
    def image_evidence(self, prediction: np.ndarray, target: np.ndarray, *, num_classes: int, ignore_index: int):
        """One image's sufficient statistics (a numpy array that sums over images)."""

    @abstractmethod
    def metric_of(self, evidence: np.ndarray) -> np.ndarray:
        """The headline metric of evidence summed over images; vectorised over leading axes."""

    @abstractmethod
    def parity_meter(self, num_classes: int, ignore_index: int) -> ParityMeter:
        """A fresh meter for one stage of the parity ledger."""

    @abstractmethod
    def judge(self, row: Mapping[str, Any], parent_name: str, same_precision: bool, criteria: Any) -> list[str]:
        """The failures of a stage's parity ``row`` against its parent under ``criteria`` (empty: it passed)."""

    @abstractmethod
    def as_saved(self, prediction: np.ndarray) -> np.ndarray:
        """One image's prediction (or label) as parity_images.npz and qualitative.npz keep it."""

    @abstractmethod
    def write_prediction(
        self, prediction: np.ndarray, out: Path, stem: str, *, colors: np.ndarray, classes: tuple[str, ...]
    ) -> dict:
        """Write one image's prediction files under ``out`` (named after ``stem``); return its predictions.json
        entry fields, files as paths relative to ``out``. ``colors``: the class colours (``palette.palette``)."""

    @abstractmethod
    def write_overlay(
        self, prediction: np.ndarray, rgb: np.ndarray, out: Path, stem: str, *, colors: np.ndarray, classes: tuple = ()
    ) -> dict:
        """Write the prediction drawn over the H x W x 3 uint8 image ``rgb`` (``--save-overlay``); return the
        entry fields naming the file (relative to ``out``). ``classes``: the class names, for a task that labels
        what it draws."""

    @abstractmethod
    def draw(
        self,
        prediction: np.ndarray,
        colors: np.ndarray,
        *,
        ignore_index: int,
        truth: np.ndarray | None = None,
        image: np.ndarray | None = None,
    ) -> np.ndarray:
        """One prediction as an H x W x 3 uint8 picture for report.html; with ``truth`` (the image's label),
        its errors marked. A label drawn alone is the ground truth's picture. ``image`` (H x W x 3 uint8, the
        input): what a task that draws over the input draws on (detection's boxes); others may ignore it."""

    @abstractmethod
    def caption(self, prediction: np.ndarray, truth: np.ndarray, *, ignore_index: int) -> str:
        """The line under a prediction's picture in report.html (how well it matches ``truth``)."""

    def split_score(self, num_classes: int, ignore_index: int) -> SplitScore:
        """An accumulator of the headline metric over a split."""
        return SplitScore(self, num_classes, ignore_index)

    def score_split(
        self,
        predict: Callable[[Any], np.ndarray],
        pairs: Iterable[tuple[Any, np.ndarray]],
        *,
        num_classes: int,
        ignore_index: int,
    ) -> float:
        """The headline metric of ``predict`` (input -> raw output batch, ``raw_output`` of the runtime's outputs)
        over ``(input, label)`` pairs.

        The one evaluation loop over a split for the runtimes (ONNX Runtime, OpenVINO, TensorRT); a torch
        model over a dataset goes through ``metrics.evaluate``, which uses the same prediction and metric.
        """
        score = self.split_score(num_classes, ignore_index)
        for x, label in pairs:
            output = predict(x)  # an array, or what ``raw_output`` made of several named outputs
            output = np.asarray(output) if isinstance(output, (np.ndarray, list, tuple)) else output
            target = [label] if isinstance(label, Mapping) else np.asarray(label)[None]  # a target dict: as it is
            score.update(self.prediction_of(output)[:1], target)
        return score.value()

    def headline(self, row: Mapping[str, Any]) -> list[str]:
        """The parity stage's end line for the deployed row: its metric's change against the reference."""
        delta = row.get(f"{self.metric}_delta")
        return [] if delta is None else [f"d{self.metric_label} {delta:+.3f}"]

    def drop_budget(self) -> str:
        """The budget key that bounds the headline metric's drop (the one ``--qat auto`` reads from a budgets file)."""
        return next(name for name, key in self.budget_keys.items() if key.check == "drop")

    def bootstrap_delta(
        self, new: np.ndarray, ref: np.ndarray, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
    ) -> Interval:
        """Paired bootstrap of Δ = metric(new) - metric(ref) over images.

        ``new`` and ``ref`` are the per-image evidence ``[N, ...]`` of the same N images. Each resample b
        draws N image indices with replacement (the same indices for both, so the pairing cancels the
        variation shared by the two models) and computes Δ_b = metric(Σ_k new[i_k]) - metric(Σ_k ref[i_k]),
        the split-level metric of the resampled set. ``point`` is Δ on all images; ``lower``/``upper`` are the
        (1 - confidence) and confidence percentiles of Δ_b (percentile method).
        """
        new, ref = np.asarray(new, np.int64), np.asarray(ref, np.int64)
        if new.shape != ref.shape or new.ndim < 2 or len(new) == 0:
            raise DataError(
                f"A paired Δ{self.metric_label} needs per-image evidence of the same images, got shapes {new.shape} "
                f"and {ref.shape}. Compare reports evaluated on the same images."
            )
        n, shape = new.shape[0], new.shape[1:]
        rng = np.random.default_rng(seed)
        # Resample b's summed evidence = (how often each image was drawn) @ the per-image evidence. In
        # float64, which NumPy multiplies with BLAS (int64 products are ~30x slower) and which holds pixel
        # counts exactly below 2^53.
        draws = [np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]
        weights = np.stack(draws).astype(np.float64)
        flat_new, flat_ref = (e.reshape(n, -1).astype(np.float64) for e in (new, ref))
        # Resamples in chunks of at most BOOTSTRAP_CHUNK_VALUES summed values: large evidence (detection's score
        # histograms) stays within memory. The sums are exact integers, so chunking changes no value.
        step = max(1, BOOTSTRAP_CHUNK_VALUES // max(1, flat_new.shape[1]))

        def resampled(w: np.ndarray, e: np.ndarray) -> np.ndarray:
            return self.metric_of((w @ e).reshape((-1,) + shape))

        deltas = np.concatenate(
            [
                resampled(weights[i : i + step], flat_new) - resampled(weights[i : i + step], flat_ref)
                for i in range(0, resamples, step)
            ]
        )
        deltas = deltas[~np.isnan(deltas)]
        point = float(self.metric_of(new.sum(0)) - self.metric_of(ref.sum(0)))
        lower, upper = np.percentile(deltas, [100 * (1 - confidence), 100 * confidence])
        return Interval(point, float(lower), float(upper), confidence, resamples)
