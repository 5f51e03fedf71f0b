"""Which backend runs a file, and how to build its Runtime: one registration per backend.

A registration names the backend (a ``targets.profiles.Backend`` value), the file suffixes it runs, and a
factory that builds a Runtime for a path from the common options (:class:`RuntimeOptions`). The built-in
backends are registered at the bottom of this module, each by one ``register`` call; their factories import the
backend's file, and so its library, only when called. Adding a backend is one file beside this one
(a ``Runtime`` subclass) and one ``register`` call here.

The registry is a plain dict with loud errors: registering a name twice raises, and an unknown name or suffix
raises a ``ConfigError`` that lists the registered ones and suggests the closest.

Shipped to the device with the agent (device/bundle.py::AGENT_MODULES): Python 3.8, no heavy import here.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping  # typing, not collections.abc: Factory is subscripted at run time on Python 3.8

from ..errors import BackendMissingError, ConfigError, did_you_mean, unknown_name
from ..targets.availability import TENSORRT_HINT
from .base import Runtime


@dataclass(frozen=True)
class FileKind:
    """What a file of one suffix is: ``kind`` names it in manifests and artifacts, ``described`` in messages."""

    kind: str  # onnx | openvino-ir | tensorrt-plan | checkpoint
    described: str  # "an ONNX model"


@dataclass(frozen=True)
class RuntimeOptions:
    """The options every factory takes; a backend uses those that mean something to it."""

    precision: str = "fp32"  # what the file holds, for the report (fp32 | fp16 | int8)
    device: str | None = None  # None: the backend's default_device
    threads: int | None = None  # None: the backend's default
    streams: int = 1  # requests in flight the runtime is compiled for (OpenVINO)
    name: str | None = None  # the ledger row; None: the file's name
    cuda_graph: bool = False  # replay the enqueue from a CUDA graph (TensorRT)


Factory = Callable[[Path, RuntimeOptions], Runtime]


@dataclass(frozen=True)
class BackendRuntime:
    """One backend's registration."""

    name: str  # a targets.profiles.Backend value
    files: Mapping[str, FileKind]  # suffix (lower case, with the dot) -> what such a file is
    factory: Factory | None  # None: the backend runs a model in memory, built by its caller
    default_device: str
    concurrent: bool = True  # runs several requests in flight (throughput mode)
    requires: tuple[str, ...] = ()  # the modules its runtime imports: see require()
    install: str = ""  # how to install them, and what to do without them

    def build(self, path: Path, options: RuntimeOptions) -> Runtime:
        if self.factory is None:
            raise ConfigError(
                f"Backend {self.name!r} runs a model in memory, not a file ({str(path)!r}). Build its Runtime "
                "from the model (runtimes/torch.py::TorchRuntime), or pass an exported artifact."
            )
        return self.factory(Path(path), options)


_BACKENDS: dict[str, BackendRuntime] = {}


def register(entry: BackendRuntime) -> BackendRuntime:
    """Add a backend. Its name must be new, and a suffix it shares must mean the same kind of file."""
    if entry.name in _BACKENDS:
        raise ValueError(
            f"Backend {entry.name!r} is already registered (runs {', '.join(_BACKENDS[entry.name].files)}). "
            f"Pick another name, or unregister({entry.name!r}) first."
        )
    for suffix, kind in entry.files.items():
        if suffix != suffix.lower() or not suffix.startswith("."):
            raise ValueError(f"Backend {entry.name!r}: suffix {suffix!r} must be lower case and start with a dot.")
        for other in _BACKENDS.values():
            if suffix in other.files and other.files[suffix].kind != kind.kind:
                raise ValueError(
                    f"Backend {entry.name!r} calls {suffix} files {kind.kind!r}, but {other.name!r} calls them "
                    f"{other.files[suffix].kind!r}. One suffix is one kind of file."
                )
    _BACKENDS[entry.name] = entry
    return entry


def unregister(name: str) -> BackendRuntime:
    return _BACKENDS.pop(get_backend(name).name)


def backend_names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def suffixes() -> tuple[str, ...]:
    """Every suffix some backend runs, in registration order."""
    return tuple(dict.fromkeys(s for entry in _BACKENDS.values() for s in entry.files))


def get_backend(name: str) -> BackendRuntime:
    entry = _BACKENDS.get(str(name))
    if entry is None:
        raise unknown_name("backend", str(name), _BACKENDS, "Each backend is registered in runtimes/registry.py.")
    return entry


def _suffix(path_or_suffix) -> str:
    """The lower-case suffix of "model.onnx", "dir/model.ONNX", or of ".onnx" itself."""
    p = Path(path_or_suffix)
    bare = p.name.startswith(".") and p.name.count(".") == 1  # the suffix alone
    return (p.name if bare else p.suffix).lower()


def backends_for(path_or_suffix) -> tuple[BackendRuntime, ...]:
    """The backends that run a file of this suffix, the default (the first registered) first."""
    text, suffix = str(path_or_suffix), _suffix(path_or_suffix)
    found = tuple(entry for entry in _BACKENDS.values() if suffix in entry.files)
    if not found:
        known = suffixes()
        raise ConfigError(
            f"No backend runs files with the suffix {suffix or 'none'!r} ({text!r}). Registered suffixes: "
            f"{', '.join(known)}.{did_you_mean(suffix, known)}"
        )
    return found


def file_kind(path_or_suffix) -> FileKind:
    """What a file of this suffix is (every backend that runs it calls it the same)."""
    suffix = _suffix(path_or_suffix)
    return backends_for(suffix)[0].files[suffix]


def require(backend: str, path: Path) -> None:
    """Raise ``BackendMissingError`` when this host lacks a module that ``backend`` needs to run ``path``.

    A Runtime imports its library only in ``activate()``; a caller that wants the missing library to be the
    first thing it reports (``predict``) asks here first.
    """
    entry = get_backend(backend)
    missing = [m for m in entry.requires if not _importable(m)]
    if missing:
        kind = entry.files.get(_suffix(path))
        described = kind.described if kind is not None else f"a {entry.name} model"
        raise BackendMissingError(
            f"{str(path)!r} is {described}, and this host lacks {' and '.join(missing)}: {entry.install}"
        )


def _importable(module: str) -> bool:
    """Whether ``import module`` can succeed, without importing it (a module set to None in sys.modules cannot)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses the name; a module without __spec__
        return False


def build_runtime(backend: str, path: Path, **options) -> Runtime:
    """The Runtime of ``backend`` for the file at ``path`` (not yet active); ``options``: :class:`RuntimeOptions`."""
    return get_backend(backend).build(Path(path), RuntimeOptions(**options))


# -- the built-in backends ----------------------------------------------------------------------------
ONNX = FileKind("onnx", "an ONNX model")
TENSORRT_PLAN = FileKind("tensorrt-plan", "a TensorRT engine")


def _onnxruntime(path: Path, o: RuntimeOptions) -> Runtime:
    from .onnxruntime import OrtRuntime

    return OrtRuntime(path, threads=o.threads, precision=o.precision, name=o.name)


def _openvino(path: Path, o: RuntimeOptions) -> Runtime:
    from .openvino import OpenVINORuntime

    return OpenVINORuntime(
        path, device=o.device or "CPU", precision=o.precision, threads=o.threads, streams=o.streams, name=o.name
    )


def _tensorrt(path: Path, o: RuntimeOptions) -> Runtime:
    from .tensorrt import TensorRTRuntime

    return TensorRTRuntime(path, precision=o.precision, name=o.name, cuda_graph=o.cuda_graph)


register(
    BackendRuntime(
        "onnxruntime",
        {".onnx": ONNX},
        _onnxruntime,
        default_device="cpu",
        requires=("onnxruntime",),
        install="pip install onnxruntime (a core dependency; reinstall bckd-pipeline).",
    )
)
register(
    BackendRuntime(
        "openvino",
        {".xml": FileKind("openvino-ir", "an OpenVINO IR"), ".onnx": ONNX},
        _openvino,
        default_device="CPU",
        requires=("openvino",),
        install='pip install "bckd-pipeline[openvino]" (openvino and nncf).',
    )
)
register(
    BackendRuntime(
        "tensorrt",
        {".plan": TENSORRT_PLAN, ".engine": TENSORRT_PLAN},
        _tensorrt,
        default_device="GPU",
        concurrent=False,  # one execution context on one CUDA stream
        requires=("tensorrt", "pycuda"),
        install=f"{TENSORRT_HINT}. Engines run only with the GPU and TensorRT version that built them: run it on "
        "that device, or pass the run's Q/DQ ONNX (deploy/model.qdq.onnx) to run the same quantized model here on "
        "ONNX Runtime.",
    )
)
# PyTorch runs a module in memory (runtimes/torch.py::TorchRuntime): a student checkpoint is rebuilt into one
# by its caller (predict/artifact.py), so no factory.
register(
    BackendRuntime(
        "torch",
        {".pt": FileKind("checkpoint", "a student checkpoint")},
        None,
        default_device="cpu",
        requires=("torch",),
        install="pip install torch.",
    )
)
