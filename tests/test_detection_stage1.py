"""Stage 1 for detectors: train-teacher, distill and eval with --task detection, the presets of each task, and the
detection data options reaching the loader. Tiny FCOS presets on a few 64x64 demo images, a couple of iterations.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cli import assert_clean_error, run_cli

from bckd_pipeline.cli.parser import TASK_NAMES as PARSER_TASK_NAMES
from bckd_pipeline.configs import TASK_NAMES, BCKDConfig, DataConfig, DistillConfig, Schedule, TrainConfig
from bckd_pipeline.distill import stage
from bckd_pipeline.distill.cached import summarize
from bckd_pipeline.distill.checkpoint import read_checkpoint
from bckd_pipeline.errors import ConfigError
from bckd_pipeline.presets import DETECTION_PRESETS, get_preset
from bckd_pipeline.tasks import TASKS

DATA = DataConfig(task="detection", resize=(64, 64), demo_size=(64, 64), demo_count=4)
TRAIN = TrainConfig(batch_size=2, num_workers=0, device="cpu", checkpoint_every=0)
AP_FIELDS = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "per_class_ap")
SMOKE_DET = ["--task", "detection", "--preset", "smoke", "--no-progress", "--train-device", "cpu"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("det-teacher")
    step = stage.train_teacher("fcos-tiny-t", DATA, Schedule(iters=2), TRAIN, out, progress=False)
    return step.checkpoint


def test_teacher_writes_detector_checkpoint_and_ap_metrics(teacher):
    meta, _ = read_checkpoint(teacher)
    assert (meta.task, meta.model, meta.ignore_index, meta.role) == ("detection", "fcos-tiny-t", -1, "teacher")
    assert meta.class_names == ("vehicle", "pole")
    m = json.loads((teacher.parent / "metrics.json").read_text())
    assert all(k in m for k in AP_FIELDS) and m["task"] == "detection" and "miou" not in m
    assert m["num_images"] == 4 and len(m["per_class_ap"]) == 2
    assert m["train"]["best_val_map"] == m["train"]["history"][-1]["val_map"]
    assert m["map"] is None or 0 <= m["map"] <= 100


@pytest.mark.parametrize("kd", ["bckd", "none", "pkd+bckd"])
def test_distill_round_trip(teacher, tmp_path, kd):
    dcfg = DistillConfig(kd=kd, bckd=BCKDConfig(radius=3))  # a 64x64 input gives an 8x8 grid at stride 8
    step = stage.distill(teacher, "fcos-tiny-s", DATA, Schedule(iters=2), TRAIN, dcfg, tmp_path, progress=False,
                         mfs_images=2)  # fmt: skip
    meta, _ = read_checkpoint(step.checkpoint)
    assert (meta.task, meta.model, meta.extra["kd"]) == ("detection", "fcos-tiny-s", kd)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert all(k in m for k in AP_FIELDS) and m["teacher_model"] == "fcos-tiny-t" and m["kd"] == kd
    history = m["train"]["history"]
    assert ("loss/boundary" in history[0]) == ("bckd" in kd)
    assert ("loss/pkd" in history[0]) == ("pkd" in kd)
    # eval reads the checkpoint back and scores it with the same AP
    rc = stage.evaluate_checkpoint(step.checkpoint, DATA, tmp_path / "eval", batch_size=2).metrics
    assert rc["map"] == m["map"]


def test_distill_refuses_what_detectors_do_not_take(teacher, tmp_path):
    with pytest.raises(ConfigError, match="--kd cwd is not a --task detection method"):
        stage.distill(teacher, "fcos-tiny-s", DATA, Schedule(iters=1), TRAIN, DistillConfig(kd="cwd"), tmp_path)
    with pytest.raises(ConfigError, match="--student-taps"):
        stage.distill(teacher, "fcos-tiny-s", DATA, Schedule(iters=1), TRAIN, DistillConfig(kd="bckd"), tmp_path,
                      student_taps=["x"])  # fmt: skip
    with pytest.raises(ConfigError, match="segmentation preset"):
        stage.distill(teacher, "tiny-student", DATA, Schedule(iters=1), TRAIN, DistillConfig(kd="bckd"), tmp_path)


def test_resume_fingerprint_holds_the_detection_data(teacher, tmp_path):
    stage.train_teacher("fcos-tiny-t", DATA, Schedule(iters=1), TRAIN, tmp_path, progress=False)
    assert (tmp_path / stage.STATE_FILE).is_file()
    other = DataConfig(**{**DATA.__dict__, "skip_bad_annotations": True})
    with pytest.raises(ConfigError, match="skip_bad_annotations"):
        stage.train_teacher("fcos-tiny-t", other, Schedule(iters=1), TRAIN, tmp_path, progress=False, resume=True)


def test_eval_refuses_a_checkpoint_of_the_other_task(teacher, tmp_path):
    seg = DataConfig(demo_size=(64, 64), demo_count=4)
    with pytest.raises(ConfigError, match="holds a detection model .* Pass --task detection"):
        stage.evaluate_checkpoint(teacher, seg, tmp_path)


def test_skip_bad_annotations_reaches_the_loader(monkeypatch):
    import bckd_pipeline.data as data

    seen = []
    real = data.build_detection_dataset

    def spy(spec, split, transform=None, **kwargs):
        seen.append((split, kwargs["skip_bad_annotations"]))
        return real(spec, split, transform, **kwargs)

    monkeypatch.setattr(data, "build_detection_dataset", spy)
    flagged = DataConfig(**{**DATA.__dict__, "skip_bad_annotations": True})
    flagged.train_set(), flagged.eval_set(), DATA.train_set()
    assert seen == [("train", True), ("val", True), ("train", False)]


def test_skip_bad_annotations_flag_reaches_the_data_config():
    from bckd_pipeline.cli.parser import build_parser
    from bckd_pipeline.cli.train import data_config

    for flags, expected in (([], False), (["--skip-bad-annotations"], True)):
        args = build_parser().parse_args(["train-teacher", "--task", "detection", *flags])
        data = data_config(args, get_preset(args.preset, args.task))
        assert (data.task, data.skip_bad_annotations, data.crop) == ("detection", expected, None)


def test_data_config_refuses_a_crop_and_an_unknown_task():
    with pytest.raises(ConfigError, match="Drop --crop"):
        DataConfig(task="detection", crop=(64, 64))
    with pytest.raises(ConfigError, match="Unknown --task 'detect'"):
        DataConfig(task="detect")


def test_task_names_agree():
    assert PARSER_TASK_NAMES == TASK_NAMES and set(TASK_NAMES) == set(TASKS)


def test_detection_presets_pair_a_larger_teacher():
    from bckd_pipeline.distill.detection import DETECTOR_PRESETS

    assert get_preset("demo", "detection") is DETECTION_PRESETS["demo"]
    for p in DETECTION_PRESETS.values():
        assert p.crop is None and all(v % 32 == 0 for v in p.resize)
        assert p.teacher in DETECTOR_PRESETS and p.student in DETECTOR_PRESETS
    assert DETECTION_PRESETS["demo"].student == "fcos-lite0"
    assert DETECTOR_PRESETS[DETECTION_PRESETS["demo"].teacher].role == "teacher"


def test_summarize_detection_and_segmentation_keys():
    t, s = {"map": 30.0}, {"map": 20.0, "model": "fcos-tiny-s"}
    d = {"map": 25.0, "ap50": 40.0, "kd": "bckd", "teacher_model": "fcos-tiny-t", "model": "fcos-tiny-s"}
    out = summarize(t, s, d, Path("t.pt"), Path("s.pt"), task="detection")
    assert out["map"] == 25.0 and out["teacher"]["map"] == 30.0 and out["student"]["map"] == 20.0
    assert out["gap_closed_percent"] == pytest.approx(50.0) and out["distilled"]["ap50"] == 40.0
    seg = {"miou": 25.0, "kd": "kd", "teacher_model": "a", "model": "b", "boundary_f": {"f_score": 1}, "lhd": {}}
    keys = set(summarize({"miou": 30.0}, {"miou": 20.0, "model": "b"}, seg, Path("t"), Path("s")))
    assert keys == {"miou", "kd", "teacher", "student", "distilled", "gap_closed_percent", "train_precision"}


@pytest.mark.parametrize("who", ["teacher", "alone", "distilled"])
def test_summarize_leaves_the_gap_unknown_when_an_ap_is_none(who):
    """AP is None on a split without non-crowd ground truth: the share of the gap closed is unknown."""
    maps = {"teacher": 30.0, "alone": 20.0, "distilled": 25.0, who: None}
    d = {"map": maps["distilled"], "kd": "bckd", "teacher_model": "fcos-tiny-t", "model": "fcos-tiny-s"}
    out = summarize({"map": maps["teacher"]}, {"map": maps["alone"], "model": "fcos-tiny-s"}, d, Path("t.pt"),
                    Path("s.pt"), task="detection")  # fmt: skip
    assert out["gap_closed_percent"] is None and out["map"] == maps["distilled"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--teacher-arch", "tiny-teacher", "--dry-run"], "--teacher-arch tiny-teacher is a segmentation"),
        (["run", "--student-arch", "deeplabv3plus-lite0", "--dry-run"], "--student-arch deeplabv3plus-lite0 is a seg"),
        (["run", "--kd", "cwd+bckd", "--dry-run"], "--kd cwd+bckd is not a --task detection method"),
        (["train-teacher", "--arch", "pspnet-r50"], "--arch pspnet-r50 is a segmentation preset"),
        (["train-teacher", "--crop", "64,64"], "Drop --crop"),
        (["train-teacher", "--preset", "camvid"], "Unknown --preset for --task detection 'camvid'"),
    ],
)
def test_cli_refuses_presets_of_the_other_task(argv, message, capsys, tmp_path):
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, argv[0], *SMOKE_DET, *argv[1:], "--out", out)  # later flags win: the preset
    assert_clean_error(rc, err, out)
    assert message in err, err


def test_cli_refuses_a_detection_kd_method_for_segmentation(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "run", "--preset", "smoke", "--kd", "pkd", "--dry-run", "--out", tmp_path / "o")
    assert_clean_error(rc, err, tmp_path / "o")
    assert "--kd pkd is not a --task segmentation method" in err and "cwd+bckd" in err, err


def test_cli_refuses_a_detector_for_segmentation(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "run", "--preset", "smoke", "--student-arch", "fcos-tiny-s", "--dry-run", "--out",
                         tmp_path)  # fmt: skip
    assert_clean_error(rc, err, tmp_path)
    assert "--student-arch fcos-tiny-s is a detection preset" in err and "--task detection" in err


def test_run_dry_run_lists_detection_stage1(capsys, tmp_path):
    rc, out, _ = run_cli(capsys, "run", *SMOKE_DET, "--dry-run", "--out", tmp_path / "r")
    assert rc == 0
    assert "train fcos-tiny-t" in out and "train fcos-tiny-s alone" in out and "distill fcos-tiny-s with kd=bckd" in out
    rc, out, _ = run_cli(capsys, "run", "--task", "detection", "--dry-run", "--out", tmp_path / "q")
    assert rc == 0 and "train fcos-lite2" in out and "distill fcos-lite0 with kd=bckd" in out
