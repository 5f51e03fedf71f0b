"""``predict`` and the Python API on a detector: ``Detector``, ``bckd_pipeline.load`` and the CLI.

The artifact is built here: the ``fcos-tiny-s`` preset with weights re-drawn large enough that its scores vary
from image to image (the preset's own initialisation scores every anchor alike, at the prior), wrapped with the
normalisation baked in (input RGB 0..255) and exported by ``torch.onnx.export`` with the ``bckd.*`` metadata of
export/onnx_export.py plus ``bckd.task``, at a NON-SQUARE input (64 x 96); the OpenVINO IR is converted from it.
Images are of other sizes and aspect ratios, so every box is mapped back from the input. The expected boxes are
computed here without predict/: the image as displayed (PIL's exif_transpose), resized as predict resizes,
PyTorch on it, the task's decoding, and the boxes scaled by the image's size over the input's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from PIL import Image, ImageOps

from bckd_pipeline import Detector, Segmenter, load
from bckd_pipeline.calibrate.openvino import to_ir
from bckd_pipeline.cli import main
from bckd_pipeline.configs import CheckpointMeta
from bckd_pipeline.distill.detection import build_detector
from bckd_pipeline.errors import ConfigError
from bckd_pipeline.export.onnx_export import onnx_metadata
from bckd_pipeline.model_spec import ExportSpec
from bckd_pipeline.predict.detector import Boxes, DetectionResult
from bckd_pipeline.tasks import get_task
from bckd_pipeline.tasks.detection_decode import valid_rows

IN_HW = (64, 96)  # the model's input: non-square, multiples of the largest stride (32)
CLASSES = ("car", "person", "bike")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Baked(torch.nn.Module):
    """The detector behind its normalisation: RGB 0..255 in, the raw head out (a test-local export wrapper)."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector.eval()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(STD).view(1, 3, 1, 1) * 255.0))

    def forward(self, image: torch.Tensor):
        return self.detector((image - self.mean) * self.inv_std)


def varied_detector() -> Baked:
    torch.manual_seed(0)
    model = build_detector("fcos-tiny-s", len(CLASSES), class_names=list(CLASSES))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.normal_(m.weight, std=0.2)
        model.head.cls_logits.bias.fill_(-5.0)  # some 15-25 boxes an image, a handful above 0.5
    return Baked(model).eval()


def export(wrapper: Baked, path: Path, *, task: str | None = "detection") -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (torch.zeros(1, 3, *IN_HW),),
            str(path),
            input_names=["image"],
            output_names=["scores", "boxes", "centerness"],
            opset_version=17,
            dynamo=False,
        )
    meta = CheckpointMeta("fcos-tiny-s", len(CLASSES), CLASSES, mean=MEAN, std=STD, input_hw=IN_HW, task="detection")
    props = onnx_metadata(meta, ExportSpec(input_hw=IN_HW))
    props["bckd.output"] = json.dumps({"name": ["scores", "boxes", "centerness"], "kind": "raw"})
    if task is not None:
        props["bckd.task"] = task
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, props)
    onnx.save(graph, str(path))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("detect")
    wrapper = varied_detector()
    onnx_path = export(wrapper, folder / "det.onnx")
    xml = to_ir(onnx_path, folder / "openvino/model.xml", fp16=False)
    return SimpleNamespace(wrapper=wrapper, onnx=onnx_path, xml=xml, folder=folder)


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like image: smooth colour gradients plus a few bright rectangles."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w]
    image = np.stack([xs * 255 / w, ys * 255 / h, np.full((h, w), 90.0)], -1)
    for _ in range(4):
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        image[y0 : y0 + rng.integers(6, h // 2), x0 : x0 + rng.integers(6, w // 2)] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


def expected_boxes(wrapper: Baked, rgb: np.ndarray) -> np.ndarray:
    """[D, 6] rows in the image's pixels, without predict/: bilinear resize to the input, PyTorch, the task's
    decoding, and each coordinate scaled by the image's size over the input's."""
    h, w = rgb.shape[:2]
    x = np.asarray(Image.fromarray(rgb).resize((IN_HW[1], IN_HW[0]), Image.BILINEAR), np.float32)
    with torch.no_grad():
        scores, boxes, ctr = wrapper(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))
    task = get_task("detection")
    feed = {"image": x.transpose(2, 0, 1)[None]}
    outputs = {"scores": scores.numpy(), "boxes": boxes.numpy(), "centerness": ctr.numpy()}
    rows = valid_rows(task.prediction_of(task.raw_output(outputs, feed))[0]).copy()
    rows[:, [0, 2]] *= w / IN_HW[1]
    rows[:, [1, 3]] *= h / IN_HW[0]
    rows[:, [0, 2]] = rows[:, [0, 2]].clip(0, w)
    rows[:, [1, 3]] = rows[:, [1, 3]].clip(0, h)
    return rows


def test_detector_returns_boxes_in_the_image_pixels(built):
    image = scene(45, 70, 1)
    with load(built.onnx) as det:
        assert isinstance(det, Detector) and det.classes == CLASSES and det.input_size == IN_HW
        assert det.info.task == "detection" and det.info.output_name == "scores, boxes, centerness"
        boxes = det(image)
        (result,) = det.predict([image])
    assert isinstance(boxes, Boxes) and isinstance(result, DetectionResult) and result.infer_ms > 0
    assert boxes.xyxy.dtype == np.float32 and boxes.xyxy.shape == (len(boxes), 4)
    assert boxes.conf.dtype == np.float32 and boxes.cls.dtype == np.int64 and boxes.orig_shape == (45, 70)
    assert boxes.class_names == tuple(CLASSES[c] for c in boxes.cls)
    want = expected_boxes(built.wrapper, image)
    assert 5 <= len(boxes) == len(want)  # enough boxes that the comparison means something
    np.testing.assert_allclose(boxes.data, want, atol=2e-3)
    assert (np.diff(boxes.conf) <= 0).all()  # highest score first


def test_onnx_and_openvino_give_the_same_boxes(built):
    images = [scene(45, 70, 2), scene(120, 80, 3)]
    with Detector.load(built.onnx) as ort, Detector.load(built.xml) as ov:
        assert ov.info.backend == "openvino" and ov.info.kind == "openvino-ir" and ov.classes == CLASSES
        for a, b in zip(ort.predict_batch(images), ov.predict_batch(images), strict=True):
            assert len(a) > 0 and len(a) == len(b)
            np.testing.assert_array_equal(a.cls, b.cls)
            np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-2)
            np.testing.assert_allclose(a.conf, b.conf, atol=1e-4)


def test_letterbox_maps_boxes_back_through_the_padding(built):
    """A tall image letterboxed into the wide input: scale 64/120, the image 45 px wide centred at x 25.5."""
    image = scene(120, 84, 4)
    with Detector.load(built.onnx, letterbox=True) as det:
        boxes = det(image)
        feed, (where,) = det._feed([image])
        outputs = det.runtime.infer(feed)
        rows = valid_rows(det.task.prediction_of(det.task.raw_output(outputs, feed))[0])
    assert where.inner == (64, 45) and where.left == 25
    scale = 120 / 64
    want = rows.copy()
    want[:, [0, 2]] = ((want[:, [0, 2]] - 25) * (84 / 45)).clip(0, 84)
    want[:, [1, 3]] = (want[:, [1, 3]] * scale).clip(0, 120)
    assert len(boxes) > 0
    np.testing.assert_allclose(boxes.data, want, rtol=1e-5, atol=1e-3)


def test_score_threshold_keeps_fewer_boxes(built):
    image = scene(45, 70, 1)
    with Detector.load(built.onnx) as det, Detector.load(built.onnx, score_threshold=0.5) as strict:
        everything, fewer = det(image), strict(image)
    assert det.score_threshold == 0.2 and 0 < len(fewer) < len(everything)
    assert (fewer.conf > 0.5).all()
    with pytest.raises(ConfigError, match="score-threshold 1.5"):
        Detector.load(built.onnx, score_threshold=1.5)


def test_the_api_refuses_a_model_of_another_task(built, tmp_path):
    with pytest.raises(ConfigError, match=r"is a detection model; Segmenter runs segmentation .*bckd_pipeline.load"):
        Segmenter.load(built.onnx)
    untagged = export(built.wrapper, tmp_path / "untagged.onnx", task=None)  # no bckd.task: segmentation
    with pytest.raises(ConfigError, match="score_threshold"):
        load(untagged, score_threshold=0.3)


def test_a_run_folder_s_manifest_names_the_task_of_an_untagged_file(built, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    export(built.wrapper, run / "model.onnx", task=None)
    manifest = {"format": "bckd-pipeline/manifest-v1", "task": "detection", "deployable": ["model.onnx"]}
    (run / "manifest.json").write_text(json.dumps(manifest))
    with load(run) as det:
        assert isinstance(det, Detector) and len(det(scene(45, 70, 1))) > 0
    export(built.wrapper, run / "model.onnx", task="segmentation")  # the file and its run disagree
    with pytest.raises(ConfigError, match="'segmentation'.*manifest.*'detection'"):
        load(run)


def exif_photo(path: Path, stored: np.ndarray, orientation: int) -> Path:
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)
    return path


def run_cli(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def test_predict_writes_coco_boxes_skips_a_corrupt_file_and_applies_exif(built, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(scene(45, 70, 1)).save(photos / "a_plain.png")
    Image.fromarray(scene(45, 70, 5)).save(photos / "b_truncated.jpg", quality=95)
    data = (photos / "b_truncated.jpg").read_bytes()
    (photos / "b_truncated.jpg").write_bytes(data[: len(data) // 2])
    # Stored 150 wide x 60 high; orientation 6 displays it rotated 90 degrees clockwise: 60 wide x 150 high.
    exif_photo(photos / "c_phone.jpg", scene(60, 150, 6), 6)
    out = tmp_path / "out"
    rc, err = run_cli(capsys, "predict", photos, "--model", built.onnx, "--out", out, "--save-overlay", "--no-progress")
    assert rc == 4, err
    assert "predicted 2 images" in err and "1 skipped" in err and "overlays/, predictions.json" in err
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["model"]["task"] == "detection" and [c["name"] for c in doc["classes"]] == list(CLASSES)
    assert [s["path"] for s in doc["skipped"]] == ["b_truncated.jpg"] and doc["summary"]["skipped"] == 1
    plain, phone = doc["images"]
    assert (plain["image_id"], plain["path"], phone["image_id"], phone["path"]) == (0, "a_plain.png", 1, "c_phone.jpg")
    assert phone["exif_orientation"] == 6
    for entry in (plain, phone):
        displayed = ImageOps.exif_transpose(Image.open(photos / entry["path"])).convert("RGB")
        rgb = np.asarray(displayed)
        want = expected_boxes(built.wrapper, rgb)
        got = entry["detections"]
        assert entry["count"] == len(got) == len(want) > 0
        assert set(got[0]) == {"bbox", "score", "category_id", "category_name"}
        for d, (x1, y1, x2, y2, score, label) in zip(got, want, strict=True):
            assert d["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.02)
            assert d["score"] == pytest.approx(score, abs=1e-4)
            assert (d["category_id"], d["category_name"]) == (int(label), CLASSES[int(label)])
        assert Image.open(out / entry["overlay"]).size == displayed.size
    tall = np.array([d["bbox"] for d in phone["detections"]])
    assert (tall[:, 0] + tall[:, 2] <= 60.01).all() and (tall[:, 1] + tall[:, 3] <= 150.01).all()
    assert sorted(p.name for p in out.iterdir()) == ["overlays", "predictions.json"]  # no labels/ for boxes

    rc, err = run_cli(capsys, "predict", photos / "a_plain.png", "--model", built.onnx, "--out", out,
                      "--score-threshold", "0.5", "--no-progress")  # fmt: skip
    assert rc == 0, err
    (entry,) = json.loads((out / "predictions.json").read_text())["images"]
    assert 0 < entry["count"] < plain["count"] and min(d["score"] for d in entry["detections"]) > 0.5


def test_score_threshold_is_refused_for_a_segmentation_model(built, tmp_path, capsys):
    untagged = export(built.wrapper, tmp_path / "untagged.onnx", task=None)
    image = tmp_path / "x.png"
    Image.fromarray(scene(45, 70, 1)).save(image)
    rc, err = run_cli(capsys, "predict", image, "--model", untagged, "--out", tmp_path / "o", "--score-threshold", 0.3)
    assert rc == 2 and "detection models" in err and "Traceback" not in err


def test_the_device_agent_decodes_a_detector_from_all_its_outputs(built, tmp_path, monkeypatch):
    """The agent's ONNX Runtime fallback on a detection job: the task reads the three named outputs."""
    import bckd_pipeline.device.agent as agent
    from bckd_pipeline.ledger import DEVICE_LABELS_FILE

    monkeypatch.setattr(agent, "_tensorrt_missing", lambda: ["tensorrt: not on this host"])
    work = tmp_path / "bundle"
    work.mkdir()
    (work / "model.onnx").write_bytes(built.onnx.read_bytes())
    images = np.stack([scene(*IN_HW, seed).transpose(2, 0, 1).astype(np.float32) for seed in (1, 2)])
    np.savez(work / "feeds.npz", images=images)
    job = {"format": agent.JOB_FORMAT, "target": "jetson-orin-trt-int8", "onnx": "model.onnx", "feeds": "feeds.npz",
           "input_name": "image", "task": "detection", "cuda_graph": False, "allow_fallback": True,
           "latency": {"warmup_runs": 0, "warmup_s": 0.0, "runs": 1, "streams": 1}}  # fmt: skip
    (work / "job.json").write_text(json.dumps(job))
    result = agent.run_job(work / "job.json", tmp_path / "out")
    assert result["ok"] and result["fallback"] and result["images"] == 2
    with np.load(tmp_path / "out" / DEVICE_LABELS_FILE) as saved:
        assert saved["labels"].shape == (2, 100, 6)


def test_a_graph_with_nms_inside_predicts_the_raw_graphs_boxes(built, tmp_path):
    """An artifact of ``--head nms`` (the raw graph with export/detection_nms.py appended): the Detector reads its
    four outputs (``bckd.output`` names them) and gives the boxes the host's decoding of the raw graph gives."""
    from bckd_pipeline.export.detection_nms import nms_graph
    from bckd_pipeline.tasks.detection import NMS_OUTPUT_NAMES

    task = get_task("detection")
    path = nms_graph(built.onnx, tmp_path / "nms.onnx", task.settings, task.strides, IN_HW)
    names = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["bckd.output"])["names"]
    assert names == list(NMS_OUTPUT_NAMES)
    image = scene(45, 70, 1)
    with Detector.load(built.onnx) as raw, Detector.load(path) as nms, Detector.load(path, score_threshold=0.5) as hi:
        want, got, fewer = raw(image), nms(image), hi(image)
        assert nms.info.output_name == ", ".join(NMS_OUTPUT_NAMES) and nms.classes == raw.classes
    assert len(want) > 0 and len(got) == len(want)
    np.testing.assert_allclose(got.data, want.data, rtol=1e-5, atol=1e-3)
    assert 0 < len(fewer) < len(got) and (fewer.conf > 0.5).all()
    with pytest.raises(ConfigError, match="cannot bring them back"):
        Detector.load(path, score_threshold=0.1)


def _with_props(src, dst, changes: dict):
    """A copy of an ONNX with metadata entries replaced (a value) or dropped (None)."""
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props} | changes
    del model.metadata_props[:]
    for key, value in props.items():
        if value is not None:
            model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dst))
    return dst


def test_a_graph_with_nms_inside_is_read_at_its_own_threshold_and_class_count(built, tmp_path):
    from dataclasses import replace

    from bckd_pipeline.export.detection_nms import nms_graph

    task = get_task("detection")
    path = nms_graph(built.onnx, tmp_path / "nms.onnx", replace(task.settings, score_thresh=0.3), task.strides, IN_HW)
    with Detector.load(path) as det:
        assert det.score_threshold == pytest.approx(0.3)
        assert (det(scene(45, 70, 1)).conf > 0.3).all()
    with pytest.raises(ConfigError, match="drops scores at or under 0.3; --score-threshold 0.2 cannot"):
        Detector.load(path, score_threshold=0.2)
    nameless = _with_props(path, tmp_path / "nameless.onnx", {"bckd.class_names": None})
    with pytest.raises(ConfigError, match="class id [1-9]\\d*, and 1 class names are given"):
        with Detector.load(nameless, classes=["only"], score_threshold=0.3) as det:
            for seed in range(4):
                det(scene(45, 70, seed))
