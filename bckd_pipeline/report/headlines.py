"""Each deployment stage's headline figure, for the line progress.py prints when the stage ends."""

from __future__ import annotations

from pathlib import Path

from .manifest import rel_path


def check(c: dict) -> str:
    diffs = c.get("max_abs_diff") or {}
    worst = max(diffs.values()) if diffs else None
    return "" if worst is None else f"max |diff| {worst:.1e} vs {c.get('against')}"


def simplify(c: dict) -> str:
    return f"{c.get('tool')}: {c.get('nodes_before')} -> {c.get('nodes_after')} nodes"


def calibration(calib) -> str:
    return "none (not INT8)" if calib is None else f"{len(calib.feeds)} images of split {calib.spec.split!r}"


def compiled(built, out: Path) -> str:
    added = [b for b in built if b.name not in ("pytorch", "onnx", "onnx-simplified")]
    if not added:
        return "deploys the simplified FP32 ONNX"
    return ", ".join(f"{b.name} {rel_path(b.path, out)}" for b in added if b.path is not None)


def device(ctx) -> str:
    d = ctx.device
    return "pending" if d is None or d.result is None else f"built and measured on {d.where}"


def parity(p: dict, deployed: str, task) -> str:
    parts = [deployed, *task.headline(p["stages"].get(deployed) or {})]
    culprit = f"; FAILED at {p['culprit']}" if p.get("culprit") else ""
    return ", ".join(parts) + culprit


def latency(lat: dict, deployed: str) -> str:
    entry = lat.get(deployed)
    if not entry:
        return f"{deployed}: pending on its device"
    return f"{deployed} p50 {entry['latency']['p50']:.2f} ms"


def qat(record: dict | None) -> str:
    if record is None:
        return "off"
    if not record.get("ran"):
        return f"skipped: {record.get('reason', 'nothing to fine-tune')}"
    cost = record.get("cost") or {}
    return f"{cost.get('iterations')} iterations in {cost.get('stage_wall_s')} s, teacher: {record.get('teacher')}"
