"""A detector's deployment speed on this CPU: PyTorch eager vs ONNX Runtime vs OpenVINO, FP32 and INT8.

Runs `bckd-pipeline deploy` once for the onnxruntime-cpu and openvino-cpu targets into one folder (the PyTorch
and FP32 ONNX rows are measured once and shared), then reads the two per-target reports into one row per
runtime and precision: the network's latency (p50, p99), the host's post-processing (decoding and NMS) and
network + post-processing (end to end), the ratio of the PyTorch eager FP32 network's median to the row's
(both from the same run), AP and ΔAP against PyTorch eager FP32 with the paired bootstrap interval of ΔAP over
the evaluation images (the one the CI gate computes from the report's per-image evidence, gate/gate.py), and
whether the row meets the goals: the network at least GOAL_SPEEDUP times faster than PyTorch eager FP32, and
the lower bound of ΔAP at least GOAL_MIN_DELTA_AP.

    python benchmarks/det_speed.py --model runs/det/teacher.pt --data coco:.bench/camvid_instances \\
        --input-size 384,512 --threads 1 --out .bench/det_speed --json docs/results/det_speed_cpu_384x512.json

Prints a Markdown table and writes every figure, the command, the machine (lscpu model and ISA), the versions,
the commit and the wall time to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cli_argv, cpu_summary, git_state, lscpu, versions  # noqa: E402

TARGETS = ("onnxruntime-cpu", "openvino-cpu")
ROWS = (  # (label, target report, stage name)
    ("PyTorch eager FP32", "onnxruntime-cpu", "pytorch"),
    ("ONNX Runtime FP32", "onnxruntime-cpu", "onnx-simplified"),
    ("ONNX Runtime INT8", "onnxruntime-cpu", "onnxruntime-int8"),
    ("OpenVINO FP32", "openvino-cpu", "openvino-fp32"),
    ("OpenVINO INT8", "openvino-cpu", "openvino-int8"),
    ("OpenVINO FP16", "openvino-cpu", "openvino-fp16"),  # last: the rows before keep their places in older files
)
REFERENCE = "pytorch"  # every ΔAP and speed ratio is against this stage
GOAL_SPEEDUP = 4.0  # the network at least this many times faster than PyTorch eager FP32 (ratio of medians)
GOAL_MIN_DELTA_AP = -1.0  # the lower bound of ΔAP against PyTorch eager FP32, AP points
# deploy's exit codes that leave every row measured: done, a parity criterion failed (the row is still measured and
# the report says which criterion), pending
DEPLOY_MEASURED = (0, 1, 3)
# what --reuse keeps of the JSON of the run that measured: the facts of that run, not of the re-read
RUN_FACTS = (
    "command", "deploy_command", "threads", "omp_num_threads", "wall_s", "loadavg_before", "loadavg_after",
    "deploy_exit_code", "lscpu", "versions", "git_commit", "git_dirty", "git_diff_sha256",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# pure: reports -> rows
# ---------------------------------------------------------------------------------------------
def _ms(block: dict | None, key: str) -> float | None:
    return None if not block else block.get(key)


def stage_row(label: str, target: str, stage: dict, interval: dict | None) -> dict:
    """One table row from a report's ledger stage and its ΔAP interval (``point``/``lower``/``upper``/...)."""
    lat = stage.get("latency_ms") or {}
    post, e2e = stage.get("postprocess_ms"), stage.get("end_to_end_ms")
    return {
        "row": label,
        "target": target,
        "stage": stage["name"],
        "backend": stage.get("backend"),
        "precision": stage.get("precision"),
        "status": stage.get("status"),
        "p50_ms": lat.get("p50"),
        "p99_ms": lat.get("p99"),
        "mean_ms": lat.get("mean"),
        "postprocess_p50_ms": _ms(post, "p50"),
        "postprocess_p99_ms": _ms(post, "p99"),
        "end_to_end_p50_ms": _ms(e2e, "p50"),
        "end_to_end_p99_ms": _ms(e2e, "p99"),
        "map": stage.get("map"),
        "ap50": stage.get("ap50"),
        "map_delta": stage.get("map_delta"),
        "map_delta_interval": interval,
        "matched_share": stage.get("matched_share"),
        "matched_share_vs_parent": stage.get("matched_share_vs_parent"),  # what the parity criterion judges
        "runtime_settings": (stage.get("latency") or {}).get("settings"),  # threads, and OpenVINO's compiled precision
        "parity_passed": stage.get("parity_passed"),
        "parity_failures": stage.get("parity_failures"),
    }


def rows_from_reports(reports: dict[str, dict], intervals: dict[str, dict | None] | None = None) -> list[dict]:
    """The table's rows from the per-target reports (target -> report.json), in ROWS' order.

    ``intervals``: stage name -> the paired bootstrap interval of its ΔAP against REFERENCE (None: not known).
    Each row gains ``speedup_vs_pytorch`` (PyTorch eager FP32's network p50 over the row's, both from the same
    run) and the goals it meets; a goal whose figure is missing is ``None``, never passed.
    """
    intervals = intervals or {}
    rows = []
    for label, target, name in ROWS:
        stages = {s["name"]: s for s in reports[target]["stages"]}
        if name not in stages:
            raise KeyError(f"report of {target} has no stage {name!r} (its stages: {', '.join(stages)})")
        rows.append(stage_row(label, target, stages[name], intervals.get(name)))
    base = rows[0]["p50_ms"]
    for r in rows:
        r["speedup_vs_pytorch"] = None if not base or not r["p50_ms"] else base / r["p50_ms"]
        r["e2e_speedup_vs_pytorch"] = (
            None
            if not rows[0]["end_to_end_p50_ms"] or not r["end_to_end_p50_ms"]
            else rows[0]["end_to_end_p50_ms"] / r["end_to_end_p50_ms"]
        )
        lower = (r["map_delta_interval"] or {}).get("lower")
        r["goal_speedup_met"] = None if r["speedup_vs_pytorch"] is None else r["speedup_vs_pytorch"] >= GOAL_SPEEDUP
        r["goal_delta_ap_met"] = None if lower is None else lower >= GOAL_MIN_DELTA_AP
    return rows


def evaluation_images(report: dict) -> int | None:
    """How many images the report's parity ledger scored (its per-image evidence)."""
    images = (report.get("parity_images") or {}).get("images")
    return None if images is None else len(images)


def markdown(rows: list[dict]) -> str:
    def f(v, fmt=".2f"):
        return "-" if v is None else format(v, fmt)

    lines = [
        "| row | network p50 / p99 ms | post-proc. p50 ms | end to end p50 ms | × PyTorch eager (network) | AP | "
        "ΔAP [95 % bounds] |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ci = r["map_delta_interval"]
        delta = f(r["map_delta"], "+.2f") + ("" if not ci else f" [{ci['lower']:+.2f}, {ci['upper']:+.2f}]")
        lines.append(
            f"| {r['row']} | {f(r['p50_ms'])} / {f(r['p99_ms'])} | {f(r['postprocess_p50_ms'])} | "
            f"{f(r['end_to_end_p50_ms'])} | {f(r['speedup_vs_pytorch'])} | {f(r['map'])} | {delta} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# running deploy and reading its evidence
# ---------------------------------------------------------------------------------------------
def deploy_command(args) -> list[str]:
    cmd = [
        "bckd-pipeline", "deploy", "--model", str(args.model), "--data", args.data, "--input-size", args.input_size,
        "--target", ",".join(TARGETS), "--out", str(args.out), "--latency-runs", str(args.runs),
        "--calib-size", str(args.calib_size), "--no-progress", "--force",
    ]  # fmt: skip
    if args.parity_images:
        cmd += ["--parity-images", str(args.parity_images)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.no_throughput:
        cmd += ["--no-throughput"]
    return cmd


def delta_intervals(report_path: Path) -> dict[str, dict | None]:
    """Each stage's paired bootstrap interval of ΔAP against REFERENCE, with the gate's default settings."""
    from bckd_pipeline.gate.budgets import GateSettings
    from bckd_pipeline.parity_images import load_parity_images
    from bckd_pipeline.tasks import get_task

    report = json.loads(report_path.read_text())
    task = get_task(report["task"])
    images = load_parity_images(report, report_path)
    s = GateSettings()
    out: dict[str, dict | None] = {}
    for stage in report["stages"]:
        name = stage["name"]
        if images is None or name not in images.evidence or REFERENCE not in images.evidence:
            out[name] = None
            continue
        ci = task.bootstrap_delta(
            images.evidence[name], images.evidence[REFERENCE], confidence=s.confidence, resamples=s.bootstrap_resamples,
            seed=s.seed,
        )  # fmt: skip
        out[name] = {
            "point": ci.point,
            "lower": ci.lower,
            "upper": ci.upper,
            "confidence": ci.confidence,
            "one_sided": True,
            "resamples": ci.resamples,
            "seed": s.seed,
        }
    return out


def training_facts(path: Path) -> dict:
    """What train-teacher/distill's metrics.json says of the detector: its AP on its evaluation split and how long
    it was trained."""
    m = json.loads(path.read_text())
    train = m.get("train") or {}
    cfg = train.get("config") or {}
    return {
        "metrics_file": str(path),
        "model": m.get("model"),
        "map": m.get("map"),
        "ap50": m.get("ap50"),
        "num_images": m.get("num_images"),
        "iterations": train.get("iterations"),
        "batch_size": cfg.get("batch_size"),
        "lr": cfg.get("lr"),
        "train_seconds": train.get("seconds"),
        "input_shape": (m.get("cost") or {}).get("input_shape"),
    }


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a detector checkpoint (student.pt / teacher.pt)")
    ap.add_argument("--data", required=True, help="KIND:PATH of the evaluation and calibration images")
    ap.add_argument("--input-size", default="384,512", help="H,W of the exported network")
    ap.add_argument("--out", type=Path, default=Path(".bench/det_speed"))
    ap.add_argument("--runs", type=int, default=200, help="timed runs per stage")
    ap.add_argument("--calib-size", type=int, default=100)
    ap.add_argument("--parity-images", type=int, help="evaluation images (default: the whole split)")
    ap.add_argument("--threads", type=int, help="intra-op threads of every runtime (default: each runtime's)")
    ap.add_argument("--no-throughput", action="store_true", help="skip deploy's throughput measurement")
    ap.add_argument("--note", default="", help="a sentence stored with the result (e.g. how trained the model is)")
    ap.add_argument("--train-metrics", type=Path, help="the detector's metrics.json from train-teacher/distill")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="read the reports already in --out and run nothing; an existing --json keeps its run's command, wall "
        "time and load, and records this command as reused_by",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    cmd = deploy_command(args)
    started, load_before, rc = time.time(), loadavg(), None
    if not args.reuse:
        argv = cli_argv(cmd)
        print("$", shlex.join(argv), flush=True)
        rc = subprocess.run(argv).returncode
        if rc not in DEPLOY_MEASURED:
            raise SystemExit(f"deploy exited {rc}")
    wall = time.time() - started
    paths = {t: args.out / f"report.{t}.json" for t in TARGETS}
    stale = [str(p) for p in paths.values() if not p.is_file() or (not args.reuse and p.stat().st_mtime < started)]
    if stale:  # exit code 1 is also a crash: never read an older run's reports as this one's
        raise SystemExit(f"deploy exited {rc} and did not write {', '.join(stale)}")
    reports = {t: json.loads(p.read_text()) for t, p in paths.items()}
    intervals = {}
    for t in TARGETS:
        intervals |= {k: v for k, v in delta_intervals(paths[t]).items() if k not in intervals or v is not None}
    rows = rows_from_reports(reports, intervals)
    print(markdown(rows))
    if args.json:
        host = reports[TARGETS[0]]
        payload = {
            "benchmark": "benchmarks/det_speed.py",
            "command": shlex.join(["python", *sys.argv]),
            "deploy_command": shlex.join(cmd),
            "model": str(args.model),
            "data": args.data,
            "input_hw": [int(v) for v in args.input_size.split(",")],
            "note": args.note,
            "goals": {"speedup_vs_pytorch_min": GOAL_SPEEDUP, "map_delta_lower_min": GOAL_MIN_DELTA_AP},
            "evaluation_images": {t: evaluation_images(r) for t, r in reports.items()},
            "deploy_exit_code": rc,
            "report_status": {t: r.get("status") for t, r in reports.items()},
            "rows": rows,
            "host": host.get("host"),
            "machine": cpu_summary(),  # model and vector ISA, as render_results.py's provenance reads them
            "report_machine": host.get("machine"),
            "lscpu": lscpu(),
            "versions": versions(),
            **git_state(),
            "threads": args.threads,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "detector_training": None if args.train_metrics is None else training_facts(args.train_metrics),
            "wall_s": round(wall, 1),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
        }
        if args.reuse and args.json.is_file():
            run = json.loads(args.json.read_text())
            payload |= {k: run[k] for k in RUN_FACTS if k in run} | {"reused_by": shlex.join(["python", *sys.argv])}
        elif args.reuse:
            payload |= {"wall_s": None, "loadavg_before": None, "loadavg_after": None}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
