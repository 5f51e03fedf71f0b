"""``report.md``: the ledger as a Markdown table, with what a reader needs beside it (device facts, notes)."""

from __future__ import annotations

from ..machine import machine_line
from ..tasks import DEFAULT_TASK, get_task


def fmt_value(v, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


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


def distillation_line(report: dict) -> str:
    """Stage 1 in one sentence: the teacher, the student alone and the distilled student by the task's metric."""
    d, task = report.get("distill") or {}, get_task(report.get("task", DEFAULT_TASK))
    scores = {m: fmt_value(d.get(f"{m}_{task.metric}")) for m in ("teacher", "student", "distilled")}
    precision = d.get("train_precision")
    trained = f" Trained in {precision['used']}: {precision['reason']}." if precision else ""
    return (
        f"Distillation ({d.get('kd')}): teacher {scores['teacher']}, student alone {scores['student']}, "
        f"distilled {scores['distilled']} {task.metric_label}.{trained}"
    )


def _model_line(report: dict) -> str:
    source = report.get("source") or {}
    if source.get("kind", "checkpoint") == "checkpoint":
        return distillation_line(report)
    what = {"onnx": "your ONNX", "pt2": "your torch.export program", "torchscript": "your TorchScript model"}
    name = source.get("factory") or source["path"]
    ref = "the reference row" if source["kind"] == "onnx" else "exported from PyTorch"
    return f"Model: {what.get(source['kind'], 'your nn.Module')} `{name}` ({ref}; not distilled here)."


def _deploy_line(report: dict) -> list[str]:
    """The deployed precision, a static batch and INT8 exclusions, when flags chose them."""
    t = report.get("target_profile") or {}
    parts = [f"deployed precision {t.get('precision')}"]
    if (t.get("batch") or 1) > 1:
        parts.append(f"static batch {t['batch']} (latency per batch, FPS counts its images)")
    if t.get("int8_exclude"):
        parts.append(f"kept out of INT8: {', '.join(t['int8_exclude'])}")
    return [f"Target: {'; '.join(parts)}.", ""]


def qat_line(report: dict) -> str | None:
    """One sentence on teacher-guided QAT (report["qat"]): what ran, against which teacher, its cost, and the
    task's metric of the QAT row beside the PTQ row's (evaluation split); None when --qat was off."""
    q = report.get("qat")
    if not q:
        return None
    head = f"QAT (--qat {q.get('mode')})"
    if not q.get("ran"):
        return f"{head}: not run, {q.get('reason')}."
    cost = q.get("cost") or {}
    text = (
        f"{head}: {q.get('teacher')}, losses {q.get('kd')}, {cost.get('iterations')} iterations "
        f"(batch {cost.get('batch_size')}, lr {cost.get('lr')}) on {cost.get('train_images')} training images, "
        f"{cost.get('stage_wall_s')} s in all ({cost.get('wall_s')} s fine-tuning)"
        + (", reused from the cache" if q.get("cached") else "")
    )
    task = get_task(report.get("task", DEFAULT_TASK))
    m = task.metric
    if q.get(f"recovered_{m}") is not None:
        text += (
            f"; Δ{task.metric_label} {q[f'{m}_delta_qat']:+.3f} (qat-int8) against {q[f'{m}_delta_ptq']:+.3f} "
            f"({q.get('ptq_row')}): {q[f'recovered_{m}']:+.3f} points"
        )
    return text + "."


def per_class_ap_lines(report: dict) -> list[str]:
    """A detector's per-class AP of the reference row and each row's change against it (points), one line per class;
    nothing for a report without per-class AP."""
    rows = [r for r in report["stages"] if r.get("per_class_ap")]
    if not rows:
        return []
    names = report.get("class_names") or [f"class {i}" for i in range(len(rows[0]["per_class_ap"]))]
    ref, others = rows[0], rows[1:]
    lines = [
        "",
        f"Per-class AP of `{ref['name']}` and each stage's ΔAP against it (points):",
        "",
        f"| class | {ref['name']} AP | " + " | ".join(f"{r['name']} ΔAP" for r in others) + " |",
        "|---|---:|" + "---:|" * len(others),
    ]
    for c, name in enumerate(names):
        deltas = [(r.get("per_class_delta") or [None] * len(names))[c] for r in others]
        shown = " | ".join(fmt_value(d, "+.2f") for d in deltas)
        lines.append(f"| {name} | {fmt_value(ref['per_class_ap'][c])} | {shown} |")
    return lines


def markdown(report: dict) -> str:
    ev = report["evaluation"]
    columns = get_task(report.get("task", DEFAULT_TASK)).columns
    lines = [
        f"# bckd-pipeline report: {report.get('target_key') or report['target']}",
        "",
        f"Status: **{report['status']}** (exit code {report['exit_code']}). "
        f"Evaluation: {ev['images']} images of `{ev['data']}` split `{ev['split']}` at "
        f"{ev['input_hw'][0]}x{ev['input_hw'][1]}.",
        "",
        _model_line(report),
        "",
        *labels_lines(ev),
        *_deploy_line(report),
        f"| stage | backend | precision | status | {' | '.join(c.header for c in columns)} | p50 ms | p99 ms | FPS |",
        "|---|---|---|---|" + "---:|" * len(columns) + "---:|---:|---:|",
    ]
    for r in report["stages"]:
        accuracy = " | ".join(fmt_value(c.value(r), c.fmt) for c in columns)
        lines.append(
            f"| {r['name']} | {r['backend']} | {r['precision']} | {r['status']} | {accuracy} | "
            f"{fmt_value(r['latency_ms']['p50'])} | {fmt_value(r['latency_ms']['p99'])} | "
            f"{fmt_value(r['fps'], '.1f')} |"
        )
    lines += per_class_ap_lines(report)
    qat = qat_line(report)
    if qat:
        lines += ["", qat]
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
    if deployed.get("postprocess_ms"):
        post, both = deployed["postprocess_ms"], deployed["end_to_end_ms"]
        nms_inside = ((report.get("checks") or {}).get("simplify") or {}).get("nms")  # --head nms
        what = "decoding and NMS, the same for every row"
        if nms_inside:
            what = "reading the rows of its graph, which decodes and suppresses inside"
        lines += [
            "",
            f"Host post-processing of `{deployed['name']}` ({what}): p50 "
            f"{post['p50']:.2f} ms; network + post-processing p50 {both['p50']:.2f} ms, p99 {both['p99']:.2f} ms.",
        ]
    if report.get("machine"):
        lines += ["", f"Machine: {machine_line(report['machine'])}."]
    lines += [
        "",
        "Latency: one request at a time, "
        + (next((r["latency"]["what_is_timed"] for r in report["stages"] if r["latency"]), "not measured"))
        + ".",
    ]
    if dev and dev["status"] == "measured":
        lines.append(f"On the device ({dev['row']}): {dev['what_is_timed']}.")
    return "\n".join(lines) + "\n"


def labels_lines(ev: dict) -> list[str]:
    """What the accuracy columns are scored against (label-free parity), and a demo-data warning."""
    lines = []
    if ev.get("demo_data"):
        lines += [
            "**DEMO DATA**: your model was scored and calibrated on the built-in synthetic scenes (--allow-demo-data),"
            " not on images of its own domain: its accuracy figures say nothing about it.",
            "",
        ]
    if ev.get("labels") == "reference":
        lines += [
            "**Label-free parity**: no labels were given; every accuracy figure (mIoU, ΔmIoU) is computed against "
            "the FP32 reference's own predictions (`labels: reference`), not ground truth.",
            "",
        ]
    return lines
