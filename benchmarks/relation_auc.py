"""Can a relation tell classes apart? The AUC diagnostic behind BCKD's teacher taps.

BCKD's context term makes the student copy the teacher's self-relation: the cosine similarity
between every two positions of the fused feature grid. A relation is worth copying only if it says
which positions belong together. This script measures that on evaluation images at the BCKD grid:
for every pair of grid cells of one image whose ground-truth label is clear (one class covers at
least ``--purity`` of the cell), the cosine similarity of their fused features should be higher
for a same-class pair than for a different-class pair. The score is the ROC AUC of that cosine as
a same-class detector (0.5: the relation knows nothing about classes; 1: it separates them).

Feature sets, each fused like BCKD's teacher side (resize every tapped stage to the grid, concat):
- teacher, old taps: its encoder stages (``--teacher-taps encoder``), old default fusion (a frozen
  random projection to 64 channels per stage), and the same taps with identity fusion;
- teacher, new taps: encoder stages + decoder output, identity and normalized (the default fusion);
- teacher, each tapped stage alone; and, if given, each ``--student`` checkpoint (a student trained
  alone, say) with its own encoder taps: what the student knows without a teacher.

    python benchmarks/relation_auc.py --teacher .bench/study96/teacher/teacher.pt \\
        --student .bench/study96/student/s0/student.pt --data camvid:.bench/camvid96 \\
        --out docs/results/relation_auc_cpu96.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import cpu_model, git_state
from scipy.stats import rankdata


def pair_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the positives ``same`` (Mann-Whitney U over ranks; ties count 1/2)."""
    pos, neg = int(same.sum()), int((~same).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[same].sum() - pos * (pos + 1) / 2) / (pos * neg))


def cell_labels(mask: torch.Tensor, grid: tuple[int, int], num_classes: int, purity: float) -> torch.Tensor:
    """The majority class of each grid cell, or -1 where no class covers ``purity`` of the cell."""
    known = (mask >= 0) & (mask < num_classes)
    onehot = F.one_hot(mask.clamp(0, num_classes - 1), num_classes).permute(2, 0, 1).float() * known
    share = F.adaptive_avg_pool2d(onehot[None], grid)[0]
    best, label = share.max(0)
    return torch.where(best >= purity, label, torch.full_like(label, -1))


def fuse(feats: list[torch.Tensor], grid: tuple[int, int], mode: str) -> torch.Tensor:
    from bckd_pipeline.distill.bckd import TeacherFusion

    fusion = TeacherFusion([f.shape[1] for f in feats], 64, mode, torch.Generator().manual_seed(0))
    return fusion(feats, grid)


def image_pairs(fused: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Cosines and same-class flags of every pair of labelled cells of one image (i < j)."""
    keep = labels.flatten() >= 0
    q = F.normalize(fused.flatten(1)[:, keep], dim=0)
    lab = labels.flatten()[keep]
    i, j = torch.triu_indices(len(lab), len(lab), offset=1)
    cos = (q[:, i] * q[:, j]).sum(0)
    return cos.numpy(), (lab[i] == lab[j]).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint")
    ap.add_argument("--student", type=Path, action="append", default=[], help="student checkpoint(s), repeatable")
    ap.add_argument("--data", required=True, help="KIND:PATH, as for the CLI")
    ap.add_argument("--split", default="val")
    ap.add_argument("--grid-stride", type=int, default=8, help="BCKD's grid_stride")
    ap.add_argument("--purity", type=float, default=0.75, help="share of a cell its label must cover")
    ap.add_argument("--images", type=int, default=0, help="first N images (0: all)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from bckd_pipeline.data import build_dataset
    from bckd_pipeline.data.transforms import EvalTransform
    from bckd_pipeline.distill.checkpoint import load_model
    from bckd_pipeline.distill.models import FeatureTaps, default_taps

    started = time.time()
    data = build_dataset(args.data, args.split, EvalTransform(resize=None))
    n_images = len(data) if args.images <= 0 else min(args.images, len(data))
    teacher, tmeta = load_model(args.teacher)
    teacher.eval()
    num_classes = tmeta.num_classes
    models = {"teacher": (teacher, default_taps(tmeta.model, role="teacher"))}
    for path in args.student:
        model, meta = load_model(path)
        models[f"student {path}"] = (model.eval(), default_taps(meta.model))

    taps = {name: FeatureTaps(m, t) for name, (m, t) in models.items()}
    collected: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}

    def add(key: str, fused: torch.Tensor, labels: torch.Tensor) -> None:
        cos, same = image_pairs(fused, labels)
        scores, flags = collected.setdefault(key, ([], []))
        scores.append(cos)
        flags.append(same)

    with torch.no_grad():
        for k in range(n_images):
            image, mask = data[k]
            hw = tuple(image.shape[-2:])
            grid = (hw[0] // args.grid_stride, hw[1] // args.grid_stride)
            labels = cell_labels(mask, grid, num_classes, args.purity)
            for name, (model, _) in models.items():
                model(image[None])
                feats = taps[name].collect(hw)
                if name == "teacher":
                    encoder, decoder = feats[:-1], feats[-1:]
                    add(
                        "teacher, old taps (encoder), frozen random projection (old default)",
                        fuse(encoder, grid, "frozen")[0],
                        labels,
                    )
                    add("teacher, old taps (encoder), identity", fuse(encoder, grid, "identity")[0], labels)
                    add(
                        "teacher, new taps (encoder + decoder), identity",
                        fuse(feats, grid, "identity")[0],
                        labels,
                    )
                    add(
                        "teacher, new taps (encoder + decoder), normalized (default)",
                        fuse(feats, grid, "normalized")[0],
                        labels,
                    )
                    add("teacher, decoder only", fuse(decoder, grid, "identity")[0], labels)
                    for i, f in enumerate(encoder):
                        add(
                            f"teacher, encoder stage {i} alone ({f.shape[1]} ch, stride {hw[0] // f.shape[-2]})",
                            fuse([f], grid, "identity")[0],
                            labels,
                        )
                else:
                    add(f"{name}: encoder taps, identity", fuse(feats, grid, "identity")[0], labels)
                    add(f"{name}: encoder taps, normalized", fuse(feats, grid, "normalized")[0], labels)
                    add(f"{name}: deepest stage alone", fuse(feats[-1:], grid, "identity")[0], labels)
            print(f"\r{k + 1}/{n_images} images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    rows = []
    for key, (scores, flags) in collected.items():
        s, f = np.concatenate(scores), np.concatenate(flags)
        rows.append(
            {
                "features": key,
                "auc": round(pair_auc(s, f), 4),
                "pairs": int(len(s)),
                "same_class_share": round(float(f.mean()), 4),
            }
        )
    cpu = cpu_model()
    commit = git_state()["git_commit"]
    result = {
        "command": "python " + " ".join(sys.argv),
        "what": "ROC AUC of the cosine similarity of fused features at the BCKD grid for same-class vs different-class "
        "cell pairs of one image (0.5 = knows nothing about classes)",
        "images": n_images,
        "split": args.split,
        "grid_stride": args.grid_stride,
        "purity": args.purity,
        "teacher": {"checkpoint": str(args.teacher), "model": tmeta.model},
        "students": [str(p) for p in args.student],
        "rows": rows,
        "machine": cpu,
        "git_commit": commit,
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    width = max(len(r["features"]) for r in rows)
    for r in rows:
        print(f"{r['features']:<{width}}  AUC {r['auc']:.4f}  ({r['pairs']} pairs)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
