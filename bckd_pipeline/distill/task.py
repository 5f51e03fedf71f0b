"""Training tasks: a model on its own, and a student distilled from a frozen teacher.

A task is an ``nn.Module`` whose forward returns a loss dict (timm's task convention):
``{"loss": total, "loss/ce": ..., "loss/kd": ..., ..., "logits": student logits}``. The trainer
sums nothing itself; it backpropagates ``loss`` and logs every ``loss/*`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, unknown_name
from .bckd import BCKD, BCKDConfig
from .losses import cwd_loss, decay_factor, kd_loss
from .models import FeatureTaps, logits_of

KD_CHOICES = ("none", "kd", "cwd", "bckd", "kd+bckd", "cwd+bckd")


@dataclass(frozen=True)
class DistillConfig:
    """Which distillation terms, and their weights. ``kd`` is one of :data:`KD_CHOICES`.

    Logit KD: T = 1, weight 1 (the common segmentation setting). CWD: T = 1, weight 3
    (MMRazor's PSPNet logits config). BCKD: see :class:`BCKDConfig`.
    """

    kd: str = "bckd"
    kd_temperature: float = 1.0
    kd_weight: float = 1.0
    cwd_temperature: float = 1.0
    cwd_weight: float = 3.0
    bckd: BCKDConfig = field(default_factory=BCKDConfig)

    def __post_init__(self):
        if self.kd not in KD_CHOICES:
            raise unknown_name("--kd method", self.kd, KD_CHOICES, "Pick one of them, e.g. --kd bckd.")

    @property
    def terms(self) -> set[str]:
        return set() if self.kd == "none" else set(self.kd.split("+"))


@dataclass(frozen=True)
class StepInfo:
    """Where training is: what Eq. (7)'s gamma needs."""

    iteration: int
    max_iters: int
    batch_size: int
    dataset_size: int


def _upsample_to(logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if logits.shape[-2:] == hw:
        return logits
    return F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)


class SegTrainTask(nn.Module):
    """Plain supervised training (teachers, and the undistilled student baseline)."""

    def __init__(self, model: nn.Module, *, ignore_index: int = 255):
        super().__init__()
        self.model = model
        self.ignore_index = ignore_index

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules whose state a resumed run needs (attribute name -> module)."""
        return {"model": self.model}

    def forward(self, images: torch.Tensor, masks: torch.Tensor, step: StepInfo | None = None) -> dict:
        logits = _upsample_to(logits_of(self.model(images)), masks.shape[-2:])
        ce = F.cross_entropy(logits, masks, ignore_index=self.ignore_index)
        return {"loss": ce, "loss/ce": ce.detach(), "logits": logits}


class Teacher(nn.Module):
    """A frozen teacher: eval mode forever, no gradients, features tapped by module name."""

    def __init__(self, model: nn.Module, taps: list[str] | None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.taps = FeatureTaps(model, taps) if taps else None

    def train(self, mode: bool = True) -> Teacher:
        # The teacher's BatchNorm statistics must not move while the student trains.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits = logits_of(self.model(images))
        feats = self.taps.collect(images.shape[-2:]) if self.taps else []
        return logits, feats


class SegDistillTask(nn.Module):
    """Student + frozen teacher + distillation terms: Eq. (6)/(8) of BCKD, or a baseline.

    ``L = L_task + w_kd L_KD + w_cwd L_cwd + gamma(e) (alpha L_b + beta L_c)`` where each term
    is present only if ``cfg.kd`` names it, and gamma = 1 unless ``cfg.bckd.decay``.
    ``example_input`` (N x 3 x H x W) sizes the distillation modules from the tapped features.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        cfg: DistillConfig,
        student_taps: list[str] | None = None,
        teacher_taps: list[str] | None = None,
        example_input: torch.Tensor | None = None,
        ignore_index: int = 255,
    ):
        super().__init__()
        self.cfg = cfg
        self.ignore_index = ignore_index
        self.student = student
        uses_bckd = "bckd" in cfg.terms
        if uses_bckd and (not student_taps or not teacher_taps or example_input is None):
            raise ConfigError(
                "BCKD needs feature taps on both models and an example input to size its modules. "
                "Pass student_taps=, teacher_taps= (module names) and example_input=."
            )
        self.teacher = Teacher(teacher, teacher_taps if uses_bckd else None)
        self.student_taps = FeatureTaps(student, student_taps) if uses_bckd else None
        self.bckd: BCKD | None = None
        if uses_bckd:
            s_ch, t_ch = self._probe_channels(example_input)
            self.bckd = BCKD(cfg.bckd, s_ch, t_ch)
            self.bckd.check_input(tuple(example_input.shape[-2:]))

    @torch.no_grad()
    def _probe_channels(self, example_input: torch.Tensor) -> tuple[list[int], list[int]]:
        was_training = self.student.training
        self.student.eval()
        self.student(example_input)
        s_feats = self.student_taps.collect(example_input.shape[-2:])
        self.student.train(was_training)
        _, t_feats = self.teacher(example_input)
        return [f.shape[1] for f in s_feats], [f.shape[1] for f in t_feats]

    def distill_modules(self) -> nn.Module | None:
        """The modules that exist only for distillation (not part of the saved student)."""
        return self.bckd

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules whose state a resumed run needs: the student and the distillation modules."""
        return {"student": self.student, **({"bckd": self.bckd} if self.bckd is not None else {})}

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.student.parameters() if p.requires_grad]
        if self.bckd is not None:
            params += [p for p in self.bckd.parameters() if p.requires_grad]
        return params

    def forward(self, images: torch.Tensor, masks: torch.Tensor, step: StepInfo | None = None) -> dict:
        cfg, terms = self.cfg, self.cfg.terms
        raw_logits = logits_of(self.student(images))
        s_feats = self.student_taps.collect(images.shape[-2:]) if self.student_taps else []
        t_logits, t_feats = self.teacher(images)

        logits = _upsample_to(raw_logits, masks.shape[-2:])
        ce = F.cross_entropy(logits, masks, ignore_index=self.ignore_index)
        out = {"loss/ce": ce.detach(), "logits": logits}
        total = ce
        t_aligned = _upsample_to(t_logits, raw_logits.shape[-2:]).float()
        if "kd" in terms:
            kd = kd_loss(raw_logits.float(), t_aligned, cfg.kd_temperature)
            total = total + cfg.kd_weight * kd
            out["loss/kd"] = kd.detach()
        if "cwd" in terms:
            cwd = cwd_loss(raw_logits.float(), t_aligned, cfg.cwd_temperature)
            total = total + cfg.cwd_weight * cwd
            out["loss/cwd"] = cwd.detach()
        if self.bckd is not None:
            b = cfg.bckd
            parts = self.bckd(s_feats, t_feats, raw_logits, t_logits, tuple(images.shape[-2:]))
            gamma = 1.0
            if b.decay and step is not None:
                gamma = decay_factor(
                    step.iteration,
                    step.max_iters,
                    samples_per_iter=step.batch_size,
                    dataset_size=step.dataset_size,
                    mode=b.gamma_mode,
                )
            weighted = 0.0
            if "boundary" in parts:
                weighted = weighted + b.alpha * parts["boundary"]
                out["loss/boundary"] = parts["boundary"].detach()
                out["bckd/temperature"] = parts["temperature"]
            if "context" in parts:
                weighted = weighted + b.beta * parts["context"]
                out["loss/context"] = parts["context"].detach()
            total = total + gamma * weighted
            out["bckd/gamma"] = torch.tensor(gamma)
        out["loss"] = total
        return out
