"""The timing scripts (benchmarks/help_time.py, train_cost.py, det_step.py) write results files that record what
render_results.py's audit asks of one: the command, the commit (with the diff's hash when the tree has changes),
the CPU model and ISA, library versions and the wall time of the whole run."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rr():
    return load_script("render_results")


def run_script(name: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_help_time_records_every_tree_and_its_provenance(rr, tmp_path):
    out = tmp_path / "help.json"
    assert load_script("help_time").main(["--runs", "2", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert rr.audit_file(record) == []
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    [tree] = record["trees"]
    assert tree["path"] == str(ROOT) and tree["git_commit"] == head
    assert len(tree["help"]["runs_s"]) == 2 and tree["help"]["median_s"] > 0
    assert len(record["python_-c_pass"]["runs_s"]) == 2
    assert record["wall_s"] >= sum(tree["help"]["runs_s"])


def test_help_time_refuses_a_folder_that_is_not_a_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        load_script("help_time").main(["--tree", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2 and "no bckd_pipeline package there" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_git_state_hashes_the_diff_of_a_dirty_tree(tmp_path):
    common = load_script("common")

    def git(*a: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout  # fmt: skip

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "c")
    clean = common.git_state(tmp_path)
    assert clean == {"git_commit": git("rev-parse", "HEAD").strip(), "git_dirty": False, "git_diff_sha256": None}
    (tmp_path / "a.txt").write_text("two\n")
    dirty = common.git_state(tmp_path)
    assert dirty["git_dirty"] is True and dirty["git_commit"] == clean["git_commit"]
    assert dirty["git_diff_sha256"] == hashlib.sha256(git("diff", "HEAD").encode()).hexdigest()


@pytest.mark.slow
def test_train_cost_writes_a_complete_record(rr):
    stdout = run_script(
        "train_cost", "--device", "cpu", "--crop", "64,96", "--batch", "2", "--steps", "2", "--warmup", "0",
        "--time-only", "--teacher", "tiny-teacher", "--student", "tiny-student", "--rows", "none,kd",
    )  # fmt: skip
    record = json.loads(stdout)
    assert rr.audit_file(record) == []
    assert record["command"].startswith("python ") and "--rows none,kd" in record["command"]
    assert record["wall_s"] > 0 and record["machine"]["isa"] is not None and "git_diff_sha256" in record
    assert record["versions"]["torch"] and set(record["seconds_per_step"]) == {"none", "kd"}


@pytest.mark.slow
def test_det_step_writes_a_complete_record(rr, tmp_path):
    out = tmp_path / "step.json"
    run_script(
        "det_step", "--presets", "fcos-tiny-s", "--threads", "1", "--warmup", "0", "--steps", "1", "--size", "64,64",
        "--batch", "1", "--classes", "2", "--note", "a test run", "--out", str(out),
    )  # fmt: skip
    record = json.loads(out.read_text())
    assert rr.audit_file(record) == []
    assert record["command"].endswith("--note 'a test run' --out " + str(out))
    assert record["wall_s"] > 0 and "git_diff_sha256" in record["environment"]
    assert record["versions"]["torchvision"] and list(record["rows"]) == ["fcos-tiny-s@1t"]
