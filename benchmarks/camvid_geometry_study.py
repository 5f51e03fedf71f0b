"""CamVid at 96x128: BCKD with a fused grid and boundary radius scaled to the input (grid_stride 4, radius 3).

At 96x128 the default grid_stride 8 leaves a 12x16 fused grid, on which a radius-5 boundary path
spans most of the image. This study tries the smaller geometry (the smoke preset's) with the
paper's beta 50 and with beta 5, alone and on top of logit KD, chooses on the tuning split
(four fifths of train for training, the other fifth for scoring; prepare_camvid.py makes it), then
trains the chosen row and logit KD on the full train split and reports them on val.

    python benchmarks/prepare_camvid.py --src ../shared/data/camvid --dst .bench/camvid96 --size 96,128
    OMP_NUM_THREADS=1 python benchmarks/camvid_geometry_study.py --root .bench/camvid96 \\
        --teacher .bench/cpu96/teacher/teacher.pt --out .bench/study

The teacher is the CPU table's (docs/benchmarks.md section 1). Results: OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import cli_argv

GEOMETRY = ["--bckd", "grid_stride=4", "--bckd", "radius=3"]
TUNE = {
    "none": ["--kd", "none"],
    "kd": ["--kd", "kd"],
    "bckd-g4r3": ["--kd", "bckd", *GEOMETRY],
    "bckd-g4r3-b5": ["--kd", "bckd", *GEOMETRY, "--beta", "5"],
    "kd+bckd-g4r3": ["--kd", "kd+bckd", *GEOMETRY],
    "kd+bckd-g4r3-b5": ["--kd", "kd+bckd", *GEOMETRY, "--beta", "5"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="prepared CamVid at 96x128 (its _tune copy beside it)")
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--tune-epochs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tune_root = args.root.with_name(args.root.name + "_tune")
    common = [
        "--preset",
        "camvid",
        "--train-device",
        "cpu",
        "--num-workers",
        "0",
        "--no-progress",
        "--resize",
        "96,128",
        "--crop",
        "96,128",
        "--mfs-images",
        "8",
        "--seed",
        str(args.seed),
    ]
    results: list[dict] = []
    start = time.time()

    def job(phase: str, name: str, extra: list[str], root: Path, epochs: int) -> dict:
        out = args.out / phase / name
        cmd = [
            "bckd-pipeline",
            "distill",
            "--teacher",
            str(args.teacher),
            "--data",
            f"camvid:{root}",
            "--epochs",
            str(epochs),
            *extra,
            *common,
            "--out",
            str(out),
        ]
        t0 = time.time()
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        proc = subprocess.run(cli_argv(cmd), capture_output=True, text=True, env=env)
        row = {
            "phase": phase,
            "name": name,
            "command": shlex.join(cmd),
            "returncode": proc.returncode,
            "seconds": round(time.time() - t0),
        }
        if proc.returncode == 0:
            m = json.loads((out / "metrics.json").read_text())
            row.update(
                miou=m["miou"],
                boundary_f=m["boundary_f"].get("f_score"),
                lhd=m["lhd"].get("mean"),
                per_class_iou=m.get("per_class_iou"),
            )
        else:
            row["stderr"] = proc.stderr[-2000:]
        results.append(row)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        print(f"[{time.time() - start:5.0f}s] {phase} {name}: {row.get('miou', 'FAILED')}", flush=True)
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        tuned = {n: pool.submit(job, "tune", n, e, tune_root, args.tune_epochs) for n, e in TUNE.items()}
        scores = {n: f.result().get("miou") for n, f in tuned.items()}
        candidates = {n: s for n, s in scores.items() if s is not None and n not in ("none", "kd")}
        best = max(candidates, key=candidates.get)
        print(f"chosen on the tuning split: {best} ({candidates})", flush=True)
        final = [
            pool.submit(job, "final", best, TUNE[best], args.root, args.epochs),
            pool.submit(job, "final", "kd", TUNE["kd"], args.root, args.epochs),
        ]
        [f.result() for f in final]


if __name__ == "__main__":
    main()
