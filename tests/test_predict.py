"""Run the deployed model: ``Segmenter`` and ``bckd-pipeline predict`` on real artifacts made here.

A tiny student exported to ONNX FP32 at a NON-SQUARE input (32 x 48), quantized to INT8 Q/DQ by ONNX
Runtime, converted to an OpenVINO IR, plus its checkpoint; every one runs on an image of another,
non-square size (45 x 70) and is compared with the student itself (PyTorch on the resized image,
labels resized back as evaluation resizes masks). A second, foreign ONNX (plain torch.onnx.export,
no metadata) labels red pixels 0, blue pixels 1 and anything else (the letterbox padding) 2, so the
mapping back to the original size and the letterbox undo are checked exactly, pixel by pixel.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.deploy import NUM_CLASSES, demo_feeds
from PIL import Image

from bckd_pipeline import Segmenter
from bckd_pipeline.calibrate.onnxruntime import quantize_ort
from bckd_pipeline.calibrate.openvino import to_ir
from bckd_pipeline.cli import main
from bckd_pipeline.data.base import Normalization
from bckd_pipeline.data.demo import DemoDataset
from bckd_pipeline.data.transforms import resize_pair
from bckd_pipeline.configs import CheckpointMeta
from bckd_pipeline.distill.checkpoint import load_model, save_checkpoint
from bckd_pipeline.distill.models import build_model
from bckd_pipeline.inference import padded_logits
from bckd_pipeline.errors import ConfigError
from bckd_pipeline.export import SegExportWrapper, to_onnx
from bckd_pipeline.model_spec import ExportSpec
from bckd_pipeline.predict.image import fit, unfit
from bckd_pipeline.targets.profiles import CalibrationSpec

IN_HW = (32, 48)  # the model's input: non-square
IMG_HW = (45, 70)  # the user's image: non-square, another size and aspect ratio
CLASSES = tuple(f"c{i}" for i in range(NUM_CLASSES))


def fitted_student(path: Path, steps: int = 60):
    """tiny-student after `steps` Adam steps on 16 demo images (~2 s): label maps with several classes, so
    comparing label maps means something (a random student predicts one class everywhere)."""
    torch.manual_seed(0)
    model = build_model("tiny-student", NUM_CLASSES)
    data = DemoDataset("train", size=IN_HW, count=16)
    norm = Normalization()
    images, masks = zip(*(data.load(i) for i in range(len(data))), strict=True)
    x = torch.from_numpy(np.stack([norm(im) for im in images]).transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(np.stack([np.where(m == 255, 255, m % NUM_CLASSES) for m in masks]))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(padded_logits(model, x), y, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    meta = CheckpointMeta("tiny-student", NUM_CLASSES, CLASSES, input_hw=IN_HW, dataset="demo")
    save_checkpoint(path, model.eval(), meta)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict")
    ckpt = fitted_student(folder / "student.pt")
    model, meta = load_model(ckpt)
    fp32, _ = to_onnx(model, meta, ExportSpec(input_hw=IN_HW), folder / "model.onnx", demo_feeds(hw=IN_HW).head(2))
    dyn, _ = to_onnx(
        model, meta, ExportSpec(input_hw=IN_HW, dynamic=("batch",)), folder / "dyn.onnx", demo_feeds(hw=IN_HW).head(1)
    )
    int8, _ = quantize_ort(fp32, folder / "model.int8.onnx", demo_feeds("train", 8, IN_HW), CalibrationSpec(size=8))
    ir = to_ir(fp32, folder / "openvino/model.xml", fp16=False)
    image = DemoDataset("val", size=IMG_HW, count=2).load(1)[0]
    return SimpleNamespace(
        folder=folder, ckpt=ckpt, model=model, meta=meta, fp32=fp32, dyn=dyn, int8=int8, ir=ir, image=image
    )


def reference(built, rgb: np.ndarray) -> np.ndarray:
    """The student itself: PIL bilinear resize to the input, PyTorch, argmax, nearest neighbour back."""
    h, w = IN_HW
    resized = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR), np.float32)
    wrapper = SegExportWrapper(built.model, normalize=Normalization(built.meta.mean, built.meta.std)).eval()
    with torch.no_grad():
        logits = wrapper(torch.from_numpy(resized.transpose(2, 0, 1)[None].copy()))
    labels = logits.argmax(1)[0].numpy().astype(np.uint8)
    # nearest neighbour by pixel centres, the rule evaluation resizes masks with (PIL's NEAREST breaks exact
    # half-way ties the other way)
    return resize_pair(np.zeros((h, w, 3), np.uint8), labels, rgb.shape[:2])[1]


# -- every artifact kind, on a non-square image of another size -----------------------------------------
@pytest.mark.parametrize(
    ("kind", "backend", "precision", "min_agreement"),
    [
        ("ckpt", "torch", "fp32", 1.0),
        ("fp32", "onnxruntime", "fp32", 0.999),
        ("ir", "openvino", "fp32", 0.999),
        ("int8", "onnxruntime", "int8", 0.9),
    ],
)
def test_segmenter_runs_each_artifact_at_the_image_size(built, kind, backend, precision, min_agreement):
    with Segmenter.load(getattr(built, kind)) as seg:
        labels = seg(built.image)
        info = seg.info
        assert seg.classes == CLASSES
        # the same image as a path and as a PIL image gives the same labels
        path = built.folder / "image.png"
        Image.fromarray(built.image).save(path)
        assert np.array_equal(seg(path), labels) and np.array_equal(seg(Image.open(path)), labels)
    assert labels.shape == IMG_HW and labels.dtype == np.uint8
    assert (info.backend, info.precision, info.input_size) == (backend, precision, IN_HW)
    assert info.mean == built.meta.mean and info.std == built.meta.std and info.normalization_in_graph
    agreement = float((labels == reference(built, built.image)).mean())
    assert agreement >= min_agreement, f"{kind}: {agreement:.4f} of pixels agree with the student"
    assert len(np.unique(labels)) > 1  # a real label map, not one class everywhere


def test_nncf_int8_ir_keeps_the_contract(built):
    """NNCF's INT8 IR keeps the rt_info OpenVINO took from the ONNX's metadata_props: nothing to restate."""
    from bckd_pipeline.calibrate.openvino import quantize_ir

    xml, _ = quantize_ir(
        built.ir,
        built.folder / "openvino-int8/model.xml",
        demo_feeds("train", 8, IN_HW),
        CalibrationSpec(size=8),
        target_device="CPU",
    )
    with Segmenter.load(xml) as seg:
        assert (seg.info.precision, seg.info.contract_source, seg.classes) == ("int8", "openvino rt_info", CLASSES)
        assert (seg(built.image) == reference(built, built.image)).mean() >= 0.9


def test_onnx_runs_on_another_backend_with_target(built):
    with Segmenter.load(built.fp32, target="openvino-cpu") as seg:
        assert (seg.info.backend, seg.info.device) == ("openvino", "CPU")
        assert (seg(built.image) == reference(built, built.image)).mean() >= 0.999
    with pytest.raises(ConfigError, match="cannot run"):
        Segmenter.load(built.ir, target="onnxruntime-cpu")


# -- the mapping back, checked exactly with a model whose answer is known --------------------------------
class RedBlue(torch.nn.Module):
    """Class 0 where red wins, 1 where blue wins, 2 where neither reaches 0.1 (black: the letterbox padding
    with mean 0)."""

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


FOREIGN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "classes": ("red", "blue", "pad")}


def halves(h: int, w: int, *, vertical: bool) -> np.ndarray:
    """Red left (or top) half, blue right (or bottom) half."""
    image = np.zeros((h, w, 3), np.uint8)
    if vertical:
        image[: h // 2, :, 0], image[h // 2 :, :, 2] = 255, 255
    else:
        image[:, : w // 2, 0], image[:, w // 2 :, 2] = 255, 255
    return image


@pytest.mark.parametrize("letterbox", [False, True])
@pytest.mark.parametrize(("hw", "vertical"), [(IMG_HW, False), ((30, 100), True), ((100, 30), False)])
def test_labels_map_back_to_the_original_size(red_blue, letterbox, hw, vertical):
    image = halves(*hw, vertical=vertical)
    with Segmenter.load(red_blue, letterbox=letterbox, **FOREIGN) as seg:
        labels = seg(image)
        assert seg.info.contract_source == "onnx metadata_props" and not seg.info.normalization_in_graph
    assert labels.shape == hw
    assert 2 not in labels, "padding leaked into the label map: the letterbox was not undone"
    size = hw[0] if vertical else hw[1]
    margin = -(-size // min(IN_HW)) + 1  # one model pixel at this scale, and one for the bilinear edge
    first, second = (
        (labels[: size // 2 - margin], labels[size // 2 + margin :])
        if vertical
        else (
            labels[:, : size // 2 - margin],
            labels[:, size // 2 + margin :],
        )
    )
    assert (first == 0).all() and (second == 1).all()


def test_letterbox_places_and_undoes_exactly():
    """A 16 x 48 image in a 32 x 48 input: scale 1, 8 rows of padding above and below; undo is exact."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 48, 3), dtype=np.uint8)
    x, where = fit(image, IN_HW, letterbox=True, fill=(1, 2, 3))
    assert (where.top, where.left, where.inner) == (8, 0, (16, 48))
    assert np.array_equal(x[8:24], image) and (x[:8] == (1, 2, 3)).all() and (x[24:] == (1, 2, 3)).all()
    assert np.array_equal(unfit(x[..., 0], where), image[..., 0])
    # an output at half the input size (a model predicting at stride 2) maps back too
    labels = np.repeat(np.repeat(np.arange(4, dtype=np.uint8).reshape(2, 2), 8, 0), 12, 1)  # 16 x 24
    back = unfit(labels, fit(np.zeros((64, 96, 3), np.uint8), IN_HW, letterbox=False, fill=(0, 0, 0))[1])
    assert back.shape == (64, 96) and (back[:32, :48] == 0).all() and (back[32:, 48:] == 3).all()


# -- batches ---------------------------------------------------------------------------------------------
def test_predict_batch_matches_one_at_a_time(built):
    images = [DemoDataset("val", size=hw, count=1).load(0)[0] for hw in [(45, 70), (32, 40), (64, 33), (45, 70)]]
    with Segmenter.load(built.dyn, batch=3) as seg:
        assert (seg.info.batch, seg.info.static_batch) == (3, None)
        together = seg.predict_batch(images)
        alone = [seg(im) for im in images]
    assert all(
        np.array_equal(a, b) and a.shape == im.shape[:2] for a, b, im in zip(together, alone, images, strict=True)
    )
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        Segmenter.load(built.fp32, batch=3)


def test_bad_images_are_named(built):
    with Segmenter.load(built.fp32) as seg:
        with pytest.raises(ConfigError, match="uint8 RGB in 0..255"):
            seg(built.image.astype(np.float32) / 255)
        with pytest.raises(ConfigError, match="H x W x 3"):
            seg(built.image[..., 0])


# -- the command -----------------------------------------------------------------------------------------
def run_cli(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


@pytest.fixture
def folder(built, tmp_path):
    """A recursive folder: two images whose names differ only in the suffix, one nested, and a text file."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(built.image).save(root / "a.png")
    Image.fromarray(built.image[:, :40]).save(root / "sub" / "b.png")
    Image.fromarray(built.image[:30]).save(root / "sub" / "b.jpg", quality=95)
    (root / "notes.txt").write_text("not an image")
    return root


def test_predict_writes_labels_overlays_and_predictions(built, folder, tmp_path, capsys):
    out = tmp_path / "pred"
    rc, text = run_cli(
        capsys, "predict", folder, "--model", built.ckpt, "--out", out, "--save-overlay", "--no-progress"
    )
    assert rc == 0, text
    assert f"-> {out}/" in text and "predicted 3 images" in text and "images/s" in text
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["format"] == "bckd-pipeline/predictions-v1" and doc["model"]["backend"] == "torch"
    assert [c["name"] for c in doc["classes"]] == list(CLASSES)
    by_path = {e["path"]: e for e in doc["images"]}
    assert sorted(by_path) == ["a.png", "sub/b.jpg", "sub/b.png"]
    assert by_path["sub/b.jpg"]["labels"] == "labels/sub/b.jpg.png"  # no collision with sub/b.png
    assert by_path["a.png"]["labels"] == "labels/a.png" and by_path["a.png"]["overlay"] == "overlays/a.jpg"
    with Segmenter.load(built.ckpt) as seg:
        for name, entry in by_path.items():
            png = Image.open(out / entry["labels"])
            labels = np.asarray(png)
            assert png.mode == "P" and entry["size"] == list(labels.shape)
            assert np.array_equal(labels, seg(folder / name))  # pixel values are the class ids
            assert Image.open(out / entry["overlay"]).size == png.size
            shares = entry["classes"]
            assert set(shares) <= set(CLASSES) and sum(shares.values()) == pytest.approx(1, abs=1e-4)
            assert list(shares.values()) == sorted(shares.values(), reverse=True)
            assert entry["infer_ms"] > 0 and entry["total_ms"] >= entry["infer_ms"]
    assert doc["summary"]["images"] == 3 and doc["summary"]["images_per_s"] > 0
    # a second run into the same folder replaces it; a single image mirrors its name
    rc, text = run_cli(capsys, "predict", folder / "a.png", "--model", built.ir, "--out", out, "--letterbox")
    assert rc == 0, text
    doc = json.loads((out / "predictions.json").read_text())
    assert [e["labels"] for e in doc["images"]] == ["labels/a.png"] and not (out / "overlays").exists()
    assert doc["model"]["backend"] == "openvino" and doc["model"]["letterbox"]


def test_predict_on_a_run_folder_uses_its_manifest(built, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "deploy").mkdir(parents=True)
    for f in (built.fp32, built.int8):
        (run / "deploy" / f.name).write_bytes(f.read_bytes())
    manifest = {
        "format": "bckd-pipeline/manifest-v1",
        "target": "onnxruntime-cpu",
        "deployable": ["deploy/model.int8.onnx"],
        "artifacts": [
            {"stage": "onnx", "backend": "onnxruntime", "precision": "fp32", "path": "deploy/model.onnx"},
            {
                "stage": "onnxruntime-int8",
                "backend": "onnxruntime",
                "precision": "int8",
                "path": "deploy/model.int8.onnx",
            },
        ],
        "report_status": "complete",
        "git_sha": "abc",
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    with Segmenter.load(run) as seg:
        assert Path(seg.info.path).name == "model.int8.onnx" and seg.info.precision == "int8"
        assert seg.info.provenance["run"] == str(run) and seg.info.provenance["target"] == "onnxruntime-cpu"
    with Segmenter.load(run / "deploy" / "model.onnx") as seg:  # a file inside a run: provenance too
        assert seg.info.provenance["run"] == str(run.resolve()) and seg.info.precision == "fp32"
    rc, text = run_cli(capsys, "predict", built.folder / "image.png", "--model", run, "--out", tmp_path / "o")
    assert rc == 0, text
    assert json.loads((tmp_path / "o/predictions.json").read_text())["model"]["provenance"]["git_sha"] == "abc"


def test_foreign_onnx_takes_what_it_lacks_from_flags(red_blue, tmp_path, capsys):
    image = tmp_path / "halves.png"
    Image.fromarray(halves(*IMG_HW, vertical=False)).save(image)
    flags = ["--mean", "0,0,0", "--std", "1,1,1", "--classes", "red,blue,pad", "--no-progress"]
    rc, text = run_cli(capsys, "predict", image, "--model", red_blue, "--out", tmp_path / "o", *flags)
    assert rc == 0, text
    entry = json.loads((tmp_path / "o/predictions.json").read_text())["images"][0]
    assert set(entry["classes"]) == {"red", "blue"} and entry["size"] == list(IMG_HW)


# -- bad input: exit 2, one "error:" paragraph, no traceback -----------------------------------------------
def _bad_cases(built, red_blue, tmp: Path) -> dict:
    (tmp / "empty").mkdir()
    (tmp / "notes.txt").write_text("x")
    (tmp / "model.plan").write_bytes(b"\x00" * 64)
    (tmp / "not-a-run").mkdir()
    (tmp / "busy").mkdir()
    (tmp / "busy" / "thesis.tex").write_text("x")
    image = built.folder / "image.png"
    return {
        "missing source": (["predict", tmp / "nope.png", "--model", built.fp32], "does not exist"),
        "unsupported file type": (["predict", tmp / "notes.txt", "--model", built.fp32], "predict reads images"),
        "empty folder": (["predict", tmp / "empty", "--model", built.fp32], "holds no images (it is empty)"),
        "missing model": (["predict", image, "--model", tmp / "nope.onnx"], "does not exist"),
        "folder without manifest": (["predict", image, "--model", tmp / "not-a-run"], "without manifest.json"),
        "model of unknown type": (["predict", image, "--model", tmp / "notes.txt"], "is not a model file"),
        "artifact without metadata": (["predict", image, "--model", red_blue], "does not carry mean/std"),
        "plan without TensorRT": (["predict", image, "--model", tmp / "model.plan"], "is a TensorRT engine"),
        "static batch": (["predict", image, "--model", built.fp32, "--batch", "4"], "fixed batch of 1"),
        "classes that clash": (["predict", image, "--model", built.fp32, "--classes", "a,b,c,d"], "carries its own"),
        "out holds other files": (
            ["predict", image, "--model", built.fp32, "--out", tmp / "busy"],
            "holds other files",
        ),
        "unknown target": (["predict", image, "--model", built.fp32, "--target", "openvino-cpx"], "Did you mean"),
    }


BAD = [
    "missing source",
    "unsupported file type",
    "empty folder",
    "missing model",
    "folder without manifest",
    "model of unknown type",
    "artifact without metadata",
    "plan without TensorRT",
    "static batch",
    "classes that clash",
    "out holds other files",
    "unknown target",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_with_a_clear_message(built, red_blue, tmp_path, capsys, case):
    if case == "plan without TensorRT" and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    argv, expected = _bad_cases(built, red_blue, tmp_path)[case]
    if "--out" not in argv:
        argv = [*argv, "--out", tmp_path / "out"]
    rc, text = run_cli(capsys, *argv, "--no-progress")
    assert rc == 2, text
    assert text.startswith("error: ") and expected in text and "Traceback" not in text
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.skipif(
    importlib.util.find_spec("av") is not None or importlib.util.find_spec("cv2") is not None,
    reason="a video decoder is installed here",
)
def test_video_without_a_decoder_says_what_to_install(built, tmp_path, capsys):
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    rc, text = run_cli(capsys, "predict", tmp_path / "clip.mp4", "--model", built.fp32, "--out", tmp_path / "o")
    assert rc == 2 and "pip install av" in text and "Traceback" not in text


@pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="PyAV is not installed (pip install av)")
def test_video_frames_are_predicted(built, tmp_path, capsys):
    import av

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 60 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    rc, text = run_cli(capsys, "predict", path, "--model", built.fp32, "--out", tmp_path / "o", "--no-progress")
    assert rc == 0, text
    doc = json.loads((tmp_path / "o/predictions.json").read_text())
    assert [e["labels"] for e in doc["images"]] == [f"labels/clip/frame_{i:06d}.png" for i in range(3)]
    assert all(e["size"] == [48, 64] and e["path"] == "clip.mp4" for e in doc["images"])
