"""Stage 2 in the pipeline: export the student to ONNX and simplify it, each checked and cached."""

from __future__ import annotations

from pathlib import Path

from ..cache import StageCache, file_sha256, stage_key
from ..context import CHECK_IMAGES, DeployContext


def export_stage(ctx: DeployContext, out: Path, cache: StageCache):
    from .onnx_export import to_onnx

    path = out / "deploy/model.onnx"
    key = stage_key("export", {"spec": ctx.spec, "feeds": ctx.eval_feeds.digests[:CHECK_IMAGES]}, [ctx.checkpoint])
    hit = cache.lookup("export", key)
    if hit is not None:
        return path, hit["check"]
    # Target-independent: one exported ONNX serves every target built from this checkpoint.
    extra = {"bckd.checkpoint_sha256": file_sha256(ctx.checkpoint)}
    _, check = to_onnx(ctx.model, ctx.meta, ctx.spec, path, ctx.check_feeds(), extra_metadata=extra)
    cache.store("export", key, [path], {"check": check.as_dict()})
    return path, check.as_dict()


def simplify_stage(ctx: DeployContext, out: Path, cache: StageCache, source: Path):
    from .simplify import simplify

    path = out / "deploy/model.sim.onnx"
    opts = {"tool": ctx.deploy.simplifier, "allow": ctx.deploy.allow_unsimplified}
    key = stage_key("simplify", opts, [source])
    hit = cache.lookup("simplify", key)
    if hit is not None:
        return path, hit["check"]
    _, check, counts = simplify(
        source,
        path,
        ctx.check_feeds(),
        tool=ctx.deploy.simplifier,
        allow_unsimplified=ctx.deploy.allow_unsimplified,
    )
    result = {**counts, **(check.as_dict() if check else {"passed": None, "note": "simplifier failed; graph copied"})}
    cache.store("simplify", key, [path], {"check": result})
    return path, result
