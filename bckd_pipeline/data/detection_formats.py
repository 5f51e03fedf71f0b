"""The on-disk formats of detection datasets: COCO JSON, YOLO txt and Pascal VOC XML.

Each builder reads every annotation of the split up front and converts it to pixel boxes
``(x0, y0, x1, y1)`` with pixel-edge coordinates (data/instances.py), so a bad annotation fails before
training with its file and line or id. A bad annotation (box entirely outside the image, zero or
negative size, unknown class, non-number, malformed line or missing image) is a :class:`DataError`,
or, with ``skip_bad``, left out and counted on stderr; boxes that overlap the image but cross its
border are clipped to it. Nothing is ever downloaded.

Conventions, as the formats' own tools read them:

- COCO: ``bbox`` is ``[x, y, width, height]`` in pixels from the image's top-left corner, so the box is
  ``(x, y, x + width, y + height)``; categories map to contiguous ids 0.. in ascending category id, names
  from ``categories``; ``iscrowd: 1`` objects are kept and ignored in evaluation.
- YOLO (Ultralytics): one ``labels/<split>/<stem>.txt`` per image, one object per line, ``class cx cy w h``
  normalised to 0..1 by the image's width and height (a line of more pairs is a polygon, its box taken
  as Ultralytics does); an image without a label file has no objects.
- Pascal VOC: ``xmin ymin xmax ymax`` are 1-based inclusive pixel indices, so the box is
  ``(xmin - 1, ymin - 1, xmax, ymax)`` (detectron2's reading; ``xmin = 1, xmax = W`` covers the image);
  ``difficult`` objects are kept and ignored in evaluation, as the VOC evaluation does.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bckd_pipeline.data.base import DatasetInfo
from bckd_pipeline.data.instances import BadAnnotations, DetRecord, DetTransform, FileDetDataset, Instances, checked_box
from bckd_pipeline.errors import DataError

DET_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

VOC_DET_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _image_size(path: Path, issues: BadAnnotations) -> tuple[int, int] | None:
    """(H, W) from the image file's header, or None (reported through ``issues``) when it is unreadable."""
    if not path.is_file():
        issues.bad(str(path), "the image does not exist", "Restore it, or remove its annotations.", image=True)
        return None
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError) as exc:
        issues.bad(str(path), f"not a readable image ({type(exc).__name__})", "Replace the file.", image=True)
        return None


def _instances(boxes: list, labels: list, crowd: list) -> Instances:
    return Instances(np.array(boxes, np.float32).reshape(-1, 4), labels, crowd) if boxes else Instances.empty()


def _dataset(kind: str, root: Path, split: str, names: tuple[str, ...], records: list[DetRecord], where: Path,
             issues: BadAnnotations, transform: DetTransform | None) -> FileDetDataset:  # fmt: skip
    if not records:
        raise DataError(f"{kind}: split {split!r} is empty: no images found in {str(where)!r}.")
    issues.report(split)
    info = DatasetInfo(kind, str(root), len(names), names)
    return FileDetDataset(info, split, records=records, transform=transform)


# ---------------------------------------------------------------------------------------------- COCO
def _coco_paths(root: Path, split: str) -> tuple[Path, Path]:
    annotation = root / "annotations" / f"instances_{split}.json"
    if not annotation.is_file():
        found = sorted(p.name for p in (root / "annotations").glob("instances_*.json"))
        raise DataError(
            f"coco: split {split!r} not found; expected {str(annotation)!r}. Annotation files there: "
            f"{', '.join(found) or 'none'}. Pick one of those splits (instances_<split>.json), or fix the PATH."
        )
    for image_dir in (root / "images" / split, root / split, root / "images"):
        if image_dir.is_dir():
            return annotation, image_dir
    raise DataError(
        f"coco: no image folder for split {split!r} under {str(root)!r}; expected images/{split}/ "
        f"(or {split}/, or images/). Put the images there."
    )


def _coco_json(annotation_path: Path):
    try:
        return json.loads(annotation_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"coco: {str(annotation_path)!r} is not readable JSON ({exc}). Fix or replace it.") from None


def coco(root: Path, split: str, transform: DetTransform | None, skip_bad: bool = False) -> FileDetDataset:
    """COCO JSON: ``annotations/instances_<split>.json``, images in ``images/<split>/`` (or ``<split>/``,
    or ``images/``) under their ``file_name``."""
    annotation_path, image_dir = _coco_paths(root, split)
    issues = BadAnnotations("coco", skip=skip_bad)
    data = _coco_json(annotation_path)
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list) or not data["categories"]:
        raise DataError(
            f"coco: {str(annotation_path)!r} has no 'categories' list. A COCO instances file holds 'images', "
            "'annotations' and 'categories' ({'id', 'name'} each)."
        )
    categories = sorted(data["categories"], key=lambda c: c["id"])
    class_of = {c["id"]: k for k, c in enumerate(categories)}
    names = tuple(str(c.get("name", c["id"])) for c in categories)
    sizes: dict = {}
    paths: dict = {}
    for entry in data.get("images", []):
        where = f"{annotation_path} image id {entry.get('id')!r}"
        path = image_dir / str(entry.get("file_name", ""))
        width, height = entry.get("width"), entry.get("height")
        if not path.is_file():
            issues.bad(where, f"the image {str(path)!r} does not exist", "Restore it, or remove the image entry.",
                       image=True)  # fmt: skip
            continue
        size = (int(height), int(width)) if width and height else _image_size(path, issues)
        if size is not None:
            sizes[entry["id"]], paths[entry["id"]] = size, path
    objects: dict = {image_id: ([], [], []) for image_id in sizes}
    listed = {entry.get("id") for entry in data.get("images", [])}
    for ann in data.get("annotations", []):
        where = f"{annotation_path} annotation id {ann.get('id')!r}"
        image_id, category = ann.get("image_id"), ann.get("category_id")
        if image_id not in objects:
            if image_id not in listed:  # an image left out above was counted already
                issues.bad(where, f"image_id {image_id!r} is not in 'images'", "Add the image or drop the annotation.")
            continue
        if category not in class_of:
            issues.bad(where, f"category_id {category!r} is not in 'categories' (ids {sorted(class_of)})",
                       "Add the category or fix the id.")  # fmt: skip
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            issues.bad(where, f"bbox {bbox!r} is not [x, y, width, height]", "Write four numbers.")
            continue
        x, y, w, h = bbox
        box = checked_box((x, y, x + w, y + h), sizes[image_id], issues, where)
        if box is not None:
            boxes, labels, crowd = objects[image_id]
            boxes.append(box), labels.append(class_of[category]), crowd.append(bool(ann.get("iscrowd", 0)))
    records = [DetRecord(paths[i], sizes[i], _instances(*objects[i])) for i in sizes]
    return _dataset("coco", root, split, names, records, annotation_path, issues, transform)


# ---------------------------------------------------------------------------------------------- YOLO
def _yolo_names(root: Path) -> tuple[str, ...]:
    data_yaml, classes_txt = root / "data.yaml", root / "classes.txt"
    if data_yaml.is_file():
        try:
            import yaml
        except ImportError:
            raise DataError(
                f"yolo: reading {str(data_yaml)!r} needs PyYAML (pip install pyyaml), or write the class names "
                f"one per line into {str(classes_txt)!r}."
            ) from None
        names = (yaml.safe_load(data_yaml.read_text()) or {}).get("names")
        if isinstance(names, dict) and sorted(names) == list(range(len(names))):
            return tuple(str(names[k]) for k in range(len(names)))
        if isinstance(names, list) and names:
            return tuple(str(n) for n in names)
        raise DataError(
            f"yolo: {str(data_yaml)!r} has no usable 'names' (got {names!r}); give a list, or a dict "
            "{0: name, 1: name, ...} with ids 0..N-1."
        )
    if classes_txt.is_file():
        names = tuple(line.strip() for line in classes_txt.read_text().splitlines() if line.strip())
        if names:
            return names
    raise DataError(
        f"yolo: no class names: write {str(data_yaml)!r} with 'names' (as Ultralytics does) or {str(classes_txt)!r} "
        "with one name per line (line k names class k)."
    )


def _yolo_line(fields: list[str]) -> tuple[int, list[float]] | str:
    """(class, [cx, cy, w, h]) of one label line, or what is wrong with it."""
    if len(fields) < 5 or (len(fields) > 5 and len(fields) % 2 == 0):
        return f"{len(fields)} fields; expected 'class cx cy w h' (or 'class x1 y1 x2 y2 ...' for a polygon)"
    try:
        cls, values = float(fields[0]), [float(v) for v in fields[1:]]
    except ValueError:
        return f"not numbers: {' '.join(fields)!r}"
    if not cls.is_integer() or not all(math.isfinite(v) for v in values):
        return f"class {fields[0]!r} is not an integer, or a value is not finite"
    if min(values) < 0 or max(values) > 1:
        return f"values {values} are not normalised to 0..1 by the image's width and height"
    if len(values) > 4:
        xs, ys = values[0::2], values[1::2]
        values = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
    return int(cls), values


def _yolo_image_files(root: Path, split: str) -> list[Path]:
    image_dir = root / "images" / split
    if not image_dir.is_dir():
        found = sorted(p.name for p in (root / "images").iterdir() if p.is_dir()) if (root / "images").is_dir() else []
        raise DataError(
            f"yolo: split {split!r} not found; expected {str(image_dir)!r}. Splits found there: "
            f"{', '.join(found) or 'none'}. Pick one of those splits, or fix the PATH."
        )
    return sorted(p for p in image_dir.iterdir() if p.suffix.lower() in DET_IMAGE_SUFFIXES)


def yolo(root: Path, split: str, transform: DetTransform | None, skip_bad: bool = False) -> FileDetDataset:
    """YOLO txt (Ultralytics): ``images/<split>/*``, ``labels/<split>/<stem>.txt``, names in ``data.yaml``
    or ``classes.txt``."""
    names = _yolo_names(root)
    image_dir = root / "images" / split
    issues = BadAnnotations("yolo", skip=skip_bad)
    records = []
    for path in _yolo_image_files(root, split):
        size = _image_size(path, issues)
        if size is None:
            continue
        h, w = size
        label_file = root / "labels" / split / f"{path.stem}.txt"
        boxes, labels = [], []
        lines = label_file.read_text().splitlines() if label_file.is_file() else []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{label_file}:{number}"
            parsed = _yolo_line(line.split())
            if isinstance(parsed, str):
                issues.bad(where, parsed, "Fix the line.")
                continue
            cls, (cx, cy, bw, bh) = parsed
            if not 0 <= cls < len(names):
                issues.bad(where, f"class {cls} is not one of the {len(names)} classes 0..{len(names) - 1}",
                           "Fix the class id, or add the class to data.yaml's names.")  # fmt: skip
                continue
            box = checked_box(((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h),
                              size, issues, where)  # fmt: skip
            if box is not None:
                boxes.append(box), labels.append(cls)
        records.append(DetRecord(path, size, _instances(boxes, labels, [False] * len(labels))))
    return _dataset("yolo", root, split, names, records, image_dir, issues, transform)


# ---------------------------------------------------------------------------------------------- VOC
def _voc_base(root: Path) -> Path:
    if (root / "Annotations").is_dir():
        return root
    years = [root / year for year in ("VOC2012", "VOC2007") if (root / year / "Annotations").is_dir()]
    if len(years) == 1:
        return years[0]
    raise DataError(
        f"voc: no Annotations/ folder in {str(root)!r}"
        + (f" (it holds {', '.join(p.name for p in years)}: name one)" if years else "")
        + ". Give the folder that holds JPEGImages/, Annotations/ and ImageSets/Main/, e.g. VOCdevkit/VOC2007."
    )


def _voc_names(base: Path) -> tuple[str, ...]:
    """``classes.txt`` in ``base`` when present; else VOC's 20 classes when every object is one of them;
    else the sorted names of every object in ``Annotations/`` (every split's, so that splits agree)."""
    classes_txt = base / "classes.txt"
    if classes_txt.is_file():
        return tuple(line.strip() for line in classes_txt.read_text().splitlines() if line.strip())
    found = set()
    for xml in sorted((base / "Annotations").glob("*.xml")):
        try:
            found |= {(o.findtext("name") or "").strip() for o in ET.parse(xml).getroot().iter("object")}
        except ET.ParseError:
            continue  # reported with its name when its split is read
    found.discard("")
    return VOC_DET_CLASSES if found <= set(VOC_DET_CLASSES) else tuple(sorted(found))


def _voc_float(node: ET.Element | None, tag: str) -> float:
    text = None if node is None else node.findtext(tag)
    return float(text) if text is not None else math.nan


def _voc_split(root: Path, split: str) -> tuple[Path, Path, list[str]]:
    """The year folder, the split's list file and its image ids."""
    base = _voc_base(root)
    list_file = base / "ImageSets" / "Main" / f"{split}.txt"
    if not list_file.is_file():
        found = sorted(p.stem for p in (base / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise DataError(
            f"voc: split {split!r} not found; expected {str(list_file)!r}. Splits found there: "
            f"{', '.join(found) or 'none'}. Pick one of those splits, or fix the PATH."
        )
    return base, list_file, [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]


def voc(root: Path, split: str, transform: DetTransform | None, skip_bad: bool = False) -> FileDetDataset:
    """Pascal VOC detection: ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt``;
    PATH is the year folder (or VOCdevkit holding one)."""
    base, list_file, ids = _voc_split(root, split)
    names = _voc_names(base)
    class_of = {name: k for k, name in enumerate(names)}
    issues = BadAnnotations("voc", skip=skip_bad)
    records = []
    for image_id in ids:
        xml, image = base / "Annotations" / f"{image_id}.xml", base / "JPEGImages" / f"{image_id}.jpg"
        if not xml.is_file() or not image.is_file():
            missing = xml if not xml.is_file() else image
            issues.bad(str(list_file), f"{image_id!r}: {str(missing)!r} does not exist",
                       "Restore it, or remove the id from the split list.", image=True)  # fmt: skip
            continue
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            issues.bad(str(xml), f"not well-formed XML ({exc})", "Fix or replace the file.", image=True)
            continue
        width, height = _voc_float(tree.find("size"), "width"), _voc_float(tree.find("size"), "height")
        size = (int(height), int(width)) if width > 0 and height > 0 else _image_size(image, issues)
        if size is None:
            continue
        boxes, labels, crowd = [], [], []
        for number, obj in enumerate(tree.iter("object")):
            where = f"{xml} object {number}"
            name = (obj.findtext("name") or "").strip()
            if name not in class_of:
                issues.bad(where, f"class {name!r} is not one of {', '.join(names)}",
                           f"Fix the name, or list it in {str(base / 'classes.txt')!r}.")  # fmt: skip
                continue
            bndbox = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (_voc_float(bndbox, tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
            box = checked_box((xmin - 1, ymin - 1, xmax, ymax), size, issues, where)
            if box is not None:
                difficult = (obj.findtext("difficult") or "0").strip() == "1"
                boxes.append(box), labels.append(class_of[name]), crowd.append(difficult)
        records.append(DetRecord(image, size, _instances(boxes, labels, crowd)))
    return _dataset("voc", base, split, names, records, list_file, issues, transform)


def _present(kind: str, split: str, paths: list[Path], where: Path, skip_bad: bool) -> list[Path]:
    """``paths`` that exist; a missing one is a :class:`DataError`, or left out and counted with ``skip_bad``."""
    issues = BadAnnotations(kind, skip=skip_bad)
    for path in paths:
        if not path.is_file():
            issues.bad(str(where), f"the image {str(path)!r} does not exist",
                       "Restore it, or remove it from the split.", image=True)  # fmt: skip
    issues.report(split)
    return [p for p in paths if p.is_file()]


def coco_images(root: Path, split: str, skip_bad: bool = False) -> list[Path]:
    """The image files of a COCO split, its annotations unread."""
    annotation_path, image_dir = _coco_paths(root, split)
    entries = _coco_json(annotation_path)
    entries = entries.get("images", []) if isinstance(entries, dict) else []
    paths = [image_dir / str(e.get("file_name", "")) for e in entries if isinstance(e, dict)]
    return _present("coco", split, paths, annotation_path, skip_bad)


def yolo_images(root: Path, split: str, skip_bad: bool = False) -> list[Path]:
    """The image files of a YOLO split, its label files unread."""
    return _yolo_image_files(root, split)


def voc_images(root: Path, split: str, skip_bad: bool = False) -> list[Path]:
    """The image files of a VOC detection split, its Annotations/ unread."""
    base, list_file, ids = _voc_split(root, split)
    return _present("voc", split, [base / "JPEGImages" / f"{i}.jpg" for i in ids], list_file, skip_bad)


@dataclass(frozen=True)
class DetLayout:
    """A detection data kind: its one-line layout, its builder, and the lister of a split's image files alone
    (calibration reads images only)."""

    description: str
    build: Callable[..., FileDetDataset]
    images: Callable[[Path, str, bool], list[Path]]


DET_LAYOUTS: dict[str, DetLayout] = {
    "coco": DetLayout(
        "COCO JSON (detection): annotations/instances_{split}.json, images/{split}/<file_name>; bbox [x,y,w,h] "
        "pixels, iscrowd ignored in evaluation",
        coco,
        coco_images,
    ),
    "yolo": DetLayout(
        "YOLO txt (detection): images/{split}/*.jpg, labels/{split}/<stem>.txt ('class cx cy w h', normalised), "
        "data.yaml names or classes.txt",
        yolo,
        yolo_images,
    ),
    "voc": DetLayout(
        "Pascal VOC detection: JPEGImages/, Annotations/*.xml, ImageSets/Main/{split}.txt; difficult ignored",
        voc,
        voc_images,
    ),
}
