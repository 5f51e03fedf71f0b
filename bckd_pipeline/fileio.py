"""Writing files safely and hashing them: standard library only (the device agent ships this file).

Every file the package writes for a reader (JSON, text, checkpoints, artifacts) goes through ``atomic_write``;
every digest is sha256: ``file_sha256`` of a file's bytes, ``array_sha256`` of an array's shape and values.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], None], *, mode: int | None = None) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``; the temp file is removed on failure.

    A crash mid-write never leaves a truncated file under the real name. A write that fails on a full disk
    raises ``OSError`` with ``errno.ENOSPC`` whatever the writer raised (torch's and onnx's writers have their
    own messages for it), so the command line can say so in one line. ``mode`` defaults to 0o666
    (less the umask), the mode of any new file: mkstemp's 0600 would surprise users of the artifact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, (0o666 if mode is None else mode) & ~umask)
        os.replace(tmp, path)
    except Exception as exc:
        full = _disk_full(exc, path.parent)
        Path(tmp).unlink(missing_ok=True)
        if full and not (isinstance(exc, OSError) and exc.errno in DISK_FULL):
            # A writer that reports a full disk in its own words (torch.save: "unexpected pos"): say it plainly.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
FULL_BELOW_BYTES = 1 << 20  # a write that fails with less than this left on its filesystem failed for space


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write failed because the disk (or the user's quota) is full."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return True
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False
    return st.f_bavail * st.f_frsize < FULL_BELOW_BYTES


def write_text(path: Path, text: str) -> None:
    """``atomic_write`` of a UTF-8 text file."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, payload: Any, *, indent: int = 2, default: Callable[[Any], Any] | None = None) -> None:
    """``atomic_write`` of ``payload`` as JSON ending in a newline; ``Path`` values are written as strings.

    ``default`` converts what JSON cannot hold (as ``json.dumps`` takes it); without one, anything but a
    path is an error, so a report never holds a silently stringified object.
    """
    text = json.dumps(payload, indent=indent, default=default or _path_as_text)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def _path_as_text(obj: Any) -> str:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def array_sha256(array: Any) -> str:
    """sha256 of an array's shape and values (C order): the same pixels from another file hash the same.

    Takes a numpy array or anything with ``shape`` and ``tobytes()``; no numpy import, for the device agent.
    """
    h = hashlib.sha256(str(tuple(array.shape)).encode())
    h.update(array.tobytes())
    return h.hexdigest()
