"""One Runtime lifecycle for every backend (Polygraphy's runner pattern).

``activate()`` loads the model (heavy imports happen there), ``infer(feed)`` checks the feed against
``input_spec()`` and returns named numpy outputs, ``deactivate()`` frees it. Backends override only
``_activate``, ``_infer``, ``_deactivate`` and ``_input_spec``; the base class checks names, dtypes
and shapes, and records ``last_latency_s`` around ``_infer`` alone.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence  # typing, not collections.abc: subscripted at run time on Python 3.8
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

Feed = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class TensorSpec:
    dtype: np.dtype
    shape: tuple[int | None, ...]  # None: dynamic


class Runtime:
    """Base class. Use as a context manager: ``with OrtRuntime(path) as rt: rt.infer({"image": x})``."""

    backend = "base"
    precision = "fp32"
    device = "cpu"
    # What the latency of one infer() call includes, for the report.
    what_is_timed = "one infer() call: host numpy in, host numpy out (no device copies on CPU)"

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_active = False
        self.last_latency_s: float | None = None
        # Device-side time of the last infer(), where the backend measures one (TensorRT: CUDA events
        # around the enqueue); the latency protocol reports it next to the host-timed latency.
        self.last_device_ms: float | None = None
        self._spec: dict[str, TensorSpec] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def activate(self) -> Runtime:
        if self.is_active:
            raise ConfigError(f"Runtime {self.name!r} is already active; deactivate() it first.")
        self._activate()
        self.is_active = True
        self._spec = self._input_spec()
        return self

    def deactivate(self) -> None:
        if not self.is_active:
            return
        try:
            self._deactivate()
        finally:
            self.is_active = False
            self._spec = None

    def __enter__(self) -> Runtime:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- inference -----------------------------------------------------------------------------
    def input_spec(self) -> dict[str, TensorSpec]:
        self._require_active()
        return dict(self._spec or {})

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        self._require_active()
        self._check_feed(feed)
        start = time.perf_counter()
        out = self._infer(feed)
        self.last_latency_s = time.perf_counter() - start
        return out

    def infer_concurrently(self, feeds: Sequence[Feed], streams: int) -> float:
        """Run every feed with ``streams`` requests in flight; returns the wall time in seconds.

        The default uses one thread per stream (ONNX Runtime and PyTorch release the GIL inside
        inference); OpenVINO overrides it with its asynchronous infer-request queue.
        """
        self._require_active()
        for feed in feeds[:1]:
            self._check_feed(feed)
        start = time.perf_counter()
        if streams == 1:  # in the calling thread: no pool, and a backend's thread-bound state stays valid
            for feed in feeds:
                self._infer(feed)
        else:
            with ThreadPoolExecutor(max_workers=streams) as pool:
                list(pool.map(self._infer, feeds))
        return time.perf_counter() - start

    def versions(self) -> dict[str, str]:
        return {}

    def settings(self) -> dict:
        """Threads, streams, providers...: what the latency depends on besides the model."""
        return {}

    # -- checks --------------------------------------------------------------------------------
    def _require_active(self) -> None:
        if not self.is_active:
            raise ConfigError(
                f"Runtime {self.name!r} is not active. Use `with runtime:` or call activate() before infer()."
            )

    def _check_feed(self, feed: Feed) -> None:
        spec = self._spec or {}
        if set(feed) != set(spec):
            raise ConfigError(
                f"Runtime {self.name!r} takes inputs {sorted(spec)}, got {sorted(feed)}. Name the feed's arrays "
                "after the model's inputs."
            )
        for name, want in spec.items():
            x = feed[name]
            if x.dtype != want.dtype:
                raise ConfigError(
                    f"Input {name!r} of {self.name!r} must be {want.dtype}, got {x.dtype}. Convert with "
                    f"x.astype(np.{want.dtype})."
                )
            if len(x.shape) != len(want.shape) or any(
                w is not None and w != g
                for w, g in zip(want.shape, x.shape)  # lengths compared just before
            ):
                shown = tuple("?" if w is None else w for w in want.shape)
                raise ConfigError(
                    f"Input {name!r} of {self.name!r} must have shape {shown}, got {tuple(x.shape)}. "
                    "Resize to the exported input size, or export with --dynamic."
                )

    # -- backend hooks -------------------------------------------------------------------------
    def _activate(self) -> None:
        raise NotImplementedError

    def _input_spec(self) -> dict[str, TensorSpec]:
        raise NotImplementedError

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass


def dim(value) -> int | None:
    """A static dimension as int; symbolic or unknown ones as None."""
    return value if isinstance(value, int) and value > 0 else None


class StaticBatch(Runtime):
    """A model exported with a static batch of N (``--batch N``), fed one image at a time like every other row
    of the ledger: the image repeated N times, the first result kept. One call is one batch, so its latency is
    the batch's and ``images_per_call`` (N) is what the latency protocol counts in FPS."""

    def __init__(self, inner: Runtime, batch: int) -> None:
        super().__init__(inner.name)
        self.inner, self.images_per_call = inner, batch
        self.backend, self.precision, self.device = inner.backend, inner.precision, inner.device
        self.what_is_timed = f"{inner.what_is_timed}; a static batch of {batch} per call (FPS counts {batch} images)"

    def _activate(self) -> None:
        self.inner.activate()

    def _input_spec(self) -> dict[str, TensorSpec]:
        return {k: TensorSpec(v.dtype, (1, *v.shape[1:])) for k, v in self.inner.input_spec().items()}

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        out = self.inner._infer({k: np.repeat(v, self.images_per_call, axis=0) for k, v in feed.items()})
        return {k: v[:1] for k, v in out.items()}

    def _deactivate(self) -> None:
        self.inner.deactivate()

    def versions(self) -> dict[str, str]:
        return self.inner.versions()

    def settings(self) -> dict:
        return {**self.inner.settings(), "static_batch": self.images_per_call}
