"""PyTorch eager: the reference every other stage is compared with, and the latency baseline."""

from __future__ import annotations

import numpy as np
import torch

from .base import Feed, Runtime, TensorSpec


class TorchRuntime(Runtime):
    backend = "torch"

    def __init__(
        self,
        module: torch.nn.Module,
        input_shape: tuple[int, ...],
        *,
        input_name: str = "image",
        output_name: str = "logits",
        threads: int | None = None,
        name: str = "pytorch",
        output_names: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(name)
        self.module = module
        self.input_shape = tuple(input_shape)
        self.input_name, self.output_name = input_name, output_name
        # A module returning a tuple (a detector's scores, boxes, centerness) names each output in order.
        self.output_names = tuple(output_names) if output_names else (output_name,)
        self.threads = threads

    def _activate(self) -> None:
        self.module.eval()
        self._previous_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)

    def _deactivate(self) -> None:
        torch.set_num_threads(self._previous_threads)

    def _input_spec(self) -> dict[str, TensorSpec]:
        return {self.input_name: TensorSpec(np.dtype(np.float32), self.input_shape)}

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(feed[self.input_name])))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {n: o.numpy() for n, o in zip(self.output_names, outs, strict=True)}

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def settings(self) -> dict:
        return {"threads": torch.get_num_threads(), "mode": "eager, inference_mode"}
