"""The choices users expect: --precision fp32|fp16|int8 for the deployed artifact, --batch N (a static
batch), --int8-exclude NAME_OR_OPTYPE (ORT nodes_to_exclude / op_types_to_quantize, NNCF ignored_scope), each in
the ledger and the manifest; and the flag names (one meaning each, old spellings kept one release with a warning)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from helpers.cli import OWN, SMOKE, assert_clean_error, run_cli
from helpers.own_model import FAST, IMAGENET, onnx_flags


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_precision_fp16_on_onnxruntime(models, tmp_path, capsys):
    out = tmp_path / "D"
    rc, stdout, err = run_cli(capsys, "deploy", *OWN, *onnx_flags(models), "--precision", "fp16", *FAST, "--out", out)
    assert rc == 0, err
    report = _json(out / "report.json")
    assert report["target_key"] == "onnxruntime-cpu-fp16" and report["target_profile"]["precision"] == "fp16"
    rows = {r["name"]: r for r in report["stages"]}
    assert list(rows) == ["onnx", "onnx-simplified", "onnxruntime-fp16"]
    fp16 = rows["onnxruntime-fp16"]
    assert fp16["precision"] == "fp16" and fp16["artifact"] == "deploy/onnxruntime-cpu-fp16/model.fp16.onnx"
    assert fp16["parity_passed"] and fp16["pixel_agreement"] > 0.99
    graph = onnx.load(out / fp16["artifact"]).graph
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    manifest = _json(out / "manifest.json")
    assert manifest["deployable"] == ["deploy/onnxruntime-cpu-fp16/model.fp16.onnx"]
    assert manifest["build_flags"]["profile"]["precision"] == "fp16"
    assert "deployed precision fp16" in stdout


def test_precision_fp32_on_openvino_deploys_the_fp32_ir(models, tmp_path, capsys):
    out = tmp_path / "D"
    argv = ["deploy", *OWN, *onnx_flags(models), "--target", "openvino-cpu", "--precision", "fp32", *FAST]
    rc, _, err = run_cli(capsys, *argv, "--out", out)
    assert rc == 0, err
    report = _json(out / "report.json")
    assert [r["name"] for r in report["stages"]][-1] == "openvino-fp32" and report["calibration"] is None
    assert _json(out / "manifest.json")["deployable"][0] == "deploy/openvino-cpu-fp32/fp32/model.xml"


def test_int8_exclude_keeps_an_op_type_in_float_on_onnxruntime(models, tmp_path, capsys):
    out = tmp_path / "D"
    rc, _, err = run_cli(capsys, "deploy", *OWN, *onnx_flags(models), "--int8-exclude", "Conv", *FAST, "--out", out)
    assert rc == 0, err
    report = _json(out / "report.json")
    int8 = report["stages"][-1]
    assert int8["build"]["int8_exclude"] == {"nodes": [], "op_types": ["Conv"]}
    assert report["target_profile"]["int8_exclude"] == ["Conv"]
    assert _json(out / "manifest.json")["build_flags"]["profile"]["int8_exclude"] == ["Conv"]
    graph = onnx.load(out / int8["artifact"]).graph
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    for conv in (n for n in graph.node if n.op_type == "Conv"):  # no Conv reads a dequantized tensor
        assert all(produced_by.get(i) != "DequantizeLinear" for i in conv.input), conv.name


def test_int8_exclude_by_node_name_reaches_nncf_ignored_scope(models, tmp_path, capsys):
    pytest.importorskip("nncf")
    first_conv = next(n.name for n in onnx.load(models["static"]).graph.node if n.op_type == "Conv")
    out = tmp_path / "D"
    argv = ["deploy", *OWN, *onnx_flags(models), "--target", "openvino-cpu", "--int8-exclude", first_conv, *FAST]
    rc, _, err = run_cli(capsys, *argv, "--calib-size", "4", "--out", out)
    assert rc == 0, err
    int8 = _json(out / "report.json")["stages"][-1]
    scope = int8["build"]["int8_exclude"]["ignored_scope"]
    assert int8["name"] == "openvino-int8" and scope["names"] and all(n.startswith(first_conv) for n in scope["names"])


def test_static_batch_is_exported_fed_and_counted(models, tmp_path, capsys, monkeypatch):
    folder = models["folder"]
    monkeypatch.syspath_prepend(str(folder))
    model = ["--model-factory", "outsider_factory:build", "--weights", folder / "outsider.pth", *IMAGENET]
    out = tmp_path / "D"
    argv = ["deploy", *OWN, *model, "--target", "onnxruntime-cpu-fp32", "--batch", "2", *FAST]
    rc, _, err = run_cli(capsys, *argv, "--out", out)
    assert rc == 0, err
    report = _json(out / "report.json")
    assert report["target_key"] == "onnxruntime-cpu-fp32-b2" and report["target_profile"]["batch"] == 2
    sim = onnx.load(out / "deploy/batch2/model.sim.onnx")
    assert sim.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    row = report["stages"][-1]
    assert row["parity_passed"] and row["latency"]["batch"] == 2
    assert row["fps"] == pytest.approx(2 * 1000 / row["latency_ms"]["mean"])
    assert _json(out / "manifest.json")["input"]["shape"][0] == 2


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--precision", "fp8"], "--precision 'fp8' is not a precision of the deployed artifact. Allowed: fp32"),
        (["--target", "jetson", "--precision", "fp16"], "TensorRT targets deploy an INT8 engine"),
        (["--target", "onnxruntime-cpu-fp32", "--int8-exclude", "Conv"], "keeps layers out of INT8"),
        (["--batch", "2", "--dynamic", "batch"], "contradict each other"),
        (["--batch", "0"], "--batch must be >= 1"),
        (["--target", "jetson", "--batch", "2"], "built for batch 1 here"),
    ],
)
def test_bad_precision_batch_and_exclude_flags_exit_2(tmp_path, capsys, flags, expected):
    rc, _, err = run_cli(capsys, "run", *SMOKE, "--out", tmp_path / "R", *flags, "--dry-run")
    assert_clean_error(rc, err, tmp_path / "R")
    assert expected in err


def test_int8_exclude_naming_nothing_lists_the_graphs_op_types(models, tmp_path, capsys):
    out = tmp_path / "D"
    rc, _, err = run_cli(capsys, "deploy", *OWN, *onnx_flags(models), "--int8-exclude", "Nope", *FAST, "--out", out)
    assert rc == 2 and "Traceback" not in err
    assert "--int8-exclude Nope names no node and no op type of model.sim.onnx" in err and "Conv" in err


# --- one meaning per flag ------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_device_names_the_deployment_device_and_points_to_train_device(tmp_path, capsys, device):
    for argv in (["run", "--dry-run"], ["train-teacher"]):
        rc, _, err = run_cli(capsys, *argv, *SMOKE, "--device", device, "--out", tmp_path / "R")
        assert_clean_error(rc, err, tmp_path / "R")
        assert f"--device {device} is not a deployment device" in err and f"use --train-device {device}" in err


def test_run_precision_is_the_deployed_artifacts_and_names_train_precision(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "run", *SMOKE, "--precision", "bf16", "--out", tmp_path / "R", "--dry-run")
    assert_clean_error(rc, err, tmp_path / "R")
    assert "--precision 'bf16' is not a precision of the deployed artifact" in err and "--train-precision" in err


def test_the_flag_names_parse_without_a_warning(tmp_path, capsys):
    argv = ["run", *SMOKE, "--teacher-arch", "pspnet-r101", "--student-arch", "pspnet-r101", "--dry-run"]
    rc, _, err = run_cli(capsys, *argv, "--train-precision", "fp32", "--out", tmp_path / "R")
    assert rc == 0 and "warning" not in err, err
