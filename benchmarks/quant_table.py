"""The quantization table: what each INT8 flavour costs each student, measured first.

For every student preset distilled on CamVid and every INT8 flavour the pipeline can make, against the
FP32 ONNX of the same student:

- ΔmIoU with a paired-bootstrap 95 % interval over the val images (images resampled, the mIoU of both
  models recomputed from per-image confusion matrices: Task.bootstrap_delta in tasks/base.py, two-sided),
  pixel agreement with FP32 and boundary F (tasks/segmentation_metrics.py::BoundaryFScore, 2 px): at the training
  size only, where the students were trained;
- latency (deploy/bench.py's protocol, batch 1) at the training size, at CamVid's native 360x480 and at
  512x1024. The larger sizes are latency-only: the same weights exported at that static size, each INT8
  flavour calibrated on training images resized to that size (from --latency-data).

Flavours (each one the pipeline's own function on the simplified ONNX the pipeline's export made):

- ``ort-u8s8``: ONNX Runtime QDQ, u8 activations / s8 per-channel weights (calibrate/onnxruntime.py::quantize_ort);
- ``ort-s8s8``: ONNX Runtime QDQ, s8 activations / s8 per-channel weights (quantize_qdq, activation_type QInt8);
- ``nncf``: OpenVINO NNCF post-training quantization of the FP32 IR (calibrate/openvino.py::quantize_ir),
  run by OpenVINO;
- ``trt-qdq``: the TensorRT-style symmetric Q/DQ ONNX (calibrate/tensorrt.py::quantize_for_tensorrt), scored and timed
  with ONNX Runtime on this CPU (not TensorRT: no GPU here).

Then the cheap remedies, for the --worst rows with the largest mIoU drop: entropy and percentile
calibration (ONNX Runtime flavours), 300 calibration images instead of 100, NNCF's accuracy-aware mode
(judged on other training images, as calibrate/stage.py does), and a mixed-precision sweep: one layer
group at a time kept in float (--int8-exclude machinery, calibrate/exclude.py), groups defined from the
ONNX node names (encoder stages by output stride, decoder sub-blocks, head), ranked by the ΔmIoU recovered,
each with its latency cost.

The measurement on this CPU (students trained by --train where missing, two at a time, one thread each):

    python benchmarks/prepare_camvid.py --src ../shared/data/camvid --dst .bench/camvid96 --size 96,128
    python benchmarks/quant_table.py --data camvid:.bench/camvid96 --latency-data camvid:../shared/data/camvid \\
        --teacher .bench/study96/teacher/teacher.pt --student deeplabv3plus-mbv2=.bench/study96/kd+bckd/s0/student.pt \\
        --train --out .bench/quant --json docs/results/quant_table_cpu.json

Quick check (a test uses it): ``--quick`` = 16 val images, 16 calibration images, 10 timed runs, the
training size only, 200 bootstrap resamples, no remedies.

Resumable: every (student, flavour, size) result is a JSON file under OUT/results/<student>/, keyed by
the settings that decide it (checkpoint hash, sizes, image counts, runs, threads); a rerun reads those
whose key matches and measures only the rest. A result that failed (an export or quantizer error) is
cached with its error and reported; delete its file to retry. Prints a Markdown table; --json gets
every measurement, the command, the machine (lscpu, /proc/cpuinfo ISA, OpenVINO's view) and versions.

The library behind it is benchmarks/quant/: measure.py, remedies.py, table.py.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common and quant/, also when loaded by path (tests)

from common import write_json_atomic  # noqa: E402
from quant.measure import FLAVOURS, SIZES, STUDENTS, Options, hw_name, train_students  # noqa: E402
from quant.table import markdown, run  # noqa: E402


def parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: give H,W or HxW, e.g. 96,128") from None
    return h, w


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="KIND:PATH of the students' training data (accuracy, calibration)")
    ap.add_argument("--latency-data", help="KIND:PATH whose images are resized to the larger sizes (default: --data)")
    ap.add_argument(
        "--student", action="append", default=[], metavar="PRESET=CKPT", help="a distilled student (repeatable)"
    )
    ap.add_argument("--train", action="store_true", help="train the missing students with `bckd-pipeline distill`")
    ap.add_argument("--teacher", type=Path, help="teacher checkpoint for --train")
    ap.add_argument("--students", default=",".join(STUDENTS), help="presets in the table (default: all five)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train-jobs", type=int, default=2, help="students trained at a time, one thread each")
    ap.add_argument("--out", type=Path, default=Path(".bench/quant"))
    ap.add_argument("--flavours", default=",".join(FLAVOURS))
    ap.add_argument("--sizes", default=";".join(hw_name(hw) for hw in SIZES), help="HxW;HxW;... (first: training size)")
    ap.add_argument("--val-images", type=int)
    ap.add_argument("--calib-size", type=int, default=100)
    ap.add_argument("--latency-calib-size", type=int, default=32)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--large-runs", type=int, default=30)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--worst", type=int, default=2, help="rows with the largest drop that get the remedies")
    ap.add_argument("--no-remedies", action="store_true")
    ap.add_argument("--remedy-calib-size", type=int, default=300)
    ap.add_argument("--max-miou-drop", type=float, default=0.5, help="NNCF accuracy-aware limit (mIoU points)")
    ap.add_argument(
        "--quick", action="store_true", help="16 val and calibration images, 10 runs, one size, no remedies"
    )
    ap.add_argument("--calib-memory-gb", type=float, default=6.0, help="memory ONNX Runtime's calibrator may hold (GB)")
    ap.add_argument("--stop-at", help="UTC time HH:MM (today): work not started by then is listed, not measured")
    ap.add_argument("--train-stop-at", help="UTC time HH:MM: training stops then (the table goes on without them)")
    ap.add_argument("--json", type=Path)
    return ap.parse_args(argv)


def utc_today(text: str | None, flag: str) -> datetime | None:
    if not text:
        return None
    try:
        h, m = (int(v) for v in text.split(":"))
        return datetime.now(timezone.utc).replace(hour=h, minute=m, second=0, microsecond=0)
    except ValueError:
        raise SystemExit(f"{flag} {text!r}: give a UTC time as HH:MM, e.g. 12:20.") from None


def options(args: argparse.Namespace) -> Options:
    given = {}
    for item in args.student:
        preset, sep, ckpt = item.partition("=")
        if not sep or not ckpt:
            raise SystemExit(f"--student {item!r}: give PRESET=CHECKPOINT, e.g. deeplabv3plus-mbv2=runs/s0/student.pt.")
        given[preset] = Path(ckpt)
    flavours = tuple(f for f in args.flavours.split(",") if f)
    bad = [f for f in flavours if f not in FLAVOURS]
    if bad:
        raise SystemExit(f"--flavours {','.join(bad)} unknown. Allowed: {', '.join(FLAVOURS)}.")
    sizes = tuple(parse_hw(s) for s in args.sizes.split(";") if s)
    stop_at = utc_today(args.stop_at, "--stop-at")
    opts = Options(
        data=args.data,
        out=args.out,
        students=given,
        latency_data=args.latency_data,
        flavours=flavours,
        sizes=sizes,
        val_images=args.val_images,
        calib_size=args.calib_size,
        latency_calib_size=args.latency_calib_size,
        runs=args.runs,
        large_runs=args.large_runs,
        threads=args.threads,
        resamples=args.resamples,
        worst=args.worst,
        remedies=not args.no_remedies,
        remedy_calib_size=args.remedy_calib_size,
        max_miou_drop=args.max_miou_drop,
        command=shlex.join([Path(sys.executable).name, *sys.argv]),
        stop_at=stop_at,
        calib_memory_gb=args.calib_memory_gb,
    )
    if args.quick:
        opts = replace(
            opts,
            val_images=16,
            calib_size=16,
            latency_calib_size=16,
            runs=10,
            large_runs=10,
            sizes=sizes[:1],
            resamples=200,
            remedies=False,
        )
    return opts


def main(argv=None) -> None:
    args = parse_args(argv)
    opts = options(args)
    wanted = [s for s in args.students.split(",") if s]
    trained = None
    missing = [p for p in wanted if p not in opts.students]
    if args.train and missing:
        if args.teacher is None or not args.teacher.is_file():
            raise SystemExit(
                f"--train needs --teacher TEACHER.pt (given: {args.teacher}); it distils {', '.join(missing)}."
            )
        hw = opts.sizes[0]
        trained = train_students(
            missing,
            args.teacher,
            opts.data,
            opts.out,
            epochs=args.epochs,
            hw=hw,
            jobs=args.train_jobs,
            stop_at=utc_today(args.train_stop_at, "--train-stop-at"),
        )
        for preset, t in trained.items():
            if "checkpoint" in t:
                opts.students[preset] = Path(t["checkpoint"])
    elif missing:
        print(f"not in the table (no --student and no --train): {', '.join(missing)}", flush=True)
        trained = {p: {"error": "not measured: no --student PRESET=CKPT given and no --train"} for p in missing}
    order = {p: i for i, p in enumerate(wanted)}
    opts.students = dict(sorted(opts.students.items(), key=lambda kv: order.get(kv[0], len(order))))

    def write(payload: dict) -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(args.json, payload)

    payload = run(opts, trained, write)
    print()
    print(markdown(payload))
    if payload["not_measured"]:
        print("\nNot measured: " + "; ".join(payload["not_measured"]))
    if args.json:
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
