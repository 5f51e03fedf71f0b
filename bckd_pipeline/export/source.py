"""What `bckd-pipeline deploy` is given, and what it needs to know about it.

- ``--model student.pt``: a student checkpoint of this pipeline; it carries everything.
- ``--model model.pt2`` (a ``torch.export`` program), ``--model model.ts`` (TorchScript), or
  ``--model-factory module:function --weights state_dict.pth`` (a plain ``nn.Module``): exported like a
  checkpoint's student; what a checkpoint would say comes from flags (``ModelHints``).
- ``--onnx model.onnx``: any segmentation ONNX with one NCHW float image input and per-class logits
  (N x C x H x W) or a label map (N x H x W) out. Nothing is exported: the file is taken as it is
  (export/stage.py::take_onnx_stage) and its FP32 graph is the ledger's reference row.

Normalisation, class count and input size come from the file's ``bckd.*`` metadata_props (what this
pipeline writes) or from flags; ``own_onnx.resolve_onnx`` / ``torch_meta`` name, in one error, every
flag that neither gives. This module: the source and its flags, PyTorch modules from files;
``own_onnx.py``: reading a user's ONNX.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from torch import nn

from ..errors import CheckpointError, ConfigError, DataError
from ..model_spec import ModelHints, ModelSource

def model_source(
    model: Path | None, onnx: Path | None, factory: str | None, weights: Path | None, hints: ModelHints
) -> ModelSource:
    """The ModelSource for deploy's flags; checks the files exist (a dry run checks this too)."""
    given = [f for f, v in (("--model", model), ("--onnx", onnx), ("--model-factory", factory)) if v is not None]
    if len(given) != 1:
        raise ConfigError(
            f"deploy takes one model; got {', '.join(given) if given else 'none'}. Pass --model FILE (a student.pt "
            "checkpoint, a .pt2 torch.export program or a TorchScript file), --onnx FILE, or --model-factory "
            "module:function --weights FILE."
        )
    if (factory is None) != (weights is None):
        raise ConfigError(
            "--model-factory and --weights go together: the function builds the module, the file fills it."
        )
    if factory is not None:
        if factory.count(":") != 1 or not all(factory.split(":")):
            raise ConfigError(f"--model-factory {factory!r} must be module:function, e.g. mypkg.models:build_unet.")
        return ModelSource("factory", _existing(weights, "--weights"), factory, hints)
    if onnx is not None:
        return ModelSource("onnx", _existing(onnx, "--onnx"), None, hints)
    path = _existing(model, "--model")
    if path.suffix == ".onnx":
        return ModelSource("onnx", path, None, hints)
    if path.suffix in (".xml", ".plan", ".engine"):
        raise ConfigError(
            f"--model {str(path)!r} is a compiled artifact; deploy starts from a model it can quantize and compile. "
            "Pass the ONNX it was made from (--onnx), or time it as it is with `bckd-pipeline bench`."
        )
    return ModelSource(_torch_kind(path), path, None, hints)


def _existing(path: Path, flag: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{flag} {str(path)!r} does not exist (or is not a file). Check the path.")
    return path


def _torch_kind(path: Path) -> str:
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

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

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
            model = ExportedModule(torch.export.load(str(path)).module())
        elif source.kind == "torchscript":
            model = torch.jit.load(str(path), map_location="cpu")
        else:
            model = _from_factory(source.factory, path)
    except (CheckpointError, ConfigError):
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        what = {"pt2": "a torch.export program (torch.export.save)", "torchscript": "TorchScript (torch.jit.save)"}
        raise CheckpointError(
            f"Could not load {str(path)!r} as {what.get(source.kind, 'a state_dict')}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}. Save it again with that API."
        ) from None
    return model.eval()


def _from_factory(factory: str, weights: Path):
    import importlib

    import torch

    module_name, fn_name = factory.split(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"--model-factory {factory!r}: {type(exc).__name__}: {exc}. The module must be importable from here "
            "(on PYTHONPATH or installed) and define the function."
        ) from None
    model = fn()
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"--model-factory {factory!r} returned {type(model).__name__}, not a torch.nn.Module.")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"--weights {str(weights)!r} holds {type(state).__name__}, not a state_dict.")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        shown = (result.missing_keys + result.unexpected_keys)[:3]
        raise CheckpointError(
            f"--weights {str(weights)!r} does not fit {factory}(): {len(result.missing_keys)} missing, "
            f"{len(result.unexpected_keys)} unexpected tensors (e.g. {shown}). "
            "Save the state_dict of the module this function builds."
        )
    return model


def torch_meta(source: ModelSource, model, input_hw: tuple[int, int], dataset_classes: tuple[str, ...]):
    """A CheckpointMeta for a plain module: normalisation from flags, classes from one forward pass."""
    import torch

    from ..configs import CheckpointMeta
    from ..inference import logits_of

    h = source.hints
    missing = []
    if h.mean is None or h.std is None:
        missing.append(
            "--mean R,G,B and --std R,G,B (the normalisation the module expects on 0..1 pixels, e.g. "
            "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225; --mean 0,0,0 --std 1,1,1 for 0..1 input)"
        )
    if h.input_scale is not None:
        raise ConfigError(
            "--input-scale applies to --onnx; a PyTorch module's export bakes --mean/--std into the graph, which "
            "takes 0..255 pixels (--no-bake-normalization for a graph that takes normalised input)."
        )
    if missing:
        raise ConfigError(f"{source.describe()} carries no preprocessing metadata; deploy needs {'; '.join(missing)}.")
    with torch.no_grad():
        out = logits_of(model(torch.zeros(1, 3, *input_hw)))
    if out.ndim != 4 or tuple(out.shape[-2:]) != tuple(input_hw):
        raise ConfigError(
            f"{source.describe()} returned shape {tuple(out.shape)} for a 1x3x{input_hw[0]}x{input_hw[1]} input; "
            f"deploy needs per-class logits N x C x {input_hw[0]} x {input_hw[1]} (upsample to the input size at "
            "the end of forward)."
        )
    classes = int(out.shape[1])
    _check_classes(classes, h, dataset_classes, source.describe())
    return CheckpointMeta(
        model=f"{source.kind}:{Path(source.path).name}" if source.kind != "factory" else source.factory,
        num_classes=classes,
        class_names=_class_names(classes, h.class_names, None, dataset_classes),
        mean=tuple(h.mean),
        std=tuple(h.std),
        input_hw=tuple(input_hw),
        extra={"source": source.kind},
    )


def _check_classes(classes: int, hints: ModelHints, dataset_classes: tuple[str, ...], what: str) -> None:
    if hints.classes is not None and hints.classes != classes:
        raise ConfigError(f"{what} predicts {classes} classes, but --num-classes/--class-names say {hints.classes}.")
    if len(dataset_classes) != classes:
        raise DataError(
            f"{what} predicts {classes} classes; the --data dataset has {len(dataset_classes)} "
            f"({', '.join(dataset_classes[:8])}{', ...' if len(dataset_classes) > 8 else ''}). The ledger's mIoU "
            "needs labels with the model's classes: evaluate on data labelled the way the model was trained."
        )


def _class_names(classes, given, from_file, dataset_classes) -> tuple[str, ...]:
    for names in (given, from_file):
        if names:
            return tuple(names)
    return tuple(dataset_classes) if len(dataset_classes) == classes else tuple(f"class{i}" for i in range(classes))
