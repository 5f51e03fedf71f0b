"""Faults a user meets before any model runs: a busy --out, NNCF's extension build, output streams, suggestions
and the gate's figures. Each test is fast: no training, fakes where a run would be needed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bckd_pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


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


def test_nncf_logs_on_stderr_and_no_cuda_notice_on_a_cpu_host():
    pytest.importorskip("nncf")
    script = textwrap.dedent(
        """
        from bckd_pipeline.calibrate.openvino import _nncf
        _nncf()
        import nncf.torch
        from nncf.common.logging import nncf_logger
        nncf_logger.info("a line of NNCF's log")
        """
    )
    argv = [sys.executable, "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "a line of NNCF's log" in done.stderr
    assert "No CUDA runtime is found" not in done.stderr
