"""Loading a script of benchmarks/ or scripts/ as a module, to test its functions in process."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent.parent


def load_script(name: str, folder: str = "benchmarks") -> ModuleType:
    """``ROOT/folder/name.py`` as a module named ``name`` (each benchmarks script puts its own folder on sys.path
    for ``common``)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
