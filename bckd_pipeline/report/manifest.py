"""``manifest.json``: every artifact with its hash, the input and output contract, the build flags.

It records the git commit of this checkout (machine.git_commit) and the package versions report.json holds.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..cache import file_sha256
from ..fileio import write_json
from ..machine import git_commit

MANIFEST_FORMAT = "bckd-pipeline/manifest-v1"


def rel_path(path, out: Path) -> str | None:
    """``path`` relative to the run folder ``out`` (as reports name files), or as given when outside it."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(Path(out).resolve()))
    except ValueError:
        return str(path)


def artifact_files(path: Path) -> list[Path]:
    """The files one artifact is made of: an OpenVINO model.xml comes with its weights, model.bin."""
    path = Path(path)
    return [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])


def write_manifest(ctx, out: Path, built, report: dict, calibration) -> Path:
    artifacts = _artifacts(built, out)
    deployed = built[-1]
    manifest = {
        "format": MANIFEST_FORMAT,
        "task": ctx.task.name,
        "target": ctx.profile.name,
        "target_key": ctx.profile.key,
        "deployable": [a["path"] for a in artifacts if a["stage"] == deployed.name],
        "artifacts": artifacts,
        "checkpoint": {
            "path": rel_path(ctx.checkpoint, out),
            "sha256": file_sha256(ctx.checkpoint),
            "model": ctx.meta.model,
            "kind": report["source"]["kind"],
        },
        **_model_interface(ctx),
        "build_flags": _build_flags(ctx, built),
        "calibration_manifest": None
        if calibration is None
        else {"path": rel_path(calibration.manifest_path, out), "sha256": calibration.sha256},
        "device_bundle": _device_bundle(report, out),
        "engine": None if report.get("device") is None else report["device"].get("engine"),
        "report_status": report["status"],
        "machine": report["machine"],
        "versions": report["versions"],
        "git_sha": git_commit(),
    }
    from ..ledger import report_file

    path = out / report_file(ctx.profile.key, "manifest")  # manifest.json: the folder's view (report/combined.py)
    write_json(path, manifest)
    return path


def _artifacts(built, out: Path) -> list[dict]:
    """Every file of every built artifact, with its stage, backend, precision, hash and size."""
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
                    "path": rel_path(f, out),
                    "sha256": file_sha256(f),
                    "bytes": f.stat().st_size,
                }
            )
    return artifacts


def _model_interface(ctx) -> dict:
    """What a caller of the deployed model needs: its input, the preprocessing, its output and classes."""
    from ..export.onnx_export import onnx_metadata

    normalization_known = ctx.meta.extra.get("normalization_known", True)
    return {
        "input": {
            "name": ctx.eval_feeds.input_name,
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
            "mean": list(ctx.meta.mean) if normalization_known else None,
            "std": list(ctx.meta.std) if normalization_known else None,
            "normalization_in_graph": ctx.spec.bake_normalization,
        },
        "output": _output(ctx),
        "class_names": list(ctx.meta.class_names),
        "ignore_index": ctx.meta.ignore_index,
        "onnx_metadata": {
            **onnx_metadata(ctx.meta, ctx.spec, input_name=ctx.eval_feeds.input_name, output_name=ctx.output_name),
            **({"bckd.output": json.dumps(_output(ctx))} if ctx.spec.head == "nms" else {}),
        },
    }


def _output(ctx) -> dict:
    """The deployed graph's output: its name, every name when it has several (a detector's), and the head."""
    names = (ctx.output_name,) if ctx.onnx is not None else ctx.spec.deployed_output_names
    if len(names) == 1:
        return {"name": ctx.output_name, "kind": ctx.spec.head}
    return {"name": names[0], "names": list(names), "kind": ctx.spec.head}


def _build_flags(ctx, built) -> dict:
    """The export, simplification and target settings the artifacts were built with, and each stage's own."""
    return {
        "export": asdict(ctx.spec),
        "simplifier": ctx.deploy.simplifier,
        "allow_unsimplified": ctx.deploy.allow_unsimplified,
        "stages": {b.name: b.settings for b in built if b.settings},
        "profile": {
            "name": ctx.profile.name,
            "backend": ctx.profile.backend.value,
            "device": ctx.profile.device,
            "precision": ctx.profile.precision.value,
            "precision_flag": ctx.deploy.precision,  # --precision as given (None: the target's own)
            "batch": ctx.spec.batch,
            "int8_exclude": list(ctx.plan.calibration.exclude) if ctx.plan.calibration else [],
        },
    }


def _device_bundle(report: dict, out: Path) -> list[dict] | None:
    """The files shipped to the device (a TensorRT target), with hashes; None for a target built here."""
    if report.get("device") is None:
        return None
    return [
        {"path": rel_path(f, out), "sha256": file_sha256(f), "bytes": f.stat().st_size}
        for f in sorted((Path(out) / report["device"]["bundle"]).iterdir())
    ]
