"""What the pipeline hands its stages: the configuration, the validated plan, and the deployment context.

``RunConfig`` and ``DeployConfig`` are what the command line resolved; ``Plan`` is what
``pipeline.plan()`` validated (and what ``--dry-run`` prints); ``DeployContext`` is what every stage
of stages 2-3 reads: the student loaded once, the export spec, the evaluation feeds. Stages import
this module, never the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .calibrate.data import DatasetFeeds, digests_of
from .data import build_dataset
from .data.base import Normalization
from .device.bundle import DeviceOutcome
from .device.remote import SshOptions
from .distill.checkpoint import CheckpointMeta, load_model
from .distill.stage import DataConfig, Schedule
from .distill.task import DistillConfig
from .distill.trainer import TrainConfig
from .errors import DataError
from .export.wrapper import ExportSpec
from .targets import TargetProfile
from .targets.profiles import CalibrationSpec, LatencySpec

CHECK_IMAGES = 4  # real evaluation images each rewrite is checked on


@dataclass(frozen=True)
class DeployConfig:
    target: str = "onnxruntime-cpu"
    head: str = "logits"
    dynamic: tuple[str, ...] = ()
    opset: int = 17
    input_hw: tuple[int, int] | None = None  # default: the checkpoint's training resize, else the eval images'
    bake_normalization: bool = True
    simplifier: str = "onnxsim"
    allow_unsimplified: bool = False
    calibration: CalibrationSpec = CalibrationSpec()
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

    def describe(self, out: Path) -> str:
        t = self.target
        lines = [
            f"target      {t.name}: {t.description}",
            f"backend     {t.backend} on {t.device}, deployed precision {t.precision}",
            f"measured    {'here' if self.can_measure else 'NOT here: ' + self.availability_note}",
        ]
        if self.calibration:
            c = self.calibration
            lines.append(
                f"calibration {c.size} images of split {c.split!r}, seed {c.seed}, method {c.method}, "
                f"nncf preset {c.preset}" + (f", max mIoU drop {c.max_miou_drop}" if c.max_miou_drop else "")
            )
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
class DeployContext:
    deploy: DeployConfig
    data: DataConfig
    out: Path
    plan: Plan
    checkpoint: Path
    model: nn.Module  # the student, loaded once for export and the PyTorch reference runtime
    meta: CheckpointMeta
    spec: ExportSpec
    eval_feeds: DatasetFeeds
    eval_digests: dict[str, str]
    device: DeviceOutcome | None = None  # TensorRT targets: the engine built and measured on the device

    @classmethod
    def create(cls, deploy: DeployConfig, d: DataConfig, the_plan: Plan, checkpoint: Path, out: Path) -> DeployContext:
        model, meta = load_model(checkpoint)
        eval_set = build_dataset(d.spec, d.eval_split, demo_size=d.demo_size, demo_count=d.demo_count)
        if len(eval_set) == 0:
            raise DataError(f"The evaluation split {d.eval_split!r} of {d.spec!r} is empty; parity needs images.")
        input_hw = deploy.input_hw or meta.input_hw or tuple(eval_set.load(0)[0].shape[:2])
        spec = ExportSpec(
            input_hw=tuple(input_hw),
            opset=max(deploy.opset, the_plan.target.opset),
            head=deploy.head,
            bake_normalization=deploy.bake_normalization,
            dynamic=deploy.dynamic,
        )
        n = len(eval_set) if deploy.parity_images is None else min(deploy.parity_images, len(eval_set))
        feeds = DatasetFeeds.from_dataset(eval_set, range(n), spec.input_hw, normalization=feed_norm(meta, spec))
        digests = {}
        if the_plan.calibration is not None:  # every evaluation image, for the calibration overlap check
            digests = dict(zip(feeds.digests, feeds.names, strict=True)) | digests_of(eval_set, range(n, len(eval_set)))
        return cls(deploy, d, Path(out), the_plan, Path(checkpoint), model, meta, spec, feeds, digests)

    @property
    def profile(self) -> TargetProfile:
        return self.plan.target

    def check_feeds(self) -> list:
        return self.eval_feeds.head(CHECK_IMAGES)


def norm(meta: CheckpointMeta) -> Normalization:
    return Normalization(tuple(meta.mean), tuple(meta.std))


def feed_norm(meta: CheckpointMeta, spec: ExportSpec) -> Normalization | None:
    """Feeds carry raw 0..255 pixels when the graph normalises, normalised pixels otherwise."""
    return None if spec.bake_normalization else norm(meta)
