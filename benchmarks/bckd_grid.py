"""Merge paired-seed studies run at several input sizes into one results file: the grid-size table.

Each ``--study`` is a file written by ``benchmarks/record_command.py`` around a ``bckd_study.py`` command, with
the study's ``results.json`` embedded as ``results`` (the command, commit, machine, ISA, versions and wall time
come from the record). Studies of one size must share the teacher (sha256), the data, the input size and the
schedule: their rows are then paired per seed across studies (a size's seeds may be split over studies run side
by side). A tag renames a study's rows, so a variant run in its own folder (``--bckd-args`` applies to every BCKD
row of a study) keeps its own name:

    python benchmarks/bckd_grid.py --json docs/results/bckd_grid_cpu.json \\
        --study 96x128=.bench/grid96/record.json --study 96x128:pixel=.bench/grid96-pixel/record.json \\
        --study 192x256=.bench/grid192/record.json --study 192x256=.bench/grid192-s3/record.json \\
        --study 192x256:pixel=.bench/grid192-pixel/record.json

Per size: every row's mean ± sd over seeds (mIoU, boundary F), and every row's paired difference against
``kd+lc``, ``kd`` and ``student`` where those rows exist (95% paired-t and bootstrap intervals,
``common.paired``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import mean_sd, paired, write_json_atomic  # noqa: E402

REFERENCES = ("kd+lc", "kd", "student")  # rows every other row is paired against, where present
METRICS = ("miou", "boundary_f")
# Settings that must agree between studies of one size for their rows to be paired per seed. The seeds need not:
# one size's seeds may be split over studies run side by side (a row+seed twice is refused in per_seed).
SHARED_SETTINGS = ("data", "size", "epochs", "iters", "preset", "student_model", "pretrained_student")
GRID_STRIDE = 8  # BCKD's grid is the input at 1/8 (docs/bckd.md)


class GridError(ValueError):
    """A study that cannot be paired with the others of its size."""


def parse_study(text: str) -> tuple[str, str, Path]:
    """``SIZE[:TAG]=RECORD`` -> (size, tag, record path)."""
    key, sep, path = text.partition("=")
    size, _, tag = key.partition(":")
    h, x, w = size.partition("x")
    if not sep or not path or not x or not (h.isdigit() and w.isdigit()):
        raise GridError(f"--study {text!r}: expected SIZE[:TAG]=RECORD_JSON, e.g. 96x128:pixel=.bench/g/record.json")
    return size, tag, Path(path)


def load_study(size: str, tag: str, path: Path) -> dict:
    """The record and its embedded study results, checked to be a finished study at ``size``."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GridError(f"--study {size}={path}: cannot read it ({exc})") from exc
    results = record.get("results")
    if not isinstance(results, dict) or "jobs" not in results:
        raise GridError(
            f"{path}: no study results embedded; record the study with benchmarks/record_command.py "
            "--embed results=OUT/results.json -- python benchmarks/bckd_study.py ..."
        )
    if record.get("exit_code") != 0:
        raise GridError(f"{path}: the recorded study exited {record.get('exit_code')}; finish it first")
    if results["settings"]["size"].replace(",", "x") != size:
        raise GridError(f"{path}: the study ran at {results['settings']['size']}, not {size}")
    bad = [f"{j['row']} s{j['seed']}: {j['status']}" for j in results["jobs"] if j.get("status") != "ok"]
    if bad:
        raise GridError(f"{path}: runs not ok: {'; '.join(bad)}")
    return {"tag": tag, "path": str(path), "record": record, "results": results}


def check_pairable(size: str, studies: list[dict]) -> None:
    """Studies of one size share the teacher and every setting that decides a paired run."""
    first = studies[0]["results"]
    for s in studies[1:]:
        other = s["results"]
        if other["teacher"].get("sha256") != first["teacher"].get("sha256"):
            raise GridError(f"{size}: {s['path']} used another teacher than {studies[0]['path']} (sha256 differs)")
        for key in SHARED_SETTINGS:
            if other["settings"].get(key) != first["settings"].get(key):
                raise GridError(
                    f"{size}: {s['path']} has {key}={other['settings'].get(key)!r}, {studies[0]['path']} "
                    f"{first['settings'].get(key)!r}; studies of one size must share it"
                )


def row_name(row: str, tag: str) -> str:
    return f"{row}[{tag}]" if tag else row


def per_seed(studies: list[dict]) -> dict[str, dict[str, dict[int, float]]]:
    """row -> metric -> seed -> value, over the studies' ok runs (ablation runs left out)."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    for s in studies:
        for job in s["results"]["jobs"]:
            if job.get("kind", "row") != "row":
                continue
            name = row_name(job["row"], s["tag"])
            if any(name in table and job["seed"] in table[name][m] for m in METRICS):
                raise GridError(f"row {name} seed {job['seed']} appears twice; give the second study a tag")
            for m in METRICS:
                table.setdefault(name, {k: {} for k in METRICS})[m][job["seed"]] = job[m]
    return table


def train_seconds(studies: list[dict]) -> dict[str, float]:
    """row -> mean training seconds of its runs (as each run recorded them)."""
    out: dict[str, list[float]] = {}
    for s in studies:
        for job in s["results"]["jobs"]:
            if job.get("kind", "row") == "row" and job.get("train_seconds") is not None:
                out.setdefault(row_name(job["row"], s["tag"]), []).append(job["train_seconds"])
    return {k: sum(v) / len(v) for k, v in out.items()}


def size_summary(size: str, studies: list[dict]) -> dict:
    check_pairable(size, studies)
    table = per_seed(studies)
    seconds = train_seconds(studies)
    h, w = (int(v) for v in size.split("x"))
    rows = {
        name: {
            "n": len(vals["miou"]),
            "seeds": sorted(vals["miou"]),
            **{m: {**mean_sd([vals[m][k] for k in sorted(vals[m])]), "per_seed": vals[m]} for m in METRICS},
            "train_seconds_mean": seconds.get(name),
        }
        for name, vals in table.items()
    }
    comparisons = {}
    for ref in REFERENCES:
        if ref not in table:
            continue
        for name in table:
            if name == ref or f"{ref} - {name}" in comparisons:
                continue
            comparisons[f"{name} - {ref}"] = {m: paired(table[name][m], table[ref][m]) for m in METRICS}
    teacher = studies[0]["results"]["teacher"]
    return {
        "grid": f"{h // GRID_STRIDE}x{w // GRID_STRIDE}",
        "teacher": {k: teacher.get(k) for k in ("checkpoint", "sha256", "model", "miou", "boundary_f")},
        "settings_line": studies[0]["results"]["settings_line"],
        "studies": [
            {
                "tag": s["tag"],
                "record": s["path"],
                "command": s["record"]["command"],
                "git_commit": s["record"].get("git_commit"),
                "git_dirty": s["record"].get("git_dirty"),
                "bckd_args": s["results"]["settings"].get("bckd_args", ""),
                "rows": s["results"]["settings"]["row_list"],
                "study_seconds": s["results"].get("seconds"),
                "environment": s["results"].get("environment"),
            }
            for s in studies
        ],
        "rows": rows,
        "paired": comparisons,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", action="append", required=True, help="SIZE[:TAG]=RECORD_JSON, once per study")
    ap.add_argument("--json", type=Path, required=True, help="the results file to write")
    ap.add_argument(
        "--teacher-command",
        action="append",
        default=[],
        metavar="SIZE=COMMAND",
        help="the command that trained a size's teacher, when the study was given it (--teacher)",
    )
    args = ap.parse_args(argv)
    try:
        by_size: dict[str, list[dict]] = {}
        for text in args.study:
            size, tag, path = parse_study(text)
            by_size.setdefault(size, []).append(load_study(size, tag, path))
        sizes = {size: size_summary(size, studies) for size, studies in by_size.items()}
        for text in args.teacher_command:
            size, sep, command = text.partition("=")
            if not sep or size not in sizes:
                raise GridError(
                    f"--teacher-command {text[:40]!r}: expected SIZE=COMMAND with SIZE one of {list(sizes)}"
                )
            sizes[size]["teacher"]["command"] = command
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    records = [s["record"] for studies in by_size.values() for s in studies]
    out = {
        "what": "KD + L_c against KD + BCKD (and variants) at each input size: paired seeds, one teacher per size",
        "command": shlex.join(["python", "benchmarks/bckd_grid.py", *(argv if argv is not None else sys.argv[1:])]),
        # The studies' provenance (each record's command, commit, machine with its ISA, versions, wall time).
        "machine": records[0].get("machine"),
        "versions": records[0].get("versions"),
        "git_commit": records[0].get("git_commit"),
        # The recorded commands' wall time (a resumed study's record counts only its last, resuming command), and
        # the training seconds of every run as each run recorded them.
        "wall_s": sum(r.get("wall_s") or 0 for r in records),
        "run_train_seconds": sum(
            j.get("train_seconds") or 0 for studies in by_size.values() for s in studies for j in s["results"]["jobs"]
        ),
        "sizes": sizes,
    }
    write_json_atomic(args.json, out)
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
