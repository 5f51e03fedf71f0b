"""Stage 2/3 benchmark on this CPU: one student, PyTorch eager vs ONNX Runtime vs OpenVINO, FP32 and INT8.

Runs `bckd-pipeline deploy` for the onnxruntime-cpu and openvino-cpu targets into one folder (the
PyTorch and FP32 ONNX rows are measured once and shared), then quantizes the same simplified ONNX
with other ONNX Runtime settings to show which ones make INT8 faster than FP32. Every latency row
follows the protocol of bckd_pipeline/deploy/bench.py (warm-up by count and time, then timed runs).

    python benchmarks/prepare_camvid.py --src ../shared/data/camvid --dst .bench/camvid96 --size 96,128
    python benchmarks/deploy_table.py --model .bench/study96-bf16/kd+bckd@fp32/s0/student.pt \\
        --data camvid:.bench/camvid96 --out .bench/deploy --threads 1 --json /tmp/deploy_table.json

docs/results/deploy_cpu_camvid96x128.json embeds that JSON (``table``) in a benchmarks/record_command.py record
of the same command (docs/deploy-parity.md shows it).

Prints a Markdown table (ratios to PyTorch eager FP32) and writes every measurement to --json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from pathlib import Path

from common import cli_argv

from bckd_pipeline.data.feeds import DatasetFeeds, pick_indices
from bckd_pipeline.data import build_dataset
from bckd_pipeline.runtimes.onnxruntime import OrtRuntime
from bckd_pipeline.deploy.bench import benchmark
from bckd_pipeline.deploy.parity import compare
from bckd_pipeline.targets.profiles import INT8_PARITY, LatencySpec

ROWS = [  # (label, target report, stage name)
    ("PyTorch eager FP32", "onnxruntime-cpu", "pytorch"),
    ("ONNX Runtime FP32", "onnxruntime-cpu", "onnx-simplified"),
    ("ONNX Runtime INT8", "onnxruntime-cpu", "onnxruntime-int8"),
    ("OpenVINO FP32", "openvino-cpu", "openvino-fp32"),
    ("OpenVINO FP16 IR", "openvino-cpu", "openvino-fp16"),
    ("OpenVINO INT8", "openvino-cpu", "openvino-int8"),
]

# ONNX Runtime quantization settings compared on the same graph and calibration images.
ORT_VARIANTS = {
    "QDQ u8 act / s8 weight, per-channel (ours)": dict(fmt="QDQ", act="QUInt8", per_channel=True),
    "QDQ s8 act / s8 weight, per-channel": dict(fmt="QDQ", act="QInt8", per_channel=True),
    "QDQ u8/s8, per-tensor weights": dict(fmt="QDQ", act="QUInt8", per_channel=False),
    "QOperator u8/s8, per-channel": dict(fmt="QOperator", act="QUInt8", per_channel=True),
}


def deploy(args, target: str) -> dict:
    cmd = [
        "bckd-pipeline",
        "deploy",
        "--model",
        str(args.model),
        "--data",
        args.data,
        "--out",
        str(args.out),
        "--target",
        target,
        "--latency-runs",
        str(args.runs),
        "--calib-size",
        str(args.calib_size),
        "--no-progress",
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd = cli_argv(cmd)
    print("$", shlex.join(cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    if rc not in (0, 3):
        raise SystemExit(f"deploy --target {target} exited {rc}")
    report = json.loads((args.out / "report.json").read_text())
    (args.out / f"report.{target}.json").write_text(json.dumps(report, indent=1))
    return {"command": shlex.join(cmd), "report": report}


def ort_variants(args, calib_size: int) -> list[dict]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from bckd_pipeline.calibrate.onnxruntime import _reader

    meta = json.loads((args.out / "manifest.json").read_text())
    hw = tuple(meta["input"]["shape"][2:])
    kind_train = build_dataset(args.data, "train")
    calib = DatasetFeeds.from_dataset(kind_train, pick_indices(calib_size, len(kind_train), 0), hw)
    evalset = build_dataset(args.data, "val")
    feeds = DatasetFeeds.from_dataset(evalset, range(len(evalset)), hw)
    sim = args.out / "deploy/model.sim.onnx"
    pre = args.out / "variants/pre.onnx"
    pre.parent.mkdir(parents=True, exist_ok=True)
    quant_pre_process(str(sim), str(pre), skip_symbolic_shape=True)
    spec = LatencySpec(runs=args.runs, threads=args.threads)
    rows = []
    with OrtRuntime(sim, threads=args.threads) as ref:
        fp32 = benchmark(ref, feeds.head(8), spec)
        rows.append({"variant": "FP32 (reference)", "p50_ms": fp32.p50, "mean_ms": fp32.mean})
        for name, v in ORT_VARIANTS.items():
            path = args.out / f"variants/{len(rows)}.onnx"
            quantize_static(
                str(pre),
                str(path),
                _reader(calib),
                quant_format=getattr(QuantFormat, v["fmt"]),
                per_channel=v["per_channel"],
                activation_type=getattr(QuantType, v["act"]),
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
            with OrtRuntime(path, threads=args.threads, precision="int8") as rt:
                lat = benchmark(rt, feeds.head(8), spec)
                row = compare(ref, rt, feeds, criteria=INT8_PARITY, num_classes=len(meta["class_names"]))
            rows.append(
                {
                    "variant": name,
                    "p50_ms": lat.p50,
                    "mean_ms": lat.mean,
                    "speedup_vs_fp32": fp32.mean / lat.mean,
                    "miou_delta_vs_fp32": row.miou_delta_vs_parent,
                }
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", type=Path, default=Path(".bench/deploy"))
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--calib-size", type=int, default=100)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    reports = {t: deploy(args, t) for t in ("onnxruntime-cpu", "openvino-cpu")}
    rows = []
    for label, target, stage in ROWS:
        s = next(r for r in reports[target]["report"]["stages"] if r["name"] == stage)
        rows.append(
            {
                "row": label,
                "stage": stage,
                "miou": s["miou"],
                "miou_delta": s["miou_delta"],
                "pixel_agreement": s["pixel_agreement"],
                **{f"{k}_ms": v for k, v in s["latency_ms"].items()},
                "fps": s["fps"],
                "throughput_fps": s.get("throughput_fps"),
            }
        )
    base = rows[0]["mean_ms"]
    for r in rows:
        r["speedup_vs_pytorch"] = base / r["mean_ms"]
    variants = ort_variants(args, args.calib_size)

    print("\n| row | mIoU | ΔmIoU | agreement % | p50 ms | p99 ms | FPS | × PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['row']} | {r['miou']:.2f} | {r['miou_delta']:+.3f} | {100 * r['pixel_agreement']:.2f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['fps']:.0f} | {r['speedup_vs_pytorch']:.2f} |"
        )
    print("\n| ONNX Runtime setting | p50 ms | × FP32 | ΔmIoU vs FP32 |")
    print("|---|---:|---:|---:|")
    for v in variants:
        print(
            f"| {v['variant']} | {v['p50_ms']:.2f} | {v.get('speedup_vs_fp32', 1.0):.2f} | "
            f"{v.get('miou_delta_vs_fp32', 0.0):+.3f} |"
        )
    if args.json:
        host = reports["onnxruntime-cpu"]["report"]
        payload = {
            "commands": [r["command"] for r in reports.values()],
            "rows": rows,
            "ort_variants": variants,
            "host": host["host"],
            "versions": host["versions"],
            "evaluation": host["evaluation"],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
