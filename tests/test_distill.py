"""The distillation task, the training loop and checkpoints, on TinySegNet presets and tiny inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from bckd_pipeline.data import TrainTransform, build_dataset
from bckd_pipeline.configs import KD_CHOICES, BCKDConfig, CheckpointMeta, DistillConfig, TrainConfig
from bckd_pipeline.distill.checkpoint import (
    atomic_write,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from bckd_pipeline.distill.models import FeatureTaps, build_model, default_taps
from bckd_pipeline.distill.task import SegDistillTask, SegTrainTask, StepInfo
from bckd_pipeline.distill.trainer import train
from bckd_pipeline.errors import CheckpointError, ConfigError, FeatureTapError, NonFiniteLossError
from bckd_pipeline.metrics import count_params

CLASSES = 3
HW = (32, 32)
SMALL_BCKD = BCKDConfig(grid_stride=4, radius=3, fusion_dim=8, chunk=64)


def make_task(kd: str = "bckd", *, seed: int = 0, student_taps=None, teacher_taps=None) -> SegDistillTask:
    torch.manual_seed(seed)
    student = build_model("tiny-student", CLASSES)
    teacher = build_model("tiny-teacher", CLASSES)
    return SegDistillTask(
        student,
        teacher,
        cfg=DistillConfig(kd=kd, bckd=SMALL_BCKD),
        student_taps=student_taps or default_taps("tiny-student"),
        teacher_taps=teacher_taps or default_taps("tiny-teacher"),
        example_input=torch.randn(2, 3, *HW),
    )


def batch(seed: int = 0, n: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *HW, generator=g), torch.randint(0, CLASSES, (n, *HW), generator=g)


def meta(model: str = "tiny-student", classes: int = CLASSES) -> CheckpointMeta:
    names = tuple(f"c{i}" for i in range(classes))
    return CheckpointMeta(model=model, num_classes=classes, class_names=names)


# ---------------------------------------------------------------------------------------------
# SegDistillTask

EXPECTED_TERMS = {
    "none": set(),
    "kd": {"loss/kd"},
    "cwd": {"loss/cwd"},
    "bckd": {"loss/boundary", "loss/context"},
    "kd+bckd": {"loss/kd", "loss/boundary", "loss/context"},
    "cwd+bckd": {"loss/cwd", "loss/boundary", "loss/context"},
}


def test_expected_terms_cover_every_choice():
    assert set(EXPECTED_TERMS) == set(KD_CHOICES)


@pytest.mark.parametrize("kd", KD_CHOICES)
def test_task_loss_dict_and_gradient_flow(kd):
    task = make_task(kd)
    task.train()
    images, masks = batch()
    out = task(images, masks, StepInfo(0, 10, 2, 8))
    assert {k for k in out if k.startswith("loss/")} == {"loss/ce"} | EXPECTED_TERMS[kd]
    assert out["logits"].shape == (2, CLASSES, *HW)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert all(torch.isfinite(out[k]) for k in out if k.startswith("loss/"))
    if "bckd" in kd:
        assert float(out["bckd/gamma"]) == 1.0  # iteration 0: gamma(1) = 1
    out["loss"].backward()

    assert all(p.grad is not None for p in task.student.parameters())
    if task.bckd is not None:
        trainable = [p for p in task.bckd.parameters() if p.requires_grad]
        assert trainable and all(p.grad is not None for p in trainable)
    assert all(not p.requires_grad and p.grad is None for p in task.teacher.parameters())
    teacher_ids = {id(p) for p in task.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in task.trainable_parameters()}


def test_total_is_weighted_sum_with_decay():
    task = make_task("kd+bckd")
    images, masks = batch()
    torch.manual_seed(1)
    out = task(images, masks, StepInfo(iteration=5, max_iters=10, batch_size=2, dataset_size=4))
    b = SMALL_BCKD
    gamma = 1 - (3 - 1) / 5  # epoch 3 of 5
    assert float(out["bckd/gamma"]) == pytest.approx(gamma)
    weighted = b.alpha * out["loss/boundary"] + b.beta * out["loss/context"]
    expected = out["loss/ce"] + out["loss/kd"] + gamma * weighted
    torch.testing.assert_close(out["loss"].detach(), expected, rtol=1e-5, atol=1e-6)


def test_teacher_is_frozen_during_training_steps():
    task = make_task("cwd+bckd")
    teacher_state = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    student_state = {k: v.clone() for k, v in task.student.state_dict().items()}
    opt = torch.optim.SGD(task.trainable_parameters(), lr=0.1)
    task.train()
    assert task.student.training and task.bckd.training
    assert not any(m.training for m in task.teacher.modules())
    for i in range(2):
        images, masks = batch(seed=i)
        out = task(images, masks, StepInfo(i, 2, 2, 4))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert not any(m.training for m in task.teacher.modules())
    after = task.teacher.state_dict()
    assert all(torch.equal(teacher_state[k], after[k]) for k in teacher_state)  # BN running stats included
    assert any("running_mean" in k for k in teacher_state)
    moved = [k for k, v in task.student.state_dict().items() if not torch.equal(student_state[k], v)]
    assert any("running_mean" in k for k in moved) and any("weight" in k for k in moved)


def test_bckd_needs_taps_and_example_input():
    student, teacher = build_model("tiny-student", CLASSES), build_model("tiny-teacher", CLASSES)
    with pytest.raises(ConfigError, match="feature taps"):
        SegDistillTask(student, teacher, cfg=DistillConfig(kd="bckd", bckd=SMALL_BCKD))
    SegDistillTask(student, teacher, cfg=DistillConfig(kd="kd"))  # logit KD needs neither


def test_unknown_kd_lists_choices():
    msg = r"Unknown --kd method 'bkcd'.*Allowed: .*cwd\+bckd.*Did you mean 'bckd'"
    with pytest.raises(ConfigError, match=msg):
        DistillConfig(kd="bkcd")


def test_saved_student_has_exactly_its_own_parameters(tmp_path):
    task = make_task("bckd")
    images, masks = batch()
    task(images, masks)["loss"].backward()
    path = tmp_path / "student.pt"
    save_checkpoint(path, task.student, meta())
    _, state = read_checkpoint(path)
    plain = build_model("tiny-student", CLASSES)
    assert set(state) == set(plain.state_dict())
    assert not any(k.startswith(("bckd", "teacher", "student_fusion", "psi")) for k in state)
    assert count_params(task.student) == count_params(plain)
    model, m = load_model(path, expect_classes=CLASSES, expect_model="tiny-student")
    assert m == meta()
    task.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), task.student(images))


# ---------------------------------------------------------------------------------------------
# Feature taps


def test_missing_feature_tap_lists_modules():
    with pytest.raises(FeatureTapError) as info:
        FeatureTaps(build_model("tiny-student", CLASSES), ["stages.7"])
    msg = str(info.value)
    assert "'stages.7' is not a module of TinySegNet" in msg
    assert "Did you mean 'stages." in msg
    assert "Available modules: stages, stages.0" in msg and "head" in msg


def test_missing_tap_on_either_model_fails_at_construction():
    with pytest.raises(FeatureTapError, match="Did you mean 'stages.1'"):
        make_task("bckd", student_taps=["stage.1"])
    with pytest.raises(FeatureTapError, match="not a module of TinySegNet"):
        make_task("bckd", teacher_taps=["stages.0", "backbone"])
    with pytest.raises(FeatureTapError, match="No feature taps"):
        FeatureTaps(build_model("tiny-student", CLASSES), [])


def test_tap_on_unused_module_fails():
    model = build_model("tiny-student", CLASSES)
    model.unused = nn.Conv2d(3, 3, 1)
    taps = FeatureTaps(model, ["stages.0", "unused"])
    model(torch.randn(1, 3, *HW))
    with pytest.raises(FeatureTapError, match="'unused' did not run"):
        taps.collect(HW)


# ---------------------------------------------------------------------------------------------
# The training loop


@pytest.fixture(scope="module")
def demo_train_set():
    return build_dataset("demo", "train", TrainTransform(resize=None, crop=HW), demo_size=HW, demo_count=8)


def _train_once(train_set, seed: int):
    task = make_task("kd+bckd", seed=0)  # same initial weights; the train seed drives data order/augmentation
    cfg = TrainConfig(iters=3, batch_size=4, num_workers=0, seed=seed, lr=0.05, eval_every=0)
    # The demo set has 7 classes; the tiny models are built for 3, so map labels into range.
    result = train(
        _ModLabels(task),
        train_set,
        cfg,
        evaluate=lambda: 0.0,
        save_best=lambda it, s: None,
        progress=False,
        log_every=1,
    )
    return result, {k: v.clone() for k, v in task.student.state_dict().items()}


class _ModLabels(nn.Module):
    """Wraps a task so labels of a 7-class set fit a 3-class model (ignore stays ignore)."""

    def __init__(self, task: nn.Module):
        super().__init__()
        self.task = task

    def trainable_parameters(self):
        return self.task.trainable_parameters()

    def forward(self, images, masks, step=None):
        return self.task(images, torch.where(masks == 255, masks, masks % CLASSES), step)


def test_training_is_repeatable(demo_train_set):
    a, wa = _train_once(demo_train_set, seed=3)
    b, wb = _train_once(demo_train_set, seed=3)
    losses = [h["loss"] for h in a.history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert a.history == b.history
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c, _ = _train_once(demo_train_set, seed=4)  # another seed: another data order and augmentation
    assert [h["loss"] for h in c.history if "loss" in h] != losses


class NaNAfter(nn.Module):
    """A plain training task whose loss becomes NaN from iteration ``k`` (0-based) on."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.inner = SegTrainTask(model)
        self.k = k

    def trainable_parameters(self):
        return self.inner.trainable_parameters()

    def forward(self, images, masks, step):
        out = self.inner(images, masks, step)
        if step.iteration >= self.k:
            out["loss"] = out["loss"] * float("nan")
        return out


class InfGradAt(NaNAfter):
    """A finite loss whose gradient is infinite at iteration ``k``: d sqrt(x)/dx at x = 0."""

    def forward(self, images, masks, step):
        out = self.inner(images, masks, step)
        if step.iteration == self.k:
            w = self.inner.model.head.weight
            out["loss"] = out["loss"] + torch.sqrt((w - w.detach()).sum())
        return out


class _Saver:
    def __init__(self, model: nn.Module, path: Path):
        self.model, self.path, self.calls = model, path, []

    def __call__(self, it: int, score: float) -> None:
        save_checkpoint(self.path, self.model, meta(classes=7))
        self.calls.append(it)
        self.bytes, self.mtime = self.path.read_bytes(), self.path.stat().st_mtime_ns


def _rising_score():
    scores = iter(range(1, 100))
    return lambda: float(next(scores))


@pytest.fixture()
def small_set():
    return build_dataset("demo", "train", TrainTransform(resize=None, crop=HW), demo_size=HW, demo_count=4)


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path, small_set):
    torch.manual_seed(0)
    model = build_model("tiny-student", 7)
    saver = _Saver(model, tmp_path / "student.pt")
    cfg = TrainConfig(iters=8, batch_size=2, num_workers=0, eval_every=1)
    with pytest.raises(NonFiniteLossError) as info:
        train(NaNAfter(model, k=3), small_set, cfg, evaluate=_rising_score(), save_best=saver, progress=False)
    msg = str(info.value)
    assert "The loss became nan at iteration 4" in msg
    assert "last good checkpoint (iteration 3, score 3.00) is kept" in msg
    assert saver.calls == [1, 2, 3]
    assert saver.path.read_bytes() == saver.bytes
    assert saver.path.stat().st_mtime_ns == saver.mtime
    assert sorted(os.listdir(tmp_path)) == ["student.pt"]  # no temp files
    load_model(saver.path, expect_classes=7)  # and it still loads
    assert NonFiniteLossError.exit_code == 1


def test_nonfinite_loss_before_any_checkpoint_says_so(tmp_path, small_set):
    model = build_model("tiny-student", 7)
    saver = _Saver(model, tmp_path / "student.pt")
    cfg = TrainConfig(iters=4, batch_size=2, num_workers=0)
    with pytest.raises(NonFiniteLossError, match="no checkpoint had been saved yet"):
        train(NaNAfter(model, k=0), small_set, cfg, evaluate=_rising_score(), save_best=saver, progress=False)
    assert saver.calls == [] and os.listdir(tmp_path) == []


def test_nonfinite_weights_are_never_evaluated_or_saved(tmp_path, small_set):
    torch.manual_seed(0)
    model = build_model("tiny-student", 7)
    saver = _Saver(model, tmp_path / "student.pt")
    cfg = TrainConfig(iters=4, batch_size=2, num_workers=0, eval_every=2)
    with pytest.raises(NonFiniteLossError, match=r"weights became non-finite at iteration 4.*iteration 2"):
        train(InfGradAt(model, k=3), small_set, cfg, evaluate=_rising_score(), save_best=saver, progress=False)
    assert saver.calls == [2]
    assert saver.path.read_bytes() == saver.bytes
    _, state = read_checkpoint(saver.path)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_too_few_images_for_a_batch(small_set):
    cfg = TrainConfig(iters=1, batch_size=8, num_workers=0)
    task = SegTrainTask(build_model("tiny-student", 7))
    with pytest.raises(ConfigError, match="fewer than one batch of 8"):
        train(task, small_set, cfg, evaluate=lambda: 0.0, save_best=lambda i, s: None, progress=False)


@pytest.mark.parametrize("bad", [{"iters": 0}, {"batch_size": 0}, {"lr": 0.0}])
def test_train_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


# ---------------------------------------------------------------------------------------------
# Checkpoint errors


@pytest.fixture()
def student_ckpt(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "student.pt"
    save_checkpoint(path, build_model("tiny-student", CLASSES), meta())
    return path


def test_checkpoint_round_trip(student_ckpt):
    m, state = read_checkpoint(student_ckpt)
    assert m.class_names == ("c0", "c1", "c2") and m.mean == (0.485, 0.456, 0.406)
    model, _ = load_model(student_ckpt)
    assert not model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"'.*nope\.pt' does not exist.*OUT/teacher\.pt"):
        load_model(tmp_path / "nope.pt")


def test_truncated_and_corrupt_checkpoints(student_ckpt, tmp_path):
    data = student_ckpt.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 10)
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match=r"Could not read checkpoint .* truncated, corrupt"):
            load_model(path)


def test_foreign_torch_files(tmp_path):
    plain_state = tmp_path / "state_dict.pt"
    torch.save(build_model("tiny-student", CLASSES).state_dict(), plain_state)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else", "weights": torch.zeros(2)}, other)
    for path in (plain_state, other):
        with pytest.raises(CheckpointError, match="is not a bckd-pipeline checkpoint"):
            read_checkpoint(path)


def test_checkpoint_for_another_class_count(student_ckpt):
    with pytest.raises(CheckpointError, match=r"predicts 3 classes .* but the dataset has 7"):
        load_model(student_ckpt, expect_classes=7)


def test_checkpoint_for_another_model(student_ckpt):
    msg = r"holds a 'tiny-student' model, but 'tiny-teacher' was requested"
    with pytest.raises(CheckpointError, match=msg):
        load_model(student_ckpt, expect_model="tiny-teacher")


def test_checkpoint_for_another_architecture(tmp_path):
    path = tmp_path / "mislabelled.pt"
    save_checkpoint(path, build_model("tiny-teacher", CLASSES), meta("tiny-student"))
    with pytest.raises(CheckpointError, match=r"does not fit a 'tiny-student' with 3 classes: .*mis-shaped"):
        load_model(path)
    unknown = tmp_path / "unknown.pt"
    save_checkpoint(unknown, build_model("tiny-student", CLASSES), meta("resnet-9000"))
    with pytest.raises(CheckpointError, match="'resnet-9000', which is not a preset"):
        load_model(unknown)


def test_atomic_write_leaves_no_temp_file(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    assert os.listdir(tmp_path) == ["file.bin"]
    assert target.read_bytes() == b"old"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"new"))
    assert os.listdir(tmp_path) == ["file.bin"] and target.read_bytes() == b"new"
