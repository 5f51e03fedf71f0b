"""Datasets for distillation and export: ``build_dataset("KIND:PATH", split)`` for segmentation,
``build_detection_dataset("KIND:PATH", split)`` for detection.

``KIND`` is one of :data:`DATA_KINDS`; ``demo`` needs no PATH (``demo:SEED`` picks another scene set).
:data:`DETECTION_KINDS` are the kinds with objects: ``demo`` (its vehicles and poles), ``voc`` (read as
VOC detection: Annotations/ and ImageSets/Main/), and the detection-only ``coco`` and ``yolo``.
Nothing here downloads data: every kind but ``demo`` reads a dataset already on disk.
"""

from __future__ import annotations

from pathlib import Path

from bckd_pipeline.data.base import IGNORE_INDEX, DatasetInfo, Normalization, SegDataset, Transform
from bckd_pipeline.data.demo import DEMO_CLASSES, DEMO_OBJECT_CLASSES, DemoDataset, DemoDetectionDataset
from bckd_pipeline.data.detection_formats import DET_LAYOUTS
from bckd_pipeline.data.instances import DetectionDataset, DetTransform, Instances, collate_detection
from bckd_pipeline.data.layouts import LAYOUTS
from bckd_pipeline.data.transforms import EvalTransform, TrainTransform
from bckd_pipeline.data.unlabelled import UnlabelledImages, is_image_folder
from bckd_pipeline.errors import ConfigError, DataError, unknown_name

__all__ = [
    "DATA_KINDS",
    "DETECTION_KINDS",
    "IGNORE_INDEX",
    "DatasetInfo",
    "DetectionDataset",
    "Instances",
    "EvalTransform",
    "Normalization",
    "SegDataset",
    "TrainTransform",
    "build_dataset",
    "build_detection_dataset",
    "build_images",
    "build_task_dataset",
    "collate_detection",
    "parse_data_spec",
]

DATA_KINDS: dict[str, str] = {
    "demo": "synthetic street scenes made in memory, demo[:SEED]; splits train/val; "
    f"{len(DEMO_CLASSES)} classes ({', '.join(DEMO_CLASSES)})",
    **{kind: layout.description for kind, layout in LAYOUTS.items()},
    **{kind: layout.description for kind, layout in DET_LAYOUTS.items() if kind not in LAYOUTS},
    "images": "plain images without labels, for calibration and label-free parity: PATH/{train,val}/*.png|jpg, "
    "or the images directly in PATH (every fifth held out for parity); folder:PATH without classes.txt reads the same",
}
DATA_KINDS["voc"] += f"; for detection: {DET_LAYOUTS['voc'].description}"
# The kinds build_detection_dataset reads; voc is read in its detection layout there.
DETECTION_KINDS: dict[str, str] = {
    "demo": f"the synthetic scenes' objects, demo[:SEED]; {len(DEMO_OBJECT_CLASSES)} classes "
    f"({', '.join(DEMO_OBJECT_CLASSES)}), with masks",
    **{kind: layout.description for kind, layout in DET_LAYOUTS.items()},
}

_SPEC_HINT = "Write --data KIND:PATH, e.g. 'camvid:/data/camvid', or 'demo' for the built-in synthetic set."


def parse_data_spec(spec: str) -> tuple[str, str]:
    """Split ``"KIND:PATH"`` into ``(kind, path)``; ``"demo"`` -> ``("demo", "")``, ``"demo:7"`` -> seed "7".

    Checks everything the string alone can tell: a known kind, a PATH where one is needed, an integer seed.
    """
    kind, _, rest = spec.strip().partition(":")
    kind = kind.lower()
    if kind not in DATA_KINDS:
        if not rest and ("/" in spec or "\\" in spec):
            raise ConfigError(f"Data spec {spec!r} looks like a path without a KIND. {_SPEC_HINT}")
        raise unknown_name("dataset kind", kind, DATA_KINDS, _SPEC_HINT)
    if kind == "demo":
        if rest and not rest.isdigit():
            raise ConfigError(f"The demo seed must be a non-negative integer, got {rest!r}. Use 'demo' or 'demo:7'.")
    elif not rest:
        raise ConfigError(f"Data kind {kind!r} needs the dataset's PATH: --data {kind}:PATH ({DATA_KINDS[kind]}).")
    return kind, rest


def is_demo(spec: str | None) -> bool:
    """Whether a --data/--calib-data spec is the built-in demo data (``demo`` or ``demo:SEED``)."""
    return spec is not None and parse_data_spec(spec)[0] == "demo"


def is_unlabelled(spec: str) -> bool:
    """Whether a --data spec reads plain images without labels (``images:PATH``, ``folder:PATH`` sans classes.txt)."""
    kind, path = parse_data_spec(spec)
    return kind == "images" or (kind == "folder" and is_image_folder(Path(path).expanduser()))


def build_dataset(
    spec: str,
    split: str,
    transform: Transform | None = None,
    *,
    demo_size: tuple[int, int] = (96, 128),
    demo_count: int | None = None,
) -> SegDataset:
    """The ``split`` of the dataset ``spec`` (``"KIND:PATH"``), with ``transform`` applied on indexing.

    ``demo_size`` (H, W) and ``demo_count`` (images in this split) apply to the demo kind only.
    """
    kind, path = parse_data_spec(spec)
    if kind == "demo":
        return DemoDataset(split, seed=int(path or 0), size=demo_size, count=demo_count, transform=transform)
    if is_unlabelled(spec):
        return UnlabelledImages(_root(kind, path), split, transform, kind)
    if kind not in LAYOUTS:
        raise ConfigError(
            f"Data kind {kind!r} holds boxes, not label maps: it is a detection format. Use it with "
            f"--task detection, or give a segmentation kind ({', '.join(LAYOUTS)})."
        )
    return LAYOUTS[kind].build(_root(kind, path), split, transform)


def build_task_dataset(
    spec: str,
    split: str,
    task: str,
    *,
    skip_bad_annotations: bool = False,
    demo_size: tuple[int, int] = (96, 128),
    demo_count: int | None = None,
):
    """The ``split`` of ``spec`` as a model of ``task`` reads it without a transform (evaluation, labelled
    calibration): label maps for segmentation, boxes for detection (``skip_bad_annotations`` as for
    :func:`build_detection_dataset`); a folder of plain images is the same for every task."""
    if task == "detection" and not is_unlabelled(spec):
        return build_detection_dataset(
            spec, split, skip_bad_annotations=skip_bad_annotations, demo_size=demo_size, demo_count=demo_count
        )
    return build_dataset(spec, split, demo_size=demo_size, demo_count=demo_count)


def build_images(
    spec: str,
    split: str,
    task: str,
    *,
    skip_bad_annotations: bool = False,
    demo_size: tuple[int, int] = (96, 128),
    demo_count: int | None = None,
) -> SegDataset:
    """The images of the ``split`` of ``spec``, of any kind, their labels unread (INT8 calibration): an
    :class:`UnlabelledImages` over the split's image files, or the demo scenes. A kind that is both a
    segmentation and a detection layout (``voc``) lists the split of ``task``'s layout; an image file a
    detection split lists and lacks is a :class:`DataError`, or left out with ``skip_bad_annotations``."""
    kind, path = parse_data_spec(spec)
    if kind == "demo":
        return DemoDataset(split, seed=int(path or 0), size=demo_size, count=demo_count)
    root = _root(kind, path)
    if is_unlabelled(spec):
        return UnlabelledImages(root, split, None, kind)
    if kind in DET_LAYOUTS and (task == "detection" or kind not in LAYOUTS):
        files = DET_LAYOUTS[kind].images(root, split, skip_bad_annotations)
    else:
        files = [image for image, _ in LAYOUTS[kind].build(root, split, None).pairs]
    return UnlabelledImages(root, split, None, kind, files=files)


def _root(kind: str, path: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(
            f"Dataset folder {path!r} for kind {kind!r} does not exist. Expected layout: {DATA_KINDS[kind]}. "
            f"Fix the PATH in --data {kind}:PATH."
        )
    return root


def build_detection_dataset(
    spec: str,
    split: str,
    transform: DetTransform | None = None,
    *,
    skip_bad_annotations: bool = False,
    demo_size: tuple[int, int] = (96, 128),
    demo_count: int | None = None,
) -> DetectionDataset:
    """The ``split`` of the detection dataset ``spec`` (a kind of :data:`DETECTION_KINDS`), with
    ``transform`` (image, :class:`Instances`) -> (tensor, target) applied on indexing.

    A bad annotation is a :class:`DataError` naming its file and line or id; ``skip_bad_annotations``
    (``--skip-bad-annotations``) leaves such annotations and images out and prints their count on stderr.
    """
    kind, path = parse_data_spec(spec)
    if kind == "demo":
        return DemoDetectionDataset(split, seed=int(path or 0), size=demo_size, count=demo_count, transform=transform)
    if kind not in DET_LAYOUTS:
        proxy = ""
        if kind == "camvid":
            proxy = " For CamVid, benchmarks/camvid_instances.py derives a COCO-JSON proxy of instances."
        raise ConfigError(
            f"Data kind {kind!r} has label maps, not objects. Detection reads {', '.join(DETECTION_KINDS)} "
            f"(--data KIND:PATH).{proxy}"
        )
    return DET_LAYOUTS[kind].build(_root(kind, path), split, transform, skip_bad_annotations)
