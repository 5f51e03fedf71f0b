"""Command line: parses flags, resolves the preset, calls one stage function. Nothing else.

parser.py is every command and flag; each command group runs from its own module, imported only when
that command runs: train.py (models, train-teacher, distill, eval, run), deploy.py (deploy),
gate.py (gate), tools.py (targets, doctor, bench), predict.py (predict), ingest.py (ingest: a device result
made by hand read into a pending TensorRT run; ``main`` records each run's command for it). The console entry
point is ``bckd_pipeline.cli:main``.
"""

from __future__ import annotations

import sys

from ..errors import BckdError, ConfigError
from .parser import build_parser

__all__ = ["build_parser", "dispatch", "main"]


def _console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def dispatch(args) -> int:
    if args.command == "models":
        from .train import models

        return models()
    if args.command in ("targets", "doctor"):
        from .tools import targets

        return targets(args.command == "doctor")
    if args.command == "bench":
        from .tools import bench

        return bench(args, _console())
    if args.command == "predict":
        from .predict import predict

        return predict(args, _console())
    if args.command == "gate":
        from .gate import gate_report

        return gate_report(args, args.report)
    if args.command == "ingest":
        from .ingest import ingest

        return ingest(args, replay=_replay)
    from .train import command

    return command(args, _console())


def _replay(args) -> int:
    """Run a recorded command again (``ingest``): the same device split and dispatch as ``main``."""
    _split_device(args)
    return dispatch(args)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def _message(exc: BckdError) -> str:
    """The error's own message; one re-raised from a DataLoader worker carries the worker's
    traceback, so keep only its last line (the original message)."""
    text = str(exc)
    if "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def _split_device(args) -> None:
    """``--device`` names where work runs: cpu/cuda for training, ssh://... for a TensorRT target's engine."""
    if not hasattr(args, "device"):
        return
    given = args.device or []
    remote = [d for d in given if "://" in d]
    local = [d for d in given if "://" not in d]
    if len(remote) > 1:
        raise ConfigError(f"--device names one deployment device; got {', '.join(remote)}. Keep one.")
    args.target_device = remote[0] if remote else None
    args.device = local[-1] if local else ("cuda" if _cuda() else "cpu")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    try:
        _split_device(args)
        code = dispatch(args)
        if args.command in ("run", "deploy") and not args.dry_run:
            from .ingest import record_command

            record_command(argv, args.out)  # what `ingest` replays once the device result is in
        return code
    except BckdError as exc:
        print(f"error: {_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; partial files were not written.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bckd-pipeline targets | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
