"""The images users really have: a bad file in a folder, an image too large to decode, a phone photo with an
EXIF rotation, 16-bit grey, CMYK and transparent images.

The model is a foreign ONNX that labels red pixels 0 and blue pixels 1 (2 where neither reaches 0.1), so
which way up an image was read shows in its label map.
"""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bckd_pipeline.cli import main
from bckd_pipeline.data.base import DatasetInfo, FileSegDataset
from bckd_pipeline.errors import DataError
from bckd_pipeline.imagefile import decode_image

IN_HW = (32, 48)
FLAGS = ["--mean", "0,0,0", "--std", "1,1,1", "--classes", "red,blue,none", "--no-progress"]


class RedBlue(torch.nn.Module):
    def forward(self, x):
        return torch.stack([x[:, 0], x[:, 2], torch.full_like(x[:, 0], 0.1)], 1)


@pytest.fixture(scope="module")
def red_blue(tmp_path_factory):
    path = tmp_path_factory.mktemp("foreign") / "redblue.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            RedBlue(), (torch.zeros(1, 3, *IN_HW),), str(path), input_names=["x"], output_names=["y"], dynamo=False
        )
    return path


def halves(h: int, w: int) -> np.ndarray:
    """Red left half, blue right half."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2, 0], image[:, w // 2 :, 2] = 255, 255
    return image


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB pixels and holds none: only a decoder that trusts the
    header would try to allocate them."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture
def mixed(tmp_path) -> Path:
    """A folder: a good image, a truncated JPEG, a text file named .jpg, a PNG declaring 100000 x 100000."""
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(halves(45, 70)).save(root / "a_good.png")
    Image.fromarray(halves(45, 70)).save(root / "b_truncated.jpg", quality=95)
    data = (root / "b_truncated.jpg").read_bytes()
    (root / "b_truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "c_not_an_image.jpg").write_text("this is a text file")
    (root / "d_huge.png").write_bytes(png_header(100_000, 100_000))
    Image.fromarray(halves(30, 40)).save(root / "e_good.png")
    return root


BAD = {"b_truncated.jpg": "truncated", "c_not_an_image.jpg": "not an image", "d_huge.png": "100000x100000"}


def test_bad_files_in_a_folder_are_skipped_listed_and_exit_4(red_blue, mixed, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "predict", mixed, "--model", red_blue, "--out", out, *FLAGS)
    assert rc == 4, err
    assert "Traceback" not in err and "predicted 2 images" in err and "3 skipped" in err
    for name in BAD:
        assert f"skipped {str(mixed / name)!r}" in err  # a warning per file on stderr
    doc = json.loads((out / "predictions.json").read_text())
    assert [e["path"] for e in doc["images"]] == ["a_good.png", "e_good.png"]
    skipped = {s["path"]: s["reason"] for s in doc["skipped"]}
    assert sorted(skipped) == sorted(BAD)
    for name, words in BAD.items():
        assert words in skipped[name], skipped[name]
    assert doc["summary"]["images"] == 2 and doc["summary"]["skipped"] == 3 and doc["summary"]["complete"]
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a_good.png", "e_good.png"]


def test_on_error_stop_ends_at_the_first_bad_file_and_a_rerun_is_accepted(red_blue, mixed, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "predict", mixed, "--model", red_blue, "--out", out, "--on-error", "stop", *FLAGS)
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err
    assert str(mixed / "b_truncated.jpg") in err and "--on-error skip" in err
    doc = json.loads((out / "predictions.json").read_text())  # what was done, written before stopping
    assert [e["path"] for e in doc["images"]] == ["a_good.png"] and not doc["summary"]["complete"]
    assert doc["summary"]["stopped_at"] == "b_truncated.jpg"
    assert [p.name for p in (out / "labels").iterdir()] == ["a_good.png"]
    rc, _, err = run_cli(capsys, "predict", mixed, "--model", red_blue, "--out", out, *FLAGS)
    assert rc == 4, err
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == 2


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(red_blue, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(halves(45, 70)).save(image)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "predict", image, "--model", red_blue, "--out", out, "--max-pixels", "1000", *FLAGS)
    assert rc == 4 and "70x45" in err and "--max-pixels" in err, err
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["images"] == [] and doc["skipped"][0]["path"] == "photo.png"
    rc, _, err = run_cli(capsys, "predict", image, "--model", red_blue, "--out", out, "--max-pixels", "4000", *FLAGS)
    assert rc == 0, err
    with pytest.raises(DataError, match="100000x100000"):
        decode_image(_write(tmp_path / "huge.png", png_header(100_000, 100_000)))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def exif_photo(path: Path, stored: np.ndarray, orientation: int) -> Path:
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_is_applied_and_the_label_map_is_displayed_size(red_blue, tmp_path, capsys):
    """Stored 200 wide x 100 high, red left and blue right; orientation 6 displays it rotated 90 degrees
    clockwise: 100 wide x 200 high, red on top."""
    photo = exif_photo(tmp_path / "phone.jpg", halves(100, 200), 6)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "predict", photo, "--model", red_blue, "--out", out, *FLAGS)
    assert rc == 0, err
    entry = json.loads((out / "predictions.json").read_text())["images"][0]
    assert entry["size"] == [200, 100] and entry["exif_orientation"] == 6
    labels = np.asarray(Image.open(out / entry["labels"]))
    assert labels.shape == (200, 100)
    assert (labels[:90] == 0).all() and (labels[110:] == 1).all()


def test_decode_converts_16_bit_cmyk_and_transparency(tmp_path):
    grey16 = np.array([[0, 257 * 100, 65535, 32896]], np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    rgb = decode_image(tmp_path / "grey16.png").rgb
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 100, 255, 128] and (rgb == rgb[..., :1]).all()

    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    decoded = decode_image(tmp_path / "cmyk.jpg")
    assert decoded.rgb.shape == (6, 8, 3) and decoded.mode == "CMYK"
    assert np.abs(decoded.rgb.astype(int) - (255, 0, 0)).max() <= 3

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = (10, 20, 30), (0, 255)  # alpha dropped, colour kept
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert (decode_image(tmp_path / "rgba.png").rgb == (10, 20, 30)).all()
    p = Image.new("P", (3, 1))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putdata([0, 1, 0])
    p.info["transparency"] = 1
    p.save(tmp_path / "p.png", transparency=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL warning about palette transparency
        assert decode_image(tmp_path / "p.png").rgb[0].tolist() == [[255, 0, 0], [0, 0, 255], [255, 0, 0]]


def test_a_dataset_image_with_exif_rotation_is_read_as_displayed(tmp_path):
    """Training data: the mask was drawn on the displayed image, so the image is turned to match it."""
    photo = exif_photo(tmp_path / "img.jpg", halves(10, 20), 6)
    mask = np.zeros((20, 10), np.uint8)
    mask[10:] = 1
    Image.fromarray(mask).save(tmp_path / "mask.png")
    ds = FileSegDataset(
        DatasetInfo("folder", str(tmp_path), 2, ("red", "blue")), "train", [(photo, tmp_path / "mask.png")]
    )
    image, labels = ds.load(0)
    assert image.shape == (20, 10, 3) and labels.shape == (20, 10)
    assert image[2, 5, 0] > 200 and image[17, 5, 2] > 200  # red on top, as displayed


def test_the_parser_names_the_decoders_pixel_limit():
    from bckd_pipeline.cli import parser
    from bckd_pipeline.imagefile import DEFAULT_MAX_PIXELS

    assert parser.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS
