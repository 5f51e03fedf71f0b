"""report.html: self-contained, complete, honest about what is missing, and rendered by real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bckd_pipeline.report.evidence import write_qualitative
from bckd_pipeline.report.html import palette, render
from bckd_pipeline.tasks.segmentation_draw import BOUNDARY_ERROR, colorize

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _page(out: Path) -> str:
    return (out / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_report_html_is_self_contained_and_has_every_section(smoke_report):
    page = _page(smoke_report)
    # No network at all: no URL, no script, no stylesheet link; images are inline PNG data URIs.
    for banned in ("http://", "https://", "<script", "<link", "@import", "url(", 'src="//'):
        assert banned not in page, banned
    srcs = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(srcs) == 4 * 6 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for section in ("Qualitative masks", "Stage ledger", "Latency per stage", "Per-class IoU delta"):
        assert f"<h2>{section}" in page, section
    assert page.count('class="plot latency"') == 1 and page.count('class="plot classes"') == 3
    for column in ("teacher", "student alone", "distilled (kd+bckd)", "deployed"):
        assert f">{column}</th>" in page, column
    report = json.loads((smoke_report / "report.json").read_text())
    for row in report["stages"]:
        assert f"<td>{row['name']}</td>" in page
    assert "n=20</text>" in page  # the box plots are drawn from the 20 timed runs


def test_colorize_marks_wrong_pixels_near_a_boundary_in_magenta():
    truth = np.zeros((12, 12), np.int64)
    truth[:, 6:] = 1  # one vertical boundary between columns 5 and 6
    truth[0, 0] = 255
    pred = truth.copy()
    pred[5, 7] = 0  # wrong, 1 px from the boundary
    pred[5, 11] = 0  # wrong, 5 px from it
    pred[0, 0] = 1  # an ignore pixel: never scored
    colors = palette(2)
    rgb = colorize(pred, colors, 255, truth)
    assert tuple(rgb[5, 7]) == BOUNDARY_ERROR
    assert tuple(rgb[5, 11]) != BOUNDARY_ERROR and tuple(rgb[5, 11]) == tuple((colors[0] * 0.45).astype(np.uint8))
    assert tuple(rgb[0, 0]) == tuple(colors[1]) and tuple(rgb[3, 3]) == tuple(colors[0])
    assert len({tuple(c) for c in palette(32)}) == 32 and BOUNDARY_ERROR not in {tuple(c) for c in palette(32)}


@pytest.mark.slow
def test_a_deploy_run_without_teacher_says_what_is_missing(smoke_report, tmp_path):
    report = json.loads((smoke_report / "report.json").read_text())
    images = np.zeros((2, 8, 8, 3), np.uint8)
    truth = np.zeros((2, 8, 8), np.int64)
    notes = {"teacher": "not part of `bckd-pipeline deploy` (a checkpoint trained elsewhere)"}
    predictors = {"distilled": lambda i: truth[i], "deployed": lambda i: truth[i]}
    report["qualitative"] = write_qualitative(tmp_path, images, truth, ["a", "b"], predictors, notes, 255)
    assert report["qualitative"]["columns"] == ["distilled", "deployed"]
    page = render(report, tmp_path)
    assert page.count("not available: not part of `bckd-pipeline deploy`") == 2
    assert page.count("not available: not produced by this command") == 2  # student alone, 2 images
    assert len(re.findall(r'<img[^>]* src="data:image/png', page)) == 2 * 4


@pytest.mark.slow
def test_unmeasured_rows_are_said_in_words(smoke_report, tmp_path):
    report = json.loads((smoke_report / "report.json").read_text())
    for row in report["stages"][1:]:
        row["latency"], row["per_class_delta"] = None, None
    page = render(report, smoke_report)
    assert page.count("not measured here") == 3 and page.count("per-class IoU not measured") == 3


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")
def test_report_html_renders_in_headless_chromium(smoke_report, tmp_path):
    page = (smoke_report / "report.html").resolve()
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        # Without these it keeps trying to reach update and sync servers on a closed network.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), run.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2400, 1280)
    colours = {tuple(c) for c in img.reshape(-1, 3)[::7]}
    assert len(colours) > 300, len(colours)  # a blank or text-only page has a few dozen
    grid = img[200:1000, 0:1100]  # where the mask grid sits, right under the title
    assert grid.std() > 40 and len({tuple(c) for c in grid.reshape(-1, 3)[::5]}) > 200
    assert (np.all(img == BOUNDARY_ERROR, axis=-1)).sum() > 200  # boundary errors are drawn

    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<svg") == 4 and dom.count('src="data:image/png;base64,') == 24
    assert dom.count("<rect") > 10 and "onnxruntime-int8" in dom
