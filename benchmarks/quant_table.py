"""The quantization table: what each INT8 flavour costs each student, measured first.

For every student preset distilled on CamVid and every INT8 flavour the pipeline can make, against the
FP32 ONNX of the same student:

- ΔmIoU with a paired-bootstrap 95 % interval over the val images (images resampled, the mIoU of both
  models recomputed from per-image confusion matrices: Task.bootstrap_delta in tasks/base.py, two-sided),
  pixel agreement with FP32 and boundary F (metrics.py::BoundaryFScore, 2 px): at the training size only,
  where the students were trained;
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
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bckd_pipeline.fileio import file_sha256, write_json

STUDENTS = ("pspnet-r18", "deeplabv3plus-r18", "deeplabv3plus-mbv2", "deeplabv3plus-effb1", "segformer-b0")
FLAVOURS = {
    "ort-u8s8": "ORT QDQ u8 act / s8 per-channel weights (quantize_ort, the pipeline's)",
    "ort-s8s8": "ORT QDQ s8 act / s8 per-channel weights",
    "nncf": "OpenVINO NNCF PTQ (quantize_ir, the pipeline's)",
    "trt-qdq": "TensorRT-style symmetric Q/DQ (quantize_for_tensorrt), run by ONNX Runtime",
}
TRAIN_ORDER = {"deeplabv3plus-effb1": 4, "segformer-b0": 3, "deeplabv3plus-r18": 2, "pspnet-r18": 1}
ORT_FLAVOURS = ("ort-u8s8", "ort-s8s8", "trt-qdq")  # the ones calibrated by ONNX Runtime (--calib-method applies)
SIZES = ((96, 128), (360, 480), (512, 1024))
FORMAT = "bckd-pipeline/quant-table-v1"


@dataclass
class Options:
    data: str
    out: Path
    students: dict[str, Path] = field(default_factory=dict)  # preset -> checkpoint
    latency_data: str | None = None  # where the larger sizes' calibration and timing images come from
    flavours: tuple[str, ...] = tuple(FLAVOURS)
    sizes: tuple[tuple[int, int], ...] = SIZES  # the first is the training size: accuracy is scored there
    val_images: int | None = None  # None: the whole val split
    calib_size: int = 100
    latency_calib_size: int = 32
    runs: int = 100
    large_runs: int = 30  # timed runs at the sizes after the first
    threads: int | None = None
    resamples: int = 2000
    seed: int = 0
    worst: int = 2
    remedies: bool = True
    remedy_calib_size: int = 300
    max_miou_drop: float = 0.5
    demo_count: int | None = None  # demo data only: images per split (tests)
    stop_at: datetime | None = None  # UTC: work not started by then is listed as not measured
    calib_memory_gb: float = 6.0  # ONNX Runtime's calibrators hold every image's activations (calib_count)
    command: str = ""

    def key(self, **extra) -> dict:
        """What decides a cached result: a changed setting means a new measurement."""
        return {
            "data": self.data,
            "latency_data": self.latency_data or self.data,
            "val_images": self.val_images,
            "threads": self.threads,
            "seed": self.seed,
            "demo_count": self.demo_count,
            **extra,
        }


sha256 = file_sha256  # the checkpoints' digests, as the pipeline computes them


def hw_name(hw) -> str:
    return f"{hw[0]}x{hw[1]}"


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ''}"


# ---------------------------------------------------------------------------------------------
# the result cache: one JSON file per (student, what, size), with the key that made it
# ---------------------------------------------------------------------------------------------
def cached(path: Path, key: dict, make) -> dict:
    """The result at ``path`` if it was made with ``key``; else ``make()`` (errors recorded, not raised)."""
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["result"]
    started = time.perf_counter()
    try:
        result = make()
    except Exception as exc:  # noqa: BLE001 - one failed export or quantizer must not end the table
        result = {"error": error_text(exc)}
        print(f"  ! {path.parent.name}/{path.stem}: {result['error']}", flush=True)
    result["seconds"] = round(time.perf_counter() - started, 2)
    write_json(path, {"key": key, "result": result}, indent=1)
    return result


# ---------------------------------------------------------------------------------------------
# students: given, or trained with the real CLI
# ---------------------------------------------------------------------------------------------
def distill_command(preset: str, teacher: Path, data: str, out: Path, epochs: int, hw) -> list[str]:
    """The recipe of the existing CamVid students (.bench/study96/kd+bckd/s*/command.txt)."""
    size = f"{hw[0]},{hw[1]}"
    return [
        "bckd-pipeline",
        "distill",
        "--teacher",
        str(teacher),
        "--student-arch",
        preset,
        "--data",
        data,
        "--preset",
        "camvid",
        "--resize",
        size,
        "--crop",
        size,
        "--epochs",
        str(epochs),
        "--kd",
        "kd+bckd",
        "--pretrained",
        "none",
        "--train-device",
        "cpu",
        "--num-workers",
        "0",
        "--no-progress",
        "--seed",
        "0",
        "--mfs-images",
        "8",
        "--out",
        str(out),
    ]


def train_students(
    presets, teacher: Path, data: str, out: Path, *, epochs: int, hw, jobs: int, stop_at: datetime | None = None
) -> dict[str, dict]:
    """Train the students whose OUT/students/<preset>/student.pt is missing, ``jobs`` at a time, one thread each.

    Each runs `python -m bckd_pipeline.cli distill ...` with this interpreter and environment (so a
    PYTHONPATH pointing at a worktree is honoured); its log is OUT/students/<preset>/train.log. At
    ``stop_at`` (--train-stop-at) no job starts and running ones are stopped (a rerun resumes them from
    their training state); those students are recorded as not trained.
    """
    done: dict[str, dict] = {}
    queue = []
    # Cheapest first (a guess from the architectures): under --train-stop-at, the most students get trained.
    for preset in sorted(presets, key=lambda p: TRAIN_ORDER.get(p, 0)):
        folder = out / "students" / preset
        cmd = distill_command(preset, teacher, data, folder, epochs, hw)
        if (folder / "student.pt").is_file():
            done[preset] = {"checkpoint": str(folder / "student.pt"), "command": shlex.join(cmd), "cached": True}
            continue
        if (folder / "train_state.pt").is_file():
            cmd.append("--resume")
        queue.append((preset, folder, cmd))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: list = []
    while queue or running:
        if stop_at is not None and datetime.now(timezone.utc) >= stop_at:
            for preset, _folder, cmd, proc, log, _started in running:
                proc.terminate()  # our own child, by its handle
                proc.wait()
                log.close()
                done[preset] = {
                    "error": "not trained: --train-stop-at reached while training",
                    "command": shlex.join(cmd),
                }
            for preset, _folder, cmd in queue:
                done[preset] = {"error": "not trained: --train-stop-at reached first", "command": shlex.join(cmd)}
            print("  training stopped: --train-stop-at", flush=True)
            break
        while queue and len(running) < jobs:
            preset, folder, cmd = queue.pop(0)
            folder.mkdir(parents=True, exist_ok=True)
            print("$", shlex.join(cmd), flush=True)
            log = open(folder / "train.log", "w")  # noqa: SIM115 - closed when the process ends
            proc = subprocess.Popen(
                [sys.executable, "-m", "bckd_pipeline.cli", *cmd[1:]], stdout=log, stderr=subprocess.STDOUT, env=env
            )
            running.append((preset, folder, cmd, proc, log, time.perf_counter()))
        time.sleep(2)
        for item in list(running):
            preset, folder, cmd, proc, log, started = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            seconds = round(time.perf_counter() - started, 1)
            if proc.returncode == 0 and (folder / "student.pt").is_file():
                done[preset] = {
                    "checkpoint": str(folder / "student.pt"),
                    "command": shlex.join(cmd),
                    "seconds": seconds,
                }
                print(f"  trained {preset} in {seconds:.0f} s", flush=True)
            else:
                tail = (folder / "train.log").read_text(errors="replace").strip().splitlines()[-3:]
                done[preset] = {
                    "error": f"distill exited {proc.returncode}: {' | '.join(tail)[:400]}",
                    "command": shlex.join(cmd),
                }
                print(f"  ! training {preset} failed: {done[preset]['error']}", flush=True)
    return done


# ---------------------------------------------------------------------------------------------
# one student at one size: the pipeline's export and simplification, the FP32 IR, the INT8 flavours
# ---------------------------------------------------------------------------------------------
@dataclass
class Student:
    preset: str
    checkpoint: Path
    sha256: str
    model: object
    meta: object


def load_student(preset: str, checkpoint: Path) -> Student:
    from bckd_pipeline.distill.checkpoint import load_model

    model, meta = load_model(Path(checkpoint))
    if meta.model != preset:
        raise SystemExit(
            f"--student {preset}={checkpoint}: the checkpoint holds a {meta.model!r}. Pass it as "
            f"--student {meta.model}={checkpoint}, or the checkpoint of {preset}."
        )
    return Student(preset, Path(checkpoint), sha256(Path(checkpoint)), model, meta)


def dataset(opts: Options, spec: str, split: str, hw):
    from bckd_pipeline.data import build_dataset

    return build_dataset(spec, split, demo_size=tuple(hw), demo_count=opts.demo_count)


def feeds_of(opts: Options, spec: str, split: str, hw, count: int | None, seed: int | None = None):
    """Preprocessed images of a split at ``hw`` (raw 0..255: the graph normalises); ``seed`` draws ``count``
    of them with the pipeline's pick_indices, else the first ``count``."""
    from bckd_pipeline.data.feeds import DatasetFeeds, pick_indices

    ds = dataset(opts, spec, split, hw)
    n = len(ds) if count is None else min(count, len(ds))
    indices = pick_indices(count, len(ds), seed) if seed is not None else range(n)
    return DatasetFeeds.from_dataset(ds, indices, tuple(hw))


def export_at(student: Student, hw, folder: Path, check_feeds) -> Path:
    """The pipeline's export (checked against eager) and simplification (checked against the export), once."""
    from bckd_pipeline.export.onnx_export import to_onnx
    from bckd_pipeline.export.simplify import simplify
    from bckd_pipeline.model_spec import ExportSpec

    stamp = folder / "export.json"
    sim = folder / "model.sim.onnx"
    key = {"checkpoint": student.sha256, "input_hw": list(hw)}
    if sim.is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return sim
    folder.mkdir(parents=True, exist_ok=True)
    spec = ExportSpec(input_hw=tuple(hw))
    onnx_path, check = to_onnx(student.model, student.meta, spec, folder / "model.onnx", check_feeds)
    _, sim_check, counts = simplify(onnx_path, sim, check_feeds)
    stamp.write_text(json.dumps({"key": key, "export": check.as_dict(), "simplify": counts}, indent=1))
    return sim


def activation_bytes(sim: Path) -> int:
    """Bytes of every float activation of one image (static shapes after simplification): what ONNX Runtime's
    MinMax and histogram calibrators hold *per calibration image* (they keep every image's outputs, then reduce)."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(onnx.load(str(sim))).graph
    total = 0
    for v in graph.value_info:
        t = v.type.tensor_type
        dims = [d.dim_value for d in t.shape.dim]
        if t.elem_type == onnx.TensorProto.FLOAT and dims and all(dims):
            total += 4 * int(np.prod(dims))
    return total


def calib_count(opts: Options, sim: Path, requested: int) -> tuple[int, str]:
    """How many calibration images fit --calib-memory-gb in ONNX Runtime's calibrator, and why that many."""
    per_image = activation_bytes(sim)
    fit = max(1, int(opts.calib_memory_gb * 1e9 // max(per_image, 1)))
    n = min(requested, fit)
    why = f"{per_image / 1e6:.1f} MB of activations per image; {opts.calib_memory_gb:g} GB allow {fit}"
    return n, why


def fp32_ir(sim: Path) -> Path:
    from bckd_pipeline.calibrate.openvino import to_ir

    xml = sim.parent / "fp32.xml"
    if not (xml.is_file() and xml.with_suffix(".bin").is_file()):
        to_ir(sim, xml, fp16=False)
    return xml


def quantize(flavour: str, sim: Path, path: Path, calib, spec, *, validation=None, num_classes=None) -> dict:
    """Make one INT8 artifact with the pipeline's quantizer for ``flavour``; returns the settings it reports."""
    from bckd_pipeline.calibrate import onnxruntime as ortq
    from bckd_pipeline.calibrate import openvino as ovq
    from bckd_pipeline.calibrate.tensorrt import quantize_for_tensorrt
    from bckd_pipeline.fileio import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    if flavour == "ort-u8s8":
        return ortq.quantize_ort(sim, path, calib, spec)[1]
    if flavour == "ort-s8s8":
        atomic_write(path, lambda tmp: ortq.quantize_qdq(sim, tmp, calib, spec, activation_type="QInt8"))
        return {
            "format": "QDQ",
            "activation_type": "QInt8",
            "weight_type": "QInt8",
            "per_channel": True,
            "calibration_method": ortq.METHODS[spec.method],
            "calibration_images": len(calib),
        }
    if flavour == "trt-qdq":
        return quantize_for_tensorrt(sim, path, calib, spec)[1]
    if flavour == "nncf":
        from bckd_pipeline.progress import library_bars

        with library_bars(False):  # NNCF draws progress bars on stdout, where the table goes
            return ovq.quantize_ir(
                fp32_ir(sim),
                path,
                calib,
                spec,
                target_device="CPU",
                validation=validation,
                num_classes=num_classes,
                source_onnx=sim,
            )[1]
    raise SystemExit(f"Unknown flavour {flavour!r}. Allowed: {', '.join(FLAVOURS)}.")


def artifact_path(folder: Path, flavour: str, tag: str = "") -> Path:
    return folder / f"{flavour}{tag}.{'xml' if flavour == 'nncf' else 'onnx'}"


def runtime(path: Path, threads: int | None, precision: str):
    from bckd_pipeline.deploy.backends.onnxruntime import OrtRuntime
    from bckd_pipeline.deploy.backends.openvino import OpenVINORuntime

    if path.suffix == ".xml":
        return OpenVINORuntime(path, device="CPU", precision=precision, threads=threads)
    return OrtRuntime(path, threads=threads, precision=precision)


# ---------------------------------------------------------------------------------------------
# accuracy (training size) and latency (every size)
# ---------------------------------------------------------------------------------------------
def score(ref_path: Path, path: Path, feeds, *, num_classes: int, ignore_index: int, opts: Options) -> dict:
    """ΔmIoU vs the FP32 ONNX with its paired-bootstrap 95 % interval, pixel agreement, boundary F."""
    from bckd_pipeline.deploy.parity import LedgerStage, ledger
    from bckd_pipeline.targets.profiles import INT8_PARITY
    from bckd_pipeline.tasks.segmentation import SEGMENTATION

    with runtime(ref_path, opts.threads, "fp32") as ref, runtime(path, opts.threads, "int8") as cand:
        report = ledger(
            [
                LedgerStage("fp32", ref.backend, "fp32", ref, None),
                LedgerStage("int8", cand.backend, "int8", cand, "fp32"),
            ],
            feeds,
            num_classes=num_classes,
            ignore_index=ignore_index,
            criteria=lambda _: INT8_PARITY,
        )
    fp32, int8 = report.stage("fp32"), report.stage("int8")
    # One-sided bounds at 0.975 are the 2.5th and 97.5th percentiles: a two-sided 95 % interval.
    ci = SEGMENTATION.bootstrap_delta(
        report.per_image["int8"], report.per_image["fp32"], confidence=0.975, resamples=opts.resamples, seed=opts.seed
    )
    return {
        "images": int8.images,
        "miou_fp32": fp32.miou,
        "miou_int8": int8.miou,
        "delta_miou": int8.miou_delta,
        "delta_miou_ci95": [ci.lower, ci.upper],
        "bootstrap_point": ci.point,
        "pixel_agreement": int8.pixel_agreement,
        "boundary_f_fp32": fp32.boundary_f,
        "boundary_f_int8": int8.boundary_f,
        "delta_boundary_f": None if fp32.boundary_f is None else int8.boundary_f - fp32.boundary_f,
        "max_abs_logit": int8.max_abs_logit,
        "per_class_delta": int8.per_class_delta,
    }


def timing(path: Path, feeds, runs: int, opts: Options, precision: str) -> dict:
    from bckd_pipeline.deploy.bench import benchmark
    from bckd_pipeline.targets.profiles import LatencySpec

    load = os.getloadavg()[0]
    with runtime(path, opts.threads, precision) as rt:
        lat = benchmark(rt, feeds, LatencySpec(runs=runs, threads=opts.threads))
    return {
        "loadavg_1min_before": load,  # another job on this 2-core host shows here
        "p50_ms": lat.p50,
        "p90_ms": lat.p90,
        "p99_ms": lat.p99,
        "mean_ms": lat.mean,
        "std_ms": lat.std,
        "min_ms": lat.min,
        "fps": lat.fps,
        "runs": lat.runs,
        "warmup_runs": lat.warmup_runs,
        "warmup_s": lat.warmup_s,
        "backend": lat.backend,
        "precision": lat.precision,
        "settings": lat.settings,
        "versions": lat.versions,
        "what_is_timed": lat.what_is_timed,
    }


def calib_spec(opts: Options, size: int | None = None, **changes):
    from bckd_pipeline.targets.profiles import CalibrationSpec

    return replace(CalibrationSpec(size=size or opts.calib_size, seed=opts.seed), **changes)


def measure_student(student: Student, opts: Options) -> dict:
    """Every flavour's accuracy and latency at the training size, for one student (larger sizes: latency_at)."""
    preset, meta = student.preset, student.meta
    res_dir = opts.out / "results" / preset
    train_hw = opts.sizes[0]
    val = feeds_of(opts, opts.data, "val", train_hw, opts.val_images)
    calib = feeds_of(opts, opts.data, "train", train_hw, opts.calib_size, seed=opts.seed)
    base = {"checkpoint": student.sha256}
    entry: dict = {
        "checkpoint": str(student.checkpoint),
        "checkpoint_sha256": student.sha256,
        "num_classes": meta.num_classes,
        "accuracy": {},
        "latency": {},
    }
    work = opts.out / "work" / preset / hw_name(train_hw)
    try:
        sim = export_at(student, train_hw, work, val.head(2))
    except Exception as exc:  # noqa: BLE001
        entry["error"] = f"export at {hw_name(train_hw)}: {error_text(exc)}"
        print(f"  ! {preset}: {entry['error']}", flush=True)
        return entry
    entry["fp32"] = cached(
        res_dir / f"fp32@{hw_name(train_hw)}.json",
        opts.key(**base, what="fp32-accuracy", hw=list(train_hw)),
        lambda: fp32_accuracy(sim, val, meta, opts),
    )
    for flavour in opts.flavours:
        path = artifact_path(work, flavour)

        def make_acc(flavour=flavour, path=path) -> dict:
            settings = quantize(flavour, sim, path, calib, calib_spec(opts), num_classes=meta.num_classes)
            return {
                **score(sim, path, val, num_classes=meta.num_classes, ignore_index=meta.ignore_index, opts=opts),
                "settings": settings,
                "calibration_images": len(calib),
            }

        key = opts.key(**base, what="accuracy", flavour=flavour, hw=list(train_hw), calib=opts.calib_size)
        entry["accuracy"][flavour] = cached(res_dir / f"acc-{flavour}@{hw_name(train_hw)}.json", key, make_acc)
        print(f"  {preset} {flavour}: {short(entry['accuracy'][flavour])}", flush=True)
    entry["latency"][hw_name(train_hw)] = latency_at(student, train_hw, opts, train_feeds=(calib, val))
    return entry


def fp32_accuracy(sim: Path, val, meta, opts: Options) -> dict:
    from bckd_pipeline.deploy.parity import LedgerStage, ledger
    from bckd_pipeline.targets.profiles import INT8_PARITY

    with runtime(sim, opts.threads, "fp32") as ref:
        report = ledger(
            [LedgerStage("fp32", ref.backend, "fp32", ref, None)],
            val,
            num_classes=meta.num_classes,
            ignore_index=meta.ignore_index,
            criteria=lambda _: INT8_PARITY,
        )
    s = report.stage("fp32")
    return {"images": s.images, "miou": s.miou, "boundary_f": s.boundary_f, "per_class_iou": s.per_class_iou}


def latency_at(student: Student, hw, opts: Options, *, train_feeds=None) -> dict:
    """FP32 (ONNX Runtime and OpenVINO) and every flavour timed at ``hw``. At the training size
    (``train_feeds`` = the calibration and val feeds there) the artifacts whose accuracy was scored."""
    preset = student.preset
    res_dir = opts.out / "results" / preset
    work = opts.out / "work" / preset / hw_name(hw)
    is_train = train_feeds is not None
    train_calib, train_val = train_feeds or (None, None)
    runs = opts.runs if is_train else opts.large_runs
    spec_data = opts.data if is_train else (opts.latency_data or opts.data)
    base = {"checkpoint": student.sha256, "hw": list(hw), "runs": runs}
    out: dict = {"runs": runs, "calibration_images": len(train_calib) if is_train else opts.latency_calib_size}
    try:
        bench = train_val.head(8) if is_train else feeds_of(opts, spec_data, "val", hw, 8).head(8)
        sim = export_at(student, hw, work, bench[:2])
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"export at {hw_name(hw)}: {error_text(exc)}"
        print(f"  ! {preset}: {out['error']}", flush=True)
        return out
    calib = None
    out["fp32-onnxruntime"] = cached(
        res_dir / f"lat-fp32-onnxruntime@{hw_name(hw)}.json",
        opts.key(**base, what="latency", flavour="fp32-onnxruntime"),
        lambda: timing(sim, bench, runs, opts, "fp32"),
    )
    if "nncf" in opts.flavours:
        out["fp32-openvino"] = cached(
            res_dir / f"lat-fp32-openvino@{hw_name(hw)}.json",
            opts.key(**base, what="latency", flavour="fp32-openvino"),
            lambda: timing(fp32_ir(sim), bench, runs, opts, "fp32"),
        )
    n_calib = opts.calib_size
    if not is_train:  # the same count for every flavour at this size, so that rows compare
        n_calib, out["calibration_images_why"] = calib_count(opts, sim, opts.latency_calib_size)
        out["calibration_images"] = n_calib
    for flavour in opts.flavours:
        path = artifact_path(work, flavour)

        def make(flavour=flavour, path=path, n_calib=n_calib) -> dict:
            nonlocal calib
            if not path.is_file() or not is_train:
                if calib is None:
                    calib = train_calib if is_train else feeds_of(opts, spec_data, "train", hw, n_calib, seed=opts.seed)
                quantize(flavour, sim, path, calib, calib_spec(opts, n_calib), num_classes=student.meta.num_classes)
            return timing(path, bench, runs, opts, "int8")

        key = opts.key(**base, what="latency", flavour=flavour, calib=n_calib)
        if out_of_time(opts) and not is_train:
            out[flavour] = {"not_measured": "--stop-at reached"}
            continue
        out[flavour] = cached(res_dir / f"lat-{flavour}@{hw_name(hw)}.json", key, make)
    print(
        f"  {preset} @ {hw_name(hw)}: "
        + ", ".join(
            f"{k} {v['p50_ms']:.2f}" for k, v in out.items() if isinstance(v, dict) and v.get("p50_ms") is not None
        )
        + " ms p50",
        flush=True,
    )
    return out


def short(acc: dict) -> str:
    if "error" in acc:
        return acc["error"]
    lo, hi = acc["delta_miou_ci95"]
    return f"ΔmIoU {acc['delta_miou']:+.3f} [{lo:+.3f}, {hi:+.3f}], agreement {100 * acc['pixel_agreement']:.2f} %"


# ---------------------------------------------------------------------------------------------
# remedies for the worst rows
# ---------------------------------------------------------------------------------------------
def layer_groups(sim: Path) -> dict[str, list[str]]:
    """Layer groups from the ONNX node names: encoder nodes by the stride of their output (a stage), decoder
    nodes by their sub-block (``decoder/aspp``...; those without a weighted layer together as ``decoder/glue``),
    the head, and the rest (input normalisation, final resize).

    The stride is H/h of a node's N x C x h x w output when H/h = W/w is a power of two (a feature map; not
    an SE block's 1 x 1 or an attention tensor); other encoder nodes (SegFormer's token ops) take the stride
    of the node that makes their first input. Nodes the simplifier renamed without their module path
    (onnxsim's fused ``Gemm_12``) join the group of the node that makes their input. Only the node types the
    quantizers put Q/DQ around are listed (kept in float, they change the INT8 graph).
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(sim)))
    graph = model.graph
    height, width = (d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[2:4])
    shapes = {v.name: v.type.tensor_type.shape.dim for v in list(graph.value_info) + list(graph.output)}
    quantized = {
        "Conv",
        "ConvTranspose",
        "MatMul",
        "Gemm",
        "Add",
        "Mul",
        "Concat",
        "Resize",
        "AveragePool",
        "MaxPool",
        "GlobalAveragePool",
        "Sigmoid",
        "Softmax",
        "Transpose",
        "Reshape",
    }
    groups: dict[str, list[str]] = {}
    weighted: dict[str, bool] = {}
    producer: dict[str, str] = {}  # tensor -> the name of the node that makes it
    group_of: dict[str, str] = {}  # node name -> its group
    stride_of: dict[str, int] = {}  # node name -> the stride of the feature map it works on
    for node in graph.node:  # topological order: a node's producers are placed before it
        parents = [producer[i] for i in node.input if i in producer]
        parts = [p for p in node.name.split("/") if p]
        parts = parts[1:] if parts and parts[0] == "student" else parts
        top = parts[0] if len(parts) > 1 else ""
        dims = shapes.get(node.output[0]) if node.output else None
        h, w = (dims[2].dim_value, dims[3].dim_value) if dims is not None and len(dims) == 4 else (0, 0)
        s = height // h if h and w and height % h == 0 and width % w == 0 else 0
        if s and width // w == s and s & (s - 1) == 0:
            stride_of[node.name] = s
        else:
            stride_of[node.name] = next((stride_of[q] for q in parents if q in stride_of), 1)
        if "/" not in node.name:
            group = next((group_of[q] for q in parents if q in group_of), "input+output")  # renamed by onnxsim
        elif top == "encoder":
            group = f"encoder/stride{stride_of[node.name]}"
        elif top == "decoder":
            group = f"decoder/{parts[1].split('.')[0]}" if len(parts) > 2 else "decoder/top"
        elif top in ("segmentation_head", "head"):
            group = "head"
        else:
            group = "input+output"
        group_of[node.name] = group
        for o in node.output:
            producer[o] = node.name
        if node.op_type not in quantized or not node.name:
            continue
        groups.setdefault(group, []).append(node.name)
        weighted[group] = weighted.get(group, False) or node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")
    # Decoder sub-blocks without a weighted layer (a lone Concat or Resize) are one group: a sweep row each
    # would cost a quantization for a change of a Q/DQ pair or two.
    for group in [g for g in groups if g.startswith("decoder/") and not weighted[g]]:
        groups.setdefault("decoder/glue", []).extend(groups.pop(group))
    return dict(sorted(groups.items()))


def resolvable(flavour: str, sim: Path, nodes: list[str]) -> list[str]:
    """The nodes an exclusion can name for this quantizer: those that survive ORT's pre-processing, or that
    OpenVINO's conversion keeps an op of (calibrate/exclude.py refuses the others)."""
    if flavour == "nncf":
        from bckd_pipeline.deploy.backends.openvino import import_openvino

        ops = [o.get_friendly_name() for o in import_openvino().Core().read_model(str(fp32_ir(sim))).get_ordered_ops()]
        return [n for n in nodes if any(o == n or o.startswith(f"{n}/") for o in ops)]
    import tempfile

    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as work:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(sim), str(pre), skip_symbolic_shape=True)
        kept = {n.name for n in onnx.load(str(pre), load_external_data=False).graph.node}
    return [n for n in nodes if n in kept]


def remedies_for(student: Student, flavour: str, baseline: dict, opts: Options) -> dict:
    """The cheap remedies on one (student, flavour) row: each with accuracy and training-size latency."""
    from bckd_pipeline.data.feeds import check_no_overlap, pick_indices

    preset, meta = student.preset, student.meta
    hw = opts.sizes[0]
    res_dir = opts.out / "results" / preset
    work = opts.out / "work" / preset / hw_name(hw)
    sim = work / "model.sim.onnx"
    val = feeds_of(opts, opts.data, "val", hw, opts.val_images)
    bench = val.head(8)
    base = {"checkpoint": student.sha256, "hw": list(hw), "runs": opts.runs}
    calib = feeds_of(opts, opts.data, "train", hw, opts.calib_size, seed=opts.seed)
    val_digests = dict(zip(val.digests, val.names, strict=True))
    check_no_overlap(calib, val_digests)

    def variant(tag: str, which: str, spec, feeds, **kw) -> dict:
        if out_of_time(opts):
            return {"not_measured": "--stop-at reached"}
        path = artifact_path(work, which, f"-{tag}")

        def make() -> dict:
            settings = quantize(which, sim, path, feeds, spec, num_classes=meta.num_classes, **kw)
            acc = score(sim, path, val, num_classes=meta.num_classes, ignore_index=meta.ignore_index, opts=opts)
            return {**acc, "settings": settings, "latency": timing(path, bench, opts.runs, opts, "int8")}

        key = opts.key(**base, what="remedy", flavour=which, tag=tag, spec=repr(spec), calib=len(feeds))
        result = cached(res_dir / f"remedy-{which}-{tag}@{hw_name(hw)}.json", key, make)
        print(f"  remedy {preset} {which} {tag}: {short(result)}", flush=True)
        return result

    out: dict = {"student": preset, "flavour": flavour, "baseline_delta_miou": baseline["delta_miou"], "rows": {}}
    per_image = activation_bytes(sim)

    def too_big(n: int) -> dict | None:
        """ONNX Runtime's calibrators hold n images' activations: refused beyond --calib-memory-gb, not OOM-killed."""
        need = n * per_image / 1e9
        if flavour in ORT_FLAVOURS and need > opts.calib_memory_gb:
            return {"not_measured": f"ONNX Runtime's calibrator would hold {need:.1f} GB for {n} images "
                    f"(> --calib-memory-gb {opts.calib_memory_gb:g})"}  # fmt: skip
        return None

    if flavour in ORT_FLAVOURS:
        for method in ("entropy", "percentile"):
            out["rows"][method] = too_big(len(calib)) or variant(
                method, flavour, calib_spec(opts, method=method), calib
            )
    else:
        out["rows"]["entropy"] = out["rows"]["percentile"] = {
            "not_applicable": "NNCF chooses its own range statistics; --calib-method is ONNX Runtime's"
        }
    n_more = min(opts.remedy_calib_size, len(dataset(opts, opts.data, "train", hw)))
    out["rows"][f"calib{n_more}"] = too_big(n_more)
    if out["rows"][f"calib{n_more}"] is None:
        more = feeds_of(opts, opts.data, "train", hw, n_more, seed=opts.seed)
        check_no_overlap(more, val_digests)
        out["rows"][f"calib{n_more}"] = variant(f"calib{n_more}", flavour, calib_spec(opts, n_more), more)
    # NNCF accuracy-aware: judged on training images that are not calibration images (calibrate/stage.py).
    train = dataset(opts, opts.data, "train", hw)
    indices = pick_indices(opts.calib_size, len(train), opts.seed)
    rest = sorted(set(range(len(train))) - set(indices))
    if rest:
        from bckd_pipeline.data.feeds import DatasetFeeds

        chosen = [rest[i] for i in pick_indices(min(opts.calib_size, len(rest)), len(rest), opts.seed + 1)]
        judge = DatasetFeeds.from_dataset(train, chosen, tuple(hw))
        check_no_overlap(judge, val_digests)
        spec = calib_spec(opts, max_miou_drop=opts.max_miou_drop)
        tag = f"accuracy-aware{opts.max_miou_drop:g}"
        out["rows"][f"nncf-{tag}"] = {
            **variant(tag, "nncf", spec, calib, validation=judge),
            "judged_on": f"{len(judge)} training images that are not calibration images",
        }
    out["sweep"] = sensitivity_sweep(student, flavour, sim, calib, val, bench, baseline, opts)
    return out


def sensitivity_sweep(student: Student, flavour: str, sim: Path, calib, val, bench, baseline: dict, opts) -> dict:
    """All but one layer group quantized, one group at a time; ranked by the ΔmIoU it recovers."""
    preset, meta = student.preset, student.meta
    hw = opts.sizes[0]
    res_dir = opts.out / "results" / preset
    work = opts.out / "work" / preset / hw_name(hw)
    all_int8 = cached(
        res_dir / f"lat-{flavour}@{hw_name(hw)}.json",
        opts.key(
            checkpoint=student.sha256,
            hw=list(hw),
            runs=opts.runs,
            what="latency",
            flavour=flavour,
            calib=opts.calib_size,
        ),
        lambda: timing(artifact_path(work, flavour), bench, opts.runs, opts, "int8"),
    )
    rows = []
    for group, nodes in layer_groups(sim).items():
        if out_of_time(opts):
            rows.append({"group": group, "nodes": len(nodes), "not_measured": "--stop-at reached"})
            continue
        names = resolvable(flavour, sim, nodes)
        tag = "float-" + group.replace("/", "-")
        if not names:
            rows.append(
                {"group": group, "nodes": len(nodes), "skipped": "no node of it survives the quantizer's graph"}
            )
            continue
        path = artifact_path(work, flavour, f"-{tag}")
        spec = calib_spec(opts, exclude=tuple(names))

        def make(spec=spec, path=path) -> dict:
            settings = quantize(flavour, sim, path, calib, spec, num_classes=meta.num_classes)
            acc = score(sim, path, val, num_classes=meta.num_classes, ignore_index=meta.ignore_index, opts=opts)
            return {
                **acc,
                "int8_exclude": settings.get("int8_exclude"),
                "latency": timing(path, bench, opts.runs, opts, "int8"),
            }

        key = opts.key(
            checkpoint=student.sha256,
            what="sweep",
            flavour=flavour,
            group=group,
            nodes=names,
            calib=opts.calib_size,
            runs=opts.runs,
        )
        r = cached(res_dir / f"sweep-{flavour}-{tag}@{hw_name(hw)}.json", key, make)
        row = {"group": group, "nodes": len(nodes), "excluded_nodes": len(names), "names": names, **r}
        if "error" not in r:
            row["recovered_miou"] = r["delta_miou"] - baseline["delta_miou"]
            if all_int8.get("p50_ms") and r["latency"].get("p50_ms"):
                row["latency_x_all_int8"] = r["latency"]["p50_ms"] / all_int8["p50_ms"]
        rows.append(row)
        print(f"  sweep {preset} {flavour} {group}: {short(r)}", flush=True)
    ranked = sorted((r for r in rows if "recovered_miou" in r), key=lambda r: -r["recovered_miou"])
    return {"all_int8_latency": all_int8, "groups": rows, "ranking": [r["group"] for r in ranked]}


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
def lscpu() -> dict:
    """`lscpu`'s model name, flags and caches (the brief asks for lscpu beside machine.py's /proc/cpuinfo)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": error_text(exc)}
    keep = (
        "Architecture",
        "Model name",
        "CPU(s)",
        "Thread(s) per core",
        "Core(s) per socket",
        "Flags",
        "L1d cache",
        "L2 cache",
        "L3 cache",
        "Hypervisor vendor",
    )
    facts = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k.strip() in keep:
            facts[k.strip()] = v.strip().split() if k.strip() == "Flags" else v.strip()
    return facts


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxsim", "openvino", "nncf", "numpy", "segmentation-models-pytorch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    try:
        here = Path(__file__).resolve().parent.parent
        out["git"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        out["git"] = None
    return out


def worst_rows(students: dict, n: int) -> list[tuple[str, str]]:
    rows = [
        (acc["delta_miou"], preset, flavour)
        for preset, s in students.items()
        for flavour, acc in s.get("accuracy", {}).items()
        if "delta_miou" in acc
    ]
    return [(p, f) for _, p, f in sorted(rows)[:n]]


def out_of_time(opts: Options) -> bool:
    return opts.stop_at is not None and datetime.now(timezone.utc) >= opts.stop_at


def run(opts: Options, trained: dict | None = None, write=None) -> dict:
    """The whole table for ``opts.students``; returns the JSON payload (also the test's entry point).

    Phases, most needed first: every student's accuracy and training-size latency; the second size;
    the remedies for the worst rows; the other sizes. ``write(payload)`` is called after every unit of
    work, so the JSON on disk is always the latest complete state; with ``opts.stop_at`` the work not
    started by then is listed under ``not_measured``, never estimated.
    """
    from bckd_pipeline.machine import machine_facts

    payload = {
        "format": FORMAT,
        "command": opts.command,
        "pythonpath": os.environ.get("PYTHONPATH"),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "finished": None,
        "machine": machine_facts(),
        "lscpu": lscpu(),
        "versions": versions(),
        "settings": settings(opts),
        "students": {},
        "remedies": [],
        "not_measured": [],
    }
    students = payload["students"]

    def snapshot() -> None:
        if write is not None:
            write(payload)

    loaded: dict[str, Student] = {}
    for preset, t in (trained or {}).items():
        if "error" in t:
            students[preset] = {"error": t["error"], "trained": t}
    for preset, ckpt in opts.students.items():
        if out_of_time(opts):
            payload["not_measured"].append(f"{preset}: every measurement (--stop-at reached)")
            continue
        print(f"== {preset} ({ckpt})", flush=True)
        loaded[preset] = load_student(preset, ckpt)
        students[preset] = measure_student(loaded[preset], opts)
        if trained and preset in trained:
            students[preset]["trained"] = trained[preset]
        snapshot()

    def larger(hw) -> None:
        for preset, student in loaded.items():
            if "error" in students[preset]:
                continue
            if out_of_time(opts):
                payload["not_measured"].append(f"{preset} latency at {hw_name(hw)} (--stop-at reached)")
                continue
            print(f"== {preset} at {hw_name(hw)}", flush=True)
            students[preset]["latency"][hw_name(hw)] = latency_at(student, hw, opts)
            snapshot()

    for hw in opts.sizes[1:2]:  # the second size (CamVid's native) before the remedies, the rest after them
        larger(hw)
    if opts.remedies:
        for preset, flavour in worst_rows(students, opts.worst):
            if out_of_time(opts):
                payload["not_measured"].append(f"remedies for {preset} {flavour} (--stop-at reached)")
                continue
            print(f"== remedies for {preset} {flavour}", flush=True)
            payload["remedies"].append(
                remedies_for(loaded[preset], flavour, students[preset]["accuracy"][flavour], opts)
            )
            snapshot()
    for hw in opts.sizes[2:]:
        larger(hw)
    payload["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    snapshot()
    return payload


def settings(opts: Options) -> dict:
    return {
        "data": opts.data,
        "latency_data": opts.latency_data or opts.data,
        "flavours": {f: FLAVOURS[f] for f in opts.flavours},
        "accuracy_size": list(opts.sizes[0]),
        "latency_sizes": [list(hw) for hw in opts.sizes],
        "val_images": opts.val_images or "all",
        "calibration": f"{opts.calib_size} train-split images at the training size (pick_indices, seed {opts.seed}); "
        f"at each larger size up to {opts.latency_calib_size} train-split images of --latency-data resized to it, "
        f"fewer where ONNX Runtime's calibrator would hold more than {opts.calib_memory_gb:g} GB of activations "
        "(the count and why: latency.<size>.calibration_images[_why])",
        "latency": f"deploy/bench.py protocol, batch 1: {opts.runs} timed runs at the training size, "
        f"{opts.large_runs} at the larger sizes, after >= 20 runs and >= 1 s of warm-up; threads "
        f"{opts.threads or 'default (all cores)'}; 8 val images cycled",
        "larger_sizes": "latency only: the same weights exported at that static size; accuracy is scored at the "
        "training size, where the students were trained",
        "bootstrap": f"paired, images resampled, {opts.resamples} resamples, percentile 2.5/97.5 (two-sided 95 %)",
        "reference": "the FP32 simplified ONNX of the same student, run by ONNX Runtime",
        "trt_qdq": "the TensorRT-style Q/DQ ONNX run by ONNX Runtime on this CPU; TensorRT itself was not run",
        "nncf_runtime": "OpenVINO CPU plugin, INT8 IR without a precision hint (as the pipeline deploys it)",
        "remedies": f"for the {opts.worst} rows with the largest mIoU drop, at the training size",
        "stop_at": opts.stop_at.isoformat(timespec="minutes") if opts.stop_at else None,
    }


def markdown(payload: dict) -> str:
    sizes = [hw_name(hw) for hw in payload["settings"]["latency_sizes"]]
    lines = [
        "| student | flavour | FP32 mIoU | ΔmIoU [95 % CI] | agreement % | ΔBF | "
        + " | ".join(f"p50 ms {s} (× FP32)" for s in sizes)
        + " |",
        "|---|---|---:|---|---:|---:|" + "---:|" * len(sizes),
    ]
    for preset, s in payload["students"].items():
        if "error" in s and not s.get("accuracy"):
            lines.append(f"| {preset} | - | - | {s['error'][:120]} | | |" + " |" * len(sizes))
            continue
        fp = s.get("fp32", {})
        cells = []
        for s_name in sizes:
            lat = s["latency"].get(s_name, {})
            ref, ov = lat.get("fp32-onnxruntime", {}), lat.get("fp32-openvino", {})
            cell = f"{ref['p50_ms']:.2f}" if ref.get("p50_ms") else lat.get("error", "-")[:60]
            cells.append(cell + (f" (OpenVINO {ov['p50_ms']:.2f})" if ov.get("p50_ms") else ""))
        lines.append(
            f"| {preset} | FP32 ONNX (ORT) | {fp.get('miou', float('nan')):.2f} | - | 100 | - | "
            + " | ".join(cells)
            + " |"
        )
        for flavour, acc in s["accuracy"].items():
            cells = []
            for s_name in sizes:
                lat = s["latency"].get(s_name, {})
                mine = lat.get(flavour, {})
                ref = lat.get("fp32-openvino" if flavour == "nncf" else "fp32-onnxruntime", {})
                if mine.get("p50_ms") and ref.get("p50_ms"):
                    cells.append(f"{mine['p50_ms']:.2f} (×{ref['p50_ms'] / mine['p50_ms']:.2f})")
                else:
                    cells.append((mine.get("error") or mine.get("not_measured") or lat.get("error") or "-")[:60])
            if "error" in acc:
                lines.append(f"| {preset} | {flavour} | | {acc['error'][:120]} | | | " + " | ".join(cells) + " |")
                continue
            lo, hi = acc["delta_miou_ci95"]
            dbf = acc.get("delta_boundary_f")
            lines.append(
                f"| {preset} | {flavour} | {acc['miou_fp32']:.2f} | {acc['delta_miou']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                f"{100 * acc['pixel_agreement']:.2f} | {'-' if dbf is None else f'{dbf:+.2f}'} | "
                + " | ".join(cells)
                + " |"
            )
    for r in payload["remedies"]:
        lines += [
            "",
            f"Remedies for {r['student']} {r['flavour']} (ΔmIoU {r['baseline_delta_miou']:+.2f}):",
            "",
            "| remedy | ΔmIoU [95 % CI] | agreement % | p50 ms |",
            "|---|---|---:|---:|",
        ]
        for name, row in r["rows"].items():
            if "delta_miou" in row:
                lo, hi = row["delta_miou_ci95"]
                lines.append(
                    f"| {name} | {row['delta_miou']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                    f"{100 * row['pixel_agreement']:.2f} | {row['latency']['p50_ms']:.2f} |"
                )
            else:
                why = row.get("error") or row.get("not_applicable") or row.get("not_measured")
                lines.append(f"| {name} | {why} | | |")
        sweep = r["sweep"]
        lines += [
            "",
            "| group kept in float | nodes | ΔmIoU [95 % CI] | recovered | p50 ms (× all INT8) |",
            "|---|---:|---|---:|---:|",
        ]
        order = {g: i for i, g in enumerate(sweep["ranking"])}
        for g in sorted(sweep["groups"], key=lambda g: order.get(g["group"], 1e9)):
            if "recovered_miou" in g:
                lo, hi = g["delta_miou_ci95"]
                lines.append(
                    f"| {g['group']} | {g['excluded_nodes']} | {g['delta_miou']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                    f"{g['recovered_miou']:+.2f} | {g['latency']['p50_ms']:.2f} "
                    f"(×{g.get('latency_x_all_int8', float('nan')):.2f}) |"
                )
            else:
                why = g.get("error") or g.get("skipped") or g.get("not_measured")
                lines.append(f"| {g['group']} | {g['nodes']} | {why} | | |")
    return "\n".join(lines)


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
            write_json(args.json, payload, indent=1)

    payload = run(opts, trained, write)
    print()
    print(markdown(payload))
    if payload["not_measured"]:
        print("\nNot measured: " + "; ".join(payload["not_measured"]))
    if args.json:
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
