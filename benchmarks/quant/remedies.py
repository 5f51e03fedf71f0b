"""The cheap remedies for the quantization table's worst rows: entropy and percentile calibration (ONNX Runtime
flavours), more calibration images, NNCF's accuracy-aware mode, and a mixed-precision sweep that keeps one
layer group at a time in float, ranked by the ΔmIoU it recovers, each with its latency cost."""

from __future__ import annotations

from pathlib import Path

from common import cached

from .measure import (
    ORT_FLAVOURS,
    Options,
    Student,
    activation_bytes,
    artifact_path,
    calib_spec,
    dataset,
    feeds_of,
    fp32_ir,
    hw_name,
    out_of_time,
    quantize,
    score,
    short,
    timing,
)


def layer_groups(sim: Path) -> dict[str, list[str]]:
    """Layer groups from the ONNX node names: encoder nodes by the stride of their output (a stage), decoder
    nodes by their sub-block (``decoder/aspp``...; those without a weighted layer together as ``decoder/glue``),
    the head, and the rest (input normalisation, final resize).

    The stride is H/h of a node's N x C x h x w output when H/h = W/w is a power of two (a feature map; not
    an SE block's 1 x 1 or an attention tensor); other encoder nodes (SegFormer's token ops) take the stride
    of the node that makes their first input. Nodes the simplifier renamed without their module path
    (onnxsim's fused ``Gemm_12``) join the group of the node that makes their input. Only the node types the
    quantizers put Q/DQ around are listed (kept in float, they change the INT8 graph).
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(sim)))
    graph = model.graph
    height, width = (d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[2:4])
    shapes = {v.name: v.type.tensor_type.shape.dim for v in list(graph.value_info) + list(graph.output)}
    quantized = {
        "Conv",
        "ConvTranspose",
        "MatMul",
        "Gemm",
        "Add",
        "Mul",
        "Concat",
        "Resize",
        "AveragePool",
        "MaxPool",
        "GlobalAveragePool",
        "Sigmoid",
        "Softmax",
        "Transpose",
        "Reshape",
    }
    groups: dict[str, list[str]] = {}
    weighted: dict[str, bool] = {}
    producer: dict[str, str] = {}  # tensor -> the name of the node that makes it
    group_of: dict[str, str] = {}  # node name -> its group
    stride_of: dict[str, int] = {}  # node name -> the stride of the feature map it works on
    for node in graph.node:  # topological order: a node's producers are placed before it
        parents = [producer[i] for i in node.input if i in producer]
        parts = [p for p in node.name.split("/") if p]
        parts = parts[1:] if parts and parts[0] == "student" else parts
        top = parts[0] if len(parts) > 1 else ""
        dims = shapes.get(node.output[0]) if node.output else None
        h, w = (dims[2].dim_value, dims[3].dim_value) if dims is not None and len(dims) == 4 else (0, 0)
        s = height // h if h and w and height % h == 0 and width % w == 0 else 0
        if s and width // w == s and s & (s - 1) == 0:
            stride_of[node.name] = s
        else:
            stride_of[node.name] = next((stride_of[q] for q in parents if q in stride_of), 1)
        if "/" not in node.name:
            group = next((group_of[q] for q in parents if q in group_of), "input+output")  # renamed by onnxsim
        elif top == "encoder":
            group = f"encoder/stride{stride_of[node.name]}"
        elif top == "decoder":
            group = f"decoder/{parts[1].split('.')[0]}" if len(parts) > 2 else "decoder/top"
        elif top in ("segmentation_head", "head"):
            group = "head"
        else:
            group = "input+output"
        group_of[node.name] = group
        for o in node.output:
            producer[o] = node.name
        if node.op_type not in quantized or not node.name:
            continue
        groups.setdefault(group, []).append(node.name)
        weighted[group] = weighted.get(group, False) or node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")
    # Decoder sub-blocks without a weighted layer (a lone Concat or Resize) are one group: a sweep row each
    # would cost a quantization for a change of a Q/DQ pair or two.
    for group in [g for g in groups if g.startswith("decoder/") and not weighted[g]]:
        groups.setdefault("decoder/glue", []).extend(groups.pop(group))
    return dict(sorted(groups.items()))


def resolvable(flavour: str, sim: Path, nodes: list[str]) -> list[str]:
    """The nodes an exclusion can name for this quantizer: those that survive ORT's pre-processing, or that
    OpenVINO's conversion keeps an op of (calibrate/exclude.py refuses the others)."""
    if flavour == "nncf":
        from bckd_pipeline.runtimes.openvino import import_openvino

        ops = [o.get_friendly_name() for o in import_openvino().Core().read_model(str(fp32_ir(sim))).get_ordered_ops()]
        return [n for n in nodes if any(o == n or o.startswith(f"{n}/") for o in ops)]
    import tempfile

    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as work:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(sim), str(pre), skip_symbolic_shape=True)
        kept = {n.name for n in onnx.load(str(pre), load_external_data=False).graph.node}
    return [n for n in nodes if n in kept]


def remedies_for(student: Student, flavour: str, baseline: dict, opts: Options) -> dict:
    """The cheap remedies on one (student, flavour) row: each with accuracy and training-size latency."""
    from bckd_pipeline.data.feeds import check_no_overlap, pick_indices

    preset, meta = student.preset, student.meta
    hw = opts.sizes[0]
    res_dir = opts.out / "results" / preset
    work = opts.out / "work" / preset / hw_name(hw)
    sim = work / "model.sim.onnx"
    val = feeds_of(opts, opts.data, "val", hw, opts.val_images)
    bench = val.head(8)
    base = {"checkpoint": student.sha256, "hw": list(hw), "runs": opts.runs}
    calib = feeds_of(opts, opts.data, "train", hw, opts.calib_size, seed=opts.seed)
    val_digests = dict(zip(val.digests, val.names, strict=True))
    check_no_overlap(calib, val_digests)

    def variant(tag: str, which: str, spec, feeds, **kw) -> dict:
        if out_of_time(opts):
            return {"not_measured": "--stop-at reached"}
        path = artifact_path(work, which, f"-{tag}")

        def make() -> dict:
            settings = quantize(which, sim, path, feeds, spec, num_classes=meta.num_classes, **kw)
            acc = score(sim, path, val, num_classes=meta.num_classes, ignore_index=meta.ignore_index, opts=opts)
            return {**acc, "settings": settings, "latency": timing(path, bench, opts.runs, opts, "int8")}

        key = opts.key(**base, what="remedy", flavour=which, tag=tag, spec=repr(spec), calib=len(feeds))
        result = cached(res_dir / f"remedy-{which}-{tag}@{hw_name(hw)}.json", key, make)
        print(f"  remedy {preset} {which} {tag}: {short(result)}", flush=True)
        return result

    out: dict = {"student": preset, "flavour": flavour, "baseline_delta_miou": baseline["delta_miou"], "rows": {}}
    per_image = activation_bytes(sim)

    def too_big(n: int) -> dict | None:
        """ONNX Runtime's calibrators hold n images' activations: refused beyond --calib-memory-gb, not OOM-killed."""
        need = n * per_image / 1e9
        if flavour in ORT_FLAVOURS and need > opts.calib_memory_gb:
            return {"not_measured": f"ONNX Runtime's calibrator would hold {need:.1f} GB for {n} images "
                    f"(> --calib-memory-gb {opts.calib_memory_gb:g})"}  # fmt: skip
        return None

    if flavour in ORT_FLAVOURS:
        for method in ("entropy", "percentile"):
            out["rows"][method] = too_big(len(calib)) or variant(
                method, flavour, calib_spec(opts, method=method), calib
            )
    else:
        out["rows"]["entropy"] = out["rows"]["percentile"] = {
            "not_applicable": "NNCF chooses its own range statistics; --calib-method is ONNX Runtime's"
        }
    n_more = min(opts.remedy_calib_size, len(dataset(opts, opts.data, "train", hw)))
    out["rows"][f"calib{n_more}"] = too_big(n_more)
    if out["rows"][f"calib{n_more}"] is None:
        more = feeds_of(opts, opts.data, "train", hw, n_more, seed=opts.seed)
        check_no_overlap(more, val_digests)
        out["rows"][f"calib{n_more}"] = variant(f"calib{n_more}", flavour, calib_spec(opts, n_more), more)
    # NNCF accuracy-aware: judged on training images that are not calibration images (calibrate/stage.py).
    train = dataset(opts, opts.data, "train", hw)
    indices = pick_indices(opts.calib_size, len(train), opts.seed)
    rest = sorted(set(range(len(train))) - set(indices))
    if rest:
        from bckd_pipeline.data.feeds import DatasetFeeds

        chosen = [rest[i] for i in pick_indices(min(opts.calib_size, len(rest)), len(rest), opts.seed + 1)]
        judge = DatasetFeeds.from_dataset(train, chosen, tuple(hw))
        check_no_overlap(judge, val_digests)
        spec = calib_spec(opts, max_miou_drop=opts.max_miou_drop)
        tag = f"accuracy-aware{opts.max_miou_drop:g}"
        out["rows"][f"nncf-{tag}"] = {
            **variant(tag, "nncf", spec, calib, validation=judge),
            "judged_on": f"{len(judge)} training images that are not calibration images",
        }
    out["sweep"] = sensitivity_sweep(student, flavour, sim, calib, val, bench, baseline, opts)
    return out


def sensitivity_sweep(student: Student, flavour: str, sim: Path, calib, val, bench, baseline: dict, opts) -> dict:
    """All but one layer group quantized, one group at a time; ranked by the ΔmIoU it recovers."""
    preset, meta = student.preset, student.meta
    hw = opts.sizes[0]
    res_dir = opts.out / "results" / preset
    work = opts.out / "work" / preset / hw_name(hw)
    all_int8 = cached(
        res_dir / f"lat-{flavour}@{hw_name(hw)}.json",
        opts.key(
            checkpoint=student.sha256,
            hw=list(hw),
            runs=opts.runs,
            what="latency",
            flavour=flavour,
            calib=opts.calib_size,
        ),
        lambda: timing(artifact_path(work, flavour), bench, opts.runs, opts, "int8"),
    )
    rows = []
    for group, nodes in layer_groups(sim).items():
        if out_of_time(opts):
            rows.append({"group": group, "nodes": len(nodes), "not_measured": "--stop-at reached"})
            continue
        names = resolvable(flavour, sim, nodes)
        tag = "float-" + group.replace("/", "-")
        if not names:
            rows.append(
                {"group": group, "nodes": len(nodes), "skipped": "no node of it survives the quantizer's graph"}
            )
            continue
        path = artifact_path(work, flavour, f"-{tag}")
        spec = calib_spec(opts, exclude=tuple(names))

        def make(spec=spec, path=path) -> dict:
            settings = quantize(flavour, sim, path, calib, spec, num_classes=meta.num_classes)
            acc = score(sim, path, val, num_classes=meta.num_classes, ignore_index=meta.ignore_index, opts=opts)
            return {
                **acc,
                "int8_exclude": settings.get("int8_exclude"),
                "latency": timing(path, bench, opts.runs, opts, "int8"),
            }

        key = opts.key(
            checkpoint=student.sha256,
            what="sweep",
            flavour=flavour,
            group=group,
            nodes=names,
            calib=opts.calib_size,
            runs=opts.runs,
        )
        r = cached(res_dir / f"sweep-{flavour}-{tag}@{hw_name(hw)}.json", key, make)
        row = {"group": group, "nodes": len(nodes), "excluded_nodes": len(names), "names": names, **r}
        if "error" not in r:
            row["recovered_miou"] = r["delta_miou"] - baseline["delta_miou"]
            if all_int8.get("p50_ms") and r["latency"].get("p50_ms"):
                row["latency_x_all_int8"] = r["latency"]["p50_ms"] / all_int8["p50_ms"]
        rows.append(row)
        print(f"  sweep {preset} {flavour} {group}: {short(r)}", flush=True)
    ranked = sorted((r for r in rows if "recovered_miou" in r), key=lambda r: -r["recovered_miou"])
    return {"all_int8_latency": all_int8, "groups": rows, "ranking": [r["group"] for r in ranked]}
