"""Stage 1 as three typed steps: train a teacher, distill a student, evaluate a checkpoint.

Each step reads its inputs, checks them, trains or evaluates, and writes into ``out``: the
checkpoint (atomically) and ``metrics.json`` (atomically, the task's headline at its top level: ``miou`` for
segmentation, ``map`` (COCO AP@[.5:.95]) for detection). ``data.task`` picks the task: detectors train through
the same trainer with ``DetTrainTask``/``DetDistillTask``, are validated and scored by the detection task's AP
(``metrics.evaluate_detection``), and their best checkpoint is the one of highest AP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import metrics as M
from ..configs import CheckpointMeta, DataConfig, DistillConfig, Schedule, TrainConfig
from ..errors import ConfigError, DataError
from ..fileio import write_json
from ..tasks import get_task
from .checkpoint import load_model, plain_values, save_checkpoint
from .distributed import SINGLE, DistEnv, all_reduce_sum, shard
from .any_model import check_pair, load_student, load_teacher
from .models import FeatureTaps, check_input_size, default_taps
from .task import SegDistillTask, SegTrainTask
from .task_models import build_preset, check_kd, check_preset
from .trainer import TrainResult, seed_everything, train

STATE_FILE = "train_state.pt"


@dataclass
class StepOutput:
    checkpoint: Path | None
    metrics: dict = field(default_factory=dict)


def _input_hw(data: DataConfig, sample: torch.Tensor) -> tuple[int, int]:
    return data.crop or data.resize or tuple(sample.shape[-2:])


def _meta(model_name: str, info, data: DataConfig, role: str, extra: dict) -> CheckpointMeta:
    return CheckpointMeta(
        model=model_name,
        num_classes=info.num_classes,
        class_names=tuple(info.class_names),
        # A detector's targets have no ignore label: -1 says so (the task's parity and drawings read it).
        ignore_index=-1 if data.is_detection else info.ignore_index,
        input_hw=data.resize,
        role=role,
        dataset=data.spec,
        extra=extra,
        class_colors=getattr(info, "colors", None),
        task=data.task,
    )


def _metric(data: DataConfig) -> tuple[str, str]:
    """The task's headline metric: (metrics.json key, label)."""
    task = get_task(data.task)
    return task.metric, task.metric_label


def _ap_only(model: nn.Module, eval_set, info, train_cfg: TrainConfig, env: DistEnv):
    """The in-training score of a detector: COCO AP of the evaluation split (the task's ``map``).

    Under torchrun each rank scores its shard and the AP evidence (per-image histograms) is summed over ranks,
    so the score is the dataset-level AP, never an average of per-rank APs.
    """
    device = env.device if env.distributed else train_cfg.device

    def run() -> float:
        from ..tasks.detection import DETECTION

        subset = torch.utils.data.Subset(eval_set, shard(env, len(eval_set)))
        evidence, _ = M.detection_evidence(
            model, subset, num_classes=info.num_classes, batch_size=train_cfg.batch_size, device=device
        )
        if not evidence.size:  # a rank with no images of its own
            from ..tasks.detection_ap import evidence_length

            evidence = np.zeros(evidence_length(info.num_classes), np.int64)
        evidence = all_reduce_sum(env, torch.from_numpy(evidence)).numpy()
        value = DETECTION.summary(evidence)["map"]
        return 0.0 if value is None else value  # no ground truth at all scores nothing

    return run


def _score(model: nn.Module, eval_set, info, data: DataConfig, train_cfg: TrainConfig, env: DistEnv):
    return (_ap_only if data.is_detection else _miou_only)(model, eval_set, info, train_cfg, env)


def _check_size(model: nn.Module, name: str, data: DataConfig, hw: tuple[int, int]) -> None:
    if data.is_detection:
        from .detection import check_detector_input

        check_detector_input(hw, tuple(model.strides))
    else:
        check_input_size(model, name, hw)


def _collate(data: DataConfig):
    if not data.is_detection:
        return None
    from ..data.instances import collate_detection

    return collate_detection


def _full_metrics(model, eval_set, info, train_cfg: TrainConfig, reference=None, *, data: DataConfig) -> dict:
    if data.is_detection:
        return M.evaluate_detection(
            model, eval_set, num_classes=info.num_classes, batch_size=train_cfg.batch_size, device=train_cfg.device
        )
    return M.evaluate(
        model,
        eval_set,
        num_classes=info.num_classes,
        ignore_index=info.ignore_index,
        batch_size=train_cfg.batch_size,
        device=train_cfg.device,
        reference_model=reference,
    )


def _miou_only(model: nn.Module, eval_set, info, train_cfg: TrainConfig, env: DistEnv):
    """The cheap in-training score: val mIoU only (the boundary metrics run once, at the end).

    Under torchrun each rank evaluates its shard and the confusion matrices are summed, so the
    score is the dataset-level mIoU, never an average of per-rank mIoUs.
    """
    device = env.device if env.distributed else train_cfg.device

    def run() -> float:
        cm = M.ConfusionMatrix(info.num_classes, info.ignore_index)
        subset = torch.utils.data.Subset(eval_set, shard(env, len(eval_set)))
        batches = M.predicted_batches(
            model, subset, num_classes=info.num_classes, batch_size=train_cfg.batch_size, device=device
        )
        for labels, masks, _ in batches:
            cm.update(labels, masks)
        total = all_reduce_sum(env, torch.from_numpy(cm.matrix.copy()))
        cm.matrix[...] = total.numpy()
        return cm.miou()

    return run


def _train_keeping_best(
    task: nn.Module,
    model: nn.Module,
    train_set,
    cfg: TrainConfig,
    data: DataConfig,
    *,
    ckpt: Path,
    meta: CheckpointMeta,
    evaluate: Callable[[], float],
    description: str,
    fingerprint: dict,
    progress: bool,
    resume: bool,
    env: DistEnv,
) -> TrainResult:
    """Train ``task`` over ``train_set`` under ``cfg``, saving ``model`` with ``meta`` to ``ckpt`` at each new best
    of ``evaluate``; the resumable state (``STATE_FILE``, checked against ``fingerprint``) lives beside ``ckpt``, and
    the batching and the score's name are those of ``data.task``."""
    return train(
        task,
        train_set,
        cfg,
        evaluate=evaluate,
        save_best=lambda it, score: save_checkpoint(ckpt, model, meta),
        description=description,
        progress=progress,
        state_path=Path(ckpt).parent / STATE_FILE,
        resume=resume,
        fingerprint=fingerprint,
        env=env,
        collate=_collate(data),
        score_name=_metric(data),
    )


def train_teacher(
    model_name: str,
    data: DataConfig,
    schedule: Schedule,
    train_cfg: TrainConfig,
    out: Path,
    *,
    pretrained: str = "none",
    progress: bool = True,
    resume: bool = False,
    env: DistEnv = SINGLE,
) -> StepOutput:
    check_preset(model_name, data.task, "--arch")
    seed_everything(train_cfg.seed)  # the weights' initialisation is part of the run's seed
    train_set, eval_set = data.train_set(), data.eval_set()
    info = train_set.info
    model = build_preset(model_name, data.task, info.num_classes, pretrained=pretrained, class_names=info.class_names)
    _check_size(model, model_name, data, _input_hw(data, eval_set[0][0]))
    iters = schedule.resolve(len(train_set), train_cfg.batch_size)
    cfg = replace(train_cfg, iters=iters)
    ckpt = Path(out) / "teacher.pt"
    result = _train_keeping_best(
        _train_task(model, info, data),
        model,
        train_set,
        cfg,
        data,
        ckpt=ckpt,
        meta=_meta(model_name, info, data, "teacher", {"pretrained": pretrained}),
        evaluate=_score(model, eval_set, info, data, cfg, env),
        description=f"teacher {model_name}",
        fingerprint={
            "command": "train-teacher",
            "model": model_name,
            "data": plain_values(data),
            "pretrained": pretrained,
        },
        progress=progress,
        resume=resume,
        env=env,
    )
    if not env.is_main:
        return StepOutput(ckpt)
    best, _ = load_model(ckpt)
    metrics = _full_metrics(best, eval_set, info, cfg, data=data)
    hw = _input_hw(data, eval_set[0][0])
    payload = {
        **metrics,
        "model": model_name,
        "role": "teacher",
        "class_names": list(info.class_names),
        "cost": M.model_cost(best, (1, 3, *hw)),
        "train": _train_summary(result, cfg, _metric(data)[0]),
        "train_precision": result.precision,
        "data": asdict(data),
        **({"task": data.task} if data.is_detection else {}),
    }
    write_json(Path(out) / "metrics.json", payload)
    return StepOutput(ckpt, payload)


def _train_task(model: nn.Module, info, data: DataConfig) -> nn.Module:
    if data.is_detection:
        from .detection_task import DetTrainTask

        return DetTrainTask(model)
    return SegTrainTask(model, ignore_index=info.ignore_index)


def distill(
    teacher_ckpt: Path | None,
    student_name: str,
    data: DataConfig,
    schedule: Schedule,
    train_cfg: TrainConfig,
    dcfg: DistillConfig,
    out: Path,
    *,
    student_taps: list[str] | None = None,
    teacher_taps: list[str] | None = None,
    pretrained: str = "none",
    progress: bool = True,
    mfs_images: int = 16,
    resume: bool = False,
    env: DistEnv = SINGLE,
    teacher_factory: str | None = None,
    teacher_weights: Path | None = None,
    student_factory: str | None = None,
    student_weights: Path | None = None,
) -> StepOutput:
    """Distil ``student_name`` (or ``student_factory``'s module) from ``teacher_ckpt`` (a preset checkpoint, a
    TorchScript or .pt2 file) or ``teacher_factory`` with ``teacher_weights`` (distill/any_model.py).
    A detection run (``data.task``) distils a detector preset from a detector checkpoint (:func:`distill_detector`)."""
    if data.is_detection:
        given = {
            "--student-taps": student_taps,
            "--teacher-taps": teacher_taps,
            "--teacher-factory": teacher_factory,
            "--teacher-weights": teacher_weights,
            "--student-factory": student_factory,
            "--student-weights": student_weights,
        }
        refused = [flag for flag, value in given.items() if value is not None]
        if refused:
            raise ConfigError(
                f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} not available with --task detection: a "
                "detection distillation pairs a detector preset student with a teacher.pt of a detector preset, "
                "tapped where BCKD reads detectors (backbone and FPN). Drop those flags."
            )
        if teacher_ckpt is None:
            raise ConfigError("--task detection distils from a detector checkpoint: pass --teacher teacher.pt.")
        return distill_detector(
            teacher_ckpt,
            student_name,
            data,
            schedule,
            train_cfg,
            dcfg,
            out,
            pretrained=pretrained,
            progress=progress,
            mfs_images=mfs_images,
            resume=resume,
            env=env,
        )
    check_kd(dcfg.kd, "segmentation")
    seed_everything(train_cfg.seed)
    train_set, eval_set = data.train_set(), data.eval_set()
    info = train_set.info
    t = load_teacher(teacher_ckpt, teacher_factory, teacher_weights, info.num_classes)
    s = load_student(student_name, student_factory, student_weights, info.num_classes, pretrained=pretrained)
    teacher, student, student_name = t.model, s.model, s.name
    iters = schedule.resolve(len(train_set), train_cfg.batch_size)
    cfg = replace(train_cfg, iters=iters)
    hw = _input_hw(data, eval_set[0][0])
    check_input_size(student, student_name, hw)
    check_input_size(teacher, t.name, hw)
    check_pair(s, t, hw, info.num_classes)
    uses_bckd = "bckd" in dcfg.terms
    t_taps = t.taps(teacher_taps, bckd=uses_bckd)
    s_taps = s.taps(student_taps, bckd=uses_bckd)
    teacher_name = str(teacher_ckpt) if teacher_ckpt is not None else f"{teacher_factory} ({teacher_weights})"
    task = SegDistillTask(
        student,
        teacher,
        cfg=dcfg,
        student_taps=s_taps,
        teacher_taps=t_taps,
        example_input=torch.randn(2, 3, *hw),
        ignore_index=info.ignore_index,
    )
    ckpt = Path(out) / "student.pt"
    extra = {"kd": dcfg.kd, "teacher": teacher_name, "teacher_kind": t.kind}
    if s.factory is not None:
        extra["factory"] = s.factory
    result = _train_keeping_best(
        task,
        student,
        train_set,
        cfg,
        data,
        ckpt=ckpt,
        meta=_meta(student_name, info, data, "student", extra),
        evaluate=_miou_only(student, eval_set, info, cfg, env),
        description=f"{student_name} kd={dcfg.kd}",
        fingerprint={
            "command": "distill",
            "student": student_name,
            "teacher": teacher_name,
            "distill": plain_values(dcfg),
            "data": plain_values(data),
            "taps": [s_taps, t_taps],
        },
        progress=progress,
        resume=resume,
        env=env,
    )
    if not env.is_main:
        return StepOutput(ckpt)
    best = _reload_student(ckpt, s)
    teacher = task.teacher.model
    metrics = _full_metrics(best, eval_set, info, cfg, reference=teacher, data=data)
    payload = {
        **metrics,
        "model": student_name,
        "role": "student",
        "kd": dcfg.kd,
        "class_names": list(info.class_names),
        "teacher_checkpoint": teacher_name,
        "teacher_model": t.name,
        "teacher_kind": t.kind,
        "cost": {"student": M.model_cost(best, (1, 3, *hw)), "teacher": M.model_cost(teacher, (1, 3, *hw))},
        # MFS pairs encoder stages of both models (the teacher's decoder tap is a BCKD target, not a stage).
        "mfs": _mfs(best, teacher, s_taps, _mfs_teacher_taps(t, t_taps), eval_set, mfs_images),
        "distill_config": asdict(dcfg),
        "train": _train_summary(result, cfg, "miou"),
        # What the training steps ran in (fp32, bf16 or fp16 autocast) and why; evaluation always runs in fp32.
        "train_precision": result.precision,
        "data": asdict(data),
    }
    write_json(Path(out) / "metrics.json", payload)
    return StepOutput(ckpt, payload)


def _det_distill_task(student: nn.Module, teacher: nn.Module, dcfg: DistillConfig, example: torch.Tensor):
    """The detection distillation task of ``dcfg.kd`` (the task refuses a method that is not detection's), with
    ``--kd-weight`` as the dense score KD's weight."""
    from .detection_task import DetDistillTask

    _check_det_distill_flags(dcfg)
    return DetDistillTask(student, teacher, cfg=dcfg, example_input=example, kd=dcfg.kd, kd_weight=dcfg.kd_weight)


def _check_det_distill_flags(dcfg: DistillConfig) -> None:
    """Refuse segmentation's logit-term settings (``--kd-temperature``, ``--cwd-*``) on a detection run: the dense
    score KD has no temperature and detection has no CWD term, so a value other than the default would be ignored."""
    defaults = DistillConfig()
    given = [
        f"{flag} {value:g}"
        for flag, value, default in (
            ("--kd-temperature", dcfg.kd_temperature, defaults.kd_temperature),
            ("--cwd-temperature", dcfg.cwd_temperature, defaults.cwd_temperature),
            ("--cwd-weight", dcfg.cwd_weight, defaults.cwd_weight),
        )
        if value != default
    ]
    if given:
        raise ConfigError(
            f"{', '.join(given)}: these are segmentation's settings (its logit KD and CWD terms), and this is a "
            "--task detection run, whose dense score KD has no temperature and which has no CWD term. Drop them; "
            "--kd-weight sets the weight of detection's dense score KD."
        )


def _detector_teacher(teacher_ckpt: Path, num_classes: int) -> tuple[nn.Module, CheckpointMeta]:
    """The teacher.pt of a detector preset, for the dataset's classes."""
    return load_model(Path(teacher_ckpt), expect_classes=num_classes, expect_task="detection", flag="--teacher")


def distill_detector(
    teacher_ckpt: Path,
    student_name: str,
    data: DataConfig,
    schedule: Schedule,
    train_cfg: TrainConfig,
    dcfg: DistillConfig,
    out: Path,
    *,
    pretrained: str = "none",
    progress: bool = True,
    mfs_images: int = 16,
    resume: bool = False,
    env: DistEnv = SINGLE,
) -> StepOutput:
    """Distil the detector preset ``student_name`` from the detector checkpoint ``teacher_ckpt`` (``DetDistillTask``:
    the FCOS losses plus the terms of ``dcfg.kd``); the best student is the one of highest validation AP."""
    from .detection import detector_taps

    check_preset(student_name, data.task, "--student-arch")
    seed_everything(train_cfg.seed)
    train_set, eval_set = data.train_set(), data.eval_set()
    info = train_set.info
    teacher, t_meta = _detector_teacher(teacher_ckpt, info.num_classes)
    student = build_preset(
        student_name, data.task, info.num_classes, pretrained=pretrained, class_names=info.class_names
    )
    iters = schedule.resolve(len(train_set), train_cfg.batch_size)
    cfg = replace(train_cfg, iters=iters)
    hw = _input_hw(data, eval_set[0][0])
    _check_size(student, student_name, data, hw)
    task = _det_distill_task(student, teacher, dcfg, torch.randn(2, 3, *hw))
    ckpt = Path(out) / "student.pt"
    teacher_name = str(teacher_ckpt)
    result = _train_keeping_best(
        task,
        student,
        train_set,
        cfg,
        data,
        ckpt=ckpt,
        meta=_meta(student_name, info, data, "student", {"kd": dcfg.kd, "teacher": teacher_name}),
        evaluate=_ap_only(student, eval_set, info, cfg, env),
        description=f"{student_name} kd={dcfg.kd}",
        fingerprint={
            "command": "distill",
            "task": data.task,
            "student": student_name,
            "teacher": teacher_name,
            "distill": plain_values(dcfg),
            "data": plain_values(data),
        },
        progress=progress,
        resume=resume,
        env=env,
    )
    if not env.is_main:
        return StepOutput(ckpt)
    best, _ = load_model(ckpt)
    taps = detector_taps()
    payload = {
        **_full_metrics(best, eval_set, info, cfg, data=data),
        "model": student_name,
        "role": "student",
        "task": data.task,
        "kd": dcfg.kd,
        "class_names": list(info.class_names),
        "teacher_checkpoint": teacher_name,
        "teacher_model": t_meta.model,
        "teacher_kind": "checkpoint",
        "cost": {"student": M.model_cost(best, (1, 3, *hw)), "teacher": M.model_cost(teacher, (1, 3, *hw))},
        # MFS pairs the backbone and FPN maps of both detectors (the features BCKD reads).
        "mfs": _mfs(best, teacher, taps, taps, eval_set, mfs_images),
        "distill_config": asdict(dcfg),
        "train": _train_summary(result, cfg, "map"),
        "train_precision": result.precision,
        "data": asdict(data),
    }
    write_json(Path(out) / "metrics.json", payload)
    return StepOutput(ckpt, payload)


def _reload_student(ckpt: Path, s) -> nn.Module:
    """The best student saved: a preset rebuilt from its checkpoint, a factory's module filled from it."""
    if s.factory is None:
        return load_model(ckpt)[0]
    from ..model_files import module_from_factory
    from .checkpoint import read_checkpoint

    model = module_from_factory(s.factory, None, flag="--student-factory")
    model.load_state_dict(read_checkpoint(ckpt)[1])
    return model.eval()


def _mfs_teacher_taps(t, t_taps: list[str] | None) -> list[str] | None:
    """MFS pairs encoder stages of both models: a preset teacher's encoder taps (its decoder tap is a BCKD target,
    not a stage), the named taps of any other teacher."""
    return default_taps(t.name) if t.is_preset else t_taps


def evaluate_checkpoint(
    ckpt: Path, data: DataConfig, out: Path, *, batch_size: int = 8, device: str = "cpu"
) -> StepOutput:
    from .checkpoint import read_checkpoint

    meta, _ = read_checkpoint(ckpt)
    if meta.task != data.task:
        raise ConfigError(
            f"Checkpoint {str(ckpt)!r} holds a {meta.task} model ({meta.model}), and --task is {data.task}. "
            f"Pass --task {meta.task} (with data of that task), or a {data.task} checkpoint."
        )
    eval_set = data.eval_set()
    info = eval_set.info
    model, meta = load_model(ckpt, expect_classes=info.num_classes)
    hw = _input_hw(data, eval_set[0][0])
    if data.is_detection:
        metrics = M.evaluate_detection(
            model, eval_set, num_classes=info.num_classes, batch_size=batch_size, device=device
        )
    else:
        metrics = M.evaluate(
            model,
            eval_set,
            num_classes=info.num_classes,
            ignore_index=info.ignore_index,
            batch_size=batch_size,
            device=device,
        )
    payload = {
        **metrics,
        "model": meta.model,
        "checkpoint": str(ckpt),
        "class_names": list(info.class_names),
        "cost": M.model_cost(model, (1, 3, *hw)),
        "data": asdict(data),
        **({"task": data.task} if data.is_detection else {}),
    }
    write_json(Path(out) / "metrics.json", payload)
    return StepOutput(Path(ckpt), payload)


def _mfs(student, teacher, s_taps, t_taps, eval_set, n_images: int) -> dict | None:
    """MFS on the first ``n_images`` eval images; stages paired from the deepest down."""
    if n_images <= 0 or not s_taps or not t_taps:
        return None
    images = torch.stack([eval_set[i][0] for i in range(min(n_images, len(eval_set)))])
    device = next(student.parameters()).device
    s_tap, t_tap = FeatureTaps(student, s_taps), FeatureTaps(teacher, t_taps)
    try:
        student.eval(), teacher.eval()
        probe = images[:1].to(device)
        student(probe), teacher(probe)
        k = min(len(s_tap.collect(probe.shape[-2:])), len(t_tap.collect(probe.shape[-2:])))

        def feats(model, tap):
            def fn(x):
                model(x.to(device))
                return [f.float().cpu() for f in tap.collect(x.shape[-2:])[-k:]]

            return fn

        result = M.mfs(feats(student, s_tap), feats(teacher, t_tap), images)
    finally:
        s_tap.remove(), t_tap.remove()
    return {**{k_: v for k_, v in result.items() if k_ != "per_image"}, "images": len(images)}


def _train_summary(result, cfg: TrainConfig, metric: str) -> dict:
    steps = result.iterations - result.resumed_from
    train_seconds = result.seconds - result.eval_seconds
    return {
        "iterations": result.iterations,
        "resumed_from": result.resumed_from,
        "best_iteration": result.best_iteration,
        f"best_val_{metric}": result.best_score,
        "seconds": round(result.seconds, 2),
        "eval_seconds": round(result.eval_seconds, 2),
        # Global samples per second of training steps (evaluation excluded), all processes together.
        "samples_per_second": round(steps * cfg.batch_size / train_seconds, 2) if train_seconds > 0 else None,
        "config": asdict(cfg),
        "history": result.history,
    }


def check_out_dir(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {str(out)!r} is a file. Pass a folder path (it is created if missing).")
    out.mkdir(parents=True, exist_ok=True)
    return out
