"""A user's ONNX for `deploy --onnx`: read its input, output, opset and metadata, settle what it is fed.

``inspect_onnx`` refuses what deploy cannot feed (not one float NCHW input, opset older than 13);
``resolve_onnx`` takes the size, scale, statistics and classes from the ``bckd.*`` metadata or the
flags and names every one still missing; ``probe_onnx`` runs it once, and ``onnx_meta`` turns the
answer into the ``CheckpointMeta`` every stage reads (export/source.py has the other model kinds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ExportError
from ..model_spec import HEAD_OUTPUTS, INPUT_SCALES, ModelHints, ModelSource, OnnxInfo
from .source import _check_classes, _class_names

DETECTOR_OUTPUTS = HEAD_OUTPUTS["raw"]

# The oldest opset taken from a user's ONNX: per-channel Q/DQ (INT8 targets) needs opset 13.
MIN_ONNX_OPSET = 13
CONVERT_HINT = (
    'Convert it first: python -c "import onnx; from onnx import version_converter as v; '
    "onnx.save(v.convert_version(onnx.load('model.onnx'), 17), 'model17.onnx')\""
)

# The largest input deploy feeds: PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS), above which no image it
# reads can be; a larger declared size is refused before anything of that size is allocated.
MAX_INPUT_PIXELS = 89_478_485


def inspect_onnx(path: Path) -> OnnxInfo:
    """Read the ONNX's inputs, outputs, opset and metadata; refuse what deploy cannot feed."""
    from onnx import TensorProto

    from ..onnxfile import load_onnx

    model = load_onnx(path, load_weights=False)
    init = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    where = repr(str(path))
    if len(inputs) != 1:
        raise ExportError(
            f"{where} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); deploy feeds one NCHW image "
            "tensor. Export the model with the image as its only input."
        )
    inp = inputs[0]
    t = inp.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)
    if t.elem_type != TensorProto.FLOAT:
        raise ExportError(
            f"{where}: input {inp.name!r} is {TensorProto.DataType.Name(t.elem_type)}; deploy feeds float32 images. "
            "Export with a float32 input (cast inside the graph if the model wants another type)."
        )
    if len(shape) != 4 or shape[1] not in (3, None):
        raise ExportError(
            f"{where}: input {inp.name!r} has shape {_dims(shape)}; deploy feeds N x 3 x H x W (NCHW, RGB). "
            "Export with an NCHW input (a transpose at the start of the graph does it for NHWC models)."
        )
    if shape[0] not in (1, None):
        raise ExportError(
            f"{where}: input batch is {shape[0]}; deploy measures batch 1. Export with batch 1 or a dynamic batch."
        )
    outputs = {o.name: o for o in model.graph.output}
    # A detector's raw head (the contract of tasks/detection.py), by its output names or this pipeline's metadata.
    task = "detection" if set(DETECTOR_OUTPUTS) <= set(outputs) else "segmentation"
    out = outputs["scores"] if task == "detection" else model.graph.output[0]
    rank = len(out.type.tensor_type.shape.dim) if out.type.tensor_type.HasField("shape") else None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_ONNX_OPSET:
        raise ExportError(
            f"{where} is ONNX opset {opset}; deploy takes opset {MIN_ONNX_OPSET} or newer (per-channel INT8 "
            f"Q/DQ needs 13; 17 is what this pipeline exports). {CONVERT_HINT}"
        )
    meta = {p.key: p.value for p in model.metadata_props}
    return OnnxInfo(Path(path), inp.name, shape, out.name, rank, opset, meta, tuple(outputs), task)


def _dims(shape) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


@dataclass(frozen=True)
class OnnxContract:
    """What deploy settled about a user's ONNX: the size fed, the scale, the statistics, the classes."""

    input_hw: tuple[int, int]
    input_scale: str
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    num_classes: int | None  # None: learned from the first inference (logits with a dynamic class axis)
    class_names: tuple[str, ...] | None


def resolve_onnx(info: OnnxInfo, hints: ModelHints, input_hw: tuple[int, int] | None) -> OnnxContract:
    """Metadata first (this pipeline's bckd.* keys), then flags; one error lists every flag still missing."""
    md = info.metadata
    pre = _json(md.get("bckd.preprocessing")) or {}
    inp = _json(md.get("bckd.input")) or {}
    # This pipeline's bckd.class_names, else a plain "classes" entry (a JSON list, or names comma-separated).
    names = _json(md.get("bckd.class_names")) or _names_entry(md.get("classes"))
    missing = []
    h, w = info.input_shape[2], info.input_shape[3]
    if h is not None and w is not None:
        if input_hw is not None and tuple(input_hw) != (h, w):
            raise ConfigError(
                f"--input-size {input_hw[0]},{input_hw[1]} was given, but {str(info.path)!r} has the static input "
                f"size {h}x{w}. Drop --input-size (or export the model with dynamic height and width)."
            )
        hw = (h, w)
    else:
        hw = tuple(input_hw) if input_hw else tuple(pre["resize_to"]) if pre.get("resize_to") else None
        if hw is None:
            missing.append(f"--input-size H,W (the input {info.input_name!r} is {_dims(info.input_shape)}: dynamic)")
    if hw is not None and hw[0] * hw[1] > MAX_INPUT_PIXELS:
        raise ConfigError(
            f"{str(info.path)!r} takes a {hw[0]}x{hw[1]} input ({hw[0] * hw[1]:,} pixels per image); deploy feeds at "
            f"most {MAX_INPUT_PIXELS:,} pixels (PIL's image limit). Export the model for the size of your images, or "
            "with dynamic height and width and --input-size H,W."
        )
    scale = hints.input_scale or inp.get("scale")
    if scale is None:
        missing.append(
            "--input-scale 0..255|normalized (0..255: the graph takes raw pixels and normalises itself; normalized: "
            "it takes (x/255 - mean) / std, which also needs --mean and --std)"
        )
    mean = hints.mean or (tuple(pre["mean"]) if pre.get("mean") else None)
    std = hints.std or (tuple(pre["std"]) if pre.get("std") else None)
    if scale == "normalized" and (mean is None or std is None):
        missing.append(
            "--mean R,G,B and --std R,G,B (the statistics on 0..1 pixels; --mean 0,0,0 --std 1,1,1 for 0..1)"
        )
    if scale is not None and scale not in INPUT_SCALES:
        raise ConfigError(
            f"{str(info.path)!r} metadata says input scale {scale!r}; pass --input-scale 0..255|normalized."
        )
    classes = hints.classes or (len(names) if names else None)
    if info.task == "segmentation" and info.output_rank == 3 and classes is None:
        missing.append("--num-classes N (or --class-names a,b,...): the output is a label map, which does not say")
    if missing:
        raise ConfigError(
            f"{str(info.path)!r} does not say everything deploy needs (no bckd.* metadata for it); pass "
            + "; ".join(missing)
            + "."
        )
    return OnnxContract(hw, scale, mean, std, classes, hints.class_names or (tuple(names) if names else None))


def onnx_meta(source: ModelSource, info: OnnxInfo, contract: OnnxContract, probe, dataset_classes: tuple[str, ...]):
    """A CheckpointMeta for the user's ONNX, from the contract and one inference (``probe``: the output array)."""
    import numpy as np

    from ..configs import CheckpointMeta

    hw = contract.input_hw
    if info.task == "detection":
        return _detector_meta(source, info, contract, probe, dataset_classes), "raw"
    if probe.ndim == 4 and np.issubdtype(probe.dtype, np.floating):
        kind, classes = "logits", int(probe.shape[1])
        if contract.num_classes is not None and contract.num_classes != classes:
            raise ConfigError(
                f"{str(info.path)!r} outputs {classes} class logits, but the classes given number "
                f"{contract.num_classes} (--num-classes/--class-names or its metadata). Make them agree."
            )
    elif probe.ndim == 3 and np.issubdtype(probe.dtype, np.integer):
        kind, classes = "argmax", contract.num_classes
    else:
        raise ExportError(
            f"{str(info.path)!r} output {info.output_name!r} is {probe.dtype} of shape {probe.shape}; deploy reads "
            "per-class logits (float N x C x H x W) or a label map (integer N x H x W)."
        )
    if tuple(probe.shape[-2:]) != tuple(hw):
        raise ExportError(
            f"{str(info.path)!r} outputs {probe.shape[-2]}x{probe.shape[-1]} for a {hw[0]}x{hw[1]} input; the ledger "
            "compares label maps pixel by pixel at the input size. Upsample to the input size at the end of the graph."
        )
    _check_classes(classes, source.hints, dataset_classes, repr(str(info.path)))
    norm_known = contract.mean is not None and contract.std is not None
    meta = CheckpointMeta(
        model=f"onnx:{info.path.name}",
        num_classes=classes,
        class_names=_class_names(classes, contract.class_names, None, dataset_classes),
        mean=contract.mean if norm_known else (0.0, 0.0, 0.0),
        std=contract.std if norm_known else (1.0, 1.0, 1.0),
        input_hw=hw,
        extra={
            "source": "onnx",
            "input_scale": contract.input_scale,
            "normalization_known": norm_known,
            "output_kind": kind,
        },
    )
    return meta, kind


def _detector_meta(source: ModelSource, info: OnnxInfo, contract: OnnxContract, probe, dataset_classes):
    """A detector's raw head: its class count is the last axis of ``scores`` (float N x A x C)."""
    import numpy as np

    from ..configs import CheckpointMeta

    if probe.ndim != 3 or not np.issubdtype(probe.dtype, np.floating):
        raise ExportError(
            f"{str(info.path)!r} output 'scores' is {probe.dtype} of shape {probe.shape}; a detector's raw head gives "
            "float class logits N x A x C (with boxes N x A x 4 and centerness N x A x 1)."
        )
    classes = int(probe.shape[-1])
    if contract.num_classes is not None and contract.num_classes != classes:
        raise ConfigError(
            f"{str(info.path)!r} scores {classes} classes, but the classes given number {contract.num_classes} "
            "(--num-classes/--class-names or its metadata). Make them agree."
        )
    _check_classes(classes, source.hints, dataset_classes, repr(str(info.path)))
    norm_known = contract.mean is not None and contract.std is not None
    return CheckpointMeta(
        model=f"onnx:{info.path.name}",
        num_classes=classes,
        class_names=_class_names(classes, contract.class_names, None, dataset_classes),
        ignore_index=-1,
        mean=contract.mean if norm_known else (0.0, 0.0, 0.0),
        std=contract.std if norm_known else (1.0, 1.0, 1.0),
        input_hw=contract.input_hw,
        extra={
            "source": "onnx",
            "input_scale": contract.input_scale,
            "normalization_known": norm_known,
            "output_kind": "raw",
        },
        task="detection",
    )


def probe_onnx(info: OnnxInfo, input_hw: tuple[int, int]):
    """The first output of one ONNX Runtime inference on a zero image: what the graph really returns."""
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError:
        from ..errors import BackendMissingError

        raise BackendMissingError("onnxruntime is not installed: pip install onnxruntime.") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    x = np.zeros((1, 3, *input_hw), np.float32)
    try:
        session = ort.InferenceSession(str(info.path), options, providers=["CPUExecutionProvider"])
        return session.run([info.output_name], {info.input_name: x})[0]
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise ExportError(
            f"ONNX Runtime could not run {str(info.path)!r} on a 1x3x{input_hw[0]}x{input_hw[1]} input: "
            f"{str(exc).strip().splitlines()[0][:300]}. Check the model with onnx.checker, and --input-size."
        ) from None


def _names_entry(text: str | None) -> list[str] | None:
    """A ``classes`` metadata entry: a JSON list of names, or names separated by commas."""
    if not text:
        return None
    listed = _json(text) if text.lstrip().startswith("[") else None
    names = listed if isinstance(listed, list) else [n.strip() for n in text.split(",")]
    return [str(n) for n in names if str(n)] or None


def _json(text: str | None):
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
