"""``models``, ``train-teacher``, ``distill``, ``eval`` and ``run``: the commands that train (or evaluate) on a
preset's data; ``run`` goes on to deploy (cli/deploy.py)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def models() -> int:
    from ..distill.detection import DETECTOR_PRESETS
    from ..distill.models import PRESETS
    from ..distill.pretrained import has_offline_weights

    offline = " (ImageNet weights offline: --pretrained imagenet)"
    for p in PRESETS.values():
        print(f"{p.name:22s} {p.role:8s} {p.description}{offline if has_offline_weights(p.encoder) else ''}")
    print("# detectors (--task detection)")
    for p in DETECTOR_PRESETS.values():
        local = not p.backbone.startswith("tiny-") and has_offline_weights(f"tu-{p.backbone}")
        print(f"{p.name:22s} {p.role:8s} {p.description}{offline if local else ''}")
    return 0


def _task(args) -> str:
    return getattr(args, "task", "segmentation")


def _label(args) -> tuple[str, str]:
    """The task's headline metric: (metrics.json key, label)."""
    from ..tasks import get_task

    task = get_task(_task(args))
    return task.metric, task.metric_label


def taps(args) -> int:
    """Print a model's candidate feature taps: module name, output shape, stride (input size / output size)."""
    from ..distill.any_model import candidate_taps
    from ..distill.models import build_model
    from ..model_files import module_from_factory

    if (args.arch is None) == (args.model_factory is None):
        raise ConfigError("taps lists one model: pass --arch PRESET, or --model-factory module:function.")
    if args.arch is not None:
        model = build_model(args.arch, args.num_classes)
    else:
        model = module_from_factory(args.model_factory, args.weights)
    h, w = args.input_size
    print(f"# candidate taps on a 1x3x{h}x{w} zero image (--teacher-taps/--student-taps take the names)")
    print(f"{'module':40s} {'output shape':22s} stride")
    for t in candidate_taps(model, (h, w)):
        sh, sw = t.stride
        stride = f"{sh:g}" if sh == sw else f"{sh:g}x{sw:g}"
        print(f"{t.name:40s} {'x'.join(map(str, t.shape)):22s} {stride}")
    return 0


def command(args, console) -> int:
    """train-teacher, distill, eval, run, deploy: the commands that share a preset and a dataset."""
    from ..presets import get_preset

    if getattr(args, "target_device", None) and args.command not in ("run", "deploy"):
        raise ConfigError(
            f"--device {args.target_device} names a deployment device; `{args.command}` trains or evaluates here. "
            "Use --train-device cpu or cuda[:N], or pass the SSH device to `run`/`deploy` with a TensorRT target."
        )
    preset = get_preset(args.preset, _task(args))
    if args.command in ("run", "deploy"):
        from ..targets import get_target

        from ..targets import expand_targets

        names = expand_targets(args.target)  # an unknown target fails before anything else
        if args.budgets is not None:  # a bad budgets file fails before any training
            from ..gate.budgets import load_budgets

            budgets = load_budgets(args.budgets)
            for name in names:
                budgets.for_target(get_target(name).name, "this run")
    data = data_config(args, preset)
    from ..distill import stage

    if args.command == "deploy":
        from .deploy import deploy

        return deploy(args, preset, data, console)

    if args.command == "eval":
        out = stage.check_out_dir(args.out)
        res = stage.evaluate_checkpoint(
            args.model, data, out, batch_size=args.batch_size or preset.batch_size, device=args.device
        )
        key, label = _label(args)
        console.print(f"{label} {_shown(res.metrics[key])} -> {out / 'metrics.json'}")
        return 0

    train_cfg = _train_config(args, preset)
    from ..distill.distributed import barrier, setup, teardown

    env = setup(args.device)
    try:
        code = _train_commands(args, preset, data, train_cfg, env, console)
        barrier(env)  # rank 0 finishes its metrics before the group goes away
        return code
    finally:
        teardown(env)


def _train_commands(args, preset, data, train_cfg, env, console) -> int:
    # Under torchrun only rank 0 prints and writes; every rank trains.
    progress = not args.no_progress and env.is_main
    if not env.is_main:
        console.quiet = True
    if args.command == "train-teacher":
        return _train_teacher(args, preset, data, train_cfg, env, console, progress)
    if args.command == "distill":
        return _distill(args, preset, data, train_cfg, env, console, progress)
    return _run(args, preset, data, train_cfg, env, console, progress)


def _train_teacher(args, preset, data, train_cfg, env, console, progress: bool) -> int:
    from ..distill import stage

    out = stage.check_out_dir(args.out)
    res = stage.train_teacher(
        args.arch or preset.teacher,
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
        key, label = _label(args)
        console.print(f"teacher {label} {_shown(res.metrics[key])} -> {res.checkpoint}")
    return 0


def _distill(args, preset, data, train_cfg, env, console, progress: bool) -> int:
    from ..distill import stage

    dcfg = _distill_config(args, preset)
    out = stage.check_out_dir(args.out)
    res = stage.distill(
        args.teacher,
        args.student_arch or preset.student,
        data,
        _schedule(args, preset.student_iters, preset.student_epochs),
        train_cfg,
        dcfg,
        out,
        student_taps=_taps(args.student_taps),
        teacher_taps=_taps(args.teacher_taps),
        pretrained=args.pretrained,
        progress=progress,
        mfs_images=_mfs_images(args, preset),
        resume=args.resume,
        env=env,
        teacher_factory=args.teacher_factory,
        teacher_weights=args.teacher_weights,
        student_factory=args.student_factory,
        student_weights=args.student_weights,
    )
    if env.is_main:
        key, label = _label(args)
        console.print(f"student {label} {_shown(res.metrics[key])} (kd={dcfg.kd}) -> {res.checkpoint}")
    return 0


def _run(args, preset, data, train_cfg, env, console, progress: bool) -> int:
    from ..context import RunConfig
    from ..pipeline import plan, run
    from .deploy import deploy_config, describe, finish, gated

    dcfg = _distill_config(args, preset)
    if env.distributed:
        raise ConfigError(
            "`run` is one process; under torchrun launch `train-teacher` and `distill` instead (docs/distributed.md)."
        )
    if args.teacher is not None and not Path(args.teacher).is_file():
        raise ConfigError(
            f"Teacher checkpoint {str(args.teacher)!r} does not exist. Pass the teacher.pt written by "
            "`bckd-pipeline train-teacher` (or a run's OUT/teacher/teacher.pt), or drop --teacher to train one."
        )
    cfg = RunConfig(
        out=args.out,
        data=data,
        train=train_cfg,
        distill=dcfg,
        teacher_model=args.teacher_arch or preset.teacher,
        student_model=args.student_arch or preset.student,
        teacher_schedule=_schedule(args, preset.teacher_iters, preset.teacher_epochs),
        student_schedule=_schedule(args, preset.student_iters, preset.student_epochs),
        teacher_checkpoint=args.teacher,
        mfs_images=_mfs_images(args, preset),
        progress=progress,
        resume=args.resume,
        deploy=deploy_config(args, preset),
        force=args.force,
    )
    the_plans = plan(cfg)
    if args.dry_run:
        print(describe(the_plans, args.out))
        return 0
    result = run(cfg)
    s = result.summary
    key, label = _label(args)
    t = s["teacher"][key]
    console.print(
        f"teacher {'' if t is None else _shown(t)} | student alone {_shown(s['student'][key])} | "
        f"distilled ({s['kd']}) {_shown(s['distilled'][key])} {label}"
    )
    return gated(args, finish(result, args.out, console, data=cfg.data), result.targets)


def _shown(value: float | None) -> str:
    """A metric as printed: two decimals, or "n/a" (an AP without ground truth to score)."""
    return "n/a" if value is None else f"{value:.2f}"


def _mfs_images(args, preset) -> int:
    return preset.mfs_images if args.mfs_images is None else args.mfs_images


def data_config(args, preset):
    from ..configs import DataConfig

    # deploy with --calib-data and no --data: those images are the evaluation images too (label-free parity);
    # run trains on --data, so its --calib-data only calibrates.
    images = getattr(args, "calib_data", None) if args.command == "deploy" else None
    spec = args.data or images or preset.data
    if not spec:
        raise ConfigError(f"--preset {preset.name} needs --data KIND:PATH (e.g. --data camvid:../shared/data/camvid).")
    return DataConfig(
        spec=spec,
        task=_task(args),
        train_split=getattr(args, "train_split", "train"),
        eval_split=args.eval_split,
        resize=args.resize or preset.resize,
        crop=getattr(args, "crop", None) or preset.crop,
        demo_size=preset.demo_size,
        demo_count=preset.demo_count,
        skip_bad_annotations=getattr(args, "skip_bad_annotations", False),
    )


def _train_config(args, preset):
    from ..configs import TrainConfig

    return TrainConfig(
        batch_size=args.batch_size or preset.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        eval_every=args.eval_every,
        seed=args.seed,
        num_workers=preset.num_workers if args.num_workers is None else args.num_workers,
        device=args.device,
        precision=args.train_precision or "auto",
        channels_last=args.channels_last,
        compile=args.compile,
        sync_bn=args.sync_bn,
        checkpoint_every=args.checkpoint_every,
    )


def _schedule(args, iters, epochs):
    from ..configs import Schedule

    if args.iters or args.epochs:
        return Schedule(iters=args.iters, epochs=args.epochs)
    return Schedule(iters=iters, epochs=epochs)


def _distill_config(args, preset):
    from ..configs import BCKDConfig, DistillConfig

    overrides = {**preset.bckd, **dict(args.bckd)}
    base = {
        "alpha": args.alpha,
        "beta": args.beta,
        "boundary": not args.no_boundary,
        "context": not args.no_context,
        "decay": not args.no_decay,
        "seed": args.seed,
    }
    kd = args.kd or ("bckd" if _task(args) == "detection" else "kd+bckd")
    return DistillConfig(
        kd=kd,
        kd_temperature=args.kd_temperature,
        kd_weight=args.kd_weight,
        cwd_temperature=args.cwd_temperature,
        cwd_weight=args.cwd_weight,
        bckd=BCKDConfig.from_overrides(overrides, **base),
    )


def _taps(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None
