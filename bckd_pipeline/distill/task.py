"""Training tasks: a model on its own, and a student distilled from a frozen teacher.

A task is an ``nn.Module`` whose forward returns a loss dict (timm's task convention):
``{"loss": total, "loss/ce": ..., "loss/kd": ..., ..., "logits": student logits}``. The trainer
sums nothing itself; it backpropagates ``loss`` and logs every ``loss/*`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import DistillConfig
from ..data.base import PAD_LABEL
from ..errors import ConfigError
from ..inference import logits_of
from .bckd import BCKD, grid_validity
from .losses import cwd_loss, decay_factor, kd_loss
from .models import FeatureTaps, native_logits_tap

@dataclass(frozen=True)
class StepInfo:
    """Where training is: what Eq. (7)'s gamma needs, and whether to measure gradient norms."""

    iteration: int
    max_iters: int
    batch_size: int
    dataset_size: int
    measure_grads: bool = False


def bckd_gamma(decay: bool, mode: str, step: StepInfo | None) -> float:
    """Eq. (7)'s decay of BCKD's terms at ``step`` (1 without decay, or outside training)."""
    if not decay or step is None:
        return 1.0
    return decay_factor(
        step.iteration, step.max_iters, samples_per_iter=step.batch_size, dataset_size=step.dataset_size, mode=mode
    )


def split_padding(masks: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Masks with :data:`PAD_LABEL` for padded pixels -> (masks with those pixels ignored, validity
    N x 1 x H x W), or (masks, None) when the batch has no padding marked."""
    pad = masks == PAD_LABEL
    if not bool(pad.any()):
        return masks, None
    return masks.masked_fill(pad, ignore_index), ~pad[:, None]


def _valid_at(valid: torch.Tensor | None, hw: tuple[int, int]) -> torch.Tensor | None:
    return None if valid is None else grid_validity(valid, tuple(hw))


def _grad_norm(term: torch.Tensor, anchor: torch.Tensor) -> float:
    (grad,) = torch.autograd.grad(term, anchor, retain_graph=True, allow_unused=True)
    return 0.0 if grad is None else float(grad.float().norm())


def _all_ranks_mean(values: list[float]) -> list[float]:
    """The mean over torchrun ranks (identity in one process), so every rank derives the same weights."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


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
        masks, _ = split_padding(masks, self.ignore_index)
        logits = _upsample_to(logits_of(self.model(images)), masks.shape[-2:])
        ce = F.cross_entropy(logits, masks, ignore_index=self.ignore_index)
        return {"loss": ce, "loss/ce": ce.detach(), "logits": logits}


class Teacher(nn.Module):
    """A frozen teacher: eval mode forever, no gradients, features tapped by module name."""

    def __init__(self, model: nn.Module, taps: list[str] | None):
        super().__init__()
        self.model = model.eval()
        for p in model.parameters():  # per tensor: a TorchScript module has no requires_grad_()
            p.requires_grad_(False)
        self.taps = FeatureTaps(model, taps) if taps else None

    def train(self, mode: bool = True) -> Teacher:
        # The teacher's BatchNorm statistics must not move while the student trains.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits = logits_of(self.model(images))
        feats = self.taps.collect(images.shape[-2:]) if self.taps else []
        return logits, feats


class StudentAndBCKD(nn.Module):
    """What a distillation task trains: its ``student`` and, when BCKD is on, the ``bckd`` module (its
    projections); the frozen teacher is neither saved with a resumed run nor optimised."""

    student: nn.Module
    bckd: BCKD | None

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules whose state a resumed run needs: the student and the distillation modules."""
        return {"student": self.student, **({"bckd": self.bckd} if self.bckd is not None else {})}

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.student.parameters() if p.requires_grad]
        if self.bckd is not None:
            params += [p for p in self.bckd.parameters() if p.requires_grad]
        return params


class SegDistillTask(StudentAndBCKD):
    """Student + frozen teacher + distillation terms: Eq. (6)/(8) of BCKD, or a baseline.

    ``L = L_task + w_kd L_KD + w_cwd L_cwd + gamma(e) (alpha L_b + beta L_c)`` where each term
    is present only if ``cfg.kd`` names it, and gamma = 1 unless ``cfg.bckd.decay``.
    ``example_input`` (N x 3 x H x W) sizes the distillation modules from the tapped features.

    Padded pixels (:data:`PAD_LABEL` in ``masks``) are left out of every term. When
    ``step.measure_grads`` is set, the output also holds ``grad/<term>``: the norm of each weighted
    term's gradient at the student's deepest tapped stage, the last tensor every term reaches.
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
        # Tapped for every method when names are given: the deepest stage anchors the gradient-norm log.
        self.student_taps = FeatureTaps(student, student_taps) if student_taps else None
        self.logit_taps: tuple[FeatureTaps, FeatureTaps] | None = None
        if "cwd" in cfg.terms:
            names = native_logits_tap(student), native_logits_tap(teacher)
            if all(names):
                self.logit_taps = FeatureTaps(student, [names[0]]), FeatureTaps(teacher, [names[1]])
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

    def forward(self, images: torch.Tensor, masks: torch.Tensor, step: StepInfo | None = None) -> dict:
        cfg, terms = self.cfg, self.cfg.terms
        masks, valid = split_padding(masks, self.ignore_index)
        raw_logits = logits_of(self.student(images))
        s_feats = self.student_taps.collect(images.shape[-2:]) if self.student_taps else []
        t_logits, t_feats = self.teacher(images)

        logits = _upsample_to(raw_logits, masks.shape[-2:])
        ce = F.cross_entropy(logits, masks, ignore_index=self.ignore_index)
        out = {"logits": logits}
        # name -> (unweighted term, its weight in the total)
        parts: dict[str, tuple[torch.Tensor, float | torch.Tensor]] = {"ce": (ce, 1.0)}
        t_aligned = _upsample_to(t_logits, raw_logits.shape[-2:]).float()
        t_probs = self._shared_teacher_probs(t_logits, t_aligned)
        if "kd" in terms:
            kd = kd_loss(
                raw_logits.float(),
                t_aligned,
                cfg.kd_temperature,
                valid=_valid_at(valid, raw_logits.shape[-2:]),
                teacher_probs=t_probs,
            )
            parts["kd"] = (kd, cfg.kd_weight)
        if "cwd" in terms:
            parts["cwd"] = (self._cwd(raw_logits, t_aligned, valid, tuple(images.shape[-2:])), cfg.cwd_weight)
        if self.bckd is not None:
            b = cfg.bckd
            terms_b = self.bckd(
                s_feats, t_feats, raw_logits, t_logits, tuple(images.shape[-2:]), valid, teacher_probs=t_probs
            )
            gamma = bckd_gamma(b.decay, b.gamma_mode, step)
            if self.training and self.bckd.balancing and s_feats:
                self._balance(ce, terms_b, s_feats[-1])
            alpha, beta = self.bckd.term_weights.tolist()
            if "boundary" in terms_b:
                parts["boundary"] = (terms_b["boundary"], gamma * alpha)
                out["bckd/temperature"] = terms_b["temperature"]
            if "context" in terms_b:
                parts["context"] = (terms_b["context"], gamma * beta)
            out["bckd/gamma"] = torch.tensor(gamma)
            out["bckd/alpha"], out["bckd/beta"] = torch.tensor(alpha), torch.tensor(beta)
        total = sum(weight * term for term, weight in parts.values())
        out.update({f"loss/{name}": term.detach() for name, (term, _) in parts.items()})
        if step is not None and step.measure_grads and self.training and s_feats and s_feats[-1].requires_grad:
            for name, (term, weight) in parts.items():
                out[f"grad/{name}"] = torch.tensor(float(weight) * _grad_norm(term, s_feats[-1]))
        out["loss"] = total
        return out

    def _shared_teacher_probs(self, t_logits: torch.Tensor, t_aligned: torch.Tensor) -> torch.Tensor | None:
        """The teacher's class probabilities, once, when logit KD (at T = 1) and BCKD's semantic boundary both
        read them at the same size (one softmax over the full-size logits fewer per step); else None."""
        if not ("kd" in self.cfg.terms and self.cfg.kd_temperature == 1.0 and t_aligned.shape == t_logits.shape):
            return None
        if self.bckd is None or not self.bckd.reads_teacher_probs:
            return None
        return t_aligned.softmax(1)

    def _cwd(
        self, raw_logits: torch.Tensor, t_aligned: torch.Tensor, valid: torch.Tensor | None, hw: tuple[int, int]
    ) -> torch.Tensor:
        """CWD on the head's logits at their native stride (as published); the model's output logits
        when the head's last conv cannot be found (a custom module)."""
        if self.logit_taps is None:
            s_native, t_native = raw_logits.float(), t_aligned
        else:
            s_native = self.logit_taps[0].collect(hw)[0].float()
            # Teacher and student heads may sit at different strides (PSPNet 8, DeepLabV3+ 4).
            t_native = _upsample_to(self.logit_taps[1].collect(hw)[0].float(), s_native.shape[-2:])
        return cwd_loss(s_native, t_native, self.cfg.cwd_temperature, valid=_valid_at(valid, s_native.shape[-2:]))

    def _balance(self, ce: torch.Tensor, terms_b: dict[str, torch.Tensor], anchor: torch.Tensor) -> None:
        """balance="grad": measure |g| of CE and of each unweighted BCKD term at ``anchor``."""
        if not anchor.requires_grad:
            return
        names = [n for n in ("boundary", "context") if n in terms_b]
        norms = _all_ranks_mean([_grad_norm(ce, anchor)] + [_grad_norm(terms_b[n], anchor) for n in names])
        found = dict(zip(names, norms[1:], strict=True))
        self.bckd.observe_gradients(norms[0], found.get("boundary"), found.get("context"))
