"""The command line, in process via ``cli.main([...])``: smoke runs end to end, help text, and bad input.

Every run uses ``--preset smoke`` (TinySegNet models, 64x64 demo images, no DataLoader workers)
so the whole file stays within seconds on two CPU cores.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import FOLDER_FLAGS, SMOKE, assert_clean_error, make_folder_dataset, run_cli

from bckd_pipeline.cli import main
from bckd_pipeline.data.demo import DEMO_CLASSES
from bckd_pipeline.configs import CheckpointMeta
from bckd_pipeline.distill.checkpoint import load_model, read_checkpoint, save_checkpoint
from bckd_pipeline.distill.detection import DETECTOR_PRESETS
from bckd_pipeline.distill.models import PRESETS, build_model


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A smoke teacher (tiny-teacher, 7 demo classes) trained once for this module."""
    out = tmp_path_factory.mktemp("teacher")
    assert main(["train-teacher", *SMOKE, "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------------------------------------
# models, --help


def test_models_lists_every_preset(capsys):
    rc, out, _ = run_cli(capsys, "models")
    assert rc == 0
    segmentation, _, detection = out.partition("# detectors (--task detection)\n")
    names = [line.split()[0] for line in segmentation.splitlines() if line.strip()]
    assert names == list(PRESETS)
    assert names[0] == "pspnet-r101" and "segformer-b0" in names and "deeplabv3plus-mbv2" in names
    assert [line.split()[0] for line in detection.splitlines() if line.strip()] == list(DETECTOR_PRESETS)


COMMON_FLAGS = {
    "--data": "default: the preset's",
    "--eval-split": "(default: val)",
    "--out": "(default: runs/latest)",
    "--preset": "(default: demo)",
    "--batch-size": "default: preset",
    "--resize": "(default: preset)",
}
TRAIN_FLAGS = {
    "--seed": "(default: 0)",
    "--epochs": "(default: preset)",
    "--iters": "(default: preset)",
    "--crop": "(default: preset)",
    "--lr": "(default: 0.01)",
}
DISTILL_FLAGS = {
    "--kd": "(default: kd+bckd)",
    "--no-boundary": "(default: False)",
    "--no-context": "(default: False)",
    "--no-decay": "(default: False)",
    "--alpha": "(default: 10.0)",
    "--beta": "(default: 50.0)",
}
DEPLOY_FLAGS = {
    "--target": "(default: onnxruntime-cpu)",
    "--head": "segmentation: logits (default) | argmax",
    "--opset": "(default: 17)",
    "--simplifier": "(default: onnxsim)",
    "--calib-size": "default: preset",
    "--calib-split": "(default: train)",
    "--calib-method": "(default: minmax)",
    "--latency-runs": "default: preset",
    "--dry-run": "(default: False)",
}
TASK_FLAGS = {"--task": "(default: segmentation)", "--skip-bad-annotations": "(default: False)"}
HELP_FLAGS = {
    "train-teacher": {**COMMON_FLAGS, **TRAIN_FLAGS, **TASK_FLAGS},
    "distill": {**COMMON_FLAGS, **TRAIN_FLAGS, **DISTILL_FLAGS, **TASK_FLAGS},
    "run": {**COMMON_FLAGS, **TRAIN_FLAGS, **DISTILL_FLAGS, **DEPLOY_FLAGS, **TASK_FLAGS},
    "deploy": {**COMMON_FLAGS, **DEPLOY_FLAGS, "--skip-bad-annotations": "(default: False)"},
    "eval": {**COMMON_FLAGS, **TASK_FLAGS},  # eval trains nothing: no --seed/--epochs/--iters/--crop
}


@pytest.mark.parametrize("command", list(HELP_FLAGS))
def test_help_shows_flags_with_defaults(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per flag, so each default sits beside its flag
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    lines, flag = {}, None  # flag -> its help entry (argparse wraps long ones onto the next line)
    for line in text.splitlines():
        m = re.match(r"\s+(--[\w-]+)", line)
        if m:
            flag = m.group(1)
            lines[flag] = line
        elif flag and line.startswith(" " * 10):
            lines[flag] += " " + line.strip()
        else:
            flag = None
    for flag, default in HELP_FLAGS[command].items():
        assert flag in lines, f"{flag} missing from `{command} --help`"
        assert default in lines[flag], lines[flag]
    if command in ("eval", "deploy"):
        assert not {"--seed", "--epochs", "--iters", "--crop"} & set(lines)
    assert "(default: None)" not in text


# ---------------------------------------------------------------------------------------------
# Smoke runs end to end


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.slow
def test_train_teacher_writes_checkpoint_and_metrics(teacher):
    m = _metrics(teacher)
    assert 0 <= m["miou"] <= 100 and m["role"] == "teacher" and m["model"] == "tiny-teacher"
    model, meta = load_model(teacher / "teacher.pt", expect_classes=len(DEMO_CLASSES))
    assert meta.model == "tiny-teacher" and meta.class_names == DEMO_CLASSES and meta.role == "teacher"
    assert sorted(p.name for p in teacher.iterdir()) == ["metrics.json", "teacher.pt", "train_state.pt"]


@pytest.mark.slow
def test_distill_then_eval(teacher, tmp_path, capsys):
    s_out, e_out = tmp_path / "S", tmp_path / "E"
    rc, _, err = run_cli(capsys, "distill", *SMOKE, "--teacher", teacher / "teacher.pt", "--kd", "bckd", "--out", s_out)
    assert rc == 0, err
    assert sorted(p.name for p in s_out.iterdir()) == ["metrics.json", "student.pt", "train_state.pt"]
    m = _metrics(s_out)
    assert m["kd"] == "bckd" and m["model"] == "tiny-student" and 0 <= m["miou"] <= 100
    assert m["distill_config"]["bckd"]["grid_stride"] == 4  # the smoke preset's --bckd overrides
    assert any("loss/boundary" in h and "loss/context" in h for h in m["train"]["history"])
    # The student checkpoint holds the student only: no fusion, heads or teacher.
    _, state = read_checkpoint(s_out / "student.pt")
    assert set(state) == set(build_model("tiny-student", len(DEMO_CLASSES)).state_dict())

    rc, _, err = run_cli(capsys, "eval", *SMOKE, "--model", s_out / "student.pt", "--out", e_out)
    assert rc == 0, err
    assert sorted(p.name for p in e_out.iterdir()) == ["metrics.json"]
    assert _metrics(e_out)["miou"] == pytest.approx(m["miou"], abs=1e-6)


@pytest.mark.slow
def test_run_whole_pipeline(tmp_path, capsys):
    out = tmp_path / "R"
    # Stage 1 is what this test checks; the FP32 target keeps stages 2-3 short (tests/test_run.py covers them).
    rc, _, err = run_cli(capsys, "run", *SMOKE, "--iters", "2", "--target", "onnxruntime-cpu-fp32", "--out", out)
    assert rc == 0, err
    m = _metrics(out)
    assert 0 <= m["miou"] <= 100 and m["kd"] == "kd+bckd"
    assert m["miou"] == m["distilled"]["miou"]
    for key in ("teacher", "student", "distilled"):
        assert m[key]["miou"] is not None
    assert m["teacher"]["model"] == "tiny-teacher" and m["distilled"]["model"] == "tiny-student"
    for ckpt in ("teacher/teacher.pt", "student/student.pt", "distilled/student.pt"):
        assert (out / ckpt).is_file()
    assert _metrics(out / "student")["kd"] == "none"
    # the last line is the command that runs the deployed model; Segmenter loads the run folder as it names
    assert f"run the deployed model: bckd-pipeline predict IMAGES --model {out} --out {out / 'predict'}" in err
    from bckd_pipeline import Segmenter

    with Segmenter.load(out) as seg:
        assert seg.info.provenance["target"] == "onnxruntime-cpu-fp32" and seg.info.precision == "fp32"
        assert seg.classes == DEMO_CLASSES and seg(np.zeros((40, 50, 3), np.uint8)).shape == (40, 50)


# ---------------------------------------------------------------------------------------------
# Bad input: exit code 2, one clean message, nothing written


FOLDER_TRAIN = ["train-teacher", *FOLDER_FLAGS, "--iters", "1"]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_mask_label_beyond_class_count(tmp_path, capsys, workers):
    data = make_folder_dataset(tmp_path / "data", train_label=9)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, *FOLDER_TRAIN, "--num-workers", workers, "--data", f"folder:{data}", "--out", out)
    assert_clean_error(rc, err, out)
    assert "holds label values [9]" in err and "allowed: 0..2" in err


def test_image_mask_size_mismatch(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", train_mask_size=(32, 30))
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, *FOLDER_TRAIN, "--num-workers", "0", "--data", f"folder:{data}", "--out", out)
    assert_clean_error(rc, err, out)
    assert "is 32x32 (H x W) but its mask" in err and "is 32x30" in err


def test_missing_split(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data")
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, *FOLDER_TRAIN, "--data", f"folder:{data}", "--eval-split", "nope", "--out", out)
    assert_clean_error(rc, err, out)
    assert "split 'nope' not found" in err and "Splits found there: train, val" in err


def test_missing_dataset_path(tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "train-teacher", *SMOKE, "--data", "camvid:/nonexistent", "--out", out)
    assert_clean_error(rc, err, out)
    assert "'/nonexistent'" in err and "does not exist" in err


@pytest.mark.slow
def test_teacher_for_another_class_count(teacher, tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", classes=3)
    out = tmp_path / "out"
    rc, _, err = run_cli(
        capsys,
        "distill",
        *FOLDER_FLAGS,
        "--teacher",
        teacher / "teacher.pt",
        "--data",
        f"folder:{data}",
        "--iters",
        "1",
        "--out",
        out,
    )
    assert_clean_error(rc, err, out)
    assert "predicts 7 classes" in err and "the dataset has 3" in err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--student-taps", "nope"], "Feature tap 'nope' is not a module of TinySegNet"),
        (["--student-taps", "stages.0,stage.3"], "Did you mean 'stages.3'?"),
        (["--teacher-taps", "stages.9"], "Available modules: stages, stages.0"),
        (
            ["--kd", "bkcd"],
            "Unknown --kd method 'bkcd'. Allowed: bckd, cwd, cwd+bckd, kd, kd+bckd, none, pkd, pkd+bckd.",
        ),
        (["--bckd", "radus=3"], "Unknown BCKD option 'radus'"),
        (["--bckd", "relation=l2"], "relation='l2' is not allowed. Allowed: cosine, dot"),
        (["--no-boundary", "--no-context"], "leave BCKD with no term"),
    ],
    ids=["tap", "tap-typo", "teacher-tap", "kd", "bckd-key", "bckd-value", "no-terms"],
)
def test_bad_distill_options(teacher, tmp_path, capsys, flags, expected):
    out = tmp_path / "out"
    rc, _, err = run_cli(
        capsys, "distill", *SMOKE, "--teacher", teacher / "teacher.pt", "--iters", "1", *flags, "--out", out
    )
    assert_clean_error(rc, err, out)
    assert expected in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["train-teacher", "--preset", "smok"],
            "Unknown --preset 'smok'. Allowed: camvid, demo, smoke. Did you mean 'smoke'?",
        ),
        (
            ["train-teacher", *SMOKE, "--arch", "tiny-teachr"],
            ("Unknown model 'tiny-teachr'. Allowed: ", "pspnet-r101", "Did you mean 'tiny-teacher'?"),
        ),
        (
            ["train-teacher", *SMOKE, "--arch", "deeplabv3plus-mbv2", "--crop", "60,60"],
            "Model 'deeplabv3plus-mbv2' cannot take a 60x60 input",
        ),
        (["eval", *SMOKE, "--model", "/nonexistent/student.pt"], "'/nonexistent/student.pt' does not exist"),
        (
            ["distill", *SMOKE, "--teacher", "/nonexistent/teacher.pt"],
            "'/nonexistent/teacher.pt' does not exist",
        ),
        (["run", *SMOKE, "--teacher", "/nonexistent/teacher.pt"], "'/nonexistent/teacher.pt' does not exist"),
    ],
    ids=["preset", "model", "input-size", "eval-checkpoint", "teacher-checkpoint", "run-teacher-checkpoint"],
)
def test_bad_names_and_sizes(tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, *argv, "--out", out)
    assert_clean_error(rc, err, out)
    for part in (expected,) if isinstance(expected, str) else expected:
        assert part in err


def test_teacher_that_cannot_take_the_crop(tmp_path, capsys):
    """The teacher is checked like the student, before any training (an smp model needs multiples of 16)."""
    ckpt = tmp_path / "mbv2.pt"
    n = len(DEMO_CLASSES)
    meta = CheckpointMeta("deeplabv3plus-mbv2", n, DEMO_CLASSES)
    save_checkpoint(ckpt, build_model("deeplabv3plus-mbv2", n), meta)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "distill", *SMOKE, "--teacher", ckpt, "--crop", "60,60", "--iters", "1", "--out", out)
    assert_clean_error(rc, err, out)
    assert "Model 'deeplabv3plus-mbv2' cannot take a 60x60 input" in err


# ---------------------------------------------------------------------------------------------
# Divergence


@pytest.mark.slow
def test_nonfinite_loss_exits_1_and_keeps_last_good_checkpoint(teacher, tmp_path, capsys, recwarn):
    out = tmp_path / "out"
    rc, _, err = run_cli(
        capsys,
        "distill",
        *SMOKE,
        "--teacher",
        teacher / "teacher.pt",
        "--lr",
        "1e6",
        "--eval-every",
        "1",
        "--iters",
        "10",
        "--mfs-images",
        "0",
        "--out",
        out,
    )
    assert rc == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "non-finite" in err or "The loss became" in err
    assert re.search(r"the last good checkpoint \(iteration \d+, score [\d.]+\) is kept", err), err
    assert "Lower --lr" in err
    assert sorted(p.name for p in out.iterdir()) == ["student.pt", "train_state.pt"]  # no metrics.json, no temp file
    _, state = read_checkpoint(out / "student.pt")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert not [w for w in recwarn if "requires_grad" in str(w.message)]
