"""Stage 1 as ``bckd-pipeline run`` does it: the teacher, the student alone and the distilled student,
each cached by content (cache.py) and resumed from its saved training state.

``cfg`` is what they read of the run's configuration (``RunSettings``); the pipeline passes its ``RunConfig``
(context.py), which has all of it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from ..cache import StageCache, stage_key
from ..configs import DataConfig, DistillConfig, Schedule, TrainConfig
from ..tasks import get_task
from .stage import STATE_FILE, StepOutput, distill, train_teacher


class RunSettings(Protocol):
    """What the training stages read of the run's configuration."""

    data: DataConfig
    train: TrainConfig
    teacher_model: str
    student_model: str
    teacher_schedule: Schedule
    student_schedule: Schedule
    teacher_checkpoint: Path | None
    mfs_images: int
    progress: bool
    resume: bool


def _read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def teacher_stage(cfg: RunSettings, out: Path, cache: StageCache) -> tuple[Path, dict | None]:
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
    cfg: RunSettings, out: Path, cache: StageCache, teacher_ckpt: Path, dcfg: DistillConfig, name: str
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
    # Where and how often state is saved does not change the trained weights; what `auto` resolves to on this
    # device (fp32 or bf16) does, so the key holds the precision trained in, not only the flag.
    from .trainer import resolve_precision

    options = {k: v for k, v in asdict(train).items() if k not in ("checkpoint_every", "num_workers")}
    return {**options, "precision_used": resolve_precision(train).used}


def summarize(
    teacher: dict | None,
    alone: dict,
    distilled: dict,
    teacher_ckpt: Path,
    student_ckpt: Path,
    *,
    task: str = "segmentation",
) -> dict:
    """The run's stage-1 figures: teacher, student alone and distilled student on the task's headline metric
    (the task's ``metric``: ``miou``, or ``map`` for detection), and the share of the teacher-student gap that
    distillation closed: ``(distilled - alone) / (teacher - alone) * 100``, None (unknown) without a teacher, with a
    zero gap, or when a figure is None (detection AP of a split without non-crowd ground truth)."""
    key = get_task(task).metric
    t = teacher[key] if teacher else None
    figures = (t, alone[key], distilled[key])
    gap = t - alone[key] if all(f is not None for f in figures) else None
    closed = (distilled[key] - alone[key]) / gap * 100 if gap else None
    if task == "detection":
        extra = {k: distilled.get(k) for k in ("ap50", "ap75", "ap_small", "ap_medium", "ap_large")}
    else:
        extra = {"boundary_f": distilled["boundary_f"].get("f_score"), "lhd": distilled["lhd"].get("mean")}
    return {
        key: distilled[key],
        **({"task": task} if task == "detection" else {}),
        "kd": distilled["kd"],
        "teacher": {"model": distilled["teacher_model"], key: t, "checkpoint": str(teacher_ckpt)},
        "student": {"model": alone["model"], key: alone[key]},
        "distilled": {
            "model": distilled["model"],
            key: distilled[key],
            "checkpoint": str(student_ckpt),
            **extra,
        },
        "gap_closed_percent": closed,
        # The distilled student's training precision and why (None from a metrics.json that predates the record).
        "train_precision": distilled.get("train_precision"),
    }
