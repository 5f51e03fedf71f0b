"""Checkpoints: a model's own parameters plus the metadata needed to rebuild and check it.

Files load with ``torch.load(weights_only=True)``: nothing but tensors and plain values is ever
unpickled. Writes go to a temporary file in the same folder and are renamed into place, so a
crash mid-save never leaves a truncated checkpoint under the real name.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
from torch import nn

from ..configs import CheckpointMeta
from ..errors import CheckpointError
from ..fileio import atomic_write
from .task_models import build_preset, presets_of

FORMAT = "bckd-pipeline/checkpoint-v1"


def save_checkpoint(path: Path, model: nn.Module, meta: CheckpointMeta) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "meta": plain_values(meta), "state_dict": state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def plain_values(obj):
    """Dataclasses, dicts and tuples as dicts and lists: what ``torch.load(weights_only=True)`` reads
    back unchanged, so saved metadata and resume fingerprints compare equal after a round trip."""
    if is_dataclass(obj):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {k: plain_values(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_values(v) for v in obj]
    return obj


def load_payload(path: Path, *, expected_format: str, what: str, missing_hint: str, unreadable_hint: str) -> dict:
    """``torch.load(weights_only=True)`` of one of our files, with the errors a user can act on."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist. {missing_hint}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(
            f"Could not read {what.lower()} {str(path)!r} ({type(exc).__name__}: {str(exc)[:200]}). It is truncated, "
            f"corrupt, or not a bckd-pipeline file. {unreadable_hint}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        raise CheckpointError(
            f"{str(path)!r} is not a bckd-pipeline {what.lower()} (expected format {expected_format!r}). "
            f"{unreadable_hint}"
        )
    return payload


def read_checkpoint(path: Path) -> tuple[CheckpointMeta, dict[str, torch.Tensor]]:
    payload = load_payload(
        path,
        expected_format=FORMAT,
        what="Checkpoint",
        missing_hint="Pass the .pt file written by `bckd-pipeline train-teacher` or `distill` (it is in their "
        "--out folder, e.g. OUT/teacher.pt or OUT/student.pt).",
        unreadable_hint="Re-run the command that produced it. Checkpoints from other tools hold no model name or "
        "class list; load them in Python and save with bckd_pipeline.distill.checkpoint.save_checkpoint.",
    )
    meta = payload["meta"]
    for key in ("class_names", "mean", "std", "input_hw"):
        if meta.get(key) is not None:
            meta[key] = tuple(meta[key])
    if meta.get("class_colors") is not None:
        meta["class_colors"] = tuple(tuple(int(v) for v in c) for c in meta["class_colors"])
    return CheckpointMeta(**meta), payload["state_dict"]


def checkpoint_task(path: Path) -> str | None:
    """The task of a checkpoint's model, read from its metadata with the weights memory-mapped, not loaded; None
    when ``path`` is not a readable checkpoint (``read_checkpoint`` says why). A checkpoint without a task is a
    segmentation model's."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any failure is reported when the checkpoint is loaded
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(payload.get("meta"), dict):
        return None
    return payload["meta"].get("task") or "segmentation"


def load_model(
    path: Path,
    *,
    expect_classes: int | None = None,
    expect_model: str | None = None,
    expect_task: str | None = None,
    flag: str = "Checkpoint",
) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the checkpoint's model and load its weights, checking it is the model expected (``expect_task``:
    a model of that task; ``flag`` names the checkpoint in the task refusal, e.g. ``--teacher``)."""
    meta, state = read_checkpoint(path)
    if expect_task is not None and meta.task != expect_task:
        raise CheckpointError(
            f"{flag} {str(path)!r} holds a {meta.task} model ({meta.model}), and this is a --task {expect_task} run. "
            f"Pass a checkpoint of a {expect_task} model (`bckd-pipeline train-teacher --task {expect_task}`), or "
            f"pass --task {meta.task}."
        )
    if expect_model is not None and meta.model != expect_model:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} holds a {meta.model!r} model, but {expect_model!r} was requested. "
            f"Pass a checkpoint of {expect_model!r}, or drop the model flag to use {meta.model!r}."
        )
    if expect_classes is not None and meta.num_classes != expect_classes:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} predicts {meta.num_classes} classes ({meta.dataset or 'unknown data'}), "
            f"but the dataset has {expect_classes}. Use a checkpoint trained on this dataset's classes, "
            "or pick the --data it was trained on."
        )
    if meta.model not in presets_of(meta.task):
        raise CheckpointError(
            f"Checkpoint {str(path)!r} names {meta.task} model {meta.model!r}, which is not a preset of this "
            "version. Build the model in Python and load the state_dict from read_checkpoint()."
        )
    names = list(meta.class_names) if meta.task == "detection" else None  # a detector keeps its class names
    model = build_preset(meta.model, meta.task, meta.num_classes, pretrained="none", class_names=names)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not fit a {meta.model!r} with {meta.num_classes} classes: "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} mis-shaped tensors "
            f"(e.g. {(missing + unexpected + mismatched)[:3]}). It was written for another architecture; "
            "re-create it with this version."
        )
    model.load_state_dict(state)
    return model.eval(), meta
