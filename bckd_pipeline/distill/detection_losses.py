"""FCOS target assignment and losses (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection",
ICCV 2019), with torchvision's ops: ``sigmoid_focal_loss``, ``generalized_box_iou_loss`` and BCE.

Assignment follows torchvision's ``FCOS.compute_loss`` (its published settings): anchor point p of stride s is
positive for a ground-truth box B when

- p lies inside B (all four distances l*, t*, r*, b* of FCOS Eq. (1) are > 0),
- p lies within the centre region: ``max(|p_x - c_x|, |p_y - c_y|) < 1.5 s`` (centre sampling, radius 1.5),
- ``m_{l-1} < max(l*, t*, r*, b*) < m_l``, the level's scale range (FCOS Sec. 3.2): ``(4 s, 8 s)``, with the
  first level's lower bound 0 and the last level's upper bound infinite. With strides 8/16/32:
  P3 (0, 64), P4 (64, 128), P5 (128, inf);

and when several boxes qualify, the one of smallest area wins (FCOS Sec. 3.2, "ambiguous samples").
Boxes marked ``iscrowd`` are never assigned: a point inside a crowd box that no other box claims is ignored,
neither positive nor negative (left out of the classification loss), as COCO's evaluation ignores
detections matched to crowd regions.

Two distillation baselines for detectors sit beside the task losses (published settings, sources in their
docstrings): :func:`dense_score_kd`, a dense KD of the sigmoid class scores, and :class:`PKDLoss`, PKD's
Pearson-correlation imitation of the FPN maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Scale ranges as multiples of the stride (torchvision's FCOS: anchor size = stride, bounds 4x and 8x).
LOWER_FACTOR, UPPER_FACTOR = 4.0, 8.0
CENTER_SAMPLING_RADIUS = 1.5
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


def scale_ranges(strides: torch.Tensor, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point, the open interval of ``max(l*, t*, r*, b*)`` that its level regresses: ``(4 s, 8 s)``, the first
    level from 0 and the last to infinity."""
    lower = strides * LOWER_FACTOR
    upper = strides * UPPER_FACTOR
    lower = torch.where(levels == levels.min(), torch.zeros_like(lower), lower)
    upper = torch.where(levels == levels.max(), torch.full_like(upper, float("inf")), upper)
    return lower, upper


def assign_targets(
    points: torch.Tensor,
    strides: torch.Tensor,
    levels: torch.Tensor,
    boxes: torch.Tensor,
    iscrowd: torch.Tensor | None = None,
    *,
    radius: float = CENTER_SAMPLING_RADIUS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's assignment: (matched box index per point, -1 for background; ignored-point mask).

    ``points`` A x 2 (x, y), ``strides``/``levels`` A (from ``detection.anchor_points``), ``boxes`` K x 4 xyxy
    pixels, ``iscrowd`` K bool. Rules in the module docstring.
    """
    num = points.shape[0]
    matched = torch.full((num,), -1, dtype=torch.int64, device=points.device)
    ignored = torch.zeros(num, dtype=torch.bool, device=points.device)
    if boxes.numel() == 0:
        return matched, ignored
    crowd = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device) if iscrowd is None else iscrowd.bool()
    x, y = points[:, 0:1], points[:, 1:2]  # A x 1
    x0, y0, x1, y1 = boxes.float().unbind(1)  # K
    dist = torch.stack([x - x0, y - y0, x1 - x, y1 - y], 2)  # A x K x 4: l*, t*, r*, b* (FCOS Eq. (1))
    inside = dist.amin(2) > 0
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    near_center = (points[:, None, :] - centers[None]).abs().amax(2) < radius * strides[:, None]
    lower, upper = scale_ranges(strides, levels)
    reach = dist.amax(2)
    in_range = (reach > lower[:, None]) & (reach < upper[:, None])
    candidate = inside & near_center & in_range & ~crowd[None]
    area = (x1 - x0) * (y1 - y0)
    # Smallest area wins: the candidate with the largest (max area + 1 - area); non-candidates score 0.
    rank = candidate.float() * (area.max() + 1.0 - area)[None]
    best, idx = rank.max(1)
    positive = best > 0
    matched[positive] = idx[positive]
    if bool(crowd.any()):
        ignored = (inside & crowd[None]).any(1) & ~positive
    return matched, ignored


def centerness_target(ltrb: torch.Tensor) -> torch.Tensor:
    """FCOS Eq. (3): ``sqrt(min(l*, r*) / max(l*, r*) * min(t*, b*) / max(t*, b*))`` for A x 4 distances."""
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (lr.amin(1) / lr.amax(1).clamp_min(1e-6)) * (tb.amin(1) / tb.amax(1).clamp_min(1e-6))
    return ratio.clamp_min(0).sqrt()


def decode(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """Distances (l, t, r, b) from points (x, y) -> xyxy boxes: ``(x - l, y - t, x + r, y + b)``."""
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], -1)


class FCOSLoss(nn.Module):
    """``L = L_cls + L_box + L_ctr``, each summed over points and divided by the number of positives N_pos
    (over the batch, at least 1), as FCOS Eq. (2) and torchvision's FCOS:

    - ``L_cls = 1/N_pos sum_{p not ignored} sum_c FL(z_{p,c}, y_{p,c})``: sigmoid focal loss (Lin et al.,
      RetinaNet Eq. (5)) ``FL = -alpha_t (1 - p_t)^gamma log(p_t)``, alpha 0.25, gamma 2, one-hot targets
      (all zero for background), ignored points (inside crowd boxes) left out;
    - ``L_box = 1/N_pos sum_{p pos} (1 - GIoU(B_p, B*_p))`` on the decoded boxes (FCOS uses GIoU in its
      later version and in torchvision; the paper's Eq. (2) names an IoU loss);
    - ``L_ctr = 1/N_pos sum_{p pos} BCE(o_p, ctr*_p)``, the centerness logit against FCOS Eq. (3)'s target.

    ``forward(outputs, targets, points, strides, levels)``: the raw outputs (scores N x A x C, boxes N x A x 4,
    centerness N x A x 1), and per image a dict with ``boxes`` K x 4 xyxy, ``labels`` K int64 and optionally
    ``iscrowd`` K bool. Besides the three terms it returns ``num_pos`` (positives found in the batch) and
    ``keep`` (N x A bool, False at the ignored points), which the distillation terms share.
    """

    def __init__(self, num_classes: int, *, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA):
        super().__init__()
        self.num_classes = num_classes
        self.alpha, self.gamma = alpha, gamma

    def forward(
        self,
        outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        points: torch.Tensor,
        strides: torch.Tensor,
        levels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

        scores, ltrb, ctr = (o.float() for o in outputs)
        cls_target = torch.zeros_like(scores)
        keep = torch.ones(scores.shape[:2], dtype=torch.bool, device=scores.device)
        pos_pred, pos_box, pos_ctr_logit, pos_points = [], [], [], []
        for i, target in enumerate(targets):
            boxes = target["boxes"].to(points.device, torch.float32)
            labels = target["labels"].to(points.device)
            matched, ignored = assign_targets(points, strides, levels, boxes, target.get("iscrowd"))
            keep[i] = ~ignored
            pos = matched >= 0
            cls_target[i, pos, labels[matched[pos]]] = 1.0
            pos_pred.append(ltrb[i, pos])
            pos_box.append(boxes[matched[pos]])
            pos_ctr_logit.append(ctr[i, pos, 0])
            pos_points.append(points[pos])
        found = sum(len(p) for p in pos_points)
        num_pos = max(1, found)
        loss_cls = (
            sigmoid_focal_loss(scores[keep], cls_target[keep], alpha=self.alpha, gamma=self.gamma, reduction="sum")
            / num_pos
        )
        pts = torch.cat(pos_points)
        gt = torch.cat(pos_box)
        pred_boxes = decode(pts, torch.cat(pos_pred))
        if len(pts):
            loss_box = generalized_box_iou_loss(pred_boxes, gt, reduction="sum") / num_pos
            gt_ltrb = torch.cat([pts - gt[:, :2], gt[:, 2:] - pts], 1)
            loss_ctr = (
                F.binary_cross_entropy_with_logits(
                    torch.cat(pos_ctr_logit), centerness_target(gt_ltrb), reduction="sum"
                )
                / num_pos
            )
        else:  # no positive: zero terms that still reach the outputs, so every parameter gets a gradient
            loss_box = ltrb.sum() * 0.0
            loss_ctr = ctr.sum() * 0.0
        return {
            "cls": loss_cls,
            "box": loss_box,
            "ctr": loss_ctr,
            "num_pos": torch.tensor(float(found)),
            "keep": keep,
        }


# Dense score-map KD: CrossKD's KDQualityFocalLoss (Wang et al., "CrossKD: Cross-Head Knowledge Distillation for
# Object Detection", CVPR 2024), beta 1 and weight 1.0 in configs/crosskd/crosskd_r50_retinanet_r101_fpn_1x_coco.py
# (normalised by the positives, ignored anchors left out); no temperature.
DENSE_KD_BETA = 1.0
DENSE_KD_WEIGHT = 1.0
# PKD: MMRazor's PKDLoss with loss_weight 10 in configs/distill/mmdet/pkd/pkd_fpn_retina_x101_retina_r50_2x_coco.py,
# which the FCOS-teacher (pkd_fpn_fcos_x101_retina_r50_1x_coco.py) and RepPoints configs inherit (the Faster R-CNN
# and Mask R-CNN-Swin-teacher configs use 6); resize_stu=True (its default).
PKD_WEIGHT = 10.0
PKD_EPS = 1e-6


def dense_score_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    num_pos: float,
    keep: torch.Tensor | None = None,
    *,
    beta: float = DENSE_KD_BETA,
) -> torch.Tensor:
    """Dense KD of the class-score maps, every anchor point and class (sigmoid scores, teacher -> student):

    ``L_kd = 1/N_pos sum_{p kept} sum_c |sigma(s_{p,c}) - t_{p,c}|^beta BCE(sigma(s_{p,c}), t_{p,c})``,
    ``t = sigma(z^T)``,

    the quality focal loss of GFL (Li et al., NeurIPS 2020) with the teacher's scores as soft targets:
    CrossKD's ``KDQualityFocalLoss`` (beta 1, weight 1.0, normalised by the number of positives, ignored
    anchors left out, in its RetinaNet configuration ``crosskd_r50_retinanet_r101_fpn_1x_coco.py``). CrossKD
    applies it to a student head run through the teacher's last layers; here it reads the student's own scores,
    the plain prediction-mimicking baseline. No temperature: the scores are the sigmoid of the logits (T = 1).
    Zero when the student's scores equal the teacher's.

    ``student_logits``/``teacher_logits`` N x A x C, ``num_pos`` the batch's positives (at least 1 is used),
    ``keep`` N x A bool (False at ignored points), or None for all points.
    """
    s = student_logits.float()
    target = teacher_logits.detach().float().sigmoid()
    loss = F.binary_cross_entropy_with_logits(s, target, reduction="none")
    loss = loss * (s.sigmoid() - target).abs().pow(beta)
    if keep is not None:
        loss = loss[keep]
    return loss.sum() / max(1.0, float(num_pos))


def _standardise(feat: torch.Tensor, eps: float = PKD_EPS) -> torch.Tensor:
    """Each channel of N x C x H x W to zero mean and unit (unbiased) standard deviation over N, H, W."""
    flat = feat.transpose(0, 1).reshape(feat.shape[1], -1)
    flat = (flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + eps)
    return flat.reshape(feat.shape[1], feat.shape[0], *feat.shape[2:]).transpose(0, 1)


def pkd_loss(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
    """PKD (Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson Correlation
    Coefficient", NeurIPS 2022): the FPN maps imitated after standardising each channel, summed over levels:

    ``L_pkd = sum_l 1/(2 N C H W) sum (s^_l - t^_l)^2``, ``x^ = (x - mu_c) / (sigma_c + 1e-6)``

    with mu_c and sigma_c (unbiased) the mean and standard deviation of channel c over the batch and the
    positions, as MMRazor's ``PKDLoss.norm`` computes them. Per channel it equals ``(M - 1)/M (1 - r_c)`` up to
    the 1e-6, with r_c Pearson's correlation of the student's and teacher's channel over its M = N H W values:
    the loss compares the maps' pattern, not their magnitude. A student map of another
    size is resized (bilinear) to the teacher's (MMRazor's ``resize_stu=True``). Zero when the maps are equal.
    The teacher's maps are read detached. Channels must match (:class:`PKDLoss` adapts them).

    MMRazor's configs apply one such term, weight 10 each, to each of the first four neck outputs
    (``data_idx`` 0-3: P3-P6 of RetinaNet's P3-P7); the detectors here have P3-P5, and all three are distilled.
    """
    if len(student_feats) != len(teacher_feats):
        raise ValueError(
            f"PKD needs one teacher map per student map; got {len(student_feats)} and {len(teacher_feats)}"
        )
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_feats, teacher_feats, strict=True):
        s, t = s.float(), t.detach().float()
        if s.shape[-2:] != t.shape[-2:]:
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        if s.shape != t.shape:
            raise ValueError(f"PKD compares maps of one shape; got student {tuple(s.shape)}, teacher {tuple(t.shape)}")
        total = total + F.mse_loss(_standardise(s), _standardise(t)) / 2
    return total


class PKDLoss(nn.Module):
    """:func:`pkd_loss` on the FPN levels, with a 1x1 convolution per level mapping the student's channels to the
    teacher's where they differ (an identity where they agree). The published configurations pair FPNs of one
    width (256 channels), where no adapter is needed; a narrower student FPN needs one, and a 1x1 convolution
    trained with the student is the common adapter of feature distillation (FitNets' regressor, MMRazor's
    connectors). ``forward(student_feats, teacher_feats)`` takes the P3-P5 maps of each detector."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int]):
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(
                f"PKD needs as many student levels as teacher levels; got {student_channels} and {teacher_channels}"
            )
        self.adapters = nn.ModuleList(
            nn.Identity() if cs == ct else nn.Conv2d(cs, ct, 1)
            for cs, ct in zip(student_channels, teacher_channels, strict=True)
        )

    def forward(self, student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
        adapted = [a(f) for a, f in zip(self.adapters, student_feats, strict=True)]
        return pkd_loss(adapted, teacher_feats)
