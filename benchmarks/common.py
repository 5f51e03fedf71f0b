"""Pieces every benchmark script shares: the environment a result was measured in, the resumable results file,
paired statistics over seeds, and running a ``bckd-pipeline ...`` command with this interpreter.

The scripts run as ``python benchmarks/NAME.py``, which puts this folder first on ``sys.path``; scripts that
tests load by path insert it themselves. Standard library at import (numpy and scipy when a statistic needs
them); the CPU facts come from ``bckd_pipeline/machine.py``, the package's one place that reads the machine.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
VERSIONED_PACKAGES = (
    "torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxsim", "openvino", "nncf", "numpy",
    "segmentation-models-pytorch",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the environment: CPU (through bckd_pipeline.machine), lscpu, package versions, the code
# ---------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else what ``platform`` says), as report.json names it."""
    from bckd_pipeline.machine import cpu_facts

    return cpu_facts()["model"]


def cpu_summary() -> dict:
    """The CPU's model and the vector ISA that decides its FP32 and INT8 speed (machine.py's names)."""
    from bckd_pipeline.machine import cpu_facts

    cpu = cpu_facts()
    return {"cpu": cpu["model"], "isa": cpu["isa"]}


def lscpu() -> dict:
    """`lscpu`'s model name, flags and caches, beside machine.py's /proc/cpuinfo facts."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": error_text(exc)}
    keep = (
        "Architecture",
        "Model name",
        "CPU(s)",
        "Thread(s) per core",
        "Core(s) per socket",
        "Flags",
        "L1d cache",
        "L2 cache",
        "L3 cache",
        "Hypervisor vendor",
    )
    facts = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k.strip() in keep:
            facts[k.strip()] = v.strip().split() if k.strip() == "Flags" else v.strip()
    return facts


def versions() -> dict:
    """Python, the packages a measurement depends on (None where not installed) and the git commit."""
    from bckd_pipeline.machine import git_commit, package_versions

    return {**package_versions(VERSIONED_PACKAGES), "git": git_commit()}


def git_state(repo: Path = REPO) -> dict:
    """The commit the code was checked out at, whether the work tree had changes (untracked files count), and
    when it had, the sha256 of ``git diff HEAD`` (the tracked changes), so that a result from a dirty tree still
    names the code it ran."""
    import hashlib

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True).stdout

    try:
        dirty = bool(git("status", "--porcelain").strip())
        diff = hashlib.sha256(git("diff", "HEAD").encode()).hexdigest() if dirty else None
        return {"git_commit": git("rev-parse", "HEAD").strip() or None, "git_dirty": dirty, "git_diff_sha256": diff}
    except OSError:
        return {"git_commit": None, "git_dirty": None, "git_diff_sha256": None}


def environment() -> dict:
    """CPU model and logical cores, Python, torch and the git state: the header of a study's results."""
    from importlib.metadata import PackageNotFoundError, version

    from bckd_pipeline.machine import cpu_facts

    cpu = cpu_facts()
    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = None
    return {
        "cpu": cpu["model"],
        "cpu_count": cpu["logical_cores"],
        "python": platform.python_version(),
        "torch": torch_version,
        **git_state(),
    }


def code_hash() -> str:
    """A short hash of the bckd_pipeline sources as they are now: a resumed study may span code changes."""
    import hashlib

    pkg = REPO / "bckd_pipeline"
    h = hashlib.sha256()
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# results on disk: atomic JSON, and one cached result per file keyed by what decides it
# ---------------------------------------------------------------------------------------------
def error_text(exc: BaseException) -> str:
    """``Type: first line of the message`` (400 characters at most), for a result that records its failure."""
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ''}"


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON through a temporary file and a rename: a reader never sees half of it."""
    from bckd_pipeline.fileio import write_json

    write_json(path, obj, indent=1)


def cached(path: Path, key: dict, make) -> dict:
    """The result at ``path`` if it was made with ``key``; else ``make()`` (errors recorded, not raised)."""
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["result"]
    started = time.perf_counter()
    try:
        result = make()
    except Exception as exc:  # noqa: BLE001 - one failed export or quantizer must not end the table
        result = {"error": error_text(exc)}
        print(f"  ! {path.parent.name}/{path.stem}: {result['error']}", flush=True)
    result["seconds"] = round(time.perf_counter() - started, 2)
    write_json_atomic(path, {"key": key, "result": result})
    return result


# ---------------------------------------------------------------------------------------------
# paired statistics over seeds
# ---------------------------------------------------------------------------------------------
def paired(row: dict[int, float], ref: dict[int, float]) -> dict:
    """Paired difference row - ref over the seeds both have: mean, sd, 95% t and bootstrap intervals."""
    seeds = sorted(set(row) & set(ref))
    diffs = [row[s] - ref[s] for s in seeds]
    out: dict = {
        "n": len(diffs),
        "seeds": seeds,
        "mean": None,
        "sd": None,
        "t_ci": None,
        "bootstrap_ci": None,
        "significant": False,
    }
    if not diffs:
        return out
    out["mean"] = statistics.fmean(diffs)
    if len(diffs) < 2:
        return out
    from scipy import stats

    sd = statistics.stdev(diffs)
    half = float(stats.t.ppf(0.975, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
    lo, hi = out["mean"] - half, out["mean"] + half
    out.update(sd=sd, t_ci=[lo, hi], bootstrap_ci=bootstrap_ci(diffs), significant=lo > 0 or hi < 0)
    return out


def bootstrap_ci(diffs: list[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list[float]:
    """95% percentile interval of the mean difference, resampling seeds with replacement (fixed rng)."""
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    return [float(lo), float(hi)]


def mean_sd(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "sd": None}
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None}


# ---------------------------------------------------------------------------------------------
# running the command line
# ---------------------------------------------------------------------------------------------
def cli_argv(cmd: list[str]) -> list[str]:
    """``bckd-pipeline ARGS`` as this interpreter runs it: ``python -m bckd_pipeline.cli ARGS`` is the same entry
    point, and keeps a PYTHONPATH that points at a work tree."""
    return [sys.executable, "-m", "bckd_pipeline.cli", *cmd[1:]]


def child_env(threads: int) -> dict[str, str]:
    """This environment with OpenMP and MKL held to ``threads`` threads."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
