"""The pipeline's stages that run artifacts: the parity ledger and the latency protocol on every stage,
and ``make_runtime``, which picks the Runtime for a ledger row."""

from __future__ import annotations

from pathlib import Path

from ..cache import StageCache, stage_key
from ..context import DeployContext, norm
from ..export.wrapper import export_wrapper
from ..ledger import QAT_ROW, SHARED_ROWS, Built
from ..ledger import target_dir
from ..parity_images import MASK_IMAGES, PARITY_IMAGES_FILE, save_parity_images
from ..targets import Backend, Precision


def is_device_row(ctx: DeployContext, b: Built) -> bool:
    return ctx.device is not None and ctx.device.result is not None and b.name == ctx.device.result["row"]


def make_runtime(ctx: DeployContext, b: Built, *, streams: int = 1):
    """The Runtime that runs artifact ``b``: on the target's device when present, else on the host CPU; an
    artifact of a static ``--batch N`` is fed one image at a time like the other rows (StaticBatch)."""
    rt = _runtime(ctx, b, streams=streams)
    if ctx.spec.batch > 1 and not is_device_row(ctx, b):
        from ..runtimes import StaticBatch

        return StaticBatch(rt, ctx.spec.batch)
    return rt


def _runtime(ctx: DeployContext, b: Built, *, streams: int = 1):
    threads = (ctx.deploy.latency or ctx.profile.latency).threads
    if is_device_row(ctx, b):
        from .replay import ReplayRuntime

        return ReplayRuntime(ctx.device, ctx.spec.input_shape(), ctx.eval_feeds.input_name, ctx.task)
    if b.backend is Backend.TORCH:
        from ..runtimes.torch import TorchRuntime

        normalize = norm(ctx.meta) if ctx.spec.bake_normalization else None
        wrapper = export_wrapper(ctx.model, normalize=normalize, head=ctx.spec.network_head, task=ctx.spec.task)
        return TorchRuntime(
            wrapper,
            ctx.spec.input_shape(),
            output_name=ctx.spec.output_name,
            output_names=ctx.spec.output_names,
            threads=threads,
            name=b.name,
        )
    from ..runtimes import build_runtime

    return build_runtime(
        str(b.backend),
        b.path,
        device=ctx.profile.device if ctx.plan.can_measure else None,  # None: the backend's host device
        precision=str(b.precision),
        threads=threads,
        streams=streams,
        name=b.name,
    )


def on_target(ctx: DeployContext, b: Built) -> bool:
    """Whether the row runs where it is deployed: host stages always do; OpenVINO rows only with the device."""
    return b.backend is not Backend.OPENVINO or ctx.plan.can_measure


def _no_bar(description: str, total: int):
    from contextlib import nullcontext

    return nullcontext(lambda: None)


def parity_stage(ctx: DeployContext, out: Path, cache: StageCache, built: list[Built], bar=_no_bar) -> dict:
    """``bar``: progress.Stages.bar (a progress bar over the evaluation images)."""
    from contextlib import ExitStack

    from .parity import LedgerStage, ledger

    name = str(target_dir(ctx.profile) / PARITY_IMAGES_FILE)

    key = stage_key(
        "parity",
        {
            "stages": [(b.name, b.parent) for b in built],
            "feeds": ctx.eval_feeds.digests,
            "parity": ctx.profile.parity,
            "fine_tuned_rows": "mIoU only (v1)",  # how a fine-tuned (QAT) row is judged
            "labels": ctx.parity_labels,
            "device": ctx.plan.can_measure,
            "device_result": None if ctx.device is None or ctx.device.result is None else ctx.device.result["files"],
        },
        [ctx.checkpoint] + [b.path for b in built if b.path is not None],
    )
    stage = f"parity@{ctx.profile.key}"  # each target of a run folder has its own ledger
    hit = cache.lookup(stage, key)
    if hit is not None:
        return hit
    with ExitStack() as stack:
        tick = stack.enter_context(bar(f"parity, {len(built)} stages", len(ctx.eval_feeds)))
        stages = [
            LedgerStage(
                b.name,
                str(b.backend),
                str(b.precision),
                stack.enter_context(make_runtime(ctx, b)),
                b.parent,
                None if b.path is None else str(b.path),
            )
            for b in built
        ]
        report = ledger(
            stages,
            ctx.eval_feeds,
            num_classes=ctx.meta.num_classes,
            ignore_index=ctx.meta.ignore_index,
            criteria=lambda p: parity_criteria(ctx, p),
            keep_labels=MASK_IMAGES,  # report.html's masks of the distilled and deployed models
            tick=tick,
            fine_tuned=frozenset({QAT_ROW}),
            task=ctx.task,
            labels=ctx.parity_labels,
        )
    result = {
        "labels": report.scored_against,
        "stages": {s.name: s.as_dict() for s in report.stages},
        "culprit": None if report.culprit is None else report.culprit.name,
        "per_image": save_parity_images(out, report.per_image, report.labels, ctx.eval_feeds.manifest(), name),
    }
    cache.store(stage, key, [out / name], result)
    return result


def parity_criteria(ctx: DeployContext, precision: str):
    """How far a stage of ``precision`` may move from its parent: the target's criteria for segmentation (the task
    the targets' profiles are written for), the task's own (``Task.criteria``) for any other task."""
    if ctx.task.name == "segmentation":
        return ctx.profile.parity[Precision(precision)]
    return ctx.task.criteria[str(Precision(precision))]


def host_postprocess(ctx: DeployContext):
    """What the host does with a runtime's outputs to get the prediction, where the task times it beside the
    network (``Task.times_postprocess``: detection's decoding and NMS); None: the network alone."""
    task = ctx.task
    if not task.times_postprocess:
        return None
    return lambda outputs, feed: task.prediction_of(task.raw_output(outputs, feed))


def latency_stage(ctx: DeployContext, out: Path, cache: StageCache, built: list[Built], bar=_no_bar) -> dict:
    from .bench import benchmark

    spec = ctx.deploy.latency or ctx.profile.latency
    feeds = ctx.eval_feeds.head(8)
    results: dict[str, dict] = {}
    for b in built:
        if not on_target(ctx, b):
            continue  # never time a stand-in device for the target's
        if is_device_row(ctx, b):  # timed on the device, by the same protocol
            results[b.name] = {"latency": ctx.device.result["latency"]}
            continue
        # The rows every target shares (PyTorch, the FP32 ONNX) are timed once per run folder.
        record = f"latency-{b.name}" if b.name in SHARED_ROWS else f"latency-{b.name}@{ctx.profile.key}"
        key = stage_key(
            record,
            {
                "spec": spec,
                "throughput": ctx.deploy.throughput,
                "export": ctx.spec,
                # PyTorch and ONNX Runtime rows always run on the host, whatever the target's device.
                "device": ctx.profile.device if b.backend is Backend.OPENVINO else "host",
            },
            [ctx.checkpoint] if b.path is None else [b.path],
        )
        hit = cache.lookup(record, key)
        if hit is not None:
            results[b.name] = hit
            continue
        with make_runtime(ctx, b) as rt, bar(f"latency {b.name}", spec.runs) as tick:
            entry = {"latency": benchmark(rt, feeds, spec, tick=tick, postprocess=host_postprocess(ctx)).as_dict()}
        if ctx.deploy.throughput and b is built[-1] and ctx.profile.backend is not Backend.TENSORRT:
            with make_runtime(ctx, b, streams=spec.streams) as rt:
                entry["throughput"] = benchmark(rt, feeds, spec, mode="throughput").as_dict()
        cache.store(record, key, [], entry)
        results[b.name] = entry
    return results
