"""The generated reference pages of the docs site match the code, and reports match the published schema.

docs/reference/cli.md and budgets.md are written by scripts/gen_cli_reference.py from the argument parser and
the budget keys: a flag or key added, renamed or re-documented without rerunning the script fails here.
docs/reference/report.schema.json (JSON Schema 2020-12) is checked against a report the pipeline really wrote
and against one assembled here from the report builder's own row function.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "docs" / "reference" / "report.schema.json"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", ROOT / "scripts" / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["cli.md", "budgets.md"])
def test_committed_reference_page_is_what_the_code_generates(page):
    gen = _generator()
    path = ROOT / "docs" / "reference" / page
    assert path.read_text(encoding="utf-8") == gen.PAGES[path](), (
        f"docs/reference/{page} is out of date: run python scripts/gen_cli_reference.py and commit the result"
    )


def test_cli_page_lists_every_command_and_flag():
    from bckd_pipeline.cli.parser import build_parser

    gen = _generator()
    text = gen.cli_page()
    for name, _, sub in gen._subcommands(build_parser()):
        assert f"\n## {name}\n" in text
        for action in sub._actions:
            for flag in action.option_strings:
                if flag in ("-h", "--help"):
                    continue
                assert f"`{flag}" in text, f"{name} {flag} missing from the CLI reference"


def test_a_new_flag_makes_the_committed_page_stale(monkeypatch):
    """The drift check can fail: a flag the committed page does not know changes the generated text."""
    import bckd_pipeline.cli.parser as parser_module

    gen = _generator()
    real = parser_module.build_parser

    def with_extra_flag():
        parser = real()
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        sub.choices["run"].add_argument("--flag-from-the-future", help="not in the committed page")
        return parser

    monkeypatch.setattr(gen, "build_parser", with_extra_flag)
    assert "--flag-from-the-future" in gen.cli_page()
    assert (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8") != gen.cli_page()


def test_budgets_page_names_every_key():
    from bckd_pipeline.gate.budgets import SETTING_KEYS, all_budget_keys

    text = _generator().budgets_page()
    for key in [*all_budget_keys(), *SETTING_KEYS]:
        assert f"| `{key}` |" in text


# ---- report.json schema ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator, report) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(report)]


def tiny_report(tmp_path: Path) -> dict:
    """A one-target report whose rows come from the report builder's own row function."""
    from bckd_pipeline.ledger import MEASURED, PENDING, REPORT_FORMAT, Built
    from bckd_pipeline.report.build import _row
    from bckd_pipeline.targets.profiles import Backend, Precision
    from bckd_pipeline.tasks import DEFAULT_TASK, get_task

    task = get_task(DEFAULT_TASK)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\0" * 10)
    reference = Built("pytorch", Backend.TORCH, Precision.FP32, None, None)
    deployed = Built("onnxruntime-int8", Backend.ONNXRUNTIME, Precision.INT8, onnx, "pytorch")
    fields = task.parity_fields
    rows = [
        _row(reference, tmp_path, name="pytorch", status=MEASURED, device="cpu (host)", parent=None, fields=fields),
        _row(deployed, tmp_path, name=deployed.name, status=PENDING, device="NPU", parent="pytorch", fields=fields),
    ]
    rows[0].update(miou=40.0, miou_delta=0.0, pixel_agreement=1.0, per_class_iou=[40.0, None], parity_passed=True)
    rows[0]["latency_ms"] = {"p50": 1.0, "p90": 1.1, "p99": 1.3, "mean": 1.05}
    rows[0]["fps"] = 950.0
    rows[1]["note"] = "not measured: no NPU on this host"
    return {
        "format": REPORT_FORMAT,
        "task": task.name,
        "target": "openvino-npu",
        "status": "pending",
        "exit_code": 3,
        "culprit": None,
        "distill": {"kd": "kd+bckd", "teacher_miou": 44.0, "student_miou": 38.0, "distilled_miou": 40.0,
                    "gap_closed_percent": 33.3},
        "evaluation": {"data": "demo", "split": "val", "images": 4, "input_hw": [64, 64]},
        "class_names": ["sky", "road"],
        "reference": "pytorch",
        "stages": rows,
        "machine": {"cpu": "test"},
        "versions": {"torch": "2"},
    }


def test_schema_accepts_a_report_built_from_the_row_function(validator, tmp_path):
    assert _errors(validator, tiny_report(tmp_path)) == []


@pytest.mark.parametrize(
    ("break_it", "where"),
    [
        (lambda r: r.pop("stages"), "stages"),
        (lambda r: r["stages"][0].pop("miou"), "miou"),  # segmentation's parity fields are required on every row
        (lambda r: r["stages"][0].update(status="guessed"), "guessed"),
        (lambda r: r["stages"][1]["latency_ms"].update(p50="fast"), "fast"),
        (lambda r: r.update(exit_code=2), "exit_code"),  # a report is written for 0, 1 and 3 only
        (lambda r: r["distill"].pop("distilled_miou"), "distilled_miou"),
    ],
)
def test_schema_rejects_a_report_that_breaks_it(validator, tmp_path, break_it, where):
    report = copy.deepcopy(tiny_report(tmp_path))
    break_it(report)
    errors = _errors(validator, report)
    assert errors, f"the schema accepted a report without a valid {where}"


def test_schema_allows_fields_a_task_adds(validator, tmp_path):
    report = tiny_report(tmp_path)
    report["task_extra"] = {"anything": 1}
    report["stages"][0]["map50"] = 0.5
    assert _errors(validator, report) == []


def test_schema_reads_a_combined_report(validator, tmp_path):
    from bckd_pipeline.report.combined import combined_report

    single = tiny_report(tmp_path)
    other = {**copy.deepcopy(single), "target": "onnxruntime-cpu", "status": "complete", "exit_code": 0}
    listing = {"targets": ["openvino-npu", "onnxruntime-cpu"], "per_target": {}}
    combined = combined_report({"openvino-npu": single, "onnxruntime-cpu": other}, listing)
    assert _errors(validator, combined) == []
    combined["stages"][0].pop("pixel_agreement")
    assert _errors(validator, combined)


@pytest.mark.slow
def test_schema_accepts_the_smoke_runs_report(validator, smoke_report):
    for path in sorted(smoke_report.glob("report*.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        assert _errors(validator, report) == [], path.name


def test_site_builds_strictly(tmp_path):
    """The docs site builds with every link, anchor and nav entry checked (mkdocs.yml `validation`, strict)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    warnings = [line for line in done.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert done.returncode == 0, "\n".join(warnings) or done.stderr[-2000:]


def test_readme_links_point_at_files_that_exist():
    """README.md is outside the site, so mkdocs does not check it: its relative links are checked here."""
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [t.split("#", 1)[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    assert targets
    missing = [t for t in targets if t and not (ROOT / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
