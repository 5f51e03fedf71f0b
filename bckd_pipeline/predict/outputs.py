"""What ``predict`` writes into its --out folder:

- ``labels/<stem>.png``: the label map, a palette PNG whose pixel values are the class ids (read it back
  with ``np.asarray(Image.open(path))``); the palette is report.html's class colours;
- ``overlays/<stem>.jpg`` (``--save-overlay``): the image with the classes blended over it;
- ``predictions.json``: the model (``Segmenter.info``), the classes and their colours, and per image
  its size, the classes present with their pixel shares, and its latency.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..fileio import atomic_write, write_text
from ..outlock import holds_other_files
from .segmenter import Prediction, Segmenter
from .sources import Item, Source

PREDICTIONS_FORMAT = "bckd-pipeline/predictions-v1"
PREDICTIONS_FILE = "predictions.json"
OVERLAY_ALPHA = 0.5


def prepare_out(out: Path) -> Path:
    """--out: a new or empty folder, or one a previous ``predict`` wrote (its labels/ and overlays/ are replaced)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file. Pass a folder (it is created if missing).")
    if out.is_dir() and holds_other_files(out):
        previous = out / PREDICTIONS_FILE
        if not previous.is_file() or PREDICTIONS_FORMAT not in previous.read_text(errors="replace")[:400]:
            raise ConfigError(
                f"--out {str(out)!r} holds other files and no {PREDICTIONS_FILE} of a previous predict. Pass a new or "
                "empty folder (predict writes labels/, overlays/ and predictions.json there)."
            )
        for sub in ("labels", "overlays"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_label_png(path: Path, labels: np.ndarray, colors: np.ndarray) -> None:
    """uint8 class ids -> a palette ("P") PNG: pixel value = class id, colour = ``colors[id]``."""
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))  # mode L
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(colors)] = colors
    image.putpalette(flat.tobytes())  # an L image with a palette becomes a P image
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))


def write_overlay(path: Path, rgb: np.ndarray, labels: np.ndarray, colors: np.ndarray) -> None:
    blend = rgb.astype(np.float32) * (1 - OVERLAY_ALPHA) + colors[labels].astype(np.float32) * OVERLAY_ALPHA
    image = Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8))
    atomic_write(path, lambda tmp: image.save(tmp, format="JPEG", quality=90))


def class_shares(labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
    """The classes present, largest first, with the share of the image's pixels each covers."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    order = np.argsort(-counts, kind="stable")
    return {
        (class_names[i] if i < len(class_names) else str(i)): round(float(counts[i]) / labels.size, 6)
        for i in order
        if counts[i]
    }


class PredictionsWriter:
    """Writes each item's files as it comes, then predictions.json once at the end."""

    def __init__(self, out: Path, seg: Segmenter, source: Source, *, overlay: bool) -> None:
        self.out, self.seg, self.source, self.overlay = Path(out), seg, source, overlay
        self.colors = seg.palette
        self.entries: list[dict] = []

    def add(self, item: Item, rgb: np.ndarray, prediction: Prediction) -> None:
        labels = prediction.labels
        label_path = self.out / "labels" / f"{item.stem}.png"
        write_label_png(label_path, labels, self.colors)
        entry = {
            "path": item.name,
            **({} if item.frame is None else {"frame": item.frame}),
            "labels": label_path.relative_to(self.out).as_posix(),
            "size": [int(labels.shape[0]), int(labels.shape[1])],
            "classes": class_shares(labels, self.seg.classes),
            "infer_ms": round(prediction.infer_ms, 3),
            "total_ms": round(prediction.total_ms, 3),
        }
        if self.overlay:
            overlay_path = self.out / "overlays" / f"{item.stem}.jpg"
            write_overlay(overlay_path, rgb, labels, self.colors)
            entry["overlay"] = overlay_path.relative_to(self.out).as_posix()
        self.entries.append(entry)

    def finish(self, wall_s: float) -> tuple[Path, dict]:
        """Write predictions.json; returns its path and the summary it holds."""
        n = len(self.entries)
        summary = {
            "images": n,
            "wall_s": round(wall_s, 3),
            "images_per_s": round(n / wall_s, 2) if wall_s > 0 else None,
            "infer_ms_mean": round(sum(e["infer_ms"] for e in self.entries) / n, 3) if n else None,
            "what_is_timed": "infer_ms: the image's share of one infer() call of its batch; total_ms: its share of "
            "resize/letterbox + infer + mapping the labels back (decoding and writing files not included); wall_s: "
            "everything, files included",
        }
        payload = {
            "format": PREDICTIONS_FORMAT,
            "source": {"path": str(self.source.path), "kind": self.source.kind},
            "model": self.seg.info.as_dict(),
            "classes": [
                {"id": i, "name": name, "color": [int(c) for c in self.colors[i]]}
                for i, name in enumerate(self.seg.classes)
            ],
            "summary": summary,
            "images": self.entries,
        }
        path = self.out / PREDICTIONS_FILE
        write_text(path, json.dumps(payload, indent=2) + "\n")
        return path, summary
