"""TensorRT target pieces: the version-aware build recipe, the build call sequence (against a small
recording fake of the tensorrt module), the runtime's missing-package errors, Jetson device facts on a
fake sysfs tree, and, on a host with TensorRT and an NVIDIA GPU, a real build + run compared with
ONNX Runtime."""

from __future__ import annotations

import enum
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
from helpers.fake_tensorrt import make_fake_trt

from bckd_pipeline.runtimes.tensorrt import TensorRTRuntime
from bckd_pipeline.device.jetson import device_facts, gpu_facts, jetpack_for_l4t, parse_l4t_release
from bckd_pipeline.errors import BackendMissingError, ConfigError, ExportError, StageCheckError
from bckd_pipeline.targets.tensorrt import (
    EngineRecipe,
    build_engine,
    builder_settings,
    is_strongly_typed_default,
    parse_trt_version,
    trtexec_command,
    write_build_script,
)

REPO = Path(__file__).resolve().parents[1]
HW_REASON = "TensorRT and an NVIDIA GPU are needed; this host has neither"


# -- versions and settings ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "want"),
    [("8.6.2", (8, 6, 2)), ("10.3.0.30", (10, 3, 0)), ("10.12", (10, 12, 0)), ("TensorRT v11.1.0", (11, 1, 0))],
)
def test_parse_trt_version(text, want):
    assert parse_trt_version(text) == want


def test_parse_trt_version_refuses_text_without_a_version():
    with pytest.raises(ConfigError, match="MAJOR.MINOR"):
        parse_trt_version("tensorrt")


@pytest.mark.parametrize(
    ("version", "strong"),
    [
        ((8, 6, 2), False),
        ((10, 0, 1), False),
        ((10, 3, 0), False),
        ((10, 11, 9), False),
        ((10, 12, 0), False),
        ((10, 13, 2), False),
        ((11, 0, 0), True),
    ],
)
def test_strongly_typed_only_from_11(version, strong):
    """10.12 deprecated weak typing but kept the flags: 10.x stays weakly typed, so fp16 stays fp16."""
    assert is_strongly_typed_default(version) is strong


def test_settings_tensorrt_8_6_jetpack5_explicit_batch_weakly_typed():
    s = builder_settings(EngineRecipe("int8"), (8, 6, 2))
    assert s["network_flags"] == ["EXPLICIT_BATCH"]
    assert s["builder_flags"] == ["INT8", "FP16"]
    assert s["typing"] == "weak"
    assert s["memory_pool_limits"] == {"WORKSPACE": 1024 * 2**20}
    assert s["default_device_type"] == "GPU" and s["dla_core"] is None and s["gpu_fallback"] is False


def test_settings_tensorrt_10_3_jetpack6_int8_fp16_flags_no_explicit_batch():
    s = builder_settings(EngineRecipe("int8"), (10, 3, 0))
    assert s["network_flags"] == []
    assert s["builder_flags"] == ["INT8", "FP16"]
    assert s["typing"] == "weak"


def test_settings_weak_int8_without_fp16_fallback():
    assert builder_settings(EngineRecipe("int8", fp16_fallback=False), (10, 3, 0))["builder_flags"] == ["INT8"]


@pytest.mark.parametrize("version", [(10, 12, 0), (10, 13, 2)])
def test_settings_10_12_and_later_10_x_stay_weakly_typed_with_precision_flags(version):
    """The same ONNX builds the same engine on an x86 host with 10.12+ as on a Jetson with 10.3."""
    s = builder_settings(EngineRecipe("int8"), version)
    assert s["network_flags"] == [] and s["builder_flags"] == ["INT8", "FP16"] and s["typing"] == "weak"
    assert s["fp16_fallback_applied"] is True
    assert builder_settings(EngineRecipe("fp16"), version)["builder_flags"] == ["FP16"]
    assert (
        builder_settings(EngineRecipe("int8"), version)["builder_flags"]
        == builder_settings(EngineRecipe("int8"), (10, 3, 0))["builder_flags"]
    )


@pytest.mark.parametrize("version", [(11, 0, 0), (11, 4, 1)])
def test_settings_tensorrt_11_strongly_typed_say_what_the_unquantized_layers_run_in(version):
    for precision in ("int8", "fp16", "fp32"):
        s = builder_settings(EngineRecipe(precision), version)
        assert s["network_flags"] == [] and s["builder_flags"] == [] and s["typing"] == "strong"
    s = builder_settings(EngineRecipe("int8"), version)
    assert s["fp16_fallback_applied"] is False and "FP32" in s["unquantized_layers"]


def test_settings_dla_with_gpu_fallback():
    s = builder_settings(EngineRecipe("int8", dla_core=1), (10, 3, 0))
    assert s["default_device_type"] == "DLA" and s["dla_core"] == 1 and s["gpu_fallback"] is True
    assert s["builder_flags"] == ["INT8", "FP16", "GPU_FALLBACK"]


def test_settings_are_json_and_carry_profile_cache_and_level():
    import json

    recipe = EngineRecipe(
        "fp16", timing_cache="/data/cache.bin", builder_optimization_level=5, input_shape=(1, 3, 64, 96)
    )
    s = builder_settings(recipe, (10, 3, 0))
    assert json.loads(json.dumps(s)) == s
    assert s["profile"] == {"image": {"min": [1, 3, 64, 96], "opt": [1, 3, 64, 96], "max": [1, 3, 64, 96]}}
    assert s["timing_cache"] == "/data/cache.bin" and s["builder_optimization_level"] == 5
    assert s["builder_flags"] == ["FP16"]


def test_dla_refused_for_fp32_with_allowed_values():
    with pytest.raises(ConfigError, match="'int8' or 'fp16'"):
        EngineRecipe("fp32", dla_core=0)


def test_dla_is_not_refused_on_tensorrt_11():
    s = builder_settings(EngineRecipe("int8", dla_core=0), (11, 0, 0))
    assert s["default_device_type"] == "DLA" and s["builder_flags"] == ["GPU_FALLBACK"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "int4"}, "Allowed: int8, fp16, fp32"),
        ({"precision": "int8", "workspace_mib": 0}, "positive whole number of MiB"),
        ({"precision": "int8", "workspace_mib": 1.5}, "positive whole number of MiB"),
        ({"precision": "int8", "dla_core": -1}, "DLA index >= 0"),
        ({"precision": "int8", "builder_optimization_level": 7}, "0..5"),
        ({"precision": "int8", "builder_optimization_level": 3.0}, "0..5"),
        ({"precision": "int8", "input_shape": (1, 3, 0, 8)}, "positive ints"),
        ({"precision": "int8", "input_name": ""}, "input's name"),
    ],
)
def test_bad_recipes_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EngineRecipe(**kwargs)


@pytest.mark.parametrize("version", [(8, 2, 1), (8, 4, 1), (9, 3, 0)])
def test_unsupported_versions_refused(version):
    with pytest.raises(ConfigError, match="Supported: 8.5-8.6.*JetPack 5.0.2 ships TensorRT 8.4"):
        builder_settings(EngineRecipe("int8"), version)


def test_optimization_level_needs_8_6():
    with pytest.raises(ConfigError, match=">= 8.6"):
        builder_settings(EngineRecipe("int8", builder_optimization_level=3), (8, 5, 2))


# -- trtexec -----------------------------------------------------------------------------------
def test_trtexec_tensorrt_8_6():
    assert trtexec_command("m.onnx", "m.plan", EngineRecipe("int8"), (8, 6, 2)) == [
        "trtexec",
        "--onnx=m.onnx",
        "--saveEngine=m.plan",
        "--int8",
        "--fp16",
        "--memPoolSize=workspace:1024",
    ]


def test_trtexec_tensorrt_10_3_dla_cache_level():
    recipe = EngineRecipe("int8", workspace_mib=512, dla_core=0, timing_cache="cache.bin", builder_optimization_level=4)
    assert trtexec_command("m.onnx", "m.plan", recipe, (10, 3, 0)) == [
        "trtexec",
        "--onnx=m.onnx",
        "--saveEngine=m.plan",
        "--int8",
        "--fp16",
        "--memPoolSize=workspace:512",
        "--useDLACore=0",
        "--allowGPUFallback",
        "--timingCacheFile=cache.bin",
        "--builderOptimizationLevel=4",
    ]


def test_trtexec_tensorrt_10_13_weakly_typed_dynamic_shapes():
    recipe = EngineRecipe("int8", input_shape=(1, 3, 64, 96))
    assert trtexec_command("m.onnx", "m.plan", recipe, (10, 13, 0)) == [
        "trtexec",
        "--onnx=m.onnx",
        "--saveEngine=m.plan",
        "--int8",
        "--fp16",
        "--memPoolSize=workspace:1024",
        "--minShapes=image:1x3x64x96",
        "--optShapes=image:1x3x64x96",
        "--maxShapes=image:1x3x64x96",
    ]


def test_trtexec_tensorrt_11_has_no_precision_or_typing_flags():
    assert trtexec_command("m.onnx", "m.plan", EngineRecipe("int8"), (11, 1, 0)) == [
        "trtexec",
        "--onnx=m.onnx",
        "--saveEngine=m.plan",
        "--memPoolSize=workspace:1024",
    ]


def test_trtexec_fp32_weak_has_no_precision_flag():
    assert trtexec_command("a.onnx", "a.plan", EngineRecipe("fp32"), (10, 3, 0)) == [
        "trtexec",
        "--onnx=a.onnx",
        "--saveEngine=a.plan",
        "--memPoolSize=workspace:1024",
    ]


def test_build_script_is_executable_valid_sh_and_quotes_spaces(tmp_path):
    folder = tmp_path / "out dir"
    recipe = EngineRecipe("int8", timing_cache="cache dir/t c.bin", dla_core=0)
    script = write_build_script(folder / "build_engine.sh", "my model.onnx", "my model.plan", recipe, (10, 3, 0))
    assert script.is_file() and os.access(script, os.X_OK)
    text = script.read_text()
    assert "ON THE TARGET DEVICE" in text and "TensorRT 10.3.0" in text
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    # Run it with a fake trtexec that prints one argument per line: the arguments arrive intact.
    fake = tmp_path / "fake_trtexec"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\npwd\n')
    fake.chmod(0o755)
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, env={**os.environ, "TRTEXEC": str(fake)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:-1] == trtexec_command("my model.onnx", "my model.plan", recipe, (10, 3, 0))[1:]
    assert Path(lines[-1]).resolve() == folder.resolve()  # the script runs from its own folder
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# -- build_engine without TensorRT, and against a recording fake ---------------------------------
def test_build_engine_without_tensorrt_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(BackendMissingError, match="JetPack.*pip install tensorrt"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", EngineRecipe("int8"))


def fake_onnx(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not parsed by the fake")
    return path


def test_build_10_3_sets_int8_fp16_and_no_strongly_typed(monkeypatch, tmp_path):
    trt = make_fake_trt("10.3.0.30")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    info = build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("int8"), log_path=tmp_path / "b.log")
    assert ("create_network", 0) in trt.calls
    flags = [c[1] for c in trt.calls if c[0] == "set_flag"]
    assert flags == ["INT8", "FP16"]
    assert ("set_memory_pool_limit", "WORKSPACE", 1024 << 20) in trt.calls
    assert (tmp_path / "m.plan").read_bytes() == b"PLAN-BYTES"  # plain serialized engine, no header
    import hashlib

    assert info["plan_sha256"] == hashlib.sha256(b"PLAN-BYTES").hexdigest()
    assert info["tensorrt_version"] == "10.3.0.30" and info["build_s"] >= 0 and info["typing"] == "weak"
    log = (tmp_path / "b.log").read_text()
    assert "a builder warning" in log and "verbose noise" not in log


def test_build_10_13_stays_weakly_typed_with_int8_and_fp16_flags(monkeypatch, tmp_path):
    trt = make_fake_trt("10.13.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    info = build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("int8"))
    assert ("create_network", 0) in trt.calls
    assert [c[1] for c in trt.calls if c[0] == "set_flag"] == ["INT8", "FP16"]
    assert info["typing"] == "weak" and info["layer_precisions"] == {"int8": 1, "fp32": 1}
    # per-layer information for the report: the inspector's JSON, next to the plan
    assert ("config.profiling_verbosity", trt.ProfilingVerbosity.DETAILED) in trt.calls
    assert json.loads((tmp_path / info["layers_file"]).read_text())[0]["Name"] == "/conv/Conv"


def test_build_11_fp16_without_fp16_tensors_is_refused_not_mislabelled(monkeypatch, tmp_path):
    trt = make_fake_trt("11.1.0", network_layers=[("CONVOLUTION", (1, 8, 8, 8), True, "FLOAT")])
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(ConfigError, match="FP32 labelled fp16"):
        build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("fp16"))
    assert not (tmp_path / "m.plan").exists()
    trt = make_fake_trt("11.1.0", network_layers=[("CONVOLUTION", (1, 8, 8, 8), True, "HALF")])
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    info = build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("fp16"))
    assert info["typing"] == "strong" and info["precision"] == "fp16"


def test_build_int8_that_ran_no_int8_layer_is_refused(monkeypatch, tmp_path):
    fp32_only = [{"Name": "/conv/Conv", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]}]
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt("10.3.0", engine_layers=fp32_only))
    with pytest.raises(StageCheckError, match="no INT8 layer"):
        build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("int8"))
    assert not (tmp_path / "m.plan").exists()


def test_fakes_reject_what_the_real_modules_lack():
    """TensorRT 11 has no weak-typing flags (INT8, FP16, --int8/--fp16), and IBuilderConfig has no free attributes.
    The fakes must fail the same way, so that a recipe that sets them fails here as it would on TensorRT 11."""
    trt11 = make_fake_trt("11.1.0")
    for missing in ("INT8", "FP16"):
        with pytest.raises(AttributeError):
            getattr(trt11.BuilderFlag, missing)
    with pytest.raises(AttributeError):
        trt11.NetworkDefinitionCreationFlag.EXPLICIT_BATCH  # noqa: B018
    with pytest.raises(AttributeError, match="IBuilderConfig"):
        trt11.Builder(_Quiet()).create_builder_config().int8_calibrator = object()


class _Quiet:
    def log(self, severity, msg):
        pass


def test_build_11_touches_no_removed_flag(monkeypatch, tmp_path):
    trt = make_fake_trt("11.1.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("int8"))
    assert ("create_network", 0) in trt.calls and (tmp_path / "m.plan").is_file()


def test_build_8_6_sets_explicit_batch(monkeypatch, tmp_path):
    trt = make_fake_trt("8.6.2")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("fp16"))
    assert ("create_network", 1 << 0) in trt.calls
    assert [c[1] for c in trt.calls if c[0] == "set_flag"] == ["FP16"]


DLA_ENGINE = [
    {"Name": "{ForeignNode[/stem/Conv.../block/Conv]}", "LayerType": "DLA",
     "Outputs": [{"Format/Datatype": "Channel major Int8 format"}]},
    {"Name": "/Resize", "LayerType": "Resize", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
]  # fmt: skip
CONVS_ON_DLA = [
    ("CONVOLUTION", (1, 8, 8, 8), True), ("CONVOLUTION", (1, 8, 8, 8), True), ("RESIZE", (1, 8, 16, 16), False)
]  # fmt: skip


def test_build_dla_sets_device_type_core_gpu_fallback_and_records_where_layers_run(monkeypatch, tmp_path):
    trt = make_fake_trt("10.3.0", dla_cores=2, network_layers=CONVS_ON_DLA, engine_layers=DLA_ENGINE)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    info = build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("int8", dla_core=1))
    assert ("config.default_device_type", trt.DeviceType.DLA) in trt.calls
    assert ("config.DLA_core", 1) in trt.calls
    assert "GPU_FALLBACK" in [c[1] for c in trt.calls if c[0] == "set_flag"]
    dla = info["dla"]
    assert dla["layers"] == 3 and dla["layers_on_dla"] == 2 and dla["layer_share"] == pytest.approx(2 / 3)
    assert dla["flop_share"] > 0.9 and "warning" not in dla  # the convolutions are nearly all the FLOPs
    assert dla["engine"] == {"source": "engine inspector JSON", "layers": 2, "dla_layers": 1}


def test_build_dla_with_most_flops_on_the_gpu_warns(monkeypatch, tmp_path):
    layers = [("CONVOLUTION", (1, 8, 8, 8), False), ("RESIZE", (1, 8, 16, 16), True)]
    trt = make_fake_trt("10.3.0", dla_cores=2, network_layers=layers, engine_layers=DLA_ENGINE)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    recipe = EngineRecipe("int8", dla_core=0)
    info = build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", recipe, log_path=tmp_path / "b.log")
    assert info["dla"]["flop_share"] < 0.5 and "falls back to the GPU" in info["dla"]["warning"]
    assert "falls back to the GPU" in (tmp_path / "b.log").read_text()


def test_build_dla_with_no_layer_on_the_dla_is_refused(monkeypatch, tmp_path):
    gpu_only = [{"Name": "/conv/Conv", "LayerType": "CaskConvolution", "Outputs": [{"Format/Datatype": "Int8"}]}]
    trt = make_fake_trt("10.3.0", dla_cores=2, network_layers=CONVS_ON_DLA, engine_layers=gpu_only)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(StageCheckError, match="no layer runs there"):
        build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("int8", dla_core=0))
    assert not (tmp_path / "m.plan").exists()


def test_build_dla_core_missing_names_the_count(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt("10.3.0", dla_cores=0))
    with pytest.raises(ConfigError, match="has 0 DLA core"):
        build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("int8", dla_core=0))
    assert not (tmp_path / "m.plan").exists()


def test_build_loads_and_saves_the_timing_cache(monkeypatch, tmp_path):
    cache = tmp_path / "cache" / "timing.bin"
    trt = make_fake_trt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    recipe = EngineRecipe("int8", timing_cache=str(cache))
    build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", recipe)
    assert ("create_timing_cache", b"") in trt.calls and ("set_timing_cache", False) in trt.calls
    assert cache.read_bytes() == b"+new"
    trt.calls.clear()
    build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", recipe)
    assert ("create_timing_cache", b"+new") in trt.calls  # the saved cache is loaded on the next build
    assert cache.read_bytes() == b"+new+new"


def test_timing_cache_of_another_gpu_is_reported_and_left_alone(monkeypatch, tmp_path):
    cache = tmp_path / "timing.bin"
    cache.write_bytes(b"from another GPU")
    trt = make_fake_trt("10.3.0", cache_accepted=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    recipe = EngineRecipe("int8", timing_cache=str(cache))
    info = build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", recipe, log_path=tmp_path / "b.log")
    assert info["timing_cache_status"] == "rejected"
    assert cache.read_bytes() == b"from another GPU"  # not silently overwritten
    assert "made by another GPU or TensorRT version" in (tmp_path / "b.log").read_text()


def test_build_profile_for_dynamic_input_and_error_without_shape(monkeypatch, tmp_path):
    trt = make_fake_trt("10.3.0", input_shape=(-1, 3, -1, -1))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(ConfigError, match="dynamic shape"):
        build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("int8"))
    build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("int8", input_shape=(1, 3, 32, 48)))
    shape = (1, 3, 32, 48)
    assert ("add_optimization_profile", ("image", shape, shape, shape)) in trt.calls


def test_build_static_input_shape_mismatch(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt("10.3.0", input_shape=(1, 3, 8, 8)))
    with pytest.raises(ConfigError, match="differs from the static ONNX input"):
        build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("int8", input_shape=(1, 3, 16, 16)))


def test_failed_build_leaves_no_plan_and_names_the_log(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt("10.3.0", build_ok=False))
    with pytest.raises(StageCheckError, match=r"b\.log.*a builder warning"):
        build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("int8"), log_path=tmp_path / "b.log")
    assert not (tmp_path / "m.plan").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert "a builder warning" in (tmp_path / "b.log").read_text()


def test_parser_errors_surface_with_node_names(monkeypatch, tmp_path):
    errors = [("conv_1", "Unsupported dtype"), ("q_2", "Zero point must be 0")]
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt("10.3.0", parse_errors=errors))
    with pytest.raises(ExportError) as info:
        build_engine(fake_onnx(tmp_path), tmp_path / "m.plan", EngineRecipe("int8"))
    msg = str(info.value)
    assert "node 'conv_1' (Conv): Unsupported dtype" in msg and "node 'q_2' (Conv): Zero point must be 0" in msg
    assert not (tmp_path / "m.plan").exists()


# -- TensorRTRuntime without the packages ----------------------------------------------------------
def test_runtime_without_tensorrt(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendMissingError, match="tensorrt.*JetPack"):
        TensorRTRuntime(tmp_path / "m.plan").activate()


def test_runtime_without_pycuda(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt("10.3.0"))
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(BackendMissingError, match="pip install pycuda.*CUDA toolkit"):
        TensorRTRuntime(tmp_path / "m.plan").activate()


def test_runtime_states_what_is_timed():
    assert "copies of every input and output included" in TensorRTRuntime("m.plan").what_is_timed
    assert "CUDA events around the enqueue alone" in TensorRTRuntime("m.plan").what_is_timed
    assert "CUDA graph" in TensorRTRuntime("m.plan", cuda_graph=True).what_is_timed


class CallLog(list):
    state: dict


def make_fake_cuda_and_trt(monkeypatch, *, plan_ok=True, input_shape=(1, 3, 4, 4), trt_version="10.3.0"):
    """Small stand-ins for pycuda.driver and tensorrt's runtime side, recording what TensorRTRuntime calls.

    "Device memory" is a dict of numpy arrays keyed by address; the fake engine computes logits = 2 * image + 1
    from whatever is at the bound input address when it runs, so a wrong copy, binding or replay shows in the
    numbers. Like every pycuda release, its Stream has no stream capture (begin_capture/end_capture exist only
    in an unmerged pycuda pull request); the cuda-python fake (fake_cudart) records enqueues while capturing,
    as CUDA does, and replays them on launch. A TensorRT older than 8.5 has no name-based I/O API.
    """
    log = CallLog()
    memory: dict[int, np.ndarray] = {}
    state = log.state = {"capturing": None, "next_addr": 0x1000}
    cuda = types.ModuleType("pycuda.driver")

    class Context:
        def push(self):
            log.append("ctx.push")

        def pop(self):
            log.append("ctx.pop")

        def detach(self):
            log.append("ctx.detach")

    class Device:
        @staticmethod
        def count():
            return 1

        def __init__(self, index):
            self.index = index

        def name(self):
            return "Fake GPU"

        def retain_primary_context(self):
            return Context()

    class Stream:
        handle = 77

        def synchronize(self):
            log.append("sync")

    class Event:
        count = 0

        def __init__(self):
            Event.count += 1
            self.id = Event.count

        def record(self, stream):
            log.append(f"event{self.id}")

        def time_till(self, other):
            return 0.25

    class Alloc:
        def __init__(self, nbytes):
            self.addr = state["next_addr"]
            state["next_addr"] += 0x1000

        def __int__(self):
            return self.addr

        def free(self):
            log.append("free")

    def memcpy_htod_async(dev, host, stream):
        log.append("htod")
        memory[int(dev)] = np.array(host)

    def memcpy_dtoh_async(host, dev, stream):
        log.append("dtoh")
        host[...] = memory[int(dev)]

    cuda.init = lambda: log.append("init")
    cuda.Device, cuda.Stream, cuda.Event = Device, Stream, Event
    cuda.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)
    cuda.mem_alloc = Alloc
    cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    cuda.get_driver_version = lambda: 12060
    pycuda = types.ModuleType("pycuda")
    pycuda.driver, pycuda.VERSION_TEXT = cuda, "2024.1.2"

    trt = types.ModuleType("tensorrt")
    trt.__version__ = trt_version
    trt.TensorIOMode = enum.Enum("TensorIOMode", ["INPUT", "OUTPUT"])

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class ExecutionContext:
        def __init__(self):
            self.shapes, self.addresses = {}, {}

        def set_input_shape(self, name, shape):
            log.append(("set_input_shape", name, tuple(shape)))
            self.shapes[name] = tuple(shape)

        def get_tensor_shape(self, name):
            return self.shapes.get("image", input_shape)

        def set_tensor_address(self, name, addr):
            self.addresses[name] = addr

        def _run(self):
            # Freshly allocated device memory holds arbitrary bytes; the fake reads it as 0.
            memory[self.addresses["logits"]] = memory.get(self.addresses["image"], np.float32(0)) * 2 + 1

        def execute_async_v3(self, handle):
            assert handle == Stream.handle
            if state["capturing"] is not None:
                state["capturing"].append(self._run)
            else:
                log.append("enqueue")
                self._run()
            return True

    class Engine:
        num_io_tensors = 2

        def __getattribute__(self, name):  # TensorRT < 8.5 has only the binding-index API
            if trt_version.startswith("8.4") and name in ("num_io_tensors", "get_tensor_name", "get_tensor_mode"):
                raise AttributeError(f"'tensorrt.ICudaEngine' object has no attribute '{name}'")
            return object.__getattribute__(self, name)

        def get_tensor_name(self, i):
            return ["image", "logits"][i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "image" else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return input_shape

        def get_tensor_profile_shape(self, name, index):
            return [(1, 3, 4, 4)] * 3

        def get_tensor_dtype(self, name):
            return "float32"

        def create_execution_context(self):
            return ExecutionContext()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            return Engine() if plan_ok else None

    trt.Logger, trt.Runtime, trt.nptype = Logger, Runtime, np.dtype
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    return log


def infer_calls(log):
    return [c for c in log if isinstance(c, str) and c not in ("init", "ctx.push")]


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "m.plan"
    path.write_bytes(b"plan bytes")
    return path


def test_runtime_call_sequence_events_around_the_enqueue(monkeypatch, plan):
    from bckd_pipeline.deploy.bench import benchmark
    from bckd_pipeline.targets.profiles import LatencySpec

    log = make_fake_cuda_and_trt(monkeypatch)
    x = np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4)
    with TensorRTRuntime(plan) as rt:
        assert rt.input_spec()["image"].shape == (1, 3, 4, 4)
        log.clear()
        out = rt.infer({"image": x})
        assert log == ["htod", "event1", "enqueue", "event2", "dtoh", "sync"]
        np.testing.assert_array_equal(out["logits"], x * 2 + 1)
        assert rt.versions() == {"tensorrt": "10.3.0", "pycuda": "2024.1.2", "cuda_driver": "12.6"}
        assert rt.settings() == {"cuda_graph": False, "cuda_graph_backend": None, "device": "Fake GPU"}
        # the event time reaches the latency protocol's report, next to the host-timed latency
        report = benchmark(rt, [{"image": x}], LatencySpec(warmup_runs=0, warmup_s=0, runs=3))
        assert report.device_ms == {"p50": 0.25, "mean": 0.25} and len(report.samples_ms) == 3
        log.clear()
    assert log == ["free", "free", "ctx.pop", "ctx.detach"]


def test_fake_pycuda_has_no_stream_capture_like_every_pycuda_release(monkeypatch):
    """pycuda's Stream.begin_capture / end_capture and Graph.instantiate / GraphExec.launch exist in no pycuda
    release; the fake must reject them as the real module does, so a runtime that calls them fails here."""
    make_fake_cuda_and_trt(monkeypatch)
    cuda = sys.modules["pycuda.driver"]
    for name in ("begin_capture", "end_capture"):
        with pytest.raises(AttributeError):
            getattr(cuda.Stream(), name)
    for name in ("Graph", "GraphExec"):
        assert not hasattr(cuda, name)


def test_fake_cudart_has_only_calls_cuda_python_has():
    """fake_cudart defines nothing beyond names of cuda.bindings.runtime (NVIDIA/cuda-python), so a call the real
    bindings lack fails in the tests too."""
    module = fake_cudart(CallLog()).runtime
    real = {
        "cudaError_t", "cudaStreamCaptureMode", "cudaRuntimeGetVersion", "cudaStreamBeginCapture",
        "cudaStreamEndCapture", "cudaGraphInstantiate", "cudaGraphLaunch", "cudaGraphExecDestroy", "cudaGraphDestroy",
    }  # fmt: skip
    assert {n for n in vars(module) if not n.startswith("__")} <= real
    with pytest.raises(AttributeError):
        module.cudaGraphInstantiateWithFlags  # noqa: B018


def fake_cudart(log, *, begin_error=False, runtime_version=12060):
    """cuda.bindings.runtime's stream-capture calls, as (error, value...) tuples like the real bindings."""
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = enum.Enum(
        "cudaError_t", ["cudaSuccess", "cudaErrorStreamCaptureUnsupported", "cudaErrorStreamCaptureInvalidated"]
    )
    rt.cudaStreamCaptureMode = enum.Enum("cudaStreamCaptureMode", ["cudaStreamCaptureModeThreadLocal"])
    ok = rt.cudaError_t.cudaSuccess
    rt.cudaRuntimeGetVersion = lambda: (ok, runtime_version)

    def begin(handle, mode):
        log.append(("cudaStreamBeginCapture", handle, mode.name))
        if begin_error:
            return (rt.cudaError_t.cudaErrorStreamCaptureUnsupported,)
        log.state["capturing"] = []
        return (ok,)

    def end(handle):
        log.append("cudaStreamEndCapture")
        ops, log.state["capturing"] = log.state["capturing"], None
        if log.state.pop("invalidated", False):  # an error during capture invalidates it, as in CUDA
            return rt.cudaError_t.cudaErrorStreamCaptureInvalidated, None
        return ok, ops

    def launch(exec_, handle):
        log.append("cudaGraphLaunch")
        for op in exec_:
            op()
        return (ok,)

    rt.cudaStreamBeginCapture, rt.cudaStreamEndCapture, rt.cudaGraphLaunch = begin, end, launch
    rt.cudaGraphInstantiate = lambda graph, flags: (ok, graph)
    rt.cudaGraphExecDestroy = lambda e: log.append("cudaGraphExecDestroy")
    rt.cudaGraphDestroy = lambda g: log.append("cudaGraphDestroy")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    return bindings


def _with_cudart(monkeypatch, log, **options):
    bindings = fake_cudart(log, **options)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", bindings.runtime)


def test_runtime_cuda_graph_through_cuda_python_captures_after_one_plain_enqueue_and_replays(monkeypatch, plan):
    log = make_fake_cuda_and_trt(monkeypatch)
    _with_cudart(monkeypatch, log)
    with TensorRTRuntime(plan, cuda_graph=True) as rt:
        calls = [c if isinstance(c, str) else c[0] for c in log]
        assert calls[-4:] == ["enqueue", "sync", "cudaStreamBeginCapture", "cudaStreamEndCapture"]
        assert ("cudaStreamBeginCapture", 77, "cudaStreamCaptureModeThreadLocal") in log
        for value in (1.0, 5.0):  # the replayed graph reads the current input, not the one at capture time
            log.clear()
            out = rt.infer({"image": np.full((1, 3, 4, 4), value, np.float32)})
            assert log == ["htod", "event1", "cudaGraphLaunch", "event2", "dtoh", "sync"]
            np.testing.assert_array_equal(out["logits"], np.full((1, 3, 4, 4), value * 2 + 1, np.float32))
        assert rt.settings()["cuda_graph_backend"] == "cuda-python (cudart) stream capture"
        log.clear()
    assert log[:2] == ["cudaGraphExecDestroy", "cudaGraphDestroy"]


def test_cuda_graph_enqueue_error_is_not_hidden_by_the_failing_end_capture(monkeypatch, plan):
    from bckd_pipeline.runtimes.tensorrt import _capture

    log = make_fake_cuda_and_trt(monkeypatch)
    _with_cudart(monkeypatch, log)

    def failing_enqueue():
        log.state["invalidated"] = True  # the error invalidates the capture: cudaStreamEndCapture fails too
        raise StageCheckError("TensorRT execute_async_v3 failed for m.plan")

    with pytest.raises(StageCheckError, match="execute_async_v3 failed") as e:
        _capture(sys.modules["pycuda.driver"].Stream(), failing_enqueue)
    assert "cudaStreamEndCapture" in log  # capture mode was left ...
    assert "cudaStreamEndCapture failed" not in str(e.value)  # ... without hiding the cause
    assert log.state["capturing"] is None


def test_cuda_graph_refused_with_a_cuda_11_cuda_python(monkeypatch, plan):
    log = make_fake_cuda_and_trt(monkeypatch)
    _with_cudart(monkeypatch, log, runtime_version=11040)
    with pytest.raises(ConfigError, match="needs cuda-python 12.*JetPack 5"):
        TensorRTRuntime(plan, cuda_graph=True).activate()
    assert log[-2:] == ["ctx.pop", "ctx.detach"]


def test_runtime_refuses_tensorrt_8_4_whose_engines_lack_the_name_based_api(monkeypatch, plan):
    log = make_fake_cuda_and_trt(monkeypatch, trt_version="8.4.1")
    engine = sys.modules["tensorrt"].Runtime(None).deserialize_cuda_engine(b"")
    with pytest.raises(AttributeError):  # what a runtime without the version check would hit on JetPack 5.0.2
        engine.num_io_tensors  # noqa: B018
    with pytest.raises(ConfigError, match="8.5.*JetPack 5.1"):
        TensorRTRuntime(plan).activate()
    assert "ctx.push" not in log


def test_runtime_cuda_graph_capture_error_is_reported(monkeypatch, plan):
    log = make_fake_cuda_and_trt(monkeypatch)
    monkeypatch.setitem(sys.modules, "cuda.bindings", fake_cudart(log, begin_error=True))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", sys.modules["cuda.bindings"].runtime)
    with pytest.raises(StageCheckError, match="cudaStreamBeginCapture failed.*without cuda_graph=True"):
        TensorRTRuntime(plan, cuda_graph=True).activate()
    assert log[-2:] == ["ctx.pop", "ctx.detach"]


def test_runtime_cuda_graph_without_cuda_python_is_refused_with_the_right_advice(monkeypatch, plan):
    log = make_fake_cuda_and_trt(monkeypatch)
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(ConfigError, match="cuda-python, which is not installed.*cuda-python>=12,<13") as e:
        TensorRTRuntime(plan, cuda_graph=True).activate()
    assert "pycuda 2022.2" not in str(e.value) and "pip install -U pycuda" not in str(e.value)
    assert log[-2:] == ["ctx.pop", "ctx.detach"]  # the failed activation released its context


def test_runtime_dynamic_input_uses_the_profile_shape(monkeypatch, plan):
    log = make_fake_cuda_and_trt(monkeypatch, input_shape=(-1, 3, 4, 4))
    with TensorRTRuntime(plan) as rt:
        assert ("set_input_shape", "image", (1, 3, 4, 4)) in log
        assert rt.input_spec()["image"].shape == (1, 3, 4, 4)


def test_runtime_foreign_plan_says_engines_are_not_portable(monkeypatch, plan):
    log = make_fake_cuda_and_trt(monkeypatch, plan_ok=False)
    with pytest.raises(ConfigError, match="not portable.*Rebuild it on this device"):
        TensorRTRuntime(plan).activate()
    assert log[-2:] == ["ctx.pop", "ctx.detach"]


def test_runtime_missing_plan_and_several_streams(monkeypatch, plan, tmp_path):
    log = make_fake_cuda_and_trt(monkeypatch)
    with pytest.raises(ConfigError, match="does not exist"):
        TensorRTRuntime(tmp_path / "nope.plan").activate()
    feeds = [{"image": np.zeros((1, 3, 4, 4), np.float32)}] * 3
    with TensorRTRuntime(plan) as rt:
        with pytest.raises(ConfigError, match="streams=2 is not supported"):
            rt.infer_concurrently(feeds, 2)
        log.clear()
        rt.infer_concurrently(feeds, 1)
        assert log.count("enqueue") == 3  # in this thread, one after another


# -- the device-side import rule ------------------------------------------------------------------
def test_modules_import_from_the_agent_subset_without_torch_or_onnx(tmp_path):
    """The agent's own module list (device.AGENT_MODULES) is enough: every bckd_pipeline module the TensorRT
    code imports comes from the copied subset, never from this checkout (an editable install would fill gaps)."""
    from bckd_pipeline.device.bundle import AGENT_MODULES

    for rel in AGENT_MODULES:
        (tmp_path / "bckd_pipeline" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "bckd_pipeline" / rel, tmp_path / "bckd_pipeline" / rel)
    code = textwrap.dedent("""
        import json, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "onnx", "onnxruntime", "openvino", "tensorrt", "pycuda"}:
                    raise ImportError("blocked on the device: " + name)
        sys.meta_path.insert(0, Block())
        import bckd_pipeline.targets.tensorrt, bckd_pipeline.runtimes.tensorrt, bckd_pipeline.device.jetson
        import bckd_pipeline.runtimes.onnxruntime, bckd_pipeline.runtimes.registry
        import bckd_pipeline.device.agent
        bckd_pipeline.runtimes.build_runtime("onnxruntime", "model.qdq.onnx", precision="int8")  # the fallback
        ours = [m for m in sys.modules if m.startswith("bckd_pipeline")]
        print(json.dumps({m: getattr(sys.modules[m], "__file__", None) for m in ours}))
    """)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    files = json.loads(done.stdout)
    assert "bckd_pipeline.device.jetson" in files and "bckd_pipeline.fileio" in files
    outside = {m: f for m, f in files.items() if f is not None and not f.startswith(str(tmp_path))}
    assert outside == {}, f"imported from outside the agent's subset: {outside}"


# -- JetPack 5: the shipped files run on Python 3.8 -----------------------------------------------
def test_agent_modules_run_on_python_3_8():
    """JetPack 5's system Python is 3.8 (python3-libnvinfer is built for it): every file that ships to the device
    parses with the 3.8 grammar and uses no 3.9+ call or run-time construct (tests/helpers/py38_rules.py)."""
    import ast

    from helpers.py38_rules import problems

    from bckd_pipeline.device.bundle import AGENT_MODULES

    found = []
    for rel in AGENT_MODULES:
        path = REPO / "bckd_pipeline" / rel
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))
        found += problems(path)
    assert found == []


@pytest.mark.parametrize(
    ("code", "why"),
    [
        ("from __future__ import annotations\nVersion = tuple[int, int, int]\n", "tuple[...]"),
        ("from collections.abc import Callable\nRun = Callable[..., int]\n", "Callable[...]"),
        ("pairs = list(zip(a, b, strict=True))\n", "zip(strict=...)"),
        ("from functools import cache\n", "functools import cache"),
        ("Maybe = int | None\n", "X | Y"),
        ("merged = dict(a) | b\n", "dict | dict"),
        ("name = text.removeprefix('x')\n", ".removeprefix"),
        ("match x:\n    case 1:\n        pass\n", "not Python 3.8 syntax"),
    ],
)
def test_the_3_8_rules_catch_what_the_agent_used_to_have(code, why):
    from helpers.py38_rules import problems

    assert any(why in p for p in problems("snippet.py", code)), problems("snippet.py", code)


def test_the_3_8_rules_leave_annotations_alone_under_future_annotations():
    from helpers.py38_rules import problems

    code = (
        "from __future__ import annotations\n"
        "def f(x: tuple[int, ...] | None) -> list[str]:\n"
        "    y: dict[str, int] = {}\n"
    )
    assert problems("ok.py", code) == []


def test_the_agent_zipapp_stops_early_on_an_old_python():
    from bckd_pipeline.device.bundle import AGENT_MAIN

    assert "sys.version_info < (3, 8)" in AGENT_MAIN and "JetPack 5.1" in AGENT_MAIN
    ast_ok = compile(AGENT_MAIN, "__main__.py", "exec")  # plain syntax: an old interpreter gets the message
    assert ast_ok is not None


# -- Jetson facts ---------------------------------------------------------------------------------
def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_run(outputs: dict):
    def run(argv, **kwargs):
        if argv[0] not in outputs:
            raise FileNotFoundError(argv[0])
        return subprocess.CompletedProcess(argv, 0, stdout=outputs[argv[0]], stderr="")

    return run


def orin_nano(root: Path) -> None:
    write(root, "proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\x00")
    write(
        root,
        "etc/nv_tegra_release",
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
        "DATE: Wed Jan  8 01:49:37 UTC 2025\n",
    )
    for cpu, cur in (("cpu0", "1510400"), ("cpu1", "729600")):
        write(root, f"sys/devices/system/cpu/{cpu}/cpufreq/scaling_cur_freq", cur + "\n")
        write(root, f"sys/devices/system/cpu/{cpu}/cpufreq/scaling_max_freq", "1510400\n")
    write(root, "sys/class/devfreq/17000000.ga10b/cur_freq", "306000000\n")
    write(root, "sys/class/devfreq/17000000.ga10b/max_freq", "624750000\n")
    zones = {
        0: ("cpu-thermal", "47500", "99000"),
        1: ("gpu-thermal", "101250", "99000"),
        2: ("soc0-thermal", "45000", None),
    }
    for i, (kind, temp, trip) in zones.items():
        write(root, f"sys/class/thermal/thermal_zone{i}/type", kind + "\n")
        write(root, f"sys/class/thermal/thermal_zone{i}/temp", temp + "\n")
        if trip:
            write(root, f"sys/class/thermal/thermal_zone{i}/trip_point_0_type", "passive\n")
            write(root, f"sys/class/thermal/thermal_zone{i}/trip_point_0_temp", trip + "\n")
            write(root, f"sys/class/thermal/thermal_zone{i}/trip_point_1_type", "critical\n")
            write(root, f"sys/class/thermal/thermal_zone{i}/trip_point_1_temp", "105000\n")


def test_device_facts_on_a_fake_orin_nano(tmp_path):
    orin_nano(tmp_path)
    facts = device_facts(tmp_path, run=fake_run({"nvpmodel": "NV Power Mode: 15W\n0\n"}))
    assert facts["is_jetson"] is True
    assert facts["model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert facts["l4t"] == "36.4.3" and facts["jetpack"] == "6.2" and facts["jetpack_tensorrt"] == "10.3"
    assert facts["power_mode"] == {"name": "15W", "id": 0}
    assert facts["temperatures_c"] == {"cpu-thermal": 47.5, "gpu-thermal": 101.25, "soc0-thermal": 45.0}
    assert facts["throttling"] == ["gpu-thermal: 101.2 C >= passive trip 99.0 C"]
    clocks = facts["clocks"]
    assert clocks["pinned_at_max"] is False and "sysfs" in clocks["source"]
    assert clocks["gpu"] == {"device": "17000000.ga10b", "cur_hz": 306000000, "max_hz": 624750000}
    assert [c["cpu"] for c in clocks["cpus"]] == ["cpu0", "cpu1"]


def test_device_facts_pinned_clocks_and_no_throttling(tmp_path):
    orin_nano(tmp_path)
    write(tmp_path, "sys/devices/system/cpu/cpu1/cpufreq/scaling_cur_freq", "1510400\n")
    write(tmp_path, "sys/class/devfreq/17000000.ga10b/cur_freq", "624750000\n")
    write(tmp_path, "sys/class/thermal/thermal_zone1/temp", "60000\n")
    facts = device_facts(tmp_path, run=fake_run({}))
    assert facts["clocks"]["pinned_at_max"] is True
    assert facts["throttling"] == []
    assert facts["power_mode"] is None and "nvpmodel: command not found" in facts["notes"]


def test_device_facts_on_an_empty_root(tmp_path):
    facts = device_facts(tmp_path, run=fake_run({}))
    assert facts["is_jetson"] is False
    for key in ("model", "l4t", "jetpack", "power_mode", "clocks", "temperatures_c", "throttling"):
        assert facts[key] is None, key
    notes = " | ".join(facts["notes"])
    for why in ("device-tree/model", "nv_tegra_release", "nvpmodel", "thermal_zone", "jetson_clocks"):
        assert why in notes


@pytest.mark.parametrize(
    ("line", "want"),
    [
        ("# R36 (release), REVISION: 4.3, GCID: 1", "36.4.3"),
        ("# R36 (release), REVISION: 4.0, GCID: 1", "36.4.0"),
        ("# R35 (release), REVISION: 4.1, GCID: 1", "35.4.1"),
        ("garbage", None),
    ],
)
def test_parse_l4t_release(line, want):
    assert parse_l4t_release(line) == want


@pytest.mark.parametrize(
    ("l4t", "jp"),
    [
        ("36.4.4", "6.2.1"),
        ("36.4.3", "6.2"),
        ("36.4.0", "6.1"),
        ("36.3.0", "6.0"),
        ("35.4.1", "5.1.2"),
        ("35.1.0", "5.0.2"),
        ("35.2.1", "5.1"),
        ("35.5.0", "5.1.3"),
        ("35.6.0", "5.1.4"),
        ("35.6.1", "5.1.5"),
        ("38.2.1", "7.0"),
        ("35.9.9", None),
    ],
)
def test_jetpack_table(l4t, jp):
    assert jetpack_for_l4t(l4t) == jp


def test_jetpack_6_0_ships_tensorrt_8_6_not_10_3():
    from bckd_pipeline.device.jetson import TENSORRT_BY_JETPACK

    assert TENSORRT_BY_JETPACK[jetpack_for_l4t("36.3.0")] == "8.6"
    assert TENSORRT_BY_JETPACK[jetpack_for_l4t("36.4.0")] == "10.3"
    assert TENSORRT_BY_JETPACK[jetpack_for_l4t("35.1.0")] == "8.4"  # refused by the recipe (needs 8.5)


def test_unknown_l4t_gives_a_note(tmp_path):
    write(tmp_path, "etc/nv_tegra_release", "# R35 (release), REVISION: 9.9, GCID: 1\n")
    facts = device_facts(tmp_path, run=fake_run({}))
    assert facts["l4t"] == "35.9.9" and facts["jetpack"] is None and facts["is_jetson"] is True
    assert any("35.9.9 is not in the JetPack table" in n for n in facts["notes"])


def test_gpu_facts_parses_nvidia_smi():
    # Verbatim output of this exact query on an NVIDIA H200 (driver 580.159.04).
    out = "NVIDIA H200, 580.159.04, 345, 1980, 3201, 3201, 34, 78.68, 700.00, 0x0000000000000001\n"
    facts = gpu_facts(run=fake_run({"nvidia-smi": out}))
    assert facts["name"] == "NVIDIA H200" and facts["driver"] == "580.159.04"
    assert facts["sm_clock_mhz"] == 345 and facts["sm_clock_max_mhz"] == 1980 and facts["mem_clock_mhz"] == 3201
    assert facts["temperature_c"] == 34 and facts["power_w"] == 78.68 and facts["power_limit_w"] == 700.0
    assert facts["throttle_reasons"] == 1 and facts["notes"] == []  # bit 0: GPU idle


def test_gpu_facts_unreadable_fields_are_none():
    # Synthetic line (not a recorded device): nvidia-smi prints [N/A] for fields a GPU does not report.
    out = "Some GPU, [N/A], 1020, 1020, [N/A], [N/A], 51, [N/A], [N/A], [N/A]\n"
    facts = gpu_facts(run=fake_run({"nvidia-smi": out}))
    assert facts["name"] == "Some GPU" and facts["driver"] is None and facts["power_w"] is None
    assert facts["sm_clock_mhz"] == 1020 and facts["temperature_c"] == 51


def test_gpu_facts_without_nvidia_smi():
    facts = gpu_facts(run=fake_run({}))
    assert facts["name"] is None and facts["power_w"] is None
    assert facts["notes"] == ["nvidia-smi: command not found"]


# -- real TensorRT on a GPU host --------------------------------------------------------------------
@pytest.fixture(scope="module")
def trt_gpu():
    pytest.importorskip("tensorrt", reason=HW_REASON)
    cuda = pytest.importorskip("pycuda.driver", reason=HW_REASON)
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            pytest.skip(HW_REASON)
    except cuda.Error:
        pytest.skip(HW_REASON)


def tiny_qdq_onnx(path: Path) -> None:
    """x -> Q/DQ -> Conv(DQ int8 weights, 3->3) -> Relu -> Add(x_dq) -> y: a Q/DQ graph TensorRT quantizes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.integers(-60, 60, size=(3, 3, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(1 / 32, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.full(3, 1 / 256, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(3, np.int8), "w_zp"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32) * 0.1, "bias"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["image", "x_scale", "x_zp"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=0),
        helper.make_node("Conv", ["x_dq", "w", "bias"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "x_dq"], ["logits"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_qdq",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 16, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_real_build_and_run_matches_onnxruntime(trt_gpu, tmp_path, cuda_graph):
    from bckd_pipeline.runtimes.onnxruntime import OrtRuntime

    onnx_path = tmp_path / "tiny.onnx"
    tiny_qdq_onnx(onnx_path)
    info = build_engine(
        onnx_path, tmp_path / "tiny.plan", EngineRecipe("int8", workspace_mib=256), log_path=tmp_path / "build.log"
    )
    assert info["plan_bytes"] > 0
    x = np.random.default_rng(1).uniform(-3, 3, (1, 3, 16, 16)).astype(np.float32)
    with OrtRuntime(onnx_path) as ort_rt:
        want = ort_rt.infer({"image": x})["logits"]
    with TensorRTRuntime(tmp_path / "tiny.plan", cuda_graph=cuda_graph) as rt:
        assert rt.input_spec()["image"].shape == (1, 3, 16, 16)
        got = rt.infer({"image": x})["logits"]
        assert rt.last_device_ms is not None and rt.last_device_ms > 0
        assert set(rt.versions()) == {"tensorrt", "pycuda", "cuda_driver"}
        assert rt.settings()["cuda_graph"] is cuda_graph
    # Same Q/DQ scales on both sides; TensorRT may fuse and accumulate differently: within a few output steps.
    np.testing.assert_allclose(got, want, atol=0.05)


def test_real_plan_from_garbage_is_refused(trt_gpu, tmp_path):
    plan = tmp_path / "foreign.plan"
    plan.write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match="not portable"):
        TensorRTRuntime(plan).activate()
