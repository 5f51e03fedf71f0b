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
    ``iscrowd`` K bool.
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
        return {"cls": loss_cls, "box": loss_box, "ctr": loss_ctr, "num_pos": torch.tensor(float(found))}
