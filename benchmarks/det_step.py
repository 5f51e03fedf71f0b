"""Wall time of one detector training step on this machine (forward, FCOS losses, backward, SGD update).

    nice -n 10 python benchmarks/det_step.py --presets fcos-lite0,fcos-r18,fcos-r50 --batch 8 --size 192,256

FP32, random weights (the time does not depend on them), a fixed synthetic batch (uniform noise images, four
boxes per image of 16-160 px, five classes). ``--warmup`` untimed rounds, then ``--steps`` timed ones; each round
runs one step of every preset in turn, so a busy spell of the shared machine slows every row alike. The median
and every step's time are recorded, with the load average before and after and torch's thread count.
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


def time_presets(names: list[str], args) -> dict:
    """Rounds of one step per preset, interleaved, so that a busy spell of the shared machine slows every row."""
    steps = {name: build_step(name, args) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.warmup + args.steps):
        for name, (_, step) in steps.items():
            t0 = time.perf_counter()
            loss = step()
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[name].append(dt)
            print(f"{name} round {i}: {dt:.2f} s, loss {loss:.3f}", file=sys.stderr)
    return {
        name: {
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "step_s_median": round(statistics.median(times[name]), 3),
            "step_s": [round(t, 3) for t in times[name]],
        }
        for name, (model, _) in steps.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="fcos-lite0,fcos-r18,fcos-r50")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", default="192,256", help="H,W")
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "docs/results/det_step_cpu.json")
    args = ap.parse_args()
    load_before = os.getloadavg()
    rows = time_presets(args.presets.split(","), args)
    result = {
        "command": "python benchmarks/det_step.py " + " ".join(sys.argv[1:]),
        "what": "one FCOS training step (forward, losses, backward, SGD), fp32, synthetic batch; "
        "median of interleaved rounds",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "torch_threads": torch.get_num_threads(),
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
