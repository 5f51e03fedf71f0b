"""Stage 2: the export wrapper, ONNX export and graph simplification, each checked on real inputs.

``to_onnx`` (checker + ONNX Runtime vs PyTorch) -> ``simplify`` (ONNX Runtime before vs after).
"""

from ..onnxfile import load_onnx, read_metadata
from .check import CheckReport, compare
from .onnx_export import to_onnx
from .simplify import SIMPLIFIERS, simplify
from .wrapper import SegExportWrapper

__all__ = [
    "SIMPLIFIERS",
    "CheckReport",
    "SegExportWrapper",
    "compare",
    "load_onnx",
    "read_metadata",
    "simplify",
    "to_onnx",
]
