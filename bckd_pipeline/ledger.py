"""The ledger's vocabulary, shared by the pipeline, the reports, the gate and the device agent.

A run's ledger has one row per artifact: ``pytorch``, ``onnx``, ``onnx-simplified``, then what the
target adds (``target_artifacts``), then the deployed artifact on its device (measured, pending, or
the device agent's own row). ``Built`` is one such artifact; ``ledger_row_names`` is every row name a
report of a target can hold (budgets name stages from it). The statuses and the report format are
what ``report.json`` says and what the CI gate reads back.

Standard library and ``targets.profiles`` only: the device agent ships this file (device/bundle.py,
AGENT_MODULES), so the rows it measures are named the way the host names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .targets.profiles import Backend, Precision, TargetProfile

REPORT_FORMAT = "bckd-pipeline/report-v1"

# Row status values.
MEASURED = "measured"  # parity and latency on the target's device (or the host, for host stages)
PARITY_ON_HOST = "parity_on_host"  # accuracy from the host's CPU plugin; on-device latency pending
PENDING = "pending"  # not measured here at all

# The row teacher-guided QAT adds after the target's PTQ INT8 row (qat/stage.py), when it runs.
QAT_ROW = "qat-int8"

# The rows the device agent adds for a TensorRT target.
ENGINE_ROW = "tensorrt-int8"
FALLBACK_ROW = "onnx-qdq-on-device"
# The device agent's label map of every evaluation image, beside its result.json (the parity ledger replays them).
DEVICE_LABELS_FILE = "labels.npz"


@dataclass(frozen=True)
class Built:
    """One artifact of the ledger: what made it, what runs it."""

    name: str
    backend: Backend
    precision: Precision
    path: Path | None  # None for the PyTorch reference
    parent: str | None
    settings: dict = field(default_factory=dict)


def pending_row_name(deployed: str, profile: TargetProfile) -> str:
    """The row a report adds for the deployed artifact on a device this host lacks."""
    return f"{deployed}-on-{profile.device.lower()}"


def ledger_row_names(profile: TargetProfile) -> list[str]:
    """Every row a report of this target can have, in ledger order (budgets name stages from it)."""
    names = ["pytorch", "onnx", "onnx-simplified", *(b.name for b in target_artifacts(profile))]
    qat = qat_artifact(profile)
    if profile.backend is Backend.TENSORRT:  # the engine (measured, or pending), or the device's fallback
        return [*names, *([qat.name] if qat else []), ENGINE_ROW, FALLBACK_ROW]
    if qat is None:
        return [*names, pending_row_name(names[-1], profile)]
    # With QAT the deployed artifact (the last row, what the gate's target table budgets) is the QAT row.
    return [*names, qat.name, pending_row_name(names[-1], profile), pending_row_name(qat.name, profile)]


def qat_artifact(profile: TargetProfile) -> Built | None:
    """The row QAT adds after the PTQ INT8 row (path relative to OUT), or None for a target that is not INT8."""
    if profile.precision is not Precision.INT8:
        return None
    here = target_dir(profile)
    if profile.backend is Backend.OPENVINO:
        return Built(QAT_ROW, Backend.OPENVINO, Precision.INT8, here / "qat-int8/model.xml", "openvino-fp32")
    if profile.backend is Backend.ONNXRUNTIME:
        return Built(QAT_ROW, Backend.ONNXRUNTIME, Precision.INT8, here / "model.qat.int8.onnx", "onnx-simplified")
    # TensorRT: the TensorRT-ready Q/DQ ONNX (checked on ONNX Runtime here); the device builds the engine from it.
    return Built(QAT_ROW, Backend.ONNXRUNTIME, Precision.INT8, Path("deploy/model.qat.qdq.onnx"), "onnx-simplified")


SHARED_ROWS = ("pytorch", "onnx", "onnx-simplified")  # the same artifacts for every target of a run folder


def shared_dir(batch: int = 1) -> Path:
    """The folder (relative to OUT) of what every target of a run folder shares: the exported and simplified ONNX
    (a static ``--batch N`` export has its own)."""
    return Path("deploy") if batch == 1 else Path("deploy") / f"batch{batch}"


def target_dir(profile: TargetProfile) -> Path:
    """The folder (relative to OUT) of everything one target adds: a run folder holds several side by side."""
    return Path("deploy") / profile.key


def report_file(key: str, suffix: str) -> str:
    """One target's own report (``report.<target>.json/.md/.html``) or manifest (``manifest.<target>.json``);
    ``report.json`` and ``manifest.json`` are the run folder's combined view."""
    return f"{'manifest' if suffix == 'manifest' else 'report'}.{key}.{'json' if suffix == 'manifest' else suffix}"


def target_artifacts(profile: TargetProfile) -> list[Built]:
    """The artifacts the target adds after the simplified ONNX (paths relative to OUT, in the target's folder)."""
    fp32, fp16, int8 = Precision.FP32, Precision.FP16, Precision.INT8
    here = target_dir(profile)
    if profile.backend is Backend.ONNXRUNTIME:
        if profile.precision is int8:
            return [Built("onnxruntime-int8", Backend.ONNXRUNTIME, int8, here / "model.int8.onnx", "onnx-simplified")]
        if profile.precision is fp16:
            return [Built("onnxruntime-fp16", Backend.ONNXRUNTIME, fp16, here / "model.fp16.onnx", "onnx-simplified")]
        return []
    if profile.backend is Backend.OPENVINO:
        base = here
        built = [Built("openvino-fp32", Backend.OPENVINO, fp32, base / "fp32/model.xml", "onnx-simplified")]
        if (profile.fp16_stage or profile.precision is fp16) and profile.precision is not fp32:
            built.append(Built("openvino-fp16", Backend.OPENVINO, fp16, base / "fp16/model.xml", "openvino-fp32"))
        if profile.precision is int8:
            built.append(Built("openvino-int8", Backend.OPENVINO, int8, base / "int8/model.xml", "openvino-fp32"))
        return built
    # TensorRT: the host makes the portable Q/DQ ONNX (checked on ONNX Runtime here); the engine row
    # comes from the device stage.
    # One TensorRT target per run folder (pipeline.deploy_plans): its bundle is deploy/tensorrt.
    return [Built("onnx-qdq", Backend.ONNXRUNTIME, int8, Path("deploy/model.qdq.onnx"), "onnx-simplified")]
