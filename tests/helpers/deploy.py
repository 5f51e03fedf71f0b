"""Shared fixtures for the stage 2/3 tests: a tiny real student checkpoint and feeds built from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bckd_pipeline.data.feeds import DatasetFeeds
from bckd_pipeline.data.demo import DemoDataset
from bckd_pipeline.configs import CheckpointMeta
from bckd_pipeline.distill.checkpoint import save_checkpoint
from bckd_pipeline.distill.models import build_model

NUM_CLASSES = 4
HW = (32, 32)


def tiny_checkpoint(folder: Path, *, seed: int = 0) -> Path:
    """tiny-student with 4 classes at 32x32, random weights with a sharpened head (clear argmax)."""
    torch.manual_seed(seed)
    model = build_model("tiny-student", NUM_CLASSES).eval()
    meta = CheckpointMeta(
        model="tiny-student",
        num_classes=NUM_CLASSES,
        class_names=tuple(f"c{i}" for i in range(NUM_CLASSES)),
        input_hw=HW,
        dataset="demo",
    )
    path = folder / "student.pt"
    save_checkpoint(path, model, meta)
    return path


def demo_feeds(split: str = "val", n: int = 6, hw: tuple[int, int] = HW) -> DatasetFeeds:
    """Real preprocessed demo images (0..255, normalisation left to the graph), labels mapped to 4 classes."""
    ds = DemoDataset(split, size=hw, count=n)
    feeds = DatasetFeeds.from_dataset(ds, range(n), hw)
    feeds.labels = [np.where(y == 255, 255, y % NUM_CLASSES) for y in feeds.labels]
    return feeds
