"""Fault-injection and bad-input campaign: kill a run at many points, break its storage, feed it hostile files.

Modelled on SQLite's crash and I/O-error testing and on pip's and ONNX's handling of hostile files: each case
injects one fault or feeds one bad input, then checks the documented outcome (the exit code and an ``error:``
message without a traceback) and that no data was lost or corrupted (no half-written file under its final
name; a rerun into the same ``--out`` completes with the same accuracy fields as an uninterrupted run).

    python benchmarks/faults_campaign.py [--quick] [--seed 0] [--out docs/results/faults.json]

writes, for each case, its name, category, what was injected, the expected outcome, the observed exit code and
message head, whether it was handled cleanly and whether data was lost or corrupted; then the totals, the
command, the commit, the machine and the versions. tests/test_campaign.py runs the same cases one by one.

Every command runs as its own process (``python -m bckd_pipeline.cli``), as a user runs it; the full disk and
the read-only folder are real tmpfs mounts (root only: elsewhere those cases are skipped and say so).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (HERE, REPO):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

SEED = 0
RESULTS = REPO / "docs/results/faults.json"
# One thread everywhere (torch's OpenMP and every runtime's): the campaign compares runs with each other, never
# times them, and on a shared 2-core host spin-waiting threads make each run many times slower.
SMOKE_RUN = ["run", "--preset", "smoke", "--train-device", "cpu", "--threads", "1"]
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RUN_TIMEOUT_S = 1200  # a smoke run takes 11 s on an idle 2-core host, minutes on a busy one
DEMO_CLASSES = 7  # the demo data's classes: what a hostile ONNX must predict to be taken


# ---------------------------------------------------------------------------------------------
# outcomes, cases and the context they share
# ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    exit_code: int | None
    message: str
    handled: bool  # the documented exit code and a clean message, or a rerun that completes as it should
    lost_or_corrupted: bool  # a half-written file under its final name, or a rerun that reports other figures
    detail: str = ""
    skipped: str | None = None  # why the fault could not be injected on this host (not counted)


@dataclass(frozen=True)
class Case:
    name: str
    category: str  # kill-resume | storage | hostile-file | bad-input
    kind: str  # fault | bad_input
    injected: str
    expected: str
    fn: Callable[[Context], Outcome]
    slow: bool = True
    quick: bool = True  # part of --quick


CASES: list[Case] = []


def case(name, category, kind, injected, expected, *, slow=True, quick=True):
    def register(fn):
        CASES.append(Case(name, category, kind, injected, expected, fn, slow, quick))
        return fn

    return register


class Context:
    """A scratch folder, the campaign's random numbers, and one uninterrupted reference run (made on first use)."""

    def __init__(self, root: Path, seed: int = SEED) -> None:
        self.root = Path(root)
        self.seed = seed
        self._reference: Path | None = None
        self._reference_log = ""

    def rng(self, name: str) -> random.Random:
        """One generator per case: a case draws the same delays whichever cases ran before it."""
        return random.Random(f"{self.seed}:{name}")

    def folder(self, name: str) -> Path:
        path = self.root / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def reference(self) -> Path:
        if self._reference is None:
            out = self.root / "reference"
            started = time.perf_counter()
            rc, _, err = cli(*SMOKE_RUN, "--out", out, timeout=RUN_TIMEOUT_S)
            if rc != 0:
                raise RuntimeError(f"the uninterrupted reference run failed (exit {rc}): {err[-2000:]}")
            self.reference_s = self.full_run_s = time.perf_counter() - started
            self._reference, self._reference_log = out, err
        return self._reference

    def use_reference(self, finished: Path) -> None:
        """Compare with this finished run of ``SMOKE_RUN`` instead of making one."""
        finished = Path(finished)
        if not (finished / "report.json").is_file():
            raise SystemExit(f"--reference {finished}: no report.json there (give a finished smoke run's --out)")
        self._reference = finished
        # its length: from claiming --out (run.json) to the report; stage windows default to 0.5 s without its log
        self.reference_s = max(
            (finished / "report.json").stat().st_mtime - (finished / "run.json").stat().st_mtime, 2.0
        )
        self._reference_log = ""

    def stage_seconds(self, stage: str) -> float:
        """How long ``stage`` took in the reference run ("stage export: done in 0.7 s")."""
        self.reference()
        m = re.search(rf"^stage {re.escape(stage)}( \[[^\]]*\])?: done in ([0-9.]+) s", self._reference_log, re.M)
        return float(m.group(2)) if m else 0.5

    def finished_copy(self, name: str) -> Path:
        """A copy of the reference run to break (the copy keeps every file's bytes and the stage cache)."""
        dest = self.folder(name) / "R"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.reference(), dest)
        return dest


# ---------------------------------------------------------------------------------------------
# running the command line, judging what it said
# ---------------------------------------------------------------------------------------------
def _env() -> dict:
    path = os.environ.get("PYTHONPATH")
    return {**THREAD_ENV, **os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def command(*argv) -> list[str]:
    return [sys.executable, "-m", "bckd_pipeline.cli", *[str(a) for a in argv]]


IN_PROCESS = False  # tests/test_campaign.py sets it for the fast cases: ``cli.main`` in this process


def cli(*argv, timeout: float = 180) -> tuple[int, str, str]:
    """``bckd-pipeline ARGV`` in its own process: exit code, stdout, stderr (-9 when stopped at ``timeout``).

    With ``IN_PROCESS``, ``cli.main(ARGV)`` here instead: an exception it lets through is what the console
    script would print (a traceback, exit 1).
    """
    if IN_PROCESS:
        return _cli_in_process([str(a) for a in argv])
    try:
        res = subprocess.run(command(*argv), capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO)
    except subprocess.TimeoutExpired as e:
        return -9, str(e.stdout or ""), str(e.stderr or "") + f"\n(stopped after {timeout:g} s)"
    return res.returncode, res.stdout, res.stderr


def _cli_in_process(argv: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io
    import traceback

    from bckd_pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
        except Exception:  # noqa: BLE001 - the console script's behaviour: a traceback and exit 1
            traceback.print_exc()
            rc = 1
    return rc, out.getvalue(), err.getvalue()


def message_head(err: str) -> str:
    """The ``error:`` line, else the last line a user saw (a traceback's last line)."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("stage ")]
    head = next((line for line in lines if line.startswith("error:")), lines[-1] if lines else "")
    return head[:240]


def clean_error(rc: int, err: str, code: int = 2) -> bool:
    """The documented refusal: exit ``code``, an ``error:`` message, no traceback."""
    return rc == code and "Traceback" not in err and message_head(err).startswith("error:")


def refusal(rc: int, err: str, *must: str, out: Path | None = None, code: int = 2) -> Outcome:
    """A refusal judged: clean, saying ``must`` (case-insensitive), and no half-written file left in ``out``."""
    head = message_head(err)
    said = all(m.lower() in err.lower() for m in must)
    half = scan_half_written(out) if out is not None and out.exists() else []
    detail = "" if said else f"message lacks {must!r}"
    if half:
        detail += f" half-written: {half}"
    return Outcome(rc, head, clean_error(rc, err, code) and said, bool(half), detail.strip())


# ---------------------------------------------------------------------------------------------
# what a killed or broken run left: half-written files, and the accuracy fields of its report
# ---------------------------------------------------------------------------------------------
TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")  # fileio.atomic_write's temporary name


def _parse(path: Path) -> None:
    """Read ``path`` whole by its kind; raises on a truncated or corrupt file."""
    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".onnx":
        import onnx

        onnx.checker.check_model(onnx.load(str(path)))
    elif suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            for k in z.files:
                z[k]
    elif suffix == ".xml":
        import xml.etree.ElementTree as ET

        ET.parse(path)
    elif suffix in (".pt", ".pth"):
        import torch

        torch.load(path, map_location="cpu", weights_only=True)
    elif suffix in (".md", ".txt", ".csv"):
        path.read_text(encoding="utf-8")
    elif suffix == ".html":
        if "</html>" not in path.read_text(encoding="utf-8"):
            raise ValueError("no closing </html>")


def scan_half_written(out: Path) -> list[str]:
    """Files under their final name in ``out`` that do not parse as what their name says (relative paths)."""
    bad = []
    for path in sorted(Path(out).rglob("*")):
        if not path.is_file() or TEMP_FILE.match(path.name) or path.name == ".bckd-pipeline.lock":
            continue
        if any(p.startswith(".") and p != ".cache" for p in path.relative_to(out).parts[:-1]):
            continue  # a hidden working folder (an artifact's temporary files), not a final name
        try:
            _parse(path)
        except Exception as exc:  # noqa: BLE001 - any failure to read it whole is the finding
            bad.append(f"{path.relative_to(out)} ({type(exc).__name__})")
    return bad


def stale_temp_files(out: Path) -> list[str]:
    return [str(p.relative_to(out)) for p in Path(out).rglob("*") if p.is_file() and TEMP_FILE.match(p.name)]


# Keys whose values differ between two runs of the same computation: timings, places, versions, hosts.
SKIP_KEYS = (
    "latency", "p50", "p90", "p99", "fps", "_ms", "seconds", "time", "path", "version", "commit", "created",
    "date", "host", "machine", "cpu", "out", "file", "artifact", "wall", "speedup", "throughput", "sha",
    "duration", "env", "command", "cached", "cwd", "load", "note",
)  # fmt: skip


def accuracy_differences(a, b, where: str = "") -> list[str]:
    """Every accuracy field where two reports differ (timings, paths, versions, hosts skipped)."""
    if isinstance(a, dict) and isinstance(b, dict):
        diffs = []
        for k in sorted(set(a) | set(b)):
            if any(s in str(k).lower() for s in SKIP_KEYS):
                continue
            if k not in a or k not in b:
                diffs.append(f"{where}/{k}: only in {'the rerun' if k not in a else 'the reference'}")
            else:
                diffs += accuracy_differences(a[k], b[k], f"{where}/{k}")
        return diffs
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in accuracy_differences(x, y, f"{where}[{i}]")
        ]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def compare_runs(reference: Path, rerun: Path) -> list[str]:
    """Accuracy differences over every report*.json of the reference run (a missing report is one)."""
    diffs = []
    for f in sorted(Path(reference).glob("report*.json")):
        g = Path(rerun) / f.name
        if not g.is_file():
            diffs.append(f"{f.name}: missing in the rerun")
            continue
        diffs += accuracy_differences(json.loads(f.read_text()), json.loads(g.read_text()), f.name)
    return diffs


def rerun_matches(ctx: Context, out: Path, before: str = "", injected: str | None = None) -> Outcome:
    """Rerun the smoke command into ``out``: it must finish (exit 0) with the reference's accuracy fields, and
    no file may be half-written before the rerun (but the one the case broke on purpose, ``injected``) or after.
    """
    half = [f for f in scan_half_written(out) if f.split(" (")[0] != injected] if out.exists() else []
    started = time.perf_counter()
    rc, _, err = cli(*SMOKE_RUN, "--out", out, timeout=RUN_TIMEOUT_S)
    if rc == 0 and len(VAL_LINE.findall(err)) >= 3:  # it trained all three models: a whole run's length, now
        ctx.full_run_s = time.perf_counter() - started
    diffs = compare_runs(ctx.reference(), out) if rc == 0 else ["the rerun did not finish"]
    after = scan_half_written(out) if out.exists() else []
    notes = [before] if before else []
    if half:
        notes.append(f"half-written before the rerun: {half}")
    if after:
        notes.append(f"half-written after the rerun: {after}")
        half += after
    if diffs:
        notes.append(f"{len(diffs)} accuracy differences: {diffs[:5]}")
    stale = stale_temp_files(out)
    if stale:
        notes.append(f"{len(stale)} temporary files left beside (never under a final name)")
    return Outcome(rc, message_head(err), rc == 0 and not diffs, bool(half or diffs), "; ".join(notes))


# ---------------------------------------------------------------------------------------------
# kill and resume
# ---------------------------------------------------------------------------------------------
VAL_LINE = re.compile(r"iteration \d+: val ")
TRAININGS = ("training teacher", "training student", "training distilled")


def phase_of(lines: list[str]) -> str:
    """What the run was doing when its stderr ended: the stage started and not done, else the training."""
    open_stage = None
    for line in lines:
        m = re.match(r"^stage (.+?): (started|done)", line)
        if m:
            open_stage = m.group(1) if m.group(2) == "started" else None
    if open_stage:
        return open_stage
    if any(line.startswith("complete ->") or line.startswith("stage report") for line in lines):
        return "after the report stage"
    if any(line.startswith("stage ") for line in lines):
        return "between stages"
    return TRAININGS[min(sum(bool(VAL_LINE.search(x)) for x in lines), 2)]


def kill_and_resume(ctx: Context, name: str, trigger: Callable[[list[str], Path], bool], delay: float) -> Outcome:
    """Start the smoke run, SIGKILL it ``delay`` s after ``trigger(stderr lines, out)`` first holds, then rerun it."""
    ctx.reference()
    out = ctx.folder(name) / "R"
    proc = subprocess.Popen(
        command(*SMOKE_RUN, "--out", out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
        cwd=REPO, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        for raw in iter(proc.stderr.readline, b""):
            lines.extend(x.strip() for x in raw.decode(errors="replace").replace("\r", "\n").splitlines())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not trigger(list(lines), out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    landed = proc.poll() is None
    if landed:
        os.killpg(proc.pid, signal.SIGKILL)  # the run's own process group: the run and any loader workers
    proc.wait()
    reader.join(timeout=5)
    phase = phase_of(lines) if landed else "the run had finished"
    result = rerun_matches(ctx, out, before=f"killed during: {phase}")
    if not landed:
        result.skipped = "the run finished before the kill"
    return result


def _stage_trigger(stage: str) -> Callable[[list[str], Path], bool]:
    return lambda lines, out: any(x.startswith(f"stage {stage}") and x.endswith("started") for x in lines)


def _val_lines(n: int) -> Callable[[list[str], Path], bool]:
    """After ``n`` trainings finished (their last validation line); the first: once the run claimed --out."""
    if n == 0:
        return lambda lines, out: (out / "run.json").is_file()
    return lambda lines, out: sum(bool(VAL_LINE.search(x)) for x in lines) >= n


def _register_kills() -> None:
    trainings = [("teacher", 0, 0.3, 2.0), ("student", 1, 0.0, 0.8), ("distilled", 2, 0.0, 1.5)]
    for what, seen, lo, hi in trainings:

        def fn(ctx, what=what, seen=seen, lo=lo, hi=hi):
            name = f"kill-training-{what}"
            return kill_and_resume(ctx, name, _val_lines(seen), ctx.rng(name).uniform(lo, hi))

        case(
            f"kill-training-{what}",
            "kill-resume",
            "fault",
            f"SIGKILL while the {what} trains",
            "the rerun into the same --out exits 0 with the reference's accuracy fields; no half-written file",
            quick=what == "distilled",
        )(fn)
    for stage in ("export", "simplify", "calibration", "compile", "parity", "latency", "report"):

        def fn(ctx, stage=stage):
            name = f"kill-{stage}"
            delay = ctx.rng(name).uniform(0.0, max(ctx.stage_seconds(stage), 0.05))
            return kill_and_resume(ctx, name, _stage_trigger(stage), delay)

        case(
            f"kill-{stage}",
            "kill-resume",
            "fault",
            f"SIGKILL at a random moment inside the {stage} stage",
            "the rerun into the same --out exits 0 with the reference's accuracy fields; no half-written file",
            quick=stage in ("export", "parity", "report"),
        )(fn)
    for k in range(6):

        def fn(ctx, k=k):
            name = f"kill-random-{k}"
            ctx.reference()
            # within the length of the latest whole run seen (the host's load changes while the campaign runs)
            at = ctx.rng(name).uniform(1.0, max(0.9 * getattr(ctx, "full_run_s", ctx.reference_s), 2.0))
            return kill_and_resume(ctx, name, lambda lines, out: True, at)

        case(
            f"kill-random-{k}",
            "kill-resume",
            "fault",
            "SIGKILL at a random time across the run",
            "the rerun into the same --out exits 0 with the reference's accuracy fields; no half-written file",
            quick=k < 2,
        )(fn)


_register_kills()


# ---------------------------------------------------------------------------------------------
# storage faults
# ---------------------------------------------------------------------------------------------
class Mount:
    """A tmpfs of ``size`` at ``path`` (root only); ``remount(...)`` changes its options; unmounted on exit."""

    def __init__(self, path: Path, size: str) -> None:
        self.path, self.size = Path(path), size

    def _mount(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["mount", *args], capture_output=True, text=True)

    def __enter__(self) -> Mount | None:
        self.path.mkdir(parents=True, exist_ok=True)
        res = self._mount("-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path))
        if res.returncode != 0:
            self.reason = f"mount -t tmpfs not allowed here ({res.stderr.strip()[:120]})"
            return None
        return self

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True, capture_output=True)

    def __exit__(self, *exc) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def _no_mount(m: Mount) -> Outcome:
    return Outcome(None, "", False, False, skipped=getattr(m, "reason", "no tmpfs"))


@case(
    "disk-full-during-run",
    "storage",
    "fault",
    "run --preset smoke into a 2 MiB tmpfs (ENOSPC midway)",
    "exit 2, an error naming the full disk, no traceback, no half-written file; after the disk grows, the rerun "
    "into the same --out completes with the reference's accuracy fields",
)
def disk_full(ctx: Context) -> Outcome:
    m = Mount(ctx.folder("disk-full") / "mnt", "2m")
    with m as mounted:
        if mounted is None:
            return _no_mount(m)
        out = m.path / "R"
        rc, _, err = cli(*SMOKE_RUN, "--out", out, timeout=RUN_TIMEOUT_S)
        first = refusal(rc, err, "space", out=out)
        m.remount("size=64m")
        again = rerun_matches(ctx, out)
    return Outcome(
        rc,
        first.message,
        first.handled and again.handled,
        first.lost_or_corrupted or again.lost_or_corrupted,
        "; ".join(x for x in (first.detail, f"after the disk grew: exit {again.exit_code} {again.detail}") if x),
    )


@case(
    "read-only-new-out",
    "storage",
    "fault",
    "--out inside a tmpfs remounted read-only",
    "exit 2 before any training: the folder cannot be written",
)
def read_only_new(ctx: Context) -> Outcome:
    m = Mount(ctx.folder("ro-new") / "mnt", "8m")
    with m as mounted:
        if mounted is None:
            return _no_mount(m)
        m.remount("ro")
        rc, _, err = cli(*SMOKE_RUN, "--out", m.path / "R", timeout=RUN_TIMEOUT_S)
        return refusal(rc, err, "cannot be written")


@case(
    "read-only-finished-run",
    "storage",
    "fault",
    "rerun into a finished run's --out on a tmpfs remounted read-only",
    "exit 2 with a clear message; every file of the finished run unchanged",
)
def read_only_finished(ctx: Context) -> Outcome:
    m = Mount(ctx.folder("ro-finished") / "mnt", "64m")
    with m as mounted:
        if mounted is None:
            return _no_mount(m)
        out = m.path / "R"
        shutil.copytree(ctx.reference(), out)
        before = _digests(out)
        m.remount("ro")
        rc, _, err = cli(*SMOKE_RUN, "--out", out, timeout=RUN_TIMEOUT_S)
        result = refusal(rc, err, "cannot be written", out=out)
        if _digests(out) != before:
            result.lost_or_corrupted, result.detail = True, (result.detail + " files changed").strip()
        return result


def _digests(folder: Path) -> dict:
    from bckd_pipeline.fileio import file_sha256

    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt_then_rerun(ctx: Context, name: str, rel: str, at: float = 0.5) -> Outcome:
    out = ctx.finished_copy(name)
    _flip_byte(out / rel, at)
    return rerun_matches(ctx, out, before=f"flipped a byte of {rel}", injected=rel)


for _name, _rel, _what in [
    ("corrupt-simplified-onnx", "deploy/model.sim.onnx", "simplified ONNX"),
    ("corrupt-int8-onnx", "deploy/onnxruntime-cpu/model.int8.onnx", "INT8 ONNX"),
    ("corrupt-student-checkpoint", "distilled/student.pt", "distilled student checkpoint"),
    ("corrupt-parity-images", "deploy/onnxruntime-cpu/parity_images.npz", "parity images"),
    ("corrupt-cache-record", ".cache/export.json", "export stage's cache record"),
]:
    case(
        _name,
        "storage",
        "fault",
        f"one flipped byte in a finished run's {_what} ({_rel}), then the same run again",
        "detected: the stage is redone (or refused), the rerun reports the reference's accuracy fields",
        quick=_name in ("corrupt-simplified-onnx", "corrupt-cache-record"),
    )(lambda ctx, name=_name, rel=_rel: _corrupt_then_rerun(ctx, name, rel))


@case(
    "corrupt-cached-result-figure",
    "storage",
    "fault",
    "a cached parity record (.cache/parity@onnxruntime-cpu.json) whose stored agreement figure was altered, still "
    "valid JSON",
    "detected: the stage is redone, the rerun reports the reference's figures, never the altered one",
)
def corrupt_cached_figure(ctx: Context) -> Outcome:
    out = ctx.finished_copy("corrupt-cached-figure")
    record_path = out / ".cache/parity@onnxruntime-cpu.json"
    text = record_path.read_text()
    altered, n = re.subn(r'("pixel_agreement": )0\.\d+', r"\g<1>0.123456", text, count=1)
    if not n:
        return Outcome(None, "", False, False, skipped="no pixel_agreement figure in the parity record")
    record_path.write_text(altered)
    return rerun_matches(ctx, out, before="altered pixel_agreement in the parity cache record")


@case(
    "deleted-int8-model-rerun",
    "storage",
    "fault",
    "the INT8 ONNX deleted from a finished run",
    "the rerun rebuilds it and reports the reference's accuracy fields",
)
def deleted_rerun(ctx: Context) -> Outcome:
    out = ctx.finished_copy("deleted-rerun")
    (out / "deploy/onnxruntime-cpu/model.int8.onnx").unlink()
    return rerun_matches(ctx, out, before="deleted model.int8.onnx")


@case(
    "deleted-int8-model-predict",
    "storage",
    "fault",
    "predict with a finished run whose deployed model was deleted",
    "exit 2: the deployed model is missing, named",
)
def deleted_predict(ctx: Context) -> Outcome:
    out = ctx.finished_copy("deleted-predict")
    (out / "deploy/onnxruntime-cpu/model.int8.onnx").unlink()
    image = _image(ctx.folder("deleted-predict-img") / "a.png")
    rc, _, err = cli("predict", image, "--model", out, "--out", out.parent / "P")
    return refusal(rc, err, "model.int8.onnx")


@case(
    "deleted-report-gate",
    "storage",
    "fault",
    "gate on a finished run whose report.json was deleted",
    "exit 2: no report there, named",
)
def deleted_gate(ctx: Context) -> Outcome:
    out = ctx.finished_copy("deleted-gate")
    (out / "report.json").unlink()
    rc, _, err = cli("gate", out, "--budgets", REPO / "docs/ci/budgets.toml")
    return refusal(rc, err, "report")


def _image(path: Path) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# hostile and broken files
# ---------------------------------------------------------------------------------------------
DEPLOY_FAST = ["--preset", "smoke", "--no-progress", "--train-device", "cpu", "--input-scale", "0..255",
               "--latency-runs", "2", "--warmup-runs", "1", "--warmup-s", "0", "--no-throughput"]  # fmt: skip


def tiny_onnx(path: Path, *, hw: tuple[int, int] = (64, 64), external: str | None = None, op_domain: str = "") -> Path:
    """A 1x1 convolution from RGB to the demo's classes, built with onnx.helper (opset 17).

    ``external`` stores the weight as external data at that location; ``op_domain`` wraps the output in an
    ``Identity``-named op of that domain (an operator no runtime has).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(DEMO_CLASSES, 3, 1, 1)).astype(np.float32), "W"
    )
    nodes = [helper.make_node("Conv", ["input", "W"], ["logits"])]
    if op_domain:
        nodes.append(helper.make_node("Frobnicate", ["logits"], ["out"], domain=op_domain))
    else:
        nodes.append(helper.make_node("Identity", ["logits"], ["out"]))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, *hw])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, DEMO_CLASSES, *hw])],
        [weight],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(op_domain, 1)] if op_domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    if external is not None:
        weight = model.graph.initializer[0]
        raw = weight.raw_data
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for k, v in (("location", external), ("offset", "0"), ("length", str(len(raw)))):
            entry = weight.external_data.add()
            entry.key, entry.value = k, v
        target = (path.parent / external).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _deploy(ctx: Context, name: str, model: Path, *extra) -> tuple[int, str, Path]:
    out = ctx.folder(name + "-out") / "R"
    # a tiny made-up model on the demo scenes: the deployment is the subject here, not the model's accuracy
    rc, _, err = cli("deploy", *DEPLOY_FAST, "--allow-demo-data", "--onnx", model, "--out", out, *extra, timeout=240)
    return rc, err, out


@case(
    "onnx-control",
    "hostile-file",
    "bad_input",
    "a well-formed tiny ONNX (the control for the cases below)",
    "deploy --onnx exits 0",
    slow=True,
)
def onnx_control(ctx: Context) -> Outcome:
    model = tiny_onnx(ctx.folder("onnx-control") / "m.onnx")
    rc, err, out = _deploy(ctx, "onnx-control", model)
    half = scan_half_written(out) if out.exists() else []
    return Outcome(rc, message_head(err), rc == 0, bool(half), f"half-written: {half}" if half else "")


@case(
    "onnx-external-data-outside",
    "hostile-file",
    "bad_input",
    "ONNX whose weight is external data at ../../outside/secret.bin (outside the model's folder)",
    "exit 2: refused, nothing read from outside the folder",
    slow=False,
)
def onnx_external(ctx: Context) -> Outcome:
    folder = ctx.folder("onnx-external") / "a" / "b"
    model = tiny_onnx(folder / "m.onnx", external="../../outside/secret.bin")
    rc, err, out = _deploy(ctx, "onnx-external", model)
    return refusal(rc, err, "external", out=out)


@case(
    "onnx-huge-dimension",
    "hostile-file",
    "bad_input",
    "ONNX declaring a static input of 1x3x1000000x1000000",
    "exit 2 with the size it declares, without allocating it",
    slow=False,
)
def onnx_huge(ctx: Context) -> Outcome:
    model = tiny_onnx(ctx.folder("onnx-huge") / "m.onnx", hw=(1_000_000, 1_000_000))
    rc, err, out = _deploy(ctx, "onnx-huge", model)
    return refusal(rc, err, "1000000", out=out)


@case(
    "onnx-unknown-domain-op",
    "hostile-file",
    "bad_input",
    "ONNX with an op of the unknown domain com.example.evil",
    "exit 2 naming the operator or its domain",
    slow=False,
)
def onnx_unknown_op(ctx: Context) -> Outcome:
    model = tiny_onnx(ctx.folder("onnx-unknown") / "m.onnx", op_domain="com.example.evil")
    rc, err, out = _deploy(ctx, "onnx-unknown", model)
    return refusal(rc, err, "com.example.evil", out=out)


@case(
    "onnx-truncated",
    "hostile-file",
    "bad_input",
    "an ONNX file cut at half its bytes",
    "exit 2: truncated, corrupt, or not an ONNX model",
    slow=False,
)
def onnx_truncated(ctx: Context) -> Outcome:
    model = tiny_onnx(ctx.folder("onnx-truncated") / "m.onnx")
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    rc, err, out = _deploy(ctx, "onnx-truncated", model)
    return refusal(rc, err, "truncated", out=out)


class _Payload:
    """Unpickling this runs ``touch MARKER``: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@case(
    "checkpoint-executes-code",
    "hostile-file",
    "bad_input",
    "a student.pt whose unpickling runs a shell command (touch a marker file)",
    "exit 2: refused by torch.load(weights_only=True); the marker is never created",
    slow=False,
)
def checkpoint_pickle(ctx: Context) -> Outcome:
    import torch

    folder = ctx.folder("checkpoint-pickle")
    marker = folder / "PWNED"
    torch.save({"state_dict": _Payload(marker)}, folder / "student.pt")
    rc, _, err = cli("deploy", *DEPLOY_FAST, "--model", folder / "student.pt", "--out", folder / "R", timeout=240)
    result = refusal(rc, err, "student.pt")
    if marker.exists():
        result.handled, result.lost_or_corrupted, result.detail = False, True, "the payload ran"
    return result


def _budgets_case(name: str, body: str, must: str):
    def fn(ctx: Context) -> Outcome:
        path = ctx.folder(name) / "budgets.toml"
        path.write_text(body)
        rc, _, err = cli("gate", ctx.reference() / "report.json", "--budgets", path)
        return refusal(rc, err, must)

    return fn


for _name, _body, _must, _what in [
    ("budgets-nan", "[onnxruntime-cpu]\nmax_miou_drop = nan\n", "max_miou_drop", "max_miou_drop = nan"),
    ("budgets-infinity", "[onnxruntime-cpu]\nmin_pixel_agreement = -inf\n", "min_pixel_agreement",
     "min_pixel_agreement = -inf"),
    ("budgets-wrong-type", '[onnxruntime-cpu]\nmax_miou_drop = "one"\n', "max_miou_drop", 'max_miou_drop = "one"'),
    ("budgets-table-not-a-table", "onnxruntime-cpu = 3\n", "onnxruntime-cpu", "a target's budgets as a number"),
    ("budgets-bool-for-number", "[onnxruntime-cpu]\nmax_miou_drop = true\n", "max_miou_drop",
     "max_miou_drop = true"),
]:  # fmt: skip
    case(
        _name,
        "bad-input",
        "bad_input",
        f"a budgets file with {_what}",
        "exit 2: the key, its value and what is allowed",
        quick=True,
    )(_budgets_case(_name, _body, _must))


# a device result for `ingest`: made once (a pending jetson run and its agent run here), then altered
def device_result(ctx: Context) -> tuple[Path, Path]:
    """A pending ``run --target jetson`` and the result its agent wrote, made on first use."""
    run, result = ctx.root / "jetson" / "R", ctx.root / "jetson" / "device-out"
    if not (result / "result.json").is_file():
        shutil.rmtree(ctx.root / "jetson", ignore_errors=True)
        rc, _, err = cli(*SMOKE_RUN, "--target", "jetson", "--latency-runs", "5", "--out", run, timeout=RUN_TIMEOUT_S)
        if rc != 3:
            raise RuntimeError(f"run --target jetson exited {rc}, not 3 (pending): {message_head(err)}")
        bundle = run / "deploy/tensorrt/bundle"
        res = subprocess.run(
            [sys.executable, str(bundle / "agent.pyz"), str(bundle / "job.json"), str(result)],
            capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"the device agent failed: {res.stderr[-500:]}")
    return run, result


def _ingest_case(name: str, alter: Callable[[dict, Path], None], must: str):
    def fn(ctx: Context) -> Outcome:
        run0, result0 = device_result(ctx)
        folder = ctx.folder(name)
        run, result = folder / "R", folder / "device-out"
        shutil.copytree(run0, run)
        shutil.copytree(result0, result)
        data = json.loads((result / "result.json").read_text())
        alter(data, folder)
        (result / "result.json").write_text(json.dumps(data))
        rc, _, err = cli("ingest", run, result, timeout=RUN_TIMEOUT_S)
        outcome = refusal(rc, err, must, out=run)
        kept = (run / "deploy/tensorrt/device").exists()
        status = json.loads((run / "report.json").read_text())["status"]
        if kept or status != "pending":
            outcome.lost_or_corrupted = True
            outcome.detail = (outcome.detail + f" the result was taken in (report status {status})").strip()
        return outcome

    return fn


def _outside_file(data: dict, folder: Path) -> None:
    from bckd_pipeline.fileio import file_sha256

    secret = folder / "outside.bin"
    secret.write_bytes(b"not the device's")
    data["files"]["../../outside.bin"] = file_sha256(secret)


def _absolute_file(data: dict, folder: Path) -> None:
    from bckd_pipeline.fileio import file_sha256

    secret = folder / "outside.bin"
    secret.write_bytes(b"not the device's")
    data["files"][str(secret)] = file_sha256(secret)


for _name, _alter, _must, _what in [
    ("ingest-file-outside-result", _outside_file, "outside", "a file entry ../../outside.bin (its sha256 right)"),
    ("ingest-absolute-file", _absolute_file, "outside", "a file entry with an absolute path (its sha256 right)"),
    ("ingest-latency-string", lambda d, f: d["latency"].update(p50="fast"), "p50", 'latency p50 = "fast"'),
    ("ingest-images-not-a-count", lambda d, f: d.update(images="many"), "images", 'images = "many"'),
    ("ingest-files-not-a-table", lambda d, f: d.update(files=["labels.npz"]), "files", "files given as a list"),
]:
    case(
        _name,
        "hostile-file",
        "bad_input",
        f"a device result for ingest with {_what}",
        "exit 2 naming the field; nothing ingested, the run stays pending",
        quick=_name != "ingest-absolute-file",
    )(_ingest_case(_name, _alter, _must))


# --device strings: refused before any process starts, and no shell ever sees them
DEVICE_STRINGS = [
    "ssh://nvidia@jetson;touch {m}",
    "ssh://nvidia@$(touch {m})",
    "ssh://nvidia@`touch {m}`",
    "ssh://-oProxyCommand=touch {m}@jetson",
    "ssh://nvidia@jetson|touch {m}",
    "ssh://nvidia@jetson && touch {m}",
]


def device_metacharacters(ctx: Context) -> Outcome:
    """Every string through ``SshTarget.parse`` and the command line (--dry-run); the safe one through the real
    ``ssh`` call with ``subprocess.run`` recorded: an argv list, never ``shell=True``."""
    from bckd_pipeline.device import remote

    folder = ctx.folder("device-metachar")
    marker = folder / "PWNED"
    problems, heads, codes = [], [], []
    for template in DEVICE_STRINGS:
        device = template.format(m=marker)
        rc, _, err = cli(*SMOKE_RUN, "--target", "jetson", "--device", device, "--out", folder / "R", "--dry-run")
        codes.append(rc)
        heads.append(message_head(err))
        if not clean_error(rc, err):
            problems.append(f"{device!r}: exit {rc}")
    calls = []
    real_run = remote.subprocess.run

    def record(argv, *a, **kw):
        calls.append((argv, kw.get("shell", False)))
        return subprocess.CompletedProcess(argv, 0, "", "")

    remote.subprocess.run = record
    try:
        device = remote.RemoteDevice(remote.SshTarget.parse("ssh://nvidia@jetson:2222"))
        device.run(["echo", f"$(touch {marker})", f"; touch {marker}"], timeout=5, what="probe")
        device.copy([str(marker)], device.remote(f"/tmp/$(touch {marker})"), what="probe copy")
    finally:
        remote.subprocess.run = real_run
    for argv, shell in calls:
        if shell or not isinstance(argv, list):
            problems.append(f"a shell call: {argv!r}")
    if marker.exists():
        problems.append("the marker was created")
    return Outcome(
        max(codes),
        heads[0],
        not problems,
        marker.exists(),
        "; ".join(problems) or f"{len(DEVICE_STRINGS)} strings refused with exit 2; ssh/scp called with argv lists",
    )


case(
    "device-shell-metacharacters",
    "bad-input",
    "bad_input",
    f"{len(DEVICE_STRINGS)} --device strings with ; $() backticks | && and an ssh option as the host",
    "each exit 2 at parse time; the ssh/scp calls are argv lists, never a shell",
    slow=False,
)(device_metacharacters)


# datasets: a folder: dataset with one defect each
def folder_dataset(root: Path, *, label: int | None = None, mask_size=None, drop_mask: bool = False) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            size = mask_size if split == "train" and mask_size else (32, 32)
            mask = np.zeros(size, np.uint8)
            mask[:, size[1] // 2 :] = 1
            if split == "train" and label is not None:
                mask[-1, -1] = label
            if not (drop_mask and split == "train" and i == 2):
                Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root


def _dataset_case(name: str, must: str, **defect):
    def fn(ctx: Context) -> Outcome:
        folder = ctx.folder(name)
        data = folder_dataset(folder / "data", **defect)
        out = folder / "R"
        rc, _, err = cli(
            *SMOKE_RUN, "--no-progress", "--data", f"folder:{data}", "--crop", "32,32", "--batch-size", "2",
            "--num-workers", "0", "--out", out, timeout=RUN_TIMEOUT_S,
        )  # fmt: skip
        return refusal(rc, err, must, out=out)

    return fn


for _name, _must, _defect, _what in [
    ("dataset-label-out-of-range", "allowed: 0..2", {"label": 9}, "a train mask holding label 9 (classes 0..2)"),
    ("dataset-mask-wrong-size", "is 32x30", {"mask_size": (32, 30)}, "train masks 32x30 for 32x32 images"),
    ("dataset-missing-pair", "2.png", {"drop_mask": True}, "a train image without its mask"),
]:
    case(
        _name,
        "bad-input",
        "bad_input",
        f"a folder: dataset with {_what}",
        "exit 2 naming the file and what is allowed; no half-written file",
        slow=False,
    )(_dataset_case(_name, _must, **_defect))


# ---------------------------------------------------------------------------------------------
# the campaign
# ---------------------------------------------------------------------------------------------
def run_case(ctx: Context, c: Case) -> dict:
    started = time.perf_counter()
    try:
        o = c.fn(ctx)
    except Exception as exc:  # noqa: BLE001 - a case that breaks is recorded as not handled
        o = Outcome(None, f"{type(exc).__name__}: {str(exc)[:200]}", False, False, "the case itself raised")
    row = {
        "name": c.name,
        "category": c.category,
        "kind": c.kind,
        "injected": c.injected,
        "expected": c.expected,
        "exit_code": o.exit_code,
        "message_head": o.message,
        "handled_cleanly": o.handled,
        "lost_or_corrupted": o.lost_or_corrupted,
        "detail": o.detail,
        "skipped": o.skipped,
        "seconds": round(time.perf_counter() - started, 1),
    }
    mark = "skip" if o.skipped else ("ok" if o.handled and not o.lost_or_corrupted else "NOT HANDLED")
    print(f"{c.name:38s} {mark:11s} exit {o.exit_code}  {o.message[:80]}  {o.detail[:120]}", flush=True)
    return row


def totals(rows: list[dict]) -> dict:
    counted = [r for r in rows if not r["skipped"]]
    return {
        "cases": len(rows),
        "skipped": len(rows) - len(counted),
        "faults_injected": sum(r["kind"] == "fault" for r in counted),
        "bad_inputs_tried": sum(r["kind"] == "bad_input" for r in counted),
        "handled_cleanly": sum(r["handled_cleanly"] for r in counted),
        "not_handled": sum(not r["handled_cleanly"] for r in counted),
        "lost_or_corrupted": sum(r["lost_or_corrupted"] for r in counted),
    }


DOC = REPO / "docs/faults.md"
TABLE_START, TABLE_END = "<!-- faults table: start -->", "<!-- faults table: end -->"


def markdown(result: dict) -> str:
    """The totals and the per-category table of a campaign's JSON, as docs/faults.md shows them."""
    t = result["totals"]
    rows = [r for r in result["cases"] if not r["skipped"]]
    isa = result["machine"]["isa"]
    partial = "" if result.get("complete", True) else f" (partial: {len(result['cases'])} of {result['cases_planned']})"
    lines = [
        f"`{result['command']}`{partial} on {result['machine']['cpu']} "
        f"({', '.join(isa) if isinstance(isa, list) else isa}, "
        f"{result['machine']['logical_cores']} logical cores), commit {str(result['git_commit'])[:12]}"
        + (" (with uncommitted changes)" if result["git_dirty"] else "")
        + f", {result['wall_s']:.0f} s wall"
        + (
            f" (load average {result['machine']['load_average_at_start'][0]:.1f} at the start)"
            if result["machine"].get("load_average_at_start")
            else ""
        )
        + ":",
        "",
        "| category | cases | handled cleanly | not handled | lost or corrupted |",
        "|---|---:|---:|---:|---:|",
    ]
    for cat in ("kill-resume", "storage", "hostile-file", "bad-input"):
        mine = [r for r in rows if r["category"] == cat]
        lines.append(
            f"| {cat} | {len(mine)} | {sum(r['handled_cleanly'] for r in mine)} | "
            f"{sum(not r['handled_cleanly'] for r in mine)} | {sum(r['lost_or_corrupted'] for r in mine)} |"
        )
    lines += [
        f"| **all** ({t['faults_injected']} faults injected, {t['bad_inputs_tried']} bad inputs tried) | "
        f"{t['cases'] - t['skipped']} | {t['handled_cleanly']} | {t['not_handled']} | {t['lost_or_corrupted']} |",
    ]
    landed = {r["name"]: m.group(1) for r in rows if (m := re.search(r"killed during: ([^;]+)", r["detail"] or ""))}
    if landed:
        lines += [
            "",
            "Where each kill landed (the stage running at SIGKILL, read from its stderr; a stage shorter than "
            "the time to see its start line and signal is passed):",
            "",
        ]
        lines += [f"- `{name}`: {phase}" for name, phase in landed.items()]
        stale = [r["name"] for r in rows if "temporary files left beside" in (r["detail"] or "")]
        if stale:
            lines += [
                "",
                "Temporary files (`.NAME.XXXXXXXX.tmp`, never under a final name) left after the rerun in: "
                + ", ".join(f"`{n}`" for n in stale)
                + ".",
            ]
    if t["skipped"]:
        lines += [
            "",
            f"{t['skipped']} case{'s' if t['skipped'] != 1 else ''} skipped on this host: "
            + "; ".join(f"{r['name']} ({r['skipped']})" for r in result["cases"] if r["skipped"]),
        ]
    bad = [r for r in rows if not r["handled_cleanly"] or r["lost_or_corrupted"]]
    if bad:
        lines += ["", "Not handled:", ""] + [
            f"- `{r['name']}`: exit {r['exit_code']}, {r['message_head'][:160]}" for r in bad
        ]
    return "\n".join(lines) + "\n"


def render(results: Path, doc: Path = DOC) -> None:
    """Rewrite the table between the markers of ``doc`` from ``results``."""
    from bckd_pipeline.fileio import write_text

    text = doc.read_text()
    head, _, rest = text.partition(TABLE_START)
    _, _, tail = rest.partition(TABLE_END)
    table = markdown(json.loads(Path(results).read_text()))
    write_text(doc, f"{head}{TABLE_START}\n{table}{TABLE_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer kill points and corruptions (about half the cases)")
    ap.add_argument("--seed", type=int, default=SEED, help="seed of the kill delays (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default: %(default)s)")
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the scratch folders here")
    ap.add_argument(
        "--reference", type=Path, default=None,
        help="a finished, uninterrupted `bckd-pipeline run --preset smoke --train-device cpu` of this code to compare "
        "with (default: the campaign makes one first)",
    )  # fmt: skip
    ap.add_argument("--render", action="store_true", help="only rewrite docs/faults.md's table from --out")
    args = ap.parse_args(argv)
    if args.render:
        render(args.out)
        return 0

    from common import git_state, lscpu, versions

    from bckd_pipeline.fileio import write_json
    from bckd_pipeline.machine import cpu_facts

    chosen = [c for c in CASES if (not args.quick or c.quick) and (not args.only or c.name in args.only.split(","))]
    # the categories in turn (a kill, a storage fault, a hostile file, a bad input, ...): a campaign stopped early
    # has still tried some of each
    turn = {}
    for c in chosen:
        turn[c.name] = sum(d.category == c.category for d in chosen[: chosen.index(c)])
    order = ("kill-resume", "storage", "hostile-file", "bad-input")
    chosen.sort(key=lambda c: (turn[c.name], order.index(c.category)))
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="faults-")) if args.keep is None else args.keep
    ctx = Context(scratch, args.seed)
    if args.reference is not None:
        ctx.use_reference(args.reference)
    cpu = cpu_facts()
    header = {
        "command": "python benchmarks/faults_campaign.py"
        + (" --quick" if args.quick else "")
        + (f" --seed {args.seed}" if args.seed != SEED else "")
        + (f" --only {args.only}" if args.only else ""),
        "seed": args.seed,
        "quick": args.quick,
        **git_state(),
        "machine": {
            "cpu": cpu["model"],
            "isa": cpu["isa"],
            "logical_cores": cpu["logical_cores"],
            "lscpu_model": lscpu().get("Model name"),
            "load_average_at_start": list(os.getloadavg()),
        },
        "versions": versions(),
        "reference": "given (--reference)" if args.reference else "made first by the campaign",
    }
    rows: list[dict] = []

    def write(complete: bool) -> dict:
        result = {
            **header,
            "complete": complete,  # false while cases are still running: the file is rewritten after each
            "cases_planned": len(chosen),
            "wall_s": round(time.perf_counter() - started, 1),
            "reference_run_s": round(getattr(ctx, "reference_s", 0.0), 1) or None,
            "totals": totals(rows),
            "cases": rows,
        }
        write_json(args.out, result)
        return result

    try:
        for c in chosen:
            rows.append(run_case(ctx, c))
            write(False)
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    result = write(True)
    t = result["totals"]
    print(
        f"{t['faults_injected']} faults injected, {t['bad_inputs_tried']} bad inputs tried, {t['handled_cleanly']} "
        f"handled cleanly, {t['not_handled']} not, {t['lost_or_corrupted']} lost or corrupted data, {t['skipped']} "
        f"skipped; {result['wall_s']} s -> {args.out}",
        flush=True,
    )
    return 0 if t["not_handled"] == 0 and t["lost_or_corrupted"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
