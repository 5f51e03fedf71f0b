"""``gate``: a report against budgets (and a baseline); prints every check, writes --junit/--markdown."""

from __future__ import annotations

from pathlib import Path


def gate_report(args, report: Path) -> int:
    """Gate a report; print every check, write --junit/--markdown; the exit code is the gate's."""
    from ..gate.budgets import load_budgets
    from ..gate.gate import gate
    from ..fileio import write_text
    from ..gate.output import junit_xml, markdown, text_lines

    result = gate(
        report,
        load_budgets(args.budgets),
        baseline=args.baseline,
        confidence=args.confidence,
        allow_pending=args.allow_pending,
        compare_other_machine=args.compare_other_machine,
    )
    print("\n".join(text_lines(result)))
    if args.junit:
        write_text(args.junit, junit_xml(result))
    if args.markdown:
        write_text(args.markdown, markdown(result))
    return result.exit_code
