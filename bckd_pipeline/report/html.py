"""``report.html``: the run on one self-contained page (inline CSS and SVG, PNG data URIs; no script, no URL).

Sections: the stage ledger; latency distributions per stage (box plots of every timed run);
per-class IoU deltas against the PyTorch student; the qualitative masks side by side (image,
ground truth, teacher, student alone, distilled student, deployed artifact), each drawn by the run's
task (``Task.draw``, ``caption``, ``legend``; segmentation: boundary errors highlighted).
Whatever the run did not measure or does not have is said in words, never drawn.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import write_text
from ..palette import palette
from .evidence import MASK_COLUMNS, load_qualitative
from ..tasks import DEFAULT_TASK, get_task
from .markdown import distillation_line, fmt_value, labels_lines, qat_line

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dce6;padding-bottom:4px}
p.meta{color:#4a5368;margin:2px 0}
table.ledger{border-collapse:collapse;font-size:13px} .ledger th,.ledger td{border:1px solid #d8dce6;padding:4px 8px}
.ledger th{background:#eef1f7;text-align:left} .ledger td.n{text-align:right;font-variant-numeric:tabular-nums}
.status-measured{color:#17703a} .status-pending,.status-parity_on_host{color:#a15c00} .fail{background:#ffe3e3}
.masks td{padding:2px;text-align:center;vertical-align:top;font-size:12px} .masks th{font-size:12px;padding:2px 4px}
.masks img{width:160px;height:auto;image-rendering:pixelated;display:block;border:1px solid #c9ced9}
.missing{width:160px;height:120px;
background:repeating-linear-gradient(45deg,#f3f4f7,#f3f4f7 8px,#e6e8ee 8px,#e6e8ee 16px);
display:flex;align-items:center;justify-content:center;font-size:11px;color:#4a5368;padding:4px;box-sizing:border-box}
.legend span{display:inline-block;margin-right:12px;font-size:12px} .sw{display:inline-block;width:12px;height:12px;
vertical-align:middle;margin-right:4px;border:1px solid #888} svg text{font-family:inherit}
"""


def _png_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def ledger_table(report: dict) -> str:
    columns = get_task(report.get("task", DEFAULT_TASK)).columns
    head = (
        "<tr><th>stage</th><th>backend</th><th>precision</th><th>status</th>"
        + "".join(f"<th>{html.escape(c.header)}</th>" for c in columns)
        + "<th>p50 ms</th><th>p99 ms</th><th>FPS</th><th>artifact MB</th></tr>"
    )
    rows = []
    for r in report["stages"]:
        accuracy = "".join(f"<td class=n>{fmt_value(c.value(r), c.fmt)}</td>" for c in columns)
        size = r.get("artifact_bytes")
        lat = r.get("latency_ms") or {}
        cls = ' class="fail"' if r.get("parity_passed") is False else ""
        rows.append(
            f"<tr{cls}><td>{html.escape(r['name'])}</td><td>{html.escape(r['backend'])}</td>"
            f'<td>{html.escape(r["precision"])}</td><td class="status-{html.escape(r["status"])}">'
            f"{html.escape(r['status'])}</td>{accuracy}"
            f"<td class=n>{fmt_value(lat.get('p50'), '.3f')}</td><td class=n>{fmt_value(lat.get('p99'), '.3f')}</td>"
            f"<td class=n>{fmt_value(r.get('fps'), '.1f')}</td>"
            f"<td class=n>{fmt_value(None if size is None else size / 1e6, '.3f')}</td></tr>"
        )
    notes = "".join(
        f"<li><code>{html.escape(r['name'])}</code>: {html.escape(r['note'])}</li>"
        for r in report["stages"]
        if r.get("note")
    )
    return f'<table class="ledger">{head}{"".join(rows)}</table>' + (f"<p>Notes:</p><ul>{notes}</ul>" if notes else "")


def latency_svg(report: dict) -> str:
    """One horizontal box plot per stage: box = quartiles, line = median, whiskers = min..max, tick = p99."""
    stages = [(r["name"], (r.get("latency") or {}).get("samples_ms")) for r in report["stages"]]
    measured = [np.asarray(s, float) for _, s in stages if s]
    if not measured:
        return "<p>No stage was timed on this host: latency is pending on the device.</p>"
    hi = max(float(s.max()) for s in measured) * 1.05
    left, width, row_h = 170, 640, 34
    height = row_h * len(stages) + 40

    def x(v: float) -> float:
        return left + width * v / hi

    parts = [
        f'<svg width="{left + width + 260}" height="{height + 8}" role="img" '
        f'aria-label="latency distributions" class="plot latency">'
    ]
    for i, (name, samples) in enumerate(stages):
        y = 10 + i * row_h
        parts.append(f'<text x="{left - 8}" y="{y + 17}" text-anchor="end" font-size="12">{html.escape(name)}</text>')
        if not samples:
            parts.append(f'<text x="{left + 4}" y="{y + 17}" font-size="12" fill="#a15c00">not measured here</text>')
            continue
        s = np.asarray(samples, float)
        q1, med, q3, p99 = np.percentile(s, [25, 50, 75, 99])
        parts += [
            f'<line x1="{x(s.min()):.1f}" x2="{x(s.max()):.1f}" y1="{y + 13}" y2="{y + 13}" stroke="#55607a"/>',
            f'<rect x="{x(q1):.1f}" y="{y + 3}" width="{max(x(q3) - x(q1), 1.5):.1f}" height="20" fill="#8fb3ff" '
            f'stroke="#2b4c9a"/>',
            f'<line x1="{x(med):.1f}" x2="{x(med):.1f}" y1="{y + 1}" y2="{y + 25}" stroke="#0b1f52" '
            'stroke-width="2.5"/>',
            f'<line x1="{x(p99):.1f}" x2="{x(p99):.1f}" y1="{y + 6}" y2="{y + 20}" stroke="#c0392b" stroke-width="2"/>',
            f'<text x="{left + width + 10}" y="{y + 17}" font-size="11" fill="#4a5368">p50 {med:.3f} ms, '
            f"p99 {p99:.3f} ms, n={s.size}</text>",
        ]
    base = 10 + len(stages) * row_h
    parts.append(f'<line x1="{left}" x2="{left + width}" y1="{base}" y2="{base}" stroke="#888"/>')
    for k in range(6):
        v = hi * k / 5
        parts.append(f'<text x="{x(v):.1f}" y="{base + 16}" font-size="11" text-anchor="middle">{v:.3g}</text>')
    parts.append(f'<text x="{left + width}" y="{base + 30}" font-size="11" text-anchor="end">ms per image</text></svg>')
    legend = (
        '<p class="legend"><span>box: quartiles</span><span>dark line: median</span>'
        '<span>whiskers: min..max</span><span style="color:#c0392b">red tick: p99</span></p>'
    )
    return "".join(parts) + legend


def per_class_label(report: dict) -> str:
    """What the task scores per class: IoU (segmentation's mIoU per class), AP (detection)."""
    return get_task(report.get("task", DEFAULT_TASK)).metric_label.removeprefix("m")


def class_delta_svg(report: dict) -> str:
    """Per-class delta of the task's metric (points; segmentation: IoU, detection: AP) of every stage against the
    PyTorch student, one bar chart per stage."""
    names = report.get("class_names") or []
    what = per_class_label(report)
    charts = []
    for r in report["stages"][1:]:
        deltas = r.get("per_class_delta")
        if not deltas:
            charts.append(f"<p><code>{html.escape(r['name'])}</code>: per-class {what} not measured.</p>")
            continue
        vals = [0.0 if d is None else float(d) for d in deltas]
        span = max(0.5, max(abs(v) for v in vals))
        left, width, bar_h = 120, 360, 14
        mid = left + width / 2
        height = bar_h * len(vals) + 34
        parts = [
            f'<svg width="{left + width + 70}" height="{height}" role="img" '
            f'aria-label="per-class {what} delta of {html.escape(r["name"])}" class="plot classes">',
            f'<text x="4" y="12" font-size="12" font-weight="600">{html.escape(r["name"])}</text>',
        ]
        for i, (v, d) in enumerate(zip(vals, deltas, strict=True)):
            y = 20 + i * bar_h
            label = names[i] if i < len(names) else f"class {i}"
            w = width / 2 * abs(v) / span
            x0 = mid - w if v < 0 else mid
            color = "#c0392b" if v < 0 else "#17703a"
            parts.append(
                f'<text x="{left - 6}" y="{y + 10}" font-size="11" text-anchor="end">{html.escape(label)}</text>'
            )
            if d is None:
                parts.append(f'<text x="{mid + 4}" y="{y + 10}" font-size="10" fill="#888">absent</text>')
                continue
            parts.append(
                f'<rect x="{x0:.1f}" y="{y + 1}" width="{max(w, 0.8):.1f}" height="{bar_h - 3}" fill="{color}"/>'
            )
            parts.append(f'<text x="{left + width + 4}" y="{y + 10}" font-size="10">{v:+.2f}</text>')
        parts.append(f'<line x1="{mid}" x2="{mid}" y1="18" y2="{height - 12}" stroke="#333"/>')
        parts.append(
            f'<text x="{mid}" y="{height - 2}" font-size="10" text-anchor="middle">0 (±{span:.2g} {what} points '
            "at the edges)</text></svg>"
        )
        charts.append("".join(parts))
    return '<div style="display:flex;flex-wrap:wrap;gap:18px">' + "".join(charts) + "</div>"


def class_colors(report: dict, n_classes: int) -> np.ndarray:
    """n x 3 uint8: the report's ``class_colors`` (the training data's own) when it gives one per class, else the
    project's palette."""
    given = report.get("class_colors")
    if given and len(given) >= n_classes:
        return np.asarray(given, np.uint8).reshape(-1, 3)
    return palette(max(n_classes, 1))


def _draw(task, prediction, colors, ignore: int, truth, image) -> np.ndarray:
    """``task.draw``, given the input ``image`` (detection draws its boxes over it)."""
    return task.draw(prediction, colors, ignore_index=ignore, truth=truth, image=image)


def masks_table(report: dict, out: Path) -> str:
    ref = report.get("qualitative")
    data = load_qualitative(out, ref)
    if data is None:
        return "<p>No qualitative masks in this run (qualitative.npz is missing or does not match the report).</p>"
    n_classes = len(report.get("class_names") or []) or int(data["ground_truth"].max()) + 1
    ignore = ref.get("ignore_index", 255)
    colors = class_colors(report, n_classes)
    task = get_task(report.get("task", DEFAULT_TASK))
    kd = (report.get("distill") or {}).get("kd")
    titles = {c: c for c in MASK_COLUMNS} | {"distilled": f"distilled ({kd})" if kd else "distilled"}
    notes = ref.get("notes", {})
    head = (
        "<tr><th>image</th><th>ground truth</th>"
        + "".join(
            f'<th title="{html.escape(notes.get(c, ref["missing"].get(c, "")))}">{html.escape(titles[c])}</th>'
            for c in MASK_COLUMNS
        )
        + "</tr>"
    )
    rows = []
    for i, name in enumerate(ref["images"]):
        truth = data["ground_truth"][i]
        cells = [
            f'<td><img alt="image {html.escape(name)}" src="{_png_uri(data["image"][i])}"><br>{html.escape(name)}</td>',
            f'<td><img alt="ground truth" src="{_png_uri(_draw(task, truth, colors, ignore, None, data["image"][i]))}">'
            "</td>",
        ]
        for c in MASK_COLUMNS:
            key = f"pred/{c}"
            if key not in data:
                why = ref["missing"].get(c, "not available")
                cells.append(f'<td><div class="missing">not available: {html.escape(why)}</div></td>')
                continue
            pred = data[key][i]
            uri = _png_uri(_draw(task, pred, colors, ignore, truth, data["image"][i]))
            caption = html.escape(task.caption(pred, truth, ignore_index=ignore))
            cells.append(f'<td><img alt="{html.escape(c)} prediction" src="{uri}">{caption}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    names = report.get("class_names") or [f"class {i}" for i in range(n_classes)]
    legend = "".join(
        f'<span><i class="sw" style="background:rgb{tuple(int(v) for v in colors[i])}"></i>{html.escape(n)}</span>'
        for i, n in enumerate(names)
    )
    legend += "".join(
        f'<span><i class="sw" style="background:{html.escape(color)}"></i>{html.escape(meaning)}</span>'
        for color, meaning in task.legend
    )
    deployed_note = notes.get("deployed", "")
    return (
        f'<p class="legend">{legend}</p><table class="masks">{head}{"".join(rows)}</table>'
        f'<p class="meta">deployed = {html.escape(deployed_note)}</p>'
    )


def render(report: dict, out: Path) -> str:
    ev = report.get("evaluation") or {}
    title = f"bckd-pipeline report: {report['target']}"
    distill = html.escape(distillation_line(report))
    qat = qat_line(report)
    qat_html = f'\n<p class="meta">{html.escape(qat)}</p>' if qat else ""
    segmentation = report.get("task", DEFAULT_TASK) == "segmentation"
    qualitative = "Qualitative masks" if segmentation else "Qualitative predictions"
    culprit = "".join(
        f'<p class="fail">{html.escape(line).replace("**", "")}</p>' for line in labels_lines(ev) if line
    )
    if report.get("culprit"):
        culprit += (
            f'<p class="fail">Parity failed at stage <code>{html.escape(report["culprit"])}</code>: '
            f"{html.escape('; '.join(report.get('culprit_reason') or []))}</p>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">Status <b>{html.escape(report["status"])}</b> (exit code {report["exit_code"]}).
Evaluation: {ev.get("images")} images of <code>{html.escape(str(ev.get("data")))}</code> split
<code>{html.escape(str(ev.get("split")))}</code> at {"x".join(str(v) for v in ev.get("input_hw", []))}.</p>
<p class="meta">{distill}</p>{qat_html}{culprit}
<h2>{qualitative}</h2>
{masks_table(report, out)}
<h2>Stage ledger</h2>
{ledger_table(report)}
<h2>Latency per stage (every timed run)</h2>
{latency_svg(report)}
<h2>Per-class {per_class_label(report)} delta against the PyTorch student</h2>
{class_delta_svg(report)}
</body></html>
"""


def write_html(out: Path, report: dict, name: str = "report.html") -> Path:
    path = Path(out) / name
    text = render(report, Path(out))
    write_text(path, text)
    return path
