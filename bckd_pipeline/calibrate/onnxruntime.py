"""ONNX Runtime static INT8: ``quant_pre_process``, then QDQ with per-channel weights.

The settings, each chosen by measurement (docs/decisions.md, "ONNX Runtime INT8 settings"): unsigned
8-bit activations with signed 8-bit weights (the fast pair on x86; signed activations can be slower
than FP32), per-channel weights (per-tensor ones cost accuracy), QDQ rather than QOperator, the graph
pre-processed (shape inference + fusion) before quantization, and ``ORT_ENABLE_ALL`` optimisation at load.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import BackendMissingError
from ..fileio import atomic_write
from ..progress import say
from ..targets.profiles import CalibrationSpec
from ..data.feeds import DatasetFeeds

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def _reader(feeds: DatasetFeeds):
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        """ORT's pull-style reader over our feed source."""

        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(feeds)

    return FeedReader()


def quantize_ort(
    source: Path, path: Path, feeds: DatasetFeeds, spec: CalibrationSpec, *, float_tail: bool = False
) -> tuple[Path, dict]:
    """FP32 ONNX -> INT8 QDQ ONNX calibrated on ``feeds``; returns the path and the settings used.

    ``float_tail``: the nodes after each output branch's last convolution stay in float (``Task.int8_float_tail``:
    a detector's box decoding; calibrate/exclude.py ``onnx_output_tail``)."""
    settings = {
        "format": "QDQ",
        "activation_type": "QUInt8",
        "weight_type": "QInt8",
        "per_channel": True,
        "calibration_method": METHODS[spec.method],
        "calibration_images": len(feeds),
        "pre_process": True,
    }
    if spec.method == "entropy":
        settings["entropy_histogram"] = {"bins": ENTROPY_BINS, "quantized_bins": ENTROPY_QUANTIZED_BINS}
    if spec.exclude:
        from .exclude import resolve

        settings["int8_exclude"] = resolve(source, spec.exclude).as_dict()

    def write(tmp: Path) -> None:
        if not float_tail:
            quantize_qdq(source, tmp, feeds, spec, activation_type="QUInt8")
            return
        from .exclude import named_for_quantizer, onnx_output_tail

        with named_for_quantizer(source, tmp) as named:
            tail = onnx_output_tail(named)
            settings["float_output_tail"] = quantize_qdq(
                named, tmp, feeds, spec, activation_type="QUInt8", keep_float=tail
            )

    atomic_write(path, write)
    return Path(path), settings


def quantize_qdq(
    source: Path,
    tmp: Path,
    feeds: DatasetFeeds,
    spec: CalibrationSpec,
    *,
    activation_type: str,
    op_types: list[str] | None = None,
    extra: dict | None = None,
    keep_float: list[str] | None = None,
) -> list[str]:
    """``quant_pre_process`` then ORT's static QDQ quantizer (per-channel s8 weights) into ``tmp``; ``keep_float``:
    more node names left in float. Returns those of them the pre-processing kept (the ones left in float); warns on
    stderr when it merged or renamed one into a node that is quantized (``exclude.tail_nodes_lost``)."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise BackendMissingError("onnxruntime is not installed: pip install onnxruntime.") from None
    from .exclude import ort_arguments, resolve, tail_nodes_lost

    options = {"CalibMovingAverage": False, **(extra or {})}
    excluded = resolve(source, spec.exclude) if spec.exclude else None  # refused here when it names nothing
    if spec.method == "percentile":
        options["CalibPercentile"] = 99.999
    # a hidden working folder beside the artifact: a killed run leaves it, never a file under a final name
    with tempfile.TemporaryDirectory(dir=Path(tmp).parent, prefix=f".{Path(tmp).name}.") as work:
        pre = Path(work) / "pre.onnx"
        tail: list[str] = []
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
        exclusion = ort_arguments(excluded)
        if excluded is not None and excluded.nodes:
            _check_nodes_kept(pre, excluded.nodes)
        if keep_float:
            from ..onnxfile import load_onnx

            processed = load_onnx(pre).graph
            kept = {n.name for n in processed.node}
            tail = [n for n in keep_float if n in kept]
            _warn_lost_tail(tail_nodes_lost(load_onnx(source).graph, processed, keep_float))
            exclusion["nodes_to_exclude"] = [*exclusion.get("nodes_to_exclude", []), *tail]
        if op_types is not None and "op_types_to_quantize" in exclusion:  # the caller's op types, less the excluded
            exclusion["op_types_to_quantize"] = [t for t in op_types if t not in excluded.op_types]
        cache = None
        if spec.method == "entropy":
            cache = _entropy_ranges(pre, Path(work), feeds, symmetric=bool(options.get("CalibTensorRangeSymmetric")))
        with _per_tensor_fallbacks():
            quantize_static(
                str(pre),
                str(tmp),
                _reader(feeds),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=exclusion.pop("op_types_to_quantize", op_types),
                per_channel=True,
                activation_type=getattr(QuantType, activation_type),
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, METHODS[spec.method]),
                extra_options=options,
                **({"calibration_cache_path": str(cache)} if cache is not None else {}),
                **exclusion,
            )
    return tail


# ORT's QDQ quantizer asks for a channel axis of every weight of a per-channel op; a weight whose rank lacks that axis
# (the rank-1 scale of the InstanceNormalization a GroupNorm exports to) is quantized per tensor instead, with one
# root-logger warning per use. They are collected here and said once.
_NO_CHANNEL_AXIS = re.compile(r"Axis -?\d+ is out-of-range for weight '(?P<name>.+)' with rank \d+$")


class _NoChannelAxis(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.weights: dict[str, None] = {}  # ordered, unique

    def filter(self, record: logging.LogRecord) -> bool:
        match = _NO_CHANNEL_AXIS.match(record.getMessage())
        if match:
            self.weights[match["name"]] = None
        return match is None


@contextlib.contextmanager
def _per_tensor_fallbacks() -> Iterator[_NoChannelAxis]:
    """While ORT quantizes: its per-tensor fallbacks for weights without a channel axis, one line on stderr."""
    caught = _NoChannelAxis()
    root = logging.getLogger()
    root.addFilter(caught)
    try:
        yield caught
    finally:
        root.removeFilter(caught)
    if caught.weights:
        names = list(caught.weights)
        say(
            f"note: {len(names)} weight(s) have no channel axis at their rank (a GroupNorm's InstanceNormalization "
            "scale, for one), so ONNX Runtime quantized them per tensor: "
            + ", ".join(names[:3])
            + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
        )


def _warn_lost_tail(lost: list[str]) -> None:
    if lost:
        say(
            f"warning: quant_pre_process merged or renamed {len(lost)} output-tail node(s) meant to stay in float; "
            "they are quantized: " + ", ".join(lost[:5]) + (f" (+{len(lost) - 5} more)" if len(lost) > 5 else "")
        )


# ORT's entropy calibrator, as quantize_static builds it, histograms each tensor into num_bins=128 bins and
# searches thresholds for num_quantized_bins=128 (onnxruntime/quantization/calibrate.py, create_calibrator):
# with as many bins as quantized bins the KL search has a single candidate, the full range, so its ranges are
# MinMax's (docs/decisions.md, "Entropy calibration"), and quantize_static passes no bin
# count through extra_options (only the Calib* keys it maps). The ranges are computed here with a finer
# histogram and handed to quantize_static as its calibration cache (calibration_cache_path, ORT >= 1.32).
ENTROPY_BINS = 2048  # PyTorch's HistogramObserver default, the figure ORT's authors tested (onnxruntime#9342)
ENTROPY_QUANTIZED_BINS = 255  # the levels of an 8-bit tensor (suggested in onnxruntime#10130's review)


def _entropy_ranges(model: Path, work: Path, feeds: DatasetFeeds, *, symmetric: bool) -> Path:
    import inspect

    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator

    try:
        from onnxruntime.quantization.calibrate import save_tensors_data
    except ImportError:
        save_tensors_data = None
    if save_tensors_data is None or "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise BackendMissingError(
            f"--calib-method entropy needs onnxruntime >= 1.32 (its calibration cache), and {onnxruntime.__version__} "
            "is installed: pip install -U onnxruntime, or use --calib-method percentile."
        )
    calibrator = create_calibrator(
        str(model),
        [],
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS, "symmetric": symmetric},
    )
    calibrator.collect_data(_reader(feeds))
    cache = work / "entropy_ranges.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def _check_nodes_kept(pre: Path, nodes: tuple[str, ...]) -> None:
    from ..errors import ConfigError
    from ..onnxfile import load_onnx

    names = {n.name for n in load_onnx(pre, load_weights=False).graph.node}
    gone = [n for n in nodes if n not in names]
    if gone:
        raise ConfigError(
            f"--int8-exclude {', '.join(gone)}: ONNX Runtime's pre-processing (quant_pre_process) fused "
            f"{'it' if len(gone) == 1 else 'them'} into a neighbour, so the name is gone. Exclude the op type, "
            "or the node it was fused into."
        )


def to_fp16(source: Path, path: Path) -> tuple[Path, dict]:
    """FP32 ONNX -> FP16 weights and compute, float32 input and output (``keep_io_types``), with ONNX Runtime's
    own converter (onnxruntime.transformers.float16); checked to load on the CPU provider before it is kept."""
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise BackendMissingError("onnxruntime is not installed: pip install onnxruntime.") from None
    from ..onnxfile import load_onnx

    def write(tmp: Path) -> None:
        model = convert_float_to_float16(load_onnx(source), keep_io_types=True)
        onnx.save(model, str(tmp))
        import onnxruntime as ort

        try:
            ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a missing FP16 kernel names the op in its text
            from ..errors import ConfigError

            raise ConfigError(
                f"ONNX Runtime {ort.__version__} on this CPU cannot run the FP16 graph: "
                f"{str(exc).strip().splitlines()[0][:240]}. Deploy --precision fp32 or int8 here, or FP16 with an "
                "openvino-* target (OpenVINO's CPU plugin runs FP16 IRs)."
            ) from None

    atomic_write(path, write)
    return Path(path), {"tool": "onnxruntime.transformers.float16", "keep_io_types": True}
