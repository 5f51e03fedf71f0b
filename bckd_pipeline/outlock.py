"""One writer per output folder: ``run``, ``deploy`` and ``predict`` hold a lock on their ``--out``.

The lock is ``OUT/.bckd-pipeline.lock``, taken with ``fcntl.flock``; the file holds who took it (pid, host,
start time, command) so that a refused second command can say which process writes there and since when.
The operating system drops a flock when its process ends, however it ends, so a killed run never leaves the
folder locked: a stale file is only a file, and the next command takes the lock over it. A second command
is refused at once (exit 2) rather than made to wait: two runs meant for one folder are a mistake to show,
not a queue. Where ``fcntl`` is missing (Windows) the folder is not locked.

Standard library only.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import BckdError

LOCK_FILE = ".bckd-pipeline.lock"
LOCKED_COMMANDS = ("run", "deploy", "predict")


class OutInUseError(BckdError):
    """Another process writes into the same ``--out`` folder."""


def holds_other_files(out: Path) -> bool:
    """Whether ``out`` holds anything besides the lock file (the out-folder checks look past the lock)."""
    return any(p.name != LOCK_FILE for p in Path(out).iterdir())


@contextmanager
def locked_out(args) -> Iterator[None]:
    """The command's ``--out`` locked while it runs; nothing for other commands and for ``--dry-run``."""
    out = getattr(args, "out", None)
    if args.command not in LOCKED_COMMANDS or out is None or getattr(args, "dry_run", False):
        yield
        return
    with out_lock(Path(out), " ".join(["bckd-pipeline", *sys.argv[1:]]) or args.command):
        yield


@contextmanager
def out_lock(out: Path, command: str) -> Iterator[None]:
    """Hold ``out``'s lock; raise :class:`OutInUseError` when another process holds it.

    A folder that cannot be created or written is not locked here: the command's own checks refuse it with
    their message.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    created = [p for p in (out, *out.absolute().parents) if not p.exists()]  # out first, then its new parents
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = _take(out / LOCK_FILE, fcntl)
    except OSError:  # a file, not writable, a read-only disk: the command's own checks say so
        fd = None
    if fd is None:
        yield
        return
    try:
        _describe(fd, command)
        yield
    finally:
        try:
            (out / LOCK_FILE).unlink(missing_ok=True)  # still held: nobody can lock the name in between
            for folder in created:  # the command wrote nothing there: leave no empty folders behind
                folder.rmdir()
        except OSError:  # not empty: the command's output
            pass
        os.close(fd)  # releases the lock


def _take(path: Path, fcntl) -> int:
    """Open and lock ``path``; retry when the file was replaced between the open and the lock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutInUseError(_refusal(path.parent, holder)) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:  # the previous holder removed the file as it finished
            same = False
        if same:
            return fd
        os.close(fd)


def _describe(fd: int, command: str) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": command,
    }
    data = (json.dumps(info) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _refusal(out: Path, holder: dict) -> str:
    who = f"process {holder['pid']}" if "pid" in holder else "another process"
    if holder.get("host"):
        who += f" on {holder['host']}"
    since = f" since {holder['started']}" if holder.get("started") else ""
    what = f" ({holder['command']})" if holder.get("command") else ""
    return (
        f"--out {str(out)!r} is in use: {who} writes there{since}{what}. Two commands writing one folder would "
        "overwrite each other's files. Wait for it to finish, or pass another --out."
    )
