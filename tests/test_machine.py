"""machine.py: the CPU facts read from /proc/cpuinfo, and the ledger's note on an INT8 row not faster than FP32."""

from __future__ import annotations

from bckd_pipeline.machine import cpu_facts, int8_speed_note, machine_differences, machine_facts

AVX2_EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse sse2 avx fma avx2 bmi2\n"
SAPPHIRE = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    "flags\t\t: avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16 avx_vnni\n"
)


def _cpu(tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return cpu_facts(path)


def test_cpu_model_and_vector_isa_come_from_cpuinfo(tmp_path):
    epyc = _cpu(tmp_path, AVX2_EPYC)
    assert epyc["model"] == "AMD EPYC 7B12" and epyc["isa"] == ["AVX2", "FMA"] and epyc["int8_dot_product"] == []
    xeon = _cpu(tmp_path, SAPPHIRE)
    assert {"AVX-512", "AVX512-VNNI", "AMX-INT8", "AVX-VNNI"} <= set(xeon["isa"])
    assert xeon["int8_dot_product"] == ["AVX512-VNNI", "AVX-VNNI", "AMX-INT8"]
    assert machine_differences({"cpu": epyc}, {"cpu": epyc}) == []
    diffs = machine_differences({"cpu": epyc}, {"cpu": xeon})
    assert diffs[0].startswith("CPU 'AMD EPYC 7B12' vs 'Intel(R) Xeon(R) Platinum 8480+'")
    assert "only the second has AMX" in diffs[1]
    assert machine_differences(None, {"cpu": xeon}) == []  # an old report: nothing to compare


def test_machine_facts_of_this_host_have_the_cpu_openvino_and_gpu_keys():
    facts = machine_facts()
    assert facts["cpu"]["model"] and facts["cpu"]["arch"] and isinstance(facts["gpus"], list)
    ov = facts["openvino"]
    if ov is not None and "devices" in ov:  # OpenVINO installed: its own name for the CPU and what it optimises
        assert {"FULL_DEVICE_NAME", "OPTIMIZATION_CAPABILITIES"} <= set(ov["devices"]["CPU"])


def _row(name, precision, p50, artifact=None):
    return {"name": name, "precision": precision, "latency_ms": {"p50": p50}, "artifact": artifact, "device": "CPU"}


def test_int8_not_faster_than_fp32_is_explained_by_the_cpu(tmp_path):
    int8 = _row("openvino-int8", "int8", 6.99)
    fp32 = _row("openvino-fp32", "fp32", 6.89, "deploy/openvino/fp32/model.xml")
    note = int8_speed_note(int8, fp32, _cpu(tmp_path, AVX2_EPYC), on_cpu=True)
    assert "not faster than its FP32 parent `openvino-fp32` here (p50 6.99 ms vs 6.89 ms" in note
    assert "has no VNNI or AMX" in note and "deploy the FP32 artifact (deploy/openvino/fp32/model.xml)" in note
    note = int8_speed_note(int8, fp32, _cpu(tmp_path, SAPPHIRE), on_cpu=True)
    assert "although this CPU has AVX512-VNNI, AVX-VNNI, AMX-INT8" in note
    assert int8_speed_note(_row("x", "int8", 3.0), fp32, _cpu(tmp_path, AVX2_EPYC), on_cpu=True) is None
    assert "Measure both on the deployment device" in int8_speed_note(int8, fp32, {}, on_cpu=False)
