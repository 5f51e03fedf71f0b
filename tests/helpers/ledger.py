"""A segmentation ledger of fixed numbers, shared by the task and parity tests: runtimes around numpy
functions, and four stages on five seeded images."""

from __future__ import annotations

import numpy as np

from bckd_pipeline.data.feeds import DatasetFeeds
from bckd_pipeline.deploy.parity import LedgerStage
from bckd_pipeline.runtimes.base import Runtime, TensorSpec
from bckd_pipeline.targets.profiles import FLOAT_PARITY, INT8_PARITY

C, H, W, N = 4, 6, 8, 5


class FnRuntime(Runtime):
    """A Runtime around a numpy function of the image batch: its one output named ``output``, or, with
    ``output=None``, the function's own dict of named outputs."""

    backend = "fake"

    def __init__(self, fn, name: str, *, shape: tuple[int, ...] = (1, 3, H, W), output: str | None = "logits"):
        super().__init__(name)
        self.fn, self.shape, self.output = fn, shape, output

    def _activate(self) -> None:
        pass

    def _input_spec(self):
        return {"image": TensorSpec(np.dtype(np.float32), self.shape)}

    def _infer(self, feed):
        out = self.fn(feed["image"])
        return out if self.output is None else {self.output: out}


def fixed_stages() -> tuple[list[LedgerStage], DatasetFeeds]:
    """Four stages on five seeded images: float logits, a float copy, a noisy "int8" and its label head."""
    rng = np.random.default_rng(7)
    images = [rng.normal(size=(1, 3, H, W)).astype(np.float32) for _ in range(N)]
    labels = [rng.integers(0, C, size=(H, W)).astype(np.int64) for _ in range(N)]
    for lab in labels:
        lab[0, :2] = 255
    weights = rng.normal(size=(C, 3)).astype(np.float32)

    def logits(x):
        return np.einsum("cd,ndhw->nchw", weights, x).astype(np.float32)

    def noisy(x):
        y = logits(x)
        return (y + 0.35 * np.sin(7 * y)).astype(np.float32)

    feeds = DatasetFeeds(images, labels, [f"i{i}" for i in range(N)], [str(i) for i in range(N)], "val")
    stages = [
        LedgerStage("pytorch", "torch", "fp32", FnRuntime(logits, "pytorch"), None),
        LedgerStage(
            "onnx", "onnxruntime", "fp32", FnRuntime(lambda x: logits(x) + np.float32(1e-4), "onnx"), "pytorch"
        ),
        LedgerStage("int8", "onnxruntime", "int8", FnRuntime(noisy, "int8"), "onnx"),
        LedgerStage(
            "labels", "onnxruntime", "int8", FnRuntime(lambda x: noisy(x).argmax(1).astype(np.uint8), "labels"), "int8"
        ),
    ]
    for s in stages:
        s.runtime.activate()
    return stages, feeds


CRITERIA = {"fp32": FLOAT_PARITY, "int8": INT8_PARITY}
