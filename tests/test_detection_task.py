"""The detection task: decoding and NMS against torchvision, AP against pycocotools, the evidence and its
bootstrap, the parity ledger and its judgement, the gate's budgets, and predict's and report.html's hooks."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from helpers.ledger import FnRuntime

from bckd_pipeline.imagefile import Decoded
from bckd_pipeline.data.feeds import DatasetFeeds
from bckd_pipeline.deploy.parity import LedgerStage, ledger
from bckd_pipeline.errors import DataError
from bckd_pipeline.gate.budgets import parse_budgets
from bckd_pipeline.gate.gate import FAIL, PASS, gate
from bckd_pipeline.ledger import REPORT_FORMAT
from bckd_pipeline.predict.outputs import PredictionsWriter
from bckd_pipeline.predict.segmenter import Prediction
from bckd_pipeline.predict.sources import Item, Source
from bckd_pipeline.tasks import base as task_base
from bckd_pipeline.tasks import detection_ap as ap
from bckd_pipeline.tasks import get_task
from bckd_pipeline.tasks.detection import DETECTION, FLOAT_PARITY, INT8_PARITY, matched_share
from bckd_pipeline.tasks.detection_decode import HeadOutputs, anchor_points, batched_nms, decode, to_source

C, H, W = 3, 64, 96
A = sum(len(p) for p in anchor_points(H, W))


def head_outputs(seed: int, n: int = 2, offset: float = -1.0) -> HeadOutputs:
    """Random raw outputs: logits that put a few hundred candidates per image above the score threshold (fewer
    than the 100 kept after NMS with ``offset=-4``)."""
    rng = np.random.default_rng(seed)
    scores = (rng.normal(size=(n, A, C)) * 2 + offset).astype(np.float32)
    boxes = rng.uniform(2, 40, size=(n, A, 4)).astype(np.float32)
    centerness = rng.normal(size=(n, A, 1)).astype(np.float32)
    return HeadOutputs(scores, boxes, centerness, (H, W))


# ---------------------------------------------------------------------------------------------
# decoding and NMS
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [-1.0, -4.0])
def test_decoding_matches_torchvisions_fcos_postprocessing(offset):
    torch = pytest.importorskip("torch")
    from torchvision.models.detection import FCOS
    from torchvision.models.detection._utils import BoxLinearCoder

    head = head_outputs(0, offset=offset)
    ours = decode(head)
    points = anchor_points(H, W)
    sizes = [len(p) for p in points]
    # torchvision decodes (l, t, r, b) * anchor size around the anchor's centre: unit anchors centred on our
    # points make that our "distances in input pixels".
    anchors = torch.from_numpy(np.concatenate([np.concatenate([p - 0.5, p + 0.5], 1) for p in points]))
    split = {
        k: list(torch.from_numpy(v).split(sizes, dim=1))
        for k, v in (("cls_logits", head.scores), ("bbox_regression", head.boxes), ("bbox_ctrness", head.centerness))
    }
    fcos = SimpleNamespace(score_thresh=0.2, topk_candidates=1000, nms_thresh=0.6, detections_per_img=100,
                           box_coder=BoxLinearCoder(normalize_by_size=True))  # FCOS's defaults  # fmt: skip
    theirs = FCOS.postprocess_detections(fcos, split, [list(anchors.split(sizes))] * 2, [(H, W)] * 2)
    for i, t in enumerate(theirs):
        rows = ours[i][ours[i][:, 5] >= 0]
        assert len(rows) == len(t["boxes"]) and (len(rows) == 100) == (offset == -1.0)
        np.testing.assert_allclose(rows[:, :4], t["boxes"].numpy(), atol=1e-4)
        np.testing.assert_allclose(rows[:, 4], t["scores"].numpy(), rtol=1e-6)
        assert np.array_equal(rows[:, 5].astype(np.int64), t["labels"].numpy())


def test_class_wise_nms_matches_torchvision_batched_nms():
    torch = pytest.importorskip("torch")
    from torchvision.ops import batched_nms as tv_batched_nms

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 50, (400, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (400, 2))], 1).astype(np.float32)  # heavy overlap
    scores = rng.random(400).astype(np.float32)
    labels = rng.integers(0, 4, 400)
    for thr in (0.3, 0.6):
        theirs = tv_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), thr)
        assert np.array_equal(batched_nms(boxes, scores, labels, thr), theirs.numpy())


def test_outputs_of_another_input_size_are_refused():
    head = head_outputs(0, n=1)
    with pytest.raises(DataError, match=r"input of 64x64 at strides \(8, 16, 32\) has"):
        decode(HeadOutputs(head.scores, head.boxes, head.centerness, (64, 64)))


# ---------------------------------------------------------------------------------------------
# AP
# ---------------------------------------------------------------------------------------------
def synthetic_split(seed: int, images: int = 60, classes: int = C):
    """Random ground truths (some crowd) and noisy detections of them (some of another class), plus false ones."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(images):
        k = int(rng.integers(0, 8))
        xy = rng.uniform(0, 300, (k, 2))
        wh = np.exp(rng.uniform(np.log(4), np.log(200), (k, 2)))  # small, medium and large
        gt = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, classes, k)
        dets = []
        for j in range(k):
            for _ in range(int(rng.integers(0, 3))):
                b = gt[j] + rng.normal(0, 0.08, 4) * np.r_[wh[j], wh[j]]
                b[2:] = np.maximum(b[2:], b[:2] + 1)
                dets.append([*b, rng.uniform(0.2, 1), labels[j] if rng.random() < 0.9 else rng.integers(0, classes)])
        for _ in range(int(rng.integers(0, 6))):
            a = rng.uniform(0, 300, 2)
            dets.append([*a, *(a + np.exp(rng.uniform(np.log(4), np.log(200), 2))), rng.uniform(0.2, 0.8),
                         rng.integers(0, classes)])  # fmt: skip
        dets = np.array(dets, np.float32).reshape(-1, 6)
        target = {"boxes": gt.astype(np.float32), "labels": labels, "iscrowd": rng.random(k) < 0.1}
        out.append((dets[np.argsort(-dets[:, 4], kind="stable")], target))
    return out


def pycocotools_stats(split, classes: int = C) -> np.ndarray:
    """COCOeval's AP, AP50, AP75, AP small/medium/large (points) of the split."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns, results = [], []
    for i, (dets, t) in enumerate(split):
        for b, c, crowd in zip(t["boxes"].astype(np.float64), t["labels"], t["iscrowd"], strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": int(crowd)})  # fmt: skip
        for r in dets.astype(np.float64):
            results.append({"image_id": i + 1, "category_id": int(r[5]) + 1, "score": r[4],
                            "bbox": [r[0], r[1], r[2] - r[0], r[3] - r[1]]})  # fmt: skip
    gt = COCO()
    gt.dataset = {"images": [{"id": i + 1} for i in range(len(split))], "annotations": anns,
                  "categories": [{"id": c + 1} for c in range(classes)]}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[:6] * 100


def six(evidence) -> np.ndarray:
    s = DETECTION.summary(evidence)
    return np.array([s[k] for k in ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")], np.float64)


def split_evidence(split) -> np.ndarray:
    return np.stack([DETECTION.image_evidence(d, t, num_classes=C) for d, t in split])


def test_ap_is_cocoevals_when_every_detection_has_its_own_score_bin():
    """With each detection alone in its score bin the binned curve has every point of COCOeval's: equal."""
    split = synthetic_split(10, images=25)
    n = sum(len(d) for d, _ in split)
    assert 100 < n <= ap.SCORE_BINS
    free = np.random.default_rng(0).permutation(ap.SCORE_BINS)[:n]
    start = 0
    for dets, _ in split:
        dets[:, 4] = (free[start : start + len(dets)] + 0.5) / ap.SCORE_BINS
        start += len(dets)
    np.testing.assert_allclose(six(split_evidence(split).sum(0)), pycocotools_stats(split), atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_lies_between_the_bins_bounds_and_near_cocoeval(seed):
    """Continuous scores: detections share score bins, and the bins do not keep their order within a bin.

    COCOeval's six numbers lie between the bins' worst order (FPs first) and best order (TPs first); the
    metric, their mean, was within 0.077 AP points of pycocotools' AP@[.5:.95] and within 0.371 of any of the
    six numbers over seeds 0..7 of this split (60 images, 3 classes; the largest on AP large, where a class
    has a handful of large objects and one point of the curve spans a tenth of its recall axis); on three
    400-image splits of 5 classes, within 0.036 and 0.131. The tolerances, 0.1 for AP and 0.5 for the
    others, bound what was seen.
    """
    split = synthetic_split(seed)
    evidence = split_evidence(split).sum(0, dtype=np.int64)
    theirs = pycocotools_stats(split)
    keys = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
    worst, best = ([ap.coco_summary(evidence, within_bin=w)[k] for k in keys] for w in ("worst", "best"))
    assert np.all(np.asarray(worst) <= theirs + 1e-9) and np.all(theirs <= np.asarray(best) + 1e-9)
    mine = six(evidence)
    assert abs(mine[0] - theirs[0]) <= 0.1
    np.testing.assert_allclose(mine, theirs, atol=0.5)


def test_evidence_sums_over_images_and_the_metric_is_vectorised():
    split = synthetic_split(3)
    per_image = split_evidence(split)
    assert per_image.dtype == np.int16 and per_image.shape == (len(split), ap.evidence_length(C))
    halves = per_image[:25].sum(0, dtype=np.int64) + per_image[25:].sum(0, dtype=np.int64)
    whole = DETECTION.metric_of(per_image.sum(0, dtype=np.int64))
    assert DETECTION.metric_of(halves) == whole
    stacked = np.stack([per_image[:25].sum(0), per_image[25:].sum(0)])
    assert np.array_equal(DETECTION.metric_of(stacked), [DETECTION.metric_of(e) for e in stacked])
    score = DETECTION.split_score(C, -1)
    for dets, target in split:
        score.update(dets[None], [target])
    assert score.value() == whole


def test_a_class_without_ground_truth_is_left_out_and_one_without_detections_scores_zero():
    box = np.array([[10, 10, 50, 50]], np.float32)
    dets = np.array([[10, 10, 50, 50, 0.9, 0], [60, 60, 90, 90, 0.8, 2]], np.float32)
    target = {"boxes": np.concatenate([box, box + 5]), "labels": np.array([0, 1]), "iscrowd": np.zeros(2, bool)}
    s = DETECTION.summary(DETECTION.image_evidence(dets, target, num_classes=C).astype(np.int64))
    assert s["per_class_ap"] == [pytest.approx(100.0), 0.0, None] and s["map"] == pytest.approx(50.0)


def test_the_bootstrap_runs_on_detection_evidence_in_chunks_with_the_same_result(monkeypatch):
    split = synthetic_split(4, images=30)
    rng = np.random.default_rng(5)
    worse = [(np.concatenate([d[:, :4] + rng.normal(0, 3, (len(d), 4)), d[:, 4:]], 1).astype(np.float32), t)
             for d, t in split]  # fmt: skip
    new, ref = split_evidence(worse), split_evidence(split)
    ci = DETECTION.bootstrap_delta(new, ref, resamples=100, seed=1)
    assert ci.point == pytest.approx(float(DETECTION.metric_of(new.sum(0)) - DETECTION.metric_of(ref.sum(0))))
    assert ci.lower < ci.point < 0 and ci.upper > ci.lower
    monkeypatch.setattr(task_base, "BOOTSTRAP_CHUNK_VALUES", 7 * new.shape[1])  # seven resamples per chunk
    assert DETECTION.bootstrap_delta(new, ref, resamples=100, seed=1) == ci


# ---------------------------------------------------------------------------------------------
# parity
# ---------------------------------------------------------------------------------------------
def HeadRuntime(fn, name: str) -> FnRuntime:  # noqa: N802 - reads as the runtime class it builds
    """A detector's runtime: the function returns the head's named outputs."""
    return FnRuntime(fn, name, shape=(1, 3, H, W), output=None)


def detection_stages():
    """A float reference, a float copy, an "int8" stage with coarse box distances and score logits."""
    images = [np.full((1, 3, H, W), i, np.float32) for i in range(4)]

    def raw(x):
        head = head_outputs(int(x[0, 0, 0, 0]), n=1)
        return {"scores": head.scores, "boxes": head.boxes, "centerness": head.centerness}

    def coarse(x):
        out = raw(x)
        return {"scores": np.round(out["scores"] * 4) / 4, "boxes": np.round(out["boxes"] / 3) * 3,
                "centerness": out["centerness"]}  # fmt: skip

    reference = decode(HeadOutputs(**{k: np.concatenate([raw(x)[k] for x in images]) for k in raw(images[0])},
                                   image_size=(H, W)))  # fmt: skip
    # The ground truth: the reference's confident boxes, so that the reference scores well.
    labels = [{"boxes": r[(r[:, 5] >= 0) & (r[:, 4] > 0.6), :4], "labels": r[(r[:, 5] >= 0) & (r[:, 4] > 0.6), 5]
               .astype(np.int64)} for r in reference]  # fmt: skip
    feeds = DatasetFeeds(images, labels, [f"i{i}" for i in range(4)], [str(i) for i in range(4)], "val")
    stages = [
        LedgerStage("pytorch", "torch", "fp32", HeadRuntime(raw, "pytorch"), None),
        LedgerStage("onnx", "onnxruntime", "fp32",
                    HeadRuntime(lambda x: {k: v + np.float32(1e-5) for k, v in raw(x).items()}, "onnx"), "pytorch"),
        LedgerStage("int8", "onnxruntime", "int8", HeadRuntime(coarse, "int8"), "onnx"),
    ]  # fmt: skip
    for s in stages:
        s.runtime.activate()
    return stages, feeds


def test_the_ledger_measures_and_judges_a_detector():
    stages, feeds = detection_stages()
    criteria = {"fp32": FLOAT_PARITY, "int8": INT8_PARITY}.get
    report = ledger(stages, feeds, num_classes=C, ignore_index=-1, criteria=criteria, keep_labels=2, task=DETECTION)
    ref, onnx, int8 = (report.stage(n).as_dict() for n in ("pytorch", "onnx", "int8"))
    assert set(DETECTION.parity_fields) <= set(int8)
    assert ref["map"] > 50 and ref["matched_share"] == 1.0 and ref["score_agreement"] == 1.0
    assert onnx["passed"] and onnx["map_delta_vs_parent"] == 0.0 and onnx["matched_share_vs_parent"] == 1.0
    assert onnx["max_abs_logit_vs_parent"] == pytest.approx(1e-5, rel=0.1)
    assert int8["max_abs_boxes"] == pytest.approx(1.5, abs=0.01)
    assert int8["max_abs_scores"] == pytest.approx(0.125, abs=1e-3)
    assert int8["map_delta"] < 0 and int8["matched_share"] < 0.8
    assert not int8["passed"] and any("found again" in f for f in int8["failures"])
    assert report.per_image["int8"].shape == (4, ap.evidence_length(C)) and report.labels["int8"].shape == (2, 100, 6)
    ci = DETECTION.bootstrap_delta(report.per_image["int8"], report.per_image["pytorch"], resamples=100)
    assert ci.point == pytest.approx(int8["map_delta"])


def test_a_label_free_ledger_scores_a_detector_against_the_references_detections():
    stages, feeds = detection_stages()
    criteria = {"fp32": FLOAT_PARITY, "int8": INT8_PARITY}.get
    report = ledger(
        stages, feeds, num_classes=C, ignore_index=-1, criteria=criteria, task=DETECTION, labels="reference"
    )
    ref, onnx, int8 = (report.stage(n).as_dict() for n in ("pytorch", "onnx", "int8"))
    assert ref["map"] == pytest.approx(100.0) and onnx["map"] == pytest.approx(100.0)  # the reference scores itself
    assert int8["map"] < 100.0 and int8["map_delta"] < 0


def test_the_judge_reads_the_criteria_of_the_precision():
    row = {"map_delta_vs_parent": -0.5, "matched_share_vs_parent": 0.9, "max_abs_logit_vs_parent": 2e-3,
           "max_abs_box_vs_parent": 0.5}  # fmt: skip
    assert DETECTION.judge(row, "onnx", False, INT8_PARITY) == []
    assert DETECTION.judge(row, "onnx", True, FLOAT_PARITY) == [
        "AP fell 0.500 points from onnx (allowed 0.05)",
        "90.00% of onnx's detections found again (allowed >= 99%)",
        "max |logit diff| from onnx is 0.002 (allowed 0.001)",
        "max |box diff| from onnx is 0.5 px (allowed 0.01)",
    ]
    assert DETECTION.judge(row, "onnx", True, FLOAT_PARITY.for_fine_tuned()) == [
        "AP fell 0.500 points from onnx (allowed 0.05)"
    ]


def test_a_detection_is_found_again_by_class_overlap_and_score():
    ref = np.array([[0, 0, 100, 100, 0.9, 1], [200, 200, 300, 300, 0.5, 0]], np.float32)
    same = ref.copy()
    assert matched_share(same, ref) == (2, 2)
    moved = ref + np.array([[6, 0, 6, 0, 0, 0], [0, 0, 0, 0, 0.1, 0]], np.float32)  # IoU 0.89; score +0.1
    assert matched_share(moved, ref) == (0, 2)
    relabelled = ref.copy()
    relabelled[0, 5] = 0
    assert matched_share(relabelled, ref) == (1, 2)


# ---------------------------------------------------------------------------------------------
# the gate
# ---------------------------------------------------------------------------------------------
def detection_report(tmp_path: Path, **fields) -> Path:
    row = {"name": "onnxruntime", "backend": "onnxruntime", "precision": "int8", "artifact": None,
           "status": "measured", "latency_ms": dict.fromkeys(("p50", "p90", "p99", "mean")), **fields}  # fmt: skip
    report = {"format": REPORT_FORMAT, "task": "detection", "target": "onnxruntime-cpu", "stages": [row]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path


def test_the_gate_checks_a_detection_reports_budgets(tmp_path):
    budgets = parse_budgets("[onnxruntime-cpu]\nmin_map = 30\nmin_matched_share = 0.8\nmax_map_drop = 1\n", "b.toml")
    result = gate(detection_report(tmp_path, map=25.0, map_delta=-1.5, matched_share=0.85), budgets)
    checks = {c.budget: c for c in result.checks}
    assert checks["min_map"].status == FAIL and checks["min_map"].measured == 25.0
    assert checks["min_map"].message == "onnxruntime: AP 25.00 vs budget min_map 30: short by 5.00 points"
    assert checks["min_matched_share"].status == PASS
    assert checks["max_map_drop"].status == FAIL and "ΔAP -1.500" in checks["max_map_drop"].message
    assert gate(detection_report(tmp_path, map=35.0, map_delta=-0.5, matched_share=0.9), budgets).count(FAIL) == 0


def test_the_gate_refuses_a_segmentation_budget_on_a_detection_report(tmp_path):
    from bckd_pipeline.errors import ConfigError

    budgets = parse_budgets("[onnxruntime-cpu]\nmin_miou = 10\n", "b.toml")
    with pytest.raises(ConfigError, match=r"budgets 'min_miou'.*another task.*detection"):
        gate(detection_report(tmp_path, map=30.0), budgets)


# ---------------------------------------------------------------------------------------------
# predict's files and report.html's pictures
# ---------------------------------------------------------------------------------------------
ROWS = np.zeros((100, 6), np.float32)
ROWS[:, 5] = -1
ROWS[:2] = [[4, 6, 20, 30, 0.875, 1], [30, 10, 60, 40, 0.5, 0]]
COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)


def test_predict_writes_coco_style_detections_and_an_overlay(tmp_path):
    seg = SimpleNamespace(task=get_task("detection"), palette=COLORS, classes=("car", "person", "bike"))
    seg.info = SimpleNamespace(as_dict=lambda: {"backend": "fake"})
    writer = PredictionsWriter(tmp_path, seg, Source(tmp_path, "folder"), overlay=True)
    image = Decoded(np.zeros((48, 64, 3), np.uint8))
    writer.add(Item("x.png", "x", tmp_path / "x.png"), image, Prediction(ROWS, 1.0, 2.0))
    path, _ = writer.finish(1.0)
    (entry,) = json.loads(path.read_text())["images"]
    assert entry["detections"] == [
        {"bbox": [4.0, 6.0, 16.0, 24.0], "score": 0.875, "category_id": 1, "category_name": "person"},
        {"bbox": [30.0, 10.0, 30.0, 30.0], "score": 0.5, "category_id": 0, "category_name": "car"},
    ]
    assert entry["count"] == 2 and entry["overlay"] == "overlays/x.jpg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlays", "predictions.json"]


def test_draw_puts_each_box_in_its_class_colour_over_the_ground_truth():
    truth = DETECTION.as_saved({"boxes": np.array([[4, 6, 20, 30], [0, 0, 10, 10]], np.float32),
                                "labels": np.array([1, 0]), "iscrowd": np.array([False, True])})  # fmt: skip
    assert truth.shape == (100, 6) and truth[:2, 4].tolist() == [1.0, 0.0]
    picture = DETECTION.draw(ROWS, COLORS, ignore_index=-1, truth=truth)
    assert picture.dtype == np.uint8 and picture.shape == (40, 60, 3)  # a canvas holding every box
    assert picture[20, 30].tolist() == [255, 0, 0] and picture[20, 4].tolist() == [0, 255, 0]
    over = DETECTION.draw(ROWS, COLORS, truth=truth, image=np.zeros((48, 64, 3), np.uint8))
    assert over.shape == (48, 64, 3) and over[45, 62].tolist() == [0, 0, 0]
    assert DETECTION.caption(ROWS, truth, ignore_index=-1) == "2 boxes, 1/1 objects found (IoU ≥ 0.5)"
    stacked = DETECTION.as_saved([{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}] * 2)
    assert stacked.shape == (2, 100, 6) and (stacked[..., 5] == -1).all()


def test_boxes_go_back_to_the_original_images_pixels():
    """A 100 x 200 image letterboxed into 64 x 96: scaled by 0.48 into 48 x 96 rows 8..56."""
    placed = to_source(ROWS, source=(100, 200), inner=(48, 96), top=8, left=0)
    np.testing.assert_allclose(placed[0, :4], [4 / 0.48, 0.0, 20 / 0.48, (30 - 8) / 0.48], rtol=1e-6)
    assert (placed[2:] == ROWS[2:]).all()  # y1 = (6 - 8) / 0.48 is clipped to the image; padding stays padding
