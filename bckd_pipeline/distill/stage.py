"""Stage 1 as three typed steps: train a teacher, distill a student, evaluate a checkpoint.

Each step reads its inputs, checks them, trains or evaluates, and writes into ``out``: the
checkpoint (atomically) and ``metrics.json`` (atomically, ``miou`` at its top level).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .. import metrics as M
from ..configs import CheckpointMeta, DataConfig, DistillConfig, Schedule, TrainConfig
from ..errors import DataError
from ..fileio import write_json
from .checkpoint import load_model, plain_values, save_checkpoint
from .distributed import SINGLE, DistEnv, all_reduce_sum, shard
from .any_model import check_pair, load_student, load_teacher
from .models import FeatureTaps, build_model, check_input_size, default_taps
from .task import SegDistillTask, SegTrainTask
from .trainer import seed_everything, train

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
        ignore_index=info.ignore_index,
        input_hw=data.resize,
        role=role,
        dataset=data.spec,
        extra=extra,
        class_colors=getattr(info, "colors", None),
    )


def _full_metrics(model, eval_set, info, train_cfg: TrainConfig, reference=None) -> dict:
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
    seed_everything(train_cfg.seed)  # the weights' initialisation is part of the run's seed
    train_set, eval_set = data.train_set(), data.eval_set()
    info = train_set.info
    model = build_model(model_name, info.num_classes, pretrained=pretrained)
    check_input_size(model, model_name, _input_hw(data, eval_set[0][0]))
    iters = schedule.resolve(len(train_set), train_cfg.batch_size)
    cfg = replace(train_cfg, iters=iters)
    ckpt = Path(out) / "teacher.pt"
    meta = _meta(model_name, info, data, "teacher", {"pretrained": pretrained})
    result = train(
        SegTrainTask(model, ignore_index=info.ignore_index),
        train_set,
        cfg,
        evaluate=_miou_only(model, eval_set, info, cfg, env),
        save_best=lambda it, score: save_checkpoint(ckpt, model, meta),
        description=f"teacher {model_name}",
        progress=progress,
        state_path=Path(out) / STATE_FILE,
        resume=resume,
        fingerprint={
            "command": "train-teacher",
            "model": model_name,
            "data": plain_values(data),
            "pretrained": pretrained,
        },
        env=env,
    )
    if not env.is_main:
        return StepOutput(ckpt)
    best, _ = load_model(ckpt)
    metrics = _full_metrics(best, eval_set, info, cfg)
    hw = _input_hw(data, eval_set[0][0])
    payload = {
        **metrics,
        "model": model_name,
        "role": "teacher",
        "class_names": list(info.class_names),
        "cost": M.model_cost(best, (1, 3, *hw)),
        "train": _train_summary(result, cfg),
        "train_precision": result.precision,
        "data": asdict(data),
    }
    write_json(Path(out) / "metrics.json", payload)
    return StepOutput(ckpt, payload)


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
    TorchScript or .pt2 file) or ``teacher_factory`` with ``teacher_weights`` (distill/any_model.py)."""
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
    meta = _meta(student_name, info, data, "student", extra)
    result = train(
        task,
        train_set,
        cfg,
        evaluate=_miou_only(student, eval_set, info, cfg, env),
        save_best=lambda it, score: save_checkpoint(ckpt, student, meta),
        description=f"{student_name} kd={dcfg.kd}",
        progress=progress,
        state_path=Path(out) / STATE_FILE,
        resume=resume,
        fingerprint={
            "command": "distill",
            "student": student_name,
            "teacher": teacher_name,
            "distill": plain_values(dcfg),
            "data": plain_values(data),
            "taps": [s_taps, t_taps],
        },
        env=env,
    )
    if not env.is_main:
        return StepOutput(ckpt)
    best = _reload_student(ckpt, s)
    teacher = task.teacher.model
    metrics = _full_metrics(best, eval_set, info, cfg, reference=teacher)
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
        "train": _train_summary(result, cfg),
        # What the training steps ran in (fp32, bf16 or fp16 autocast) and why; evaluation always runs in fp32.
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
    eval_set = data.eval_set()
    info = eval_set.info
    model, meta = load_model(ckpt, expect_classes=info.num_classes)
    hw = _input_hw(data, eval_set[0][0])
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


def _train_summary(result, cfg: TrainConfig) -> dict:
    steps = result.iterations - result.resumed_from
    train_seconds = result.seconds - result.eval_seconds
    return {
        "iterations": result.iterations,
        "resumed_from": result.resumed_from,
        "best_iteration": result.best_iteration,
        "best_val_miou": result.best_score,
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
