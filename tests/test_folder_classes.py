"""A user's own segmentation data in the ``folder:`` layout: their class ids, and a classes file with names and
colours (``classes.txt`` lines ``name`` or ``name R G B``, or ``classes.json``); the example of README.md, "Data"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cli import FOLDER_FLAGS, make_folder_dataset, run_cli

from bckd_pipeline.data import build_dataset
from bckd_pipeline.errors import DataError

TXT = "background 0 0 0\ncrack 255 0 0\nrust spot 200 120 40\nvoid area 0 0 255\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "own", classes=4)  # mask ids 0, 1 and 3; 255 nowhere


def test_classes_txt_with_names_and_colours(root):
    (root / "classes.txt").write_text(TXT)
    info = build_dataset(f"folder:{root}", "train").info
    assert info.class_names == ("background", "crack", "rust spot", "void area") and info.num_classes == 4
    assert info.colors == ((0, 0, 0), (255, 0, 0), (200, 120, 40), (0, 0, 255))
    (root / "classes.txt").write_text("background\ncrack\nrust\nvoid\n")
    assert build_dataset(f"folder:{root}", "train").info.colors is None  # names alone: the project's palette


def test_classes_json(root):
    (root / "classes.txt").unlink()
    items = [{"name": "background", "color": [0, 0, 0]}, {"name": "crack", "color": [255, 0, 0]},
             {"name": "rust", "color": [200, 120, 40]}, {"name": "void", "color": [0, 0, 255]}]  # fmt: skip
    (root / "classes.json").write_text(json.dumps(items))
    info = build_dataset(f"folder:{root}", "val").info
    assert info.class_names == ("background", "crack", "rust", "void") and info.colors[1] == (255, 0, 0)
    (root / "classes.json").write_text(json.dumps(["a", "b", "c", "d"]))
    assert build_dataset(f"folder:{root}", "val").info.class_names == ("a", "b", "c", "d")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"classes.txt": "background 0 0 0\ncrack\nrust 1 2 3\nvoid 4 5 6\n"}, "gives a colour for 3 of 4 classes"),
        ({"classes.txt": "background 0 0 0\ncrack 0 0 300\nrust 1 2 3\nvoid 4 5 6\n"}, "each 0..255"),
        ({"classes.txt": "a\nb\nc\nd\n", "classes.json": '["a", "b", "c", "d"]'}, "keep one"),
        ({"classes.json": '{"names": ["a"]}'}, "not a list"),
        ({"classes.txt": "a\na\nc\nd\n"}, "repeated class name"),
    ],
)
def test_bad_classes_files(root, files, expected):
    (root / "classes.txt").unlink()
    for name, text in files.items():
        (root / name).write_text(text)
    with pytest.raises(DataError, match="folder: ") as info:
        build_dataset(f"folder:{root}", "train")
    assert expected in str(info.value)


@pytest.mark.slow
def test_a_teacher_trains_on_the_users_own_classes(root, tmp_path, capsys):
    (root / "classes.txt").write_text(TXT)
    out = tmp_path / "T"
    rc, _, err = run_cli(capsys, "train-teacher", *FOLDER_FLAGS, "--data", f"folder:{root}", "--iters", "2",
                         "--out", out)  # fmt: skip
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"] == ["background", "crack", "rust spot", "void area"]


COLOURS = ((0, 0, 0), (255, 0, 0), (200, 120, 40), (0, 0, 255))


def test_the_classes_file_colours_travel_in_the_checkpoint_and_the_onnx_metadata(root, tmp_path):
    from torch import nn

    from bckd_pipeline.configs import DataConfig
    from bckd_pipeline.distill.checkpoint import read_checkpoint, save_checkpoint
    from bckd_pipeline.distill.stage import _meta
    from bckd_pipeline.export.onnx_export import onnx_metadata
    from bckd_pipeline.model_spec import ExportSpec
    from bckd_pipeline.predict.artifact import contract_from_props

    (root / "classes.txt").write_text(TXT)
    data = DataConfig(spec=f"folder:{root}")
    meta = _meta("tiny-student", build_dataset(data.spec, "train").info, data, "student", {})
    save_checkpoint(tmp_path / "s.pt", nn.Conv2d(3, 4, 1), meta)
    read, _ = read_checkpoint(tmp_path / "s.pt")
    assert read.class_colors == COLOURS and read == meta
    props = onnx_metadata(read, ExportSpec(input_hw=(32, 32)))
    assert json.loads(props["bckd.class_colors"]) == [list(c) for c in COLOURS]
    assert contract_from_props(props, "test").class_colors == COLOURS

    (root / "classes.txt").write_text("background\ncrack\nrust\nvoid\n")  # names alone: nothing written
    plain = _meta("tiny-student", build_dataset(data.spec, "train").info, data, "student", {})
    assert plain.class_colors is None and "bckd.class_colors" not in onnx_metadata(plain, ExportSpec(input_hw=(32, 32)))
    assert contract_from_props(onnx_metadata(plain, ExportSpec(input_hw=(32, 32))), "test").class_colors is None


def test_report_html_draws_with_the_reports_class_colours():
    import numpy as np

    from bckd_pipeline.palette import palette
    from bckd_pipeline.report.html import class_colors

    assert class_colors({"class_colors": [list(c) for c in COLOURS]}, 4).tolist() == [list(c) for c in COLOURS]
    assert np.array_equal(class_colors({"class_colors": None}, 4), palette(4))
    assert np.array_equal(class_colors({}, 3), palette(3))


@pytest.mark.slow
def test_a_run_on_the_users_classes_draws_in_their_colours(root, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from bckd_pipeline import Segmenter
    from bckd_pipeline.distill.checkpoint import read_checkpoint
    from bckd_pipeline.onnxfile import read_metadata

    (root / "classes.txt").write_text(TXT)
    out = tmp_path / "R"
    rc, _, err = run_cli(capsys, "run", *FOLDER_FLAGS, "--data", f"folder:{root}", "--iters", "2",
                         "--target", "onnxruntime-cpu-fp32", "--out", out)  # fmt: skip
    assert rc == 0, err
    assert read_checkpoint(out / "distilled/student.pt")[0].class_colors == COLOURS
    onnx = sorted(out.rglob("*.onnx"))[0]
    assert json.loads(read_metadata(onnx)["bckd.class_colors"]) == [list(c) for c in COLOURS]
    report = json.loads(next(out.rglob("report.json")).read_text())
    assert report["class_colors"] == [list(c) for c in COLOURS]
    assert "rgb(200, 120, 40)" in next(out.rglob("report.html")).read_text()
    with Segmenter.load(out) as seg:
        assert seg.palette.tolist() == [list(c) for c in COLOURS]

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    rc, _, err = run_cli(capsys, "predict", tmp_path / "a.png", "--model", out, "--out", tmp_path / "P")
    assert rc == 0, err
    label = Image.open(tmp_path / "P/labels/a.png")
    assert label.mode == "P" and label.getpalette()[: 3 * 4] == [v for c in COLOURS for v in c]
