"""The detection training task: a detector on its own (teachers, and the undistilled student baseline).

Like ``task.py``'s tasks, an ``nn.Module`` whose forward returns a loss dict:
``{"loss": total, "loss/cls": ..., "loss/box": ..., "loss/ctr": ..., "det/num_pos": ..., "outputs": raw}``.
The anchor points of an input size are computed once and kept (they depend on nothing else).
"""

from __future__ import annotations

import torch
from torch import nn

from .detection import FCOSDetector, anchor_points, check_detector_input
from .detection_losses import FCOSLoss


class DetTrainTask(nn.Module):
    """Plain supervised detector training: ``L = L_cls + L_box + L_ctr`` (``detection_losses.FCOSLoss``)."""

    def __init__(self, model: FCOSDetector):
        super().__init__()
        self.model = model
        self.criterion = FCOSLoss(model.num_classes)
        self._points: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules whose state a resumed run needs (attribute name -> module)."""
        return {"model": self.model}

    def points(self, hw: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, ...]:
        """(points A x 2, strides A, levels A) of an input size, cached."""
        key = (tuple(hw), str(device))
        if key not in self._points:
            check_detector_input(tuple(hw), self.model.strides)
            self._points[key] = anchor_points(tuple(hw), self.model.strides, device=device)
        return self._points[key]

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]], step=None) -> dict:
        """``targets``: per image ``boxes`` K x 4 float xyxy pixels, ``labels`` K int64, ``iscrowd`` K bool."""
        outputs = self.model.outputs(images)
        terms = self.criterion(outputs, targets, *self.points(tuple(images.shape[-2:]), images.device))
        total = terms["cls"] + terms["box"] + terms["ctr"]
        out = {f"loss/{k}": terms[k].detach() for k in ("cls", "box", "ctr")}
        out["det/num_pos"] = terms["num_pos"]
        out["outputs"] = outputs
        out["loss"] = total
        return out
