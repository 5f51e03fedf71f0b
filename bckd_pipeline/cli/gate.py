"""``gate``: a report (or every target of a run folder) against budgets (and a baseline); prints every check,
writes --junit/--markdown."""

from __future__ import annotations

from pathlib import Path


def gate_report(args, report: Path | list[Path]) -> int:
    """Gate a report, a run folder of several targets (each against its own table), or a list of reports: every
    check printed, one --junit file (a test suite per target), one --markdown summary; the worst exit code."""
    from ..fileio import write_text
    from ..gate.budgets import load_budgets
    from ..gate.gate import gate_all, worst_exit_code
    from ..gate.output import junit_xml, markdown, text_lines

    budgets = load_budgets(args.budgets)
    options = {
        "confidence": args.confidence,
        "allow_pending": args.allow_pending,
        "compare_other_machine": args.compare_other_machine,
    }
    reports = report if isinstance(report, list) else [report]
    results = [r for path in reports for r in gate_all(path, budgets, baseline=args.baseline, **options)]
    print("\n".join(line for r in results for line in text_lines(r)))
    if args.junit:
        write_text(args.junit, junit_xml(results))
    if args.markdown:
        write_text(args.markdown, markdown(results))
    return worst_exit_code(results)
