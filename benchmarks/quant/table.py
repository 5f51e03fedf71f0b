"""The quantization table: every student's accuracy and latency, the second size, the remedies for the worst
rows and the other sizes, in that order; the JSON payload (with the machine it was measured on) and its
Markdown."""

from __future__ import annotations

import os
from datetime import datetime, timezone

from common import lscpu, versions

from .measure import FLAVOURS, Options, Student, hw_name, latency_at, load_student, measure_student, out_of_time
from .remedies import remedies_for

FORMAT = "bckd-pipeline/quant-table-v1"


def worst_rows(students: dict, n: int) -> list[tuple[str, str]]:
    rows = [
        (acc["delta_miou"], preset, flavour)
        for preset, s in students.items()
        for flavour, acc in s.get("accuracy", {}).items()
        if "delta_miou" in acc
    ]
    return [(p, f) for _, p, f in sorted(rows)[:n]]


def run(opts: Options, trained: dict | None = None, write=None) -> dict:
    """The whole table for ``opts.students``; returns the JSON payload (also the test's entry point).

    Phases, most needed first: every student's accuracy and training-size latency; the second size;
    the remedies for the worst rows; the other sizes. ``write(payload)`` is called after every unit of
    work, so the JSON on disk is always the latest complete state; with ``opts.stop_at`` the work not
    started by then is listed under ``not_measured``, never estimated.
    """
    from bckd_pipeline.machine import machine_facts

    payload = {
        "format": FORMAT,
        "command": opts.command,
        "pythonpath": os.environ.get("PYTHONPATH"),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "finished": None,
        "machine": machine_facts(),
        "lscpu": lscpu(),
        "versions": versions(),
        "settings": settings(opts),
        "students": {},
        "remedies": [],
        "not_measured": [],
    }
    students = payload["students"]

    def snapshot() -> None:
        if write is not None:
            write(payload)

    loaded: dict[str, Student] = {}
    for preset, t in (trained or {}).items():
        if "error" in t:
            students[preset] = {"error": t["error"], "trained": t}
    for preset, ckpt in opts.students.items():
        if out_of_time(opts):
            payload["not_measured"].append(f"{preset}: every measurement (--stop-at reached)")
            continue
        print(f"== {preset} ({ckpt})", flush=True)
        loaded[preset] = load_student(preset, ckpt)
        students[preset] = measure_student(loaded[preset], opts)
        if trained and preset in trained:
            students[preset]["trained"] = trained[preset]
        snapshot()

    def larger(hw) -> None:
        for preset, student in loaded.items():
            if "error" in students[preset]:
                continue
            if out_of_time(opts):
                payload["not_measured"].append(f"{preset} latency at {hw_name(hw)} (--stop-at reached)")
                continue
            print(f"== {preset} at {hw_name(hw)}", flush=True)
            students[preset]["latency"][hw_name(hw)] = latency_at(student, hw, opts)
            snapshot()

    for hw in opts.sizes[1:2]:  # the second size (CamVid's native) before the remedies, the rest after them
        larger(hw)
    if opts.remedies:
        for preset, flavour in worst_rows(students, opts.worst):
            if out_of_time(opts):
                payload["not_measured"].append(f"remedies for {preset} {flavour} (--stop-at reached)")
                continue
            print(f"== remedies for {preset} {flavour}", flush=True)
            payload["remedies"].append(
                remedies_for(loaded[preset], flavour, students[preset]["accuracy"][flavour], opts)
            )
            snapshot()
    for hw in opts.sizes[2:]:
        larger(hw)
    payload["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    snapshot()
    return payload


def settings(opts: Options) -> dict:
    return {
        "data": opts.data,
        "latency_data": opts.latency_data or opts.data,
        "flavours": {f: FLAVOURS[f] for f in opts.flavours},
        "accuracy_size": list(opts.sizes[0]),
        "latency_sizes": [list(hw) for hw in opts.sizes],
        "val_images": opts.val_images or "all",
        "calibration": f"{opts.calib_size} train-split images at the training size (pick_indices, seed {opts.seed}); "
        f"at each larger size up to {opts.latency_calib_size} train-split images of --latency-data resized to it, "
        f"fewer where ONNX Runtime's calibrator would hold more than {opts.calib_memory_gb:g} GB of activations "
        "(the count and why: latency.<size>.calibration_images[_why])",
        "latency": f"deploy/bench.py protocol, batch 1: {opts.runs} timed runs at the training size, "
        f"{opts.large_runs} at the larger sizes, after >= 20 runs and >= 1 s of warm-up; threads "
        f"{opts.threads or 'default (all cores)'}; 8 val images cycled",
        "larger_sizes": "latency only: the same weights exported at that static size; accuracy is scored at the "
        "training size, where the students were trained",
        "bootstrap": f"paired, images resampled, {opts.resamples} resamples, percentile 2.5/97.5 (two-sided 95 %)",
        "reference": "the FP32 simplified ONNX of the same student, run by ONNX Runtime",
        "trt_qdq": "the TensorRT-style Q/DQ ONNX run by ONNX Runtime on this CPU; TensorRT itself was not run",
        "nncf_runtime": "OpenVINO CPU plugin, INT8 IR without a precision hint (as the pipeline deploys it)",
        "remedies": f"for the {opts.worst} rows with the largest mIoU drop, at the training size",
        "stop_at": opts.stop_at.isoformat(timespec="minutes") if opts.stop_at else None,
    }


def markdown(payload: dict) -> str:
    sizes = [hw_name(hw) for hw in payload["settings"]["latency_sizes"]]
    lines = [
        "| student | flavour | FP32 mIoU | ΔmIoU [95 % CI] | agreement % | ΔBF | "
        + " | ".join(f"p50 ms {s} (× FP32)" for s in sizes)
        + " |",
        "|---|---|---:|---|---:|---:|" + "---:|" * len(sizes),
    ]
    for preset, s in payload["students"].items():
        if "error" in s and not s.get("accuracy"):
            lines.append(f"| {preset} | - | - | {s['error'][:120]} | | |" + " |" * len(sizes))
            continue
        fp = s.get("fp32", {})
        cells = []
        for s_name in sizes:
            lat = s["latency"].get(s_name, {})
            ref, ov = lat.get("fp32-onnxruntime", {}), lat.get("fp32-openvino", {})
            cell = f"{ref['p50_ms']:.2f}" if ref.get("p50_ms") else lat.get("error", "-")[:60]
            cells.append(cell + (f" (OpenVINO {ov['p50_ms']:.2f})" if ov.get("p50_ms") else ""))
        lines.append(
            f"| {preset} | FP32 ONNX (ORT) | {fp.get('miou', float('nan')):.2f} | - | 100 | - | "
            + " | ".join(cells)
            + " |"
        )
        for flavour, acc in s["accuracy"].items():
            cells = []
            for s_name in sizes:
                lat = s["latency"].get(s_name, {})
                mine = lat.get(flavour, {})
                ref = lat.get("fp32-openvino" if flavour == "nncf" else "fp32-onnxruntime", {})
                if mine.get("p50_ms") and ref.get("p50_ms"):
                    cells.append(f"{mine['p50_ms']:.2f} (×{ref['p50_ms'] / mine['p50_ms']:.2f})")
                else:
                    cells.append((mine.get("error") or mine.get("not_measured") or lat.get("error") or "-")[:60])
            if "error" in acc:
                lines.append(f"| {preset} | {flavour} | | {acc['error'][:120]} | | | " + " | ".join(cells) + " |")
                continue
            lo, hi = acc["delta_miou_ci95"]
            dbf = acc.get("delta_boundary_f")
            lines.append(
                f"| {preset} | {flavour} | {acc['miou_fp32']:.2f} | {acc['delta_miou']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                f"{100 * acc['pixel_agreement']:.2f} | {'-' if dbf is None else f'{dbf:+.2f}'} | "
                + " | ".join(cells)
                + " |"
            )
    for r in payload["remedies"]:
        lines += [
            "",
            f"Remedies for {r['student']} {r['flavour']} (ΔmIoU {r['baseline_delta_miou']:+.2f}):",
            "",
            "| remedy | ΔmIoU [95 % CI] | agreement % | p50 ms |",
            "|---|---|---:|---:|",
        ]
        for name, row in r["rows"].items():
            if "delta_miou" in row:
                lo, hi = row["delta_miou_ci95"]
                lines.append(
                    f"| {name} | {row['delta_miou']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                    f"{100 * row['pixel_agreement']:.2f} | {row['latency']['p50_ms']:.2f} |"
                )
            else:
                why = row.get("error") or row.get("not_applicable") or row.get("not_measured")
                lines.append(f"| {name} | {why} | | |")
        sweep = r["sweep"]
        lines += [
            "",
            "| group kept in float | nodes | ΔmIoU [95 % CI] | recovered | p50 ms (× all INT8) |",
            "|---|---:|---|---:|---:|",
        ]
        order = {g: i for i, g in enumerate(sweep["ranking"])}
        for g in sorted(sweep["groups"], key=lambda g: order.get(g["group"], 1e9)):
            if "recovered_miou" in g:
                lo, hi = g["delta_miou_ci95"]
                lines.append(
                    f"| {g['group']} | {g['excluded_nodes']} | {g['delta_miou']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                    f"{g['recovered_miou']:+.2f} | {g['latency']['p50_ms']:.2f} "
                    f"(×{g.get('latency_x_all_int8', float('nan')):.2f}) |"
                )
            else:
                why = g.get("error") or g.get("skipped") or g.get("not_measured")
                lines.append(f"| {g['group']} | {g['nodes']} | {why} | | |")
    return "\n".join(lines)
