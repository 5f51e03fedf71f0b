"""benchmarks/quant_table.py and its library benchmarks/quant/ on a tiny student and the demo data: the JSON it
writes, the bootstrap interval around its point estimate, the layer groups of the sensitivity sweep, and the
resumable cache."""

import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bckd_pipeline.data.demo import DEMO_CLASSES
from bckd_pipeline.configs import CheckpointMeta
from bckd_pipeline.distill.checkpoint import save_checkpoint
from bckd_pipeline.distill.models import build_model

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "quant_table.py"
HW = (32, 32)


@pytest.fixture(scope="module")
def qt():
    """The command, loaded by path; it puts benchmarks/ on sys.path, where its library (quant/, common) lives."""
    spec = importlib.util.spec_from_file_location("quant_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lib(qt):
    """benchmarks/quant/: the table (run, markdown, worst_rows) and the remedies (layer groups)."""
    from quant import remedies, table

    return SimpleNamespace(table=table, remedies=remedies)


@pytest.fixture(scope="module")
def table(qt, tmp_path_factory):
    """One quick table: a tiny-student with random weights, two ONNX Runtime flavours, demo data at 32x32."""
    folder = tmp_path_factory.mktemp("quant")
    torch.manual_seed(0)
    model = build_model("tiny-student", len(DEMO_CLASSES)).eval()
    meta = CheckpointMeta(
        model="tiny-student", num_classes=len(DEMO_CLASSES), class_names=DEMO_CLASSES, input_hw=HW, dataset="demo"
    )
    ckpt = folder / "student.pt"
    save_checkpoint(ckpt, model, meta)
    args = qt.parse_args(["--data", "demo", "--out", str(folder / "out"), "--quick", "--sizes", "32x32"])
    opts = replace(
        qt.options(args),
        students={"tiny-student": ckpt},
        flavours=("ort-u8s8", "trt-qdq"),
        calib_size=8,
        runs=3,
        demo_count=12,
    )
    return qt, opts, qt.run(opts)


@pytest.mark.slow
def test_json_structure(table, lib):
    qt, opts, payload = table
    assert payload["format"] == lib.table.FORMAT
    assert payload["machine"]["cpu"]["model"] and "isa" in payload["machine"]["cpu"]
    assert payload["versions"]["onnxruntime"] and payload["settings"]["accuracy_size"] == [32, 32]
    student = payload["students"]["tiny-student"]
    assert student["fp32"]["images"] == 12 and "error" not in student
    assert set(student["accuracy"]) == {"ort-u8s8", "trt-qdq"}
    for flavour, acc in student["accuracy"].items():
        assert "error" not in acc, acc
        assert acc["images"] == 12 and acc["calibration_images"] == 8
        assert 0.0 <= acc["pixel_agreement"] <= 1.0
        assert acc["miou_fp32"] == pytest.approx(student["fp32"]["miou"])
        assert acc["delta_miou"] == pytest.approx(acc["miou_int8"] - acc["miou_fp32"])
        assert acc["boundary_f_int8"] is not None
        lat = student["latency"]["32x32"]
        assert lat[flavour]["p50_ms"] > 0 and lat[flavour]["runs"] == 3
    assert student["latency"]["32x32"]["fp32-onnxruntime"]["precision"] == "fp32"
    assert "fp32-openvino" not in student["latency"]["32x32"]  # only timed when the NNCF flavour is in the table
    json.dumps(payload)  # everything is JSON
    md = qt.markdown(payload)
    assert "| tiny-student | ort-u8s8 |" in md and "| tiny-student | trt-qdq |" in md


@pytest.mark.slow
def test_bootstrap_interval_brackets_the_point(table):
    _, _, payload = table
    for acc in payload["students"]["tiny-student"]["accuracy"].values():
        lo, hi = acc["delta_miou_ci95"]
        assert acc["bootstrap_point"] == pytest.approx(acc["delta_miou"])
        assert lo <= acc["delta_miou"] <= hi


@pytest.mark.slow
def test_rerun_reads_the_cache(table):
    qt, opts, payload = table
    again = qt.run(opts)
    for flavour, acc in payload["students"]["tiny-student"]["accuracy"].items():
        # The cached result, not a new measurement: the stored run time comes back unchanged.
        assert again["students"]["tiny-student"]["accuracy"][flavour] == acc
    lat = again["students"]["tiny-student"]["latency"]["32x32"]["ort-u8s8"]
    assert lat == payload["students"]["tiny-student"]["latency"]["32x32"]["ort-u8s8"]


@pytest.mark.slow
def test_layer_groups_and_worst_rows(table, lib):
    _, opts, payload = table
    sim = opts.out / "work" / "tiny-student" / "32x32" / "model.sim.onnx"
    groups = lib.remedies.layer_groups(sim)
    names = [n for nodes in groups.values() for n in nodes]
    assert names and len(names) == len(set(names))  # every quantizable node in exactly one group
    assert lib.remedies.resolvable("ort-u8s8", sim, names)  # most names survive ORT's pre-processing
    worst = lib.table.worst_rows(payload["students"], 1)
    accs = payload["students"]["tiny-student"]["accuracy"]
    assert worst == [("tiny-student", min(accs, key=lambda f: accs[f]["delta_miou"]))]


def test_bad_student_flag_says_how_to_fix(qt):
    args = qt.parse_args(["--data", "demo", "--student", "deeplabv3plus-mbv2"])
    with pytest.raises(SystemExit, match="PRESET=CHECKPOINT"):
        qt.options(args)
