"""The TensorRT engine build recipe: what the builder sets, per TensorRT version, and the build itself.

INT8 here always means *explicit* quantization: the ONNX carries Q/DQ nodes and TensorRT reads the
scales from them. Implicit INT8 calibration (``IInt8Calibrator``) is never used: TensorRT 10.1
deprecated the implicit-quantization and calibrator APIs and 11.0 removed them.

Version rules, with where each comes from (NVIDIA documentation, read for this module):

* TensorRT 8.x (JetPack 5): networks are created with ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``
  (8.4 Python API: "Creating a network without this flag has been deprecated"); precision comes from
  builder flags (weakly typed).
* TensorRT 10.0 - 10.11 (JetPack 6.x ships 10.3): ``EXPLICIT_BATCH`` is "[DEPRECATED] Ignored because
  networks are always explicit batch in TensorRT 10.0" (10.x Python API, Builder page), so it is not
  set. ``STRONGLY_TYPED`` already exists in 10.0, but this recipe keeps 10.x before 10.12 weakly typed:
  ``BuilderFlag.INT8`` (+ ``FP16`` so layers left unquantized may run in half precision).
* TensorRT 10.12+: "Weak typing APIs deprecated ... TensorRT will be using strong-typing exclusively
  in the future" (10.12.0 release notes). The network is created ``STRONGLY_TYPED`` and no precision
  flag is set: every tensor's type comes from the ONNX (Q/DQ for INT8, FP16 tensors for FP16).
* TensorRT 11.x: "removes all weak typing APIs" - ``BuilderFlag.FP16/INT8/...`` are gone (11.x
  migration guide, "Removed Python APIs"); ``STRONGLY_TYPED`` is "[DEPRECATED] ... Strongly typed mode
  is always enabled. This flag is retained for API compatibility but is ignored" and ``EXPLICIT_BATCH``
  is no longer listed (11.0 Python API, Builder page). trtexec 11 removed ``--fp16/--int8/--best`` and
  ``--stronglyTyped`` "is no longer needed" (11.x trtexec migration page). DLA: "DLA is not supported in
  TensorRT 11.3.0" / "on DriveOS in TensorRT 11.4.0", and "JetPack is not supported in TensorRT
  11.4.0" (11.x migration overview), so a DLA recipe for 11.x is refused.
* trtexec ``--workspace=N`` (MiB, 8.x) became ``--memPoolSize=workspace:N`` with the same N (8.x->10.x
  trtexec migration page: ``--workspace=1024`` -> ``--memPoolSize=workspace:1024``); a bare number is
  MiB. ``--builderOptimizationLevel`` and ``IBuilderConfig.builder_optimization_level`` are from 8.6.

This module is part of the device-side agent: it imports only the standard library, numpy-free
project pieces (``bckd_pipeline.errors``) and, lazily inside ``build_engine``, ``tensorrt``.

One module over 400 lines on purpose: the version rules above and the code that applies them (the
builder settings, the trtexec command, the build) are one idea, read against each other.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import BackendMissingError, ConfigError, ExportError, StageCheckError
from ..fileio import atomic_write

PRECISIONS = ("int8", "fp16", "fp32")
OPTIMIZATION_LEVELS = range(0, 6)  # IBuilderConfig.builder_optimization_level: 0..5, default 3
MIN_VERSION = (8, 4, 0)  # set_memory_pool_limit and trtexec --memPoolSize exist from 8.4
STRONGLY_TYPED_FROM = (10, 12, 0)  # weak typing deprecated in 10.12.0 (release notes)
OPT_LEVEL_FROM = (8, 6, 0)
TRTEXEC_SEARCH = "/usr/src/tensorrt/bin/trtexec"  # where JetPack installs trtexec (not on PATH)

Version = tuple[int, int, int]


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
            f"TensorRT {shown} is not supported by this recipe. Supported: 8.4-8.6 (JetPack 5), 10.x (JetPack 6: "
            "10.3) and 11.x. Upgrade JetPack, or build on a host with a supported TensorRT."
        )


def is_strongly_typed_default(version: Version) -> bool:
    """True from TensorRT 10.12 on (weak typing deprecated there, removed in 11.0)."""
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
    if major >= 11 and recipe.dla_core is not None:
        raise ConfigError(
            f"DLA core {recipe.dla_core} was asked for with TensorRT {_version_text(version)}; NVIDIA's 11.x "
            "migration guide says DLA and JetPack are not supported in 11.x. Build on the Jetson's own TensorRT "
            "(JetPack 6: 10.3), or leave dla_core unset."
        )
    if recipe.builder_optimization_level is not None and version < OPT_LEVEL_FROM:
        raise ConfigError(
            f"builder_optimization_level needs TensorRT >= 8.6, this is {_version_text(version)}. Leave it unset."
        )

    if major == 8:
        network_flags = ["EXPLICIT_BATCH"]
    elif strong and major == 10:
        network_flags = ["STRONGLY_TYPED"]
    else:  # 10.0-10.11: explicit batch is implicit and ignored; 11+: strongly typed always, flag ignored
        network_flags = []

    builder_flags: list[str] = []
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
    else:
        typing = "weak"
        precision_source = {
            "int8": "Q/DQ nodes in the ONNX (explicit quantization), builder flag INT8"
            + (" + FP16 for layers without Q/DQ" if recipe.fp16_fallback else ""),
            "fp16": "builder flag FP16",
            "fp32": "no precision flag (FP32, TF32 where the GPU has it)",
        }[recipe.precision]

    profile = None
    if recipe.input_shape is not None:
        shape = list(recipe.input_shape)
        profile = {recipe.input_name: {"min": shape, "opt": shape, "max": shape}}

    return {
        "tensorrt_version": _version_text(version),
        "precision": recipe.precision,
        "typing": typing,
        "precision_source": precision_source,
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
    if "STRONGLY_TYPED" in settings["network_flags"]:
        cmd.append("--stronglyTyped")  # 10.12-10.x; 11.x is strongly typed without it
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

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["memory_pool_limits"]["WORKSPACE"])
    for name in settings["builder_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
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
    if recipe.builder_optimization_level is not None:
        config.builder_optimization_level = recipe.builder_optimization_level

    cache_path = Path(recipe.timing_cache) if recipe.timing_cache is not None else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)

    _add_profile(trt, builder, network, config, recipe)

    serialized = builder.build_serialized_network(network, config)
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
    atomic_write(plan_path, lambda tmp: tmp.write_bytes(data))
    if cache_path is not None:
        blob = bytes(memoryview(config.get_timing_cache().serialize()))
        atomic_write(cache_path, lambda tmp: tmp.write_bytes(blob))

    return {
        **settings,
        "tensorrt_version": trt.__version__,
        "build_s": time.perf_counter() - start,
        "plan": str(plan_path),
        "plan_bytes": len(data),
        "plan_sha256": hashlib.sha256(data).hexdigest(),
        "onnx": str(onnx_path),
        "log": str(log_path) if log_path is not None else None,
    }


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
            d >= 0 and d != s for d, s in zip(onnx_shape, recipe.input_shape, strict=True)
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
