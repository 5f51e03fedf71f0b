"""Teacher-guided QAT: NNCF's fake quantization, its Q/DQ export, the fine-tune, the stage."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nncf")
pytest.importorskip("torchao")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from bckd_pipeline.data.base import Normalization  # noqa: E402
from bckd_pipeline.distill.models import build_model, default_taps  # noqa: E402
from bckd_pipeline.export.wrapper import SegExportWrapper  # noqa: E402
from bckd_pipeline.qat import fakequant  # noqa: E402
from bckd_pipeline.qat.finetune import QatSchedule, finetune  # noqa: E402

from helpers.deploy import NUM_CLASSES, demo_feeds  # noqa: E402

NORM = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# NNCF's traced op names -> the ONNX op the exporter writes for them.
ONNX_OP = {"conv2d": "Conv", "relu": "Relu", "relu_": "Relu", "interpolate": "Resize", "cat": "Concat"}


def wrapped_student(seed: int = 0):
    torch.manual_seed(seed)
    return SegExportWrapper(build_model("tiny-student", NUM_CLASSES), normalize=NORM).eval()


def qdq_pairs(graph) -> dict:
    """QuantizeLinear node -> (its DequantizeLinear consumer, the scale, the zero point, the axis or None)."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    pairs = {}
    for q in (n for n in graph.node if n.op_type == "QuantizeLinear"):
        (dq,) = consumers[q.output[0]]
        assert dq.op_type == "DequantizeLinear" and list(dq.input[1:]) == list(q.input[1:])
        axis = next((a.i for a in q.attribute if a.name == "axis"), None)
        pairs[q.name] = (q, dq, consts[q.input[1]], consts[q.input[2]], axis)
    return pairs


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_every_fake_quantizer_is_one_qdq_pair_on_the_same_tensor(tmp_path, backend):
    """Each fake quantizer of the model that is exported (NNCF's, stripped to torch FakeQuantize) is one
    QuantizeLinear -> DequantizeLinear pair of the ONNX: same scale, same zero point and its signedness, same
    per-channel axis, on the tensor the quantizer sits on (a weight of the op it feeds, or the output of the
    op it follows); no pair is left over."""
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.wrapper import get_hook_storage

    feeds = demo_feeds("train", n=4)
    qmodel = fakequant.insert_fake_quant(wrapped_student(), list(feeds), fakequant.scheme_for(backend))
    example = torch.from_numpy(feeds.images[0])
    stripped = fakequant.strip_to_torch(qmodel, example)
    hooks = {
        n: m
        for n, m in get_hook_storage(stripped).named_hooks(remove_duplicate=False)
        if isinstance(m, torch.ao.quantization.FakeQuantize)
    }
    assert len(hooks) == len(fakequant.fake_quantizers(qmodel)) > 0  # every NNCF quantizer became a FakeQuantize
    path = fakequant.export_qdq(
        qmodel, example, tmp_path / "qat.onnx", opset=17, input_name="image", output_name="logits"
    )
    graph = onnx.load(str(path)).graph
    assert not [n for n in graph.node if n.domain], "no custom-domain FakeQuantize may be left"
    remaining = qdq_pairs(graph)
    assert len(remaining) == len(hooks)
    producer = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {t.name: t for t in graph.initializer}

    def on_its_tensor(kind: str, op: str, port: int, q, dq) -> bool:
        if kind == "pre_hooks":  # an input of the op: the DQ feeds that op at that port
            users = consumers[dq.output[0]]
            return (
                len(users) == 1 and users[0].op_type == ONNX_OP[op] and list(users[0].input).index(dq.output[0]) == port
            )
        if q.input[0] not in producer:
            return q.input[0] == "image"
        return producer[q.input[0]].op_type == ONNX_OP.get(op, op.capitalize())

    for hook, fq in hooks.items():
        kind, op_name, port = decode_hook_name(hook)
        op = op_name.split("/")[-2] if op_name.count("/") >= 2 else op_name
        scale, zp = fq.scale.detach().numpy(), fq.zero_point.detach().numpy()
        per_channel = fq.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
        want_dtype = np.int8 if fq.quant_min < 0 else np.uint8
        found = [
            k
            for k, (q, dq, s, z, axis) in remaining.items()
            if s.size == scale.size
            and np.allclose(s, scale.reshape(s.shape), rtol=1e-6)
            and z.dtype == want_dtype
            and z.size == zp.size
            and np.array_equal(z.astype(np.int64), zp.reshape(z.shape).astype(np.int64))
            and (axis == fq.ch_axis if per_channel else axis is None)
            and on_its_tensor(kind, op, port, q, dq)
        ]
        assert found, f"no Q/DQ pair for {hook} ({fq.qscheme}, {fq.quant_min}..{fq.quant_max})"
        q = remaining.pop(found[0])[0]
        if per_channel:  # a weight, per output channel, symmetric s8
            assert q.input[0] in inits and scale.size == inits[q.input[0]].dims[fq.ch_axis]
            assert want_dtype is np.int8 and not zp.any()
        if backend == "tensorrt":
            assert want_dtype is np.int8 and not zp.any()  # TensorRT: symmetric, zero point 0 everywhere
        if backend == "onnxruntime" and not per_channel:
            assert want_dtype is np.uint8  # ORT's u8 asymmetric activations
    assert not remaining, f"Q/DQ pairs no fake quantizer accounts for: {sorted(remaining)}"
    if backend == "tensorrt":  # then made TensorRT-ready: only exact pairs added (Concat outputs on their inputs' grid)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        before = sess.run(None, {"image": feeds.images[1]})[0]
        done = fakequant.make_tensorrt_ready(path)
        assert done["tensorrt_ready"] and done["inputs_requantized"] == 1
        after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"image": feeds.images[1]}
        )[0]
        np.testing.assert_allclose(after, before, atol=1e-5)


class RealPresetShapes(torch.nn.Module):
    """The structures of the real presets that NNCF quantizes in ways TensorRT's check refused: a Pad before a
    convolution (timm's "same" padding in EfficientNet-Lite), a MaxPool stem whose output is also the identity
    shortcut of a residual Add (ResNet), and a Concat of two branches of different ranges before a separable
    convolution (DeepLabV3+'s decoder)."""

    def __init__(self):
        super().__init__()
        conv = torch.nn.Conv2d
        self.stem = torch.nn.Sequential(conv(3, 8, 3, 1, 1), torch.nn.ReLU())
        self.padded = conv(8, 8, 3, 2)  # after F.pad
        self.pool = torch.nn.MaxPool2d(2)
        self.block = torch.nn.Sequential(conv(8, 8, 3, 1, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), conv(8, 8, 1))
        self.loud = torch.nn.Sequential(conv(8, 8, 1), torch.nn.ReLU())
        self.quiet = torch.nn.Sequential(conv(8, 8, 1), torch.nn.ReLU())
        # A separable convolution after the Concat, as DeepLabV3+'s decoder has: NNCF does not unify the scales
        # of a Concat that feeds a depthwise convolution.
        self.head = torch.nn.Sequential(conv(16, 16, 3, padding=1, groups=16, bias=False), conv(16, NUM_CLASSES, 1))

    def forward(self, x):
        y = self.stem(x / 255.0)
        y = self.padded(torch.nn.functional.pad(y, (0, 1, 0, 1)))
        y = self.pool(y)
        y = torch.relu(y + self.block(y))
        loud = torch.nn.functional.interpolate(self.loud(y) * 8.0, scale_factor=1.0, mode="bilinear")
        return self.head(torch.cat([loud, self.quiet(y)], 1))


def test_tensorrt_qat_of_real_preset_structures_is_tensorrt_ready_without_changing_a_value(tmp_path):
    """Pad, MaxPool, a MaxPool shortcut and a mixed-range Concat: the Concat's inputs share one quantizer before any
    fine-tune (unify_concat_scales), the Q/DQ pairs TensorRT wants on a convolution's input or a residual input are
    added on the grid those values already lie on (the same outputs), and the file passes check_tensorrt_qdq."""
    import shutil

    from onnx import numpy_helper

    from bckd_pipeline.calibrate.tensorrt import check_tensorrt_qdq

    torch.manual_seed(0)
    feeds = demo_feeds("train", n=4)
    model = RealPresetShapes().eval()
    qmodel = fakequant.insert_fake_quant(model, list(feeds), fakequant.scheme_for("tensorrt"))
    path = fakequant.export_qdq(
        qmodel, torch.from_numpy(feeds.images[0]), tmp_path / "qat.onnx", opset=17, input_name="image",
        output_name="logits",
    )  # fmt: skip
    graph = onnx.load(str(path)).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    conv_inputs = {n.input[0] for n in graph.node if n.op_type == "Conv"}
    (concat,) = [n for n in graph.node if n.op_type == "Concat" and n.output[0] in conv_inputs]
    scales = {float(consts[producer[i].input[1]]) for i in concat.input}
    assert len(scales) == 1, "the Concat's inputs are quantized with one scale"
    assert check_tensorrt_qdq(path) != [], "as exported, TensorRT's check refuses it"

    shutil.copy(path, tmp_path / "requantized.onnx")
    added = fakequant._requantize_inputs(tmp_path / "requantized.onnx")
    assert added >= 4  # the padded conv, the conv after the pool, the shortcut, the conv after the Concat

    def run(p):
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": feeds.images[1]})[0]

    np.testing.assert_allclose(run(tmp_path / "requantized.onnx"), run(path), atol=1e-5)
    done = fakequant.make_tensorrt_ready(path)
    assert done["tensorrt_ready"] and done["inputs_requantized"] == added
    assert check_tensorrt_qdq(path) == []


def test_a_pyramid_pool_the_exporter_refuses_is_quantized_and_exported_as_slices(tmp_path):
    """PSPNet's pyramid pools to 3x3 and 6x6, sizes that do not divide the map at the deployed input size: the
    TorchScript exporter refuses adaptive pooling there. The QAT model is built on the static form
    (export/wrapper.py::for_static_export), so NNCF traces and the Q/DQ export writes the same graph."""

    class Pyramid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, 1, 1)
            self.pool = torch.nn.AdaptiveAvgPool2d(3)
            self.head = torch.nn.Conv2d(16, NUM_CLASSES, 1)

        def forward(self, x):
            y = torch.relu(self.conv(x / 255.0))
            pooled = torch.nn.functional.interpolate(self.pool(y), size=y.shape[-2:], mode="bilinear")
            return self.head(torch.cat([y, pooled], 1))

    feeds = demo_feeds("train", n=2, hw=(32, 40))
    model = Pyramid().eval()
    with pytest.raises(Exception, match="adaptive_avg_pool2d"):
        torch.onnx.export(model, torch.zeros(1, 3, 32, 40), str(tmp_path / "plain.onnx"), dynamo=False)
    qmodel = fakequant.insert_fake_quant(model, list(feeds), fakequant.scheme_for("onnxruntime"))
    path = fakequant.export_qdq(
        qmodel, torch.from_numpy(feeds.images[0]), tmp_path / "qat.onnx", opset=17, input_name="image",
        output_name="logits",
    )  # fmt: skip
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": feeds.images[1]})[0]
    with torch.no_grad():
        want = qmodel(torch.from_numpy(feeds.images[1])).numpy()
    # ONNX Runtime's integer kernels and NNCF's fake quantizers round a value on a bin edge differently now and then
    np.testing.assert_allclose(got, want, atol=5e-3)
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.99


def test_the_openvino_ir_has_one_fakequantize_per_fake_quantizer(tmp_path):
    """OpenVINO targets: openvino.convert_model on the NNCF model gives an INT8 IR: one FakeQuantize per NNCF
    activation quantizer (per hook), and each weight quantizer folded into an int8 weight constant (OpenVINO's
    compressed weights); it computes what the fake-quantized torch model computes."""
    ov = pytest.importorskip("openvino")
    feeds = demo_feeds("train", n=4)
    qmodel = fakequant.insert_fake_quant(wrapped_student(), list(feeds), fakequant.scheme_for("openvino"))
    example = torch.from_numpy(feeds.images[0])
    xml = fakequant.export_ir(qmodel, example, tmp_path / "int8" / "model.xml")
    model = ov.Core().read_model(str(xml))
    fq = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    int8 = [op for op in model.get_ops() if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8]
    hooks = fakequant.fake_quantizers(qmodel)
    weights = [n for n, q in hooks.items() if q.per_channel]
    assert len(fq) == len(hooks) - len(weights) > 0 and len(int8) == len(weights) > 0
    compiled = ov.Core().compile_model(model, "CPU")
    x = feeds.images[1]
    got = compiled({0: x})[compiled.outputs[0]]
    with torch.no_grad():
        want = qmodel(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape and (got.argmax(1) == want.argmax(1)).mean() > 0.99


def trained_student(train, iters: int = 150):
    """tiny-student trained briefly on the demo images: its argmax varies over the image (an untrained one
    predicts one class everywhere, which no quantization changes)."""
    model = wrapped_student(seed=3)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.from_numpy(np.concatenate(train.images))
    y = torch.from_numpy(np.stack(train.labels))
    for _ in range(iters):
        loss = torch.nn.functional.cross_entropy(model(x), y, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _disagreement(onnx_path, reference, feeds) -> tuple[float, float]:
    """(mean |logit INT8 - logit FP32|, fraction of pixels whose argmax differs) over ``feeds``."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    errors, differ, total = [], 0, 0
    for feed in feeds:
        got = sess.run(None, feed)[0]
        with torch.no_grad():
            want = reference(torch.from_numpy(feed["image"])).numpy()
        errors.append(float(np.abs(got - want).mean()))
        differ += int((got.argmax(1) != want.argmax(1)).sum())
        total += got.shape[0] * got.shape[2] * got.shape[3]
    return float(np.mean(errors)), differ / total


@pytest.mark.slow
def test_qat_reduces_the_int8_disagreement_where_ptq_loses(tmp_path):
    """PTQ made to lose: an outlier channel (stage 0's first channel 200x the others, read by nothing downstream)
    stretches a per-tensor activation range, so the other channels keep few levels; calibrated on two images.
    QAT: NNCF's ranges from the same two images, then 60 steps of KD + BCKD + CE from the FP32 student (the
    labels are its own argmax: a fixture of self-distillation) on the training images; judged on validation
    images neither saw, against ONNX Runtime's PTQ of the same model (calibrate/onnxruntime.py).

    Asserted: the mean logit error, which the fine-tune's KD term reduces. Not asserted: the fraction of pixels
    whose label flips, which on this fixture moves with float rounding and with the fine-tune's seed; the logit
    error's ordering does not."""
    from bckd_pipeline.calibrate.onnxruntime import quantize_ort
    from bckd_pipeline.targets.profiles import CalibrationSpec

    hw = (40, 72)  # BCKD's boundary term needs a 5 x 9 grid at stride 8
    train = demo_feeds("train", n=24, hw=hw)
    held_out = list(demo_feeds("val", n=8, hw=hw))
    fp32 = trained_student(train)
    with torch.no_grad():
        stage = fp32.student.stages[0]
        stage[0].weight[0] *= 200.0
        stage[3].weight[:, 0] = 0.0
        train.labels = [fp32(torch.from_numpy(x)).argmax(1)[0].numpy() for x in train.images]
    calib = copy.copy(train)
    calib.images, calib.labels = train.images[:2], train.labels[:2]
    example = torch.from_numpy(calib.images[0])
    onnx_fp32 = tmp_path / "fp32.onnx"
    with torch.no_grad():
        torch.onnx.export(
            fp32,
            (example,),
            str(onnx_fp32),
            input_names=["image"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
        )
    ptq, _ = quantize_ort(onnx_fp32, tmp_path / "ptq.onnx", calib, CalibrationSpec(size=2))
    ptq_err, ptq_px = _disagreement(ptq, fp32, held_out)

    qmodel = fakequant.insert_fake_quant(copy.deepcopy(fp32), list(calib), fakequant.scheme_for("onnxruntime"))
    taps = [f"student.{t}" for t in default_taps("tiny-student")]
    cost = finetune(
        qmodel,
        copy.deepcopy(fp32),
        train.images,
        train.labels,
        QatSchedule(iters=60, lr=1e-4, batch_size=4),
        student_taps=taps,
        teacher_taps=taps,
        ignore_index=255,
    )
    qat = fakequant.export_qdq(
        qmodel, example, tmp_path / "qat.onnx", opset=17, input_name="image", output_name="logits"
    )
    qat_err, qat_px = _disagreement(qat, fp32, held_out)
    print(
        f"vs FP32 on held-out images: PTQ logit error {ptq_err:.4f}, pixels {ptq_px:.4f}; "
        f"QAT {qat_err:.4f}, {qat_px:.4f}"
    )
    assert cost["iterations"] == 60 and cost["wall_s"] > 0 and {"kd", "boundary", "context"} <= set(cost["loss_last"])
    assert ptq_px > 0.01, f"the fixture must make PTQ lose (PTQ changes {ptq_px:.4f} of the pixels)"
    assert qat_err < ptq_err


# ---------------------------------------------------------------------------------------------
# the flag, the stage, the ledger row, the reports and the gate
# ---------------------------------------------------------------------------------------------
SMOKE = ["--preset", "smoke", "--no-progress", "--train-device", "cpu"]
FAST = [
    "--latency-runs",
    "3",
    "--warmup-s",
    "0",
    "--warmup-runs",
    "1",
    "--no-throughput",
    "--parity-images",
    "4",
    "--calib-size",
    "4",
]


def demo_checkpoint(folder, model: str = "tiny-student"):
    """A tiny preset over the demo dataset's classes, at 40x72 (BCKD's grid fits), random weights."""
    from bckd_pipeline.data.demo import DemoDataset
    from bckd_pipeline.configs import CheckpointMeta
    from bckd_pipeline.distill.checkpoint import save_checkpoint

    names = tuple(DemoDataset("val", size=(32, 32), count=1).info.class_names)
    torch.manual_seed(0)
    role = "teacher" if "teacher" in model else "student"
    path = folder / f"{role}.pt"
    meta = CheckpointMeta(
        model=model, num_classes=len(names), class_names=names, input_hw=(40, 72), dataset="demo", role=role
    )
    save_checkpoint(path, build_model(model, len(names)).eval(), meta)
    return path


def run_cli(capsys, *argv):
    from bckd_pipeline.cli import main

    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("command", ["deploy", "run"])
def test_qat_auto_without_a_budget_is_refused(tmp_path, capsys, command):
    from helpers.cli import assert_clean_error

    out = tmp_path / "R"
    model = ["--model", demo_checkpoint(tmp_path)] if command == "deploy" else []
    rc, _, err = run_cli(capsys, command, *SMOKE, *model, "--qat", "auto", "--out", out)
    assert_clean_error(rc, err, out)
    assert "--qat auto fine-tunes only when the INT8 row misses a max_miou_drop budget, and no budget was given" in err
    assert "--qat-max-miou-drop" in err and "--budgets" in err and "--qat on" in err
    budgets = tmp_path / "b.toml"
    budgets.write_text("[onnxruntime-cpu]\nmax_p50_ms = 1000\n")  # a budgets file without max_miou_drop
    rc, _, err = run_cli(capsys, command, *SMOKE, *model, "--qat", "auto", "--budgets", budgets, "--out", out)
    assert_clean_error(rc, err, out)
    assert f"--budgets {budgets} sets no max_miou_drop" in err
    rc, _, err = run_cli(capsys, command, *SMOKE, *model, "--qat", "maybe", "--out", out)
    assert_clean_error(rc, err, out)
    assert "--qat 'maybe' is not allowed. Allowed: auto, on, off." in err


def test_qat_on_a_target_that_is_not_int8_is_refused(tmp_path, capsys):
    from helpers.cli import assert_clean_error

    out = tmp_path / "R"
    model = demo_checkpoint(tmp_path)
    rc, _, err = run_cli(
        capsys, "deploy", *SMOKE, "--model", model, "--target", "onnxruntime-cpu-fp32", "--qat", "on", "--out", out
    )
    assert_clean_error(rc, err, out)
    assert "QAT fine-tunes an INT8 model" in err


@pytest.mark.slow
def test_the_qat_row_is_in_the_ledger_the_reports_and_the_gate(tmp_path, capsys):
    import json

    out = tmp_path / "D"
    model = demo_checkpoint(tmp_path)
    budgets = tmp_path / "b.toml"
    budgets.write_text(
        "[gate]\nallow_degenerate = true  # a 3-iteration demo model predicts one class: the rows still count\n"
        "[onnxruntime-cpu]\nmax_miou_drop = 100\nmin_pixel_agreement = 0.01\n"
        "[onnxruntime-cpu.stages.qat-int8]\nmax_p50_ms = 100000\n"
    )
    teacher = demo_checkpoint(tmp_path, "tiny-teacher")
    argv = ["deploy", *SMOKE, "--model", model, "--teacher", teacher, "--qat", "on", "--qat-kd", "kd+bckd"]
    argv += ["--qat-iters", "3"]
    argv += ["--qat-batch", "2", *FAST]
    rc, stdout, err = run_cli(capsys, *argv, "--budgets", budgets, "--out", out)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in report["stages"]]
    assert names[-2:] == ["onnxruntime-int8", "qat-int8"]  # the PTQ row kept beside it, QAT deployed last
    row = report["stages"][-1]
    assert row["parity_passed"] is not None and row["latency_ms"]["p50"] > 0  # parity and latency, like every row
    assert row["artifact"].endswith("model.qat.int8.onnx")
    q = report["qat"]
    assert q["ran"] and q["mode"] == "on" and q["cost"]["iterations"] == 3 and q["cost"]["stage_wall_s"] > 0
    assert q["teacher"] == f"teacher checkpoint {teacher}" and q["cached"] is False and q["kd"] == "kd+bckd"
    assert q["scheme"]["activations"] == "asymmetric u8" and "recovered_miou" in q
    html_text = (out / "report.html").read_text()
    assert "qat-int8" in html_text and "QAT (--qat on)" in html_text
    assert "QAT (--qat on)" in (out / "report.md").read_text()
    assert "| qat-int8 |" in stdout

    from bckd_pipeline.gate.budgets import load_budgets
    from bckd_pipeline.gate.gate import gate

    result = gate(out / "report.json", load_budgets(budgets))
    checked = {(c.stage, c.budget) for c in result.checks}
    assert ("qat-int8", "max_miou_drop") in checked and ("qat-int8", "max_p50_ms") in checked
    assert result.exit_code == 0

    rc, _, err = run_cli(capsys, *argv, "--budgets", budgets, "--out", out)  # a rerun reuses the QAT stage
    assert rc == 0, err
    again = json.loads((out / "report.json").read_text())["qat"]
    assert again["cached"] is True and again["cost"] == q["cost"]
    assert "stage qat [onnxruntime-cpu]: cached" in err


def test_qat_auto_keeps_the_ptq_row_when_it_meets_the_budget(tmp_path, capsys):
    """--qat auto with --qat-max-miou-drop: the PTQ row, judged on training images outside calibration, is
    within it, so nothing is fine-tuned, the PTQ row stays deployed and the report says why. QAT is off by
    default: the budget alone, without --qat auto, is refused rather than ignored."""
    import json

    out = tmp_path / "D"
    model = demo_checkpoint(tmp_path)
    rc, _, err = run_cli(capsys, "deploy", *SMOKE, "--model", model, "--qat-max-miou-drop", "50", "--out", out)
    assert rc == 2 and "Add --qat auto" in err and not out.exists()
    rc, stdout, err = run_cli(
        capsys, "deploy", *SMOKE, "--model", model, "--qat", "auto", "--qat-max-miou-drop", "50", *FAST, "--out", out
    )
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["stages"][-1]["name"] == "onnxruntime-int8"
    q = report["qat"]
    assert q["mode"] == "auto" and q["ran"] is False and q["max_miou_drop"] == 50
    assert "training images outside the calibration set" in q["decision"]["judged_on"]
    assert q["decision"]["ptq_miou_drop"] <= 50 and "within max_miou_drop 50" in q["reason"]
    assert "QAT (--qat auto): not run" in stdout and "stage qat [onnxruntime-cpu]: done" in err

    # A budgets file that also budgets the qat-int8 row by name: QAT did not run, so that table has nothing to
    # check (the deployed PTQ row is gated by the target's own budgets), and the gate must not call the report
    # incomplete.
    from bckd_pipeline.gate.budgets import load_budgets
    from bckd_pipeline.gate.gate import gate

    budgets = tmp_path / "b.toml"
    budgets.write_text("[onnxruntime-cpu]\nmax_miou_drop = 50\n[onnxruntime-cpu.stages.qat-int8]\nmax_p50_ms = 1e5\n")
    result = gate(out / "report.json", load_budgets(budgets))
    assert {c.stage for c in result.checks} == {"onnxruntime-int8"}


@pytest.mark.slow
def test_qat_of_a_real_student_exports_per_tensor_activations_onnx_runtime_runs(tmp_path):
    """deeplabv3plus-mbv2 has depthwise convolutions, on whose inputs NNCF's CPU config would put per-channel
    activation quantizers that ONNX Runtime's QLinearConv refuses: every activation Q/DQ must be per tensor,
    and the exported file must load and compute what the fake-quantized model computes."""
    feeds = demo_feeds("train", n=2)
    torch.manual_seed(0)
    model = SegExportWrapper(build_model("deeplabv3plus-mbv2", NUM_CLASSES), normalize=NORM).eval()
    qmodel = fakequant.insert_fake_quant(model, list(feeds), fakequant.scheme_for("onnxruntime"))
    example = torch.from_numpy(feeds.images[0])
    path = fakequant.export_qdq(
        qmodel, example, tmp_path / "qat.onnx", opset=17, input_name="image", output_name="logits"
    )
    graph = onnx.load(str(path)).graph
    inits = {t.name for t in graph.initializer}
    for q, _, _, zp, axis in qdq_pairs(graph).values():
        if q.input[0] not in inits:  # an activation
            assert axis is None and zp.size == 1, f"{q.name}: per-channel activation quantizer"
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": feeds.images[1]})[0]
    with torch.no_grad():
        want = qmodel(torch.from_numpy(feeds.images[1])).numpy()
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.99


@pytest.mark.slow
def test_qat_for_tensorrt_writes_the_tensorrt_ready_qdq_onnx_the_bundle_ships(tmp_path, capsys):
    """A TensorRT target: the QAT row is the TensorRT-ready Q/DQ ONNX (check_tensorrt_qdq), checked on ONNX
    Runtime here; the device bundle ships it, and the engine row (pending without a device) builds from it."""
    import json

    from bckd_pipeline.calibrate.tensorrt import check_tensorrt_qdq
    from bckd_pipeline.cache import file_sha256

    out = tmp_path / "D"
    model = demo_checkpoint(tmp_path)
    argv = ["deploy", *SMOKE, "--model", model, "--target", "tensorrt", "--qat", "on", "--qat-iters", "2"]
    rc, _, err = run_cli(capsys, *argv, "--qat-batch", "2", *FAST, "--out", out)
    assert rc == 3, err  # the engine is pending: no TensorRT device here
    report = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in report["stages"]]
    assert names[-3:] == ["onnx-qdq", "qat-int8", "tensorrt-int8"]
    qat = out / "deploy/model.qat.qdq.onnx"
    assert check_tensorrt_qdq(qat) == []
    row = report["stages"][-2]
    assert row["build"]["tensorrt_ready"] is True and row["parity_passed"] is not None
    assert report["stages"][-1]["parent"] == "qat-int8"
    assert file_sha256(out / "deploy/tensorrt/bundle/model.qdq.onnx") == file_sha256(qat)
    assert report["qat"]["scheme"]["activations"] == "symmetric s8"


@pytest.mark.slow
def test_qat_for_openvino_deploys_the_int8_ir_after_the_ptq_ir(tmp_path, capsys):
    """An OpenVINO target: the QAT row is an IR (openvino.convert_model of the NNCF model), after the NNCF PTQ
    IR, with the profile's NNCF preset and device; parity and latency measure it like the PTQ row."""
    import json

    out = tmp_path / "D"
    model = demo_checkpoint(tmp_path)
    argv = ["deploy", *SMOKE, "--model", model, "--target", "openvino-cpu", "--qat", "on", "--qat-iters", "2"]
    rc, _, err = run_cli(capsys, *argv, "--qat-batch", "2", *FAST, "--out", out)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in report["stages"]]
    assert names[-2:] == ["openvino-int8", "qat-int8"]
    row = report["stages"][-1]
    assert row["artifact"].endswith("qat-int8/model.xml") and row["parent"] == "openvino-fp32"
    assert row["latency_ms"]["p50"] > 0 and row["build"]["format"] == "OpenVINO IR (FakeQuantize)"
    assert report["qat"]["scheme"]["target_device"] == "CPU" and report["qat"]["scheme"]["preset"] == "performance"
    from bckd_pipeline.predict.artifact import _ir_props

    assert _ir_props(out / row["artifact"])["bckd.output"]  # the contract predict reads, as on the PTQ IR


@pytest.mark.slow
def test_run_fine_tunes_against_its_own_teacher_with_its_own_losses(smoke_report, tmp_path, capsys):
    """`run --qat on --qat-kd kd+bckd`: the teacher is the run's (teacher/teacher.pt), the BCKD settings the
    run's --bckd; the distillation stages are reused from the cache (a copy of the smoke run), only the
    deployment side reruns."""
    import json
    import shutil

    from helpers.cli import GATE_RUN_FLAGS

    from bckd_pipeline.cache import file_sha256

    out = tmp_path / "R"
    shutil.copytree(smoke_report, out)
    before = {p: file_sha256(out / p) for p in ("teacher/teacher.pt", "distilled/student.pt")}
    argv = ["run", *GATE_RUN_FLAGS, "--qat", "on", "--qat-kd", "kd+bckd", "--qat-iters", "2"]
    rc, _, err = run_cli(capsys, *argv, "--out", out)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["stages"]][-2:] == ["onnxruntime-int8", "qat-int8"]
    q = report["qat"]
    assert q["teacher"] == f"teacher checkpoint {out / 'teacher/teacher.pt'}"
    assert q["kd"] == "kd+bckd" and q["cost"]["bckd_left_out"] is None  # the smoke preset's BCKD grid fits
    assert {p: file_sha256(out / p) for p in before} == before  # stage 1 reused, not retrained


def test_qat_fine_tunes_with_cross_entropy_alone_by_default(tmp_path, capsys):
    """Cross-entropy alone is the default loss (docs/decisions.md): no teacher runs, the
    report says so. A --teacher that this loss would not read is refused, not ignored."""
    import json

    out = tmp_path / "CE"
    model = demo_checkpoint(tmp_path)
    argv = ["deploy", *SMOKE, "--model", model, "--qat", "on", "--qat-iters", "2", "--qat-batch", "2", *FAST]
    rc, _, err = run_cli(capsys, *argv, "--qat-seed", "3", "--out", out)
    assert rc == 0, err
    q = json.loads((out / "report.json").read_text())["qat"]
    assert q["ran"] and q["kd"] == "none" and q["teacher"] == "none (cross-entropy alone)"
    assert set(q["cost"]["loss_last"]) == {"loss", "ce"}  # no teacher term
    teacher = demo_checkpoint(tmp_path, "tiny-teacher")
    rc, _, err = run_cli(capsys, *argv, "--teacher", teacher, "--out", tmp_path / "T")
    assert rc == 2 and "Add --qat-kd kd+bckd" in err and not (tmp_path / "T").exists()
    off = ["deploy", *SMOKE, "--model", model, "--teacher", teacher, *FAST, "--out", tmp_path / "off"]
    rc, _, err = run_cli(capsys, *off)  # QAT off (the default): the teacher would be read by nothing
    assert rc == 2 and "QAT is off (the default)" in err and not (tmp_path / "off").exists()
    rc, _, err = run_cli(capsys, *argv, "--qat-kd", "bogus", "--out", tmp_path / "bad")
    assert rc == 2 and "--qat-kd 'bogus' is not allowed" in err and "Traceback" not in err


def detector_checkpoint(folder):
    """A tiny detector preset (fcos-tiny-t) over the demo dataset's classes, random weights."""
    from bckd_pipeline.configs import CheckpointMeta
    from bckd_pipeline.data.demo import DemoDataset
    from bckd_pipeline.distill.checkpoint import save_checkpoint
    from bckd_pipeline.distill.detection import build_detector

    names = tuple(DemoDataset("val", size=(32, 32), count=1).info.class_names)
    torch.manual_seed(0)
    path = folder / "detector.pt"
    meta = CheckpointMeta(
        model="fcos-tiny-t", num_classes=len(names), class_names=names, input_hw=(64, 64), dataset="demo",
        role="teacher", task="detection",
    )
    save_checkpoint(path, build_detector("fcos-tiny-t", len(names)).eval(), meta)
    return path


QAT_TEACHER_REFUSAL = (
    "holds a detection model (fcos-tiny-t), and the QAT student is a segmentation model",
    "Pass a checkpoint of a segmentation model (`bckd-pipeline train-teacher --task segmentation`), or drop --teacher",
)


def test_a_qat_teacher_of_another_task_is_refused_before_any_stage(tmp_path, capsys):
    model, teacher = demo_checkpoint(tmp_path), detector_checkpoint(tmp_path)
    argv = ["deploy", *SMOKE, "--model", model, "--teacher", teacher, "--qat", "on", "--qat-kd", "kd+bckd", *FAST]
    rc, _, err = run_cli(capsys, *argv, "--out", tmp_path / "D")
    assert rc == 2 and "Traceback" not in err, err
    assert f"--teacher {str(teacher)!r} {QAT_TEACHER_REFUSAL[0]}" in err and QAT_TEACHER_REFUSAL[1] in err
    assert not (tmp_path / "D").exists()


def test_the_qat_stage_checks_its_teachers_task(tmp_path):
    from types import SimpleNamespace

    from bckd_pipeline.context import QatConfig
    from bckd_pipeline.errors import ConfigError
    from bckd_pipeline.qat.stage import _qat_teacher
    from bckd_pipeline.tasks import get_task

    seg_teacher = demo_checkpoint(tmp_path, "tiny-teacher")
    num_classes = torch.load(seg_teacher, weights_only=True)["meta"]["num_classes"]

    def ctx(teacher):
        return SimpleNamespace(
            deploy=SimpleNamespace(qat=QatConfig(mode="on", kd="kd+bckd", teacher=teacher)),
            spec=SimpleNamespace(bake_normalization=False),
            meta=SimpleNamespace(num_classes=num_classes),
            task=get_task("segmentation"),
        )

    with pytest.raises(ConfigError) as refused:
        _qat_teacher(ctx(detector_checkpoint(tmp_path)))
    assert all(part in str(refused.value) for part in QAT_TEACHER_REFUSAL)
    _, module, taps, what = _qat_teacher(ctx(seg_teacher))  # a teacher of the student's task is taken
    assert module is not None and taps and what == f"teacher checkpoint {seg_teacher}"
