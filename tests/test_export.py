"""Stage 2: export wrapper, ONNX export and simplification, each checked on real inputs."""

from __future__ import annotations

import importlib
import json

import numpy as np
import onnx
import pytest
import torch
from helpers.deploy import HW, NUM_CLASSES, demo_feeds, tiny_checkpoint

from bckd_pipeline.data.base import Normalization
from bckd_pipeline.runtimes.onnxruntime import OrtRuntime
from bckd_pipeline.distill.checkpoint import load_model
from bckd_pipeline.errors import ConfigError, ExportError, StageCheckError
from bckd_pipeline.export import SegExportWrapper, load_onnx, read_metadata, simplify, to_onnx
from bckd_pipeline.model_spec import ExportSpec

simplify_module = importlib.import_module("bckd_pipeline.export.simplify")  # the package re-exports the function


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("student"))
    model, meta = load_model(ckpt)
    return model, meta


@pytest.fixture(scope="module")
def exported(student, tmp_path_factory):
    model, meta = student
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    _, report = to_onnx(model, meta, ExportSpec(input_hw=HW), path, demo_feeds().head(3))
    return path, report


def test_wrapper_bakes_normalisation_and_leaves_the_model_alone(student):
    model, meta = student
    norm = Normalization(meta.mean, meta.std)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapper = SegExportWrapper(model, normalize=norm, head="logits")
    raw = torch.rand(1, 3, *HW) * 255
    normalised = torch.from_numpy(norm(raw[0].permute(1, 2, 0).numpy())).permute(2, 0, 1)[None]
    with torch.no_grad():
        torch.testing.assert_close(wrapper(raw), model(normalised), atol=1e-4, rtol=1e-4)
        labels = SegExportWrapper(model, normalize=norm, head="argmax")(raw)
    assert labels.dtype == torch.uint8 and labels.shape == (1, *HW)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not hasattr(model, "normalize")  # nothing was patched onto the training model


def test_export_checks_against_pytorch_and_writes_metadata(exported):
    path, report = exported
    assert report.passed and report.inputs == 3 and report.max_abs_diff["logits"] < 1e-3
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17
    meta = read_metadata(path)
    assert json.loads(meta["bckd.class_names"]) == [f"c{i}" for i in range(NUM_CLASSES)]
    assert json.loads(meta["bckd.preprocessing"])["mean"] == [0.485, 0.456, 0.406]
    assert json.loads(meta["bckd.input"])["shape"] == [1, 3, *HW]
    assert json.loads(meta["bckd.output"]) == {"name": "logits", "kind": "logits"}
    assert meta["bckd.ignore_index"] == "255"


def test_argmax_head_and_dynamic_axes(student, tmp_path):
    model, meta = student
    spec = ExportSpec(input_hw=HW, head="argmax", dynamic=("batch", "height", "width"))
    path, report = to_onnx(model, meta, spec, tmp_path / "m.onnx", demo_feeds().head(2))
    assert report.passed and report.label_agreement >= 0.999
    with OrtRuntime(path) as rt:
        assert rt.input_spec()["image"].shape == (None, 3, None, None)
        out = rt.infer({"image": np.zeros((2, 3, 64, 96), np.float32)})
    assert out["labels"].dtype == np.uint8 and out["labels"].shape == (2, 64, 96)


def test_simplify_checks_numerically(exported, tmp_path):
    path, _ = exported
    sim, report, counts = simplify(path, tmp_path / "sim.onnx", demo_feeds().head(3))
    assert report.passed and counts["applied"] and counts["nodes_after"] <= counts["nodes_before"]
    assert report.max_abs_diff["logits"] < 1e-4


def test_onnxslim_is_the_alternative(exported, tmp_path):
    pytest.importorskip("onnxslim")
    _, report, counts = simplify(exported[0], tmp_path / "slim.onnx", demo_feeds().head(2), tool="onnxslim")
    assert report.passed and counts["tool"] == "onnxslim"


def _scale_first_weight(model):
    init = model.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy() * 3.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    return model


def test_a_simplifier_that_changes_outputs_fails_loudly(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(simplify_module, "_run_simplifier", lambda model, tool: _scale_first_weight(model))
    out = tmp_path / "bad.onnx"
    with pytest.raises(StageCheckError, match=r"simplify changed the model's outputs: max \|diff\| on 'logits'"):
        simplify(exported[0], out, demo_feeds().head(2), allow_unsimplified=True)  # never swallowed
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_crashing_simplifier_fails_unless_allowed(exported, tmp_path, monkeypatch):
    def crash(model, tool):
        raise RuntimeError("shape inference exploded")

    monkeypatch.setattr(simplify_module, "_run_simplifier", crash)
    with pytest.raises(StageCheckError, match="onnxsim failed .*--allow-unsimplified"):
        simplify(exported[0], tmp_path / "a.onnx", demo_feeds().head(1))
    assert not (tmp_path / "a.onnx").exists()
    path, report, counts = simplify(exported[0], tmp_path / "b.onnx", demo_feeds().head(1), allow_unsimplified=True)
    assert report is None and counts["applied"] is False and path.read_bytes() == exported[0].read_bytes()


def test_truncated_and_foreign_onnx_files(exported, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported[0].read_bytes()[:500])
    foreign = tmp_path / "notes.onnx"
    foreign.write_text("this is not a model")
    for bad in (truncated, foreign):
        with pytest.raises(ExportError, match="truncated"):
            load_onnx(bad)
        with pytest.raises(ExportError, match="truncated"):
            OrtRuntime(bad).activate()
    with pytest.raises(ExportError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")


class NoExport(torch.nn.Module):
    """A model with an op the ONNX exporter has no symbolic for."""

    def forward(self, x):
        return torch.fft.fft2(x).abs()[:, :NUM_CLASSES]


def test_a_model_that_fails_to_export_names_the_op(student, tmp_path):
    _, meta = student
    with pytest.raises(ExportError, match=r"failed at op aten::fft"):
        to_onnx(NoExport(), meta, ExportSpec(input_hw=HW), tmp_path / "m.onnx", demo_feeds().head(1))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"head": "softmax"}, "--head 'softmax' is not allowed"),
        ({"dynamic": ("depth",)}, "--dynamic depth is not allowed"),
        ({"opset": 11}, "--opset 11 is too old"),
    ],
)
def test_bad_export_specs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ExportSpec(input_hw=HW, **kwargs)


@pytest.mark.parametrize(
    ("preset", "hw"),
    [
        # DeepLabV3+-MobileNetV2 at 56x80, off the encoder's stride: the wrapper pads to it, like evaluation.
        ("deeplabv3plus-mbv2", (56, 80)),
        # PSPNet at 96x128: the pyramid's bins 3 and 6 do not divide the 12x16 map, which the ONNX exporter refuses
        # for adaptive pooling (and smp's export path, an 'area' interpolation, is the same op). The export writes
        # them as fixed slices and means on a copy, and the check against the unpatched eager model holds.
        ("pspnet-r18", (96, 128)),
    ],
)
def test_a_real_smp_model_exports_at_an_awkward_size(tmp_path, preset, hw):
    from bckd_pipeline.configs import CheckpointMeta
    from bckd_pipeline.distill.models import build_model
    from bckd_pipeline.inference import padded_logits

    torch.manual_seed(0)
    model = build_model(preset, 5).eval()
    meta = CheckpointMeta(model=preset, num_classes=5, class_names=tuple("abcde"), input_hw=hw)
    feeds = demo_feeds(n=2, hw=hw)
    path, report = to_onnx(model, meta, ExportSpec(input_hw=hw), tmp_path / "m.onnx", feeds.head(2))
    assert report.passed and report.max_abs_diff["logits"] < 1e-3
    raw = torch.from_numpy(feeds.images[0])
    normalised = (raw / 255 - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
    with OrtRuntime(path) as rt, torch.no_grad():
        out = rt.infer({"image": feeds.images[0]})["logits"]
        np.testing.assert_allclose(out, padded_logits(model, normalised).numpy(), atol=1e-3)
    assert out.shape == (1, 5, *hw)
    assert not any(type(m).__name__.startswith("Static") for m in model.modules())  # the model itself is untouched


# Sizes that do not divide the 12x16 map on at least one side, so the slices run (a dividing size is pooled by
# PyTorch itself).
@pytest.mark.parametrize("size", [3, 6, 5, (5, 7), (5, None), (None, 7)])
def test_static_adaptive_pool_has_pytorchs_bins(size):
    from bckd_pipeline.export.wrapper import StaticAdaptiveAvgPool2d

    x = torch.randn(2, 4, 12, 16)
    want = torch.nn.functional.adaptive_avg_pool2d(x, size)
    torch.testing.assert_close(StaticAdaptiveAvgPool2d(size)(x), want, atol=1e-6, rtol=1e-6)


def test_box_outputs_are_checked_relative_to_their_size_and_logits_absolutely():
    """Box coordinates in pixels differ between runtimes by a share of the value (float32 summation order): the
    detection task's relative tolerance lets 1.5e-5 of 400 px pass, while the logits keep the absolute one."""
    from bckd_pipeline.errors import StageCheckError
    from bckd_pipeline.export.check import compare, require
    from bckd_pipeline.tasks.detection import DETECTION
    from bckd_pipeline.tasks.segmentation import SEGMENTATION

    boxes = np.full((1, 6, 4), 400.0, np.float32)
    scores = np.zeros((1, 6, 2), np.float32)
    ref = lambda feed: {"scores": scores, "boxes": boxes}  # noqa: E731
    near = lambda feed: {"scores": scores + 5e-4, "boxes": boxes + 0.006}  # noqa: E731
    feeds = [{"image": np.zeros((1, 3, 8, 8), np.float32)}]
    report = compare("export", "pytorch", ref, near, feeds, atol=1e-3, rtol=DETECTION.export_rtol)
    assert report.passed and report.as_dict()["rtol"] == {"boxes": 1e-4}
    assert report.max_abs_diff["boxes"] == pytest.approx(0.006, rel=1e-2)  # float32 of 400.006
    assert SEGMENTATION.export_rtol == {}
    absolute = compare("export", "pytorch", ref, near, feeds, atol=1e-3, rtol=SEGMENTATION.export_rtol)
    assert not absolute.passed and "rtol" not in absolute.as_dict()
    far = lambda feed: {"scores": scores + 2e-3, "boxes": boxes}  # noqa: E731  the logits over, the boxes equal
    failed = compare("export", "pytorch", ref, far, feeds, atol=1e-3, rtol=DETECTION.export_rtol)
    with pytest.raises(StageCheckError, match=r"on 'scores' is 0\.002 over 1 real inputs \(allowed 0\.001\)"):
        require(failed, "fix it")
    wide = lambda feed: {"scores": scores, "boxes": boxes + 0.05}  # noqa: E731  1.25e-4 of the value: over
    with pytest.raises(StageCheckError, match=r"on 'boxes' is 0\.05 .*allowed 0\.001 \+ 0\.0001 x \|reference\|"):
        require(compare("export", "pytorch", ref, wide, feeds, atol=1e-3, rtol=DETECTION.export_rtol), "fix it")
