"""Stage 3 in the pipeline: the calibration set, then every artifact the target adds (INT8, IRs, Q/DQ)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..cache import StageCache, file_sha256, stage_key
from ..context import DeployContext, feed_norm
from ..data import build_images, build_task_dataset
from ..errors import DataError
from ..fileio import write_json
from ..ledger import Built, target_artifacts
from ..progress import library_bars
from ..targets import Backend, Precision
from ..targets.profiles import CalibrationSpec
from ..data.feeds import DatasetFeeds, check_no_overlap, pick_indices


@dataclass(frozen=True)
class Calibration:
    feeds: DatasetFeeds
    manifest_path: Path
    sha256: str
    spec: CalibrationSpec
    # Accuracy-controlled INT8 is judged on other training images: tuning it on the evaluation
    # split would make the reported INT8 mIoU optimistic.
    validation: DatasetFeeds | None = None


def calibration_stage(ctx: DeployContext, out: Path, cache: StageCache) -> Calibration | None:
    spec = ctx.plan.calibration
    if spec is None:
        return None
    d = ctx.data
    source = spec.data or d.spec  # --calib-data, else --data
    # Calibration reads the images alone, of any data kind; accuracy control scores the task's metric on the
    # labels of the images left over, so it reads the split as the task does.
    read = build_images if spec.max_miou_drop is None else build_task_dataset
    train_set = read(
        source,
        spec.split,
        ctx.task.name,
        skip_bad_annotations=d.skip_bad_annotations,
        demo_size=d.demo_size,
        demo_count=d.demo_count,
    )
    indices = pick_indices(spec.size, len(train_set), spec.seed)
    name = ctx.eval_feeds.input_name
    boxes = ctx.task.name == "detection"  # a detector's images preprocessed as its evaluation images are
    feeds = DatasetFeeds.from_dataset(
        train_set, indices, ctx.spec.input_hw, normalization=feed_norm(ctx.meta, ctx.spec), input_name=name, boxes=boxes
    )
    check_no_overlap(feeds, ctx.eval_digests)
    feeds = feeds.tiled(ctx.spec.batch)  # a static --batch N: each image repeated N times
    validation = None
    if spec.max_miou_drop is not None:
        rest = sorted(set(range(len(train_set))) - set(indices))
        if not rest:
            raise DataError(
                f"--nncf-max-miou-drop needs training images besides the {len(indices)} calibration images to judge "
                "the "
                f"drop on, and split {spec.split!r} has none left. Lower --calib-size."
            )
        chosen = [rest[i] for i in pick_indices(min(spec.size, len(rest)), len(rest), spec.seed + 1)]
        validation = DatasetFeeds.from_dataset(
            train_set, chosen, ctx.spec.input_hw, normalization=feed_norm(ctx.meta, ctx.spec), input_name=name
        )
        check_no_overlap(validation, ctx.eval_digests)
        validation = validation.tiled(ctx.spec.batch)
    path = out / "deploy/calibration.json"
    write_json(
        path,
        {
            "format": "bckd-pipeline/calibration-v1",
            "data": source,
            "labels": "not read (images only)",
            "split": spec.split,
            "size": len(feeds),
            "requested_size": spec.size,
            "seed": spec.seed,
            "method": spec.method,
            "input_hw": list(ctx.spec.input_hw),
            "preprocessing": "resize bilinear to input_hw; "
            + ("raw 0..255 (normalisation in the graph)" if ctx.spec.bake_normalization else "normalised"),
            "evaluation_split_checked": d.eval_split,
            "images": feeds.manifest(),
            "accuracy_control_images": None if validation is None else validation.manifest(),
        },
    )
    return Calibration(feeds, path, file_sha256(path), spec, validation)


def compile_stage(
    ctx: DeployContext,
    out: Path,
    cache: StageCache,
    onnx_path: Path,
    simplified: Path,
    calib: Calibration | None,
    bar=None,  # progress.Stages.bar: a progress bar over the calibration images
) -> list[Built]:
    # `deploy --onnx`: no PyTorch model; the user's FP32 ONNX is the reference row.
    reference = [] if ctx.onnx is not None else [Built("pytorch", Backend.TORCH, Precision.FP32, None, None)]
    built = [
        *reference,
        Built("onnx", Backend.ONNXRUNTIME, Precision.FP32, onnx_path, "pytorch" if reference else None),
        Built("onnx-simplified", Backend.ONNXRUNTIME, Precision.FP32, simplified, "onnx"),
    ]
    paths = {b.name: b.path for b in built}
    for b in target_artifacts(ctx.profile):
        path, parent = out / b.path, paths[b.parent]
        settings = _build_one(ctx, cache, b, path, parent, calib, simplified, bar)
        built.append(replace(b, path=path, settings=settings))
        paths[b.name] = path
    return built


def _qdq_placement() -> str:
    from .tensorrt import QDQ_PLACEMENT

    return QDQ_PLACEMENT


def _build_one(
    ctx: DeployContext, cache: StageCache, b: Built, path: Path, parent: Path, calib, simplified: Path, bar=None
) -> dict:
    options = {
        "profile": ctx.profile.name,
        "device": ctx.profile.device,
        "trt_quantizer": ctx.deploy.trt_quantizer if b.name == "onnx-qdq" else None,
        "qdq_placement": _qdq_placement() if b.name == "onnx-qdq" else None,
        "calibration": calib.spec if calib else None,
        "calibration_sha256": calib.sha256 if calib else None,
    }
    record = f"{b.name}@{ctx.profile.key}"  # two targets may build a row of the same name (openvino-cpu, -gpu)
    key = stage_key(record, options, [parent])
    hit = cache.lookup(record, key)
    if hit is not None:
        return hit["settings"]
    if b.precision is Precision.INT8 and calib is not None and bar is not None:
        from ..progress import Ticking

        with bar(f"calibrate {b.name}", len(calib.feeds)) as tick:
            ticking = replace(calib, feeds=Ticking(calib.feeds, tick))
            settings = _make(ctx, b, path, parent, ticking, simplified)
    else:
        settings = _make(ctx, b, path, parent, calib, simplified)
    outputs = [path] + ([path.with_suffix(".bin")] if b.backend is Backend.OPENVINO else [])
    cache.store(record, key, outputs, {"settings": settings})
    return settings


def _make(ctx: DeployContext, b: Built, path: Path, parent: Path, calib, simplified: Path) -> dict:
    """Build one artifact; its settings for the ledger and the manifest."""
    if b.name == "onnx-qdq":
        from .tensorrt import quantize_for_tensorrt

        _, settings = quantize_for_tensorrt(
            parent,
            path,
            calib.feeds,
            calib.spec,
            quantizer=ctx.deploy.trt_quantizer,
            float_tail=ctx.task.int8_float_tail,
        )
    elif b.backend is Backend.ONNXRUNTIME and b.precision is Precision.FP16:
        from .onnxruntime import to_fp16

        _, settings = to_fp16(parent, path)
    elif b.backend is Backend.ONNXRUNTIME:
        from .onnxruntime import quantize_ort

        _, settings = quantize_ort(parent, path, calib.feeds, calib.spec, float_tail=ctx.task.int8_float_tail)
    else:
        from . import openvino as ovq

        if b.precision is Precision.INT8:
            with library_bars(ctx.deploy.progress):  # NNCF's bars
                _, settings = _quantize_ir(ovq, ctx, b, path, parent, calib, simplified)
        else:
            ovq.to_ir(parent, path, fp16=b.precision is Precision.FP16)
            settings = {"tool": "openvino.convert_model", "compress_to_fp16": b.precision is Precision.FP16}
    return settings


def _quantize_ir(ovq, ctx: DeployContext, b: Built, path: Path, parent: Path, calib, simplified: Path):
    return ovq.quantize_ir(
        parent,
        path,
        calib.feeds,
        calib.spec,
        target_device=ctx.profile.device,
        validation=calib.validation,
        num_classes=ctx.meta.num_classes,
        ignore_index=ctx.meta.ignore_index,
        source_onnx=simplified,
        task=ctx.task,
    )
