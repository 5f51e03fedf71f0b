"""``deploy``, and what ``run`` shares with it: the DeployConfig from the flags, the printed ledger, --budgets."""

from __future__ import annotations

from pathlib import Path


def deploy(args, preset, data, console) -> int:
    from ..export.source import ModelHints, model_source
    from ..pipeline import deploy_model, model_plan

    hints = ModelHints(
        mean=args.mean,
        std=args.std,
        num_classes=args.num_classes,
        class_names=args.class_names,
        input_scale=args.input_scale,
    )
    source = model_source(args.model, args.onnx, args.model_factory, args.weights, hints)
    dcfg = deploy_config(args, preset)
    the_plan = model_plan(source, data, dcfg, args.out, force=args.force)
    if args.dry_run:
        print(the_plan.describe(Path(args.out)))
        return 0
    code = finish(deploy_model(source, data, dcfg, args.out, force=args.force), args.out, console, data=data)
    return gated(args, code)


def deploy_config(args, preset):
    from ..context import DeployConfig
    from ..device.remote import SshOptions
    from ..targets.profiles import CalibrationSpec, LatencySpec, get_target

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


def finish(result, out: Path, console, *, data=None) -> int:
    """Print the ledger, where the reports are, and the command that runs the deployed model; the exit code is
    the report's."""
    from ..report.markdown import markdown
    from .predict import predict_hint

    print(markdown(result.report), end="")
    console.print(f"{result.report['status']} -> {Path(out) / 'report.json'}, {Path(out) / 'manifest.json'}")
    if result.report["status"] != "parity_failed":  # a deployed artifact that failed its check is not offered
        hint = predict_hint(out, data.spec if data else None, data.eval_split if data else "val")
        console.print(f"run the deployed model: {hint}", highlight=False, soft_wrap=True)
    return result.exit_code


def gated(args, code: int) -> int:
    """`run/deploy --budgets`: gate the report just written. A violation (1) wins over pending (3)."""
    if args.budgets is None:
        return code
    from .gate import gate_report

    gate_code = gate_report(args, Path(args.out) / "report.json")
    return 1 if 1 in (code, gate_code) else 3 if 3 in (code, gate_code) else 0
