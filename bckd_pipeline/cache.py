"""Content-addressed stage cache: a rerun redoes only the stages whose inputs changed.

Each finished stage leaves ``OUT/.cache/<stage>.json`` holding its key (a hash of its options and of
the bytes of its input artifacts) and the sha256 of every file it produced. A stage is skipped when
the key matches and every output still has the recorded hash; a stage interrupted midway left no
record (records are written after the outputs are in place), so it simply runs again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path

from .fileio import atomic_write, file_sha256

__all__ = ["StageCache", "file_sha256", "stage_key"]

# Bumped whenever what a stage records changes (per-image confusions, every timed run, ...): every
# record made by older code is then redone once, without each stage carrying its own marker.
CACHE_FORMAT = 2


def _plain(obj):
    if is_dataclass(obj):
        return _plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def stage_key(stage: str, options, inputs: list[Path] = ()) -> str:
    """sha256 over the stage name, its options (any dataclass/dict) and the bytes of its input files."""
    from . import __version__

    payload = json.dumps(
        {"stage": stage, "version": __version__, "format": CACHE_FORMAT, "options": _plain(options)}, sort_keys=True
    )
    h = hashlib.sha256(payload.encode())
    for p in inputs:
        h.update(file_sha256(p).encode())
    return h.hexdigest()


class StageCache:
    def __init__(self, out: Path) -> None:
        self.folder = Path(out) / ".cache"

    def _record(self, stage: str) -> Path:
        return self.folder / f"{stage}.json"

    def lookup(self, stage: str, key: str) -> dict | None:
        """The stage's saved result when its key matches and its outputs are intact, else None."""
        path = self._record(stage)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if record.get("key") != key:
            return None
        for rel, digest in record.get("outputs", {}).items():
            f = self.folder.parent / rel
            if not f.is_file() or file_sha256(f) != digest:
                return None
        return record.get("result", {})

    def store(self, stage: str, key: str, outputs: list[Path], result: dict) -> None:
        root = self.folder.parent
        record = {
            "key": key,
            "outputs": {str(Path(p).relative_to(root)): file_sha256(p) for p in outputs},
            "result": _plain(result),
        }
        text = json.dumps(record, indent=1)
        atomic_write(self._record(stage), lambda tmp: tmp.write_text(text))
