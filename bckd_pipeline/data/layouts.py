"""The on-disk layouts of the standard segmentation datasets, as their authors distribute them.

Each builder takes the dataset root and a split, finds every image/mask pair up front (so a missing
file fails before training, with its name), and returns a :class:`FileSegDataset`. Nothing is ever
downloaded. Label conventions per dataset are described in each builder's docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from bckd_pipeline.data.base import IGNORE_INDEX, DatasetInfo, FileSegDataset, Transform, read_index_png
from bckd_pipeline.errors import DataError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# labelId -> trainId of the 19 evaluated classes (cityscapesScripts helpers/labels.py); the other
# labelIds 0..33 are ignored.
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_LABEL_IDS = range(34)

# SceneParsing objectInfo150 order: stored label k is class k-1 here.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip

# COCO-Stuff labels.txt ids 1..182 in order (ids the annotations never use, e.g. "street sign", included).
COCOSTUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe",
    "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "mirror", "dining table", "window", "desk", "toilet", "door", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "blender", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush", "banner", "blanket",
    "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other",
    "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt",
    "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill",
    "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net",
    "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other",
    "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other",
    "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind",
    "window-other", "wood",
)  # fmt: skip

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
    "Bicyclist",
)  # fmt: skip
CAMVID_VOID = 11

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _lut(mapping: dict[int, int]) -> np.ndarray:
    """A stored-value -> class-id table over 0..255; values not in ``mapping`` keep their value, so
    unexpected ones still reach validation and are reported."""
    lut = np.arange(256, dtype=np.int64)
    lut[list(mapping)] = list(mapping.values())
    return lut


def _shift_down_lut() -> np.ndarray:
    """Stored 0 (unlabeled) -> ignore, stored k -> class k-1, stored 255 stays ignore (mmseg's
    ``reduce_zero_label``)."""
    return _lut({0: IGNORE_INDEX} | {k: k - 1 for k in range(1, 255)})


def _subdirs(folder: Path, keep: Callable[[Path], bool] = Path.is_dir) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if keep(p)) if folder.is_dir() else []


def _missing_split(kind: str, split: str, expected: Path, available: Iterable[str]) -> DataError:
    found = ", ".join(available) or "none"
    return DataError(
        f"{kind}: split {split!r} not found; expected {str(expected)!r}. Splits found there: {found}. "
        "Pick one of those splits, or fix the dataset PATH."
    )


def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _checked(
    kind: str, split: str, pairs: list[tuple[Path, Path]], where: Path, hint: str = ""
) -> list[tuple[Path, Path]]:
    """``pairs`` if non-empty and every file exists, else a :class:`DataError` naming what is missing."""
    if not pairs:
        raise DataError(f"{kind}: split {split!r} is empty: no samples found in {str(where)!r}.")
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(
            f"{kind}: split {split!r} has {len(pairs)} samples but {len(missing)} files are missing: "
            f"{', '.join(repr(p) for p in missing[:3])}{more}. "
            + (hint or "Restore them, or remove those samples from the split.")
        )
    return pairs


def voc(root: Path, split: str, transform: Transform | None) -> FileSegDataset:
    """Pascal VOC 2012 segmentation; ``root`` is ``VOCdevkit`` or ``VOC2012``.

    SegmentationClass PNGs are palette images whose index is the class id (0..20); 255 marks object
    borders and "difficult" pixels and stays the ignore label.
    """
    base = root / "VOC2012" if (root / "VOC2012").is_dir() else root
    lists = base / "ImageSets" / "Segmentation"
    list_file = lists / f"{split}.txt"
    if not list_file.is_file():
        raise _missing_split("voc", split, list_file, [p.stem for p in sorted(lists.glob("*.txt"))])
    pairs = [(base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClass" / f"{i}.png") for i in _read_list(list_file)]
    info = DatasetInfo("voc", str(base), len(VOC_CLASSES), VOC_CLASSES)
    return FileSegDataset(info, split, _checked("voc", split, pairs, list_file), transform=transform)


def cityscapes(root: Path, split: str, transform: Transform | None) -> FileSegDataset:
    """Cityscapes fine annotations, 19 train classes, everything else ignored.

    Uses ``*_gtFine_labelTrainIds.png`` (made by cityscapesScripts' createTrainIdLabelImgs). When any of
    them is missing, all masks are read from ``*_gtFine_labelIds.png`` instead and mapped to train ids
    with the standard table (:data:`CITYSCAPES_TRAIN_IDS`).
    """
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise _missing_split("cityscapes", split, image_dir, _subdirs(root / "leftImg8bit"))
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))

    def masks(suffix: str) -> list[tuple[Path, Path]]:
        gt = root / "gtFine" / split
        return [(i, gt / i.parent.name / i.name.replace("_leftImg8bit.png", f"_gtFine_{suffix}.png")) for i in images]

    pairs, lut = masks("labelTrainIds"), None
    if not all(mask.is_file() for _, mask in pairs):
        pairs = masks("labelIds")
        lut = _lut(dict.fromkeys(CITYSCAPES_LABEL_IDS, IGNORE_INDEX) | CITYSCAPES_TRAIN_IDS)
    hint = "Neither *_gtFine_labelTrainIds.png nor *_gtFine_labelIds.png exist; unpack gtFine_trainvaltest.zip."
    info = DatasetInfo("cityscapes", str(root), len(CITYSCAPES_CLASSES), CITYSCAPES_CLASSES)
    return FileSegDataset(
        info, split, _checked("cityscapes", split, pairs, image_dir, hint), lut=lut, transform=transform
    )


ADE20K_SPLITS = {"train": "training", "val": "validation"}


def ade20k(root: Path, split: str, transform: Transform | None) -> FileSegDataset:
    """ADE20K SceneParsing (ADEChallengeData2016); ``root`` is that folder or its parent.

    Splits ``training``/``validation``, also accepted as ``train``/``val``. Stored label 0 ("other") is
    ignored and label k becomes class k-1, the usual ``reduce_zero_label`` convention, giving 150 classes.
    """
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    folder = ADE20K_SPLITS.get(split, split)
    image_dir = base / "images" / folder
    if not image_dir.is_dir():
        raise _missing_split("ade20k", split, image_dir, _subdirs(base / "images"))
    images = sorted(image_dir.glob("*.jpg"))
    pairs = [(i, base / "annotations" / folder / f"{i.stem}.png") for i in images]
    info = DatasetInfo("ade20k", str(base), len(ADE20K_CLASSES), ADE20K_CLASSES)
    return FileSegDataset(
        info, split, _checked("ade20k", split, pairs, image_dir), lut=_shift_down_lut(), transform=transform
    )


def _read_mat(path: Path) -> np.ndarray:
    """The label map ``S`` of a COCO-Stuff 10K ``.mat`` annotation, as int64."""
    data = scipy.io.loadmat(path)
    if "S" not in data:
        keys = ", ".join(k for k in data if not k.startswith("__"))
        raise DataError(f"Annotation {str(path)!r} has no label map 'S' (keys: {keys}). Use COCO-Stuff 10K .mat files.")
    return np.asarray(data["S"]).astype(np.int64)


def cocostuff(root: Path, split: str, transform: Transform | None) -> FileSegDataset:
    """COCO-Stuff 10K: ``images/*.jpg``, ``annotations/*.mat`` or ``*.png``, ``imageLists/{train,test}.txt``.

    All 182 label ids of COCO-Stuff are kept as classes 0..181 (ids that no annotation uses, such as
    "street sign", stay as classes that never occur), rather than the 171-class remapping some papers use.
    ``.mat`` files store ids 1..182 with 0 = unlabeled, so 0 -> ignore and k -> k-1. ``.png`` files are
    taken in the official stuffthingmaps convention: already 0..181, 255 = unlabeled. ``.mat`` is used
    when the annotations folder holds any. Split ``val`` means ``test`` when there is no ``val.txt``.
    """
    lists = root / "imageLists"
    list_file = lists / f"{split}.txt"
    if split == "val" and not list_file.is_file():
        list_file = lists / "test.txt"
    if not list_file.is_file():
        raise _missing_split("cocostuff", split, list_file, [p.stem for p in sorted(lists.glob("*.txt"))])
    annotations = root / "annotations"
    use_mat = any(annotations.glob("*.mat"))
    suffix = ".mat" if use_mat else ".png"
    pairs = [(root / "images" / f"{i}.jpg", annotations / f"{i}{suffix}") for i in _read_list(list_file)]
    info = DatasetInfo("cocostuff", str(root), len(COCOSTUFF_CLASSES), COCOSTUFF_CLASSES)
    return FileSegDataset(
        info,
        split,
        _checked("cocostuff", split, pairs, list_file),
        lut=_shift_down_lut() if use_mat else None,
        read_mask=_read_mat if use_mat else read_index_png,
        transform=transform,
    )


def camvid(root: Path, split: str, transform: Transform | None) -> FileSegDataset:
    """CamVid in the SegNet layout: ``{split}/*.png`` with masks ``{split}annot/*.png`` of the same name.

    Pixel values 0..10 are the 11 classes; 11 (void) becomes the ignore label.
    """
    image_dir, mask_dir = root / split, root / f"{split}annot"
    if not (image_dir.is_dir() and mask_dir.is_dir()):
        available = _subdirs(root, lambda p: p.is_dir() and (root / f"{p.name}annot").is_dir())
        raise _missing_split("camvid", split, image_dir, available)
    pairs = [(i, mask_dir / i.name) for i in sorted(image_dir.glob("*.png"))]
    info = DatasetInfo("camvid", str(root), len(CAMVID_CLASSES), CAMVID_CLASSES)
    lut = _lut({CAMVID_VOID: IGNORE_INDEX})
    return FileSegDataset(info, split, _checked("camvid", split, pairs, image_dir), lut=lut, transform=transform)


def folder(root: Path, split: str, transform: Transform | None) -> FileSegDataset:
    """Your own data: ``images/{split}/*.{png,jpg,jpeg}``, ``masks/{split}/<stem>.png``, and the classes in
    ``classes.txt`` or ``classes.json`` (:func:`read_classes`).

    Mask pixels are class ids in the order of the classes file (line k, or item k, names class k), 255 = ignore.
    """
    names, colors = read_classes(root)
    image_dir = root / "images" / split
    if not image_dir.is_dir():
        raise _missing_split("folder", split, image_dir, _subdirs(root / "images"))
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    pairs = [(i, root / "masks" / split / f"{i.stem}.png") for i in images]
    hint = "Every image needs a mask PNG with the same stem in masks/{split}/."
    info = DatasetInfo("folder", str(root), len(names), names, colors=colors)
    return FileSegDataset(info, split, _checked("folder", split, pairs, image_dir, hint), transform=transform)


CLASSES_HELP = (
    'Write classes.txt with one class per line, "name" or "name R G B" (a colour 0..255), line k naming class k; '
    'or classes.json, a list of names or of {"name": ..., "color": [R, G, B]}.'
)


def read_classes(root: Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...] | None]:
    """The class names of a ``folder:`` dataset, and their colours where the file gives them (every class or none).

    ``classes.txt``: a line ``name`` or ``name R G B`` per class (a name may hold spaces; the last three fields
    are the colour when all three are whole numbers). ``classes.json``: ``["road", ...]`` or
    ``[{"name": "road", "color": [128, 64, 128]}, ...]``.
    """
    import json

    txt, js = root / "classes.txt", root / "classes.json"
    if txt.is_file() and js.is_file():
        raise DataError(f"folder: both {str(txt)!r} and {str(js)!r} exist; keep one. {CLASSES_HELP}")
    if js.is_file():
        try:
            items = json.loads(js.read_text())
        except ValueError as exc:
            raise DataError(f"folder: {str(js)!r} is not valid JSON ({exc}). {CLASSES_HELP}") from None
        if not isinstance(items, list):
            raise DataError(f"folder: {str(js)!r} holds a {type(items).__name__}, not a list. {CLASSES_HELP}")
        entries = []
        for k, item in enumerate(items):
            if isinstance(item, str):
                entries.append((item, None))
            elif isinstance(item, dict) and isinstance(item.get("name"), str):
                entries.append((item["name"], item.get("color")))
            else:
                raise DataError(f"folder: {str(js)!r} item {k} is {item!r}. {CLASSES_HELP}")
        where = js
    elif txt.is_file():
        entries = [_class_line(line) for line in _read_list(txt)]
        where = txt
    else:
        raise DataError(f"folder: no classes file in {str(root)!r}. {CLASSES_HELP}")
    if not entries:
        raise DataError(f"folder: {str(where)!r} is empty. {CLASSES_HELP}")
    names = tuple(name.strip() for name, _ in entries)
    given = [c is not None for _, c in entries]
    if any(given) and not all(given):
        missing = [names[k] for k, g in enumerate(given) if not g][:3]
        raise DataError(
            f"folder: {str(where)!r} gives a colour for {sum(given)} of {len(entries)} classes (none for "
            f"{', '.join(missing)}). Give a colour on every line, or on none (the project's palette is used)."
        )
    colors = None
    if all(given):
        colors = []
        for name, c in entries:
            if not (isinstance(c, (list, tuple)) and len(c) == 3 and all(type(v) is int and 0 <= v <= 255 for v in c)):
                raise DataError(f"folder: {str(where)!r}: the colour of {name!r} is {c!r}; give R G B, each 0..255.")
            colors.append(tuple(c))
        colors = tuple(colors)
    if len(set(names)) != len(names) or not all(names):
        raise DataError(f"folder: {str(where)!r} has an empty or repeated class name ({', '.join(names)}).")
    return names, colors


def _class_line(line: str) -> tuple[str, list[int] | None]:
    """``name`` or ``name R G B``: the colour when the last three fields are whole numbers."""
    fields = line.split()
    if len(fields) >= 4 and all(f.lstrip("-").isdigit() for f in fields[-3:]):
        return " ".join(fields[:-3]), [int(f) for f in fields[-3:]]
    return line, None


@dataclass(frozen=True)
class Layout:
    """A dataset kind: the one-line layout shown in errors and ``--help``, and its builder."""

    description: str
    build: Callable[[Path, str, Transform | None], FileSegDataset]


LAYOUTS: dict[str, Layout] = {
    "voc": Layout(
        "Pascal VOC 2012, PATH = VOCdevkit or VOC2012: JPEGImages/*.jpg, SegmentationClass/*.png, "
        "ImageSets/Segmentation/{train,val,trainval}.txt; 21 classes, 255 ignored",
        voc,
    ),
    "cityscapes": Layout(
        "Cityscapes: leftImg8bit/{split}/{city}/*_leftImg8bit.png, "
        "gtFine/{split}/{city}/*_gtFine_labelTrainIds.png (or *_labelIds.png); 19 classes",
        cityscapes,
    ),
    "ade20k": Layout(
        "ADE20K, PATH = ADEChallengeData2016: images/{training,validation}/*.jpg, annotations/.../*.png; "
        "splits train/val; 150 classes, label 0 ignored",
        ade20k,
    ),
    "cocostuff": Layout(
        "COCO-Stuff 10K: images/*.jpg, annotations/*.mat (key S) or *.png, imageLists/{train,test}.txt "
        "(val = test); 182 classes",
        cocostuff,
    ),
    "camvid": Layout(
        "CamVid (SegNet layout): {train,val,test}/*.png, {train,val,test}annot/*.png; 11 classes, 11 = void ignored",
        camvid,
    ),
    "folder": Layout(
        "your data: images/{split}/*.{png,jpg,jpeg}, masks/{split}/<stem>.png "
        "(pixel = class id, 255 = ignore), classes.txt (a line per class: name, or name R G B) or classes.json",
        folder,
    ),
}
