"""``report.json``: the ledger of the run, one row per stage, and where it was measured.

``report.json`` (format ``bckd-pipeline/report-v1``) holds ``task`` (tasks/: the name readers pass to
``get_task``; absent in older reports, which are segmentation), ``target``, ``status``, ``exit_code``,
``distill`` (teacher / student / distilled mIoU), and ``stages``: one row per ledger stage with
``name``, ``backend``, ``precision``, ``artifact``, ``status``, ``device``, the task's parity fields
(segmentation: ``miou``, ``miou_delta``, ``pixel_agreement``, ...), ``latency_ms`` {p50, p90, p99, mean}
and ``fps``. A row that was not measured
says so in ``status`` and carries nulls, never estimates. Each row's ``artifact_bytes`` and the
references ``parity_images`` (parity_images.py) and ``qualitative`` (report/evidence.py) serve the CI gate (docs/ci.md);
``device`` says where a TensorRT engine was built and measured; ``machine`` (machine.py) is the CPU model
and vector ISA, OpenVINO's device names and capabilities and the GPU, which the CI gate compares
before it compares a baseline's latency. An INT8 row not faster than its FP32 parent gets a ``note``
saying why, and so does a row whose predictions are degenerate (the task's ``degenerate`` field).
``write_reports`` writes it with
``report.md`` (report/markdown.py) and ``report.html`` (report/html.py); ``manifest.json`` is
report/manifest.py's.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ..fileio import write_json, write_text
from ..ledger import (
    ENGINE_ROW,
    MEASURED,
    PARITY_ON_HOST,
    PENDING,
    QAT_ROW,
    REPORT_FORMAT,
    Built,
    pending_row_name,
    report_file,
)
from ..machine import host_facts, int8_speed_note, machine_facts, package_versions
from .html import write_html
from .manifest import artifact_files, rel_path
from .markdown import markdown

if TYPE_CHECKING:
    from ..calibrate.stage import Calibration
    from ..context import DeployContext

EXIT_DONE, EXIT_PARITY_FAILED, EXIT_PENDING = 0, 1, 3  # 2 (bad input) comes from BckdError


def _row(
    b, out: Path, *, name: str, status: str, device: str, parent: str | None, fields: tuple[str, ...]
) -> dict:
    """A ledger row with every measurement null (``fields``: the task's parity fields); callers fill in the rest."""
    return {
        "name": name,
        "backend": b.backend.value,
        "precision": b.precision.value,
        "parent": parent,
        "artifact": rel_path(b.path, out),
        "artifact_bytes": None if b.path is None else sum(f.stat().st_size for f in artifact_files(b.path)),
        "status": status,
        "device": device,
        **dict.fromkeys(fields),
        "parity_passed": None,
        "parity_failures": [],
        "latency_ms": dict.fromkeys(("p50", "p90", "p99", "mean")),
        "fps": None,
        "throughput_fps": None,
        "latency": None,
        "build": {},
    }


def _demo_data(ctx: DeployContext) -> bool:
    from ..data import is_demo

    return ctx.deploy.allow_demo_data and ctx.source is not None and ctx.source.kind != "checkpoint" and (
        is_demo(ctx.data.spec) or is_demo(ctx.deploy.calibration.data)
    )


def build_report(
    ctx: DeployContext,
    *,
    summary: dict | None,
    built: list[Built],
    parity: dict,
    latency: dict[str, dict],
    export_check: dict,
    simplify_check: dict | None,
    calibration: Calibration | None,
    masks: dict | None,
    qat: dict | None = None,
) -> dict:
    """report.json's content from what the deploy stages returned.

    ``summary``: the distillation's metrics (None for ``deploy``); ``built``: the ledger's rows in pipeline
    order; ``parity``: parity_stage's record (per stage the task's fields, ``culprit``, ``per_image``);
    ``latency``: stage name -> latency_stage's record (absent: not measured here); ``export_check`` and
    ``simplify_check``: the ONNX checks; ``calibration``: the INT8 calibration (None for a float target);
    ``masks``: qualitative_stage's record; ``qat``: qat_stage's record (None without ``--qat``).
    """
    out = Path(ctx.out)
    rows = [_stage_row(ctx, b, out, parity["stages"][b.name], latency.get(b.name)) for b in built]
    pending_row = _pending_row(ctx, built[-1], out)
    if pending_row is not None:
        rows.append(pending_row)
    machine = machine_facts()
    _note_int8_not_faster(rows, machine, ctx.profile)
    _note_degenerate(rows, ctx.task.metric_label)
    culprit = parity["culprit"]
    pending = any(r["status"] != MEASURED for r in rows)
    reference = rows[0]  # PyTorch; for `deploy --onnx`, the user's FP32 ONNX
    return {
        "format": REPORT_FORMAT,
        "task": ctx.task.name,
        "target": ctx.profile.name,
        "target_key": ctx.profile.key,
        "target_profile": _target_section(ctx),
        "status": "parity_failed" if culprit else "pending" if pending else "complete",
        "exit_code": EXIT_PARITY_FAILED if culprit else EXIT_PENDING if pending else EXIT_DONE,
        "culprit": culprit,
        "culprit_reason": parity["stages"][culprit]["failures"] if culprit else None,
        "distill": _distill_section(summary, ctx),
        "evaluation": {
            "data": ctx.data.spec,
            "split": ctx.data.eval_split,
            "images": len(ctx.eval_feeds),
            "input_hw": list(ctx.spec.input_hw),
            "note": "labels resized (nearest) to the input size"
            if ctx.labelled
            else "no labels: every row scored against the FP32 reference's own predictions",
            # ground_truth: the dataset's labels; reference: label-free, against the reference row's predictions
            "labels": parity.get("labels", "ground_truth"),
            # a user's model scored on the built-in demo scenes (--allow-demo-data): not its domain
            "demo_data": _demo_data(ctx),
        },
        "parity_labels": parity.get("labels", "ground_truth"),
        "class_names": list(ctx.meta.class_names),
        # the training data's own class colours (RGB 0..255), which report.html draws with; None: the default palette
        "class_colors": None if ctx.meta.class_colors is None else [list(c) for c in ctx.meta.class_colors],
        "source": _source_section(ctx),
        "checks": {"export": export_check, "simplify": simplify_check},
        "calibration": _calibration_section(calibration, out),
        # --qat: the decision, the teacher, the schedule and its cost (wall time, iterations); None when off.
        "qat": _qat_section(qat, rows, ctx.task.metric),
        "reference": reference["name"],
        "speedup_vs_reference": _speedups(rows, reference),
        "parity_images": parity["per_image"],
        "qualitative": masks,
        "device": None if ctx.device is None else _device_section(ctx, out),
        "stages": rows,
        "host": host_facts(),
        "machine": machine,
        "versions": package_versions(),
    }


def _stage_row(ctx: DeployContext, b: Built, out: Path, p: dict, lat: dict | None) -> dict:
    """One ledger row: the artifact, where it ran, the task's parity fields, and its latency when measured here."""
    profile = ctx.profile
    on_device = ctx.device.result if ctx.device is not None and ctx.device.result is not None else None
    if on_device is not None and b.name == on_device["row"]:
        device = _device_name(on_device, ctx.device.where)
    elif b.backend.value in ("torch", "onnxruntime"):
        device = "cpu (host)"
    else:
        device = profile.device if ctx.plan.can_measure else "CPU (host plugin, stand-in)"
    status = MEASURED if lat else PARITY_ON_HOST
    fields = ctx.task.parity_fields
    row = _row(b, out, name=b.name, status=status, device=device, parent=b.parent, fields=fields)
    row.update(
        {k: p[k] for k in fields},
        parity_passed=p["passed"],
        parity_failures=p["failures"],
        build=b.settings,
    )
    if lat is not None:
        L = lat["latency"]
        row.update(latency_ms={k: L[k] for k in row["latency_ms"]}, fps=L["fps"], latency=L)
        if L.get("postprocess_ms"):  # the host's post-processing (detection: decoding and NMS), and network + it
            row.update(postprocess_ms=L["postprocess_ms"], end_to_end_ms=L["end_to_end_ms"])
        if "throughput" in lat:
            row.update(throughput_fps=lat["throughput"]["fps"], throughput=lat["throughput"])
    else:
        row["note"] = (
            f"accuracy from the host CPU plugin; latency pending on {profile.device}, which is not on this host"
        )
    if on_device is not None and b.name == on_device["row"] and on_device["fallback"]:
        row["note"] = on_device["fallback"]
    return row


def _pending_row(ctx: DeployContext, deployed: Built, out: Path) -> dict | None:
    """The row of the deployed artifact on a device this host lacks (None when it was measured here)."""
    if ctx.device is not None and ctx.device.result is None:
        return _pending_engine_row(ctx, deployed, out)
    if ctx.device is not None or ctx.plan.can_measure:  # TensorRT targets: the device stage decides
        return None
    profile = ctx.profile
    pending = _row(
        deployed,
        out,
        name=pending_row_name(deployed.name, profile),
        status=PENDING,
        device=profile.device,
        parent=deployed.name,
        fields=ctx.task.parity_fields,
    )
    pending["note"] = (
        f"not measured: {ctx.plan.availability_note}. Run `bckd-pipeline bench --target {profile.name} "
        f"{rel_path(deployed.path, out)}` on a host with the device."
    )
    return pending


def _target_section(ctx: DeployContext) -> dict:
    profile = ctx.profile
    return {
        "backend": profile.backend.value,
        "device": profile.device,
        "precision": profile.precision.value,
        "description": profile.description,
        "batch": ctx.spec.batch,
        "int8_exclude": list(ctx.plan.calibration.exclude) if ctx.plan.calibration else [],
    }


def _calibration_section(calibration: Calibration | None, out: Path) -> dict | None:
    if calibration is None:
        return None
    return {
        "manifest": rel_path(calibration.manifest_path, out),
        "sha256": calibration.sha256,
        "images": len(calibration.feeds),
        **asdict(calibration.spec),
    }


def _speedups(rows: list[dict], reference: dict) -> dict[str, float]:
    """Each row's mean latency against the reference row's (rows measured here only)."""
    return {
        r["name"]: reference["latency_ms"]["mean"] / r["latency_ms"]["mean"]
        for r in rows
        if r["latency_ms"]["mean"] and reference["latency_ms"]["mean"]
    }


def _qat_section(qat: dict | None, rows: list[dict], metric: str) -> dict | None:
    """The QAT record, with the task's metric the PTQ row lost and what the QAT row recovered (evaluation split):
    ``<metric>_delta_ptq``, ``<metric>_delta_qat``, ``recovered_<metric>``."""
    if qat is None:
        return None
    section = dict(qat)
    by_name = {r["name"]: r for r in rows}
    ptq, row = by_name.get(qat.get("ptq_row")), by_name.get(QAT_ROW)
    delta = f"{metric}_delta"
    if ptq is not None and row is not None and ptq.get(delta) is not None and row.get(delta) is not None:
        section[f"{delta}_ptq"] = ptq[delta]
        section[f"{delta}_qat"] = row[delta]
        section[f"recovered_{metric}"] = row[delta] - ptq[delta]
    return section


def _note_int8_not_faster(rows: list[dict], machine: dict, profile) -> None:
    """Say so in the ledger when an INT8 row measured here is not faster than its FP32 parent, and why."""
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        parent = by_name.get(r["parent"] or "")
        if r["precision"] != "int8" or parent is None or parent["precision"] != "fp32" or r["status"] != MEASURED:
            continue
        if profile.backend.value == "tensorrt" and r["backend"] == "onnxruntime":
            continue  # the Q/DQ ONNX checked on the host CPU stands in for the engine; its speed is not the target's
        on_cpu = r["device"] in ("cpu (host)", "CPU")
        note = int8_speed_note(r, parent, machine["cpu"], on_cpu=on_cpu)
        if note:
            r["note"] = f"{r['note']} {note}" if r.get("note") else note


def degenerate_warning(row: dict, metric_label: str) -> str:
    """What the report and the end of a run say about a row whose predictions are degenerate (the task's
    ``degenerate`` field: why they say nothing)."""
    return (
        f"DEGENERATE: `{row['name']}` {row['degenerate']}; its agreement and Δ{metric_label} against other rows say "
        "nothing about the model. Check the model and its preprocessing (--mean/--std, --input-scale, the classes); "
        "the CI gate fails such a deployed row unless its budgets file sets allow_degenerate = true in the gate "
        "table."
    )


def _note_degenerate(rows: list[dict], metric_label: str) -> None:
    """A degenerate row's note leads with the warning (report.md, report.html and the combined report show notes)."""
    for r in rows:
        if r.get("degenerate"):
            warning = degenerate_warning(r, metric_label)
            r["note"] = f"{warning} {r['note']}" if r.get("note") else warning


def _source_section(ctx) -> dict:
    """What was deployed: this pipeline's checkpoint, a PyTorch module file, or the user's own ONNX."""
    kind = "checkpoint" if ctx.source is None else ctx.source.kind
    section = {"kind": kind, "path": str(ctx.checkpoint), "model": ctx.meta.model}
    if ctx.source is not None and ctx.source.factory:
        section["factory"] = ctx.source.factory
    if ctx.onnx is not None:
        section.update(
            opset=ctx.onnx.opset,
            input=ctx.onnx.input_name,
            input_shape=["?" if d is None else d for d in ctx.onnx.input_shape],
            output=ctx.onnx.output_name,
            input_scale=ctx.meta.extra.get("input_scale"),
            metadata_keys=sorted(ctx.onnx.metadata),
        )
    return section


def _device_name(result: dict, where: str) -> str:
    facts = result.get("facts") or {}
    model = facts.get("model") or (facts.get("gpu") or {}).get("name")
    runtime = "TensorRT" if result["engine"] else "ONNX Runtime CPU (fallback)"
    return f"{model or 'device'} via {'this host' if where == 'here' else where}, {runtime}"


def _pending_engine_row(ctx, qdq, out: Path) -> dict:
    """The TensorRT engine row when no device built it: every measurement null, and how to get them."""
    from ..targets.profiles import Backend, Precision

    engine = Built(ENGINE_ROW, Backend.TENSORRT, Precision.INT8, None, qdq.name)
    fields = ctx.task.parity_fields
    row = _row(engine, out, name=ENGINE_ROW, status=PENDING, device=ctx.profile.device, parent=qdq.name, fields=fields)
    row["note"] = (
        f"engine build and on-device measurements pending: {ctx.device.pending_reason}. To finish: rerun with "
        "--device ssh://user@device (the engine is built and measured there), or copy deploy/tensorrt/bundle to "
        "the device, follow its README.txt (build_engine.sh is the trtexec command), copy out/ back and run "
        "`bckd-pipeline ingest OUT DEVICE_RESULT_DIR`."
    )
    return row


def _device_section(ctx, out: Path) -> dict:
    """Where the engine was built and measured, with the device's facts (JetPack, power mode, clocks...)."""
    bundle = Path(out) / "deploy/tensorrt/bundle"
    section = {
        "bundle": rel_path(bundle, out),
        "build_script": rel_path(bundle / "build_engine.sh", out),
        "where": ctx.device.where or None,
        "status": "pending" if ctx.device.result is None else "measured",
        "pending_reason": ctx.device.pending_reason,
    }
    r = ctx.device.result
    if r is not None:
        engine = r["engine"]
        section.update(
            row=r["row"],
            runtime=r["backend"],
            fallback=r["fallback"],
            facts=r["facts"],
            engine=None
            if engine is None
            else {
                "path": rel_path(ctx.device.folder / engine["file"], out),
                "sha256": r["files"][engine["file"]],
                "build": engine["build"],
                "trtexec": engine["trtexec"],
            },
            what_is_timed=r["latency"]["what_is_timed"],
            seconds=r["seconds"],
        )
    return section


def _distill_section(summary: dict | None, ctx) -> dict:
    """Stage 1's three models scored by the task's metric (``teacher_<metric>``, ...) and the gap closed."""
    metric = ctx.task.metric
    models = ("teacher", "student", "distilled")
    if summary is None:  # `bckd-pipeline deploy` of a checkpoint trained elsewhere
        return {
            "kd": ctx.meta.extra.get("kd"),
            **{f"{m}_{metric}": None for m in models},
            "gap_closed_percent": None,
            "train_precision": None,
            "checkpoint": str(ctx.checkpoint),
        }
    return {
        "kd": summary["kd"],
        **{f"{m}_{metric}": summary[m][metric] for m in models},
        "gap_closed_percent": summary["gap_closed_percent"],
        "train_precision": summary.get("train_precision"),
    }


def write_reports(out: Path, report: dict, key: str | None = None) -> dict:
    """The target's report.<target>.json/.md/.html, then the folder's combined report.json/.md/.html
    (report/combined.py); return the combined report."""
    from .combined import write_combined

    key = key or report["target"]
    write_json(out / report_file(key, "json"), report)
    write_text(out / report_file(key, "md"), markdown(report))
    write_html(out, report, report_file(key, "html"))  # the same run on one self-contained page
    return write_combined(out, [key])
