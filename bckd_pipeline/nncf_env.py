"""NNCF as the pipeline imports it: its log on stderr, no CUDA notice on a CPU host, and its torch extension built.

- NNCF's logger writes to stdout, where the ledger goes: its handlers are pointed at stderr.
- Importing NNCF imports ``torch.utils.cpp_extension``, which logs "No CUDA runtime is found, using
  CUDA_HOME=..." on a host without a GPU: that one message, and no other, is dropped.
- NNCF's torch backend (``--qat``) compiles a C++ extension on its first use and gives up after
  ``NNCF_EXTENSION_LOAD_TIMEOUT`` seconds (NNCF's default, 60 s, is too short on a busy 2-core host; 0 means no
  limit). Unless the user set it, the limit here is :data:`EXTENSION_TIMEOUT_S`. The build is cached per torch
  version (under ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), so later uses load it in
  a second; ``python -m bckd_pipeline.nncf_env`` builds it ahead (.ci/run does after installing). A host without
  a compiler does not fail: NNCF falls back to its slower torch implementation and warns.

Standard library at import; nncf and torch inside functions only.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from .errors import BckdError

TIMEOUT_VAR = "NNCF_EXTENSION_LOAD_TIMEOUT"  # NNCF's own variable (nncf/torch/extensions/__init__.py)
EXTENSION_TIMEOUT_S = 900  # room for a cold build on a host whose cores other jobs keep busy
# torch's build lock (cpp_extension's FileBaton): a loader killed while holding it leaves the file behind, and
# every later loader waits on it until its time limit. No live loader holds it longer than that limit.
LOCK_FILE = "lock"
STALE_LOCK_S = EXTENSION_TIMEOUT_S
CUDA_HOME_NOTICE = "No CUDA runtime is found"  # torch/utils/cpp_extension.py, logged on import without a GPU


class ExtensionBuildError(BckdError):
    """NNCF's torch extension could not be built and loaded in time."""


class _Stderr:
    """The current ``sys.stderr`` at each write (a test's capture, a redirect), not the one at import."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _not_cuda_home_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(CUDA_HOME_NOTICE)


def prepare() -> None:
    """Before ``import nncf``: the extension's time limit and the CUDA notice's filter (both idempotent)."""
    os.environ.setdefault(TIMEOUT_VAR, str(EXTENSION_TIMEOUT_S))
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    if _not_cuda_home_notice not in cpp_log.filters:
        cpp_log.addFilter(_not_cuda_home_notice)


def logs_to_stderr() -> None:
    """After ``import nncf``: its log handlers write to stderr, warnings and errors only (its INFO lines list every
    operation an ignored scope leaves unquantized, one line each)."""
    logging.getLogger("nncf").setLevel(logging.WARNING)
    for handler in logging.getLogger("nncf").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.__stdout__):
            handler.setStream(_Stderr())


def load_torch_extension() -> None:
    """Build (on first use) and load NNCF's CPU quantizer extension, or raise :class:`ExtensionBuildError`."""
    from nncf.torch.extensions import ExtensionLoaderTimeoutException
    from nncf.torch.quantization.extensions import QuantizedFunctionsCPU, QuantizedFunctionsCPULoader

    clear_stale_lock(Path(QuantizedFunctionsCPULoader.get_build_dir()))
    try:
        QuantizedFunctionsCPU.get("Quantize_forward")
    except ExtensionLoaderTimeoutException:
        raise ExtensionBuildError(
            timeout_message(os.environ.get(TIMEOUT_VAR, ""), QuantizedFunctionsCPULoader.get_build_dir())
        ) from None


def clear_stale_lock(build_dir: Path, now: float | None = None) -> bool:
    """Remove torch's build lock in ``build_dir`` when it is older than :data:`STALE_LOCK_S` (its holder was
    killed: a live one gives up sooner); True when one was removed, which stderr says."""
    lock = build_dir / LOCK_FILE
    try:
        age = (time.time() if now is None else now) - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age <= STALE_LOCK_S:
        return False
    try:
        lock.unlink(missing_ok=True)
    except OSError as exc:  # a shared extensions folder this user cannot write
        print(f"warning: a stale build lock of NNCF's extension ({lock}) could not be removed: {exc}", file=sys.stderr)
        return False
    print(f"warning: removed a stale build lock of NNCF's extension ({lock}, {age:.0f} s old)", file=sys.stderr)
    return True


def timeout_message(limit: str, build_dir: str) -> str:
    return (
        f"NNCF's quantizer extension (C++ that NNCF compiles for --qat on its first use) was not built and loaded "
        f"within {TIMEOUT_VAR}={limit} seconds. On a busy or slow machine, allow more time ({TIMEOUT_VAR}=1800, "
        f"or 0 for no limit), or build it once ahead with `python -m bckd_pipeline.nncf_env`. If an earlier build "
        f"was killed, its lock file stops every later one: remove {build_dir} and try again. Or run with --qat off."
    )


def main() -> int:
    """Build NNCF's torch extension once, with no time limit unless one is set (.ci/run runs this)."""
    os.environ.setdefault(TIMEOUT_VAR, "0")
    prepare()
    try:
        import nncf  # noqa: F401
    except ImportError:
        print("nncf is not installed: no extension to build (--qat needs it)", file=sys.stderr)
        return 0
    logs_to_stderr()
    try:
        load_torch_extension()
    except BckdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print("NNCF's torch extension is built and loads", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
