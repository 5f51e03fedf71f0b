"""Make a resized copy of CamVid (SegNet layout) for benchmarks, plus a tuning split.

    python benchmarks/prepare_camvid.py --src ../shared/data/camvid --dst .bench/camvid --size 144,192

Writes DST/{train,trainannot,val,valannot} at the given size (bilinear images, nearest labels)
and DST_tune/{train,trainannot,val,valannot}, where "val" is every 5th training image and
"train" the other four fifths: options are chosen on that split, never on the real val.
The copy is for local runs only; CamVid's licence forbids committing or shipping it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--dst", type=Path, required=True)
    ap.add_argument("--size", default="120,160", help="H,W")
    ap.add_argument("--tune-every", type=int, default=5)
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split(","))
    tune = args.dst.with_name(args.dst.name + "_tune")

    def put(src_img: Path, src_lbl: Path, root: Path, split: str) -> None:
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        Image.open(src_img).convert("RGB").resize((w, h), Image.BILINEAR).save(root / split / src_img.name)
        Image.open(src_lbl).resize((w, h), Image.NEAREST).save(root / f"{split}annot" / src_lbl.name)

    for split in ("train", "val"):
        images = sorted((args.src / split).glob("*.png"))
        for i, img in enumerate(images):
            lbl = args.src / f"{split}annot" / img.name
            put(img, lbl, args.dst, split)
            if split == "train":
                put(img, lbl, tune, "val" if i % args.tune_every == 0 else "train")
    print(f"wrote {args.dst} and {tune}")


if __name__ == "__main__":
    main()
