"""Run presets: named sets of defaults for the CLI (``--preset``). Flags given explicitly win.

- ``demo``: the embedded demo dataset at 96x128, real smp models (PSPNet-R50 teacher,
  DeepLabV3+-MobileNetV2 student); a full stage-1 run in minutes on 2 CPU cores.
- ``smoke``: tiny CNNs on a small demo set at 64x64; finishes in well under a minute (tests, CI).
- ``camvid``: the CamVid benchmark protocol of docs/benchmarks.md (``--data camvid:PATH`` required).

With ``--task detection`` the same names pick :data:`DETECTION_PRESETS`: ``demo`` (the detection quick start:
an FCOS EfficientNet-Lite2 teacher and Lite0 student on the demo scenes' objects) and ``smoke`` (the tiny FCOS
pair, a few iterations). Detectors train on whole images resized to ``resize`` (no crop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import unknown_name


@dataclass(frozen=True)
class Preset:
    name: str
    data: str  # "" means --data is required
    teacher: str
    student: str
    crop: tuple[int, int] | None  # None: no random crop (detection)
    teacher_iters: int | None = None  # iterations, or epochs when None
    student_iters: int | None = None
    teacher_epochs: int | None = None
    student_epochs: int | None = None
    batch_size: int = 8
    resize: tuple[int, int] | None = None
    demo_size: tuple[int, int] = (96, 128)
    demo_count: int | None = None
    num_workers: int = 2
    bckd: dict[str, str] = field(default_factory=dict)
    mfs_images: int = 8
    calib_size: int = 100  # INT8 calibration images from the training split
    latency_runs: int = 200
    warmup_s: float = 1.0


PRESETS: dict[str, Preset] = {
    "demo": Preset(
        name="demo",
        data="demo",
        teacher="pspnet-r50",
        student="deeplabv3plus-mbv2",
        crop=(96, 128),
        teacher_iters=450,
        student_iters=300,
    ),
    "smoke": Preset(
        name="smoke",
        data="demo",
        teacher="tiny-teacher",
        student="tiny-student",
        crop=(64, 64),
        teacher_iters=30,
        student_iters=20,
        demo_size=(64, 64),
        demo_count=32,
        num_workers=0,
        bckd={"grid_stride": "4", "radius": "3"},
        mfs_images=4,
        calib_size=16,
        latency_runs=50,
        warmup_s=0.2,
    ),
    "camvid": Preset(
        name="camvid",
        data="",
        teacher="pspnet-r50",
        student="deeplabv3plus-mbv2",
        crop=(144, 192),
        teacher_epochs=80,
        student_epochs=40,
        resize=(144, 192),
        num_workers=4,
    ),
}


# The detection versions, picked by --task detection. Sizes are multiples of 32 (a detector's coarsest stride).
DETECTION_PRESETS: dict[str, Preset] = {
    "demo": Preset(
        name="demo",
        data="demo",
        teacher="fcos-lite2",
        student="fcos-lite0",
        crop=None,
        # From scratch on the demo scenes: a teacher needs a few hundred steps before it detects anything to
        # distil, and a student trained half as long leaves it a gap to close.
        teacher_iters=400,
        student_iters=200,
        resize=(96, 128),
        bckd={"radius": "3"},
    ),
    "smoke": Preset(
        name="smoke",
        data="demo",
        teacher="fcos-tiny-t",
        student="fcos-tiny-s",
        crop=None,
        teacher_iters=20,
        student_iters=10,
        resize=(64, 64),
        demo_size=(64, 64),
        demo_count=32,
        num_workers=0,
        bckd={"radius": "3"},
        mfs_images=4,
        calib_size=16,
        latency_runs=50,
        warmup_s=0.2,
    ),
}


def get_preset(name: str, task: str = "segmentation") -> Preset:
    """The preset ``name`` of ``task`` (``--preset``, ``--task``)."""
    if task == "detection":
        if name not in DETECTION_PRESETS:
            hint = "demo is the detection default; smoke is the quick check."
            raise unknown_name("--preset for --task detection", name, DETECTION_PRESETS, hint)
        return DETECTION_PRESETS[name]
    if name not in PRESETS:
        raise unknown_name("--preset", name, PRESETS, "demo is the default; smoke is the quick check.")
    return PRESETS[name]
