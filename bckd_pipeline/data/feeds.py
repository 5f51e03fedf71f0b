"""One data-feed contract for calibration, parity and benchmarking (Polygraphy's data loader, NNCF's Dataset).

A ``FeedSource`` is any iterable of ``FeedDict`` (input name -> numpy array). ``DatasetFeeds`` builds
one from a dataset split with the same preprocessing as evaluation (``resize_pair``: bilinear image,
nearest-neighbour mask) and, where normalisation is not baked into the graph, the same
``Normalization``. Its ``pairs()`` also yields the labels, for the parity ledger: a label map for a
segmentation dataset; for a detection dataset (``data/instances.py::DetectionDataset``) the target dict
(``boxes`` float32 [K, 4] xyxy in the input's pixels, ``labels`` int64 [K], ``iscrowd`` bool [K]) of the
image resized to the input, as ``DetEvalTransform`` resizes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ..fileio import array_sha256
from .base import Normalization, SegDataset
from .transforms import resize_pair

FeedDict = Mapping[str, np.ndarray]
FeedSource = Iterable[FeedDict]


def detection_target(boxes: np.ndarray, labels: np.ndarray, iscrowd: np.ndarray) -> dict[str, np.ndarray]:
    """A target dict of numpy arrays (what the detection task scores against)."""
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int64).reshape(-1),
        "iscrowd": np.asarray(iscrowd, bool).reshape(-1),
    }


def preprocess_detection(
    image: np.ndarray, instances, input_hw: tuple[int, int], normalization: Normalization | None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """uint8 H x W x 3 RGB and its ``Instances`` -> float32 1 x 3 x H x W input at ``input_hw`` (resized as
    ``DetEvalTransform`` does) and its target dict with the boxes in the input's pixels."""
    from .detection_transforms import resize_instances

    resized, inst = resize_instances(image, instances, tuple(input_hw))
    x = normalization(resized) if normalization is not None else resized.astype(np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), detection_target(inst.boxes, inst.labels, inst.iscrowd)


def preprocess(
    image: np.ndarray, mask: np.ndarray, input_hw: tuple[int, int], normalization: Normalization | None
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 H x W x 3 RGB and its H x W labels -> float32 1 x 3 x H x W input at ``input_hw`` (normalised
    unless that is baked into the graph) and int64 labels at the same size."""
    resized, label = resize_pair(image, mask, input_hw)
    x = normalization(resized) if normalization is not None else resized.astype(np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), label.astype(np.int64)


@dataclass
class DatasetFeeds:
    """Preprocessed images (and labels at the same size) of chosen samples of a split, held in memory."""

    images: list[np.ndarray]
    labels: list  # label maps (segmentation) or target dicts (detection)
    names: list[str]
    digests: list[str]
    split: str
    input_name: str = "image"
    batch: int = 1  # each feed repeats its image this many times (a model exported with a static --batch N)

    @classmethod
    def from_dataset(
        cls,
        dataset,
        indices: Sequence[int],
        input_hw: tuple[int, int],
        *,
        normalization: Normalization | None = None,
        input_name: str = "image",
        boxes: bool = False,
    ) -> DatasetFeeds:
        """The samples ``indices`` of ``dataset`` (a ``SegDataset``, or a ``DetectionDataset`` whose labels are
        target dicts); a dataset without labels (``labelled`` False) of a detection run gets empty targets
        (``boxes=True``)."""
        from .instances import DetectionDataset, Instances

        images, labels, names, digests = [], [], [], []
        detection = isinstance(dataset, DetectionDataset) or boxes
        for i in indices:
            image, label = dataset.load(i)
            digests.append(array_sha256(image))  # the decoded pixels: any container hashes the same
            if detection:
                inst = label if isinstance(label, Instances) else Instances.empty()
                x, label = preprocess_detection(image, inst, input_hw, normalization)
            else:
                x, label = preprocess(image, label, input_hw, normalization)
            images.append(x)
            labels.append(label)
            names.append(dataset.name(i))
        return cls(images, labels, names, digests, dataset.split, input_name)

    def __len__(self) -> int:
        return len(self.images)

    def _feed(self, x: np.ndarray) -> FeedDict:
        return {self.input_name: x if self.batch == 1 else np.repeat(x, self.batch, axis=0)}

    def __iter__(self) -> Iterator[FeedDict]:
        for x in self.images:
            yield self._feed(x)

    def pairs(self) -> Iterator[tuple[FeedDict, np.ndarray | dict]]:
        for x, y in zip(self.images, self.labels, strict=True):
            yield self._feed(x), y

    def head(self, n: int) -> list[FeedDict]:
        return [self._feed(x) for x in self.images[:n]]

    def tiled(self, batch: int) -> DatasetFeeds:
        """The same images as feeds of a static batch: each image repeated ``batch`` times."""
        from dataclasses import replace

        return replace(self, batch=batch)

    def manifest(self) -> list[dict[str, str]]:
        return [{"name": n, "sha256": d} for n, d in zip(self.names, self.digests, strict=True)]


def pick_indices(size: int, available: int, seed: int) -> list[int]:
    """``size`` distinct indices drawn with ``seed`` (all of them, in order, when size >= available)."""
    if available < 1:
        raise DataError("The calibration split is empty. Point --data at a dataset whose train split has images.")
    if size >= available:
        return list(range(available))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(available, size=size, replace=False))


def check_no_overlap(calibration: DatasetFeeds, evaluation_digests: Mapping[str, str]) -> None:
    """Refuse calibration images that are also evaluation images (``evaluation_digests``: digest -> name)."""
    shared = [
        (n, evaluation_digests[d])
        for n, d in zip(calibration.names, calibration.digests, strict=True)
        if d in evaluation_digests
    ]
    if shared:
        shown = ", ".join(f"{c} = {e}" for c, e in shared[:5])
        raise DataError(
            f"{len(shared)} of {len(calibration)} calibration images from split {calibration.split!r} are also "
            f"evaluation images ({shown}{', ...' if len(shared) > 5 else ''}). Calibrating on evaluation data makes "
            "the INT8 mIoU look better than it is. Calibrate on the training split (--calib-split train), or "
            "remove the shared images from one of the splits."
        )


def digests_of(dataset: SegDataset, indices: Iterable[int]) -> dict[str, str]:
    """digest -> name of the given samples (their decoded pixels, as ``DatasetFeeds.digests``)."""
    return {array_sha256(dataset.load(i)[0]): dataset.name(i) for i in indices}
