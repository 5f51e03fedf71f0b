"""What ``predict`` writes into its --out folder:

- each image's files, written by the run's task (``Task.write_prediction``; segmentation:
  ``labels/<stem>.png``, a palette PNG of the class ids, see tasks/segmentation_draw.py);
- with ``--save-overlay``, the prediction drawn over the image (``Task.write_overlay``; segmentation:
  ``overlays/<stem>.jpg``);
- ``predictions.json``: the model (``Segmenter.info``, ``Detector.info``), the classes and their colours, how
  images are decoded, and per image its ``image_id`` (its index in ``images``), source path, the fields the
  task gives (segmentation: the label PNG, the size, the classes present with their pixel shares; detection:
  ``detections``, COCO-style results in the image's pixels, and their ``count``), its latency, the overlay,
  and the EXIF orientation applied to it or the mode it was stored in where those are not plain; ``skipped``:
  each input that could not be read, with the reason. It is written when predict starts (empty,
  ``complete: false``), so a killed predict leaves a folder the next one accepts, and again at the end, or
  where predict stops (``complete: false``, ``stopped_at``: the input it stopped at), listing what was done.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


from ..errors import ConfigError
from ..fileio import write_text
from ..imagefile import Decoded
from ..outlock import holds_other_files
from .predictor import Predictor
from .sources import Item, Source

PREDICTIONS_FORMAT = "bckd-pipeline/predictions-v1"
PREDICTIONS_FILE = "predictions.json"
DECODING = (
    "images are decoded as displayed: EXIF orientation applied (exif_orientation: the tag's value, where not 1); "
    "16-bit grey scaled to 8 bit (round(v / 257)); CMYK converted by PIL; alpha and palette transparency dropped, "
    "colour kept; stored_mode: the file's PIL mode, where not RGB"
)


def prepare_out(out: Path, folders: tuple[str, ...]) -> Path:
    """--out: a new or empty folder, or one a previous ``predict`` wrote (its ``folders``, the task's
    ``output_folders``, are replaced)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file. Pass a folder (it is created if missing).")
    if out.is_dir() and holds_other_files(out):
        previous = out / PREDICTIONS_FILE
        if not previous.is_file() or PREDICTIONS_FORMAT not in previous.read_text(errors="replace")[:400]:
            written = ", ".join(f"{f}/" for f in folders)
            raise ConfigError(
                f"--out {str(out)!r} holds other files and no {PREDICTIONS_FILE} of a previous predict. Pass a new or "
                f"empty folder (predict writes {written} and {PREDICTIONS_FILE} there)."
            )
        for sub in folders:
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


class PredictionsWriter:
    """Writes each item's files as it comes, then predictions.json once at the end."""

    def __init__(self, out: Path, seg: Predictor, source: Source, *, overlay: bool) -> None:
        self.out, self.seg, self.source, self.overlay = Path(out), seg, source, overlay
        self.colors, self.task = seg.palette, seg.task
        self.entries: list[dict] = []
        self.skipped: list[dict] = []
        self.finish(0.0, complete=False)  # a marker a rerun recognises, however this one ends

    def add(self, item: Item, decoded: Decoded, prediction) -> None:
        """``prediction``: a Segmenter's ``Prediction`` or a Detector's ``DetectionResult`` (its ``output`` is what
        the task writes: a label map, or boxes in the image's pixels)."""
        found, stem, classes = prediction.output, item.stem, self.seg.classes
        fields = self.task.write_prediction(found, self.out, stem, colors=self.colors, classes=classes)
        entry = {
            "image_id": len(self.entries),
            "path": item.name,
            **({} if item.frame is None else {"frame": item.frame}),
            **fields,
            **({} if decoded.orientation == 1 else {"exif_orientation": decoded.orientation}),
            **({} if decoded.mode == "RGB" else {"stored_mode": decoded.mode}),
            "infer_ms": round(prediction.infer_ms, 3),
            "total_ms": round(prediction.total_ms, 3),
        }
        if self.overlay:
            entry |= self.task.write_overlay(found, decoded.rgb, self.out, stem, colors=self.colors, classes=classes)
        self.entries.append(entry)

    def skip(self, item: Item, reason: str) -> None:
        """An input that could not be read: listed, with why."""
        self.skipped.append({"path": item.name, "reason": reason})

    def finish(self, wall_s: float, *, complete: bool = True, stopped_at: Item | None = None) -> tuple[Path, dict]:
        """Write predictions.json; returns its path and the summary it holds."""
        n = len(self.entries)
        summary = {
            "images": n,
            "skipped": len(self.skipped),
            "complete": complete,
            **({} if stopped_at is None else {"stopped_at": stopped_at.name}),
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
            "decoding": DECODING,
            "summary": summary,
            "images": self.entries,
            "skipped": self.skipped,
        }
        path = self.out / PREDICTIONS_FILE
        write_text(path, json.dumps(payload, indent=2) + "\n")
        return path, summary
