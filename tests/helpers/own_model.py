"""A segmentation model the project does not know: a plain nn.Module exported with plain torch.onnx.export
(no bckd.* metadata, its own input and output names, dynamic axes), and the files ``deploy --onnx`` /
``deploy --model`` take. The ``models`` fixture of tests/conftest.py builds them once per test module."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from bckd_pipeline.data.demo import DEMO_CLASSES

K = len(DEMO_CLASSES)  # the smoke preset evaluates on the demo data's classes
FAST = ["--latency-runs", "5", "--warmup-s", "0", "--no-throughput"]
IMAGENET = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


class Outsider(nn.Module):
    """A segmentation net the project has never seen: stride-2 body, 1x1 head, bilinear upsampling."""

    def __init__(self, classes: int = K, labels: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.head = nn.Conv2d(8, classes, 1)
        self.labels = labels

    def forward(self, x):
        y = nn.functional.interpolate(self.head(self.body(x)), size=x.shape[-2:], mode="bilinear")
        return y.argmax(1) if self.labels else y


def export_onnx(path: Path, *, dynamic: bool, labels: bool = False, opset: int = 17, name: str = "input") -> Path:
    torch.manual_seed(0)
    axes = {name: {0: "n", 2: "h", 3: "w"}, "out": {0: "n", 1 if labels else 2: "h", 2 if labels else 3: "w"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Outsider(labels=labels).eval(),
            (torch.zeros(1, 3, 64, 64),),
            str(path),
            input_names=[name],
            output_names=["out"],
            dynamic_axes=axes if dynamic else None,
            opset_version=opset,
            dynamo=False,
        )
    return path


def build_models(folder: Path) -> dict:
    """ONNX (dynamic, static, labels), TorchScript, torch.export and state-dict files of ``Outsider`` in ``folder``,
    and a factory file that builds it."""
    torch.manual_seed(0)
    module = Outsider().eval()
    x = torch.zeros(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module, x), folder / "outsider.ts")
        torch.export.save(torch.export.export(module, (x,)), folder / "outsider.pt2")
    torch.save(module.state_dict(), folder / "outsider.pth")
    (folder / "outsider_factory.py").write_text(
        "from helpers.own_model import Outsider\n\ndef build():\n    return Outsider()\n"
    )
    return {
        "dynamic": export_onnx(folder / "dynamic.onnx", dynamic=True),
        "static": export_onnx(folder / "static.onnx", dynamic=False, name="x"),
        "labels": export_onnx(folder / "labels.onnx", dynamic=False, labels=True),
        "folder": folder,
    }


def onnx_flags(models: dict) -> list:
    """``deploy`` flags for the static ONNX of ``models``, normalised with ImageNet's mean and std."""
    return ["--onnx", models["static"], "--input-scale", "normalized", *IMAGENET]
