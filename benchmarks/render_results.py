"""Render the results quoted in README.md and docs/*.md from docs/results/*.json, and check they agree.

How it works. A results table or figure in the docs sits between two HTML comments that Markdown does not
show:

    <!-- results:NAME ARG ... -->
    | the table, as this script renders it |
    <!-- /results:NAME -->

and an inline figure inside a sentence as ``<!-- r:NAME ARG ... -->2.33<!-- /r -->``. NAME is a function
of this script registered in RENDERERS (blocks) or INLINE (inline figures); each reads its JSON under
docs/results/ and returns Markdown (a block) or a short text (inline). ARG words are passed to it as
strings (most take the JSON's file stem). Text outside the markers is never touched.

    python benchmarks/render_results.py            # rewrite every region from the JSON
    python benchmarks/render_results.py --check    # exit 1 with a diff when a committed region differs
    python benchmarks/render_results.py --audit    # which JSON lacks which provenance field (exit 0)

To add a figure: write a function here that returns its text from the JSON, register it, put the markers
in the doc, and run the script; tests/test_docs_results.py fails when the docs and the JSON disagree.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


RESULTS = ROOT / "docs" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

BLOCK = re.compile(r"(<!-- results:(?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /results:(?P<end>[\w.+-]+) -->)", re.S)
INLINE = re.compile(r"(<!-- r:(?P<spec>[^>]*?) -->)(?P<body>.*?)(<!-- /r -->)", re.S)


def load(stem: str) -> dict:
    return json.loads((RESULTS / f"{stem}.json").read_text())


# ---------------------------------------------------------------------------------------------- formats

MINUS = "\u2212"


def f2(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def s2(v: float, minus: str = "-") -> str:
    """Signed, two decimals; ``minus`` is the sign a negative value is written with."""
    return f"{v:+.2f}".replace("-", minus)


def ci(lo_hi: list[float], minus: str = "-") -> str:
    return f"[{s2(lo_hi[0], minus)}, {s2(lo_hi[1], minus)}]"


def mean_sd(cell: dict) -> str:
    return f"{cell['mean']:.2f} ± {cell['sd']:.2f}"


# ---------------------------------------------------------------------------------------------- study tables


def _teacher_label(study: dict) -> str:
    t = study["summary"]["teacher"]
    imagenet = study["settings"].get("pretrained_teacher") == "imagenet"
    return f"teacher `{t['model']}`" + (" (ImageNet)" if imagenet else "")


def per_seed(study: dict, metric: str) -> dict[tuple[str, int], float]:
    """A paired-seed study's finished runs of its rows (not the ablation): (row, seed) -> ``metric``."""
    return {(j["row"], j["seed"]): j[metric] for j in study["jobs"] if j["kind"] == "row" and j["status"] == "ok"}


def study_rows(stem: str) -> str:
    """Per-seed mIoU, mean ± sd of mIoU, boundary F and LHD per row of a paired-seed BCKD study."""
    d = load(stem)
    seeds = d["settings"]["seed_list"]
    per = per_seed(d, "miou")
    t = d["summary"]["teacher"]
    lines = [
        "| row | " + " | ".join(f"seed {s}" for s in seeds) + " | mIoU mean ± sd | boundary F | LHD (GT) |",
        "|---|" + "---:|" * (len(seeds) + 3),
        f"| {_teacher_label(d)} | {f2(t['miou'])} |" + " |" * len(seeds) + f" {f2(t['boundary_f'])} | {f2(t['lhd'])} |",
    ]
    for row, r in d["summary"]["rows"].items():
        cells = " | ".join(f2(per.get((row, s))) for s in seeds)
        lines.append(f"| {row} | {cells} | {mean_sd(r['miou'])} | {mean_sd(r['boundary_f'])} | {mean_sd(r['lhd'])} |")
    return "\n".join(lines)


def study_paired(stem: str, ref: str) -> str:
    """Paired differences (row − ``ref`` per seed) with 95 % t and bootstrap intervals; ** where t excludes 0."""
    d = load(stem)
    lines = [
        "| row | n | ΔmIoU | 95 % t | 95 % bootstrap | Δ boundary F (95 % t) | Δ LHD (95 % t) |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for row, p in d["summary"]["paired"][ref].items():
        m, bf, lhd = p["miou"], p["boundary_f"], p["lhd"]
        star = " **" if m["significant"] else ""
        lines.append(
            f"| {row} | {m['n']} | {s2(m['mean'])}{star} | {ci(m['t_ci'])} | {ci(m['bootstrap_ci'])} | "
            f"{s2(bf['mean'])} {ci(bf['t_ci'])} | {s2(lhd['mean'])} {ci(lhd['t_ci'])} |"
        )
    return "\n".join(lines)


TABLE_ROWS = {"student": "student alone", "kd": "logit KD", "bckd": "BCKD", "kd+bckd": "KD + BCKD"}


def relation_auc(stem: str) -> str:
    """benchmarks/relation_auc.py: the same-class ROC AUC of the cosine between fused features per feature set."""
    d = load(stem)
    lines = ["| features (fused at the 12x16 grid) | AUC |", "|---|---:|"]
    for r in d["rows"]:
        label = re.sub(
            r"^student \S+/student/s(\d+)/student\.pt", r"student `student` row, seed \1 (trained alone)", r["features"]
        )
        lines.append(f"| {label} | {r['auc']:.4f} |")
    return "\n".join(lines)


TUNE_LABELS = {
    "none": "student alone (`--kd none`)",
    "kd": "logit KD (`--kd kd`)",
    "semantic": "semantic (the defaults)",
    "semantic-b0.5": "semantic, beta 0.5",
    "semantic-a1-b5": "semantic, alpha 1, beta 5",
    "semantic-b5": "semantic, beta 5",
    "semantic-b5-g4": "semantic, beta 5, grid_stride 4",
    "literal": "literal (conv teacher head, prob softmax, dot relation)",
    "semantic-student-sem": "semantic, boundary_student=semantic",
    "semantic-student-sem-b5": "semantic, boundary_student=semantic, beta 5",
    "semantic-mse": "semantic, context_loss=mse",
}


def options_table(stem: str, chosen: str = "semantic") -> str:
    """The tuning-split rows of a camvid_table.py result (one seed), in TUNE_LABELS' order; ``chosen`` in bold."""
    rows = {r["name"]: r for r in load(stem)["rows"] if r["phase"] == "tune" and r["status"] == "ok"}
    lines = [
        "| variant (`--kd bckd` plus) | tune mIoU | boundary F | LHD vs teacher | last L_b / L_c |",
        "|---|---|---|---|---|",
    ]
    for name, label in TUNE_LABELS.items():
        if name not in rows:
            continue
        r, terms = rows[name], rows[name]["last_terms"]
        cells = [label, f2(r["miou"]), f2(r["boundary_f"]), f2(r["lhd_vs_teacher"])]
        if name == chosen:
            cells = [f"**{c}**" for c in cells]
        lb = f" {terms['loss/boundary']:.3f} / {terms['loss/context']:.3f} " if "loss/boundary" in terms else ""
        lines.append("| " + " | ".join(cells) + f" |{lb or ' '}|")
    return "\n".join(lines)


BALANCE_LABELS = {"none": "none (alpha 10, beta 50)", "grad-0.5": "grad, 0.5 / 0.5"}


def balance_table(stem: str = "bckd_tune_cpu96") -> str:
    """The balance option on the tuning split: weights used, per-seed mIoU, mean and boundary F per config."""
    d = load(stem)
    lines = [
        "| balance | alpha / beta used (seed 0; seed 1) | tune mIoU seed 0 | seed 1 | mean | boundary F |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, c in d["configs"].items():
        jobs = sorted(c["jobs"], key=lambda j: j["seed"])
        weights = [(j["last_terms"]["bckd/alpha"], j["last_terms"]["bckd/beta"]) for j in jobs]
        if len(set(weights)) == 1:
            used = f"{weights[0][0]:g} / {weights[0][1]:g}"
        else:
            used = "; ".join(f"{a:.2f} / {b:.2f}" for a, b in weights)
        s = c["summary"]["kd+bckd"]
        lines.append(
            f"| {BALANCE_LABELS.get(name, name)} | {used} | "
            + " | ".join(f2(j["miou"]) for j in jobs)
            + f" | {f2(s['miou']['mean'])} | {f2(s['boundary_f']['mean'])} |"
        )
    return "\n".join(lines)


CPU96_LABELS = {
    "teacher": None,
    "student": "student alone (`--kd none`)",
    "kd": "+ logit KD (`--kd kd`)",
    "cwd": "+ CWD (`--kd cwd`)",
    "bckd": "+ BCKD (`--kd bckd`): L_b + L_c + decay",
    "kd+bckd": "+ KD + BCKD (`--kd kd+bckd`)",
    "ablation: boundary only": "BCKD ablation: L_b only (`--no-context --no-decay`)",
    "ablation: context only": "BCKD ablation: L_c only (`--no-boundary --no-decay`)",
    "ablation: both, no decay": "BCKD ablation: L_b + L_c (`--no-decay`)",
}


GEOMETRY_LABELS = {
    "none": "student alone",
    "kd": "logit KD",
    "bckd-g4r3": "BCKD, g4 r3",
    "bckd-g4r3-b5": "BCKD, g4 r3, beta 5",
    "kd+bckd-g4r3": "KD + BCKD, g4 r3",
    "kd+bckd-g4r3-b5": "KD + BCKD, g4 r3, beta 5",
}


def det_cost_table(stem: str = "det_cost_cpu") -> str:
    """benchmarks/det_step.py --distill: a detector student's training step with each distillation method, its
    median (min) over interleaved rounds, and its time over the student's plain step (median of the paired
    per-round ratios)."""
    d = load(stem)["distillation"]
    labels = {
        "none": "student alone",
        "kd": "+ dense score KD",
        "pkd": "+ PKD",
        "bckd": "+ BCKD",
        "kd+bckd": "+ dense score KD + BCKD",
        "pkd+bckd": "+ PKD + BCKD",
    }
    lines = [
        "| method | threads | trainable params | step: median (min) | x student alone (paired) |",
        "|---|---|---|---|---|",
    ]
    for r in d["rows"].values():
        lines.append(
            f"| {labels.get(r['kd'], r['kd'])} | {r['threads']} | {r['trainable_params_m']:.2f} M | "
            f"{r['step_s_median']:.2f} s ({r['step_s_min']:.2f} s) | {r['over_student_paired_median']:.2f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- deployment


def quickstart_ledger(stem: str) -> str:
    """The stage ledger of a `bckd-pipeline run` report (report.json, or one a benchmarks/record_command.py file
    embeds as ``report``), as report.md prints it."""
    d = load(stem)
    d = d.get("report", d)
    lines = [
        "| stage | backend | precision | status | mIoU | ΔmIoU | agreement % | p50 ms | p99 ms | FPS |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in d["stages"]:
        lat = s["latency_ms"]
        lines.append(
            f"| {s['name']} | {s['backend']} | {s['precision']} | {s['status']} | {s['miou']:.2f} | "
            f"{s['miou_delta']:+.3f} | {100 * s['pixel_agreement']:.3f} | {lat['p50']:.2f} | {lat['p99']:.2f} | "
            f"{s['fps']:.1f} |"
        )
    return "\n".join(lines)


def deploy_run(stem: str) -> dict:
    """What benchmarks/deploy_table.py wrote: the file itself, or the ``table`` a benchmarks/record_command.py
    record of it embeds."""
    d = load(stem)
    return d.get("table", d)


def deploy_table(stem: str = "deploy_cpu_camvid96x128") -> str:
    """The CPU deployment table: accuracy, agreement, latency and speed-up over PyTorch eager per runtime."""
    d = deploy_run(stem)
    lines = [
        "| row | mIoU | ΔmIoU | agreement % | p50 ms | p99 ms | FPS | × PyTorch eager |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['row']} | {r['miou']:.2f} | {r['miou_delta']:+.3f} | {100 * r['pixel_agreement']:.2f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['fps']:.0f} | {r['speedup_vs_pytorch']:.2f} |".replace(
                "| -", f"| {MINUS}"
            )
        )
    return "\n".join(lines)


def det_speed_table(stem: str = "det_speed_cpu_384x512") -> str:
    """benchmarks/det_speed.py: a detector's network latency, host post-processing and end to end per runtime, its
    speed over PyTorch eager FP32 (ratio of medians of one run), AP, and ΔAP with its paired bootstrap bounds."""
    d = load(stem)
    lines = [
        "| row | network p50 / p99 ms | post-processing p50 ms | end to end p50 ms | × PyTorch eager (network) | "
        "AP | ΔAP vs PyTorch FP32 [95 % one-sided bounds] | goals (≥ 4x, ΔAP bound ≥ −1.0) | "
        "detections found again, % of parent's | deploy's parity |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---|",
    ]

    def mark(v: bool | None) -> str:
        return "n/a" if v is None else "met" if v else "not met"

    for r in d["rows"]:
        ci = r["map_delta_interval"]
        delta = s2(r["map_delta"], MINUS) + (f" [{s2(ci['lower'], MINUS)}, {s2(ci['upper'], MINUS)}]" if ci else "")
        goals = "" if r["stage"] == "pytorch" else f"{mark(r['goal_speedup_met'])}, {mark(r['goal_delta_ap_met'])}"
        share = r.get("matched_share_vs_parent")  # older files do not record it
        found = "-" if share is None else f"{100 * share:.1f}"
        parity = {True: "passed", False: "failed", None: "-"}[r.get("parity_passed")]
        lines.append(
            f"| {r['row']} | {f2(r['p50_ms'])} / {f2(r['p99_ms'])} | {f2(r['postprocess_p50_ms'])} | "
            f"{f2(r['end_to_end_p50_ms'])} | {f2(r['speedup_vs_pytorch'])} | {f2(r['map'])} | {delta} | {goals} | "
            f"{found} | {parity} |"
        )
    return "\n".join(lines)


ORT_VARIANT_LABELS = {
    "QDQ u8 act / s8 weight, per-channel (ours)": "QDQ, u8 activations / s8 weights, per-channel (**ours**)",
    "QDQ s8 act / s8 weight, per-channel": "QDQ, s8 activations / s8 weights, per-channel",
    "QDQ u8/s8, per-tensor weights": "QDQ, u8 / s8, per-tensor weights",
    "QOperator u8/s8, per-channel": "QOperator, u8 / s8, per-channel",
}


def deploy_ort_variants(stem: str = "deploy_cpu_camvid96x128") -> str:
    """The ONNX Runtime INT8 settings of the deployment table's run, against ORT FP32."""
    d = deploy_run(stem)
    lines = ["| ONNX Runtime setting | p50 ms | × FP32 | ΔmIoU vs FP32 |", "|---|---:|---:|---:|"]
    for v in d["ort_variants"]:
        label = ORT_VARIANT_LABELS.get(v["variant"], v["variant"])
        speedup, delta = v.get("speedup_vs_fp32", 1.0), v.get("miou_delta_vs_fp32", 0.0)
        lines.append(f"| {label} | {v['p50_ms']:.2f} | {speedup:.2f} | {delta:+.3f} |".replace("| -", f"| {MINUS}"))
    return "\n".join(lines)


def qat_table(stem: str) -> str:
    """QAT study: per row the QAT mIoU and the recovered share of the PTQ drop, (QAT − PTQ) / (FP32 − PTQ)."""
    d = load(stem)
    labels = {
        "init": "`init` (no fine-tune)",
        "kd+bckd": "`kd+bckd` (CE + logit KD + BCKD)",
        "kd": "`kd` (CE + logit KD)",
        "none": "`none` (CE alone)",
    }
    lines = [
        "| row (`--qat-kd`) | seeds | QAT mIoU (mean ± sd) | recovered of the PTQ drop (mean [95 % t]) |",
        "|---|---:|---|---|",
    ]
    rows = d["summary"]["rows"]
    for name in sorted(rows, key=lambda n: list(labels).index(n) if n in labels else len(labels)):
        r = rows[name]
        q, rec = r["miou_qat"], r["recovered"]
        miou = f2(q["mean"]) if q["sd"] is None else mean_sd(q)
        recovered = s2(rec["mean"], MINUS) + (f" {ci(r['recovered_t_ci'], MINUS)}" if r["recovered_t_ci"] else "")
        lines.append(f"| {labels.get(name, name)} | {len(r['seeds'])} | {miou} | {recovered} |")
    return "\n".join(lines)


def diagnosis_run(stem: str) -> dict:
    """What benchmarks/boundary_diagnosis.py wrote: the file itself, or the ``diagnosis`` a
    benchmarks/record_command.py record of it embeds."""
    d = load(stem)
    return d.get("diagnosis", d)


def boundary_grad_table(stem: str) -> str:
    """benchmarks/boundary_diagnosis.py (a, b): gradient ratios and cosines, mean over each third of the run."""
    d = diagnosis_run(stem)
    g, p = d["grad_log_summary"], d["probe_summary"]
    rows = [
        ("10 L_b gradient norm / CE's (trainer's `grad/*`, deepest stage)", g["boundary_over_ce"]),
        ("50 L_c gradient norm / CE's", g["context_over_ce"]),
        ("L_b's share of the sum of all terms' gradient norms", g["share_boundary"]),
        ("cos(grad L_b, grad L_c) on the fused features F^s", p["fused_cos_boundary_context"]),
        ("cos(grad L_b, grad L_c) at the deepest stage", p["deep_cos_boundary_context"]),
        ("cos(grad L_b, grad (CE + KD)) at the deepest stage", p["deep_cos_boundary_rest"]),
        ("cos(grad L_c, grad (CE + KD)) at the deepest stage", p["deep_cos_context_rest"]),
        ("boundary temperature T", p["temperature"]),
        ("L_b (unweighted)", p["loss_boundary"]),
    ]
    lines = ["| measured (mean over each third of the run) | first | middle | last |", "|---|---:|---:|---:|"]
    for label, cell in rows:
        lines.append(f"| {label} | {cell['first_third']:.3f} | {cell['middle_third']:.3f} | {cell['last_third']:.3f} |")
    return "\n".join(lines)


def boundary_auc_table(stem: str) -> str:
    """benchmarks/boundary_diagnosis.py (c): ROC AUC of boundary maps at the grid against ground-truth boundaries."""
    a = diagnosis_run(stem)["boundary_auc"]
    h, w = a["grid"]
    labels = {
        "teacher": "teacher B^t (semantic: what L_b distils)",
        "student_head": "student boundary head, end of the run",
        "student_semantic": "student's own class probabilities (semantic), end of the run",
    }
    lines = [f"| map at the {h}x{w} grid | cell AUC | path AUC |", "|---|---:|---:|"]
    for key, label in labels.items():
        lines.append(f"| {label} | {a['cell_auc'][key]:.3f} | {a['pair_auc_crossing'][key]:.3f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- grid study

GRID_LABELS = {
    "student": "student alone",
    "kd": "logit KD",
    "kd+lc": "KD + L_c (no boundary term)",
    "kd+bckd": "KD + BCKD (L_b + L_c)",
    "kd+bckd[pixel]": "KD + BCKD, `boundary_repr=pixel`",
}


def _grid_rows(size: dict) -> list[str]:
    """The rows of one size of a grid study, in GRID_LABELS order, then any others."""
    return [r for r in GRID_LABELS if r in size["rows"]] + [r for r in size["rows"] if r not in GRID_LABELS]


def grid_table(stem: str = "bckd_grid_cpu", ref: str = "kd+lc") -> str:
    """Per input size and row: mIoU per seed and mean ± sd, boundary F mean ± sd, and the paired difference
    against ``ref`` with its 95 % t interval (benchmarks/bckd_grid.py)."""
    d = load(stem)
    name = GRID_LABELS.get(ref, ref).split(" (")[0]
    lines = [
        f"| input (BCKD grid) | row | mIoU per seed | mIoU mean ± sd | boundary F mean ± sd | ΔmIoU vs {name} [95 % t] "
        f"| Δ boundary F vs {name} [95 % t] |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for name, size in d["sizes"].items():
        t = size["teacher"]
        lines.append(
            f"| {name} ({size['grid']}) | teacher `{t['model']}` | | {f2(t['miou'])} | {f2(t['boundary_f'])} | | |"
        )
        for row in _grid_rows(size):
            r = size["rows"][row]
            seeds = ", ".join(f2(r["miou"]["per_seed"][str(s)]) for s in r["seeds"])
            p = size["paired"].get(f"{row} - {ref}")
            dm = f"{s2(p['miou']['mean'])} {ci(p['miou']['t_ci'])}" if p else "—"
            db = f"{s2(p['boundary_f']['mean'])} {ci(p['boundary_f']['t_ci'])}" if p else "—"
            lines.append(
                f"| {name} | {GRID_LABELS.get(row, row)} | {seeds} | {mean_sd(r['miou'])} | "
                f"{mean_sd(r['boundary_f'])} | {dm} | {db} |"
            )
    return "\n".join(lines)


def _grid_pair(stem: str, size: str, pair: str, metric: str) -> dict:
    return load(stem)["sizes"][size]["paired"][pair][metric]


def gpd(stem: str, size: str, pair: str, metric: str = "miou") -> str:
    """A grid study's paired mean difference ("a - b" at ``size``), signed, 2 decimals."""
    return s2(_grid_pair(stem, size, pair, metric)["mean"], MINUS)


def gpci(stem: str, size: str, pair: str, metric: str = "miou", interval: str = "t_ci") -> str:
    """Its 95 % interval (t_ci or bootstrap_ci), "lo to hi"."""
    lo, hi = _grid_pair(stem, size, pair, metric)[interval]
    return f"{s2(lo, MINUS)} to {s2(hi, MINUS)}"


def gms(stem: str, size: str, row: str, metric: str = "miou") -> str:
    """A grid study row's mean ± sd at ``size``."""
    return mean_sd(load(stem)["sizes"][size]["rows"][row][metric])


def gwins(stem: str, size: str, a: str, b: str, metric: str = "miou") -> str:
    """On how many seeds row ``a`` is above row ``b``: "k of n"."""
    rows = load(stem)["sizes"][size]["rows"]
    pa, pb = rows[a][metric]["per_seed"], rows[b][metric]["per_seed"]
    seeds = sorted(set(pa) & set(pb))
    return f"{sum(pa[s] > pb[s] for s in seeds)} of {len(seeds)}"


DET_LABELS = {
    "student": "student alone (`--kd none`)",
    "kd": "dense score-map KD (`--kd kd`)",
    "pkd": "PKD (`--kd pkd`)",
    "bckd": "BCKD (`--kd bckd`)",
    "kd+bckd": "KD + BCKD",
    "pkd+bckd": "PKD + BCKD",
}
DET_COLUMNS = {"ap50": "AP50", "ap75": "AP75", "ap_small": "AP small", "ap_medium": "AP medium", "ap_large": "AP large"}


def _mean_sd_or_dash(cell: dict) -> str:
    if cell.get("mean") is None:
        return "-"
    return f2(cell["mean"]) if cell.get("sd") is None else mean_sd(cell)


def det_study_table(stem: str = "det_study_cpu", key: str = "study") -> str:
    """A detection study (benchmarks/bckd_study.py --task detection, recorded under ``key``): per row AP per seed,
    and the mean ± sd over seeds of AP, AP50, AP75 and AP small/medium/large (points); the teacher's one run."""
    d = load(stem)[key]
    s, seeds = d["summary"], d["settings"]["seed_list"]
    per = per_seed(d, "map")
    t = s["teacher"]
    lines = [
        "| row | AP per seed ("
        + ", ".join(str(x) for x in seeds)
        + ") | AP mean ± sd | "
        + " | ".join(DET_COLUMNS.values())
        + " |",
        "|---|---|---:|" + "---:|" * len(DET_COLUMNS),
        f"| teacher `{t['model']}` | | {f2(t['map'])} | " + " | ".join(f2(t[k]) for k in DET_COLUMNS) + " |",
    ]
    for row, r in s["rows"].items():
        cells = ", ".join(f2(per.get((row, x))) for x in seeds)
        lines.append(
            f"| {DET_LABELS.get(row, row)} | {cells} | {_mean_sd_or_dash(r['map'])} | "
            + " | ".join(_mean_sd_or_dash(r[k]) for k in DET_COLUMNS)
            + " |"
        )
    return "\n".join(lines)


def det_study_paired(stem: str = "det_study_cpu", key: str = "study") -> str:
    """A detection study's paired differences (row − reference per seed) against the student alone and the best
    baseline: ΔAP with its 95 % t and bootstrap intervals, ΔAP50 and ΔAP75 with their t intervals, and on how many
    seeds the row is above; ** where the t interval of ΔAP excludes 0."""
    d = load(stem)[key]
    s = d["summary"]
    per = per_seed(d, "map")
    lines = [
        "| row | vs | n | ΔAP | 95 % t | 95 % bootstrap | ΔAP50 [95 % t] | ΔAP75 [95 % t] | above on |",
        "|---|---|---:|---:|---|---|---|---|---|",
    ]
    for ref, rows in s["paired"].items():
        for row, p in rows.items():
            m = p["map"]
            if not m["n"]:
                continue
            star = " **" if m["significant"] else ""
            t_ci = ci(m["t_ci"]) if m["t_ci"] else "-"
            boot = ci(m["bootstrap_ci"]) if m["bootstrap_ci"] else "-"
            others = [f"{s2(p[k]['mean'])} {ci(p[k]['t_ci']) if p[k]['t_ci'] else '-'}" for k in ("ap50", "ap75")]
            above = sum(per[row, x] > per[ref, x] for x in m["seeds"])
            lines.append(
                f"| {DET_LABELS.get(row, row)} | {ref} | {m['n']} | {s2(m['mean'])}{star} | {t_ci} | {boot} | "
                f"{others[0]} | {others[1]} | {above} of {m['n']} |"
            )
    return "\n".join(lines)


RENDERERS: dict[str, Callable[..., str]] = {
    f.__name__: f
    for f in (
        study_rows,
        study_paired,
        relation_auc,
        boundary_grad_table,
        boundary_auc_table,
        options_table,
        det_cost_table,
        balance_table,
        quickstart_ledger,
        deploy_table,
        deploy_ort_variants,
        det_speed_table,
        qat_table,
        grid_table,
        det_study_table,
        det_study_paired,
    )
}


# ---------------------------------------------------------------------------------------------- inline figures


def ort_int8_over_fp32(stem: str = "deploy_cpu_camvid96x128") -> str:
    """ONNX Runtime INT8 over ONNX Runtime FP32, ratio of mean latencies of the deployment table, 1 decimal."""
    rows = {r["row"]: r for r in deploy_run(stem)["rows"]}
    return f"{rows['ONNX Runtime FP32']['mean_ms'] / rows['ONNX Runtime INT8']['mean_ms']:.1f}"


def speedup_vs_eager(stem: str, row: str) -> str:
    """A row's speed-up over PyTorch eager FP32 (ratio of mean latencies), 1 decimal."""
    rows = {r["row"].split(" (")[0]: r for r in deploy_run(stem)["rows"]}
    return f"{rows[row.replace('_', ' ')]['speedup_vs_pytorch']:.1f}"


def _paired(stem: str, ref: str, row: str, metric: str) -> dict:
    """The study's paired statistics of row − ``ref``; for a reference the study did not tabulate, computed
    from its per-seed runs with the study's own function (benchmarks/common.py::paired)."""
    d = load(stem)
    if row in d["summary"]["paired"].get(ref, {}):
        return d["summary"]["paired"][ref][row][metric]
    from common import paired

    runs = per_seed(d, metric)

    def of(name: str) -> dict[int, float]:
        return {seed: v for (r, seed), v in runs.items() if r == name}

    return paired(of(row), of(ref))


def pd(stem: str, ref: str, row: str, metric: str = "miou") -> str:
    """A study's paired mean difference, row − ``ref``, signed, 2 decimals."""
    return s2(_paired(stem, ref, row, metric)["mean"])


def pci(stem: str, ref: str, row: str, metric: str = "miou") -> str:
    """The 95 % paired-t interval of that difference, "lo to hi"."""
    lo, hi = _paired(stem, ref, row, metric)["t_ci"]
    return f"{s2(lo)} to {s2(hi)}"


def ms(stem: str, row: str, metric: str = "miou") -> str:
    """A study row's mean ± sd over seeds."""
    return mean_sd(load(stem)["summary"]["rows"][row][metric])


def study_seed(stem: str, row: str, seed: str, metric: str = "miou") -> str:
    """One run of a paired-seed study: ``row`` on ``seed``, 2 decimals."""
    return f2(
        next(
            j[metric]
            for j in load(stem)["jobs"]
            if j["kind"] == "row" and j["row"] == row and j["seed"] == int(seed) and j["status"] == "ok"
        )
    )


def distill_miou(stem: str, key: str) -> str:
    """A run report's distillation mIoU: ``teacher``, ``student`` (alone) or ``distilled``, 2 decimals (the report
    itself, or one a benchmarks/record_command.py file embeds as ``report``)."""
    d = load(stem)
    return f"{d.get('report', d)['distill'][f'{key}_miou']:.2f}"


def loadavg(stem: str, when: str = "before") -> str:
    """The 1-minute load average a benchmarks/record_command.py file recorded ``before`` or ``after`` the command."""
    return f"{load(stem)[f'loadavg_1min_{when}']:.1f}"


def value(stem: str, path: str, fmt: str = ".2f", scale: str = "1") -> str:
    """Any number of a results file: ``path`` is dotted (list items by index), ``fmt`` a format spec ("+.2f"),
    ``scale`` a factor (100 for a share in percent; numbers only, and an integer stays one at scale 1, for
    ``fmt`` "d"); a text is formatted as it is ("s"). A minus sign is written as "−"."""
    v = _at(load(stem), path)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and scale != "1":
        v = v * float(scale)
    return format(v, fmt).replace("-", MINUS)


def qat_ms(stem: str, row: str) -> str:
    """A QAT study row's mIoU, mean ± sd over its seeds."""
    return mean_sd(load(stem)["summary"]["rows"][row]["miou_qat"])


def qat_over_fp32(stem: str, row: str) -> str:
    """How far a QAT row's mean mIoU ends above (positive) the FP32 model's, 2 decimals."""
    d = load(stem)
    return f"{d['summary']['rows'][row]['miou_qat']['mean'] - d['fp32_miou']:.2f}"


def qat_pair(stem: str, a: str, b: str, interval: str = "t_ci") -> str:
    """A QAT study's paired difference ``a`` − ``b`` over seeds, "mean [lo, hi]" (``interval``: t_ci or
    bootstrap_ci; "only" gives the interval alone)."""
    p = load(stem)["summary"]["paired"][f"{a} - {b}"]
    if interval.endswith("only"):
        return ci(p[interval.removesuffix("_only")], MINUS)
    return f"{s2(p['mean'], MINUS)} {ci(p[interval], MINUS)}"


def qat_seeds(stem: str, row: str, field: str = "miou_qat") -> str:
    """A QAT study row's ``field`` on each seed, in seed order, 2 decimals: "27.66, 28.23, ..."."""
    records = sorted((r for r in load(stem)["records"] if r["row"] == row), key=lambda r: r["seed"])
    return ", ".join(f2(r[field]) for r in records)


def qat_span(stem: str, rows: str, field: str = "pixel_agreement", fmt: str = ".1f", scale: str = "100") -> str:
    """The range of ``field`` over the QAT study's runs of ``rows`` (comma list), "lo-hi" (x ``scale``)."""
    values = [r[field] * float(scale) for r in load(stem)["records"] if r["row"] in rows.split(",")]
    return f"{format(min(values), fmt)}-{format(max(values), fmt)}"


def last_line(stem: str, stream: str = "stdout") -> str:
    """The last line a benchmarks/record_command.py file recorded on ``stream`` (a verdict, a summary)."""
    return load(stem)[stream].rstrip("\n").splitlines()[-1]


def recorded_match(stem: str, pattern: str, stream: str = "stdout") -> str:
    """The first match of the regular expression ``pattern`` in what a benchmarks/record_command.py file
    recorded on ``stream``: a message quoted in prose, exactly as the command printed it."""
    m = re.search(pattern, load(stem)[stream])
    if m is None:
        raise ValueError(f"{stem}: {pattern!r} matches nothing in its {stream}")
    return m.group(0)


def wall_time(stem: str) -> str:
    """The wall time a results file records (``wall_s``), as "N s" or "N min N s"."""
    s = round(load(stem)["wall_s"])
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60} s"


def ratio_of(stem: str, a: str, b: str, fmt: str = ".1f") -> str:
    """The ratio of two numbers of one results file, ``a`` / ``b`` (dotted paths, as for ``value``)."""
    return format(_at(load(stem), a) / _at(load(stem), b), fmt)


def over(stem: str, items: str, field: str, how: str = "range", fmt: str = "d") -> str:
    """``field`` over every entry of the dict or list at ``items``: its "range" ("lo to hi"), "max", "min",
    or the entries' "count"."""
    d = _at(load(stem), items)
    entries = list(d.values()) if isinstance(d, dict) else list(d)
    if how == "count":
        return str(len(entries))
    values = [e[field] for e in entries]
    if how == "range":
        return f"{format(min(values), fmt)} to {format(max(values), fmt)}"
    return format(max(values) if how == "max" else min(values), fmt)


def _at(d, path: str):
    for part in path.split("."):
        d = d[int(part)] if isinstance(d, list) else d[part]
    return d


def provenance(stem: str) -> str:
    """The machine, versions and commit a results file records, as one phrase: "AMD EPYC (AVX2, ...), torch X,
    commit abc1234" (with "with uncommitted changes" when its tree was dirty)."""
    d = load(stem)
    machine = d.get("machine", {})
    env = d.get("environment", {})
    versions = d.get("versions") or {"torch": d.get("torch") or env.get("torch")}
    commit = d.get("git_commit") or env.get("git_commit")
    dirty = d.get("git_dirty", env.get("git_dirty"))
    cpu = machine.get("cpu", env.get("cpu", "CPU"))
    if isinstance(cpu, dict):  # benchmarks/record_command.py: {"model": ..., "isa": [...]}
        machine, cpu = {**machine, "isa": cpu.get("isa")}, cpu.get("model", "CPU")
    isa = machine.get("isa") or env.get("isa") or []
    parts = [f"{cpu} ({', '.join(isa)})"]
    parts += [f"{k} {str(versions[k]).split('+')[0]}" for k in ("torch", "torchvision", "timm") if versions.get(k)]
    if commit:
        parts.append(f"commit {commit[:7]}" + (" with uncommitted changes" if dirty else ""))
    return ", ".join(parts)


def det_study_hours(stem: str = "det_study_cost_cpu", part: str = "total_s", protocol: str = "cpu-det") -> str:
    """The hours of a detection study protocol's training steps (``part``: total_s, teacher_s, gap_step_s, rest_s)
    from the step times of ``stem``, by benchmarks/bckd_study.py's own ``estimate_seconds``, 1 decimal."""
    import bckd_study

    return f"{bckd_study.estimate_seconds(load(stem), bckd_study.PROTOCOLS[protocol])[part] / 3600:.1f}"


INLINE_RENDERERS: dict[str, Callable[..., str]] = {
    f.__name__: f
    for f in (
        value,
        qat_ms,
        qat_over_fp32,
        qat_pair,
        qat_seeds,
        qat_span,
        ort_int8_over_fp32,
        speedup_vs_eager,
        pd,
        pci,
        ms,
        study_seed,
        distill_miou,
        loadavg,
        last_line,
        recorded_match,
        wall_time,
        ratio_of,
        over,
        provenance,
        det_study_hours,
        gpd,
        gpci,
        gms,
        gwins,
    )
}


# ---------------------------------------------------------------------------------------------- render / check


def render_text(text: str) -> str:
    """``text`` with every marked region re-rendered from the JSON."""

    def block(m: re.Match) -> str:
        name, *args = shlex.split(m["spec"])
        if name != m["end"]:
            raise ValueError(f"region {name!r} is closed by {m['end']!r}")
        if name not in RENDERERS:
            raise ValueError(f"no renderer {name!r}; known: {', '.join(sorted(RENDERERS))}")
        return f"{m[1]}{RENDERERS[name](*args).rstrip()}\n{m[4]}"

    def inline(m: re.Match) -> str:
        name, *args = shlex.split(m["spec"])
        if name not in INLINE_RENDERERS:
            raise ValueError(f"no inline renderer {name!r}; known: {', '.join(sorted(INLINE_RENDERERS))}")
        return f"{m[1]}{INLINE_RENDERERS[name](*args)}{m[4]}"

    return INLINE.sub(inline, BLOCK.sub(block, text))


def regions(text: str) -> list[str]:
    return [m["spec"] for m in BLOCK.finditer(text)] + [m["spec"] for m in INLINE.finditer(text)]


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def check(paths: list[Path]) -> list[str]:
    """A unified diff per file whose committed regions differ from what the JSON renders."""
    diffs = []
    for path in paths:
        old = path.read_text()
        new = render_text(old)
        if new != old:
            name = _name(path)
            diffs.append(
                "".join(
                    difflib.unified_diff(
                        old.splitlines(True), new.splitlines(True), f"{name} (committed)", f"{name} (rendered)"
                    )
                )
            )
    return diffs


# ---------------------------------------------------------------------------------------------- audit

# Provenance a results file must record, and the keys that hold it, looked up at any depth (a study records
# its machine once per configuration). A field counts when one of its keys holds a value other than null/"";
# the commit has two more conditions (``audit_file``): every recorded dirty tree names its diff, and the file
# does not declare its code unknown.
PROVENANCE: dict[str, tuple[str, ...]] = {
    "command": ("command", "commands", "study_command"),
    "commit": ("git_commit", "code_hash", "git"),
    "cpu": ("cpu", "Model name", "lscpu_model"),
    "isa": ("isa", "Flags"),
    "gpu": ("gpus", "gpu", "gpu_name"),
    "versions": ("versions", "torch"),
    "wall_time": ("wall_s", "seconds", "finished", "ended"),
}


ARCHES = {"x86_64", "AMD64", "aarch64", "arm64"}  # platform.machine(): an architecture, not a CPU model


def _nodes(d):
    """``d`` and every value inside it (of dicts and lists) at any depth, parents before their children."""
    yield d
    children = d.values() if isinstance(d, dict) else d if isinstance(d, list) else ()
    for v in children:
        yield from _nodes(v)


def _dicts(d):
    """Every dict in ``d``, ``d`` included, at any depth."""
    return (x for x in _nodes(d) if isinstance(x, dict))


def _strings(v):
    """Every string in ``v`` (a string, or a list or dict of them at any depth)."""
    return (x for x in _nodes(v) if isinstance(x, str))


def _values(d, key: str):
    """Every value stored under ``key`` anywhere in ``d``."""
    return (x[key] for x in _dicts(d) if key in x)


CODE_UNKNOWN = "code_unknown"  # a file's own statement that the code its runs used cannot be identified
DEVICE_KEYS = ("device", "train_device")
COMMAND_KEYS = ("command", "commands", "study_command")
CUDA_FLAG = re.compile(r"--(?:train-)?device[ =]cuda\b")


def ran_on_gpu(d) -> bool:
    """Whether ``d`` records that its measurements ran on a GPU: a ``device`` or ``train_device`` of cuda, or a
    recorded command given ``--device cuda`` / ``--train-device cuda``. A file's name is not evidence."""
    if any(s.startswith("cuda") for k in DEVICE_KEYS for v in _values(d, k) for s in _strings(v)):
        return True
    return any(CUDA_FLAG.search(s) for k in COMMAND_KEYS for v in _values(d, k) for s in _strings(v))


def code_identified(d) -> bool:
    """Whether the code ``d``'s measurements ran can be named from what it records: it records the tree's
    state (a ``git_dirty`` of true or false somewhere; a commit alone does not show that the tree was clean),
    no git state in it says ``git_dirty`` without the ``git_diff_sha256`` of that tree's changes beside it (a
    dirty tree names its code only with its diff), and it does not declare ``code_unknown``."""
    if not any(isinstance(x.get("git_dirty"), bool) for x in _dicts(d)):
        return False
    if any(x.get("git_dirty") and not x.get("git_diff_sha256") for x in _dicts(d)):
        return False
    return all(v in (None, "") for v in _values(d, CODE_UNKNOWN))


def audit_file(d: dict | list) -> list[str]:
    """The provenance fields ``d`` lacks. The GPU is asked only of a file whose measurements ran on one
    (``ran_on_gpu``); for a CPU measurement it does not apply.

    The commit counts only when the code is identified (``code_identified``): the file records ``git_dirty``
    (true or false) somewhere, as every benchmarks/record_command.py record does, since a commit without the
    tree's state does not show that the runs used that commit's code; a git state with ``git_dirty`` true
    needs its ``git_diff_sha256`` in the same object, at every place the file records one; and a file
    whose own notes say its runs used code no commit, diff or code hash in it names declares so with a
    ``"code_unknown": "<reason>"`` key (at any depth), which makes the commit lacking whatever else it
    records (``versions.git`` or ``code_hash`` then name a tree the runs did not use)."""
    missing = []
    for field, keys in PROVENANCE.items():
        found = any(v not in (None, "") for k in keys for v in _values(d, k))
        if field == "commit":
            found = found and code_identified(d)
        if field == "gpu":
            found = found or not ran_on_gpu(d)  # a CPU measurement has no GPU to record
        if field == "cpu":
            found = found or any(isinstance(v, str) and v not in ARCHES for v in _values(d, "machine") if v)
        if not found:
            missing.append(field)
    return missing


def audit() -> dict[str, list[str]]:
    return {p.stem: audit_file(json.loads(p.read_text())) for p in sorted(RESULTS.glob("*.json"))}


def provenance_table() -> str:
    """One row per results file: the provenance fields it records and those it lacks."""
    lines = ["| results file | lacks |", "|---|---|"]
    for stem, missing in audit().items():
        lines.append(f"| `docs/results/{stem}.json` | {', '.join(missing) if missing else 'nothing'} |")
    return "\n".join(lines)


def lacks(stem: str) -> str:
    """The provenance fields a results file lacks, as ``--audit`` lists them ("nothing" when complete)."""
    return ", ".join(audit_file(load(stem))) or "nothing"


INLINE_RENDERERS["lacks"] = lacks


def recorded_output(stem: str, last: str = "0", stream: str = "stdout", command: str = "yes") -> str:
    """A fenced block: the command a benchmarks/record_command.py file recorded (unless ``command`` is "no") and
    what it printed on ``stream`` (stdout, or stderr_tail), its ``last`` lines only when not 0."""
    d = load(stem)
    out = d[stream].rstrip("\n").splitlines()
    n = int(last)
    head = [f"$ {d['command']}"] if command == "yes" else []
    return "\n".join(["```", *head, *(out[-n:] if n else out), "```"])


def prediction_entry(stem: str, name: str) -> str:
    """A fenced JSON block: one image's entry of the predictions.json a recorded `predict` run wrote."""
    entry = next(e for e in load(stem)["predictions"]["images"] if e["path"] == name)
    keys = list(entry)
    first = ", ".join(f"{json.dumps(k)}: {json.dumps(entry[k])}" for k in keys[:3])
    rest = ", ".join(f"{json.dumps(k)}: {json.dumps(entry[k])}" for k in keys[3:])
    return "\n".join(["```json", "{" + first + ",", " " + rest + "}", "```"])


def stage_note(stem: str, stage: str) -> str:
    """A fenced block: the ledger note of one stage of the report a recorded run embedded (``report``)."""
    note = next(s["note"] for s in load(stem)["report"]["stages"] if s["name"] == stage)
    return "\n".join(["```", f"- `{stage}`: {note}", "```"])


RENDERERS["provenance_table"] = provenance_table
RENDERERS["stage_note"] = stage_note
RENDERERS["prediction_entry"] = prediction_entry
RENDERERS["recorded_output"] = recorded_output


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 with a diff when the docs differ from the JSON")
    ap.add_argument("--audit", action="store_true", help="list the provenance fields each results JSON lacks")
    ap.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/*.md)")
    args = ap.parse_args(argv)
    paths = [p.resolve() for p in args.files] or DOCS
    if args.audit:
        for stem, missing in audit().items():
            print(f"{stem}: {'complete' if not missing else 'lacks ' + ', '.join(missing)}")
        return 0
    if args.check:
        diffs = check(paths)
        for d in diffs:
            print(d)
        n = sum(len(regions(p.read_text())) for p in paths)
        print(f"{n} regions, {len(diffs)} file(s) differ from docs/results", file=sys.stderr)
        return 1 if diffs else 0
    for path in paths:
        old = path.read_text()
        new = render_text(old)
        if new != old:
            path.write_text(new)
            print(f"rendered {_name(path)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
