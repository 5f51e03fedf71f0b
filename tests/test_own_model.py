"""Deploy your own model: `deploy --onnx` of an ONNX exported outside the project, `deploy --model`
with a .pt2 program, a TorchScript file or a factory and its weights, `bench` inferring the backend from the
file, and the bad inputs that must end in one `error:` paragraph with exit code 2.

The models here are plain nn.Modules the project does not know, exported with plain torch.onnx.export:
no bckd.* metadata, their own input and output names, dynamic axes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnx
import pytest
import torch
from helpers.cli import OWN, SMOKE, assert_clean_error, run_cli
from helpers.own_model import FAST, IMAGENET, K, Outsider, export_onnx

from bckd_pipeline.data.demo import DEMO_CLASSES


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


# --- deploy --onnx --------------------------------------------------------------------------------
def test_an_onnx_from_outside_goes_through_the_whole_ledger(models, tmp_path, capsys):
    out = tmp_path / "D"
    src = models["dynamic"]
    rc, stdout, err = run_cli(
        capsys, "deploy", *OWN, "--onnx", src, "--out", out, "--input-size", "64,64",
        "--input-scale", "normalized", *IMAGENET, *FAST,
    )  # fmt: skip
    assert rc == 0, err
    report = _json(out / "report.json")
    assert [s["name"] for s in report["stages"]] == ["onnx", "onnx-simplified", "onnxruntime-int8"]
    assert report["stages"][0]["parent"] is None and report["reference"] == "onnx"  # the user's FP32 graph
    assert all(s["status"] == "measured" and s["latency_ms"]["p50"] > 0 for s in report["stages"])
    assert report["stages"][1]["pixel_agreement"] == 1.0 and report["stages"][2]["pixel_agreement"] > 0.95
    assert report["status"] == "complete" and report["speedup_vs_reference"]["onnx"] == 1.0
    assert report["source"]["kind"] == "onnx" and report["source"]["input"] == "input"
    assert report["checks"]["export"]["stage"] == "take-onnx" and report["checks"]["export"]["passed"]
    assert report["calibration"]["images"] > 0 and report["machine"]["cpu"]["model"]

    manifest = _json(out / "manifest.json")
    assert (
        manifest["deployable"] == ["deploy/onnxruntime-cpu/model.int8.onnx"]
        and manifest["checkpoint"]["kind"] == "onnx"
    )
    assert manifest["input"]["name"] == "input" and manifest["input"]["scale"] == "normalized"
    assert manifest["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and manifest["output"]["name"] == "out"
    assert manifest["class_names"] == list(DEMO_CLASSES) and manifest["machine"] == report["machine"]

    taken, given = onnx.load(str(out / "deploy/model.onnx")), onnx.load(str(src))
    assert len(taken.graph.node) == len(given.graph.node)  # the graph as given; only metadata added
    props = {p.key: p.value for p in taken.metadata_props}
    assert json.loads(props["bckd.input"])["scale"] == "normalized" and props["bckd.source"] == "deploy --onnx"
    assert "Model: your ONNX" in stdout and "| onnxruntime-int8 | onnxruntime | int8 | measured |" in stdout


def test_a_graph_that_normalises_itself_and_one_that_outputs_labels(models, tmp_path, capsys):
    out = tmp_path / "S"
    rc, _, err = run_cli(
        capsys, "deploy", *OWN, "--onnx", models["static"], "--out", out, "--input-scale", "0..255",
        "--target", "onnxruntime-cpu-fp32", *FAST,
    )  # fmt: skip
    assert rc == 0, err
    manifest = _json(out / "manifest.json")
    assert manifest["input"]["name"] == "x" and manifest["input"]["shape"] == [1, 3, 64, 64]
    assert manifest["preprocessing"]["mean"] is None  # not given, not needed: never a made-up ImageNet default

    out = tmp_path / "L"
    rc, _, err = run_cli(
        capsys, "deploy", *OWN, "--onnx", models["labels"], "--out", out, "--input-scale", "0..255",
        "--num-classes", str(K), "--target", "onnxruntime-cpu-fp32", *FAST,
    )  # fmt: skip
    assert rc == 0, err
    report = _json(out / "report.json")
    assert report["stages"][0]["max_abs_logit"] is None and report["stages"][1]["pixel_agreement"] == 1.0
    assert _json(out / "manifest.json")["output"] == {"name": "out", "kind": "argmax"}


@pytest.mark.parametrize(
    ("which", "flags", "expected", "absent"),
    [
        ("dynamic", [], ["--input-size H,W (the input 'input' is ?x3x?x?: dynamic)", "--input-scale 0..255|"], []),
        ("static", ["--input-scale", "normalized"], ["--mean R,G,B and --std R,G,B"], ["--input-size", "--input-sca"]),
        ("labels", ["--input-scale", "0..255"], ["--num-classes N"], ["--mean", "--input-size"]),
    ],
)
def test_missing_flags_are_named_exactly(models, tmp_path, capsys, which, flags, expected, absent):
    out = tmp_path / "R"
    for dry in ([], ["--dry-run"]):  # a dry run checks them too
        rc, _, err = run_cli(capsys, "deploy", *OWN, "--onnx", models[which], "--out", out, *flags, *dry)
        assert_clean_error(rc, err, out)
        assert "does not say everything deploy needs" in err
        for text in expected:
            assert text in err, err
        for text in absent:
            assert text not in err, err
    assert not out.exists()


def test_dry_run_of_an_onnx_prints_the_take_step(models, tmp_path, capsys):
    out = tmp_path / "R"
    rc, stdout, err = run_cli(
        capsys, "deploy", *OWN, "--onnx", models["static"], "--out", out, "--input-scale", "0..255", "--dry-run"
    )
    assert rc == 0, err
    assert " take-onnx " in stdout and "opset 17, input 'x' 1x3x64x64, output 'out'" in stdout
    assert "vs your FP32 ONNX" in stdout and " export " not in stdout and not out.exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--opset", "18"], "--opset shapes the ONNX export"),
        (["--head", "argmax", "--dynamic", "batch"], "--head, --dynamic shape the ONNX export"),
        (["--num-classes", "3"], "outputs 7 class logits, but the classes given number 3"),
        (["--input-size", "32,32"], "has the static input size 64x64"),
        (["--input-scale", "raw"], "--input-scale 'raw' is not allowed"),
    ],
)
def test_bad_flags_with_an_onnx(models, tmp_path, capsys, flags, expected):
    out = tmp_path / "R"
    rc, _, err = run_cli(
        capsys, "deploy", *OWN, "--onnx", models["static"], "--out", out, "--input-scale", "0..255", *flags, *FAST
    )
    assert_clean_error(rc, err, out)
    assert expected in err


def test_an_old_opset_onnx_gets_the_convert_command(tmp_path, capsys):
    old = export_onnx(tmp_path / "old.onnx", dynamic=False, opset=11)
    rc, _, err = run_cli(capsys, "deploy", *OWN, "--onnx", old, "--out", tmp_path / "R", "--dry-run")
    assert_clean_error(rc, err, None)
    assert "is ONNX opset 11; deploy takes opset 13 or newer" in err and "version_converter" in err


def test_an_onnx_for_other_classes_than_the_data_is_refused(tmp_path, capsys):
    path = tmp_path / "three.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Outsider(classes=3).eval(), (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False)
    rc, _, err = run_cli(capsys, "deploy", *OWN, "--onnx", path, "--out", tmp_path / "R", "--input-scale", "0..255")
    assert_clean_error(rc, err, tmp_path / "R")
    assert "predicts 3 classes; the --data dataset has 7" in err


# --- deploy --model: .pt2, TorchScript, a factory and its weights ---------------------------------------
@pytest.mark.parametrize("kind", ["pt2", "torchscript", "factory"])
def test_pytorch_files_deploy_like_a_checkpoint(models, tmp_path, capsys, monkeypatch, kind):
    folder = models["folder"]
    if kind == "factory":
        monkeypatch.syspath_prepend(str(folder))
        model = ["--model-factory", "outsider_factory:build", "--weights", folder / "outsider.pth"]
    else:
        model = ["--model", folder / ("outsider.pt2" if kind == "pt2" else "outsider.ts")]
    out = tmp_path / "D"
    rc, _, err = run_cli(
        capsys, "deploy", *OWN, *model, "--out", out, *IMAGENET, "--target", "onnxruntime-cpu-fp32", *FAST
    )
    assert rc == 0, err
    report = _json(out / "report.json")
    assert [s["name"] for s in report["stages"]] == ["pytorch", "onnx", "onnx-simplified"]
    assert report["source"]["kind"] == kind and report["stages"][1]["max_abs_logit"] < 1e-3
    assert _json(out / "manifest.json")["preprocessing"]["mean"] == [0.485, 0.456, 0.406]


def test_pytorch_files_need_their_normalisation(models, tmp_path, capsys):
    pt2 = models["folder"] / "outsider.pt2"
    rc, _, err = run_cli(capsys, "deploy", *OWN, "--model", pt2, "--out", tmp_path / "R")
    assert_clean_error(rc, err, tmp_path / "R")
    assert "carries no preprocessing metadata; deploy needs --mean R,G,B and --std R,G,B" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model", "missing.pt2"], "--model 'missing.pt2' does not exist"),
        (["--model-factory", "nomod:build", "--weights", "W"], "--model-factory 'nomod:build': ModuleNotFoundError"),
        (["--model-factory", "nocolon", "--weights", "W"], "must be module:function"),
        (["--model-factory", "m:f"], "--model-factory and --weights go together"),
        ([], "deploy takes one model; got none"),
    ],
)
def test_bad_model_arguments(models, tmp_path, capsys, argv, expected):
    argv = [models["folder"] / "outsider.pth" if a == "W" else a for a in argv]
    rc, _, err = run_cli(capsys, "deploy", *OWN, *argv, *IMAGENET, "--out", tmp_path / "R")
    assert_clean_error(rc, err, tmp_path / "R")
    assert expected in err


# --- bench: the backend from the file ----------------------------------------------------------------
def test_bench_infers_the_backend_from_the_suffix_and_takes_shape_and_batch(models, tmp_path, capsys):
    rc, stdout, err = run_cli(
        capsys, "bench", models["dynamic"], "--shape", "40,48", "--batch", "2", "--latency-runs", "5",
        "--warmup-s", "0",
        "--json", tmp_path / "b.json",
    )  # fmt: skip
    assert rc == 0, err
    result = _json(tmp_path / "b.json")
    assert result["input_shapes"] == {"input": [2, 3, 40, 48]} and result["batch"] == 2
    assert result["target"] == "onnxruntime-cpu" and "(onnxruntime on cpu, input 2x3x40x48)" in err + stdout

    rc, _, err = run_cli(capsys, "bench", models["dynamic"])
    assert_clean_error(rc, err, None)
    assert "dims 0, 2, 3 are dynamic. Give --shape H,W" in err
    rc, _, err = run_cli(capsys, "bench", models["static"], "--batch", "4")
    assert_clean_error(rc, err, None)
    assert "has the static shape 1x3x64x64; dim 0 cannot be 4" in err
    rc, _, err = run_cli(capsys, "bench", models["folder"] / "outsider.pt2")
    assert_clean_error(rc, err, None)
    assert "bench cannot tell what runs" in err


def test_bench_never_calls_a_valid_ir_a_corrupt_onnx(models, tmp_path, capsys):
    pytest.importorskip("openvino")
    from bckd_pipeline.calibrate.openvino import to_ir

    xml = to_ir(models["static"], tmp_path / "ir/model.xml", fp16=False)
    rc, stdout, err = run_cli(capsys, "bench", xml, "--latency-runs", "5", "--warmup-s", "0")
    assert rc == 0, err
    assert "(openvino on CPU, x 1x3x64x64)" in err + stdout and "corrupt" not in err
    rc, _, err = run_cli(capsys, "bench", xml, "--target", "onnxruntime-cpu")
    assert_clean_error(rc, err, None)
    assert "is an OpenVINO IR; --target onnxruntime-cpu runs onnxruntime" in err


# --- bad input anywhere: --device, --opset, --out, all before any work (and in --dry-run) ------------------
@pytest.mark.parametrize("command", ["run", "deploy"])
@pytest.mark.parametrize("dry", [True, False])
def test_an_openvino_device_name_in_device_is_one_clear_error(models, tmp_path, capsys, command, dry):
    model = ["--onnx", models["static"], "--input-scale", "0..255", "--allow-demo-data"] if command == "deploy" else []
    argv = ["--preset", "smoke", "--no-progress", "--device", "GPU", "--target", "openvino-cpu", *model]
    rc, _, err = run_cli(capsys, command, *argv, "--out", tmp_path / "R", *(["--dry-run"] if dry else []))
    assert_clean_error(rc, err, tmp_path / "R")
    assert "--device GPU is an OpenVINO device name" in err and "use --target openvino-gpu" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_on_a_host_without_a_gpu_is_one_clear_error(tmp_path, capsys, device):
    for argv in (["run", "--dry-run"], ["train-teacher"]):
        rc, _, err = run_cli(capsys, *argv, "--preset", "smoke", "--train-device", device, "--out", tmp_path / "R")
        assert_clean_error(rc, err, tmp_path / "R")
        assert f"--train-device {device} was given, but this host has no CUDA GPU" in err


@pytest.mark.parametrize(
    ("opset", "expected"),
    [
        ("11", "--opset 11 is older than opset 17, the oldest this pipeline exports for --target onnxruntime-cpu"),
        ("99", "--opset 99 is newer than torch"),
    ],
)
def test_an_opset_is_never_silently_changed(tmp_path, capsys, opset, expected):
    for dry in (["--dry-run"], []):
        rc, _, err = run_cli(capsys, "run", *SMOKE, "--out", tmp_path / "R", "--opset", opset, *dry)
        assert_clean_error(rc, err, tmp_path / "R")
        assert expected in err
    assert "deploy --onnx" in err if opset == "11" else "leave --opset out" in err


def test_an_opset_in_range_is_the_one_exported(tmp_path, capsys):
    rc, stdout, err = run_cli(capsys, "run", *SMOKE, "--out", tmp_path / "R", "--opset", "18", "--dry-run")
    assert rc == 0, err
    assert "ONNX opset 18" in stdout


@pytest.mark.parametrize("command", ["run", "deploy"])
def test_dry_run_checks_the_out_folder(models, tmp_path, capsys, command):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    model = ["--onnx", models["static"], "--input-scale", "0..255", "--allow-demo-data"] if command == "deploy" else []
    rc, _, err = run_cli(capsys, command, *SMOKE, *model, "--out", foreign, "--dry-run")
    assert_clean_error(rc, err, None)
    assert "already holds files that bckd-pipeline run/deploy did not write" in err
    rc, _, err = run_cli(capsys, command, *SMOKE, *model, "--out", foreign / "notes.txt" / "x", "--dry-run")
    assert_clean_error(rc, err, None)
    assert "cannot be written" in err and "is not a folder" in err


# --- a TensorRT target from the user's ONNX: the Q/DQ file, the device bundle, the engine with a stand-in ------
@pytest.mark.slow
def test_an_onnx_from_outside_deploys_to_a_tensorrt_target(models, tmp_path, capsys, monkeypatch):
    """No TensorRT here: the run ends pending (exit 3) with the Q/DQ ONNX checked TensorRT-ready and the bundle;
    the bundle's job then runs with the recording stand-in of tests/helpers/fake_tensorrt.py, the engine's
    execution done by ONNX Runtime on the same Q/DQ ONNX. It checks our glue, not TensorRT."""
    import sys

    from helpers.fake_tensorrt import make_fake_trt

    import bckd_pipeline.device.agent as agent
    import bckd_pipeline.runtimes.tensorrt as trt_backend
    from bckd_pipeline.calibrate.tensorrt import check_tensorrt_qdq
    from bckd_pipeline.runtimes.onnxruntime import OrtRuntime
    from bckd_pipeline.targets import check_availability, get_target

    if check_availability(get_target("jetson")).can_measure:
        pytest.skip("this host has TensorRT: the engine would be built here")
    out = tmp_path / "J"
    rc, _, err = run_cli(
        capsys, "deploy", *OWN, "--onnx", models["dynamic"], "--out", out, "--input-size", "64,64",
        "--input-scale", "normalized", *IMAGENET, "--target", "jetson", *FAST,
    )  # fmt: skip
    assert rc == 3, err
    report = _json(out / "report.json")
    assert [s["name"] for s in report["stages"]] == ["onnx", "onnx-simplified", "onnx-qdq", "tensorrt-int8"]
    assert report["stages"][2]["status"] == "measured" and report["stages"][3]["status"] == "pending"
    qdq = out / "deploy/model.qdq.onnx"
    assert check_tensorrt_qdq(qdq) == []
    bundle = out / "deploy/tensorrt/bundle"
    job = _json(bundle / "job.json")
    # the user's input name, and the shape the dynamic ONNX is built for (an optimisation profile)
    assert job["input_name"] == "input" and job["recipe"]["input_shape"] == [1, 3, 64, 64]
    assert "--minShapes=input:1x3x64x64" in (bundle / "build_engine.sh").read_text()

    fake = make_fake_trt("10.3.0.30", input_shape=(-1, 3, -1, -1), input_name="input")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(agent, "_tensorrt_missing", lambda: [])

    class EngineOnOrt(OrtRuntime):
        backend = "tensorrt"

        def __init__(self, plan, *, name, precision, cuda_graph):
            super().__init__(bundle / "model.qdq.onnx", precision=precision, name=name)

    monkeypatch.setattr(trt_backend, "TensorRTRuntime", EngineOnOrt)
    result = agent.run_job(bundle / "job.json", tmp_path / "device")
    assert result["ok"] and result["engine"] and result["row"] == "tensorrt-int8"
    assert ("add_optimization_profile", ("input", (1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 64, 64))) in fake.calls


@pytest.mark.parametrize("kind", ["pt2", "torchscript", "factory", "onnx"])
def test_every_kind_of_own_model_plans_a_tensorrt_target(models, tmp_path, capsys, monkeypatch, kind):
    folder = models["folder"]
    if kind == "factory":
        monkeypatch.syspath_prepend(str(folder))
        model = ["--model-factory", "outsider_factory:build", "--weights", folder / "outsider.pth", *IMAGENET]
    elif kind == "onnx":
        model = ["--onnx", models["dynamic"], "--input-size", "64,64", "--input-scale", "normalized", *IMAGENET]
    else:
        model = ["--model", folder / ("outsider.pt2" if kind == "pt2" else "outsider.ts"), *IMAGENET]
    out = tmp_path / "R"
    rc, stdout, err = run_cli(capsys, "deploy", *OWN, *model, "--out", out, "--target", "jetson", "--dry-run")
    assert rc == 0, err
    assert " onnx-qdq " in stdout and " device-bundle " in stdout and not out.exists()
