"""Datasets for distillation and export: ``build_dataset("KIND:PATH", split)``.

``KIND`` is one of :data:`DATA_KINDS`; ``demo`` needs no PATH (``demo:SEED`` picks another scene set).
Nothing here downloads data: every kind but ``demo`` reads a dataset already on disk.
"""

from __future__ import annotations

from pathlib import Path

from bckd_pipeline.data.base import IGNORE_INDEX, DatasetInfo, Normalization, SegDataset, Transform
from bckd_pipeline.data.demo import DEMO_CLASSES, DemoDataset
from bckd_pipeline.data.layouts import LAYOUTS
from bckd_pipeline.data.transforms import EvalTransform, TrainTransform
from bckd_pipeline.errors import ConfigError, DataError, unknown_name

__all__ = [
    "DATA_KINDS",
    "IGNORE_INDEX",
    "DatasetInfo",
    "EvalTransform",
    "Normalization",
    "SegDataset",
    "TrainTransform",
    "build_dataset",
    "parse_data_spec",
]

DATA_KINDS: dict[str, str] = {
    "demo": "synthetic street scenes made in memory, demo[:SEED]; splits train/val; "
    f"{len(DEMO_CLASSES)} classes ({', '.join(DEMO_CLASSES)})",
    **{kind: layout.description for kind, layout in LAYOUTS.items()},
}

_SPEC_HINT = "Write --data KIND:PATH, e.g. 'camvid:/data/camvid', or 'demo' for the built-in synthetic set."


def parse_data_spec(spec: str) -> tuple[str, str]:
    """Split ``"KIND:PATH"`` into ``(kind, path)``; ``"demo"`` -> ``("demo", "")``, ``"demo:7"`` -> seed "7".

    Checks everything the string alone can tell: a known kind, a PATH where one is needed, an integer seed.
    """
    kind, _, rest = spec.strip().partition(":")
    kind = kind.lower()
    if kind not in DATA_KINDS:
        if not rest and ("/" in spec or "\\" in spec):
            raise ConfigError(f"Data spec {spec!r} looks like a path without a KIND. {_SPEC_HINT}")
        raise unknown_name("dataset kind", kind, DATA_KINDS, _SPEC_HINT)
    if kind == "demo":
        if rest and not rest.isdigit():
            raise ConfigError(f"The demo seed must be a non-negative integer, got {rest!r}. Use 'demo' or 'demo:7'.")
    elif not rest:
        raise ConfigError(f"Data kind {kind!r} needs the dataset's PATH: --data {kind}:PATH ({DATA_KINDS[kind]}).")
    return kind, rest


def build_dataset(
    spec: str,
    split: str,
    transform: Transform | None = None,
    *,
    demo_size: tuple[int, int] = (96, 128),
    demo_count: int | None = None,
) -> SegDataset:
    """The ``split`` of the dataset ``spec`` (``"KIND:PATH"``), with ``transform`` applied on indexing.

    ``demo_size`` (H, W) and ``demo_count`` (images in this split) apply to the demo kind only.
    """
    kind, path = parse_data_spec(spec)
    if kind == "demo":
        return DemoDataset(split, seed=int(path or 0), size=demo_size, count=demo_count, transform=transform)
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(
            f"Dataset folder {path!r} for kind {kind!r} does not exist. Expected layout: {DATA_KINDS[kind]}. "
            f"Fix the PATH in --data {kind}:PATH."
        )
    return LAYOUTS[kind].build(root, split, transform)
