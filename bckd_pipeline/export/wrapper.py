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
from ..tasks.segmentation import SEGMENTATION

Head = Literal["logits", "argmax"]
HEADS = SEGMENTATION.export_heads  # the task's heads; the first is the default
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


class StaticAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` for a graph of fixed input size, written as slices and means.

    The TorchScript ONNX exporter writes adaptive average pooling only when the output size divides the input
    size (as an AveragePool); PSPNet's pyramid (bins 1, 2, 3, 6) on a 12 x 16 map at a 96 x 128 input does not.
    PyTorch's bins (aten/src/ATen/native/AdaptiveAveragePooling.cpp: start = floor(i * H / oh), end =
    ceil((i + 1) * H / oh)) are constants at a fixed size, so each is a Slice and a ReduceMean: the same numbers.
    """

    def __init__(self, output_size) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])  # constants of the traced graph: the export is static
        size = self.output_size if isinstance(self.output_size, tuple) else (self.output_size, self.output_size)
        oh, ow = (h if size[0] is None else size[0]), (w if size[1] is None else size[1])
        if h % oh == 0 and w % ow == 0:
            return nn.functional.adaptive_avg_pool2d(x, (oh, ow))
        rows = []
        for i in range(oh):
            band = x[..., (i * h) // oh : -(-((i + 1) * h) // oh), :]
            cells = [band[..., (j * w) // ow : -(-((j + 1) * w) // ow)].mean((-2, -1), keepdim=True) for j in range(ow)]
            rows.append(torch.cat(cells, -1))
        return torch.cat(rows, -2)


class StaticPSPBlock(nn.Module):
    """segmentation_models_pytorch's ``PSPBlock`` (decoders/pspnet/decoder.py, smp 0.6.0) for a fixed-size export.

    Under ``torch.onnx.is_in_onnx_export()`` smp's block pools with ``F.interpolate(mode="area")``, which is
    adaptive average pooling again and fails the same way; this one pools with :class:`StaticAdaptiveAvgPool2d`
    and then runs the block's own Conv2dReLU and bilinear upsampling, as its eager forward does."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.pool = StaticAdaptiveAvgPool2d((block.pool_size, block.pool_size))
        self.conv = block.pool[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.pool(x))
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)


def _needs_static(module: nn.Module) -> bool:
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return True
    is_psp = type(module).__name__ == "PSPBlock" and hasattr(module, "pool_size")
    return is_psp and isinstance(module.pool, nn.Sequential)


def _write_static(module: nn.Module) -> None:
    """Replace, in place, every child that :func:`_needs_static` names; a replaced block is not descended into."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.AdaptiveAvgPool2d):
            setattr(module, name, StaticAdaptiveAvgPool2d(child.output_size))
        elif _needs_static(child):
            setattr(module, name, StaticPSPBlock(child))
        else:
            _write_static(child)


def for_static_export(wrapper: nn.Module) -> nn.Module:
    """A copy of ``wrapper`` with adaptive average pools (and smp's PSP blocks) written for a fixed input size
    (the model that is checked against stays the original), or ``wrapper`` itself when it has none."""
    import copy

    if not any(_needs_static(m) for m in wrapper.modules()):
        return wrapper
    patched = copy.deepcopy(wrapper)
    _write_static(patched)
    return patched
