"""Can this host build a target's artifacts, and can it measure them on the target's device?

Building needs the backend's Python package; measuring needs the device as well. A target whose
device is absent (an NPU on a server, a Jetson from a workstation) still gets its artifacts, and
the report says that on-device measurement is pending.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache

from .profiles import Backend, TargetProfile

EXTRAS = {
    Backend.ONNXRUNTIME: ("onnxruntime", "pip install onnxruntime (a core dependency; reinstall bckd-pipeline)"),
    Backend.OPENVINO: ("openvino", 'pip install "bckd-pipeline[openvino]" (openvino and nncf)'),
    Backend.TENSORRT: ("tensorrt", "TensorRT comes with JetPack on a Jetson, or `pip install tensorrt` next to a GPU"),
}


@dataclass(frozen=True)
class Availability:
    can_build: bool
    can_measure: bool
    reason: str  # why not, in words; "" when both are possible


def module_present(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@cache
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
    return Availability(True, True, "")
