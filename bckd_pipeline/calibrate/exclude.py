"""``--int8-exclude NAME_OR_OPTYPE,...``: layers kept in float by the INT8 quantizers.

Each entry is resolved against the graph being quantized: an ONNX node name (as Netron or
``onnx.load(p).graph.node`` show it) or an ONNX op type (``Conv``, ``Resize``...). ONNX Runtime takes them
as ``nodes_to_exclude`` and as the op types left out of ``op_types_to_quantize``; NNCF as an
``IgnoredScope``: the IR ops OpenVINO made from the named ONNX node (a Conv becomes ``<name>/WithoutBiases``
and its bias ``Add`` ``<name>``) and the OpenVINO types of the op types. An entry that matches nothing is
refused (exit 2) with the op types the graph has, never silently dropped.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

# ONNX op type -> the OpenVINO opset types its conversion makes (what NNCF's IgnoredScope(types=) names).
OPENVINO_TYPES = {
    "Conv": ("Convolution", "GroupConvolution"),
    "ConvTranspose": ("ConvolutionBackpropData", "GroupConvolutionBackpropData"),
    "MatMul": ("MatMul",),
    "Gemm": ("MatMul",),
    "Add": ("Add",),
    "Mul": ("Multiply",),
    "Sub": ("Subtract",),
    "Resize": ("Interpolate",),
    "Concat": ("Concat",),
    "AveragePool": ("AvgPool",),
    "MaxPool": ("MaxPool",),
    "GlobalAveragePool": ("ReduceMean",),
    "Sigmoid": ("Sigmoid",),
    "Relu": ("Relu",),
}


@dataclass(frozen=True)
class Exclusion:
    nodes: tuple[str, ...]  # ONNX node names
    op_types: tuple[str, ...]  # ONNX op types
    graph_op_types: tuple[str, ...]  # every op type of the graph (ORT: op_types_to_quantize is these minus op_types)

    def as_dict(self) -> dict:
        return {"nodes": list(self.nodes), "op_types": list(self.op_types)}


def resolve(onnx_path: Path, entries: tuple[str, ...]) -> Exclusion:
    """Split ``entries`` into node names and op types of the ONNX graph; refuse one that is neither."""
    from ..onnxfile import load_onnx

    graph = load_onnx(onnx_path).graph
    names = {n.name for n in graph.node}
    types = sorted({n.op_type for n in graph.node})
    nodes = tuple(e for e in entries if e in names)
    op_types = tuple(e for e in entries if e not in names and e in types)
    unknown = [e for e in entries if e not in names and e not in types]
    if unknown:
        sample = [n.name for n in graph.node if n.op_type not in ("Constant", "Identity")][:3]
        raise ConfigError(
            f"--int8-exclude {', '.join(unknown)} names no node and no op type of {Path(onnx_path).name}. Give "
            f"op types of the graph ({', '.join(types)}) or node names as Netron shows them (e.g. "
            f"{', '.join(sample)})."
        )
    return Exclusion(nodes, op_types, tuple(types))


def ort_arguments(ex: Exclusion | None) -> dict:
    """``quantize_static`` keyword arguments: the excluded nodes, and every op type but the excluded ones."""
    if ex is None or not (ex.nodes or ex.op_types):
        return {}
    args: dict = {"nodes_to_exclude": list(ex.nodes)}
    if ex.op_types:
        args["op_types_to_quantize"] = [t for t in ex.graph_op_types if t not in ex.op_types]
    return args


def nncf_ignored_scope(nncf, model, ex: Exclusion | None):
    """An ``nncf.IgnoredScope`` over the OpenVINO model's ops made from the excluded nodes and op types."""
    if ex is None or not (ex.nodes or ex.op_types):
        return None
    ops = [(o.get_friendly_name(), o.get_type_name()) for o in model.get_ordered_ops()]
    names = sorted({n for n, _ in ops for node in ex.nodes if n == node or n.startswith(f"{node}/")})
    present = {t for _, t in ops}
    types = sorted({t for op in ex.op_types for t in OPENVINO_TYPES.get(op, (op,)) if t in present})
    missing = [node for node in ex.nodes if not any(n == node or n.startswith(f"{node}/") for n in names)]
    missing += [op for op in ex.op_types if not any(t in present for t in OPENVINO_TYPES.get(op, (op,)))]
    if missing:
        raise ConfigError(
            f"--int8-exclude {', '.join(missing)}: OpenVINO's conversion of the graph has no op made from "
            f"{'it' if len(missing) == 1 else 'them'} (fused away, or an op type without a mapping here). Exclude "
            "the neighbouring node, or an op type OpenVINO keeps (Conv, MatMul, Add, Mul, Resize, Concat)."
        )
    return nncf.IgnoredScope(names=names, types=types, validate=False)


# Ops that end a head branch: the last convolution (and its bias Add) before the outputs.
_BRANCH_ENDS = ("Convolution", "GroupConvolution", "MatMul")
_NOT_OPS = ("Constant", "Parameter", "Result")


def output_tail_names(model) -> list[str]:
    """The OpenVINO model's ops after the last convolution of each branch that leads to an output: walking back
    from each Result, every op up to (not including) a Convolution, its bias Add, or a constant.

    For a detector these are the head's decoding arithmetic (FCOS: the per-level scale, clamp and exp of the box
    distances times the stride, and the permutes, reshapes and concatenations of every output), which INT8 would
    quantize at the resolution of a few hundred pixels; NNCF's YOLOv8 example keeps its head's box arithmetic in
    an ``IgnoredScope`` for the same reason (examples/post_training_quantization/openvino/yolov8/main.py)."""
    names: set[str] = set()
    stack = [r.input_value(0).get_node() for r in model.get_results()]
    while stack:
        node = stack.pop()
        kind = node.get_type_name()
        if kind in _NOT_OPS or kind in _BRANCH_ENDS or node.get_friendly_name() in names:
            continue
        inputs = [v.get_node() for v in node.input_values()]
        if kind == "Add" and any(i.get_type_name() in _BRANCH_ENDS for i in inputs):
            continue  # a convolution's bias: part of the convolution
        names.add(node.get_friendly_name())
        stack.extend(inputs)
    return sorted(names)


def with_output_tail(nncf, model, scope):
    """``scope`` (an ``nncf.IgnoredScope`` or None) plus :func:`output_tail_names` of ``model``."""
    tail = output_tail_names(model)
    if scope is None:
        return nncf.IgnoredScope(names=tail, validate=False)
    return nncf.IgnoredScope(names=sorted(set(scope.names) | set(tail)), types=list(scope.types), validate=False)


_ONNX_BRANCH_ENDS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def onnx_output_tail(path: Path) -> list[str]:
    """The ONNX graph's nodes after the last convolution of each branch that leads to an output (the ONNX
    counterpart of :func:`output_tail_names`, for ONNX Runtime's ``nodes_to_exclude``)."""
    from ..onnxfile import load_onnx

    graph = load_onnx(path).graph
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}  # tensor -> index of its node
    seen: set[int] = set()  # node indices: a graph may leave node names empty, so names cannot key the walk
    stack = [o.name for o in graph.output]
    while stack:
        index = producer.get(stack.pop())
        if index is None or index in seen or graph.node[index].op_type in _ONNX_BRANCH_ENDS:
            continue
        seen.add(index)
        stack.extend(graph.node[index].input)
    # ORT and Model Optimizer exclude nodes by name: an unnamed one cannot be named to them (see named_for_quantizer)
    return sorted({graph.node[i].name for i in seen if graph.node[i].op_type != "Constant" and graph.node[i].name})


def name_unnamed_nodes(graph) -> int:
    """Name each node of the ONNX ``graph`` that has an empty name after its first output tensor (the friendly name
    OpenVINO gives it), with ``_2``, ``_3``... where another node already has that name; returns how many it named.
    The names depend only on the graph, so every run names the same nodes the same way."""
    taken = {n.name for n in graph.node if n.name}
    named = 0
    for index, node in enumerate(graph.node):
        if node.name:
            continue
        base = node.output[0] if node.output and node.output[0] else f"{node.op_type}_{index}"
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        node.name = name
        taken.add(name)
        named += 1
    return named


# a protobuf holds at most 2 GiB: past 1 GiB of weights the named copy keeps them in a side file
_INLINE_WEIGHTS_LIMIT = 1 << 30


@contextmanager
def named_for_quantizer(source: Path, beside: Path) -> Iterator[Path]:
    """The ONNX file the quantizer reads: ``source`` itself when every node has a name, else a copy whose unnamed
    nodes are named by :func:`name_unnamed_nodes`, in a hidden working folder beside ``beside`` that is removed on
    exit. ONNX Runtime (``nodes_to_exclude``: ``node.name in nodes_to_exclude``) and Model Optimizer keep nodes in
    float by name, so an unnamed output-tail node would be quantized. The user's file is never written."""
    from ..onnxfile import load_onnx
    from ..progress import say

    if all(n.name for n in load_onnx(source, load_weights=False).graph.node):
        yield Path(source)
        return
    import onnx

    model = load_onnx(source)
    count = name_unnamed_nodes(model.graph)
    say(f"naming {count} unnamed node(s) of {Path(source).name} after their outputs, so that the quantizer can keep "
        "its output tail in float by name (on a copy; the file itself is unchanged)")
    with tempfile.TemporaryDirectory(dir=Path(beside).parent, prefix=f".{Path(beside).name}.named.") as work:
        copy = Path(work) / Path(source).name
        big = sum(len(t.raw_data) for t in model.graph.initializer) > _INLINE_WEIGHTS_LIMIT
        onnx.save_model(model, str(copy), save_as_external_data=big, location=f"{copy.name}.data")
        yield copy


def tail_nodes_lost(source, processed, tail: list[str]) -> list[str]:
    """The ``tail`` nodes of the ONNX graph ``source`` whose output ``processed`` (the graph after the quantizer's
    pre-processing) computes in a node of another name that is neither in ``tail`` nor a branch end: merged or
    renamed, that node is quantized where the tail meant float. A node folded into constants or removed leaves
    nothing to quantize, and one merged into the branch's last convolution is quantized by design: neither is lost."""
    kept = {n.name for n in processed.node}
    producer = {o: n for n in processed.node for o in n.output}
    wanted = set(tail)
    lost = []
    for node in source.node:
        if node.name not in wanted or node.name in kept:
            continue
        now = [producer[o] for o in node.output if o in producer]
        if any(p.name not in wanted and p.op_type not in _ONNX_BRANCH_ENDS for p in now):
            lost.append(node.name)
    return lost
