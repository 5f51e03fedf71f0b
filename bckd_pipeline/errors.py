"""One error hierarchy for every user-facing failure.

The CLI catches :class:`BckdError` and prints its message without a traceback: these are mistakes
the user can fix, and the message says how. Anything else is a bug and keeps its traceback.
Messages follow one template: what was given, what is allowed, how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


# The exit code of an exception that is not a BckdError: a bug, never a verdict on the model. BSD's sysexits.h
# EX_SOFTWARE ("internal software error"); Python's own code for an uncaught exception, 1, is the parity failure's.
EXIT_CRASH = 70


class BckdError(Exception):
    """Base class of every error the user can act on."""

    exit_code = 2


class ConfigError(BckdError):
    """A flag, preset, model name or option that is not allowed."""


class DataError(BckdError):
    """A dataset that is missing, malformed, or inconsistent with the model."""


class CheckpointError(BckdError):
    """A checkpoint that is missing, unreadable, or made for another model."""


class FeatureTapError(ConfigError):
    """A feature tap names a module the model does not have, or it produced no tensor."""


class NonFiniteLossError(BckdError):
    """Training produced NaN or Inf; the last good checkpoint is kept."""

    exit_code = 1


def did_you_mean(given: str, allowed: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest allowed name, or ''."""
    close = difflib.get_close_matches(given, list(allowed), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_name(kind: str, given: str, allowed: Iterable[str], how_to_fix: str = "") -> ConfigError:
    """Build the standard 'unknown X' error: what was given, what is allowed, how to fix."""
    allowed = sorted(allowed)
    msg = f"Unknown {kind} {given!r}. Allowed: {', '.join(allowed)}.{did_you_mean(given, allowed)}"
    if how_to_fix:
        msg += f" {how_to_fix}"
    return ConfigError(msg)


class ExportError(BckdError):
    """A model that cannot be exported, or an ONNX file that is corrupt, truncated or not ONNX."""


class StageCheckError(BckdError):
    """A stage's output does not match the artifact it was made from (export, simplify, parity).

    Not a usage error: the inputs were valid, but a rewrite changed the numbers. Exit code 1.
    """

    exit_code = 1


class BackendMissingError(ConfigError):
    """An optional backend (openvino, nncf, tensorrt, onnxslim) is not installed."""
