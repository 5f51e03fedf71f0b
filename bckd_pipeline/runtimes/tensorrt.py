"""TensorRT: a serialized engine (plan) run with the TensorRT 8.5+/10 I/O-tensor API and pycuda.

One CUDA context (the device's primary context, pushed in ``_activate`` and popped in
``_deactivate``), one execution context, one CUDA stream, page-locked host buffers and device buffers
allocated once. ``infer`` copies host -> device, enqueues (``execute_async_v3``), copies device -> host
and synchronises; the base class times that whole call with ``perf_counter`` (copies inside). The
GPU time of the enqueue alone, between two CUDA events, goes to ``last_device_ms``, which the latency
protocol reports as ``device_ms``.

Part of the device-side agent: imports only the standard library, numpy and project modules allowed
there at import time; tensorrt and pycuda are imported inside ``_activate``.

API sources: TensorRT Python API (Runtime.deserialize_cuda_engine, ICudaEngine.num_io_tensors /
get_tensor_name / get_tensor_mode / get_tensor_shape / get_tensor_dtype / get_tensor_profile_shape,
IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3, all present from 8.5);
pycuda.driver docs (Device.retain_primary_context, Context.push/pop, Stream, Event.record(stream) /
time_till, pagelocked_empty, mem_alloc, memcpy_htod_async / memcpy_dtoh_async).

CUDA graphs (``cuda_graph=True``) go through cuda-python's runtime bindings, never pycuda: no pycuda
release has stream capture (``Stream.begin_capture``/``end_capture``, ``Graph.instantiate`` exist only in
an unmerged pycuda pull request; checked against every pycuda tag). The calls are the
ones NVIDIA's own code makes: ``from cuda import cudart`` and the ``(err, value)`` tuple check of
NVIDIA/TensorRT samples/python/common_runtime.py (``cuda_call``), and the capture sequence of
NVIDIA/TensorRT demo/Diffusion/demo_diffusion/engine.py ``Engine.infer`` (one plain
``execute_async_v3`` first, then ``cudaStreamBeginCapture(stream, mode)``, ``execute_async_v3``,
``cudaStreamEndCapture``, ``cudaGraphInstantiate(graph, 0)``, ``cudaGraphLaunch(exec, stream)``, with
the stream passed as an int handle). ``cudaGraphInstantiate(graph, flags)`` is the CUDA 12 form
(cuda-python 12.x); a CUDA 11 runtime (JetPack 5) is refused for graphs with a clear message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import BackendMissingError, ConfigError, StageCheckError
from ..targets.tensorrt import MIN_VERSION, import_tensorrt, parse_trt_version
from .base import Feed, Runtime, TensorSpec

PYCUDA_HINT = (
    "pycuda is not installed: pip install pycuda (it compiles against the CUDA toolkit, so nvcc and the CUDA "
    "headers must be present: on a Jetson they come with JetPack, e.g. sudo apt install nvidia-jetpack; put "
    "/usr/local/cuda/bin on PATH first)."
)


def _import_pycuda():
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise BackendMissingError(PYCUDA_HINT) from None
    return cuda


CUDA_PYTHON_HINT = (
    "pip install 'cuda-python>=12,<13' (match the device's CUDA major: JetPack 6 has CUDA 12; "
    "docker/jetson.Dockerfile installs it)"
)


class _CudartGraph:
    """The enqueue captured with cuda-python's runtime bindings (``cuda.bindings.runtime``, or ``cuda.cudart``)."""

    backend = "cuda-python (cudart) stream capture"

    def __init__(self, cudart, stream, enqueue) -> None:
        self._rt = cudart
        self._exec = self._graph = None
        handle = stream.handle
        self._check(
            cudart.cudaStreamBeginCapture(handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
            "cudaStreamBeginCapture",
        )
        try:
            enqueue()
        except BaseException:
            # Leave capture mode, but let the enqueue's own error through: a failing end-capture
            # (the capture was invalidated by that very error) must not hide the cause.
            try:
                cudart.cudaStreamEndCapture(handle)
            except Exception:  # noqa: BLE001 - the enqueue error below is the one to report
                pass
            raise
        self._graph = self._check(cudart.cudaStreamEndCapture(handle), "cudaStreamEndCapture")
        self._exec = self._check(cudart.cudaGraphInstantiate(self._graph, 0), "cudaGraphInstantiate")

    def _check(self, result, what):
        err, *rest = result
        if err != self._rt.cudaError_t.cudaSuccess:
            raise StageCheckError(
                f"{what} failed with {err!r} while capturing the TensorRT enqueue into a CUDA graph. Run without "
                "cuda_graph=True (--cuda-graph; some engines, e.g. with data-dependent shapes, cannot be captured)."
            )
        return rest[0] if rest else None

    def launch(self, stream) -> None:
        self._check(self._rt.cudaGraphLaunch(self._exec, stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        if self._exec is not None:
            self._rt.cudaGraphExecDestroy(self._exec)
        if self._graph is not None:
            self._rt.cudaGraphDestroy(self._graph)
        self._exec = self._graph = None


def import_cudart():
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (cuda-python >= 12.6), else ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # the layout of cuda-python < 12.6 (and TensorRT's samples)
        except ImportError:
            raise ConfigError(
                "cuda_graph=True (--cuda-graph) captures the enqueue with cuda-python, which is not installed here: "
                f"{CUDA_PYTHON_HINT}; or run without --cuda-graph. (pycuda has no stream capture in any release.)"
            ) from None
    err, version = cudart.cudaRuntimeGetVersion()
    if err == cudart.cudaError_t.cudaSuccess and version < 12000:
        raise ConfigError(
            f"cuda_graph=True needs cuda-python 12 (CUDA 12's cudaGraphInstantiate(graph, flags)); this cuda-python "
            f"links CUDA {version // 1000}.{version % 1000 // 10} (JetPack 5). "
            "Run without --cuda-graph, or use JetPack 6."
        )
    return cudart


def _capture(stream, enqueue):
    return _CudartGraph(import_cudart(), stream, enqueue)


class TensorRTRuntime(Runtime):
    backend = "tensorrt"
    what_is_timed = (
        "one infer() call on the host (perf_counter): host->device and device->host copies of every input and "
        "output included, stream synchronised; device_ms: CUDA events around the enqueue alone"
    )

    def __init__(
        self,
        plan_path: Path,
        *,
        name: str | None = None,
        precision: str = "int8",
        cuda_graph: bool = False,
    ) -> None:
        super().__init__(name or Path(plan_path).name)
        self.plan_path = Path(plan_path)
        self.precision = precision
        self.cuda_graph = cuda_graph
        self._ctx = None
        self._graph = None
        if cuda_graph:
            self.what_is_timed += "; enqueue replayed from a CUDA graph"

    # -- lifecycle -------------------------------------------------------------------------------
    def _activate(self) -> None:
        trt = import_tensorrt()
        if parse_trt_version(trt.__version__) < MIN_VERSION:
            raise ConfigError(
                f"TensorRT {trt.__version__} is too old for this runtime: it needs 8.5+ (the name-based I/O API, "
                "execute_async_v3). JetPack 5.0.2 ships 8.4; upgrade to JetPack 5.1 or later."
            )
        cuda = _import_pycuda()
        if not self.plan_path.is_file():
            raise ConfigError(
                f"TensorRT plan {str(self.plan_path)!r} does not exist. Build it on this device with the build "
                "script written next to it (build_engine.sh) or `bckd-pipeline run --target jetson`."
            )
        cuda.init()
        if cuda.Device.count() < 1:
            raise ConfigError("pycuda sees no CUDA device on this host. TensorRT engines run on an NVIDIA GPU.")
        device = cuda.Device(0)
        self._ctx = device.retain_primary_context()
        self._ctx.push()
        try:
            self._load(trt, cuda, device)
        except BaseException:
            self._release()
            raise

    def _load(self, trt, cuda, device) -> None:
        self._trt, self._cuda = trt, cuda
        self._device_name = device.name()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._trt_runtime = trt.Runtime(self._logger)
        engine = self._trt_runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if engine is None:
            raise ConfigError(
                f"TensorRT {trt.__version__} could not load {str(self.plan_path)!r} on {self._device_name}. Engines "
                "are not portable: a plan only loads with the TensorRT version and GPU that built it. Rebuild it on "
                "this device with the build script next to it (sh build_engine.sh)."
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise StageCheckError(
                f"TensorRT could not create an execution context for {str(self.plan_path)!r} (out of GPU memory?)."
            )
        self._stream = cuda.Stream()
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(name)
                shape = tuple(engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    lo, opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
                    if lo != hi:
                        raise ConfigError(
                            f"Input {name!r} of {self.plan_path.name} was built for shapes {lo}..{hi}; this runtime "
                            "runs the one shape of a min = opt = max profile. Rebuild with EngineRecipe.input_shape."
                        )
                    shape = opt
                self.context.set_input_shape(name, shape)
            else:
                self._outputs.append(name)
        self._host: dict[str, np.ndarray] = {}
        self._dev: dict = {}
        for name in self._inputs + self._outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            self._host[name] = cuda.pagelocked_empty(shape, dtype)
            self._dev[name] = cuda.mem_alloc(max(self._host[name].nbytes, 1))
            self.context.set_tensor_address(name, int(self._dev[name]))
        self._start, self._end = cuda.Event(), cuda.Event()
        if self.cuda_graph:
            self._enqueue()  # TensorRT does deferred set-up on the first enqueue: never capture that one
            self._stream.synchronize()
            self._graph = _capture(self._stream, self._enqueue)

    def _deactivate(self) -> None:
        self._release()

    def _release(self) -> None:
        if self._ctx is None:
            return
        try:
            if self._graph is not None:
                self._graph.close()
            for buf in getattr(self, "_dev", {}).values():
                buf.free()
        finally:
            self._graph = None
            self._dev, self._host = {}, {}
            self.context = self.engine = self._trt_runtime = None
            self._stream = self._start = self._end = None
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None

    # -- inference -------------------------------------------------------------------------------
    def _input_spec(self) -> dict[str, TensorSpec]:
        return {name: TensorSpec(self._host[name].dtype, tuple(self._host[name].shape)) for name in self._inputs}

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self._stream.handle):
            raise StageCheckError(
                f"TensorRT execute_async_v3 failed for {self.plan_path.name}; see TensorRT's messages on stderr."
            )

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        cuda, stream = self._cuda, self._stream
        for name in self._inputs:
            np.copyto(self._host[name], feed[name])
        for name in self._inputs:
            cuda.memcpy_htod_async(self._dev[name], self._host[name], stream)
        self._start.record(stream)
        if self._graph is not None:
            self._graph.launch(stream)
        else:
            self._enqueue()
        self._end.record(stream)
        for name in self._outputs:
            cuda.memcpy_dtoh_async(self._host[name], self._dev[name], stream)
        stream.synchronize()
        self.last_device_ms = self._start.time_till(self._end)
        return {name: self._host[name].copy() for name in self._outputs}

    def infer_concurrently(self, feeds: Sequence[Feed], streams: int) -> float:
        """Only streams=1 (the base class runs that in this thread, where the CUDA context is current).

        Several streams would need one execution context and buffer set each; sharing one from a thread
        pool would be measured wrongly, so it is refused.
        """
        if streams != 1:
            raise ConfigError(
                "TensorRTRuntime runs one execution context on one CUDA stream; throughput mode with "
                f"streams={streams} is not supported. "
                "Use streams=1 (or latency mode), or one TensorRTRuntime per process."
            )
        return super().infer_concurrently(feeds, 1)

    # -- report ----------------------------------------------------------------------------------
    def versions(self) -> dict[str, str]:
        cuda = self._cuda
        driver = cuda.get_driver_version()  # e.g. 12060 -> "12.6"
        import pycuda

        return {
            "tensorrt": self._trt.__version__,
            "pycuda": getattr(pycuda, "VERSION_TEXT", None) or ".".join(map(str, getattr(pycuda, "VERSION", ()))),
            "cuda_driver": f"{driver // 1000}.{driver % 1000 // 10}",
        }

    def settings(self) -> dict:
        return {
            "cuda_graph": self.cuda_graph,
            "cuda_graph_backend": self._graph.backend if self._graph is not None else None,
            "device": self._device_name,
        }
