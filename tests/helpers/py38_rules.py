"""A rule-based check that a file runs on Python 3.8: its grammar (``ast.parse(..., feature_version=(3, 8))``)
and, since grammar alone misses them, the 3.9+/3.10+ calls and run-time constructs the device agent could
reach (vermin-style rules: ``zip(strict=)``, builtin or collections.abc generics subscripted at run time,
``X | Y`` of types and ``dict | dict`` at run time, ``functools.cache``, ``str.removeprefix``...). Annotations
are skipped in modules with ``from __future__ import annotations`` (never evaluated there).

Used by tests/test_tensorrt.py on every file of ``device/bundle.py::AGENT_MODULES``: JetPack 5 ships
Python 3.8, and this host has no 3.8 interpreter to run them with.
"""

from __future__ import annotations

import ast
from pathlib import Path

GENERIC_BUILTINS = {"tuple", "list", "dict", "set", "frozenset", "type"}
ABC_NAMES = {
    "Callable", "Mapping", "MutableMapping", "Sequence", "MutableSequence", "Iterable", "Iterator",
    "Generator", "Collection", "Container", "Set", "AbstractSet", "Awaitable", "Coroutine",
}  # fmt: skip
NEW_ATTRS = {
    "removeprefix": "3.9",
    "removesuffix": "3.9",
    "is_relative_to": "3.9",
    "with_stem": "3.9",
    "bit_count": "3.10",
    "pairwise": "3.10",
    "to_thread": "3.9",
    "lcm": "3.9",
    "readlink": "3.9",
    "randbytes": "3.9",
    "UTC": "3.11",
    "StrEnum": "3.11",
    "batched": "3.12",
}
NEW_IMPORTS = {
    ("functools", "cache"): "3.9",
    ("typing", "TypeAlias"): "3.10",
    ("typing", "ParamSpec"): "3.10",
    ("typing", "Self"): "3.11",
    ("enum", "StrEnum"): "3.11",
    ("itertools", "pairwise"): "3.10",
    ("typing", "Annotated"): "3.9",
}
NEW_MODULES = {"zoneinfo": "3.9", "graphlib": "3.9", "tomllib": "3.11"}
NEW_KWARGS = {("zip", "strict"): "3.10", ("dataclass", "slots"): "3.10", ("dataclass", "kw_only"): "3.10"}


def problems(path, src=None):
    """Every 3.9+ construct in the file at ``path`` (or in ``src``), one line each."""
    src = Path(path).read_text() if src is None else src
    out = []
    try:
        tree = ast.parse(src, feature_version=(3, 8))
    except SyntaxError as e:
        return [f"{path}:{e.lineno}: not Python 3.8 syntax: {e.msg}"]
    future = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    skip = set()
    if future:
        for n in ast.walk(tree):
            anns = []
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                anns.append(n.returns)
                a = n.args
                for arg in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]:
                    if arg is not None:
                        anns.append(arg.annotation)
            elif isinstance(n, ast.AnnAssign):
                anns.append(n.annotation)
            for ann in anns:
                if ann is not None:
                    skip.update(id(x) for x in ast.walk(ann))
    from_abc = {
        a.asname or a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module == "collections.abc"
        for a in n.names
    }
    for n in ast.walk(tree):
        if id(n) in skip:
            continue
        where = f"{path}:{getattr(n, 'lineno', '?')}"
        if isinstance(n, ast.Subscript):
            base = n.value
            name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
            abc = (isinstance(base, ast.Name) and base.id in from_abc) or (
                isinstance(base, ast.Attribute)
                and base.attr in ABC_NAMES
                and isinstance(base.value, ast.Attribute)
                and base.value.attr == "abc"
            )
            if (isinstance(base, ast.Name) and name in GENERIC_BUILTINS) or abc:
                out.append(f"{where}: {name}[...] at run time needs Python 3.9")
        elif isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr):
            if any(
                isinstance(x, (ast.Dict, ast.DictComp))
                or (isinstance(x, ast.Call) and isinstance(x.func, ast.Name) and x.func.id == "dict")
                for x in (n.left, n.right)
            ):
                out.append(f"{where}: dict | dict needs Python 3.9")
                continue
            for side in (n.left, n.right):
                if (
                    (isinstance(side, ast.Constant) and side.value is None)
                    or (
                        isinstance(side, ast.Name)
                        and side.id in GENERIC_BUILTINS | {"int", "str", "float", "bool", "bytes", "Path"}
                    )
                    or isinstance(side, ast.Subscript)
                ):
                    out.append(f"{where}: X | Y of types at run time needs Python 3.10")
                    break
        elif isinstance(n, ast.Call):
            fn = (
                n.func.id
                if isinstance(n.func, ast.Name)
                else n.func.attr
                if isinstance(n.func, ast.Attribute)
                else None
            )
            for kw in n.keywords:
                if (fn, kw.arg) in NEW_KWARGS:
                    out.append(f"{where}: {fn}({kw.arg}=...) needs Python {NEW_KWARGS[(fn, kw.arg)]}")
        elif isinstance(n, ast.Attribute) and n.attr in NEW_ATTRS:
            out.append(f"{where}: .{n.attr} needs Python {NEW_ATTRS[n.attr]}")
        elif isinstance(n, ast.ImportFrom):
            for a in n.names:
                if (n.module, a.name) in NEW_IMPORTS:
                    out.append(
                        f"{where}: from {n.module} import {a.name} needs Python {NEW_IMPORTS[(n.module, a.name)]}"
                    )
            if n.module in NEW_MODULES:
                out.append(f"{where}: module {n.module} needs Python {NEW_MODULES[n.module]}")
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name in NEW_MODULES:
                    out.append(f"{where}: module {a.name} needs Python {NEW_MODULES[a.name]}")
    return out
