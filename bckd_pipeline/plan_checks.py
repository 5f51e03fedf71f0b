"""Flags against the target: what ``deploy_plan`` checks before any stage runs, one function per kind of flag.

Each takes the target's profile and the deploy flags and refuses a combination that cannot work with one
paragraph that says what to change (exit 2); some return what the flags resolve to (the profile with
precision, batch, exclusions and TensorRT options applied, the opset, the calibration, whether latency
can be measured). Only ``pipeline.py`` imports this module.
"""

from __future__ import annotations

from dataclasses import replace

from .context import DeployConfig
from .errors import BackendMissingError, ConfigError, DataError
from .model_spec import ExportSpec, ModelSource
from .targets import Backend, Precision, TargetProfile, check_availability
from .targets.profiles import INT8_BUDGETS, CalibrationSpec, TensorRTOptions


def with_deploy_options(profile: TargetProfile, deploy: DeployConfig) -> TargetProfile:
    """The target with --precision and --batch applied; its ``label`` (folder and report names) says what changed."""
    changed = []
    if deploy.precision is not None:
        allowed = [str(p) for p in Precision]
        if deploy.precision not in allowed:
            raise ConfigError(
                f"--precision {deploy.precision!r} is not a precision of the deployed artifact. Allowed: "
                f"{', '.join(allowed)}. (Training precision is --train-precision auto|fp32|bf16|fp16.)"
            )
        precision = Precision(deploy.precision)
        if precision is not profile.precision:
            if profile.backend is Backend.TENSORRT:
                raise ConfigError(
                    f"--precision {precision} with --target {profile.name}: TensorRT targets deploy an INT8 engine "
                    "built from the Q/DQ ONNX. Leave --precision out (int8), or deploy FP32/FP16 with an "
                    "onnxruntime-* or openvino-* target."
                )
            profile = replace(
                profile,
                precision=precision,
                description=f"{profile.description}; deployed {precision} (--precision {precision})",
                calibration=(profile.calibration or CalibrationSpec()) if precision is Precision.INT8 else None,
                default_budgets=dict(INT8_BUDGETS) if precision is Precision.INT8 else {},
            )
            changed.append(str(precision))
    if deploy.batch != 1:
        if deploy.batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {deploy.batch}.")
        if "batch" in deploy.dynamic:
            raise ConfigError(
                f"--batch {deploy.batch} (a static batch) and --dynamic batch contradict each other. Keep one."
            )
        if profile.backend is Backend.TENSORRT:
            raise ConfigError(
                f"--batch {deploy.batch} with --target {profile.name}: the TensorRT device bundle is built for batch "
                "1 here. Leave --batch out, or measure a static batch on an onnxruntime-* or openvino-* target."
            )
        changed.append(f"b{deploy.batch}")
    if deploy.calibration.exclude and profile.precision is not Precision.INT8:
        raise ConfigError(
            f"--int8-exclude {','.join(deploy.calibration.exclude)} keeps layers out of INT8, but --target "
            f"{profile.name} deploys {profile.precision}. Drop --int8-exclude, or deploy --precision int8."
        )
    return replace(profile, label="-".join([profile.name, *changed])) if changed else profile


def check_onnx_source(source: ModelSource, deploy: DeployConfig, profile: TargetProfile):
    """A user's ONNX: readable, one NCHW input, every flag it needs given; export-only flags refused."""
    from .export.own_onnx import inspect_onnx, resolve_onnx

    info = inspect_onnx(source.path)
    resolve_onnx(info, source.hints, deploy.input_hw)
    given = {
        "--opset": deploy.opset,
        "--head": deploy.head,
        "--dynamic": ",".join(deploy.dynamic) or None,
        "--no-bake-normalization": None if deploy.bake_normalization else True,
        "--batch": None if deploy.batch == 1 else deploy.batch,
    }
    flags = [k for k, v in given.items() if v is not None]
    if flags:
        raise ConfigError(
            f"{', '.join(flags)} shape{'s' if len(flags) == 1 else ''} the ONNX export; --onnx {str(source.path)!r} is "
            f"deployed as it is (opset {info.opset}, its own input and output). Drop "
            f"{'it' if len(flags) == 1 else 'them'}; to change the graph, re-export it."
        )
    if info.dynamic and profile.static_shape and profile.device == "NPU":
        raise ConfigError(
            f"--onnx {str(source.path)!r} has dynamic {','.join(info.dynamic)}; --target {profile.name} compiles "
            f"static shapes only. Fix them first: python -m onnxruntime.tools.make_dynamic_shape_fixed --input_name "
            f"{info.input_name} --input_shape 1,3,H,W {source.path} model.static.onnx"
        )
    return info


def check_opset(given: int | None, profile: TargetProfile) -> int:
    """The export opset: the target's unless --opset names another this torch exports; never silently changed."""
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as newest
    import torch

    if given is None:
        return profile.opset
    if given < profile.opset:
        raise ConfigError(
            f"--opset {given} is older than opset {profile.opset}, the oldest this pipeline exports for --target "
            f"{profile.name} (per-channel Q/DQ, and the ops the export wrapper emits). Use --opset {profile.opset} "
            f"(the default) up to {newest}. A model already exported at opset {given} deploys as it is with "
            "`bckd-pipeline deploy --onnx model.onnx`."
        )
    if given > newest:
        raise ConfigError(
            f"--opset {given} is newer than torch {torch.__version__}'s TorchScript ONNX exporter writes (at most "
            f"opset {newest}). Use --opset {profile.opset} to {newest}, or leave --opset out for {profile.opset}."
        )
    return given


def with_tensorrt_options(profile: TargetProfile, deploy: DeployConfig) -> TargetProfile:
    """The target with the user's TensorRT flags applied (and refused for targets they do not apply to)."""
    given = {
        "--device": deploy.device,
        "--dla-core": deploy.dla_core,
        "--workspace-mib": deploy.workspace_mib,
        "--cuda-graph": deploy.cuda_graph or None,
        "--trt-quantizer": None if deploy.trt_quantizer == "onnxruntime" else deploy.trt_quantizer,
    }
    if profile.backend is not Backend.TENSORRT:
        flags = [k for k, v in given.items() if v is not None]
        if flags:
            raise ConfigError(
                f"{', '.join(flags)} appl{'ies' if len(flags) == 1 else 'y'} to TensorRT targets (jetson, "
                f"jetson-orin-nano, jetson-orin-nx, jetson-agx-orin, tensorrt); --target {profile.name} uses "
                f"{profile.backend}. Drop the flag or pick a TensorRT target."
            )
        return profile
    from .calibrate.tensorrt import QUANTIZERS

    if deploy.trt_quantizer not in QUANTIZERS:
        raise ConfigError(f"--trt-quantizer {deploy.trt_quantizer!r} is not allowed. Allowed: {', '.join(QUANTIZERS)}.")
    opts: TensorRTOptions = profile.tensorrt
    opts = replace(
        opts,
        dla_core=deploy.dla_core,
        workspace_mib=opts.workspace_mib if deploy.workspace_mib is None else deploy.workspace_mib,
        cuda_graph=deploy.cuda_graph,
    )
    return replace(profile, tensorrt=opts)


def check_calibration_flags(c: CalibrationSpec, profile: TargetProfile) -> None:
    """Options that the target's quantizer would ignore are refused, not silently dropped."""
    if profile.backend in (Backend.ONNXRUNTIME, Backend.TENSORRT) and c.max_miou_drop is not None:
        raise ConfigError(
            f"--nncf-max-miou-drop {c.max_miou_drop} applies to OpenVINO targets (NNCF accuracy control); "
            f"--target {profile.name} quantizes with ONNX Runtime. Drop the flag, or pick an openvino-* target."
        )
    if profile.backend in (Backend.ONNXRUNTIME, Backend.TENSORRT) and c.preset != "performance":
        raise ConfigError(f"--nncf-preset applies to OpenVINO targets; --target {profile.name} uses ONNX Runtime.")
    if profile.backend is Backend.OPENVINO and c.method != "minmax":
        raise ConfigError(
            f"--calib-method {c.method} applies to ONNX Runtime targets; NNCF chooses its own statistics for "
            f"--target {profile.name}. Use --nncf-preset performance|mixed instead."
        )


def check_buildable(profile: TargetProfile, device: str | None) -> tuple[bool, str]:
    """The target's backend is installed here; returns whether latency can be measured, and why not.

    A TensorRT target given ``--device ssh://...`` is measured there, whatever this host lacks.
    """
    avail = check_availability(profile)
    if not avail.can_build:
        raise BackendMissingError(f"--target {profile.name} cannot be built on this host: {avail.reason}.")
    if device is None:
        return avail.can_measure, avail.reason
    from .device.remote import SshTarget

    SshTarget.parse(device)
    return True, ""


def check_simplifier(name: str) -> None:
    from .export.simplify import SIMPLIFIERS

    if name not in SIMPLIFIERS:
        raise ConfigError(f"--simplifier {name!r} is not allowed. Allowed: {', '.join(SIMPLIFIERS)}.")


def export_head(head: str | None, task: str) -> str:
    """``--head`` for a model of ``task``: not given (None), the task's default, its first export head; a head
    given is kept as it is (``ExportSpec`` refuses one the task lacks, naming the heads allowed)."""
    from .tasks import get_task

    return get_task(task).export_heads[0] if head is None else head


def check_export_shape(deploy: DeployConfig, profile: TargetProfile, opset: int, task: str | None) -> str:
    """--head, --dynamic and the opset make a valid export, with dynamic axes only where the target takes them;
    returns the head. ``task``: the model's (`run`: --task; `deploy`: the checkpoint's or the ONNX's, else the
    data's); None where it is not known before the model is loaded (a checkpoint that cannot be read here, which
    loading it then explains): the task whose heads hold --head, checked again against the loaded model's."""
    from .tasks import DEFAULT_TASK, TASKS

    if task is None:
        task = next((t.name for t in TASKS.values() if deploy.head in t.export_heads), DEFAULT_TASK)
    head = export_head(deploy.head, task)
    ExportSpec(input_hw=deploy.input_hw or (32, 32), opset=opset, head=head, dynamic=deploy.dynamic, task=task)
    if profile.static_shape and deploy.dynamic and profile.device == "NPU":
        raise ConfigError(
            f"--dynamic {','.join(deploy.dynamic)} was given for --target {profile.name}, whose device compiles "
            "static shapes only. Drop --dynamic."
        )
    return head


def check_calibration(deploy: DeployConfig, profile: TargetProfile, eval_split: str) -> CalibrationSpec | None:
    """The calibration an INT8 target uses (None for a float one): never on evaluation images."""
    calibration = deploy.calibration if profile.precision is Precision.INT8 else None
    if calibration is None:
        return None
    if calibration.split == eval_split and calibration.data is None:
        raise DataError(
            f"--calib-split {calibration.split!r} is the evaluation split. Calibration images must not be evaluation "
            "images; calibrate on the training split (--calib-split train)."
        )
    check_calibration_flags(calibration, profile)
    return calibration


def check_tensorrt_shape(deploy: DeployConfig, profile: TargetProfile) -> None:
    if profile.backend is Backend.TENSORRT and deploy.dynamic:
        raise ConfigError(
            f"--dynamic {','.join(deploy.dynamic)} was given for --target {profile.name}: the engine is built for the "
            "exported static shape. Drop --dynamic (export the size you deploy with --input-size H,W)."
        )
