"""The CI examples in docs/ci/ parse, and every `bckd-pipeline ...` line in them is a real command with real flags."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest


from bckd_pipeline.cli import build_parser
from bckd_pipeline.gate.budgets import load_budgets

yaml = pytest.importorskip("yaml", reason="pyyaml is in the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "docs/ci"


def _shell_blocks(doc: dict, kind: str) -> list[str]:
    if kind == "github":
        return [step["run"] for job in doc["jobs"].values() for step in job["steps"] if "run" in step]
    blocks = []
    for job in doc.values():
        if isinstance(job, dict) and "script" in job:
            blocks += [*job.get("before_script", []), *job["script"]]
    return blocks


def _commands(blocks: list[str]) -> list[list[str]]:
    """Every bckd-pipeline invocation, with shell line continuations and folded lines joined."""
    found = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line)
            for i, w in enumerate(words):
                if w == "bckd-pipeline":
                    tail = words[i + 1 :]
                    cut = next((k for k, t in enumerate(tail) if t in ("&&", "||", ";", "|")), len(tail))
                    found.append(tail[:cut])
    return found


@pytest.mark.parametrize(("file", "kind"), [("github-actions.yml", "github"), ("gitlab-ci.yml", "gitlab")])
def test_ci_example_calls_real_commands_and_flags(file, kind):
    doc = yaml.safe_load((CI / file).read_text())
    commands = _commands(_shell_blocks(doc, kind))
    assert commands, f"no bckd-pipeline command in {file}"
    parser = build_parser()
    for argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse exits on an unknown command or flag
            pytest.fail(f"{file}: `bckd-pipeline {' '.join(argv)}` is not a valid command line ({exc})")
        if getattr(args, "budgets", None) is not None:
            assert (ROOT / args.budgets).is_file(), args.budgets
            load_budgets(ROOT / args.budgets)  # the example budgets file validates
    used = {a for argv in commands for a in argv if a.startswith("--")}
    assert {"run", "--budgets", "--junit", "--markdown"} <= {c[0] for c in commands} | used
    if kind == "github":
        assert any(c[0] == "gate" and "--baseline" in c for c in commands)
        assert any("$GITHUB_STEP_SUMMARY" in c for c in commands)
    else:
        job = doc["deploy-gate"]
        assert job["artifacts"]["reports"]["junit"] == "runs/ci/gate.xml" and job["allow_failure"]["exit_codes"] == [3]


@pytest.mark.slow
def test_the_example_budgets_pass_a_real_smoke_report(smoke_report, capsys):
    from helpers.cli import run_cli

    rc, out, err = run_cli(capsys, "gate", smoke_report, "--budgets", CI / "budgets.toml")
    assert rc == 0, out + err
