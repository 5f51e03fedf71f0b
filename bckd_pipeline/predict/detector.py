"""``Detector``: run a deployed detector on images of any size; boxes come back in each image's own pixels.

    from bckd_pipeline import Detector

    det = Detector.load("runs/det")              # the run's deployed artifact; or any .onnx/.xml/.plan
    boxes = det("street.jpg")                    # Boxes: .xyxy [D, 4], .conf [D], .cls [D], .class_names
    det.classes, det.info.backend, det.info.precision

The feed is built as for segmentation (predict/predictor.py: the model's input size, resize or letterbox,
normalisation read from the artifact). The runtime's named outputs (``scores``, ``boxes``, ``centerness``:
the raw head) are decoded by the detection task (tasks/detection.py: ``raw_output``, ``prediction_of``, the one
host decoding and NMS of every backend), and the boxes are mapped from the model's input back to the image
(tasks/detection_decode.py::to_source). The attribute names follow Ultralytics' ``Results.boxes``
(``xyxy``, ``conf``, ``cls``), as numpy arrays, ``cls`` as int64 class ids.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..errors import ConfigError, DataError
from ..tasks.detection import NMS_OUTPUT_NAMES, Detection
from ..tasks.detection_decode import DEFAULT_DECODE, OUTPUT_NAMES, to_source, valid_rows
from .image import to_rgb
from .predictor import Predictor


@dataclass(frozen=True)
class Boxes:
    """One image's detections in its own pixels, highest score first."""

    data: np.ndarray  # float32 [D, 6]: x1, y1, x2, y2, score, class id
    orig_shape: tuple[int, int]  # (H, W) of the image
    names: tuple[str, ...]  # the model's class names, indexed by class id

    @property
    def xyxy(self) -> np.ndarray:
        """float32 [D, 4] corners (x1, y1, x2, y2) in the image's pixels."""
        return self.data[:, :4]

    @property
    def conf(self) -> np.ndarray:
        """float32 [D] scores, ``sqrt(sigmoid(class) * sigmoid(centerness))`` (FCOS's test-time score)."""
        return self.data[:, 4]

    @property
    def cls(self) -> np.ndarray:
        """int64 [D] class ids (indices into ``names``)."""
        return self.data[:, 5].astype(np.int64)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class name of each box."""
        return tuple(self.names[c] for c in self.cls)

    def __len__(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class DetectionResult:
    boxes: Boxes
    infer_ms: float  # this image's share of the infer() call that ran it
    total_ms: float  # its share of fit + infer + decoding + mapping back (decoding the file not included)

    @property
    def output(self) -> np.ndarray:
        """What the task writes (``Task.write_prediction``): ``[D, 6]`` rows in the image's pixels."""
        return self.boxes.data


class Detector(Predictor):
    """A detector's Runtime plus the artifact's contract. Build with :meth:`load`; ``score_threshold`` keeps
    detections scoring above it (default: the decoding's, ``DecodeSettings.score_thresh``, or for a graph with NMS
    inside the threshold it applies, its ``bckd.nms`` metadata)."""

    task_name = "detection"

    def __init__(self, runtime, artifact, contract, *, score_threshold: float | None = None, **options) -> None:
        if score_threshold is not None and not 0.0 <= score_threshold < 1.0:
            raise ConfigError(
                f"--score-threshold {score_threshold}: scores lie in 0..1; give a threshold in [0, 1) (default "
                f"{DEFAULT_DECODE.score_thresh:g})."
            )
        self._threshold_given = score_threshold is not None
        self._set_threshold(DEFAULT_DECODE.score_thresh if score_threshold is None else float(score_threshold))
        super().__init__(runtime, artifact, contract, **options)

    def _set_threshold(self, threshold: float) -> None:
        self.score_threshold = threshold
        self._task = Detection(replace(DEFAULT_DECODE, score_thresh=threshold))

    def _graph_score_thresh(self) -> float:
        """The score threshold a graph with NMS inside applies (its ``bckd.nms`` metadata; the decoding's default
        when the graph does not say)."""
        raw = self.contract.extra.get("nms")
        try:
            return float(json.loads(raw)["score_thresh"]) if raw else DEFAULT_DECODE.score_thresh
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{self.artifact.path.name}: its bckd.nms metadata is not the JSON object export writes (with "
                f"score_thresh): {str(raw)[:80]!r}. Re-export the model with --head nms."
            ) from None

    def _check_labels(self, rows: np.ndarray) -> None:
        """Every class id of ``rows`` (``[..., 6]``, label -1 for padding) names one of the classes."""
        labels = rows[..., 5]
        labels = labels[labels != -1]
        outside = labels[(labels < 0) | (labels >= len(self.classes))]
        if outside.size:
            raise ConfigError(
                f"{self.artifact.path.name} gives class id {int(outside[0])}, and {len(self.classes)} class names are "
                f"given ({self.contract.source}): ids must lie in 0..{len(self.classes) - 1}. Give one name per class "
                "the model detects (--classes)."
            )

    @property
    def task(self) -> Detection:
        """The detection task, decoding at this Detector's score threshold."""
        return self._task

    def _check_outputs(self, outputs: Mapping[str, np.ndarray], feed: Mapping[str, np.ndarray]) -> str:
        name = self.artifact.path.name
        if all(n in outputs for n in NMS_OUTPUT_NAMES):  # a graph with NMS inside (--head nms): rows already made
            graph_thresh = self._graph_score_thresh()
            if not self._threshold_given:
                self._set_threshold(graph_thresh)
            elif self.score_threshold < graph_thresh:
                raise ConfigError(
                    f"{name} has NMS inside, which drops scores at or under {graph_thresh:g}; "
                    f"--score-threshold {self.score_threshold:g} cannot bring them back. Give a threshold of at "
                    f"least {graph_thresh:g}, or deploy --head raw."
                )
            if self.contract.class_names is None:
                raise ConfigError(
                    f"{name} has NMS inside and carries no class names (bckd.class_names); give them (--classes)."
                )
            try:
                rows = self.task.prediction_of(self.task.raw_output(outputs, feed))
            except DataError as exc:
                raise ConfigError(f"{name}: {exc}") from None
            self._check_labels(rows)
            return ", ".join(NMS_OUTPUT_NAMES)
        missing = [n for n in OUTPUT_NAMES if n not in outputs]
        if missing:
            raise ConfigError(
                f"{name} outputs {', '.join(outputs)}; a Detector reads the raw head outputs "
                f"{', '.join(OUTPUT_NAMES)} (missing {', '.join(missing)}), or those of a graph with NMS inside "
                f"({', '.join(NMS_OUTPUT_NAMES)}). Export the detector with --head raw or --head nms."
            )
        scores = outputs["scores"]
        if scores.ndim != 3:
            raise ConfigError(f"Output 'scores' of {name} has shape {scores.shape}; a Detector reads N x A x C.")
        if self.contract.class_names is None:
            from ..model_spec import default_class_names

            self.contract = replace(self.contract, class_names=default_class_names(int(scores.shape[2])))
        if scores.shape[2] != len(self.classes):
            raise ConfigError(
                f"{name} outputs {scores.shape[2]} class scores, but {len(self.classes)} class names are given "
                f"({self.contract.source}). Give one name per class."
            )
        try:
            self.task.prediction_of(self.task.raw_output(outputs, feed))
        except DataError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        return ", ".join(OUTPUT_NAMES)

    # -- inference ------------------------------------------------------------------------------
    def __call__(self, image) -> Boxes:
        """One image (path, PIL image or uint8 H x W x 3 RGB array) -> its boxes in its own pixels."""
        return self.predict([image])[0].boxes

    def predict_batch(self, images: Sequence) -> list[Boxes]:
        """Several images (any sizes) -> their boxes, run ``info.batch`` at a time."""
        return [r.boxes for r in self.predict(images)]

    def predict(self, images: Sequence) -> list[DetectionResult]:
        """Like ``predict_batch``, with each image's share of the inference time."""
        rgbs = [to_rgb(im, name=f"image {i}") for i, im in enumerate(images)]
        found: list[DetectionResult] = []
        for chunk in self._chunks(rgbs):
            found += self._run(chunk)
        return found

    def _run(self, images: list[np.ndarray]) -> list[DetectionResult]:
        start = time.perf_counter()
        feed, placed = self._feed(images)
        outputs = self.runtime.infer(feed)
        infer_s = self.runtime.last_latency_s or 0.0
        rows = self.task.prediction_of(self.task.raw_output(outputs, feed))
        self._check_labels(rows)
        boxes = []
        for i, where in enumerate(placed):
            mapped = to_source(rows[i], source=where.source, inner=where.inner, top=where.top, left=where.left)
            boxes.append(Boxes(valid_rows(mapped), where.source, self.classes))
        total_s = time.perf_counter() - start
        n = len(images)
        return [DetectionResult(b, 1000 * infer_s / n, 1000 * total_s / n) for b in boxes]

    def __enter__(self) -> Detector:
        return self
