"""``Segmenter``: run a deployed model (or a student checkpoint) on images of any size.

    from bckd_pipeline import Segmenter

    seg = Segmenter.load("runs/demo")            # the run's deployed artifact; or any .onnx/.xml/.plan/.pt
    labels = seg("street.jpg")                   # uint8 H x W class ids, at the image's own size
    seg.classes, seg.info.backend, seg.info.precision

Everything the model needs is read from the artifact (predict/artifact.py): input size, normalisation,
class names. Images are resized (or letterboxed) to the model's input and the label map is mapped
back (predict/image.py). The runtime is one of runtimes/, kept active until ``close()`` (or the
end of a ``with`` block), so a Segmenter follows the Runtime lifecycle (predict/predictor.py: what it shares
with ``Detector``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .image import to_rgb, unfit
from .predictor import Predictor, PredictorInfo

SegmenterInfo = PredictorInfo  # the name this API has always given ``seg.info``'s type


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray  # uint8 H x W class ids at the image's own size
    infer_ms: float  # this image's share of the infer() call that ran it
    total_ms: float  # its share of fit + infer + mapping back (decoding not included)

    @property
    def output(self) -> np.ndarray:
        """What the task writes (``Task.write_prediction``): the label map."""
        return self.labels


class Segmenter(Predictor):
    """A segmentation model's Runtime plus the artifact's contract. Build with :meth:`load`."""

    task_name = "segmentation"

    def _check_outputs(self, outputs: Mapping[str, np.ndarray], feed: Mapping[str, np.ndarray]) -> str:
        if len(self.classes) > 256:
            raise ConfigError(
                f"{self.artifact.path.name} names {len(self.classes)} classes; label maps are uint8 palette PNGs "
                "(class ids 0..255). Models with more classes are not supported by predict."
            )
        name = self.contract.output_name if self.contract.output_name in outputs else next(iter(outputs))
        y = outputs[name]
        if self.contract.class_names is None:
            self.contract = replace(self.contract, class_names=_default_names(self.artifact.path, y))
        if y.ndim == 4 and y.shape[1] != len(self.classes):
            raise ConfigError(
                f"{self.artifact.path.name} outputs {y.shape[1]} class scores, but {len(self.classes)} class names are "
                f"given ({self.contract.source}). Give one name per output channel."
            )
        if y.ndim not in (3, 4):
            raise ConfigError(
                f"Output {name!r} of {self.artifact.path.name} has shape {y.shape}; a Segmenter reads N x C x H x W "
                "class scores or N x H x W labels."
            )
        return name

    # -- inference ------------------------------------------------------------------------------
    def __call__(self, image) -> np.ndarray:
        """One image (path, PIL image or uint8 H x W x 3 RGB array) -> uint8 H x W class ids at its size."""
        return self.predict([image])[0].labels

    def predict_batch(self, images: Sequence) -> list[np.ndarray]:
        """Several images (any sizes) -> their label maps, run ``info.batch`` at a time."""
        return [p.labels for p in self.predict(images)]

    def predict(self, images: Sequence) -> list[Prediction]:
        """Like ``predict_batch``, with each image's share of the inference time."""
        rgbs = [to_rgb(im, name=f"image {i}") for i, im in enumerate(images)]
        found: list[Prediction] = []
        for chunk in self._chunks(rgbs):
            found += self._run(chunk)
        return found

    def _run(self, images: list[np.ndarray]) -> list[Prediction]:
        start = time.perf_counter()
        feed, placed = self._feed(images)
        y = self.runtime.infer(feed)[self.output_name]
        infer_s = self.runtime.last_latency_s or 0.0
        labels = self.task.prediction_of(y).astype(np.uint8, copy=False)
        maps = [unfit(labels[i], where) for i, where in enumerate(placed)]
        total_s = time.perf_counter() - start
        n = len(images)
        return [Prediction(m, 1000 * infer_s / n, 1000 * total_s / n) for m in maps]

    def __enter__(self) -> Segmenter:
        return self


def _default_names(path: Path, y: np.ndarray) -> tuple[str, ...]:
    """class_0..N-1 for a model that names no classes, N from its class-score output (a warning on stderr)."""
    if y.ndim != 4:
        raise ConfigError(
            f"{path.name} outputs label maps and carries no class names, so the number of classes is unknown. Give "
            "them with --classes NAME,NAME,... or --classes-file FILE (one name per line)."
        )
    from ..model_spec import default_class_names

    return default_class_names(int(y.shape[1]))
