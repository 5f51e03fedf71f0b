"""``bckd-pipeline run``: the pipeline as one straight line of stages.

teacher (trained unless given) -> student alone (the baseline) -> distilled student -> export ->
simplify -> calibrate -> compile for the target -> parity ledger -> latency -> manifest and report.

Every stage is cached by content (``cache.py``): a rerun redoes only what changed, and a run
interrupted mid-stage resumes from the last finished one. ``plan()`` validates the whole run before
any work starts and is what ``--dry-run`` prints.

Each stage lives in the package of its concern (``distill/cached.py``, ``export/stage.py``,
``calibrate/stage.py``, ``device/stage.py``, ``deploy/stage.py``, ``report/stage.py``) and reads what
it needs from ``context.py``; this module holds only the plan and the straight line that calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .cache import StageCache, check_out_dir, claim_out_dir
from .calibrate.stage import calibration_stage, compile_stage
from .context import DeployConfig, DeployContext, Plan, PlanStep, QatConfig, RunConfig, feed_norm
from .deploy.stage import latency_stage, parity_stage
from .device.bundle import TENSORRT_DIR
from .device.stage import device_stage
from .distill.cached import student_stage, summarize, teacher_stage
from .configs import DataConfig
from .errors import ConfigError, DataError
from .export.stage import export_stage, simplify_stage, take_onnx_stage
from .fileio import write_json
from .plan_checks import (
    check_buildable,
    check_calibration,
    check_export_shape,
    check_onnx_source,
    check_opset,
    check_simplifier,
    check_tensorrt_shape,
    export_head,
    with_deploy_options,
    with_tensorrt_options,
)
from .progress import Stages
from .ledger import Built, qat_artifact, report_file, shared_dir, target_artifacts
from .model_spec import ExportSpec, ModelSource
from .qat.stage import check_qat, check_qat_task, qat_stage
from .report import headlines
from .report.build import build_report, write_reports
from .report.manifest import write_manifest
from .report.stage import qualitative_stage
from .targets import Backend, CalibrationSpec, Precision, TargetProfile, expand_targets, get_target


@dataclass
class RunResult:
    summary: dict
    report: dict  # the target's report; with several targets, the run folder's combined report (report/combined.py)
    exit_code: int
    targets: tuple[str, ...] = ()
    combined: dict | None = None  # the run folder's report.json after this run (one target: its report)


def plan(cfg: RunConfig) -> list[Plan]:
    """Resolve and validate the whole run before any work: stage 1, then the deployment stages of each target."""
    check_stage1(cfg)
    stage1 = [
        *(
            []
            if cfg.teacher_checkpoint
            else [PlanStep("teacher", f"train {cfg.teacher_model}", ("teacher/teacher.pt",))]
        ),
        PlanStep("student", f"train {cfg.student_model} alone (the baseline)", ("student/student.pt",)),
        PlanStep("distilled", f"distill {cfg.student_model} with kd={cfg.distill.kd}", ("distilled/student.pt",)),
    ]
    q = cfg.deploy.qat  # QAT's teacher in `run`: the run's (given, or trained into teacher/teacher.pt)
    teacher = q.teacher or cfg.teacher_checkpoint or Path(cfg.out) / "teacher/teacher.pt"
    deploy = replace(cfg.deploy, qat=replace(q, teacher=teacher, distill=q.distill or cfg.distill))
    the_plans = deploy_plans(deploy, cfg.data, stage1)
    check_without_labels(cfg.data, deploy)
    check_out_dir(cfg.out, _identity(cfg), force=cfg.force)  # what run() claims first: a dry run checks it too
    return the_plans


def check_stage1(cfg: RunConfig) -> None:
    """What stage 1 can tell before any work: the presets belong to the run's task, and a detection run's --kd is
    one of that task's methods."""
    from .distill.task_models import check_kd, check_preset

    if cfg.teacher_checkpoint is None:
        check_preset(cfg.teacher_model, cfg.data.task, "--teacher-arch")
    check_preset(cfg.student_model, cfg.data.task, "--student-arch")
    check_kd(cfg.distill.kd, cfg.data.task)


def deploy_plans(
    deploy: DeployConfig, data: DataConfig, before: list[PlanStep] = (), source: ModelSource | None = None
) -> list[Plan]:
    """``--target a,b,c`` (or ``all-local``): one validated plan per target, each with its own configuration.
    Stage 1, the export and the simplified ONNX are shared: the first plan lists them, the others reuse them."""
    names = expand_targets(deploy.target)
    backends = {get_target(n).backend for n in names}
    int8 = [n for n in names if (deploy.precision or get_target(n).precision) == Precision.INT8]
    trt = [n for n in names if get_target(n).backend is Backend.TENSORRT]
    if len(trt) > 1:
        raise ConfigError(
            f"--target names {len(trt)} TensorRT targets ({', '.join(trt)}); a run folder holds one TensorRT "
            "device bundle (deploy/tensorrt). Deploy each into its own --out."
        )
    if len(names) == 1:
        return [deploy_plan(replace(deploy, target=names[0]), data, before, source)]
    plans = [
        deploy_plan(deploy.for_target(n, backends, bool(int8)), data, before if i == 0 else [], source)
        for i, n in enumerate(names)
    ]
    keys = [p.target.key for p in plans]
    if len(set(keys)) < len(keys):
        raise ConfigError(
            f"--target {deploy.target}: two targets deploy the same thing ({', '.join(keys)}). Name each once."
        )
    return plans


def deploy_plan(
    deploy: DeployConfig, data: DataConfig, before: list[PlanStep] = (), source: ModelSource | None = None
) -> Plan:
    """Validate target, backend, shapes and calibration; list the deployment stages after ``before``.

    ``source``: what `deploy` was given (None: the student of `run`, or a checkpoint). A user's ONNX
    (``deploy --onnx``) is read here, so that a flag it needs and lacks fails a dry run too.
    """
    profile = with_deploy_options(with_tensorrt_options(get_target(deploy.target), deploy), deploy)
    can_measure, note = check_buildable(profile, deploy.device)
    check_simplifier(deploy.simplifier)
    onnx = check_onnx_source(source, deploy, profile) if source is not None and source.is_onnx else None
    opset = onnx.opset if onnx else check_opset(deploy.opset, profile)
    task = onnx.task if onnx else _plan_task(source, data)
    head = check_export_shape(deploy, profile, opset, task)
    calibration = check_calibration(deploy, profile, data.eval_split)
    latency = deploy.latency or profile.latency
    check_tensorrt_shape(deploy, profile)
    check_qat(
        deploy.qat,
        profile,
        onnx_source=onnx is not None,
        dynamic=deploy.dynamic,
        exclude=deploy.calibration.exclude,
        task=task or data.task,
    )

    steps = [*before, _model_step(deploy, source, onnx, opset, head), _simplify_step(deploy)]
    if calibration is not None:
        steps.append(_calibration_step(calibration, data))
    steps += [PlanStep(b.name, _what(b), (str(b.path),)) for b in target_artifacts(profile)]
    qat = qat_artifact(profile) if deploy.qat.mode != "off" else None
    if qat is not None:
        steps.append(_qat_step(deploy.qat, profile, qat))
    if profile.backend is Backend.TENSORRT:
        steps += _tensorrt_steps(deploy.device, can_measure, note)
    steps += _measure_and_report_steps(profile, data, can_measure, against_onnx=onnx is not None)
    return Plan(profile, calibration, latency, can_measure, note, tuple(steps), deploy)


def _plan_task(source: ModelSource | None, data: DataConfig) -> str | None:
    """The task of the model to deploy, as far as the plan can tell: `run`'s is --task; a checkpoint's is read from
    its metadata (None: not readable here, and loading it says why); other files are the data's task."""
    if source is None:
        return data.task
    if source.kind == "checkpoint":
        from .distill.checkpoint import checkpoint_task

        return checkpoint_task(source.path)
    return _source_task(source, data)


def _model_step(deploy: DeployConfig, source: ModelSource | None, onnx, opset: int, head: str) -> PlanStep:
    """The first deployment step: the user's ONNX taken as it is, or the model exported."""
    if onnx is not None:
        return PlanStep(
            "take-onnx",
            f"{source.path} as it is (opset {opset}, input {onnx.input_name!r} "
            f"{'x'.join('?' if d is None else str(d) for d in onnx.input_shape)}, output {onnx.output_name!r}), "
            "bckd.* metadata added; checker + ORT vs your file",
            ("deploy/model.onnx",),
        )
    what = "" if source is None or source.kind == "checkpoint" else f"{source.describe()}: "
    shape = f"dynamic {','.join(deploy.dynamic)}" if deploy.dynamic else "static shape"
    return PlanStep(
        "export",
        f"{what}ONNX opset {opset}, head {head}, {shape}; checker + ORT vs PyTorch",
        (str(shared_dir(deploy.batch) / "model.onnx"),),
    )


def _simplify_step(deploy: DeployConfig) -> PlanStep:
    nms = "; then the decoding and NonMaxSuppression appended (--head nms)" if deploy.head == "nms" else ""
    return PlanStep(
        "simplify",
        f"{deploy.simplifier}; ORT before vs after{nms}",
        (str(shared_dir(deploy.batch) / "model.sim.onnx"),),
    )


def _calibration_step(calibration: CalibrationSpec, data: DataConfig) -> PlanStep:
    where = f" of {calibration.data} (images only)" if calibration.data else ""
    return PlanStep(
        "calibration",
        f"{calibration.size} images from {calibration.split!r}{where}, no overlap with {data.eval_split!r}",
        ("deploy/calibration.json",),
    )


def _qat_step(q: QatConfig, profile: TargetProfile, qat: Built) -> PlanStep:
    when = "always" if q.mode == "on" else "when the INT8 row misses max_miou_drop on training images"
    teacher = f"teacher {q.teacher}" if q.teacher else "the FP32 student as its own teacher"
    return PlanStep(
        "qat",
        f"--qat {q.mode} ({when}): NNCF fake-quant as {profile.backend} quantizes, {q.iters} iterations "
        f"lr {q.lr:g} against {teacher}; row {qat.name}",
        (str(qat.path),),
    )


def _tensorrt_steps(device: str | None, can_measure: bool, note: str) -> list[PlanStep]:
    """The device bundle, and the engine built on --device, on this host, or pending."""
    where = device or ("this host" if can_measure else None)
    return [
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


def _measure_and_report_steps(
    profile: TargetProfile, data: DataConfig, can_measure: bool, *, against_onnx: bool
) -> list[PlanStep]:
    from .data import is_unlabelled

    reference = "your FP32 ONNX" if against_onnx else "PyTorch"
    free = ", label-free: scored against its own predictions (no labels)" if is_unlabelled(data.spec) else ""
    return [
        PlanStep("parity", f"every stage on split {data.eval_split!r} vs {reference}{free}", ()),
        PlanStep("latency", "the latency protocol on every stage" if can_measure else "pending: device absent", ()),
        PlanStep(
            "report",
            "this target's manifest and reports, then the run folder's combined report.json/.md/.html, manifest.json",
            (report_file(profile.key, "manifest"), report_file(profile.key, "json"), report_file(profile.key, "md")),
        ),
    ]


def _what(b: Built) -> str:
    if b.name == "onnx-qdq":
        return "Q/DQ ONNX for TensorRT: symmetric INT8, per-channel weights; checked TensorRT-ready"
    return f"{b.backend} {b.precision}"


def run(cfg: RunConfig) -> RunResult:
    the_plans = plan(cfg)
    out = claim_out_dir(cfg.out, _identity(cfg), force=cfg.force)
    cache = StageCache(out)

    teacher_ckpt, teacher_metrics = teacher_stage(cfg, out, cache)
    alone = student_stage(cfg, out, cache, teacher_ckpt, replace(cfg.distill, kd="none"), "student")
    distilled = student_stage(cfg, out, cache, teacher_ckpt, cfg.distill, "distilled")
    summary = summarize(
        teacher_metrics, alone.metrics, distilled.metrics, teacher_ckpt, distilled.checkpoint, task=cfg.data.task
    )
    write_json(out / "metrics.json", summary)

    def context(p: Plan) -> DeployContext:
        # QAT's teacher is the run's teacher, and its losses the run's --kd/--bckd, unless given otherwise.
        qat = replace(p.deploy.qat, teacher=teacher_ckpt)  # the teacher stage's checkpoint (given or trained)
        return deploy_context(replace(p.deploy, qat=qat), cfg.data, p, distilled.checkpoint, out)

    return _each_target(the_plans, context, cache, summary)


def _each_target(the_plans: list[Plan], context, cache: StageCache, summary: dict | None) -> RunResult:
    """The deployment stages for each target in turn, into the same run folder (each into its own files)."""
    results = [deploy_stages(context(p), cache, summary) for p in the_plans]
    if len(results) == 1:
        return results[0]
    codes = [r.exit_code for r in results]
    code = 1 if 1 in codes else 3 if 3 in codes else 0
    last = results[-1].combined
    return RunResult(summary, last, code, tuple(p.target.key for p in the_plans), last)


def model_plan(
    source: ModelSource, data: DataConfig, deploy_cfg: DeployConfig, out: Path, *, force: bool
) -> list[Plan]:
    """What `deploy --dry-run` checks, and `deploy` before its first stage: the plan of each target, the model
    file's kind and flags, the --out folder, and the model against the data (``resolve_model``: the input size
    it takes, its classes), as `deploy` resolves it."""
    the_plans = deploy_plans(deploy_cfg, data, source=source)
    check_data_domain(source, data, deploy_cfg)
    check_without_labels(data, deploy_cfg)
    check_out_dir(out, _deploy_identity(source, data), force=force)
    if source.kind != "checkpoint":
        eval_set = _eval_set(data, _source_task(source, data))
        resolve_model(source, the_plans[0].deploy, tuple(eval_set.load(0)[0].shape[:2]), _classes_of(eval_set))
    return the_plans


def _classes_of(dataset) -> tuple[str, ...] | None:
    """The dataset's class names, which the model's must match; None for images without labels (the model's own)."""
    from .data.unlabelled import is_labelled

    return tuple(dataset.info.class_names) if is_labelled(dataset) else None


def check_data_domain(source: ModelSource, data: DataConfig, deploy: DeployConfig) -> None:
    """A model trained elsewhere is not scored, nor calibrated, on the built-in demo scenes (synthetic streets:
    another domain than the model's) unless ``--allow-demo-data`` says so; a checkpoint of this pipeline was
    trained on whatever --data it was given, demo included."""
    from .data import is_demo

    if source.kind == "checkpoint" or deploy.allow_demo_data:
        return
    flags = {"--data": data.spec, "--calib-data": deploy.calibration.data}
    demo = [f"{flag} {spec}" for flag, spec in flags.items() if is_demo(spec)]
    if demo:
        raise DataError(
            f"{source.describe()} is your model, and {' and '.join(demo)} is the built-in demo data (synthetic "
            "street scenes, no --data given means the same): figures on it say nothing about your model. Point "
            "--data at your labelled images (--data folder:PATH), or give plain images with --calib-data "
            "images:FOLDER (calibration, and parity against your FP32 model on held-out images), or pass "
            "--allow-demo-data to proceed anyway (the report and ledger then say DEMO DATA)."
        )


def check_without_labels(data: DataConfig, deploy: DeployConfig) -> None:
    """What needs labels is refused on plain images: NNCF's accuracy control measures mIoU on the calibration
    data's labels, QAT trains on --data's."""
    from .data import is_unlabelled

    calib = deploy.calibration.data or data.spec
    flag = "--calib-data" if deploy.calibration.data else "--data"
    if deploy.calibration.max_miou_drop is not None and is_unlabelled(calib):
        raise ConfigError(
            f"--nncf-max-miou-drop measures mIoU on labelled training images, and {flag} {calib} has no labels. "
            "Drop --nncf-max-miou-drop, or calibrate on labelled data (--calib-data folder:PATH with masks)."
        )
    if deploy.qat.mode != "off" and is_unlabelled(data.spec):
        raise ConfigError(
            f"--qat {deploy.qat.mode} fine-tunes on labelled training images, and --data {data.spec} has no labels. "
            "Drop --qat, or give labelled data (--data folder:PATH with masks)."
        )


def deploy_model(
    source: ModelSource | Path, data: DataConfig, deploy_cfg: DeployConfig, out: Path, *, force: bool = False
) -> RunResult:
    """Stages 2 and 3 alone, on a model trained elsewhere (``bckd-pipeline deploy``): a checkpoint of this
    pipeline, a .pt2 program, a TorchScript file, a factory with its weights, or the user's ONNX."""
    if not isinstance(source, ModelSource):
        source = ModelSource("checkpoint", Path(source))
    the_plans = deploy_plans(deploy_cfg, data, source=source)
    check_data_domain(source, data, deploy_cfg)
    check_without_labels(data, deploy_cfg)
    check_out_dir(out, _deploy_identity(source, data), force=force)
    # Resolves the model against the evaluation images (model_plan's checks) before the folder is claimed.
    first = deploy_context(the_plans[0].deploy, data, the_plans[0], source, out)
    claim_out_dir(out, _deploy_identity(source, data), force=force)

    def context(p: Plan) -> DeployContext:
        return first if p is the_plans[0] else deploy_context(p.deploy, data, p, source, out)

    return _each_target(the_plans, context, StageCache(out), None)


def _deploy_identity(source: ModelSource, data: DataConfig) -> dict:
    return {"data": data.spec, **source.identity()}


def deploy_stages(ctx: DeployContext, cache: StageCache, summary: dict | None) -> RunResult:
    """export (or take the user's ONNX) -> simplify -> calibrate -> compile -> QAT (with --qat) -> parity ->
    latency -> reports."""
    out = ctx.out
    steps = Stages(cache, bars=ctx.deploy.progress, target=ctx.profile.key)  # a line as each stage starts and ends
    with steps.stage("take-onnx" if ctx.onnx is not None else "export", shared=True) as step:
        if ctx.onnx is not None:
            onnx_path, export_check = take_onnx_stage(ctx, out, cache)
        else:
            onnx_path, export_check = export_stage(ctx, out, cache)
        step.headline = headlines.check(export_check)
    with steps.stage("simplify", shared=True) as step:
        simplified, simplify_check = simplify_stage(ctx, out, cache, onnx_path)
        step.headline = headlines.simplify(simplify_check)
    with steps.stage("calibration") as step:
        calibration = calibration_stage(ctx, out, cache)
        step.headline = headlines.calibration(calibration)
    with steps.stage("compile") as step:
        built = compile_stage(ctx, out, cache, onnx_path, simplified, calibration, steps.bar)
        step.headline = headlines.compiled(built, out)
    qat = None
    if ctx.deploy.qat.mode != "off":
        with steps.stage("qat") as step:
            rows, qat = qat_stage(ctx, out, cache, built, calibration, steps.bar)
            built += rows
            step.headline = headlines.qat(qat)
    if ctx.profile.backend is Backend.TENSORRT:
        with steps.stage("device") as step:
            built += device_stage(ctx, out, cache, built[-1])
            step.headline = headlines.device(ctx)
    with steps.stage("parity") as step:
        parity = parity_stage(ctx, out, cache, built, steps.bar)
        step.headline = headlines.parity(parity, built[-1].name, ctx.task)
    with steps.stage("latency") as step:
        latency = latency_stage(ctx, out, cache, built, steps.bar)
        step.headline = headlines.latency(latency, built[-1].name)
    with steps.stage("report") as step:
        masks = qualitative_stage(ctx, out, cache, built, summary, parity)
        report = build_report(
            ctx,
            summary=summary,
            built=built,
            parity=parity,
            latency=latency,
            export_check=export_check,
            simplify_check=simplify_check,
            calibration=calibration,
            masks=masks,
            qat=qat,
        )
        write_manifest(ctx, out, built, report, calibration)
        combined = write_reports(out, report, ctx.profile.key)  # the target's reports, then the folder's view
        step.headline = f"{report['status']}, {report_file(ctx.profile.key, 'html')}"
    return RunResult(summary, report, report["exit_code"], (ctx.profile.key,), combined)


def _identity(cfg: RunConfig) -> dict:
    teacher = str(cfg.teacher_checkpoint or cfg.teacher_model)
    return {"data": cfg.data.spec, "teacher": teacher, "student": cfg.student_model}


def _source_task(source: ModelSource, d: DataConfig) -> str:
    """The task of a model that is not a checkpoint: a user's ONNX says it (a detector's raw head outputs), other
    files are the data's task."""
    if source.is_onnx:
        from .export.own_onnx import inspect_onnx

        return inspect_onnx(source.path).task
    return d.task


def _eval_set(d: DataConfig, task: str = "segmentation"):
    """The evaluation split: label maps for segmentation, boxes for detection (a folder of plain images either way)."""
    from .data import build_task_dataset

    eval_set = build_task_dataset(
        d.spec,
        d.eval_split,
        task,
        skip_bad_annotations=d.skip_bad_annotations,
        demo_size=d.demo_size,
        demo_count=d.demo_count,
    )
    if len(eval_set) == 0:
        raise DataError(f"The evaluation split {d.eval_split!r} of {d.spec!r} is empty; parity needs images.")
    return eval_set


@dataclass(frozen=True)
class ResolvedModel:
    """The model deploy was given, loaded and checked against the data (None: the ONNX is not loaded as a module)."""

    model: object | None
    meta: object  # configs.CheckpointMeta
    input_hw: tuple[int, int]
    info: object | None = None  # model_spec.OnnxInfo of a user's ONNX
    head: str | None = None  # a user's ONNX's output: logits or argmax


def resolve_model(
    source: ModelSource, deploy: DeployConfig, first_hw: tuple[int, int], dataset_classes
) -> ResolvedModel:
    """Load the model and settle its input size and classes against the data; a model that does not take the
    size deploy feeds, or predicts other classes than the data's, is refused here (a dry run too).
    ``dataset_classes`` None: images without labels; the class count is the model's."""
    from .distill.checkpoint import load_model
    from .export import own_onnx
    from .export import source as own

    dataset_classes = None if dataset_classes is None else tuple(dataset_classes)
    if source.kind == "checkpoint":
        model, meta = load_model(source.path)
        return ResolvedModel(model, meta, tuple(deploy.input_hw or meta.input_hw or first_hw))
    if source.is_onnx:
        info = own_onnx.inspect_onnx(source.path)
        contract = own_onnx.resolve_onnx(info, source.hints, deploy.input_hw)
        probe = own_onnx.probe_onnx(info, contract.input_hw)
        meta, head = own_onnx.onnx_meta(source, info, contract, probe, dataset_classes)
        return ResolvedModel(None, meta, tuple(contract.input_hw), info, head)
    model = own.load_torch_module(source)
    input_hw = tuple(deploy.input_hw or first_hw)
    given = deploy.input_hw is not None
    meta = own.torch_meta(source, model, input_hw, dataset_classes, batch=deploy.batch, given_hw=given)
    return ResolvedModel(model, meta, input_hw)


def deploy_context(
    deploy: DeployConfig, d: DataConfig, the_plan: Plan, source: ModelSource | Path, out: Path
) -> DeployContext:
    """Load the model once and the evaluation images: the model's checks fail before any stage runs."""
    from .data.feeds import DatasetFeeds, digests_of
    from .model_spec import INPUT_NAME

    if not isinstance(source, ModelSource):
        source = ModelSource("checkpoint", Path(source))
    if source.kind == "checkpoint":  # the checkpoint says its task, and so which labels the evaluation reads
        from .distill.checkpoint import load_model

        model, meta = load_model(source.path)
        eval_set = _eval_set(d, meta.task)
        input_hw = tuple(deploy.input_hw or meta.input_hw or eval_set.load(0)[0].shape[:2])
        resolved = ResolvedModel(model, meta, input_hw)
    else:
        eval_set = _eval_set(d, _source_task(source, d))
        first_hw = tuple(eval_set.load(0)[0].shape[:2])
        resolved = resolve_model(source, deploy, first_hw, _classes_of(eval_set))
    model, meta, input_hw, info = resolved.model, resolved.meta, resolved.input_hw, resolved.info
    task = getattr(meta, "task", "segmentation")
    check_qat_task(deploy.qat.mode, task)  # a checkpoint's own task, which the plan may not have known
    if info is not None:  # the user's graph as it is: nothing of it is chosen here
        spec = ExportSpec(
            input_hw=tuple(input_hw),
            opset=info.opset,
            head=resolved.head,
            bake_normalization=meta.extra["input_scale"] == "0..255",
            dynamic=info.dynamic,
            task=info.task,
        )
    else:
        spec = ExportSpec(
            input_hw=tuple(input_hw),
            batch=deploy.batch,
            opset=deploy.opset or the_plan.target.opset,
            head=export_head(deploy.head, task),
            bake_normalization=deploy.bake_normalization,
            dynamic=deploy.dynamic,
            task=task,
        )
    n = len(eval_set) if deploy.parity_images is None else min(deploy.parity_images, len(eval_set))
    feeds = DatasetFeeds.from_dataset(
        eval_set,
        range(n),
        spec.input_hw,
        normalization=feed_norm(meta, spec),
        input_name=info.input_name if info else INPUT_NAME,
        boxes=task == "detection",
    )
    digests = {}
    if the_plan.calibration is not None:  # every evaluation image, for the calibration overlap check
        digests = dict(zip(feeds.digests, feeds.names, strict=True)) | digests_of(eval_set, range(n, len(eval_set)))
    path = Path(source.path)
    labelled = _classes_of(eval_set) is not None
    return DeployContext(
        deploy, d, Path(out), the_plan, path, model, meta, spec, feeds, digests, None, source, info, labelled
    )
