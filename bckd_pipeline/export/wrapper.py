"""The export wrapper: what every runtime sees, built around the trained student without touching it.

``SegExportWrapper`` should not be called directly in training code; it exists for export and for the
PyTorch reference runtime, so that ONNX, ONNX Runtime, OpenVINO and TensorRT all get identical I/O:

- input ``image``: float32, N x 3 x H x W, RGB in 0..255 when normalisation is baked in (the default),
  or already normalised when ``normalize`` is None;
- output ``logits`` (float32, N x C x H x W) or, with ``head="argmax"``, ``labels`` (uint8, N x H x W).

``DetExportWrapper`` does the same for a detector (``head="raw"``): the same input, and the detector's
outputs ``scores`` (N x A x C logits), ``boxes`` (N x A x 4 l, t, r, b distances in input pixels) and
``centerness`` (N x A x 1 logits); decoding and NMS stay on the host (tasks/detection.py).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.base import Normalization
from ..inference import padded_logits
from ..model_spec import Head


class _Normalize(nn.Module):
    """``(image - 255 * mean) * 1 / (255 * std)``, or nothing when ``normalize`` is None: the normalisation every
    export wrapper bakes into its graph (0..255 RGB in)."""

    def __init__(self, normalize: Normalization | None) -> None:
        super().__init__()
        self.enabled = normalize is not None
        mean = torch.tensor(normalize.mean if normalize else (0.0, 0.0, 0.0)) * 255.0
        std = torch.tensor(normalize.std if normalize else (1.0, 1.0, 1.0)) * 255.0
        # Multiply by 1/std rather than divide: one Mul that quantizers and compilers fold cleanly.
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", (1.0 / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) * self.inv_std if self.enabled else image


class DetExportWrapper(nn.Module):
    """Normalisation (optional) + the detector's raw head outputs. Only for export and reference runs."""

    def __init__(self, detector: nn.Module, *, normalize: Normalization | None, head: Head = "raw") -> None:
        super().__init__()
        if head != "raw":
            raise ValueError(f"DetExportWrapper exports the raw head only, got head={head!r}")
        self.student = detector.eval()
        self.head = head
        self.normalize = _Normalize(normalize)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores, boxes, centerness = self.student(self.normalize(image))
        return scores, boxes, centerness


def export_wrapper(model: nn.Module, *, normalize: Normalization | None, head: Head, task: str) -> nn.Module:
    """The export wrapper of ``task``'s model (segmentation: :class:`SegExportWrapper`; detection:
    :class:`DetExportWrapper`)."""
    if task == "detection":
        return DetExportWrapper(model, normalize=normalize, head=head)
    return SegExportWrapper(model, normalize=normalize, head=head)


def named_outputs(out, names: tuple[str, ...]) -> dict:
    """A wrapper's output (a tensor, or a tuple of them) as numpy arrays under the graph's output ``names``."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if len(outs) != len(names):
        raise ValueError(f"the model gave {len(outs)} outputs for the names {', '.join(names)}")
    return {n: o.detach().cpu().numpy() for n, o in zip(names, outs, strict=True)}


class SegExportWrapper(nn.Module):
    """Normalisation (optional) + the student + argmax (optional). Only for export and reference runs."""

    def __init__(self, student: nn.Module, *, normalize: Normalization | None, head: Head = "logits") -> None:
        super().__init__()
        self.student = student.eval()
        self.head = head
        self.normalize = _Normalize(normalize)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.normalize(image)
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
