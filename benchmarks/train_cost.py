"""Training cost per iteration (teacher, student alone, + logit KD, + BCKD) and the context loss's peak memory.

    python benchmarks/train_cost.py --device cpu --crop 96,128 --batch 8 --processes 3
    python benchmarks/train_cost.py --device cpu --time-only --rows teacher,none,kd,kd+bckd --variants fp32,bf16
    python benchmarks/train_cost.py --memory-only --device cuda

Variants (``--variants``, interleaved with the rows): a precision, ``fp32``, ``bf16`` (autocast, as
``--train-precision bf16`` trains) or ``auto`` (bf16 on CUDA, fp32 on CPU), optionally followed by ``+cl``
(channels_last) and ``+compile`` (torch.compile), e.g. ``bf16+cl``. With several variants every row's time
under each variant is also given as a paired ratio to the first variant's.

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
import os
import random
import shlex
from statistics import median
import subprocess
import sys
import time

import torch
from common import cpu_summary, git_state, versions


ROWS = ("none", "kd", "bckd", "kd+bckd")
# "teacher": the teacher preset trained alone; the others are SegDistillTask's --kd choices ("none": the student alone).
ROW_CHOICES = ("teacher", *ROWS)


def parse_variant(variant: str) -> tuple[str, bool, bool]:
    """'bf16+cl+compile' -> (precision, channels_last, compile)."""
    precision, *flags = variant.split("+")
    if precision not in ("fp32", "bf16", "auto") or not set(flags) <= {"cl", "compile"}:
        raise SystemExit(f"train_cost: variant {variant!r}: want fp32|bf16|auto, then optional +cl, +compile")
    return precision, "cl" in flags, "compile" in flags


def autocast_dtype(precision: str, dev: torch.device) -> torch.dtype | None:
    """The trainer's autocast dtype for a precision: auto is bf16 on CUDA and fp32 on CPU."""
    if precision == "bf16" or (precision == "auto" and dev.type == "cuda"):
        return torch.bfloat16
    return None


def row_key(row: str, variant: str, args) -> str:
    """One variant: the row's name, as results without a variant dimension have it; else 'row variant'."""
    return row if len(args.variants) == 1 else f"{row} {variant}"


def build_step(kd: str, args, variant: str = "auto"):
    """One optimisation step of a row, as the trainer runs it (a closure over its own models)."""
    from bckd_pipeline.configs import BCKDConfig, DistillConfig
    from bckd_pipeline.data.base import PAD_LABEL
    from bckd_pipeline.distill.models import build_model, default_taps
    from bckd_pipeline.distill.task import SegDistillTask, SegTrainTask

    torch.manual_seed(0)
    dev = torch.device(args.device)
    precision, channels_last, compiled = parse_variant(variant)
    student = build_model(args.student, 11)
    x = torch.randn(args.batch, 3, *args.crop, device=dev)
    y = torch.randint(0, 11, (args.batch, *args.crop), device=dev)
    y[: args.batch // 2, -args.crop[0] // 4 :] = PAD_LABEL
    if kd == "teacher":
        task = SegTrainTask(build_model(args.teacher, 11))
    elif kd == "none":
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
    if channels_last:
        task.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(task.trainable_parameters(), lr=0.01, momentum=0.9)
    dtype = autocast_dtype(precision, dev)
    model = torch.compile(task) if compiled else task

    def step() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(x, y)["loss"]
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
    steps = {row_key(r, v, args): build_step(r, args, v) for r in args.rows for v in args.variants}
    times: dict[str, list[float]] = {key: [] for key in steps}
    for i in range(args.warmup + args.steps):
        for key, step in steps.items():
            t = step()
            if i >= args.warmup:
                times[key].append(t)
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
    keys = list(runs[0])
    times = {key: [t for run in runs for t in run[key]] for key in keys}
    out = {
        "seconds_per_step": {key: round(median(v), 4) for key, v in times.items()},
        "mean_seconds_per_step": {key: round(sum(v) / len(v), 4) for key, v in times.items()},
        "rounds": args.steps,
        "processes": args.processes,
    }

    def paired(prefix: str, key: str, base: str) -> None:
        ratios = [b / k for b, k in zip(times[key], times[base], strict=True)]
        out[prefix] = round(out["seconds_per_step"][key] / out["seconds_per_step"][base], 3)
        out[f"{prefix}_paired"] = round(median(ratios), 3)
        out[f"{prefix}_paired_interval95"] = [round(v, 3) for v in median_interval(ratios)]
        out[f"{prefix}_paired_per_process"] = [
            round(median(b / k for b, k in zip(run[key], run[base], strict=True)), 3) for run in runs
        ]

    for variant in args.variants:
        for row in ("bckd", "kd+bckd"):
            if row in args.rows and "kd" in args.rows:
                suffix = "" if len(args.variants) == 1 else f" {variant}"
                paired(f"{row}_over_kd{suffix}", row_key(row, variant, args), row_key("kd", variant, args))
    base = args.variants[0]
    for variant in args.variants[1:]:
        for row in args.rows:
            paired(f"{row} {variant}_over_{base}", row_key(row, variant, args), row_key(row, base, args))
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
    from bckd_pipeline.machine import cpu_facts, native_bf16

    info = cpu_summary()
    info["native_bf16"] = native_bf16(cpu_facts())
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
    ap.add_argument("--precision", default="auto", help="auto: bf16 autocast on CUDA, fp32 on CPU; fp32; bf16")
    ap.add_argument("--variants", help="comma list of fp32|bf16|auto[+cl][+compile] (default: --precision)")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROW_CHOICES)}")
    ap.add_argument("--processes", type=int, default=1, help="fresh processes whose rounds are pooled")
    ap.add_argument("--context-peak", help=argparse.SUPPRESS)  # internal: one variant in this process
    ap.add_argument("--round-times", action="store_true", help=argparse.SUPPRESS)  # internal: one timing process
    args = ap.parse_args()
    started = time.perf_counter()
    args.crop = tuple(int(v) for v in args.crop.split(","))
    args.variants = (args.variants or args.precision).split(",")
    args.rows = args.rows.split(",")
    for variant in args.variants:
        parse_variant(variant)
    if not set(args.rows) <= set(ROW_CHOICES):
        raise SystemExit(f"train_cost: --rows {args.rows}: want a comma list of {', '.join(ROW_CHOICES)}")
    if args.context_peak:
        print(json.dumps(context_peak(args.context_peak, args.device, 8, 64)))
        return
    if args.round_times:
        print(json.dumps(round_times(args)))
        return
    result: dict = {
        "command": shlex.join(["python", *sys.argv]),
        **git_state(),
        "machine": _machine(),
        "rows": args.rows,
        "variants": args.variants,
        "device": args.device,
        "crop": args.crop,
        "batch": args.batch,
        "teacher": args.teacher,
        "student": args.student,
        "torch": torch.__version__,
        "versions": versions(),
    }
    if not args.memory_only:
        # The machine is shared: the 1, 5 and 15-minute load averages around the timing say how busy it was.
        result["load_average_before"] = [round(v, 2) for v in os.getloadavg()]
        result.update(step_times(args))
        result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
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
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
