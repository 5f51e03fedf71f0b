"""The device-side agent: build the TensorRT engine where it will run, then parity and latency there.

It is shipped to the device as ``agent.pyz`` (a zipapp of this file and the few modules it needs:
the Runtime lifecycle, the latency protocol, the TensorRT build recipe and runtime, the Jetson facts,
the task that turns raw outputs into predictions; no torch, no onnx) beside ``job.json``, the Q/DQ
ONNX and the evaluation images, and run as::

    python3 agent.pyz job.json [OUTPUT_DIR]

It writes into OUTPUT_DIR (default: the job's folder) ``model.plan`` (a plain serialized engine),
``trtexec.sh`` (the equivalent command for the TensorRT found there), ``build.log``,
``labels.npz`` (the label map of every evaluation image) and, last, ``result.json``: the device's
facts, the build settings, the latency report and the sha256 of every file it wrote. A device
without TensorRT gets the Q/DQ ONNX measured with ONNX Runtime instead, and ``result.json`` says
so in ``fallback``; a TensorRT build that fails is an error (exit 1, ``result.json`` has ``error``),
never a fallback.

It runs on Python 3.8+ (JetPack 5's system Python is 3.8; JetPack 6 has 3.10) with TensorRT 8.5+
(JetPack 5.1 and later); older ones stop at once with a message saying what to install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from ..fileio import array_sha256, atomic_write, file_sha256, write_json
from ..ledger import DEVICE_LABELS_FILE, ENGINE_ROW, FALLBACK_ROW
from ..tasks import DEFAULT_TASK, get_task

JOB_FORMAT = "bckd-pipeline/device-job-v1"
RESULT_FORMAT = "bckd-pipeline/device-result-v1"
RESULT_FILE = "result.json"
PLAN_FILE = "model.plan"
# The ledger row the device's measurements become: the engine, or ONNX Runtime when TensorRT is not usable.
LATENCY_IMAGES = 8  # the host's latency stage times the same first 8 evaluation images
MIN_PYTHON = (3, 8)


def _facts() -> dict:
    from .jetson import device_facts, gpu_facts

    facts = device_facts()
    if not facts.get("is_jetson"):
        facts["gpu"] = gpu_facts()
    return facts


def _tensorrt_missing() -> list[str]:
    """Why TensorRT cannot run here, one reason per package; empty when it can.

    Imported, not just looked up: a TensorRT whose libnvinfer does not match JetPack's is found by
    the import system and still fails to load.
    """
    reasons = []
    for module in ("tensorrt", "pycuda.driver"):
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, or OSError from a shared library that does not load
            reasons.append(f"{module.split('.')[0]}: {type(e).__name__}: {e}")
    return reasons


def _runtime(job: dict, work: Path, out: Path):
    """(runtime, engine section or None, fallback note or None) for this device."""
    from ..runtimes import build_runtime

    missing = _tensorrt_missing()
    if not missing:
        from ..targets.tensorrt import (
            EngineRecipe,
            build_engine,
            parse_trt_version,
            trtexec_command,
            write_build_script,
        )
        import tensorrt as trt

        shape = job["recipe"]["input_shape"]
        recipe = EngineRecipe(**{**job["recipe"], "input_shape": None if shape is None else tuple(shape)})
        plan = out / PLAN_FILE
        build = build_engine(work / job["onnx"], plan, recipe, log_path=out / "build.log")
        version = parse_trt_version(trt.__version__)
        command = trtexec_command(job["onnx"], PLAN_FILE, recipe, version)
        # The script changes to its own folder: the ONNX is named relative to it.
        write_build_script(out / "trtexec.sh", os.path.relpath(work / job["onnx"], out), PLAN_FILE, recipe, version)
        runtime = build_runtime("tensorrt", plan, name=ENGINE_ROW, precision="int8", cuda_graph=job["cuda_graph"])
        return runtime, {"file": PLAN_FILE, "build": build, "trtexec": command}, None
    if not job.get("allow_fallback", True):
        from ..errors import BackendMissingError

        raise BackendMissingError(
            f"TensorRT is not usable on this device ({'; '.join(missing)}); install JetPack's TensorRT "
            "(apt install python3-libnvinfer) and pycuda, or allow the ONNX Runtime fallback."
        )
    note = (
        f"TensorRT is not usable on this device ({'; '.join(missing)}): no engine was built; "
        "the Q/DQ ONNX was measured with ONNX Runtime on the device's CPU instead"
    )
    return build_runtime("onnxruntime", work / job["onnx"], precision="int8", name=FALLBACK_ROW), None, note


def run_job(job_file: Path, out: Path | None = None) -> dict:
    """Run one job; returns the result written to ``OUT/result.json``."""
    from ..targets.profiles import LatencySpec
    from ..deploy.bench import benchmark

    job_file = Path(job_file)
    work = job_file.parent
    out = Path(out) if out is not None else work
    out.mkdir(parents=True, exist_ok=True)
    job = json.loads(job_file.read_text())
    if job.get("format") != JOB_FORMAT:
        raise ValueError(f"{job_file} is not a bckd-pipeline device job (format {job.get('format')!r})")
    # What this result was made from, so that `bckd-pipeline ingest` can match it to the run's bundle.
    inputs = {name: file_sha256(work / job[key]) for key, name in (("onnx", job["onnx"]), ("feeds", job["feeds"]))}
    started = time.time()
    with np.load(work / job["feeds"]) as data:
        images = data["images"]
    task = get_task(job.get("task", DEFAULT_TASK))
    facts = _facts()
    runtime, engine, fallback = _runtime(job, work, out)
    with runtime:
        labels = []
        for image in images:
            feed = {job["input_name"]: image[None]}
            labels.append(task.prediction_of(task.raw_output(runtime.infer(feed), feed))[0])
        feeds = [{job["input_name"]: image[None]} for image in images[:LATENCY_IMAGES]]
        latency = benchmark(runtime, feeds, LatencySpec(**job["latency"])).as_dict()
    stacked = np.stack(labels)
    if np.issubdtype(stacked.dtype, np.integer):  # label maps: the smallest type that holds them
        stacked = stacked.astype(np.uint8 if stacked.max() < 256 else np.uint16)

    def save_labels(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, labels=stacked)

    atomic_write(out / DEVICE_LABELS_FILE, save_labels)
    files = [DEVICE_LABELS_FILE] + ([PLAN_FILE, "build.log", "trtexec.sh"] if engine else [])
    result = {
        "format": RESULT_FORMAT,
        "ok": True,
        "job_id": job.get("job_id"),
        "inputs": inputs,
        "target": job["target"],
        "row": runtime.name,
        "backend": runtime.backend,
        "precision": runtime.precision,
        "fallback": fallback,
        "engine": engine,
        "facts": facts,
        "latency": latency,
        "images": len(images),
        "digests": [array_sha256(i[None]) for i in images],  # pairs outputs with the host's images
        "files": {name: file_sha256(out / name) for name in files if (out / name).exists()},
        "seconds": time.time() - started,
        "python": sys.version.split()[0],
    }
    write_json(out / RESULT_FILE, result, default=str)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if sys.version_info < MIN_PYTHON:
        print(
            f"error: this agent needs Python {'.'.join(map(str, MIN_PYTHON))}+ (JetPack 5 has 3.8, JetPack 6 has "
            f"3.10); this is {sys.version.split()[0]}. Run it with python3 from JetPack 5.1 or later.",
            file=sys.stderr,
        )
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    job_file = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else job_file.parent
    try:
        run_job(job_file, out)
        return 0
    except Exception as e:  # the host reads the reason from result.json; the traceback goes to stderr
        traceback.print_exc()
        out.mkdir(parents=True, exist_ok=True)
        error = {"format": RESULT_FORMAT, "ok": False, "error": f"{type(e).__name__}: {e}"}
        try:
            error["job_id"] = json.loads(job_file.read_text()).get("job_id")
        except (OSError, ValueError):
            pass
        write_json(out / RESULT_FILE, error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
