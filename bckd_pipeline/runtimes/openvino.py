"""OpenVINO: an IR (model.xml + .bin) or an ONNX file, compiled for CPU, GPU or NPU."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import BackendMissingError, ConfigError
from .base import Feed, Runtime, TensorSpec, dim


def import_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise BackendMissingError(
            'OpenVINO is not installed: pip install "bckd-pipeline[openvino]" (openvino and nncf).'
        ) from None
    return ov


class OpenVINORuntime(Runtime):
    backend = "openvino"

    def __init__(
        self,
        path: Path,
        *,
        device: str = "CPU",
        precision: str = "fp32",
        threads: int | None = None,
        streams: int = 1,
        name: str | None = None,
    ) -> None:
        super().__init__(name or Path(path).name)
        self.path = Path(path)
        self.device = device
        self.precision = precision
        self.threads = threads
        self.streams = streams

    def _config(self) -> dict:
        hint = "LATENCY" if self.streams == 1 else "THROUGHPUT"
        config: dict = {"PERFORMANCE_HINT": hint}
        if self.streams > 1:
            config["NUM_STREAMS"] = str(self.streams)
        if self.device == "CPU":
            if self.threads:
                config["INFERENCE_NUM_THREADS"] = str(self.threads)
            if self.precision == "fp32":
                # CPUs with AMX or AVX512-BF16 otherwise run fp32 IRs in bf16 by default.
                config["INFERENCE_PRECISION_HINT"] = "f32"
        return config

    def _activate(self) -> None:
        ov = import_openvino()
        if not self.path.is_file():
            raise ConfigError(f"OpenVINO model {str(self.path)!r} does not exist. Pass a model.xml or .onnx file.")
        core = ov.Core()
        if self.device not in core.available_devices and not any(
            d.startswith(self.device + ".") for d in core.available_devices
        ):
            raise ConfigError(
                f"OpenVINO device {self.device!r} is not on this host (available: "
                f"{', '.join(core.available_devices)}). Measure on a machine that has it."
            )
        try:
            model = core.read_model(str(self.path))
            self.compiled = core.compile_model(model, self.device, self._config())
        except RuntimeError as exc:
            raise ConfigError(
                f"OpenVINO could not load {str(self.path)!r}: {str(exc).strip().splitlines()[0][:300]}. The file is "
                "truncated or not an OpenVINO IR/ONNX model; rebuild it with `bckd-pipeline run`."
            ) from None
        self.request = self.compiled.create_infer_request()
        self._outputs = [o.get_any_name() for o in self.compiled.outputs]
        self._ov_version = ov.get_version()

    def _deactivate(self) -> None:
        self.request = None
        self.compiled = None

    def _input_spec(self) -> dict[str, TensorSpec]:
        spec = {}
        for port in self.compiled.inputs:
            shape = tuple(dim(d.get_length()) if d.is_static else None for d in port.get_partial_shape())
            spec[port.get_any_name()] = TensorSpec(np.dtype(port.get_element_type().to_dtype()), shape)
        return spec

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        result = self.request.infer(dict(feed))
        return {name: np.array(result[i]) for i, name in enumerate(self._outputs)}

    def infer_concurrently(self, feeds: Sequence[Feed], streams: int) -> float:
        ov = import_openvino()
        self._require_active()
        queue = ov.AsyncInferQueue(self.compiled, streams)
        start = time.perf_counter()
        for feed in feeds:
            queue.start_async(dict(feed))
        queue.wait_all()
        return time.perf_counter() - start

    def versions(self) -> dict[str, str]:
        return {"openvino": self._ov_version}

    def settings(self) -> dict:
        compiled = {}
        for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS"):
            try:
                compiled[key] = str(self.compiled.get_property(key))
            except RuntimeError:  # not every device reports every property
                compiled[key] = None
        return {"device": self.device, "config": self._config(), "compiled": compiled}
