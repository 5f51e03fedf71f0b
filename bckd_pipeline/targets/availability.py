"""Can this host build a target's artifacts, and can it measure them on the target's device?

Building needs the backend's Python package; measuring needs the device as well. A target whose
device is absent (an NPU on a server, a Jetson from a workstation) still gets its artifacts, and
the report says that on-device measurement is pending.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .profiles import Backend, TargetProfile

EXTRAS = {
    Backend.ONNXRUNTIME: ("onnxruntime", "pip install onnxruntime (a core dependency; reinstall bckd-pipeline)"),
    Backend.OPENVINO: ("openvino", 'pip install "bckd-pipeline[openvino]" (openvino and nncf)'),
    # The portable TensorRT artifacts (the Q/DQ ONNX, the build script) need only ONNX Runtime.
    Backend.TENSORRT: ("onnxruntime", "pip install onnxruntime (a core dependency; reinstall bckd-pipeline)"),
}
TENSORRT_HINT = (
    "TensorRT comes with JetPack on a Jetson (apt install python3-libnvinfer), or `pip install tensorrt` "
    "next to an NVIDIA GPU; the runtime also needs `pip install pycuda`"
)


@dataclass(frozen=True)
class Availability:
    can_build: bool
    can_measure: bool
    reason: str  # why not, in words; "" when both are possible


def module_present(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@lru_cache(maxsize=None)  # functools.cache is 3.9+: this module ships to Python 3.8 devices
def openvino_devices() -> tuple[str, ...]:
    import openvino as ov

    return tuple(ov.Core().available_devices)


def check_availability(profile: TargetProfile) -> Availability:
    module, install = EXTRAS[profile.backend]
    if not module_present(module):
        return Availability(False, False, f"{module} is not installed: {install}")
    if profile.backend is Backend.OPENVINO:
        if profile.calibration is not None and not module_present("nncf"):
            return Availability(False, False, f"nncf is not installed: {install}")
        devices = openvino_devices()
        if not any(d == profile.device or d.startswith(profile.device + ".") for d in devices):
            return Availability(
                True,
                False,
                f"OpenVINO device {profile.device} is not on this host (it has {', '.join(devices) or 'none'}); "
                "artifacts are built here, on-device parity and latency are pending",
            )
    if profile.backend is Backend.TENSORRT:
        return _tensorrt_here(profile)
    return Availability(True, True, "")


def is_jetson_host() -> bool:
    return Path("/etc/nv_tegra_release").is_file()


def _tensorrt_here(profile: TargetProfile) -> Availability:
    """Whether the engine can be built and measured on this host (else: on the device, or pending)."""
    missing = [m for m in ("tensorrt", "pycuda") if not module_present(m)]
    if missing:
        return Availability(
            True,
            False,
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not importable on this host "
            f"({TENSORRT_HINT})",
        )
    if profile.tensorrt.jetson and not is_jetson_host():
        return Availability(
            True,
            False,
            f"this host is not a Jetson, and a TensorRT engine only runs on the GPU and TensorRT version that built "
            f"it: the engine for {profile.device} is built on the module",
        )
    return Availability(True, True, "")


ALL_LOCAL = "all-local"


def expand_targets(text: str) -> list[str]:
    """``--target a,b,c`` (or ``all-local``: every target this host can build and measure) -> target names,
    each checked to exist, in the order given."""
    from ..errors import ConfigError
    from .profiles import TARGETS, get_target

    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise ConfigError(f"--target {text!r} names no target. Give one or more, comma-separated, or {ALL_LOCAL}.")
    if ALL_LOCAL in names:
        if names != [ALL_LOCAL]:
            raise ConfigError(f"--target {ALL_LOCAL} already names every local target; give it alone.")
        names = [n for n, p in TARGETS.items() if check_availability(p).can_build and check_availability(p).can_measure]
        if not names:
            raise ConfigError(
                f"--target {ALL_LOCAL}: this host can build and measure no target (`bckd-pipeline doctor`)."
            )
        return names
    for n in names:
        get_target(n)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--target names {', '.join(twice)} twice. Name each target once.")
    return names
