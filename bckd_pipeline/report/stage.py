"""The pipeline's qualitative stage: the label maps report.html shows side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cache import StageCache, stage_key
from ..context import DeployContext, norm
from ..deploy.stage import is_device_row, on_target
from ..configs import CheckpointMeta
from ..distill.checkpoint import load_model
from ..export.wrapper import export_wrapper, named_outputs
from ..model_spec import HEAD_OUTPUTS, INPUT_NAME
from ..tasks import get_task
from ..ledger import Built, target_dir
from .. import parity_images
from . import evidence as ev
from .evidence import display_image


def qualitative_stage(
    ctx: DeployContext, out: Path, cache: StageCache, built: list[Built], summary: dict | None, parity: dict
) -> dict:
    """Label maps of the first ``MASK_IMAGES`` evaluation images from every model this run has (report.html).

    ``run`` has the teacher, the student trained alone, the distilled student and the deployed
    artifact; ``deploy`` has only the last two, and the others are recorded as missing. The distilled
    and deployed maps are the ones the parity ledger kept; only the teacher and the student alone run here.
    """
    teacher = Path(summary["teacher"]["checkpoint"]) if summary else None
    alone = out / "student/student.pt" if summary else None
    deployed = built[-1]
    record = parity["per_image"]
    n = min(parity_images.MASK_IMAGES, len(ctx.eval_feeds))
    key = stage_key(
        "qualitative",
        {"parity": record["sha256"], "deployed": deployed.name, "columns": ev.MASK_COLUMNS},
        [p for p in (teacher, alone) if p is not None],
    )
    stage = f"qualitative@{ctx.profile.key}"
    hit = cache.lookup(stage, key)
    if hit is not None:
        return hit
    feeds = ctx.eval_feeds
    normalized = not ctx.spec.bake_normalization
    images = np.stack([display_image(x, ctx.meta.mean, ctx.meta.std, normalized) for x in feeds.images[:n]])
    labels = feeds.labels[:n]
    truth = list(labels) if labels and isinstance(labels[0], dict) else np.stack(labels)  # targets: one per image

    def torch_predictor(model: nn.Module, meta: CheckpointMeta):
        head = get_task(meta.task).export_heads[0]  # the raw output: logits, or a detector's three tensors
        wrapper = export_wrapper(model, normalize=norm(meta), head=head, task=meta.task).eval()

        def predict(i: int) -> np.ndarray:
            x = images[i].transpose(2, 0, 1)[None].astype(np.float32)
            with torch.inference_mode():
                outputs = named_outputs(wrapper(torch.from_numpy(x)), HEAD_OUTPUTS[head])
            return ctx.task.prediction_of(ctx.task.raw_output(outputs, {INPUT_NAME: x}))[0]

        return predict

    def kept(stage: str):
        maps = parity_images.stage_labels(out, record, stage)
        return lambda i: maps[i]

    predictors: dict = {"distilled": kept(built[0].name), "deployed": kept(deployed.name)}
    reference = "ONNX Runtime, your FP32 ONNX" if ctx.onnx is not None else "PyTorch"
    notes = {"distilled": f"{reference}, {ctx.checkpoint.name}"}
    for column, path in (("teacher", teacher), ("student alone", alone)):
        if path is not None and path.is_file():
            predictors[column] = torch_predictor(*load_model(path))
            notes[column] = f"PyTorch, {path.name}"
        else:
            notes[column] = "not part of `bckd-pipeline deploy` (a checkpoint trained elsewhere)"
    if is_device_row(ctx, deployed):
        where = ctx.device.where
    else:
        where = ctx.profile.device if on_target(ctx, deployed) else "the host CPU plugin (device absent)"
    notes["deployed"] = f"{deployed.name} ({deployed.backend} {deployed.precision}) on {where}"
    name = str(target_dir(ctx.profile) / ev.QUALITATIVE_FILE)
    result = ev.write_qualitative(
        out, images, truth, feeds.names[:n], predictors, notes, ctx.meta.ignore_index, name, task=ctx.task
    )
    cache.store(stage, key, [out / name], result)
    return result
