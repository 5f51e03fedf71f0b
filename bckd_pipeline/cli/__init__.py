"""Command line: parses flags, resolves the preset, calls one stage function. Nothing else.

parser.py is every command and flag; each command group runs from its own module, imported only when
that command runs: train.py (models, train-teacher, distill, eval, run), deploy.py (deploy),
gate.py (gate), tools.py (targets, doctor, bench), predict.py (predict), ingest.py (ingest: a device result
made by hand read into a pending TensorRT run; ``main`` records each run's command for it). The console entry
point is ``bckd_pipeline.cli:main``.
"""

from __future__ import annotations

import errno
import sys

from ..errors import EXIT_CRASH, BckdError, ConfigError
from .parser import build_parser

__all__ = ["build_parser", "dispatch", "main"]


def _console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def dispatch(args) -> int:
    from ..outlock import locked_out

    with locked_out(args):  # run, deploy and predict: one writer per --out
        return _dispatch(args)


def _dispatch(args) -> int:
    if args.command == "models":
        from .train import models

        return models()
    if args.command == "taps":
        from .train import taps

        return taps(args)
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
    """``--train-device`` is where training runs (cpu/cuda), ``--device`` where a TensorRT target's engine is built
    (ssh://...); the commands read the training device as ``args.device``, the deployment device as
    ``args.target_device``."""
    if not hasattr(args, "device"):
        return
    given = args.device or []
    remote = [d for d in given if "://" in d]
    local = [d for d in given if "://" not in d]
    if local:
        _refuse_openvino_device(local[-1], getattr(args, "target", None), "--device")
        raise ConfigError(
            f"--device {local[-1]} is not a deployment device: --device takes ssh://user@host[:port], where a "
            f"TensorRT target's engine is built and measured. For where training runs, use --train-device {local[-1]}."
        )
    if len(remote) > 1:
        raise ConfigError(f"--device names one deployment device; got {', '.join(remote)}. Keep one.")
    args.target_device = remote[0] if remote else None
    args.device = args.train_device or ("cuda" if _cuda() else "cpu")
    _check_local_device(args.device, getattr(args, "target", None))


# OpenVINO's device names: a user who types one means the OpenVINO target's device.
OPENVINO_DEVICES = {"CPU": "openvino-cpu", "GPU": "openvino-gpu", "NPU": "openvino-npu"}


def _refuse_openvino_device(device: str, target: str | None, flag: str) -> None:
    """An OpenVINO device name (GPU, NPU, ...) where a training or ssh:// device was asked for."""
    base = device.split(".")[0].split(":")[0]
    if base.upper() in (*OPENVINO_DEVICES, "AUTO", "HETERO", "MULTI") and base != base.lower():
        pick = OPENVINO_DEVICES.get(base.upper())
        on = f"--target {target} runs on its own device" if target else "an OpenVINO target runs on its own device"
        raise ConfigError(
            f"{flag} {device} is an OpenVINO device name, but --train-device picks where training runs (cpu or "
            f"cuda[:N]) and --device the ssh:// device of a TensorRT target; {on}. "
            + (f"For OpenVINO on {base.upper()}, use --target {pick} and drop {flag}." if pick else f"Drop {flag}.")
        )


def _check_local_device(device: str, target: str | None, flag: str = "--train-device") -> None:
    """The training device: cpu or cuda[:N], and cuda only where a GPU is."""
    _refuse_openvino_device(device, target, flag)
    base = device.split(".")[0].split(":")[0]
    if base == "cpu" and device == "cpu":
        return
    if base != "cuda" or (":" in device and not device.split(":", 1)[1].isdigit()):
        raise ConfigError(
            f"{flag} {device!r} is not a device this pipeline trains on. Allowed: cpu, cuda, cuda:N (--device "
            "ssh://user@host[:port] is where a TensorRT target's engine is built)."
        )
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if count == 0:
        raise ConfigError(
            f"{flag} {device} was given, but this host has no CUDA GPU (torch {torch.__version__} sees none). "
            f"Use --train-device cpu, or leave {flag} out (cuda is picked when present)."
        )
    if index >= count:
        raise ConfigError(f"{flag} {device}: this host has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}.")


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
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            where = f" writing {exc.filename}" if exc.filename else ""
            print(
                f"error: {exc.strerror or exc}{where}. Free space there (or make it writable), or pick another "
                "--out; finished stages are kept: the same command continues from them.",
                file=sys.stderr,
            )
            return 2
        if isinstance(exc, (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)):
            where = f": {exc.filename}" if exc.filename else ""
            print(
                f"error: {exc.strerror or exc}{where}. Check the path and its permissions, or pick another one.",
                file=sys.stderr,
            )
            return 2
        return _crash(exc)
    except Exception as exc:  # noqa: BLE001 - a bug: its traceback, and a code no verdict uses
        return _crash(exc)


def _crash(exc: BaseException) -> int:
    """A bug: its traceback on stderr, and an exit code that no verdict on the model uses."""
    import traceback

    traceback.print_exception(type(exc), exc, exc.__traceback__)
    print(
        f"internal error ({type(exc).__name__}): a bug in bckd-pipeline, not a verdict on the model; exit code "
        f"{EXIT_CRASH}. Please report it with the traceback above.",
        file=sys.stderr,
    )
    return EXIT_CRASH
