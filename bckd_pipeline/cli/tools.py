"""``targets``, ``doctor`` and ``bench``: what this host can build and measure, and timing any exported model."""

from __future__ import annotations

import json

from ..errors import ConfigError


def targets(doctor: bool) -> int:
    from ..targets import TARGETS, check_availability
    from ..targets.availability import EXTRAS, TENSORRT_HINT, module_present

    if doctor:
        for backend, (module, install) in EXTRAS.items():
            if backend.value == "tensorrt":  # its targets build with ONNX Runtime; the engine needs these
                missing = [m for m in ("tensorrt", "pycuda") if not module_present(m)]
                state = "installed" if not missing else f"missing {', '.join(missing)}: {TENSORRT_HINT}"
                print(f"{backend.value:12s} {state} (engines are built on the device with --device ssh://)")
                continue
            print(f"{backend.value:12s} {'installed' if module_present(module) else 'missing: ' + install}")
        if module_present("openvino"):
            from ..targets.availability import openvino_devices

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


# The target bench times a model on when --target is not given, per backend (else: the backend's first target).
DEFAULT_TARGETS = {"onnxruntime": "onnxruntime-cpu", "openvino": "openvino-cpu", "tensorrt": "tensorrt"}


def bench_target(model, target: str | None):
    """The target profile that runs ``model``: inferred from the file's suffix (the runtime registry's default
    backend for it), or --target checked against the backends that run it."""
    from ..runtimes import backends_for, suffixes
    from ..targets import TARGETS, get_target

    suffix = model.suffix.lower()
    # suffix -> the backends that run such a file (PyTorch runs a model in memory, not a file)
    file_backends = {s: [e for e in backends_for(s) if e.factory is not None] for s in suffixes()}
    runs = file_backends.get(suffix) or []
    if not runs:
        files = ", ".join(f"{s} ({', '.join(e.name for e in r)})" for s, r in file_backends.items() if r)
        raise ConfigError(
            f"bench cannot tell what runs {str(model)!r}: its suffix is {suffix or 'missing'}. Pass a model file "
            f"that a backend runs: {files} (an OpenVINO model.xml with its .bin; a TensorRT engine built on this "
            "host; --target picks among the backends of one suffix)."
        )
    backend = runs[0].name
    if target is None:
        default = DEFAULT_TARGETS.get(backend) or next(n for n, p in TARGETS.items() if str(p.backend) == backend)
        return get_target(default)
    profile = get_target(target)
    if str(profile.backend) not in {entry.name for entry in runs}:
        raise ConfigError(
            f"{str(model)!r} is {runs[0].files[suffix].described}; --target {profile.name} runs {profile.backend}. "
            f"Drop --target (bench picks {DEFAULT_TARGETS.get(backend, 'a target')} from the suffix) or name a "
            "target of that backend."
        )
    return profile


def bench_shapes(spec: dict, shape: tuple[int, ...] | None, batch: int | None) -> dict[str, tuple[int, ...]]:
    """The input shape(s) to time: the model's static dims, --shape and --batch for the others (or checked)."""
    shapes = {}
    for name, t in spec.items():
        want = list(t.shape)
        given: list[int | None] = [None] * len(want)
        if shape is not None:
            if len(shape) == 2 and len(want) == 4:
                given[2:] = shape
            elif len(shape) == len(want):
                given = list(shape)
            else:
                raise ConfigError(
                    f"--shape {','.join(map(str, shape))} does not fit input {name!r} of rank {len(want)} "
                    f"({_shown(want)}). Give all {len(want)} dims, or H,W for an NCHW image."
                )
        if batch is not None:
            given[0] = batch
        for i, (w, g) in enumerate(zip(want, given, strict=True)):
            if w is not None and g is not None and w != g:
                raise ConfigError(
                    f"Input {name!r} has the static shape {_shown(want)}; dim {i} cannot be {g} (--shape/--batch). "
                    "Re-export the model with that axis dynamic, or drop the flag."
                )
        missing = [i for i, (w, g) in enumerate(zip(want, given, strict=True)) if w is None and g is None]
        if missing and 0 not in missing or len(missing) > 1:
            raise ConfigError(
                f"Input {name!r} is {_shown(want)}: dims {', '.join(map(str, missing))} are dynamic. Give --shape "
                + ("H,W" if len(want) == 4 else ",".join("N" * len(want)))
                + " (and --batch N) to say what to time."
            )
        pairs = zip(want, given, strict=True)
        shapes[name] = tuple(g if g is not None else w if w is not None else 1 for w, g in pairs)
    return shapes


def _shown(shape) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def bench(args, console) -> int:
    from ..deploy.bench import benchmark, synthetic_feeds
    from ..fileio import write_json
    from ..runtimes import build_runtime, get_backend
    from ..targets.profiles import LatencySpec

    if not args.model.is_file():
        raise ConfigError(f"Model file {str(args.model)!r} does not exist. Pass an .onnx, a model.xml or a .plan.")
    profile = bench_target(args.model, args.target)
    if args.batch is not None and args.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {args.batch}.")
    precision = args.precision or (
        "int8"
        if "int8" in args.model.name or "int8" in args.model.parent.name
        else "fp16"
        if "fp16" in str(args.model.parent)
        else "fp32"
    )
    entry = get_backend(str(profile.backend))
    if args.mode == "throughput" and not entry.concurrent:
        raise ConfigError(
            f"bench --mode throughput is not built for {profile.backend} (one request in flight); use --mode latency."
        )
    rt = build_runtime(
        entry.name,
        args.model,
        device=profile.device,
        precision=precision,
        threads=args.threads,
        streams=args.streams if args.mode == "throughput" else 1,
    )
    spec = LatencySpec(
        warmup_runs=args.warmup_runs,
        warmup_s=args.warmup_s,
        runs=args.latency_runs,
        threads=args.threads,
        streams=args.streams,
    )
    with rt:
        shapes = bench_shapes(rt.input_spec(), args.shape, args.batch)
        report = benchmark(rt, synthetic_feeds(rt.input_spec(), shapes=shapes), spec, mode=args.mode)
    shown = ", ".join(f"{n} {_shown(s)}" for n, s in shapes.items())
    if report.mode == "latency":
        console.print(
            f"{args.model} ({profile.backend} on {profile.device}, {shown}): p50 {report.p50:.3f} ms, p90 "
            f"{report.p90:.3f}, p99 {report.p99:.3f}, mean {report.mean:.3f} (std {report.std:.3f}), "
            f"{report.fps:.1f} FPS, batch {report.batch}"
        )
    else:
        console.print(f"{args.model}: {report.fps:.1f} FPS with {report.streams} requests in flight ({shown})")
    if args.json:
        write_json(
            args.json,
            {
                **report.as_dict(),
                "model": str(args.model),
                "target": profile.name,
                "input_shapes": {n: list(s) for n, s in shapes.items()},
                "input": "synthetic uniform 0..255",
            },
        )
    print(json.dumps(report.latency_ms | {"fps": report.fps}))
    return 0
