"""Target profiles: one frozen dataclass per deployment target, listed in a plain dict.

A profile says which backend and device run the deployed model, at which precision, how it is
calibrated, how close each stage must stay to the PyTorch student (parity: the task's criteria per
precision, tasks/segmentation.py), and how latency is measured there. ``bckd-pipeline targets`` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

from ..errors import ConfigError, unknown_name
from ..tasks.segmentation import (  # noqa: F401  (ParityCriteria and its values are imported from here too)
    FLOAT_PARITY,
    FP16_PARITY,
    INT8_PARITY,
    SEGMENTATION,
    ParityCriteria,
)


class StrEnum(str, Enum):
    """``enum.StrEnum`` of Python 3.11, spelled out: JetPack 5 ships Python 3.8 (6: 3.10), and the device
    agent imports this."""

    def __str__(self) -> str:
        return str(self.value)


class Backend(StrEnum):
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
NNCF_PRESETS = ("performance", "mixed")


@dataclass(frozen=True)
class CalibrationSpec:
    """Which training images calibrate INT8 ranges, and how.

    ``method`` applies to ONNX Runtime (MinMax / Entropy / Percentile); NNCF picks its own
    statistics per ``preset``. ``max_miou_drop`` turns on NNCF's accuracy-controlled quantization:
    layers are reverted to float until the drop on the evaluation images is within it.
    """

    size: int = 100
    seed: int = 0
    split: str = "train"
    method: str = "minmax"
    preset: str = "performance"
    max_miou_drop: float | None = None
    # --int8-exclude: node names or op types kept in float (ORT nodes_to_exclude / op_types_to_quantize, NNCF
    # IgnoredScope names / types); calibrate/exclude.py resolves each against the graph.
    exclude: tuple[str, ...] = ()
    # --calib-data KIND:PATH: the dataset the calibration images come from, its labels unread (None: --data's).
    data: str | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"Calibration size must be >= 1, got {self.size}. Use e.g. --calib-size 100.")
        if self.method not in CALIBRATION_METHODS:
            raise unknown_name("calibration method", self.method, CALIBRATION_METHODS)
        if self.preset not in NNCF_PRESETS:
            raise unknown_name("NNCF preset", self.preset, NNCF_PRESETS)
        if self.max_miou_drop is not None and self.max_miou_drop <= 0:
            raise ConfigError(f"--nncf-max-miou-drop must be > 0 mIoU points, got {self.max_miou_drop}.")


@dataclass(frozen=True)
class LatencySpec:
    """The benchmark protocol's knobs (deploy/bench.py)."""

    warmup_runs: int = 20
    warmup_s: float = 1.0
    runs: int = 200
    threads: int | None = None  # None: the runtime's default (all cores)
    streams: int = 2  # throughput mode: requests in flight

    def __post_init__(self) -> None:
        if self.runs < 1 or self.warmup_runs < 0 or self.warmup_s < 0 or self.streams < 1:
            raise ConfigError(
                f"Latency protocol needs runs >= 1, warm-up runs and seconds >= 0, streams >= 1; got runs={self.runs}, "
                f"warmup_runs={self.warmup_runs}, warmup_s={self.warmup_s}, streams={self.streams}."
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}. Leave it out for the runtime's default.")


@dataclass(frozen=True)
class TensorRTOptions:
    """How a TensorRT engine is built for the target (targets/tensorrt.py turns it into builder flags).

    ``dla_cores`` is what the module has (0: none); ``dla_core`` picks one for the build (None: GPU
    only). ``jetson`` marks targets whose engine must be built on the module itself: an engine is
    specific to the GPU and the TensorRT version that built it.
    """

    workspace_mib: int = 1024
    dla_cores: int = 0
    dla_core: int | None = None
    cuda_graph: bool = False
    jetson: bool = True

    def __post_init__(self) -> None:
        if self.workspace_mib < 1:
            raise ConfigError(f"--workspace-mib must be >= 1 MiB, got {self.workspace_mib}.")
        if self.dla_core is not None and not 0 <= self.dla_core < max(self.dla_cores, 1):
            raise ConfigError(
                f"--dla-core {self.dla_core} was given, but this target's module has {self.dla_cores} DLA core(s)"
                + (f": use 0..{self.dla_cores - 1}." if self.dla_cores else "; leave --dla-core out (GPU only).")
            )
        if self.dla_core is not None and self.dla_cores == 0:
            raise ConfigError(
                f"--dla-core {self.dla_core}: this target's module has no DLA (or is not named). Leave --dla-core out, "
                "or name a module with DLA cores: --target jetson-orin-nx or jetson-agx-orin."
            )


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    backend: Backend
    device: str  # the backend's device name: "cpu", "CPU", "GPU", "NPU", a Jetson module...
    precision: Precision
    static_shape: bool = True
    opset: int = 17
    calibration: CalibrationSpec | None = None
    fp16_stage: bool = False  # add an FP16 IR to the ledger (OpenVINO)
    latency: LatencySpec = LatencySpec()
    # the task's criteria per precision (tasks/segmentation.py: FLOAT_PARITY, FP16_PARITY, INT8_PARITY)
    parity: dict[Precision, ParityCriteria] = field(
        default_factory=lambda: {Precision(k): c for k, c in SEGMENTATION.criteria.items()}
    )
    default_budgets: dict[str, float] = field(default_factory=dict)
    tensorrt: TensorRTOptions | None = None  # TensorRT targets only
    # Set when flags change what the target deploys (--precision, --batch): the name of its folder and reports.
    label: str = ""

    @property
    def key(self) -> str:
        """What names this target's folder and reports in a run folder: ``label``, else ``name``."""
        return self.label or self.name

    def __post_init__(self) -> None:
        if (self.backend is Backend.TENSORRT) != (self.tensorrt is not None):
            raise ConfigError(f"Target {self.name!r}: TensorRTOptions go with backend tensorrt, and only with it.")
        if self.precision is Precision.INT8 and self.calibration is None:
            raise ConfigError(f"Target {self.name!r} is INT8 but has no calibration spec. Give it CalibrationSpec().")
        if self.backend is Backend.TORCH:
            raise ConfigError(f"Target {self.name!r}: torch is the reference stage, not a deployment backend.")
        if self.opset < 17:
            raise ConfigError(f"Target {self.name!r} asks for opset {self.opset}; this pipeline exports opset >= 17.")


INT8_BUDGETS = SEGMENTATION.int8_budgets

ONNXRUNTIME_CPU = TargetProfile(
    name="onnxruntime-cpu",
    description="ONNX Runtime on the host CPU, static INT8 (QDQ, u8 activations, per-channel s8 weights)",
    backend=Backend.ONNXRUNTIME,
    device="cpu",
    precision=Precision.INT8,
    calibration=CalibrationSpec(),
    default_budgets=INT8_BUDGETS,
)
ONNXRUNTIME_CPU_FP32 = replace(
    ONNXRUNTIME_CPU,
    name="onnxruntime-cpu-fp32",
    description="ONNX Runtime on the host CPU, FP32 (no quantization; the float reference deployment)",
    precision=Precision.FP32,
    calibration=None,
    default_budgets={},
)
OPENVINO_CPU = TargetProfile(
    name="openvino-cpu",
    description="OpenVINO on the host CPU, NNCF INT8 IR (model.xml/.bin)",
    backend=Backend.OPENVINO,
    device="CPU",
    precision=Precision.INT8,
    calibration=CalibrationSpec(),
    fp16_stage=True,
    default_budgets=INT8_BUDGETS,
)
OPENVINO_GPU = replace(
    OPENVINO_CPU,
    name="openvino-gpu",
    description="OpenVINO on an Intel GPU (integrated or Arc), NNCF INT8 IR for target_device GPU",
    device="GPU",
)
OPENVINO_NPU = replace(
    OPENVINO_CPU,
    name="openvino-npu",
    description="OpenVINO on an Intel NPU (Core Ultra), static shapes, NNCF INT8 IR for target_device NPU",
    device="NPU",
    latency=LatencySpec(streams=1),
)

# TensorRT: the host makes the portable part (a Q/DQ ONNX, symmetric INT8, per-channel weights);
# the engine is built and measured where it runs (locally with a GPU, or on a Jetson over SSH).
JETSON = TargetProfile(
    name="jetson",
    description="NVIDIA Jetson Orin (any module, JetPack 5.1+ or 6), TensorRT INT8 engine from an explicit Q/DQ ONNX",
    backend=Backend.TENSORRT,
    device="Jetson Orin",
    precision=Precision.INT8,
    calibration=CalibrationSpec(),
    default_budgets=INT8_BUDGETS,
    tensorrt=TensorRTOptions(),
)
JETSON_ORIN_NANO = replace(
    JETSON,
    name="jetson-orin-nano",
    description="Jetson Orin Nano (Ampere GPU, no DLA), TensorRT INT8",
    device="Jetson Orin Nano",
)
JETSON_ORIN_NX = replace(
    JETSON,
    name="jetson-orin-nx",
    description="Jetson Orin NX (Ampere GPU, 2 DLA cores on the 16 GB module, 1 on the 8 GB), TensorRT INT8",
    device="Jetson Orin NX",
    tensorrt=TensorRTOptions(dla_cores=2),
)
JETSON_AGX_ORIN = replace(
    JETSON,
    name="jetson-agx-orin",
    description="Jetson AGX Orin (Ampere GPU, 2 DLA cores), TensorRT INT8",
    device="Jetson AGX Orin",
    tensorrt=TensorRTOptions(dla_cores=2),
)
TENSORRT_GPU = replace(
    JETSON,
    name="tensorrt",
    description="TensorRT on a local NVIDIA GPU, INT8 engine from an explicit Q/DQ ONNX",
    device="GPU",
    tensorrt=TensorRTOptions(jetson=False),
)

TARGETS: dict[str, TargetProfile] = {
    t.name: t
    for t in (
        ONNXRUNTIME_CPU,
        ONNXRUNTIME_CPU_FP32,
        OPENVINO_CPU,
        OPENVINO_GPU,
        OPENVINO_NPU,
        JETSON,
        JETSON_ORIN_NANO,
        JETSON_ORIN_NX,
        JETSON_AGX_ORIN,
        TENSORRT_GPU,
    )
}


def get_target(name: str) -> TargetProfile:
    if name not in TARGETS:
        from .aliases import unknown_target

        raise unknown_target(name, TARGETS, "`bckd-pipeline targets` lists them.")
    return TARGETS[name]
