"""What the pipeline hands its stages: the configuration, the validated plan, and the deployment context.

``RunConfig`` and ``DeployConfig`` are what the command line resolved; ``Plan`` is what
``pipeline.plan()`` validated (and what ``--dry-run`` prints); ``DeployContext`` is what every stage
of stages 2-3 reads: the student loaded once, the export spec, the evaluation feeds
(``pipeline.deploy_context`` builds it). Stages import this module, never the pipeline; this module
imports no stage, only the shared pieces, the training configurations among them (``configs.py``,
docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from .data.base import Normalization
from .data.feeds import DatasetFeeds
from .configs import CheckpointMeta, DataConfig, DistillConfig, Schedule, TrainConfig
from .ledger import DEVICE_LABELS_FILE
from .model_spec import ExportSpec, ModelSource, OnnxInfo
from .targets import TargetProfile
from .targets.profiles import CalibrationSpec, LatencySpec
from .tasks import DEFAULT_TASK, Task, get_task

CHECK_IMAGES = 4  # real evaluation images each rewrite is checked on


QAT_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class SshOptions:
    identity: Path | None = None  # -i; default: ssh's own keys and agent
    known_hosts: Path | None = None  # UserKnownHostsFile; default: ~/.ssh/known_hosts
    python: str = "python3"  # the device's interpreter
    connect_timeout_s: int = 10
    transfer_timeout_s: float = 600.0
    job_timeout_s: float = 3600.0  # engine builds on a Nano take minutes
    bandwidth_kbps: int | None = None  # scp -l: leave room on a shared or slow link


@dataclass(frozen=True)
class QatConfig:
    """Teacher-guided QAT after the INT8 row (``qat/``): ``--qat auto|on|off`` and its schedule.

    ``auto`` runs it when the PTQ row's mIoU drop, judged on training images outside the calibration set,
    exceeds ``max_miou_drop`` (``--qat-max-miou-drop``, else the budgets file's ``max_miou_drop`` of the
    target); ``on`` always runs it; ``off`` (the default) never. The fine-tune's loss is cross-entropy alone
    unless ``kd`` (``--qat-kd``) names teacher terms; then ``teacher`` is the teacher checkpoint (``run``: the
    run's teacher; ``deploy``: ``--teacher``), and without one the FP32 student is its own teacher
    (self-distillation), as the report says.
    """

    mode: str = "off"
    max_miou_drop: float | None = None
    budgets: Path | None = None  # the --budgets file, read per target for max_miou_drop
    iters: int = 300
    lr: float = 1e-5
    batch_size: int = 8
    seed: int = 0
    teacher: Path | None = None
    distill: DistillConfig | None = None  # run: the run's --kd/--bckd; None: DistillConfig() (kd+bckd)
    # --qat-kd: the fine-tune's terms; "none" is cross-entropy alone (the default, docs/decisions.md)
    kd: str = "none"


@dataclass(frozen=True)
class DeployConfig:
    target: str = "onnxruntime-cpu"
    head: str | None = None  # None: the model's task's default head (Task.export_heads[0])
    dynamic: tuple[str, ...] = ()
    opset: int | None = None  # None: the target's (pipeline.deploy_plan refuses one older than the target's)
    input_hw: tuple[int, int] | None = None  # default: the checkpoint's training resize, else the eval images'
    bake_normalization: bool = True
    simplifier: str = "onnxsim"
    allow_unsimplified: bool = False
    calibration: CalibrationSpec = CalibrationSpec()
    # A user's model scored on the built-in demo scenes (another domain than its own): refused unless set,
    # and then named in the report and the ledger.
    allow_demo_data: bool = False
    parity_images: int | None = None  # None: the whole evaluation split
    latency: LatencySpec | None = None  # None: the target's
    throughput: bool = True  # also measure the deployed artifact with several requests in flight
    # TensorRT targets: where the engine is built and measured, and how.
    device: str | None = None  # ssh://user@host[:port]; None: here when TensorRT is here, else pending
    ssh: SshOptions = SshOptions()
    dla_core: int | None = None
    workspace_mib: int | None = None
    cuda_graph: bool = False
    trt_quantizer: str = "onnxruntime"
    # What the deployed artifact is, beside the target's default: fp32 | fp16 | int8 (None: the target's), and a
    # static batch. INT8 layer exclusions are in ``calibration.exclude``.
    precision: str | None = None
    batch: int = 1
    progress: bool = True  # progress bars on long stages (parity, latency, calibration)
    qat: QatConfig = QatConfig()

    def for_target(self, name: str, backends: set[str], int8_elsewhere: bool = False) -> DeployConfig:
        """This configuration for one of several targets (``backends``: those of every target of the run).

        A flag that applies to another target of the same run is not this target's: TensorRT's flags go
        to the TensorRT target, NNCF's to the OpenVINO ones, ``--calib-method`` to ONNX Runtime's. A flag
        that applies to no target of the run is still refused (pipeline.deploy_plan).
        """
        from dataclasses import replace

        from .targets import Backend, get_target

        mine = get_target(name).backend
        c = self.calibration
        if mine is not Backend.OPENVINO and Backend.OPENVINO in backends:
            c = replace(c, max_miou_drop=None, preset=CalibrationSpec().preset)
        if mine is Backend.OPENVINO and backends - {Backend.OPENVINO}:
            c = replace(c, method=CalibrationSpec().method)
        if int8_elsewhere and (self.precision or get_target(name).precision) != "int8":
            c = replace(c, exclude=())  # --int8-exclude is the INT8 targets' of the run
        new = replace(self, target=name, calibration=c)
        not_int8 = (self.precision or get_target(name).precision) != "int8"
        if not_int8 and (self.qat.mode == "auto" or int8_elsewhere):
            new = replace(new, qat=replace(self.qat, mode="off"))  # --qat is the INT8 targets' of the run
        if mine is not Backend.TENSORRT and Backend.TENSORRT in backends:
            new = replace(
                new, device=None, dla_core=None, workspace_mib=None, cuda_graph=False, trt_quantizer="onnxruntime"
            )
        return new


@dataclass(frozen=True)
class RunConfig:
    out: Path
    data: DataConfig
    train: TrainConfig
    distill: DistillConfig
    teacher_model: str
    student_model: str
    teacher_schedule: Schedule
    student_schedule: Schedule
    teacher_checkpoint: Path | None = None
    mfs_images: int = 16
    progress: bool = True
    resume: bool = False  # steps with a saved training state continue from it
    deploy: DeployConfig = DeployConfig()
    force: bool = False  # use an --out folder that holds another run's (or foreign) files


@dataclass(frozen=True)
class PlanStep:
    name: str
    what: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    target: TargetProfile
    calibration: CalibrationSpec | None
    latency: LatencySpec
    can_measure: bool
    availability_note: str
    steps: tuple[PlanStep, ...]
    deploy: DeployConfig | None = None  # this target's configuration (a run of several targets has one per target)

    def describe(self, out: Path) -> str:
        t = self.target
        lines = [
            f"target      {t.key}: {t.description}",
            f"backend     {t.backend} on {t.device}, deployed precision {t.precision}",
            f"measured    {'here' if self.can_measure else 'NOT here: ' + self.availability_note}",
        ]
        if self.calibration:
            c = self.calibration
            lines.append(
                f"calibration {c.size} images of split {c.split!r}, seed {c.seed}, method {c.method}, "
                f"nncf preset {c.preset}" + (f", max mIoU drop {c.max_miou_drop}" if c.max_miou_drop else "")
            )
        if self.deploy is not None and self.deploy.batch > 1:
            lines.append(f"shape       static batch {self.deploy.batch} (fed one image repeated; FPS counts the batch)")
        if self.calibration and self.calibration.exclude:
            lines.append(f"int8        kept in float: {', '.join(self.calibration.exclude)} (--int8-exclude)")
        lat = self.latency
        lines.append(
            f"latency     {lat.warmup_runs} warm-up runs and >= {lat.warmup_s:g} s, then {lat.runs} timed runs"
        )
        lines.append(f"out         {out}")
        lines.append("steps:")
        for i, s in enumerate(self.steps, 1):
            lines.append(f"  {i:2d}. {s.name:16s} {s.what}")
            for o in s.outputs:
                lines.append(f"      -> {out / o}")
        return "\n".join(lines)


@dataclass
class DeviceOutcome:
    """What the device stage produced: a checked result, or why it is pending."""

    result: dict | None
    folder: Path | None  # where result.json, labels.npz and the engine are
    where: str  # "here", "ssh://...", or "" when pending
    pending_reason: str | None = None

    def labels(self) -> np.ndarray:
        with np.load(self.folder / DEVICE_LABELS_FILE) as data:
            return data["labels"]


@dataclass
class DeployContext:
    deploy: DeployConfig
    data: DataConfig
    out: Path
    plan: Plan
    checkpoint: Path  # the model file deployed (a checkpoint, .pt2, TorchScript, weights, or the user's ONNX)
    model: nn.Module | None  # the student, loaded once for export and the PyTorch reference; None for --onnx
    meta: CheckpointMeta
    spec: ExportSpec  # for --onnx: the user's graph as found (its opset, head, scale and dynamic axes)
    eval_feeds: DatasetFeeds
    eval_digests: dict[str, str]
    device: DeviceOutcome | None = None  # TensorRT targets: the engine built and measured on the device
    source: ModelSource | None = None  # None: a checkpoint
    onnx: OnnxInfo | None = None  # --onnx: the user's graph's input, output, opset and metadata
    labelled: bool = True  # the evaluation images have labels; False: parity against the FP32 reference alone

    @property
    def parity_labels(self) -> str:
        """What the ledger's task metric is computed against: "ground_truth" or "reference" (label-free)."""
        return "ground_truth" if self.labelled else "reference"

    @property
    def task(self) -> Task:
        """The run's task (tasks/): what a prediction is, how it is scored and judged (the deployed model's)."""
        return get_task(getattr(self.meta, "task", None) or DEFAULT_TASK)

    @property
    def profile(self) -> TargetProfile:
        return self.plan.target

    @property
    def output_name(self) -> str:
        return self.onnx.output_name if self.onnx else self.spec.output_name

    def check_feeds(self) -> list:
        """Real evaluation images each rewrite is checked on, at the exported batch (static --batch N: repeated)."""
        return self.eval_feeds.tiled(self.spec.batch).head(CHECK_IMAGES)


def norm(meta: CheckpointMeta) -> Normalization:
    return Normalization(tuple(meta.mean), tuple(meta.std))


def feed_norm(meta: CheckpointMeta, spec: ExportSpec) -> Normalization | None:
    """Feeds carry raw 0..255 pixels when the graph normalises, normalised pixels otherwise."""
    return None if spec.bake_normalization else norm(meta)
