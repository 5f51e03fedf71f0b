"""The QAT stage: after the target's PTQ INT8 row, fine-tune the fake-quantized student (cross-entropy alone by
default, or with the teacher's terms: ``--qat-kd``) and export it as the ``qat-int8`` row
(``ledger.qat_artifact``), through the same parity and latency stages.

``--qat`` is off by default. ``--qat auto`` runs it only when the PTQ row misses the ``max_miou_drop``
budget. That decision is made on *training* images outside the calibration set (the accuracy-control images of
calibrate/stage.py, or as many others), never on the evaluation split: the mIoU of the PTQ row against the FP32
ONNX's on those images, in points, against the budget. The gate then judges the deployed row on the evaluation
split as always; the two can disagree near the budget, and the report records the decision and its figures.

The fine-tune (finetune.py) reads the whole training split at the calibration images' preprocessing (resize to
the input size; no augmentation), checked not to overlap the evaluation images. The stage is cached on the
student, the teacher, the calibration set and every setting: a rerun reuses the exported row and its record.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, replace
from pathlib import Path

from ..cache import StageCache, stage_key
from ..context import DeployContext, QatConfig, feed_norm, norm
from ..errors import BckdError, ConfigError
from ..ledger import Built, qat_artifact
from ..machine import package_versions
from ..progress import library_bars
from ..targets import Backend


def qat_budget(ctx: DeployContext) -> float | None:
    """``--qat-max-miou-drop``, else the budgets file's drop budget of the task (segmentation: ``max_miou_drop``)
    for this target (its deployed stage)."""
    q = ctx.deploy.qat
    if q.max_miou_drop is not None:
        return q.max_miou_drop
    if q.budgets is None:
        return None
    from ..gate.budgets import load_budgets

    table = load_budgets(q.budgets).for_target(ctx.profile.name, "this run")
    key = ctx.task.drop_budget()
    if key in table.from_defaults:  # the profile's default is the gate's, not a request for QAT
        return None
    return table.deployed.get(key)


def check_qat_task(mode: str, task: str) -> None:
    """QAT fine-tunes segmentation models only: its losses are segmentation's, on label maps."""
    if mode != "off" and task != "segmentation":
        raise ConfigError(
            f"--qat {mode} fine-tunes segmentation models; this is a {task} model. Drop --qat (its "
            "post-training INT8 row is deployed), or keep layers in float with --int8-exclude."
        )


def check_qat_teacher(teacher: Path | None, task: str) -> None:
    """The QAT fine-tune's ``--teacher`` holds a model of the student's ``task``: its logits and features are the
    targets of the student's, which a model of another task does not have."""
    if teacher is None:
        return
    from ..distill.checkpoint import read_checkpoint

    meta, _ = read_checkpoint(Path(teacher))
    if meta.task != task:
        raise ConfigError(
            f"--teacher {str(teacher)!r} holds a {meta.task} model ({meta.model}), and the QAT student is a {task} "
            f"model: the fine-tune distils from a teacher of the student's task. Pass a checkpoint of a {task} model "
            f"(`bckd-pipeline train-teacher --task {task}`), or drop --teacher to fine-tune against the FP32 student "
            "itself."
        )


def check_qat(
    q: QatConfig,
    profile,
    *,
    onnx_source: bool,
    dynamic: tuple[str, ...],
    exclude: tuple[str, ...] = (),
    task: str = "segmentation",
) -> None:
    """What ``pipeline.deploy_plan`` refuses before any stage: a mode not allowed, QAT of a non-INT8 target,
    of a model of another task than segmentation, against a --teacher of another task, of a user's ONNX (no
    PyTorch model to train), of a dynamic-shape export, or with INT8 exclusions."""
    from ..context import QAT_MODES
    from ..targets import Precision

    if q.mode not in QAT_MODES:
        raise ConfigError(f"--qat {q.mode!r} is not allowed. Allowed: {', '.join(QAT_MODES)}.")
    if q.mode == "off":
        return
    check_qat_task(q.mode, task)
    check_qat_teacher(q.teacher, task)
    if profile.precision is not Precision.INT8:
        raise ConfigError(
            f"--qat {q.mode} was given for --target {profile.name}, which deploys {profile.precision}: QAT fine-tunes "
            "an INT8 model. Deploy --precision int8, or drop --qat."
        )
    if onnx_source:
        raise ConfigError(
            f"--qat {q.mode} needs the PyTorch model to fine-tune, and `deploy --onnx` has none. Deploy the "
            "checkpoint (--model student.pt), or drop --qat."
        )
    if dynamic:
        raise ConfigError(
            f"--qat {q.mode} exports the fine-tuned model at a static shape, and --dynamic {','.join(dynamic)} was "
            "given. Drop --dynamic, or drop --qat."
        )
    if exclude:
        raise ConfigError(
            f"--qat {q.mode} with --int8-exclude {','.join(exclude)}: the QAT row quantizes every layer NNCF "
            "places a quantizer on, so the exclusions would hold for the PTQ row only. Drop one of the two."
        )
    if q.iters < 1 or q.batch_size < 1 or not q.lr > 0:
        raise ConfigError(
            f"--qat-iters {q.iters}, --qat-batch {q.batch_size}, --qat-lr {q.lr:g}: each must be positive "
            "(defaults 300, 8, 1e-5)."
        )


def qat_stage(ctx: DeployContext, out: Path, cache: StageCache, built: list[Built], calib, bar=None):
    """The QAT row (a list of zero or one ``Built``) and the record for the report (None when --qat is off)."""
    q = ctx.deploy.qat
    row = qat_artifact(ctx.profile)
    if q.mode == "off" or row is None or calib is None or ctx.model is None:
        return [], None
    check_qat_task(q.mode, ctx.task.name)
    budget = qat_budget(ctx)
    ptq = next(b for b in reversed(built) if b.precision.value == "int8")
    record: dict = {"mode": q.mode, "max_miou_drop": budget, "ptq_row": ptq.name}
    if q.mode == "auto" and budget is None:
        return [], {**record, "ran": False, "reason": f"no max_miou_drop budget for {ctx.profile.name}"}
    if q.mode == "auto":
        drop, images = _ptq_drop(ctx, built, ptq, calib)
        record["decision"] = {
            "ptq_miou_drop": round(drop, 4),
            "judged_on": f"{images} training images outside the calibration set (never the evaluation split)",
        }
        if budget is None or drop <= budget:
            record["ran"] = False
            record["reason"] = f"{ptq.name} drops {drop:.3f} mIoU points, within max_miou_drop {budget}"
            return [], record
    teacher_path = q.teacher
    options = {
        "profile": ctx.profile.name,
        "device": ctx.profile.device,
        "preset": ctx.plan.calibration.preset if ctx.plan.calibration else None,
        "spec": asdict(ctx.spec),
        "schedule": {
            k: v
            for k, v in asdict(q).items()
            if k not in ("mode", "max_miou_drop", "budgets", "teacher")  # not what is trained
        },
        "teacher": str(teacher_path) if teacher_path else "self",
        "calibration_sha256": calib.sha256,
        "libraries": package_versions(),  # another NNCF or torch may place or train quantizers differently
    }
    name = f"{row.name}@{ctx.profile.key}"
    inputs = [ctx.checkpoint] + ([Path(teacher_path)] if teacher_path else [])
    key = stage_key(name, options, inputs)
    path = out / row.path
    hit = cache.lookup(name, key)
    if hit is not None:
        return [replace(row, path=path, settings=hit["settings"])], {**record, **hit["qat"], "cached": True}
    settings, summary = _train_and_export(ctx, row, path, calib, bar)
    outputs = [path] + ([path.with_suffix(".bin")] if row.backend is Backend.OPENVINO else [])
    cache.store(name, key, outputs, {"settings": settings, "qat": summary})
    return [replace(row, path=path, settings=settings)], {**record, **summary, "cached": False}


def _ptq_drop(ctx: DeployContext, built: list[Built], ptq: Built, calib) -> tuple[float, int]:
    """The task's metric (mIoU points) of the FP32 simplified ONNX minus the PTQ row's, on training images outside
    calibration."""
    from ..deploy.stage import make_runtime

    feeds = calib.validation if calib.validation is not None else _held_out(ctx, calib)
    feeds = replace(feeds, batch=1)  # the runtimes of a static --batch N repeat each image themselves
    fp32 = next(b for b in built if b.name == "onnx-simplified")
    scores = []
    for b in (fp32, ptq):
        with make_runtime(ctx, b) as rt:
            score = ctx.task.score_split(
                lambda feed, rt=rt: next(iter(rt.infer(feed).values())),
                feeds.pairs(),
                num_classes=ctx.meta.num_classes,
                ignore_index=ctx.meta.ignore_index,
            )
        scores.append(score)
    return scores[0] - scores[1], len(feeds)


def _training_set(ctx: DeployContext, split: str):
    from ..data import build_dataset

    d = ctx.data
    return build_dataset(d.spec, split, demo_size=d.demo_size, demo_count=d.demo_count)


def _held_out(ctx: DeployContext, calib):
    """As many training images as the calibration set holds, none of them calibration images."""
    from ..data.feeds import DatasetFeeds, check_no_overlap, pick_indices
    from ..errors import DataError

    spec = calib.spec
    train_set = _training_set(ctx, spec.split)
    # The calibration stage drew its images with pick_indices(size, len, seed): the same draw names them,
    # without decoding the split (checked below against the images' digests all the same).
    picked = set(pick_indices(spec.size, len(train_set), spec.seed))
    rest = [i for i in range(len(train_set)) if i not in picked]
    if not rest:
        raise DataError(
            f"--qat auto judges the PTQ row on training images besides the {len(calib.feeds)} calibration images, "
            f"and split {spec.split!r} has none left. Lower --calib-size, or pass --qat on."
        )
    chosen = [rest[i] for i in pick_indices(min(spec.size, len(rest)), len(rest), spec.seed + 1)]
    feeds = DatasetFeeds.from_dataset(
        train_set,
        chosen,
        ctx.spec.input_hw,
        normalization=feed_norm(ctx.meta, ctx.spec),
        input_name=ctx.eval_feeds.input_name,
    )
    check_no_overlap(feeds, ctx.eval_digests)
    if set(feeds.digests) & set(calib.feeds.digests):
        raise DataError(
            "--qat auto would judge the PTQ row on calibration images: the calibration set was not drawn the "
            "way this stage expects. Pass --qat on, or report this as a bug."
        )
    return feeds


def preset_taps(model_name: str, role: str) -> list[str] | None:
    """A preset's BCKD taps under the export wrapper (``student.``); None for a model that is not a preset."""
    from ..distill.models import default_taps

    try:
        return [f"student.{t}" for t in default_taps(model_name, role=role)]
    except (KeyError, BckdError):  # not a preset (a module file): no known taps, logit KD only
        return None


def _train_and_export(ctx: DeployContext, row: Built, path: Path, calib, bar) -> tuple[dict, dict]:
    from .finetune import QatSchedule, finetune

    q = ctx.deploy.qat
    start = time.perf_counter()
    qstudent, scheme = _fake_quant_student(ctx, calib)
    dcfg, teacher, teacher_taps, teacher_what = _qat_teacher(ctx)
    student_taps = preset_taps(ctx.meta.model, "student")
    if "bckd" in dcfg.kd and not (student_taps and teacher_taps):
        dcfg = replace(dcfg, kd="kd")  # a model without preset taps: logit KD + CE, recorded below
    train = _training_feeds(ctx, calib.spec.split)
    schedule = QatSchedule(iters=q.iters, lr=q.lr, batch_size=q.batch_size, seed=q.seed, distill=dcfg)
    with _bar(bar, q.iters) as tick:
        cost = finetune(
            qstudent,
            teacher,
            train.images,
            train.labels,
            schedule,
            student_taps=student_taps,
            teacher_taps=teacher_taps,
            ignore_index=ctx.meta.ignore_index,
            tick=tick,
        )
    export = _export(ctx, row, qstudent, path)
    settings = {**scheme.describe(), **export, "teacher": teacher_what, "kd": cost["kd"]}
    summary = {
        "ran": True,
        "teacher": teacher_what,
        "kd": cost["kd"],
        "scheme": scheme.describe(),
        "train_split": calib.spec.split,
        "cost": {**cost, "stage_wall_s": round(time.perf_counter() - start, 3)},
    }
    return settings, summary


def _fake_quant_student(ctx: DeployContext, calib):
    """The FP32 student under the export wrapper with fake quantization inserted as the target's quantizer does,
    its ranges from the PTQ row's own calibration images; returns it and the quantization scheme."""
    from ..export.wrapper import SegExportWrapper
    from . import fakequant

    normalize = norm(ctx.meta) if ctx.spec.bake_normalization else None
    student = SegExportWrapper(copy.deepcopy(ctx.model).cpu(), normalize=normalize, head="logits").eval()
    scheme = fakequant.scheme_for(
        ctx.profile.backend.value,
        preset=ctx.plan.calibration.preset if ctx.plan.calibration else "performance",
        device=ctx.profile.device,
    )
    one_image = replace(calib.feeds, batch=1)  # the ranges from the very calibration images of the PTQ row
    with library_bars(ctx.deploy.progress):  # NNCF's bars
        return fakequant.insert_fake_quant(student, list(one_image), scheme), scheme


def _qat_teacher(ctx: DeployContext):
    """The fine-tune's distillation settings and its teacher: none, --teacher's checkpoint, or the FP32 student.

    Returns ``(distill config, teacher module or None, teacher taps or None, what the report calls the teacher)``.
    """
    from ..distill.checkpoint import load_model
    from ..configs import DistillConfig
    from ..export.wrapper import SegExportWrapper

    q, spec = ctx.deploy.qat, ctx.spec
    # --qat-kd: the fine-tune's terms; by default cross-entropy alone (docs/decisions.md, "QAT: off by default,
    # cross-entropy alone"). The run's --bckd settings apply when they are chosen.
    dcfg = replace(q.distill or DistillConfig(), kd=q.kd)
    if dcfg.kd == "none":
        return dcfg, None, None, "none (cross-entropy alone)"
    if q.teacher is not None:
        check_qat_teacher(q.teacher, ctx.task.name)
        teacher_model, tmeta = load_model(q.teacher, expect_classes=ctx.meta.num_classes)
        t_norm = norm(tmeta) if spec.bake_normalization else None
        teacher = SegExportWrapper(teacher_model, normalize=t_norm, head="logits").eval()
        return dcfg, teacher, preset_taps(tmeta.model, "teacher"), f"teacher checkpoint {q.teacher}"
    # No teacher: the FP32 student is the target (self-distillation); the report says which.
    normalize = norm(ctx.meta) if spec.bake_normalization else None
    teacher = SegExportWrapper(copy.deepcopy(ctx.model).cpu(), normalize=normalize, head="logits").eval()
    return dcfg, teacher, preset_taps(ctx.meta.model, "student"), "self-distillation from the FP32 student"


def _training_feeds(ctx: DeployContext, split: str):
    """The fine-tune's images and labels: the calibration split, checked apart from the evaluation images."""
    from ..data.feeds import DatasetFeeds, check_no_overlap

    train_set = _training_set(ctx, split)
    train = DatasetFeeds.from_dataset(
        train_set,
        range(len(train_set)),
        ctx.spec.input_hw,
        normalization=feed_norm(ctx.meta, ctx.spec),
        input_name=ctx.eval_feeds.input_name,
    )
    check_no_overlap(train, ctx.eval_digests)
    _check_labels(train, ctx.meta, ctx.data.spec)
    return train


def _export(ctx: DeployContext, row: Built, qstudent, path: Path) -> dict:
    """Write the fine-tuned student as the row's artifact (FakeQuantize IR or Q/DQ ONNX); returns how."""
    import torch

    from ..cache import file_sha256
    from ..export.onnx_export import onnx_metadata
    from . import fakequant

    q, spec = ctx.deploy.qat, ctx.spec
    qstudent.head = spec.head  # the exported head (logits or argmax), as export/onnx_export.py writes it
    example = torch.zeros(spec.input_shape())
    provenance = {"bckd.checkpoint_sha256": file_sha256(ctx.checkpoint), "bckd.qat": f"QAT (qat/), --qat-kd {q.kd}"}
    metadata = onnx_metadata(ctx.meta, spec, provenance)
    io_names = {"input_name": ctx.eval_feeds.input_name, "output_name": spec.output_name}
    if row.backend is Backend.OPENVINO:
        fakequant.export_ir(qstudent, example, path, **io_names, metadata=metadata)
        return {"format": "OpenVINO IR (FakeQuantize)", "tool": "openvino.convert_model"}
    fakequant.export_qdq(qstudent, example, path, opset=spec.opset, **io_names, metadata=metadata)
    export = {"format": "QDQ ONNX", "tool": "nncf.strip(native) + torch.onnx.export"}
    if ctx.profile.backend is Backend.TENSORRT:
        try:  # rewritten in place and then checked: a file that fails the check must not stay behind
            export.update(fakequant.make_tensorrt_ready(path))
        except BaseException:
            Path(path).unlink(missing_ok=True)
            raise
    return export


def _check_labels(train, meta, data: str) -> None:
    """The fine-tune's cross-entropy needs every label to be a class of the model (or ignored)."""
    import numpy as np

    from ..errors import DataError

    top = max((int(np.max(y[y != meta.ignore_index], initial=-1)) for y in train.labels), default=-1)
    if top >= meta.num_classes:
        raise DataError(
            f"--qat fine-tunes on the labels of {data!r}, which include class {top}, and the model predicts "
            f"{meta.num_classes} classes. Deploy a model trained on this dataset, or pass --qat off."
        )


def _bar(bar, total: int):
    import contextlib

    if bar is None:
        return contextlib.nullcontext(None)
    return bar("QAT fine-tune", total)
