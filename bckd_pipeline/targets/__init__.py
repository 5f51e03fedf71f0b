"""Stage 3b: target profiles (ONNX Runtime, OpenVINO CPU/GPU/NPU, TensorRT/Jetson) and engine builds.

Not built yet (tracked as its own issue). Nothing in this package is imported by stage 1.
"""
