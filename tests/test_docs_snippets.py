"""The commands and code shown in README.md and docs/ still work, so that a copied command runs.

- Every shell line of a ```bash/```sh fence that calls the command line (``bckd-pipeline ...``,
  ``python -m bckd_pipeline.cli ...``, ``torchrun ... -m bckd_pipeline.cli ...``) is parsed by the real
  argument parser: a command or flag that no longer exists, or a missing required argument, fails here
  without running any training.
- A shell fence marked ``<!-- test -->`` is also run here, command by command, in that folder (below), after
  the runnable Python examples above it on its page:
  it must end with a verdict (0, 1 a budget or parity failure, 3 pending, 4 skipped inputs), never a usage
  error (2) or a crash (70).
- Every ```python fence carries a marker on the line before it: ``<!-- test -->`` runs it here in a
  subprocess, in a folder where ``runs/demo`` is a real smoke run and ``photo.jpg``, ``photos/`` are
  images; ``<!-- not tested: REASON -->`` says why it cannot run here (a dataset or device it needs).
  A fence with neither fails, so that a new example is run or its reason is written down.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bckd_pipeline.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"<!--\s*(?P<kind>test|not tested:(?P<why>[^>]*))\s*-->\s*$")
SEPARATORS = {"&&", "||", "|", ";"}
ENTRY = ("bckd_pipeline.cli", "bckd_pipeline.cli.__main__")


@dataclass(frozen=True)
class Fence:
    page: Path
    line: int  # 1-based line of the opening ```
    lang: str
    body: str
    marker: str | None  # "test", "not tested: ...", or None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def fences(page: Path) -> list[Fence]:
    text = page.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        found.append(Fence(page, line, m.group("lang"), m.group("body"), marker.group("kind") if marker else None))
    return found


ALL_FENCES = [f for page in PAGES for f in fences(page)]


def cli_invocations(script: str) -> list[list[str]]:
    """The argument lists given to the command line by each command of a shell snippet."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote: not a command (an output line)
            continue
        segment: list[str] = []
        for token in [*tokens, ";"]:
            if token not in SEPARATORS:
                segment.append(token)
                continue
            args = _cli_args(segment)
            if args is not None:
                found.append(args)
            segment = []
    return found


def _cli_args(tokens: list[str]) -> list[str] | None:
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    if not tokens:
        return None
    if tokens[0] == "bckd-pipeline":
        return tokens[1:]
    for i, token in enumerate(tokens[:-1]):
        if token == "-m" and tokens[i + 1] in ENTRY and (tokens[0].startswith("python") or tokens[0] == "torchrun"):
            return tokens[i + 2 :]
    return None


def test_the_extractor_finds_commands_in_every_form():
    script = (
        "# a comment: bckd-pipeline nothing\n"
        "pip install -e . && bckd-pipeline run --out runs/demo  # trailing comment\n"
        "python3 -m bckd_pipeline.cli gate R/report.json \\\n    --budgets b.toml\n"
        "CUDA_VISIBLE_DEVICES=0 torchrun --nproc_per_node=2 -m bckd_pipeline.cli distill --teacher t.pt\n"
        "bckd-pipeline targets | head\n"
    )
    assert cli_invocations(script) == [
        ["run", "--out", "runs/demo"],
        ["gate", "R/report.json", "--budgets", "b.toml"],
        ["distill", "--teacher", "t.pt"],
        ["targets"],
    ]


def _parse(args: list[str]) -> str | None:
    """None when the parser accepts ``args``; its complaint otherwise."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for p in [parser, *sub.choices.values()]:
        p.allow_abbrev = False  # a shortened flag in the docs would stop parsing once another flag shares the prefix
    try:
        parser.parse_args(args)
    except SystemExit as exc:  # argparse prints its message to stderr, then exits 2 (--help, --version exit 0)
        return None if exc.code == 0 else f"exit {exc.code}"
    return None


SHELL_FENCES = [f for f in ALL_FENCES if f.lang in ("bash", "sh", "shell", "console")]


def test_the_docs_show_commands():
    assert sum(len(cli_invocations(f.body)) for f in SHELL_FENCES) >= 30


@pytest.mark.parametrize("fence", SHELL_FENCES, ids=lambda f: f.where)
def test_every_shown_command_parses(fence, capsys):
    bad = []
    for args in cli_invocations(fence.body):
        if _parse(args) is not None:
            bad.append(f"bckd-pipeline {shlex.join(args)}: {capsys.readouterr().err.strip().splitlines()[-1]}")
    capsys.readouterr()
    assert not bad, f"{fence.where}: the command line refuses:\n" + "\n".join(bad)


def test_a_removed_flag_is_caught(capsys):
    """The parse check can fail: a flag the parser does not have is refused."""
    assert _parse(["run", "--out", "runs/x", "--flag-that-never-was"]) is not None
    assert _parse(["deploy", "--model", "m.pt", "--out", "runs/d"]) is None
    assert _parse(["predict", "photos/", "--model", "runs/demo", "--save-over"]) is not None  # no abbreviations


PYTHON_FENCES = [f for f in ALL_FENCES if f.lang in ("python", "py", "pycon")]


def test_every_python_example_is_run_or_says_why_not():
    unmarked = [f.where for f in PYTHON_FENCES if f.marker is None]
    assert not unmarked, (
        "put <!-- test --> (run by tests/test_docs_snippets.py) or <!-- not tested: REASON --> on the line "
        f"before each ```python fence: {unmarked}"
    )
    assert any(f.marker == "test" for f in PYTHON_FENCES)
    assert any(f.marker == "test" for f in SHELL_FENCES)


@pytest.fixture(scope="module")
def workspace(smoke_report, tmp_path_factory):
    """The folder the runnable examples start in: ``runs/demo`` a real run, ``photo.jpg`` and ``photos/`` images,
    ``docs/`` the repository's (``docs/ci/budgets.toml``)."""
    ws = tmp_path_factory.mktemp("docs-snippets")
    (ws / "runs").mkdir()
    (ws / "runs" / "demo").symlink_to(smoke_report, target_is_directory=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(ws / "photo.jpg")
    (ws / "docs").symlink_to(ROOT / "docs", target_is_directory=True)
    (ws / "photos").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(ws / "photos" / f"{i}.png")
    return ws


@pytest.mark.slow
@pytest.mark.parametrize("fence", [f for f in PYTHON_FENCES if f.marker == "test"], ids=lambda f: f.where)
def test_python_example_runs(fence, workspace):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", fence.body], cwd=workspace, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{fence.where} failed:\n{done.stdout}\n{done.stderr}"


VERDICTS = (0, 1, 3, 4)  # done, a failed check, pending, skipped inputs: what a working command may answer


@pytest.mark.slow
@pytest.mark.parametrize("fence", [f for f in SHELL_FENCES if f.marker == "test"], ids=lambda f: f.where)
def test_shell_example_runs(fence, workspace):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    commands = cli_invocations(fence.body)
    assert commands, f"{fence.where} is marked <!-- test --> but calls no bckd-pipeline command"
    for before in PYTHON_FENCES:  # what the page's runnable examples above it prepare (a dataset, a file)
        if before.page == fence.page and before.line < fence.line and before.marker == "test":
            done = subprocess.run([sys.executable, "-c", before.body], cwd=workspace, env=env, timeout=600)
            assert done.returncode == 0, f"{before.where} failed"
    for args in commands:
        done = subprocess.run(
            [sys.executable, "-m", "bckd_pipeline.cli", *args],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode in VERDICTS, f"{fence.where}: bckd-pipeline {shlex.join(args)}:\n{done.stderr[-3000:]}"
