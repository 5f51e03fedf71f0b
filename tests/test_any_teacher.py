"""`distill` from any teacher into any student: a teacher given by factory and weights (a torchvision-style
module returning {"out": logits}), BCKD taps named by module, the `taps` listing, a TorchScript teacher (logit
KD only), and the pairs that must be refused with both shapes in one `error:` paragraph."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from helpers.cli import SMOKE, assert_clean_error, run_cli

from bckd_pipeline.data.demo import DEMO_CLASSES

# A torchvision-style segmentation model: named stages, a dict output with "out" (as torchvision's FCN and
# DeepLabV3 return), logits upsampled to the input size. ``build_wrong`` predicts 3 classes.
TV_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn
    import torch.nn.functional as F


    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


    class TvSeg(nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.stem = block(3, 8)
            self.layer1 = block(8, 8)
            self.layer2 = block(8, 16)
            self.layer3 = block(16, 16)
            self.decoder = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
            self.classifier = nn.Conv2d(16, classes, 1)

        def forward(self, x):
            h = self.decoder(self.layer3(self.layer2(self.layer1(self.stem(x)))))
            return {"out": F.interpolate(self.classifier(h), size=x.shape[-2:], mode="bilinear")}


    def build():
        return TvSeg(CLASSES)


    def build_wrong():
        return TvSeg(3)
    """
)


@pytest.fixture
def tv(tmp_path, monkeypatch):
    """The module importable as ``tvteacher``, and a state_dict of ``build()`` saved next to it."""
    (tmp_path / "tvteacher.py").write_text(TV_MODULE.replace("CLASSES", str(len(DEMO_CLASSES))))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tvteacher", None)
    import tvteacher

    torch.manual_seed(0)
    weights = tmp_path / "teacher.pth"
    torch.save(tvteacher.build().state_dict(), weights)
    wrong = tmp_path / "wrong.pth"
    torch.save(tvteacher.build_wrong().state_dict(), wrong)
    yield {"weights": weights, "wrong": wrong, "module": tvteacher, "dir": tmp_path}
    sys.modules.pop("tvteacher", None)


def test_taps_lists_every_4d_module_with_its_stride(tv, capsys):
    rc, out, err = run_cli(capsys, "taps", "--model-factory", "tvteacher:build", "--input-size", "64,64")
    assert rc == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert rows["layer2"] == ["1x16x8x8", "8"] and rows["layer3"] == ["1x16x4x4", "16"]
    assert rows["decoder"] == ["1x16x4x4", "16"] and rows["stem"] == ["1x8x32x32", "2"]
    assert "classifier" in rows and "" not in rows  # the model itself (a dict output) is no tap
    rc, out, err = run_cli(capsys, "taps", "--arch", "tiny-student", "--input-size", "64,64")
    assert rc == 0, err
    assert any(line.split()[:3] == ["stages.3", "1x32x4x4", "16"] for line in out.splitlines()), out


@pytest.mark.slow
def test_a_torchvision_style_teacher_by_factory_distils_a_preset_student_with_bckd(tv, tmp_path, capsys):
    out = tmp_path / "S"
    rc, _, err = run_cli(
        capsys, "distill", *SMOKE, "--teacher-factory", "tvteacher:build", "--teacher-weights", tv["weights"],
        "--teacher-taps", "layer2,layer3,decoder", "--kd", "kd+bckd", "--iters", "3", "--out", out,
    )  # fmt: skip
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher_model"] == "tvteacher:build" and metrics["teacher_kind"] == "factory"
    assert metrics["model"] == "tiny-student" and metrics["train"]["iterations"] == 3
    assert metrics["mfs"] is not None  # MFS paired the student's stages with the named teacher taps
    logged = next(h for h in metrics["train"]["history"] if "loss/ce" in h)
    assert all(k in logged for k in ("loss/kd", "loss/boundary", "loss/context")), logged


@pytest.mark.slow
def test_a_factory_student_and_a_torchscript_teacher_with_logit_kd(tv, tmp_path, capsys):
    scripted = tmp_path / "teacher.ts"
    model = tv["module"].build()
    model.load_state_dict(torch.load(tv["weights"], weights_only=True))
    torch.jit.save(torch.jit.script(model.eval()), str(scripted))
    out = tmp_path / "S"
    rc, _, err = run_cli(
        capsys, "distill", *SMOKE, "--teacher", scripted, "--student-factory", "tvteacher:build", "--kd", "kd",
        "--iters", "2", "--out", out,
    )  # fmt: skip
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher_kind"] == "torchscript" and metrics["model"] == "tvteacher:build"
    # the factory student's checkpoint fills the factory's module again: `deploy --model-factory --weights` takes it
    from bckd_pipeline.model_files import module_from_factory

    assert isinstance(module_from_factory("tvteacher:build", out / "student.pt"), tv["module"].TvSeg)
    # BCKD taps need forward hooks, which a TorchScript module does not run: refused with the reason
    rc, _, err = run_cli(
        capsys, "distill", *SMOKE, "--teacher", scripted, "--kd", "kd+bckd", "--iters", "1", "--out", tmp_path / "B"
    )
    assert_clean_error(rc, err, tmp_path / "B")
    assert "not supported on ScriptModules" in err and "--kd kd" in err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--teacher-factory", "tvteacher:build_wrong", "--teacher-weights", "WRONG", "--kd", "kd"],
            ["logits of shape (1, 3, 64, 64)", "(1, 7, 64, 64)", "3 classes against 7"],
        ),
        (
            ["--teacher-factory", "tvteacher:build", "--teacher-weights", "RIGHT", "--teacher-taps", "layer9"],
            ["'layer9' is not a module of TvSeg", "Did you mean"],
        ),
        (
            ["--teacher-factory", "tvteacher:build", "--teacher-weights", "RIGHT"],
            ["Name them with --teacher-taps", "bckd-pipeline taps --model-factory tvteacher:build"],
        ),
        (["--teacher-factory", "tvteacher:build"], ["--teacher-factory needs --teacher-weights"]),
        ([], ["distill takes one teacher; got none"]),
    ],
)
def test_teacher_refusals(tv, tmp_path, capsys, flags, expected):
    flags = [str(tv["wrong"]) if f == "WRONG" else str(tv["weights"]) if f == "RIGHT" else f for f in flags]
    out = tmp_path / "S"
    rc, _, err = run_cli(capsys, "distill", *SMOKE, *flags, "--iters", "1", "--out", out)
    assert_clean_error(rc, err, out)
    for text in expected:
        assert text in err, err


def test_an_exported_program_teacher_distils_from_logits_only(tv, tmp_path):
    from bckd_pipeline.distill.any_model import load_teacher
    from bckd_pipeline.errors import ConfigError

    pt2 = tmp_path / "teacher.pt2"
    torch.export.save(torch.export.export(tv["module"].build().eval(), (torch.zeros(1, 3, 64, 64),)), str(pt2))
    teacher = load_teacher(pt2, None, None, len(DEMO_CLASSES))
    assert teacher.kind == "pt2" and teacher.taps(None, bckd=False) is None
    with pytest.raises(ConfigError, match="cannot tap its features"):
        teacher.taps(["layer2"], bckd=True)


def test_a_detector_teacher_is_refused_by_its_task_not_its_class_count(tmp_path):
    from bckd_pipeline.configs import CheckpointMeta
    from bckd_pipeline.distill.any_model import load_teacher
    from bckd_pipeline.distill.checkpoint import save_checkpoint
    from bckd_pipeline.distill.detection import build_detector
    from bckd_pipeline.errors import CheckpointError

    names = ("car", "person")
    path = tmp_path / "teacher.pt"
    meta = CheckpointMeta(model="fcos-tiny-t", task="detection", ignore_index=-1, num_classes=2, class_names=names)
    save_checkpoint(path, build_detector("fcos-tiny-t", 2, class_names=list(names)), meta)
    with pytest.raises(CheckpointError, match="--teacher .* holds a detection model \\(fcos-tiny-t\\), and this is a "
                       "--task segmentation run"):  # fmt: skip
        load_teacher(path, None, None, len(DEMO_CLASSES))
