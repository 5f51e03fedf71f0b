"""``qualitative.npz``: the predictions report.html shows side by side, saved once per run.

Predictions of a few evaluation images (``MASK_IMAGES``; as ``Task.as_saved`` gives them, segmentation:
int16 label maps) from every model the run has: ground truth, teacher, student alone, the distilled (e.g.
BCKD) student, and the deployed artifact. ``bckd-pipeline deploy`` has only the last two; the missing ones
are listed, not faked. The parity ledger's per-image evidence, which the CI gate reads, is
``bckd_pipeline/parity_images.py``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..fileio import file_sha256
from ..parity_images import save_npz
from ..tasks import DEFAULT_TASK, Task, get_task

QUALITATIVE_FILE = "qualitative.npz"

# Column order of the qualitative figure; ``image`` and ``ground truth`` always exist.
MASK_COLUMNS = ("teacher", "student alone", "distilled", "deployed")


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
    save_npz(path, arrays)
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
