"""Wall time of one detector training step on this machine (forward, FCOS losses, backward, SGD update), and
of one distillation step against the student's plain step.

    nice -n 10 python benchmarks/det_step.py --presets fcos-lite0,fcos-r18,fcos-r50 --threads 1,2
    nice -n 10 python benchmarks/det_step.py --presets "" --distill fcos-lite0:fcos-r50 --threads 1 \
        --warmup 1 --steps 4 --out docs/results/det_cost_cpu.json

FP32, random weights (the time does not depend on them), a fixed synthetic batch (uniform noise images, four
boxes per image of 16-160 px, five classes). ``--warmup`` untimed rounds, then ``--steps`` timed ones; each round
runs one step of every preset in turn, so a busy spell of the shared machine slows every row alike. Each preset
runs at every ``--threads`` count: on a shared 2-core machine two OpenMP threads wait at every barrier for a
thread the scheduler has taken away, so one thread can be the faster setting there. The median, the minimum and
every step's time are recorded, with the load average before and after.

``--distill STUDENT:TEACHER`` adds one row per ``--kd`` method (``distill/detection_task.py``'s
``DET_KD_CHOICES``): ``none`` is the student's plain step (``DetTrainTask``, no teacher), the others a
``DetDistillTask`` step with the frozen teacher's forward, the distillation terms and their modules (BCKD's
projections, PKD's adapters) in the optimiser. They run in the same interleaved rounds as the presets; each row
also records its time over the plain student step's in the same round (the median of those paired ratios).
Results: docs/results/det_step_cpu.json (presets), docs/results/det_cost_cpu.json (distillation).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
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


def build_distill_step(student_name: str, teacher_name: str, kd: str, args):
    """One optimisation step of the student trained with ``kd`` (``none``: alone, with ``DetTrainTask``)."""
    from bckd_pipeline.configs import DistillConfig
    from bckd_pipeline.distill.detection import build_detector
    from bckd_pipeline.distill.detection_task import DetDistillTask, DetTrainTask

    torch.manual_seed(0)
    hw = tuple(int(v) for v in args.size.split(","))
    student = build_detector(student_name, args.classes)
    images, targets = synthetic_batch(args.batch, hw, args.classes)
    if kd == "none":
        task = DetTrainTask(student).train()
    else:
        teacher = build_detector(teacher_name, args.classes)
        cfg = DistillConfig(kd="none")  # the terms come from kd=; the config gives BCKD's published settings
        task = DetDistillTask(student, teacher, cfg=cfg, example_input=images[:1], kd=kd).train()
    params = task.trainable_parameters()
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def step() -> float:
        out = task(images, targets)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return float(out["loss"].detach())

    return student, step, round(sum(p.numel() for p in params) / 1e6, 3)


def time_steps(steps: dict[str, Callable[[], float]], threads: list[int], args) -> dict[str, list[float]]:
    """Rounds of one step per (thread count, name), interleaved, so that a busy spell of the shared machine
    slows every row alike. Keyed ``<name>@<threads>t``: each row's timed steps, round by round."""
    rows = [(f"{name}@{t}t", name, t) for t in threads for name in steps]
    times: dict[str, list[float]] = {key: [] for key, _, _ in rows}
    for i in range(args.warmup + args.steps):
        for key, name, t in rows:
            torch.set_num_threads(t)
            t0 = time.perf_counter()
            loss = steps[name]()
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[key].append(dt)
            print(f"{key} round {i}: {dt:.2f} s, loss {loss:.3f}", file=sys.stderr)
    return times


def summary(times: list[float]) -> dict:
    return {
        "step_s_median": round(statistics.median(times), 3),
        "step_s_min": round(min(times), 3),
        "step_s": [round(v, 3) for v in times],
    }


def time_rows(names: list[str], distill: tuple[str, str] | None, kds: list[str], threads: list[int], args):
    """The preset rows (``<preset>@<threads>t``) and the distillation rows (``<kd>@<threads>t``), timed in the
    same interleaved rounds."""
    models, steps, trainable = {}, {}, {}
    for name in names:
        models[name], steps[name] = build_step(name, args)
    if distill is not None:
        for kd in kds:
            key = f"kd={kd}"
            models[key], steps[key], trainable[key] = build_distill_step(*distill, kd, args)
    times = time_steps(steps, threads, args)
    presets = {
        f"{name}@{t}t": {
            "preset": name,
            "threads": t,
            "params_m": round(sum(p.numel() for p in models[name].parameters()) / 1e6, 3),
            **summary(times[f"{name}@{t}t"]),
        }
        for t in threads
        for name in names
    }
    distilled = {}
    if distill is not None:
        for t in threads:
            plain = times[f"kd=none@{t}t"]
            for kd in kds:
                mine = times[f"kd={kd}@{t}t"]
                distilled[f"{kd}@{t}t"] = {
                    "kd": kd,
                    "threads": t,
                    "trainable_params_m": trainable[f"kd={kd}"],
                    **summary(mine),
                    "over_student_paired_median": round(
                        statistics.median(a / b for a, b in zip(mine, plain, strict=True)), 3
                    ),
                    "over_student_of_medians": round(statistics.median(mine) / statistics.median(plain), 3),
                }
    return presets, distilled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="fcos-lite0,fcos-r18,fcos-r50", help="comma-separated; '' for none")
    ap.add_argument("--distill", default=None, help="STUDENT:TEACHER presets: add the distillation rows")
    ap.add_argument("--kd", default="none,kd,pkd,bckd,kd+bckd,pkd+bckd", help="methods of the distillation rows")
    ap.add_argument("--note", default="", help="a sentence on the conditions of the run, recorded in the JSON")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", default="192,256", help="H,W")
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--threads", default="1,2", help="torch thread counts to time, comma-separated")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "docs/results/det_step_cpu.json")
    args = ap.parse_args()
    load_before = os.getloadavg()
    started = time.perf_counter()
    threads = [int(t) for t in args.threads.split(",")]
    names = [n for n in args.presets.split(",") if n]
    distill = tuple(args.distill.split(":")) if args.distill else None
    kds = args.kd.split(",")
    if distill is not None and (len(distill) != 2 or "none" not in kds):
        ap.error("--distill takes STUDENT:TEACHER, and --kd must include none (the plain student step)")
    if not names and distill is None:
        ap.error("nothing to time: give --presets, --distill or both")
    rows, distilled = time_rows(names, distill, kds, threads, args)
    result = {
        "command": shlex.join(["python", "benchmarks/det_step.py", *sys.argv[1:]]),
        "what": "one FCOS training step (forward, losses, backward, SGD), fp32, synthetic batch; "
        "median of interleaved rounds",
        "note": args.note,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "note")},
        "device": "cpu",
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "machine": {**cpu_summary(), "lscpu": lscpu()},
        "environment": environment(),
        "versions": versions(),
        "rows": rows,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if distill is not None:
        result["distillation"] = {
            "student": distill[0],
            "teacher": distill[1],
            "what": "the student's step with each --kd method; none is the student alone (no teacher)",
            "rows": distilled,
        }
    write_json_atomic(args.out, result)
    print(args.out)


if __name__ == "__main__":
    main()
