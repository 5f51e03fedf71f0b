"""The gate's result for people and CI systems: console lines, JUnit XML, a Markdown job summary.

JUnit: one ``<testsuite>`` per gate, one ``<testcase>`` per budget check (classname
``bckd-pipeline.gate.<target>.<stage>``, name = the budget key); a violated budget holds a
``<failure message=...>``, a value that was not measured a ``<skipped message=...>``. GitHub,
GitLab and Jenkins read this shape. Markdown: a verdict line and a table, for
``$GITHUB_STEP_SUMMARY`` or a merge-request note.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .gate import FAIL, NOT_MEASURED, PASS, GateResult

SYMBOL = {PASS: "ok", FAIL: "FAIL", NOT_MEASURED: "pending"}
MD_SYMBOL = {PASS: "✅ pass", FAIL: "❌ **fail**", NOT_MEASURED: "⏸ not measured"}


def text_lines(result: GateResult) -> list[str]:
    lines = [
        f"gate {result.report} (target {result.label})"
        + (f" vs baseline {result.baseline}" if result.baseline else "")
        + ("; parity label-free, against the FP32 reference" if result.labels == "reference" else "")
    ]
    lines += [f"  {SYMBOL[c.status]:8s} {c.message}" for c in result.checks]
    lines.append(f"{result.verdict} (exit code {result.exit_code})")
    return lines


def _several(results) -> list[GateResult]:
    return [results] if isinstance(results, GateResult) else list(results)


def _labels_note(result: GateResult) -> str:
    if result.labels == "reference":
        return "parity label-free: against the FP32 reference's own predictions"
    return "parity against ground-truth labels"


def junit_xml(results: GateResult | list[GateResult]) -> str:
    """One ``<testsuites>`` holding one ``<testsuite>`` per gated target."""
    suites = [_suite(r) for r in _several(results)]
    root = ET.Element(
        "testsuites",
        {
            "name": "bckd-pipeline gate",
            "tests": str(sum(int(s.get("tests")) for s in suites)),
            "failures": str(sum(int(s.get("failures")) for s in suites)),
            "skipped": str(sum(int(s.get("skipped")) for s in suites)),
            "errors": "0",
        },
    )
    root.extend(suites)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _suite(result: GateResult) -> ET.Element:
    suite = ET.Element(
        "testsuite",
        {
            "name": f"bckd-pipeline gate: {result.label}",
            "tests": str(len(result.checks)),
            "failures": str(result.count(FAIL)),
            "skipped": str(result.count(NOT_MEASURED)),
            "errors": "0",
        },
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("report", result.report),
        ("baseline", result.baseline or ""),
        ("confidence", f"{result.settings.confidence:g}"),
        ("latency_tolerance", f"{result.settings.latency_tolerance:g}"),
        ("parity_labels", result.labels),
    ):
        ET.SubElement(props, "property", {"name": name, "value": value})
    for c in result.checks:
        case = ET.SubElement(
            suite,
            "testcase",
            {"classname": f"bckd-pipeline.gate.{result.label}.{c.stage}", "name": c.budget, "time": "0"},
        )
        if c.status == FAIL:
            ET.SubElement(case, "failure", {"message": c.message, "type": "BudgetViolated"}).text = c.message
        elif c.status == NOT_MEASURED:
            ET.SubElement(case, "skipped", {"message": c.message})
        else:
            ET.SubElement(case, "system-out").text = c.message
    return suite


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _value(c) -> str:
    """The measured figure as the console line writes it (a metric's drop: the Δ bound, with its sign)."""
    if c.measured is None:
        return "–"
    return c.shown or f"{c.measured:.4g} {c.unit}".strip()


def markdown(results: GateResult | list[GateResult]) -> str:
    """One summary: with several targets a verdict line over all of them, then each target's table."""
    results = _several(results)
    if len(results) == 1:
        return _markdown_one(results[0])
    from .gate import worst_exit_code

    code = worst_exit_code(results)
    icon = "❌" if code == 1 else "⏸" if code else "✅"
    lines = [
        f"## {icon} bckd-pipeline gate: {len(results)} targets (exit code {code})",
        "",
        *(f"- `{r.label}`: {r.verdict}" for r in results),
        "",
    ]
    return "\n".join(lines) + "\n".join(_markdown_one(r) for r in results)


def _markdown_one(result: GateResult) -> str:
    icon = "❌" if result.count(FAIL) else "⏸" if result.exit_code else "✅"
    lines = [
        f"### {icon} bckd-pipeline gate: `{result.label}`",
        "",
        f"**{result.verdict}** (exit code {result.exit_code}). Report `{result.report}`"
        + (f", baseline `{result.baseline}`" if result.baseline else "")
        + f"; confidence {result.settings.confidence:.0%}, latency tolerance {result.settings.latency_tolerance:.0%}; "
        + f"{_labels_note(result)}.",
        "",
        "| result | stage | budget | measured | limit | detail |",
        "|---|---|---|---:|---:|---|",
    ]
    for c in result.checks:
        limit = "–" if c.limit is None else f"{c.limit + 0.0:g}"  # + 0.0: a zero limit is 0, never -0
        lines.append(
            f"| {MD_SYMBOL[c.status]} | `{c.stage}` | `{c.budget}` | {_value(c)} | {limit} | {_cell(c.message)} |"
        )
    return "\n".join(lines) + "\n"
