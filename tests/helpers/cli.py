"""Running the command line in process (``cli.main([...])``) and checking what a user sees when it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bckd_pipeline.cli import main

SMOKE = ["--preset", "smoke", "--no-progress", "--train-device", "cpu"]  # CPU even where CUDA exists: repeatable
# `deploy` of a user's model (not a checkpoint of this pipeline) on the demo scenes: refused unless asked for.
OWN = [*SMOKE, "--allow-demo-data"]


def run_cli(capsys, *argv: str | Path) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def make_folder_dataset(
    root: Path,
    *,
    classes: int = 3,
    size: tuple[int, int] = (32, 32),
    counts: dict[str, int] | None = None,
    train_label: int | None = None,
    train_mask_size: tuple[int, int] | None = None,
) -> Path:
    """A ``folder:`` dataset: images/{split}/*.png, masks/{split}/*.png, classes.txt.

    ``train_label`` writes that value into one pixel of every train mask; ``train_mask_size``
    gives every train mask another size than its image.
    """
    rng = np.random.default_rng(0)
    for split, n in (counts or {"train": 4, "val": 2}).items():
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            mask_size = train_mask_size if split == "train" and train_mask_size else size
            mask = np.zeros(mask_size, np.uint8)
            mask[:, mask_size[1] // 2 :] = 1
            mask[:4, :4] = classes - 1
            if split == "train" and train_label is not None:
                mask[-1, -1] = train_label
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    (root / "classes.txt").write_text("".join(f"class{k}\n" for k in range(classes)))
    return root


def assert_clean_error(rc: int, err: str, out_dir: Path | None, *, code: int = 2) -> None:
    """Exit code, one paragraph starting with 'error:', no traceback, nothing written. The stage lines of a run
    (progress.py: "stage export: started") are not part of the error: they are set aside first."""
    err = "".join(line for line in err.splitlines(keepends=True) if not line.startswith("stage "))
    assert rc == code, err
    assert err.startswith("error: "), err
    assert "Traceback" not in err and 'File "' not in err, err
    assert err.strip().count("\n") == 0, err  # one paragraph
    if out_dir is not None and out_dir.exists():
        written = sorted(p.name for p in out_dir.rglob("*") if p.suffix in (".json", ".pt") or p.name.endswith(".tmp"))
        assert written == [], written


FOLDER_FLAGS = [*SMOKE, "--crop", "32,32", "--batch-size", "2"]  # fit the 32x32 fixture datasets

# One real `run --preset smoke` on onnxruntime-cpu, 20 timed runs per stage (conftest.smoke_report).
GATE_RUN_FLAGS = [
    "--preset",
    "smoke",
    "--no-progress",
    "--train-device",
    "cpu",
    "--latency-runs",
    "20",
    "--no-throughput",
]
