"""Faults a user meets before any model runs: a busy --out, NNCF's extension build, output streams, suggestions
and the gate's figures. Each test is fast: no training, fakes where a run would be needed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bckd_pipeline.cli import main
from bckd_pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# -- one writer per --out ----------------------------------------------------------------------------------------
HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from bckd_pipeline.outlock import out_lock

    with out_lock(Path(sys.argv[1]), "bckd-pipeline run --out " + sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
    """
)


@pytest.fixture
def holder(tmp_path):
    """A process that holds the lock of ``tmp_path / 'out'`` until it is killed."""
    out = tmp_path / "out"
    argv = [sys.executable, "-c", HOLDER, str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield out, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()


@pytest.mark.parametrize(
    "argv",
    [
        ("run", "--preset", "smoke", "--target", "no-such-target"),
        ("deploy", "--onnx", "missing.onnx", "--data", "demo"),
        ("predict", "missing-images", "--model", "missing.onnx"),
    ],
    ids=["run", "deploy", "predict"],
)
def test_a_second_command_into_a_busy_out_is_refused_at_once(holder, capsys, argv):
    out, proc = holder
    start = time.perf_counter()
    rc, stdout, err = run_cli(capsys, *argv, "--out", out)
    assert rc == 2 and stdout == ""
    assert f"--out {str(out)!r} is in use: process {proc.pid} on " in err
    assert "since 20" in err and "(bckd-pipeline run --out" in err
    assert "Wait for it to finish, or pass another --out." in err
    assert "Traceback" not in err and time.perf_counter() - start < 10


def test_a_killed_holder_leaves_the_out_folder_free(holder, capsys):
    from bckd_pipeline.outlock import LOCK_FILE, out_lock

    out, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (out / LOCK_FILE).is_file()  # the file stays; the OS dropped the lock with the process
    rc, _, err = run_cli(capsys, "predict", "missing-images", "--model", "missing.onnx", "--out", out)
    assert rc == 2 and "in use" not in err  # refused for its own reason, not the dead holder's lock
    with out_lock(out, "test"):
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()


def test_a_dry_run_takes_no_lock(holder, capsys):
    out, _ = holder
    rc, _, err = run_cli(capsys, "run", "--preset", "smoke", "--target", "no-such-target", "--out", out, "--dry-run")
    assert rc == 2 and "in use" not in err and "Unknown --target" in err


def test_a_refused_command_leaves_no_folder_behind(tmp_path, capsys):
    rc, _, _ = run_cli(capsys, "predict", "missing-images", "--model", "missing.onnx", "--out", tmp_path / "a/b")
    assert rc == 2 and list(tmp_path.iterdir()) == []


def test_a_stale_lock_file_is_not_a_foreign_file_in_out(tmp_path):
    from bckd_pipeline.cache import check_out_dir
    from bckd_pipeline.outlock import LOCK_FILE
    from bckd_pipeline.predict.outputs import prepare_out

    for out in (tmp_path / "run", tmp_path / "predict"):
        out.mkdir()
        (out / LOCK_FILE).write_text('{"pid": 1}\n')
    check_out_dir(tmp_path / "run", {"data": "demo"}, force=False)
    prepare_out(tmp_path / "predict", ("labels", "overlays"))


def test_another_runs_out_names_unset_values_without_python_none(tmp_path):
    from bckd_pipeline.cache import claim_out_dir, check_out_dir
    from bckd_pipeline.errors import DataError

    out = claim_out_dir(tmp_path / "out", {"data": "demo", "onnx": "a.onnx"}, force=False)
    (out / "deploy").mkdir()
    with pytest.raises(DataError) as info:
        check_out_dir(out, {"data": "demo", "teacher": "t.pt"}, force=False)
    message = str(info.value)
    assert "None" not in message
    assert "teacher: not set -> 't.pt'" in message and "onnx: 'a.onnx' -> not set" in message


# -- progress on stderr, results on stdout -----------------------------------------------------------------------
def test_training_progress_goes_to_stderr(capsys):
    from bckd_pipeline.distill.trainer import ProgressBar

    bar = ProgressBar(3, "distill", True)
    bar.update(2, {"loss/ce": 0.5})
    bar.log("iter 2: mIoU 12.00")
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "distill" in captured.err and "iter 2: mIoU 12.00" in captured.err


# -- suggestions by meaning ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("openvino", "openvino-cpu"),
        ("ov", "openvino-cpu"),
        ("OpenVINO_CPU", "openvino-cpu"),
        ("ort", "onnxruntime-cpu"),
        ("onnxruntime", "onnxruntime-cpu"),
        ("onnx", "onnxruntime-cpu"),
        ("onnxruntime-fp32", "onnxruntime-cpu-fp32"),
        ("trt", "tensorrt"),
        ("ov-gpu", "openvino-gpu"),
        ("jetson_orin_nano", "jetson-orin-nano"),
        ("opnvino-cpu", "openvino-cpu"),  # a typo: the closest spelling
    ],
)
def test_an_unknown_target_suggests_what_it_means(given, meant):
    from bckd_pipeline.targets import get_target

    with pytest.raises(ConfigError) as info:
        get_target(given)  # suggested, never accepted
    assert f"Did you mean {meant!r}?" in str(info.value)


@pytest.mark.parametrize(("given", "meant"), [("openvino", "openvino-cpu"), ("ort", "onnxruntime-cpu")])
def test_run_target_suggestion(given, meant, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "run", "--preset", "smoke", "--target", given, "--out", tmp_path / "o", "--dry-run")
    assert rc == 2 and f"Did you mean {meant!r}?" in err


def test_predict_target_on_a_run_of_several_targets_suggests_the_one_meant(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    per_target = {k: {"manifest": f"{k}/manifest.json"} for k in ("onnxruntime-cpu", "openvino-cpu")}
    (run / "manifest.json").write_text(json.dumps({"format": "bckd-pipeline/manifest-v1", "per_target": per_target}))
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    argv = ("predict", tmp_path / "images", "--model", run, "--target", "openvino_cpu", "--out", tmp_path / "p")
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2 and "Did you mean --target openvino-cpu?" in err
    assert "--target onnxruntime-cpu " not in err


def test_a_budgets_table_named_after_a_backend_suggests_its_target():
    from bckd_pipeline.gate.budgets import parse_budgets

    with pytest.raises(ConfigError, match="Did you mean 'openvino-cpu'"):
        parse_budgets("[openvino]\nmax_miou_drop = 1.0\n")


# -- the gate's Markdown writes the console's figures ------------------------------------------------------------
def test_gate_markdown_writes_delta_bounds_as_the_console_does():
    import numpy as np

    from bckd_pipeline.gate.budgets import GateSettings
    from bckd_pipeline.gate.gate import GateResult, _drop_check
    from bckd_pipeline.gate.output import markdown, text_lines
    from bckd_pipeline.parity_images import ParityImages
    from bckd_pipeline.tasks import get_task

    task, settings = get_task("segmentation"), GateSettings(bootstrap_resamples=200)
    stage, key = "onnxruntime-int8", "max_miou_drop"
    point = _drop_check(task, stage, key, 1.0, {"miou_delta": 0.03955}, None, "pytorch", settings)
    confusion = np.stack([np.diag([5, 3]).astype(np.int32)] * 4)  # the same four images on both stages
    images = ParityImages(("a", "b", "c", "d"), ("",) * 4, {"pytorch": confusion, stage: confusion})
    bound = _drop_check(task, stage, key, 0.0, {"miou_delta": 0.0}, images, "pytorch", settings)
    result = GateResult("onnxruntime-cpu", "report.json", None, settings, (point, bound))
    console = "\n".join(text_lines(result))
    table = [line for line in markdown(result).splitlines() if "`max_miou_drop`" in line]
    assert "ΔmIoU +0.040 vs pytorch" in console and "ΔmIoU >= +0.000" in console
    assert "| ΔmIoU +0.040 | 1 |" in table[0]
    assert "| ΔmIoU ≥ +0.000 | 0 |" in table[1]
    assert not any(s in "\n".join(table) for s in ("-0.03955", "| -0 |", "-0 mIoU"))


# -- NNCF --------------------------------------------------------------------------------------------------------


def test_nncf_extension_timeout_is_a_clear_error(monkeypatch):
    pytest.importorskip("nncf")
    from nncf.torch.quantization.extensions import QuantizedFunctionsCPU, QuantizedFunctionsCPULoader

    from bckd_pipeline.nncf_env import EXTENSION_TIMEOUT_S, TIMEOUT_VAR, ExtensionBuildError, prepare
    from bckd_pipeline.qat.fakequant import import_nncf

    monkeypatch.delenv(TIMEOUT_VAR, raising=False)
    prepare()
    assert os.environ[TIMEOUT_VAR] == str(EXTENSION_TIMEOUT_S)  # a busy host gets more than NNCF's 60 s

    class SlowBuild(QuantizedFunctionsCPULoader):
        @classmethod
        def load(cls):
            time.sleep(3)

    monkeypatch.setenv(TIMEOUT_VAR, "1")  # the user's own limit is kept
    monkeypatch.setattr(QuantizedFunctionsCPU, "_loader", SlowBuild())
    monkeypatch.setattr(QuantizedFunctionsCPU, "_loaded_namespace", None)
    with pytest.raises(ExtensionBuildError) as info:
        import_nncf()
    message = str(info.value)
    assert info.value.exit_code == 2
    assert f"within {TIMEOUT_VAR}=1 seconds" in message and f"{TIMEOUT_VAR}=1800" in message
    assert "python -m bckd_pipeline.nncf_env" in message and "--qat off" in message


def test_a_stale_build_lock_of_a_killed_loader_is_removed_and_a_live_one_kept(tmp_path, capsys):
    from bckd_pipeline.nncf_env import LOCK_FILE, STALE_LOCK_S, clear_stale_lock

    assert clear_stale_lock(tmp_path) is False  # no lock: nothing to do
    lock = tmp_path / LOCK_FILE
    lock.touch()
    assert clear_stale_lock(tmp_path) is False and lock.exists()  # a loader may hold it right now
    old = time.time() - STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    assert clear_stale_lock(tmp_path) is True and not lock.exists()
    assert "removed a stale build lock" in capsys.readouterr().err


def test_nncf_logs_on_stderr_and_no_cuda_notice_on_a_cpu_host():
    pytest.importorskip("nncf")
    script = textwrap.dedent(
        """
        from bckd_pipeline.calibrate.openvino import _nncf
        _nncf()
        import nncf.torch
        from nncf.common.logging import nncf_logger
        nncf_logger.info("an INFO line of NNCF's log")
        nncf_logger.warning("a warning of NNCF's log")
        """
    )
    argv = [sys.executable, "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "a warning of NNCF's log" in done.stderr
    assert "an INFO line" not in done.stderr  # one line per operation an ignored scope keeps in float: not shown
    assert "No CUDA runtime is found" not in done.stderr


@pytest.mark.parametrize(
    ("raised", "code", "says"),
    [
        (PermissionError(13, "Permission denied", "/x/out"), 2, "error: Permission denied: /x/out"),
        (OSError(5, "Input/output error"), 70, "internal error (OSError)"),
    ],
)
def test_os_errors_end_in_a_message_or_the_crash_code_never_a_bare_traceback(monkeypatch, capsys, raised, code, says):
    import bckd_pipeline.cli as cli

    def fail(args):
        raise raised

    monkeypatch.setattr(cli, "dispatch", fail)
    assert cli.main(["models"]) == code
    assert says in capsys.readouterr().err


def test_a_reader_that_left_the_pipe_is_no_error(monkeypatch):
    """`bckd-pipeline targets | head`: a BrokenPipeError, an OSError too, still ends quietly with 0."""
    import io

    import bckd_pipeline.cli as cli

    def fail(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "dispatch", fail)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert cli.main(["models"]) == 0


def test_a_factory_that_raises_or_weights_that_do_not_fit_are_user_errors(tmp_path, monkeypatch):
    import torch

    from bckd_pipeline.errors import CheckpointError, ConfigError
    from bckd_pipeline.model_files import module_from_factory

    (tmp_path / "userfactory.py").write_text(
        "import torch\ndef broken():\n    raise RuntimeError('no GPU here')\n"
        "def conv():\n    return torch.nn.Conv2d(3, 4, 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="calling broken\\(\\) raised RuntimeError: no GPU here"):
        module_from_factory("userfactory:broken", None)
    wrong = tmp_path / "wrong.pth"
    torch.save(torch.nn.Conv2d(3, 8, 1).state_dict(), wrong)
    with pytest.raises(CheckpointError, match="does not fit userfactory:conv"):
        module_from_factory("userfactory:conv", wrong)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="could not be read as a state_dict"):
        module_from_factory("userfactory:conv", junk)
