"""``ingest RUN_DIR RESULT_DIR``: a device result made by hand, read into a pending TensorRT run.

A Jetson the host cannot reach over SSH gets the bundle by hand and runs ``python3 agent.pyz job.json
out`` there; ``out/`` comes back. This command checks it against the run's own bundle (job id, the
sha256 of every file the device reported, the sha256 of the ONNX and images it ran, the run's image
digests), puts it where ``--device ssh://`` would have (``deploy/tensorrt/device``), and replays the
run's recorded command (``OUT/command.json``, written by ``run``/``deploy``): every finished stage is a
cache hit, the device stage takes the ingested result, and the ledger, ``report.json``, ``report.md``,
``report.html`` and ``manifest.json`` are recomputed. The exit code is the run's (0 or 1), then the
gate's when ``--budgets`` is given (here or in the recorded command).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError, DataError, StageCheckError

COMMAND_FILE = "command.json"
COMMAND_FORMAT = "bckd-pipeline/command-v1"


def record_command(argv: list[str], out: Path) -> None:
    """Write OUT/command.json: the command line and the folder it ran from (relative paths resolve there)."""
    from ..fileio import write_text

    out = Path(out)
    if not out.is_dir():
        return
    record = {"format": COMMAND_FORMAT, "argv": list(argv), "cwd": os.getcwd()}
    write_text(out / COMMAND_FILE, json.dumps(record, indent=2) + "\n")


@contextmanager
def _cwd(folder: str):
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _recorded(run_dir: Path) -> dict:
    path = run_dir / COMMAND_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{str(run_dir)!r} has no readable {COMMAND_FILE}: it is not the --out folder of a `bckd-pipeline run` "
            "or `deploy` (or one made before `ingest` existed). Give the run's --out folder, or rerun that command "
            "once to record it."
        ) from None
    if record.get("format") != COMMAND_FORMAT or record.get("argv", [None])[0] not in ("run", "deploy"):
        raise ConfigError(f"{path} is not a recorded run or deploy command (format {record.get('format')!r}).")
    return record


def _check_against_bundle(run_dir: Path, result_dir: Path) -> dict:
    """The result, checked against the run's bundle; a mismatch is a user mistake (exit 2)."""
    from ..device.agent import RESULT_FILE
    from ..device.bundle import TENSORRT_DIR, read_result
    from ..fileio import file_sha256

    bundle = run_dir / TENSORRT_DIR / "bundle"
    try:
        job = json.loads((bundle / "job.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{str(run_dir)!r} has no device bundle ({TENSORRT_DIR}/bundle/job.json): only runs of a TensorRT target "
            "(jetson, jetson-orin-nano/-nx, jetson-agx-orin, tensorrt) have a device step to ingest."
        ) from None
    if not (result_dir / RESULT_FILE).is_file():
        raise ConfigError(
            f"{str(result_dir)!r} has no {RESULT_FILE}: give the folder the agent wrote on the device "
            "(`python3 agent.pyz job.json out` writes out/), copied back whole."
        )
    try:
        result = read_result(result_dir, job)
    except StageCheckError as e:
        if "failed" in str(e) and "device-side" in str(e):
            raise  # the device's own build or measurement failed: exit 1, as with --device ssh://
        raise DataError(f"{result_dir} cannot be ingested into {run_dir}: {e}") from None
    for name, digest in (result.get("inputs") or {}).items():
        if not (bundle / name).is_file() or file_sha256(bundle / name) != digest:
            raise DataError(
                f"The device ran another {name} than this run's bundle holds (sha256 differs): the result belongs to "
                f"another run. Copy {bundle} to the device, run it there, and ingest that result; nothing was kept."
            )
    return job


def _place(result_dir: Path, dest: Path, job: dict) -> None:
    """Copy the checked result into deploy/tensorrt/device in one rename, with the ingest record."""
    from ..device.bundle import INGESTED_FILE, publish, read_result

    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        shutil.rmtree(staging)
        shutil.copytree(result_dir, staging)
        read_result(staging, job)  # the copy, checked again
        record = {"job_id": job.get("job_id"), "source": str(result_dir.resolve()), "ingested_at": time.time()}
        (staging / INGESTED_FILE).write_text(json.dumps(record, indent=2) + "\n")
        publish(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def ingest(args, replay) -> int:
    """``replay(args)`` runs the recorded command (cli/__init__.py passes it: cli/ modules never import it)."""
    from ..device.bundle import TENSORRT_DIR
    from .parser import build_parser

    run_dir, result_dir = Path(args.run_dir).resolve(), Path(args.result_dir).resolve()
    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR {str(args.run_dir)!r} is not a folder. Give the --out folder of the pending run.")
    record = _recorded(run_dir)
    job = _check_against_bundle(run_dir, result_dir)
    _place(result_dir, run_dir / TENSORRT_DIR / "device", job)
    print(
        f"ingested {result_dir} (job {job.get('job_id')}) into {run_dir}; recomputing the ledger and reports",
        file=sys.stderr,
    )

    again = build_parser().parse_args(record["argv"])
    again.out = run_dir
    for name in ("budgets", "baseline", "junit", "markdown", "confidence"):
        if getattr(args, name, None) is not None:
            setattr(again, name, getattr(args, name))
    again.allow_pending = again.allow_pending or args.allow_pending
    if not Path(record["cwd"]).is_dir():
        raise ConfigError(
            f"The run was made in {record['cwd']!r}, which is not here; its relative paths (--data, --model, ...) "
            "resolve there. Run ingest on the machine and checkout that made the run."
        )
    with _cwd(record["cwd"]):
        code = replay(again)
    if code == 3:  # still pending: say why instead of leaving the user with exit 3
        raise StageCheckError(
            f"The run is still pending after ingesting {result_dir}; see {run_dir / 'report.md'} for the rows that "
            "are not measured."
        )
    return code
