"""The CI gate: budgets files, the noise rules, JUnit/Markdown, and `gate` / `run --budgets` on a real smoke run."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import GATE_RUN_FLAGS as RUN_FLAGS
from helpers.cli import assert_clean_error, run_cli

from bckd_pipeline.gate.budgets import GateSettings, parse_budgets
from bckd_pipeline.gate.gate import gate
from bckd_pipeline.gate.noise import bootstrap_median_ratio, latency_regressed
from bckd_pipeline.errors import ConfigError
from bckd_pipeline.metrics import ConfusionMatrix
from bckd_pipeline.tasks.segmentation import SEGMENTATION, miou_of

bootstrap_delta_miou = SEGMENTATION.bootstrap_delta

DEPLOYED = "onnxruntime-int8"

PASSING = """
[gate]
latency_tolerance = 0.10

[onnxruntime-cpu]
max_p50_ms = 1000
max_p99_ms = 5000
min_fps = 1
min_miou = 1
max_miou_drop = 5.0
min_pixel_agreement = 0.5
max_artifact_mb = 50

[onnxruntime-cpu.stages.onnx-simplified]
max_p50_ms = 1000
"""

# Budgets no CPU build of this model can meet: a latency far below any measured one, an
# mIoU above what a 20-iteration student reaches, an artifact smaller than its weights.
FAILING = """
[onnxruntime-cpu]
max_p50_ms = 0.001
min_miou = 99
max_artifact_mb = 0.001
"""


def _write(tmp_path: Path, text: str, name: str = "budgets.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# budgets files
# ---------------------------------------------------------------------------------------------
def test_a_good_budgets_file_merges_target_defaults_and_stage_tables():
    text = PASSING.replace("latency_tolerance = 0.10", "latency_tolerance = 0.25")  # not the default
    b = parse_budgets(text + "\n[openvino-cpu]\nmax_p50_ms = 4\n", "b.toml")
    ort = b.targets["onnxruntime-cpu"]
    assert ort.deployed["max_p50_ms"] == 1000.0 and ort.deployed["min_pixel_agreement"] == 0.5
    assert ort.stages == {"onnx-simplified": {"max_p50_ms": 1000.0}} and ort.from_defaults == ()
    ov = b.targets["openvino-cpu"]  # the INT8 profile's defaults fill what the file leaves out
    assert ov.deployed == {"max_miou_drop": 1.0, "min_pixel_agreement": 0.95, "max_p50_ms": 4.0}
    assert set(ov.from_defaults) == {"max_miou_drop", "min_pixel_agreement"}
    assert b.settings == GateSettings(latency_tolerance=0.25)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[onnxruntime-cpu]\nmax_p50ms = 3\n", ["unknown key 'max_p50ms'", "Did you mean 'max_p50_ms'?", "Allowed:"]),
        ('[onnxruntime-cpu]\nmax_p50_ms = "12 ms"\n', ["'12 ms' is a string", "unit is fixed by the key name (ms)"]),
        ("[onnxruntime-cpu]\nmin_fps = true\n", ["min_fps = True is a bool", "a number of fps"]),
        ("[onnxruntime-cpu]\nmax_artifact_mb = [1, 2]\n", ["is a list", "number of MB"]),
        ("[onnxruntime-cpu]\nmax_miou_drop = -0.5\n", ["max_miou_drop = -0.5 is out of range", "mIoU points"]),
        ("[onnxruntime-cpu]\nmin_pixel_agreement = 95\n", ["out of range", "looks like a percentage: write 0.95"]),
        ("[onnxruntime-cpu]\nmin_miou = 120\n", ["min_miou = 120 is out of range", "between 0 and 100"]),
        (
            "[onnxruntime-cpu.stages.onnx-simplfied]\nmax_p50_ms = 1\n",
            ["no ledger stage 'onnx-simplfied'", "Did you mean 'onnx-simplified'?", "pytorch, onnx"],
        ),
        (
            "[onnxruntime-cpux]\nmax_p50_ms = 1\n",
            ["[onnxruntime-cpux] is not a target", "Did you mean 'onnxruntime-cpu'?"],
        ),
        ("[onnxruntime-cpu]\nconfidence = 0.9\n", ["unknown key 'confidence'", "put it in the [gate] table"]),
        ("[gate]\nconfidence = 95\n[onnxruntime-cpu]\n", ["confidence = 95", "not a percentage"]),
        ("[gate]\ntolerance = 0.1\n[onnxruntime-cpu]\n", ["unknown key 'tolerance'", "latency_tolerance"]),
        ("[gate]\nlatency_tolerance = 0.1\n", ["no target table"]),
        ("[onnxruntime-cpu\nmax_p50_ms = 1\n", ["is not valid TOML"]),
    ],
)
def test_bad_budgets_files_say_what_and_how_to_fix(text, expected):
    with pytest.raises(ConfigError) as info:
        parse_budgets(text, "b.toml")
    msg = str(info.value)
    assert msg.startswith("b.toml"), msg
    for part in expected:
        assert part in msg, msg


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------
def test_vectorised_miou_is_the_reports_confusion_matrix_miou():
    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(4, 255)
    cm.update(rng.integers(0, 3, (16, 16)), rng.integers(0, 4, (16, 16)))  # class 3 never predicted
    assert miou_of(cm.matrix) == pytest.approx(cm.miou())
    assert np.isnan(miou_of(np.zeros((3, 3))))


def test_paired_bootstrap_of_delta_miou_on_a_hand_made_pair_of_images():
    # Image A: both models perfect. Image B: the reference perfect, the candidate labels 5 of 10
    # class-1 pixels as class 0. Resampling 2 images gives {A,A} (p=1/4), {A,B} (1/2), {B,B} (1/4):
    #   {A,A}: Δ = 0;  {A,B}: IoU0 = 20/25, IoU1 = 15/20 -> 77.5, Δ = -22.5;
    #   {B,B}: IoU0 = 20/30, IoU1 = 10/20 -> 58.33, Δ = -41.67.
    a = np.array([[10, 0], [0, 10]])
    b_new = np.array([[10, 0], [5, 5]])
    new, ref = np.stack([a, b_new]), np.stack([a, a])
    ci = bootstrap_delta_miou(new, ref, confidence=0.95, resamples=2000, seed=0)
    assert ci.point == pytest.approx(-22.5)
    assert ci.lower == pytest.approx(-125 / 3)  # the 5th percentile falls in the {B,B} quarter
    assert ci.upper == pytest.approx(0.0)  # the 95th in the {A,A} quarter
    same = bootstrap_delta_miou(ref, ref)
    assert (same.point, same.lower, same.upper) == (0.0, 0.0, 0.0)


def test_latency_noise_rule_on_synthetic_samples():
    rng = np.random.default_rng(1)

    def runs(scale: float) -> np.ndarray:  # lognormal timing noise around 2 ms, a few slow outliers
        return scale * 2.0 * rng.lognormal(0.0, 0.08, 200) + (rng.random(200) < 0.03) * 1.5

    base = runs(1.0)
    slower = bootstrap_median_ratio(runs(1.3), base)
    same = bootstrap_median_ratio(runs(1.0), base)
    slightly = bootstrap_median_ratio(runs(1.05), base)
    assert latency_regressed(slower, 0.10) and slower.point > 1.2
    assert not latency_regressed(same, 0.10) and same.lower < 1.0 < same.upper
    assert not latency_regressed(slightly, 0.10)  # slower, but within the stated tolerance
    # A huge but noisy difference measured on 3 runs each: the point ratio alone is not enough.
    noisy = bootstrap_median_ratio(np.array([1.0, 5.0, 1.5]), np.array([1.0, 1.2, 4.0]))
    assert noisy.point > 1.1 and not latency_regressed(noisy, 0.10)


# ---------------------------------------------------------------------------------------------
# a real smoke report
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smoke_report_keeps_timed_runs_per_image_confusions_and_masks(smoke_report):
    from bckd_pipeline.parity_images import load_parity_images
    from bckd_pipeline.report.evidence import load_qualitative

    report = _report(smoke_report)
    rows = {r["name"]: r for r in report["stages"]}
    for r in rows.values():
        assert len(r["latency"]["samples_ms"]) == 20
        assert r["latency_ms"]["p50"] == pytest.approx(float(np.median(r["latency"]["samples_ms"])))
    images = load_parity_images(report, smoke_report / "report.json")
    assert len(images.names) == report["evaluation"]["images"]
    for name, cm in images.evidence.items():  # summed per-image confusions give the ledger's mIoU
        assert miou_of(cm.sum(0)) == pytest.approx(rows[name]["miou"])
    assert rows[DEPLOYED]["artifact_bytes"] == (smoke_report / "deploy/onnxruntime-cpu/model.int8.onnx").stat().st_size
    masks = load_qualitative(smoke_report, report["qualitative"])
    assert report["qualitative"]["columns"] == ["teacher", "student alone", "distilled", "deployed"]
    assert masks["image"].shape == (4, 64, 64, 3) and masks["pred/deployed"].shape == (4, 64, 64)


@pytest.mark.slow
def test_gate_passes_and_fails_a_real_report_with_exit_codes_and_named_violations(smoke_report, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "gate", smoke_report / "report.json", "--budgets", _write(tmp_path, PASSING))
    assert rc == 0, out + err
    assert "PASSED: all 8 budget checks within budget (exit code 0)" in out
    assert "ΔmIoU >= " in out and "with 95% confidence" in out and "of 20 timed runs" in out

    rc, out, err = run_cli(capsys, "gate", smoke_report, "--budgets", _write(tmp_path, FAILING, "f.toml"))
    assert rc == 1, out + err
    assert "FAILED: 3 of 5 budget checks violated (exit code 1)" in out
    p50 = float(np.median(_report(smoke_report)["stages"][-1]["latency"]["samples_ms"]))
    assert f"FAIL     {DEPLOYED}: median {p50:.3f} ms of 20 timed runs vs budget max_p50_ms 0.001 ms" in out
    assert f"{DEPLOYED}: mIoU " in out and "vs budget min_miou 99: short by" in out
    assert "vs budget max_artifact_mb 0.001: over by" in out
    # The INT8 target's default budgets apply where the file sets nothing, and say so.
    assert "min_pixel_agreement 0.95: within budget [default budget of target onnxruntime-cpu]" in out


@pytest.mark.slow
def test_junit_and_markdown_outputs_validate(smoke_report, tmp_path, capsys):
    junit, md = tmp_path / "gate.xml", tmp_path / "summary.md"
    budgets = _write(tmp_path, FAILING + "max_p99_ms = 1000\n")
    rc, out, _ = run_cli(capsys, "gate", smoke_report, "--budgets", budgets, "--junit", junit, "--markdown", md)
    assert rc == 1
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    failures = [c for c in cases if c.find("failure") is not None]
    assert len(cases) == int(suite.get("tests")) == int(root.get("tests")) == 6
    assert len(failures) == int(suite.get("failures")) == 3 and suite.get("skipped") == "0"
    assert {c.get("name") for c in failures} == {"max_p50_ms", "min_miou", "max_artifact_mb"}
    assert all(c.get("classname") == f"bckd-pipeline.gate.onnxruntime-cpu.{DEPLOYED}" for c in cases)
    assert all("vs budget" in c.find("failure").get("message") for c in failures)
    text = md.read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    assert text.startswith("### ❌ bckd-pipeline gate: `onnxruntime-cpu`")
    assert len(table) == 6 and sum("**fail**" in line for line in table) == 3
    assert all(line.count(" | ") == 5 for line in table)  # 6 cells: no stray pipe from a message


def _pending_copy(smoke_report: Path, dst: Path) -> Path:
    """The smoke run as a device-absent target would report it: the deployed row pending, with nulls."""
    out = _copy(smoke_report, dst)
    report = _report(out)
    row = report["stages"][-1]
    row.update(status="pending", miou=None, miou_delta=None, pixel_agreement=None, fps=None, latency=None)
    row["latency_ms"] = dict.fromkeys(row["latency_ms"])
    row["note"] = "not measured: device absent"
    (out / "report.json").write_text(json.dumps(report))
    return out


@pytest.mark.slow
def test_a_budget_on_a_value_not_measured_is_pending_never_passed(smoke_report, tmp_path, capsys):
    out = _pending_copy(smoke_report, tmp_path / "P")
    junit = tmp_path / "p.xml"
    budgets = _write(tmp_path, "[onnxruntime-cpu]\nmax_p50_ms = 1000\nmax_artifact_mb = 50\n")
    rc, stdout, _ = run_cli(capsys, "gate", out, "--budgets", budgets, "--junit", junit)
    assert rc == 3, stdout
    assert "pending  onnxruntime-int8: max_p50_ms 1000 not checked: latency was not measured" in stdout
    assert "PENDING: 1 of 4 checks passed, 3 not measured (exit code 3)" in stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("skipped") == "3" and len(suite.findall("testcase/skipped")) == 3
    rc, stdout, _ = run_cli(capsys, "gate", out, "--budgets", budgets, "--allow-pending")
    assert rc == 0 and "PASSED: 1 of 4 checks passed, 3 not measured (exit code 0)" in stdout


@pytest.mark.slow
def test_baseline_comparison_flags_a_slower_run_and_passes_the_same_run(smoke_report, tmp_path, capsys):
    budgets = _write(tmp_path, "[onnxruntime-cpu]\nmax_p50_ms = 1000\n")
    rc, out, _ = run_cli(capsys, "gate", smoke_report, "--budgets", budgets, "--baseline", smoke_report / "report.json")
    assert rc == 0, out
    assert "(x1.000;" in out and "within noise and tolerance" in out and "ΔmIoU +0.000" in out

    fast = _copy(smoke_report, tmp_path / "old")  # a baseline whose deployed stage ran twice as fast
    report = _report(fast)
    lat = report["stages"][-1]["latency"]
    lat["samples_ms"] = [v / 2 for v in lat["samples_ms"]]
    (fast / "report.json").write_text(json.dumps(report))
    rc, out, _ = run_cli(capsys, "gate", smoke_report, "--budgets", budgets, "--baseline", fast)
    assert rc == 1, out
    assert f"FAIL     {DEPLOYED}: median" in out and "(x2.000;" in out and "REGRESSED" in out


@pytest.mark.slow
def test_a_baseline_from_another_cpu_is_refused_unless_told_to_compare(smoke_report, tmp_path, capsys):
    report = _report(smoke_report)
    assert report["machine"]["cpu"]["model"] and "isa" in report["machine"]["cpu"]
    assert json.loads((smoke_report / "manifest.json").read_text())["machine"] == report["machine"]
    budgets = _write(tmp_path, "[onnxruntime-cpu]\nmax_p50_ms = 1000\n")
    for what, change in (
        ("model", lambda cpu: cpu.update(model="Intel(R) Xeon(R) Platinum 8480+")),
        ("isa", lambda cpu: cpu.update(isa=[*cpu["isa"], "AMX-INT8"] if "AMX-INT8" not in cpu["isa"] else ["AVX2"])),
    ):
        other = _copy(smoke_report, tmp_path / what)
        data = _report(other)
        change(data["machine"]["cpu"])
        (other / "report.json").write_text(json.dumps(data))
        rc, _, err = run_cli(capsys, "gate", smoke_report, "--budgets", budgets, "--baseline", other)
        assert_clean_error(rc, err, None)
        assert "was measured on another machine" in err and "--compare-other-machine" in err
        assert ("CPU " if what == "model" else "vector ISA differs") in err
        rc, out, _ = run_cli(
            capsys, "gate", smoke_report, "--budgets", budgets, "--baseline", other, "--compare-other-machine"
        )
        assert rc == 0, out
        assert "[other machine: " in out
    # A baseline written before machine facts existed has nothing to compare: it is not refused.
    old = _copy(smoke_report, tmp_path / "old-format")
    data = _report(old)
    del data["machine"]
    (old / "report.json").write_text(json.dumps(data))
    rc, out, _ = run_cli(capsys, "gate", smoke_report, "--budgets", budgets, "--baseline", old)
    assert rc == 0 and "[other machine" not in out, out


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["other_target", "missing_stage", "not_a_report", "evidence_missing", "baseline", "baseline_images"]
)
def test_bad_gate_input_is_exit_2_with_one_clear_message(case, smoke_report, tmp_path, capsys):
    report = smoke_report / "report.json"
    budgets = _write(tmp_path, PASSING)
    extra: list = []
    if case == "other_target":
        budgets = _write(tmp_path, "[openvino-cpu]\nmax_p50_ms = 1\n")
        expected = "has no [onnxruntime-cpu] table: report "
    elif case == "missing_stage":
        out = _copy(smoke_report, tmp_path / "M")
        data = _report(out)
        data["stages"] = [r for r in data["stages"] if r["name"] != "onnx-simplified"]
        (out / "report.json").write_text(json.dumps(data))
        report, expected = out / "report.json", "budgets stage(s) onnx-simplified of target 'onnxruntime-cpu'"
    elif case == "not_a_report":
        report = smoke_report / "manifest.json"
        expected = "is not a bckd-pipeline report (format 'bckd-pipeline/manifest-v1'"
    elif case == "evidence_missing":
        out = _copy(smoke_report, tmp_path / "E")
        (out / "deploy/onnxruntime-cpu/parity_images.npz").unlink()
        report, expected = out / "report.json", "Keep deploy/onnxruntime-cpu/parity_images.npz next to report.json"
    elif case == "baseline_images":  # a baseline evaluated on other images cannot be paired
        other = _copy(smoke_report, tmp_path / "I")
        data = _report(other)
        data["parity_images"]["images"][0]["sha256"] = "0" * 64
        (other / "report.json").write_text(json.dumps(data))
        extra, expected = ["--baseline", other], "was evaluated on other images than"
    else:
        other = _copy(smoke_report, tmp_path / "B")
        data = _report(other)
        data["target"] = "openvino-cpu"
        (other / "report.json").write_text(json.dumps(data))
        extra, expected = ["--baseline", other], "is a report of target 'openvino-cpu'"
    rc, _, err = run_cli(capsys, "gate", report, "--budgets", budgets, *extra)
    assert_clean_error(rc, err, None)
    assert expected in err


@pytest.mark.slow
def test_run_with_budgets_gates_by_itself(smoke_report, tmp_path, capsys):
    out = _copy(smoke_report, tmp_path / "R")  # cached stages: only the reports are rewritten
    junit = tmp_path / "run.xml"
    fail = _write(tmp_path, FAILING, "f.toml")
    rc, stdout, err = run_cli(capsys, "run", *RUN_FLAGS, "--out", out, "--budgets", fail, "--junit", junit)
    assert rc == 1, err
    assert "| onnxruntime-int8 |" in stdout and "FAILED: 3 of 5 budget checks violated" in stdout
    assert (out / "report.html").is_file() and ET.parse(junit).getroot().get("failures") == "3"
    rc, stdout, err = run_cli(capsys, "run", *RUN_FLAGS, "--out", out, "--budgets", _write(tmp_path, PASSING))
    assert rc == 0 and "PASSED: all 8 budget checks" in stdout, err

    fresh = tmp_path / "fresh"  # a bad budgets file fails before any training, writing nothing
    bad = _write(tmp_path, "[onnxruntime-cpu]\nmax_p50_ms = '5ms'\n", "bad.toml")
    rc, _, err = run_cli(capsys, "run", *RUN_FLAGS, "--out", fresh, "--budgets", bad)
    assert_clean_error(rc, err, fresh)
    assert "unit is fixed by the key name" in err and not fresh.exists()
    other = _write(tmp_path, "[openvino-cpu]\n", "ov.toml")
    rc, _, err = run_cli(capsys, "run", *RUN_FLAGS, "--out", fresh, "--budgets", other)
    assert_clean_error(rc, err, fresh)
    assert "has no [onnxruntime-cpu] table: this run is of target 'onnxruntime-cpu'" in err


@pytest.mark.slow
def test_gate_api_result_counts(smoke_report, tmp_path):
    result = gate(smoke_report / "report.json", parse_budgets(PASSING, "p.toml"))
    assert result.exit_code == 0 and len(result.checks) == 8
    assert {(c.stage, c.budget) for c in result.checks} >= {
        (DEPLOYED, "max_miou_drop"),
        ("onnx-simplified", "max_p50_ms"),
    }


@pytest.mark.slow
def test_confidence_flag_and_deploy_with_budgets(smoke_report, tmp_path, capsys):
    budgets = _write(tmp_path, "[onnxruntime-cpu]\nmax_miou_drop = 5\n")
    rc, out, _ = run_cli(capsys, "gate", smoke_report, "--budgets", budgets, "--confidence", "0.99")
    assert rc == 0 and "with 99% confidence ΔmIoU >= " in out
    rc, _, err = run_cli(capsys, "gate", smoke_report, "--budgets", budgets, "--confidence", "95")
    assert_clean_error(rc, err, None)
    assert "--confidence 95.0 must be a fraction in (0.5, 1)" in err

    # `deploy` (no teacher, no student-alone) gates the same way; its FP32 target has no default budgets.
    out = tmp_path / "D"
    fp32 = _write(tmp_path, "[onnxruntime-cpu-fp32]\nmin_miou = 99\nmax_p50_ms = 1000\n", "fp32.toml")
    ckpt = smoke_report / "distilled/student.pt"
    argv = [*RUN_FLAGS, "--model", ckpt, "--target", "onnxruntime-cpu-fp32", "--out", out, "--budgets", fp32]
    rc, stdout, err = run_cli(capsys, "deploy", *argv)
    assert rc == 1, err
    assert "FAIL     onnx-simplified: mIoU " in stdout and "FAILED: 1 of 2 budget checks violated" in stdout
    q = _report(out)["qualitative"]
    assert q["columns"] == ["distilled", "deployed"] and set(q["missing"]) == {"teacher", "student alone"}
    assert "not available: not part of `bckd-pipeline deploy`" in (out / "report.html").read_text()
