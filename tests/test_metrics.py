"""Metrics against hand-computed values (the arithmetic is in the comments)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from bckd_pipeline.errors import ConfigError, DataError
from bckd_pipeline.metrics import (
    BoundaryFScore,
    ConfusionMatrix,
    FragmentStats,
    LHDMeter,
    boundary_map,
    count_flops,
    count_params,
    evaluate,
    lhd,
    mfs,
    model_cost,
)

IGN = 255


def vertical_edge(h: int, w: int, col: int) -> np.ndarray:
    """Label 0 left of ``col``, label 1 from ``col`` on: boundary pixels are columns col-1 and col."""
    labels = np.ones((h, w), dtype=np.int64)
    labels[:, :col] = 0
    return labels


# ----------------------------------------------------------------------------- ConfusionMatrix
def test_confusion_matrix_hand_computed_with_ignore():
    target = np.array([[0, 0, 1], [1, 2, IGN]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])  # the last pixel sits under ignore and is skipped
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # valid pairs (t, p): (0,0) (0,1) (1,1) (1,1) (2,2)
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    # IoU0 = TP 1 / (TP 1 + FP 0 + FN 1) = 1/2
    # IoU1 = TP 2 / (TP 2 + FP 1 + FN 0) = 2/3
    # IoU2 = TP 1 / (TP 1 + FP 0 + FN 0) = 1
    np.testing.assert_allclose(cm.per_class_iou(), [1 / 2, 2 / 3, 1.0])
    assert cm.miou() == pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3)  # 72.22 %
    assert cm.pixel_accuracy() == pytest.approx(100 * 4 / 5)  # 4 correct of 5 valid


def test_confusion_matrix_absent_class_is_nan_and_excluded():
    cm = ConfusionMatrix(4)  # class 3 never appears in target nor pred
    cm.update(torch.tensor([[0, 1, 1], [1, 2, 0]]), torch.tensor([[0, 0, 1], [1, 2, IGN]]))
    iou = cm.per_class_iou()
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3)


def test_confusion_matrix_is_dataset_level_not_mean_of_images():
    # image A: target 0000, pred 0000 -> per-image IoU0 = 1, class 1 absent -> per-image mIoU 100
    # image B: target 0111, pred 1111 -> IoU0 = 0/1 = 0, IoU1 = 3/4      -> per-image mIoU 37.5
    # mean of per-image mIoUs = (100 + 37.5) / 2 = 68.75
    # dataset-level: t0p0 = 4, t0p1 = 1, t1p1 = 3 -> IoU0 = 4/5, IoU1 = 3/4 -> mIoU 77.5
    a_t, a_p = np.zeros((1, 4), int), np.zeros((1, 4), int)
    b_t, b_p = np.array([[0, 1, 1, 1]]), np.ones((1, 4), int)
    batch = ConfusionMatrix(2)
    batch.update(np.stack([a_p, b_p]), np.stack([a_t, b_t]))  # N x H x W in one call
    assert batch.miou() == pytest.approx(77.5)

    per_image = []
    for p, t in ((a_p, a_t), (b_p, b_t)):
        cm = ConfusionMatrix(2)
        cm.update(p, t)
        per_image.append(cm.miou())
    assert per_image == pytest.approx([100.0, 37.5])

    merged = ConfusionMatrix(2)
    other = ConfusionMatrix(2)
    merged.update(a_p, a_t)
    other.update(b_p, b_t)
    merged += other
    np.testing.assert_array_equal(merged.matrix, batch.matrix)


def test_confusion_matrix_rejects_bad_input():
    cm = ConfusionMatrix(2)
    with pytest.raises(DataError, match="allowed are 0..1"):
        cm.update(np.array([[0, 5]]), np.array([[0, 1]]))
    with pytest.raises(DataError, match="shape"):
        cm.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ConfigError):
        cm.merge(ConfusionMatrix(3))
    with pytest.raises(ConfigError):
        ConfusionMatrix(0)


# ----------------------------------------------------------------------------- boundaries
def test_boundary_map_two_regions_lights_border_columns():
    b = boundary_map(vertical_edge(4, 6, 3))
    expected = np.zeros((4, 6), bool)
    expected[:, [2, 3]] = True
    np.testing.assert_array_equal(b, expected)


def test_boundary_map_uses_8_neighbourhood():
    labels = np.zeros((5, 5), int)
    labels[2, 2] = 1
    expected = np.zeros((5, 5), bool)
    expected[1:4, 1:4] = True  # the pixel and its 8 neighbours (diagonals included)
    np.testing.assert_array_equal(boundary_map(labels), expected)


def test_boundary_map_is_ignore_aware():
    labels = vertical_edge(4, 7, 4)
    labels[:, 3] = IGN  # an ignore column between the classes hides the class change
    assert not boundary_map(labels).any()
    inner = np.zeros((5, 5), int)
    inner[2, 2] = IGN  # an ignore hole inside one class is no boundary either
    assert not boundary_map(inner).any()


def test_boundary_f_identical_and_one_pixel_shift_are_perfect():
    gt = vertical_edge(8, 20, 5)  # boundary columns 4, 5
    bf = BoundaryFScore(tolerance_px=2)
    bf.update(gt, gt)
    assert bf.compute() == {"precision": 100.0, "recall": 100.0, "f_score": 100.0}
    # shifted by 1: pred boundary columns 5, 6; every pixel has a counterpart within 1 px <= 2
    bf = BoundaryFScore(tolerance_px=2)
    bf.update(vertical_edge(8, 20, 6), gt)
    assert bf.compute() == {"precision": 100.0, "recall": 100.0, "f_score": 100.0}


def test_boundary_f_shift_by_five_hand_checked():
    # single edge shifted by 5: pred columns 9, 10 vs gt 4, 5 -> nearest distances 4 and 5 > 2 -> all 0
    bf = BoundaryFScore(tolerance_px=2)
    bf.update(vertical_edge(8, 20, 10), vertical_edge(8, 20, 5))
    assert bf.compute() == {"precision": 0.0, "recall": 0.0, "f_score": 0.0}

    # two edges, one kept, one shifted by 5: gt = 0 | 1 | 0 with edges at 5 and 15 (boundary columns
    # 4, 5, 14, 15); pred edges at 5 and 20 (columns 4, 5, 19, 20). Per row: pred 4, 5 match (d=0),
    # pred 19 -> gt 15 is d=4, pred 20 -> d=5: precision 2/4. gt 14 -> pred 19 d=5, gt 15 -> d=4:
    # recall 2/4. F = 2 * 50 * 50 / 100 = 50.
    gt = vertical_edge(8, 30, 5)
    gt[:, 15:] = 0
    pred = vertical_edge(8, 30, 5)
    pred[:, 20:] = 0
    bf = BoundaryFScore(tolerance_px=2)
    bf.update(pred, gt)
    assert bf.compute() == {"precision": 50.0, "recall": 50.0, "f_score": 50.0}


# ----------------------------------------------------------------------------- LHD
def test_lhd_identical_is_zero():
    gt = vertical_edge(20, 30, 10)
    assert lhd(gt, gt) == 0.0


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5])
def test_lhd_shifted_edge_is_exactly_d(d):
    # ∂G = columns 9, 10; ∂P = columns 9+d, 10+d (full-height lines, so all distances are horizontal).
    # Second term of Eq. (24): b at column 9 is within N_k(p) of every p ∈ ∂G (|9-10| = 1 <= k) and its
    # nearest a is column 9+d, so the term is >= d; no b is farther than d from ∂P, so it is exactly d.
    # First term: no a is farther than d from ∂G (column 10+d -> 10), so it is <= d.
    # Hence LHD(p) = d for every p, and the mean over ∂G is d.
    gt = vertical_edge(20, 30, 10)
    assert lhd(vertical_edge(20, 30, 10 + d), gt, k=5) == pytest.approx(d, abs=1e-12)


def test_lhd_is_local_and_ignore_aware():
    gt = vertical_edge(20, 40, 5)  # ∂G = columns 4, 5
    far = gt.copy()
    far[8:11, 20:23] = 0  # a blob whose boundary (columns 19..23) is >= 14 px > k from every p ∈ ∂G
    assert lhd(far, gt, k=5) == 0.0
    near = gt.copy()
    near[8:10, 8:10] = 0  # a blob within k of ∂G is seen
    assert lhd(near, gt, k=5) > 0.0

    ref = gt.copy()
    ref[:, 8:] = IGN  # the reference says nothing from column 8 on
    pred = gt.copy()
    pred[:, 8:] = 0  # a class change at column 8 would be 2-3 px from ∂G, but it lies under ignore
    assert lhd(pred, ref, k=5) == 0.0


def test_lhd_without_reference_boundary_is_nan_and_meter_skips_it():
    flat = np.zeros((10, 10), int)
    assert math.isnan(lhd(vertical_edge(10, 10, 5), flat))
    meter = LHDMeter(k=5)
    meter.update(vertical_edge(20, 30, 11), vertical_edge(20, 30, 10))  # 1
    meter.update(vertical_edge(20, 30, 13), vertical_edge(20, 30, 10))  # 3
    meter.update(flat, flat)  # NaN, skipped
    assert meter.compute() == pytest.approx({"mean": 2.0, "std": 1.0, "count": 2})


def test_lhd_empty_prediction_boundary_uses_image_diagonal():
    # ∂P empty: every distance to ∂P is the diagonal sqrt(20² + 30²), so every LHD(p) is that value
    gt = vertical_edge(20, 30, 10)
    assert lhd(np.ones_like(gt), gt) == pytest.approx(math.hypot(20, 30))


# ----------------------------------------------------------------------------- fragments
def test_fragment_ratio_region_split_in_three():
    ref = np.ones((10, 10), int)  # class 1 everywhere: 1 component
    pred = ref.copy()
    pred[:, [3, 6]] = 2  # two full-height class-2 lines cut class 1 into 3 pieces
    fs = FragmentStats(num_classes=3)
    fs.update(pred, ref)
    # pred: class 1 -> 3, class 2 -> 2 (5 in total); ref: class 1 -> 1.
    # ratio counts only classes present in ref: 3 / 1.
    assert fs.compute() == {"fragments_pred": 5.0, "fragments_ref": 1.0, "fragment_ratio": 3.0}


def test_fragments_exclude_ignore_pixels():
    ref = np.ones((10, 10), int)
    ref[:, 4] = IGN  # the ignore column splits the reference's class 1 into 2 components
    pred = np.ones((10, 10), int)  # restricted to valid pixels, the prediction is split the same way
    fs = FragmentStats(num_classes=2)
    fs.update(pred, ref)
    assert fs.compute() == {"fragments_pred": 2.0, "fragments_ref": 2.0, "fragment_ratio": 1.0}


def test_fragments_use_8_connectivity():
    labels = np.zeros((4, 4), int)
    labels[0, 0] = labels[1, 1] = labels[2, 2] = 1  # diagonal chain: one component under 8-connectivity
    fs = FragmentStats(num_classes=2)
    fs.update(labels, labels)
    assert fs.compute()["fragments_ref"] == 2.0  # class 0 (one piece) + class 1 (one piece)


# ----------------------------------------------------------------------------- MFS
def _linear_teacher() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1)).eval()


def test_mfs_identical_student_is_exactly_one():
    net = _linear_teacher()

    def feats(x):
        f1 = net[0](x)
        return [f1, net[1](f1)]

    out = mfs(feats, feats, torch.randn(3, 3, 16, 16), draws=4)
    assert out["per_image"] == [1.0, 1.0, 1.0]
    assert out["mean"] == 1.0 and out["std"] == 0.0
    assert (out["ball"], out["agg"], out["direction"]) == ("l2", "max", "S/T")


def test_mfs_student_twice_teacher_is_two():
    net = _linear_teacher()

    def teacher(x):
        f1 = net[0](x)
        return [f1, net[1](f1)]

    def student(x):
        return [2 * f for f in teacher(x)]

    # ||2f(x+δ) - 2f(x)|| / ||δ|| = 2 ||f(x+δ) - f(x)|| / ||δ|| for every δ and layer -> ratio 2
    images = torch.randn(4, 3, 16, 16)
    out = mfs(student, teacher, [images[:2], images[2:]], draws=3)  # an iterable of batches
    assert len(out["per_image"]) == 4
    assert out["mean"] == pytest.approx(2.0, rel=1e-12)
    assert out["per_image"] == pytest.approx([2.0] * 4, rel=1e-12)


def test_mfs_rejects_mismatched_stages():
    def two(x):
        return [x, x]

    def one(x):
        return [x]

    with pytest.raises(ConfigError, match="stages"):
        mfs(two, one, torch.randn(1, 3, 4, 4), draws=1)


# ----------------------------------------------------------------------------- cost
def test_count_params_conv():
    assert count_params(nn.Conv2d(3, 4, 3)) == 3 * 4 * 3 * 3 + 4  # weights + biases = 112


def test_count_flops_1x1_conv():
    conv = nn.Conv2d(3, 5, 1)
    # one multiply-add per (input channel, output channel, pixel) = 2 FLOPs: 2 * 3 * 5 * 8 * 8 = 1920
    assert count_flops(conv, (1, 3, 8, 8)) == 2 * 3 * 5 * 8 * 8
    assert conv.training  # the mode is restored
    assert model_cost(conv, (1, 3, 8, 8)) == {
        "params": 20,
        "flops": 1920,
        "macs": 960,
        "input_shape": [1, 3, 8, 8],
    }


# ----------------------------------------------------------------------------- evaluate
class ConstantModel(nn.Module):
    """Predicts class 1 everywhere, at half the input resolution (so evaluate() has to upsample)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        n, _, h, w = x.shape
        logits = torch.zeros(n, self.num_classes, h // 2, w // 2) + self.dummy
        logits[:, 1] = 1.0
        return logits


def test_evaluate_constant_model_hand_computed():
    mask_a = torch.tensor([[0] * 4, [0] * 4, [1] * 4, [1] * 4])  # rows 0-1 class 0, rows 2-3 class 1
    mask_b = torch.tensor([[IGN] * 4, [1] * 4, [1] * 4, [2] * 4])  # row 0 ignored, row 3 class 2
    dataset = [(torch.randn(3, 4, 4), mask) for mask in (mask_a, mask_b, mask_a)]
    calls = []
    model = ConstantModel()
    out = evaluate(
        model,
        dataset,
        num_classes=3,
        batch_size=1,
        reference_model=ConstantModel(),
        max_images=2,
        progress=lambda i, n: calls.append((i, n)),
    )
    json.dumps(out, allow_nan=False)  # JSON-serialisable, NaN written as None
    assert model.training  # mode restored
    assert out["num_images"] == 2 and calls == [(1, 2), (2, 2)]
    # prediction is class 1 everywhere; valid pixels: t0 8 (A), t1 8 (A) + 8 (B), t2 4 (B)
    # IoU0 = 0 / (0 + 0 + 8) = 0; IoU1 = 16 / (16 + 12 + 0) = 4/7; IoU2 = 0 / 4 = 0
    assert out["per_class_iou"] == pytest.approx([0.0, 100 * 4 / 7, 0.0])
    assert out["miou"] == pytest.approx(100 * 4 / 7 / 3)  # 19.05
    assert out["pixel_accuracy"] == pytest.approx(100 * 16 / 28)  # 57.14
    # one-class prediction: no predicted boundary -> precision undefined, recall 0, F 0
    assert out["boundary_f"] == {"precision": None, "recall": 0.0, "f_score": 0.0, "tolerance_px": 2}
    # empty ∂P: every LHD(p) is the 4x4 diagonal sqrt(32) on both images
    assert out["lhd"]["mean"] == pytest.approx(math.sqrt(32)) and out["lhd"]["std"] == pytest.approx(0.0)
    assert (out["lhd"]["k"], out["lhd"]["reference"]) == (5, "gt")
    # the reference model predicts one class too: no reference boundary -> no image counted
    assert out["lhd_vs_reference"]["count"] == 0 and out["lhd_vs_reference"]["mean"] is None
    # pred: 1 component per image; ref: 2 per image (A: classes 0, 1; B: classes 1, 2);
    # ratio: pred components of ref classes (A: 0 + 1, B: 1 + 0) / ref components (4) = 0.5
    assert out["fragments"] == {"fragments_pred": 1.0, "fragments_ref": 2.0, "fragment_ratio": 0.5}


def test_evaluate_reference_model_gives_zero_lhd_against_itself():
    class LeftRight(nn.Module):
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
            logits[:, 1, :, x.shape[-1] // 2 :] = 1.0
            return logits

    mask = torch.from_numpy(vertical_edge(8, 8, 3))
    out = evaluate(LeftRight(), [(torch.zeros(3, 8, 8), mask)], num_classes=2, reference_model=LeftRight())
    assert out["lhd_vs_reference"]["mean"] == 0.0
    assert out["lhd_vs_reference"]["reference"] == "reference_model"
    # vs gt: edge at column 4 instead of 3 -> shift by 1 -> LHD 1 (see test_lhd_shifted_edge_is_exactly_d)
    assert out["lhd"]["mean"] == pytest.approx(1.0)


def test_evaluate_rejects_wrong_num_classes():
    with pytest.raises(ConfigError, match="num_classes"):
        dataset = [(torch.zeros(3, 4, 4), torch.zeros(4, 4, dtype=torch.long))]
        evaluate(ConstantModel(3), dataset, num_classes=5)
