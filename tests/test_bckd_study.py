"""benchmarks/bckd_study.py: the pure parts (statistics, queue, row selection, resume); no training."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from helpers.scripts import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bckd_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("bckd_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bckd_study"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bckd_study", None)


def _args(study, tmp_path, *extra):
    return study.resolve(study.parse_args(["--out", str(tmp_path), *extra]))


def test_paired_golden(study):
    # diffs 1, 2, 3, 4: mean 2.5, sd sqrt(5/3) = 1.290994; t(0.975, 3) = 3.182446.
    p = study.paired({0: 11.0, 1: 12.0, 2: 13.0, 3: 14.0, 9: 99.0}, {0: 10.0, 1: 10.0, 2: 10.0, 3: 10.0})
    assert p["n"] == 4 and p["seeds"] == [0, 1, 2, 3]  # seed 9 has no partner
    assert p["mean"] == pytest.approx(2.5)
    assert p["sd"] == pytest.approx(1.290994, abs=1e-6)
    half = 3.182446 * 1.290994 / 2
    assert p["t_ci"] == pytest.approx([2.5 - half, 2.5 + half], abs=1e-5)
    assert p["significant"]  # [0.446, 4.554] excludes 0
    lo, hi = p["bootstrap_ci"]
    assert 1.0 <= lo <= 2.5 <= hi <= 4.0
    assert p["bootstrap_ci"] == study.paired({0: 1, 1: 2, 2: 3, 3: 4}, {0: 0, 1: 0, 2: 0, 3: 0})["bootstrap_ci"]


def test_paired_not_significant_and_small_n(study):
    p = study.paired({0: 1.0, 1: -1.0, 2: 2.0, 3: -2.0}, {s: 0.0 for s in range(4)})
    assert p["mean"] == 0 and not p["significant"]
    one = study.paired({0: 3.0}, {0: 1.0})
    assert one["n"] == 1 and one["mean"] == 2 and one["sd"] is None and not one["significant"]
    assert study.paired({0: 1.0}, {1: 1.0})["n"] == 0


def test_queue_is_seed_major_with_ablation_last(study, tmp_path):
    args = _args(study, tmp_path, "--seeds", "3,1,2,0", "--rows", "kd,bckd", "--bckd-args", "--bckd balance=ratio")
    queue = study.build_queue(args, "encoder")
    assert [(j.row, j.seed) for j in queue] == [
        ("kd", 3),
        ("bckd", 3),
        ("kd", 1),
        ("bckd", 1),
        ("kd", 2),
        ("bckd", 2),
        ("kd", 0),
        ("bckd", 0),
        ("L_b", 3),
        ("L_c", 3),
        ("L_b+L_c", 3),
    ]  # L_b+L_c+WD is bckd's first seed: not run twice
    kd, bckd = queue[0], queue[1]
    assert "--bckd" not in kd.flags and bckd.flags[-2:] == ("--bckd", "balance=ratio")
    assert queue[8].flags == ("--kd", "bckd", "--no-context", "--no-decay", "--bckd", "balance=ratio")


def test_queue_runs_bckd_first_seed_for_the_ablation_and_fills_old_taps(study, tmp_path):
    args = _args(study, tmp_path, "--seeds", "0,1,2,3", "--rows", "kd+lc-old-taps")
    queue = study.build_queue(args, "stages.0,stages.1")
    assert queue[0].flags == ("--kd", "kd+bckd", "--no-boundary", "--teacher-taps", "stages.0,stages.1")
    assert (queue[-1].row, queue[-1].seed, queue[-1].kind) == ("bckd", 0, "ablation")
    no_ablation = _args(study, tmp_path, "--rows", "kd", "--no-ablation")
    assert [j.row for j in study.build_queue(no_ablation, "encoder")] == ["kd"] * 4


def test_row_selection_and_seed_errors(study, tmp_path):
    with pytest.raises(SystemExit, match=r"'bkcd' \(did you mean 'bckd'\?\).*Allowed: student, kd, cwd"):
        study.select_rows("kd,bkcd")
    assert study.select_rows("kd, bckd,kd") == ["kd", "bckd"]
    with pytest.raises(SystemExit, match="at least 4"):
        _args(study, tmp_path, "--seeds", "0,1")
    assert _args(study, tmp_path, "--seeds", "0,1", "--allow-few-seeds").seed_list == [0, 1]
    with pytest.raises(SystemExit, match="repeats"):
        _args(study, tmp_path, "--seeds", "0,1,1,2")


def test_protocol_defaults_and_explicit_flags(study, tmp_path):
    gpu = _args(study, tmp_path, "--protocol", "gpu")
    assert (gpu.size, gpu.epochs, gpu.jobs, gpu.device) == ("144,192", 40, 4, "cuda")
    mine = _args(study, tmp_path, "--protocol", "gpu", "--size", "96,128", "--jobs", "2", "--threads", "3")
    assert (mine.size, mine.jobs, mine.threads) == ("96,128", 2, 3)
    cmd = study.distill_command(mine, study.build_queue(mine, "encoder")[0], Path("T.pt"))
    assert cmd[:2] == ["bckd-pipeline", "distill"]
    assert ["--seed", "0"] == cmd[cmd.index("--seed") : cmd.index("--seed") + 2]
    assert "--preset" in cmd and cmd[cmd.index("--preset") + 1] == "camvid"


def _metrics(miou):
    return {
        "miou": miou,
        "boundary_f": {"f_score": 50.0},
        "lhd": {"mean": 3.0},
        "lhd_vs_reference": {"mean": 2.0},
        "per_class_iou": [miou, miou],
        "train": {
            "seconds": 12.5,
            "history": [
                {"iteration": 10, "lr": 0.01, "loss": 2.0, "loss/ce": 1.5, "grad/student": 4.0},
                {"iteration": 20, "lr": 0.005, "loss": 1.0, "loss/ce": 0.75, "bckd/gamma": 0.5, "grad/student": 2.0},
                {"iteration": 20, "val_miou": miou},
            ],
        },
    }


def test_resume_reads_existing_metrics_without_running(study, tmp_path, monkeypatch):
    args = _args(study, tmp_path, "--rows", "kd", "--no-ablation")
    job = study.build_queue(args, "encoder")[0]
    folder = study.job_dir(tmp_path, job)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(_metrics(42.0)))
    cmd = study.shlex.join(study.distill_command(args, job, Path("T.pt")))
    (folder / "command.txt").write_text(cmd + "\n")
    monkeypatch.setattr(study, "run_cli", lambda *a: pytest.fail("an existing run must not be rerun"))
    study.check_resumable(args, [job], Path("T.pt"))
    rec = study.run_job(args, job, Path("T.pt"), deadline_at=0.0)  # past the deadline: still read
    assert rec["status"] == "ok" and rec["reused"] and rec["command_recorded"]
    assert (rec["miou"], rec["boundary_f"], rec["lhd"], rec["lhd_vs_teacher"]) == (42.0, 50.0, 3.0, 2.0)
    assert rec["last_terms"] == {"loss": 1.0, "loss/ce": 0.75, "bckd/gamma": 0.5}
    assert rec["grad"] == {"grad/student": {"last": 2.0, "mean": 3.0, "n": 2}}
    assert rec["train_seconds"] == 12.5


def test_resume_refuses_a_folder_made_by_another_command(study, tmp_path):
    args = _args(study, tmp_path, "--rows", "kd", "--no-ablation")
    job = study.build_queue(args, "encoder")[0]
    folder = study.job_dir(tmp_path, job)
    folder.mkdir(parents=True)
    (folder / "command.txt").write_text("bckd-pipeline distill --epochs 1\n")
    with pytest.raises(SystemExit, match="Use another --out"):
        study.check_resumable(args, [job], Path("T.pt"))


def test_deadline_skips_new_runs(study, tmp_path, monkeypatch):
    args = _args(study, tmp_path, "--rows", "kd", "--no-ablation")
    monkeypatch.setattr(study, "run_cli", lambda *a: pytest.fail("no run after the deadline"))
    rec = study.run_job(args, study.build_queue(args, "encoder")[0], Path("T.pt"), deadline_at=0.0)
    assert rec["status"] == "skipped (deadline)"


def test_summary_and_table(study):
    recs = [
        {
            "row": row,
            "seed": s,
            "kind": "row",
            "status": "ok",
            "miou": base + s + d,
            "boundary_f": 50.0 + d,
            "lhd": 3.0,
            "lhd_vs_teacher": 2.0,
        }
        for row, d in (("student", 0.0), ("kd", 1.0), ("bckd", 0.0))
        for s, base in ((0, 40.0), (1, 41.0), (2, 39.0), (3, 40.5))
    ]
    recs.append({"row": "L_b", "seed": 0, "kind": "ablation", "status": "ok", "miou": 38.0, "boundary_f": 1, "lhd": 2})
    recs.append({"row": "kd", "seed": 4, "kind": "row", "status": "failed"})
    recs[0]["code_hash"], recs[1]["code_hash"] = "aaa", "bbb"
    s = study.summarize(recs, ["student", "kd", "bckd"], 0, {"miou": 60.0, "boundary_f": 70.0, "lhd": 1.0})
    assert s["rows"]["kd"]["n"] == 4  # the failed seed 4 is not counted
    assert s["rows"]["kd"]["miou"]["mean"] == pytest.approx(42.625)  # (40 + 42 + 41 + 43.5) / 4 + 1
    kd_vs_student = s["paired"]["student"]["kd"]["miou"]
    assert kd_vs_student["mean"] == pytest.approx(1.0) and kd_vs_student["sd"] == 0 and kd_vs_student["significant"]
    assert s["paired"]["kd"]["bckd"]["miou"]["mean"] == pytest.approx(-1.0)
    assert "kd" not in s["paired"]["kd"]
    ablation = {a["name"]: a for a in s["ablation"]}
    assert ablation["L_b"]["miou"] == 38.0 and ablation["L_c"]["miou"] is None
    assert ablation["L_b+L_c+WD"]["miou"] == 40.0  # the bckd row, seed 0
    text = study.table_md({"summary": s, "settings_line": "x", "jobs": recs})
    assert "| kd | student | 4 | 1.00 |" in text and "kd/s4 (failed)" in text and "| teacher (None) | 1 | 60.00" in text
    assert s["code_hashes"] == ["aaa", "bbb"] and "2 versions of bckd_pipeline" in text
    assert math.isfinite(s["paired"]["kd"]["student"]["miou"]["t_ci"][0])


def _earlier_study(study, args, queue, teacher, path, **teacher_changes):
    """A results.json as an earlier study on another machine wrote it: its run folders are not here."""
    jobs = [
        {
            "row": j.row,
            "seed": j.seed,
            "kind": j.kind,
            "status": "ok",
            "command": study.shlex.join(study.distill_command(args, j, Path(teacher["checkpoint"]))),
            "code_hash": "old",
            "miou": 30.0 + j.seed,
        }
        for j in queue
    ]
    path.write_text(json.dumps({"teacher": {**teacher, **teacher_changes}, "jobs": jobs}))
    return path


def test_include_takes_an_earlier_studys_runs_only_with_the_same_teacher(study, tmp_path, monkeypatch):
    earlier = tmp_path / "earlier.json"
    args = _args(study, tmp_path, "--rows", "kd", "--no-ablation", "--include", str(earlier))
    queue = study.build_queue(args, "encoder")
    teacher = {
        "checkpoint": str(tmp_path / "teacher" / "teacher.pt"),
        "command": "bckd-pipeline train-teacher --seed 0",
        "miou": 42.918,
        "boundary_f": 73.87,
        "lhd": 5.07,
        "per_class_iou": [90.1, 77.5],
        "last_terms": {"loss": 0.44819},
    }
    _earlier_study(study, args, queue, teacher, earlier)
    monkeypatch.setattr(study, "run_cli", lambda *a: pytest.fail("an included run must not be rerun"))
    included = study.included_runs(args, queue, teacher)
    assert sorted(included) == [("kd", s, "row") for s in range(4)]
    rec = study.run_job(args, queue[1], Path(teacher["checkpoint"]), None, included)
    assert (rec["miou"], rec["code_hash"], rec["reused"], rec["included_from"]) == (31.0, "old", True, str(earlier))

    # One digit of one per-class IoU moved: the teacher was retrained into another network.
    _earlier_study(study, args, queue, teacher, earlier, per_class_iou=[90.1, 77.6])
    with pytest.raises(SystemExit, match=r"not the one its runs distilled from .*per_class_iou"):
        study.included_runs(args, queue, teacher)
    # Where both records carry the checkpoint's sha256, it decides alone.
    _earlier_study(study, args, queue, {**teacher, "sha256": "ab"}, earlier, per_class_iou=[0.0])
    assert len(study.included_runs(args, queue, {**teacher, "sha256": "ab"})) == 4
    _earlier_study(study, args, queue, {**teacher, "sha256": "ab"}, earlier)
    with pytest.raises(SystemExit, match="sha256"):
        study.included_runs(args, queue, {**teacher, "sha256": "cd"})
    # Another teacher command, or a run made by another distill command, is refused.
    _earlier_study(study, args, queue, teacher, earlier, command="bckd-pipeline train-teacher --seed 1")
    with pytest.raises(SystemExit, match="needs one teacher"):
        study.included_runs(args, queue, teacher)
    other = _args(study, tmp_path, "--rows", "kd", "--no-ablation", "--epochs", "3", "--include", str(earlier))
    _earlier_study(study, other, queue, teacher, earlier)
    with pytest.raises(SystemExit, match="Use the flags of that study"):
        study.included_runs(args, queue, teacher)


def test_precisions_run_every_row_once_per_precision_paired_with_the_first(study, tmp_path):
    args = _args(study, tmp_path, "--rows", "student,kd+bckd", "--precisions", "fp32,bf16", "--no-ablation")
    assert args.row_list == ["student@fp32", "student@bf16", "kd+bckd@fp32", "kd+bckd@bf16"]
    queue = study.build_queue(args, "encoder")
    assert [(j.row, j.seed) for j in queue[:4]] == [(r, 0) for r in args.row_list]
    assert queue[1].flags == ("--kd", "none", "--train-precision", "bf16")
    assert queue[3].flags[:2] == ("--kd", "kd+bckd") and queue[3].flags[-2:] == ("--train-precision", "bf16")
    assert study.job_dir(tmp_path, queue[1]) == tmp_path / "student@bf16" / "s0"
    with pytest.raises(SystemExit, match="allowed values are auto, fp32, bf16, fp16"):
        _args(study, tmp_path, "--precisions", "fp8")
    recs = [
        {"row": row, "seed": s, "kind": "row", "status": "ok", "miou": 40.0 + s + d, "boundary_f": 50.0, "lhd": 3.0}
        for row, d in (("student@fp32", 0.0), ("student@bf16", 0.5), ("kd+bckd@fp32", 2.0), ("kd+bckd@bf16", 1.0))
        for s in range(4)
    ]
    s = study.summarize(recs, args.row_list, 0)
    assert s["paired"]["student@fp32"]["student@bf16"]["miou"]["mean"] == pytest.approx(0.5)
    assert s["paired"]["kd+bckd@fp32"]["kd+bckd@bf16"]["miou"]["mean"] == pytest.approx(-1.0)
    assert set(s["paired"]) == {"student@fp32", "kd+bckd@fp32"}


# ----------------------------------------------------------------------------------------------
# --task detection


def test_detection_dry_run_prints_the_detector_commands(study, tmp_path, capsys):
    assert study.main(["--task", "detection", "--out", str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    teacher = lines[1]
    assert teacher.startswith("bckd-pipeline train-teacher ") and "--task detection" in teacher
    assert "--data coco:.bench/camvid_instances" in teacher and "--resize 192,256" in teacher
    assert "--arch fcos-lite2 --pretrained imagenet" in teacher and "--crop" not in teacher
    runs = [line for line in lines if line.startswith("bckd-pipeline distill ")]
    assert len(runs) == 4 * 6  # four seeds x six rows, no segmentation ablation
    assert [r.split(" --kd ")[1] for r in runs[:6]] == ["none", "kd", "pkd", "bckd", "kd+bckd", "pkd+bckd"]
    assert all("--task detection" in r and "--student-arch fcos-lite0 --pretrained imagenet" in r for r in runs)
    assert all("--crop" not in r for r in runs)
    assert "the first run alone" in "\n".join(lines)
    gpu = study.resolve(study.parse_args(["--out", str(tmp_path), "--protocol", "gpu-det"]))
    assert (gpu.task, gpu.device, gpu.size, gpu.teacher_model) == ("detection", "cuda", "352,480", "fcos-lite2")
    for size in (study.PROTOCOLS["cpu-det"].size, gpu.size):
        assert all(int(v) % 32 == 0 for v in size.split(","))  # the detectors' coarsest stride


def test_detection_arguments_are_checked(study, tmp_path):
    with pytest.raises(SystemExit, match="cpu-det is a detection protocol and --task is segmentation"):
        _args(study, tmp_path, "--protocol", "cpu-det", "--task", "segmentation")
    with pytest.raises(SystemExit, match=r"'cwd'.*Allowed: student, kd, pkd, bckd, kd\+bckd, pkd\+bckd"):
        _args(study, tmp_path, "--task", "detection", "--rows", "student,cwd")
    with pytest.raises(SystemExit, match="Put student first"):
        _args(study, tmp_path, "--task", "detection", "--rows", "kd,student")
    det = _args(study, tmp_path, "--task", "detection", "--ablation")
    assert not det.ablation and det.min_gap == study.DET_MIN_GAP and det.preset == "demo"
    seg = _args(study, tmp_path)
    assert (seg.task, seg.protocol, seg.min_gap, seg.ablation) == ("segmentation", "cpu", None, True)


def _det_metrics(ap):
    return {"map": ap, "ap50": ap + 20, "ap75": ap - 5, "ap_small": None, "ap_medium": ap - 1, "ap_large": ap + 1}


def test_detection_summary_pairs_with_the_student_and_the_best_baseline(study, tmp_path):
    recs = [
        {"row": row, "seed": s, "kind": "row", "status": "ok", **_det_metrics(20.0 + s + d)}
        for row, d in (("student", 0.0), ("kd", 1.0), ("pkd", 2.0), ("bckd", 3.0))
        for s in range(4)
    ]
    s = study.summarize(recs, ["student", "kd", "pkd", "bckd"], 0, {"model": "t", **_det_metrics(30.0)}, "detection")
    assert s["best_baseline"] == "pkd" and set(s["paired"]) == {"student", "pkd"}
    assert s["paired"]["pkd"]["bckd"]["map"]["mean"] == pytest.approx(1.0)
    assert s["paired"]["student"]["kd"]["ap50"]["mean"] == pytest.approx(1.0)
    assert s["paired"]["student"]["kd"]["ap_small"]["n"] == 0  # no small objects: no pairs, no figure
    assert s["rows"]["bckd"]["map"]["mean"] == pytest.approx(24.5) and s["ablation"] == []
    results = {"task": "detection", "data": "coco:.bench/camvid_instances", "summary": s, "settings_line": "x"}
    text = study.table_md({**results, "jobs": recs})
    assert "a proxy of instances derived from CamVid" in text and "not comparable with the paper's COCO" in text
    assert "| AP | AP50 | AP75 | AP small | AP medium | AP large |" in text
    assert "| bckd | pkd (best baseline) | 4 | 1.00 |" in text and "| teacher (t) | 1 | 30.00 | 50.00" in text
    assert "CamVid" not in study.table_md({**results, "data": "demo", "jobs": recs})


def test_the_docs_render_a_recorded_detection_study(study, tmp_path, monkeypatch):
    recs = [
        {"row": row, "seed": s, "kind": "row", "status": "ok", **_det_metrics(20.0 + s + d + (s == 3) * 2 * d)}
        for row, d in (("student", 0.0), ("kd", 1.0), ("pkd", -0.5), ("bckd", 0.5))
        for s in range(4)
    ]
    rows = ["student", "kd", "pkd", "bckd"]
    s = study.summarize(recs, rows, 0, {"model": "fcos-lite2", **_det_metrics(30.0)}, "detection")
    results = {"summary": s, "jobs": recs, "settings": {"seed_list": [0, 1, 2, 3]}}
    (tmp_path / "det.json").write_text(json.dumps({"command": "x", "study": results}))
    rr = load_script("render_results")
    monkeypatch.setattr(rr, "RESULTS", tmp_path)
    table = rr.det_study_table("det").splitlines()
    assert table[2] == "| teacher `fcos-lite2` | | 30.00 | 50.00 | 25.00 | - | 29.00 | 31.00 |"
    kd = next(ln for ln in table if ln.startswith("| dense score-map KD"))
    assert kd.startswith(
        "| dense score-map KD (`--kd kd`) | 21.00, 22.00, 23.00, 26.00 | 23.00 ± 2.16 | 43.00 ± 2.16 |"
    )
    assert kd.endswith("| - | 22.00 ± 2.16 | 24.00 ± 2.16 |")  # no small objects: no figure
    paired = rr.det_study_paired("det").splitlines()
    assert s["best_baseline"] == "kd"
    bckd = next(ln for ln in paired if ln.startswith("| BCKD (`--kd bckd`) | kd |"))
    assert "| 4 | -0.75 | [-1.55, +0.05] |" in bckd and bckd.endswith("| 0 of 4 |")  # t(3) = 3.182, sd 0.5
    vs_student = next(ln for ln in paired if ln.startswith("| BCKD (`--kd bckd`) | student |"))
    assert "| 4 | +0.75 | [-0.05, +1.55] |" in vs_student and vs_student.endswith("| 4 of 4 |")


def test_detection_study_stops_when_the_teacher_student_gap_is_small(study, tmp_path, monkeypatch, capsys):
    teacher = {"status": "given", "checkpoint": str(tmp_path / "t.pt"), "model": "fcos-lite2", **_det_metrics(21.0)}
    monkeypatch.setattr(study, "ensure_teacher", lambda args: dict(teacher))
    ran = []

    def fake_job(args, job, *rest):
        ran.append((job.row, job.seed))
        return {"row": job.row, "seed": job.seed, "kind": job.kind, "status": "ok", **_det_metrics(20.0)}

    monkeypatch.setattr(study, "run_job", fake_job)
    argv = ["--task", "detection", "--out", str(tmp_path / "s"), "--seeds", "5,6,7,8"]
    assert study.main(argv) == study.GAP_TOO_SMALL
    assert ran == [("student", 5)]  # nothing else ran
    assert "gap too small to distil" in capsys.readouterr().err
    saved = json.loads((tmp_path / "s" / "results.json").read_text())
    assert saved["gap"] == {"metric": "map", "seed": 5, "teacher": 21.0, "student": 20.0, "gap": 1.0, "min_gap": 2.0}
    ran.clear()
    assert study.main([*argv, "--min-gap", "0.5", "--jobs", "1"]) == 0
    assert len(ran) == 24 and ran[0] == ("student", 5) and ran.count(("student", 5)) == 1


@pytest.mark.slow
def test_tiny_detection_study_runs_end_to_end(study, tmp_path):
    out = tmp_path / "study"
    argv = [
        "--task", "detection", "--preset", "smoke", "--data", "demo", "--out", str(out), "--size", "64,64",
        "--teacher-model", "fcos-tiny-t", "--student-model", "fcos-tiny-s", "--pretrained-teacher", "none",
        "--pretrained-student", "none", "--teacher-iters", "20", "--iters", "4", "--seeds", "0,1",
        "--allow-few-seeds", "--jobs", "2", "--min-gap=-1000",
    ]  # fmt: skip
    assert study.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "detection" and results["gap"]["metric"] == "map"
    jobs = results["jobs"]
    assert len(jobs) == 12 and all(j["status"] == "ok" for j in jobs)
    assert all(set(study.DET_METRICS) <= set(j) for j in jobs)
    assert all(" --task detection " in j["command"] for j in jobs)
    s = results["summary"]
    assert s["rows"]["pkd+bckd"]["n"] == 2 and s["best_baseline"] in ("kd", "pkd")
    assert s["paired"]["student"]["bckd"]["map"]["n"] == 2
    assert s["teacher"]["model"] == "fcos-tiny-t"
    assert "Paired differences, AP50" in (out / "table.md").read_text()
