"""ONNX Runtime on the CPU execution provider: the reference runtime for every ONNX artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendMissingError
from .base import Feed, Runtime, TensorSpec, dim

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(float16)": np.float16}


class OrtRuntime(Runtime):
    backend = "onnxruntime"

    def __init__(
        self,
        path: Path,
        *,
        threads: int | None = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        precision: str = "fp32",
        name: str | None = None,
    ) -> None:
        super().__init__(name or Path(path).name)
        self.path = Path(path)
        self.threads = threads
        self.providers = providers
        self.precision = precision

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendMissingError("onnxruntime is not installed: pip install onnxruntime.") from None
        try:
            import onnx  # noqa: F401 - onnxfile needs it; a device may have bckd-pipeline installed but no onnx
            from ..onnxfile import load_onnx
        except ImportError:  # the device agent ships without them: ONNX Runtime's own error remains
            load_onnx = None
        if load_onnx is not None:
            load_onnx(self.path, load_weights=False)  # a clear error for a truncated or foreign file
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options, providers=list(self.providers))
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._ort_version = ort.__version__

    def _deactivate(self) -> None:
        self.session = None

    def _input_spec(self) -> dict[str, TensorSpec]:
        return {
            i.name: TensorSpec(np.dtype(ORT_DTYPES.get(i.type, np.float32)), tuple(dim(d) for d in i.shape))
            for i in self.session.get_inputs()
        }

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        names = self._output_names
        return dict(zip(names, self.session.run(names, dict(feed))))  # one output per name (ORT)

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": self._ort_version}

    def settings(self) -> dict:
        return {"threads": self.threads or "default (physical cores)", "providers": list(self.providers)}
