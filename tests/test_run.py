"""`bckd-pipeline run` end to end with --preset smoke, its caching, its outputs, and its bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.cli import SMOKE, assert_clean_error, run_cli

from bckd_pipeline.cache import file_sha256

STAGE_FIELDS = {
    "name",
    "backend",
    "precision",
    "artifact",
    "miou",
    "miou_delta",
    "pixel_agreement",
    "latency_ms",
    "fps",
    "status",
}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One full smoke run on the default target (onnxruntime-cpu), shared by the tests below."""
    from bckd_pipeline.cli import main

    out = tmp_path_factory.mktemp("run") / "R"
    rc = main(["run", *SMOKE, "--out", str(out)])
    assert rc == 0, f"smoke run exited {rc}"
    return out


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow
def test_smoke_run_writes_artifacts_manifest_and_reports(smoke_run):
    out = smoke_run
    report = _json(out / "report.json")
    assert report["target"] == "onnxruntime-cpu" and report["status"] == "complete" and report["exit_code"] == 0
    names = [s["name"] for s in report["stages"]]
    assert names == ["pytorch", "onnx", "onnx-simplified", "onnxruntime-int8"]
    for s in report["stages"]:
        assert STAGE_FIELDS <= set(s), s.keys()
        assert s["status"] == "measured" and s["latency_ms"]["p50"] > 0 and s["fps"] > 0
        assert set(s["latency_ms"]) == {"p50", "p90", "p99", "mean"}
    fp32 = [s for s in report["stages"] if s["precision"] == "fp32"]
    assert all(abs(s["miou_delta"]) <= 0.01 and s["pixel_agreement"] > 0.999 for s in fp32)
    assert report["stages"][0]["miou"] == pytest.approx(report["distill"]["distilled_miou"], abs=0.01)
    assert set(report["distill"]) >= {"teacher_miou", "student_miou", "distilled_miou"}
    assert report["stages"][-1]["throughput_fps"] > 0

    manifest = _json(out / "manifest.json")
    assert manifest["deployable"] == ["deploy/onnxruntime-cpu/model.int8.onnx"]
    for a in manifest["artifacts"]:
        assert file_sha256(out / a["path"]) == a["sha256"]
    assert manifest["calibration_manifest"]["sha256"] == file_sha256(out / "deploy/calibration.json")
    assert manifest["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and manifest["class_names"][0] == "ground"
    assert manifest["versions"]["onnxruntime"] and manifest["input"]["shape"] == [1, 3, 64, 64]
    calib = _json(out / "deploy/calibration.json")
    assert calib["split"] == "train" and len(calib["images"]) == 16
    assert all(len(i["sha256"]) == 64 for i in calib["images"])
    md = (out / "report.md").read_text()
    assert "| onnxruntime-int8 | onnxruntime | int8 | measured |" in md and "p50 ms" in md


@pytest.mark.slow
def test_rerun_redoes_nothing_and_a_changed_option_redoes_only_what_depends_on_it(smoke_run, tmp_path, capsys):
    out = copy_run(smoke_run, tmp_path / "R")
    before = _mtimes(out)
    rc, stdout, err = run_cli(capsys, "run", *SMOKE, "--out", out)
    assert rc == 0, err
    after = _mtimes(out)
    unchanged = {k for k in before if before[k] == after.get(k)}
    assert {
        "teacher/teacher.pt",
        "distilled/student.pt",
        "deploy/model.onnx",
        "deploy/onnxruntime-cpu/model.int8.onnx",
    } <= unchanged
    assert (out / ".cache/parity@onnxruntime-cpu.json").stat().st_mtime_ns == before[
        ".cache/parity@onnxruntime-cpu.json"
    ]

    rc, _, err = run_cli(capsys, "run", *SMOKE, "--out", out, "--calib-size", "8")
    assert rc == 0, err
    again = _mtimes(out)
    for kept in ("teacher/teacher.pt", "distilled/student.pt", "deploy/model.onnx", "deploy/model.sim.onnx"):
        assert again[kept] == after[kept], kept
    for redone in ("deploy/calibration.json", "deploy/onnxruntime-cpu/model.int8.onnx"):
        assert again[redone] != after[redone], redone
    assert len(_json(out / "deploy/calibration.json")["images"]) == 8


@pytest.mark.slow
def test_interrupted_stage_leaves_nothing_half_written_and_rerun_resumes(smoke_run, tmp_path, capsys, monkeypatch):
    import onnxruntime.quantization as q

    out = copy_run(smoke_run, tmp_path / "R")
    (out / "deploy/onnxruntime-cpu/model.int8.onnx").unlink()
    before = _mtimes(out)

    def interrupted(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")  # the quantizer got halfway through writing
        raise KeyboardInterrupt

    monkeypatch.setattr(q, "quantize_static", interrupted)
    rc, _, err = run_cli(capsys, "run", *SMOKE, "--out", out)
    assert rc == 130 and "interrupted" in err
    assert not (out / "deploy/onnxruntime-cpu/model.int8.onnx").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.undo()

    rc, _, err = run_cli(capsys, "run", *SMOKE, "--out", out)
    assert rc == 0, err
    after = _mtimes(out)
    for kept in ("teacher/teacher.pt", "student/student.pt", "distilled/student.pt", "deploy/model.sim.onnx"):
        assert after[kept] == before[kept], kept
    assert (out / "deploy/onnxruntime-cpu/model.int8.onnx").is_file()


@pytest.mark.slow
def test_openvino_cpu_target(smoke_run, tmp_path, capsys):
    pytest.importorskip("nncf")
    out = copy_run(smoke_run, tmp_path / "R")
    rc, stdout, err = run_cli(capsys, "run", *SMOKE, "--out", out, "--target", "openvino-cpu")
    assert rc == 0, err
    report = _json(out / "report.openvino-cpu.json")  # the folder now holds two targets: report.json combines them
    names = [s["name"] for s in report["stages"]]
    assert names[-3:] == ["openvino-fp32", "openvino-fp16", "openvino-int8"]
    assert all(s["status"] == "measured" for s in report["stages"])
    assert _json(out / "report.json")["targets"] == ["onnxruntime-cpu", "openvino-cpu"]
    assert _json(out / "manifest.openvino-cpu.json")["deployable"] == [
        "deploy/openvino-cpu/int8/model.xml",
        "deploy/openvino-cpu/int8/model.bin",
    ]
    assert "openvino-int8" in stdout


@pytest.mark.slow
def test_a_target_whose_device_is_absent_makes_artifacts_and_exits_3(smoke_run, tmp_path, capsys):
    pytest.importorskip("nncf")
    from bckd_pipeline.targets.availability import openvino_devices

    if "NPU" in openvino_devices():
        pytest.skip("this host has an NPU")
    out = copy_run(smoke_run, tmp_path / "R")
    rc, stdout, err = run_cli(capsys, "run", *SMOKE, "--out", out, "--target", "openvino-npu")
    assert rc == 3, err
    report = _json(out / "report.openvino-npu.json")
    assert report["status"] == "pending" and report["exit_code"] == 3
    pending = report["stages"][-1]
    assert pending["status"] == "pending" and pending["device"] == "NPU"
    assert pending["miou"] is None and pending["fps"] is None and all(v is None for v in pending["latency_ms"].values())
    for row in report["stages"]:
        if row["backend"] == "openvino" and row["status"] != "pending":
            assert row["status"] == "parity_on_host" and row["latency_ms"]["p50"] is None and row["miou"] is not None
    assert (out / "deploy/openvino-npu/int8/model.xml").is_file()
    assert "not on this host" in stdout


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "R"
    rc, stdout, err = run_cli(capsys, "run", *SMOKE, "--out", out, "--target", "openvino-cpu", "--dry-run")
    assert rc == 0, err
    assert "target      openvino-cpu" in stdout and "calibration 16 images of split 'train'" in stdout
    for step in ("teacher", "distilled", "export", "simplify", "calibration", "openvino-int8", "parity", "latency"):
        assert f" {step} " in stdout, step
    assert str(out / "deploy/openvino-cpu/int8/model.xml") in stdout
    assert not out.exists()


def test_targets_and_doctor_commands(capsys):
    rc, stdout, _ = run_cli(capsys, "targets")
    assert rc == 0
    for name in ("onnxruntime-cpu", "openvino-cpu", "openvino-gpu", "openvino-npu"):
        assert name in stdout
    rc, stdout, _ = run_cli(capsys, "doctor")
    assert rc == 0 and "onnxruntime" in stdout and "installed" in stdout


@pytest.mark.slow
def test_bench_measures_an_exported_model(smoke_run, tmp_path, capsys):
    rc, stdout, err = run_cli(
        capsys,
        "bench",
        smoke_run / "deploy/onnxruntime-cpu/model.int8.onnx",
        "--latency-runs",
        "10",
        "--warmup-s",
        "0",
        "--json",
        tmp_path / "bench.json",
    )
    assert rc == 0, err
    result = _json(tmp_path / "bench.json")
    assert result["precision"] == "int8" and result["runs"] == 10 and result["p50"] > 0
    assert json.loads(stdout.strip().splitlines()[-1])["fps"] > 0


# --- bad input: exit 2, one clean message, nothing written ---------------------------------------
def test_unknown_target_suggests_the_closest(tmp_path, capsys):
    out = tmp_path / "R"
    rc, _, err = run_cli(capsys, "run", *SMOKE, "--out", out, "--target", "openvino-cpux")
    assert_clean_error(rc, err, out)
    assert "Unknown --target 'openvino-cpux'" in err and "Did you mean 'openvino-cpu'?" in err
    assert not out.exists()


def test_calibration_on_the_evaluation_split_is_refused(tmp_path, capsys):
    out = tmp_path / "R"
    rc, _, err = run_cli(capsys, "run", *SMOKE, "--out", out, "--calib-split", "val")
    assert_clean_error(rc, err, out)
    assert "--calib-split 'val' is the evaluation split" in err


def test_calibration_images_that_are_also_evaluation_images_are_refused(tmp_path, capsys):
    from helpers.cli import FOLDER_FLAGS, make_folder_dataset

    data = make_folder_dataset(tmp_path / "data", counts={"train": 4, "val": 2})
    for name in ("images", "masks"):  # val image 0 is a copy of a train image
        shutil.copy(data / name / "train" / "0.png", data / name / "val" / "0.png")
    out = tmp_path / "R"
    rc, _, err = run_cli(capsys, "run", *FOLDER_FLAGS, "--data", f"folder:{data}", "--iters", "2", "--out", out)
    assert_clean_error(rc, err, None)  # the stage lines before it set aside: the export ran, calibration refused
    assert "are also evaluation images (0 = 0)" in err, err
    assert (
        not (out / "deploy/calibration.json").exists() and not (out / "deploy/onnxruntime-cpu/model.int8.onnx").exists()
    )


@pytest.mark.slow
def test_out_folder_with_foreign_or_another_runs_files(smoke_run, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    rc, _, err = run_cli(capsys, "run", *SMOKE, "--out", foreign, "--dry-run")
    assert_clean_error(rc, err, foreign)  # a dry run writes nothing, but checks what a run would refuse
    assert "did not write" in err
    rc, _, err = run_cli(capsys, "run", *SMOKE, "--out", foreign)
    assert_clean_error(rc, err, foreign)
    assert "did not write" in err and "--force" in err

    other = copy_run(smoke_run, tmp_path / "other")
    rc, _, err = run_cli(capsys, "run", *SMOKE, "--out", other, "--student-arch", "tiny-teacher")
    assert rc == 2 and "holds another run (student: 'tiny-student' -> 'tiny-teacher')" in err, err


def test_corrupt_onnx_in_bench_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    rc, _, err = run_cli(capsys, "bench", bad)
    assert_clean_error(rc, err, None)
    assert "truncated, corrupt, or not an ONNX model" in err


@pytest.mark.slow
def test_deploy_command_runs_stages_2_and_3_on_a_checkpoint(smoke_run, tmp_path, capsys):
    out = tmp_path / "D"
    ckpt = smoke_run / "distilled/student.pt"
    rc, stdout, err = run_cli(
        capsys,
        "deploy",
        *SMOKE,
        "--model",
        ckpt,
        "--target",
        "onnxruntime-cpu-fp32",
        "--out",
        out,
        "--latency-runs",
        "5",
        "--head",
        "argmax",
    )
    assert rc == 0, err
    report = _json(out / "report.json")
    assert [s["name"] for s in report["stages"]] == ["pytorch", "onnx", "onnx-simplified"]
    assert report["distill"]["distilled_miou"] is None and report["distill"]["kd"] == "kd+bckd"
    assert all(s["max_abs_logit"] is None and s["pixel_agreement"] == 1.0 for s in report["stages"])
    assert _json(out / "manifest.json")["output"] == {"name": "labels", "kind": "argmax"}
    assert "| onnx-simplified | onnxruntime | fp32 | measured |" in stdout


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--nncf-max-miou-drop", "0.5"], "--nncf-max-miou-drop 0.5 applies to OpenVINO targets"),
        (["--target", "openvino-cpu", "--calib-method", "entropy"], "--calib-method entropy applies to ONNX Runtime"),
        (["--calib-method", "kl"], "Unknown calibration method 'kl'"),
        (["--calib-size", "0"], "Calibration size must be >= 1"),
        (["--dynamic", "depth"], "--dynamic depth is not allowed"),
        (["--target", "openvino-npu", "--dynamic", "batch"], "compiles static shapes only"),
        (["--head", "softmax"], "--head 'softmax' is not allowed"),
        (["--simplifier", "onnx-simplifier", "--allow-unsimplified"], "--simplifier 'onnx-simplifier' is not allowed"),
    ],
)
def test_bad_deploy_flags(tmp_path, capsys, flags, expected):
    out = tmp_path / "R"
    rc, _, err = run_cli(capsys, "run", *SMOKE, "--out", out, *flags)
    assert_clean_error(rc, err, out)
    assert expected in err
    assert not out.exists()


@pytest.mark.slow
def test_a_stage_outside_its_parity_tolerance_exits_1_and_is_named(smoke_run, tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    from bckd_pipeline.targets import profiles
    from bckd_pipeline.targets.profiles import Precision

    strict = replace(
        profiles.ONNXRUNTIME_CPU,
        parity={**profiles.ONNXRUNTIME_CPU.parity, Precision.INT8: profiles.ParityCriteria(0.0, 1.0)},
    )
    monkeypatch.setitem(profiles.TARGETS, "onnxruntime-cpu", strict)
    out = copy_run(smoke_run, tmp_path / "R")
    rc, stdout, err = run_cli(capsys, "run", *SMOKE, "--out", out)
    assert rc == 1, err
    report = _json(out / "report.json")
    assert report["status"] == "parity_failed" and report["culprit"] == "onnxruntime-int8"
    assert any("pixel agreement with onnx-simplified" in r for r in report["culprit_reason"])
    assert [s["parity_passed"] for s in report["stages"]] == [True, True, True, False]
    assert "Parity failed at stage `onnxruntime-int8`" in stdout


@pytest.mark.slow
def test_openvino_accuracy_controlled_int8_is_judged_on_training_images(smoke_run, tmp_path, capsys):
    pytest.importorskip("nncf")
    out = copy_run(smoke_run, tmp_path / "R")
    rc, _, err = run_cli(
        capsys,
        "run",
        *SMOKE,
        "--out",
        out,
        "--target",
        "openvino-cpu",
        "--nncf-max-miou-drop",
        "1.0",
        "--calib-size",
        "8",
        "--latency-runs",
        "5",
    )
    assert rc == 0, err
    calib = _json(out / "deploy/calibration.json")
    held_out = {i["name"] for i in calib["accuracy_control_images"]}
    assert len(held_out) == 8 and not held_out & {i["name"] for i in calib["images"]}
    assert all("-train-" in name for name in held_out), held_out
    int8 = next(s for s in _json(out / "report.openvino-cpu.json")["stages"] if s["name"] == "openvino-int8")
    assert int8["build"]["accuracy_control"] is True and int8["build"]["max_miou_drop"] == 1.0
