"""Is the TensorRT QAT Q/DQ ONNX TensorRT-ready on real students?

    python benchmarks/trt_qat_ready.py --data camvid:.bench/camvid96 \
        --student deeplabv3plus-mbv2=.bench/study96-bf16/kd+bckd@fp32/s0/student.pt ... --json /tmp/trt_qat_ready.json

docs/results/trt_qat_ready_cpu.json embeds that JSON (``result``) in a benchmarks/record_command.py record; the
commands are in docs/deploy-int8.md.

Per checkpoint: the QAT stage's TensorRT scheme (``qat/fakequant.py``: NNCF, symmetric s8, Concat inputs on one
quantizer), ranges from --calib-size training images, no fine-tune (placement does not depend on it), the Q/DQ
export, then ``make_tensorrt_ready``; recorded: what was added, which convolutions stay float, what
``check_tensorrt_qdq`` says, and the largest output change of the added pairs alone (they must be exact).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (versions, error_text)
from quant import measure  # noqa: E402  (load_student, feeds_of)


def one(preset: str, checkpoint: Path, args, opts) -> dict:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from bckd_pipeline.calibrate.tensorrt import check_tensorrt_qdq
    from bckd_pipeline.context import norm
    from bckd_pipeline.export.wrapper import SegExportWrapper
    from bckd_pipeline.qat import fakequant

    hw = tuple(int(v) for v in args.size.split(","))
    student = measure.load_student(preset, checkpoint)
    calib = measure.feeds_of(opts, args.data, "train", hw, args.calib_size, seed=0)
    wrapper = SegExportWrapper(student.model, normalize=norm(student.meta), head="logits").eval()
    qmodel = fakequant.insert_fake_quant(wrapper, list(replace(calib, batch=1)), fakequant.scheme_for("tensorrt"))
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "qat.qdq.onnx"
        fakequant.export_qdq(qmodel, torch.zeros(1, 3, *hw), path, opset=17, input_name="image", output_name="logits")
        before = check_tensorrt_qdq(path)
        exact = Path(work) / "requantized.onnx"
        shutil.copy(path, exact)
        added = fakequant._requantize_inputs(exact)
        x = calib.images[0]
        runs = [
            ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
            for p in (path, exact)
        ]
        try:
            ready = fakequant.make_tensorrt_ready(path)
            error = None
        except Exception as exc:  # noqa: BLE001 - recorded, the next student still runs
            ready, error = None, str(exc)
        graph = onnx.load(str(path)).graph
        producer = {o: n for n in graph.node for o in n.output}
        float_convs = [
            n.name
            for n in graph.node
            if n.op_type in ("Conv", "ConvTranspose")
            and not any(i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input[:2])
        ]
        convs = sum(n.op_type in ("Conv", "ConvTranspose") for n in graph.node)
    return {
        "checkpoint": str(checkpoint),
        "input_hw": list(hw),
        "problems_as_exported": len(before),
        "problems_as_exported_first": before[:3],
        "requantized_pairs": added,
        "requantized_max_abs_change": float(np.abs(runs[0] - runs[1]).max()),
        "make_tensorrt_ready": ready,
        "error": error,
        "tensorrt_ready": error is None,
        "convolutions": convs,
        "float_convolutions": len(float_convs),
        "float_convolution_names": float_convs[:12],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--student", action="append", required=True, help="PRESET=CHECKPOINT (repeat)")
    ap.add_argument("--calib-size", type=int, default=16)
    ap.add_argument("--size", default="96,128")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    opts = argparse.Namespace(threads=None, resamples=1000, seed=0, demo_count=None)
    out = {
        "command": "python benchmarks/trt_qat_ready.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": common.versions(),
        "students": {},
    }
    for entry in args.student:
        preset, _, ckpt = entry.partition("=")
        try:
            out["students"][preset] = one(preset, Path(ckpt), args, opts)
        except Exception as exc:  # noqa: BLE001 - recorded; the next student still runs
            out["students"][preset] = {
                "checkpoint": ckpt,
                "tensorrt_ready": False,
                "error": common.error_text(exc),
            }
            print(f"{preset}: {out['students'][preset]['error']}", flush=True)
            continue
        r = out["students"][preset]
        print(
            f"{preset}: {r['problems_as_exported']} problems as exported, {r['requantized_pairs']} exact pairs added "
            f"(max change {r['requantized_max_abs_change']:.1e}), ready={r['tensorrt_ready']}, "
            f"{r['float_convolutions']}/{r['convolutions']} convolutions float",
            flush=True,
        )
    from bckd_pipeline.fileio import write_text

    write_text(args.json, json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
