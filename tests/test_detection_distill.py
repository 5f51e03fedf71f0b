"""Distillation of detectors: the dense score KD and PKD losses against hand-computed and independent reference
values, and every ``--kd`` choice of :class:`DetDistillTask` for one step on the demo instances.

Tiny presets with random weights (``fcos-tiny-s`` student, ``fcos-tiny-t`` teacher); nothing downloads.
"""

from __future__ import annotations

import math

import pytest
import torch

from bckd_pipeline.configs import DET_KD_CHOICES, DistillConfig
from bckd_pipeline.data import build_detection_dataset
from bckd_pipeline.data.demo import DEMO_OBJECT_CLASSES
from bckd_pipeline.data.detection_transforms import DetTrainTransform
from bckd_pipeline.data.instances import collate_detection
from bckd_pipeline.distill.detection import build_detector
from bckd_pipeline.distill.detection_losses import PKD_WEIGHT, PKDLoss, dense_score_kd, pkd_loss
from bckd_pipeline.distill.detection_task import DetDistillTask
from bckd_pipeline.distill.task import StepInfo
from bckd_pipeline.errors import ConfigError

NUM_CLASSES = len(DEMO_OBJECT_CLASSES)


# --------------------------------------------------------------------------------------------
# dense score KD
# --------------------------------------------------------------------------------------------
def test_dense_score_kd_matches_a_hand_computed_value():
    # One point, two classes. Class 0: student sigma(0) = 0.5, teacher sigma(log 3) = 0.75:
    # BCE = -(0.75 log 0.5 + 0.25 log 0.5) = log 2, weight |0.5 - 0.75| = 0.25. Class 1: equal scores, 0.
    s = torch.tensor([[[0.0, 2.0]]])
    t = torch.tensor([[[math.log(3.0), 2.0]]])
    assert dense_score_kd(s, t, num_pos=1) == pytest.approx(0.25 * math.log(2.0), rel=1e-6)
    # Divided by the positives; at least 1.
    assert dense_score_kd(s, t, num_pos=4) == pytest.approx(0.25 * math.log(2.0) / 4, rel=1e-6)
    assert dense_score_kd(s, t, num_pos=0) == pytest.approx(0.25 * math.log(2.0), rel=1e-6)


def test_dense_score_kd_leaves_ignored_points_out_and_is_zero_at_the_teacher():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[1, 2] = False
    full = dense_score_kd(s, t, 3.0)
    # The same value with the ignored point's scores set to the teacher's (a zero term there).
    s_masked = s.clone()
    s_masked[1, 2] = t[1, 2]
    assert dense_score_kd(s, t, 3.0, keep) == pytest.approx(float(dense_score_kd(s_masked, t, 3.0)), rel=1e-6)
    assert float(dense_score_kd(s, t, 3.0, keep)) < float(full)
    assert float(dense_score_kd(t, t, 3.0)) == pytest.approx(0.0, abs=1e-7)


def test_dense_score_kd_reaches_the_student_only():
    s = torch.randn(1, 4, 2, requires_grad=True)
    t = torch.randn(1, 4, 2, requires_grad=True)
    dense_score_kd(s, t, 1.0).backward()
    assert s.grad is not None and bool(s.grad.abs().sum() > 0)
    assert t.grad is None


# --------------------------------------------------------------------------------------------
# PKD
# --------------------------------------------------------------------------------------------
def test_pkd_matches_a_hand_computed_value():
    # One channel, two values: s = (0, 1) and t = (1, 0) standardise to -+1/sqrt(2) and +-1/sqrt(2) (unbiased std),
    # so each squared difference is 2 and the loss is mean(2) / 2 = 1 (Pearson r = -1: (M-1)/M (1 - r) = 1).
    s = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)
    t = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    assert float(pkd_loss([s], [t])) == pytest.approx(1.0, abs=1e-5)


def test_pkd_equals_one_minus_pearson_per_channel_summed_over_levels():
    torch.manual_seed(0)
    shapes = [(2, 3, 4, 6), (2, 3, 2, 3)]
    s = [torch.randn(*sh) * 5 + 2 for sh in shapes]
    t = [torch.randn(*sh) * 0.1 - 1 + 0.5 * a for sh, a in zip(shapes, s, strict=True)]
    expected = 0.0
    for a, b in zip(s, t, strict=True):
        c, m = a.shape[1], a.numel() // a.shape[1]
        for k in range(c):
            r = torch.corrcoef(torch.stack([a[:, k].reshape(-1), b[:, k].reshape(-1)]))[0, 1]
            expected += (m - 1) / m * float(1 - r) / c
    assert float(pkd_loss(s, t)) == pytest.approx(expected, rel=1e-4)
    # Magnitude does not matter: a scaled and shifted student gives the same loss.
    assert float(pkd_loss([3 * a + 7 for a in s], t)) == pytest.approx(expected, rel=1e-4)
    assert float(pkd_loss(t, t)) == pytest.approx(0.0, abs=1e-9)


def test_pkd_resizes_the_student_and_adapts_channels():
    torch.manual_seed(0)
    t = torch.randn(2, 4, 4, 6)
    s_small = torch.randn(2, 4, 2, 3, requires_grad=True)
    loss = pkd_loss([s_small], [t])
    assert torch.isfinite(loss)
    loss.backward()
    assert s_small.grad is not None
    module = PKDLoss([3, 4], [5, 4])
    assert isinstance(module.adapters[0], torch.nn.Conv2d) and isinstance(module.adapters[1], torch.nn.Identity)
    t_feats = [torch.randn(2, 5, 4, 6, requires_grad=True), torch.randn(2, 4, 2, 3, requires_grad=True)]
    out = module([torch.randn(2, 3, 4, 6), torch.randn(2, 4, 2, 3)], t_feats)
    out.backward()
    assert module.adapters[0].weight.grad is not None
    assert all(f.grad is None for f in t_feats)


# --------------------------------------------------------------------------------------------
# DetDistillTask: every --kd choice on the demo instances
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_batch():
    ds = build_detection_dataset("demo", "train", DetTrainTransform(resize=(64, 96), seed=0), demo_count=2)
    return collate_detection([ds[0], ds[1]])


EXPECTED_TERMS = {
    "none": set(),
    "kd": {"kd"},
    "pkd": {"pkd"},
    "bckd": {"boundary", "context"},
    "kd+bckd": {"kd", "boundary", "context"},
    "pkd+bckd": {"pkd", "boundary", "context"},
}


@pytest.mark.parametrize("kd", DET_KD_CHOICES)
def test_each_kd_choice_runs_one_step(kd, demo_batch):
    images, targets = demo_batch
    torch.manual_seed(0)
    student, teacher = build_detector("fcos-tiny-s", NUM_CLASSES), build_detector("fcos-tiny-t", NUM_CLASSES)
    task = DetDistillTask(student, teacher, cfg=DistillConfig(kd="none"), example_input=images[:1], kd=kd).train()
    out = task(images, targets, StepInfo(iteration=0, max_iters=10, batch_size=2, dataset_size=2))
    losses = {k.split("/", 1)[1] for k in out if k.startswith("loss/")}
    assert losses == {"cls", "box", "ctr"} | EXPECTED_TERMS[kd]
    assert all(bool(torch.isfinite(out[k])) for k in out if k.startswith("loss"))
    weighted = out["loss/cls"] + out["loss/box"] + out["loss/ctr"]
    weighted = weighted + out.get("loss/kd", 0.0) + PKD_WEIGHT * out.get("loss/pkd", 0.0)
    if "bckd" in kd:
        alpha, beta = task.bckd.term_weights.tolist()
        weighted = weighted + alpha * out["loss/boundary"] + beta * out["loss/context"]
    assert float(out["loss"].detach()) == pytest.approx(float(weighted), rel=1e-5)
    if kd != "none":
        assert float(out["loss/" + sorted(EXPECTED_TERMS[kd])[-1]]) > 0
    params = task.trainable_parameters()
    opt = torch.optim.SGD(params, lr=0.01)
    opt.zero_grad()
    out["loss"].backward()
    assert student.backbone.stages[0][0].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert not task.teacher.model.training
    opt.step()
    expected_modules = {"student"} | ({"bckd"} if "bckd" in kd else set()) | ({"pkd"} if "pkd" in kd else set())
    assert set(task.trainable_modules()) == expected_modules
    if "pkd" in kd:  # the 16-channel student FPN is adapted to the teacher's 32 channels, and trains
        assert task.pkd.adapters[0].weight.grad is not None
        assert all(any(p is q for q in params) for p in task.pkd.parameters())


def test_kd_terms_vanish_when_the_student_is_the_teacher(demo_batch):
    images, targets = demo_batch
    torch.manual_seed(0)
    teacher = build_detector("fcos-tiny-t", NUM_CLASSES)
    student = build_detector("fcos-tiny-t", NUM_CLASSES)
    student.load_state_dict(teacher.state_dict())
    task = DetDistillTask(student, teacher, cfg=DistillConfig(kd="none"), example_input=images[:1], kd="pkd")
    task.train()
    student.eval()  # the teacher runs in eval mode: the same BatchNorm statistics make the maps equal
    out = task(images, targets)
    assert float(out["loss/pkd"]) == pytest.approx(0.0, abs=1e-6)
    task_kd = DetDistillTask(student, teacher, cfg=DistillConfig(kd="none"), example_input=images[:1], kd="kd")
    assert float(task_kd(images, targets)["loss/kd"]) == pytest.approx(0.0, abs=1e-7)


def test_kd_defaults_to_the_config_and_refuses_unknown_names():
    student, teacher = build_detector("fcos-tiny-s", 3), build_detector("fcos-tiny-t", 3)
    x = torch.rand(1, 3, 64, 96)
    assert DetDistillTask(student, teacher, cfg=DistillConfig(kd="kd+bckd"), example_input=x).kd == "kd+bckd"
    with pytest.raises(ConfigError, match="Allowed for detection: none, kd, pkd, bckd, kd\\+bckd, pkd\\+bckd"):
        DetDistillTask(student, teacher, cfg=DistillConfig(kd="cwd+bckd"), example_input=x)
    with pytest.raises(ConfigError, match="'fgd'"):
        DetDistillTask(student, teacher, cfg=DistillConfig(kd="none"), example_input=x, kd="fgd")


def test_the_distill_stage_passes_kd_weight_and_refuses_segmentation_settings():
    from bckd_pipeline.distill.stage import _det_distill_task

    student, teacher = build_detector("fcos-tiny-s", 3), build_detector("fcos-tiny-t", 3)
    x = torch.rand(1, 3, 64, 96)
    assert _det_distill_task(student, teacher, DistillConfig(kd="kd", kd_weight=2.5), x).kd_weight == 2.5
    for field, value, flag in (
        ("kd_temperature", 4.0, "--kd-temperature 4"),
        ("cwd_temperature", 2.0, "--cwd-temperature 2"),
        ("cwd_weight", 10.0, "--cwd-weight 10"),
    ):
        with pytest.raises(ConfigError, match=f"{flag}: these are segmentation's settings"):
            _det_distill_task(student, teacher, DistillConfig(kd="kd", **{field: value}), x)
