"""``parity_images.npz``: the parity ledger's evidence per evaluation image, written by the parity stage.

For every ledger stage, the task's evidence per evaluation image (segmentation: one confusion matrix,
``int32 [images, classes, classes]``, ``[target, pred]``), and the predictions of the first ``MASK_IMAGES``
images as the task saves them (``Task.as_saved``; the ledger already ran every stage on them). Summed over
images the evidence gives the report's dataset-level metric; resampled over images it gives the bootstrap
interval of its delta (gate/gate.py). ``report.json["parity_images"]`` names the file with its sha256 and
lists the images (name and pixel sha256), so a baseline report can be paired with this one image by image.
The evidence is stored as ``evidence/<stage>``, the predictions as ``labels/<stage>`` (format v2; a format v1 file
holds segmentation's evidence as ``confusion/<stage>`` or ``evidence/<stage>``, and is read too). The parity stage
writes it; the report and the CI gate read it (numpy only: the gate stays light).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .fileio import atomic_write, file_sha256

PARITY_IMAGES_FILE = "parity_images.npz"
PARITY_IMAGES_FORMAT = "bckd-pipeline/parity-images-v2"  # the format written
PARITY_IMAGES_FORMAT_V1 = "bckd-pipeline/parity-images-v1"
READABLE_FORMATS = (PARITY_IMAGES_FORMAT, PARITY_IMAGES_FORMAT_V1)
EVIDENCE_KEY = "evidence"  # "evidence/<stage>": the task's per-image evidence
V1_EVIDENCE_KEY = "confusion"  # format v1: "confusion/<stage>", segmentation's confusion matrices
MASK_IMAGES = 4  # evaluation images whose label maps are kept (report.html's side-by-side figure)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a temp name
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)


def save_parity_images(
    out: Path,
    per_image: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    images: list[dict[str, str]],
    name: str = PARITY_IMAGES_FILE,
) -> dict:
    """Write the ledger's per-image evidence (stage -> per-image arrays) and kept predictions (stage -> maps);
    return the record for report.json. ``images``: each evaluation image's name and pixel sha256.
    ``name``: the file's path in ``out`` (each target of a run folder keeps its own, in its folder)."""
    path = Path(out) / name
    stages = list(per_image)
    arrays = {f"{EVIDENCE_KEY}/{s}": per_image[s] for s in stages}
    arrays |= {f"labels/{s}": maps for s, maps in labels.items()}
    save_npz(path, arrays)
    return {
        "format": PARITY_IMAGES_FORMAT,
        "path": str(name),
        "sha256": file_sha256(path),
        "stages": stages,
        "images": images,
    }


def stage_labels(out: Path, record: dict, stage: str) -> np.ndarray:
    """The predictions the parity ledger kept for ``stage`` (the first ``MASK_IMAGES`` evaluation images)."""
    with np.load(Path(out) / record["path"]) as z:
        return z[f"labels/{stage}"]


@dataclass(frozen=True)
class ParityImages:
    """The per-image evidence of one report (segmentation: confusion matrices), checked against the report."""

    names: tuple[str, ...]
    digests: tuple[str, ...]
    evidence: dict[str, np.ndarray]  # stage -> the task's evidence per image (segmentation: [images, C, C])


def load_parity_images(report: dict, report_path: Path) -> ParityImages | None:
    """The report's per-image evidence, or None for a report that has no ``parity_images``.

    Raises DataError when the report names the file but it is missing or altered: a gate must not
    fall back silently to a weaker check because a file was not copied with the report.
    """
    ref = report.get("parity_images")
    if not ref:
        return None
    path = Path(report_path).parent / ref["path"]
    if not path.is_file():
        raise DataError(
            f"{report_path} names {ref['path']} (the per-image evidence) but {str(path)!r} does not exist. "
            f"Keep {ref['path']} next to report.json when you copy or archive a report."
        )
    if file_sha256(path) != ref["sha256"]:
        raise DataError(
            f"{str(path)!r} does not match the sha256 recorded in {report_path} ({ref['sha256'][:12]}...): it belongs "
            "to another run or was altered. Copy the report and its parity_images.npz from the same run."
        )
    fmt = ref.get("format")
    if fmt not in READABLE_FORMATS:
        raise DataError(
            f"{report_path} records its per-image evidence in format {fmt!r}; this version reads "
            f"{', '.join(READABLE_FORMATS)}. Read the report with the bckd-pipeline version that wrote it, or rerun it."
        )
    with np.load(path) as z:
        v1_key = fmt == PARITY_IMAGES_FORMAT_V1 and not any(k.startswith(f"{EVIDENCE_KEY}/") for k in z.files)
        prefix = V1_EVIDENCE_KEY if v1_key else EVIDENCE_KEY
        evidence = {s: z[f"{prefix}/{s}"] for s in ref["stages"]}
    names = tuple(i["name"] for i in ref["images"])
    digests = tuple(i["sha256"] for i in ref["images"])
    return ParityImages(names, digests, evidence)
