"""Wall time of one detector training step on this machine (forward, FCOS losses, backward, SGD update).

    nice -n 10 python benchmarks/det_step.py --presets fcos-lite0,fcos-r18,fcos-r50 --threads 1,2

FP32, random weights (the time does not depend on them), a fixed synthetic batch (uniform noise images, four
boxes per image of 16-160 px, five classes). ``--warmup`` untimed rounds, then ``--steps`` timed ones; each round
runs one step of every preset in turn, so a busy spell of the shared machine slows every row alike. Each preset
runs at every ``--threads`` count: on a shared 2-core machine two OpenMP threads wait at every barrier for a
thread the scheduler has taken away, so one thread can be the faster setting there. The median, the minimum and
every step's time are recorded, with the load average before and after.
Results: docs/results/det_step_cpu.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from common import REPO, cpu_summary, environment, lscpu, versions, write_json_atomic  # noqa: E402


def synthetic_batch(batch: int, hw: tuple[int, int], classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, *hw, generator=g)
    targets = []
    for _ in range(batch):
        wh = 16 + torch.rand(4, 2, generator=g) * 144
        xy = torch.rand(4, 2, generator=g) * (torch.tensor([hw[1], hw[0]]) - wh).clamp_min(1)
        boxes = torch.cat([xy, xy + wh], 1).clamp(max=torch.tensor([hw[1], hw[0], hw[1], hw[0]]).float())
        targets.append(
            {
                "boxes": boxes,
                "labels": torch.randint(0, classes, (4,), generator=g),
                "iscrowd": torch.zeros(4, dtype=torch.bool),
            }
        )
    return images, targets


def build_step(name: str, args):
    """One optimisation step of a preset, as a closure over its own model, optimiser and batch."""
    from bckd_pipeline.distill.detection import build_detector
    from bckd_pipeline.distill.detection_task import DetTrainTask

    torch.manual_seed(0)
    hw = tuple(int(v) for v in args.size.split(","))
    model = build_detector(name, args.classes)
    task = DetTrainTask(model).train()
    opt = torch.optim.SGD(task.trainable_parameters(), lr=0.01, momentum=0.9)
    images, targets = synthetic_batch(args.batch, hw, args.classes)

    def step() -> float:
        out = task(images, targets)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return float(out["loss"].detach())

    return model, step


def time_presets(names: list[str], threads: list[int], args) -> dict:
    """Rounds of one step per (thread count, preset), interleaved, so that a busy spell of the shared machine
    slows every row alike. Rows are keyed ``<preset>@<threads>t``."""
    steps = {name: build_step(name, args) for name in names}
    rows = [(f"{name}@{t}t", name, t) for t in threads for name in names]
    times: dict[str, list[float]] = {key: [] for key, _, _ in rows}
    for i in range(args.warmup + args.steps):
        for key, name, t in rows:
            torch.set_num_threads(t)
            t0 = time.perf_counter()
            loss = steps[name][1]()
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[key].append(dt)
            print(f"{key} round {i}: {dt:.2f} s, loss {loss:.3f}", file=sys.stderr)
    return {
        key: {
            "preset": name,
            "threads": t,
            "params_m": round(sum(p.numel() for p in steps[name][0].parameters()) / 1e6, 3),
            "step_s_median": round(statistics.median(times[key]), 3),
            "step_s_min": round(min(times[key]), 3),
            "step_s": [round(v, 3) for v in times[key]],
        }
        for key, name, t in rows
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="fcos-lite0,fcos-r18,fcos-r50")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", default="192,256", help="H,W")
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--threads", default="1,2", help="torch thread counts to time, comma-separated")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "docs/results/det_step_cpu.json")
    args = ap.parse_args()
    load_before = os.getloadavg()
    threads = [int(t) for t in args.threads.split(",")]
    rows = time_presets(args.presets.split(","), threads, args)
    result = {
        "command": "python benchmarks/det_step.py " + " ".join(sys.argv[1:]),
        "what": "one FCOS training step (forward, losses, backward, SGD), fp32, synthetic batch; "
        "median of interleaved rounds",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "machine": {**cpu_summary(), "lscpu": lscpu()},
        "environment": environment(),
        "versions": {**versions(), "timm": _version("timm"), "torchvision": _version("torchvision")},
        "rows": rows,
    }
    write_json_atomic(args.out, result)
    print(args.out)


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
