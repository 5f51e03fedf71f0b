"""A recording stand-in for the ``tensorrt`` module: the API of one TensorRT version and a log of the calls
our engine build makes (tests/test_tensorrt.py, and the Jetson agent's TensorRT branch in tests/test_jetson.py)."""

from __future__ import annotations

import enum
import json
import types

INT8_ENGINE_LAYERS = [
    {"Name": "/conv/Conv", "LayerType": "CaskConvolution",
     "Outputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]},
    {"Name": "/Resize", "LayerType": "Resize", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
]  # fmt: skip


def make_fake_trt(
    version: str,
    *,
    weak_flags: bool | None = None,
    dla_cores: int = 0,
    input_shape=(1, 3, 8, 8),
    input_name: str = "image",
    parse_errors=(),
    build_ok: bool = True,
    cache_accepted: bool = True,
    network_layers=None,
    engine_layers=None,
):
    """A tiny stand-in for the tensorrt module that records every call our build makes.

    It checks *our* calls (flags, order, files), not TensorRT's behaviour, and has only the API the
    real module of that version has: TensorRT 11 lacks BuilderFlag.INT8/FP16 and
    NetworkDefinitionCreationFlag.EXPLICIT_BATCH (11.x migration guide, "Removed Python APIs"), and the
    builder config, like a pybind11 object, refuses attributes IBuilderConfig does not have.
    ``network_layers``: (type name, output shape, can run on DLA[, output dtype]) per network layer, for
    the DLA placement; ``engine_layers``: the engine inspector's JSON "Layers".
    """
    calls: list[tuple] = []
    major = int(version.split(".")[0])
    weak_flags = major < 11 if weak_flags is None else weak_flags
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity
    trt.ILogger = ILogger
    net_flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if major < 11 else {"STRONGLY_TYPED": 1}
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", net_flags)
    names = (["INT8", "FP16"] if weak_flags else []) + ["GPU_FALLBACK"]
    trt.BuilderFlag = enum.Enum("BuilderFlag", names)
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])
    trt.DeviceType = enum.Enum("DeviceType", ["GPU", "DLA"])
    trt.ProfilingVerbosity = enum.Enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"])
    trt.LayerInformationFormat = enum.Enum("LayerInformationFormat", ["ONELINE", "JSON"])
    trt.DataType = enum.Enum("DataType", ["FLOAT", "HALF", "INT8", "INT32"])
    trt.LayerType = enum.Enum(
        "LayerType", ["CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY", "ACTIVATION", "RESIZE", "QUANTIZE"]
    )

    class TensorShape:
        def __init__(self, shape, dtype="FLOAT"):
            self.shape, self.dtype = tuple(shape), trt.DataType[dtype]

    class Tensor:
        name = input_name
        shape = input_shape

    class ILayer:
        num_outputs = 1

        def __init__(self, kind, out_shape, dla_ok, dtype="FLOAT"):
            self.type, self._out, self.dla_ok = trt.LayerType[kind], TensorShape(out_shape, dtype), dla_ok
            self._in = TensorShape(input_shape)

        def get_output(self, i):
            return self._out

        def get_input(self, i):
            return self._in

    class IConvolutionLayer(ILayer):  # reached with `layer.__class__ = trt.IConvolutionLayer`, as in Polygraphy
        kernel_size_nd = (3, 3)
        num_output_maps = 8
        num_groups = 1

    class IDeconvolutionLayer(IConvolutionLayer):
        pass

    trt.IConvolutionLayer, trt.IDeconvolutionLayer = IConvolutionLayer, IDeconvolutionLayer
    layers = [ILayer(*spec) for spec in (network_layers or [])]

    class Network:
        num_inputs = 1
        num_layers = len(layers)

        def get_input(self, i):
            return Tensor()

        def get_layer(self, i):
            return layers[i]

    class ParserError:
        def __init__(self, node, name, desc):
            self._node, self._name, self._desc = node, name, desc

        def node(self):
            return self._node

        def node_name(self):
            return self._name

        def node_operator(self):
            return "Conv"

        def desc(self):
            return self._desc

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = len(parse_errors)

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            return not parse_errors

        def get_error(self, i):
            return ParserError(i, *parse_errors[i])

    class TimingCache:
        def __init__(self, blob):
            self.blob = blob

        def serialize(self):
            return self.blob + b"+new"

    class Config:
        # IBuilderConfig's properties that our build sets; anything else is an AttributeError, as on the real one.
        PROPERTIES = ("default_device_type", "DLA_core", "builder_optimization_level", "profiling_verbosity")

        def __setattr__(self, name, value):
            if name not in self.PROPERTIES:
                raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute '{name}'")
            calls.append(("config." + name, value))
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool.name, size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag.name))

        def create_timing_cache(self, blob):
            calls.append(("create_timing_cache", bytes(blob)))
            return TimingCache(bytes(blob))

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))
            ok = cache_accepted or not cache.blob
            if ok:
                object.__setattr__(self, "_cache", cache)
            return ok  # IBuilderConfig.set_timing_cache: False for a cache of another GPU / TensorRT

        def get_timing_cache(self):
            return self._cache

        def can_run_on_DLA(self, layer):
            return layer.dla_ok

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile", profile.shapes))

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shapes = (name, tuple(lo), tuple(opt), tuple(hi))

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger):
            logger.log(Severity.VERBOSE, "verbose noise")
            logger.log(Severity.WARNING, "a builder warning")

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            return b"PLAN-BYTES" if build_ok else None

    class Inspector:
        def get_engine_information(self, fmt):
            assert fmt == trt.LayerInformationFormat.JSON
            return json.dumps({"Layers": INT8_ENGINE_LAYERS if engine_layers is None else engine_layers})

    class Engine:
        def create_engine_inspector(self):
            return Inspector()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            calls.append(("deserialize_cuda_engine", bytes(data)))
            return Engine()

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt
