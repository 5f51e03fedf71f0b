"""The package's layout rules (docs/architecture.md), checked on the source.

- The layer table (docs/architecture.md, "Layers") names every top-level module and package; imports
  go down it, no two packages import each other, shared pieces import no stage, ``context.py`` imports
  no stage. Each rule is its own test, so a failure says which rule broke.
- No import circle between the package's modules. Every import counts: module level, inside a
  function, under ``TYPE_CHECKING``; a lazy import is still a dependency a reader has to follow.
- Imports run one way: cli -> pipeline -> stages -> shared pieces. Nothing but the command line
  imports ``cli``, and nothing but ``cli`` imports ``pipeline``.
- Parsing the command line imports none of torch, onnx, onnxruntime, openvino: ``--help``, every
  command's ``--help`` and ``gate`` on a report start fast.

The checkers take the package's root folder, so they can be pointed at any tree of the package. They are
tested on small made-up graphs (``test_the_checker_sees_a_circle``, ``test_the_graph_sees_lazy_and_relative_imports``,
``test_the_layer_checker_sees_upward_imports_and_package_circles``), so a rule that passes here is one that can fail.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bckd_pipeline"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
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


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    mods = modules(root)
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
    assert "bckd_pipeline.deploy.replay" in graph["bckd_pipeline.deploy.stage"]
    assert "bckd_pipeline.ledger" in graph["bckd_pipeline.device.agent"]


# -- the layer table ------------------------------------------------------------------------------
Layers = list[tuple[str, list[str]]]  # (layer, its packages in import order), lowest layer first
ROOT = "bckd_pipeline"  # the package root's own __init__.py
SHARED = ("base", "shared")  # the layers of shared pieces
STAGES = "stages"


def layer_table(doc: Path = ARCHITECTURE) -> Layers:
    """The "Layers" table of docs/architecture.md: each row's layer name and the backticked packages."""
    text = doc.read_text(encoding="utf-8")
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    table = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.match(r"^\d+ ", cells[0]):
            continue
        table.append((cells[0].split(" ", 1)[1], re.findall(r"`([^`]+)`", cells[1])))
    return table


def top_level(module: str) -> str:
    """The top-level module or package a module belongs to (``bckd_pipeline`` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def ranks(table: Layers) -> dict[str, tuple[int, int, str]]:
    """package -> (layer index, position in its layer, layer name)."""
    return {p: (i, j, name) for i, (name, packages) in enumerate(table) for j, p in enumerate(packages)}


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for module, targets in graph.items():
        found.setdefault(top_level(module), set()).update(
            top_level(t) for t in targets if top_level(t) != top_level(module)
        )
    return found


def unlisted(graph: dict[str, set[str]], table: Layers) -> list[str]:
    listed = ranks(table)
    return sorted({top_level(m) for m in graph} - set(listed))


def upward_imports(graph: dict[str, set[str]], table: Layers) -> list[str]:
    """Every import of a package not below the importer: a higher layer, or later in the same layer."""
    rank, wrong = ranks(table), []
    for module, targets in sorted(graph.items()):
        a = top_level(module)
        for target in sorted(targets):
            b = top_level(target)
            if a == b or a not in rank or b not in rank:
                continue
            if rank[b][:2] >= rank[a][:2]:
                wrong.append(f"{module} imports {target} ({b}: layer {rank[b][2]} is not below {a}'s, {rank[a][2]})")
    return wrong


def imports_from_layers(graph: dict[str, set[str]], table: Layers, importers: set[str], banned: set[str]) -> list[str]:
    """Imports by packages of the layers ``importers`` of packages in the layers ``banned``."""
    rank = ranks(table)
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if rank.get(top_level(module), (0, 0, ""))[2] in importers
        for target in targets
        if top_level(target) != top_level(module) and rank.get(top_level(target), (0, 0, ""))[2] in banned
    )


def layers_from(table: Layers, name: str) -> set[str]:
    """The layer ``name`` and every layer above it."""
    names = [n for n, _ in table]
    return set(names[names.index(name) :])


def test_the_layer_checker_sees_upward_imports_and_package_circles():
    table = [("base", ["errors"]), ("shared", ["targets", "ledger"]), ("stages", ["export", "deploy"])]
    graph = {
        "bckd_pipeline.ledger": {"bckd_pipeline.targets", "bckd_pipeline.errors"},
        "bckd_pipeline.targets": {"bckd_pipeline.ledger"},
        "bckd_pipeline.export.stage": {"bckd_pipeline.deploy.runtime", "bckd_pipeline.export.wrapper"},
        "bckd_pipeline.export.wrapper": set(),
        "bckd_pipeline.deploy.runtime": set(),
        "bckd_pipeline.deploy.stage": {"bckd_pipeline.export.wrapper"},
        "bckd_pipeline.errors": set(),
        "bckd_pipeline.gate.gate": set(),
    }
    assert upward_imports(graph, table) == [
        "bckd_pipeline.export.stage imports bckd_pipeline.deploy.runtime (deploy: layer stages is not below "
        "export's, stages)",
        "bckd_pipeline.targets imports bckd_pipeline.ledger (ledger: layer shared is not below targets's, shared)",
    ]
    assert circles(package_graph(graph)) == [["deploy", "export"], ["ledger", "targets"]]
    assert unlisted(graph, table) == ["gate"]
    assert imports_from_layers(graph, table, {"shared"}, {"stages"}) == []


def test_the_layer_table_is_read_from_the_docs():
    table = layer_table()
    assert [name for name, _ in table][:2] == list(SHARED)
    assert STAGES in [name for name, _ in table]
    assert "context" in ranks(table) and "errors" in ranks(table)


def test_the_layer_table_names_each_package_once():
    names = [p for _, packages in layer_table() for p in packages]
    assert sorted(p for p in set(names) if names.count(p) > 1) == []


def test_every_package_has_a_layer():
    """A new top-level module or package needs its row in docs/architecture.md's layer table (a listed
    package that does not exist yet is no failure)."""
    assert unlisted(import_graph(), layer_table()) == []


def test_imports_go_down_the_layers():
    assert upward_imports(import_graph(), layer_table()) == []


def test_no_two_packages_import_each_other():
    packages = package_graph(import_graph())
    found = circles(packages)
    pairs = sorted(f"{a} <-> {b}" for a in packages for b in packages[a] if a < b and a in packages.get(b, ()))
    assert found == [], "package circles: " + "; ".join(" -> ".join(c) for c in found) + "; pairs: " + ", ".join(pairs)


def test_shared_pieces_import_no_stage():
    table = layer_table()
    above = layers_from(table, table[len(SHARED)][0])
    assert imports_from_layers(import_graph(), table, set(SHARED), above) == []


def test_the_context_imports_no_stage():
    table = layer_table()
    assert imports_from_layers(import_graph(), table, {"context"}, layers_from(table, STAGES)) == []


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
    "taps",
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
