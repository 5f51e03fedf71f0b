"""Why does BCKD's boundary term cost accuracy at a coarse grid? Three measurements over one distillation run.

For a trained teacher checkpoint, this script distils the student (``kd+bckd`` by default, the distill command's
task and trainer, so the terms are exactly what ``bckd-pipeline distill`` trains) for a short schedule and records:

(a) the gradient share of L_b on the student: the trainer's own ``grad/*`` log (the norm of each weighted term's
    gradient at the student's deepest tapped stage, every ``--every`` iterations), as a ratio to the CE's and as a
    share of the sum of every term's norm;
(b) whether L_b's gradient opposes L_c's: the cosine of the two unweighted gradients on the tensor both terms
    share, the student's fused features F^s (the boundary head and Psi_s both read it), and at the deepest tapped
    stage the cosine of each BCKD term's gradient with the rest of the loss (CE + KD); measured through forward
    hooks on the task's modules, so nothing in ``distill/`` changes;
(c) what the teacher's boundary map is at the grid: the map B^t the term distils (``boundary_teacher`` semantic:
    ``1 - sum_c p_c pbar_c`` of the teacher's class probabilities pooled to the grid) scored against the
    ground-truth label boundaries brought to the grid, as a ROC AUC (0.5: knows nothing about boundaries), per
    cell and per path (Eq. (2)'s pairs); the same for the trained student's boundary head and for the student's
    own class probabilities; and the teacher's spatial softmax (its mean max-probability and effective number of
    positions, at T = 1 and at the run's final T). ``--picture`` draws the teacher's map next to the ground truth
    at the grid for a few evaluation images.

A grid cell is a ground-truth boundary cell when one of its pixels has a 4-neighbour with another valid label;
cells with less than half their pixels labelled are left out. A path's ground truth is the same path max over
the boundary cells (a boundary cell lies on the path), or, second definition, whether its two end cells carry
different majority labels (the paper's "1 if they belong to different classes").

    python benchmarks/boundary_diagnosis.py --teacher .bench/study96-bf16/teacher/teacher.pt \\
        --data camvid:.bench/camvid96 --size 96,128 --epochs 3 \\
        --picture docs/img/boundary_diagnosis_cpu96.png --out docs/results/boundary_diagnosis_cpu96.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import git_state, lscpu, versions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relation_auc import pair_auc  # noqa: E402  (one Mann-Whitney AUC for both diagnostics)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    denom = float(a.norm() * b.norm())
    return float((a @ b) / denom) if denom > 0 else float("nan")


def pixel_boundaries(mask: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(boundary, labelled) H x W bool maps: a labelled pixel with a labelled 4-neighbour of another class."""
    valid = (mask >= 0) & (mask < num_classes)
    edge = torch.zeros_like(valid)
    for a, b, va, vb in (
        (mask[:, 1:], mask[:, :-1], valid[:, 1:], valid[:, :-1]),
        (mask[1:, :], mask[:-1, :], valid[1:, :], valid[:-1, :]),
    ):
        diff = (a != b) & va & vb
        if a.shape[1] != mask.shape[1]:
            edge[:, 1:] |= diff
            edge[:, :-1] |= diff
        else:
            edge[1:, :] |= diff
            edge[:-1, :] |= diff
    return edge, valid


def grid_truth(mask: torch.Tensor, grid: tuple[int, int], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(boundary cell, cell kept) at ``grid``: a cell holding a boundary pixel, and one at least half labelled."""
    edge, valid = pixel_boundaries(mask, num_classes)
    cell_edge = F.adaptive_max_pool2d(edge[None, None].float(), grid)[0, 0] > 0
    cell_kept = F.adaptive_avg_pool2d(valid[None, None].float(), grid)[0, 0] >= 0.5
    return cell_edge, cell_kept


def path_ends(radius: int) -> list[tuple[int, int]]:
    """The (dy, dx) end of every direction, in ``search_paths``' order."""
    from bckd_pipeline.distill.losses import search_paths

    return [max(p, key=lambda q: q[0] * q[0] + q[1] * q[1]) for p in search_paths(radius)]


def pair_truth(labels: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(different, known) P x Hc x Wc: the source and end cells of each path carry different majority labels,
    and both are known (``labels`` >= 0)."""
    h, w = labels.shape
    rf = radius - 1
    hc, wc = h - rf, w - 2 * rf
    src = labels[:hc, rf : rf + wc]
    diff, known = [], []
    for dy, dx in path_ends(radius):
        dst = labels[dy : dy + hc, rf + dx : rf + dx + wc]
        diff.append(src != dst)
        known.append((src >= 0) & (dst >= 0))
    return torch.stack(diff), torch.stack(known)


def spatial_softmax_stats(maps: torch.Tensor, t: float) -> dict:
    """Mean over maps of the max probability and of exp(entropy) (the effective number of positions)."""
    p = (maps.flatten(2).double() / t).softmax(-1)
    ent = -(p * p.clamp_min(1e-300).log()).sum(-1)
    return {
        "temperature": round(t, 4),
        "positions": int(p.shape[-1]),
        "mean_max_prob": round(float(p.amax(-1).mean()), 4),
        "mean_effective_positions": round(float(ent.exp().mean()), 2),
    }


class GradientProbe:
    """Forward hooks on a ``SegDistillTask``: on every ``every``-th training iteration, the gradients of the
    unweighted L_b and L_c on the fused student features and at the deepest tapped student stage, and of the
    whole loss there (so the rest, CE + KD, is the whole minus the weighted BCKD terms). Partial backward passes
    with ``retain_graph``: the trainer's own backward is untouched. Removed with :meth:`close`."""

    def __init__(self, task, every: int, last_iteration: int):
        self.task, self.every, self.last = task, every, last_iteration
        self.records: list[dict] = []
        self._fused = self._deep = self._terms = None
        bckd = task.bckd
        self._handles = [
            bckd.student_fusion.register_forward_hook(self._on_fusion),
            bckd.register_forward_hook(self._on_bckd),
            task.register_forward_hook(self._on_task),
        ]

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def _on_fusion(self, _module, _inputs, output):
        self._fused = output

    def _on_bckd(self, _module, inputs, output):
        self._deep = inputs[0][-1]
        self._terms = output

    def _on_task(self, module, inputs, out):
        step = inputs[2] if len(inputs) > 2 else None
        if not module.training or step is None or self._terms is None:
            return
        it = step.iteration + 1
        if it % self.every and it != self.last:
            return
        terms, fused, deep = self._terms, self._fused, self._deep
        gamma, alpha, beta = float(out["bckd/gamma"]), float(out["bckd/alpha"]), float(out["bckd/beta"])

        def grad(term, at):
            (g,) = torch.autograd.grad(term, at, retain_graph=True, allow_unused=True)
            return torch.zeros_like(at) if g is None else g.float()

        gb_f, gc_f = grad(terms["boundary"], fused), grad(terms["context"], fused)
        gb_d, gc_d, gall_d = grad(terms["boundary"], deep), grad(terms["context"], deep), grad(out["loss"], deep)
        wb, wc = gamma * alpha, gamma * beta
        grest_d = gall_d - wb * gb_d - wc * gc_d
        self.records.append(
            {
                "iteration": it,
                "gamma": gamma,
                "temperature": float(terms["temperature"]),
                "loss_boundary": float(terms["boundary"].detach()),
                "loss_context": float(terms["context"].detach()),
                "fused": {
                    "cos_boundary_context": cosine(gb_f, gc_f),
                    "norm_boundary_weighted": wb * float(gb_f.norm()),
                    "norm_context_weighted": wc * float(gc_f.norm()),
                },
                "deep": {
                    "cos_boundary_context": cosine(gb_d, gc_d),
                    "cos_boundary_rest": cosine(gb_d, grest_d),
                    "cos_context_rest": cosine(gc_d, grest_d),
                    "norm_boundary_weighted": wb * float(gb_d.norm()),
                    "norm_context_weighted": wc * float(gc_d.norm()),
                    "norm_rest": float(grest_d.norm()),
                },
            }
        )
        self._terms = None


def thirds(values: list[float]) -> dict:
    """Mean of the first, middle and last third of a series, and of all of it."""
    arr = np.asarray(values, dtype=float)
    parts = np.array_split(arr, 3) if len(arr) >= 3 else [arr, arr, arr]
    mean = lambda a: round(float(np.nanmean(a)), 4) if len(a) else None  # noqa: E731
    return {
        "first_third": mean(parts[0]),
        "middle_third": mean(parts[1]),
        "last_third": mean(parts[2]),
        "all": mean(arr),
        "n": int(len(arr)),
    }


def grad_log(history: list[dict]) -> tuple[list[dict], dict]:
    """The trainer's ``grad/*`` entries, each term's norm as a ratio to CE's and as a share of their sum."""
    rows = []
    for h in history:
        g = {k.split("/", 1)[1]: v for k, v in h.items() if k.startswith("grad/")}
        if not g:
            continue
        total = sum(g.values())
        rows.append(
            {
                "iteration": h["iteration"],
                **{f"grad_{k}": round(v, 6) for k, v in g.items()},
                **{f"share_{k}": round(v / total, 4) for k, v in g.items() if total > 0},
                **{f"{k}_over_ce": round(v / g["ce"], 4) for k, v in g.items() if k != "ce" and g.get("ce")},
            }
        )
    summary = {
        key: thirds([r[key] for r in rows if key in r])
        for key in ("share_boundary", "share_context", "share_kd", "share_ce", "boundary_over_ce", "context_over_ce")
    }
    return rows, summary


@torch.no_grad()
def boundary_maps(
    task, teacher, image: torch.Tensor, grid: tuple[int, int], with_student: bool = True
) -> dict[str, torch.Tensor]:
    """Per-cell boundary logits (1 x 1 x h x w) at ``grid``: the teacher's semantic map (what L_b distils), and
    with ``with_student`` the trained student's boundary head and the student's own semantic map."""
    from bckd_pipeline.distill.losses import semantic_boundary
    from bckd_pipeline.inference import logits_of

    hw = tuple(image.shape[-2:])
    x = image[None]
    t_logits = logits_of(teacher(x)).float()
    t_probs = F.interpolate(t_logits, size=hw, mode="bilinear", align_corners=False).softmax(1)
    maps = {"teacher": semantic_boundary(F.adaptive_avg_pool2d(t_probs, grid))}
    if not with_student:
        return maps
    student = task.student
    s_logits = logits_of(student(x)).float()
    feats = task.student_taps.collect(hw)
    fused = task.bckd.student_fusion(feats, grid)
    maps["student_head"] = task.bckd.boundary_head(fused).float()
    s_probs = F.interpolate(s_logits, size=hw, mode="bilinear", align_corners=False).softmax(1)
    maps["student_semantic"] = semantic_boundary(F.adaptive_avg_pool2d(s_probs, grid))
    return maps


def evaluate_boundaries(
    task,
    teacher,
    eval_set,
    num_classes: int,
    grid_stride: int,
    radius: int,
    t_final: float,
    n_images: int,
    with_student: bool = True,
    other_radius: int = 3,
) -> tuple[dict, list]:
    """The AUCs of (c) over the first ``n_images`` evaluation images, and the maps of the first few for a picture.
    For the teacher's map, also what the other representations would ask of the student: the per-cell map over
    the whole grid (``boundary_repr=pixel``) and the pairwise map at ``other_radius``."""
    from bckd_pipeline.distill.losses import PairwiseBoundary
    from relation_auc import cell_labels

    paths, other_paths = PairwiseBoundary(radius), PairwiseBoundary(other_radius)
    pixel_maps, other_maps, other_cross = [], [], []
    cell_scores: dict[str, list] = {}
    cell_flags: list = []
    pair_scores: dict[str, list] = {}
    pair_cross: list = []
    pair_ends_scores: list = []
    pair_ends_flags: list = []
    teacher_maps = []
    kept_images = []
    picks = {k * n_images // 4 for k in range(4)}
    task.eval()
    for k in range(n_images):
        image, mask = eval_set[k]
        hw = tuple(image.shape[-2:])
        grid = (hw[0] // grid_stride, hw[1] // grid_stride)
        edge, kept = grid_truth(mask, grid, num_classes)
        maps = boundary_maps(task, teacher, image, grid, with_student)
        keep = kept.flatten()
        cell_flags.append(edge.flatten()[keep].numpy())
        for name, z in maps.items():
            cell_scores.setdefault(name, []).append(z.flatten()[keep].numpy())
        # Eq. (2)'s pairs: B_ij of each map against the same path max over the ground-truth boundary cells.
        cross = paths(edge[None, None].float())[0] > 0.5
        src_kept = paths((~kept)[None, None].float())[0] < 0.5  # every cell on the path is kept
        pair_cross.append(cross[src_kept].numpy())
        bt = None
        for name, z in maps.items():
            b = paths(z)[0]
            pair_scores.setdefault(name, []).append(b[src_kept].numpy())
            if name == "teacher":
                bt = b
        different, known = pair_truth(cell_labels(mask, grid, num_classes, 0.75), radius)
        pair_ends_scores.append(bt[known].numpy())
        pair_ends_flags.append(different[known].numpy())
        teacher_maps.append(bt[None])
        pixel_maps.append(maps["teacher"][0])
        other_maps.append(other_paths(maps["teacher"]))
        other_src_kept = other_paths((~kept)[None, None].float())[0] < 0.5
        other_cross.append((other_paths(edge[None, None].float())[0] > 0.5)[other_src_kept].numpy())
        if k in picks:  # four images spread over the split (neighbouring frames of a video look alike)
            kept_images.append((image, mask, edge, kept, {n: torch.sigmoid(z)[0, 0] for n, z in maps.items()}))
        print(f"\r{k + 1}/{n_images} evaluation images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    flags = np.concatenate(cell_flags)
    cross = np.concatenate(pair_cross)
    ends_flags = np.concatenate(pair_ends_flags)
    out = {
        "cells": int(flags.size),
        "boundary_cell_share": round(float(flags.mean()), 4),
        "cell_auc": {n: round(pair_auc(np.concatenate(s), flags), 4) for n, s in cell_scores.items()},
        "pairs": int(cross.size),
        "crossing_pair_share": round(float(cross.mean()), 4),
        "pair_auc_crossing": {n: round(pair_auc(np.concatenate(s), cross), 4) for n, s in pair_scores.items()},
        "pairs_with_known_ends": int(ends_flags.size),
        "different_ends_share": round(float(ends_flags.mean()), 4),
        "pair_auc_ends_teacher": round(pair_auc(np.concatenate(pair_ends_scores), ends_flags), 4),
    }
    bt_all = torch.cat([m.flatten(2) for m in teacher_maps])  # images x P x sources
    out["teacher_softmax"] = [spatial_softmax_stats(bt_all, 1.0), spatial_softmax_stats(bt_all, t_final)]
    h, w = grid
    out["teacher_softmax_pixel"] = spatial_softmax_stats(torch.stack(pixel_maps), 1.0)
    out[f"teacher_softmax_radius{other_radius}"] = spatial_softmax_stats(torch.cat(other_maps), 1.0)
    out[f"crossing_pair_share_radius{other_radius}"] = round(float(np.concatenate(other_cross).mean()), 4)
    out["grid"] = [h, w]
    out["sources"] = [h - radius + 1, w - 2 * (radius - 1)]
    out["source_share_of_grid"] = round((h - radius + 1) * (w - 2 * (radius - 1)) / (h * w), 4)
    return out, kept_images


def _stretch(m: np.ndarray) -> np.ndarray:
    """A map scaled to its own range (0 at its minimum, 1 at its maximum): the spatial softmax reads only where a
    map is high relative to the rest of it, not its level."""
    return (m - m.min()) / max(float(m.max() - m.min()), 1e-6)


def draw_picture(rows: list, path: Path, scale: int = 2) -> None:
    """One row per image: the image, its ground-truth boundary cells (white; grey where the cell is mostly
    unlabelled), the teacher's map and the student head's, each scaled to its own range."""
    from PIL import Image, ImageDraw

    titles = ["image", "GT boundary cells", "teacher B^t (semantic)", "student head (trained)"]
    tiles = []
    for image, _mask, edge, kept, maps in rows:
        h, w = image.shape[-2:]
        rgb = image.permute(1, 2, 0).numpy()
        rgb = (rgb - rgb.min()) / max(float(rgb.max() - rgb.min()), 1e-6)
        pics = [Image.fromarray((rgb * 255).astype(np.uint8))]
        gt = np.where(kept.numpy(), edge.numpy().astype(np.float32), 0.5)
        for m in (gt, _stretch(maps["teacher"].numpy()), _stretch(maps["student_head"].numpy())):
            pics.append(Image.fromarray((np.clip(m, 0, 1) * 255).astype(np.uint8)).resize((w, h), Image.NEAREST))
        tiles.append([p.convert("RGB").resize((w * scale, h * scale), Image.NEAREST) for p in pics])
    tw, th = tiles[0][0].size
    pad, head = 4, 16
    canvas = Image.new("RGB", (len(titles) * (tw + pad) + pad, head + len(tiles) * (th + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        draw.text((pad + c * (tw + pad), 2), title, fill="black")
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            canvas.paste(tile, (pad + c * (tw + pad), head + r * (th + pad)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, help="teacher checkpoint (train-teacher's teacher.pt)")
    ap.add_argument("--data", help="KIND:PATH, as for the CLI (demo for a quick check)")
    ap.add_argument("--size", default="96,128", help="H,W: --resize and --crop")
    ap.add_argument("--student-arch", default="deeplabv3plus-mbv2")
    ap.add_argument("--kd", default="kd+bckd")
    ap.add_argument("--bckd", action="append", default=[], metavar="KEY=VALUE", help="BCKD option, repeatable")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--iters", type=int, help="wins over --epochs")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--every", type=int, default=5, help="measure gradients every N iterations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=0, help="evaluation images for (c) (0: all)")
    ap.add_argument("--demo-count", type=int, help="images of the demo dataset (with --data demo)")
    ap.add_argument("--picture", type=Path, help="PNG: teacher map beside the ground truth at the grid")
    ap.add_argument("--no-train", action="store_true", help="the teacher's maps only (c): no distillation run")
    ap.add_argument(
        "--labels-only",
        action="append",
        default=[],
        metavar="KIND:PATH@H,W",
        help="the ground truth's geometry at the grid of this data and size (no model); repeatable, with --out",
    )
    ap.add_argument("--note", default="", help="free text kept in the JSON (e.g. how busy the machine was)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from bckd_pipeline import metrics as M
    from bckd_pipeline.configs import BCKDConfig, DataConfig, DistillConfig, Schedule, TrainConfig
    from bckd_pipeline.distill.any_model import load_student, load_teacher
    from bckd_pipeline.distill.task import SegDistillTask
    from bckd_pipeline.distill.trainer import seed_everything, train

    started = time.time()
    load_before = os.getloadavg()
    if args.labels_only:
        rows = []
        for item in args.labels_only:
            spec, _, hw = item.rpartition("@")
            size = tuple(int(v) for v in hw.split(","))
            rows.append(label_geometry(spec, size, 8, (5, 3), args.images))
        payload = {
            "command": "python " + " ".join(sys.argv),
            "what": "ground-truth boundary geometry at the BCKD "
            "grid (grid_stride 8): boundary-cell share, source share and boundary-crossing path share per "
            "radius",
            "rows": rows,
            "device": "cpu",
            "machine": {"cpu": lscpu().get("Model name"), "isa": _isa(lscpu().get("Flags", []))},
            "versions": versions(),
            **git_state(),
            "seconds": round(time.time() - started, 1),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
        print(json.dumps(rows, indent=1))
        return
    size = tuple(int(v) for v in args.size.split(","))
    extra = {"demo_size": size, "demo_count": args.demo_count} if args.data == "demo" else {}
    data = DataConfig(spec=args.data, resize=size, crop=size, **extra)
    seed_everything(args.seed)
    train_set, eval_set = data.train_set(), data.eval_set()
    info = train_set.info
    t = load_teacher(args.teacher, None, None, info.num_classes)
    s = load_student(args.student_arch, None, None, info.num_classes, pretrained="none")
    overrides = dict(kv.split("=", 1) for kv in args.bckd)
    dcfg = DistillConfig(kd=args.kd, bckd=BCKDConfig.from_overrides(overrides, seed=args.seed))
    iters = Schedule(iters=args.iters, epochs=None if args.iters else args.epochs).resolve(
        len(train_set), args.batch_size
    )
    cfg = TrainConfig(iters=iters, batch_size=args.batch_size, seed=args.seed, num_workers=0, precision="fp32")
    task = SegDistillTask(
        s.model,
        t.model,
        cfg=dcfg,
        student_taps=s.taps(None, bckd=True),
        teacher_taps=t.taps(None, bckd=True),
        example_input=torch.randn(2, 3, *size),
        ignore_index=info.ignore_index,
    )
    probe = GradientProbe(task, args.every, iters)

    def miou(model=task.student) -> float:
        cm = M.ConfusionMatrix(info.num_classes, info.ignore_index)
        for labels, masks, _ in M.predicted_batches(model, eval_set, num_classes=info.num_classes):
            cm.update(labels, masks)
        return cm.miou()

    teacher_miou = miou(task.teacher.model)
    if args.no_train:
        probe.close()
        write_teacher_only(args, task, eval_set, info, dcfg.bckd, teacher_miou, started, load_before)
        return

    result = train(
        task,
        train_set,
        cfg,
        evaluate=miou,
        save_best=lambda it, score: None,
        description=f"{args.student_arch} kd={args.kd}",
        progress=False,
        log_every=args.every,
    )
    probe.close()
    train_seconds = time.time() - started

    b = dcfg.bckd
    n_images = len(eval_set) if args.images <= 0 else min(args.images, len(eval_set))
    t_final = float(task.bckd.temperature.value)
    auc, picture_rows = evaluate_boundaries(
        task, task.teacher.model, eval_set, info.num_classes, b.grid_stride, b.radius, t_final, n_images
    )
    if args.picture:
        draw_picture(picture_rows, args.picture)

    rows, grad_summary = grad_log(result.history)
    recs = probe.records
    probe_summary = {
        "fused_cos_boundary_context": thirds([r["fused"]["cos_boundary_context"] for r in recs]),
        "deep_cos_boundary_context": thirds([r["deep"]["cos_boundary_context"] for r in recs]),
        "deep_cos_boundary_rest": thirds([r["deep"]["cos_boundary_rest"] for r in recs]),
        "deep_cos_context_rest": thirds([r["deep"]["cos_context_rest"] for r in recs]),
        "fused_boundary_over_context_norm": thirds(
            [r["fused"]["norm_boundary_weighted"] / r["fused"]["norm_context_weighted"] for r in recs]
        ),
        "negative_share_fused_cos_boundary_context": round(
            float(np.mean([r["fused"]["cos_boundary_context"] < 0 for r in recs])), 4
        ),
        "negative_share_deep_cos_boundary_rest": round(
            float(np.mean([r["deep"]["cos_boundary_rest"] < 0 for r in recs])), 4
        ),
        "temperature": thirds([r["temperature"] for r in recs]),
        "loss_boundary": thirds([r["loss_boundary"] for r in recs]),
    }
    state = git_state()
    cpu = lscpu()
    payload = {
        "command": "python " + " ".join(sys.argv),
        "what": "BCKD boundary-term diagnosis over one short distillation run: (a) the trainer's grad/* log, "
        "(b) cosines of the L_b and L_c gradients on the fused student features and at the deepest stage, "
        "(c) ROC AUC of boundary maps at the BCKD grid against ground-truth label boundaries",
        "note": args.note,
        "teacher": {"checkpoint": str(args.teacher), "model": t.name},
        "student": args.student_arch,
        "kd": args.kd,
        "bckd_overrides": overrides,
        "bckd": {
            k: getattr(b, k)
            for k in (
                "alpha",
                "beta",
                "grid_stride",
                "radius",
                "boundary_teacher",
                "boundary_student",
                "softmax_input",
                "temperature_schedule",
                "decay",
                "gamma_mode",
            )
        },
        "data": args.data,
        "device": "cpu",
        "size": list(size),
        "seed": args.seed,
        "iterations": iters,
        "batch_size": args.batch_size,
        "train_images": len(train_set),
        "epochs": round(iters * args.batch_size / len(train_set), 2),
        "measure_every": args.every,
        "teacher_val_miou": round(teacher_miou, 2),
        "student_val_miou": round(result.best_score, 2) if math.isfinite(result.best_score) else None,
        "final_temperature": round(t_final, 4),
        "grad_log": rows,
        "grad_log_summary": grad_summary,
        "probe": recs,
        "probe_summary": probe_summary,
        "boundary_auc": {"images": n_images, "split": data.eval_split, **auc},
        "picture": str(args.picture) if args.picture else None,
        "machine": {"cpu": cpu.get("Model name"), "isa": _isa(cpu.get("Flags", [])), "cpus": cpu.get("CPU(s)")},
        "versions": versions(),
        **state,
        "torch_threads": torch.get_num_threads(),
        "loadavg_1_5_15": {
            "before": [round(v, 2) for v in load_before],
            "after": [round(v, 2) for v in os.getloadavg()],
        },
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(
        json.dumps(
            {"boundary_auc": payload["boundary_auc"], "grad_log_summary": grad_summary, "probe_summary": probe_summary},
            indent=1,
        )
    )
    print(f"wrote {args.out}")


def write_teacher_only(args, task, eval_set, info, b, teacher_miou: float, started: float, load_before) -> None:
    """``--no-train``: (c) for the teacher's map alone, with the run's provenance."""
    n_images = len(eval_set) if args.images <= 0 else min(args.images, len(eval_set))
    auc, _ = evaluate_boundaries(
        task, task.teacher.model, eval_set, info.num_classes, b.grid_stride, b.radius, 1.0, n_images, False
    )
    cpu = lscpu()
    payload = {
        "command": "python " + " ".join(sys.argv),
        "what": "BCKD boundary-term diagnosis, teacher only: ROC AUC of the teacher's boundary map at the BCKD grid "
        "against ground-truth label boundaries, and its spatial softmax in each boundary representation",
        "note": args.note,
        "teacher": {"checkpoint": str(args.teacher)},
        "teacher_val_miou": round(teacher_miou, 2),
        "data": args.data,
        "device": "cpu",
        "size": [int(v) for v in args.size.split(",")],
        "grid_stride": b.grid_stride,
        "radius": b.radius,
        "boundary_auc": {"images": n_images, "split": "val", **auc},
        "machine": {"cpu": cpu.get("Model name"), "isa": _isa(cpu.get("Flags", [])), "cpus": cpu.get("CPU(s)")},
        "versions": versions(),
        **git_state(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1_5_15": {
            "before": [round(v, 2) for v in load_before],
            "after": [round(v, 2) for v in os.getloadavg()],
        },
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(payload["boundary_auc"], indent=1))
    print(f"wrote {args.out}")


def label_geometry(spec: str, size: tuple[int, int], grid_stride: int, radii: tuple[int, ...], n_images: int) -> dict:
    """What the ground truth alone says about a grid: the share of boundary cells, and per radius the share of the
    grid that can be a source and of the paths that cross a boundary cell (no model involved)."""
    from bckd_pipeline.configs import DataConfig
    from bckd_pipeline.distill.losses import PairwiseBoundary

    data = DataConfig(spec=spec, resize=size).eval_set()
    num_classes = data.info.num_classes
    n = len(data) if n_images <= 0 else min(n_images, len(data))
    grid = (size[0] // grid_stride, size[1] // grid_stride)
    cells, cross = [], {r: [] for r in radii}
    for k in range(n):
        _, mask = data[k]
        edge, kept = grid_truth(mask, grid, num_classes)
        cells.append(edge[kept].numpy())
        for r in radii:
            paths = PairwiseBoundary(r)
            src_kept = paths((~kept)[None, None].float())[0] < 0.5
            cross[r].append((paths(edge[None, None].float())[0] > 0.5)[src_kept].numpy())
    h, w = grid
    return {
        "data": spec,
        "size": list(size),
        "grid": [h, w],
        "images": n,
        "boundary_cell_share": round(float(np.concatenate(cells).mean()), 4),
        "radii": {
            str(r): {
                "source_share_of_grid": round((h - r + 1) * (w - 2 * (r - 1)) / (h * w), 4),
                "crossing_pair_share": round(float(np.concatenate(cross[r]).mean()), 4),
            }
            for r in radii
        },
    }


def _isa(flags: list[str]) -> list[str]:
    """The vector extensions among lscpu's flags (what decides a CPU's training speed)."""
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "avx_vnni")
    return [f for f in wanted if f in flags]


if __name__ == "__main__":
    main()
