"""ONNX Runtime INT8 of a graph with GroupNorm: ORT quantizes the rank-1 InstanceNormalization scale per tensor
(it has no channel axis) and logs one warning per use; the calibrate stage says it once, by name, on stderr."""

import logging

import torch
from helpers.deploy import demo_feeds

from bckd_pipeline.calibrate.onnxruntime import _per_tensor_fallbacks, quantize_qdq
from bckd_pipeline.targets.profiles import CalibrationSpec


class GroupNormNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm1 = torch.nn.GroupNorm(4, 8)
        self.norm2 = torch.nn.GroupNorm(4, 8)
        self.head = torch.nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.norm2(self.norm1(self.conv(x / 255.0)).relu()))


def test_groupnorm_fallbacks_are_said_once_and_other_warnings_pass(tmp_path, capsys, caplog):
    torch.manual_seed(0)
    path = tmp_path / "gn.onnx"
    torch.onnx.export(
        GroupNormNet().eval(), torch.rand(1, 3, 32, 32) * 255, str(path), input_names=["image"],
        output_names=["logits"], opset_version=17, dynamo=False,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        quantize_qdq(path, tmp_path / "gn.int8.onnx", demo_feeds("train", n=4), CalibrationSpec(size=4),
                     activation_type="QUInt8")  # fmt: skip
    assert (tmp_path / "gn.int8.onnx").exists()
    assert not [r for r in caplog.records if "is out-of-range for weight" in r.getMessage()]
    err = capsys.readouterr().err
    assert err.count("have no channel axis at their rank") == 1 and "quantized them per tensor" in err
    with caplog.at_level(logging.WARNING), _per_tensor_fallbacks() as caught:
        logging.warning("Axis 1 is out-of-range for weight 'w' with rank 1")
        logging.warning("something else")
    assert list(caught.weights) == ["w"] and [r.getMessage() for r in caplog.records][-1] == "something else"
