"""A user's model that does not fit the deployment is refused before any work, in `deploy --dry-run` and in
`deploy` alike: a torch.export program exported at another fixed size (the error names the size it takes),
a model that predicts other classes than the data's. An exception that is not a user error exits with the
crash code, never the parity failure's 1.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from helpers.cli import OWN, SMOKE, assert_clean_error, run_cli
from helpers.own_model import IMAGENET, Outsider

from bckd_pipeline.errors import EXIT_CRASH

ORT = ["--target", "onnxruntime-cpu-fp32"]


def _program(path: Path, module: torch.nn.Module, hw: tuple[int, int], dynamic_shapes=None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module.eval(), (torch.zeros(1, 3, *hw),), dynamic_shapes=dynamic_shapes)
        torch.export.save(program, path)
    return path


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("programs")
    torch.manual_seed(0)
    h, w = torch.export.Dim("h", min=16, max=48), torch.export.Dim("w", min=16, max=48)
    return {
        "fixed": _program(folder / "fixed.pt2", Outsider(), (32, 48)),
        "three": _program(folder / "three.pt2", Outsider(classes=3), (64, 64)),
        "ranged": _program(folder / "ranged.pt2", Outsider(), (32, 32), {"x": {2: h, 3: w}}),
    }


@pytest.mark.parametrize("dry", [["--dry-run"], []])
def test_a_program_of_another_fixed_size_names_the_size_it_takes(programs, tmp_path, capsys, dry):
    out = tmp_path / "R"
    rc, _, err = run_cli(capsys, "deploy", *OWN, "--model", programs["fixed"], *IMAGENET, *ORT, "--out", out, *dry)
    assert_clean_error(rc, err, out)
    assert "takes 1x3x32x48" in err and "would feed 1x3x64x64" in err and "Pass --input-size 32,48" in err


def test_a_program_fed_a_batch_it_was_not_exported_for(programs, tmp_path, capsys):
    argv = ["--model", programs["fixed"], "--input-size", "32,48", "--batch", "2", *IMAGENET, *ORT]
    rc, _, err = run_cli(capsys, "deploy", *OWN, *argv, "--out", tmp_path / "R", "--dry-run")
    assert_clean_error(rc, err, tmp_path / "R")
    assert "would feed 2x3x32x48 (--input-size). Pass --batch 1" in err


def test_a_dynamic_program_takes_sizes_in_its_range_only(programs, tmp_path, capsys):
    argv = ["--model", programs["ranged"], *IMAGENET, *ORT, "--dry-run"]
    rc, _, err = run_cli(capsys, "deploy", *OWN, *argv, "--out", tmp_path / "R")  # 64x64 data: above 48
    assert_clean_error(rc, err, tmp_path / "R")
    assert "takes 1x3x[16..48]x[16..48]" in err and "--input-size H,W in that range" in err
    rc, stdout, err = run_cli(capsys, "deploy", *OWN, *argv, "--input-size", "32,48", "--out", tmp_path / "R")
    assert rc == 0, err
    assert "export" in stdout


@pytest.mark.parametrize("dry", [["--dry-run"], []])
def test_a_program_for_other_classes_is_refused_in_a_dry_run_too(programs, tmp_path, capsys, dry):
    out = tmp_path / "R"
    rc, _, err = run_cli(capsys, "deploy", *OWN, "--model", programs["three"], *IMAGENET, *ORT, "--out", out, *dry)
    assert_clean_error(rc, err, out)
    assert "predicts 3 classes; the --data dataset has 7" in err


def test_an_onnx_for_other_classes_is_refused_in_a_dry_run(tmp_path, capsys):
    path = tmp_path / "three.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Outsider(classes=3).eval(), (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False)
    argv = ["--onnx", path, "--input-scale", "0..255", *ORT, "--out", tmp_path / "R", "--dry-run"]
    rc, _, err = run_cli(capsys, "deploy", *OWN, *argv)
    assert_clean_error(rc, err, tmp_path / "R")
    assert "predicts 3 classes; the --data dataset has 7" in err


class Picky(torch.nn.Module):
    """A module that fails on any input but 32x32, with an exception type of its own choosing."""

    def forward(self, x):
        if x.shape[-1] != 32:
            raise RuntimeError("expected a 32 pixels wide input")
        return torch.zeros(x.shape[0], 7, x.shape[2], x.shape[3])


def test_a_torchscript_module_failing_on_the_size_is_a_clean_error(tmp_path, capsys):
    path = tmp_path / "picky.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Picky()), path)
    argv = ["--model", path, *IMAGENET, *ORT, "--out", tmp_path / "R", "--dry-run"]
    rc, _, err = run_cli(capsys, "deploy", *OWN, *argv)
    assert_clean_error(rc, err, tmp_path / "R")
    assert "failed on a 1x3x64x64 zero image" in err and "expected a 32 pixels wide input" in err
    assert "pass --input-size H,W" in err


def test_an_exception_that_is_not_a_user_error_exits_with_the_crash_code(monkeypatch, tmp_path, capsys):
    from bckd_pipeline import pipeline

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(pipeline, "parity_stage", broken)
    rc, _, err = run_cli(capsys, "run", *SMOKE, *ORT, "--out", tmp_path / "R", "--latency-runs", "5", "--no-throughput")
    assert rc == EXIT_CRASH != 1
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert "internal error (ZeroDivisionError): a bug in bckd-pipeline" in err
