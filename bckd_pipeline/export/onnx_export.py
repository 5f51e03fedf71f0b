"""Student checkpoint -> ONNX, checked by ``onnx.checker`` and by ONNX Runtime against PyTorch."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..configs import CheckpointMeta
from ..errors import ExportError
from ..fileio import atomic_write
from .check import CheckReport, Feed, compare, require
from ..model_spec import INPUT_NAME, ExportSpec
from ..tasks import get_task
from .wrapper import export_wrapper, for_static_export, named_outputs

# Logit tolerance between PyTorch eager and ONNX Runtime, both fp32 on CPU: kernels differ in
# summation order only, so anything beyond this is a real export bug.
EXPORT_ATOL = 1e-3


def onnx_metadata(
    meta: CheckpointMeta,
    spec: ExportSpec,
    extra: dict[str, str] | None = None,
    *,
    input_name: str = INPUT_NAME,
    output_name: str | None = None,
) -> dict[str, str]:
    """What a deployment needs to feed the model and read its output, as ONNX metadata_props."""
    from .. import __version__

    props = {
        "bckd.format": "bckd-pipeline/onnx-v1",
        "bckd.version": __version__,
        "bckd.model": meta.model,
        "bckd.input": json.dumps(
            {
                "name": input_name,
                "shape": list(spec.input_shape()),
                "dynamic": list(spec.dynamic),
                "dtype": "float32",
                "layout": "NCHW",
                "color": "RGB",
                "scale": "0..255" if spec.bake_normalization else "normalized",
            }
        ),
        "bckd.preprocessing": json.dumps(
            {
                "mean": list(meta.mean) if meta.extra.get("normalization_known", True) else None,
                "std": list(meta.std) if meta.extra.get("normalization_known", True) else None,
                "baked_into_graph": spec.bake_normalization,
                "resize_to": list(spec.input_hw),
            }
        ),
        "bckd.output": json.dumps(
            {"name": output_name or spec.output_name, "kind": spec.network_head}
            if output_name is not None or len(spec.output_names) == 1
            else {"name": spec.output_names[0], "names": list(spec.output_names), "kind": spec.network_head}
        ),
        "bckd.class_names": json.dumps(list(meta.class_names)),
        "bckd.ignore_index": str(meta.ignore_index),
        "bckd.opset": str(spec.opset),
    }
    if spec.task != "segmentation":  # the file format: no bckd.task entry means a segmentation model
        props["bckd.task"] = spec.task
    if meta.class_colors is not None:  # absent: readers draw with the project's palette
        props["bckd.class_colors"] = json.dumps([list(c) for c in meta.class_colors])
    props.update(extra or {})
    return props


def check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"onnx.checker rejected {str(path)!r}: {str(exc).splitlines()[0][:300]}") from None


def _failed_op(exc: Exception) -> str | None:
    text = str(exc)
    for pattern in (r"operator '?(aten::\w+|prim::\w+)'?", r"(aten::\w+)", r"Unsupported operator[: ]+'?([\w:.]+)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


def to_onnx(
    student: torch.nn.Module,
    meta: CheckpointMeta,
    spec: ExportSpec,
    path: Path,
    check_feeds: Iterable[Feed],
    *,
    extra_metadata: dict[str, str] | None = None,
) -> tuple[Path, CheckReport]:
    """Export the task's wrapper of ``student`` (export/wrapper.py); then the full checker, then ORT-CPU vs eager
    on ``check_feeds``, on every output."""
    import onnx

    from ..data.base import Normalization

    norm = Normalization(meta.mean, meta.std) if spec.bake_normalization else None
    wrapper = export_wrapper(student.cpu(), normalize=norm, head=spec.network_head, task=spec.task).eval()
    dummy = torch.zeros(spec.input_shape())
    exported = wrapper
    if isinstance(student, torch.jit.ScriptModule):
        # The ONNX exporter cannot trace a TorchScript *submodule* (pytorch#86261); a TorchScript top level it
        # exports, so the wrapper around a TorchScript file is traced into one first.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation and tracer warnings: the export is checked against eager
            exported = torch.jit.trace(wrapper, (dummy,), check_trace=False)
    elif not spec.dynamic:
        exported = for_static_export(wrapper)  # PSPNet's pyramid at sizes it does not divide; checked against eager

    def write(tmp: Path) -> None:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python values
                # The TorchScript exporter: deterministic and fast on CPU for these CNNs; the dynamo
                # exporter is slower to export and emits the same ops here.
                torch.onnx.export(
                    exported,
                    (dummy,),
                    str(tmp),
                    input_names=[INPUT_NAME],
                    output_names=list(spec.output_names),
                    dynamic_axes=spec.dynamic_axes() or None,
                    opset_version=spec.opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
        except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one clear message
            op = _failed_op(exc)
            where = f" at op {op}" if op else ""
            first = str(exc).strip().splitlines()[0][:300].rstrip(".")
            raise ExportError(
                f"Exporting {meta.model!r} to ONNX opset {spec.opset} failed{where}: {first}. Try a newer --opset, "
                "or replace that op in the model (the export wrapper never patches the training model)."
            ) from None
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, onnx_metadata(meta, spec, extra_metadata))
        onnx.save(model, str(tmp))
        check_onnx(tmp)

    atomic_write(path, write)

    from ..runtimes.onnxruntime import OrtRuntime

    def eager(feed: Feed) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return named_outputs(wrapper(torch.from_numpy(feed[INPUT_NAME])), spec.output_names)

    try:
        with OrtRuntime(path, threads=None) as ort_rt:
            report = compare(
                "export", "pytorch", eager, ort_rt.infer, check_feeds, atol=EXPORT_ATOL,
                rtol=get_task(spec.task).export_rtol,
            )  # fmt: skip
        require(report, "The ONNX graph does not compute what the PyTorch model does; report the model and opset.")
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    return Path(path), report
