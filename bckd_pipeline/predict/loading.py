"""``load``: a run folder or an artifact file -> the Python API of its task (``Segmenter`` for segmentation,
``Detector`` for detection), as ``bckd-pipeline predict`` runs it.

    from bckd_pipeline import load

    model = load("runs/demo")                    # a Segmenter or a Detector, by the artifact's task
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from .detector import Detector
from .predictor import Predictor, open_artifact
from .segmenter import Segmenter

APIS: dict[str, type[Predictor]] = {Segmenter.task_name: Segmenter, Detector.task_name: Detector}


def load(
    model: str | Path,
    *,
    target: str | None = None,
    letterbox: bool = False,
    batch: int | None = None,
    input_size: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    threads: int | None = None,
    score_threshold: float | None = None,
) -> Predictor:
    """The API of the artifact's task over ``model``; the options are those of ``Segmenter.load`` and
    ``Detector.load`` (``score_threshold``: detection only)."""
    opened = open_artifact(model, target=target, mean=mean, std=std, classes=classes, threads=threads)
    api = APIS.get(opened.task)
    if api is None:
        raise ConfigError(
            f"{str(opened.artifact.path)!r} is a {opened.task} model; predict runs {', '.join(APIS)} models."
        )
    return api.build(opened, letterbox=letterbox, batch=batch, input_size=input_size, score_threshold=score_threshold)
