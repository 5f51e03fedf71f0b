"""``bckd-pipeline run``: the pipeline as one straight line of stages.

teacher (trained unless given) -> student alone (the baseline) -> distilled student -> export ->
simplify -> calibrate -> compile for the target -> parity ledger -> latency -> manifest and report.

Every stage is cached by content (``cache.py``): a rerun redoes only what changed, and a run
interrupted mid-stage resumes from the last finished one. ``plan()`` validates the whole run before
any work starts and is what ``--dry-run`` prints.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cache import StageCache, file_sha256, stage_key
from .report.evidence import MASK_IMAGES, PARITY_IMAGES_FILE, save_parity_images
from .calibrate.data import DatasetFeeds, check_no_overlap, digests_of, pick_indices
from .data import build_dataset
from .data.base import Normalization
from .report.evidence import display_image
from .distill.checkpoint import CheckpointMeta, load_model
from .distill.stage import STATE_FILE, DataConfig, Schedule, StepOutput, distill, train_teacher, write_json
from .distill.task import DistillConfig
from .distill.trainer import TrainConfig
from .errors import BackendMissingError, ConfigError, DataError
from .ledger import ENGINE_ROW, Built, target_artifacts
from .export.wrapper import ExportSpec, SegExportWrapper
from .targets import Backend, Precision, TargetProfile, check_availability, get_target
from .device.bundle import DeviceOutcome
from .device.remote import SshOptions
from .targets.profiles import CalibrationSpec, LatencySpec, TensorRTOptions

RUN_MARKER = "run.json"
TENSORRT_DIR = "deploy/tensorrt"
RUN_FORMAT = "bckd-pipeline/run-v1"


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
class RunResult:
    summary: dict
    report: dict
    exit_code: int


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------
def plan(cfg: RunConfig) -> Plan:
    """Resolve and validate the whole run before any work: stage 1, then the deployment stages."""
    stage1 = [
        *(
            []
            if cfg.teacher_checkpoint
            else [PlanStep("teacher", f"train {cfg.teacher_model}", ("teacher/teacher.pt",))]
        ),
        PlanStep("student", f"train {cfg.student_model} alone (the baseline)", ("student/student.pt",)),
        PlanStep("distilled", f"distill {cfg.student_model} with kd={cfg.distill.kd}", ("distilled/student.pt",)),
    ]
    return deploy_plan(cfg.deploy, cfg.data, stage1)


def deploy_plan(deploy: DeployConfig, data: DataConfig, before: list[PlanStep] = ()) -> Plan:
    """Validate target, backend, shapes and calibration; list the deployment stages after ``before``."""
    profile = _with_tensorrt_options(get_target(deploy.target), deploy)
    avail = check_availability(profile)
    if not avail.can_build:
        raise BackendMissingError(f"--target {profile.name} cannot be built on this host: {avail.reason}.")
    can_measure, note = avail.can_measure, avail.reason
    if deploy.device is not None:
        from .device.remote import SshTarget

        SshTarget.parse(deploy.device)
        can_measure, note = True, ""
    from .export.simplify import SIMPLIFIERS

    if deploy.simplifier not in SIMPLIFIERS:
        raise ConfigError(f"--simplifier {deploy.simplifier!r} is not allowed. Allowed: {', '.join(SIMPLIFIERS)}.")
    opset = max(deploy.opset, profile.opset)
    ExportSpec(input_hw=deploy.input_hw or (32, 32), opset=opset, head=deploy.head, dynamic=deploy.dynamic)
    if profile.static_shape and deploy.dynamic and profile.device == "NPU":
        raise ConfigError(
            f"--dynamic {','.join(deploy.dynamic)} was given for --target {profile.name}, whose device compiles "
            "static shapes only. Drop --dynamic."
        )
    calibration = deploy.calibration if profile.precision is Precision.INT8 else None
    if calibration is not None and calibration.split == data.eval_split:
        raise DataError(
            f"--calib-split {calibration.split!r} is the evaluation split. Calibration images must not be evaluation "
            "images; calibrate on the training split (--calib-split train)."
        )
    if calibration is not None:
        _check_calibration_flags(calibration, profile)
    latency = deploy.latency or profile.latency
    if profile.backend is Backend.TENSORRT and deploy.dynamic:
        raise ConfigError(
            f"--dynamic {','.join(deploy.dynamic)} was given for --target {profile.name}: the engine is built for the "
            "exported static shape. Drop --dynamic (export the size you deploy with --input-size H,W)."
        )
    shape = f"dynamic {','.join(deploy.dynamic)}" if deploy.dynamic else "static shape"
    steps = [
        *before,
        PlanStep(
            "export",
            f"ONNX opset {opset}, head {deploy.head}, {shape}; checker + ORT vs PyTorch",
            ("deploy/model.onnx",),
        ),
        PlanStep("simplify", f"{deploy.simplifier}; ORT before vs after", ("deploy/model.sim.onnx",)),
    ]
    if calibration is not None:
        steps.append(
            PlanStep(
                "calibration",
                f"{calibration.size} images from {calibration.split!r}, no overlap with {data.eval_split!r}",
                ("deploy/calibration.json",),
            )
        )
    steps += [PlanStep(b.name, _what(b), (str(b.path),)) for b in target_artifacts(profile)]
    if profile.backend is Backend.TENSORRT:
        where = deploy.device or ("this host" if can_measure else None)
        steps += [
            PlanStep(
                "device-bundle",
                "Q/DQ ONNX, evaluation images, job.json, agent.pyz, build_engine.sh (trtexec)",
                (f"{TENSORRT_DIR}/bundle/",),
            ),
            PlanStep(
                "engine",
                f"TensorRT engine built and measured on {where}"
                if where
                else f"PENDING (exit 3): {note}; --device ssh://user@device builds and measures it there",
                (f"{TENSORRT_DIR}/device/model.plan",) if where else (),
            ),
        ]
    steps += [
        PlanStep("parity", f"every stage on split {data.eval_split!r} vs PyTorch", ()),
        PlanStep("latency", "the latency protocol on every stage" if can_measure else "pending: device absent", ()),
        PlanStep("report", "manifest and reports", ("manifest.json", "report.json", "report.md")),
    ]
    return Plan(profile, calibration, latency, can_measure, note, tuple(steps))


def _what(b: Built) -> str:
    if b.name == "onnx-qdq":
        return "Q/DQ ONNX for TensorRT: symmetric INT8, per-channel weights; checked TensorRT-ready"
    return f"{b.backend} {b.precision}"


def _with_tensorrt_options(profile: TargetProfile, deploy: DeployConfig) -> TargetProfile:
    """The target with the user's TensorRT flags applied (and refused for targets they do not apply to)."""
    given = {
        "--device": deploy.device,
        "--dla-core": deploy.dla_core,
        "--workspace-mib": deploy.workspace_mib,
        "--cuda-graph": deploy.cuda_graph or None,
        "--trt-quantizer": None if deploy.trt_quantizer == "onnxruntime" else deploy.trt_quantizer,
    }
    if profile.backend is not Backend.TENSORRT:
        flags = [k for k, v in given.items() if v is not None]
        if flags:
            raise ConfigError(
                f"{', '.join(flags)} appl{'ies' if len(flags) == 1 else 'y'} to TensorRT targets (jetson, "
                f"jetson-orin-nano, jetson-orin-nx, jetson-agx-orin, tensorrt); --target {profile.name} uses "
                f"{profile.backend}. Drop the flag or pick a TensorRT target."
            )
        return profile
    from .calibrate.tensorrt import QUANTIZERS

    if deploy.trt_quantizer not in QUANTIZERS:
        raise ConfigError(f"--trt-quantizer {deploy.trt_quantizer!r} is not allowed. Allowed: {', '.join(QUANTIZERS)}.")
    opts: TensorRTOptions = profile.tensorrt
    opts = replace(
        opts,
        dla_core=deploy.dla_core,
        workspace_mib=opts.workspace_mib if deploy.workspace_mib is None else deploy.workspace_mib,
        cuda_graph=deploy.cuda_graph,
    )
    return replace(profile, tensorrt=opts)


def _check_calibration_flags(c: CalibrationSpec, profile: TargetProfile) -> None:
    """Options that the target's quantizer would ignore are refused, not silently dropped."""
    if profile.backend in (Backend.ONNXRUNTIME, Backend.TENSORRT) and c.max_miou_drop is not None:
        raise ConfigError(
            f"--max-miou-drop {c.max_miou_drop} applies to OpenVINO targets (NNCF accuracy control); "
            f"--target {profile.name} quantizes with ONNX Runtime. Drop the flag, or pick an openvino-* target."
        )
    if profile.backend in (Backend.ONNXRUNTIME, Backend.TENSORRT) and c.preset != "performance":
        raise ConfigError(f"--nncf-preset applies to OpenVINO targets; --target {profile.name} uses ONNX Runtime.")
    if profile.backend is Backend.OPENVINO and c.method != "minmax":
        raise ConfigError(
            f"--calib-method {c.method} applies to ONNX Runtime targets; NNCF chooses its own statistics for "
            f"--target {profile.name}. Use --nncf-preset performance|mixed instead."
        )


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
def run(cfg: RunConfig) -> RunResult:
    the_plan = plan(cfg)
    out = claim_out_dir(cfg.out, _identity(cfg), force=cfg.force)
    cache = StageCache(out)

    teacher_ckpt, teacher_metrics = teacher_stage(cfg, out, cache)
    alone = student_stage(cfg, out, cache, teacher_ckpt, replace(cfg.distill, kd="none"), "student")
    distilled = student_stage(cfg, out, cache, teacher_ckpt, cfg.distill, "distilled")
    summary = summarize(teacher_metrics, alone.metrics, distilled.metrics, teacher_ckpt, distilled.checkpoint)
    write_json(out / "metrics.json", summary)
    ctx = DeployContext.create(cfg.deploy, cfg.data, the_plan, distilled.checkpoint, out)
    return deploy_stages(ctx, cache, summary)


def deploy_checkpoint(
    checkpoint: Path, data: DataConfig, deploy_cfg: DeployConfig, out: Path, *, force: bool = False
) -> RunResult:
    """Stages 2 and 3 alone, on a student checkpoint trained elsewhere (``bckd-pipeline deploy``)."""
    the_plan = deploy_plan(deploy_cfg, data)
    # Reads the checkpoint and the evaluation images first: a bad checkpoint or dataset fails before
    # the folder is claimed.
    ctx = DeployContext.create(deploy_cfg, data, the_plan, checkpoint, out)
    claim_out_dir(out, {"data": data.spec, "checkpoint": str(Path(checkpoint).resolve())}, force=force)
    return deploy_stages(ctx, StageCache(out), None)


def deploy_stages(ctx: DeployContext, cache: StageCache, summary: dict | None) -> RunResult:
    """export -> simplify -> calibrate -> compile -> parity -> latency -> manifest and reports."""
    from .report.build import build_report, write_reports
    from .report.manifest import write_manifest

    out = ctx.out
    onnx_path, export_check = export_stage(ctx, out, cache)
    simplified, simplify_check = simplify_stage(ctx, out, cache, onnx_path)
    calibration = calibration_stage(ctx, out, cache)
    built = compile_stage(ctx, out, cache, onnx_path, simplified, calibration)
    if ctx.profile.backend is Backend.TENSORRT:
        built += device_stage(ctx, out, cache, built[-1])
    parity = parity_stage(ctx, out, cache, built)
    latency = latency_stage(ctx, out, cache, built)
    masks = qualitative_stage(ctx, out, cache, built, summary, parity)

    report = build_report(ctx, summary, built, parity, latency, export_check, simplify_check, calibration, masks)
    write_manifest(ctx, out, built, report, calibration)
    write_reports(out, report)
    return RunResult(summary, report, report["exit_code"])


def _identity(cfg: RunConfig) -> dict:
    teacher = str(cfg.teacher_checkpoint or cfg.teacher_model)
    return {"data": cfg.data.spec, "teacher": teacher, "student": cfg.student_model}


def claim_out_dir(out: Path, identity: dict, *, force: bool) -> Path:
    """Create ``--out`` or reuse it for the same run; refuse a folder of foreign files or another run's."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {str(out)!r} is a file. Pass a folder path (it is created if missing).")
    marker = out / RUN_MARKER
    if out.is_dir() and any(out.iterdir()) and not force:
        try:
            previous = json.loads(marker.read_text())
        except (OSError, ValueError):
            previous = None
        if previous is None or previous.get("format") != RUN_FORMAT:
            raise DataError(
                f"--out {str(out)!r} already holds files that bckd-pipeline run/deploy did not write. Choose an "
                "empty or new folder, or pass --force to write into it anyway."
            )
        if previous.get("identity") != identity:
            diff = ", ".join(
                f"{k}: {previous.get('identity', {}).get(k)!r} -> {v!r}"
                for k, v in identity.items()
                if previous.get("identity", {}).get(k) != v
            )
            raise DataError(
                f"--out {str(out)!r} holds another run ({diff}). Use a new --out, or pass --force to replace its "
                "stages."
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"format": RUN_FORMAT, "identity": identity})
    return out


# ---------------------------------------------------------------------------------------------
# stage 1, cached
# ---------------------------------------------------------------------------------------------
def _read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def teacher_stage(cfg: RunConfig, out: Path, cache: StageCache) -> tuple[Path, dict | None]:
    if cfg.teacher_checkpoint is not None:
        return Path(cfg.teacher_checkpoint), None
    folder = out / "teacher"
    key = stage_key(
        "teacher",
        {
            "model": cfg.teacher_model,
            "data": cfg.data,
            "schedule": cfg.teacher_schedule,
            "train": _train_options(cfg.train),
        },
    )
    if cache.lookup("teacher", key) is not None:
        return folder / "teacher.pt", _read_metrics(folder)
    step = train_teacher(
        cfg.teacher_model,
        cfg.data,
        cfg.teacher_schedule,
        cfg.train,
        folder,
        progress=cfg.progress,
        resume=cfg.resume and (folder / STATE_FILE).is_file(),
    )
    cache.store("teacher", key, [step.checkpoint, folder / "metrics.json"], {})
    return step.checkpoint, step.metrics


def student_stage(
    cfg: RunConfig, out: Path, cache: StageCache, teacher_ckpt: Path, dcfg: DistillConfig, name: str
) -> StepOutput:
    folder = out / name
    key = stage_key(
        name,
        {
            "model": cfg.student_model,
            "data": cfg.data,
            "schedule": cfg.student_schedule,
            "train": _train_options(cfg.train),
            "distill": dcfg,
            "mfs": cfg.mfs_images,
        },
        [Path(teacher_ckpt)],
    )
    if cache.lookup(name, key) is not None:
        return StepOutput(folder / "student.pt", _read_metrics(folder))
    step = distill(
        teacher_ckpt,
        cfg.student_model,
        cfg.data,
        cfg.student_schedule,
        cfg.train,
        dcfg,
        folder,
        progress=cfg.progress,
        mfs_images=cfg.mfs_images,
        resume=cfg.resume and (folder / STATE_FILE).is_file(),
    )
    cache.store(name, key, [step.checkpoint, folder / "metrics.json"], {})
    return step


def _train_options(train: TrainConfig) -> dict:
    # Where and how often state is saved does not change the trained weights.
    return {k: v for k, v in asdict(train).items() if k not in ("checkpoint_every", "num_workers")}


def summarize(teacher: dict | None, alone: dict, distilled: dict, teacher_ckpt: Path, student_ckpt: Path) -> dict:
    t = teacher["miou"] if teacher else None
    gap = (t - alone["miou"]) if t is not None else None
    closed = (distilled["miou"] - alone["miou"]) / gap * 100 if gap else None
    return {
        "miou": distilled["miou"],
        "kd": distilled["kd"],
        "teacher": {"model": distilled["teacher_model"], "miou": t, "checkpoint": str(teacher_ckpt)},
        "student": {"model": alone["model"], "miou": alone["miou"]},
        "distilled": {
            "model": distilled["model"],
            "miou": distilled["miou"],
            "checkpoint": str(student_ckpt),
            "boundary_f": distilled["boundary_f"].get("f_score"),
            "lhd": distilled["lhd"].get("mean"),
        },
        "gap_closed_percent": closed,
    }


# ---------------------------------------------------------------------------------------------
# stages 2 and 3
# ---------------------------------------------------------------------------------------------
CHECK_IMAGES = 4  # real evaluation images each rewrite is checked on


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
        feeds = DatasetFeeds.from_dataset(eval_set, range(n), spec.input_hw, normalization=_feed_norm(meta, spec))
        digests = {}
        if the_plan.calibration is not None:  # every evaluation image, for the calibration overlap check
            digests = dict(zip(feeds.digests, feeds.names, strict=True)) | digests_of(eval_set, range(n, len(eval_set)))
        return cls(deploy, d, Path(out), the_plan, Path(checkpoint), model, meta, spec, feeds, digests)

    @property
    def profile(self) -> TargetProfile:
        return self.plan.target

    def check_feeds(self) -> list:
        return self.eval_feeds.head(CHECK_IMAGES)


def _norm(meta: CheckpointMeta) -> Normalization:
    return Normalization(tuple(meta.mean), tuple(meta.std))


def _feed_norm(meta: CheckpointMeta, spec: ExportSpec) -> Normalization | None:
    """Feeds carry raw 0..255 pixels when the graph normalises, normalised pixels otherwise."""
    return None if spec.bake_normalization else _norm(meta)


def export_stage(ctx: DeployContext, out: Path, cache: StageCache):
    from .export.onnx_export import to_onnx

    path = out / "deploy/model.onnx"
    key = stage_key("export", {"spec": ctx.spec, "feeds": ctx.eval_feeds.digests[:CHECK_IMAGES]}, [ctx.checkpoint])
    hit = cache.lookup("export", key)
    if hit is not None:
        return path, hit["check"]
    # Target-independent: one exported ONNX serves every target built from this checkpoint.
    extra = {"bckd.checkpoint_sha256": file_sha256(ctx.checkpoint)}
    _, check = to_onnx(ctx.model, ctx.meta, ctx.spec, path, ctx.check_feeds(), extra_metadata=extra)
    cache.store("export", key, [path], {"check": check.as_dict()})
    return path, check.as_dict()


def simplify_stage(ctx: DeployContext, out: Path, cache: StageCache, source: Path):
    from .export.simplify import simplify

    path = out / "deploy/model.sim.onnx"
    opts = {"tool": ctx.deploy.simplifier, "allow": ctx.deploy.allow_unsimplified}
    key = stage_key("simplify", opts, [source])
    hit = cache.lookup("simplify", key)
    if hit is not None:
        return path, hit["check"]
    _, check, counts = simplify(
        source,
        path,
        ctx.check_feeds(),
        tool=ctx.deploy.simplifier,
        allow_unsimplified=ctx.deploy.allow_unsimplified,
    )
    result = {**counts, **(check.as_dict() if check else {"passed": None, "note": "simplifier failed; graph copied"})}
    cache.store("simplify", key, [path], {"check": result})
    return path, result


@dataclass(frozen=True)
class Calibration:
    feeds: DatasetFeeds
    manifest_path: Path
    sha256: str
    spec: CalibrationSpec
    # Accuracy-controlled INT8 is judged on other training images: tuning it on the evaluation
    # split would make the reported INT8 mIoU optimistic.
    validation: DatasetFeeds | None = None


def calibration_stage(ctx: DeployContext, out: Path, cache: StageCache) -> Calibration | None:
    spec = ctx.plan.calibration
    if spec is None:
        return None
    d = ctx.data
    train_set = build_dataset(d.spec, spec.split, demo_size=d.demo_size, demo_count=d.demo_count)
    indices = pick_indices(spec.size, len(train_set), spec.seed)
    feeds = DatasetFeeds.from_dataset(
        train_set, indices, ctx.spec.input_hw, normalization=_feed_norm(ctx.meta, ctx.spec)
    )
    check_no_overlap(feeds, ctx.eval_digests)
    validation = None
    if spec.max_miou_drop is not None:
        rest = sorted(set(range(len(train_set))) - set(indices))
        if not rest:
            raise DataError(
                f"--max-miou-drop needs training images besides the {len(indices)} calibration images to judge the "
                f"drop on, and split {spec.split!r} has none left. Lower --calib-size."
            )
        chosen = [rest[i] for i in pick_indices(min(spec.size, len(rest)), len(rest), spec.seed + 1)]
        validation = DatasetFeeds.from_dataset(
            train_set, chosen, ctx.spec.input_hw, normalization=_feed_norm(ctx.meta, ctx.spec)
        )
        check_no_overlap(validation, ctx.eval_digests)
    path = out / "deploy/calibration.json"
    write_json(
        path,
        {
            "format": "bckd-pipeline/calibration-v1",
            "data": d.spec,
            "split": spec.split,
            "size": len(feeds),
            "requested_size": spec.size,
            "seed": spec.seed,
            "method": spec.method,
            "input_hw": list(ctx.spec.input_hw),
            "preprocessing": "resize bilinear to input_hw; "
            + ("raw 0..255 (normalisation in the graph)" if ctx.spec.bake_normalization else "normalised"),
            "evaluation_split_checked": d.eval_split,
            "images": feeds.manifest(),
            "accuracy_control_images": None if validation is None else validation.manifest(),
        },
    )
    return Calibration(feeds, path, file_sha256(path), spec, validation)


def compile_stage(
    ctx: DeployContext, out: Path, cache: StageCache, onnx_path: Path, simplified: Path, calib: Calibration | None
) -> list[Built]:
    built = [
        Built("pytorch", Backend.TORCH, Precision.FP32, None, None),
        Built("onnx", Backend.ONNXRUNTIME, Precision.FP32, onnx_path, "pytorch"),
        Built("onnx-simplified", Backend.ONNXRUNTIME, Precision.FP32, simplified, "onnx"),
    ]
    paths = {b.name: b.path for b in built}
    for b in target_artifacts(ctx.profile):
        path, parent = out / b.path, paths[b.parent]
        settings = _build_one(ctx, cache, b, path, parent, calib)
        built.append(replace(b, path=path, settings=settings))
        paths[b.name] = path
    return built


def _build_one(ctx: DeployContext, cache: StageCache, b: Built, path: Path, parent: Path, calib) -> dict:
    options = {
        "profile": ctx.profile.name,
        "device": ctx.profile.device,
        "trt_quantizer": ctx.deploy.trt_quantizer if b.name == "onnx-qdq" else None,
        "calibration": calib.spec if calib else None,
        "calibration_sha256": calib.sha256 if calib else None,
    }
    key = stage_key(b.name, options, [parent])
    hit = cache.lookup(b.name, key)
    if hit is not None:
        return hit["settings"]
    outputs = [path]
    if b.name == "onnx-qdq":
        from .calibrate.tensorrt import quantize_for_tensorrt

        _, settings = quantize_for_tensorrt(parent, path, calib.feeds, calib.spec, quantizer=ctx.deploy.trt_quantizer)
    elif b.backend is Backend.ONNXRUNTIME:
        from .calibrate.onnxruntime import quantize_ort

        _, settings = quantize_ort(parent, path, calib.feeds, calib.spec)
    else:
        from .calibrate import openvino as ovq

        if b.precision is Precision.INT8:
            _, settings = ovq.quantize_ir(
                parent,
                path,
                calib.feeds,
                calib.spec,
                target_device=ctx.profile.device,
                validation=calib.validation,
                num_classes=ctx.meta.num_classes,
                ignore_index=ctx.meta.ignore_index,
            )
        else:
            ovq.to_ir(parent, path, fp16=b.precision is Precision.FP16)
            settings = {"tool": "openvino.convert_model", "compress_to_fp16": b.precision is Precision.FP16}
        outputs.append(path.with_suffix(".bin"))
    cache.store(b.name, key, outputs, {"settings": settings})
    return settings


def device_stage(ctx: DeployContext, out: Path, cache: StageCache, qdq: Built) -> list[Built]:
    """The portable bundle; then the engine built and measured here or on ``--device``, or pending.

    Returns the device's ledger row: ``tensorrt-int8`` when an engine was built, the agent's ONNX
    Runtime row when the device had no TensorRT (it says so), nothing when the device step is pending.
    """
    from .device.bundle import BUNDLE_FILES, DeviceOutcome, agent_digest, run_here, write_bundle

    folder = out / TENSORRT_DIR
    bundle, dest = folder / "bundle", folder / "device"
    spec = ctx.deploy.latency or ctx.profile.latency
    options = {
        "tensorrt": ctx.profile.tensorrt,
        "latency": spec,
        "feeds": ctx.eval_feeds.digests,
        "export": ctx.spec,
        "agent": agent_digest(),
    }
    key = stage_key("device-bundle", options, [qdq.path])
    hit = cache.lookup("device-bundle", key)
    if hit is None:
        folder.mkdir(parents=True, exist_ok=True)
        job = write_bundle(bundle, qdq.path, ctx.eval_feeds, ctx.profile, spec)
        cache.store("device-bundle", key, [bundle / f for f in BUNDLE_FILES], {"job": job})
    else:
        job = hit["job"]
    where = ctx.deploy.device or ("here" if ctx.plan.can_measure else None)
    if where is None:
        ctx.device = DeviceOutcome(None, None, "", ctx.plan.availability_note)
        return []
    dkey = stage_key("device", {"where": where, "bundle": key, "ssh": ctx.deploy.ssh}, [])
    hit = cache.lookup("device", dkey)
    if hit is not None:
        result = hit["result"]
    elif where == "here":
        result = run_here(bundle, dest)
    else:
        from .device.remote import RemoteDevice, SshTarget

        device = RemoteDevice(SshTarget.parse(where), ctx.deploy.ssh)
        result = device.run_bundle(bundle, dest, job, progress=lambda m: print(m, file=sys.stderr))
    if hit is None:
        cache.store("device", dkey, [dest / "result.json", *(dest / f for f in result["files"])], {"result": result})
    ctx.device = DeviceOutcome(result, dest, where)
    if result["engine"]:
        plan = dest / result["engine"]["file"]
        return [Built(ENGINE_ROW, Backend.TENSORRT, Precision.INT8, plan, qdq.name, result["engine"]["build"])]
    return [
        Built(
            result["row"], Backend(result["backend"]), Precision.INT8, None, qdq.name, {"fallback": result["fallback"]}
        )
    ]


def _is_device_row(ctx: DeployContext, b: Built) -> bool:
    return ctx.device is not None and ctx.device.result is not None and b.name == ctx.device.result["row"]


def make_runtime(ctx: DeployContext, b: Built, *, streams: int = 1):
    """The Runtime that runs artifact ``b``: on the target's device when present, else on the host CPU."""
    threads = (ctx.deploy.latency or ctx.profile.latency).threads
    if _is_device_row(ctx, b):
        from .device.bundle import ReplayRuntime

        return ReplayRuntime(ctx.device, ctx.spec.input_shape(), ctx.eval_feeds.input_name)
    if b.backend is Backend.TORCH:
        from .deploy.backends.torch import TorchRuntime

        wrapper = SegExportWrapper(
            ctx.model, normalize=_norm(ctx.meta) if ctx.spec.bake_normalization else None, head=ctx.spec.head
        )
        return TorchRuntime(
            wrapper, ctx.spec.input_shape(), output_name=ctx.spec.output_name, threads=threads, name=b.name
        )
    if b.backend is Backend.ONNXRUNTIME:
        from .deploy.backends.onnxruntime import OrtRuntime

        return OrtRuntime(b.path, threads=threads, precision=str(b.precision), name=b.name)
    from .deploy.backends.openvino import OpenVINORuntime

    dev = ctx.profile.device if ctx.plan.can_measure else "CPU"
    return OpenVINORuntime(
        b.path, device=dev, precision=str(b.precision), threads=threads, streams=streams, name=b.name
    )


def _on_target(ctx: DeployContext, b: Built) -> bool:
    """Whether the row runs where it is deployed: host stages always do; OpenVINO rows only with the device."""
    return b.backend is not Backend.OPENVINO or ctx.plan.can_measure


def parity_stage(ctx: DeployContext, out: Path, cache: StageCache, built: list[Built]) -> dict:
    from contextlib import ExitStack

    from .deploy.parity import LedgerStage, ledger

    key = stage_key(
        "parity",
        {
            "stages": [(b.name, b.parent) for b in built],
            "feeds": ctx.eval_feeds.digests,
            "parity": ctx.profile.parity,
            "device": ctx.plan.can_measure,
            "device_result": None if ctx.device is None or ctx.device.result is None else ctx.device.result["files"],
        },
        [ctx.checkpoint] + [b.path for b in built if b.path is not None],
    )
    hit = cache.lookup("parity", key)
    if hit is not None:
        return hit
    with ExitStack() as stack:
        stages = [
            LedgerStage(
                b.name,
                str(b.backend),
                str(b.precision),
                stack.enter_context(make_runtime(ctx, b)),
                b.parent,
                None if b.path is None else str(b.path),
            )
            for b in built
        ]
        report = ledger(
            stages,
            ctx.eval_feeds,
            num_classes=ctx.meta.num_classes,
            ignore_index=ctx.meta.ignore_index,
            criteria=lambda p: ctx.profile.parity[Precision(p)],
            keep_labels=MASK_IMAGES,  # report.html's masks of the distilled and deployed models
        )
    result = {
        "stages": {s.name: asdict(s) for s in report.stages},
        "culprit": None if report.culprit is None else report.culprit.name,
        "per_image": save_parity_images(out, report, ctx.eval_feeds),
    }
    cache.store("parity", key, [out / PARITY_IMAGES_FILE], result)
    return result


def latency_stage(ctx: DeployContext, out: Path, cache: StageCache, built: list[Built]) -> dict:
    from .deploy.bench import benchmark

    spec = ctx.deploy.latency or ctx.profile.latency
    feeds = ctx.eval_feeds.head(8)
    results: dict[str, dict] = {}
    for b in built:
        if not _on_target(ctx, b):
            continue  # never time a stand-in device for the target's
        if _is_device_row(ctx, b):  # timed on the device, by the same protocol
            results[b.name] = {"latency": ctx.device.result["latency"]}
            continue
        key = stage_key(
            f"latency-{b.name}",
            {
                "spec": spec,
                "throughput": ctx.deploy.throughput,
                "export": ctx.spec,
                # PyTorch and ONNX Runtime rows always run on the host, whatever the target's device.
                "device": ctx.profile.device if b.backend is Backend.OPENVINO else "host",
            },
            [ctx.checkpoint] if b.path is None else [b.path],
        )
        hit = cache.lookup(f"latency-{b.name}", key)
        if hit is not None:
            results[b.name] = hit
            continue
        with make_runtime(ctx, b) as rt:
            entry = {"latency": benchmark(rt, feeds, spec).as_dict()}
        if ctx.deploy.throughput and b is built[-1] and ctx.profile.backend is not Backend.TENSORRT:
            with make_runtime(ctx, b, streams=spec.streams) as rt:
                entry["throughput"] = benchmark(rt, feeds, spec, mode="throughput").as_dict()
        cache.store(f"latency-{b.name}", key, [], entry)
        results[b.name] = entry
    return results


def qualitative_stage(
    ctx: DeployContext, out: Path, cache: StageCache, built: list[Built], summary: dict | None, parity: dict
) -> dict:
    """Label maps of the first ``MASK_IMAGES`` evaluation images from every model this run has (report.html).

    ``run`` has the teacher, the student trained alone, the distilled student and the deployed
    artifact; ``deploy`` has only the last two, and the others are recorded as missing. The distilled
    and deployed maps are the ones the parity ledger kept; only the teacher and the student alone run here.
    """
    from .report import evidence as ev
    from .deploy.parity import labels_of

    teacher = Path(summary["teacher"]["checkpoint"]) if summary else None
    alone = out / "student/student.pt" if summary else None
    deployed = built[-1]
    record = parity["per_image"]
    n = min(ev.MASK_IMAGES, len(ctx.eval_feeds))
    key = stage_key(
        "qualitative",
        {"parity": record["sha256"], "deployed": deployed.name, "columns": ev.MASK_COLUMNS},
        [p for p in (teacher, alone) if p is not None],
    )
    hit = cache.lookup("qualitative", key)
    if hit is not None:
        return hit
    feeds = ctx.eval_feeds
    normalized = not ctx.spec.bake_normalization
    images = np.stack([display_image(x, ctx.meta.mean, ctx.meta.std, normalized) for x in feeds.images[:n]])
    truth = np.stack(feeds.labels[:n])

    def torch_predictor(model: nn.Module, meta: CheckpointMeta):
        wrapper = SegExportWrapper(model, normalize=_norm(meta), head="logits").eval()

        def predict(i: int) -> np.ndarray:
            x = torch.from_numpy(images[i].transpose(2, 0, 1)[None].astype(np.float32))
            with torch.inference_mode():
                return labels_of(wrapper(x).numpy())[0].astype(np.int16)

        return predict

    def kept(stage: str):
        maps = ev.stage_labels(out, record, stage)
        return lambda i: maps[i]

    predictors: dict = {"distilled": kept(built[0].name), "deployed": kept(deployed.name)}
    notes = {"distilled": f"PyTorch, {ctx.checkpoint.name}"}
    for column, path in (("teacher", teacher), ("student alone", alone)):
        if path is not None and path.is_file():
            predictors[column] = torch_predictor(*load_model(path))
            notes[column] = f"PyTorch, {path.name}"
        else:
            notes[column] = "not part of `bckd-pipeline deploy` (a checkpoint trained elsewhere)"
    if _is_device_row(ctx, deployed):
        where = ctx.device.where
    else:
        where = ctx.profile.device if _on_target(ctx, deployed) else "the host CPU plugin (device absent)"
    notes["deployed"] = f"{deployed.name} ({deployed.backend} {deployed.precision}) on {where}"
    result = ev.write_qualitative(out, images, truth, feeds.names[:n], predictors, notes, ctx.meta.ignore_index)
    cache.store("qualitative", key, [out / ev.QUALITATIVE_FILE], result)
    return result
