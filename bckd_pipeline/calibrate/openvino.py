"""OpenVINO IRs: FP32 and FP16 from the ONNX, and INT8 by NNCF post-training quantization.

With ``CalibrationSpec.max_miou_drop`` NNCF's accuracy-controlled quantization reverts the most
sensitive layers to float until the drop of the task's metric (segmentation: mIoU) on the validation
images is within the limit.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


from ..runtimes.openvino import import_openvino
from ..errors import BackendMissingError, StageCheckError
from ..targets.profiles import CalibrationSpec
from ..data.feeds import DatasetFeeds
from ..tasks import DEFAULT_TASK, Task, get_task


def save_ir(model, xml_path: Path, *, compress_to_fp16: bool) -> Path:
    """Write model.xml and model.bin so that neither appears until both are complete."""
    ov = import_openvino()
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xml_path.parent, prefix=f".{xml_path.stem}.") as work:
        tmp_xml = Path(work) / xml_path.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
        os.replace(tmp_xml.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        os.replace(tmp_xml, xml_path)
    return xml_path


def to_ir(source: Path, xml_path: Path, *, fp16: bool) -> Path:
    """An ONNX file or an FP32 IR -> an IR with FP32 or FP16-compressed weights."""
    ov = import_openvino()
    try:
        model = ov.Core().read_model(str(source))
    except Exception as exc:  # noqa: BLE001 - conversion failures name the op in their text
        raise StageCheckError(
            f"OpenVINO could not convert {str(source)!r}: {str(exc).strip().splitlines()[0][:300]}"
        ) from None
    return save_ir(model, xml_path, compress_to_fp16=fp16)


def _nncf():
    from .. import nncf_env

    nncf_env.prepare()  # no CUDA notice on a CPU host
    try:
        import nncf
    except ImportError:
        raise BackendMissingError(
            'NNCF is not installed: pip install "bckd-pipeline[openvino]" (openvino and nncf).'
        ) from None
    nncf_env.logs_to_stderr()  # its log is not the ledger's stdout
    return nncf


def quantize_ir(
    fp32_xml: Path,
    xml_path: Path,
    feeds: DatasetFeeds,
    spec: CalibrationSpec,
    *,
    target_device: str,
    validation: DatasetFeeds | None = None,
    num_classes: int | None = None,
    ignore_index: int = 255,
    source_onnx: Path | None = None,
    task: Task | None = None,
) -> tuple[Path, dict]:
    """NNCF PTQ of the FP32 IR for ``target_device`` (CPU/GPU/NPU); returns the INT8 IR path and settings.

    With ``spec.max_miou_drop``, NNCF's validation function is the task's metric over ``validation``
    (``Task.score_split``; default task: segmentation, whose metric is mIoU)."""
    ov = import_openvino()
    nncf = _nncf()
    model = ov.Core().read_model(str(fp32_xml))
    calibration = nncf.Dataset(list(feeds))
    preset = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}[spec.preset]
    device = getattr(nncf.TargetDevice, target_device.upper(), nncf.TargetDevice.ANY)
    settings = {
        "tool": "nncf",
        "nncf": nncf.__version__,
        "preset": spec.preset,
        "target_device": device.name,
        "subset_size": len(feeds),
        "accuracy_control": spec.max_miou_drop is not None,
    }
    ignored = None
    if spec.exclude:  # --int8-exclude: names and op types of the ONNX the IR was converted from
        from .exclude import nncf_ignored_scope, resolve

        ex = resolve(source_onnx, spec.exclude)
        ignored = nncf_ignored_scope(nncf, model, ex)
        settings["int8_exclude"] = {**ex.as_dict(), "ignored_scope": {"names": ignored.names, "types": ignored.types}}
    task = task if task is not None else get_task(DEFAULT_TASK)
    if task.int8_float_tail:  # the head's decoding arithmetic stays in float (calibrate/exclude.py)
        from .exclude import output_tail_names, with_output_tail

        ignored = with_output_tail(nncf, model, ignored)
        settings["float_output_tail"] = output_tail_names(model)
    if spec.max_miou_drop is None:
        quantized = nncf.quantize(
            model, calibration, preset=preset, target_device=device, subset_size=len(feeds), ignored_scope=ignored
        )
    else:
        if validation is None or num_classes is None:
            raise StageCheckError("Accuracy-controlled quantization needs validation images and num_classes.")
        pairs = list(validation.pairs())

        def metric_fraction(compiled, items) -> float:
            def predict(feed):
                result = compiled(feed)
                return task.raw_output({o.get_any_name(): result[o] for o in compiled.outputs}, feed)

            score = task.score_split(predict, items, num_classes=num_classes, ignore_index=ignore_index)
            return score / 100.0  # the metric in points, and the drop below, as fractions

        quantized = nncf.quantize_with_accuracy_control(
            model,
            calibration,
            nncf.Dataset(pairs, lambda item: item[0]),
            validation_fn=metric_fraction,
            max_drop=spec.max_miou_drop / 100.0,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=preset,
            target_device=device,
            subset_size=len(feeds),
            ignored_scope=ignored,
        )
        settings["max_miou_drop"] = spec.max_miou_drop
    save_ir(quantized, xml_path, compress_to_fp16=False)
    return Path(xml_path), settings
