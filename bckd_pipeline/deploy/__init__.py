"""Judging deployed artifacts: the parity ledger (parity.py) and the latency protocol (bench.py), run on the
Runtimes of the shared runtime layer (runtimes/). stage.py holds the pipeline's stages that use them.

The device agent ships bench.py (device/bundle.py, AGENT_MODULES): it imports neither torch nor onnx.
"""
