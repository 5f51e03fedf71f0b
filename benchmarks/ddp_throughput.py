"""Training throughput of `distill` with 1 process and with `torchrun --nproc_per_node=2`.

    python benchmarks/ddp_throughput.py --out .bench/ddp --iters 40

Same global batch (8), data (the demo set at 96x128), models (pspnet-r50 teacher,
deeplabv3plus-mbv2 student) and BCKD defaults in both; the machine's cores are split evenly
between processes (OMP_NUM_THREADS). Reports samples/s of the training steps (evaluation excluded),
as written by the trainer into metrics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import cli_argv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cli = cli_argv(["bckd-pipeline"])
    common = ["--preset", "demo", "--train-device", args.device, "--num-workers", "0", "--no-progress"]
    teacher = args.out / "teacher"
    run = dict(check=True, capture_output=True, text=True)
    subprocess.run([*cli, "train-teacher", *common, "--iters", "1", "--out", str(teacher)], **run)
    distill = ["distill", *common, "--teacher", str(teacher / "teacher.pt"), "--kd", "bckd",
               "--iters", str(args.iters), "--mfs-images", "0", "--checkpoint-every", "0"]  # fmt: skip
    results = {}
    for procs in (1, 2):
        out = args.out / f"p{procs}"
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.cores // procs))}
        launcher = cli if procs == 1 else [sys.executable, "-m", "torch.distributed.run",
                                           f"--nproc_per_node={procs}", "-m", "bckd_pipeline.cli"]  # fmt: skip
        subprocess.run([*launcher, *distill, "--out", str(out)], env=env, **run)
        train = json.loads((out / "metrics.json").read_text())["train"]
        results[procs] = {
            "samples_per_second": train["samples_per_second"],
            "threads_per_process": env["OMP_NUM_THREADS"],
        }
    results["speedup"] = round(results[2]["samples_per_second"] / results[1]["samples_per_second"], 3)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
