"""``deploy``, and what ``run`` shares with it: the DeployConfig from the flags, the printed ledger, --budgets."""

from __future__ import annotations

from pathlib import Path


def deploy(args, preset, data, console) -> int:
    from ..export.source import model_source
    from ..model_spec import ModelHints, read_classes_file
    from ..pipeline import deploy_model, model_plan

    hints = ModelHints(
        mean=args.mean,
        std=args.std,
        num_classes=args.num_classes,
        class_names=args.class_names or read_classes_file(args.classes_file),
        input_scale=args.input_scale,
    )
    source = model_source(args.model, args.onnx, args.model_factory, args.weights, hints)
    dcfg = deploy_config(args, preset)
    if args.dry_run:  # the checks deploy_model makes before its first stage, the model's against the data included
        print(describe(model_plan(source, data, dcfg, args.out, force=args.force), args.out))
        return 0
    result = deploy_model(source, data, dcfg, args.out, force=args.force)
    return gated(args, finish(result, args.out, console, data=data), result.targets)


def describe(the_plans, out) -> str:
    """What --dry-run prints: each target's plan (the first lists the stages the targets share)."""
    return "\n\n".join(p.describe(Path(out)) for p in the_plans)


def deploy_config(args, preset):
    from ..context import DeployConfig
    from ..context import SshOptions
    from ..targets.profiles import CalibrationSpec, LatencySpec, get_target

    from ..targets import expand_targets

    # The latency threads: the first target's default (every built-in target has the runtime's default).
    profile = get_target(expand_targets(args.target)[0])
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
            max_miou_drop=args.nncf_max_miou_drop,
            exclude=tuple(args.int8_exclude),
            data=args.calib_data,
        ),
        allow_demo_data=args.allow_demo_data,
        parity_images=args.parity_images,
        latency=latency,
        throughput=not args.no_throughput,
        device=args.target_device,
        ssh=SshOptions(identity=args.ssh_identity, known_hosts=args.ssh_known_hosts, python=args.device_python),
        dla_core=args.dla_core,
        workspace_mib=args.workspace_mib,
        cuda_graph=args.cuda_graph,
        trt_quantizer=args.trt_quantizer,
        precision=args.precision,
        batch=args.batch,
        progress=not args.no_progress,
        qat=qat_config(args),
    )


def qat_config(args):
    """--qat and its schedule. Default: off (docs/decisions.md, "QAT: off by default, cross-entropy alone"): it
    runs only when asked; an explicit --qat auto without any max_miou_drop budget has nothing to decide on and
    is refused."""
    from ..context import QAT_MODES, QatConfig
    from ..errors import ConfigError

    mode = args.qat
    if mode is not None and mode not in QAT_MODES:
        raise ConfigError(f"--qat {mode!r} is not allowed. Allowed: {', '.join(QAT_MODES)}.")
    if args.qat_max_miou_drop is not None and not args.qat_max_miou_drop > 0:
        raise ConfigError(f"--qat-max-miou-drop must be > 0 mIoU points, got {args.qat_max_miou_drop:g}.")
    if args.qat_kd is not None:
        from ..configs import KD_CHOICES

        if args.qat_kd not in KD_CHOICES:
            raise ConfigError(
                f"--qat-kd {args.qat_kd!r} is not allowed. Allowed: {', '.join(KD_CHOICES)} "
                "(none: cross-entropy alone)."
            )
    mode = mode or "off"
    # `run`'s --teacher is its distillation teacher, which the pipeline hands to QAT itself; `deploy`'s is QAT's.
    teacher = args.teacher if args.command == "deploy" else None
    if teacher is not None and mode == "off":
        raise ConfigError(
            f"--teacher {teacher} is read only by the QAT fine-tune, and QAT is off "
            f"({'--qat off' if args.qat else 'the default'}). Add --qat on --qat-kd kd+bckd (or kd, cwd) to "
            "fine-tune against it, or drop --teacher."
        )
    if teacher is not None and args.qat_kd in (None, "none"):
        raise ConfigError(
            f"--teacher {teacher} is read only by teacher terms of the QAT fine-tune, and --qat-kd is "
            f"{args.qat_kd or 'none (the default: cross-entropy alone, docs/deploy-int8.md)'}. "
            "Add --qat-kd kd+bckd (or kd, cwd) to fine-tune against the teacher, or drop --teacher."
        )
    if teacher is not None and not Path(teacher).is_file():
        raise ConfigError(
            f"--teacher {teacher} does not exist. Pass the teacher checkpoint (teacher.pt), or drop --teacher "
            "to fine-tune against the FP32 student itself."
        )
    if args.qat_max_miou_drop is not None and mode == "off":
        raise ConfigError(
            f"--qat-max-miou-drop {args.qat_max_miou_drop:g} is the budget --qat auto fine-tunes at, and QAT is off "
            f"({'--qat off' if args.qat else 'the default'}). Add --qat auto, or drop --qat-max-miou-drop."
        )
    budgeted = args.qat_max_miou_drop is not None or _file_budgets_miou_drop(args.budgets)
    if mode == "auto" and not budgeted:
        given = f"--budgets {args.budgets} sets no max_miou_drop" if args.budgets else "no budget was given"
        raise ConfigError(
            f"--qat auto fine-tunes only when the INT8 row misses a max_miou_drop budget, and {given}. "
            "Pass --qat-max-miou-drop POINTS, or a --budgets file whose target table sets max_miou_drop, "
            "or --qat on to always fine-tune."
        )
    return QatConfig(
        mode=mode,
        max_miou_drop=args.qat_max_miou_drop,
        budgets=args.budgets,
        iters=args.qat_iters,
        lr=args.qat_lr,
        batch_size=args.qat_batch,
        seed=args.qat_seed,
        kd=args.qat_kd or "none",
        teacher=teacher,
    )


def _file_budgets_miou_drop(path) -> bool:
    """Whether the budgets file itself sets max_miou_drop for some target (a profile's default does not count:
    it would turn QAT on for every gated run)."""
    if path is None:
        return False
    from ..gate.budgets import load_budgets

    return any(
        "max_miou_drop" in t.deployed and "max_miou_drop" not in t.from_defaults
        for t in load_budgets(path).targets.values()
    )


def finish(result, out: Path, console, *, data=None) -> int:
    """Print the ledger, where the reports are, and the command that runs the deployed model; the exit code is
    the report's."""
    from ..report.combined import COMBINED_FORMAT, combined_markdown
    from ..report.build import degenerate_warning
    from ..report.markdown import markdown
    from ..tasks import DEFAULT_TASK, get_task
    from .predict import predict_hint

    report, folder = result.report, result.combined or result.report
    several = folder.get("format") == COMBINED_FORMAT  # the run folder holds more than one target
    print(combined_markdown(report) if report.get("format") == COMBINED_FORMAT else markdown(report), end="")
    console.print(f"{report['status']} -> {Path(out) / 'report.json'}, {Path(out) / 'manifest.json'}")
    label = get_task(report.get("task", DEFAULT_TASK)).metric_label
    for row in report["stages"]:
        if row.get("degenerate"):
            where = f"{row['target']} " if row.get("target") else ""
            console.print(f"warning: {where}{degenerate_warning(row, label)}", highlight=False, soft_wrap=True)
    if several:
        for key, files in folder["per_target"].items():
            console.print(f"  {key}: {Path(out) / files['report']}, {Path(out) / files['manifest']}", highlight=False)
    if report["status"] != "parity_failed":  # a deployed artifact that failed its check is not offered
        target = result.targets[0] if several and result.targets else None
        hint = predict_hint(out, data.spec if data else None, data.eval_split if data else "val", target=target)
        console.print(f"run the deployed model: {hint}", highlight=False, soft_wrap=True)
    return result.exit_code


def gated(args, code: int, keys: tuple[str, ...]) -> int:
    """`run/deploy --budgets`: gate the report just written. A violation (1) wins over pending (3)."""
    if args.budgets is None:
        return code
    from ..ledger import report_file
    from .gate import gate_report

    # each target's own report against its own [target] table, in one gate call: one --junit, one --markdown
    codes = [code, gate_report(args, [Path(args.out) / report_file(key, "json") for key in keys])]
    return 1 if 1 in codes else 3 if 3 in codes else 0
