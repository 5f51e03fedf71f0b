"""Graph simplification (onnxsim by default, onnxslim as the alternative), checked on real inputs.

A simplifier that fails, or whose graph computes something else, fails the stage loudly; with
``allow_unsimplified`` the unsimplified graph is copied through instead and the report says so.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import BackendMissingError, ConfigError, StageCheckError
from ..fileio import atomic_write
from ..onnxfile import load_onnx
from .check import CheckReport, Feed, compare, require
from .onnx_export import EXPORT_ATOL, check_onnx

SIMPLIFIERS = ("onnxsim", "onnxslim")


def _run_simplifier(model, tool: str):
    if tool == "onnxsim":
        try:
            import onnxsim
        except ImportError:
            raise BackendMissingError(
                "onnxsim is not installed (pip install onnxsim), or pass --simplifier onnxslim."
            ) from None
        # check_n=0: our own check below runs on real images instead of onnxsim's random ones.
        simplified, ok = onnxsim.simplify(model, check_n=0)
        if not ok:
            raise StageCheckError("onnxsim reported that its simplified graph failed its own validation.")
        return simplified
    if tool == "onnxslim":
        try:
            import onnxslim
        except ImportError:
            raise BackendMissingError(
                'onnxslim is not installed: pip install "bckd-pipeline[onnxslim]", or use --simplifier onnxsim.'
            ) from None
        return onnxslim.slim(model)
    raise ConfigError(f"--simplifier {tool!r} is not allowed. Allowed: {', '.join(SIMPLIFIERS)}.")


def simplify(
    source: Path,
    path: Path,
    check_feeds: Iterable[Feed],
    *,
    tool: str = "onnxsim",
    allow_unsimplified: bool = False,
    rtol: Mapping[str, float] | None = None,
) -> tuple[Path, CheckReport | None, dict]:
    """Simplify ``source`` into ``path``; returns the path, the ORT check against ``source`` (``rtol``: the task's
    relative tolerances per output, export/check.py ``compare``) and node counts."""
    import onnx

    from ..runtimes.onnxruntime import OrtRuntime

    if tool not in SIMPLIFIERS:
        raise ConfigError(f"--simplifier {tool!r} is not allowed. Allowed: {', '.join(SIMPLIFIERS)}.")
    model = load_onnx(source)
    before = len(model.graph.node)
    try:
        simplified = _run_simplifier(model, tool)
    except (BackendMissingError, ConfigError):
        raise  # a missing package or a wrong name is a setup problem, never "simplification failed"
    except StageCheckError:
        if not allow_unsimplified:
            raise
        simplified = None
    except Exception as exc:  # noqa: BLE001 - a crash inside the simplifier is the stage failing
        if not allow_unsimplified:
            raise StageCheckError(
                f"{tool} failed on {str(source)!r}: {type(exc).__name__}: {str(exc)[:300]}. Try --simplifier "
                f"{'onnxslim' if tool == 'onnxsim' else 'onnxsim'}, or pass --allow-unsimplified to deploy the "
                "exported graph as it is."
            ) from None
        simplified = None
    if simplified is None:
        atomic_write(path, lambda tmp: shutil.copyfile(source, tmp))
        return Path(path), None, {"tool": tool, "applied": False, "nodes_before": before, "nodes_after": before}

    def write(tmp: Path) -> None:
        onnx.save(simplified, str(tmp))
        check_onnx(tmp)

    atomic_write(path, write)
    try:
        with OrtRuntime(source) as ref, OrtRuntime(path) as cand:
            report = compare(
                "simplify", "exported ONNX", ref.infer, cand.infer, check_feeds, atol=EXPORT_ATOL, rtol=rtol
            )
        require(
            report,
            f"The {tool} rewrite is wrong for this model: try --simplifier "
            f"{'onnxslim' if tool == 'onnxsim' else 'onnxsim'} or --allow-unsimplified.",
        )
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    after = len(simplified.graph.node)
    return Path(path), report, {"tool": tool, "applied": True, "nodes_before": before, "nodes_after": after}
