"""The run folder's combined view over every target deployed into it: ``report.json``, ``report.md``,
``report.html`` and ``manifest.json``.

Each target writes its own ``report.<target>.json/.md/.html`` and ``manifest.<target>.json`` (ledger.py,
``report_file``) and its artifacts into its own ``deploy/<target>/`` folder, so a second target run into
the same folder never overwrites the first one's report nor drops its artifacts. Then ``write_combined``
rebuilds the folder's view from every target's files, in the order they were first deployed (kept in
``manifest.json["targets"]``):

- one target: ``report.json``/``manifest.json`` are that target's (what the CI gate, ``ingest`` and
  ``predict`` read), with ``targets`` added;
- several: ``report.json`` (format ``bckd-pipeline/combined-report-v1``) is one ledger of every target and
  precision on the same evaluation images, like a benchmark table (the rows the targets share, the
  PyTorch reference and the FP32 ONNX, once), and ``manifest.json`` lists every target's artifacts; its
  ``target``/``deployable`` are the first target's (``predict --target`` picks another).

Standard library only, plus this package's report writers.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..fileio import write_json, write_text
from ..ledger import SHARED_ROWS, report_file
from ..tasks import DEFAULT_TASK, get_task
from .manifest import MANIFEST_FORMAT
from .markdown import fmt_value, labels_lines

COMBINED_FORMAT = "bckd-pipeline/combined-report-v1"
_SEVERITY = {"parity_failed": 2, "pending": 1, "complete": 0}


def deployed_targets(out: Path) -> list[str]:
    """The targets deployed into ``out``, in the order they were first deployed."""
    try:
        manifest = json.loads((Path(out) / "manifest.json").read_text())
    except (OSError, ValueError):
        return []
    found = manifest.get("targets") if isinstance(manifest, dict) else None
    if isinstance(found, list):
        return [str(t) for t in found]
    return [manifest["target"]] if isinstance(manifest, dict) and manifest.get("target") else []


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def write_combined(out: Path, keys: list[str]) -> dict:
    """Rebuild the folder's report.json/.md/.html and manifest.json over ``keys`` and every target deployed
    before; return the report.json written."""
    out = Path(out)
    _keep_an_older_layout(out, keys)
    order = [k for k in [*deployed_targets(out), *keys] if (out / report_file(k, "json")).is_file()]
    order = list(dict.fromkeys(order))
    reports = {k: _read(out / report_file(k, "json")) for k in order}
    manifests = {
        k: _read(out / report_file(k, "manifest")) for k in order if (out / report_file(k, "manifest")).is_file()
    }
    listing = {
        "targets": order,
        "per_target": {k: {"report": report_file(k, "json"), "manifest": report_file(k, "manifest")} for k in order},
    }
    if len(order) == 1:
        (key,) = order
        report = {**reports[key], **listing}
        write_json(out / "report.json", report)
        for suffix in ("md", "html"):
            source = out / report_file(key, suffix)
            if source.is_file():
                write_text(out / f"report.{suffix}", source.read_text())
        if key in manifests:
            write_json(out / "manifest.json", {**manifests[key], **listing})
        return report
    report = combined_report(reports, listing)
    write_json(out / "report.json", report)
    write_text(out / "report.md", combined_markdown(report))
    write_text(out / "report.html", combined_html(report))
    write_json(out / "manifest.json", combined_manifest(manifests, listing))
    return report


def _keep_an_older_layout(out: Path, keys: list[str]) -> None:
    """A run folder in the one-target layout holds only report.json and manifest.json, no per-target files:
    keep them as that target's own files before the folder's view is rebuilt over them."""
    try:
        old = json.loads((out / "report.json").read_text())
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return
    key = old.get("target_key") or old.get("target") if isinstance(old, dict) else None
    if not key or key in keys or "targets" in old or (out / report_file(key, "json")).exists():
        return
    write_json(out / report_file(key, "json"), old)
    write_json(out / report_file(key, "manifest"), manifest)
    for suffix in ("md", "html"):
        if (out / f"report.{suffix}").is_file():
            write_text(out / report_file(key, suffix), (out / f"report.{suffix}").read_text())


def combined_report(reports: dict[str, dict], listing: dict) -> dict:
    first = next(iter(reports.values()))
    rows = []
    for key, rep in reports.items():
        for r in rep["stages"]:
            if r["name"] in SHARED_ROWS and key != next(iter(reports)):
                continue  # the same artifact, measured on the same images: shown once
            rows.append({**r, "target": "(shared)" if r["name"] in SHARED_ROWS else key})
    worst = max(reports.values(), key=lambda r: _SEVERITY.get(r["status"], 0))
    return {
        "format": COMBINED_FORMAT,
        "task": first.get("task", DEFAULT_TASK),
        **listing,
        "status": worst["status"],
        "exit_code": 1 if any(r["exit_code"] == 1 for r in reports.values()) else worst["exit_code"],
        "culprits": {k: r["culprit"] for k, r in reports.items() if r["culprit"]},
        "deployed": {k: r["stages"][-1]["artifact"] for k, r in reports.items()},
        "status_per_target": {k: r["status"] for k, r in reports.items()},
        "evaluation": first["evaluation"],
        "distill": first["distill"],
        "source": first.get("source"),
        "stages": rows,
        "machine": first.get("machine"),
        "versions": first.get("versions"),
    }


def header(columns) -> tuple[str, str]:
    """The Markdown header and alignment lines of the combined ledger, with the task's accuracy ``columns``."""
    accuracy = " | ".join(c.header for c in columns)
    return (
        f"| target | stage | backend | precision | device | status | {accuracy} | p50 ms | p99 ms | FPS |",
        "|---|---|---|---|---|---|" + "---:|" * len(columns) + "---:|---:|---:|",
    )


def table_lines(rows: list[dict], task: str = DEFAULT_TASK) -> list[str]:
    columns = get_task(task).columns
    lines = list(header(columns))
    for r in rows:
        accuracy = " | ".join(fmt_value(c.value(r), c.fmt) for c in columns)
        lines.append(
            f"| {r['target']} | {r['name']} | {r['backend']} | {r['precision']} | {r['device']} | {r['status']} | "
            f"{accuracy} | {fmt_value(r['latency_ms']['p50'])} | {fmt_value(r['latency_ms']['p99'])} | "
            f"{fmt_value(r['fps'], '.1f')} |"
        )
    return lines


def combined_markdown(report: dict) -> str:
    ev = report["evaluation"]
    lines = [
        f"# bckd-pipeline report: {len(report['targets'])} targets ({', '.join(report['targets'])})",
        "",
        f"Status: **{report['status']}** (exit code {report['exit_code']}). Every target on the same "
        f"{ev['images']} images of `{ev['data']}` split `{ev['split']}` at {ev['input_hw'][0]}x{ev['input_hw'][1]}; "
        f"Δ{get_task(report.get('task', DEFAULT_TASK)).metric_label} against the reference row.",
        "",
        *labels_lines(ev),
        *table_lines(report["stages"], report.get("task", DEFAULT_TASK)),
        "",
        "Per target (its own ledger, notes and files):",
        *(
            f"- `{k}`: {report['status_per_target'][k]}, deployed `{report['deployed'][k]}`; "
            f"`{v['report'][:-5]}.md`, `{v['manifest']}`"
            for k, v in report["per_target"].items()
        ),
    ]
    notes = [f"- `{r['target']}` `{r['name']}`: {r['note']}" for r in report["stages"] if r.get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def combined_html(report: dict) -> str:
    from html import escape

    lines = table_lines(report["stages"], report.get("task", DEFAULT_TASK))
    head = "".join(f"<th>{escape(c.strip())}</th>" for c in lines[0].strip("|").split("|"))
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(c.strip())}</td>" for c in line.strip("|").split("|")) + "</tr>"
        for line in lines[2:]
    )
    links = "".join(
        f'<li><a href="{escape(v["report"][:-5])}.html">{escape(k)}</a>: {escape(report["status_per_target"][k])}</li>'
        for k, v in report["per_target"].items()
    )
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>bckd-pipeline: '
        f"{escape(', '.join(report['targets']))}</title><style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;"
        "border-bottom:1px solid #ddd;text-align:right}}</style></head><body>"
        f"<h1>{len(report['targets'])} targets, one ledger</h1><p>Status: <b>{escape(report['status'])}</b></p>"
        + "".join(f"<p>{_bold(escape(line))}</p>" for line in labels_lines(report["evaluation"]) if line)
        + f"<table><tr>{head}</tr>{body}</table><h2>Each target's report</h2><ul>{links}</ul></body></html>\n"
    )


def _bold(text: str) -> str:
    """``**x**`` of a Markdown line as ``<b>x</b>``."""
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def combined_manifest(manifests: dict[str, dict], listing: dict) -> dict:
    """The first target's manifest (its contract and deployable), every target's artifacts."""
    first = next(iter(manifests.values()))
    artifacts: dict[str, dict] = {}
    for key, m in manifests.items():
        for a in m["artifacts"]:
            entry = artifacts.setdefault(a["path"], {**a, "targets": []})
            entry["targets"].append(key)
    return {
        **first,
        "format": MANIFEST_FORMAT,
        **listing,
        "deployable_per_target": {k: m["deployable"] for k, m in manifests.items()},
        "artifacts": list(artifacts.values()),
    }
