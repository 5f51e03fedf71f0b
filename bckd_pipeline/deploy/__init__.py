"""Running deployed artifacts: the Runtime lifecycle and one backend per file (backends/), the parity
ledger (parity.py) and the latency protocol (bench.py). stage.py holds the pipeline's stages that use them.

The device agent ships runtime.py, bench.py and the ONNX Runtime and TensorRT backends
(device/bundle.py, AGENT_MODULES): they import neither torch nor onnx at module level.
"""
