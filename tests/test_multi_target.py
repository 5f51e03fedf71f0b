"""Several targets in one run folder: one ledger over every target and precision on the same
images, each target's files in its own folder, per-target reports plus the folder's combined view; a
second target run into the folder never overwrites the first's report or drops its artifacts."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers.cli import OWN, SMOKE, assert_clean_error, run_cli
from helpers.own_model import onnx_flags

FAST = ["--latency-runs", "5", "--warmup-runs", "1", "--warmup-s", "0", "--no-throughput", "--parity-images", "8"]


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def two_commands(tmp_path_factory):
    """onnxruntime-cpu alone, then onnxruntime-cpu-fp32 and openvino-cpu into the same folder."""
    from bckd_pipeline.cli import main

    out = tmp_path_factory.mktemp("multi") / "R"
    assert main(["run", *SMOKE, *FAST, "--out", str(out)]) == 0
    first = {
        "report": (out / "report.onnxruntime-cpu.json").read_bytes(),
        "top": _json(out / "report.json"),
        "manifest": _json(out / "manifest.json"),
    }
    assert main(["run", *SMOKE, *FAST, "--target", "onnxruntime-cpu-fp32,openvino-cpu", "--out", str(out)]) == 0
    return out, first


@pytest.mark.slow
def test_one_target_folder_keeps_the_single_report_layout(two_commands):
    _, first = two_commands
    assert first["top"]["format"] == "bckd-pipeline/report-v1" and first["top"]["targets"] == ["onnxruntime-cpu"]
    assert first["manifest"]["deployable"] == ["deploy/onnxruntime-cpu/model.int8.onnx"]


@pytest.mark.slow
def test_second_command_adds_targets_without_losing_the_first(two_commands):
    out, first = two_commands
    assert (out / "report.onnxruntime-cpu.json").read_bytes() == first["report"]  # never overwritten
    report = _json(out / "report.json")
    assert report["format"] == "bckd-pipeline/combined-report-v1"
    assert report["targets"] == ["onnxruntime-cpu", "onnxruntime-cpu-fp32", "openvino-cpu"]
    assert report["status"] == "complete" and report["exit_code"] == 0
    for key in report["targets"]:
        own = _json(out / f"report.{key}.json")
        assert own["target"] == key and (out / f"report.{key}.md").is_file() and (out / f"report.{key}.html").is_file()
        assert _json(out / f"manifest.{key}.json")["target"] == key
    manifest = _json(out / "manifest.json")
    paths = {a["path"] for a in manifest["artifacts"]}
    assert {
        "deploy/model.onnx",
        "deploy/model.sim.onnx",
        "deploy/onnxruntime-cpu/model.int8.onnx",
        "deploy/openvino-cpu/fp32/model.xml",
        "deploy/openvino-cpu/int8/model.xml",
    } <= paths
    assert manifest["deployable"] == ["deploy/onnxruntime-cpu/model.int8.onnx"]  # the first target's
    assert manifest["deployable_per_target"]["openvino-cpu"][0] == "deploy/openvino-cpu/int8/model.xml"


@pytest.mark.slow
def test_combined_ledger_compares_every_target_on_the_same_images(two_commands):
    out, _ = two_commands
    report = _json(out / "report.json")
    rows = [(r["target"], r["name"]) for r in report["stages"]]
    assert rows[:3] == [("(shared)", "pytorch"), ("(shared)", "onnx"), ("(shared)", "onnx-simplified")]
    assert ("onnxruntime-cpu", "onnxruntime-int8") in rows and ("openvino-cpu", "openvino-int8") in rows
    images = {k: _json(out / f"report.{k}.json")["parity_images"]["images"] for k in report["targets"]}
    assert len({json.dumps(v) for v in images.values()}) == 1  # the same evaluation images for every target
    md = (out / "report.md").read_text()
    assert "| target | stage |" in md and "openvino-cpu" in md and "onnxruntime-cpu-fp32" in md
    assert "openvino-cpu" in (out / "report.html").read_text()


@pytest.mark.slow
def test_predict_picks_a_target_of_a_multi_target_folder(two_commands, tmp_path, capsys):
    from bckd_pipeline.predict.artifact import locate

    out, _ = two_commands
    assert locate(out).path == out / "deploy/onnxruntime-cpu/model.int8.onnx"  # the first
    picked = locate(out, "openvino-cpu")
    assert picked.path == out / "deploy/openvino-cpu/int8/model.xml" and picked.backend == "openvino"
    image = out.parent / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 30)).save(image)
    rc, _, err = run_cli(capsys, "predict", image, "--model", out, "--target", "jetson", "--out", tmp_path / "p")
    assert_clean_error(rc, err, tmp_path / "p")
    assert "deployed onnxruntime-cpu, onnxruntime-cpu-fp32, openvino-cpu" in err


@pytest.mark.slow
def test_gate_checks_every_target_of_the_combined_view_in_one_call(two_commands, tmp_path, capsys):
    out, _ = two_commands
    budgets = tmp_path / "b.toml"
    budgets.write_text("[onnxruntime-cpu]\n")
    rc, _, err = run_cli(capsys, "gate", out / "report.json", "--budgets", budgets)
    assert_clean_error(rc, err, None)  # a target of the folder without a table: bad input, as for one report
    assert "has no [onnxruntime-cpu-fp32] table" in err
    budgets.write_text("[onnxruntime-cpu]\n[onnxruntime-cpu-fp32]\n[openvino-cpu]\nmax_p50_ms = 0.000001\n")
    junit, md = tmp_path / "g.xml", tmp_path / "g.md"
    rc, stdout, err = run_cli(capsys, "gate", out, "--budgets", budgets, "--junit", junit, "--markdown", md)
    assert rc == 1, stdout + err  # the worst of the three: openvino-cpu misses its latency budget
    suites = ET.parse(junit).getroot().findall("testsuite")
    keys = ["onnxruntime-cpu", "onnxruntime-cpu-fp32", "openvino-cpu"]
    assert [s.get("name") for s in suites] == [f"bckd-pipeline gate: {k}" for k in keys]
    assert [int(s.get("failures")) for s in suites] == [0, 0, 1]
    assert "3 targets (exit code 1)" in md.read_text()
    rc, stdout, err = run_cli(capsys, "gate", out / "report.onnxruntime-cpu.json", "--budgets", budgets)
    assert rc == 0, stdout + err


@pytest.mark.parametrize(
    "targets, expected",
    [
        ("onnxruntime-cpu,onnxruntime-cpu", "names onnxruntime-cpu twice"),
        ("jetson,tensorrt", "2 TensorRT targets"),
        ("all-local,onnxruntime-cpu", "give it alone"),
        ("onnxruntime-cpu,nope", "nope"),
    ],
)
def test_bad_target_lists_exit_2(targets, expected, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "run", *SMOKE, "--target", targets, "--out", tmp_path / "o", "--dry-run")
    assert_clean_error(rc, err, tmp_path / "o")
    assert expected in err


def test_all_local_plans_every_target_this_host_measures(tmp_path, capsys):
    from bckd_pipeline.targets import TARGETS, check_availability, expand_targets

    names = expand_targets("all-local")
    assert names and all(check_availability(TARGETS[n]).can_measure for n in names)
    rc, stdout, err = run_cli(capsys, "run", *SMOKE, "--target", "all-local", "--out", tmp_path / "o", "--dry-run")
    assert rc == 0, err
    for n in names:
        assert f"target      {n}:" in stdout


# --- what a user sees while it works -----------------------------------------------------------------------------
def test_stage_lines_on_deploy_and_cached_on_rerun(models, tmp_path, capsys):
    argv = ["deploy", *OWN, *onnx_flags(models), *FAST, "--out", tmp_path / "D"]
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 0, err
    lines = [line for line in err.splitlines() if line.startswith("stage ")]
    for name in ("take-onnx", "simplify", "calibration [onnxruntime-cpu]", "compile [onnxruntime-cpu]"):
        assert f"stage {name}: started" in lines, (name, lines)
    assert any(line.startswith("stage take-onnx: done in ") and "max |diff|" in line for line in lines), lines
    parity = next(line for line in lines if line.startswith("stage parity [onnxruntime-cpu]: done in"))
    assert "agreement" in parity and "dmIoU" in parity
    latency = next(line for line in lines if line.startswith("stage latency [onnxruntime-cpu]: done in"))
    assert " p50 " in latency and latency.endswith(" ms)")
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 0, err
    for name in ("take-onnx", "simplify", "compile [onnxruntime-cpu]", "parity [onnxruntime-cpu]"):
        assert any(line.startswith(f"stage {name}: cached") for line in err.splitlines()), (name, err)


def test_progress_bars_respect_no_progress_and_draw_on_a_terminal(monkeypatch, tmp_path):
    import sys

    from bckd_pipeline.cache import StageCache
    from bckd_pipeline.progress import Stages, Ticking

    drawn = []
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    for bars in (False, True):
        with Stages(StageCache(tmp_path), bars=bars).bar("parity", 3) as tick:
            for _ in Ticking([1, 2, 3], tick):
                drawn.append(bars)
    assert drawn == [False] * 3 + [True] * 3


def test_a_folder_of_the_older_layout_keeps_its_report_when_a_target_is_added(tmp_path):
    """A run folder from before per-target reports: its report.json/manifest.json become its target's own."""
    old = {"format": "bckd-pipeline/report-v1", "target": "openvino-cpu", "status": "complete", "exit_code": 0}
    (tmp_path / "report.json").write_text(json.dumps(old))
    (tmp_path / "manifest.json").write_text(
        json.dumps({"format": "bckd-pipeline/manifest-v1", "target": "openvino-cpu"})
    )
    (tmp_path / "report.md").write_text("# old\n")
    new = {**old, "target": "onnxruntime-cpu", "target_key": "onnxruntime-cpu"}
    (tmp_path / "report.onnxruntime-cpu.json").write_text(json.dumps(new))
    from bckd_pipeline.report.combined import _keep_an_older_layout

    _keep_an_older_layout(tmp_path, ["onnxruntime-cpu"])
    assert _json(tmp_path / "report.openvino-cpu.json") == old
    assert _json(tmp_path / "manifest.openvino-cpu.json")["target"] == "openvino-cpu"
    assert (tmp_path / "report.openvino-cpu.md").read_text() == "# old\n"
