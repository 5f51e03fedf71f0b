"""The fault-injection and bad-input campaign (benchmarks/faults_campaign.py), one test per case, and the
campaign's own instruments: the half-written-file scan, the accuracy comparison and the kill-phase reader.

The fast cases (hostile files, bad --device strings, broken datasets) run in the default suite through
``cli.main`` in this process; the kill, storage and budgets cases need a real smoke run and are slow.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "faults_campaign.py"


def _load():
    spec = importlib.util.spec_from_file_location("faults_campaign", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("faults_campaign", module)
    spec.loader.exec_module(module)
    return module


fc = _load()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return fc.Context(tmp_path_factory.mktemp("campaign"))


def _param(c):
    return pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else [])


@pytest.mark.parametrize("case", [_param(c) for c in fc.CASES])
def test_case(case, ctx, monkeypatch):
    monkeypatch.setattr(fc, "IN_PROCESS", not case.slow)
    outcome = case.fn(ctx)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert outcome.handled, (outcome.exit_code, outcome.message, outcome.detail)
    assert not outcome.lost_or_corrupted, outcome.detail


def test_every_category_has_cases_and_names_are_unique():
    names = [c.name for c in fc.CASES]
    assert len(names) == len(set(names))
    cats = {c.category for c in fc.CASES}
    assert cats == {"kill-resume", "storage", "hostile-file", "bad-input"}
    stages = {"export", "simplify", "calibration", "compile", "parity", "latency", "report"}
    assert {f"kill-{s}" for s in stages} <= set(names)
    assert [c for c in fc.CASES if not c.slow], "some cases run in the default suite"


# --- the instruments ----------------------------------------------------------------------------------
def test_the_scan_finds_each_kind_of_half_written_file_and_passes_temporaries(tmp_path):
    onnx_file = fc.tiny_onnx(tmp_path / "good" / "m.onnx")
    (tmp_path / "good" / "r.json").write_text('{"a": 1}')
    np.savez(tmp_path / "good" / "x.npz", a=np.arange(1000))
    (tmp_path / "good" / ".r.json.abc123.tmp").write_text('{"a"')  # atomic_write's temporary: not a final name
    assert fc.scan_half_written(tmp_path / "good") == []
    assert fc.stale_temp_files(tmp_path / "good") == [".r.json.abc123.tmp"]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "r.json").write_text('{"a": ')
    (bad / "m.onnx").write_bytes(onnx_file.read_bytes()[:40])
    (bad / "x.npz").write_bytes((tmp_path / "good" / "x.npz").read_bytes()[:300])
    (bad / "r.xml").write_text("<testsuite><testcase>")
    (bad / "report.html").write_text("<html><body>")
    found = fc.scan_half_written(bad)
    assert [f.split(" ")[0] for f in found] == ["m.onnx", "r.json", "r.xml", "report.html", "x.npz"]


def test_accuracy_differences_skip_timings_and_catch_a_changed_figure():
    a = {"stages": [{"miou": 17.6, "latency_ms": {"p50": 0.1}, "path": "/x"}], "versions": {"torch": "2"}}
    b = {"stages": [{"miou": 17.6, "latency_ms": {"p50": 0.3}, "path": "/y"}], "versions": {"torch": "3"}}
    assert fc.accuracy_differences(a, b) == []
    c = json.loads(json.dumps(b))
    c["stages"][0]["miou"] = 17.5
    assert fc.accuracy_differences(a, c) == ["/stages[0]/miou: 17.6 != 17.5"]
    assert fc.accuracy_differences({"x": float("nan")}, {"x": float("nan")}) == []
    assert fc.accuracy_differences({"x": 1}, {}) == ["/x: only in the reference"]


def test_the_phase_at_the_kill_is_read_from_the_stage_lines():
    assert fc.phase_of([]) == "training teacher"
    assert fc.phase_of(["iteration 30: val mIoU 19.1"]) == "training student"
    assert fc.phase_of(["iteration 30: val mIoU 19.1", "iteration 20: val mIoU 12.5"]) == "training distilled"
    assert fc.phase_of(["stage export: started"]) == "export"
    lines = ["stage export: started", "stage export: done in 0.7 s", "stage parity [onnxruntime-cpu]: started"]
    assert fc.phase_of(lines) == "parity [onnxruntime-cpu]"
    assert fc.phase_of(lines[:2]) == "between stages"


def test_totals_leave_skipped_cases_out():
    rows = [
        {"kind": "fault", "handled_cleanly": True, "lost_or_corrupted": False, "skipped": None},
        {"kind": "bad_input", "handled_cleanly": False, "lost_or_corrupted": True, "skipped": None},
        {"kind": "fault", "handled_cleanly": False, "lost_or_corrupted": False, "skipped": "no mount"},
    ]
    t = fc.totals(rows)
    assert (t["faults_injected"], t["bad_inputs_tried"], t["handled_cleanly"], t["lost_or_corrupted"]) == (1, 1, 1, 1)
    assert t["skipped"] == 1 and t["not_handled"] == 1


def test_a_cached_figure_altered_on_disk_is_not_served(tmp_path):
    from bckd_pipeline.cache import StageCache

    artifact = tmp_path / "a.bin"
    artifact.write_bytes(b"x")
    cache = StageCache(tmp_path)
    cache.store("parity", "k", [artifact], {"pixel_agreement": 0.992})
    assert cache.lookup("parity", "k") == {"pixel_agreement": 0.992}
    record = tmp_path / ".cache/parity.json"
    record.write_text(record.read_text().replace("0.992", "0.123"))
    assert cache.lookup("parity", "k") is None


def test_a_write_that_fails_on_a_full_disk_is_an_enospc_error(tmp_path, monkeypatch):
    import errno
    import os
    from types import SimpleNamespace

    from bckd_pipeline import fileio

    def torch_like_writer(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 1756416 vs 1756304")

    with pytest.raises(RuntimeError):  # a disk with room: the writer's own error, untouched
        fileio.atomic_write(tmp_path / "a.pt", torch_like_writer)
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_bavail=3, f_frsize=4096))
    with pytest.raises(OSError) as info:
        fileio.atomic_write(tmp_path / "a.pt", torch_like_writer)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "a.pt")
    assert list(tmp_path.iterdir()) == []  # neither the final name nor the temporary file


def test_the_command_line_says_disk_full_in_one_line(monkeypatch, capsys):
    import errno

    from bckd_pipeline import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/mnt/R/student/student.pt")

    monkeypatch.setattr(cli, "dispatch", full)
    rc = cli.main(["targets"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: No space left on device writing /mnt/R/student/student.pt.")
    assert "the same command continues" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"files": {"../../outside.bin": "0" * 64}}, "points outside the result folder"),
        ({"files": {"/etc/hostname": "0" * 64}}, "points outside the result folder"),
        ({"engine": {"file": "../plan.engine"}}, "points outside the result folder"),
        ({"files": ["labels.npz"]}, "'files' is list"),
        ({"images": "many"}, "'images' is 'many'"),
        ({"latency": {"p50": "fast"}}, "latency figure 'p50' is 'fast'"),
        ({"latency": {"p50": True}}, "latency figure 'p50' is True"),
        ({"latency": {"samples_ms": [0.1, "x"]}}, "samples_ms"),
    ],
)
def test_a_device_result_with_outside_paths_or_wrong_figures_is_refused(tmp_path, change, said):
    from bckd_pipeline.device.agent import RESULT_FORMAT
    from bckd_pipeline.device.bundle import read_result
    from bckd_pipeline.errors import StageCheckError

    result = {"format": RESULT_FORMAT, "ok": True, "files": {}, "engine": None, "images": 2, "digests": []}
    result["latency"] = {"p50": 0.1, "runs": 5, "samples_ms": [0.1, 0.2]}
    result.update(change)
    (tmp_path / "result.json").write_text(json.dumps(result))
    with pytest.raises(StageCheckError, match="is not a device result the agent writes") as info:
        read_result(tmp_path, {"digests": []})
    assert said in str(info.value)
