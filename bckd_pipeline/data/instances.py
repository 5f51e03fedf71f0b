"""The detection target: the objects of one image, their checks, and batching.

An image's objects are an :class:`Instances`: ``boxes`` float32 K x 4 ``(x0, y0, x1, y1)`` in pixels of the
image as it is (after any transform), ``labels`` int64 K (0-based class ids), ``iscrowd`` bool K and,
where the data has them, ``masks`` uint8 K x H x W (1 = the object's pixels).

Box coordinates are pixel edges, as COCO and torchvision use them: pixel column ``j`` spans ``[j, j + 1)``,
so the tight box of an object whose pixels cover columns ``a..b`` and rows ``c..d`` is ``(a, c, b + 1, d + 1)``
and a box covering a W x H image is ``(0, 0, W, H)``.

``iscrowd`` objects are ignored by evaluation, as COCO's evaluation does: a detection matched to one is
neither a true nor a false positive, and missing one costs nothing. Loaders mark VOC's ``difficult`` objects
so, and the demo and the CamVid proxy mark slivers and likely merges so.

numpy only at import; torch appears in :meth:`Instances.to_target` and :func:`collate_detection`, the
DataLoader's side.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bckd_pipeline.data.base import DatasetInfo, Normalization, read_rgb
from bckd_pipeline.errors import DataError

SKIP_FLAG = "--skip-bad-annotations"


@dataclass(frozen=True)
class Instances:
    """The objects of one image (see the module docstring for the conventions)."""

    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        labels = np.asarray(self.labels, np.int64).reshape(-1)
        iscrowd = np.asarray(self.iscrowd, bool).reshape(-1)
        k = len(boxes)
        if len(labels) != k or len(iscrowd) != k:
            raise ValueError(f"Instances: {k} boxes, {len(labels)} labels and {len(iscrowd)} iscrowd flags")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "iscrowd", iscrowd)
        if self.masks is not None:
            masks = np.asarray(self.masks, np.uint8)
            if masks.ndim != 3 or len(masks) != k:
                raise ValueError(f"Instances: masks of shape {masks.shape} for {k} objects, expected K x H x W")
            object.__setattr__(self, "masks", masks)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls, mask_size: tuple[int, int] | None = None) -> Instances:
        """No objects; with ``mask_size`` (H, W) an empty 0 x H x W mask stack."""
        masks = None if mask_size is None else np.zeros((0, *mask_size), np.uint8)
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), masks)

    def select(self, keep: np.ndarray) -> Instances:
        """The objects where ``keep`` (a boolean or index array) selects them."""
        masks = None if self.masks is None else self.masks[keep]
        return Instances(self.boxes[keep], self.labels[keep], self.iscrowd[keep], masks)

    def to_target(self) -> dict:
        """torch tensors under torchvision's detection target keys, plus ``iscrowd`` (and ``masks``)."""
        import torch

        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(self.boxes)),
            "labels": torch.from_numpy(np.ascontiguousarray(self.labels)),
            "iscrowd": torch.from_numpy(np.ascontiguousarray(self.iscrowd)),
        }
        if self.masks is not None:
            target["masks"] = torch.from_numpy(np.ascontiguousarray(self.masks))
        return target


def box_of_mask(mask: np.ndarray) -> np.ndarray:
    """The tight box ``(x0, y0, x1, y1)`` (pixel edges) of a non-empty H x W mask, float32."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        raise ValueError("box_of_mask: the mask is empty")
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def check_instances(info: DatasetInfo, inst: Instances, size: tuple[int, int], *, name: str) -> None:
    """Raise :class:`DataError` unless ``inst`` fits an image of ``size`` (H, W) with ``info``'s classes.

    Loaders check every annotation as they read it (with the file and line); this is the contract
    a dataset's :meth:`DetectionDataset.load` guarantees, checked once more on what it returns.
    """
    h, w = size
    b = inst.boxes
    bad = ~np.isfinite(b).all(axis=1) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    bad |= (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w) | (b[:, 3] > h)
    bad |= (inst.labels < 0) | (inst.labels >= info.num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{info.kind}: image {name!r} ({w}x{h}) has object {i} with box {b[i].tolist()} and class "
            f"{int(inst.labels[i])}; boxes must lie inside the image with positive area and classes in "
            f"0..{info.num_classes - 1}. Fix that annotation."
        )
    if inst.masks is not None and inst.masks.shape[1:] != (h, w):
        raise DataError(f"{info.kind}: image {name!r} is {h}x{w} but its masks are {inst.masks.shape[1:]}.")


class BadAnnotations:
    """What a loader does with an annotation it cannot use: a :class:`DataError` naming it, or (with
    ``skip``) drop it and count it, the count printed on stderr once the split is read."""

    def __init__(self, kind: str, *, skip: bool) -> None:
        self.kind = kind
        self.skip = skip
        self.annotations = 0
        self.images = 0
        self.first = ""

    def bad(self, where: str, what: str, fix: str, *, image: bool = False) -> None:
        """An unusable annotation (or, with ``image``, a whole image) at ``where`` (file, line or id)."""
        message = f"{self.kind}: {where}: {what}."
        if not self.skip:
            raise DataError(
                f"{message} {fix} Or pass {SKIP_FLAG} to leave out every such "
                f"{'image' if image else 'annotation'} (the count is printed)."
            )
        if image:
            self.images += 1
        else:
            self.annotations += 1
        self.first = self.first or message

    def report(self, split: str) -> None:
        """One stderr line with the counts, when anything was skipped."""
        if self.annotations or self.images:
            print(
                f"{self.kind}: split {split!r}: skipped {self.annotations} bad annotations and {self.images} "
                f"images ({SKIP_FLAG}); the first: {self.first}",
                file=sys.stderr,
            )


def checked_box(box: Sequence[float], size: tuple[int, int], issues: BadAnnotations, where: str) -> np.ndarray | None:
    """``box`` (x0, y0, x1, y1, pixels) clipped to an image of ``size`` (H, W), or None when it is bad.

    A box that overlaps the image but extends past its border is clipped to it, as annotation tools
    and Ultralytics do with boxes a few pixels over the edge. Non-finite values, zero or negative
    width or height, and boxes entirely outside the image are bad: a :class:`DataError` through
    ``issues``, or skipped and counted.
    """
    h, w = size
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite((x0, y0, x1, y1))):
        issues.bad(where, f"box {[x0, y0, x1, y1]} has a non-finite coordinate", "Write numbers.")
        return None
    if x1 <= x0 or y1 <= y0:
        issues.bad(
            where,
            f"box (x0, y0, x1, y1) = {[x0, y0, x1, y1]} has zero or negative width or height",
            "Remove the annotation or give the object's extent.",
        )
        return None
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        issues.bad(
            where,
            f"box (x0, y0, x1, y1) = {[x0, y0, x1, y1]} lies entirely outside the {w}x{h} image",
            "Check the coordinate convention and the image the annotation belongs to.",
        )
        return None
    return np.array([max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))], np.float32)


@dataclass(frozen=True)
class DetRecord:
    """One image on disk and its objects, read and checked when the split is built. ``size`` (H, W) is
    what the annotation says the image is; loading checks the decoded image against it."""

    image: Path
    size: tuple[int, int]
    instances: Instances


DetTransform = Callable[[np.ndarray, Instances], tuple]


def default_detection_transform(image: np.ndarray, inst: Instances) -> tuple:
    """Normalise (ImageNet statistics) and convert: (float32 3 x H x W tensor, target dict)."""
    import torch

    chw = np.ascontiguousarray(Normalization()(image).transpose(2, 0, 1))
    return torch.from_numpy(chw), inst.to_target()


@dataclass
class DetectionDataset:
    """A split of a detection dataset: validated numpy samples via :meth:`load`, tensors via indexing.

    Indexing applies ``transform`` (image, :class:`Instances`) -> (image tensor, target dict); batch with
    :func:`collate_detection`. A map-style dataset: torch's DataLoader takes any object with
    ``__len__`` and ``__getitem__``.
    """

    info: DatasetInfo
    split: str
    transform: DetTransform | None = field(default=None, kw_only=True)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, Instances]:
        """Validated sample ``index``: uint8 H x W x 3 RGB image and its :class:`Instances`."""
        raise NotImplementedError

    def name(self, index: int) -> str:
        """A stable id of sample ``index`` (the file stem for datasets on disk)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple:
        image, inst = self.load(index)
        return (self.transform or default_detection_transform)(image, inst)


@dataclass
class FileDetDataset(DetectionDataset):
    """Images on disk with objects read up front (:class:`DetRecord`)."""

    records: list[DetRecord] = field(default_factory=list, kw_only=True)

    def __len__(self) -> int:
        return len(self.records)

    def name(self, index: int) -> str:
        return self.records[index].image.stem

    def load(self, index: int) -> tuple[np.ndarray, Instances]:
        record = self.records[index]
        try:
            image = read_rgb(record.image)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{self.info.kind}: could not decode image {str(record.image)!r} ({type(exc).__name__}: "
                f"{str(exc)[:120]}). Replace the file, or remove the image from the split."
            ) from None
        if image.shape[:2] != record.size:
            h, w = record.size
            raise DataError(
                f"{self.info.kind}: image {str(record.image)!r} is {image.shape[1]}x{image.shape[0]} (W x H) but "
                f"its annotation says {w}x{h}. Fix the annotation's width/height, or the image."
            )
        check_instances(self.info, record.instances, record.size, name=str(record.image))
        return image, record.instances


def collate_detection(batch: Sequence[tuple]) -> tuple:
    """``[(image 3 x H x W, target), ...]`` -> (N x 3 x H x W tensor, list of N targets).

    Targets keep their own number of objects; images must share one size (resize or letterbox first).
    """
    import torch

    images, targets = zip(*batch, strict=True)
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) > 1:
        raise DataError(
            f"A detection batch holds images of sizes {sorted(sizes)}; batching needs one size. "
            "Give a resize (or letterbox) size for the data."
        )
    return torch.stack(list(images)), list(targets)
