"""Detection data: the COCO, YOLO and VOC loaders on tiny trees written here, bad annotations, transforms,
the demo's exact instances, and the CamVid proxy's component rules (on a synthetic label map)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bckd_pipeline.data import (
    DETECTION_KINDS,
    Instances,
    build_dataset,
    build_detection_dataset,
    collate_detection,
)
from bckd_pipeline.data.demo import (
    DEMO_SPLITS,
    MIN_VISIBLE_PIXELS,
    OBJECT_LABELS,
    DemoDataset,
    generate,
    generate_scene,
)
from bckd_pipeline.data.detection_transforms import (
    DetEvalTransform,
    DetTrainTransform,
    hflip_instances,
    resize_instances,
)
from bckd_pipeline.data.instances import box_of_mask
from bckd_pipeline.errors import ConfigError, DataError

H, W = 30, 40
ROOT = Path(__file__).resolve().parent.parent
CAMVID = ROOT.parent / "shared" / "data" / "camvid"


def write_image(path: Path, size: tuple[int, int] = (H, W), seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


# ---------------------------------------------------------------------------------------------- COCO
def coco_tree(root: Path, annotations: list[dict], *, images: int = 3) -> Path:
    for i in range(images):
        write_image(root / "images" / "val" / f"im{i}.png", seed=i)
    data = {
        "images": [{"id": i + 1, "file_name": f"im{i}.png", "width": W, "height": H} for i in range(images)],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "truck"}, {"id": 3, "name": "car"}],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return root


def ann(i: int, image: int, cat: int, bbox: list, crowd: int = 0) -> dict:
    return {"id": i, "image_id": image, "category_id": cat, "bbox": bbox, "iscrowd": crowd, "area": 1}


def test_coco_boxes_classes_and_crowd(tmp_path: Path) -> None:
    root = coco_tree(
        tmp_path,
        [ann(1, 1, 3, [2, 3, 10, 5]), ann(2, 1, 7, [0, 0, 40, 30], crowd=1), ann(3, 2, 7, [35, 25, 10, 10])],
    )
    ds = build_detection_dataset(f"coco:{root}", "val")
    assert ds.info.class_names == ("car", "truck")  # category ids 3, 7 in ascending order -> 0, 1
    assert len(ds) == 3
    image, inst = ds.load(0)
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(inst.boxes, [[2, 3, 12, 8], [0, 0, 40, 30]])  # x, y, w, h -> x0, y0, x1, y1
    np.testing.assert_array_equal(inst.labels, [0, 1])
    np.testing.assert_array_equal(inst.iscrowd, [False, True])
    np.testing.assert_array_equal(ds.load(1)[1].boxes, [[35, 25, 40, 30]])  # crosses the border: clipped
    assert len(ds.load(2)[1]) == 0  # an image without annotations has no objects
    x, target = ds[0]
    assert x.shape == (3, H, W) and x.dtype == torch.float32
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["iscrowd"].dtype == torch.bool


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (ann(9, 1, 3, [50, 40, 5, 5]), "entirely outside"),
        (ann(9, 1, 3, [5, 5, 0, 4]), "zero or negative"),
        (ann(9, 1, 99, [5, 5, 4, 4]), "category_id 99"),
        (ann(9, 1, 3, [5, 5, 4]), "not \\[x, y, width, height\\]"),
        (ann(9, 42, 3, [5, 5, 4, 4]), "image_id 42"),
    ],
)
def test_coco_bad_annotation_names_file_and_id_or_is_skipped(tmp_path: Path, capsys, bad: dict, message: str) -> None:
    root = coco_tree(tmp_path, [ann(1, 1, 3, [2, 3, 10, 5]), bad])
    with pytest.raises(DataError, match=f"instances_val.json annotation id 9: .*{message}.*--skip-bad-annotations"):
        build_detection_dataset(f"coco:{root}", "val")
    ds = build_detection_dataset(f"coco:{root}", "val", skip_bad_annotations=True)
    assert "skipped 1 bad annotations and 0 images" in capsys.readouterr().err
    np.testing.assert_array_equal(ds.load(0)[1].boxes, [[2, 3, 12, 8]])


def test_coco_missing_image(tmp_path: Path, capsys) -> None:
    root = coco_tree(tmp_path, [ann(1, 1, 3, [2, 3, 10, 5]), ann(2, 2, 3, [2, 3, 10, 5])])
    (root / "images" / "val" / "im1.png").unlink()
    with pytest.raises(DataError, match="image id 2: the image .*im1.png' does not exist"):
        build_detection_dataset(f"coco:{root}", "val")
    ds = build_detection_dataset(f"coco:{root}", "val", skip_bad_annotations=True)
    assert len(ds) == 2 and "skipped 0 bad annotations and 1 images" in capsys.readouterr().err


def test_coco_wrong_size_in_json_fails_at_load(tmp_path: Path) -> None:
    root = coco_tree(tmp_path, [], images=1)
    write_image(root / "images" / "val" / "im0.png", size=(20, 20))
    ds = build_detection_dataset(f"coco:{root}", "val")
    with pytest.raises(DataError, match="im0.png' is 20x20 .* annotation says 40x30"):
        ds.load(0)


def test_coco_missing_split_lists_found(tmp_path: Path) -> None:
    root = coco_tree(tmp_path, [])
    with pytest.raises(DataError, match="instances_val.json"):
        build_detection_dataset(f"coco:{root}", "train")


# ---------------------------------------------------------------------------------------------- YOLO
def yolo_tree(root: Path, labels: dict[str, list[str]], *, names: str = "names: {0: car, 1: person}\n") -> Path:
    for i, stem in enumerate(("a", "b", "c")):
        write_image(root / "images" / "train" / f"{stem}.jpg", seed=i)
    for stem, lines in labels.items():
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    if names:
        (root / "data.yaml").write_text(names)
    return root


def test_yolo_normalised_centres_to_pixel_boxes(tmp_path: Path) -> None:
    root = yolo_tree(tmp_path, {"a": ["1 0.5 0.5 0.5 0.2", "0 0.1 0.1 0.2 0.2"], "b": []})
    ds = build_detection_dataset(f"yolo:{root}", "train")
    assert ds.info.class_names == ("car", "person")
    inst = ds.load(0)[1]
    # cx 0.5*40=20, w 0.5*40=20 -> 10..30; cy 0.5*30=15, h 0.2*30=6 -> 12..18; the second crosses x=0, y=0.
    np.testing.assert_allclose(inst.boxes, [[10, 12, 30, 18], [0, 0, 8, 6]], atol=1e-5)
    np.testing.assert_array_equal(inst.labels, [1, 0])
    assert not inst.iscrowd.any()
    assert len(ds.load(1)[1]) == 0 and len(ds.load(2)[1]) == 0  # empty file; no label file at all


def test_yolo_names_list_classes_txt_and_polygon(tmp_path: Path) -> None:
    root = yolo_tree(tmp_path, {"a": ["0 0.25 0.5 0.75 0.5 0.5 0.9"]}, names="")
    with pytest.raises(DataError, match="no class names"):
        build_detection_dataset(f"yolo:{root}", "train")
    (root / "classes.txt").write_text("dog\n")
    ds = build_detection_dataset(f"yolo:{root}", "train")
    assert ds.info.class_names == ("dog",)
    np.testing.assert_allclose(ds.load(0)[1].boxes, [[10, 15, 30, 27]], atol=1e-4)  # the polygon's extent
    (root / "data.yaml").write_text("names: [a, b, c]\n")
    assert build_detection_dataset(f"yolo:{root}", "train").info.class_names == ("a", "b", "c")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("2 0.5 0.5 0.1 0.1", "class 2 is not one of the 2 classes"),
        ("0 0.5 0.5 0.1", "4 fields"),
        ("0 20 15 4 4", "not normalised"),
        ("0 0.5 0.5 0 0.1", "zero or negative"),
        ("0 0.5 abc 0.1 0.1", "not numbers"),
    ],
)
def test_yolo_bad_line_names_file_and_line_or_is_skipped(tmp_path: Path, capsys, line: str, message: str) -> None:
    root = yolo_tree(tmp_path, {"a": ["0 0.5 0.5 0.5 0.5", line]})
    with pytest.raises(DataError, match=f"a.txt:2: .*{message}"):
        build_detection_dataset(f"yolo:{root}", "train")
    ds = build_detection_dataset(f"yolo:{root}", "train", skip_bad_annotations=True)
    assert "skipped 1 bad annotations" in capsys.readouterr().err
    assert len(ds.load(0)[1]) == 1


# ---------------------------------------------------------------------------------------------- VOC
def voc_xml(objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    parts = [f"<annotation><size><width>{W}</width><height>{H}</height><depth>3</depth></size>"]
    for name, (x0, y0, x1, y1), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def voc_tree(root: Path, xmls: dict[str, str]) -> Path:
    base = root / "VOC2007"
    for i, image_id in enumerate(xmls):
        write_image(base / "JPEGImages" / f"{image_id}.jpg", seed=i)
        (base / "Annotations").mkdir(parents=True, exist_ok=True)
        (base / "Annotations" / f"{image_id}.xml").write_text(xmls[image_id])
    (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "Main" / "val.txt").write_text("".join(f"{i}\n" for i in xmls))
    return root


def test_voc_one_based_pixels_difficult_and_names(tmp_path: Path) -> None:
    root = voc_tree(
        tmp_path,
        {"000001": voc_xml([("dog", (1, 1, W, H), 0), ("person", (5, 6, 10, 12), 1)]), "000002": voc_xml([])},
    )
    ds = build_detection_dataset(f"voc:{root}", "val")  # VOCdevkit holding one year
    assert len(ds.info.class_names) == 20 and ds.info.class_names[11] == "dog"  # VOC's 20 classes
    inst = ds.load(0)[1]
    np.testing.assert_array_equal(inst.boxes, [[0, 0, W, H], [4, 5, 10, 12]])  # xmin 1, xmax W covers the image
    np.testing.assert_array_equal(inst.labels, [11, 14])
    np.testing.assert_array_equal(inst.iscrowd, [False, True])  # difficult -> ignored in evaluation
    assert len(ds.load(1)[1]) == 0
    # voc stays the segmentation layout for build_dataset
    with pytest.raises(DataError, match="ImageSets/Segmentation"):
        build_dataset(f"voc:{root}", "val")


def test_voc_names_sorted_or_from_classes_file(tmp_path: Path) -> None:
    root = voc_tree(tmp_path, {"a": voc_xml([("zebra", (2, 2, 5, 5), 0), ("ant", (2, 2, 5, 5), 0)])})
    assert build_detection_dataset(f"voc:{root}", "val").info.class_names == ("ant", "zebra")
    (root / "VOC2007" / "classes.txt").write_text("zebra\n")
    with pytest.raises(DataError, match="a.xml object 1: class 'ant' is not one of zebra"):
        build_detection_dataset(f"voc:{root / 'VOC2007'}", "val")


@pytest.mark.parametrize(
    ("box", "message"),
    [((50, 40, 60, 50), "entirely outside"), ((10, 10, 5, 20), "zero or negative"), ((4, 3, 3, 8), "zero or")],
)
def test_voc_bad_box_names_object_or_is_skipped(tmp_path: Path, capsys, box: tuple, message: str) -> None:
    root = voc_tree(tmp_path, {"a": voc_xml([("cat", (2, 2, 5, 5), 0), ("cat", box, 0)])})
    with pytest.raises(DataError, match=f"a.xml object 1: .*{message}"):
        build_detection_dataset(f"voc:{root}", "val")
    ds = build_detection_dataset(f"voc:{root}", "val", skip_bad_annotations=True)
    assert "skipped 1 bad annotations" in capsys.readouterr().err
    np.testing.assert_array_equal(ds.load(0)[1].boxes, [[1, 1, 5, 5]])


def test_voc_missing_image_and_broken_xml(tmp_path: Path, capsys) -> None:
    root = voc_tree(tmp_path, {"a": voc_xml([("cat", (2, 2, 5, 5), 0)]), "b": "<annotation>", "c": voc_xml([])})
    with pytest.raises(DataError, match="b.xml: not well-formed XML"):
        build_detection_dataset(f"voc:{root}", "val")
    (root / "VOC2007" / "JPEGImages" / "c.jpg").unlink()
    ds = build_detection_dataset(f"voc:{root}", "val", skip_bad_annotations=True)
    assert len(ds) == 1 and "skipped 0 bad annotations and 2 images" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- kinds
def test_kinds_keep_their_task(tmp_path: Path) -> None:
    assert set(DETECTION_KINDS) == {"demo", "coco", "yolo", "voc"}
    with pytest.raises(ConfigError, match="detection format"):
        build_dataset(f"coco:{tmp_path}", "val")
    with pytest.raises(ConfigError, match="camvid_instances.py"):
        build_detection_dataset(f"camvid:{tmp_path}", "val")
    with pytest.raises(DataError, match="does not exist"):
        build_detection_dataset(f"yolo:{tmp_path / 'nowhere'}", "val")


def test_task_dataset_skips_bad_annotations_when_asked(tmp_path: Path, capsys) -> None:
    from bckd_pipeline.data import build_task_dataset

    root = coco_tree(tmp_path, [ann(1, 1, 3, [2, 3, 10, 5]), ann(9, 1, 99, [5, 5, 4, 4])])
    with pytest.raises(DataError, match="annotation id 9: category_id 99"):
        build_task_dataset(f"coco:{root}", "val", "detection")
    ds = build_task_dataset(f"coco:{root}", "val", "detection", skip_bad_annotations=True)
    assert len(ds) == 3 and "skipped 1 bad annotations" in capsys.readouterr().err


def test_calibration_images_of_every_kind_leave_the_labels_unread(tmp_path: Path, capsys) -> None:
    from bckd_pipeline.data import IGNORE_INDEX, build_images

    coco = coco_tree(tmp_path / "coco", [ann(9, 1, 99, [5, 5, 4, 4])])  # an unknown category
    yolo = yolo_tree(tmp_path / "yolo", {"a": ["7 0.5 0.5 0.2 0.2"]})  # class 7 of 2
    voc = voc_tree(tmp_path / "voc", {"x": "<annotation>not xml", "y": voc_xml([("car", (1, 1, 99, 99), 0)])})
    camvid = tmp_path / "camvid"  # a label-map kind, its mask holding a value no CamVid class has
    for stem in ("a", "b"):
        write_image(camvid / "train" / f"{stem}.png", seed=5)
        (camvid / "trainannot").mkdir(exist_ok=True)
        Image.fromarray(np.full((H, W), 200, np.uint8)).save(camvid / "trainannot" / f"{stem}.png")
    cases = [
        (f"coco:{coco}", "val", ["im0", "im1", "im2"]),
        (f"yolo:{yolo}", "train", ["a", "b", "c"]),
        (f"voc:{voc}", "val", ["x", "y"]),
        (f"camvid:{camvid}", "train", ["a", "b"]),
    ]
    for spec, split, names in cases:
        ds = build_images(spec, split, "detection")
        assert [ds.name(i) for i in range(len(ds))] == names, spec
        image, mask = ds.load(0)
        assert image.shape == (H, W, 3) and (mask == IGNORE_INDEX).all(), spec
    demo = build_images("demo", "val", "detection", demo_count=2)
    np.testing.assert_array_equal(demo.load(1)[0], build_detection_dataset("demo", "val", demo_count=2).load(1)[0])
    assert capsys.readouterr().err == ""

    (coco / "images" / "val" / "im1.png").unlink()
    with pytest.raises(DataError, match="im1.png' does not exist"):
        build_images(f"coco:{coco}", "val", "detection")
    assert len(build_images(f"coco:{coco}", "val", "detection", skip_bad_annotations=True)) == 2
    assert "skipped 0 bad annotations and 1 images" in capsys.readouterr().err


def test_calibration_images_of_a_segmentation_split_feed_as_its_labelled_samples(tmp_path: Path) -> None:
    from bckd_pipeline.data import build_images
    from bckd_pipeline.data.feeds import DatasetFeeds

    for i, stem in enumerate(("a", "b", "c")):
        write_image(tmp_path / "train" / f"{stem}.png", seed=i)
        (tmp_path / "trainannot").mkdir(exist_ok=True)
        Image.fromarray(np.full((H, W), i, np.uint8)).save(tmp_path / "trainannot" / f"{stem}.png")
    spec = f"camvid:{tmp_path}"
    labelled = DatasetFeeds.from_dataset(build_dataset(spec, "train"), [0, 2], (32, 32))
    images = DatasetFeeds.from_dataset(build_images(spec, "train", "segmentation"), [0, 2], (32, 32))
    assert images.manifest() == labelled.manifest()
    assert all(np.array_equal(x, y) for x, y in zip(images.images, labelled.images, strict=True))


# ---------------------------------------------------------------------------------------------- transforms
def sample() -> tuple[np.ndarray, Instances]:
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    masks = np.zeros((2, H, W), np.uint8)
    masks[0, 2:10, 3:9] = 1
    masks[1, 20:30, 30:40] = 1
    boxes = np.stack([box_of_mask(m) for m in masks])
    return image, Instances(boxes, [0, 1], [False, True], masks)


def test_hflip_moves_boxes_with_masks() -> None:
    image, inst = sample()
    flipped, out = hflip_instances(image, inst)
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    np.testing.assert_array_equal(out.boxes, [[31, 2, 37, 10], [0, 20, 10, 30]])
    for box, mask in zip(out.boxes, out.masks, strict=True):
        np.testing.assert_array_equal(box, box_of_mask(mask))  # the flipped box is the flipped mask's tight box
    again = hflip_instances(flipped, out)[1]
    np.testing.assert_array_equal(again.boxes, inst.boxes)
    np.testing.assert_array_equal(again.iscrowd, inst.iscrowd)


def test_resize_scales_boxes_and_masks() -> None:
    image, inst = sample()
    resized, out = resize_instances(image, inst, (60, 80))  # x2 each way
    assert resized.shape == (60, 80, 3) and out.masks.shape == (2, 60, 80)
    np.testing.assert_array_equal(out.boxes, inst.boxes * 2)
    for box, mask in zip(out.boxes, out.masks, strict=True):
        np.testing.assert_array_equal(box, box_of_mask(mask))  # an exact x2: nearest keeps masks tight


def test_letterbox_places_boxes_inside_padding() -> None:
    image, inst = sample()
    out_image, out = resize_instances(image, inst, (60, 60), letterbox=True, fill=(1, 2, 3))
    # scale min(60/30, 60/40) = 1.5: inner 45 x 60, top (60 - 45) // 2 = 7
    np.testing.assert_allclose(out.boxes, inst.boxes * 1.5 + np.array([0, 7, 0, 7]))
    np.testing.assert_array_equal(out_image[0, 0], [1, 2, 3])
    np.testing.assert_array_equal(out_image[59, 59], [1, 2, 3])
    assert not out.masks[:, :7].any() and not out.masks[:, 52:].any()
    for box, mask in zip(out.boxes, out.masks, strict=True):
        np.testing.assert_allclose(box, box_of_mask(mask), atol=1)


def test_transforms_and_collate_variable_objects() -> None:
    image, inst = sample()
    x, t = DetEvalTransform(resize=(60, 80))(image, inst)
    assert x.shape == (3, 60, 80) and t["boxes"].shape == (2, 4) and t["masks"].shape == (2, 60, 80)
    train = DetTrainTransform(resize=(60, 80), seed=0)
    flips = {float(train(image, inst)[1]["boxes"][0, 0]) for _ in range(20)}
    assert flips == {6.0, 80.0 - 18.0}  # 3 * 2 unflipped, 80 - 9 * 2 flipped
    batch = [DetEvalTransform(resize=(60, 80))(image, inst), DetEvalTransform(resize=(60, 80))(image, inst.select([1]))]
    images, targets = collate_detection(batch)
    assert images.shape == (2, 3, 60, 80) and [len(t["labels"]) for t in targets] == [2, 1]
    with pytest.raises(DataError, match="one size"):
        collate_detection([batch[0], DetEvalTransform(resize=None)(image, inst)])


# ---------------------------------------------------------------------------------------------- demo
# sha256 of generate()'s images and masks for these scenes: the segmentation demo data must stay bit-for-bit.
DEMO_SCENES = [(0, 0, 0, (96, 128)), (0, 1, 3, (96, 128)), (7, 0, 11, (64, 80)), (0, 0, 5, (192, 256))]
DEMO_HASH = "cec445631eb7928556dd824e8d5ff1685934b6228b51b789cafc5511429cf164"


def test_demo_segmentation_unchanged() -> None:
    h = hashlib.sha256()
    for seed, split, index, size in DEMO_SCENES:
        image, mask = generate(np.random.default_rng((seed, split, index)), size)
        h.update(image.tobytes())
        h.update(mask.astype(np.int64).tobytes())
    assert h.hexdigest() == DEMO_HASH


def test_demo_instances_are_exact() -> None:
    counts = {0: 0, 1: 0}
    for index in range(12):
        image, mask, inst = generate_scene(np.random.default_rng((0, 1, index)), (96, 128))
        assert inst.masks.sum(axis=0).max() <= 1  # one owner per pixel
        for seg_label, det_label in OBJECT_LABELS.items():
            own = inst.masks[inst.labels == det_label].any(axis=0)
            np.testing.assert_array_equal(own, mask == seg_label)  # every object pixel, and only those
            counts[det_label] += int((inst.labels == det_label).sum())
        for box, m, crowd in zip(inst.boxes, inst.masks, inst.iscrowd, strict=True):
            assert m.any()  # fully hidden objects are dropped
            np.testing.assert_array_equal(box, box_of_mask(m))
            assert crowd == (m.sum() < MIN_VISIBLE_PIXELS)
    assert counts[0] >= 12 and counts[1] >= 12  # at least a vehicle and a pole per scene


def test_demo_detection_dataset_matches_segmentation_images() -> None:
    det = build_detection_dataset("demo:3", "val", demo_size=(64, 80), demo_count=2)
    seg = DemoDataset("val", seed=3, size=(64, 80), count=2)
    assert det.info.class_names == ("vehicle", "pole") and len(det) == 2 and DEMO_SPLITS["val"] == 1
    image, inst = det.load(1)
    np.testing.assert_array_equal(image, seg.load(1)[0])
    x, target = det[1]
    assert x.shape == (3, 64, 80) and target["masks"].shape == (len(inst), 64, 80)


# ---------------------------------------------------------------------------------------------- CamVid proxy
@pytest.fixture(scope="module")
def proxy():
    script = ROOT / "benchmarks" / "camvid_instances.py"
    spec = importlib.util.spec_from_file_location("camvid_instances", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["camvid_instances"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("camvid_instances", None)


def test_proxy_components_and_ignore_rules(proxy) -> None:
    labels = np.full((60, 100), 3, np.uint8)  # road
    labels[5:25, 5:20] = 8  # a car, 15 x 20
    labels[5:25, 30:45] = 8  # a second car, apart
    labels[25:26, 20:21] = 8  # a diagonal neighbour of the first car's corner pixel (8-connected): merges
    labels[40:45, 0:5] = 9  # a pedestrian of 25 px: small
    labels[30:40, 50:80] = 9  # 30 x 10 pedestrians side by side: wide
    for k in range(20):  # a 1 px diagonal chain of cyclists: sparse
        labels[40 + k, 70 + k if 70 + k < 100 else 99] = 10
    comps = proxy.components(labels)
    cars = [c for c in comps if c["label"] == 8]
    assert [c["box"] for c in cars] == [[5, 5, 21, 26], [30, 5, 45, 25]]  # tight, pixel edges
    assert [c["ignore"] for c in cars] == [None, None]
    people = {tuple(c["box"]): c["ignore"] for c in comps if c["label"] == 9}
    assert people == {(0, 40, 5, 45): "small", (50, 30, 80, 40): "wide"}
    (cyclist,) = [c for c in comps if c["label"] == 10]
    assert cyclist["area"] == 20 and cyclist["ignore"] == "small"
    assert proxy.ignore_reason(10, [0, 0, 40, 40], 300) == "sparse"


def test_proxy_writes_a_coco_folder_the_loader_reads(proxy, tmp_path: Path) -> None:
    src = tmp_path / "camvid"
    labels = np.full((H, W), 3, np.uint8)
    labels[2:12, 3:13] = 8
    labels[20:21, 20:21] = 9
    write_image(src / "val" / "f.png")
    (src / "valannot").mkdir()
    Image.fromarray(labels).save(src / "valannot" / "f.png")
    coco = proxy.coco_split(src, tmp_path / "out", "val")
    assert proxy.counts(coco)["per_class"]["Car"]["objects_kept"] == 1
    assert (tmp_path / "out" / "images" / "val" / "f.png").is_symlink()
    ds = build_detection_dataset(f"coco:{tmp_path / 'out'}", "val")
    inst = ds.load(0)[1]
    np.testing.assert_array_equal(inst.boxes, [[3, 2, 13, 12], [20, 20, 21, 21]])
    np.testing.assert_array_equal(inst.iscrowd, [False, True])


@pytest.mark.skipif(not (CAMVID / "valannot").is_dir(), reason="CamVid is not at ../shared/data/camvid")
def test_proxy_on_real_camvid_val(proxy, tmp_path: Path) -> None:
    c = proxy.counts(proxy.coco_split(CAMVID, tmp_path, "val"))
    assert c["images"] == 101 and c["components"] > 0
    assert 0 < c["ignored_share"] < 1
