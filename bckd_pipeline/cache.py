"""Content-addressed stage cache: a rerun redoes only the stages whose inputs changed.

Each finished stage leaves ``OUT/.cache/<stage>.json`` holding its key (a hash of its options and of
the bytes of its input artifacts) and the sha256 of every file it produced. A stage is skipped when
the key matches, every output still has the recorded hash and the record still has its own digest (a result
altered on disk is redone, never reported); a stage interrupted midway left no record (records are written
after the outputs are in place), so it simply runs again.

``claim_out_dir`` guards the folder the cache lives in: ``--out`` is new, empty, or this run's own
(``OUT/run.json`` says whose it is).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path

from .errors import DataError
from .fileio import atomic_write, file_sha256, write_text
from .outlock import holds_other_files

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
        self.hits = self.misses = 0  # lookups served and not (progress.py says "cached" from them)

    def _record(self, stage: str) -> Path:
        return self.folder / f"{stage}.json"

    def lookup(self, stage: str, key: str) -> dict | None:
        """The stage's saved result when its key matches and its outputs are intact, else None."""
        found = self._lookup(stage, key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def _lookup(self, stage: str, key: str) -> dict | None:
        path = self._record(stage)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if record.get("key") != key or record.get("digest") != _record_digest(record):
            return None  # another stage's inputs, or a record altered since it was written (a flipped figure)
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
        record["digest"] = _record_digest(record)
        text = json.dumps(record, indent=1)
        atomic_write(self._record(stage), lambda tmp: tmp.write_text(text))


def _record_digest(record: dict) -> str:
    """sha256 of a record's key, outputs and result: a figure altered on disk no longer matches its record."""
    body = {k: record.get(k) for k in ("key", "outputs", "result")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


RUN_MARKER = "run.json"
RUN_FORMAT = "bckd-pipeline/run-v1"


def claim_out_dir(out: Path, identity: dict, *, force: bool) -> Path:
    """Create ``--out`` or reuse it for the same run; refuse a folder of foreign files or another run's."""
    out = check_out_dir(out, identity, force=force)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / RUN_MARKER, json.dumps({"format": RUN_FORMAT, "identity": identity}, indent=2) + "\n")
    return out


def check_out_dir(out: Path, identity: dict, *, force: bool) -> Path:
    """What ``claim_out_dir`` refuses, without writing anything: ``--dry-run`` checks it too."""
    import os

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {str(out)!r} is a file. Pass a folder path (it is created if missing).")
    existing = next((p for p in (out, *out.absolute().parents) if p.exists()), None)
    if existing is not None and (not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK)):
        raise DataError(
            f"--out {str(out)!r} cannot be written: {str(existing)!r} is "
            + ("not a folder" if not existing.is_dir() else "not writable by this user")
            + ". Pick an --out folder you can write to."
        )
    marker = out / RUN_MARKER
    if out.is_dir() and holds_other_files(out) and not force:
        try:
            previous = json.loads(marker.read_text())
        except (OSError, ValueError):
            previous = None
        if previous is None or previous.get("format") != RUN_FORMAT:
            raise DataError(
                f"--out {str(out)!r} already holds files that bckd-pipeline run/deploy did not write. Choose an "
                "empty or new folder, or pass --force to write into it anyway."
            )
        if previous.get("identity") != identity:
            before = previous.get("identity") or {}
            diff = ", ".join(
                f"{k}: {_shown(before.get(k))} -> {_shown(identity.get(k))}"
                for k in dict.fromkeys([*identity, *before])
                if before.get(k) != identity.get(k)
            )
            raise DataError(
                f"--out {str(out)!r} holds another run ({diff}). Use a new --out, or pass --force to replace its "
                "stages."
            )
    return out


def _shown(value) -> str:
    """A run identity's value in a message: ``not set`` where the run had none (never Python's ``None``)."""
    return "not set" if value is None else repr(value)
