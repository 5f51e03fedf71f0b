"""TensorRT/Jetson targets on a CPU host: the TensorRT-ready Q/DQ ONNX, the pending run (exit 3), the
device agent, and the remote flow against a real OpenSSH server on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.deploy import NUM_CLASSES, demo_feeds
from helpers.ssh import start_sshd, stop_sshd
from helpers.cli import SMOKE, assert_clean_error, run_cli
from torch import nn

from bckd_pipeline.calibrate.onnxruntime import quantize_ort
from bckd_pipeline.calibrate.tensorrt import check_tensorrt_qdq, quantize_for_tensorrt
from bckd_pipeline.runtimes.onnxruntime import OrtRuntime
from bckd_pipeline.deploy.parity import compare
from bckd_pipeline.errors import ConfigError, StageCheckError
from bckd_pipeline.targets import TARGETS, Backend, check_availability, get_target
from bckd_pipeline.targets.profiles import INT8_PARITY, CalibrationSpec

TRT_TARGETS = ("jetson", "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "tensorrt")


# --- the Q/DQ ONNX --------------------------------------------------------------------------------
class ResidualNet(nn.Module):
    """Conv-BN-ReLU stem, a residual block (the Add TensorRT must see Q/DQ on), a head and an upsample."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8)
        )
        self.head = nn.Conv2d(8, NUM_CLASSES, 1)

    def forward(self, x):
        y = self.stem(x / 255.0)
        y = torch.relu(y + self.block(y))
        return nn.functional.interpolate(self.head(y), scale_factor=2, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def residual_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = ResidualNet().eval()
    path = tmp_path_factory.mktemp("qdq") / "model.onnx"
    torch.onnx.export(
        model, torch.rand(1, 3, 32, 32) * 255, str(path), input_names=["image"], output_names=["logits"],
        opset_version=17, dynamo=False,
    )  # fmt: skip
    return path


def _graph(path: Path):
    import onnx

    return onnx.load(str(path)).graph


def test_qdq_onnx_is_tensorrt_ready_and_close_to_fp32(residual_onnx, tmp_path):
    from onnx import numpy_helper

    calib = demo_feeds("train", n=8)
    path, settings = quantize_for_tensorrt(residual_onnx, tmp_path / "m.qdq.onnx", calib, CalibrationSpec(size=8))
    assert check_tensorrt_qdq(path) == []
    g = _graph(path)
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    # int8, zero point 0, on every Q and DQ
    qdq = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any() for n in qdq)
    # per-channel Conv weights: one scale per output channel, axis 0; float bias
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert len(convs) == 4
    for conv in convs:
        w_dq = producer[conv.input[1]]
        assert w_dq.op_type == "DequantizeLinear" and inits[w_dq.input[0]].dtype == np.int8
        out_channels = inits[w_dq.input[0]].shape[0]
        assert inits[w_dq.input[1]].shape == (out_channels,)
        assert producer[conv.input[0]].op_type == "DequantizeLinear"
        assert conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32
    # the residual Add as TensorRT recommends: Q/DQ on the residual (skip) input only; the convolution side
    # feeds the Add directly, so TensorRT fuses the Add into that INT8 convolution
    (add,) = [n for n in g.node if n.op_type == "Add"]
    assert sorted(producer[i].op_type for i in add.input) == ["Conv", "DequantizeLinear"]
    residual = next(i for i in add.input if producer[i].op_type == "DequantizeLinear")
    assert producer[_through_qdq(residual, producer)].op_type == "Relu"  # the skip branch: the stem's output
    assert settings["residual_adds_fused"] == 1 and settings["placement_version"]
    assert settings["quantizer"] == "onnxruntime" and settings["calibration_images"] == 8
    # and it still computes the same segmentation on ONNX Runtime's CPU
    with OrtRuntime(residual_onnx) as ref, OrtRuntime(path, precision="int8") as cand:
        row = compare(ref, cand, demo_feeds(), criteria=INT8_PARITY, num_classes=NUM_CLASSES)
    assert row.passed, row.failures


def _through_qdq(name, producer):
    from bckd_pipeline.calibrate.tensorrt import _through_qdq as through

    return through(name, producer)


def _edit_add(src: Path, dst: Path, *, strip: str) -> None:
    """Copy of a Q/DQ ONNX with the Q/DQ pair removed from the Add's conv-side or residual input."""
    import onnx

    from bckd_pipeline.calibrate.tensorrt import residual_adds

    model = onnx.load(str(src))
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    ((add, conv_side, residual),) = residual_adds(g)
    if strip == "residual":
        add.input[list(add.input).index(residual)] = _through_qdq(residual, producer)
    onnx.save(model, str(dst))


def test_the_check_accepts_model_optimizer_placement_and_both_quantized_but_not_a_bare_residual(
    residual_onnx, tmp_path
):
    """Model Optimizer leaves the conv side of residual Adds unquantized: that passes. Q/DQ on both inputs (ONNX
    Runtime's placement) passes too. Only a residual input without Q/DQ fails: TensorRT could not fuse the Add
    in INT8."""
    import onnx

    from bckd_pipeline.calibrate.onnxruntime import quantize_qdq
    from bckd_pipeline.calibrate.tensorrt import QUANTIZED_OPS

    calib = demo_feeds("train", n=4)
    path, _ = quantize_for_tensorrt(residual_onnx, tmp_path / "ours.onnx", calib, CalibrationSpec(size=4))
    assert check_tensorrt_qdq(path) == []  # what modelopt writes: conv side bare, residual quantized
    both = tmp_path / "both.onnx"  # Q/DQ on both inputs, straight from ONNX Runtime
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False, "DedicatedQDQPair": True}
    quantize_qdq(residual_onnx, both, calib, CalibrationSpec(size=4), activation_type="QInt8",
                 op_types=list(QUANTIZED_OPS), extra=extra)  # fmt: skip
    g = onnx.load(str(both)).graph
    (add,) = [n for n in g.node if n.op_type == "Add"]
    producer = {o: n for n in g.node for o in n.output}
    assert [producer[i].op_type for i in add.input] == ["DequantizeLinear", "DequantizeLinear"]
    assert check_tensorrt_qdq(both) == []
    _edit_add(path, tmp_path / "bare.onnx", strip="residual")
    problems = check_tensorrt_qdq(tmp_path / "bare.onnx")
    assert len(problems) == 1 and "residual input has no Q/DQ" in problems[0]


def test_a_layer_kept_in_float_passes_the_check_and_a_half_quantized_one_does_not(residual_onnx, tmp_path):
    """--int8-exclude with the TensorRT quantizer: the excluded convolution has Q/DQ on neither its data nor its
    weights, a layer TensorRT runs in float (explicit quantization quantizes only what Q/DQ marks). It passes the
    check; a convolution with quantized weights and float data (or the reverse) does not."""
    import onnx

    calib = demo_feeds("train", n=4)
    head = next(n.name for n in _graph(residual_onnx).node if n.op_type == "Conv" and "head" in n.name)
    path, settings = quantize_for_tensorrt(
        residual_onnx, tmp_path / "x.qdq.onnx", calib, CalibrationSpec(size=4, exclude=(head,))
    )
    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    (conv,) = [n for n in model.graph.node if n.name == head]
    assert all(i not in producer or producer[i].op_type != "DequantizeLinear" for i in conv.input)
    assert check_tensorrt_qdq(path) == []
    assert settings["int8_exclude"]["nodes"] == [head]

    stem = next(n for n in model.graph.node if n.op_type == "Conv" and "stem" in n.name)
    stem.input[0] = producer[producer[stem.input[0]].input[0]].input[0]  # float data into quantized weights
    onnx.save(model, str(tmp_path / "half.onnx"))
    problems = check_tensorrt_qdq(tmp_path / "half.onnx")
    assert len(problems) == 1 and "data input has no Q/DQ" in problems[0]


def test_the_check_rejects_a_cpu_style_qdq_onnx(residual_onnx, tmp_path):
    """ONNX Runtime's CPU default (u8 activations, int32 biases) is exactly what TensorRT rejects."""
    path, _ = quantize_ort(residual_onnx, tmp_path / "u8.onnx", demo_feeds("train", n=8), CalibrationSpec(size=8))
    problems = check_tensorrt_qdq(path)
    assert any("uint8 zero point" in p for p in problems)
    assert any("the bias is quantized" in p for p in problems)
    assert check_tensorrt_qdq(residual_onnx) == [
        "the graph has no QuantizeLinear/DequantizeLinear nodes (not an explicitly quantized ONNX)"
    ]


def test_modelopt_quantizer_without_modelopt_is_a_clear_error(residual_onnx, tmp_path):
    from bckd_pipeline.errors import BackendMissingError

    if importlib.util.find_spec("modelopt"):
        pytest.skip("modelopt is installed here")
    with pytest.raises(BackendMissingError, match=r"bckd-pipeline\[modelopt\]"):
        quantize_for_tensorrt(
            residual_onnx, tmp_path / "m.onnx", demo_feeds("train", n=2), CalibrationSpec(size=2), quantizer="modelopt"
        )
    assert not (tmp_path / "m.onnx").exists()


# --- targets --------------------------------------------------------------------------------------
def test_tensorrt_targets_exist_and_say_where_the_engine_is_built():
    for name in TRT_TARGETS:
        t = get_target(name)
        assert t.backend is Backend.TENSORRT and t.precision == "int8" and t.calibration is not None
        a = check_availability(t)
        assert a.can_build  # the Q/DQ ONNX and the bundle need only ONNX Runtime
        if not a.can_measure:
            assert "not importable" in a.reason or "not a Jetson" in a.reason
    assert set(TRT_TARGETS) <= set(TARGETS)
    assert get_target("jetson-orin-nano").tensorrt.dla_cores == 0
    assert get_target("jetson-agx-orin").tensorrt.dla_cores == 2
    assert not get_target("tensorrt").tensorrt.jetson


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--target", "onnxruntime-cpu", "--device", "ssh://me@host"], "applies to TensorRT targets"),
        (["--target", "openvino-cpu", "--dla-core", "0"], "applies to TensorRT targets"),
        (["--target", "jetson-orin-nano", "--dla-core", "0"], "has no DLA"),
        (["--target", "jetson-agx-orin", "--dla-core", "2"], "use 0..1"),
        (["--target", "jetson", "--device", "ssh://me@host:99999"], "port must be a number"),
        (["--target", "jetson", "--device", "ssh://me@host/some/path"], "only user, host and port"),
        (["--target", "jetson", "--device", "ssh://a@b", "--device", "ssh://c@d"], "one deployment device"),
        (["--target", "jetson", "--dynamic", "height,width"], "static shape"),
        (["--target", "jetson", "--trt-quantizer", "tensorrt"], "Allowed: onnxruntime, modelopt"),
        (["--target", "jetson", "--workspace-mib", "0"], "--workspace-mib must be >= 1"),
        (["--target", "jetson", "--nncf-max-miou-drop", "0.5"], "applies to OpenVINO targets"),
    ],
)
def test_bad_tensorrt_flags(tmp_path, capsys, flags, expected):
    rc, _, err = run_cli(capsys, "run", *SMOKE, "--out", tmp_path / "R", "--dry-run", *flags)
    assert_clean_error(rc, err, tmp_path / "R")
    assert expected in err


def test_device_flag_for_training_commands_is_refused(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "train-teacher", *SMOKE, "--out", tmp_path / "T", "--device", "ssh://me@host")
    assert_clean_error(rc, err, tmp_path / "T")
    assert "names a deployment device" in err


# --- run --target jetson with no TensorRT anywhere ------------------------------------------------
@pytest.fixture(scope="module")
def jetson_run(tmp_path_factory):
    from bckd_pipeline.cli import main

    if check_availability(get_target("jetson")).can_measure:
        pytest.skip("this host is a Jetson with TensorRT: the engine would be built here")
    out = tmp_path_factory.mktemp("jetson") / "R"
    rc = main(["run", *SMOKE, "--out", str(out), "--target", "jetson", "--latency-runs", "5"])
    assert rc == 3, f"run --target jetson exited {rc}"
    return out


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_run_target_jetson_without_tensorrt_is_an_honest_pending_report(jetson_run):
    out = jetson_run
    report = _json(out / "report.json")
    assert report["status"] == "pending" and report["exit_code"] == 3
    names = [r["name"] for r in report["stages"]]
    assert names == ["pytorch", "onnx", "onnx-simplified", "onnx-qdq", "tensorrt-int8"]
    qdq, engine = report["stages"][-2], report["stages"][-1]
    assert qdq["status"] == "measured" and qdq["parity_passed"] and qdq["miou"] is not None
    assert engine["status"] == "pending" and engine["artifact"] is None
    assert engine["miou"] is None and engine["fps"] is None and all(v is None for v in engine["latency_ms"].values())
    assert "--device ssh://" in engine["note"] and "README.txt" in engine["note"]
    assert report["device"]["status"] == "pending" and report["device"]["where"] is None
    assert "bckd-pipeline ingest" in engine["note"]
    assert _json(out / "command.json")["argv"][0] == "run"  # what `ingest` replays
    assert check_tensorrt_qdq(out / "deploy/model.qdq.onnx") == []
    bundle = out / "deploy/tensorrt/bundle"
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        ["job.json", "model.qdq.onnx", "feeds.npz", "agent.pyz", "build_engine.sh", "README.txt"]
    )
    script = (bundle / "build_engine.sh").read_text()
    # JetPack 6 ships TensorRT 10.3: weakly typed, so the precision flags are spelled out
    assert "trtexec" in script and "--onnx=model.qdq.onnx" in script and "--int8" in script
    assert subprocess.run(["sh", "-n", str(bundle / "build_engine.sh")]).returncode == 0
    manifest = _json(out / "manifest.json")
    assert manifest["deployable"] == ["deploy/model.qdq.onnx"]
    assert {f["path"] for f in manifest["device_bundle"]} == {
        f"deploy/tensorrt/bundle/{n}"
        for n in ("job.json", "model.qdq.onnx", "feeds.npz", "agent.pyz", "build_engine.sh", "README.txt")
    }
    assert manifest["engine"] is None and manifest["calibration_manifest"]["sha256"]
    assert not (out / "deploy/tensorrt/device").exists()
    md = (out / "report.md").read_text()
    assert "tensorrt-int8" in md and "pending" in md


@pytest.mark.slow
def test_the_agent_runs_without_torch_or_onnx_and_falls_back_to_onnxruntime(jetson_run, tmp_path):
    """What a bare Jetson image has: Python, numpy, maybe ONNX Runtime; never torch."""
    bundle = jetson_run / "deploy/tensorrt/bundle"
    blockers = tmp_path / "blockers"
    blockers.mkdir()
    for name in ("torch", "onnx", "onnxsim", "tensorrt", "pycuda"):
        (blockers / f"{name}.py").write_text(f"raise ImportError('{name} must not be imported by the agent')\n")
    env = {**os.environ, "PYTHONPATH": str(blockers)}
    res = subprocess.run(
        [sys.executable, str(bundle / "agent.pyz"), str(bundle / "job.json"), str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = _json(tmp_path / "out/result.json")
    assert result["ok"] and result["engine"] is None and result["backend"] == "onnxruntime"
    assert "no engine was built" in result["fallback"] and "tensorrt" in result["fallback"]
    assert result["latency"]["runs"] == 5 and result["latency"]["p50"] > 0
    assert result["digests"] == _json(bundle / "job.json")["digests"]
    assert "is_jetson" in result["facts"]


@pytest.mark.slow
def test_a_tampered_or_foreign_device_result_is_refused(jetson_run, tmp_path):
    from bckd_pipeline.device.agent import main as agent_main
    from bckd_pipeline.device.bundle import read_result

    bundle = jetson_run / "deploy/tensorrt/bundle"
    out = tmp_path / "out"
    assert agent_main([str(bundle / "job.json"), str(out)]) == 0
    job = _json(bundle / "job.json")
    assert read_result(out, job)["ok"]
    with pytest.raises(StageCheckError, match="belongs to another job"):
        read_result(out, {**job, "digests": job["digests"][::-1] + ["x"]})
    with open(out / "labels.npz", "r+b") as f:  # a transfer cut short
        f.truncate(100)
    with pytest.raises(StageCheckError, match="transfer was incomplete"):
        read_result(out, job)


# --- the remote flow against a real sshd ----------------------------------------------------------
@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    stop_sshd(server)


def _ssh_flags(server, *, identity=None, known_hosts=None) -> list[str]:
    return [
        "--ssh-identity", str(identity or server.identity),
        "--ssh-known-hosts", str(known_hosts or server.known_hosts),
        "--device-python", sys.executable,
    ]  # fmt: skip


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow
def test_remote_device_over_ssh_completes_with_device_side_measurements(jetson_run, sshd, tmp_path, capsys):
    out = _copy(jetson_run, tmp_path / "R")
    rc, stdout, err = run_cli(
        capsys, "run", *SMOKE, "--out", out, "--target", "jetson", "--latency-runs", "5",
        "--device", sshd.url, *_ssh_flags(sshd),
    )  # fmt: skip
    assert rc == 0, err
    report = _json(out / "report.json")
    assert report["status"] == "complete"
    row = report["stages"][-1]
    assert row["name"] == "onnx-qdq-on-device" and row["status"] == "measured" and row["parent"] == "onnx-qdq"
    assert row["latency_ms"]["p50"] > 0 and row["latency"]["runs"] == 5
    # the device ran the same Q/DQ ONNX with the same runtime: it must agree with the host's row exactly
    assert row["parity_passed"] and row["pixel_agreement_vs_parent"] == 1.0
    assert sshd.url in row["device"] and "fallback" in row["device"]
    dev = report["device"]
    assert dev["status"] == "measured" and dev["where"] == sshd.url and dev["engine"] is None
    assert "no engine was built" in dev["fallback"] and "is_jetson" in dev["facts"]
    assert (out / "deploy/tensorrt/device/result.json").is_file()
    assert "No TensorRT engine" in stdout
    # a rerun with the same device reuses its result instead of going back to it
    stamp = (out / "deploy/tensorrt/device/result.json").stat().st_mtime_ns
    rc, _, err = run_cli(
        capsys, "run", *SMOKE, "--out", out, "--target", "jetson", "--latency-runs", "5",
        "--device", sshd.url, *_ssh_flags(sshd),
    )  # fmt: skip
    assert rc == 0, err
    assert (out / "deploy/tensorrt/device/result.json").stat().st_mtime_ns == stamp
    assert "device: copying" not in err
    rc, _, err = run_cli(
        capsys, "run", *SMOKE, "--out", out, "--target", "jetson", "--latency-runs", "5",
        "--device", "ssh://nobody@127.0.0.1:1", *_ssh_flags(sshd),
    )  # fmt: skip
    assert rc == 2 and "unreachable" in err  # another device is another job: it is asked, and is not there


def _remote_failure(capsys, out, sshd, *flags, device=None):
    rc, _, err = run_cli(
        capsys, "run", *SMOKE, "--out", out, "--target", "jetson", "--latency-runs", "5",
        "--device", device or sshd.url, *flags,
    )  # fmt: skip
    # The run's stage lines (progress.py: "stage export: started") come before the error: set them aside.
    return rc, "".join(line for line in err.splitlines(keepends=True) if not line.startswith("stage "))


def _nothing_half_written(out: Path) -> None:
    folder = out / "deploy/tensorrt"
    assert not (folder / "device").exists()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_remote_host_unreachable(jetson_run, sshd, tmp_path, capsys):
    out = _copy(jetson_run, tmp_path / "R")
    rc, err = _remote_failure(capsys, out, sshd, *_ssh_flags(sshd), device="ssh://nobody@127.0.0.1:1")
    assert rc == 2 and err.startswith("error: ") and "unreachable" in err and "Traceback" not in err
    _nothing_half_written(out)


@pytest.mark.slow
def test_remote_authentication_failure(jetson_run, sshd, tmp_path, capsys):
    out = _copy(jetson_run, tmp_path / "R")
    rc, err = _remote_failure(capsys, out, sshd, *_ssh_flags(sshd, identity=sshd.wrong_identity))
    assert rc == 2 and "refused the login" in err and "--ssh-identity" in err
    _nothing_half_written(out)


@pytest.mark.slow
def test_remote_unknown_host_key_is_refused(jetson_run, sshd, tmp_path, capsys):
    out = _copy(jetson_run, tmp_path / "R")
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    rc, err = _remote_failure(capsys, out, sshd, *_ssh_flags(sshd, known_hosts=empty))
    assert rc == 2 and "host-key checking stays on" in err and "ssh-keyscan" in err
    _nothing_half_written(out)


def _device(sshd, **options):
    from bckd_pipeline.context import SshOptions
    from bckd_pipeline.device.remote import RemoteDevice, SshTarget

    opts = SshOptions(identity=sshd.identity, known_hosts=sshd.known_hosts, python=sys.executable, **options)
    return RemoteDevice(SshTarget.parse(sshd.url), opts)


def _remote_workdirs(sshd) -> set[str]:
    res = _device(sshd).run(
        [sys.executable, "-c", "import glob, tempfile; print(*glob.glob(tempfile.gettempdir() + '/bckd-pipeline-*'))"],
        timeout=30, what="listing",
    )  # fmt: skip
    return set(res.stdout.split())


@pytest.mark.slow
def test_remote_build_error_is_reported_and_nothing_is_kept(jetson_run, sshd, tmp_path):
    bundle = _copy(jetson_run / "deploy/tensorrt/bundle", tmp_path / "bundle")
    (bundle / "model.qdq.onnx").write_bytes(b"not an onnx file")
    job = _json(bundle / "job.json")
    before = _remote_workdirs(sshd)
    with pytest.raises(StageCheckError, match="device-side build or measurement failed") as e:
        _device(sshd).run_bundle(bundle, tmp_path / "device", job, progress=lambda m: None)
    assert "model.qdq.onnx" in str(e.value) or "ONNX" in str(e.value)
    assert not (tmp_path / "device").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert _remote_workdirs(sshd) == before  # the remote work folder is removed too


@pytest.mark.slow
def test_interrupted_transfer_is_a_clear_error_and_nothing_is_kept(jetson_run, sshd, tmp_path):
    from bckd_pipeline.device.remote import DeviceError

    bundle = _copy(jetson_run / "deploy/tensorrt/bundle", tmp_path / "bundle")
    # 2 MB that cannot be compressed, at 800 kbit/s: the copy is cut off by the transfer timeout
    np.save(bundle / "padding.npy", np.random.default_rng(0).integers(0, 255, 2_000_000, dtype=np.uint8))
    os.replace(bundle / "padding.npy", bundle / "README.txt")
    job = _json(bundle / "job.json")
    before = _remote_workdirs(sshd)
    device = _device(sshd, transfer_timeout_s=1.0, bandwidth_kbps=800)
    with pytest.raises(DeviceError, match="did not finish within 1 s") as e:
        device.run_bundle(bundle, tmp_path / "device", job, progress=lambda m: None)
    assert "copying the bundle" in str(e.value)
    assert not (tmp_path / "device").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert _remote_workdirs(sshd) == before


def test_ssh_target_parsing():
    from bckd_pipeline.device.remote import SshTarget

    t = SshTarget.parse("ssh://nvidia@192.168.55.1:2222")
    assert (t.user, t.host, t.port, t.destination, str(t)) == (
        "nvidia", "192.168.55.1", 2222, "nvidia@192.168.55.1", "ssh://nvidia@192.168.55.1:2222"
    )  # fmt: skip
    assert SshTarget.parse("ssh://jetson.local").destination == "jetson.local"
    for bad in ("nvidia@host", "http://host", "ssh://", "ssh://-oProxyCommand=x@host", "ssh://u;rm@host"):
        with pytest.raises(ConfigError):
            SshTarget.parse(bad)


# --- the TensorRT branch of the agent, in-process, with recording stand-ins ------------------------
@pytest.mark.slow
def test_engine_path_end_to_end_with_stand_ins_for_tensorrt(jetson_run, tmp_path, capsys, monkeypatch):
    """What `run --target tensorrt` does on a GPU host, with TensorRT's builder replaced by the recording fake
    of tests/helpers/fake_tensorrt.py and the engine's execution by ONNX Runtime on the same Q/DQ ONNX. It checks our
    glue (job -> recipe -> build -> trtexec.sh -> runtime -> result -> ledger row, report, manifest), not TensorRT.
    """
    from helpers.fake_tensorrt import make_fake_trt

    import bckd_pipeline.device.agent as agent
    import bckd_pipeline.runtimes.tensorrt as trt_backend
    import bckd_pipeline.plan_checks as plan_checks
    from bckd_pipeline.targets import Availability

    out = _copy(jetson_run, tmp_path / "R")
    fake = make_fake_trt("10.3.0.30", input_shape=(1, 3, 64, 64))
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(agent, "_tensorrt_missing", lambda: [])
    monkeypatch.setattr(plan_checks, "check_availability", lambda profile: Availability(True, True, ""))
    qdq = out / "deploy/tensorrt/bundle/model.qdq.onnx"

    class EngineOnOrt(OrtRuntime):
        backend = "tensorrt"

        def __init__(self, plan, *, name, precision, cuda_graph):
            assert Path(plan).read_bytes() == b"PLAN-BYTES"  # the plan the build wrote is the one that runs
            super().__init__(qdq, precision=precision, name=name)

    monkeypatch.setattr(trt_backend, "TensorRTRuntime", EngineOnOrt)
    rc, stdout, err = run_cli(capsys, "run", *SMOKE, "--out", out, "--target", "tensorrt", "--latency-runs", "5")
    assert rc == 0, err
    # The folder already held the jetson target's run: tensorrt's report and manifest are its own files.
    report = _json(out / "report.tensorrt.json")
    row = report["stages"][-1]
    assert row["name"] == "tensorrt-int8" and row["backend"] == "tensorrt" and row["status"] == "measured"
    assert row["artifact"] == "deploy/tensorrt/device/model.plan" and row["parent"] == "onnx-qdq"
    assert row["parity_passed"] and row["pixel_agreement_vs_parent"] == 1.0 and row["latency"]["runs"] == 5
    dev = report["device"]
    assert dev["where"] == "here" and dev["fallback"] is None
    import hashlib

    assert dev["engine"]["sha256"] == hashlib.sha256(b"PLAN-BYTES").hexdigest()
    assert dev["engine"]["build"]["typing"] == "weak" and dev["engine"]["build"]["builder_flags"] == ["INT8", "FP16"]
    assert dev["engine"]["trtexec"][:3] == ["trtexec", "--onnx=model.qdq.onnx", "--saveEngine=model.plan"]
    script = (out / "deploy/tensorrt/device/trtexec.sh").read_text()
    assert "--int8" in script
    onnx_arg = next(w for w in script.split() if w.startswith("--onnx="))[len("--onnx=") :]
    assert (out / "deploy/tensorrt/device" / onnx_arg).resolve() == qdq.resolve()  # the script cds to its folder
    manifest = _json(out / "manifest.tensorrt.json")
    assert manifest["deployable"] == ["deploy/tensorrt/device/model.plan"]
    assert manifest["engine"]["sha256"] == dev["engine"]["sha256"]
    assert "No TensorRT engine" not in stdout


# --- finishing a pending run by hand: the agent's result read in with `bckd-pipeline ingest` ----------
CI_BUDGETS = Path(__file__).resolve().parents[1] / "docs/ci/budgets.toml"


def _agent_locally(bundle: Path, out: Path) -> Path:
    """What a user does on the device: `python3 agent.pyz job.json out`, here with torch and onnx made unimportable."""
    blockers = out.parent / "blockers"
    blockers.mkdir(exist_ok=True)
    for name in ("torch", "onnx", "tensorrt", "pycuda"):
        (blockers / f"{name}.py").write_text(f"raise ImportError('{name} is not on this device')\n")
    res = subprocess.run(
        [sys.executable, str(bundle / "agent.pyz"), str(bundle / "job.json"), str(out)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(blockers)}, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.slow
def test_ingest_fills_a_pending_run_from_the_agents_result_and_the_gate_then_decides(jetson_run, tmp_path, capsys):
    out = _copy(jetson_run, tmp_path / "R")
    rc, _, _ = run_cli(capsys, "gate", out, "--budgets", CI_BUDGETS)
    assert rc == 3  # before: pending, forever
    result = _agent_locally(out / "deploy/tensorrt/bundle", tmp_path / "device-out")
    rc, stdout, err = run_cli(capsys, "ingest", out, result)
    assert rc == 0, err
    assert "ingested" in err and "onnx-qdq-on-device" in stdout
    report = _json(out / "report.json")
    assert report["status"] == "complete" and report["exit_code"] == 0
    row = report["stages"][-1]
    assert row["name"] == "onnx-qdq-on-device" and row["status"] == "measured" and row["parent"] == "onnx-qdq"
    assert row["parity_passed"] and row["pixel_agreement_vs_parent"] == 1.0 and row["latency"]["runs"] == 5
    assert "by hand" in row["device"] and "fallback" in row["device"]
    assert report["device"]["status"] == "measured" and report["device"]["where"].startswith("by hand")
    assert "tensorrt-int8" not in [r["name"] for r in report["stages"]]  # the pending row is replaced
    assert (out / "deploy/tensorrt/device/ingested.json").is_file()
    assert "| pending |" not in (out / "report.md").read_text()
    rc, gate_out, _ = run_cli(capsys, "gate", out, "--budgets", CI_BUDGETS)
    assert rc in (0, 1) and "onnx-qdq-on-device" in gate_out
    assert not [line for line in gate_out.splitlines() if line.strip().startswith(("pending", "PENDING"))]
    # the same, gated in one step, exit 0 or 1 (never 3)
    rc, stdout, _ = run_cli(capsys, "ingest", out, result, "--budgets", CI_BUDGETS)
    assert rc in (0, 1) and "gate" in stdout


@pytest.mark.slow
def test_ingest_of_a_result_made_over_ssh_on_the_loopback_device(jetson_run, sshd, tmp_path, capsys):
    """The agent runs on the OpenSSH test bed (the device), its out/ comes back, and ingest completes the run."""
    out = _copy(jetson_run, tmp_path / "R")
    bundle = out / "deploy/tensorrt/bundle"
    _device(sshd).run_bundle(bundle, tmp_path / "from-device", _json(bundle / "job.json"), progress=lambda m: None)
    rc, _, err = run_cli(capsys, "ingest", out, tmp_path / "from-device", "--budgets", CI_BUDGETS)
    assert rc in (0, 1), err
    assert _json(out / "report.json")["status"] == "complete"


@pytest.mark.slow
def test_ingest_refuses_a_result_of_another_bundle_or_altered_files(jetson_run, tmp_path, capsys):
    out = _copy(jetson_run, tmp_path / "R")
    bundle = out / "deploy/tensorrt/bundle"
    result = _agent_locally(bundle, tmp_path / "device-out")
    foreign = _copy(result, tmp_path / "foreign")
    data = _json(foreign / "result.json")
    data["job_id"] = "0123456789abcdef"
    (foreign / "result.json").write_text(json.dumps(data))
    rc, _, err = run_cli(capsys, "ingest", out, foreign)
    assert_clean_error(rc, err, None)
    assert "belongs to another bundle" in err
    altered = _copy(result, tmp_path / "altered")
    with open(altered / "labels.npz", "r+b") as f:
        f.truncate(50)
    rc, _, err = run_cli(capsys, "ingest", out, altered)
    assert_clean_error(rc, err, None)
    assert "transfer was incomplete" in err
    rc, _, err = run_cli(capsys, "ingest", out, tmp_path / "nowhere")
    assert_clean_error(rc, err, None)
    assert "no result.json" in err
    rc, _, err = run_cli(capsys, "ingest", tmp_path, result)
    assert_clean_error(rc, err, None)
    assert "command.json" in err
    assert not (out / "deploy/tensorrt/device").exists()  # nothing was kept
    assert _json(out / "report.json")["status"] == "pending"


@pytest.mark.slow
def test_a_detectors_device_rows_with_nms_inside_are_ingested_into_its_ledger(tmp_path, capsys):
    """`run --task detection --head nms --target jetson` (pending here), the agent on the device (ONNX Runtime
    fallback), then `ingest`: the device's saved detection rows replay into the ledger as the detection task reads
    them, and score against the Q/DQ ONNX they came from."""
    if check_availability(get_target("jetson")).can_measure:
        pytest.skip("this host is a Jetson with TensorRT: the engine would be built here")
    out = tmp_path / "R"
    rc, _, err = run_cli(capsys, "run", *SMOKE, "--task", "detection", "--head", "nms", "--out", out, "--target",
                         "jetson", "--latency-runs", "5")  # fmt: skip
    assert rc == 3, err[-3000:]
    result = _agent_locally(out / "deploy/tensorrt/bundle", tmp_path / "device-out")
    rc, _, err = run_cli(capsys, "ingest", out, result)
    assert rc == 0, err[-3000:]
    report = _json(out / "report.json")
    assert report["task"] == "detection" and report["status"] == "complete"
    rows = {r["name"]: r for r in report["stages"]}
    row = rows["onnx-qdq-on-device"]
    assert row["status"] == "measured" and row["parent"] == "onnx-qdq" and row["parity_passed"]
    assert row["map"] == rows["onnx-qdq"]["map"] and row["matched_share_vs_parent"] == 1.0
    assert row["score_agreement"] is None  # a graph with NMS inside: judged by its detections
