"""The evidence a CI gate and ``report.html`` need beside ``report.json``, saved once per run.

- ``OUT/parity_images.npz``: for every ledger stage, the task's evidence per evaluation image
  (segmentation: one confusion matrix, ``int32 [images, classes, classes]``, ``[target, pred]``), and the
  predictions of the first ``MASK_IMAGES`` images as the task saves them (``Task.as_saved``; the ledger
  already ran every stage on them). Summed over images the evidence gives the report's dataset-level
  metric; resampled over images it gives the bootstrap interval of its delta (gate/gate.py).
  ``report.json["parity_images"]`` names the file with its sha256 and lists the images (name and pixel
  sha256), so a baseline report can be paired with this one image by image.
- ``OUT/qualitative.npz``: predictions of a few evaluation images (``MASK_IMAGES``; as ``Task.as_saved``
  gives them, segmentation: int16 label maps) from every model the run has: ground truth, teacher,
  student alone, the distilled (e.g. BCKD) student, and the deployed artifact. ``bckd-pipeline deploy``
  has only the last two; the missing ones are listed, not faked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError
from ..fileio import atomic_write, file_sha256
from ..tasks import DEFAULT_TASK, Task, get_task

if TYPE_CHECKING:  # the CI gate reads evidence without the pipeline's torch-heavy modules
    from ..calibrate.data import DatasetFeeds
    from ..deploy.parity import LedgerReport

PARITY_IMAGES_FILE = "parity_images.npz"
PARITY_IMAGES_FORMAT = "bckd-pipeline/parity-images-v1"
QUALITATIVE_FILE = "qualitative.npz"
MASK_IMAGES = 4  # evaluation images in the side-by-side figure

# Column order of the qualitative figure; ``image`` and ``ground truth`` always exist.
MASK_COLUMNS = ("teacher", "student alone", "distilled", "deployed")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a temp name
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)


def save_parity_images(out: Path, ledger: LedgerReport, feeds: DatasetFeeds, name: str = PARITY_IMAGES_FILE) -> dict:
    """Write the ledger's per-image evidence and kept predictions; return the record for report.json.
    ``name``: the file's path in ``out`` (each target of a run folder keeps its own, in its folder)."""
    path = Path(out) / name
    stages = list(ledger.per_image)
    arrays = {f"confusion/{s}": ledger.per_image[s] for s in stages}
    arrays |= {f"labels/{s}": maps for s, maps in ledger.labels.items()}
    _save_npz(path, arrays)
    return {
        "format": PARITY_IMAGES_FORMAT,
        "path": str(name),
        "sha256": file_sha256(path),
        "stages": stages,
        "images": feeds.manifest(),
    }


def stage_labels(out: Path, record: dict, stage: str) -> np.ndarray:
    """The predictions the parity ledger kept for ``stage`` (the first ``MASK_IMAGES`` evaluation images)."""
    with np.load(Path(out) / record["path"]) as z:
        return z[f"labels/{stage}"]


@dataclass(frozen=True)
class ParityImages:
    """Per-image confusion matrices of one report, checked against the report's reference."""

    names: tuple[str, ...]
    digests: tuple[str, ...]
    confusion: dict[str, np.ndarray]  # stage -> int32 [images, classes, classes]


def load_parity_images(report: dict, report_path: Path) -> ParityImages | None:
    """The report's per-image confusions, or None for a report that has no ``parity_images``.

    Raises DataError when the report names the file but it is missing or altered: a gate must not
    fall back silently to a weaker check because a file was not copied with the report.
    """
    ref = report.get("parity_images")
    if not ref:
        return None
    path = Path(report_path).parent / ref["path"]
    if not path.is_file():
        raise DataError(
            f"{report_path} names {ref['path']} (per-image confusion matrices) but {str(path)!r} does not exist. "
            f"Keep {ref['path']} next to report.json when you copy or archive a report."
        )
    if file_sha256(path) != ref["sha256"]:
        raise DataError(
            f"{str(path)!r} does not match the sha256 recorded in {report_path} ({ref['sha256'][:12]}...): it belongs "
            "to another run or was altered. Copy the report and its parity_images.npz from the same run."
        )
    with np.load(path) as z:
        confusion = {s: z[f"confusion/{s}"] for s in ref["stages"]}
    names = tuple(i["name"] for i in ref["images"])
    digests = tuple(i["sha256"] for i in ref["images"])
    return ParityImages(names, digests, confusion)


# ---------------------------------------------------------------------------------------------
# qualitative masks
# ---------------------------------------------------------------------------------------------
Predictor = Callable[[int], np.ndarray]  # image index -> its prediction (segmentation: an H x W label map)


def display_image(x: np.ndarray, mean: Sequence[float], std: Sequence[float], normalized: bool) -> np.ndarray:
    """A 1 x 3 x H x W feed back to H x W x 3 uint8 RGB (undoing normalisation when the feed carries it)."""
    img = x[0].transpose(1, 2, 0).astype(np.float64)
    if normalized:
        img = (img * np.asarray(std) + np.asarray(mean)) * 255.0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_qualitative(
    out: Path,
    images: np.ndarray,
    ground_truth: np.ndarray,
    names: Sequence[str],
    predictors: dict[str, Predictor | None],
    notes: dict[str, str],
    ignore_index: int,
    name: str = QUALITATIVE_FILE,
    task: Task | None = None,
) -> dict:
    """Run every available predictor on the images and save the predictions; return the summary for report.json.

    ``predictors`` maps a column of ``MASK_COLUMNS`` to a predictor, or to None when the run does not
    have that model (``notes`` says why); missing columns are recorded as missing. The predictions and
    the ground truth are saved as ``task.as_saved`` gives them; ``task``: the run's (default: segmentation).
    """
    task = task if task is not None else get_task(DEFAULT_TASK)
    path = Path(out) / name
    arrays = {"image": images, "ground_truth": task.as_saved(ground_truth)}
    present, missing = [], {}
    for column in MASK_COLUMNS:
        predict = predictors.get(column)
        if predict is None:
            missing[column] = notes.get(column, "not produced by this command")
            continue
        arrays[f"pred/{column}"] = np.stack([task.as_saved(predict(i)) for i in range(len(images))])
        present.append(column)
    _save_npz(path, arrays)
    return {
        "path": str(name),
        "sha256": file_sha256(path),
        "images": list(names),
        "ignore_index": int(ignore_index),
        "columns": present,
        "missing": missing,
        "notes": {k: v for k, v in notes.items() if k in present},
    }


def load_qualitative(out: Path, ref: dict | None) -> dict[str, np.ndarray] | None:
    """The saved predictions, or None when the run has none or the file no longer matches its record."""
    if not ref:
        return None
    path = Path(out) / ref["path"]
    if not path.is_file() or file_sha256(path) != ref["sha256"]:
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
