"""``Predictor``: what every deployed model's Python API (``Segmenter``, ``Detector``) shares, whatever its
task; predict/loading.py::load picks the API of the artifact's task.

A Predictor holds a Runtime (runtimes/, active until ``close()`` or the end of a ``with`` block) and the
artifact's contract (predict/artifact.py): input size, normalisation, class names. It checks the model's
input, fits images to it (predict/image.py) and builds the feed; what the outputs mean is its subclass's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..palette import palette
from ..tasks import Task, get_task
from .artifact import Artifact, Contract, locate, make_runtime, read_contract, task_of
from .image import Placement, fit


@dataclass(frozen=True)
class PredictorInfo:
    """What runs, and how it is fed (``model.info``; predictions.json's ``model``)."""

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
    output_name: str  # the output read (several: comma-separated, e.g. a detector's "scores, boxes, centerness")
    class_names: tuple[str, ...]
    contract_source: str  # where the preprocessing and class names were read
    provenance: dict = field(default_factory=dict)
    task: str = "segmentation"  # the artifact's task (tasks/)

    def as_dict(self) -> dict:
        return asdict(self)


class Predictor:
    """A Runtime plus the artifact's contract. Build with a subclass's :meth:`load`, or with
    ``bckd_pipeline.load``, which returns the subclass of the artifact's task."""

    task_name: str  # the task a subclass serves

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
        score_threshold: float | None = None,
    ) -> Predictor:
        """Load a run folder (its manifest's deployed artifact) or an .onnx/.xml/.plan/.engine/.pt file.

        ``target`` (a name of `bckd-pipeline targets`) picks the backend and device that run it, e.g.
        ``openvino-cpu`` for an .onnx. ``mean``/``std``/``classes`` only fill in what an artifact made
        outside this project lacks. ``batch``: images per infer() call (default: the model's fixed
        batch, else 1). ``input_size``: (H, W) for a model whose height and width are dynamic.
        ``score_threshold`` (detection only): keep detections scoring above it (default: the task's decoding
        threshold). An artifact of another task than this class's is refused (``bckd_pipeline.load`` takes any).
        """
        opened = open_artifact(model, target=target, mean=mean, std=std, classes=classes, threads=threads)
        return cls.build(
            opened, letterbox=letterbox, batch=batch, input_size=input_size, score_threshold=score_threshold
        )

    @classmethod
    def build(
        cls,
        opened: Opened,
        *,
        letterbox: bool = False,
        batch: int | None = None,
        input_size: tuple[int, int] | None = None,
        score_threshold: float | None = None,
    ) -> Predictor:
        """This API over an opened artifact (``open_artifact``); the options are those of :meth:`load`."""
        path = opened.artifact.path
        if opened.task != cls.task_name:
            raise ConfigError(
                f"{str(path)!r} is a {opened.task} model; {cls.__name__} runs {cls.task_name} models. Load it with "
                "bckd_pipeline.load(...), which returns the API of the model's task."
            )
        options = {} if score_threshold is None else {"score_threshold": score_threshold}
        if options and cls.task_name != "detection":
            raise ConfigError(
                f"score_threshold (--score-threshold) applies to detection models; {str(path)!r} is a "
                f"{opened.task} model. Drop it."
            )
        return cls(
            opened.runtime,
            opened.artifact,
            opened.contract,
            letterbox=letterbox,
            batch=batch,
            input_size=input_size,
            **options,
        )

    @property
    def task(self) -> Task:
        """The task this API serves (the artifact's: ``predict/artifact.py::task_of``)."""
        return get_task(self.task_name)

    # -- set-up --------------------------------------------------------------------------------
    def _configure(self, batch: int | None, input_size: tuple[int, int] | None) -> None:
        api = type(self).__name__
        spec = self.runtime.input_spec()
        if len(spec) != 1:
            raise ConfigError(
                f"{self.artifact.path.name} takes {len(spec)} inputs ({', '.join(spec)}); a {api} feeds one image "
                "input (N x 3 x H x W)."
            )
        ((self.input_name, tensor),) = spec.items()
        if len(tensor.shape) != 4 or tensor.shape[1] not in (3, None):
            raise ConfigError(
                f"Input {self.input_name!r} of {self.artifact.path.name} has shape {tensor.shape}; a {api} feeds "
                "N x 3 x H x W RGB images."
            )
        if tensor.dtype != np.float32:
            raise ConfigError(f"Input {self.input_name!r} is {tensor.dtype}; a {api} feeds float32 images.")
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
        probe = np.zeros((self.static_batch or 1, 3, *(self.input_size or (64, 64))), np.float32)
        feed = {self.input_name: probe}
        # One warm-up run also tells the outputs' layout, which the subclass checks.
        self.output_name = self._check_outputs(self.runtime.infer(feed), feed)

    def _check_outputs(self, outputs: Mapping[str, np.ndarray], feed: Mapping[str, np.ndarray]) -> str:
        """Check the warm-up run's outputs against the contract; return the name(s) of the output(s) read."""
        raise NotImplementedError

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
    def info(self) -> PredictorInfo:
        a, c = self.artifact, self.contract
        return PredictorInfo(
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
            task=self.task.name,
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

    # -- feeding --------------------------------------------------------------------------------
    def _chunks(self, rgbs: list[np.ndarray]) -> Iterator[list[np.ndarray]]:
        start = 0
        while start < len(rgbs):
            chunk = rgbs[start : start + self.batch]
            if self.input_size is None:  # each image at its own size: a batch holds one size only
                first = chunk[0].shape
                chunk = chunk[: next((i for i, im in enumerate(chunk) if im.shape != first), len(chunk))]
            yield chunk
            start += len(chunk)

    def _feed(self, images: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[Placement]]:
        """uint8 RGB images -> the model's feed (fitted, normalised unless the graph does it, padded to a static
        batch) and where each image sits in the input."""
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
        return {self.input_name: x}, placed

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        self.runtime.deactivate()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        size = "any" if self.input_size is None else f"{self.input_size[0]}x{self.input_size[1]}"
        return (
            f"{type(self).__name__}({self.artifact.path.name}: {self.artifact.backend} {self.info.precision}, "
            f"input {size}, {len(self.classes)} classes)"
        )


@dataclass(frozen=True)
class Opened:
    """An artifact located, its Runtime built (not yet active), its contract read and its task known."""

    runtime: Any
    artifact: Artifact
    contract: Contract
    task: str


def open_artifact(
    model: str | Path,
    *,
    target: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    threads: int | None = None,
) -> Opened:
    """A run folder or an artifact file -> what every API is built from (the options: :meth:`Predictor.load`'s)."""
    artifact = locate(model, target)
    runtime = make_runtime(artifact, threads=threads)  # first: a backend missing here is the first thing to say
    contract = read_contract(artifact).with_overrides(mean, std, classes)
    contract.require(artifact.path)
    return Opened(runtime, artifact, contract, task_of(artifact, contract))
