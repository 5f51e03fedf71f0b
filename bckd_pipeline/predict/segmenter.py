"""``Segmenter``: run a deployed model (or a student checkpoint) on images of any size.

    from bckd_pipeline import Segmenter

    seg = Segmenter.load("runs/demo")            # the run's deployed artifact; or any .onnx/.xml/.plan/.pt
    labels = seg("street.jpg")                   # uint8 H x W class ids, at the image's own size
    seg.classes, seg.info.backend, seg.info.precision

Everything the model needs is read from the artifact (predict/artifact.py): input size, normalisation,
class names. Images are resized (or letterboxed) to the model's input and the label map is mapped
back (predict/image.py). The runtime is one of runtimes/, kept active until ``close()`` (or the
end of a ``with`` block), so a Segmenter follows the Runtime lifecycle.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..palette import palette
from ..tasks import DEFAULT_TASK, Task, get_task
from .artifact import Artifact, Contract, locate, make_runtime, read_contract
from .image import Placement, fit, to_rgb, unfit


@dataclass(frozen=True)
class SegmenterInfo:
    """What runs, and how it is fed (``seg.info``; predictions.json's ``model``)."""

    path: str
    kind: str  # onnx | openvino-ir | tensorrt-plan | checkpoint
    backend: str  # onnxruntime | openvino | tensorrt | torch
    device: str
    precision: str  # fp32 | fp16 | int8
    input_name: str
    input_size: tuple[int, int] | None  # (H, W); None: each image at its own size
    batch: int  # images per infer() call
    static_batch: int | None  # the model's fixed batch, None when dynamic
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    normalization_in_graph: bool
    letterbox: bool
    output_name: str
    class_names: tuple[str, ...]
    contract_source: str  # where the preprocessing and class names were read
    provenance: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray  # uint8 H x W class ids at the image's own size
    infer_ms: float  # this image's share of the infer() call that ran it
    total_ms: float  # its share of fit + infer + mapping back (decoding not included)


class Segmenter:
    """A Runtime plus the artifact's contract. Build with :meth:`load`."""

    def __init__(
        self,
        runtime,
        artifact: Artifact,
        contract: Contract,
        *,
        letterbox: bool = False,
        batch: int | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        self.runtime = runtime
        self.artifact = artifact
        self.contract = contract
        self.letterbox = letterbox
        if not runtime.is_active:
            runtime.activate()
        try:
            self._configure(batch, input_size)
        except BaseException:
            runtime.deactivate()
            raise

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        target: str | None = None,
        letterbox: bool = False,
        batch: int | None = None,
        input_size: tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        classes: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> Segmenter:
        """Load a run folder (its manifest's deployed artifact) or an .onnx/.xml/.plan/.engine/.pt file.

        ``target`` (a name of `bckd-pipeline targets`) picks the backend and device that run it, e.g.
        ``openvino-cpu`` for an .onnx. ``mean``/``std``/``classes`` only fill in what an artifact made
        outside this project lacks. ``batch``: images per infer() call (default: the model's fixed
        batch, else 1). ``input_size``: (H, W) for a model whose height and width are dynamic.
        """
        artifact = locate(model, target)
        runtime = make_runtime(artifact, threads=threads)  # first: a backend missing here is the first thing to say
        contract = read_contract(artifact).with_overrides(mean, std, classes)
        contract.require(artifact.path)
        return cls(runtime, artifact, contract, letterbox=letterbox, batch=batch, input_size=input_size)

    @property
    def task(self) -> Task:
        """The run's task (its manifest's ``task``; an artifact from elsewhere is taken as segmentation)."""
        return get_task((self.artifact.manifest or {}).get("task", DEFAULT_TASK))

    # -- set-up --------------------------------------------------------------------------------
    def _configure(self, batch: int | None, input_size: tuple[int, int] | None) -> None:
        spec = self.runtime.input_spec()
        if len(spec) != 1:
            raise ConfigError(
                f"{self.artifact.path.name} takes {len(spec)} inputs ({', '.join(spec)}); a Segmenter feeds one image "
                "input (N x 3 x H x W)."
            )
        ((self.input_name, tensor),) = spec.items()
        if len(tensor.shape) != 4 or tensor.shape[1] not in (3, None):
            raise ConfigError(
                f"Input {self.input_name!r} of {self.artifact.path.name} has shape {tensor.shape}; a Segmenter feeds "
                "N x 3 x H x W RGB images."
            )
        if tensor.dtype != np.float32:
            raise ConfigError(f"Input {self.input_name!r} is {tensor.dtype}; a Segmenter feeds float32 images.")
        static_batch, h, w = tensor.shape[0], tensor.shape[2], tensor.shape[3]
        fixed = (h, w) if h is not None and w is not None else None
        if fixed is not None and input_size is not None and tuple(input_size) != fixed:
            raise ConfigError(
                f"--input-size {input_size[0]},{input_size[1]}: {self.artifact.path.name} takes a fixed {h}x{w} input. "
                "Drop --input-size (images are resized to it), or export with --dynamic height,width."
            )
        self.input_size = fixed or (tuple(input_size) if input_size else self.contract.resize_to)
        if self.letterbox and self.input_size is None:
            raise ConfigError(
                f"--letterbox fits images into the model's input size, and {self.artifact.path.name} has none "
                "(dynamic height and width, and no size in its metadata). Give --input-size H,W, or drop --letterbox: "
                "each image then runs at its own size."
            )
        if batch is not None and batch < 1:
            raise ConfigError(f"--batch {batch}: give a positive number of images per inference call.")
        if static_batch is not None and batch is not None and batch != static_batch:
            raise ConfigError(
                f"--batch {batch}: {self.artifact.path.name} takes a fixed batch of {static_batch}. Drop --batch, or "
                "export the model with --dynamic batch."
            )
        self.static_batch = static_batch
        self.batch = batch or static_batch or 1
        self.output_name = self._output_name()

    def _output_name(self) -> str:
        if len(self.classes) > 256:
            raise ConfigError(
                f"{self.artifact.path.name} names {len(self.classes)} classes; label maps are uint8 palette PNGs "
                "(class ids 0..255). Models with more classes are not supported by predict."
            )
        probe = np.zeros((self.static_batch or 1, 3, *(self.input_size or (64, 64))), np.float32)
        outputs = self.runtime.infer({self.input_name: probe})  # one warm-up run also tells the output's layout
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

    # -- what it is -----------------------------------------------------------------------------
    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.contract.class_names or ())

    @property
    def palette(self) -> np.ndarray:
        """n_classes x 3 uint8 colours, the ones report.html uses: the artifact's own (the training data's classes
        file) where it carries one per class, else the project's palette."""
        colors = self.contract.class_colors
        if colors is not None and len(colors) == len(self.classes):
            return np.asarray(colors, np.uint8).reshape(-1, 3)
        return palette(len(self.classes))

    @property
    def info(self) -> SegmenterInfo:
        a, c = self.artifact, self.contract
        return SegmenterInfo(
            path=str(a.path),
            kind=a.kind,
            backend=a.backend,
            device=a.device,
            precision=self.runtime.precision,
            input_name=self.input_name,
            input_size=self.input_size,
            batch=self.batch,
            static_batch=self.static_batch,
            mean=c.mean,
            std=c.std,
            normalization_in_graph=c.normalization_in_graph,
            letterbox=self.letterbox,
            output_name=self.output_name,
            class_names=self.classes,
            contract_source=c.source,
            provenance=self._provenance(),
        )

    def _provenance(self) -> dict:
        a, m = self.artifact, self.artifact.manifest or {}
        prov = {"model": self.contract.model, **self.contract.extra}
        if a.run_dir is not None:
            sha = next(
                (
                    e.get("sha256")
                    for e in m.get("artifacts", [])
                    if (a.run_dir / e.get("path", "")).resolve() == a.path.resolve()
                ),
                None,
            )
            prov |= {
                "run": str(a.run_dir),
                "target": m.get("target"),
                "artifact_sha256": sha,
                "checkpoint": m.get("checkpoint"),
                "report_status": m.get("report_status"),
                "git_sha": m.get("git_sha"),
            }
        return {k: v for k, v in prov.items() if v not in (None, "")}

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

    def _chunks(self, rgbs: list[np.ndarray]) -> Iterator[list[np.ndarray]]:
        start = 0
        while start < len(rgbs):
            chunk = rgbs[start : start + self.batch]
            if self.input_size is None:  # each image at its own size: a batch holds one size only
                first = chunk[0].shape
                chunk = chunk[: next((i for i, im in enumerate(chunk) if im.shape != first), len(chunk))]
            yield chunk
            start += len(chunk)

    def _run(self, images: list[np.ndarray]) -> list[Prediction]:
        start = time.perf_counter()
        mean, std = np.asarray(self.contract.mean, np.float32), np.asarray(self.contract.std, np.float32)
        fill = tuple(int(v) for v in np.round(mean * 255))  # normalises to exactly 0, as training pads
        placed: list[Placement] = []
        arrays = []
        for im in images:
            x, where = fit(im, self.input_size or im.shape[:2], letterbox=self.letterbox, fill=fill)
            arrays.append(x)
            placed.append(where)
        x = np.stack(arrays).astype(np.float32)
        if not self.contract.normalization_in_graph:
            x = (x * np.float32(1 / 255) - mean) / std
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if self.static_batch is not None and len(images) < self.static_batch:  # a last, short batch
            x = np.concatenate([x, np.repeat(x[-1:], self.static_batch - len(images), axis=0)])
        y = self.runtime.infer({self.input_name: x})[self.output_name]
        infer_s = self.runtime.last_latency_s or 0.0
        labels = self.task.prediction_of(y).astype(np.uint8, copy=False)
        maps = [unfit(labels[i], where) for i, where in enumerate(placed)]
        total_s = time.perf_counter() - start
        n = len(images)
        return [Prediction(m, 1000 * infer_s / n, 1000 * total_s / n) for m in maps]

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        self.runtime.deactivate()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        size = "any" if self.input_size is None else f"{self.input_size[0]}x{self.input_size[1]}"
        return (
            f"Segmenter({self.artifact.path.name}: {self.artifact.backend} {self.info.precision}, input {size}, "
            f"{len(self.classes)} classes)"
        )


def _default_names(path: Path, y: np.ndarray) -> tuple[str, ...]:
    """class_0..N-1 for a model that names no classes, N from its class-score output (a warning on stderr)."""
    if y.ndim != 4:
        raise ConfigError(
            f"{path.name} outputs label maps and carries no class names, so the number of classes is unknown. Give "
            "them with --classes NAME,NAME,... or --classes-file FILE (one name per line)."
        )
    from ..model_spec import default_class_names

    return default_class_names(int(y.shape[1]))
