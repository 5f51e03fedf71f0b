"""benchmarks/bckd_grid.py: studies of one size pair per seed across folders, and refuse what cannot pair."""

import json
from pathlib import Path

import pytest
from helpers.scripts import load_script


@pytest.fixture(scope="module")
def grid():
    return load_script("bckd_grid")


def study(rows: dict[str, list[float]], *, size="96,128", teacher="aa", bckd_args="", status="ok", exit_code=0):
    """A record_command file around a finished study: ``rows`` maps a row to its mIoU per seed 0, 1, ..."""
    jobs = [
        {
            "row": row,
            "seed": seed,
            "kind": "row",
            "status": status,
            "miou": v,
            "boundary_f": 50.0 + v / 10,
            "train_seconds": 10.0,
        }
        for row, values in rows.items()
        for seed, v in enumerate(values)
    ]
    seeds = sorted({j["seed"] for j in jobs})
    settings = {
        "data": "camvid:x",
        "size": size,
        "epochs": 10,
        "iters": None,
        "seed_list": seeds,
        "preset": "camvid",
        "student_model": None,
        "pretrained_student": "none",
        "bckd_args": bckd_args,
        "row_list": list(rows),
    }
    results = {
        "settings": settings,
        "settings_line": "line",
        "teacher": {"sha256": teacher, "miou": 44.0},
        "jobs": jobs,
        "seconds": 100.0,
        "environment": {"cpu": "X"},
    }
    return {"command": "python benchmarks/bckd_study.py", "exit_code": exit_code, "git_commit": "c", "results": results}


def write(tmp_path: Path, name: str, record: dict) -> Path:
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(record))
    return p


def test_rows_pair_per_seed_across_a_size_s_studies(grid, tmp_path):
    base = write(tmp_path, "a", study({"kd+lc": [30.0, 31.0, 29.0, 30.0], "kd+bckd": [29.0, 30.5, 28.0, 29.5]}))
    pixel = write(tmp_path, "b", study({"kd+bckd": [31.0, 31.0, 30.0, 30.0]}, bckd_args="--bckd boundary_repr=pixel"))
    out = tmp_path / "grid.json"
    assert grid.main(["--study", f"96x128={base}", "--study", f"96x128:pixel={pixel}", "--json", str(out)]) == 0
    d = json.loads(out.read_text())["sizes"]["96x128"]
    assert d["grid"] == "12x16"
    assert set(d["rows"]) == {"kd+lc", "kd+bckd", "kd+bckd[pixel]"}
    # kd+bckd - kd+lc per seed: -1, -0.5, -1, -0.5
    assert d["paired"]["kd+bckd - kd+lc"]["miou"]["mean"] == pytest.approx(-0.75)
    assert d["paired"]["kd+bckd[pixel] - kd+lc"]["miou"]["mean"] == pytest.approx(0.5)
    assert d["rows"]["kd+lc"]["miou"]["mean"] == pytest.approx(30.0)
    assert "kd+lc - kd+bckd" not in d["paired"]


def test_studies_with_different_teachers_are_refused(grid, tmp_path, capsys):
    a = write(tmp_path, "a", study({"kd+lc": [30.0, 31.0]}))
    b = write(tmp_path, "b", study({"kd+bckd": [30.0, 31.0]}, teacher="bb"))
    assert grid.main(["--study", f"96x128={a}", "--study", f"96x128:x={b}", "--json", str(tmp_path / "o.json")]) == 2
    assert "another teacher" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_a_study_at_another_size_or_unfinished_is_refused(grid, tmp_path, capsys):
    a = write(tmp_path, "a", study({"kd+lc": [30.0, 31.0]}, size="192,256"))
    assert grid.main(["--study", f"96x128={a}", "--json", str(tmp_path / "o.json")]) == 2
    assert "ran at 192,256" in capsys.readouterr().err
    b = write(tmp_path, "b", study({"kd+lc": [30.0, 31.0]}, status="failed"))
    assert grid.main(["--study", f"96x128={b}", "--json", str(tmp_path / "o.json")]) == 2
    assert "runs not ok" in capsys.readouterr().err


def test_the_same_row_twice_without_a_tag_is_refused(grid, tmp_path, capsys):
    a = write(tmp_path, "a", study({"kd+bckd": [30.0, 31.0]}))
    assert grid.main(["--study", f"96x128={a}", "--study", f"96x128={a}", "--json", str(tmp_path / "o.json")]) == 2
    assert "appears twice" in capsys.readouterr().err


def test_a_malformed_study_argument_says_the_form(grid, tmp_path, capsys):
    assert grid.main(["--study", "96=oops.json", "--json", str(tmp_path / "o.json")]) == 2
    assert "SIZE[:TAG]=RECORD_JSON" in capsys.readouterr().err


def test_a_teacher_command_is_kept_with_its_size(grid, tmp_path, capsys):
    a = write(tmp_path, "a", study({"kd+lc": [30.0, 31.0]}))
    out = tmp_path / "o.json"
    cmd = "bckd-pipeline train-teacher --out t --epochs 40"
    assert grid.main(["--study", f"96x128={a}", "--teacher-command", f"96x128={cmd}", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["sizes"]["96x128"]["teacher"]["command"] == cmd
    assert grid.main(["--study", f"96x128={a}", "--teacher-command", f"1x2={cmd}", "--json", str(out)]) == 2
    assert "SIZE=COMMAND" in capsys.readouterr().err


def test_a_size_s_seeds_may_be_split_over_studies(grid, tmp_path):
    first = study({"kd+lc": [30.0, 31.0, 29.0], "kd+bckd": [29.0, 30.5, 28.0]})
    last = study({"kd+lc": [30.0], "kd+bckd": [29.5]})
    for job in last["results"]["jobs"]:
        job["seed"] = 3
    last["results"]["settings"]["seed_list"] = [3]
    a, b = write(tmp_path, "a", first), write(tmp_path, "b", last)
    out = tmp_path / "o.json"
    assert grid.main(["--study", f"96x128={a}", "--study", f"96x128={b}", "--json", str(out)]) == 0
    p = json.loads(out.read_text())["sizes"]["96x128"]["paired"]["kd+bckd - kd+lc"]["miou"]
    assert p["n"] == 4 and p["seeds"] == [0, 1, 2, 3]
    assert p["mean"] == pytest.approx(-0.75)
