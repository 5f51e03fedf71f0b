"""The device's predictions (label maps, detection rows), replayed as a Runtime so the parity ledger judges the
device row like any other."""

from __future__ import annotations

import numpy as np

from ..context import DeviceOutcome
from ..errors import StageCheckError
from ..fileio import array_sha256
from ..runtimes.base import Feed, Runtime, TensorSpec
from ..tasks import Task
from ..tasks.segmentation import SEGMENTATION


class ReplayRuntime(Runtime):
    """The device's predictions, replayed for the parity ledger: infer(feed) returns the device's answer as the
    named outputs ``task`` reads back (``Task.replayed_outputs``).

    Looked up by the digest of the preprocessed input, so an image the device never saw is an error,
    not a silently wrong row.
    """

    what_is_timed = "not timed here: the device's latency comes from its own run of the protocol"

    def __init__(
        self,
        outcome: DeviceOutcome,
        input_shape: tuple[int, ...],
        input_name: str = "image",
        task: Task = SEGMENTATION,
    ) -> None:
        super().__init__(outcome.result["row"])
        self.task = task
        self.backend = outcome.result["backend"]
        self.precision = outcome.result["precision"]
        self.outcome = outcome
        self.input_shape = tuple(input_shape)
        self.input_name = input_name

    def _activate(self) -> None:
        labels = self.outcome.labels()
        self._by_digest = dict(zip(self.outcome.result["digests"], labels, strict=True))

    def _input_spec(self) -> dict[str, TensorSpec]:
        return {self.input_name: TensorSpec(np.dtype(np.float32), self.input_shape)}

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        digest = array_sha256(feed[self.input_name])
        if digest not in self._by_digest:
            raise StageCheckError(f"The device returned no output for this input (digest {digest[:12]}).")
        return self.task.replayed_outputs(self._by_digest[digest])
