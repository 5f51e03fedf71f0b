"""``bckd-pipeline run``: the pipeline as one straight line of stages.

Stage 1 today: teacher (trained on the fly unless given) -> the student alone (the baseline a
drop or gain is measured against) -> the distilled student -> a summary in ``metrics.json``.
Export, calibration and target stages append to this line as they land.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .distill.stage import STATE_FILE, DataConfig, Schedule, check_out_dir, distill, train_teacher, write_json
from .distill.task import DistillConfig
from .distill.trainer import TrainConfig


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


def run(cfg: RunConfig) -> dict:
    out = check_out_dir(cfg.out)

    def resume(step: str) -> bool:
        return cfg.resume and (out / step / STATE_FILE).is_file()

    teacher_ckpt = cfg.teacher_checkpoint
    teacher_metrics = None
    if teacher_ckpt is None:
        step = train_teacher(
            cfg.teacher_model,
            cfg.data,
            cfg.teacher_schedule,
            cfg.train,
            out / "teacher",
            progress=cfg.progress,
            resume=resume("teacher"),
        )
        teacher_ckpt, teacher_metrics = step.checkpoint, step.metrics
    alone = distill(
        teacher_ckpt,
        cfg.student_model,
        cfg.data,
        cfg.student_schedule,
        cfg.train,
        replace(cfg.distill, kd="none"),
        out / "student",
        progress=cfg.progress,
        mfs_images=cfg.mfs_images,
        resume=resume("student"),
    )
    distilled = distill(
        teacher_ckpt,
        cfg.student_model,
        cfg.data,
        cfg.student_schedule,
        cfg.train,
        cfg.distill,
        out / "distilled",
        progress=cfg.progress,
        mfs_images=cfg.mfs_images,
        resume=resume("distilled"),
    )
    summary = summarize(teacher_metrics, alone.metrics, distilled.metrics, teacher_ckpt, distilled.checkpoint)
    write_json(out / "metrics.json", summary)
    return summary


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
