"""The host's side of on-device work: the portable bundle, running it, and reading what came back.

``write_bundle`` puts everything a device needs into one folder (``deploy/tensorrt/bundle``):
the Q/DQ ONNX, the evaluation images as the host preprocessed them, ``job.json``, the agent
(``agent.pyz``), the ``trtexec`` build script, and a README saying how to run it by hand. The same
bundle runs three ways: in this process when this host has TensorRT and is the target
(``run_here``), on a remote device over SSH (``device/remote.py``), or by hand on a device that is
not reachable from here. ``read_result`` checks what came back (format, file hashes, that the
labels belong to the host's images); ``deploy/replay.py`` feeds the device's label maps to the parity
ledger, so the device row is judged by the same code as every other stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..context import DeviceOutcome
from ..data.feeds import DatasetFeeds
from ..errors import StageCheckError
from ..fileio import array_sha256, atomic_write, file_sha256
from ..targets.profiles import LatencySpec, TargetProfile
from .agent import JOB_FORMAT, RESULT_FILE, RESULT_FORMAT

# What the agent imports on the device: the Runtime lifecycle and registry, the latency protocol, the
# TensorRT recipe, the ONNX Runtime and TensorRT runtimes, the Jetson facts, the task (raw outputs ->
# predictions). No torch, no onnx: a Jetson image rarely has them.
AGENT_MODULES = (
    "__init__.py",
    "errors.py",
    "fileio.py",
    "ledger.py",
    "machine.py",
    "targets/__init__.py",
    "targets/availability.py",
    "targets/profiles.py",
    "targets/tensorrt.py",
    "deploy/__init__.py",
    "deploy/bench.py",
    "runtimes/__init__.py",
    "runtimes/base.py",
    "runtimes/registry.py",
    "runtimes/onnxruntime.py",
    "runtimes/tensorrt.py",
    "device/__init__.py",
    "device/agent.py",
    "device/jetson.py",
    "tasks/__init__.py",
    "tasks/base.py",
    "tasks/segmentation.py",
    "tasks/detection.py",
    "tasks/detection_ap.py",
    "tasks/detection_decode.py",
)
TENSORRT_DIR = "deploy/tensorrt"  # in OUT: bundle/ (what ships) and device/ (what came back)
BUNDLE_FILES = ("job.json", "model.qdq.onnx", "feeds.npz", "agent.pyz", "build_engine.sh", "README.txt")
# JetPack 6.1/6.2 ship TensorRT 10.3 (6.0: 8.6, 5.1.x: 8.5): the build script for a Jetson is written for
# 10.3, and its flags are the same from 8.5 to 10.x (weakly typed), so it runs on all of them. For a
# desktop GPU without TensorRT here, the script is written for a current 10.x. The agent always writes
# trtexec.sh for the version it finds next to the engine it builds.
JETPACK6_TENSORRT = (10, 3, 0)
CURRENT_TENSORRT = (10, 12, 0)


def _local_tensorrt_version() -> tuple[int, int, int]:
    try:
        import tensorrt
    except ImportError:
        return CURRENT_TENSORRT
    from ..targets.tensorrt import parse_trt_version

    return parse_trt_version(tensorrt.__version__)


def agent_digest() -> str:
    """sha256 over the agent's modules: a bundle made by other code is stale even at the same version."""
    package = Path(__file__).resolve().parents[1]
    listing = "".join(f"{rel} {file_sha256(package / rel)}\n" for rel in AGENT_MODULES)
    return hashlib.sha256(listing.encode()).hexdigest()


# The zipapp's entry point: plain syntax, so that an interpreter too old for the agent says so.
AGENT_MAIN = (
    "import sys\n"
    "if sys.version_info < (3, 8):\n"
    "    sys.stderr.write('error: the bckd-pipeline agent needs Python 3.8+ (JetPack 5.1 or later); this is %s\\n'"
    " % sys.version.split()[0])\n"
    "    sys.exit(2)\n"
    "from bckd_pipeline.device.agent import main\n"
    "sys.exit(main())\n"
)


def job_id(job: dict, onnx: Path, feeds: Path) -> str:
    """Names one bundle: its job (recipe, protocol, images) and the bytes of the ONNX and images it ships."""
    payload = json.dumps({k: v for k, v in job.items() if k != "job_id"}, sort_keys=True)
    return hashlib.sha256((payload + file_sha256(onnx) + file_sha256(feeds)).encode()).hexdigest()[:16]


def build_agent(path: Path) -> Path:
    """``agent.pyz``: a zipapp of the modules in ``AGENT_MODULES``; ``python3 agent.pyz job.json``."""
    package = Path(__file__).resolve().parents[1]

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for rel in AGENT_MODULES:
                z.write(package / rel, f"bckd_pipeline/{rel}")
            z.writestr("__main__.py", AGENT_MAIN)

    atomic_write(path, write)
    return path


def write_bundle(
    folder: Path,
    qdq_onnx: Path,
    feeds: DatasetFeeds,
    profile: TargetProfile,
    latency: LatencySpec,
    *,
    dynamic: bool = False,
    task: str = "segmentation",
) -> dict:
    """Write the portable bundle into ``folder`` (replaced whole); returns the job.

    ``task``: the model's (tasks/); the agent turns the engine's named outputs into predictions with it (a job
    without the key is a segmentation model's).

    ``dynamic``: the ONNX has dynamic dimensions (a user's ``deploy --onnx`` file): the engine is built for
    the evaluation images' shape (an optimisation profile with min = opt = max). A static ONNX carries its
    shape, which TensorRT (and trtexec) read from it."""
    from ..targets.tensorrt import EngineRecipe, write_build_script

    opts = profile.tensorrt
    recipe = EngineRecipe(
        precision=str(profile.precision),
        workspace_mib=opts.workspace_mib,
        dla_core=opts.dla_core,
        input_name=feeds.input_name,
        input_shape=tuple(int(d) for d in feeds.images[0].shape) if dynamic else None,
    )
    job = {
        "format": JOB_FORMAT,
        "target": profile.name,
        "device": profile.device,
        "onnx": "model.qdq.onnx",
        "feeds": "feeds.npz",
        "input_name": feeds.input_name,
        "recipe": asdict(recipe),
        "latency": asdict(latency),
        "cuda_graph": opts.cuda_graph,
        "allow_fallback": True,
        "digests": [array_sha256(x) for x in feeds.images],
    }
    if task != "segmentation":
        job["task"] = task
    folder = Path(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        shutil.copyfile(qdq_onnx, staging / "model.qdq.onnx")
        with open(staging / "feeds.npz", "wb") as f:
            np.savez(f, images=np.concatenate(feeds.images, axis=0), names=np.asarray(feeds.names))
        build_agent(staging / "agent.pyz")
        job["job_id"] = job_id(job, staging / "model.qdq.onnx", staging / "feeds.npz")
        version = JETPACK6_TENSORRT if opts.jetson else _local_tensorrt_version()
        write_build_script(staging / "build_engine.sh", "model.qdq.onnx", "model.plan", recipe, version)
        (staging / "job.json").write_text(json.dumps(job, indent=2))
        (staging / "README.txt").write_text(_readme(profile))
        publish(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return job


def _readme(profile: TargetProfile) -> str:
    return (
        f"bckd-pipeline device bundle for --target {profile.name} ({profile.device}).\n\n"
        "A TensorRT engine is specific to the GPU and TensorRT version that build it: build it on the device.\n\n"
        "  scp -r bundle user@device:bckd-bundle\n"
        "  ssh user@device 'cd bckd-bundle && python3 agent.pyz job.json out'\n"
        "  scp -r user@device:bckd-bundle/out ./device-result\n"
        "  bckd-pipeline ingest RUN_DIR ./device-result   # on the host: fills the pending rows, exit 0 or 1\n\n"
        "agent.pyz builds model.plan with the TensorRT Python API, checks it on the evaluation images in\n"
        "feeds.npz and runs the latency protocol; out/result.json holds the device facts and measurements.\n"
        "build_engine.sh is the equivalent trtexec command (engine only, no measurements).\n"
        "The device needs Python 3.8+ with numpy, TensorRT 8.5+ (JetPack 5.1 or later) and pycuda; --cuda-graph\n"
        "also needs cuda-python matching the device's CUDA major (docker/jetson.Dockerfile has all of them).\n"
        "Or let the pipeline do all of it: bckd-pipeline run --target "
        f"{profile.name} --device ssh://user@device\n"
    )


def run_here(bundle: Path, dest: Path) -> dict:
    """Run the bundle's job in this process (this host has TensorRT and is the target)."""
    from .agent import run_job

    staging = Path(tempfile.mkdtemp(prefix=f".{Path(dest).name}-", dir=Path(dest).parent))
    try:
        run_job(Path(bundle) / "job.json", staging)
        result = read_result(staging, json.loads((Path(bundle) / "job.json").read_text()))
        publish(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def publish(staging: Path, dest: Path) -> None:
    """Replace ``dest`` by the checked ``staging`` folder in one rename."""
    dest = Path(dest)
    if dest.exists():
        old = dest.with_name(f".{dest.name}-old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, dest)


def read_result(folder: Path, job: dict) -> dict:
    """The device's ``result.json``, checked: format, success, file hashes, the host's own images."""
    folder = Path(folder)
    path = folder / RESULT_FILE
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StageCheckError(f"The device returned no readable {RESULT_FILE} ({e}); nothing was kept.") from None
    if result.get("format") != RESULT_FORMAT:
        raise StageCheckError(f"{path} is not a device result (format {result.get('format')!r}).")
    if not result.get("ok"):
        raise StageCheckError(f"The device-side build or measurement failed: {result.get('error')}")
    _check_result_fields(result, path)
    for name, digest in result["files"].items():
        if not (folder / name).is_file() or file_sha256(folder / name) != digest:
            raise StageCheckError(
                f"{name} from the device does not match the sha256 the device reported: the transfer was "
                "incomplete. Run again; nothing was kept."
            )
    if job.get("job_id") is not None and result.get("job_id") != job["job_id"]:
        raise StageCheckError(
            f"The device result is for job {result.get('job_id')!r}, this run's bundle is job {job['job_id']!r}: the "
            "result belongs to another bundle (an older run, or another run folder). Run this run's bundle "
            "(deploy/tensorrt/bundle) on the device; nothing was kept."
        )
    if result["digests"] != job["digests"]:
        raise StageCheckError(
            "The device measured other images than this run's evaluation images (digests differ); the result "
            "belongs to another job. Run again; nothing was kept."
        )
    return result


# The result's figures: numbers (never a bool or a string) or, where not measured, null.
RESULT_FIGURES = ("p50", "p90", "p99", "mean", "std", "min", "fps", "runs", "batch", "warmup_runs", "warmup_s")


def _check_result_fields(result: dict, path: Path) -> None:
    """Refuse a result whose files lie outside its folder or whose figures have the wrong type."""

    def refuse(what: str) -> None:
        raise StageCheckError(f"{path} is not a device result the agent writes: {what}; nothing was kept.")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    files = result.get("files")
    if not isinstance(files, dict):
        refuse(f"'files' is {type(files).__name__}, not a table of file names and sha256 digests")
    engine = result.get("engine")
    named = [*files, *([engine.get("file")] if isinstance(engine, dict) else [])]
    for name in named:
        if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            refuse(f"the file name {name!r} points outside the result folder (only names inside it are taken)")
    if engine is not None and not isinstance(engine, dict):
        refuse(f"'engine' is {type(engine).__name__}")
    if not isinstance(result.get("images"), int) or isinstance(result.get("images"), bool):
        refuse(f"'images' is {result.get('images')!r}, not a count")
    if not isinstance(result.get("digests"), list):
        refuse(f"'digests' is {type(result.get('digests')).__name__}, not a list")
    latency = result.get("latency")
    if not isinstance(latency, dict):
        refuse(f"'latency' is {type(latency).__name__}, not a table")
    for key in RESULT_FIGURES:
        if latency.get(key) is not None and not number(latency[key]):
            refuse(f"latency figure {key!r} is {latency[key]!r}, not a number")
    samples = latency.get("samples_ms", [])
    if not isinstance(samples, list) or not all(number(v) for v in samples):
        refuse("latency 'samples_ms' is not a list of numbers")


INGESTED_FILE = "ingested.json"  # in deploy/tensorrt/device: a result read in by `bckd-pipeline ingest`


def ingested_outcome(dest: Path, job: dict) -> DeviceOutcome | None:
    """A result that `bckd-pipeline ingest` put into ``dest`` for this very bundle, checked again; else None."""
    marker = Path(dest) / INGESTED_FILE
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
    except ValueError:
        return None
    if record.get("job_id") != job.get("job_id"):
        return None  # the bundle changed since: the result is stale, the device step is pending again
    result = read_result(dest, job)
    return DeviceOutcome(result, Path(dest), f"by hand ({record.get('source', 'ingested')})")
