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
