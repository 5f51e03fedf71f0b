"""What a user sees while the deployment stages work.

Every stage after training prints one line on stderr when it starts and one when it ends, with its
time and its headline figure (``stage parity [onnxruntime-cpu]: done in 3.1 s (onnxruntime-int8:
agreement 97.85 %, dmIoU +0.120)``); a stage the cache served says ``cached``. Long loops (parity over
the evaluation images, the timed latency runs, calibration) show a transient rich progress bar on
stderr, none with ``--no-progress`` or when stderr is not a terminal.

Standard library at import; rich only when a bar is drawn.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

PREFIX = "stage "  # every stage line starts so (tests tell them from the one error paragraph by it)


def say(text: str) -> None:
    print(f"{PREFIX}{text}", file=sys.stderr, flush=True)


@dataclass
class Step:
    """The running stage: set ``headline`` before it ends."""

    headline: str = ""


class Stages:
    """Start and end lines around each stage; ``cache`` (a StageCache) tells a cached stage from a run one."""

    def __init__(self, cache, *, bars: bool = True, target: str | None = None) -> None:
        self.cache, self.bars, self.target = cache, bars, target

    @contextmanager
    def stage(self, name: str, *, shared: bool = False) -> Iterator[Step]:
        label = name if shared or self.target is None else f"{name} [{self.target}]"
        hits, misses = self.cache.hits, self.cache.misses
        say(f"{label}: started")
        step, start = Step(), time.perf_counter()
        try:
            yield step
        except BaseException:
            say(f"{label}: failed after {time.perf_counter() - start:.1f} s")
            raise
        cached = self.cache.hits > hits and self.cache.misses == misses
        took = "cached" if cached else f"done in {time.perf_counter() - start:.1f} s"
        say(f"{label}: {took}" + (f" ({step.headline})" if step.headline else ""))

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Callable[[], None]]:
        """A progress bar over ``total`` items; yields the function that advances it by one."""
        if not self.bars or not sys.stderr.isatty() or total < 1:
            yield lambda: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda: progress.advance(task)


class Ticking:
    """A feed source that advances a progress bar as each feed is read (calibration)."""

    def __init__(self, feeds, tick: Callable[[], None]) -> None:
        self._feeds, self._tick = feeds, tick

    def __len__(self) -> int:
        return len(self._feeds)

    def __iter__(self):
        for feed in self._feeds:
            yield feed
            self._tick()

    def __getattr__(self, name):
        return getattr(self._feeds, name)


def library_bars(progress: bool):
    """A context where a library's own progress bars written to stdout (NNCF's rich bars), where the ledger
    goes, land on stderr with --progress, or nowhere with --no-progress."""
    import contextlib
    import io

    return contextlib.redirect_stdout(sys.stderr if progress else io.StringIO())
