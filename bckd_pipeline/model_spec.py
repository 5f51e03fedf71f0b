"""What a deployed model is: where it came from, the graph it is exported to, a user's ONNX as read.

``ModelSource`` (and ``ModelHints``, what its flags add) is what ``deploy`` was given; ``ExportSpec`` is
everything that decides the exported graph (size, batch, opset, head, baked normalisation, dynamic axes)
and the I/O names every runtime sees; ``OnnxInfo`` is a user's ONNX as ``export/own_onnx.py`` read it.
The stages, the context they share and the command line all speak these; no torch (the heads are the task's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import ConfigError
from .tasks import get_task
from .tasks.segmentation import SEGMENTATION

Head = Literal["logits", "argmax", "raw", "nms"]
HEADS = SEGMENTATION.export_heads  # segmentation's heads; the first is the default (``ExportSpec.heads``: any task's)
INPUT_NAME = "image"
OUTPUT_NAMES = {"logits": "logits", "argmax": "labels"}
# Each head's outputs, in the graph's order (a detector's raw head: the contract of distill/detection.py).
HEAD_OUTPUTS = {"logits": ("logits",), "argmax": ("labels",), "raw": ("scores", "boxes", "centerness")}
# The network a head is exported from: the ``nms`` head is the raw network, with the decoding and NMS appended to
# the simplified graph (export/stage.py::simplify_stage, export/detection_nms.py).
NETWORK_HEAD = {"nms": "raw"}
DYNAMIC_AXES = ("batch", "height", "width")


@dataclass(frozen=True)
class ExportSpec:
    """Everything that decides the exported graph; it is also part of the export cache key."""

    input_hw: tuple[int, int]
    batch: int = 1
    opset: int = 17
    head: Head = "logits"
    bake_normalization: bool = True
    dynamic: tuple[str, ...] = ()  # any of DYNAMIC_AXES
    task: str = "segmentation"  # the model's task (tasks/): which heads it may end in

    def __post_init__(self) -> None:
        heads = self.heads
        if self.head not in heads:
            raise ConfigError(
                f"--head {self.head!r} is not allowed for a {self.task} model. Allowed: {', '.join(heads)}."
            )
        if self.head == "nms" and {"height", "width"} & set(self.dynamic):
            raise ConfigError(
                f"--head nms with --dynamic {','.join(self.dynamic)}: the NMS graph's anchor points are fixed by the "
                "input size. Drop height/width from --dynamic, or deploy --head raw (host decoding and NMS)."
            )
        bad = [a for a in self.dynamic if a not in DYNAMIC_AXES]
        if bad:
            raise ConfigError(
                f"--dynamic {','.join(bad)} is not allowed. Allowed: {', '.join(DYNAMIC_AXES)} "
                "(comma-separated); leave it out for the static shape edge targets want."
            )
        if self.opset < 13:  # per-channel Q/DQ; pipeline.deploy_plan asks the target's opset (17) of exports
            raise ConfigError(f"--opset {self.opset} is too old; use 17 or newer.")
        if self.batch < 1 or min(self.input_hw) < 1:
            raise ConfigError(f"Export shape must be positive, got batch={self.batch} input_hw={self.input_hw}.")

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads this task's graph may end in (the first is the default)."""
        return get_task(self.task).export_heads

    @property
    def network_head(self) -> str:
        """The head the network is exported with (``nms``: the raw head, NMS appended after simplification)."""
        return NETWORK_HEAD.get(self.head, self.head)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The exported network's outputs, in order (segmentation: one; a detector's raw head: scores, boxes,
        centerness; the ``nms`` head's exported network is the raw one)."""
        return HEAD_OUTPUTS[self.network_head]

    @property
    def deployed_output_names(self) -> tuple[str, ...]:
        """The deployed graph's outputs: the network's, or with ``--head nms`` those of the graph with NMS inside."""
        if self.head == "nms":
            from .tasks.detection import NMS_OUTPUT_NAMES

            return NMS_OUTPUT_NAMES
        return self.output_names

    @property
    def output_name(self) -> str:
        """The first output (segmentation's only one)."""
        return self.output_names[0]

    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, *self.input_hw)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        dims = {"batch": 0, "height": 2, "width": 3}
        inp = {dims[a]: a for a in self.dynamic}
        if not inp:
            return {}
        if self.task != "segmentation":  # the outputs' anchor axis follows H and W: only the batch is named
            return {INPUT_NAME: inp, **{n: {0: "batch"} for n in self.output_names if "batch" in self.dynamic}}
        out = {dims[a] if a == "batch" or self.head == "logits" else dims[a] - 1: a for a in self.dynamic}
        return {INPUT_NAME: inp, self.output_name: out}


KINDS = ("checkpoint", "onnx", "pt2", "torchscript", "factory")
INPUT_SCALES = ("0..255", "normalized")


@dataclass(frozen=True)
class ModelHints:
    """What a model file may not say about itself, from flags (None: not given)."""

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    input_scale: str | None = None  # "0..255": raw pixels, the graph normalises; "normalized": (x/255 - mean) / std

    def __post_init__(self) -> None:
        if self.input_scale is not None and self.input_scale not in INPUT_SCALES:
            raise ConfigError(
                f"--input-scale {self.input_scale!r} is not allowed. Allowed: 0..255 (the graph takes raw pixels and "
                "normalises itself) or normalized ((x/255 - mean) / std; for 0..1 input give --mean 0,0,0 --std 1,1,1)."
            )
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"--num-classes must be >= 1, got {self.num_classes}.")
        if self.class_names and self.num_classes and len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"--class-names names {len(self.class_names)} classes but --num-classes says {self.num_classes}. "
                "Give one name per class (or only one of the two flags)."
            )

    @property
    def classes(self) -> int | None:
        return self.num_classes or (len(self.class_names) if self.class_names else None)


@dataclass(frozen=True)
class ModelSource:
    kind: str  # one of KINDS
    path: Path  # the model file; for "factory", the state_dict
    factory: str | None = None  # "module:function" for "factory"
    hints: ModelHints = ModelHints()

    @property
    def is_onnx(self) -> bool:
        return self.kind == "onnx"

    def identity(self) -> dict:
        """What run.json records as whose the --out folder is."""
        if self.kind == "checkpoint":
            return {"checkpoint": str(Path(self.path).resolve())}
        factory = {"factory": self.factory} if self.factory else {}
        return {"model": f"{self.kind}:{Path(self.path).resolve()}", **factory}

    def describe(self) -> str:
        if self.kind == "factory":
            return f"{self.factory}() with the weights of {self.path}"
        return f"{self.kind} {self.path}"


@dataclass(frozen=True)
class OnnxInfo:
    """A user's ONNX as read: its one input and first output (a detector's: ``scores``), opset, metadata, task."""

    path: Path
    input_name: str
    input_shape: tuple[int | None, ...]
    output_name: str
    output_rank: int | None
    opset: int
    metadata: dict[str, str] = field(default_factory=dict)
    output_names: tuple[str, ...] = ()  # every output, in the graph's order
    task: str = "segmentation"  # "detection": the raw head of a detector (outputs scores, boxes, centerness)

    @property
    def dynamic(self) -> tuple[str, ...]:
        names = {0: "batch", 2: "height", 3: "width"}
        return tuple(names[i] for i in (0, 2, 3) if self.input_shape[i] is None)


def default_class_names(classes: int) -> tuple[str, ...]:
    """``class_0..N-1``, and a warning that names how to give the real names."""
    import sys

    print(
        f"warning: the model's {classes} classes have no names (no --classes, --classes-file, metadata or labelled "
        f"--data): they are called class_0..class_{classes - 1}.",
        file=sys.stderr,
    )
    return tuple(f"class_{i}" for i in range(classes))


def read_classes_file(path) -> tuple[str, ...] | None:
    """``--classes-file``: one class name per line, or a JSON list of names (or an object with a "classes" list)."""
    if path is None:
        return None
    import json

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--classes-file {str(path)!r} cannot be read ({exc}). Pass a text or JSON file.") from None
    names = None
    if text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--classes-file {str(path)!r} is not valid JSON ({exc}).") from None
        names = data.get("classes") if isinstance(data, dict) else data
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(
                f"--classes-file {str(path)!r}: expected a JSON list of names or {{\"classes\": [names]}}."
            )
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"--classes-file {str(path)!r} names no class. Write one name per line.")
    return tuple(names)
