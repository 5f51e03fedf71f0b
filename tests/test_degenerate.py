"""Degenerate predictions: a model that predicts one class everywhere, or gives the same output whatever the
image, agrees 100 % with itself and moves no mIoU. The segmentation task flags such a row in the ledger
(``degenerate``: why), report.md/html and the end of a run warn and name it, and the CI gate fails such a
deployed row unless ``[gate] allow_degenerate = true``.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from helpers.cli import OWN, run_cli
from helpers.own_model import FAST, IMAGENET, K
from helpers.ledger import CRITERIA, C, FnRuntime, H, W, fixed_stages

from bckd_pipeline.deploy.parity import LedgerStage, ledger
from bckd_pipeline.errors import ConfigError
from bckd_pipeline.gate.budgets import parse_budgets
from bckd_pipeline.gate.gate import FAIL, PASS, gate
from bckd_pipeline.ledger import REPORT_FORMAT
from bckd_pipeline.report.markdown import markdown
from bckd_pipeline.tasks.segmentation import SEGMENTATION


WHY = "predicts class 2 on every pixel of 5 images, where the labels hold 4 classes"


def _ledger(reference, candidate):
    stages, feeds = fixed_stages()  # its seeded images and labels (every class present)
    rows = [
        LedgerStage("pytorch", "torch", "fp32", FnRuntime(reference, "pytorch"), None),
        LedgerStage("onnx", "onnxruntime", "fp32", FnRuntime(candidate, "onnx"), "pytorch"),
    ]
    for s in rows:
        s.runtime.activate()
    return ledger(rows, feeds, num_classes=C, ignore_index=255, criteria=CRITERIA.get)


def _one_class(x):
    """Logits that follow the image but always put class 2 on top."""
    y = np.repeat(x[:, :1], C, axis=1) * 0.01
    y[:, 2] += 10.0
    return y.astype(np.float32)


def _constant(x):
    """The same logits (several classes) whatever the image."""
    rng = np.random.default_rng(1)
    return np.broadcast_to(rng.normal(size=(1, C, H, W)), (x.shape[0], C, H, W)).astype(np.float32)


def test_a_model_predicting_one_class_is_flagged_though_parity_passes():
    report = _ledger(_one_class, _one_class)
    row = report.stage("onnx")
    assert row.passed and row.pixel_agreement == 1.0 and row.miou_delta == 0.0  # parity alone says all is well
    for name in ("pytorch", "onnx"):
        assert report.stage(name).degenerate == WHY
    assert "degenerate" in SEGMENTATION.parity_fields and row.as_dict()["degenerate"]


def test_a_model_that_ignores_its_input_is_flagged():
    report = _ledger(_constant, _constant)
    why = report.stage("onnx").degenerate
    assert why.startswith("gives the same logits for all 5 images") and "ignores its input" in why
    labels = _ledger(_constant, lambda x: _constant(x).argmax(1).astype(np.uint8))
    assert labels.stage("onnx").degenerate.startswith("gives the same label map for all 5 images")


def test_a_real_ledger_has_no_degenerate_row():
    stages, feeds = fixed_stages()
    report = ledger(stages, feeds, num_classes=C, ignore_index=255, criteria=CRITERIA.get)
    assert [s.degenerate for s in report.stages] == [None] * len(report.stages)


# --- the report and the gate ------------------------------------------------------------------------------


def _report(tmp_path, degenerate: str | None) -> dict:
    row = {
        "name": "onnx",
        "backend": "onnxruntime",
        "precision": "fp32",
        "parent": None,
        "artifact": None,
        "status": "measured",
        "miou": 25.0,
        "miou_delta": 0.0,
        "pixel_agreement": 1.0,
        "latency_ms": dict.fromkeys(("p50", "p90", "p99", "mean")),
    }
    if degenerate is not None:
        row["degenerate"] = degenerate
    report = {"format": REPORT_FORMAT, "task": "segmentation", "target": "onnxruntime-cpu-fp32", "stages": [row]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    return report


@pytest.mark.parametrize(("allow", "status", "code"), [("", FAIL, 1), ("[gate]\nallow_degenerate = true\n", PASS, 0)])
def test_the_gate_fails_a_degenerate_deployed_row_unless_allowed(tmp_path, allow, status, code):
    _report(tmp_path, WHY)
    budgets = parse_budgets(f"{allow}[onnxruntime-cpu-fp32]\nmin_miou = 10\n", "b.toml")
    result = gate(tmp_path / "report.json", budgets)
    check = next(c for c in result.checks if c.budget == "degenerate")
    assert check.status == status and check.stage == "onnx" and WHY in check.message
    assert result.exit_code == code


def test_the_gate_checks_nothing_more_for_a_report_without_the_field(tmp_path):
    _report(tmp_path, None)  # a report written before the field existed, or a sound row
    result = gate(tmp_path / "report.json", parse_budgets("[onnxruntime-cpu-fp32]\nmin_miou = 10\n", "b.toml"))
    assert [c.budget for c in result.checks] == ["min_miou"] and result.exit_code == 0


def test_allow_degenerate_must_be_a_boolean():
    with pytest.raises(ConfigError, match="allow_degenerate = 1: expected true or false"):
        parse_budgets("[gate]\nallow_degenerate = 1\n[onnxruntime-cpu-fp32]\n", "b.toml")


class Constant(torch.nn.Module):
    """A segmentation module that ignores its input: the same class (1) on every pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.arange(K, dtype=torch.float32))

    def forward(self, x):
        return (x[:, :1] * 0 + (self.bias == 1).float()[None, :, None, None]).expand(-1, -1, x.shape[2], x.shape[3])


@pytest.mark.slow
def test_a_constant_model_deploys_with_a_warning_in_the_report_and_at_the_end(tmp_path, capsys):
    path = tmp_path / "constant.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(Constant().eval(), (torch.zeros(1, 3, 64, 64),)), path)
    out = tmp_path / "D"
    argv = ["--model", path, *IMAGENET, "--target", "onnxruntime-cpu-fp32", *FAST, "--out", out]
    rc, stdout, err = run_cli(capsys, "deploy", *OWN, *argv)
    assert rc == 0, err  # parity holds: every row agrees with the reference
    report = json.loads((out / "report.json").read_text())
    flagged = {r["name"]: r["degenerate"] for r in report["stages"] if r.get("degenerate")}
    assert list(flagged) == ["pytorch", "onnx", "onnx-simplified"]
    assert flagged["onnx-simplified"].startswith("predicts class 1 on every pixel of 32 images")
    assert "DEGENERATE: `onnx-simplified` predicts class 1" in markdown(report)
    assert "DEGENERATE: `onnx-simplified`" in (out / "report.md").read_text()
    assert "DEGENERATE: `onnx-simplified`" in (out / "report.html").read_text()
    assert "warning: DEGENERATE: `onnx-simplified` predicts class 1" in err
    budgets = tmp_path / "b.toml"
    budgets.write_text("[onnxruntime-cpu-fp32]\n")
    rc, stdout, err = run_cli(capsys, "gate", out / "report.json", "--budgets", budgets)
    assert rc == 1 and "degenerate predictions" in stdout + err
