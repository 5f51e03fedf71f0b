"""Fake quantization inserted by NNCF's PyTorch quantization, matched to the backend that will run the model.

The library, not hand-written fake-quant modules: ``nncf.quantize(torch_model, nncf.Dataset(feeds), preset=...,
target_device=...)`` inserts NNCF's quantizers (range-initialised on the calibration feeds) and returns a model
that trains like any ``nn.Module`` ("Quantization-aware Training (QAT) with PyTorch", docs.openvino.ai:
``nncf.quantize`` then fine-tune with a small learning rate; NNCF 3.4.0 ``nncf/quantization/quantize_model.py``).

One scheme per backend, chosen to match what the PTQ row of that backend writes (calibrate/):

- ``openvino``: the profile's NNCF preset and target device, as ``calibrate/openvino.py::quantize_ir`` uses
  for the PTQ IR; exported with ``openvino.convert_model(model, example_input=...)``, which turns NNCF's
  quantizers into OpenVINO FakeQuantize operations (an INT8 IR).
- ``onnxruntime``: NNCF preset MIXED = asymmetric activations (u8, zero point free) and symmetric weights
  (s8, zero point 0), per output channel: the layout of ``calibrate/onnxruntime.py::quantize_ort``
  (QUInt8 activations, QInt8 per-channel weights). Exported as Q/DQ ONNX: ``nncf.strip(...,
  StripFormat.NATIVE)`` turns each NNCF quantizer into ``torch.ao`` ``FakeQuantize``
  (``nncf/torch/quantization/strip.py::convert_to_torch_fakequantizer``), which the TorchScript ONNX exporter
  writes as one QuantizeLinear/DequantizeLinear pair (per-channel ones with ``axis``).
- ``tensorrt``: preset PERFORMANCE (symmetric), then every per-tensor (activation) quantizer made signed
  through NNCF's own ``SymmetricQuantizer.signed`` setter (which resets its levels): s8 with zero point 0
  everywhere, per-channel weights, float biases (NNCF does not quantize biases). NNCF's
  ``QuantizationParameters(signedness_to_force=True)`` would say the same up front, but NNCF 3.4.0 refuses it
  for the convolutions under every hardware configuration ("incompatible with HW capabilities"). The inputs of
  a Concat that feeds a convolution share one quantizer (:func:`unify_concat_scales`). After the export,
  :func:`make_tensorrt_ready`: an exact Q/DQ pair on each convolution or residual input that lies on one grid
  without a Q/DQ of its own, the pipeline's residual-Add placement (``calibrate/tensorrt.py::place_residual_qdq``)
  and ``check_tensorrt_qdq``.

Where NNCF places quantizers is NNCF's choice (its hardware configuration for the target device), not ORT's
op list: the Q/DQ ONNX is what the fine-tuned model computes, node for node (tests/test_qat.py checks that
every fake quantizer of the stripped model is one Q/DQ pair on the same tensor of the exported ONNX).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendMissingError, StageCheckError

BACKENDS = ("onnxruntime", "openvino", "tensorrt")


@dataclass(frozen=True)
class Scheme:
    """What the fake quantizers of one backend are: NNCF's preset, target device, signed activations."""

    backend: str
    preset: str  # "mixed" (asymmetric activations) or "performance" (symmetric)
    target_device: str  # an nncf.TargetDevice name
    signed_activations: bool = False

    def describe(self) -> dict:
        acts = (
            "asymmetric u8" if self.preset == "mixed" else ("symmetric s8" if self.signed_activations else "symmetric")
        )
        return {
            "library": "nncf (PyTorch quantization)",
            "preset": self.preset,
            "target_device": self.target_device,
            "activations": acts,
            "weights": "symmetric s8, per output channel",
        }


def scheme_for(backend: str, *, preset: str = "performance", device: str = "CPU") -> Scheme:
    """The scheme matching the PTQ row of ``backend`` (``preset``/``device``: the OpenVINO profile's)."""
    if backend == "onnxruntime":
        return Scheme("onnxruntime", "mixed", "CPU")
    if backend == "openvino":
        return Scheme("openvino", preset, device.upper())
    if backend == "tensorrt":
        return Scheme("tensorrt", "performance", "ANY", signed_activations=True)
    raise StageCheckError(f"No QAT scheme for backend {backend!r}. Allowed: {', '.join(BACKENDS)}.")


def import_nncf():
    """NNCF with its torch extension loaded (a clear error where it cannot be: nncf_env.py)."""
    from .. import nncf_env

    nncf_env.prepare()
    try:
        import nncf
    except ImportError:
        raise BackendMissingError(
            'QAT needs NNCF: pip install "bckd-pipeline[openvino]" (openvino and nncf), or run with --qat off.'
        ) from None
    nncf_env.logs_to_stderr()
    nncf_env.load_torch_extension()
    return nncf


def insert_fake_quant(model, feeds, scheme: Scheme):
    """``model`` (eval mode, a torch module) with NNCF's quantizers, ranges from ``feeds`` (numpy feed dicts).

    Returns a new module (NNCF copies); ``model`` is unchanged.
    """
    import torch

    nncf = import_nncf()
    tensors = [torch.from_numpy(next(iter(f.values()))) for f in feeds]
    preset = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}[scheme.preset]
    device = getattr(nncf.TargetDevice, scheme.target_device, nncf.TargetDevice.ANY)
    extra = {}
    if scheme.backend in ("onnxruntime", "tensorrt"):
        # NNCF's CPU/ANY hardware configs put per-channel quantizers on depthwise-convolution inputs; ONNX Runtime's
        # QLinearConv takes only a scalar activation zero point, TensorRT only per-tensor activation scales, and
        # the PTQ rows of both quantize activations per tensor (nncf 3.4: quantization/advanced_parameters.py).
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

        extra["advanced_parameters"] = AdvancedQuantizationParameters(
            activations_quantization_params=QuantizationParameters(per_channel=False)
        )
    from ..export.wrapper import for_static_export

    # The QAT model is exported at one static shape (dynamic axes are refused with --qat): adaptive pools that
    # the ONNX exporter refuses at that shape (PSPNet's pyramid) are written as fixed slices and means first, so
    # NNCF traces, and the fine-tune trains, the very graph that is exported.
    model = for_static_export(model.eval())
    quantized = nncf.quantize(
        model, nncf.Dataset(tensors), preset=preset, target_device=device, subset_size=len(tensors), **extra
    )
    if scheme.signed_activations:
        from nncf.torch.quantization.layers import SymmetricQuantizer

        for q in fake_quantizers(quantized).values():
            if isinstance(q, SymmetricQuantizer) and not q.per_channel:
                q.signed = True
    if scheme.backend == "tensorrt":
        unify_concat_scales(quantized, tensors[0])
    return quantized


def fake_quantizers(qmodel) -> dict[str, object]:
    """NNCF's hook name -> quantizer module, every name (one quantizer may serve several hooks)."""
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseQuantizer

    storage = get_hook_storage(qmodel)
    return {n: m for n, m in storage.named_hooks(remove_duplicate=False) if isinstance(m, BaseQuantizer)}


def strip_to_torch(qmodel, example):
    """A copy of ``qmodel`` whose NNCF quantizers are ``torch.ao`` FakeQuantize modules (exportable to Q/DQ).

    ``nncf.strip(..., StripFormat.NATIVE)`` replaces each quantizer under the first hook name it finds
    (``named_hooks()`` drops duplicates); a quantizer NNCF shares between hooks (unified scales, e.g. the
    inputs of a Concat) keeps its NNCF module under the other names, which exports as OpenVINO's custom
    FakeQuantize op that ONNX Runtime cannot load. Those names are pointed at the replacement here.
    """
    nncf = import_nncf()
    try:
        import torchao  # noqa: F401 - nncf.strip's native format imports torchao's observers
    except ImportError:
        raise BackendMissingError(
            "Exporting a QAT model to Q/DQ ONNX needs torchao (nncf.strip imports its observers): "
            'pip install torchao, or pip install "bckd-pipeline[qat]".'
        ) from None
    from nncf.torch.function_hook.wrapper import get_hook_storage

    model = copy.deepcopy(qmodel).eval()
    by_id: dict[int, list[str]] = {}
    for name, module in fake_quantizers(model).items():
        by_id.setdefault(id(module), []).append(name)
    model = nncf.strip(model, do_copy=False, strip_format=nncf.StripFormat.NATIVE, example_input=example)
    storage = get_hook_storage(model)
    for names in by_id.values():
        first = storage.get_submodule(names[0])
        for other in names[1:]:
            storage.set_submodule(other, first)
    return model


def _inline_constant_identities(graph) -> int:
    """Drop ``Identity`` nodes that copy an initializer (the TorchScript exporter writes one per reuse of a
    shared scale or zero point) and point their consumers at the initializer: ONNX Runtime's Q/DQ fusion and
    TensorRT read scales and zero points as initializers (``check_tensorrt_qdq`` requires it)."""
    inits = {t.name for t in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}
    outputs = {o.name for o in graph.output}
    alias = {k: v for k, v in alias.items() if k not in outputs}
    if not alias:
        return 0
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in kept:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(kept)
    return len(alias)


def export_qdq(
    qmodel, example, path: Path, *, opset: int, input_name: str, output_name: str, metadata: dict | None = None
) -> Path:
    """The fine-tuned model as a Q/DQ ONNX (TorchScript exporter: FakeQuantize -> QuantizeLinear/DequantizeLinear).

    The dynamo exporter has no FakeQuantize translation here, hence ``dynamo=False`` (as ``export/onnx_export.py``).
    """
    import torch

    from ..fileio import atomic_write

    stripped = strip_to_torch(qmodel, example)

    def write(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(
                stripped,
                (example,),
                str(tmp),
                opset_version=max(opset, 13),  # per-channel QuantizeLinear needs opset 13
                input_names=[input_name],
                output_names=[output_name],
                dynamo=False,
            )
        import onnx

        model = onnx.load(str(tmp))
        _inline_constant_identities(model.graph)
        if metadata:
            onnx.helper.set_model_props(model, metadata)
        onnx.save(model, str(tmp))
        leftovers = [n.name for n in model.graph.node if n.domain]
        if leftovers:
            raise StageCheckError(
                f"The QAT ONNX holds custom-domain nodes ONNX Runtime cannot run: {', '.join(leftovers[:5])}."
            )

    atomic_write(Path(path), write)
    return Path(path)


def export_ir(
    qmodel,
    example,
    xml_path: Path,
    *,
    input_name: str = "image",
    output_name: str = "logits",
    metadata: dict | None = None,
) -> Path:
    """The fine-tuned model as an INT8 OpenVINO IR: ``openvino.convert_model`` on the NNCF model (its quantizers
    become FakeQuantize, weight quantizers folded into int8 constants), saved as the PTQ IR is
    (calibrate/openvino.py). A converted PyTorch model has unnamed inputs and outputs; they get the names the
    ONNX rows have, which the runtimes and the parity feeds use; ``metadata`` (the ONNX rows' metadata_props)
    goes where OpenVINO keeps it for an IR converted from ONNX, ``rt_info["framework"]``, which predict reads."""
    import torch

    from ..calibrate.openvino import save_ir
    from ..runtimes.openvino import import_openvino

    ov = import_openvino()
    model = copy.deepcopy(qmodel).eval()
    with torch.no_grad():
        converted = ov.convert_model(model, example_input=example)
    converted.inputs[0].get_tensor().set_names({input_name})
    converted.outputs[0].get_tensor().set_names({output_name})
    for key, value in (metadata or {}).items():
        converted.set_rt_info(value, ["framework", key])
    return save_ir(converted, xml_path, compress_to_fp16=False)


# Ops whose output holds only values of their (data) input, or zeros: a tensor on a quantization grid with zero
# point 0 stays on that grid through them, so a Q/DQ pair with the input's scale after them changes no value.
# (Concat too, when every input is on one grid; Pad when it pads with 0 or copies values.)
GRID_PRESERVING = (
    "Pad",
    "MaxPool",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Relu",
    "Slice",
)


def _requantize_inputs(path: Path) -> int:
    """An exact Q/DQ pair on each input TensorRT wants quantized (the data input of a quantized convolution, the
    residual input of a residual Add) that is not dequantized itself but lies on one quantization grid: behind a
    Pad or MaxPool (NNCF quantizes before them), a Reshape, or a Concat of inputs that share one scale (NNCF
    unifies them; :func:`unify_concat_scales` where it does not). Returns how many pairs were added.

    TensorRT wants Q/DQ on the data input of every convolution (``check_tensorrt_qdq``); the pair uses the grid's
    own scale and zero point (0), so it changes no value, only where TensorRT sees the quantization.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from ..calibrate.tensorrt import WEIGHT_AXIS as WEIGHTED
    from ..calibrate.tensorrt import residual_adds

    model = onnx.load(str(path))
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:  # the TorchScript exporter writes small constants (a Pad's value) as Constant nodes
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    producer = {o: n for n in graph.node for o in n.output}

    def grid(tensor: str, depth: int = 0) -> tuple[str, str] | None:
        node = producer.get(tensor)
        if node is None or depth > 32:
            return None
        if node.op_type == "DequantizeLinear":
            scale, zp = consts.get(node.input[1]), consts.get(node.input[2]) if len(node.input) > 2 else None
            if scale is None or zp is None or scale.size != 1 or np.any(zp != 0):
                return None
            return node.input[1], node.input[2]
        if node.op_type == "Concat":
            grids = [grid(i, depth + 1) for i in node.input]
            if not grids or any(g is None for g in grids):
                return None
            values = {(float(consts[g[0]]), consts[g[1]].dtype.str) for g in grids}
            return grids[0] if len(values) == 1 else None
        if node.op_type not in GRID_PRESERVING:
            return None
        if node.op_type == "Pad" and len(node.input) > 2 and node.input[2]:
            value = consts.get(node.input[2])
            if value is None or np.any(value != 0):
                return None
        return grid(node.input[0], depth + 1)

    def dequantized(tensor: str) -> bool:
        return tensor in producer and producer[tensor].op_type == "DequantizeLinear"

    # (node, input index) that TensorRT wants quantized: the data input of a convolution whose weights are
    # (a float convolution stays float), and the residual input of a residual Add.
    wanted = [(n, 0) for n in graph.node if n.op_type in WEIGHTED and dequantized(n.input[1])]
    wanted += [(add, list(add.input).index(residual)) for add, _conv, residual in residual_adds(graph)]
    before: dict[int, list] = {}
    for node, port in wanted:
        found = None if dequantized(node.input[port]) else grid(node.input[port])
        if found is None:
            continue
        scale, zp = found
        src, tag = node.input[port], f"{node.name}/input{port}"
        q = helper.make_node("QuantizeLinear", [src, scale, zp], [f"{tag}/qat_q"], name=f"{tag}/QuantizeLinear")
        dq = helper.make_node(
            "DequantizeLinear", [q.output[0], scale, zp], [f"{tag}/qat_dq"], name=f"{tag}/DequantizeLinear"
        )
        node.input[port] = dq.output[0]
        before.setdefault(id(node), []).extend([q, dq])
    if before:
        nodes = [m for n in graph.node for m in (*before.get(id(n), []), n)]
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(model, str(path))
    return sum(len(v) // 2 for v in before.values())


def unify_concat_scales(qmodel, example) -> int:
    """TensorRT scheme: one activation quantizer for all inputs of a Concat that feeds a convolution, where NNCF
    left them with different scales (e.g. DeepLabV3+'s decoder Concat of an upsampled and a projected branch).

    TensorRT needs Q/DQ on the convolution's input; on inputs of one scale the pair after the Concat is exact
    (:func:`_requantize_inputs`), on mixed scales it would requantize one branch behind the fine-tune's back.
    So the inputs share, before fine-tuning, the quantizer of the widest range (no branch clips more than it
    did), the way NNCF itself shares one for Concats its hardware configuration unifies; the fine-tune then
    trains that shared scale. Returns how many quantizers now share another's.
    """
    import tempfile

    import onnx
    from nncf.torch.function_hook.wrapper import get_hook_storage

    prefix, suffix = "__nncf_hooks.", ".scale"
    quantizers = fake_quantizers(qmodel)
    with tempfile.TemporaryDirectory() as work:
        probe = export_qdq(qmodel, example, Path(work) / "probe.onnx", opset=17, input_name="image", output_name="y")
        graph = onnx.load(str(probe)).graph
    producer = {o: n for n in graph.node for o in n.output}
    convs = {i for n in graph.node if n.op_type in ("Conv", "ConvTranspose") for i in n.input[:1]}
    groups: list[set[str]] = []
    for node in graph.node:
        if node.op_type != "Concat" or node.output[0] not in convs:
            continue
        dqs = [producer.get(i) for i in node.input]
        if any(d is None or d.op_type != "DequantizeLinear" for d in dqs):
            continue
        names = {d.input[1][len(prefix) : -len(suffix)] for d in dqs if d.input[1].startswith(prefix)}
        names = {n for n in names if n in quantizers}
        if len({id(quantizers[n]) for n in names}) > 1:
            groups.append(names)
    merged: list[set[str]] = []  # groups that share a quantizer are one group (chained Concats)
    for g in groups:
        ids = {id(quantizers[n]) for n in g}
        joined = [m for m in merged if ids & {id(quantizers[n]) for n in m}]
        for m in joined:
            merged.remove(m)
            g = g | m
        merged.append(g)
    storage = get_hook_storage(qmodel)
    shared = 0
    for g in merged:
        members = {id(quantizers[n]): quantizers[n] for n in g}
        if not all(hasattr(q, "scale") for q in members.values()):
            continue  # asymmetric quantizers (input_low/input_range): not the TensorRT scheme's
        chosen = max(members.values(), key=lambda q: float(q.scale.detach().abs().max()))
        for name, q in quantizers.items():
            if id(q) in members and q is not chosen:
                storage.set_submodule(name, chosen)
                shared += 1
    return shared


def make_tensorrt_ready(path: Path) -> dict:
    """The QAT Q/DQ ONNX as TensorRT takes it: inputs re-quantized on their own grid (exact), the residual-Add
    placement of ``calibrate/tensorrt.py``, then ``check_tensorrt_qdq``; raises when TensorRT would still reject it."""
    from ..calibrate.tensorrt import check_tensorrt_qdq, place_residual_qdq

    inputs = _requantize_inputs(path)
    residual = place_residual_qdq(path)
    problems = check_tensorrt_qdq(path)
    if problems:
        raise StageCheckError(
            "The QAT Q/DQ ONNX is not TensorRT-ready: "
            + "; ".join(problems[:5])
            + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    return {"inputs_requantized": inputs, "residual_adds_fused": residual, "tensorrt_ready": True}
