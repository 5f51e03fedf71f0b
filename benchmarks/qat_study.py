"""Does teacher-guided QAT recover what PTQ loses, and does the teacher beat CE alone?

    python benchmarks/qat_study.py --data camvid:.bench/camvid96 \
        --model .bench/study96-pt/teacher/teacher.pt --teacher .bench/study96/teacher/teacher.pt \
        --backend tensorrt --seeds 0,1,2,3 --rows kd+bckd,none --json docs/results/qat_study_cpu.json

One INT8 row (``--backend``'s PTQ flavour, the table's: ``trt-qdq`` is the TensorRT-ready Q/DQ ONNX of
``calibrate/tensorrt.py`` scored with ONNX Runtime, ``ort-u8s8`` the ONNX Runtime target's), then, per seed and per
row, the QAT stage's own steps (``qat/``): NNCF fake quantization with the backend's scheme, ranges from the same
calibration images, the fine-tune against the frozen teacher with that row's terms (``--qat-kd``: ``none`` is
cross-entropy alone, the control), the Q/DQ export (made TensorRT-ready for ``tensorrt``), scored against the FP32
ONNX on every evaluation image as the quantization table scores (``measure.score``). Rows of one seed share
the initial quantized model, the batches and the learning rate: only the loss differs (paired).

Reported: FP32, PTQ and per-row QAT mIoU; per row the recovered share of the PTQ drop, (QAT − PTQ) / (FP32 − PTQ);
per seed the paired difference of the rows with a 95 % t interval over seeds and a bootstrap one.
The fine-tune sees the training split only; the evaluation split is only scored.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (paired, mean_sd, code_hash, lscpu, versions)
from quant import measure  # noqa: E402  (export_at, quantize, score, feeds_of)

BACKEND_FLAVOUR = {"tensorrt": "trt-qdq", "onnxruntime": "ort-u8s8"}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="dataset spec, e.g. camvid:.bench/camvid96")
    ap.add_argument("--model", required=True, type=Path, help="the checkpoint that is quantized (the student)")
    ap.add_argument("--teacher", required=True, type=Path, help="the frozen teacher of the fine-tune")
    ap.add_argument("--backend", default="tensorrt", choices=sorted(BACKEND_FLAVOUR))
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument(
        "--rows",
        default="kd+bckd,none",
        help="--qat-kd terms per row; none = cross-entropy alone. An 'init' row (NNCF's quantized model before any "
        "fine-tune step, exported the same way) is always measured first",
    )
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--calib-size", type=int, default=100)
    ap.add_argument("--size", default="96,128", help="H,W of the export and of every image")
    ap.add_argument("--work", type=Path, default=Path(".bench/qat_study"))
    ap.add_argument("--json", type=Path, required=True)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    import torch

    from bckd_pipeline.context import norm
    from bckd_pipeline.distill.checkpoint import load_model
    from bckd_pipeline.configs import DistillConfig
    from bckd_pipeline.export.wrapper import SegExportWrapper
    from bckd_pipeline.qat import fakequant
    from bckd_pipeline.qat.finetune import QatSchedule, finetune
    from bckd_pipeline.qat.stage import preset_taps
    from bckd_pipeline.targets.profiles import CalibrationSpec

    args = parse_args(argv)
    hw = tuple(int(v) for v in args.size.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    opts = argparse.Namespace(threads=None, resamples=1000, seed=0, demo_count=None)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    args.code_hash = common.code_hash()  # of the code that runs, taken before it runs

    from bckd_pipeline.fileio import file_sha256

    model, model_meta = load_model(args.model)  # once: its preset names the quantization table's Student
    student = measure.Student(model_meta.model, args.model, file_sha256(args.model), model, model_meta)
    from bckd_pipeline.data.feeds import DatasetFeeds, pick_indices

    train_set = measure.dataset(opts, args.data, "train", hw)  # read once: calibration draws from it too
    calib = DatasetFeeds.from_dataset(train_set, pick_indices(args.calib_size, len(train_set), 0), hw)
    val = measure.feeds_of(opts, args.data, "val", hw, None)
    sim = measure.export_at(student, hw, args.work / "export", val.head(4))
    flavour = BACKEND_FLAVOUR[args.backend]
    ptq_path = args.work / f"ptq-{flavour}.onnx"
    ptq_settings = measure.quantize(flavour, sim, ptq_path, calib, CalibrationSpec(size=args.calib_size, seed=0))
    meta = student.meta
    ptq = measure.score(sim, ptq_path, val, num_classes=meta.num_classes, ignore_index=meta.ignore_index, opts=opts)
    print(f"FP32 {ptq['miou_fp32']:.2f}  PTQ {flavour} {ptq['miou_int8']:.2f} ({ptq['delta_miou']:+.2f})", flush=True)
    drop = ptq["miou_fp32"] - ptq["miou_int8"]

    wrapper = SegExportWrapper(copy.deepcopy(student.model).cpu(), normalize=norm(meta), head="logits").eval()
    teacher_model, tmeta = load_model(args.teacher, expect_classes=meta.num_classes)
    teacher = SegExportWrapper(teacher_model, normalize=norm(tmeta), head="logits").eval()
    train = DatasetFeeds.from_dataset(train_set, range(len(train_set)), hw)
    scheme = fakequant.scheme_for(args.backend)
    one_image = list(replace(calib, batch=1))
    records = previous_records(args, ptq)
    done = {(r["row"], r["seed"]) for r in records}
    for seed in seeds:
        todo = [r for r in (["init"] if seed == seeds[0] else []) + rows if (r, seed) not in done]
        if not todo:
            continue
        torch.manual_seed(seed)
        initial = fakequant.insert_fake_quant(copy.deepcopy(wrapper), one_image, scheme)
        for row in todo:
            qstudent = copy.deepcopy(initial)  # every row of a seed starts from the same quantized model
            if row == "init":  # NNCF's ranges (and its bias correction), no fine-tune: what QAT starts from
                cost = {"iterations": 0, "wall_s": 0.0}
            else:
                schedule = QatSchedule(
                    iters=args.iters, lr=args.lr, batch_size=args.batch, seed=seed, distill=DistillConfig(kd=row)
                )
                cost = finetune(
                    qstudent,
                    teacher,
                    train.images,
                    train.labels,
                    schedule,
                    student_taps=preset_taps(meta.model, "student"),
                    teacher_taps=preset_taps(tmeta.model, "teacher"),
                    ignore_index=meta.ignore_index,
                )
            path = args.work / f"qat-{row}-s{seed}.onnx"
            fakequant.export_qdq(
                qstudent, torch.zeros(1, 3, *hw), path, opset=17, input_name="image", output_name="logits"
            )
            ready = fakequant.make_tensorrt_ready(path) if args.backend == "tensorrt" else None
            scored = measure.score(
                sim, path, val, num_classes=meta.num_classes, ignore_index=meta.ignore_index, opts=opts
            )
            rec = {
                "row": row,
                "seed": seed,
                "miou_qat": scored["miou_int8"],
                "delta_miou": scored["delta_miou"],
                "delta_miou_ci95": scored["delta_miou_ci95"],
                "pixel_agreement": scored["pixel_agreement"],
                "boundary_f": scored["boundary_f_int8"],
                "recovered": (scored["miou_int8"] - ptq["miou_int8"]) / drop if drop > 0 else None,
                "tensorrt_ready": ready,
                "cost": cost,
                "code_hash": args.code_hash,
            }
            records.append(rec)
            write(args, ptq, ptq_settings, flavour, records, rows, started, argv)  # a resumable file after every run
            recovered = "n/a (PTQ lost nothing)" if rec["recovered"] is None else f"{rec['recovered']:.2f}"
            print(
                f"seed {seed} {row:8s} QAT {rec['miou_qat']:.2f} ({rec['delta_miou']:+.2f}), "
                f"recovered {recovered} of the drop, {cost['wall_s']:.0f} s",
                flush=True,
            )
    write(args, ptq, ptq_settings, flavour, records, rows, started, argv)  # also when every run was reused
    print(f"wrote {args.json}")


def previous_records(args, ptq: dict) -> list[dict]:
    """The records of an earlier run of this study into the same --json (same model, teacher, backend, data,
    schedule and PTQ row), so that a row or a seed can be added without rerunning the others."""
    if not args.json.is_file():
        return []
    old = json.loads(args.json.read_text())
    same = (
        old.get("model") == str(args.model)
        and old.get("teacher") == str(args.teacher)
        and old.get("backend") == args.backend
        and old.get("data") == args.data
        and old.get("schedule") == {"iters": args.iters, "lr": args.lr, "batch": args.batch, "optimizer": "Adam"}
        and abs(old.get("ptq", {}).get("miou_int8", -1) - ptq["miou_int8"]) < 1e-9
    )
    if not same:
        raise SystemExit(
            f"{args.json} holds another study (model, teacher, schedule or PTQ row differ): use --json NEW"
        )
    print(f"reusing {len(old['records'])} runs of {args.json}", flush=True)
    # Runs recorded before records carried their own code hash: unknown (the file's hash was taken when written).
    return [{"code_hash": None, **r} for r in old["records"]]


def summary(records: list[dict], rows: list[str]) -> dict:
    out: dict = {"rows": {}, "paired": {}}
    for row in ["init"] + rows:
        mine = [r for r in records if r["row"] == row]
        out["rows"][row] = {
            "seeds": [r["seed"] for r in mine],
            "miou_qat": common.mean_sd([r["miou_qat"] for r in mine]),
            "recovered": common.mean_sd([r["recovered"] for r in mine if r["recovered"] is not None]),
            "recovered_t_ci": _mean_ci([r["recovered"] for r in mine if r["recovered"] is not None]),
        }
    by = {row: {r["seed"]: r["miou_qat"] for r in records if r["row"] == row} for row in rows}
    for i, row in enumerate(rows):
        for other in rows[i + 1 :]:
            out["paired"][f"{row} - {other}"] = common.paired(by[row], by[other])
    init = next((r["miou_qat"] for r in records if r["row"] == "init"), None)
    if init is not None:  # what the fine-tune adds to NNCF's initial quantized model, per row
        for row in rows:
            out["paired"][f"{row} - init"] = common.paired(by[row], {s: init for s in by[row]})
    return out


def _mean_ci(values: list[float]) -> list[float] | None:
    """95 % t interval of a mean over seeds (the recovered share of the drop): common.paired's interval
    against zero."""
    return common.paired(dict(enumerate(values)), dict.fromkeys(range(len(values)), 0.0))["t_ci"]


def write(args, ptq, ptq_settings, flavour, records, rows, started, argv) -> None:
    payload = {
        "command": "python benchmarks/qat_study.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "code_hash": args.code_hash,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
        "machine": common.lscpu(),
        "versions": common.versions(),
        "model": str(args.model),
        "teacher": str(args.teacher),
        "data": args.data,
        "backend": args.backend,
        "ptq_flavour": flavour,
        "ptq_settings": ptq_settings,
        "schedule": {"iters": args.iters, "lr": args.lr, "batch": args.batch, "optimizer": "Adam"},
        "fp32_miou": ptq["miou_fp32"],
        "ptq": ptq,
        "records": records,
        "summary": summary(records, rows),
    }
    from bckd_pipeline.fileio import write_text

    write_text(args.json, json.dumps(payload, indent=1))  # atomic: a rerun resumes from this file


if __name__ == "__main__":
    main()
