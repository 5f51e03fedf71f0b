"""A proxy of instances derived from CamVid's semantic labels, written as a COCO-JSON dataset folder.

    python benchmarks/camvid_instances.py --src ../shared/data/camvid --dst .bench/camvid_instances

Its counts go to docs/results with the command's provenance through benchmarks/record_command.py:

    python benchmarks/record_command.py --json docs/results/camvid_instances_proxy.json \\
        --embed proxy=/tmp/proxy.json -- python benchmarks/camvid_instances.py --src ../shared/data/camvid \\
        --dst /tmp/camvid_instances --results /tmp/proxy.json

CamVid has no instance ids, so this is not instance ground truth: each 8-connected component of a
countable class in a label map becomes one object. Touching objects of one class become one component
and an occluded object cut in two becomes two; the components that are most likely such artefacts are
kept but marked ``iscrowd`` (ignored by evaluation, as COCO ignores crowd regions), so a detector is
neither rewarded for copying them nor punished for splitting them:

- ``small``: fewer than :data:`MIN_AREA` pixels (fragments and far objects, often cut by a pole);
- ``sparse``: the component fills less than :data:`MIN_FILL` of its box (a diagonal chain of touching
  objects, or a thin fragment wrapped around an occluder);
- ``wide``: a component of :data:`WIDE_MIN_AREA` pixels or more wider than :data:`MAX_ASPECT` times its
  height for its class (side-by-side cars; a group of pedestrians), the thresholds the CamVid README's
  measurements single out as likely merges.

Classes: Car (8), Pedestrian (9), Bicyclist (10), the classes of CamVid's 11 that are things (countable
objects) in the panoptic sense. Pole (2) and SignSymbol (6) are left out: a pole's pixels run into the
signs and lights it carries and are cut by every wire and branch in front of it, and SignSymbol mixes
signs, lights and painted symbols, so their components say little about how many objects there are;
Cityscapes' panoptic labels count poles and signs as stuff too.

Writes DST/images/<split>/*.png (symlinks to the CamVid images, which stay where they are: CamVid's
licence forbids copying it into the project) and DST/annotations/instances_<split>.json, which
``--data coco:DST`` reads; and, with --results, the counts per class (objects, ignored share and why).
Call it by its name everywhere: "a proxy of instances derived from CamVid's semantic labels".
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common, also when loaded by path (tests)

PROXY_CLASSES = {8: "Car", 9: "Pedestrian", 10: "Bicyclist"}  # CamVid label -> name; COCO ids 1.. in this order
MIN_AREA = 50
MIN_FILL = 0.25
WIDE_MIN_AREA = 200
MAX_ASPECT = {8: 2.5, 9: 0.8, 10: 2.0}  # box width / height above which a large component is a likely merge
EIGHT_CONNECTED = np.ones((3, 3), bool)


def components(labels: np.ndarray) -> list[dict]:
    """Every 8-connected component of the proxy classes in an H x W label map, in class then scan order:
    ``{"label", "box": [x0, y0, x1, y1] (pixel edges), "area", "ignore": reason or None}``."""
    out = []
    for label in PROXY_CLASSES:
        ids, count = ndimage.label(labels == label, structure=EIGHT_CONNECTED)
        if not count:
            continue
        areas = np.bincount(ids.ravel(), minlength=count + 1)
        for k, found in enumerate(ndimage.find_objects(ids), 1):
            rows, cols = found
            box = [cols.start, rows.start, cols.stop, rows.stop]
            out.append(
                {"label": label, "box": box, "area": int(areas[k]), "ignore": ignore_reason(label, box, int(areas[k]))}
            )
        # find_objects returns slices whose stop is one past the last pixel: the tight box in pixel edges.
    return out


def ignore_reason(label: int, box: list[int], area: int) -> str | None:
    """Why a component is marked iscrowd (``small``, ``sparse``, ``wide``), or None for an object."""
    width, height = box[2] - box[0], box[3] - box[1]
    if area < MIN_AREA:
        return "small"
    if area < MIN_FILL * width * height:
        return "sparse"
    if area >= WIDE_MIN_AREA and width > MAX_ASPECT[label] * height:
        return "wide"
    return None


def coco_split(src: Path, dst: Path, split: str) -> dict:
    """Write DST's images/<split> links and annotations/instances_<split>.json; returns the COCO dict."""
    image_dir, label_dir = src / split, src / f"{split}annot"
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise SystemExit(f"CamVid split {split!r} not found: expected {image_dir} and {label_dir} (SegNet layout).")
    links = dst / "images" / split
    links.mkdir(parents=True, exist_ok=True)
    category_of = {label: k for k, label in enumerate(PROXY_CLASSES, 1)}
    images, annotations = [], []
    for image_id, image in enumerate(sorted(image_dir.glob("*.png")), 1):
        labels = np.asarray(Image.open(label_dir / image.name))
        link = links / image.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(image.resolve())
        height, width = labels.shape
        images.append({"id": image_id, "file_name": image.name, "width": width, "height": height})
        for c in components(labels):
            x0, y0, x1, y1 = c["box"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_of[c["label"]],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": c["area"],
                    "iscrowd": int(c["ignore"] is not None),
                    "ignore_reason": c["ignore"],
                }
            )
    categories = [{"id": category_of[label], "name": name} for label, name in PROXY_CLASSES.items()]
    coco = {
        "info": {
            "description": "a proxy of instances derived from CamVid's semantic labels (not instance ground truth)"
        },
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (dst / "annotations").mkdir(parents=True, exist_ok=True)
    (dst / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return coco


def counts(coco: dict) -> dict:
    """Objects per class: total, ignored (and why), the ignored share, and images with no kept object."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    per_class = {}
    for cid, name in names.items():
        anns = [a for a in coco["annotations"] if a["category_id"] == cid]
        reasons = [a["ignore_reason"] for a in anns if a["ignore_reason"]]
        per_class[name] = {
            "components": len(anns),
            "objects_kept": len(anns) - len(reasons),
            "ignored": len(reasons),
            "ignored_share": round(len(reasons) / len(anns), 4) if anns else None,
            "ignored_by_reason": {r: reasons.count(r) for r in ("small", "sparse", "wide")},
        }
    kept_images = {a["image_id"] for a in coco["annotations"] if not a["iscrowd"]}
    total = len(coco["annotations"])
    ignored = sum(a["iscrowd"] for a in coco["annotations"])
    return {
        "images": len(coco["images"]),
        "images_without_kept_objects": len(coco["images"]) - len(kept_images),
        "components": total,
        "ignored_share": round(ignored / total, 4) if total else None,
        "per_class": per_class,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path("../shared/data/camvid"), help="CamVid, SegNet layout")
    ap.add_argument("--dst", type=Path, default=Path(".bench/camvid_instances"), help="the COCO-JSON folder to write")
    ap.add_argument("--splits", default="train,val")
    ap.add_argument("--results", type=Path, help="write the counts here (docs/results/camvid_instances_proxy.json)")
    args = ap.parse_args(argv)
    splits = {split: counts(coco_split(args.src, args.dst, split)) for split in args.splits.split(",")}
    for split, c in splits.items():
        print(
            f"{split}: {c['images']} images, {c['components']} components, ignored share {c['ignored_share']}",
            file=sys.stderr,
        )
    if args.results:
        from common import cpu_summary, git_state, lscpu, versions, write_json_atomic

        write_json_atomic(
            args.results,
            {
                "what": "a proxy of instances derived from CamVid's semantic labels (not CamVid instance ground "
                "truth): 8-connected components of Car, Pedestrian, Bicyclist; iscrowd = ignored in evaluation",
                "command": "python benchmarks/camvid_instances.py "
                + shlex.join(sys.argv[1:] if argv is None else argv),
                "rules": {
                    "classes": PROXY_CLASSES,
                    "min_area": MIN_AREA,
                    "min_fill": MIN_FILL,
                    "wide_min_area": WIDE_MIN_AREA,
                    "max_aspect": {PROXY_CLASSES[k]: v for k, v in MAX_ASPECT.items()},
                },
                "splits": splits,
                **git_state(),
                "machine": {**cpu_summary(), "lscpu_model": lscpu().get("Model name")},
                "versions": {k: versions().get(k) for k in ("numpy", "python")} | {"scipy": _scipy_version()},
            },
        )
        print(f"wrote {args.results}", file=sys.stderr)
    print(json.dumps(splits))


def _scipy_version() -> str:
    import scipy

    return scipy.__version__


if __name__ == "__main__":
    main()
