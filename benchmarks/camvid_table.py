"""CamVid benchmark: teacher, student, logit KD, CWD, BCKD variants and the Table I ablation.

Every row is a real `bckd-pipeline` command (printed into results.json), run as a subprocess,
several at a time. Three phases:

1. the teacher, trained on the full train split;
2. tune: the student alone, logit KD and BCKD option variants, trained on four fifths of train and
   scored on the remaining fifth (`prepare_camvid.py` makes that split). The BCKD variant with the
   best tuning mIoU becomes the one used in phase 3; the real val split plays no part in choosing;
3. final: every row of the table, trained on train and reported on val, over --seeds.

    python benchmarks/prepare_camvid.py --src ../shared/data/camvid --dst .bench/camvid --size 144,192
    python benchmarks/camvid_table.py --root .bench/camvid --out .bench/results --jobs 4 --device cuda

Results: OUT/results.json (all rows with their commands and metrics) and OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import cli_argv

# BCKD option variants tried in the tuning phase: name -> --bckd overrides (+ alpha/beta).
VARIANTS: dict[str, list[str]] = {
    "literal": ["--bckd", "boundary_teacher=conv", "--bckd", "softmax_input=prob", "--bckd", "relation=dot"],
    "semantic": [],
    "semantic-b5": ["--beta", "5"],
    "semantic-a1-b5": ["--alpha", "1", "--beta", "5"],
    "semantic-b0.5": ["--beta", "0.5"],
    "semantic-student-sem": ["--bckd", "boundary_student=semantic"],
    "semantic-student-sem-b5": ["--bckd", "boundary_student=semantic", "--beta", "5"],
    "semantic-mse": ["--bckd", "context_loss=mse"],
    "semantic-b5-g4": ["--beta", "5", "--bckd", "grid_stride=4"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, required=True, help="prepared CamVid copy (prepare_camvid.py)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--teacher-epochs", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--tune-epochs", type=int, default=20)
    ap.add_argument("--num-workers", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--mfs-images", type=int, default=16)
    ap.add_argument("--size", help="H,W: --resize and --crop for every run (default: the camvid preset's)")
    ap.add_argument("--chosen", help="skip tuning and use this BCKD variant (a name in VARIANTS)")
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds; no new job starts after it")
    ap.add_argument(
        "--rows",
        help="only these final rows over every seed (names from student,kd,cwd,bckd,kd+bckd); "
        "default: the whole table (headline rows over every seed, ablation rows on the first)",
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    seeds = [int(s) for s in args.seeds.split(",")]
    tune_root = args.root.with_name(args.root.name + "_tune")
    results: list[dict] = []
    common = ["--preset", "camvid", "--train-device", args.device, "--num-workers", str(args.num_workers)]
    common += ["--no-progress"]
    if args.size:
        common += ["--resize", args.size, "--crop", args.size]

    def job(name: str, argv: list[str], out: Path, phase: str, seed: int) -> dict:
        if time.time() - start > args.deadline:
            return {"name": name, "phase": phase, "seed": seed, "status": "skipped (deadline)"}
        cmd = ["bckd-pipeline", *argv, "--out", str(out), "--seed", str(seed), *common]
        t0 = time.time()
        proc = subprocess.run(cli_argv(cmd), capture_output=True, text=True)
        row = {
            "name": name,
            "phase": phase,
            "seed": seed,
            "command": shlex.join(cmd),
            "seconds": round(time.time() - t0, 1),
            "returncode": proc.returncode,
        }
        if proc.returncode != 0:
            row["status"] = "failed"
            row["stderr"] = proc.stderr[-3000:]
        else:
            m = json.loads((out / "metrics.json").read_text())
            row.update(
                status="ok",
                miou=m["miou"],
                boundary_f=m["boundary_f"].get("f_score"),
                lhd=m["lhd"].get("mean"),
                lhd_vs_teacher=(m.get("lhd_vs_reference") or {}).get("mean"),
                fragment_ratio=m["fragments"].get("fragment_ratio"),
                mfs=(m.get("mfs") or {}).get("mean"),
                per_class_iou=m.get("per_class_iou"),
                train_seconds=m["train"]["seconds"],
                last_terms=_last_terms(m["train"]["history"]),
            )
        results.append(row)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        print(f"[{time.time() - start:6.0f}s] {phase} {name} seed={seed}: {row.get('miou', row['status'])}", flush=True)
        return row

    pool = ThreadPoolExecutor(args.jobs)
    job(
        "teacher",
        ["train-teacher", "--data", f"camvid:{args.root}", "--epochs", str(args.teacher_epochs)],
        args.out / "teacher",
        "final",
        0,
    )
    teacher = args.out / "teacher" / "teacher.pt"

    def distill(name, extra, phase, seed, root, epochs):
        argv = [
            "distill",
            "--teacher",
            str(teacher),
            "--data",
            f"camvid:{root}",
            "--epochs",
            str(epochs),
            "--mfs-images",
            str(args.mfs_images),
            *extra,
        ]
        return pool.submit(job, name, argv, args.out / phase / f"{name}-s{seed}", phase, seed)

    # Phase 2: tuning. Students train on 4/5 of train and are scored on the other 1/5; the teacher
    # saw those images, but distillation only ever shows it the students' training images.
    tune_jobs = {}
    if not args.chosen:
        tune_jobs = {
            "none": distill("none", ["--kd", "none"], "tune", 0, tune_root, args.tune_epochs),
            "kd": distill("kd", ["--kd", "kd"], "tune", 0, tune_root, args.tune_epochs),
        }
        for v in args.variants.split(","):
            tune_jobs[v] = distill(v, ["--kd", "bckd", *VARIANTS[v]], "tune", 0, tune_root, args.tune_epochs)
    s0, rest = seeds[0], seeds[1:]
    baselines = [("student", ["--kd", "none"]), ("kd", ["--kd", "kd"]), ("cwd", ["--kd", "cwd"])]
    if args.rows:
        return _only_rows(args, seeds, distill, pool, start, results)
    final = [distill(n, e, "final", s0, args.root, args.epochs) for n, e in baselines[:2]]
    tuned = {k: f.result() for k, f in tune_jobs.items()}
    ok = {k: r["miou"] for k, r in tuned.items() if r.get("status") == "ok" and k in VARIANTS}
    best = args.chosen or (max(ok, key=ok.get) if ok else "semantic")
    chosen = VARIANTS[best]
    print(f"chosen BCKD variant: {best} {chosen}", flush=True)
    # Phase 3: the BCKD rows with the chosen options and the Table I ablation (first seed), then
    # the remaining seeds of the headline rows.
    bckd_rows = [("bckd", ["--kd", "bckd", *chosen]), ("kd+bckd", ["--kd", "kd+bckd", *chosen])]
    extras = baselines[2:] + [
        ("ablation: boundary only", ["--kd", "bckd", "--no-context", "--no-decay", *chosen]),
        ("ablation: context only", ["--kd", "bckd", "--no-boundary", "--no-decay", *chosen]),
        ("ablation: both, no decay", ["--kd", "bckd", "--no-decay", *chosen]),
        ("bckd literal (spec defaults)", ["--kd", "bckd", *VARIANTS["literal"]]),
        ("cwd+bckd", ["--kd", "cwd+bckd", *chosen]),
    ]
    for name, extra in bckd_rows + extras:
        final.append(distill(name, extra, "final", s0, args.root, args.epochs))
    for seed in rest:
        for name, extra in bckd_rows + baselines:
            final.append(distill(name, extra, "final", seed, args.root, args.epochs))
    [f.result() for f in final]
    pool.shutdown()
    summary = {"chosen_variant": best, "chosen_args": chosen, "seconds": round(time.time() - start, 1), "rows": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    (args.out / "table.md").write_text(table(results, best))
    print(table(results, best))


def _only_rows(args, seeds, distill, pool, start, results) -> None:
    """``--rows``: the named final rows for every seed, BCKD with the chosen (default) options."""
    chosen = VARIANTS[args.chosen or "semantic"]
    known = {"student": ["--kd", "none"], "kd": ["--kd", "kd"], "cwd": ["--kd", "cwd"]}
    known |= {"bckd": ["--kd", "bckd", *chosen], "kd+bckd": ["--kd", "kd+bckd", *chosen]}
    names = args.rows.split(",")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--rows {','.join(unknown)}: not a row. Allowed: {', '.join(known)}.")
    jobs = [distill(n, known[n], "final", seed, args.root, args.epochs) for seed in seeds for n in names]
    [f.result() for f in jobs]
    pool.shutdown()
    best = args.chosen or "semantic"
    summary = {"chosen_variant": best, "chosen_args": chosen, "seconds": round(time.time() - start, 1), "rows": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    (args.out / "table.md").write_text(table(results, best))
    print(table(results, best))


def _last_terms(history: list[dict]) -> dict:
    terms = [h for h in history if "loss" in h]
    return {k: round(v, 5) for k, v in terms[-1].items() if k.startswith(("loss", "bckd"))} if terms else {}


def table(results: list[dict], best: str) -> str:
    lines = [f"Chosen BCKD variant (on the tuning split): `{best}`", ""]
    for phase, title in (("final", "Final (train -> val)"), ("tune", "Tuning (4/5 train -> 1/5 train)")):
        rows: dict[str, list[dict]] = {}
        for r in results:
            if r["phase"] == phase and r.get("status") == "ok":
                rows.setdefault(r["name"], []).append(r)
        lines += [
            f"### {title}",
            "",
            "| row | seeds | mIoU | boundary F | LHD (GT) | LHD (teacher) | fragments | MFS |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, rs in rows.items():

            def cell(key, rs=rs):
                vals = [r[key] for r in rs if r.get(key) is not None]
                if not vals:
                    return "-"
                m = statistics.mean(vals)
                return f"{m:.2f}" + (f" ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else "")

            lines.append(
                f"| {name} | {len(rs)} | {cell('miou')} | {cell('boundary_f')} | {cell('lhd')} | "
                f"{cell('lhd_vs_teacher')} | {cell('fragment_ratio')} | {cell('mfs')} |"
            )
        lines.append("")
    failed = [r for r in results if r.get("status") != "ok"]
    if failed:
        lines += [
            "Failed or skipped: " + ", ".join(f"{r['phase']}/{r['name']}/s{r['seed']} ({r['status']})" for r in failed),
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
