"""The latency protocol, the same for every backend (PyTorch eager included, as the baseline).

Latency mode (one request at a time): warm up for at least ``warmup_runs`` calls *and*
``warmup_s`` seconds (neither is timed), then ``runs`` timed calls of ``Runtime.infer``, each
timed with ``time.perf_counter`` around the backend call alone (the base class does it; on a GPU
the backend synchronises inside). A backend that measures its own device time (TensorRT: CUDA
events around the enqueue) adds ``device_ms`` {p50, mean}. Reported: p50/p90/p99, mean, std, min in milliseconds, and
FPS = batch / mean, and ``samples_ms``: every timed run in order, so a CI gate can judge medians
against their own noise (gate/noise.py). Throughput mode: ``streams`` requests in flight (threads for ONNX Runtime and
PyTorch, the async infer-request queue for OpenVINO), FPS = images / wall time.

With ``postprocess`` (a detector: the host's decoding and NMS, ``Task.prediction_of`` of the outputs), each timed
run also times that call on the run's outputs, right after it and by the same clock: ``postprocess_ms`` and
``end_to_end_ms`` (network + post-processing of the same run) give {p50, p90, p99, mean}; the network's own
figures stay the top-level p50/p90/p99.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError
from ..machine import host_facts
from ..targets.profiles import LatencySpec
from ..runtimes.base import Feed, Runtime

MODES = ("latency", "throughput")
DEFAULT_LATENCY = LatencySpec()


@dataclass(frozen=True)
class LatencyReport:
    mode: str
    batch: int
    runs: int
    warmup_runs: int
    warmup_s: float
    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None
    std: float | None
    min: float | None
    fps: float
    streams: int
    precision: str
    backend: str
    settings: dict
    versions: dict
    host: dict
    what_is_timed: str
    # Every timed run (ms), in order; empty in throughput mode, where requests overlap.
    samples_ms: tuple[float, ...] = ()
    # The backend's own device time per run (Runtime.last_device_ms: p50 and mean), where it measures one.
    device_ms: dict | None = None
    # With a host post-processing step (detection's decoding and NMS): its time per run, and network + it.
    postprocess_ms: dict | None = None
    end_to_end_ms: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def latency_ms(self) -> dict[str, float | None]:
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "mean": self.mean}


def _batch(feeds: Sequence[Feed]) -> int:
    first = next(iter(feeds[0].values()))
    return int(first.shape[0]) if first.ndim else 1


def benchmark(
    runtime: Runtime,
    feeds: Sequence[Feed],
    spec: LatencySpec = DEFAULT_LATENCY,
    *,
    mode: str = "latency",
    tick=None,  # called after each timed run in latency mode (a progress bar)
    postprocess: Callable[[dict, Feed], object] | None = None,  # (outputs, feed) -> prediction, timed per run
) -> LatencyReport:
    if mode not in MODES:
        raise ConfigError(f"Benchmark mode {mode!r} is not allowed. Allowed: {', '.join(MODES)}.")
    if not feeds:
        raise ConfigError("The benchmark needs at least one input; the feed source was empty.")
    if spec.runs < 1 or spec.warmup_runs < 0:
        raise ConfigError(f"Benchmark runs must be >= 1 and warm-up runs >= 0, got {spec.runs} and {spec.warmup_runs}.")
    feeds = list(feeds)
    cycle = itertools.cycle(feeds)
    start, done = time.perf_counter(), 0
    while done < spec.warmup_runs or time.perf_counter() - start < spec.warmup_s:
        runtime.infer(next(cycle))
        done += 1
    batch = getattr(runtime, "images_per_call", None) or _batch(feeds)  # runtimes/base.py::StaticBatch
    common = dict(
        batch=batch,
        runs=spec.runs,
        warmup_runs=done,
        warmup_s=spec.warmup_s,
        precision=runtime.precision,
        backend=runtime.backend,
        settings=runtime.settings(),
        versions=runtime.versions(),
        host=host_facts(),
        what_is_timed=runtime.what_is_timed,
    )
    if mode == "latency":
        times, device, post = [], [], []
        for _ in range(spec.runs):
            feed = next(cycle)
            outputs = runtime.infer(feed)
            times.append(runtime.last_latency_s * 1000.0)
            device.append(runtime.last_device_ms)
            if postprocess is not None:
                t0 = time.perf_counter()
                postprocess(outputs, feed)
                post.append((time.perf_counter() - t0) * 1000.0)
            if tick is not None:
                tick()
        t = np.asarray(times)
        d = None if None in device else np.asarray(device)
        mean = float(t.mean())
        return LatencyReport(
            mode=mode,
            p50=float(np.percentile(t, 50)),
            p90=float(np.percentile(t, 90)),
            p99=float(np.percentile(t, 99)),
            mean=mean,
            std=float(t.std()),
            min=float(t.min()),
            fps=batch * 1000.0 / mean,
            streams=1,
            samples_ms=tuple(float(v) for v in times),
            device_ms=None if d is None else {"p50": float(np.percentile(d, 50)), "mean": float(d.mean())},
            postprocess_ms=_summary(post) if post else None,
            end_to_end_ms=_summary(np.asarray(post) + t) if post else None,
            **common,
        )
    requests = [next(cycle) for _ in range(spec.runs)]
    wall = runtime.infer_concurrently(requests, spec.streams)
    return LatencyReport(
        mode=mode,
        p50=None,
        p90=None,
        p99=None,
        mean=None,
        std=None,
        min=None,
        fps=batch * spec.runs / wall,
        streams=spec.streams,
        **common,
    )


def _summary(ms) -> dict[str, float]:
    v = np.asarray(ms, np.float64)
    quantiles = {k: float(np.percentile(v, q)) for k, q in (("p50", 50), ("p90", 90), ("p99", 99))}
    return {**quantiles, "mean": float(v.mean())}


def synthetic_feeds(spec: dict, count: int = 4, seed: int = 0, *, shapes: dict | None = None) -> list[dict]:
    """Uniform 0..255 inputs of the model's static shape, or of ``shapes`` (input name -> shape); without
    them, dynamic dims become 1 for batch and 256 otherwise.

    Latency of these CNNs does not depend on pixel values; accuracy is never measured on them.
    """
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for name, t in spec.items():
            shape = tuple((1 if i == 0 else 256) if d is None else d for i, d in enumerate(t.shape))
            shape = tuple((shapes or {}).get(name, shape))
            feed[name] = (rng.random(shape) * 255).astype(t.dtype)
        feeds.append(feed)
    return feeds
