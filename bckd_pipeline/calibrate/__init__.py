"""Stage 3a: INT8 calibration data feeds and quantization (ONNX Runtime QDQ, NNCF).

Not built yet (tracked as its own issue). Nothing in this package is imported by stage 1.
"""
