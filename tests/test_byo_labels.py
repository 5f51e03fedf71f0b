"""Deploying a model trained elsewhere without labelled data: calibration from a folder of plain images,
label-free parity against the user's FP32 reference, the demo data refused for a foreign model, class names
that default to class_0..N-1, and one gate call over every target of a run folder."""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import SMOKE, assert_clean_error, run_cli
from PIL import Image
from torch import nn

from bckd_pipeline.data import build_dataset
from bckd_pipeline.deploy.parity import ledger
from bckd_pipeline.errors import ConfigError
from bckd_pipeline.model_spec import read_classes_file

CLASSES = 21  # a torchvision-style VOC model's output channels
FAST = ["--latency-runs", "3", "--warmup-runs", "1", "--warmup-s", "0", "--no-throughput"]
IMAGENET = ["--input-scale", "normalized", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]
BUDGETS = """
[onnxruntime-cpu]
max_miou_drop_vs_reference = 60
min_pixel_agreement = 0.5

[openvino-cpu]
max_miou_drop_vs_reference = 60
min_miou_vs_reference = 99.9
"""


class TwentyOne(nn.Module):
    """A stand-in for a torchvision segmentation model: 21 class logits at the input size, dict-free."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.head = nn.Conv2d(16, CLASSES, 1)

    def forward(self, x):
        return nn.functional.interpolate(self.head(self.body(x)), size=x.shape[-2:], mode="bilinear")


def _export(path: Path) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TwentyOne().eval(), (torch.zeros(1, 3, 32, 32),), str(path), input_names=["input"],
            output_names=["out"], opset_version=17, dynamo=False,
        )  # fmt: skip
    return path


def _images(folder: Path, count: int = 10, size: tuple[int, int] = (40, 48)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    return {"onnx": _export(root / "voc21.onnx"), "images": _images(root / "photos")}


# --- plain images as a dataset --------------------------------------------------------------------------
def test_a_folder_of_plain_images_splits_into_calibration_and_held_out_images_without_labels(tmp_path):
    folder = _images(tmp_path / "p", count=6)
    val, train = build_dataset(f"images:{folder}", "val"), build_dataset(f"images:{folder}", "train")
    assert [val.name(i) for i in range(len(val))] == ["img00", "img05"]  # every fifth image held out
    assert len(train) == 4 and not set(train.files) & set(val.files)
    image, mask = train.load(0)
    assert image.shape == (40, 48, 3) and (mask == 255).all() and not train.labelled
    same = build_dataset(f"folder:{folder}", "val")  # folder: without classes.txt reads the same images
    assert same.files == val.files and not same.labelled


def test_classes_file_takes_lines_or_json(tmp_path):
    (tmp_path / "c.txt").write_text("road\n\nsky\n")
    (tmp_path / "c.json").write_text(json.dumps({"classes": ["a", "b"]}))
    (tmp_path / "l.json").write_text('["x", "y", "z"]')
    assert read_classes_file(tmp_path / "c.txt") == ("road", "sky")
    assert read_classes_file(tmp_path / "c.json") == ("a", "b")
    assert read_classes_file(tmp_path / "l.json") == ("x", "y", "z")
    (tmp_path / "bad.json").write_text('{"names": 3}')
    with pytest.raises(ConfigError, match="expected a JSON list"):
        read_classes_file(tmp_path / "bad.json")


# --- the label-free ledger -------------------------------------------------------------------------------
def test_a_label_free_ledger_scores_every_row_against_the_references_own_predictions():
    from test_tasks import CRITERIA, C, fixed_stages

    stages, feeds = fixed_stages()
    kw = {"num_classes": C, "ignore_index": 255, "criteria": lambda p: CRITERIA[p]}
    truth = ledger(stages, feeds, **kw)
    free = ledger(stages, feeds, **kw, labels="reference")
    assert truth.scored_against == "ground_truth" and free.scored_against == "reference"
    ref = free.stage("pytorch")
    assert ref.miou == pytest.approx(100.0) and ref.pixel_agreement == 1.0  # the reference agrees with itself
    int8 = free.stage("int8")
    # mIoU against the reference's label maps: below 100 exactly where the rows disagree, and not the truth's
    assert 0 < int8.miou < 100 and int8.miou != pytest.approx(truth.stage("int8").miou)
    assert int8.miou_delta == pytest.approx(int8.miou - 100.0)
    assert int8.pixel_agreement == truth.stage("int8").pixel_agreement  # label-independent figures are the same
    assert free.per_image["int8"].shape == truth.per_image["int8"].shape  # the same bootstrap evidence
    # With labels, both: every row also carries its figures against the reference's predictions.
    for name in ("onnx", "int8", "labels"):
        row, free_row = truth.stage(name), free.stage(name)
        assert row.miou_vs_reference == pytest.approx(free_row.miou)
        assert row.miou_delta_vs_reference == pytest.approx(free_row.miou_delta)
    assert truth.stage("pytorch").miou_vs_reference == pytest.approx(100.0)


# --- refusals, in --dry-run too ---------------------------------------------------------------------------
@pytest.mark.parametrize("dry", [True, False])
def test_a_foreign_model_on_the_demo_data_is_refused_with_how_to_fix(user, tmp_path, capsys, dry):
    out = tmp_path / "R"
    argv = ["deploy", *SMOKE, "--onnx", user["onnx"], *IMAGENET, "--out", out, *(["--dry-run"] if dry else [])]
    rc, _, err = run_cli(capsys, *argv)
    assert_clean_error(rc, err, out)
    assert "--data demo is the built-in demo data" in err
    assert "--data folder:PATH" in err and "--calib-data images:FOLDER" in err and "--allow-demo-data" in err


def test_dry_run_from_plain_images_takes_the_models_21_classes(user, tmp_path, capsys):
    out = tmp_path / "R"
    argv = ["deploy", *SMOKE, "--onnx", user["onnx"], *IMAGENET, "--calib-data", f"images:{user['images']}"]
    rc, stdout, err = run_cli(capsys, *argv, "--target", "onnxruntime-cpu,openvino-cpu", "--out", out, "--dry-run")
    assert rc == 0, err
    assert f"of images:{user['images']} (images only)" in stdout
    assert "vs your FP32 ONNX, label-free: scored against its own predictions" in stdout
    assert "21 classes have no names" in err and "class_0..class_20" in err  # a warning, not an error


def test_what_needs_labels_is_refused_on_plain_images(user, tmp_path, capsys):
    base = ["deploy", *SMOKE, "--onnx", user["onnx"], *IMAGENET, "--calib-data", f"images:{user['images']}"]
    nncf = ["--target", "openvino-cpu", "--nncf-max-miou-drop", "1"]
    rc, _, err = run_cli(capsys, *base, *nncf, "--out", tmp_path / "R", "--dry-run")
    assert_clean_error(rc, err, tmp_path / "R")
    assert "--nncf-max-miou-drop measures mIoU on labelled training images" in err and "has no labels" in err


# --- end to end: two targets from plain images, the ledger and the gate -----------------------------------
@pytest.fixture(scope="module")
def deployed(user, tmp_path_factory):
    from bckd_pipeline.cli import main

    out = tmp_path_factory.mktemp("byo-run") / "R"
    argv = ["deploy", *SMOKE, "--onnx", str(user["onnx"]), *IMAGENET, "--calib-data", f"images:{user['images']}"]
    assert main([*argv, "--target", "onnxruntime-cpu,openvino-cpu", *FAST, "--out", str(out)]) in (0, 1)
    return out


@pytest.mark.slow
def test_two_targets_deploy_from_plain_images_with_label_free_parity(deployed):
    for key in ("onnxruntime-cpu", "openvino-cpu"):
        report = json.loads((deployed / f"report.{key}.json").read_text())
        assert report["parity_labels"] == "reference" and report["evaluation"]["labels"] == "reference"
        assert report["class_names"] == [f"class_{i}" for i in range(CLASSES)]
        assert report["evaluation"]["data"].startswith("images:") and report["evaluation"]["images"] == 2
        rows = {r["name"]: r for r in report["stages"]}
        assert rows["onnx"]["miou"] == pytest.approx(100.0)  # the user's FP32 ONNX is the reference
        assert "Label-free parity" in (deployed / f"report.{key}.md").read_text()
    calibration = json.loads((deployed / "deploy/calibration.json").read_text())
    assert calibration["data"].startswith("images:") and calibration["size"] == 8


@pytest.mark.slow
def test_one_gate_call_checks_every_target_of_the_run_folder(deployed, tmp_path, capsys):
    budgets = tmp_path / "b.toml"
    budgets.write_text(BUDGETS)
    junit, md = tmp_path / "g.xml", tmp_path / "g.md"
    rc, out, err = run_cli(capsys, "gate", deployed, "--budgets", budgets, "--junit", junit, "--markdown", md)
    assert rc in (0, 1), out + err
    assert "max_miou_drop_vs_reference 60" in out and "min_miou_vs_reference 99.9" in out
    suites = ET.parse(junit).getroot().findall("testsuite")
    assert [s.get("name").split(" ")[-1] for s in suites] == ["onnxruntime-cpu", "openvino-cpu"]
    text = md.read_text()
    assert "onnxruntime-cpu" in text and "openvino-cpu" in text and "label-free" in text
    # A ground-truth budget of the file on a label-free report is not measured (pending) and names the key that
    # is; a target's default max_miou_drop judges the label-free figures, as max_miou_drop_vs_reference.
    budgets.write_text("[openvino-cpu]\nmax_miou_drop = 1\n[onnxruntime-cpu]\n")
    rc, out, _ = run_cli(capsys, "gate", deployed, "--budgets", budgets)
    assert "pending  openvino-int8: max_miou_drop 1 not checked" in out
    assert "budget it with max_miou_drop_vs_reference" in out
    assert "vs budget max_miou_drop_vs_reference 1" in out and "[default budget of target onnxruntime-cpu]" in out
    assert "PENDING: 1 of 2 checks passed, 1 not measured (exit code 3)" in out


@pytest.mark.slow
def test_predict_runs_a_foreign_onnx_without_class_names(user, tmp_path, capsys):
    argv = ["predict", user["images"], "--model", user["onnx"], "--out", tmp_path / "P", *IMAGENET[2:]]
    rc, out, err = run_cli(capsys, *argv, "--no-progress")
    assert rc == 0, err
    assert "class_0..class_20" in err
    entries = json.loads((tmp_path / "P/predictions.json").read_text())
    assert entries and "class_0" in json.dumps(entries)


@pytest.mark.slow
def test_a_labelled_report_carries_both_kinds_of_figures_and_the_gate_judges_either(smoke_report, tmp_path, capsys):
    report = json.loads((smoke_report / "report.json").read_text())
    assert report["parity_labels"] == "ground_truth"
    assert report["stages"][0]["miou_vs_reference"] == pytest.approx(100.0)
    budgets = tmp_path / "b.toml"
    budgets.write_text("[onnxruntime-cpu]\nmax_miou_drop_vs_reference = 50\nmin_miou_vs_reference = 1\n")
    rc, out, err = run_cli(capsys, "gate", smoke_report, "--budgets", budgets)
    assert rc == 0, out + err
    assert "point estimate; no per-image confusions of this figure" in out  # its evidence is against the truth
    assert "vs budget max_miou_drop_vs_reference 50" in out and "vs budget min_miou_vs_reference 1" in out
    assert "vs budget max_miou_drop 1: within budget [default budget" in out or "max_miou_drop 1" in out
