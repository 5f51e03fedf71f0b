"""A TensorRT-ready INT8 ONNX: explicit quantize/dequantize (Q/DQ) nodes, calibrated on the host.

TensorRT 10 deprecated, and TensorRT 11 removed, implicit INT8 calibration: INT8 comes from Q/DQ
nodes in the ONNX (TensorRT's "explicit quantization"). What TensorRT needs from them, and what
:func:`check_tensorrt_qdq` verifies on every file this module writes:

- int8 Q/DQ with zero point 0 everywhere (symmetric; TensorRT rejects other zero points);
- per-channel weights (a vector of scales along the output-channel axis) for Conv / ConvTranspose;
- Q/DQ on both the data input and the weights of a weighted layer, or on neither: a layer without Q/DQ
  is one TensorRT runs in float (explicit quantization: "you must explicitly select reduced precision
  for each layer that should use it" by inserting Q/DQ, TensorRT-RTX "Working with Quantized Types",
  as TensorRT's "Explicit Quantization" section), which is what ``--int8-exclude`` and NNCF's
  squeeze-excite convolutions ask for; a half-quantized one is an error;
- Q/DQ on *at least the residual input* of a residual ``Add`` (below);
- float biases (an int32 bias DequantizeLinear, which ONNX Runtime writes by default, does not parse).

**Residual Adds.** TensorRT's developer guide (Q/DQ layer-placement recommendations: "quantize the
residual input in element-wise addition") fuses an Add that follows a convolution into that
convolution, as its residual input, when the *convolution side* carries no Q/DQ and the other
(residual, skip) input does; a Q/DQ pair on the convolution side separates the two and costs a
kernel and an INT8 round trip (the guide's figure of a suboptimal fusion). NVIDIA Model Optimizer
places them the same way: ``modelopt/onnx/quantization/graph_utils.py::build_non_residual_input_map``
(a Conv "backbone" behind one input, or behind both with the longer path to their lowest common
ancestor) and ``remove_partial_input_qdq`` (the Q/DQ pair on that input is removed after
quantization). :func:`place_residual_qdq` does that to ONNX Runtime's output; the check accepts
either placement (Q/DQ on the residual input alone, or on both).

Two quantizers make it, both calibrated on the calibration images (never random data):

- ``modelopt``: NVIDIA Model Optimizer (``modelopt.onnx.quantization.quantize``, runs on the CPU).
  It pins its own onnxruntime-gpu and an older onnx, so it is the optional extra
  ``bckd-pipeline[modelopt]``, best installed in its own environment.
- ``onnxruntime``: ONNX Runtime's static QDQ quantizer with symmetric activations and weights,
  per-channel weights, float biases and Q/DQ restricted to the layers TensorRT runs in INT8, then
  the residual placement above. The default.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendMissingError, ConfigError, StageCheckError
from ..fileio import atomic_write
from ..targets.profiles import CalibrationSpec
from ..data.feeds import DatasetFeeds
from .onnxruntime import quantize_qdq

QUANTIZERS = ("onnxruntime", "modelopt")
# The layers TensorRT runs in INT8 when their inputs carry Q/DQ; activations elsewhere stay float.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1}
# Bumped when the Q/DQ placement changes, so that a cached Q/DQ ONNX of the old placement is remade.
QDQ_PLACEMENT = "residual-input-only-v1"
# Layers TensorRT fuses between a convolution and the Add that follows it (the "backbone" walk).
FUSIBLE_AFTER_CONV = ("BatchNormalization",)


def quantize_for_tensorrt(
    source: Path,
    path: Path,
    feeds: DatasetFeeds,
    spec: CalibrationSpec,
    *,
    quantizer: str = "onnxruntime",
    float_tail: bool = False,
) -> tuple[Path, dict]:
    """FP32 ONNX -> Q/DQ ONNX for TensorRT, calibrated on ``feeds``; checked before it is kept.

    ``float_tail``: the nodes after each output branch's last convolution stay in float, as for ONNX Runtime
    (``Task.int8_float_tail``: a detector's box decoding, and the NMS of the ``nms`` head; calibrate/exclude.py
    ``onnx_output_tail``)."""
    if quantizer not in QUANTIZERS:
        raise ConfigError(f"--trt-quantizer {quantizer!r} is not allowed. Allowed: {', '.join(QUANTIZERS)}.")
    write = _modelopt_writer if quantizer == "modelopt" else _ort_writer
    settings = {
        "quantizer": quantizer,
        "format": "QDQ (explicit quantization)",
        "activation_type": "QInt8 symmetric (zero point 0)",
        "weight_type": "QInt8 symmetric, per channel",
        "calibration_method": spec.method,
        "calibration_images": len(feeds),
        "quantized_ops": list(QUANTIZED_OPS),
        "residual_add_placement": "Q/DQ on the residual input only; the convolution side fuses (TensorRT guide)",
        "placement_version": QDQ_PLACEMENT,
    }
    if spec.exclude:
        from .exclude import resolve

        settings["int8_exclude"] = resolve(Path(source), spec.exclude).as_dict()

    def write_checked(tmp: Path) -> None:
        if float_tail:
            from .exclude import named_for_quantizer, onnx_output_tail

            with named_for_quantizer(Path(source), tmp) as named:
                settings["float_output_tail"] = write(named, tmp, feeds, spec, onnx_output_tail(named))
        else:
            write(Path(source), tmp, feeds, spec, [])
        settings["residual_adds_fused"] = place_residual_qdq(tmp)
        problems = check_tensorrt_qdq(tmp)
        if problems:
            raise StageCheckError(
                f"The Q/DQ ONNX from {quantizer} is not TensorRT-ready: "
                + "; ".join(problems[:5])
                + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
            )

    atomic_write(path, write_checked)
    return Path(path), settings


def _ort_writer(source: Path, tmp: Path, feeds: DatasetFeeds, spec: CalibrationSpec, tail: list) -> list[str]:
    """ORT's quantizer with TensorRT's placement; returns the ``tail`` nodes left in float."""
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        # One Q/DQ pair per consumer: TensorRT fuses each pair into the layer that reads it.
        "DedicatedQDQPair": True,
    }
    return quantize_qdq(
        source, tmp, feeds, spec, activation_type="QInt8", op_types=list(QUANTIZED_OPS), extra=extra, keep_float=tail
    )


def _modelopt_writer(source: Path, tmp: Path, feeds: DatasetFeeds, spec: CalibrationSpec, tail: list) -> list[str]:
    """Model Optimizer's quantizer on ``source`` itself; returns the ``tail`` nodes left in float (all of them)."""
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError:
        raise BackendMissingError(
            '--trt-quantizer modelopt needs NVIDIA Model Optimizer: pip install "bckd-pipeline[modelopt]" '
            "(it pins onnxruntime-gpu and an older onnx; use a separate environment), or use the default "
            "--trt-quantizer onnxruntime."
        ) from None
    if spec.method not in ("minmax", "entropy"):
        raise ConfigError(
            f"--calib-method {spec.method} is not offered by Model Optimizer; use minmax or entropy with "
            "--trt-quantizer modelopt."
        )
    batches = list(feeds)
    name = next(iter(batches[0]))  # the ONNX's input: "image" for an export of ours, a user's own name
    images = np.concatenate([f[name] for f in batches], axis=0)
    from .exclude import resolve

    ex = resolve(source, spec.exclude) if spec.exclude else None
    quantize(
        str(source),
        quantize_mode="int8",
        calibration_data={name: images},
        calibration_method="max" if spec.method == "minmax" else "entropy",
        nodes_to_exclude=[*(ex.nodes if ex else ()), *tail] or None,
        op_types_to_exclude=list(ex.op_types) if ex else None,
        calibration_eps=["cpu"],
        output_path=str(tmp),
    )
    return list(tail)


# ---------------------------------------------------------------------------------------------
# residual Adds
# ---------------------------------------------------------------------------------------------
def _through_qdq(name: str, producer: dict) -> str:
    """The tensor behind a DequantizeLinear <- QuantizeLinear pair (or ``name`` itself)."""
    node = producer.get(name)
    if node is not None and node.op_type == "DequantizeLinear":
        q = producer.get(node.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            return q.input[0]
    return name


def _conv_backbone(name: str, producer: dict):
    """The Conv/ConvTranspose that produces ``name`` (through Q/DQ and fusible BatchNormalization), or None."""
    name = _through_qdq(name, producer)
    node = producer.get(name)
    while node is not None and node.op_type in FUSIBLE_AFTER_CONV:
        name = _through_qdq(node.input[0], producer)
        node = producer.get(name)
    return node if node is not None and node.op_type in WEIGHT_AXIS else None


def _depths(name: str, producer: dict) -> dict:
    """Every ancestor node of tensor ``name`` (by id) with its shortest distance (in nodes, Q/DQ not counted)."""
    out, frontier, depth = {}, [name], 0
    while frontier:
        nxt = []
        for t in frontier:
            node = producer.get(_through_qdq(t, producer))
            if node is None or id(node) in out:
                continue
            out[id(node)] = depth
            nxt.extend(node.input)
        frontier, depth = nxt, depth + 1
    return out


def residual_adds(graph) -> list:
    """``(add, conv_side_input, residual_input)`` for every residual Add, by Model Optimizer's rule.

    An Add of two activations is residual when a convolution produces one input and not the other
    (unless that convolution is where both branches meet), or when convolutions produce both: then
    the input on the longer path from the branches' lowest common ancestor is the convolution side
    (modelopt/onnx/quantization/graph_utils.py::build_non_residual_input_map).
    """
    inits = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    found = []
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        a, b = node.input
        if (
            a in inits
            or b in inits
            or _through_qdq(a, producer) not in producer
            or _through_qdq(b, producer) not in producer
        ):
            continue  # a bias or a graph input: not a residual connection
        conv_a, conv_b = _conv_backbone(a, producer), _conv_backbone(b, producer)
        if conv_a is None and conv_b is None:
            continue
        da, db = _depths(a, producer), _depths(b, producer)
        common = [n for n in da if n in db]
        lca = min(common, key=lambda n: da[n] + db[n]) if common else None
        if conv_a is not None and conv_b is not None:
            if conv_a is conv_b or lca is None:
                continue
            conv_side = a if da[lca] > db[lca] else b
        else:
            conv = conv_a or conv_b
            if lca == id(conv):
                continue  # the convolution feeds both branches (ConvNeXt-style): not a residual Add
            conv_side = a if conv_a is not None else b
        found.append((node, conv_side, b if conv_side == a else a))
    return found


def place_residual_qdq(path: Path) -> int:
    """Remove the Q/DQ pair on the convolution side of every residual Add (kept on the residual input).

    Rewrites ``path`` in place; returns how many Adds were changed. The pair is removed only where it
    feeds that Add alone (ONNX Runtime's ``DedicatedQDQPair``), so no other consumer loses its Q/DQ.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop, changed = set(), 0
    for add, conv_side, _residual in residual_adds(graph):
        dq = producer.get(conv_side)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        if len(consumers.get(dq.output[0], [])) != 1 or len(consumers.get(q.output[0], [])) != 1:
            continue
        for i, name in enumerate(add.input):
            if name == conv_side:
                add.input[i] = q.input[0]
        drop.update((id(q), id(dq)))
        changed += 1
    if changed:
        kept = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(kept)
        onnx.save(model, str(path))
    return changed


# ---------------------------------------------------------------------------------------------
# the TensorRT-readiness check


# ---------------------------------------------------------------------------------------------
def check_tensorrt_qdq(path: Path) -> list[str]:
    """Every reason TensorRT would reject or mis-quantize this Q/DQ ONNX; empty when it is ready."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    problems: list[str] = []

    def is_dq(name: str) -> bool:
        return name in producer and producer[name].op_type == "DequantizeLinear"

    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        return ["the graph has no QuantizeLinear/DequantizeLinear nodes (not an explicitly quantized ONNX)"]
    for n in qdq:
        if len(n.input) < 3 or n.input[2] not in inits:
            # No zero point means 0 in uint8 by the ONNX spec: TensorRT needs int8.
            problems.append(f"{n.op_type} {n.name!r} has no int8 zero point")
            continue
        zp = numpy_helper.to_array(inits[n.input[2]])
        if zp.dtype != np.int8:
            problems.append(f"{n.op_type} {n.name!r} has a {zp.dtype} zero point (TensorRT needs int8)")
        elif np.any(zp != 0):
            problems.append(f"{n.op_type} {n.name!r} has a non-zero zero point (TensorRT needs symmetric, 0)")
    for n in graph.node:
        if n.op_type in WEIGHT_AXIS:
            if not is_dq(n.input[0]) and not is_dq(n.input[1]):
                continue  # a layer left in float on purpose (--int8-exclude, NNCF's squeeze-excite convs)
            if not is_dq(n.input[0]):
                problems.append(f"{n.op_type} {n.name!r}: its weights are quantized and its data input has no Q/DQ")
            if not is_dq(n.input[1]):
                problems.append(
                    f"{n.op_type} {n.name!r}: its data input is quantized and its weights have no DequantizeLinear"
                )
            else:
                dq = producer[n.input[1]]
                scale = inits.get(dq.input[1])
                axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
                if scale is None or len(scale.dims) != 1 or axis != WEIGHT_AXIS[n.op_type]:
                    problems.append(f"{n.op_type} {n.name!r}: weights are not quantized per output channel")
            if len(n.input) > 2 and n.input[2] and is_dq(n.input[2]):
                problems.append(f"{n.op_type} {n.name!r}: the bias is quantized (TensorRT needs a float bias)")
    for add, _conv_side, residual in residual_adds(graph):
        if not is_dq(residual):
            problems.append(
                f"Add {add.name!r}: its residual input has no Q/DQ (TensorRT fuses the Add into the convolution "
                "only when the residual input is quantized)"
            )
    return problems
