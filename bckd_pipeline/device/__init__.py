"""The device side: what runs on a Jetson (or any TensorRT host), and how the host gets it there and back.

bundle.py (host) writes the portable bundle and reads the result back; remote.py (host) runs it over
SSH; stage.py (host) is the pipeline's device stage. agent.py and jetson.py run on the device: the
agent ships as a zipapp of exactly the files in ``bundle.AGENT_MODULES`` (this package's agent and
Jetson facts, the runtimes and latency protocol from deploy/, the TensorRT recipe from targets/, the
ledger's row names), a closed set that imports neither torch nor onnx (tests/test_tensorrt.py checks it).
"""
