"""PyTorch modules from files: a torch.export program (.pt2), a TorchScript archive, or a factory function
with a state_dict. ``deploy --model``/``--model-factory`` (export/source.py) and ``distill --teacher``/
``--teacher-factory``/``--student-factory`` (distill/any_model.py) load them here, with the same checks.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from torch import nn

from .errors import CheckpointError, ConfigError
from .model_spec import ModelSource


def torch_kind(path: Path) -> str:
    """pt2 for a .pt2 file, torchscript for a TorchScript archive, else a checkpoint of ours."""
    if path.suffix == ".pt2":
        return "pt2"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.split("/", 1)[-1].startswith("code/") for n in names):
            return "torchscript"
    return "checkpoint"


# --- a PyTorch module from a file --------------------------------------------------------------
class ExportedModule(nn.Module):
    """A torch.export program's module. Its train/eval behaviour was fixed when it was exported and its own
    ``eval()`` raises; here ``eval()`` (which the export wrapper and the runtimes call) only sets the flag."""

    def __init__(self, program: nn.Module, input_ranges: tuple[tuple[int, int | None], ...] | None = None) -> None:
        super().__init__()
        self.program = program
        self.input_ranges = input_ranges  # what each input dimension takes (program_input_ranges)

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self

    def forward(self, x):
        return self.program(x)


def load_torch_module(source: ModelSource):
    """The nn.Module of a .pt2 program, a TorchScript file, or a factory with its state_dict, in eval mode."""
    import torch

    path = source.path
    try:
        if source.kind == "pt2":
            program = torch.export.load(str(path))
            model = ExportedModule(program.module(), program_input_ranges(program))
        elif source.kind == "torchscript":
            model = torch.jit.load(str(path), map_location="cpu")
        else:
            model = module_from_factory(source.factory, path)
    except (CheckpointError, ConfigError):
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        what = {"pt2": "a torch.export program (torch.export.save)", "torchscript": "TorchScript (torch.jit.save)"}
        raise CheckpointError(
            f"Could not load {str(path)!r} as {what.get(source.kind, 'a state_dict')}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}. Save it again with that API."
        ) from None
    return model.eval()


def program_input_ranges(program) -> tuple[tuple[int, int | None], ...] | None:
    """The sizes each dimension of a torch.export program's image input takes, as ``(low, high)``: ``(n, n)`` for
    a size fixed when it was exported (the example input's, in the placeholder's ``meta["val"]``), the bounds of
    ``range_constraints`` for a dynamic one (``high`` None: unbounded). None when the program does not say."""
    import torch

    user = set(program.graph_signature.user_inputs)
    node = next((n for n in program.graph.nodes if n.op == "placeholder" and n.name in user), None)
    shape = getattr(node.meta.get("val") if node is not None else None, "shape", None)
    if shape is None:
        return None
    ranges = []
    for d in shape:
        if isinstance(d, torch.SymInt):
            r = program.range_constraints.get(d.node.expr)
            ranges.append((_bound(r.lower) or 0, _bound(r.upper)) if r is not None else (0, None))
        else:
            ranges.append((int(d), int(d)))
    return tuple(ranges)


def _bound(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # sympy's infinity: no bound
        return None


def module_from_factory(
    factory: str, weights: Path | None, *, flag: str = "--model-factory", weights_flag: str = "--weights"
) -> nn.Module:
    """``module:function()`` called with no arguments, filled from the state_dict in ``weights`` (loaded with
    ``weights_only=True``: tensors only, no code). ``weights`` None: the module as the function builds it."""
    import importlib

    import torch

    if factory.count(":") != 1 or not all(factory.split(":")):
        raise ConfigError(f"{flag} {factory!r} must be module:function, e.g. mypkg.models:build_unet.")
    module_name, fn_name = factory.split(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"{flag} {factory!r}: {type(exc).__name__}: {exc}. The module must be importable from here "
            "(on PYTHONPATH or installed) and define the function."
        ) from None
    try:
        model = fn()
    except Exception as exc:  # noqa: BLE001 - the user's code: whatever it raises, the user fixes it
        raise ConfigError(f"{flag} {factory!r}: calling {fn_name}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"{flag} {factory!r} returned {type(model).__name__}, not a torch.nn.Module.")
    if weights is None:
        return model
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a missing, truncated or code-carrying file means the same to the user
        raise CheckpointError(
            f"{weights_flag} {str(weights)!r} could not be read as a state_dict ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Save it with torch.save(model.state_dict(), path)."
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{weights_flag} {str(weights)!r} holds {type(state).__name__}, not a state_dict.")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape: another architecture or class count
        raise CheckpointError(
            f"{weights_flag} {str(weights)!r} does not fit {factory}(): {str(exc)[:300]}. Save the state_dict of "
            "the module this function builds."
        ) from None
    if result.missing_keys or result.unexpected_keys:
        shown = (result.missing_keys + result.unexpected_keys)[:3]
        raise CheckpointError(
            f"{weights_flag} {str(weights)!r} does not fit {factory}(): {len(result.missing_keys)} missing, "
            f"{len(result.unexpected_keys)} unexpected tensors (e.g. {shown}). "
            "Save the state_dict of the module this function builds."
        )
    return model
