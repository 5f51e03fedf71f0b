"""Stages 2-3 of a detector: the raw-head export, the feeds with boxes, INT8 with the head's decoding in float,
and `deploy` to ONNX Runtime and OpenVINO with AP in the ledger, the report and the gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers.cli import run_cli
from PIL import Image

from bckd_pipeline.configs import CheckpointMeta
from bckd_pipeline.data import build_detection_dataset
from bckd_pipeline.data.base import Normalization
from bckd_pipeline.data.detection_transforms import DetEvalTransform
from bckd_pipeline.data.feeds import DatasetFeeds
from bckd_pipeline.distill.checkpoint import load_model, save_checkpoint
from bckd_pipeline.distill.detection import build_detector
from bckd_pipeline.errors import ConfigError
from bckd_pipeline.export import read_metadata, simplify, to_onnx
from bckd_pipeline.export.wrapper import DetExportWrapper
from bckd_pipeline.model_spec import ExportSpec
from bckd_pipeline.tasks.detection import DETECTION

HW = (64, 96)  # multiples of 32, as the presets need
OUTPUTS = ("scores", "boxes", "centerness")


def tiny_detector_checkpoint(folder: Path, cls_bias: float | None = None) -> Path:
    """An untrained ``fcos-tiny-s`` on the demo scenes' classes (the fixture the issue names); ``cls_bias``: its
    class logits' bias, high enough that it detects something everywhere (an untrained one detects nothing)."""
    names = tuple(build_detection_dataset("demo", "val").info.class_names)
    torch.manual_seed(0)
    model = build_detector("fcos-tiny-s", len(names), class_names=list(names))
    if cls_bias is not None:
        with torch.no_grad():
            model.head.cls_logits.bias.fill_(cls_bias)
    path = Path(folder) / "det.pt"
    meta = CheckpointMeta(
        model="fcos-tiny-s", task="detection", ignore_index=-1, num_classes=len(names), class_names=names, input_hw=HW
    )
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return load_model(tiny_detector_checkpoint(tmp_path_factory.mktemp("det")))


def det_feeds(n: int = 3, normalization: Normalization | None = None) -> DatasetFeeds:
    ds = build_detection_dataset("demo", "val")
    return DatasetFeeds.from_dataset(ds, range(n), HW, normalization=normalization)


def test_export_spec_speaks_the_tasks_heads_and_outputs():
    spec = ExportSpec(input_hw=HW, head="raw", task="detection")
    assert spec.output_names == OUTPUTS and spec.output_name == "scores"
    assert ExportSpec(input_hw=HW).output_names == ("logits",)  # segmentation unchanged
    nms = ExportSpec(input_hw=HW, head="nms", task="detection")  # the raw network, NMS appended after simplify
    assert nms.network_head == "raw" and nms.output_names == OUTPUTS
    assert nms.deployed_output_names == ("num_dets", "det_boxes", "det_scores", "det_labels")
    assert ExportSpec(input_hw=HW, head="nms", task="detection", dynamic=("batch",)).dynamic == ("batch",)
    with pytest.raises(ConfigError, match="anchor points are fixed by the input size"):
        ExportSpec(input_hw=HW, head="nms", task="detection", dynamic=("height", "width"))
    with pytest.raises(ConfigError, match="for a detection model"):
        ExportSpec(input_hw=HW, head="argmax", task="detection")
    with pytest.raises(ConfigError, match="for a segmentation model"):
        ExportSpec(input_hw=HW, head="raw")


def test_feeds_hold_targets_in_the_inputs_pixels():
    ds = build_detection_dataset("demo", "val")
    image, inst = ds.load(0)
    feeds = DatasetFeeds.from_dataset(ds, [0], HW)
    (feed, target), = list(feeds.pairs())
    assert feed["image"].shape == (1, 3, *HW) and feed["image"].dtype == np.float32
    assert set(target) == {"boxes", "labels", "iscrowd"} and len(target["boxes"]) == len(inst)
    sy, sx = HW[0] / image.shape[0], HW[1] / image.shape[1]
    np.testing.assert_allclose(target["boxes"], inst.boxes * np.array([sx, sy, sx, sy]), rtol=1e-5)
    # the same pixels as the evaluation transform's
    x, t = DetEvalTransform(resize=HW, normalization=Normalization())(image, inst)
    np.testing.assert_allclose(target["boxes"], t["boxes"].numpy(), rtol=1e-6)
    assert feeds.digests == DatasetFeeds.from_dataset(ds, [0], (32, 32)).digests  # digests: the decoded pixels


def test_wrapper_and_export_check_every_output(detector, tmp_path):
    model, meta = detector
    norm = Normalization(meta.mean, meta.std)
    wrapper = DetExportWrapper(model, normalize=norm)
    raw = torch.rand(1, 3, *HW) * 255
    normalised = torch.from_numpy(norm(raw[0].permute(1, 2, 0).numpy())).permute(2, 0, 1)[None]
    with torch.no_grad():
        for a, b in zip(wrapper(raw), model(normalised), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    spec = ExportSpec(input_hw=HW, head="raw", task="detection")
    path, report = to_onnx(model, meta, spec, tmp_path / "model.onnx", det_feeds())
    assert report.passed and set(report.max_abs_diff) == set(OUTPUTS) and report.label_agreement is None
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == list(OUTPUTS)
    props = read_metadata(path)
    assert props["bckd.task"] == "detection"
    assert json.loads(props["bckd.output"])["names"] == list(OUTPUTS)
    _, check, counts = simplify(path, tmp_path / "model.sim.onnx", det_feeds())
    assert check.passed and set(check.max_abs_diff) == set(OUTPUTS) and counts["applied"]


def test_segmentation_metadata_has_no_task_key():
    from bckd_pipeline.export.onnx_export import onnx_metadata

    meta = CheckpointMeta(model="m", num_classes=2, class_names=("a", "b"))
    props = onnx_metadata(meta, ExportSpec(input_hw=HW))
    assert "bckd.task" not in props and json.loads(props["bckd.output"]) == {"name": "logits", "kind": "logits"}


def test_openvino_int8_keeps_the_box_decoding_in_float(detector, tmp_path):
    pytest.importorskip("nncf")
    import openvino as ov

    from bckd_pipeline.calibrate.exclude import output_tail_names
    from bckd_pipeline.calibrate.openvino import quantize_ir, to_ir
    from bckd_pipeline.targets.profiles import CalibrationSpec

    model, meta = detector
    path, _ = to_onnx(model, meta, ExportSpec(input_hw=HW, head="raw", task="detection"), tmp_path / "m.onnx",
                      det_feeds(1))  # fmt: skip
    fp32 = to_ir(path, tmp_path / "fp32/model.xml", fp16=False)
    tail = output_tail_names(ov.Core().read_model(str(fp32)))
    kinds = {n.rsplit("/", 1)[-1].rstrip("_0123456789") for n in tail}
    assert {"Exp", "Concat"} <= kinds | {"Concat"} and "Exp" in kinds and set(OUTPUTS) <= set(tail)
    assert not any("Conv" in n for n in tail)
    xml, settings = quantize_ir(
        fp32, tmp_path / "int8/model.xml", det_feeds(4), CalibrationSpec(size=4), target_device="CPU",
        task=DETECTION,
    )  # fmt: skip
    assert settings["float_output_tail"] == tail
    q = ov.Core().read_model(str(xml))
    fq_consumers = {
        t.get_node().get_friendly_name()
        for op in q.get_ordered_ops()
        if op.get_type_name() == "FakeQuantize"
        for out in op.outputs()
        for t in out.get_target_inputs()
    }
    assert not fq_consumers & set(tail)  # nothing after the last convolutions reads a quantized value


FAST = ["--no-progress", "--parity-images", "6", "--calib-size", "8", "--latency-runs", "5", "--warmup-runs", "1",
        "--warmup-s", "0", "--no-throughput"]  # fmt: skip


@pytest.mark.slow
def test_deploy_a_detector_to_ort_and_openvino_with_ap_in_the_ledger(capsys, tmp_path):
    pytest.importorskip("nncf")
    ckpt = tiny_detector_checkpoint(tmp_path)
    out = tmp_path / "out"
    rc, stdout, err = run_cli(
        capsys, "deploy", "--model", ckpt, "--data", "demo", "--target", "onnxruntime-cpu,openvino-cpu", "--out", out,
        *FAST,
    )  # fmt: skip
    assert rc == 0, err[-3000:]
    for key in ("onnxruntime-cpu", "openvino-cpu"):
        report = json.loads((out / f"report.{key}.json").read_text())
        assert report["task"] == "detection"
        rows = {r["name"]: r for r in report["stages"]}
        assert {"pytorch", "onnx", "onnx-simplified"} <= set(rows)
        int8 = [r for r in rows.values() if r["precision"] == "int8"]
        assert int8, sorted(rows)
        for r in rows.values():
            for field in ("map", "ap50", "ap75", "matched_share", "per_class_ap"):
                assert field in r, (r["name"], field)
        html = (out / f"report.{key}.html").read_text()
        assert 'alt="deployed prediction"' in html and "AP delta" in html and "IoU delta" not in html
    assert "AP" in stdout
    md = (out / "report.onnxruntime-cpu.md").read_text()
    assert "Per-class AP of `pytorch`" in md and "| vehicle |" in md and "Host post-processing" in md
    row = json.loads((out / "report.onnxruntime-cpu.json").read_text())["stages"][-1]
    assert row["postprocess_ms"]["p50"] > 0 and row["end_to_end_ms"]["p50"] >= row["postprocess_ms"]["p50"]
    with np.load(out / "deploy/onnxruntime-cpu/parity_images.npz") as z:
        assert any(k.startswith("evidence/") for k in z.files) and not any(k.startswith("confusion/") for k in z.files)

    budgets = tmp_path / "b.toml"
    budgets.write_text("[onnxruntime-cpu]\nmin_map = 0\nmax_map_drop = 1.0\n")
    rc, _, err = run_cli(capsys, "gate", out / "report.onnxruntime-cpu.json", "--budgets", budgets)
    assert rc == 0, err
    budgets.write_text("[onnxruntime-cpu]\nmin_map = 50\n")
    rc, stdout, err = run_cli(capsys, "gate", out / "report.onnxruntime-cpu.json", "--budgets", budgets)
    assert rc == 1 and "AP" in stdout + err


def test_parity_images_name_the_evidence_and_read_segmentation_files(tmp_path):
    from bckd_pipeline.errors import DataError
    from bckd_pipeline.parity_images import (
        PARITY_IMAGES_FORMAT,
        PARITY_IMAGES_FORMAT_V1,
        load_parity_images,
        save_npz,
        save_parity_images,
    )

    per_image = {"pytorch": np.arange(6, dtype=np.int64).reshape(2, 3)}
    images = [{"name": "a", "sha256": "0"}, {"name": "b", "sha256": "1"}]
    record = save_parity_images(tmp_path, per_image, {}, images)
    with np.load(tmp_path / record["path"]) as z:
        assert z.files == ["evidence/pytorch"]
    got = load_parity_images({"parity_images": record}, tmp_path / "report.json")
    np.testing.assert_array_equal(got.evidence["pytorch"], per_image["pytorch"])
    assert record["format"] == PARITY_IMAGES_FORMAT == "bckd-pipeline/parity-images-v2"
    from bckd_pipeline.fileio import file_sha256

    for key in ("confusion", "evidence"):  # format v1 files hold either name
        save_npz(tmp_path / "v1.npz", {f"{key}/pytorch": per_image["pytorch"]})
        v1 = {**record, "format": PARITY_IMAGES_FORMAT_V1, "path": "v1.npz", "sha256": file_sha256(tmp_path / "v1.npz")}
        got = load_parity_images({"parity_images": v1}, tmp_path / "report.json")
        np.testing.assert_array_equal(got.evidence["pytorch"], per_image["pytorch"])
    with pytest.raises(DataError, match="format 'bckd-pipeline/parity-images-v9'"):
        load_parity_images({"parity_images": {**record, "format": "bckd-pipeline/parity-images-v9"}}, tmp_path / "r")


def test_latency_times_the_network_and_the_host_post_processing_under_one_protocol():
    from bckd_pipeline.deploy.bench import benchmark
    from bckd_pipeline.runtimes.torch import TorchRuntime
    from bckd_pipeline.targets.profiles import LatencySpec

    names = tuple(build_detection_dataset("demo", "val").info.class_names)
    model = build_detector("fcos-tiny-s", len(names))
    wrapper = DetExportWrapper(model, normalize=Normalization())
    calls = []

    def post(outputs, feed):
        calls.append(sorted(outputs))
        return DETECTION.prediction_of(DETECTION.raw_output(outputs, feed))

    spec = LatencySpec(runs=4, warmup_runs=1, warmup_s=0.0)
    with TorchRuntime(wrapper, (1, 3, *HW), output_names=OUTPUTS) as rt:
        report = benchmark(rt, det_feeds(2).head(2), spec, postprocess=post).as_dict()
        plain = benchmark(rt, det_feeds(2).head(2), spec).as_dict()
    assert calls == [sorted(OUTPUTS)] * 4
    assert report["postprocess_ms"]["p50"] > 0
    assert report["end_to_end_ms"]["mean"] == pytest.approx(report["mean"] + report["postprocess_ms"]["mean"])
    assert plain["postprocess_ms"] is None and plain["end_to_end_ms"] is None


def test_device_agent_decodes_every_output_of_a_detector(detector, tmp_path):
    from bckd_pipeline.device import agent
    from bckd_pipeline.device.bundle import write_bundle
    from bckd_pipeline.ledger import DEVICE_LABELS_FILE
    from bckd_pipeline.runtimes.onnxruntime import OrtRuntime
    from bckd_pipeline.targets import get_target
    from bckd_pipeline.targets.profiles import LatencySpec

    model, meta = detector
    onnx_path, _ = to_onnx(model, meta, ExportSpec(input_hw=HW, head="raw", task="detection"), tmp_path / "m.onnx",
                           det_feeds(1))  # fmt: skip
    feeds = det_feeds(2)
    job = write_bundle(tmp_path / "bundle", onnx_path, feeds, get_target("jetson"),
                       LatencySpec(runs=2, warmup_runs=1, warmup_s=0.0), task="detection")  # fmt: skip
    assert job["task"] == "detection"
    agent.run_job(tmp_path / "bundle/job.json", tmp_path / "device")
    with np.load(tmp_path / "device" / DEVICE_LABELS_FILE) as z:
        rows = z["labels"]
    with OrtRuntime(onnx_path) as rt:
        expected = [DETECTION.prediction_of(DETECTION.raw_output(rt.infer(f), f))[0] for f in feeds]
    assert rows.dtype == np.float32 and rows.shape == (2, *expected[0].shape)
    np.testing.assert_allclose(rows, np.stack(expected), atol=1e-4)


def test_score_split_takes_a_detectors_named_outputs_and_target_dicts(detector):
    """The loop NNCF's accuracy control scores each candidate with (``Task.score_split``)."""
    model, meta = detector
    wrapper = DetExportWrapper(model, normalize=Normalization(meta.mean, meta.std))
    feeds = det_feeds(3)

    def predict(feed):
        with torch.no_grad():
            outputs = dict(zip(OUTPUTS, (t.numpy() for t in wrapper(torch.from_numpy(feed["image"]))), strict=True))
        return DETECTION.raw_output(outputs, feed)

    pairs = list(feeds.pairs())
    value = DETECTION.score_split(predict, pairs, num_classes=meta.num_classes, ignore_index=-1)
    evidence = sum(
        DETECTION.image_evidence(DETECTION.prediction_of(predict(f))[0], t, num_classes=meta.num_classes)
        .astype(np.int64)
        for f, t in pairs
    )
    assert value == pytest.approx(float(DETECTION.metric_of(evidence)))
    # the same loop over its own predictions as the ground truth: every detection is found
    own = [(f, DETECTION.reference_labels(DETECTION.prediction_of(predict(f)), t)) for f, t in pairs]
    if any(len(r[r[:, 5] >= 0]) for _, r in own):
        assert DETECTION.score_split(predict, own, num_classes=meta.num_classes, ignore_index=-1) > 50


def test_deploy_context_of_a_detection_checkpoint_reads_boxes_and_exports_the_raw_head(tmp_path):
    from bckd_pipeline.configs import DataConfig
    from bckd_pipeline.context import DeployConfig
    from bckd_pipeline.pipeline import deploy_context, deploy_plans
    from bckd_pipeline.plan_checks import export_head

    assert export_head(None, "detection") == "raw" and export_head(None, "segmentation") == "logits"
    assert export_head("nms", "detection") == "nms" and export_head("logits", "detection") == "logits"
    ckpt = tiny_detector_checkpoint(tmp_path)
    data = DataConfig(spec="demo", demo_count=3)
    deploy = DeployConfig(target="onnxruntime-cpu", parity_images=2)
    plan = deploy_plans(deploy, data)[0]
    ctx = deploy_context(plan.deploy or deploy, data, plan, ckpt, tmp_path / "out")
    assert ctx.task.name == "detection" and ctx.spec.head == "raw" and ctx.spec.output_names == OUTPUTS
    assert ctx.spec.input_hw == HW and len(ctx.eval_feeds) == 2
    _, target = next(ctx.eval_feeds.pairs())
    assert set(target) == {"boxes", "labels", "iscrowd"}


@pytest.mark.slow
def test_deploy_a_users_detector_onnx_with_raw_head_outputs(detector, capsys, tmp_path):
    model, meta = detector
    onnx_path, _ = to_onnx(model, meta, ExportSpec(input_hw=HW, head="raw", task="detection"), tmp_path / "user.onnx",
                           det_feeds(1))  # fmt: skip
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "deploy", "--onnx", onnx_path, "--data", "demo", "--allow-demo-data", "--target",
                         "onnxruntime-cpu", "--out", out, *FAST)  # fmt: skip
    assert rc == 0, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "detection" and report["stages"][-1]["map"] is not None
    assert read_metadata(out / "deploy/model.onnx")["bckd.task"] == "detection"


def test_ort_int8_keeps_the_box_decoding_in_float(detector, tmp_path):
    from bckd_pipeline.calibrate.exclude import onnx_output_tail
    from bckd_pipeline.calibrate.onnxruntime import quantize_ort
    from bckd_pipeline.targets.profiles import CalibrationSpec

    model, meta = detector
    path, _ = to_onnx(model, meta, ExportSpec(input_hw=HW, head="raw", task="detection"), tmp_path / "m.onnx",
                      det_feeds(1))  # fmt: skip
    tail = onnx_output_tail(path)
    assert any("Exp" in n for n in tail) and not any("Conv" in n for n in tail)
    q, settings = quantize_ort(path, tmp_path / "m.int8.onnx", det_feeds(4), CalibrationSpec(size=4), float_tail=True)
    recorded = settings["float_output_tail"]  # the tail nodes quant_pre_process kept (it folds the shape arithmetic)
    assert set(recorded) <= set(tail) & {n.name for n in onnx.load(str(q)).graph.node}
    assert any("Exp" in n for n in recorded)
    graph = onnx.load(str(q)).graph
    producer = {o: n for n in graph.node for o in n.output}
    exp_inputs = [producer.get(i) for n in graph.node if n.op_type == "Exp" for i in n.input]
    assert exp_inputs and all(p is None or p.op_type != "DequantizeLinear" for p in exp_inputs)
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # the convolutions are still INT8


# --- the nms head, the device's rows replayed, the TensorRT Q/DQ float tail, QAT refused ------------------------
def _head_and_rows(seed: int = 0):
    """Random raw head outputs of one 64 x 96 image that detect something, and their decoded rows."""
    from bckd_pipeline.tasks.detection_decode import HeadOutputs

    rng = np.random.default_rng(seed)
    a = sum(len(p) for p in DETECTION.anchor_points(*HW))
    head = HeadOutputs(
        rng.normal(0.0, 2.0, (1, a, 2)).astype(np.float32),
        rng.uniform(2.0, 30.0, (1, a, 4)).astype(np.float32),
        rng.normal(0.0, 1.0, (1, a, 1)).astype(np.float32),
        HW,
        DETECTION.strides,
    )
    return head, DETECTION.prediction_of(head)


def test_replayed_rows_read_back_as_the_same_detections():
    from bckd_pipeline.tasks.detection import NmsOutputs

    _, rows = _head_and_rows()
    assert (rows[0, :, 5] != -1).sum() > 5
    outputs = DETECTION.replayed_outputs(rows[0])
    feed = {"image": np.zeros((1, 3, *HW), np.float32)}
    assert isinstance(DETECTION.raw_output(outputs, feed), NmsOutputs)
    np.testing.assert_array_equal(DETECTION.prediction_of(DETECTION.raw_output(outputs, feed)), rows)


def test_parity_of_an_nms_graph_is_judged_on_detections_alone():
    from bckd_pipeline.tasks.detection import FLOAT_PARITY

    head, rows = _head_and_rows()
    feed = {"image": np.zeros((1, 3, *HW), np.float32)}
    nms = DETECTION.raw_output(DETECTION.replayed_outputs(rows[0]), feed)
    truth = {"boxes": rows[0, :3, :4].copy(), "labels": rows[0, :3, 5].astype(np.int64), "iscrowd": np.zeros(3, bool)}
    ref = DETECTION.parity_meter(2)
    ref.update(head, rows, (head, rows), None, truth, False)
    meter = DETECTION.parity_meter(2)
    meter.update(nms, DETECTION.prediction_of(nms), (head, rows), (head, rows), truth, False)
    ref_fields = ref.fields(ref, None)
    fields = meter.fields(ref, ref_fields)
    assert fields["matched_share"] == 1.0 and fields["matched_share_vs_parent"] == 1.0
    assert fields["map_delta"] == 0.0 and fields["map"] == ref_fields["map"]
    for key in ("score_agreement", "score_agreement_vs_parent", "max_abs_scores", "mean_abs_boxes",
                "max_abs_logit_vs_parent", "max_abs_box_vs_parent"):  # fmt: skip
        assert fields[key] is None, key
    assert ref_fields["score_agreement"] == 1.0 and ref_fields["max_abs_scores"] == 0.0  # the raw path unchanged
    assert DETECTION.judge(fields, "onnx", True, FLOAT_PARITY) == []


def test_the_device_rows_of_a_detector_replay_into_the_ledger(detector, tmp_path):
    """The agent saves each image's decoded rows; the replay gives the ledger what the detection task reads."""
    from bckd_pipeline.context import DeviceOutcome
    from bckd_pipeline.deploy.replay import ReplayRuntime
    from bckd_pipeline.device import agent
    from bckd_pipeline.device.bundle import write_bundle
    from bckd_pipeline.runtimes.onnxruntime import OrtRuntime
    from bckd_pipeline.targets import get_target
    from bckd_pipeline.targets.profiles import LatencySpec

    model, meta = detector
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(1.0)  # detections everywhere (restored below: the fixture is shared)
    try:
        onnx_path, _ = to_onnx(model, meta, ExportSpec(input_hw=HW, head="raw", task="detection"),
                               tmp_path / "m.onnx", det_feeds(1))  # fmt: skip
    finally:
        with torch.no_grad():
            model.head.cls_logits.bias.fill_(-4.59512)
    feeds = det_feeds(2)
    write_bundle(tmp_path / "bundle", onnx_path, feeds, get_target("jetson"),
                 LatencySpec(runs=2, warmup_runs=1, warmup_s=0.0), task="detection")  # fmt: skip
    result = agent.run_job(tmp_path / "bundle/job.json", tmp_path / "device")
    outcome = DeviceOutcome(result, tmp_path / "device", "here")
    with OrtRuntime(onnx_path) as rt, ReplayRuntime(outcome, (1, 3, *HW), "image", DETECTION) as replay:
        for f in feeds:
            want = DETECTION.prediction_of(DETECTION.raw_output(rt.infer(f), f))
            got = DETECTION.prediction_of(DETECTION.raw_output(replay.infer(f), f))
            assert (want[0, :, 5] != -1).sum() > 0
            np.testing.assert_allclose(got, want, atol=1e-4)


def test_tensorrt_qdq_keeps_a_detectors_output_tail_and_its_nms_in_float(detector, tmp_path):
    from bckd_pipeline.calibrate.exclude import onnx_output_tail
    from bckd_pipeline.calibrate.tensorrt import check_tensorrt_qdq, quantize_for_tensorrt
    from bckd_pipeline.export.detection_nms import nms_graph
    from bckd_pipeline.targets.profiles import CalibrationSpec

    model, meta = detector
    raw, _ = to_onnx(model, meta, ExportSpec(input_hw=HW, head="raw", task="detection"), tmp_path / "m.onnx",
                     det_feeds(1))  # fmt: skip
    path = nms_graph(raw, tmp_path / "m.nms.onnx", DETECTION.settings, DETECTION.strides, HW, "tensorrt",
                     trt_version="10.3")  # fmt: skip
    tail = onnx_output_tail(path)
    assert any(n.startswith("nms/") for n in tail) and any("Exp" in n for n in tail)
    q, settings = quantize_for_tensorrt(path, tmp_path / "m.qdq.onnx", det_feeds(4), CalibrationSpec(size=4),
                                        float_tail=True)  # fmt: skip
    recorded = settings["float_output_tail"]
    assert set(recorded) <= set(tail) & {n.name for n in onnx.load(str(q)).graph.node} and check_tensorrt_qdq(q) == []
    assert any(n.startswith("nms/") for n in recorded) and any("Exp" in n for n in recorded)
    graph = onnx.load(str(q)).graph
    tail_outputs = {o for n in graph.node if n.name in set(tail) for o in n.output}
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert tail_outputs and not tail_outputs & quantized  # nothing after the last convolutions is quantized
    producer = {o: n for n in graph.node for o in n.output}
    exp_inputs = [producer.get(i) for n in graph.node if n.op_type == "Exp" for i in n.input]
    assert exp_inputs and all(p is None or p.op_type != "DequantizeLinear" for p in exp_inputs)
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # the convolutions are still INT8


def test_qat_of_a_detector_is_refused_at_plan_time(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "run", "--task", "detection", "--preset", "smoke", "--qat", "on", "--out",
                         tmp_path / "out", "--dry-run")  # fmt: skip
    assert rc == 2 and "--qat on fine-tunes segmentation models; this is a detection model" in err, err
    rc, stdout, err = run_cli(capsys, "run", "--task", "detection", "--preset", "smoke", "--head", "nms", "--out",
                              tmp_path / "out", "--dry-run")  # fmt: skip
    assert rc == 0 and "NonMaxSuppression appended (--head nms)" in stdout + err, err


def test_the_head_is_checked_against_the_runs_task_at_plan_time(capsys, tmp_path):
    out = tmp_path / "out"
    for task, head, allowed in [
        ("detection", "argmax", "raw, nms"),
        ("detection", "logits", "raw, nms"),
        ("segmentation", "nms", "logits, argmax"),
    ]:
        rc, _, err = run_cli(capsys, "run", "--task", task, "--preset", "smoke", "--head", head, "--out", out,
                             "--dry-run")  # fmt: skip
        assert rc == 2 and f"--head {head!r} is not allowed for a {task} model. Allowed: {allowed}." in err, err
    rc, stdout, err = run_cli(capsys, "run", "--task", "detection", "--preset", "smoke", "--out", out, "--dry-run")
    assert rc == 0 and "head raw," in stdout, err
    rc, stdout, err = run_cli(capsys, "run", "--preset", "smoke", "--out", out, "--dry-run")
    assert rc == 0 and "head logits," in stdout, err


def test_deploy_checks_the_head_against_the_checkpoints_task(capsys, tmp_path):
    ckpt, out = tiny_detector_checkpoint(tmp_path), tmp_path / "out"
    rc, _, err = run_cli(capsys, "deploy", "--model", ckpt, "--data", "demo", "--head", "argmax", "--out", out,
                         "--dry-run")  # fmt: skip
    assert rc == 2 and "--head 'argmax' is not allowed for a detection model. Allowed: raw, nms." in err, err
    rc, stdout, err = run_cli(capsys, "deploy", "--model", ckpt, "--data", "demo", "--skip-bad-annotations", "--out",
                              out, "--dry-run")  # fmt: skip
    assert rc == 0 and "head raw," in stdout, err


def _coco_split(root: Path, split: str, seed: int) -> None:
    """Three images of ``split`` in COCO JSON, one annotation of an unknown category among them."""
    rng = np.random.default_rng(seed)
    for i in range(3):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.png")
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 60, "height": 40} for i in range(3)],
        "annotations": [
            {"id": 1, "image_id": 0, "category_id": 1, "bbox": [5, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 99, "bbox": [5, 5, 20, 10], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "vehicle"}, {"id": 2, "name": "pole"}],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def test_deploy_skips_bad_boxes_and_calibrates_a_detector_on_a_label_map_kind(tmp_path):
    from bckd_pipeline.cache import StageCache
    from bckd_pipeline.calibrate.stage import calibration_stage
    from bckd_pipeline.configs import DataConfig
    from bckd_pipeline.context import DeployConfig
    from bckd_pipeline.errors import DataError
    from bckd_pipeline.pipeline import deploy_context, deploy_plans
    from bckd_pipeline.targets.profiles import CalibrationSpec

    ckpt, out = tiny_detector_checkpoint(tmp_path), tmp_path / "out"
    coco, camvid = tmp_path / "coco", tmp_path / "camvid"
    _coco_split(coco, "val", seed=0)
    for i in range(3):  # CamVid's layout; its label maps are never read
        (camvid / "train").mkdir(parents=True, exist_ok=True)
        (camvid / "trainannot").mkdir(exist_ok=True)
        image = np.random.default_rng(10 + i).integers(0, 256, (40, 60, 3), dtype=np.uint8)
        Image.fromarray(image).save(camvid / "train" / f"c{i}.png")
        Image.fromarray(np.zeros((40, 60), np.uint8)).save(camvid / "trainannot" / f"c{i}.png")
    calibration = CalibrationSpec(size=2, data=f"camvid:{camvid}")
    deploy = DeployConfig(target="onnxruntime-cpu", precision="int8", parity_images=2, calibration=calibration)
    data = DataConfig(spec=f"coco:{coco}")
    plan = deploy_plans(deploy, data)[0]
    with pytest.raises(DataError, match="annotation id 2: category_id 99"):
        deploy_context(plan.deploy, data, plan, ckpt, out)
    data = DataConfig(spec=f"coco:{coco}", skip_bad_annotations=True)
    ctx = deploy_context(plan.deploy, data, plan, ckpt, out)
    assert ctx.task.name == "detection" and len(ctx.eval_feeds) == 2
    calib = calibration_stage(ctx, out, StageCache(out))
    assert len(calib.feeds) == 2 and {m["name"] for m in calib.feeds.manifest()} < {"c0", "c1", "c2"}
    assert json.loads(calib.manifest_path.read_text())["data"] == f"camvid:{camvid}"


@pytest.mark.slow
def test_deploy_a_detector_with_nms_inside_the_graph(capsys, tmp_path):
    """--head nms: the deployed graphs end in NonMaxSuppression, the ledger scores them against the raw export,
    INT8 leaves the NMS tail in float, and predict reads the artifact."""
    import bckd_pipeline

    pytest.importorskip("nncf")
    ckpt = tiny_detector_checkpoint(tmp_path, cls_bias=1.0)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "deploy", "--model", ckpt, "--data", "demo", "--target",
                         "onnxruntime-cpu,openvino-cpu", "--head", "nms", "--out", out, *FAST)  # fmt: skip
    # An untrained detector's INT8 IR may find fewer than 80 % of its FP32 detections again (many near-equal
    # scores); its raw head's IR finds the same share. Every other row passes.
    assert rc in (0, 1), err[-3000:]
    nms_names = ["num_dets", "det_boxes", "det_scores", "det_labels"]
    sim = onnx.load(str(out / "deploy/model.sim.onnx"))
    assert [o.name for o in sim.graph.output] == nms_names
    assert any(n.op_type == "NonMaxSuppression" for n in sim.graph.node)
    assert json.loads(read_metadata(out / "deploy/model.sim.onnx")["bckd.output"])["names"] == nms_names
    int8 = onnx.load(str(out / "deploy/onnxruntime-cpu/model.int8.onnx")).graph
    producer = {o: n for n in int8.node for o in n.output}
    nms_inputs = [producer.get(i) for n in int8.node if n.name.startswith("nms/") for i in n.input]
    assert nms_inputs and not [p.name for p in nms_inputs if p is not None and p.op_type == "DequantizeLinear"]
    import openvino as ov

    ir = ov.Core().read_model(str(out / "deploy/openvino-cpu/int8/model.xml"))
    fq = [o for o in ir.get_ordered_ops() if o.get_type_name() == "FakeQuantize"]
    fq_consumers = {t.get_node().get_friendly_name() for f in fq for o in f.outputs() for t in o.get_target_inputs()}
    assert fq and not [n for n in fq_consumers if n.startswith("nms/")]  # NNCF left the NMS tail in float
    assert any(o.get_type_name().startswith("NonMaxSuppression") for o in ir.get_ordered_ops())
    for key in ("onnxruntime-cpu", "openvino-cpu"):
        rows = {r["name"]: r for r in json.loads((out / f"report.{key}.json").read_text())["stages"]}
        raw, nms = rows["onnx"], rows["onnx-simplified"]
        assert raw["score_agreement"] == 1.0 and nms["score_agreement"] is None and nms["max_abs_scores"] is None
        assert nms["matched_share_vs_parent"] >= 0.99 and abs(nms["map_delta_vs_parent"]) <= 0.05
        assert raw["map"] is not None and nms["map"] is not None
        failed = {name for name, r in rows.items() if r["parity_failures"]}
        assert failed <= {"openvino-int8"}, failed
        assert rows[f"{'onnxruntime' if key == 'onnxruntime-cpu' else 'openvino'}-int8"]["map"] is not None
    manifest = json.loads((out / "manifest.onnxruntime-cpu.json").read_text())
    assert manifest["output"] == {"name": "num_dets", "names": nms_names, "kind": "nms"}
    md = (out / "report.onnxruntime-cpu.md").read_text()
    assert "(reading the rows of its graph, which decodes and suppresses inside)" in md
    found = bckd_pipeline.load(out, target="onnxruntime-cpu")
    image = build_detection_dataset("demo", "val").load(0)[0]
    boxes = found(image)
    assert len(boxes.data) > 0 and found.info.output_name == ", ".join(nms_names)


# --------------------------------------------------------------------------------------------
# The float output tail of an ONNX graph, and what the quantizer really leaves in float
# --------------------------------------------------------------------------------------------
def _tail_graph(path, names: dict[str, str]):
    """image -> Conv -> Neg -> Identity -> Relu -> Sigmoid -> out, node names from ``names`` (op -> name)."""
    from onnx import TensorProto, helper, numpy_helper

    ops = [("Conv", ["image", "w"]), ("Neg", None), ("Identity", None), ("Relu", None), ("Sigmoid", None)]
    nodes, prev = [], None
    for i, (op, inputs) in enumerate(ops):
        out = "out" if i == len(ops) - 1 else f"t{i}"
        nodes.append(helper.make_node(op, inputs or [prev], [out], name=names.get(op, "")))
        prev = out
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(2, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        nodes,
        "tail",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 8, 8])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_output_tail_walks_past_unnamed_nodes(tmp_path):
    from bckd_pipeline.calibrate.exclude import onnx_output_tail

    path = _tail_graph(tmp_path / "m.onnx", {"Conv": "conv", "Neg": "neg"})  # Identity, Relu, Sigmoid unnamed
    assert onnx_output_tail(path) == ["neg"]
    named = {"Conv": "conv", "Neg": "neg", "Identity": "ident", "Relu": "relu", "Sigmoid": "sig"}
    assert onnx_output_tail(_tail_graph(tmp_path / "n.onnx", named)) == ["ident", "neg", "relu", "sig"]


def test_the_recorded_float_tail_is_what_the_pre_processing_kept(tmp_path, capsys):
    from bckd_pipeline.calibrate.onnxruntime import quantize_ort
    from bckd_pipeline.targets.profiles import CalibrationSpec

    named = {"Conv": "conv", "Neg": "neg", "Identity": "ident", "Relu": "relu", "Sigmoid": "sig"}
    path = _tail_graph(tmp_path / "m.onnx", named)
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32) for _ in range(2)]
    feeds = DatasetFeeds(images=images, labels=[None, None], names=["a", "b"], digests=["a", "b"], split="val")
    _, settings = quantize_ort(path, tmp_path / "q.onnx", feeds, CalibrationSpec(size=2), float_tail=True)
    assert "ident" not in {n.name for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}  # removed
    assert settings["float_output_tail"] == ["neg", "relu", "sig"]
    assert "warning" not in capsys.readouterr().err  # a removed node leaves nothing to quantize


def test_a_tail_node_merged_into_a_quantized_one_is_lost(tmp_path):
    from bckd_pipeline.calibrate.exclude import tail_nodes_lost

    named = {"Conv": "conv", "Neg": "neg", "Identity": "ident", "Relu": "relu", "Sigmoid": "sig"}
    source = onnx.load(str(_tail_graph(tmp_path / "m.onnx", named))).graph
    renamed = onnx.load(str(_tail_graph(tmp_path / "r.onnx", {**named, "Relu": "fused_relu", "Neg": "conv_neg"})))
    renamed.graph.node[1].op_type = "Conv"  # the Neg merged into the branch's convolution: quantized by design
    tail = ["ident", "neg", "relu", "sig"]
    assert tail_nodes_lost(source, renamed.graph, tail) == ["relu"]
    del renamed.graph.node[2]  # the Identity removed: nothing of it left
    assert tail_nodes_lost(source, renamed.graph, tail) == ["relu"]
    assert tail_nodes_lost(source, source, tail) == []


def _tail_feeds():
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32) for _ in range(2)]
    return DatasetFeeds(images=images, labels=[None, None], names=["a", "b"], digests=["a", "b"], split="val")


def _quantized_tail_outputs(path) -> set[str]:
    """The outputs of the tail's ops (Neg, Relu, Sigmoid) in the quantized graph that a QuantizeLinear reads."""
    graph = onnx.load(str(path)).graph
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    tail = {o for n in graph.node if n.op_type in ("Neg", "Relu", "Sigmoid") for o in n.output}
    return quantized & tail


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_unnamed_tail_nodes_stay_float(tmp_path, backend):
    from bckd_pipeline.calibrate.onnxruntime import quantize_ort
    from bckd_pipeline.calibrate.tensorrt import quantize_for_tensorrt
    from bckd_pipeline.targets.profiles import CalibrationSpec

    path = _tail_graph(tmp_path / "m.onnx", {"Conv": "conv"})  # every node after the convolution unnamed
    before = path.read_bytes()
    quantize = quantize_ort if backend == "onnxruntime" else quantize_for_tensorrt
    q, settings = quantize(path, tmp_path / "q.onnx", _tail_feeds(), CalibrationSpec(size=2), float_tail=True)
    assert _quantized_tail_outputs(q) == set()
    assert settings["float_output_tail"] == ["out", "t1", "t3"]  # named after their outputs; the Identity removed
    assert path.read_bytes() == before  # the user's file is never rewritten
    assert not list(tmp_path.glob(".*"))  # the named copy is gone


def test_unnamed_nodes_get_stable_unique_names(tmp_path):
    from bckd_pipeline.calibrate.exclude import name_unnamed_nodes

    graph = onnx.load(str(_tail_graph(tmp_path / "m.onnx", {"Conv": "t1", "Sigmoid": "sig"}))).graph
    assert name_unnamed_nodes(graph) == 3
    assert [n.name for n in graph.node] == ["t1", "t1_2", "t2", "t3", "sig"]  # "t1" taken by the Conv
    again = onnx.load(str(tmp_path / "m.onnx")).graph
    name_unnamed_nodes(again)
    assert [n.name for n in again.node] == [n.name for n in graph.node]
    assert name_unnamed_nodes(graph) == 0
