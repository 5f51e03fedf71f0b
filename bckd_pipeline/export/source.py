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

from pathlib import Path

from ..errors import CheckpointError, ConfigError, DataError
from ..model_files import ExportedModule, load_torch_module, program_input_ranges, torch_kind
from ..model_spec import ModelHints, ModelSource, default_class_names

__all__ = ["ExportedModule", "load_torch_module", "model_source", "program_input_ranges", "torch_meta"]


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
    return ModelSource(torch_kind(path), path, None, hints)


def _existing(path: Path, flag: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{flag} {str(path)!r} does not exist (or is not a file). Check the path.")
    return path


def check_input_size(source: ModelSource, model, shape: tuple[int, int, int, int], *, given_hw: bool) -> None:
    """Refuse an input ``shape`` (N, 3, H, W) that the model's program does not take, naming the size it takes."""
    ranges = getattr(model, "input_ranges", None)
    if not ranges or len(ranges) != 4:
        return
    fits = [lo <= n and (hi is None or n <= hi) for (lo, hi), n in zip(ranges, shape, strict=True)]
    if all(fits):
        return
    takes = "x".join(str(lo) if lo == hi else f"[{lo}..{'' if hi is None else hi}]" for lo, hi in ranges)
    (nlo, nhi), (hlo, hhi), (wlo, whi) = ranges[0], ranges[2], ranges[3]
    fixes = []
    if not (fits[2] and fits[3]):
        fixes.append(f"--input-size {hlo},{wlo}" if (hlo, wlo) == (hhi, whi) else "--input-size H,W in that range")
    if not fits[0]:
        fixes.append(f"--batch {nlo}" if nlo == nhi else "a --batch in that range")
    fed = "--input-size" if given_hw else "the --data images' size, as no --input-size was given"
    raise ConfigError(
        f"{source.describe()} takes {takes} (N x 3 x H x W, as it was exported); deploy would feed "
        f"{'x'.join(map(str, shape))} ({fed}). Pass {' and '.join(fixes)}, or export the program with "
        "dynamic_shapes for the sizes you deploy."
    )


def torch_meta(
    source: ModelSource,
    model,
    input_hw: tuple[int, int],
    dataset_classes: tuple[str, ...],
    *,
    batch: int = 1,
    given_hw: bool = False,
):
    """A CheckpointMeta for a plain module: normalisation from flags, classes from one forward pass on a zero image
    of the size deploy feeds (a size the model does not take is refused first, with the size it wants)."""
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
    check_input_size(source, model, (batch, 3, *input_hw), given_hw=given_hw)
    try:
        with torch.no_grad():
            out = logits_of(model(torch.zeros(1, 3, *input_hw)))
    except Exception as exc:  # noqa: BLE001 - a module fails on a size it does not take with any exception type
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]  # TorchScript's cause comes last
        raise ConfigError(
            f"{source.describe()} failed on a 1x3x{input_hw[0]}x{input_hw[1]} zero image ({type(exc).__name__}: "
            f"{lines[-1][:200] if lines else ''}). If it takes another input size, pass --input-size H,W; run it "
            "on that input in Python to see."
        ) from None
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
    if dataset_classes is not None and len(dataset_classes) != classes:
        raise DataError(
            f"{what} predicts {classes} classes; the --data dataset has {len(dataset_classes)} "
            f"({', '.join(dataset_classes[:8])}{', ...' if len(dataset_classes) > 8 else ''}). The ledger's mIoU "
            "needs labels with the model's classes: evaluate on data labelled the way the model was trained."
        )


def _class_names(classes, given, from_file, dataset_classes) -> tuple[str, ...]:
    """The names given (--classes, --classes-file), else the model's metadata, else the labelled dataset's; else
    ``class_0..N-1``, with a warning on stderr (the report, ledger and predict then name classes by number)."""
    for names in (given, from_file):
        if names:
            return tuple(names)
    if dataset_classes is not None and len(dataset_classes) == classes:
        return tuple(dataset_classes)
    return default_class_names(classes)
