"""Command line: parses flags, resolves the preset, calls one stage function. Nothing else."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import BckdError, ConfigError

KD_HELP = "none | kd (Hinton logits) | cwd | bckd | kd+bckd | cwd+bckd"


def _pair(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W (two integers, e.g. 96,128), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"H and W must be positive, got {text!r}")
    return h, w


def _keyval(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def _common(p: argparse.ArgumentParser, *, training: bool = True) -> None:
    from .data import DATA_KINDS

    p.add_argument("--data", help=f"KIND:PATH (kinds: {', '.join(DATA_KINDS)}); default: the preset's (demo data)")
    p.add_argument("--eval-split", default="val", help="split that metrics are reported on")
    p.add_argument("--out", type=Path, default=Path("runs/latest"), help="output folder")
    p.add_argument("--preset", default="demo", help="demo | smoke | camvid: defaults for everything below")
    p.add_argument("--resize", type=_pair, help="resize every image to H,W first (default: preset)")
    p.add_argument("--batch-size", type=int, help="default: preset (8)")
    p.add_argument(
        "--device",
        action="append",
        help="training device: cpu or cuda[:N] (default: cuda when present); for TensorRT targets also "
        "ssh://user@host[:port], the device that builds and measures the engine (give --device twice for both)",
    )
    p.add_argument("--num-workers", type=int, help="data loader workers (default: preset)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    if training:
        p.add_argument("--train-split", default="train", help="split to train on")
        p.add_argument("--seed", type=int, default=0, help="seed for weights, data order and augmentation")
        p.add_argument("--epochs", type=int, help="training length in epochs (default: preset)")
        p.add_argument("--iters", type=int, help="training length in iterations; wins over --epochs (default: preset)")
        p.add_argument("--crop", type=_pair, help="random crop H,W for training (default: preset)")
        p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (poly schedule, power 0.9)")
        p.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
        p.add_argument("--eval-every", type=int, default=0, help="evaluate every N iterations (0: at the end)")
        p.add_argument("--pretrained", default="none", help="none | imagenet (downloads encoder weights)")
        p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 (mixed precision on CUDA)")
        p.add_argument("--channels-last", action="store_true", help="channels_last memory format (CUDA)")
        p.add_argument("--compile", action="store_true", help="torch.compile the training step")
        p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across torchrun processes (CUDA)")
        p.add_argument(
            "--checkpoint-every", type=int, default=500, help="save the full training state every N iterations"
        )
        p.add_argument("--resume", action="store_true", help="continue the run in --out from its training state")


def _distill_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kd", default="bckd", help=KD_HELP)
    p.add_argument("--no-boundary", action="store_true", help="BCKD ablation: drop the boundary term L_b")
    p.add_argument("--no-context", action="store_true", help="BCKD ablation: drop the context term L_c")
    p.add_argument("--no-decay", action="store_true", help="BCKD ablation: no gamma(e) weight decay (Eq. 7)")
    p.add_argument("--alpha", type=float, default=10.0, help="weight of L_b (Eq. 6)")
    p.add_argument("--beta", type=float, default=50.0, help="weight of L_c (Eq. 6)")
    p.add_argument("--kd-temperature", type=float, default=1.0, help="logit KD temperature")
    p.add_argument("--kd-weight", type=float, default=1.0, help="logit KD weight")
    p.add_argument("--cwd-temperature", type=float, default=1.0, help="CWD temperature")
    p.add_argument("--cwd-weight", type=float, default=3.0, help="CWD weight")
    p.add_argument(
        "--bckd",
        type=_keyval,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any BCKDConfig option, repeatable (e.g. --bckd radius=3 --bckd relation=dot)",
    )
    p.add_argument("--student-taps", help="comma-separated module names of the student's feature stages")
    p.add_argument("--teacher-taps", help="comma-separated module names of the teacher's feature stages")
    p.add_argument("--mfs-images", type=int, help="eval images used for MFS, 0 skips it (default: preset)")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append "(default: X)", except for None: those flags say in words what they default to."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    fmt = _DefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="bckd-pipeline",
        description="Distill a compact segmentation student with BCKD and carry it to edge targets.",
        formatter_class=fmt,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the model presets", formatter_class=fmt)

    p = sub.add_parser("train-teacher", help="train a teacher (or any preset) with cross-entropy", formatter_class=fmt)
    _common(p)
    p.add_argument("--model", help="model preset (default: the preset's teacher)")

    p = sub.add_parser("distill", help="distill a student from a teacher checkpoint", formatter_class=fmt)
    _common(p)
    p.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint (teacher.pt)")
    p.add_argument("--student", help="student preset (default: the preset's student)")
    _distill_flags(p)

    p = sub.add_parser("eval", help="evaluate a checkpoint", formatter_class=fmt)
    _common(p, training=False)
    p.add_argument("--model", type=Path, required=True, help="checkpoint to evaluate")

    p = sub.add_parser(
        "run",
        help="the whole pipeline: teacher -> distilled student -> ONNX -> INT8 -> target, verified and measured",
        formatter_class=fmt,
        epilog="Exit codes: 0 done; 1 a stage failed its parity check (report written, culprit named); "
        "2 bad input or usage; 3 artifacts made but some target step could only run on the device (pending).",
    )
    _common(p)
    p.add_argument("--teacher", type=Path, help="teacher checkpoint; trained on the fly when omitted")
    p.add_argument("--teacher-model", help="teacher preset when training one (default: the preset's)")
    p.add_argument("--student", help="student preset (default: the preset's student)")
    _distill_flags(p)
    _deploy_flags(p)
    _gate_flags(p, required=False)
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit; nothing is written")
    p.add_argument("--force", action="store_true", help="write into an --out folder that holds other files")

    p = sub.add_parser(
        "deploy",
        help="stages 2 and 3 alone: export, quantize, compile, verify and measure a student checkpoint",
        formatter_class=fmt,
        epilog="Exit codes as for `run`: 0 done, 1 parity failed, 2 bad input, 3 pending on the device.",
    )
    _common(p, training=False)
    p.add_argument("--model", type=Path, required=True, help="student checkpoint (student.pt)")
    _deploy_flags(p)
    _gate_flags(p, required=False)
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit; nothing is written")
    p.add_argument("--force", action="store_true", help="write into an --out folder that holds other files")

    sub.add_parser("targets", help="list the deployment targets", formatter_class=fmt)
    sub.add_parser("doctor", help="which backends and devices this host has", formatter_class=fmt)

    p = sub.add_parser("bench", help="measure an exported model under the latency protocol", formatter_class=fmt)
    p.add_argument("model", type=Path, help="an .onnx file, an OpenVINO model.xml, or a TensorRT plan built here")
    p.add_argument("--target", default="onnxruntime-cpu", help="target whose backend and device run the model")
    p.add_argument("--precision", default=None, help="label for the report (default: read from the file name)")
    p.add_argument("--runs", type=int, default=200, help="timed runs")
    p.add_argument("--warmup-runs", type=int, default=20, help="untimed runs first (at least)")
    p.add_argument("--warmup-s", type=float, default=1.0, help="untimed seconds first (at least)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the runtime's)")
    p.add_argument("--streams", type=int, default=2, help="requests in flight in throughput mode")
    p.add_argument("--mode", default="latency", help="latency | throughput")
    p.add_argument("--json", type=Path, help="also write the LatencyReport here")

    p = sub.add_parser(
        "gate",
        help="CI gate: check a run's report against latency and mIoU budgets (docs/ci.md)",
        formatter_class=fmt,
        epilog="Exit codes: 0 every budget met; 1 a budget violated (each violation named); 2 bad input "
        "(budgets file, report, baseline); 3 nothing violated but some budget could not be checked because "
        "the value was not measured (pending on the device); --allow-pending turns that into 0.",
    )
    p.add_argument("report", type=Path, help="OUT/report.json of `run` or `deploy` (or the OUT folder)")
    _gate_flags(p, required=True)
    return parser


def _gate_flags(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("CI gate (docs/ci.md)")
    g.add_argument(
        "--budgets",
        type=Path,
        required=required,
        help="TOML budgets file" + ("" if required else "; gate the run's report against it after the run"),
    )
    g.add_argument("--baseline", type=Path, help="an older report.json: also fail on latency and mIoU regressions")
    g.add_argument("--junit", type=Path, help="write the checks as JUnit XML here (one test case per budget)")
    g.add_argument("--markdown", type=Path, help="write a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY)")
    g.add_argument("--confidence", type=float, help="confidence of the bootstrap bounds (default: budgets file, 0.95)")
    g.add_argument("--allow-pending", action="store_true", help="budgets whose value was not measured do not fail")


def _deploy_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("deployment (stages 2 and 3)")
    g.add_argument("--target", default="onnxruntime-cpu", help="deployment target (`bckd-pipeline targets`)")
    g.add_argument("--head", default="logits", help="logits | argmax (uint8 label map out of the graph)")
    g.add_argument("--dynamic", default="", help="comma-separated dynamic axes: batch,height,width (default: static)")
    g.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    g.add_argument("--input-size", type=_pair, help="export input H,W (default: the training resize or eval size)")
    g.add_argument("--no-bake-normalization", action="store_true", help="graph takes normalised input, not 0..255")
    g.add_argument("--simplifier", default="onnxsim", help="onnxsim | onnxslim")
    g.add_argument("--allow-unsimplified", action="store_true", help="deploy the exported graph if simplifying fails")
    g.add_argument("--calib-size", type=int, help="INT8 calibration images (default: preset, 100)")
    g.add_argument("--calib-seed", type=int, default=0, help="seed that picks the calibration images")
    g.add_argument("--calib-split", default="train", help="split the calibration images come from")
    g.add_argument("--calib-method", default="minmax", help="ONNX Runtime: minmax | entropy | percentile")
    g.add_argument("--nncf-preset", default="performance", help="OpenVINO NNCF: performance | mixed")
    g.add_argument("--max-miou-drop", type=float, help="OpenVINO: accuracy-controlled INT8 with at most this mIoU drop")
    g.add_argument("--parity-images", type=int, help="evaluation images in the parity ledger (default: all)")
    g.add_argument("--latency-runs", type=int, help="timed runs per stage (default: preset, 200)")
    g.add_argument("--warmup-runs", type=int, default=20, help="untimed runs before timing (at least)")
    g.add_argument("--warmup-s", type=float, help="untimed seconds before timing (at least; default: preset)")
    g.add_argument("--threads", type=int, help="intra-op threads for every runtime (default: the runtime's)")
    g.add_argument("--streams", type=int, default=2, help="requests in flight in throughput mode")
    g.add_argument("--no-throughput", action="store_true", help="skip the throughput measurement")
    t = p.add_argument_group("TensorRT targets (jetson, jetson-orin-nano/-nx, jetson-agx-orin, tensorrt)")
    t.add_argument("--ssh-identity", type=Path, help="private key for --device ssh://... (default: ssh's own keys)")
    t.add_argument("--ssh-known-hosts", type=Path, help="known_hosts file to check the device's host key against")
    t.add_argument("--device-python", default="python3", help="the device's Python 3.10+ with numpy")
    t.add_argument("--dla-core", type=int, help="build for this DLA core, GPU fallback on (AGX Orin, Orin NX)")
    t.add_argument("--workspace-mib", type=int, help="TensorRT builder workspace in MiB (default: 1024)")
    t.add_argument("--cuda-graph", action="store_true", help="replay inference as a CUDA graph on the device")
    t.add_argument("--trt-quantizer", default="onnxruntime", help="Q/DQ ONNX made by: onnxruntime | modelopt")


def _data_config(args, preset):
    from .distill.stage import DataConfig

    spec = args.data or preset.data
    if not spec:
        raise ConfigError(f"--preset {preset.name} needs --data KIND:PATH (e.g. --data camvid:../shared/data/camvid).")
    return DataConfig(
        spec=spec,
        train_split=getattr(args, "train_split", "train"),
        eval_split=args.eval_split,
        resize=args.resize or preset.resize,
        crop=getattr(args, "crop", None) or preset.crop,
        demo_size=preset.demo_size,
        demo_count=preset.demo_count,
    )


def _train_config(args, preset):
    from .distill.trainer import TrainConfig

    return TrainConfig(
        batch_size=args.batch_size or preset.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        eval_every=args.eval_every,
        seed=args.seed,
        num_workers=preset.num_workers if args.num_workers is None else args.num_workers,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        sync_bn=args.sync_bn,
        checkpoint_every=args.checkpoint_every,
    )


def _schedule(args, iters, epochs):
    from .distill.stage import Schedule

    if args.iters or args.epochs:
        return Schedule(iters=args.iters, epochs=args.epochs)
    return Schedule(iters=iters, epochs=epochs)


def _distill_config(args, preset):
    from .distill.bckd import BCKDConfig
    from .distill.task import DistillConfig

    overrides = {**preset.bckd, **dict(args.bckd)}
    base = {
        "alpha": args.alpha,
        "beta": args.beta,
        "boundary": not args.no_boundary,
        "context": not args.no_context,
        "decay": not args.no_decay,
        "seed": args.seed,
    }
    if args.no_boundary and args.no_context and "bckd" in args.kd:
        raise ConfigError("--no-boundary and --no-context together leave BCKD with no term. Drop one of them.")
    return DistillConfig(
        kd=args.kd,
        kd_temperature=args.kd_temperature,
        kd_weight=args.kd_weight,
        cwd_temperature=args.cwd_temperature,
        cwd_weight=args.cwd_weight,
        bckd=BCKDConfig.from_overrides(overrides, **base),
    )


def _taps(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def dispatch(args) -> int:
    from rich.console import Console

    from .presets import get_preset

    console = Console(stderr=True, soft_wrap=True)
    if args.command == "models":
        from .distill.models import PRESETS

        for p in PRESETS.values():
            print(f"{p.name:22s} {p.role:8s} {p.description}")
        return 0
    if args.command in ("targets", "doctor"):
        return _targets(args.command == "doctor")
    if args.command == "bench":
        return _bench(args, console)
    if args.command == "gate":
        return _gate(args, args.report)

    if getattr(args, "target_device", None) and args.command not in ("run", "deploy"):
        raise ConfigError(
            f"--device {args.target_device} names a deployment device; `{args.command}` trains or evaluates here. "
            "Use --device cpu or cuda[:N], or pass the SSH device to `run`/`deploy` with a TensorRT target."
        )
    preset = get_preset(args.preset)
    if args.command in ("run", "deploy"):
        from .targets import get_target

        get_target(args.target)  # an unknown target fails before anything else
        if args.budgets is not None:  # a bad budgets file fails before any training
            from .gate.budgets import load_budgets

            load_budgets(args.budgets).for_target(args.target, "this run")
    data = _data_config(args, preset)
    from .distill import stage

    if args.command == "deploy":
        return _deploy(args, preset, data, console)

    if args.command == "eval":
        out = stage.check_out_dir(args.out)
        res = stage.evaluate_checkpoint(
            args.model, data, out, batch_size=args.batch_size or preset.batch_size, device=args.device
        )
        console.print(f"mIoU {res.metrics['miou']:.2f} -> {out / 'metrics.json'}")
        return 0

    train_cfg = _train_config(args, preset)
    from .distill.distributed import barrier, setup, teardown

    env = setup(args.device)
    try:
        code = _train_commands(args, preset, data, train_cfg, env, console)
        barrier(env)  # rank 0 finishes its metrics before the group goes away
        return code
    finally:
        teardown(env)


def _train_commands(args, preset, data, train_cfg, env, console) -> int:
    from .distill import stage

    # Under torchrun only rank 0 prints and writes; every rank trains.
    progress = not args.no_progress and env.is_main
    if not env.is_main:
        console.quiet = True
    if args.command == "train-teacher":
        out = stage.check_out_dir(args.out)
        res = stage.train_teacher(
            args.model or preset.teacher,
            data,
            _schedule(args, preset.teacher_iters, preset.teacher_epochs),
            train_cfg,
            out,
            pretrained=args.pretrained,
            progress=progress,
            resume=args.resume,
            env=env,
        )
        if env.is_main:
            console.print(f"teacher mIoU {res.metrics['miou']:.2f} -> {res.checkpoint}")
        return 0

    dcfg = _distill_config(args, preset)
    mfs_images = preset.mfs_images if args.mfs_images is None else args.mfs_images
    if args.command == "distill":
        out = stage.check_out_dir(args.out)
        res = stage.distill(
            args.teacher,
            args.student or preset.student,
            data,
            _schedule(args, preset.student_iters, preset.student_epochs),
            train_cfg,
            dcfg,
            out,
            student_taps=_taps(args.student_taps),
            teacher_taps=_taps(args.teacher_taps),
            pretrained=args.pretrained,
            progress=progress,
            mfs_images=mfs_images,
            resume=args.resume,
            env=env,
        )
        if env.is_main:
            console.print(f"student mIoU {res.metrics['miou']:.2f} (kd={dcfg.kd}) -> {res.checkpoint}")
        return 0

    from .pipeline import RunConfig, plan, run

    if env.distributed:
        raise ConfigError(
            "`run` is one process; under torchrun launch `train-teacher` and `distill` instead (docs/distributed.md)."
        )
    cfg = RunConfig(
        out=args.out,
        data=data,
        train=train_cfg,
        distill=dcfg,
        teacher_model=args.teacher_model or preset.teacher,
        student_model=args.student or preset.student,
        teacher_schedule=_schedule(args, preset.teacher_iters, preset.teacher_epochs),
        student_schedule=_schedule(args, preset.student_iters, preset.student_epochs),
        teacher_checkpoint=args.teacher,
        mfs_images=mfs_images,
        progress=progress,
        resume=args.resume,
        deploy=_deploy_config(args, preset),
        force=args.force,
    )
    the_plan = plan(cfg)
    if args.dry_run:
        print(the_plan.describe(Path(args.out)))
        return 0
    result = run(cfg)
    s = result.summary
    t = s["teacher"]["miou"]
    console.print(
        f"teacher {'' if t is None else f'{t:.2f}'} | student alone {s['student']['miou']:.2f} | "
        f"distilled ({s['kd']}) {s['distilled']['miou']:.2f} mIoU"
    )
    return _gated(args, _finish(result, args.out, console))


def _gate(args, report: Path) -> int:
    """Gate a report; print every check, write --junit/--markdown; the exit code is the gate's."""
    from .gate.budgets import load_budgets
    from .gate.gate import gate
    from .gate.output import junit_xml, markdown, text_lines
    from .fileio import write_text

    result = gate(
        report,
        load_budgets(args.budgets),
        baseline=args.baseline,
        confidence=args.confidence,
        allow_pending=args.allow_pending,
    )
    print("\n".join(text_lines(result)))
    if args.junit:
        write_text(args.junit, junit_xml(result))
    if args.markdown:
        write_text(args.markdown, markdown(result))
    return result.exit_code


def _gated(args, code: int) -> int:
    """`run/deploy --budgets`: gate the report just written. A violation (1) wins over pending (3)."""
    if args.budgets is None:
        return code
    gate_code = _gate(args, Path(args.out) / "report.json")
    return 1 if 1 in (code, gate_code) else 3 if 3 in (code, gate_code) else 0


def _finish(result, out: Path, console) -> int:
    """Print the ledger and where the reports are; the exit code is the report's."""
    from .report.markdown import markdown

    print(markdown(result.report), end="")
    console.print(f"{result.report['status']} -> {Path(out) / 'report.json'}, {Path(out) / 'manifest.json'}")
    return result.exit_code


def _deploy(args, preset, data, console) -> int:
    from .pipeline import deploy_checkpoint, deploy_plan

    dcfg = _deploy_config(args, preset)
    the_plan = deploy_plan(dcfg, data)
    if args.dry_run:
        print(the_plan.describe(Path(args.out)))
        return 0
    code = _finish(deploy_checkpoint(args.model, data, dcfg, args.out, force=args.force), args.out, console)
    return _gated(args, code)


def _deploy_config(args, preset):
    from .device.remote import SshOptions
    from .pipeline import DeployConfig
    from .targets.profiles import CalibrationSpec, LatencySpec, get_target

    profile = get_target(args.target)
    latency = LatencySpec(
        warmup_runs=args.warmup_runs,
        warmup_s=preset.warmup_s if args.warmup_s is None else args.warmup_s,
        runs=preset.latency_runs if args.latency_runs is None else args.latency_runs,
        threads=args.threads if args.threads is not None else profile.latency.threads,
        streams=args.streams,
    )
    return DeployConfig(
        target=args.target,
        head=args.head,
        dynamic=tuple(a.strip() for a in args.dynamic.split(",") if a.strip()),
        opset=args.opset,
        input_hw=args.input_size,
        bake_normalization=not args.no_bake_normalization,
        simplifier=args.simplifier,
        allow_unsimplified=args.allow_unsimplified,
        calibration=CalibrationSpec(
            size=preset.calib_size if args.calib_size is None else args.calib_size,
            seed=args.calib_seed,
            split=args.calib_split,
            method=args.calib_method,
            preset=args.nncf_preset,
            max_miou_drop=args.max_miou_drop,
        ),
        parity_images=args.parity_images,
        latency=latency,
        throughput=not args.no_throughput,
        device=args.target_device,
        ssh=SshOptions(identity=args.ssh_identity, known_hosts=args.ssh_known_hosts, python=args.device_python),
        dla_core=args.dla_core,
        workspace_mib=args.workspace_mib,
        cuda_graph=args.cuda_graph,
        trt_quantizer=args.trt_quantizer,
    )


def _targets(doctor: bool) -> int:
    from .targets import TARGETS, check_availability
    from .targets.availability import EXTRAS, TENSORRT_HINT, module_present

    if doctor:
        for backend, (module, install) in EXTRAS.items():
            if backend.value == "tensorrt":  # its targets build with ONNX Runtime; the engine needs these
                missing = [m for m in ("tensorrt", "pycuda") if not module_present(m)]
                state = "installed" if not missing else f"missing {', '.join(missing)}: {TENSORRT_HINT}"
                print(f"{backend.value:12s} {state} (engines are built on the device with --device ssh://)")
                continue
            print(f"{backend.value:12s} {'installed' if module_present(module) else 'missing: ' + install}")
        if module_present("openvino"):
            from .targets.availability import openvino_devices

            print(f"{'':12s} OpenVINO devices: {', '.join(openvino_devices()) or 'none'}")
    for t in TARGETS.values():
        a = check_availability(t)
        where = (
            "builds and measures here"
            if a.can_measure
            else "builds here, measures on device"
            if a.can_build
            else "unavailable"
        )
        print(f"{t.name:22s} {t.backend.value:12s} {t.device:16s} {t.precision.value:5s} {where}")
        if doctor and a.reason:
            print(f"{'':22s} {a.reason}")
        elif not doctor:
            print(f"{'':22s} {t.description}")
    return 0


def _bench(args, console) -> int:
    from .deploy.bench import benchmark, synthetic_feeds
    from .distill.stage import write_json
    from .targets import Backend, get_target
    from .targets.profiles import LatencySpec

    profile = get_target(args.target)
    precision = args.precision or (
        "int8"
        if "int8" in args.model.name or "int8" in args.model.parent.name
        else "fp16"
        if "fp16" in str(args.model.parent)
        else "fp32"
    )
    if profile.backend is Backend.ONNXRUNTIME:
        from .deploy.backends.onnxruntime import OrtRuntime

        rt = OrtRuntime(args.model, threads=args.threads, precision=precision)
    elif profile.backend is Backend.OPENVINO:
        from .deploy.backends.openvino import OpenVINORuntime

        streams = args.streams if args.mode == "throughput" else 1
        rt = OpenVINORuntime(
            args.model, device=profile.device, precision=precision, threads=args.threads, streams=streams
        )
    else:  # TensorRT: a plan built on this host's GPU (engines are not portable)
        from .deploy.backends.tensorrt import TensorRTRuntime

        if args.mode == "throughput":
            raise ConfigError("bench --mode throughput is not built for TensorRT engines; use --mode latency.")
        rt = TensorRTRuntime(args.model, precision=precision)
    spec = LatencySpec(
        warmup_runs=args.warmup_runs, warmup_s=args.warmup_s, runs=args.runs, threads=args.threads, streams=args.streams
    )
    with rt:
        report = benchmark(rt, synthetic_feeds(rt.input_spec()), spec, mode=args.mode)
    if report.mode == "latency":
        console.print(
            f"{args.model}: p50 {report.p50:.3f} ms, p90 {report.p90:.3f}, p99 {report.p99:.3f}, "
            f"mean {report.mean:.3f} (std {report.std:.3f}), {report.fps:.1f} FPS, batch {report.batch}"
        )
    else:
        console.print(f"{args.model}: {report.fps:.1f} FPS with {report.streams} requests in flight")
    if args.json:
        write_json(args.json, {**report.as_dict(), "model": str(args.model), "input": "synthetic uniform 0..255"})
    print(json.dumps(report.latency_ms | {"fps": report.fps}))
    return 0


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
    args = parser.parse_args(argv)
    try:
        _split_device(args)
        return dispatch(args)
    except BckdError as exc:
        print(f"error: {_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; partial files were not written.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bckd-pipeline targets | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
