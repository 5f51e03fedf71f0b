"""Images without labels: a folder of plain images, for INT8 calibration and label-free parity.

``images:PATH`` (or ``folder:PATH`` holding no ``classes.txt``): ``PATH/{split}/*.{png,jpg,jpeg}`` when
that subfolder exists; otherwise the images directly in ``PATH``, sorted by name, split without a seed:
every fifth image (the 1st, 6th, 11th, ...) is ``val`` (held out for parity), the others ``train``
(calibration). Every mask is ``ignore_index`` everywhere: ``labelled`` is False, and deploy scores each
row against the FP32 reference's own predictions instead (docs/deploy.md, "Deploy without labels").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import IGNORE_INDEX, DatasetInfo, SegDataset, read_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
HELD_OUT_EVERY = 5  # a flat folder: image i is held out for parity when i % 5 == 0
UNLABELLED_KINDS = ("images",)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_image_folder(root: Path) -> bool:
    """A folder of plain images (no ``classes.txt``): what ``folder:PATH`` reads without labels."""
    return root.is_dir() and not (root / "classes.txt").exists() and bool(_images_in(root) or _split_dirs(root))


def _split_dirs(root: Path) -> list[Path]:
    return [d for d in (root / "train", root / "val") if d.is_dir() and _images_in(d)]


class UnlabelledImages(SegDataset):
    """The images of one split of a folder (or the image ``files`` of any dataset's split, listed by its kind);
    each sample's mask is ignore everywhere."""

    labelled = False

    def __init__(
        self, root: Path, split: str, transform=None, kind: str = "images", files: list[Path] | None = None
    ) -> None:
        from ..errors import DataError

        root = Path(root)
        if files is not None:
            if not files:
                raise DataError(f"{kind}:{root} has no {split!r} images. Point the spec at a split that holds images.")
        elif (root / split).is_dir():
            files = _images_in(root / split)
        else:
            every = _images_in(root)
            if split not in ("train", "val"):
                raise DataError(
                    f"{kind}:{root} has no {split!r} subfolder; a flat folder of images has the splits train and "
                    f"val (every {HELD_OUT_EVERY}th image held out). Pass --eval-split val / --calib-split train, or "
                    f"make {root / split}."
                )
            held = split == "val"
            files = [p for i, p in enumerate(every) if (i % HELD_OUT_EVERY == 0) == held]
        if not files:
            raise DataError(
                f"{kind}:{root} has no {split!r} images ({', '.join(IMAGE_SUFFIXES)}). A flat folder needs at least "
                f"two images (one held out for parity, one to calibrate on), or make {root}/train and {root}/val."
            )
        # One placeholder class: the model says how many it predicts (pipeline.resolve_model).
        super().__init__(DatasetInfo(kind, str(root), 1, ("unlabelled",)), split, transform)
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return self.files[index].stem

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.files[index])
        return image, np.full(image.shape[:2], IGNORE_INDEX, np.int64)


def is_labelled(dataset) -> bool:
    """Whether a dataset's masks are labels (every kind but a folder of plain images)."""
    return getattr(dataset, "labelled", True)
