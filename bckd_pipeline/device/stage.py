"""The pipeline's device stage for TensorRT targets: the bundle, then the engine built and measured
here or on ``--device ssh://...``, or pending."""

from __future__ import annotations

import sys
from pathlib import Path

from ..cache import StageCache, stage_key
from ..context import DeployContext, DeviceOutcome
from ..ledger import ENGINE_ROW, Built
from ..targets import Backend, Precision
from .bundle import (
    BUNDLE_FILES,
    TENSORRT_DIR,
    agent_digest,
    ingested_outcome,
    run_here,
    write_bundle,
)


def device_stage(ctx: DeployContext, out: Path, cache: StageCache, qdq: Built) -> list[Built]:
    """The portable bundle; then the engine built and measured here or on ``--device``, or pending.

    Returns the device's ledger row: ``tensorrt-int8`` when an engine was built, the agent's ONNX
    Runtime row when the device had no TensorRT (it says so), nothing when the device step is pending.
    """
    folder = out / TENSORRT_DIR
    bundle, dest = folder / "bundle", folder / "device"
    spec = ctx.deploy.latency or ctx.profile.latency
    options = {
        "tensorrt": ctx.profile.tensorrt,
        "latency": spec,
        "feeds": ctx.eval_feeds.digests,
        "export": ctx.spec,
        "agent": agent_digest(),
    }
    key = stage_key("device-bundle", options, [qdq.path])
    hit = cache.lookup("device-bundle", key)
    if hit is None:
        folder.mkdir(parents=True, exist_ok=True)
        job = write_bundle(
            bundle, qdq.path, ctx.eval_feeds, ctx.profile, spec, dynamic=bool(ctx.spec.dynamic), task=ctx.task.name
        )
        cache.store("device-bundle", key, [bundle / f for f in BUNDLE_FILES], {"job": job})
    else:
        job = hit["job"]
    where = ctx.deploy.device or ("here" if ctx.plan.can_measure else None)
    if where is None:
        # A result run by hand on the device and read in with `bckd-pipeline ingest` (for this bundle only).
        ingested = ingested_outcome(dest, job)
        if ingested is None:
            ctx.device = DeviceOutcome(None, None, "", ctx.plan.availability_note)
            return []
        ctx.device = ingested
        return _rows(ingested.result, dest, qdq)
    dkey = stage_key("device", {"where": where, "bundle": key, "ssh": ctx.deploy.ssh}, [])
    hit = cache.lookup("device", dkey)
    if hit is not None:
        result = hit["result"]
    elif where == "here":
        result = run_here(bundle, dest)
    else:
        from .remote import RemoteDevice, SshTarget

        device = RemoteDevice(SshTarget.parse(where), ctx.deploy.ssh)
        result = device.run_bundle(bundle, dest, job, progress=lambda m: print(m, file=sys.stderr))
    if hit is None:
        cache.store("device", dkey, [dest / "result.json", *(dest / f for f in result["files"])], {"result": result})
    ctx.device = DeviceOutcome(result, dest, where)
    return _rows(result, dest, qdq)


def _rows(result: dict, dest: Path, qdq: Built) -> list[Built]:
    if result["engine"]:
        plan = dest / result["engine"]["file"]
        return [Built(ENGINE_ROW, Backend.TENSORRT, Precision.INT8, plan, qdq.name, result["engine"]["build"])]
    return [
        Built(
            result["row"], Backend(result["backend"]), Precision.INT8, None, qdq.name, {"fallback": result["fallback"]}
        )
    ]
