"""The export wrapper: what every runtime sees, built around the trained student without touching it.

``SegExportWrapper`` should not be called directly in training code; it exists for export and for the
PyTorch reference runtime, so that ONNX, ONNX Runtime, OpenVINO and TensorRT all get identical I/O:

- input ``image``: float32, N x 3 x H x W, RGB in 0..255 when normalisation is baked in (the default),
  or already normalised when ``normalize`` is None;
- output ``logits`` (float32, N x C x H x W) or, with ``head="argmax"``, ``labels`` (uint8, N x H x W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..data.base import Normalization
from ..distill.models import padded_logits
from ..errors import ConfigError

Head = Literal["logits", "argmax"]
HEADS = ("logits", "argmax")
INPUT_NAME = "image"
OUTPUT_NAMES = {"logits": "logits", "argmax": "labels"}
DYNAMIC_AXES = ("batch", "height", "width")


@dataclass(frozen=True)
class ExportSpec:
    """Everything that decides the exported graph; it is also part of the export cache key."""

    input_hw: tuple[int, int]
    batch: int = 1
    opset: int = 17
    head: Head = "logits"
    bake_normalization: bool = True
    dynamic: tuple[str, ...] = ()  # any of DYNAMIC_AXES

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"--head {self.head!r} is not allowed. Allowed: {', '.join(HEADS)}.")
        bad = [a for a in self.dynamic if a not in DYNAMIC_AXES]
        if bad:
            raise ConfigError(
                f"--dynamic {','.join(bad)} is not allowed. Allowed: {', '.join(DYNAMIC_AXES)} "
                "(comma-separated); leave it out for the static shape edge targets want."
            )
        if self.opset < 13:  # per-channel Q/DQ; pipeline.deploy_plan asks the target's opset (17) of exports
            raise ConfigError(f"--opset {self.opset} is too old; use 17 or newer.")
        if self.batch < 1 or min(self.input_hw) < 1:
            raise ConfigError(f"Export shape must be positive, got batch={self.batch} input_hw={self.input_hw}.")

    @property
    def output_name(self) -> str:
        return OUTPUT_NAMES[self.head]

    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, *self.input_hw)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        dims = {"batch": 0, "height": 2, "width": 3}
        inp = {dims[a]: a for a in self.dynamic}
        out = {dims[a] if a == "batch" or self.head == "logits" else dims[a] - 1: a for a in self.dynamic}
        return {INPUT_NAME: inp, self.output_name: out} if inp else {}


class SegExportWrapper(nn.Module):
    """Normalisation (optional) + the student + argmax (optional). Only for export and reference runs."""

    def __init__(self, student: nn.Module, *, normalize: Normalization | None, head: Head = "logits") -> None:
        super().__init__()
        self.student = student.eval()
        self.head = head
        self.normalize = normalize is not None
        mean = torch.tensor(normalize.mean if normalize else (0.0, 0.0, 0.0)) * 255.0
        std = torch.tensor(normalize.std if normalize else (1.0, 1.0, 1.0)) * 255.0
        # Multiply by 1/std rather than divide: one Mul that quantizers and compilers fold cleanly.
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", (1.0 / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - self.mean) * self.inv_std if self.normalize else image
        # Pads bottom/right to the encoder's stride and crops back, as evaluation does; with a static
        # shape the pad amounts are constants in the graph.
        logits = padded_logits(self.student, x)
        if self.head == "argmax":
            return logits.argmax(1).to(torch.uint8)
        return logits
