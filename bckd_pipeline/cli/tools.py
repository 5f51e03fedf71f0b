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


def bench(args, console) -> int:
    from ..deploy.bench import benchmark, synthetic_feeds
    from ..distill.stage import write_json
    from ..targets import Backend, get_target
    from ..targets.profiles import LatencySpec

    profile = get_target(args.target)
    precision = args.precision or (
        "int8"
        if "int8" in args.model.name or "int8" in args.model.parent.name
        else "fp16"
        if "fp16" in str(args.model.parent)
        else "fp32"
    )
    if profile.backend is Backend.ONNXRUNTIME:
        from ..deploy.backends.onnxruntime import OrtRuntime

        rt = OrtRuntime(args.model, threads=args.threads, precision=precision)
    elif profile.backend is Backend.OPENVINO:
        from ..deploy.backends.openvino import OpenVINORuntime

        streams = args.streams if args.mode == "throughput" else 1
        rt = OpenVINORuntime(
            args.model, device=profile.device, precision=precision, threads=args.threads, streams=streams
        )
    else:  # TensorRT: a plan built on this host's GPU (engines are not portable)
        from ..deploy.backends.tensorrt import TensorRTRuntime

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
