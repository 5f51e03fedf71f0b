"""The detection training tasks: a detector on its own (teachers, the undistilled student baseline), and a
student detector distilled from a frozen teacher with BCKD, a baseline (dense score KD, PKD), or both.

Like ``task.py``'s tasks, an ``nn.Module`` whose forward returns a loss dict:
``{"loss": total, "loss/cls": ..., "loss/box": ..., "loss/ctr": ..., "det/num_pos": ..., "outputs": raw}``.
The anchor points of an input size are computed once and kept (they depend on nothing else).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..configs import DistillConfig
from ..errors import ConfigError
from .bckd import BCKD
from .detection import FCOSDetector, anchor_points, check_detector_input, dense_class_probs, detector_taps, p3_map
from .detection_losses import DENSE_KD_WEIGHT, PKD_WEIGHT, FCOSLoss, PKDLoss, dense_score_kd
from .models import FeatureTaps
from .task import StepInfo, StudentAndBCKD, Teacher, bckd_gamma
from .task_models import check_kd


@functools.lru_cache(maxsize=16)
def _points(hw: tuple[int, int], strides: tuple[int, ...], device: str) -> tuple[torch.Tensor, ...]:
    check_detector_input(hw, strides)
    return anchor_points(hw, strides, device=torch.device(device))


def points_of(hw: tuple[int, int], strides: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """(points A x 2, strides A, levels A) of an input size, computed once per size and device."""
    return _points(tuple(hw), tuple(strides), str(device))


class DetTrainTask(nn.Module):
    """Plain supervised detector training: ``L = L_cls + L_box + L_ctr`` (``detection_losses.FCOSLoss``)."""

    def __init__(self, model: FCOSDetector):
        super().__init__()
        self.model = model
        self.criterion = FCOSLoss(model.num_classes)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules whose state a resumed run needs (attribute name -> module)."""
        return {"model": self.model}

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]], step=None) -> dict:
        """``targets``: per image ``boxes`` K x 4 float xyxy pixels, ``labels`` K int64, ``iscrowd`` K bool."""
        outputs = self.model.outputs(images)
        points = points_of(tuple(images.shape[-2:]), self.model.strides, images.device)
        terms = self.criterion(outputs, targets, *points)
        total = terms["cls"] + terms["box"] + terms["ctr"]
        out = {f"loss/{k}": terms[k].detach() for k in ("cls", "box", "ctr")}
        out["det/num_pos"] = terms["num_pos"]
        out["outputs"] = outputs
        out["loss"] = total
        return out


class DetDistillTask(StudentAndBCKD):
    """A student detector distilled from a frozen teacher detector, with the terms ``kd`` names
    (one of :data:`DET_KD_CHOICES`; ``None`` reads ``cfg.kd``):

    ``L = L_cls + L_box + L_ctr + w_kd L_kd + w_pkd L_pkd + gamma(e) (alpha L_b + beta L_c)``,

    each distillation term present only when ``kd`` names it, gamma = 1 unless ``cfg.bckd.decay``.

    - ``kd``: :func:`detection_losses.dense_score_kd` on the dense class scores of every level (weight ``kd_weight``,
      CrossKD's published 1.0);
    - ``pkd``: :class:`detection_losses.PKDLoss` on the FPN maps P3-P5 (weight ``pkd_weight``, MMRazor's
      published 10);
    - ``bckd``: BCKD's boundary and context terms (Eq. (6)/(8) of the paper), the segmentation implementation
      (``bckd.BCKD``) unchanged: its features are both detectors' backbone and FPN maps
      (:func:`detection.detector_taps`), fused at its grid (stride 8); the teacher's semantic boundary comes from
      its dense class-score map at P3 (:func:`detection.dense_class_probs`), and a semantic student boundary
      (``boundary_student="semantic"``) from the student's own.

    The step dict reports each unweighted term as ``loss/<name>`` (``cls``, ``box``, ``ctr``, ``kd``, ``pkd``,
    ``boundary``, ``context``) and BCKD's ``bckd/gamma`` and ``bckd/temperature``, as the trainer logs them.
    ``example_input`` (N x 3 x H x W) sizes BCKD's modules and PKD's channel adapters. ``cfg`` gives BCKD's
    settings; its ``kd_temperature`` and ``cwd_*`` belong to segmentation's logit terms and are not read here (the
    dense score KD has no temperature); the distill stage passes ``cfg.kd_weight`` as ``kd_weight``.
    """

    def __init__(
        self,
        student: FCOSDetector,
        teacher: FCOSDetector,
        *,
        cfg: DistillConfig,
        example_input: torch.Tensor,
        kd: str | None = None,
        kd_weight: float = DENSE_KD_WEIGHT,
        pkd_weight: float = PKD_WEIGHT,
    ):
        super().__init__()
        kd = cfg.kd if kd is None else kd
        check_kd(kd, "detection")
        terms = set() if kd == "none" else set(kd.split("+"))
        if "bckd" in terms and cfg.bckd.balance != "none":
            raise ConfigError(
                f"--bckd balance={cfg.bckd.balance} is not defined for detectors; use balance=none (fixed alpha, beta)."
            )
        self.cfg = cfg
        self.kd = kd
        self.terms = terms
        self.kd_weight, self.pkd_weight = float(kd_weight), float(pkd_weight)
        self.student = student
        self.criterion = FCOSLoss(student.num_classes)
        uses_bckd = "bckd" in terms
        # BCKD reads the backbone and FPN maps, PKD the FPN maps: the last len(strides) tapped maps.
        taps = detector_taps() if uses_bckd else ["fpn"] if "pkd" in terms else None
        self.teacher = Teacher(teacher, taps)
        self.student_taps = FeatureTaps(student, taps) if taps else None
        self.bckd: BCKD | None = None
        self.pkd: PKDLoss | None = None
        if taps:
            hw = tuple(example_input.shape[-2:])
            with torch.no_grad():
                was_training = student.training
                student.eval()
                student(example_input)
                student.train(was_training)
                s_ch = [f.shape[1] for f in self.student_taps.collect(hw)]
                t_ch = [f.shape[1] for f in self.teacher(example_input)[1]]
            if uses_bckd:
                self.bckd = BCKD(cfg.bckd, s_ch, t_ch)
                self.bckd.check_input(hw)
            if "pkd" in terms:
                levels = len(student.strides)
                self.pkd = PKDLoss(s_ch[-levels:], t_ch[-levels:])

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The student, BCKD's module and PKD's channel adapters (those in use)."""
        return {**super().trainable_modules(), **({"pkd": self.pkd} if self.pkd is not None else {})}

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = super().trainable_parameters()
        if self.pkd is not None:
            params += [p for p in self.pkd.parameters() if p.requires_grad]
        return params

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]], step: StepInfo | None = None):
        hw = tuple(images.shape[-2:])
        outputs = self.student.outputs(images)
        terms = self.criterion(outputs, targets, *points_of(hw, self.student.strides, images.device))
        parts: dict[str, tuple[torch.Tensor, float]] = {k: (terms[k], 1.0) for k in ("cls", "box", "ctr")}
        out: dict = {"outputs": outputs, "det/num_pos": terms["num_pos"]}
        if not self.terms:
            return self._total(out, parts)
        s_feats = self.student_taps.collect(hw) if self.student_taps is not None else []
        t_scores, t_feats = self.teacher(images)
        if "kd" in self.terms:
            kd = dense_score_kd(outputs.scores, t_scores, float(terms["num_pos"]), terms["keep"])
            parts["kd"] = (kd, self.kd_weight)
        if self.pkd is not None:
            levels = len(self.student.strides)
            parts["pkd"] = (self.pkd(s_feats[-levels:], t_feats[-levels:]), self.pkd_weight)
        if self.bckd is not None:
            t_probs = dense_class_probs(p3_map(t_scores, hw))
            s_probs = dense_class_probs(p3_map(outputs.scores, hw))
            # BCKD reads class logits through a softmax; the log of a distribution softmaxes back to it.
            terms_b = self.bckd(
                s_feats, t_feats, s_probs.clamp_min(1e-12).log(), t_probs.log(), hw, teacher_probs=t_probs
            )
            b = self.cfg.bckd
            gamma = bckd_gamma(b.decay, b.gamma_mode, step)
            alpha, beta = self.bckd.term_weights.tolist()
            if "boundary" in terms_b:
                parts["boundary"] = (terms_b["boundary"], gamma * alpha)
                out["bckd/temperature"] = terms_b["temperature"]
            if "context" in terms_b:
                parts["context"] = (terms_b["context"], gamma * beta)
            out["bckd/gamma"] = torch.tensor(gamma)
        return self._total(out, parts)

    @staticmethod
    def _total(out: dict, parts: dict[str, tuple[torch.Tensor, float]]) -> dict:
        out.update({f"loss/{name}": term.detach() for name, (term, _) in parts.items()})
        out["loss"] = sum(weight * term for term, weight in parts.values())
        return out
