"""Do the offline EfficientNet-Lite ImageNet weights load right, and what does the normalisation mismatch cost?

    python benchmarks/pretrained_lite_probe.py --camvid ../shared/data/camvid --out /tmp/probe.json

docs/results/pretrained_lite_probe.json embeds that file in a benchmarks/record_command.py record (its command,
commit, machine, versions and wall time), with a short train-teacher and distill run on the Lite presets.

Two checks on every CamVid val frame (resized to the model's ImageNet size, centre crop):

* classifier: the whole file (encoder and ``_conv_head``/``_bn1``/``_fc``) mapped by file order onto
  timm's ``tf_efficientnet_lite{0,1,2}`` with ``pretrained.map_by_order``; top-1 and top-5 under the
  weights' own normalisation (mean 0.5, std 0.5) and the project's (ImageNet mean/std). A street frame
  should come out as streetcar / trolleybus / traffic light (ImageNet classes 829, 874, 920).
* encoder: the segmentation preset as built by ``build_model(..., pretrained="imagenet")`` (stride 16,
  last stage dilated), with the file's head on its deepest feature; same classes expected. This is
  the classifier-less encoder that training starts from. Plus the cosine similarity of its pooled
  deepest feature between the two normalisations.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from common import cpu_model
from PIL import Image

STREET = {829: "streetcar", 874: "trolleybus", 920: "traffic light"}
SIZE = {0: 224, 1: 240, 2: 260}  # the ImageNet resolution of each Lite model
NORMS = {
    "own (0.5, 0.5)": ((0.5,) * 3, (0.5,) * 3),
    "project (ImageNet)": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def frames(root: Path, size: int) -> np.ndarray:
    """N x H x W x 3 on the 0..1 scale: resize the short side to ``size``, centre crop a square."""
    out = []
    for path in sorted((root / "val").glob("*.png")):
        img = Image.open(path).convert("RGB")
        w, h = img.size
        img = img.resize((round(w * size / h), size), Image.BILINEAR)
        left = (img.size[0] - size) // 2
        out.append(np.asarray(img.crop((left, 0, left + size, size)), np.float32) / 255)
    return np.stack(out)


def normalise(x: np.ndarray, norm: str) -> torch.Tensor:
    mean, std = NORMS[norm]
    return torch.from_numpy(((x - np.float32(mean)) / np.float32(std)).transpose(0, 3, 1, 2).copy())


def summary(logits: torch.Tensor) -> dict:
    top5 = logits.topk(5, dim=1).indices
    top1 = top5[:, 0]
    counts = torch.bincount(top1, minlength=1000)
    common = [(int(i), int(counts[i])) for i in counts.argsort(descending=True)[:5] if counts[i] > 0]
    return {
        "top1_street": round(float(sum((top1 == k).float().mean() for k in STREET)), 4),
        "top5_street": round(float(torch.isin(top5, torch.tensor(list(STREET))).any(1).float().mean()), 4),
        "most_common_top1": [[i, n] for i, n in common],
    }


def main() -> int:
    import timm

    from bckd_pipeline.distill import pretrained
    from bckd_pipeline.distill.models import build_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--camvid", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--lite", default="0,1,2", help="which Lite models")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    rows = []
    for n in (int(k) for k in args.lite.split(",")):
        t0 = time.perf_counter()
        encoder = f"tu-tf_efficientnet_lite{n}"
        weights = pretrained.OFFLINE_WEIGHTS[encoder]
        path = pretrained.weight_file(weights)
        pretrained.verify_sha256(path, weights)
        state = torch.load(path, map_location="cpu", weights_only=True)
        classifier = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False).eval()
        classifier.load_state_dict(
            pretrained.map_by_order(state, classifier.state_dict(), what=f"lite{n} classifier"), strict=True
        )
        seg = build_model(f"deeplabv3plus-lite{n}", 11, pretrained="imagenet").eval()
        head = torch.nn.Sequential(classifier.conv_head, classifier.bn2, classifier.global_pool, classifier.classifier)
        x = frames(args.camvid, SIZE[n])
        row = {"model": f"lite{n}", "weights": weights.filename, "sha256": weights.sha256, "frames": len(x)}
        pooled = {}
        for norm in NORMS:
            inp = normalise(x, norm)
            deepest = seg.encoder(inp)[-1]
            pooled[norm] = deepest.mean((2, 3))
            row[f"classifier, {norm}"] = summary(classifier(inp))
            row[f"seg encoder + file head, {norm}"] = summary(head(deepest))
        a, b = pooled.values()
        row["seg encoder pooled deepest feature, cosine own vs project"] = round(
            float(torch.nn.functional.cosine_similarity(a, b).mean()), 4
        )
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "what": __doc__.strip().splitlines()[0],
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "street_classes": STREET,
        "normalisations": {k: {"mean": v[0], "std": v[1]} for k, v in NORMS.items()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
