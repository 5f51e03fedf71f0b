"""The run's outputs besides the artifacts: ``manifest.json``, ``report.json`` and ``report.md``.

``report.json`` (format ``bckd-pipeline/report-v1``) holds ``target``, ``status``, ``exit_code``,
``distill`` (teacher / student / distilled mIoU), and ``stages``: one row per ledger stage with
``name``, ``backend``, ``precision``, ``artifact``, ``status``, ``device``, ``miou``, ``miou_delta``,
``pixel_agreement``, ``latency_ms`` {p50, p90, p99, mean} and ``fps``. A row that was not measured
says so in ``status`` and carries nulls, never estimates. Each row's ``artifact_bytes`` and the
references ``parity_images`` and ``qualitative`` (deploy/evidence.py) serve the CI gate (docs/ci.md);
``device`` says where a TensorRT engine was built and measured. ``write_reports`` also writes
``report.html`` (deploy/html.py).
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from ..cache import file_sha256
from ..distill.stage import write_json
from ..ledger import ENGINE_ROW, MEASURED, PARITY_ON_HOST, PENDING, REPORT_FORMAT, Built, pending_row_name
from .bench import host_facts

MANIFEST_FORMAT = "bckd-pipeline/manifest-v1"
PACKAGES = ("bckd-pipeline", "torch", "onnx", "onnxruntime", "onnxsim", "onnxslim", "openvino", "nncf", "numpy")

EXIT_DONE, EXIT_PARITY_FAILED, EXIT_PENDING = 0, 1, 3  # 2 (bad input) comes from BckdError

def versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _rel(path, out: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(Path(out).resolve()))
    except ValueError:
        return str(path)


PARITY_FIELDS = (
    "miou",
    "miou_delta",
    "miou_delta_vs_parent",
    "pixel_agreement",
    "pixel_agreement_vs_parent",
    "boundary_f",
    "max_abs_logit",
    "mean_abs_logit",
    "per_class_iou",
    "per_class_delta",
)


def artifact_files(path: Path) -> list[Path]:
    """The files one artifact is made of: an OpenVINO model.xml comes with its weights, model.bin."""
    path = Path(path)
    return [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])


def _row(b, out: Path, *, name: str, status: str, device: str, parent: str | None) -> dict:
    """A ledger row with every measurement null; callers fill in what was measured."""
    return {
        "name": name,
        "backend": b.backend.value,
        "precision": b.precision.value,
        "parent": parent,
        "artifact": _rel(b.path, out),
        "artifact_bytes": None if b.path is None else sum(f.stat().st_size for f in artifact_files(b.path)),
        "status": status,
        "device": device,
        **dict.fromkeys(PARITY_FIELDS),
        "parity_passed": None,
        "parity_failures": [],
        "latency_ms": dict.fromkeys(("p50", "p90", "p99", "mean")),
        "fps": None,
        "throughput_fps": None,
        "latency": None,
        "build": {},
    }


def build_report(ctx, summary, built, parity, latency, export_check, simplify_check, calibration, masks) -> dict:
    out = Path(ctx.out)
    profile = ctx.profile
    rows = []
    on_device = ctx.device.result if ctx.device is not None and ctx.device.result is not None else None
    for b in built:
        p = parity["stages"][b.name]
        lat = latency.get(b.name)
        if on_device is not None and b.name == on_device["row"]:
            device = _device_name(on_device, ctx.device.where)
        elif b.backend.value in ("torch", "onnxruntime"):
            device = "cpu (host)"
        else:
            device = profile.device if ctx.plan.can_measure else "CPU (host plugin, stand-in)"
        row = _row(b, out, name=b.name, status=MEASURED if lat else PARITY_ON_HOST, device=device, parent=b.parent)
        row.update(
            {k: p[k] for k in PARITY_FIELDS}, parity_passed=p["passed"], parity_failures=p["failures"], build=b.settings
        )
        if lat is not None:
            L = lat["latency"]
            row.update(latency_ms={k: L[k] for k in row["latency_ms"]}, fps=L["fps"], latency=L)
            if "throughput" in lat:
                row.update(throughput_fps=lat["throughput"]["fps"], throughput=lat["throughput"])
        else:
            row["note"] = (
                f"accuracy from the host CPU plugin; latency pending on {profile.device}, which is not on this host"
            )
        if on_device is not None and b.name == on_device["row"] and on_device["fallback"]:
            row["note"] = on_device["fallback"]
        rows.append(row)
    if ctx.device is not None and ctx.device.result is None:
        rows.append(_pending_engine_row(ctx, built[-1], out))
    elif not ctx.plan.can_measure:
        deployed = built[-1]
        pending = _row(
            deployed,
            out,
            name=pending_row_name(deployed.name, profile),
            status=PENDING,
            device=profile.device,
            parent=deployed.name,
        )
        pending["note"] = (
            f"not measured: {ctx.plan.availability_note}. Run `bckd-pipeline bench --target {profile.name} "
            f"{_rel(deployed.path, out)}` on a host with the device."
        )
        rows.append(pending)
    culprit = parity["culprit"]
    pending = any(r["status"] != MEASURED for r in rows)
    device_section = None if ctx.device is None else _device_section(ctx, out)
    exit_code = EXIT_PARITY_FAILED if culprit else EXIT_PENDING if pending else EXIT_DONE
    torch_row = next(r for r in rows if r["name"] == "pytorch")
    speedups = {
        r["name"]: torch_row["latency_ms"]["mean"] / r["latency_ms"]["mean"]
        for r in rows
        if r["latency_ms"]["mean"] and torch_row["latency_ms"]["mean"]
    }
    return {
        "format": REPORT_FORMAT,
        "target": profile.name,
        "target_profile": {
            "backend": profile.backend.value,
            "device": profile.device,
            "precision": profile.precision.value,
            "description": profile.description,
        },
        "status": "parity_failed" if culprit else "pending" if pending else "complete",
        "exit_code": exit_code,
        "culprit": culprit,
        "culprit_reason": parity["stages"][culprit]["failures"] if culprit else None,
        "distill": _distill_section(summary, ctx),
        "evaluation": {
            "data": ctx.data.spec,
            "split": ctx.data.eval_split,
            "images": len(ctx.eval_feeds),
            "input_hw": list(ctx.spec.input_hw),
            "note": "labels resized (nearest) to the input size",
        },
        "class_names": list(ctx.meta.class_names),
        "checks": {"export": export_check, "simplify": simplify_check},
        "calibration": None
        if calibration is None
        else {
            "manifest": _rel(calibration.manifest_path, out),
            "sha256": calibration.sha256,
            "images": len(calibration.feeds),
            **asdict(calibration.spec),
        },
        "speedup_vs_pytorch": speedups,
        "parity_images": parity["per_image"],
        "qualitative": masks,
        "device": device_section,
        "stages": rows,
        "host": host_facts(),
        "versions": versions(),
    }


def _device_name(result: dict, where: str) -> str:
    facts = result.get("facts") or {}
    model = facts.get("model") or (facts.get("gpu") or {}).get("name")
    runtime = "TensorRT" if result["engine"] else "ONNX Runtime CPU (fallback)"
    return f"{model or 'device'} via {'this host' if where == 'here' else where}, {runtime}"


def _facts_line(facts: dict) -> str:
    """The device facts a reader needs to trust a Jetson number: module, JetPack, TensorRT, power, clocks, heat."""
    parts = [facts.get("model")]
    if facts.get("l4t"):
        parts.append(f"L4T {facts['l4t']}" + (f" (JetPack {facts['jetpack']})" if facts.get("jetpack") else ""))
    if facts.get("tensorrt"):
        parts.append(f"TensorRT {facts['tensorrt']}")
    if facts.get("power_mode"):
        parts.append(f"nvpmodel {facts['power_mode'].get('name')}")
    clocks = facts.get("clocks") or {}
    if clocks.get("pinned_at_max") is not None:
        parts.append("clocks pinned (jetson_clocks)" if clocks["pinned_at_max"] else "clocks not pinned")
    if facts.get("throttling"):
        parts.append(f"THROTTLING: {', '.join(map(str, facts['throttling']))}")
    return ", ".join(p for p in parts if p)


def _pending_engine_row(ctx, qdq, out: Path) -> dict:
    """The TensorRT engine row when no device built it: every measurement null, and how to get them."""
    from ..targets.profiles import Backend, Precision

    engine = Built(ENGINE_ROW, Backend.TENSORRT, Precision.INT8, None, qdq.name)
    row = _row(engine, out, name=ENGINE_ROW, status=PENDING, device=ctx.profile.device, parent=qdq.name)
    row["note"] = (
        f"engine build and on-device measurements pending: {ctx.device.pending_reason}. To finish: rerun with "
        "--device ssh://user@device (the engine is built and measured there), or copy deploy/tensorrt/bundle to "
        "the device and follow its README.txt (build_engine.sh is the trtexec command)."
    )
    return row


def _device_section(ctx, out: Path) -> dict:
    """Where the engine was built and measured, with the device's facts (JetPack, power mode, clocks...)."""
    bundle = Path(out) / "deploy/tensorrt/bundle"
    section = {
        "bundle": _rel(bundle, out),
        "build_script": _rel(bundle / "build_engine.sh", out),
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
                "path": _rel(ctx.device.folder / engine["file"], out),
                "sha256": r["files"][engine["file"]],
                "build": engine["build"],
                "trtexec": engine["trtexec"],
            },
            what_is_timed=r["latency"]["what_is_timed"],
            seconds=r["seconds"],
        )
    return section


def _distill_section(summary: dict | None, ctx) -> dict:
    if summary is None:  # `bckd-pipeline deploy` of a checkpoint trained elsewhere
        kd = ctx.meta.extra.get("kd")
        return {
            "kd": kd,
            "teacher_miou": None,
            "student_miou": None,
            "distilled_miou": None,
            "gap_closed_percent": None,
            "checkpoint": str(ctx.checkpoint),
        }
    return {
        "kd": summary["kd"],
        "teacher_miou": summary["teacher"]["miou"],
        "student_miou": summary["student"]["miou"],
        "distilled_miou": summary["distilled"]["miou"],
        "gap_closed_percent": summary["gap_closed_percent"],
    }


def write_manifest(ctx, out: Path, built, report: dict, calibration) -> Path:
    artifacts = []
    for b in built:
        if b.path is None:
            continue
        for f in artifact_files(b.path):
            artifacts.append(
                {
                    "stage": b.name,
                    "backend": b.backend.value,
                    "precision": b.precision.value,
                    "path": _rel(f, out),
                    "sha256": file_sha256(f),
                    "bytes": f.stat().st_size,
                }
            )
    deployed = built[-1]
    from ..export.onnx_export import onnx_metadata

    manifest = {
        "format": MANIFEST_FORMAT,
        "target": ctx.profile.name,
        "deployable": [a["path"] for a in artifacts if a["stage"] == deployed.name],
        "artifacts": artifacts,
        "checkpoint": {
            "path": _rel(ctx.checkpoint, out),
            "sha256": file_sha256(ctx.checkpoint),
            "model": ctx.meta.model,
        },
        "input": {
            "name": "image",
            "shape": list(ctx.spec.input_shape()),
            "dtype": "float32",
            "layout": "NCHW",
            "color": "RGB",
            "dynamic": list(ctx.spec.dynamic),
            "scale": "0..255" if ctx.spec.bake_normalization else "normalized",
        },
        "preprocessing": {
            "resize_to": list(ctx.spec.input_hw),
            "resize": "bilinear",
            "mean": list(ctx.meta.mean),
            "std": list(ctx.meta.std),
            "normalization_in_graph": ctx.spec.bake_normalization,
        },
        "output": {"name": ctx.spec.output_name, "kind": ctx.spec.head},
        "class_names": list(ctx.meta.class_names),
        "ignore_index": ctx.meta.ignore_index,
        "onnx_metadata": onnx_metadata(ctx.meta, ctx.spec),
        "build_flags": {
            "export": asdict(ctx.spec),
            "simplifier": ctx.deploy.simplifier,
            "allow_unsimplified": ctx.deploy.allow_unsimplified,
            "stages": {b.name: b.settings for b in built if b.settings},
            "profile": {
                "name": ctx.profile.name,
                "backend": ctx.profile.backend.value,
                "device": ctx.profile.device,
                "precision": ctx.profile.precision.value,
            },
        },
        "calibration_manifest": None
        if calibration is None
        else {"path": _rel(calibration.manifest_path, out), "sha256": calibration.sha256},
        "device_bundle": None
        if report.get("device") is None
        else [
            {"path": _rel(f, out), "sha256": file_sha256(f), "bytes": f.stat().st_size}
            for f in sorted((Path(out) / report["device"]["bundle"]).iterdir())
        ],
        "engine": None if report.get("device") is None else report["device"].get("engine"),
        "report_status": report["status"],
        "versions": report["versions"],
        "git_sha": git_sha(),
    }
    write_json(out / "manifest.json", manifest)
    return out / "manifest.json"


def fmt_value(v, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(report: dict) -> str:
    d, ev = report["distill"], report["evaluation"]
    lines = [
        f"# bckd-pipeline report: {report['target']}",
        "",
        f"Status: **{report['status']}** (exit code {report['exit_code']}). "
        f"Evaluation: {ev['images']} images of `{ev['data']}` split `{ev['split']}` at "
        f"{ev['input_hw'][0]}x{ev['input_hw'][1]}.",
        "",
        f"Distillation ({d['kd']}): teacher {fmt_value(d['teacher_miou'])}, student alone "
        f"{fmt_value(d['student_miou'])}, distilled {fmt_value(d['distilled_miou'])} mIoU.",
        "",
        "| stage | backend | precision | status | mIoU | ΔmIoU | agreement % | p50 ms | p99 ms | FPS |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["stages"]:
        agree = None if r["pixel_agreement"] is None else 100 * r["pixel_agreement"]
        lines.append(
            f"| {r['name']} | {r['backend']} | {r['precision']} | {r['status']} | {fmt_value(r['miou'])} | "
            f"{fmt_value(r['miou_delta'], '+.3f')} | {fmt_value(agree, '.3f')} | {fmt_value(r['latency_ms']['p50'])} | "
            f"{fmt_value(r['latency_ms']['p99'])} | {fmt_value(r['fps'], '.1f')} |"
        )
    if report["culprit"]:
        lines += ["", f"**Parity failed at stage `{report['culprit']}`**: " + "; ".join(report["culprit_reason"])]
    dev = report.get("device")
    if dev and dev["status"] == "measured":
        shown = _facts_line(dev["facts"] or {})
        lines += ["", f"Device: {dev['where']}" + (f" ({shown})" if shown else "") + "."]
        if dev["fallback"]:
            lines += [f"**No TensorRT engine**: {dev['fallback']}."]
    elif dev:
        lines += ["", f"Device bundle for the engine build: `{dev['bundle']}` (trtexec: `{dev['build_script']}`)."]
    shown_above = (report.get("device") or {}).get("fallback")
    notes = [f"- `{r['name']}`: {r['note']}" for r in report["stages"] if r.get("note") and r["note"] != shown_above]
    if notes:
        lines += ["", "Notes:", *notes]
    deployed = report["stages"][-1]
    if deployed.get("throughput_fps"):
        t = deployed["throughput"]
        lines += ["", f"Throughput of `{deployed['name']}` with {t['streams']} requests in flight: {t['fps']:.1f} FPS."]
    lines += [
        "",
        "Latency: one request at a time, "
        + (next((r["latency"]["what_is_timed"] for r in report["stages"] if r["latency"]), "not measured"))
        + ".",
    ]
    if dev and dev["status"] == "measured":
        lines.append(f"On the device ({dev['row']}): {dev['what_is_timed']}.")
    return "\n".join(lines) + "\n"


def write_reports(out: Path, report: dict) -> None:
    from ..fileio import write_text
    from .html import write_html

    write_json(out / "report.json", report)
    write_text(out / "report.md", markdown(report))  # report.html: the same run on one self-contained page

    write_html(out, report)  # report.html: the same run on one self-contained page
