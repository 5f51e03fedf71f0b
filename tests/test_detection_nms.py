"""The detection graph with NMS inside (export/detection_nms.py) against the host decoding (tasks/detection_decode.py).

A tiny detector is exported raw in the test, NMS is appended, and ONNX Runtime and OpenVINO run it on the same
images as the raw graph, whose outputs the host decodes: the rows must be the same detections. The head's
classification layer is rescaled so that images range from no detection to every candidate above the threshold.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from bckd_pipeline.distill.detection import build_detector  # noqa: E402
from bckd_pipeline.errors import ConfigError, DataError  # noqa: E402
from bckd_pipeline.export.detection_nms import candidate_count, nms_graph, with_nms  # noqa: E402
from bckd_pipeline.tasks.detection import DETECTION, NMS_OUTPUT_NAMES, Detection, NmsOutputs  # noqa: E402
from bckd_pipeline.tasks.detection_decode import DEFAULT_DECODE, OUTPUT_NAMES, DecodeSettings  # noqa: E402

H, W = 64, 96
STRIDES = (8, 16, 32)
BOX_TOL, SCORE_TOL = 1e-3, 1e-5
# Few candidates per level and few rows: crowded images hit both caps.
SMALL_CAPS = DecodeSettings(score_thresh=0.2, topk_candidates=40, nms_thresh=0.6, detections_per_img=30)
# 10 candidates per level, 30 in all, 90 (box, class) pairs: fewer than the 100 rows.
FEW_CANDIDATES = DecodeSettings(topk_candidates=10)


def _raw_model(tmp_path, cls_gain: float, cls_bias: float, box_bias: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    """The tiny detector's raw graph; class logits spread by ``cls_gain`` around ``cls_bias``, box log-distances
    around ``box_bias`` (1: boxes of about 3 strides a side from the point, overlapping their neighbours')."""
    torch.manual_seed(seed)
    model = build_detector("fcos-tiny-s", 3).eval()
    with torch.no_grad():
        model.head.cls_logits.weight.mul_(cls_gain)
        model.head.cls_logits.bias.fill_(cls_bias)
        model.head.bbox_reg.weight.mul_(30.0)
        model.head.bbox_reg.bias.fill_(box_bias)
    path = tmp_path / f"raw_{cls_gain}_{cls_bias}_{box_bias}.onnx"
    torch.onnx.export(
        model,
        (torch.rand(2, 3, H, W),),
        str(path),
        input_names=["image"],
        output_names=list(OUTPUT_NAMES),
        opset_version=17,
        dynamo=False,
    )
    return onnx.load(str(path))


def _ort(model: onnx.ModelProto):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feed: dict(zip(names, sess.run(None, feed)))  # noqa: B905


def _openvino(model: onnx.ModelProto, tmp_path):
    ov = pytest.importorskip("openvino")
    path = tmp_path / "nms_ov.onnx"
    onnx.save(model, str(path))
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})  # as the fp32 runtime

    def run(feed):
        res = compiled(feed)
        named = {n: o for o in compiled.outputs for n in o.get_names()}
        return {n: np.asarray(res[named[n]]) for n in NMS_OUTPUT_NAMES}

    return run


def _assert_same_detections(got: np.ndarray, want: np.ndarray) -> None:
    """The same detections: per image as many, each of the host's found once with its label, its box within
    BOX_TOL and its score within SCORE_TOL, highest score first (rows whose scores differ by less than SCORE_TOL
    may come in either order: float32 sigmoids of two libraries differ in the last bits)."""
    assert got.shape == want.shape
    for g, w in zip(got, want):  # noqa: B905
        g, w = g[g[:, 5] >= 0], w[w[:, 5] >= 0]
        assert len(g) == len(w)
        assert (np.diff(g[:, 4]) <= SCORE_TOL).all()
        used = np.zeros(len(g), bool)
        for row in w:
            ok = (
                ~used
                & (g[:, 5] == row[5])
                & (np.abs(g[:, :4] - row[:4]).max(1) <= BOX_TOL)
                & (np.abs(g[:, 4] - row[4]) <= SCORE_TOL)
            )
            assert ok.any(), f"host detection {row} not in the graph's rows"
            used[np.argmax(ok)] = True


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, H, W), dtype=np.float32)


@pytest.mark.parametrize(
    ("gain", "bias", "box_bias", "settings", "expect"),
    [
        (400.0, -14.0, 1.0, DEFAULT_DECODE, "some"),  # tens of detections per image, NMS suppressing some
        (1.0, -20.0, 1.0, DEFAULT_DECODE, "none"),  # nothing above the threshold
        (400.0, 6.0, 0.0, DEFAULT_DECODE, "full"),  # every candidate above it, small boxes: 100 rows
        (400.0, 6.0, 0.0, SMALL_CAPS, "full"),  # per-level top-k and the row cap both bind
        (400.0, 6.0, 0.0, FEW_CANDIDATES, "some"),  # fewer (box, class) pairs than rows: padded inside the graph
    ],
)
def test_nms_graph_gives_the_host_decodings_detections_in_ort_and_openvino(
    tmp_path, gain, bias, box_bias, settings, expect
):
    raw = _raw_model(tmp_path, gain, bias, box_bias)
    task = Detection(settings)
    graph = with_nms(raw, settings, STRIDES, (H, W), "onnx")
    onnx.checker.check_model(graph, full_check=True)
    run_raw, runners = _ort(raw), {"onnxruntime": _ort(graph), "openvino": _openvino(graph, tmp_path)}
    for seed in range(3):
        feed = {"image": _images(2, seed)}
        raw_out = run_raw(feed)
        want = task.prediction_of(task.raw_output(raw_out, feed))
        counts = (want[..., 5] >= 0).sum(1)
        if expect == "none":
            assert counts.max() == 0
        elif expect == "full":
            assert (counts == settings.detections_per_img).all()
        else:
            assert 0 < counts.max() < settings.detections_per_img
            prob = np.sqrt(_sigmoid(raw_out["scores"]) * _sigmoid(raw_out["centerness"]))
            assert ((prob > settings.score_thresh).sum((1, 2)) > counts).all()  # NMS suppressed some
        for name, run in runners.items():
            out = run(feed)
            assert sorted(out) == sorted(NMS_OUTPUT_NAMES), name
            np.testing.assert_array_equal(out["num_dets"].ravel(), counts)
            _assert_same_detections(task.prediction_of(task.raw_output(out, feed)), want)


def test_crowded_level_exceeds_the_per_level_cap():
    """SMALL_CAPS binds at every level of a 64x96 input: more (anchor, class) pairs than top-k candidates."""
    sizes = [(H // s) * (W // s) * 3 for s in STRIDES]
    assert min(sizes) < SMALL_CAPS.topk_candidates < max(sizes)
    assert candidate_count(3, (H, W), STRIDES, SMALL_CAPS.topk_candidates) == sum(min(40, n) for n in sizes)


def test_nms_graph_keeps_the_batch_and_its_metadata(tmp_path):
    raw = _raw_model(tmp_path, 400.0, -14.0)
    raw.metadata_props.add(key="bckd.task", value="detection")
    graph = with_nms(raw, DEFAULT_DECODE, STRIDES, (H, W), "onnx")
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["bckd.task"] == "detection"
    want = {"name": NMS_OUTPUT_NAMES[0], "names": list(NMS_OUTPUT_NAMES), "kind": "nms"}
    assert json.loads(props["bckd.output"]) == want
    assert json.loads(props["bckd.nms"])["detections_per_img"] == 100
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.graph.output}
    assert shapes == {"num_dets": [2, 1], "det_boxes": [2, 100, 4], "det_scores": [2, 100], "det_labels": [2, 100]}


def test_entry_point_writes_a_checked_graph(tmp_path):
    raw = _raw_model(tmp_path, 400.0, -14.0)
    onnx.save(raw, str(tmp_path / "model.onnx"))
    out = nms_graph(tmp_path / "model.onnx", tmp_path / "model.nms.onnx", DEFAULT_DECODE, STRIDES, (H, W))
    assert out.is_file() and [o.name for o in onnx.load(str(out)).graph.output] == list(NMS_OUTPUT_NAMES)


def test_a_graph_without_the_raw_outputs_or_of_another_size_is_refused(tmp_path):
    raw = _raw_model(tmp_path, 1.0, 0.0)
    with pytest.raises(ConfigError, match="anchor points"):
        with_nms(raw, DEFAULT_DECODE, STRIDES, (H, W + 32), "onnx")
    renamed = onnx.ModelProto()
    renamed.CopyFrom(raw)
    renamed.graph.output[0].name = "logits"
    with pytest.raises(ConfigError, match="scores, boxes, centerness"):
        with_nms(renamed, DEFAULT_DECODE, STRIDES, (H, W), "onnx")
    with pytest.raises(ConfigError, match="variant"):
        with_nms(raw, DEFAULT_DECODE, STRIDES, (H, W), "tflite")
    with pytest.raises(ConfigError, match="trt_version"):
        with_nms(raw, DEFAULT_DECODE, STRIDES, (H, W), "tensorrt")
    with pytest.raises(ConfigError, match="8.0 or newer"):
        with_nms(raw, DEFAULT_DECODE, STRIDES, (H, W), "tensorrt", trt_version="7.2")


# --------------------------------------------------------------------------------------------
# TensorRT: the graph's structure (neither the plugin nor TensorRT runs here)
# --------------------------------------------------------------------------------------------
def test_tensorrt_from_8_5_uses_nonmaxsuppression_and_runs_as_the_onnx_graph(tmp_path):
    raw = _raw_model(tmp_path, 400.0, -14.0)
    for version in ("8.5", "10.3", (10, 13)):
        graph = with_nms(raw, DEFAULT_DECODE, STRIDES, (H, W), "tensorrt", trt_version=version)
        ops = {n.op_type for n in graph.graph.node}
        assert "NonMaxSuppression" in ops and "EfficientNMS_TRT" not in ops
        topk = [n for n in graph.graph.node if n.op_type == "TopK"]
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer}
        ks = [int(inits[n.input[1]][0]) for n in topk]
        assert ks and max(ks) < 3840  # TensorRT's TopK limit
    feed = {"image": _images(2, 7)}
    want = DETECTION.prediction_of(DETECTION.raw_output(_ort(raw)(feed), feed))
    _assert_same_detections(DETECTION.prediction_of(DETECTION.raw_output(_ort(graph)(feed), feed)), want)


def test_tensorrt_before_8_5_ends_in_one_efficient_nms_plugin_node(tmp_path):
    raw = _raw_model(tmp_path, 400.0, -14.0)
    graph = with_nms(raw, SMALL_CAPS, STRIDES, (H, W), "tensorrt", trt_version="8.4")
    nodes = graph.graph.node
    assert "NonMaxSuppression" not in {n.op_type for n in nodes}
    (plugin,) = [n for n in nodes if n.op_type == "EfficientNMS_TRT"]
    assert plugin.domain == ""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in plugin.attribute}
    assert attrs == {
        "plugin_version": b"1",
        "plugin_namespace": b"",
        "score_threshold": pytest.approx(SMALL_CAPS.score_thresh),
        "iou_threshold": pytest.approx(SMALL_CAPS.nms_thresh),
        "max_output_boxes": SMALL_CAPS.detections_per_img,
        "background_class": -1,
        "score_activation": 0,
        "box_coding": 0,
    }
    assert list(plugin.output) == list(NMS_OUTPUT_NAMES) == [o.name for o in graph.graph.output]
    # Its inputs, computed by the ops before it: candidate boxes [N, B, 4] (corners) and one-hot scores [N, B, C].
    producers = {o: n for n in nodes for o in n.output}
    assert producers[plugin.input[0]].op_type == "GatherND" and producers[plugin.input[1]].op_type == "Mul"
    head = onnx.ModelProto()
    head.CopyFrom(graph)
    head.graph.node.remove(plugin)
    del head.graph.output[:]
    head.graph.output.extend(
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in plugin.input]
    )
    feed = {"image": _images(2, 3)}
    boxes, scores = (_ort(head)(feed)[n] for n in plugin.input)
    b = candidate_count(3, (H, W), STRIDES, SMALL_CAPS.topk_candidates)
    assert boxes.shape == (2, b, 4) and scores.shape == (2, b, 3)
    assert b <= 4096  # the plugin's NMS takes the 4096 highest scores
    assert ((scores > 0).sum(-1) <= 1).all()  # each candidate scores in its own class only
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()
    assert boxes.min() >= 0 and boxes[..., 0::2].max() <= W and boxes[..., 1::2].max() <= H
    # The plugin's job done on its inputs by the host's class-wise NMS gives the host decoding's detections.
    from bckd_pipeline.tasks.detection_decode import batched_nms

    want = Detection(SMALL_CAPS).prediction_of(Detection(SMALL_CAPS).raw_output(_ort(raw)(feed), feed))
    for i in range(2):
        cand, label = np.nonzero(scores[i] > SMALL_CAPS.score_thresh)
        keep = batched_nms(boxes[i, cand], scores[i, cand, label], label, SMALL_CAPS.nms_thresh)
        keep = keep[: SMALL_CAPS.detections_per_img]
        n = len(keep)
        assert n == (want[i, :, 5] >= 0).sum()
        np.testing.assert_allclose(boxes[i, cand[keep]], want[i, :n, :4], atol=BOX_TOL, rtol=0)
        np.testing.assert_array_equal(label[keep], want[i, :n, 5])


# --------------------------------------------------------------------------------------------
# the task reads the nms head
# --------------------------------------------------------------------------------------------
def test_task_reads_nms_outputs_as_rows_and_keeps_the_raw_path():
    outputs = {
        "num_dets": np.array([[2], [0]], np.int32),
        "det_boxes": np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4),
        "det_scores": np.array([[0.9, 0.5, 0.0, 0.0], [0.0] * 4], np.float32),
        "det_labels": np.array([[1, 0, 0, 0], [0, 0, 0, 0]], np.int32),  # padding classes as the plugin leaves them
    }
    feed = {"image": np.zeros((2, 3, H, W), np.float32)}
    out = DETECTION.raw_output(outputs, feed)
    assert isinstance(out, NmsOutputs)
    rows = DETECTION.prediction_of(out)
    assert rows.shape == (2, 100, 6)
    np.testing.assert_array_equal(rows[0, :2, :4], outputs["det_boxes"][0, :2])
    np.testing.assert_array_equal(rows[0, :2, 4:], np.array([[0.9, 1], [0.5, 0]], np.float32))
    assert (rows[0, 2:, 5] == -1).all() and (rows[1, :, 5] == -1).all()
    with pytest.raises(DataError, match="never negative"):
        DETECTION.prediction_of(DETECTION.raw_output({**outputs, "num_dets": np.array([[-1], [0]], np.int32)}, feed))
    with pytest.raises(DataError, match="scores, boxes, centerness"):
        DETECTION.raw_output({"det_boxes": outputs["det_boxes"]}, feed)
