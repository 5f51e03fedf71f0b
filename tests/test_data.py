"""Datasets, layouts and transforms, on tiny fixture trees written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.ndimage
import torch
from PIL import Image

from bckd_pipeline.data import (
    DATA_KINDS,
    IGNORE_INDEX,
    EvalTransform,
    Normalization,
    TrainTransform,
    build_dataset,
    parse_data_spec,
)
from bckd_pipeline.data.base import PAD_LABEL
from bckd_pipeline.data.demo import DEMO_CLASSES, FENCE, POLE, VEHICLE, WIRE, DemoDataset
from bckd_pipeline.distill.task import split_padding
from bckd_pipeline.errors import ConfigError, DataError

H, W = 12, 16


def rgb(seed: int = 0, size: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def labels(values: list[int], size: tuple[int, int] = (H, W)) -> np.ndarray:
    """A mask whose rows cycle through ``values``, so each value is present."""
    return np.array(values, np.uint8)[np.arange(size[0]) % len(values)][:, None].repeat(size[1], 1)


def write(path: Path, array: np.ndarray, *, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette:
        image = image.convert("P")
        image.putpalette(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tobytes())
        image.putdata(array.ravel().tolist())
    image.save(path)


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


# ---------------------------------------------------------------- spec parsing


def test_parse_data_spec() -> None:
    assert parse_data_spec("camvid:/x/y") == ("camvid", "/x/y")
    assert parse_data_spec("demo") == ("demo", "")
    assert parse_data_spec("demo:7") == ("demo", "7")
    kinds = {"demo", "voc", "cityscapes", "ade20k", "cocostuff", "camvid", "folder", "coco", "yolo", "images"}
    assert set(DATA_KINDS) == kinds


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("camvd:/x", "Did you mean 'camvid'"),
        ("/data/camvid", "KIND:PATH"),
        ("voc", "needs the dataset's PATH"),
        ("demo:abc", "non-negative integer"),
    ],
)
def test_bad_spec_is_config_error(spec: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        build_dataset(spec, "train")


def test_missing_root_names_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist.*annot/\*\.png"):
        build_dataset(f"camvid:{tmp_path / 'nowhere'}", "train")


# ---------------------------------------------------------------- layouts


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for i, stem in enumerate(["2007_000032", "2007_000033", "2007_000039"]):
        write(base / "JPEGImages" / f"{stem}.jpg", rgb(i))
        write(base / "SegmentationClass" / f"{stem}.png", labels([0, 15, 255]), palette=True)
    write_lines(base / "ImageSets" / "Segmentation" / "train.txt", ["2007_000032", "2007_000033"])
    write_lines(base / "ImageSets" / "Segmentation" / "val.txt", ["2007_000039"])
    return tmp_path / "VOCdevkit"


def test_voc(voc_root: Path) -> None:
    train = build_dataset(f"voc:{voc_root}", "train")
    assert len(train) == 2 and train.info.num_classes == 21 and train.info.class_names[15] == "person"
    assert train.name(0) == "2007_000032"
    with Image.open(voc_root / "VOC2012" / "SegmentationClass" / "2007_000032.png") as png:
        assert png.mode == "P"
    image, mask = train.load(0)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8 and mask.dtype == np.int64
    assert set(np.unique(mask)) == {0, 15, 255}  # the palette index is the class; 255 stays ignore
    assert len(build_dataset(f"voc:{voc_root / 'VOC2012'}", "val")) == 1
    with pytest.raises(DataError, match="trainval.txt.*found there: train, val"):
        build_dataset(f"voc:{voc_root}", "trainval")


def test_voc_missing_file_is_named(voc_root: Path) -> None:
    (voc_root / "VOC2012" / "SegmentationClass" / "2007_000033.png").unlink()
    with pytest.raises(DataError, match="2007_000033.png"):
        build_dataset(f"voc:{voc_root}", "train")


def cityscapes_tree(root: Path, suffix: str, values: list[int]) -> None:
    for city, frame in [("aachen", "000000_000019"), ("bochum", "000001_000019")]:
        write(root / "leftImg8bit" / "train" / city / f"{city}_{frame}_leftImg8bit.png", rgb())
        write(root / "gtFine" / "train" / city / f"{city}_{frame}_gtFine_{suffix}.png", labels(values))
    (root / "leftImg8bit" / "val").mkdir()


def test_cityscapes_train_ids(tmp_path: Path) -> None:
    cityscapes_tree(tmp_path, "labelTrainIds", [0, 18, 255])
    ds = build_dataset(f"cityscapes:{tmp_path}", "train")
    assert len(ds) == 2 and ds.info.num_classes == 19 and ds.name(0) == "aachen_000000_000019_leftImg8bit"
    assert set(np.unique(ds.load(1)[1])) == {0, 18, 255}
    with pytest.raises(DataError, match="empty"):
        build_dataset(f"cityscapes:{tmp_path}", "val")


def test_cityscapes_label_ids_are_mapped(tmp_path: Path) -> None:
    cityscapes_tree(tmp_path, "labelIds", [7, 26, 33, 0, 4])
    _, mask = build_dataset(f"cityscapes:{tmp_path}", "train").load(0)
    assert set(np.unique(mask)) == {0, 13, 18, 255}  # road, car, bicycle; unlabeled and static ignored


@pytest.fixture
def ade_root(tmp_path: Path) -> Path:
    base = tmp_path / "ADEChallengeData2016"
    for folder, n in [("training", 2), ("validation", 1)]:
        for i in range(n):
            write(base / "images" / folder / f"ADE_{folder}_{i:08d}.jpg", rgb(i))
            write(base / "annotations" / folder / f"ADE_{folder}_{i:08d}.png", labels([0, 1, 150]))
    return tmp_path


def test_ade20k(ade_root: Path) -> None:
    train = build_dataset(f"ade20k:{ade_root}", "train")
    assert len(train) == 2 and train.info.num_classes == 150 and train.info.class_names[0] == "wall"
    assert set(np.unique(train.load(0)[1])) == {0, 149, 255}  # 0 -> ignore, k -> k-1
    assert len(build_dataset(f"ade20k:{ade_root}", "training")) == 2
    assert len(build_dataset(f"ade20k:{ade_root / 'ADEChallengeData2016'}", "val")) == 1


def test_ade20k_label_beyond_classes(ade_root: Path) -> None:
    write(ade_root / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_validation_00000000.png",
          labels([3, 151]))  # fmt: skip
    ds = build_dataset(f"ade20k:{ade_root}", "val")
    with pytest.raises(DataError, match=r"ADE_validation_00000000.png.*\[151\].*0\.\.149.*255"):
        ds.load(0)


@pytest.mark.parametrize("annotation", [".mat", ".png"])
def test_cocostuff(tmp_path: Path, annotation: str) -> None:
    stems = ["COCO_train2014_000000000077", "COCO_train2014_000000000078", "COCO_train2014_000000000079"]
    (tmp_path / "annotations").mkdir()
    for i, stem in enumerate(stems):
        write(tmp_path / "images" / f"{stem}.jpg", rgb(i))
        if annotation == ".mat":  # 1-based ids, 0 = unlabeled
            scipy.io.savemat(tmp_path / "annotations" / f"{stem}.mat", {"S": labels([0, 1, 182]).astype(np.uint16)})
        else:  # stuffthingmaps convention: 0-based, 255 = unlabeled
            write(tmp_path / "annotations" / f"{stem}.png", labels([0, 181, 255]))
    write_lines(tmp_path / "imageLists" / "train.txt", stems[:2])
    write_lines(tmp_path / "imageLists" / "test.txt", stems[2:])
    train = build_dataset(f"cocostuff:{tmp_path}", "train")
    assert len(train) == 2 and train.info.num_classes == 182 and train.info.class_names[181] == "wood"
    assert set(np.unique(train.load(0)[1])) == {0, 181, 255}
    assert len(build_dataset(f"cocostuff:{tmp_path}", "val")) == 1  # val means test in COCO-Stuff 10K


@pytest.fixture
def camvid_root(tmp_path: Path) -> Path:
    for split, n in [("train", 3), ("val", 1)]:
        for i in range(n):
            write(tmp_path / split / f"0001TP_{i:06d}.png", rgb(i))
            write(tmp_path / f"{split}annot" / f"0001TP_{i:06d}.png", labels([0, 10, 11]))
    return tmp_path


def test_camvid(camvid_root: Path) -> None:
    train = build_dataset(f"camvid:{camvid_root}", "train")
    assert len(train) == 3 and train.info.num_classes == 11 and train.info.class_names[2] == "Pole"
    image, mask = train.load(2)
    assert image.shape == (H, W, 3) and set(np.unique(mask)) == {0, 10, 255}  # 11 = void -> ignore
    x, y = train[0]
    assert x.shape == (3, H, W) and x.dtype == torch.float32 and y.shape == (H, W) and y.dtype == torch.int64


def test_camvid_missing_split_lists_available(camvid_root: Path) -> None:
    with pytest.raises(DataError, match=r"'test' not found.*test'.*found there: train, val"):
        build_dataset(f"camvid:{camvid_root}", "test")


def test_camvid_empty_split(camvid_root: Path) -> None:
    (camvid_root / "test").mkdir()
    (camvid_root / "testannot").mkdir()
    with pytest.raises(DataError, match="'test' is empty"):
        build_dataset(f"camvid:{camvid_root}", "test")


def test_camvid_label_beyond_classes(camvid_root: Path) -> None:
    write(camvid_root / "valannot" / "0001TP_000000.png", labels([3, 12, 40]))
    with pytest.raises(DataError, match=r"0001TP_000000.png.*\[12, 40\].*0\.\.10.*Map those pixels to 255"):
        build_dataset(f"camvid:{camvid_root}", "val").load(0)


def test_size_mismatch_names_both_files(camvid_root: Path) -> None:
    write(camvid_root / "valannot" / "0001TP_000000.png", labels([0], (H + 1, W)))
    with pytest.raises(DataError, match=r"val/0001TP_000000.png.*12x16.*valannot/0001TP_000000.png.*13x16"):
        build_dataset(f"camvid:{camvid_root}", "val").load(0)


def test_colour_mask_is_rejected(camvid_root: Path) -> None:
    write(camvid_root / "valannot" / "0001TP_000000.png", rgb())
    with pytest.raises(DataError, match="single-channel"):
        build_dataset(f"camvid:{camvid_root}", "val").load(0)


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    write_lines(tmp_path / "classes.txt", ["background", "crack", "rust"])
    for stem, suffix in [("a", ".jpg"), ("b", ".png"), ("c", ".jpeg")]:
        write(tmp_path / "images" / "train" / f"{stem}{suffix}", rgb())
        write(tmp_path / "masks" / "train" / f"{stem}.png", labels([0, 2, 255]))
    return tmp_path


def test_folder(folder_root: Path) -> None:
    ds = build_dataset(f"folder:{folder_root}", "train")
    assert len(ds) == 3 and ds.info.class_names == ("background", "crack", "rust")
    assert [ds.name(i) for i in range(3)] == ["a", "b", "c"]
    assert set(np.unique(ds.load(0)[1])) == {0, 2, 255}


def test_folder_missing_mask_is_named(folder_root: Path) -> None:
    (folder_root / "masks" / "train" / "b.png").unlink()
    with pytest.raises(DataError, match=r"masks/train/b.png"):
        build_dataset(f"folder:{folder_root}", "train")


def test_folder_needs_classes_txt(folder_root: Path) -> None:
    (folder_root / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt"):
        build_dataset(f"folder:{folder_root}", "train")


# ---------------------------------------------------------------- demo


def test_demo_is_deterministic_and_splits_differ() -> None:
    a, b = build_dataset("demo", "train").load(5), DemoDataset("train").load(5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], build_dataset("demo:1", "train").load(5)[0])
    assert not np.array_equal(a[0], build_dataset("demo", "val").load(5)[0])
    assert (len(build_dataset("demo", "train")), len(build_dataset("demo", "val"))) == (240, 60)
    assert len(build_dataset("demo", "val", demo_count=7)) == 7


def test_demo_samples() -> None:
    ds = build_dataset("demo", "train", demo_count=8, demo_size=(64, 80))
    samples = [ds.load(i) for i in range(len(ds))]
    image, mask = samples[0]
    assert image.shape == (64, 80, 3) and image.dtype == np.uint8 and mask.shape == (64, 80)
    assert ds.info.class_names == DEMO_CLASSES
    assert set(np.concatenate([np.unique(m) for _, m in samples])) == set(range(len(DEMO_CLASSES)))


def test_demo_thin_structures_are_thin_and_regions_fragmented() -> None:
    ds = build_dataset("demo", "val", demo_count=12)
    fragmented = 0
    for i in range(len(ds)):
        _, mask = ds.load(i)
        pole, wire = mask == POLE, mask == WIRE
        assert pole.any() and wire.any()
        # Poles are at most 3 px wide: no row has 4 pole pixels side by side.
        assert not (pole[:, :-3] & pole[:, 1:-2] & pole[:, 2:-1] & pole[:, 3:]).any()
        # Wires are at most 2 px wide: no 3x3 block is all wire.
        assert not scipy.ndimage.binary_erosion(wire, np.ones((3, 3))).any()
        assert not scipy.ndimage.binary_erosion(mask == FENCE, np.ones((3, 3))).any()  # a lattice of lines
        fragmented += scipy.ndimage.label(mask == VEHICLE)[1] > 1
    assert fragmented >= len(ds) // 2


def test_demo_bad_split() -> None:
    with pytest.raises(DataError, match="train, val"):
        build_dataset("demo", "test")


# ---------------------------------------------------------------- transforms


def column_coded(size: tuple[int, int] = (H, W)) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric sample: grey level = 10 * column, mask = column % 5, so both reveal the source column."""
    cols = np.arange(size[1])[None, :].repeat(size[0], 0)
    return (cols[..., None] * 10).repeat(3, 2).astype(np.uint8), (cols % 5).astype(np.int64)


def source_columns(image: torch.Tensor) -> np.ndarray:
    norm = Normalization()
    grey = (image[0].numpy() * norm.std[0] + norm.mean[0]) * 255
    return np.rint(grey / 10).astype(np.int64)


def test_train_transform_flips_image_and_mask_together() -> None:
    image, mask = column_coded()
    transform = TrainTransform(resize=None, crop=(8, 10), scale_range=(1, 1), brightness=0, seed=0)
    first_columns = set()
    for _ in range(20):
        x, y = transform(image, mask)
        assert x.shape == (3, 8, 10) and y.shape == (8, 10)
        cols = source_columns(x)
        assert np.array_equal(cols % 5, y.numpy())
        first_columns.add(int(cols[0, 1] - cols[0, 0]))
    assert first_columns == {1, -1}  # both orientations happened


def test_train_transform_pads_with_ignore_and_mean() -> None:
    image, mask = rgb(), labels([0, 3, 255])
    x, y = TrainTransform(resize=(6, 8), crop=(10, 12), scale_range=(1, 1), flip=False, seed=1)(image, mask)
    assert x.shape == (3, 10, 12) and y.shape == (10, 12)
    assert (y[6:] == IGNORE_INDEX).all() and (y[:, 8:] == IGNORE_INDEX).all()
    assert (x[:, 6:] == 0).all() and (x[:, :, 8:] == 0).all()  # 0 after normalisation is the mean colour


def test_train_transform_output_contract() -> None:
    ds = build_dataset("demo", "train", demo_count=4, transform=TrainTransform(resize=(48, 64), crop=(40, 40)))
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 40, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
        valid = (y >= 0) & (y < len(DEMO_CLASSES))
        assert (valid | (y == IGNORE_INDEX)).all()


def test_train_transform_seed_reproduces() -> None:
    image, mask = rgb(size=(40, 50)), labels([1, 2], (40, 50))
    a = TrainTransform(resize=None, crop=(32, 32), seed=3)(image, mask)
    b = TrainTransform(resize=None, crop=(32, 32), seed=3)(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_eval_transform_resizes_mask_by_nearest() -> None:
    image, mask = column_coded((24, 32))
    x, y = EvalTransform(resize=(12, 16))(image, mask)
    assert x.shape == (3, 12, 16) and y.shape == (12, 16) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= set(range(5))
    x, y = EvalTransform(resize=None)(image, mask)
    assert x.shape == (3, 24, 32) and torch.equal(y, torch.from_numpy(mask))


@pytest.mark.parametrize(
    "kwargs",
    [{"crop": (0, 5)}, {"crop": (8,)}, {"scale_range": (2.0, 1.0)}, {"brightness": 1.5}],
)
def test_train_transform_rejects_bad_options(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        TrainTransform(**{"resize": None, "crop": (8, 8), **kwargs})


def test_train_transform_marks_padding_only_when_asked():
    image = torch.randint(0, 255, (20, 30, 3), dtype=torch.uint8).numpy()
    mask = torch.randint(0, 3, (20, 30)).numpy()
    kwargs = dict(resize=None, crop=(40, 40), scale_range=(1.0, 1.0), flip=False, brightness=0.0, seed=0)
    _, marked = TrainTransform(**kwargs, pad_label=PAD_LABEL)(image, mask)
    _, plain = TrainTransform(**kwargs)(image, mask)
    assert int((marked == PAD_LABEL).sum()) == 40 * 40 - 20 * 30
    assert not bool((plain == PAD_LABEL).any()) and int((plain == 255).sum()) == 40 * 40 - 20 * 30
    masks, valid = split_padding(marked[None], ignore_index=255)
    assert torch.equal(masks[0], plain) and valid.shape == (1, 1, 40, 40) and int(valid.sum()) == 600
    assert split_padding(plain[None], ignore_index=255)[1] is None
