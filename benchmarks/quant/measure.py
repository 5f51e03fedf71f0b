"""Measuring one student for the quantization table: the pipeline's export at a size, each INT8 flavour made
by the pipeline's own quantizer, its accuracy against the FP32 ONNX (ΔmIoU with a paired-bootstrap interval,
pixel agreement, boundary F) and its latency; and training the students that are missing.

Every result goes through ``common.cached``: one JSON file per (student, what, size) under OUT/results/,
keyed by the settings that decide it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import cached, child_env, cli_argv, error_text

from bckd_pipeline.fileio import file_sha256

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


def out_of_time(opts: Options) -> bool:
    return opts.stop_at is not None and datetime.now(timezone.utc) >= opts.stop_at


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
    env = child_env(1)
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
            proc = subprocess.Popen(cli_argv(cmd), stdout=log, stderr=subprocess.STDOUT, env=env)
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
    from bckd_pipeline.runtimes import backends_for, build_runtime

    return build_runtime(backends_for(path)[0].name, path, device="CPU", precision=precision, threads=threads)


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
