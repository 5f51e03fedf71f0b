"""A TensorRT-ready INT8 ONNX: explicit quantize/dequantize (Q/DQ) nodes, calibrated on the host.

TensorRT 10 deprecated, and TensorRT 11 removed, implicit INT8 calibration: INT8 comes from Q/DQ
nodes in the ONNX (TensorRT's "explicit quantization"). What TensorRT needs from them, and what
:func:`check_tensorrt_qdq` verifies on every file this module writes:

- int8 Q/DQ with zero point 0 everywhere (symmetric; TensorRT rejects other zero points);
- per-channel weights (a vector of scales along the output-channel axis) for Conv / ConvTranspose;
- Q/DQ on the data input of every weighted layer, and on *both* inputs of a residual ``Add``, so
  the addition fuses into the INT8 convolution before it;
- float biases (an int32 bias DequantizeLinear, which ONNX Runtime writes by default, does not parse).

Two quantizers make it, both calibrated on the calibration images (never random data):

- ``modelopt``: NVIDIA Model Optimizer (``modelopt.onnx.quantization.quantize``, runs on the CPU).
  It pins its own onnxruntime-gpu and an older onnx, so it is the optional extra
  ``bckd-pipeline[modelopt]``, best installed in its own environment.
- ``onnxruntime``: ONNX Runtime's static QDQ quantizer with symmetric activations and weights,
  per-channel weights, float biases and Q/DQ restricted to the layers TensorRT runs in INT8. The default.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..distill.checkpoint import atomic_write
from ..errors import BackendMissingError, ConfigError, StageCheckError
from ..targets.profiles import CalibrationSpec
from .data import DatasetFeeds
from .onnxruntime import quantize_qdq

QUANTIZERS = ("onnxruntime", "modelopt")
# The layers TensorRT runs in INT8 when their inputs carry Q/DQ; activations elsewhere stay float.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1}


def quantize_for_tensorrt(
    source: Path, path: Path, feeds: DatasetFeeds, spec: CalibrationSpec, *, quantizer: str = "onnxruntime"
) -> tuple[Path, dict]:
    """FP32 ONNX -> Q/DQ ONNX for TensorRT, calibrated on ``feeds``; checked before it is kept."""
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
    }

    def write_checked(tmp: Path) -> None:
        write(Path(source), tmp, feeds, spec)
        problems = check_tensorrt_qdq(tmp)
        if problems:
            raise StageCheckError(
                f"The Q/DQ ONNX from {quantizer} is not TensorRT-ready: "
                + "; ".join(problems[:5])
                + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
            )

    atomic_write(path, write_checked)
    return Path(path), settings


def _ort_writer(source: Path, tmp: Path, feeds: DatasetFeeds, spec: CalibrationSpec) -> None:
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        # One Q/DQ pair per consumer: TensorRT fuses each pair into the layer that reads it.
        "DedicatedQDQPair": True,
    }
    quantize_qdq(source, tmp, feeds, spec, activation_type="QInt8", op_types=list(QUANTIZED_OPS), extra=extra)


def _modelopt_writer(source: Path, tmp: Path, feeds: DatasetFeeds, spec: CalibrationSpec) -> None:
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
    images = np.concatenate([f["image"] for f in feeds], axis=0)
    quantize(
        str(source),
        quantize_mode="int8",
        calibration_data={"image": images},
        calibration_method="max" if spec.method == "minmax" else "entropy",
        calibration_eps=["cpu"],
        output_path=str(tmp),
    )


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
            if not is_dq(n.input[0]):
                problems.append(f"{n.op_type} {n.name!r}: its data input has no Q/DQ")
            if not is_dq(n.input[1]):
                problems.append(f"{n.op_type} {n.name!r}: its weights have no DequantizeLinear")
            else:
                dq = producer[n.input[1]]
                scale = inits.get(dq.input[1])
                axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
                if scale is None or len(scale.dims) != 1 or axis != WEIGHT_AXIS[n.op_type]:
                    problems.append(f"{n.op_type} {n.name!r}: weights are not quantized per output channel")
            if len(n.input) > 2 and n.input[2] and is_dq(n.input[2]):
                problems.append(f"{n.op_type} {n.name!r}: the bias is quantized (TensorRT needs a float bias)")
        elif n.op_type == "Add":
            activations = [i for i in n.input if i not in inits]
            if len(activations) == 2 and not all(is_dq(i) for i in activations):
                problems.append(f"Add {n.name!r}: a residual input has no Q/DQ (both need one to fuse in INT8)")
    return problems
