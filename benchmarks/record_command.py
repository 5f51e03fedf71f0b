"""Run one command and write a results JSON with its provenance: the command, the commit (and a hash of the
diff when the tree has changes), the machine (CPU model and ISA, GPUs), library versions, the wall time, the
exit code, what it printed, and optionally JSON files the command wrote (a report.json).

    python benchmarks/record_command.py --json docs/results/quickstart_smoke_timed_cpu.json \\
        --embed report=/tmp/qs/report.json -- bckd-pipeline run --preset smoke --out /tmp/qs --no-progress

The command runs from the repository root with this checkout's bckd_pipeline first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout


def git_provenance() -> dict:
    """HEAD, whether the tree has changes, and the sha256 of ``git diff HEAD`` (tracked files) when it has."""
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    return {
        "git_commit": git("rev-parse", "HEAD").strip(),
        "git_dirty": dirty,
        "git_diff_sha256": hashlib.sha256(git("diff", "HEAD").encode()).hexdigest() if dirty else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, required=True, help="the results file to write")
    ap.add_argument("--embed", action="append", default=[], metavar="KEY=PATH", help="a JSON file to copy in")
    ap.add_argument("--what", default="", help="one sentence: what the command measures")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("give the command after --")

    from bckd_pipeline.machine import machine_facts, package_versions

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    provenance = git_provenance()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    record = {
        "what": args.what,
        "command": shlex.join(cmd),
        **provenance,
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round(wall, 2),
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": load_after,
        "cpu_count": os.cpu_count(),
        "exit_code": proc.returncode,
        "machine": machine_facts(),
        "versions": package_versions(),
        "stdout": proc.stdout,
        "stderr_tail": proc.stderr[-6000:],
    }
    for item in args.embed:
        key, _, path = item.partition("=")
        record[key] = json.loads(Path(path).read_text()) if Path(path).exists() else None
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"{args.json}: exit {proc.returncode}, {wall:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
