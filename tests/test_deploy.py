"""Stage 3 and deploy: runtimes, INT8 on both backends, the parity ledger and the latency protocol."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers.deploy import HW, NUM_CLASSES, demo_feeds, tiny_checkpoint

from bckd_pipeline.calibrate.onnxruntime import quantize_ort
from bckd_pipeline.runtimes.onnxruntime import OrtRuntime
from bckd_pipeline.deploy.bench import benchmark, synthetic_feeds
from bckd_pipeline.deploy.parity import LedgerStage, compare, ledger
from bckd_pipeline.runtimes.base import Runtime, TensorSpec
from bckd_pipeline.distill.checkpoint import load_model
from bckd_pipeline.errors import ConfigError
from bckd_pipeline.export import simplify, to_onnx
from bckd_pipeline.model_spec import ExportSpec
from bckd_pipeline.targets.profiles import INT8_PARITY, CalibrationSpec, LatencySpec, ParityCriteria


class FakeRuntime(Runtime):
    """Implements the Runtime interface around a numpy function, with an optional fixed delay."""

    backend = "fake"

    def __init__(self, fn, *, delay_s: float = 0.0, name: str = "fake", shape=(1, 3, *HW)) -> None:
        super().__init__(name)
        self.fn, self.delay_s, self.shape = fn, delay_s, shape
        self.calls = 0
        self.in_flight = self.most_in_flight = 0  # requests inside _infer at once (throughput mode overlaps them)
        self._lock = threading.Lock()

    def _activate(self) -> None:
        pass

    def _input_spec(self):
        return {"image": TensorSpec(np.dtype(np.float32), self.shape)}

    def _infer(self, feed):
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            return {"logits": self.fn(feed["image"])}
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy")
    model, meta = load_model(tiny_checkpoint(folder))
    feeds = demo_feeds()
    onnx_path, _ = to_onnx(model, meta, ExportSpec(input_hw=HW), folder / "model.onnx", feeds.head(2))
    sim, _, _ = simplify(onnx_path, folder / "model.sim.onnx", feeds.head(2))
    return folder, sim, demo_feeds("train", n=8)


# --- runtime lifecycle --------------------------------------------------------------------------
def test_runtime_checks_lifecycle_names_dtypes_and_shapes():
    rt = FakeRuntime(lambda x: x)
    with pytest.raises(ConfigError, match="not active"):
        rt.infer({"image": np.zeros((1, 3, *HW), np.float32)})
    with rt:
        with pytest.raises(ConfigError, match=r"takes inputs \['image'\], got \['input'\]"):
            rt.infer({"input": np.zeros((1, 3, *HW), np.float32)})
        with pytest.raises(ConfigError, match="must be float32, got float64"):
            rt.infer({"image": np.zeros((1, 3, *HW))})
        with pytest.raises(ConfigError, match=r"must have shape \(1, 3, 32, 32\), got \(1, 3, 16, 16\)"):
            rt.infer({"image": np.zeros((1, 3, 16, 16), np.float32)})
        rt.infer({"image": np.zeros((1, 3, *HW), np.float32)})
        assert rt.last_latency_s is not None
    assert not rt.is_active


# --- latency protocol ---------------------------------------------------------------------------
def test_latency_protocol_on_a_fake_slow_runtime():
    rt = FakeRuntime(lambda x: x[:, :NUM_CLASSES], delay_s=0.005)
    spec = LatencySpec(warmup_runs=1, warmup_s=0.05, runs=20)
    feeds = synthetic_feeds({"image": TensorSpec(np.dtype(np.float32), (1, 3, *HW))}, count=2)
    with rt:
        report = benchmark(rt, feeds, spec)
    assert report.runs == 20 and rt.calls == 20 + report.warmup_runs
    # At least 1 call *and* at least 0.05 s: the time rule outlasts the count. Calls of >= 5 ms fit
    # at most 10 times in 0.05 s (fewer on a loaded machine, where each call takes longer).
    assert 2 <= report.warmup_runs <= 11
    assert 5.0 <= report.p50 <= report.p90 <= report.p99 and report.p50 < 50
    assert report.fps == pytest.approx(1000.0 / report.mean)
    assert report.mode == "latency" and report.backend == "fake" and "infer()" in report.what_is_timed


def test_throughput_mode_overlaps_requests():
    rt = FakeRuntime(lambda x: x[:, :NUM_CLASSES], delay_s=0.02)
    spec = LatencySpec(warmup_runs=1, warmup_s=0.0, runs=8, streams=4)
    feeds = synthetic_feeds({"image": TensorSpec(np.dtype(np.float32), (1, 3, *HW))}, count=1)
    with rt:
        report = benchmark(rt, feeds, spec, mode="throughput")
    # Requests overlap inside the runtime (checked by count, not by a wall-clock rate a busy machine would upset).
    assert rt.most_in_flight >= 2 and report.fps > 0 and report.p50 is None and report.streams == 4
    with rt, pytest.raises(ConfigError, match="mode 'burst' is not allowed"):
        benchmark(rt, feeds, spec, mode="burst")


# --- parity ledger ------------------------------------------------------------------------------
def _stages(sim, broken_at: str):
    """reference -> export -> simplify -> quantize. ``broken_at`` scrambles its logits, and every later stage,
    being made from the broken artifact, inherits the same scrambling."""
    order = ["reference", "export", "simplify", "quantize"]

    def ort(name, parent, corrupt=False):
        rt = OrtRuntime(sim, name=name)
        if corrupt:
            rt._infer = lambda feed, _inner=rt._infer: {k: v[:, ::-1].copy() for k, v in _inner(feed).items()}
        return LedgerStage(name, "onnxruntime", "fp32", rt, parent)

    return [
        ort(name, parent, order.index(name) >= order.index(broken_at))
        for name, parent in zip(order, [None, *order[:-1]], strict=True)
    ]


@pytest.mark.parametrize("broken_at", ["export", "simplify", "quantize"])
def test_ledger_pins_the_drop_on_the_stage_that_caused_it(artifacts, broken_at):
    _, sim, _ = artifacts
    stages = _stages(sim, broken_at)
    for s in stages:
        s.runtime.activate()
    try:
        criteria = ParityCriteria(max_miou_drop=0.01, min_pixel_agreement=0.999, max_abs_logit=1e-3)
        report = ledger(stages, demo_feeds(), num_classes=NUM_CLASSES, ignore_index=255, criteria=lambda p: criteria)
    finally:
        for s in stages:
            s.runtime.deactivate()
    assert not report and report.culprit.name == broken_at
    broken = report.stage(broken_at)
    assert broken.pixel_agreement_vs_parent < 0.999 and any("agreement" in f for f in broken.failures)
    order = [s.name for s in stages]
    downstream = order[order.index(broken_at) + 1 :]
    for name in downstream:  # inherited the drop, but matches its own parent: not blamed
        row = report.stage(name)
        assert row.passed and row.pixel_agreement_vs_parent == 1.0 and row.pixel_agreement < 1.0
    assert report.stage("reference").miou_delta == 0.0


# --- INT8 on both backends ----------------------------------------------------------------------
def test_ort_int8_qdq_is_per_channel_and_close_to_fp32(artifacts):
    import onnx

    folder, sim, calib = artifacts
    path, settings = quantize_ort(sim, folder / "model.int8.onnx", calib, CalibrationSpec(size=8))
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weight_scales = [i for i in model.graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1]
    assert weight_scales, "per-channel weights have a vector of scales"
    assert settings["activation_type"] == "QUInt8" and settings["weight_type"] == "QInt8"
    with OrtRuntime(sim) as ref, OrtRuntime(path, precision="int8") as cand:
        row = compare(ref, cand, demo_feeds(), criteria=INT8_PARITY, num_classes=NUM_CLASSES)
    assert row.passed, row.failures
    assert row.pixel_agreement > 0.95 and row.max_abs_logit is not None


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_ort_calibration_methods(artifacts, method, tmp_path):
    """Each method gives its own activation ranges: ORT's entropy calibrator, as quantize_static builds it,
    returns MinMax's ranges exactly (a byte-identical file), so the project computes entropy ranges on a finer
    histogram (calibrate/onnxruntime.py)."""
    import onnx
    from onnx import numpy_helper

    _, sim, calib = artifacts
    path, settings = quantize_ort(sim, tmp_path / "q.onnx", calib, CalibrationSpec(size=8, method=method))
    assert path.is_file() and settings["calibration_method"].lower() == method
    minmax, _ = quantize_ort(sim, tmp_path / "minmax.onnx", calib, CalibrationSpec(size=8, method="minmax"))

    def activation_scales(p):
        return {
            i.name: float(numpy_helper.to_array(i))
            for i in onnx.load(str(p)).graph.initializer
            if i.name.endswith("_scale") and not i.dims
        }

    mine, theirs = activation_scales(path), activation_scales(minmax)
    assert mine.keys() == theirs.keys() and any(abs(mine[k] - theirs[k]) > 1e-6 * theirs[k] for k in mine)


def test_openvino_fp32_fp16_and_nncf_int8(artifacts):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from bckd_pipeline.calibrate.openvino import quantize_ir, to_ir
    from bckd_pipeline.runtimes.openvino import OpenVINORuntime

    folder, sim, calib = artifacts
    fp32 = to_ir(sim, folder / "ov/fp32/model.xml", fp16=False)
    fp16 = to_ir(fp32, folder / "ov/fp16/model.xml", fp16=True)
    int8, settings = quantize_ir(
        fp32, folder / "ov/int8/model.xml", calib, CalibrationSpec(size=8), target_device="CPU"
    )
    for xml in (fp32, fp16, int8):
        assert xml.is_file() and xml.with_suffix(".bin").is_file()
    assert "FakeQuantize" in int8.read_text() or "FakeConvert" in int8.read_text()
    assert settings["target_device"] == "CPU" and settings["preset"] == "performance"
    feeds = demo_feeds()
    with OrtRuntime(sim) as ref:
        with OpenVINORuntime(fp32) as rt:
            row = compare(ref, rt, feeds, criteria=ParityCriteria(0.01, 0.999, 1e-3), num_classes=NUM_CLASSES)
            assert row.passed and row.max_abs_logit < 1e-3, row.failures
        with OpenVINORuntime(int8, precision="int8") as rt:
            row = compare(ref, rt, feeds, criteria=INT8_PARITY, num_classes=NUM_CLASSES)
            assert row.passed, row.failures


def test_openvino_accuracy_controlled_quantization(artifacts):
    pytest.importorskip("nncf")
    from bckd_pipeline.calibrate.openvino import quantize_ir, to_ir

    folder, sim, calib = artifacts
    fp32 = to_ir(sim, folder / "acq/fp32/model.xml", fp16=False)
    spec = CalibrationSpec(size=8, max_miou_drop=0.5)
    int8, settings = quantize_ir(
        fp32,
        folder / "acq/int8/model.xml",
        calib,
        spec,
        target_device="CPU",
        validation=demo_feeds(),
        num_classes=NUM_CLASSES,
    )
    assert int8.is_file() and settings["accuracy_control"] and settings["max_miou_drop"] == 0.5
    # The contract: on the validation images NNCF judged, INT8 stays within 0.5 mIoU of FP32.
    from bckd_pipeline.runtimes.openvino import OpenVINORuntime

    with OpenVINORuntime(fp32) as ref, OpenVINORuntime(int8, precision="int8") as rt:
        row = compare(ref, rt, demo_feeds(), criteria=ParityCriteria(0.5, 0.0), num_classes=NUM_CLASSES)
    assert row.passed, row.failures


def test_openvino_absent_device_is_a_clear_error(artifacts):
    pytest.importorskip("openvino")
    from bckd_pipeline.runtimes.openvino import OpenVINORuntime
    from bckd_pipeline.targets.availability import openvino_devices

    if "NPU" in openvino_devices():
        pytest.skip("this host has an NPU")
    with pytest.raises(ConfigError, match="device 'NPU' is not on this host"):
        OpenVINORuntime(artifacts[1], device="NPU").activate()


@pytest.mark.parametrize("fine_tuned", [False, True])
def test_a_fine_tuned_row_is_judged_by_miou_alone(fine_tuned):
    """The QAT row computes something else than its FP32 parent by design: low agreement alone fails an INT8 row
    made from the parent's weights, not a row whose weights were trained again."""

    def logits(x, swap=False):
        out = np.zeros((x.shape[0], NUM_CLASSES, *x.shape[2:]), np.float32)
        out[:, 0], out[:, 1] = x[:, 0], -x[:, 0]
        return out[:, [1, 0, *range(2, NUM_CLASSES)]] if swap else out

    stages = [
        LedgerStage("onnx-simplified", "fake", "fp32", FakeRuntime(logits), None),
        LedgerStage("qat-int8", "fake", "int8", FakeRuntime(lambda x: logits(x, swap=True)), "onnx-simplified"),
    ]
    for s in stages:
        s.runtime.activate()
    try:
        criteria = ParityCriteria(max_miou_drop=100.0, min_pixel_agreement=0.95, max_abs_logit=1e-3)
        report = ledger(
            stages,
            demo_feeds(),
            num_classes=NUM_CLASSES,
            ignore_index=255,
            criteria=lambda p: criteria,
            fine_tuned=frozenset({"qat-int8"} if fine_tuned else ()),
        )
    finally:
        for s in stages:
            s.runtime.deactivate()
    row = report.stage("qat-int8")
    assert row.pixel_agreement_vs_parent < 0.95
    assert row.passed is fine_tuned
    assert fine_tuned or any("agreement" in f for f in row.failures)
