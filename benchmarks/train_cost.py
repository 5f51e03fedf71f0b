"""Training cost per iteration (student alone, + logit KD, + BCKD) and the context loss's peak memory.

    python benchmarks/train_cost.py --device cpu --crop 96,128 --batch 8 --processes 3
    python benchmarks/train_cost.py --memory-only --device cuda

Time: wall time of one optimisation step (teacher forward included for KD and BCKD), same batch and
crop for every row, rows interleaved step by step (--warmup rounds, then --steps timed rounds) so
that a busy spell of a shared machine slows every row alike, in --processes fresh processes whose rounds
are pooled; the median per row, and the median of the per-round ratios to KD with a bootstrap interval.
As in training, half of the batch is a padded crop (its bottom quarter marked as padding), so the masked path is timed;
BCKD uses its defaults, including the teacher's decoder tap.
Memory: the context loss alone (Eq. 4-5) at a 64x64 feature grid (512x512 crops, stride 8),
batch 8, C_s = 256 and C_t = 1024 as in the spec: the exact row-chunked version against the
naive full-matrix one. On CUDA the peak is torch.cuda.max_memory_allocated above the inputs; on
CPU (Linux) it is the process's peak resident memory above its resident memory once the inputs exist,
the peak reset there through /proc/self/clear_refs, in a fresh subprocess per variant.
"""

from __future__ import annotations

import argparse
import json
import random
from statistics import median
import subprocess
import sys
import time

import torch
from common import cpu_summary


ROWS = ("none", "kd", "bckd", "kd+bckd")


def build_step(kd: str, args):
    """One optimisation step of a row, as the trainer runs it (a closure over its own models)."""
    from bckd_pipeline.configs import BCKDConfig, DistillConfig
    from bckd_pipeline.data.base import PAD_LABEL
    from bckd_pipeline.distill.models import build_model, default_taps
    from bckd_pipeline.distill.task import SegDistillTask, SegTrainTask

    torch.manual_seed(0)
    dev = torch.device(args.device)
    student = build_model(args.student, 11)
    x = torch.randn(args.batch, 3, *args.crop, device=dev)
    y = torch.randint(0, 11, (args.batch, *args.crop), device=dev)
    y[: args.batch // 2, -args.crop[0] // 4 :] = PAD_LABEL
    if kd == "none":
        task = SegTrainTask(student)
    else:
        teacher = build_model(args.teacher, 11)
        task = SegDistillTask(
            student,
            teacher,
            cfg=DistillConfig(kd=kd, bckd=BCKDConfig()),
            student_taps=default_taps(args.student),
            teacher_taps=default_taps(args.teacher, role="teacher"),
            example_input=torch.randn(2, 3, *args.crop),
        )
    task.to(dev).train()
    opt = torch.optim.SGD(task.trainable_parameters(), lr=0.01, momentum=0.9)
    # The trainer's precision: bf16 autocast on CUDA (--precision auto), fp32 on CPU.
    dtype = torch.bfloat16 if dev.type == "cuda" and args.precision == "auto" else None

    def step() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = task(x, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return step


def round_times(args) -> dict[str, list[float]]:
    """Seconds per step of every row, measured interleaved: each round runs one step of every row in turn,
    so a slow spell of a shared machine lands on all rows alike."""
    steps = {kd: build_step(kd, args) for kd in ROWS}
    times: dict[str, list[float]] = {kd: [] for kd in ROWS}
    for i in range(args.warmup + args.steps):
        for kd in ROWS:
            t = steps[kd]()
            if i >= args.warmup:
                times[kd].append(t)
    return times


def step_times(args) -> dict:
    """The rounds of ``--processes`` fresh processes, pooled (a process's memory layout shifts every row's time
    by a few percent, differently from one process to the next, which interleaving cannot cancel). Per row:
    mean and median over the rounds; per ratio: the median over rounds of the round's ratio (the paired
    estimate) with its bootstrap interval, the ratio of the medians, and the paired estimate of each process."""
    runs = []
    for _ in range(args.processes):
        command = [sys.executable, __file__, "--round-times", *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"train_cost: a timing process failed:\n{done.stderr[-2000:]}")
        runs.append(json.loads(done.stdout))
    times = {kd: [t for run in runs for t in run[kd]] for kd in ROWS}
    out = {
        "seconds_per_step": {kd: round(median(v), 4) for kd, v in times.items()},
        "mean_seconds_per_step": {kd: round(sum(v) / len(v), 4) for kd, v in times.items()},
        "rounds": args.steps,
        "processes": args.processes,
    }
    for row in ("bckd", "kd+bckd"):
        ratios = [b / k for b, k in zip(times[row], times["kd"], strict=True)]
        out[f"{row}_over_kd"] = round(out["seconds_per_step"][row] / out["seconds_per_step"]["kd"], 3)
        out[f"{row}_over_kd_paired"] = round(median(ratios), 3)
        out[f"{row}_over_kd_paired_interval95"] = [round(v, 3) for v in median_interval(ratios)]
        out[f"{row}_over_kd_paired_per_process"] = [
            round(median(b / k for b, k in zip(run[row], run["kd"], strict=True)), 3) for run in runs
        ]
    return out


def median_interval(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median (rounds resampled with replacement, fixed seed)."""
    rng = random.Random(seed)
    medians = sorted(median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def naive_relation_kl(qs, qt, ss, st):
    rs = (torch.einsum("ncl,ncm->nlm", qs, qs) * ss).log_softmax(-1)
    with torch.no_grad():
        lt = (torch.einsum("ncl,ncm->nlm", qt, qt) * st).log_softmax(-1)
    return (lt.exp() * (lt - rs)).sum(-1).mean()


def context_peak(variant: str, device: str, batch: int, grid: int) -> dict:
    from bckd_pipeline.distill.losses import relation_kl

    dev = torch.device(device)
    torch.manual_seed(0)
    qs = torch.randn(batch, 256, grid * grid, device=dev, requires_grad=True)
    qt = torch.randn(batch, 1024, grid * grid, device=dev)
    ss, st = 256**-0.5, 1024**-0.5
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        # Reset the kernel's high-water mark to the current resident set, so the peak is this loss's alone.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _proc_status_bytes("VmRSS")
    t0 = time.perf_counter()
    if variant == "chunked":
        loss = relation_kl(qs, qt, student_scale=ss, teacher_scale=st, chunk=512)
    else:
        loss = naive_relation_kl(qs, qt, ss, st)
    loss.backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _proc_status_bytes("VmHWM") - base
    return {
        "variant": variant,
        "device": device,
        "batch": batch,
        "grid": f"{grid}x{grid}",
        "peak_gib": round(peak / 2**30, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "loss": float(loss),
    }


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024  # reported in kB


def _machine() -> dict:
    """CPU model and vector ISA (latency means nothing without them), and the GPU when used."""
    info = cpu_summary()
    info["threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--crop", default="96,128")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--teacher", default="pspnet-r50")
    ap.add_argument("--student", default="deeplabv3plus-mbv2")
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--time-only", action="store_true")
    ap.add_argument("--precision", default="auto", help="auto: bf16 autocast on CUDA as the trainer does; fp32")
    ap.add_argument("--processes", type=int, default=1, help="fresh processes whose rounds are pooled")
    ap.add_argument("--context-peak", help=argparse.SUPPRESS)  # internal: one variant in this process
    ap.add_argument("--round-times", action="store_true", help=argparse.SUPPRESS)  # internal: one timing process
    args = ap.parse_args()
    args.crop = tuple(int(v) for v in args.crop.split(","))
    if args.context_peak:
        print(json.dumps(context_peak(args.context_peak, args.device, 8, 64)))
        return
    if args.round_times:
        print(json.dumps(round_times(args)))
        return
    result: dict = {
        "command": "python " + " ".join(sys.argv),
        "machine": _machine(),
        "device": args.device,
        "crop": args.crop,
        "batch": args.batch,
        "teacher": args.teacher,
        "student": args.student,
        "torch": torch.__version__,
    }
    if not args.memory_only:
        result.update(step_times(args))
    result["context_memory"] = []
    for variant in () if args.time_only else ("chunked", "naive"):
        out = subprocess.run(
            [sys.executable, __file__, "--device", args.device, "--context-peak", variant],
            capture_output=True,
            text=True,
        )
        result["context_memory"].append(
            json.loads(out.stdout) if out.returncode == 0 else {"variant": variant, "error": out.stderr[-500:]}
        )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
