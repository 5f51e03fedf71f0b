"""The package's layout rules (docs/architecture.md), checked on the source.

- No import circle between the package's modules. Every import counts: module level, inside a
  function, under ``TYPE_CHECKING``; a lazy import is still a dependency a reader has to follow.
- Imports run one way: cli -> pipeline -> stages -> shared pieces. Nothing but the command line
  imports ``cli``, and nothing but ``cli`` imports ``pipeline``.
- Parsing the command line imports none of torch, onnx, onnxruntime, openvino: ``--help``, every
  command's ``--help`` and ``gate`` on a report start fast.

The checkers are tested on small made-up graphs (``test_the_checker_sees_a_circle``,
``test_the_graph_sees_lazy_and_relative_imports``), so a rule that passes here is one that can fail.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bckd_pipeline"
HEAVY = ("torch", "onnx", "onnxruntime", "openvino")


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (a package's own ``__init__`` importing its modules is no edge)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                for candidate in (f"{base}.{alias.name}", base):
                    if candidate in mods:
                        found.add(candidate)
                        break
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in mods}
    found.discard(name)
    return {m for m in found if mods[m].name != "__init__.py" or not name.startswith(m + ".")}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, mods) for name, path in mods.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    found = circles(import_graph())
    assert found == [], "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_imports_run_from_the_command_line_down():
    graph = import_graph()
    wrong = []
    for module, targets in graph.items():
        top = module.split(".")[1] if "." in module else ""
        for target in targets:
            if target.startswith("bckd_pipeline.cli") and top != "cli":
                wrong.append(f"{module} imports the command line ({target})")
            if target == "bckd_pipeline.pipeline" and top != "cli":
                wrong.append(f"{module} imports the pipeline; stages read bckd_pipeline.context instead")
    assert wrong == []


def test_the_graph_sees_lazy_and_relative_imports():
    """Sanity of the walker on this tree: a lazy, relative, two-level import is an edge."""
    graph = import_graph()
    assert "bckd_pipeline.runtimes.torch" in graph["bckd_pipeline.deploy.stage"]
    assert "bckd_pipeline.ledger" in graph["bckd_pipeline.device.agent"]


# -- the command line parses without the heavy libraries ------------------------------------------
PROBE = """
import json, sys
from bckd_pipeline.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def parse_in_fresh_python(*argv: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120, cwd=PACKAGE.parent
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


COMMANDS = [
    "models",
    "train-teacher",
    "distill",
    "eval",
    "run",
    "deploy",
    "targets",
    "doctor",
    "bench",
    "predict",
    "gate",
    "ingest",
]


@pytest.mark.parametrize("argv", [["--help"], *([c, "--help"] for c in COMMANDS)], ids=lambda a: " ".join(a))
def test_help_imports_no_heavy_library(argv):
    got = parse_in_fresh_python(*argv)
    assert got == {"code": 0, "heavy": []}


def test_version_imports_no_heavy_library():
    got = parse_in_fresh_python("--version")
    assert got == {"code": 0, "heavy": []}


def test_the_package_imports_segmenter_lazily():
    """`import bckd_pipeline` (the CLI does) stays light; `from bckd_pipeline import Segmenter` loads predict/,
    which itself imports no onnx, onnxruntime, openvino or torch until a model of theirs is loaded."""
    probe = (
        "import json, sys; import bckd_pipeline; light = 'bckd_pipeline.predict' not in sys.modules; "
        "from bckd_pipeline import Segmenter; "
        f"print(json.dumps({{'light': light, 'heavy': sorted(m for m in {HEAVY!r} if m in sys.modules), "
        "'name': Segmenter.__name__}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=PACKAGE.parent
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"light": True, "heavy": [], "name": "Segmenter"}


def test_every_command_is_probed():
    from bckd_pipeline.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert sorted(sub.choices) == sorted(COMMANDS)


@pytest.mark.slow
def test_gate_on_a_report_imports_no_heavy_library(smoke_report, tmp_path):
    budgets = tmp_path / "budgets.toml"
    budgets.write_text("[onnxruntime-cpu]\nmin_miou = 0.0\n")
    got = parse_in_fresh_python("gate", str(smoke_report / "report.json"), "--budgets", str(budgets))
    assert got == {"code": 0, "heavy": []}


def test_help_lists_the_data_kinds_the_datasets_have():
    from bckd_pipeline.cli.parser import DATA_KIND_NAMES
    from bckd_pipeline.data import DATA_KINDS

    assert DATA_KIND_NAMES == tuple(DATA_KINDS)
