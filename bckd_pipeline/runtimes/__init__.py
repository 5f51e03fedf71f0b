"""Running an artifact, the same way for every backend: the Runtime lifecycle (base.py), one file per backend
(onnxruntime.py, openvino.py, tensorrt.py, torch.py) and the registry that says which backend runs a file and
builds its Runtime (registry.py).

A shared layer: deploy (parity, latency), export (checks against ONNX Runtime), calibrate, predict, the ``bench``
command and the device agent run artifacts through it. The device agent ships base.py, registry.py and the
ONNX Runtime and TensorRT files (device/bundle.py::AGENT_MODULES); they import no backend library at module
level (each does in ``_activate``), and the registry imports a backend's file only when it builds its Runtime.
"""

from .base import Feed, Runtime, StaticBatch, TensorSpec
from .registry import (
    BackendRuntime,
    FileKind,
    RuntimeOptions,
    backend_names,
    backends_for,
    build_runtime,
    file_kind,
    get_backend,
    register,
    require,
    suffixes,
    unregister,
)

__all__ = [
    "BackendRuntime",
    "Feed",
    "FileKind",
    "Runtime",
    "RuntimeOptions",
    "StaticBatch",
    "TensorSpec",
    "backend_names",
    "backends_for",
    "build_runtime",
    "file_kind",
    "get_backend",
    "register",
    "require",
    "suffixes",
    "unregister",
]
