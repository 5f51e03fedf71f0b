"""Wall time of a fresh ``python -m bckd_pipeline.cli --help`` process per source tree, beside an empty interpreter.

    python benchmarks/help_time.py --runs 5 --out docs/results/help_time_cpu.json
    git worktree add /tmp/tree-old COMMIT
    python benchmarks/help_time.py --tree /tmp/tree-old --tree . --runs 5 --out docs/results/help_time_cpu.json

Each timed process starts from the tree's root with ``PYTHONPATH=<tree>``, so it imports that tree's
``bckd_pipeline`` (not an installed one), and runs with this interpreter. One round times every tree's ``--help``
and then ``python -c pass`` (the interpreter's own start-up), and ``--runs`` rounds are made, so that a busy
spell of a shared machine slows every command alike. Per command: every run's wall time and the median. The
record holds what a results file must: the command, the commit (and the diff's hash when dirty) of this
checkout and of every tree timed, the CPU model and ISA, the library versions and the wall time of the whole.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REPO, cpu_summary, git_state, versions, write_json_atomic  # noqa: E402

HELP = ("-m", "bckd_pipeline.cli", "--help")
EMPTY = ("-c", "pass")


def time_process(args: tuple[str, ...], cwd: Path) -> float:
    """Seconds from starting ``python ARGS`` in ``cwd`` (with ``PYTHONPATH=cwd``) to its exit; a failure raises."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"help_time: `python {shlex.join(args)}` in {cwd} exited {done.returncode}: {tail[0]}")
    return seconds


def time_rounds(trees: list[Path], runs: int) -> dict[str, list[float]]:
    """``runs`` rounds, each one ``--help`` per tree and one empty interpreter, keyed by tree path and "python -c
    pass": every run's seconds, round by round."""
    times: dict[str, list[float]] = {str(t): [] for t in trees} | {"python -c pass": []}
    for i in range(runs):
        for tree in trees:
            times[str(tree)].append(time_process(HELP, tree))
        times["python -c pass"].append(time_process(EMPTY, trees[0]))
        print(f"round {i + 1}/{runs}: " + ", ".join(f"{v[-1]:.3f} s" for v in times.values()), file=sys.stderr)
    return times


def summary(seconds: list[float]) -> dict:
    return {"median_s": round(statistics.median(seconds), 3), "runs_s": [round(s, 3) for s in seconds]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, action="append", help="a checkout to time (repeatable; default: this one)")
    ap.add_argument("--runs", type=int, default=5, help="rounds (fresh processes per command)")
    ap.add_argument("--out", type=Path, required=True, help="the results JSON to write")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error(f"--runs {args.runs}: give at least 1")
    trees = [t.resolve() for t in (args.tree or [REPO])]
    for tree in trees:
        if not (tree / "bckd_pipeline" / "__init__.py").is_file():
            ap.error(f"--tree {tree}: no bckd_pipeline package there; give the root of a checkout")
    load_before = os.getloadavg()
    started = time.perf_counter()
    times = time_rounds(trees, args.runs)
    record = {
        "what": "wall time of a fresh `python -m bckd_pipeline.cli --help` per tree (run from the tree's root with "
        "PYTHONPATH=<tree>), and of `python -c pass`, in interleaved rounds",
        "command": shlex.join(["python", "benchmarks/help_time.py", *(argv if argv is not None else sys.argv[1:])]),
        **git_state(),
        "device": "cpu",
        "machine": {**cpu_summary(), "logical_cores": os.cpu_count()},
        "python_executable": sys.executable,
        "versions": versions(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "trees": [{"path": str(t), **git_state(t), "help": summary(times[str(t)])} for t in trees],
        "python_-c_pass": summary(times["python -c pass"]),
        "wall_s": round(time.perf_counter() - started, 2),
    }
    write_json_atomic(args.out, record)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
