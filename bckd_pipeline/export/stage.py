"""Stage 2 in the pipeline: export the student to ONNX (or take the user's, for ``deploy --onnx``) and
simplify it, each checked and cached."""

from __future__ import annotations

from pathlib import Path

from ..cache import StageCache, file_sha256, stage_key
from ..context import CHECK_IMAGES, DeployContext
from ..ledger import shared_dir
from ..tasks import get_task


def export_stage(ctx: DeployContext, out: Path, cache: StageCache):
    from .onnx_export import to_onnx

    path = out / shared_dir(ctx.spec.batch) / "model.onnx"
    options = {"spec": ctx.spec, "feeds": ctx.eval_feeds.digests[:CHECK_IMAGES]}
    if ctx.source is not None and ctx.source.kind != "checkpoint":  # a module file, or a factory and its weights
        options["source"] = ctx.source.identity()
    record = "export" if ctx.spec.batch == 1 else f"export@batch{ctx.spec.batch}"
    key = stage_key(record, options, [ctx.checkpoint])
    hit = cache.lookup(record, key)
    if hit is not None:
        return path, hit["check"]
    # Target-independent: one exported ONNX serves every target built from this checkpoint.
    extra = {"bckd.checkpoint_sha256": file_sha256(ctx.checkpoint)}
    _, check = to_onnx(ctx.model, ctx.meta, ctx.spec, path, ctx.check_feeds(), extra_metadata=extra)
    cache.store(record, key, [path], {"check": check.as_dict()})
    return path, check.as_dict()


def take_onnx_stage(ctx: DeployContext, out: Path, cache: StageCache):
    """``deploy --onnx``: the user's ONNX in place of the export, its graph untouched.

    Copied to deploy/model.onnx with the ``bckd.*`` metadata of what deploy settled (input scale,
    statistics, classes, input size) added beside the user's own metadata_props, so that every
    artifact made from it carries them; then the full checker, and ONNX Runtime on the user's file
    against the copy on real images (identical outputs: only metadata changed).
    """
    import onnx

    from ..fileio import atomic_write
    from ..onnxfile import load_onnx
    from .check import compare, require
    from .onnx_export import check_onnx, onnx_metadata

    path = out / "deploy/model.onnx"
    info = ctx.onnx
    props = onnx_metadata(
        ctx.meta,
        ctx.spec,
        {"bckd.source": "deploy --onnx", "bckd.source_sha256": file_sha256(ctx.checkpoint)},
        input_name=info.input_name,
        output_name=info.output_name if info.task == "segmentation" else None,  # a detector's: every output
    )
    props = {k: v for k, v in props.items() if k not in info.metadata}  # the user's own keys are kept as they are
    key = stage_key("take-onnx", {"props": props, "feeds": ctx.eval_feeds.digests[:CHECK_IMAGES]}, [ctx.checkpoint])
    hit = cache.lookup("take-onnx", key)
    if hit is not None:
        return path, hit["check"]

    def write(tmp: Path) -> None:
        model = load_onnx(ctx.checkpoint)
        onnx.helper.set_model_props(model, {**info.metadata, **props})
        onnx.save(model, str(tmp))
        check_onnx(tmp)

    atomic_write(path, write)
    from ..runtimes.onnxruntime import OrtRuntime

    try:
        with OrtRuntime(ctx.checkpoint, threads=None) as given, OrtRuntime(path, threads=None) as copy:
            report = compare("take-onnx", "your onnx", given.infer, copy.infer, ctx.check_feeds(), atol=1e-5)
        require(report, "Copying the ONNX with its metadata changed its outputs; report the model.")
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    check = {**report.as_dict(), "source": str(ctx.checkpoint), "opset": info.opset, "added_metadata": sorted(props)}
    cache.store("take-onnx", key, [path], {"check": check})
    return path, check


def simplify_stage(ctx: DeployContext, out: Path, cache: StageCache, source: Path):
    """The simplified graph, checked against ``source`` on ORT; with ``--head nms`` the simplified raw graph
    (model.sim.raw.onnx) is checked so, and the deployed model.sim.onnx is it with the decoding and NMS appended
    (export/detection_nms.py), which the ledger then scores against the exported raw graph."""
    from .simplify import simplify

    path = out / shared_dir(ctx.spec.batch) / "model.sim.onnx"
    nms = nms_options(ctx) if ctx.spec.head == "nms" else None
    simplified = path.with_suffix(".raw.onnx") if nms else path
    opts = {"tool": ctx.deploy.simplifier, "allow": ctx.deploy.allow_unsimplified, **({"nms": nms} if nms else {})}
    record = "simplify" if ctx.spec.batch == 1 else f"simplify@batch{ctx.spec.batch}"
    key = stage_key(record, opts, [source])
    hit = cache.lookup(record, key)
    if hit is not None:
        return path, hit["check"]
    _, check, counts = simplify(
        source,
        simplified,
        ctx.check_feeds(),
        tool=ctx.deploy.simplifier,
        allow_unsimplified=ctx.deploy.allow_unsimplified,
        rtol=get_task(ctx.spec.task).export_rtol,
    )
    result = {**counts, **(check.as_dict() if check else {"passed": None, "note": "simplifier failed; graph copied"})}
    if nms:
        from ..tasks.detection import DETECTION
        from .detection_nms import nms_graph

        variant, version = nms["variant"], nms.get("trt_version")
        nms_graph(
            simplified, path, DETECTION.settings, DETECTION.strides, ctx.spec.input_hw, variant, trt_version=version
        )
        result["nms"] = {**nms, "raw_graph": simplified.name}
    cache.store(record, key, [path] + ([simplified] if nms else []), {"check": result})
    return path, result


def nms_options(ctx: DeployContext) -> dict:
    """How the ``nms`` head's graph is built for the target: ONNX's ``NonMaxSuppression`` for ONNX Runtime and
    OpenVINO; for TensorRT the version rule of export/detection_nms.py at the pipeline's oldest TensorRT
    (targets/tensorrt.py ``MIN_VERSION``, 8.5: ``INMSLayer``, the same graph)."""
    from ..targets import Backend

    if ctx.profile.backend is Backend.TENSORRT:
        from ..targets.tensorrt import MIN_VERSION

        return {"variant": "tensorrt", "trt_version": ".".join(str(v) for v in MIN_VERSION[:2])}
    return {"variant": "onnx"}
