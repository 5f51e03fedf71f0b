"""A real torchvision segmentation model as a user brings it: torchvision's LR-ASPP MobileNetV3-Large with 21
classes (random weights: nothing is downloaded), exported to ONNX by the user, deployed from a folder of plain
images to ONNX Runtime, OpenVINO and a TensorRT target with label-free parity, gated in one call, run by
`predict` without class names, and distilling a preset student with BCKD through named taps as a teacher given
by factory."""

from __future__ import annotations

import json
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import SMOKE, run_cli
from PIL import Image

from bckd_pipeline.data.demo import DEMO_CLASSES

pytestmark = pytest.mark.slow

IMAGENET = ["--input-scale", "normalized", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]
FAST = ["--latency-runs", "3", "--warmup-runs", "1", "--warmup-s", "0", "--no-throughput"]
# The user's factory module: torchvision's model as torchvision builds it, returning {"out": logits}.
FACTORY = textwrap.dedent(
    """
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large


    def build():
        return lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=CLASSES)
    """
)


class _Out(torch.nn.Module):
    """What a user exports: the model's "out" logits (torchvision returns a dict)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    root = tmp_path_factory.mktemp("tv")
    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21).eval()
    onnx = root / "lraspp21.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Out(model), (torch.zeros(1, 3, 64, 64),), str(onnx), input_names=["input"], output_names=["out"],
            opset_version=17, dynamo=False,
        )  # fmt: skip
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photos / f"p{i}.jpg")
    return {"onnx": onnx, "photos": photos, "root": root}


def _deploy(user, out: Path, target: str) -> list[str]:
    return [
        "deploy", *SMOKE, "--onnx", str(user["onnx"]), *IMAGENET, "--calib-data", f"images:{user['photos']}",
        "--target", target, *FAST, "--out", str(out),
    ]  # fmt: skip


def test_torchvisions_21_class_model_deploys_from_plain_images_with_label_free_parity(user, tmp_path, capsys):
    out = tmp_path / "R"
    rc, _, err = run_cli(capsys, *_deploy(user, out, "onnxruntime-cpu,openvino-cpu"))
    assert rc in (0, 1), err  # 1: a stage missed its parity criteria on two random-weight images, still reported
    for key in ("onnxruntime-cpu", "openvino-cpu"):
        report = json.loads((out / f"report.{key}.json").read_text())
        assert report["parity_labels"] == "reference" and report["class_names"][-1] == "class_20"
        rows = {r["name"]: r for r in report["stages"]}
        assert rows["onnx"]["miou"] == pytest.approx(100.0)
        assert "Label-free parity" in (out / f"report.{key}.html").read_text()
    for combined in ("report.md", "report.html"):  # the run folder's view over both targets says it too
        assert "Label-free parity" in (out / combined).read_text()
    budgets = tmp_path / "b.toml"
    budgets.write_text("[onnxruntime-cpu]\nmax_miou_drop_vs_reference = 100\n[openvino-cpu]\n")
    rc, stdout, err = run_cli(capsys, "gate", out, "--budgets", budgets)
    assert rc in (0, 1), stdout + err
    assert "max_miou_drop_vs_reference 100" in stdout and "openvino-cpu" in stdout
    # predict on the user's ONNX: 21 classes named class_0..class_20, no --classes needed
    rc, _, err = run_cli(capsys, "predict", user["photos"], "--model", user["onnx"], "--out", tmp_path / "P",
                         *IMAGENET[2:], "--no-progress")  # fmt: skip
    assert rc == 0, err
    assert "class_20" in (tmp_path / "P/predictions.json").read_text()


def test_torchvisions_model_goes_to_a_tensorrt_target_from_plain_images(user, tmp_path, capsys):
    out = tmp_path / "J"
    rc, _, err = run_cli(capsys, *_deploy(user, out, "jetson"))
    assert rc == 3, err  # the Q/DQ ONNX and the device bundle are made; the engine is pending (no TensorRT here)
    report = json.loads((out / "report.json").read_text())
    assert report["parity_labels"] == "reference"
    assert (out / "deploy/model.qdq.onnx").is_file() and (out / "deploy/tensorrt/bundle/job.json").is_file()


def test_torchvisions_model_is_a_teacher_by_factory_with_named_taps(user, tmp_path, capsys, monkeypatch):
    (tmp_path / "tvfactory.py").write_text(FACTORY.replace("CLASSES", str(len(DEMO_CLASSES))))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tvfactory", None)
    import tvfactory

    torch.manual_seed(0)
    weights = tmp_path / "lraspp.pth"
    torch.save(tvfactory.build().state_dict(), weights)
    rc, stdout, err = run_cli(capsys, "taps", "--model-factory", "tvfactory:build", "--input-size", "64,64")
    assert rc == 0, err
    assert "backbone.4" in stdout and "backbone.16" in stdout
    out = tmp_path / "S"
    rc, _, err = run_cli(
        capsys, "distill", *SMOKE, "--teacher-factory", "tvfactory:build", "--teacher-weights", weights,
        "--teacher-taps", "backbone.2,backbone.4,backbone.7,backbone.16", "--kd", "kd+bckd", "--iters", "2",
        "--out", out,
    )  # fmt: skip
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher_model"] == "tvfactory:build" and metrics["teacher_kind"] == "factory"
    sys.modules.pop("tvfactory", None)
