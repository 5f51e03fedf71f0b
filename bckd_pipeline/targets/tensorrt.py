"""The TensorRT engine build recipe: what the builder sets, per TensorRT version, and the build itself.

INT8 here always means *explicit* quantization: the ONNX carries Q/DQ nodes and TensorRT reads the
scales from them. Implicit INT8 calibration (``IInt8Calibrator``) is never used: TensorRT 10.1
deprecated the implicit-quantization and calibrator APIs and 11.0 removed them.

Version rules, with where each comes from (NVIDIA documentation, read for this module):

* TensorRT 8.5 is the oldest supported: the name-based I/O API the runtime uses (``num_io_tensors``,
  ``get_tensor_name``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) arrived in
  8.5 (TensorRT 8.5 release notes, "Deprecated API": the binding-index API deprecated in favour of the
  name-based one). JetPack 5.0.2 ships 8.4.1 and is refused; JetPack 5.1-5.1.x ship 8.5.2.
* TensorRT 8.x (JetPack 5, 6.0): networks are created with ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``
  (8.x Python API: "Creating a network without this flag has been deprecated"); precision comes from
  builder flags (weakly typed).
* TensorRT 10.x, every minor: ``EXPLICIT_BATCH`` is "[DEPRECATED] Ignored because networks are always
  explicit batch in TensorRT 10.0" (10.x Python API, Builder page), so it is not set. The build stays
  **weakly typed through 10.x**: ``BuilderFlag.INT8`` (+ ``FP16`` for the layers without Q/DQ).
  10.12 deprecated weak typing ("Weak typing APIs deprecated ... TensorRT will be using strong-typing
  exclusively in the future", 10.12.0 release notes) but kept the flags; a strongly typed build
  would keep every layer without Q/DQ in the ONNX's FP32, so ``precision=fp16`` (and the FP16
  fallback of an INT8 build) would silently become FP32, and an x86 host on 10.12+ would build
  another engine than a Jetson on 10.3 from the same ONNX.
* TensorRT 11.x: "removes all weak typing APIs" - ``BuilderFlag.FP16/INT8/...`` are gone (11.x
  migration guide, "Removed Python APIs"); strong typing is always on. An INT8 build is then INT8
  where the ONNX has Q/DQ and the ONNX's float type elsewhere: ``builder_settings`` says so
  (``unquantized_layers``), and ``precision=fp16`` is refused unless the parsed network carries FP16
  tensors (``build_engine`` checks), so no engine is labelled with a precision it was not built in.
  trtexec 11 removed ``--fp16/--int8/--best`` (11.x trtexec migration page).
* DLA: ``default_device_type = DLA``, ``DLA_core``, ``GPU_FALLBACK``; where the layers actually run
  is read back (``IBuilderConfig.can_run_on_DLA`` per network layer, the engine inspector's
  per-layer JSON after the build, ``create_engine_inspector`` from 8.2, ``ProfilingVerbosity.DETAILED``)
  and reported as the share of layers and of FLOPs on the DLA. TensorRT 11 builds for DLA on AGX
  Orin with a recent JetPack (11.x release notes; docs/decisions.md says how sure that is), so DLA is
  not refused there: a module without that DLA core fails at ``builder.num_DLA_cores``.
* Timing cache: ``IBuilderConfig.set_timing_cache(cache, ignore_mismatch)`` returns False when the
  cache was made by another GPU or TensorRT version (TensorRT Python API, IBuilderConfig). Such a
  cache is not used, is left as it was on disk, and the build's settings say so.
* trtexec ``--workspace=N`` (MiB, 8.x) became ``--memPoolSize=workspace:N`` with the same N (8.x->10.x
  trtexec migration page: ``--workspace=1024`` -> ``--memPoolSize=workspace:1024``); a bare number is
  MiB. ``--builderOptimizationLevel`` and ``IBuilderConfig.builder_optimization_level`` are from 8.6.

This module is part of the device-side agent: it imports only the standard library, numpy-free
project pieces (``bckd_pipeline.errors``) and, lazily inside ``build_engine``, ``tensorrt``. It runs
on Python 3.8 (JetPack 5's system Python): no runtime use of 3.9+ syntax or calls
(tests/test_tensorrt.py::test_agent_modules_run_on_python_3_8 checks every shipped file).

One module over 400 lines on purpose: the version rules above and the code that applies them (the
builder settings, the trtexec command, the build, where the layers ran) are one idea, read against
each other.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Tuple

from ..errors import BackendMissingError, ConfigError, ExportError, StageCheckError
from ..fileio import atomic_write

PRECISIONS = ("int8", "fp16", "fp32")
OPTIMIZATION_LEVELS = range(0, 6)  # IBuilderConfig.builder_optimization_level: 0..5, default 3
MIN_VERSION = (8, 5, 0)  # the name-based I/O API (execute_async_v3, set_tensor_address) is from 8.5
STRONGLY_TYPED_FROM = (11, 0, 0)  # 11.0 removed the weak-typing flags; 10.x stays weakly typed here
OPT_LEVEL_FROM = (8, 6, 0)
TRTEXEC_SEARCH = "/usr/src/tensorrt/bin/trtexec"  # where JetPack installs trtexec (not on PATH)

Version = Tuple[int, int, int]  # typing.Tuple: the agent runs on Python 3.8
# A DLA build whose FLOPs run mostly on the GPU is warned about; one with no layer on the DLA is refused.
MIN_DLA_FLOP_SHARE = 0.5


@dataclass(frozen=True)
class EngineRecipe:
    """How to turn one ONNX file into a TensorRT plan.

    ``precision`` "int8" means the ONNX carries Q/DQ nodes (explicit quantization); "fp16" on a
    strongly typed build means the ONNX carries FP16 tensors. ``input_shape`` is the one shape the
    engine is built for: for an ONNX with dynamic dimensions it becomes an optimisation profile with
    min = opt = max; for a static ONNX it must equal the ONNX's shape (checked at build time).
    ``fp16_fallback`` lets weakly typed INT8 builds run layers that carry no Q/DQ in FP16.
    """

    precision: str
    workspace_mib: int = 1024
    dla_core: int | None = None
    timing_cache: str | None = None
    builder_optimization_level: int | None = None
    input_name: str = "image"
    input_shape: tuple[int, ...] | None = None
    fp16_fallback: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"Engine precision {self.precision!r} is not allowed. Allowed: {', '.join(PRECISIONS)}. "
                "INT8 needs an ONNX with Q/DQ nodes (explicit quantization)."
            )
        if isinstance(self.workspace_mib, bool) or not isinstance(self.workspace_mib, int) or self.workspace_mib <= 0:
            raise ConfigError(
                f"workspace_mib must be a positive whole number of MiB, got {self.workspace_mib!r}. "
                "Use e.g. 1024 (1 GiB); Jetson Orin Nano builds fit in 512-2048."
            )
        if self.dla_core is not None:
            if isinstance(self.dla_core, bool) or not isinstance(self.dla_core, int) or self.dla_core < 0:
                raise ConfigError(f"dla_core must be None or a DLA index >= 0, got {self.dla_core!r}.")
            if self.precision == "fp32":
                raise ConfigError(
                    f"DLA core {self.dla_core} was asked for with precision 'fp32'; DLA runs only 'int8' or "
                    "'fp16'. Choose precision int8 or fp16, or leave dla_core unset to build for the GPU."
                )
        level = self.builder_optimization_level
        if level is not None and (type(level) is not int or level not in OPTIMIZATION_LEVELS):
            raise ConfigError(
                f"builder_optimization_level must be None or 0..5, got {level!r}. "
                "Leave it unset for TensorRT's default (3)."
            )
        if not self.input_name:
            raise ConfigError("input_name is empty. Give the ONNX input's name, e.g. 'image'.")
        if self.input_shape is not None:
            shape = tuple(self.input_shape)
            if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
                raise ConfigError(
                    f"input_shape must be a tuple of positive ints like (1, 3, 512, 512), got {self.input_shape!r}."
                )
            object.__setattr__(self, "input_shape", shape)
        if self.timing_cache is not None and not str(self.timing_cache):
            raise ConfigError("timing_cache is an empty path. Give a file path, or None for no cache.")


# -- versions ------------------------------------------------------------------------------------
def parse_trt_version(text: str) -> Version:
    """'10.3.0.30' -> (10, 3, 0); '8.6.2' -> (8, 6, 2); '10.12' -> (10, 12, 0)."""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if not match:
        raise ConfigError(
            f"Cannot read a TensorRT version from {text!r}. Give it as MAJOR.MINOR[.PATCH], e.g. '10.3.0'."
        )
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def _check_supported(version: Version) -> None:
    if version < MIN_VERSION or version[0] == 9:
        shown = ".".join(map(str, version))
        raise ConfigError(
            f"TensorRT {shown} is not supported by this recipe. Supported: 8.5-8.6 (JetPack 5.1.x, JetPack 6.0), "
            "10.x (JetPack 6.1/6.2: 10.3) and 11.x. JetPack 5.0.2 ships TensorRT 8.4, which lacks the name-based "
            "I/O API (execute_async_v3): upgrade to JetPack 5.1 or later, or build on a host with a supported TensorRT."
        )


def is_strongly_typed_default(version: Version) -> bool:
    """True from TensorRT 11 on, where the weak-typing flags are gone; 10.x is built weakly typed."""
    return tuple(version) >= STRONGLY_TYPED_FROM


def _version_text(version: Version) -> str:
    return ".".join(str(v) for v in version)


# -- settings ------------------------------------------------------------------------------------
def builder_settings(recipe: EngineRecipe, version: Version) -> dict:
    """Everything the build sets, as plain JSON-able values (for tests and manifest.json)."""
    version = tuple(version)
    _check_supported(version)
    strong = is_strongly_typed_default(version)
    major = version[0]
    if recipe.builder_optimization_level is not None and version < OPT_LEVEL_FROM:
        raise ConfigError(
            f"builder_optimization_level needs TensorRT >= 8.6, this is {_version_text(version)}. Leave it unset."
        )

    # 8.x: EXPLICIT_BATCH; 10.x: explicit batch is implicit and the flag ignored; 11+: strongly typed
    # always, STRONGLY_TYPED "retained for API compatibility but ignored" (11.0 Python API, Builder).
    network_flags = ["EXPLICIT_BATCH"] if major == 8 else []

    builder_flags = []  # type: List[str]
    if not strong:
        if recipe.precision == "int8":
            builder_flags.append("INT8")
            if recipe.fp16_fallback:
                builder_flags.append("FP16")
        elif recipe.precision == "fp16":
            builder_flags.append("FP16")
    on_dla = recipe.dla_core is not None
    if on_dla:
        builder_flags.append("GPU_FALLBACK")

    if strong:
        typing = "strong"
        precision_source = "the ONNX: Q/DQ nodes for INT8, FP16 tensors for FP16; other layers keep the ONNX's types"
        unquantized = "the ONNX's float type (FP32 for an FP32 export): TensorRT 11 has no FP16 flag"
        fp16_fallback_applied = False
    else:
        typing = "weak"
        precision_source = {
            "int8": "Q/DQ nodes in the ONNX (explicit quantization), builder flag INT8"
            + (" + FP16 for layers without Q/DQ" if recipe.fp16_fallback else ""),
            "fp16": "builder flag FP16",
            "fp32": "no precision flag (FP32, TF32 where the GPU has it)",
        }[recipe.precision]
        fp16_fallback_applied = recipe.precision == "int8" and recipe.fp16_fallback
        unquantized = {"int8": "fp16 or fp32, TensorRT's choice" if recipe.fp16_fallback else "fp32"}.get(
            recipe.precision, recipe.precision
        )

    profile = None
    if recipe.input_shape is not None:
        shape = list(recipe.input_shape)
        profile = {recipe.input_name: {"min": shape, "opt": shape, "max": shape}}

    return {
        "tensorrt_version": _version_text(version),
        "precision": recipe.precision,
        "typing": typing,
        "precision_source": precision_source,
        "unquantized_layers": unquantized,
        "fp16_fallback_applied": fp16_fallback_applied,
        "network_flags": network_flags,
        "builder_flags": builder_flags,
        "memory_pool_limits": {"WORKSPACE": recipe.workspace_mib << 20},
        "default_device_type": "DLA" if on_dla else "GPU",
        "dla_core": recipe.dla_core,
        "gpu_fallback": on_dla,
        "timing_cache": recipe.timing_cache,
        "builder_optimization_level": recipe.builder_optimization_level,
        "profile": profile,
        "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(recipe).items()},
    }


def trtexec_command(onnx_path: str | Path, plan_path: str | Path, recipe: EngineRecipe, version: Version) -> list[str]:
    """The trtexec command line that builds the same engine as ``build_engine``."""
    settings = builder_settings(recipe, version)
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={plan_path}"]
    flags = settings["builder_flags"]
    if "INT8" in flags:
        cmd.append("--int8")
    if "FP16" in flags:
        cmd.append("--fp16")
    cmd.append(f"--memPoolSize=workspace:{recipe.workspace_mib}")  # bare number: MiB
    if recipe.dla_core is not None:
        cmd += [f"--useDLACore={recipe.dla_core}", "--allowGPUFallback"]
    if recipe.timing_cache is not None:
        cmd.append(f"--timingCacheFile={recipe.timing_cache}")
    if recipe.builder_optimization_level is not None:
        cmd.append(f"--builderOptimizationLevel={recipe.builder_optimization_level}")
    if settings["profile"] is not None:
        dims = "x".join(str(d) for d in recipe.input_shape)
        spec = f"{recipe.input_name}:{dims}"
        cmd += [f"--minShapes={spec}", f"--optShapes={spec}", f"--maxShapes={spec}"]
    return cmd


def write_build_script(
    path: str | Path, onnx_name: str, plan_name: str, recipe: EngineRecipe, version: Version
) -> Path:
    """Write a POSIX sh script that rebuilds the plan with trtexec, next to the plan; returns its path.

    The script changes to its own folder, so ``onnx_name`` and ``plan_name`` are relative to it.
    """
    path = Path(path)
    settings = builder_settings(recipe, version)
    cmd = trtexec_command(onnx_name, plan_name, recipe, version)
    args = " \\\n    ".join(shlex.quote(a) for a in cmd[1:])
    text = (
        "#!/bin/sh\n"
        f"# Rebuild {plan_name} from {onnx_name} with trtexec (TensorRT {settings['tensorrt_version']}, "
        f"{settings['typing']}ly typed, precision {recipe.precision}).\n"
        "# Run this ON THE TARGET DEVICE: a TensorRT engine is specific to the GPU (or DLA) and the exact\n"
        "# TensorRT version that built it, and will not load anywhere else.\n"
        "# Written by bckd_pipeline.targets.tensorrt.write_build_script.\n"
        "set -eu\n"
        'cd "$(dirname "$0")"\n'
        'TRTEXEC="${TRTEXEC:-trtexec}"\n'
        f'if ! command -v "$TRTEXEC" >/dev/null 2>&1 && [ -x {TRTEXEC_SEARCH} ]; then TRTEXEC={TRTEXEC_SEARCH}; fi\n'
        f'"$TRTEXEC" \\\n    {args}\n'
    )
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), mode=0o777)
    return path


# -- the build -----------------------------------------------------------------------------------
def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendMissingError(
            "TensorRT's Python package (tensorrt) is not installed. On a Jetson it comes with JetPack "
            "(sudo apt install nvidia-jetpack, or python3-libnvinfer); on an x86 host with an NVIDIA GPU: "
            'pip install tensorrt, or pip install "bckd-pipeline[tensorrt]".'
        ) from None
    return trt


def _make_logger(trt, lines: list[str]):
    """A TensorRT logger (ILogger subclass) that keeps every message above VERBOSE in ``lines``."""
    verbose = trt.ILogger.Severity.VERBOSE

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg) -> None:
            if severity != verbose:
                lines.append(f"[{getattr(severity, 'name', severity)}] {msg}")

    return _Logger()


def _write_log(log_path: Path | None, lines: list[str]) -> None:
    if log_path is not None:
        atomic_write(Path(log_path), lambda tmp: tmp.write_text("\n".join(lines) + "\n", encoding="utf-8"))


def _parser_errors(parser) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        name = err.node_name() if hasattr(err, "node_name") else ""  # node_name(): TensorRT 10.x
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        where = f"node {name!r}" if name else f"node #{err.node()}"
        if op:
            where += f" ({op})"
        out.append(f"{where}: {err.desc()}")
    return out


def build_engine(
    onnx_path: str | Path, plan_path: str | Path, recipe: EngineRecipe, *, log_path: str | Path | None = None
) -> dict:
    """Build and write a serialized TensorRT engine (plain plan bytes, no header).

    Returns ``builder_settings(...)`` plus ``tensorrt_version``, ``build_s``, ``plan_sha256``,
    ``plan_bytes``, ``plan``, ``onnx`` and ``log`` (the log file path or None).
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    log_path = Path(log_path) if log_path is not None else None
    trt = import_tensorrt()
    version = parse_trt_version(trt.__version__)
    settings = builder_settings(recipe, version)
    if not onnx_path.is_file():
        raise ConfigError(f"ONNX file {str(onnx_path)!r} does not exist. Export it first (bckd-pipeline run).")

    lines: list[str] = []
    logger = _make_logger(trt, lines)
    try:
        return _build(trt, logger, lines, onnx_path, plan_path, recipe, settings, log_path)
    finally:
        _write_log(log_path, lines)


def _build(trt, logger, lines, onnx_path, plan_path, recipe, settings, log_path) -> dict:
    start = time.perf_counter()
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, logger, onnx_path, recipe, settings)
    config, placement = _builder_config(trt, builder, network, recipe, settings)
    cache_path = Path(recipe.timing_cache) if recipe.timing_cache is not None else None
    cache_status = _load_timing_cache(config, cache_path, lines)
    _add_profile(trt, builder, network, config, recipe)

    serialized = builder.build_serialized_network(network, config)
    del parser  # it owns the network's weights: kept alive until the engine is built
    if serialized is None:
        where = f"the build log {str(log_path)!r}" if log_path else "TensorRT's messages above"
        tail = " | ".join(lines[-5:])
        raise StageCheckError(
            f"TensorRT {settings['tensorrt_version']} failed to build an engine from {str(onnx_path)!r} "
            f"(precision {recipe.precision}, {settings['typing']}ly typed). See {where}."
            + (f" Last messages: {tail}" if tail else "")
            + " Typical fixes: a larger workspace_mib, another precision, or leave dla_core unset."
        )
    data = bytes(memoryview(serialized))
    layers = engine_layers(trt, logger, data)
    precisions = layer_precisions(layers)
    if recipe.precision == "int8" and precisions is not None and not precisions.get("int8"):
        raise StageCheckError(
            f"TensorRT {settings['tensorrt_version']} built {onnx_path.name} with no INT8 layer (layer outputs: "
            f"{precisions}); it would be labelled int8. Check the Q/DQ nodes (bckd_pipeline.calibrate.tensorrt."
            "check_tensorrt_qdq) and the build log."
        )
    if placement is not None:
        placement["engine"] = dla_engine_share(layers)
        _check_dla(placement, recipe, lines)
    layers_file = _write_outputs(plan_path, data, layers, config, cache_path if cache_status != "rejected" else None)

    return {
        **settings,
        "tensorrt_version": trt.__version__,
        "build_s": time.perf_counter() - start,
        "plan": str(plan_path),
        "plan_bytes": len(data),
        "plan_sha256": hashlib.sha256(data).hexdigest(),
        "onnx": str(onnx_path),
        "log": str(log_path) if log_path is not None else None,
        "timing_cache_status": cache_status,
        "layer_precisions": precisions,
        "layers_file": None if layers_file is None else layers_file.name,
        "dla": placement,
    }


def _parse(trt, builder, logger, onnx_path: Path, recipe: EngineRecipe, settings: dict):
    """The ONNX parsed into a network with the recipe's creation flags; returns the network and its parser."""
    flags = 0
    for name in settings["network_flags"]:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser) or ["(the parser gave no details; see the log)"]
        raise ExportError(
            f"TensorRT {settings['tensorrt_version']} could not parse {str(onnx_path)!r}: "
            + "; ".join(errors)
            + ". Check that every op is supported by this TensorRT (opset, Q/DQ placement), or re-export."
        )
    if settings["typing"] == "strong" and recipe.precision == "fp16" and not _has_half_tensors(trt, network):
        raise ConfigError(
            f"precision fp16 was asked for with TensorRT {settings['tensorrt_version']}, which builds strongly typed "
            f"(no FP16 flag), and {onnx_path.name} carries no FP16 tensor: the engine would be FP32 labelled fp16. "
            "Export the ONNX in FP16, build with TensorRT 10.x, or ask for precision fp32."
        )
    return network, parser


def _builder_config(trt, builder, network, recipe: EngineRecipe, settings: dict):
    """The builder config: workspace, detailed profiling, builder flags, DLA placement, optimization level.

    Returns the config and the DLA placement plan (None when building for the GPU).
    """
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["memory_pool_limits"]["WORKSPACE"])
    # Per-layer names, types and formats in the engine inspector's JSON (ProfilingVerbosity, 8.2+).
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for name in settings["builder_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
    placement = None
    if recipe.dla_core is not None:
        available = builder.num_DLA_cores
        if recipe.dla_core >= available:
            raise ConfigError(
                f"DLA core {recipe.dla_core} was asked for, but this module has {available} DLA core(s)"
                + (f" (0..{available - 1})" if available else "")
                + ". Use a core that exists, or leave dla_core unset to build for the GPU."
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = recipe.dla_core
        placement = dla_plan(trt, network, config)
    if recipe.builder_optimization_level is not None:
        config.builder_optimization_level = recipe.builder_optimization_level
    return config, placement


def _load_timing_cache(config, cache_path: Optional[Path], lines: list) -> Optional[str]:
    """Give the builder the timing cache at ``cache_path``: "loaded", "new" (none yet), "rejected", or None."""
    if cache_path is None:
        return None
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if config.set_timing_cache(cache, ignore_mismatch=False):
        return "loaded" if blob else "new"
    # Made by another GPU or TensorRT version: not used, and not overwritten.
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    lines.append(
        f"[WARNING] bckd-pipeline: the timing cache {str(cache_path)!r} was made by another GPU or TensorRT "
        "version; TensorRT did not use it, and it is left as it was. Delete it, or give another path."
    )
    return "rejected"


def _write_outputs(plan_path: Path, data: bytes, layers, config, cache_path: Optional[Path]) -> Optional[Path]:
    """Write the plan, the updated timing cache (when given) and the layer list; returns the layer file."""
    atomic_write(plan_path, lambda tmp: tmp.write_bytes(data))
    if cache_path is not None:
        blob = bytes(memoryview(config.get_timing_cache().serialize()))
        atomic_write(cache_path, lambda tmp: tmp.write_bytes(blob))
    if layers is None:
        return None
    layers_file = plan_path.with_name(plan_path.stem + ".layers.json")
    text = json.dumps(layers, indent=1)
    atomic_write(layers_file, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return layers_file


def _has_half_tensors(trt, network) -> bool:
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if any(layer.get_output(j).dtype == trt.DataType.HALF for j in range(layer.num_outputs)):
            return True
    return False


# -- where the layers run -------------------------------------------------------------------------
def _layer_flops(trt, layer) -> int:
    """Multiply-adds x 2 of convolutions and matrix products, output elements for everything else.

    From the network definition (layer.type, kernel_size_nd, num_output_maps, num_groups, tensor shapes;
    TensorRT Python API: ILayer, IConvolutionLayer, IDeconvolutionLayer): a rough but stable measure
    of where the work is, the same on every version.
    """

    def volume(shape) -> int:
        n = 1
        for d in shape:
            n *= max(int(d), 1)
        return n

    out = layer.get_output(0) if layer.num_outputs else None
    out_elems = volume(out.shape) if out is not None else 0
    kind = layer.type
    if kind in (trt.LayerType.CONVOLUTION, trt.LayerType.DECONVOLUTION):
        conv_class = trt.IConvolutionLayer if kind == trt.LayerType.CONVOLUTION else trt.IDeconvolutionLayer
        layer.__class__ = conv_class  # TensorRT's Python idiom for reaching the subclass's attributes
        kernel = volume(layer.kernel_size_nd)
        groups = max(int(layer.num_groups), 1)
        in_shape = layer.get_input(0).shape
        c_in = int(in_shape[1]) if len(in_shape) > 1 else 1
        if kind == trt.LayerType.CONVOLUTION:
            return 2 * out_elems * kernel * max(c_in // groups, 1)
        return 2 * volume(in_shape) * kernel * max(int(layer.num_output_maps) // groups, 1)
    if kind == trt.LayerType.MATRIX_MULTIPLY:
        a = layer.get_input(0).shape
        return 2 * out_elems * max(int(a[-1]), 1) if len(a) else out_elems
    return out_elems


def dla_plan(trt, network, config) -> dict:
    """Which network layers TensorRT can place on the DLA (``IBuilderConfig.can_run_on_DLA``), by count and FLOPs."""
    layers = flops = dla_layers = dla_flops = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        f = _layer_flops(trt, layer)
        layers += 1
        flops += f
        if config.can_run_on_DLA(layer):
            dla_layers += 1
            dla_flops += f
    return {
        "source": "IBuilderConfig.can_run_on_DLA per network layer; FLOPs from the network definition",
        "layers": layers,
        "layers_on_dla": dla_layers,
        "layer_share": dla_layers / layers if layers else 0.0,
        "flop_share": dla_flops / flops if flops else 0.0,
    }


def engine_layers(trt, logger, data: bytes):
    """The built engine's per-layer information (engine inspector JSON, ProfilingVerbosity.DETAILED), or None."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        return None
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = info.get("Layers", []) if isinstance(info, dict) else info
    return [layer if isinstance(layer, dict) else {"Name": str(layer)} for layer in layers]


def _on_dla(layer: dict) -> bool:
    # TensorRT hands DLA subgraphs over as one "ForeignNode" layer ("{ForeignNode[first...last]}");
    # a LayerType naming DLA counts too. Read from the inspector JSON; not yet seen on a Jetson here.
    return "ForeignNode" in str(layer.get("Name", "")) or "dla" in str(layer.get("LayerType", "")).lower()


def dla_engine_share(layers) -> Optional[dict]:
    if layers is None:
        return None
    on = sum(1 for layer in layers if _on_dla(layer))
    return {"source": "engine inspector JSON", "layers": len(layers), "dla_layers": on}


def layer_precisions(layers) -> Optional[dict]:
    """How many engine layers write int8 / fp16 / fp32 outputs (inspector 'Outputs' 'Format/Datatype')."""
    if layers is None:
        return None
    counts = {}  # type: dict
    for layer in layers:
        for out in layer.get("Outputs", [])[:1]:
            text = str(out.get("Format/Datatype", "")).lower()
            kind = (
                "int8"
                if "int8" in text
                else "fp16"
                if "half" in text or "fp16" in text
                else "fp32"
                if ("float" in text or "fp32" in text)
                else None
            )
            if kind:
                counts[kind] = counts.get(kind, 0) + 1
    return counts or None


def _check_dla(placement: dict, recipe: EngineRecipe, lines: list) -> None:
    engine = placement.get("engine")
    nothing = placement["layers_on_dla"] == 0 or (engine is not None and engine["dla_layers"] == 0)
    if nothing:
        raise StageCheckError(
            f"DLA core {recipe.dla_core} was asked for, but no layer runs there (GPU fallback took all "
            f"{placement['layers']}): the engine would be labelled DLA while running on the GPU. Leave dla_core "
            "unset, or make the layers DLA-capable (INT8/FP16 convolutions, static shapes)."
        )
    if placement["flop_share"] < MIN_DLA_FLOP_SHARE:
        placement["warning"] = (
            f"only {placement['flop_share']:.0%} of the FLOPs ({placement['layers_on_dla']} of {placement['layers']} "
            f"layers) can run on DLA core {recipe.dla_core}; the rest falls back to the GPU"
        )
        lines.append(f"[WARNING] bckd-pipeline: {placement['warning']}")


def _add_profile(trt, builder, network, config, recipe: EngineRecipe) -> None:
    """One optimisation profile (min = opt = max = input_shape) when the ONNX input is dynamic."""
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if recipe.input_name not in inputs:
        raise ConfigError(
            f"The ONNX has no input named {recipe.input_name!r} (inputs: {', '.join(sorted(inputs)) or 'none'}). "
            "Set EngineRecipe.input_name to the exported input's name."
        )
    onnx_shape = tuple(int(d) for d in inputs[recipe.input_name].shape)
    dynamic = any(d < 0 for d in onnx_shape)
    shown = tuple("?" if d < 0 else d for d in onnx_shape)
    if dynamic:
        if recipe.input_shape is None:
            raise ConfigError(
                f"The ONNX input {recipe.input_name!r} has dynamic shape {shown}; TensorRT needs the shape to "
                "build for. Set EngineRecipe.input_shape, e.g. (1, 3, 512, 512)."
            )
        if len(recipe.input_shape) != len(onnx_shape) or any(
            d >= 0 and d != s
            for d, s in zip(onnx_shape, recipe.input_shape)  # lengths checked just before
        ):
            raise ConfigError(
                f"input_shape {recipe.input_shape} does not fit the ONNX input {recipe.input_name!r} {shown}."
            )
        profile = builder.create_optimization_profile()
        profile.set_shape(recipe.input_name, recipe.input_shape, recipe.input_shape, recipe.input_shape)
        config.add_optimization_profile(profile)
    elif recipe.input_shape is not None and tuple(recipe.input_shape) != onnx_shape:
        raise ConfigError(
            f"input_shape {recipe.input_shape} differs from the static ONNX input {recipe.input_name!r} "
            f"{onnx_shape}. Leave input_shape unset for a static ONNX, or re-export at that size."
        )
