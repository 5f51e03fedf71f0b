"""The short fine-tune of the fake-quantized student: cross-entropy alone, or against the frozen teacher.

With teacher terms (``--qat-kd``) the loss is the distillation task of stage 1 (``distill/task.py::SegDistillTask``,
not a copy): ``L = CE + w_kd KL(T_s || T_t) + gamma (alpha L_b + beta L_c)`` on the *quantized* student's logits
and tapped features, the teacher frozen (eval mode, no gradients); with ``none`` it is ``SegTrainTask``'s CE and
no teacher runs. The student is the export wrapper (normalisation + student), so the fake quantizers sit where
the exported graph quantizes, and the teacher is wrapped the same way (both read the 0..255 feeds of the
calibration images' preprocessing).

Defaults: 300 iterations of Adam at lr 1e-5, batch 8; the stage passes ``none`` unless ``--qat-kd`` says
otherwise (docs/decisions.md, "QAT: off by default, cross-entropy alone"). NNCF's QAT guide ("Quantization-aware
Training (QAT) with PyTorch", docs.openvino.ai) fine-tunes "for a few epochs with a small learning rate, for
example, 1e-5"; here a few hundred steps keep the stage short on a CPU. The quantizers' scales are NNCF
parameters and train with the weights. BatchNorm stays in eval mode: its running statistics are what the
exported graph folds, and a few hundred small batches would only add noise to them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..configs import DistillConfig


@dataclass(frozen=True)
class QatSchedule:
    iters: int = 300
    lr: float = 1e-5
    batch_size: int = 8
    seed: int = 0
    # The distillation terms and their settings (distill/task.py); None: DistillConfig() (kd+bckd). `run` passes
    # the run's own (--kd, --bckd), so the quantized student is fine-tuned with the losses that distilled it.
    distill: DistillConfig | None = None

    @property
    def kd(self) -> str:
        return "kd+bckd" if self.distill is None else self.distill.kd

    def __post_init__(self) -> None:
        if self.iters < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError(
                f"QAT schedule iters={self.iters}, batch={self.batch_size}, lr={self.lr:g}: each must be positive. "
                "Pass e.g. --qat-iters 300 --qat-lr 1e-5."
            )


def _freeze_batchnorm(model) -> None:
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def finetune(
    qstudent,
    teacher,
    images: list[np.ndarray],
    labels: list[np.ndarray],
    schedule: QatSchedule,
    *,
    student_taps: list[str] | None,
    teacher_taps: list[str] | None,
    ignore_index: int = 255,
    tick=None,  # called once per iteration (a progress bar)
) -> dict:
    """Fine-tune ``qstudent`` in place on ``images``/``labels`` (the training split); returns the cost and losses.

    ``images``: 1 x 3 x H x W float32 arrays as the graph is fed; ``labels``: H x W int64. ``teacher``: a frozen
    module of the same input (the run's teacher, or a copy of the FP32 student for self-distillation), or None when
    the schedule's terms are ``none``.
    """
    import torch

    from ..configs import DistillConfig
    from ..distill.task import StepInfo

    kd = schedule.kd
    cfg = schedule.distill or DistillConfig()
    if "bckd" in kd and not (student_taps and teacher_taps):
        raise ConfigError(
            f"QAT with --kd {kd} needs feature taps on student and teacher, and this model has none known. "
            "Use --kd kd for the QAT fine-tune of a model without preset taps."
        )
    torch.manual_seed(schedule.seed)
    taps = (student_taps, teacher_taps)
    task, kd, skipped = _task(qstudent, teacher, cfg, kd, taps=taps, hw=images[0].shape[-2:], ignore_index=ignore_index)
    task.train()
    _freeze_batchnorm(qstudent)
    optimizer = torch.optim.Adam(task.trainable_parameters(), lr=schedule.lr)
    rng = np.random.default_rng(schedule.seed)
    batch = min(schedule.batch_size, len(images))
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    start = time.perf_counter()
    for it in range(schedule.iters):
        idx = rng.choice(len(images), size=batch, replace=len(images) < batch)
        x = torch.from_numpy(np.concatenate([images[i] for i in idx]))
        y = torch.from_numpy(np.stack([labels[i] for i in idx]))
        out = task(x, y, StepInfo(it, schedule.iters, batch, len(images)))
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        losses = {k.removeprefix("loss/"): float(v.detach()) for k, v in out.items() if k.startswith("loss")}
        if it == 0:
            first = losses
        last = losses
        if tick is not None:
            tick()
    qstudent.eval()
    return {
        "iterations": schedule.iters,
        "batch_size": batch,
        "lr": schedule.lr,
        "optimizer": "Adam",
        "kd": kd,
        "bckd_left_out": skipped,
        "train_images": len(images),
        "wall_s": round(time.perf_counter() - start, 3),
        "loss_first": first,
        "loss_last": last,
    }


def _task(qstudent, teacher, cfg, kd: str, *, taps: tuple, hw: tuple[int, int], ignore_index: int):
    """The loss module of the fine-tune: cross-entropy alone, or the distillation terms against ``teacher``.

    ``taps``: the student's and the teacher's feature taps. Returns ``(task, the terms used, why BCKD was left
    out or None)``.
    """
    import torch

    student_taps, teacher_taps = taps

    from ..distill.task import SegDistillTask, SegTrainTask

    def make_task(cfg):
        if cfg.kd == "none":  # cross-entropy alone: no teacher to run
            return SegTrainTask(qstudent, ignore_index=ignore_index)
        return SegDistillTask(
            qstudent,
            teacher,
            cfg=cfg,
            student_taps=student_taps if "bckd" in cfg.kd else None,
            teacher_taps=teacher_taps if "bckd" in cfg.kd else None,
            example_input=torch.zeros(2, 3, *hw),
            ignore_index=ignore_index,
        )

    try:
        return make_task(cfg), kd, None
    except ConfigError as exc:
        if "bckd" not in kd:
            raise
        # BCKD's grid does not fit this input size (bckd.py::check_input): the deployment's size is fixed by
        # the export, so the fine-tune keeps logit KD + CE and the record says why BCKD was left out.
        kd = "kd" if "kd" in cfg.terms else "none"
        return make_task(replace(cfg, kd=kd)), kd, str(exc)
