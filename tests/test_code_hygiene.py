"""Comments and docstrings say what the code does and why, never its history.

The package and the tests must not cite this project's issue numbers or commits: a reader of the code
cannot follow them, and the reason they stand for belongs in the text itself, in docs/decisions.md (a
design decision and its evidence) or in CHANGELOG.md (what changed for users). Only comments and
docstrings are read: a string in code (a pinned sha256, an HTML colour) is data.

Allowed: a reference into another project's tracker, written ``project#N`` (``pytorch#86261``): it
names public evidence for a workaround, which is what the comment is about. The examples below write N
for a number, so that this file passes its own test.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("bckd_pipeline", "tests")

# "issue N", "issues N and N", "Issue #N", "PR N", "pull request #N"
ISSUE = re.compile(r"\b(?:issues?|PRs?|pull requests?)\s*#?\d+", re.IGNORECASE)
# "#N" on its own; "project#N" (another project's tracker) is allowed
BARE_NUMBER = re.compile(r"(?<![\w/])#\d+\b")
# a git hash: 7 to 40 hex digits with at least one digit and one letter, not part of a file name
# ("efficientnet-lite0-57934424.pth") or of a longer word
HEX = re.compile(r"(?<![\w.-])(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}(?![\w-]|\.\w)")
COMMIT = re.compile(r"\bcommits?\s+[0-9a-f]{7,40}\b", re.IGNORECASE)
PATTERNS = (("issue reference", ISSUE), ("issue reference", BARE_NUMBER), ("commit", COMMIT), ("commit hash", HEX))


def prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and of every string that stands alone as a statement (docstrings)."""
    found = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            found += [(node.lineno + i, line) for i, line in enumerate(node.value.value.splitlines())]
    return sorted(found)


def references(source: str) -> list[tuple[int, str, str]]:
    """(line, kind, the match) for every issue or commit reference in the comments and docstrings of ``source``."""
    return [
        (line, kind, m.group(0))
        for line, text in prose(source)
        for kind, pattern in PATTERNS
        for m in pattern.finditer(text)
    ]


def test_the_checker_finds_issue_and_commit_references():
    # The references are assembled when the test runs, so that this file itself cites none.
    issue, issues, commit, pr, hash_sign = "issue", "Issues", "commit", "PR", "#"
    old, new = "0b0" + "4864", "3f2a" + "9c1d"
    source = (
        f'"""Fixes the export ({issue} 14)."""\n'
        f"import hashlib  # see {hash_sign}12\n"
        "def f():\n"
        f'    """Measured before {commit} {old}, and again at {new}."""\n'
        f"    return 1  # {issues} 5, and {pr} {hash_sign}7\n"
    )
    assert [(line, kind, text) for line, kind, text in references(source)] == [
        (1, "issue reference", f"{issue} 14"),
        (2, "issue reference", f"{hash_sign}12"),
        (4, "commit", f"{commit} {old}"),
        (4, "commit hash", old),
        (4, "commit hash", new),
        (5, "issue reference", f"{issues} 5"),
        (5, "issue reference", f"{pr} {hash_sign}7"),
        (5, "issue reference", "#7"),
    ]


def test_the_checker_leaves_data_and_other_projects_alone():
    source = (
        '"""Reads efficientnet-lite1-77cc7160.pth; the exporter cannot trace this (pytorch#86261)."""\n'
        'SHA256 = "9656183e0f4a63c1aa1c4f3e0b3e52d0a3c8c8f5e0d1a2b3c4d5e6f708192a3b"  # the file\'s digest\n'
        'COLOUR = "#888"  # grey; section 2 of the spec; 17000000.ga10b is a device name\n'
        "def f():\n"
        '    """Commits the cache to disk; 1280 x 192 feature maps; decade 1990-2000."""\n'
    )
    assert references(source) == []


@pytest.mark.parametrize("folder", SCANNED)
def test_no_issue_or_commit_references_in_comments(folder):
    hits = [
        f"{path.relative_to(ROOT)}:{line}: {kind} {text!r}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line, kind, text in references(path.read_text(encoding="utf-8"))
    ]
    advice = "say what the code does and why instead (history: CHANGELOG.md, evidence: docs/decisions.md)"
    assert not hits, advice + ":\n" + "\n".join(hits)


def test_no_test_file_imports_another():
    """Shared test code lives in tests/helpers/ or conftest.py, never in a test file another one imports."""
    tests = Path(__file__).resolve().parent
    wrong = [
        f"{path.name}: {line.strip()}"
        for path in sorted(tests.glob("test_*.py"))
        for line in path.read_text().splitlines()
        if line.startswith(("from test_", "import test_", "from .test_"))
    ]
    assert wrong == []
