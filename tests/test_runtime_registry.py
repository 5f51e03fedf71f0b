"""The runtime registry: one registration per backend, loud errors, and a new backend found by every caller."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bckd_pipeline import runtimes
from bckd_pipeline.errors import BackendMissingError, ConfigError
from bckd_pipeline.runtimes import BackendRuntime, FileKind, Runtime, RuntimeOptions, TensorSpec
from bckd_pipeline.targets import Backend

REPO = Path(__file__).resolve().parents[1]


class EchoRuntime(Runtime):
    """A backend that returns its input: what a new backend's file holds."""

    backend = "echo"

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        super().__init__(options.name or path.name)
        self.path, self.options = path, options
        self.precision = options.precision

    def _activate(self) -> None:
        pass

    def _input_spec(self) -> dict[str, TensorSpec]:
        return {"image": TensorSpec(np.dtype(np.float32), (1, 3, None, None))}

    def _infer(self, feed):
        return {"logits": feed["image"]}


@pytest.fixture
def echo():
    entry = runtimes.register(
        BackendRuntime("echo", {".echo": FileKind("echo-file", "an echo model")}, EchoRuntime, default_device="cpu")
    )
    try:
        yield entry
    finally:
        runtimes.unregister("echo")
    assert "echo" not in runtimes.backend_names() and ".echo" not in runtimes.suffixes()


def test_every_backend_of_the_targets_is_registered():
    assert set(runtimes.backend_names()) >= {b.value for b in Backend}
    assert [e.name for e in runtimes.backends_for(".onnx")] == ["onnxruntime", "openvino"]  # the default first
    assert runtimes.file_kind("model.XML").kind == "openvino-ir"


def test_registering_a_name_twice_raises_naming_it(echo):
    with pytest.raises(ValueError, match="'echo' is already registered"):
        runtimes.register(BackendRuntime("echo", {}, EchoRuntime, default_device="cpu"))
    with pytest.raises(ValueError, match="calls .onnx files 'not-onnx'"):
        runtimes.register(BackendRuntime("other", {".onnx": FileKind("not-onnx", "x")}, None, default_device="cpu"))
    assert "other" not in runtimes.backend_names()


def test_unknown_names_and_suffixes_list_the_registered_ones_and_suggest_the_closest():
    with pytest.raises(ConfigError, match=r"Unknown backend 'onnxruntim'.*openvino.*Did you mean 'onnxruntime'\?"):
        runtimes.get_backend("onnxruntim")
    with pytest.raises(ConfigError, match=r"'\.onx'.*Registered suffixes: \.onnx, \.xml.*Did you mean '\.onnx'\?"):
        runtimes.backends_for("model.onx")
    with pytest.raises(ConfigError, match="runs a model in memory"):
        runtimes.build_runtime("torch", "student.pt")


def test_a_missing_library_is_named_before_the_runtime_is_built(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # an import of it fails
    with pytest.raises(BackendMissingError, match=r"'m.plan' is a TensorRT engine, and this host lacks tensorrt"):
        runtimes.require("tensorrt", "m.plan")
    runtimes.require("onnxruntime", "m.onnx")


def test_a_new_backend_is_found_by_suffix_and_by_name(echo, tmp_path):
    assert runtimes.backends_for(tmp_path / "m.ECHO") == (echo,)
    rt = runtimes.build_runtime("echo", tmp_path / "m.echo", precision="int8", threads=2)
    assert isinstance(rt, EchoRuntime) and rt.name == "m.echo" and rt.options.threads == 2
    x = np.ones((1, 3, 4, 4), np.float32)
    with rt:
        assert rt.infer({"image": x})["logits"] is x


def test_predict_runs_a_new_backend_from_its_registration_alone(echo, tmp_path):
    from bckd_pipeline.predict.artifact import locate, make_runtime

    (tmp_path / "m.echo").write_bytes(b"")
    artifact = locate(tmp_path / "m.echo")
    assert (artifact.kind, artifact.backend, artifact.device) == ("echo-file", "echo", "cpu")
    assert isinstance(make_runtime(artifact, threads=1), EchoRuntime)


def test_the_registry_imports_no_backend_library():
    code = (
        "import json, sys; import bckd_pipeline.runtimes; "
        "print(json.dumps(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'openvino', 'tensorrt', 'pycuda') "
        "if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
