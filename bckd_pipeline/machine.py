"""The machine a latency was measured on: CPU model and vector ISA, OpenVINO's view of it, the GPU.

A latency means nothing without the machine. ``machine_facts()`` goes into report.json and
manifest.json; ``int8_speed_note`` explains, in the ledger, an INT8 row that is not faster than its
FP32 parent on this host; ``machine_differences`` is what the CI gate checks before it compares a
baseline's latency with a report's.

INT8 kernels are fast on CPUs with 8-bit dot-product instructions: VNNI (AVX512-VNNI, AVX-VNNI) or
AMX on x86, the dot-product extensions on Arm. Without them an INT8 convolution runs on the same
vector units as FP32 and pays for the quantize/dequantize work around it, so on an AVX2-only CPU it
can be no faster than FP32 (docs/deploy-parity.md, "The machine a latency was measured on").

Standard library at import; OpenVINO is asked only when installed, torch only when already imported.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# /proc/cpuinfo flag -> the name reports use, in the order they are listed.
ISA_FLAGS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "asimd": "NEON",
    "asimddp": "NEON-DOTPROD",
    "i8mm": "I8MM",
    "bf16": "NEON-BF16",
    "sve": "SVE",
}
# The instructions that make INT8 faster than FP32 on a CPU.
INT8_ISA = ("AVX512-VNNI", "AVX-VNNI", "AMX-INT8", "NEON-DOTPROD", "I8MM")
# The instructions that compute bf16 products natively: without them a bf16 matmul or convolution converts to fp32
# and back around fp32 arithmetic, so bf16 autocast trains slower than fp32.
BF16_ISA = ("AVX512-BF16", "AMX-BF16", "NEON-BF16")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str | None, set[str]]:
    """The CPU model name and its feature flags, from /proc/cpuinfo (Linux); (None, {}) elsewhere."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None, set()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None:
            model = value.strip() or None
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


# The packages whose versions report.json and manifest.json record (None: not installed).
PACKAGES = ("bckd-pipeline", "torch", "onnx", "onnxruntime", "onnxsim", "onnxslim", "openvino", "nncf", "numpy")


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """The installed version of each package (None when absent), and Python's under ``python``."""
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def git_commit() -> str | None:
    """The git commit of the checkout this package runs from; None outside a git checkout."""
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def host_facts() -> dict:
    """The host in four facts, as every latency report records it (the device agent's included)."""
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def cpu_facts(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The CPU: model, architecture, logical cores, the vector ISA that decides FP32 and INT8 speed."""
    model, flags = _cpuinfo(cpuinfo)
    isa = [name for flag, name in ISA_FLAGS.items() if flag in flags]
    return {
        "model": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "isa": isa,
        "int8_dot_product": [n for n in isa if n in INT8_ISA],
        "bf16_native": [n for n in isa if n in BF16_ISA],
        "source": "/proc/cpuinfo" if flags else "platform (no ISA flags readable)",
    }


def native_bf16(cpu: dict) -> list[str]:
    """The native bf16 instructions among a CPU's (``cpu_facts()``) ISA; empty when it has none."""
    return [n for n in cpu.get("isa", []) if n in BF16_ISA]


def openvino_facts() -> dict | None:
    """OpenVINO's FULL_DEVICE_NAME and OPTIMIZATION_CAPABILITIES for every device it sees; None without it."""
    if importlib.util.find_spec("openvino") is None:
        return None
    try:
        import openvino as ov

        core = ov.Core()
        devices = {}
        for dev in core.available_devices:
            facts = {}
            for key in ("FULL_DEVICE_NAME", "OPTIMIZATION_CAPABILITIES", "DEVICE_ARCHITECTURE"):
                try:
                    value = core.get_property(dev, key)
                except Exception:  # noqa: BLE001 - a property this device or version lacks
                    continue
                facts[key] = list(value) if isinstance(value, (list, tuple)) else str(value)
            devices[dev] = facts
        return {"version": ov.get_version(), "devices": devices}
    except Exception as exc:  # noqa: BLE001 - facts are best effort; never fail a run for them
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def gpu_facts() -> list[dict]:
    """NVIDIA GPUs with their driver (nvidia-smi), else what an already-imported torch sees; [] without one."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            res = subprocess.run(
                [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            gpus = []
            for line in res.stdout.strip().splitlines() if res.returncode == 0 else []:
                name, driver, memory = (p.strip() for p in (line.split(",") + ["", ""])[:3])
                gpus.append({"name": name, "driver": driver, "memory": memory, "source": "nvidia-smi"})
            if gpus:
                return gpus
        except (OSError, subprocess.SubprocessError):
            pass
    torch = sys.modules.get("torch")  # never imported for this: the gate and --help stay light
    if torch is not None:
        try:
            if torch.cuda.is_available():
                cuda = torch.version.cuda
                return [
                    {"name": torch.cuda.get_device_name(i), "driver": None, "cuda": cuda, "source": "torch"}
                    for i in range(torch.cuda.device_count())
                ]
        except Exception:  # noqa: BLE001
            pass
    return []


def machine_facts() -> dict:
    """Everything above, as report.json and manifest.json record it under ``machine``."""
    return {
        "cpu": cpu_facts(),
        "os": f"{platform.system()} {platform.release()}",
        "openvino": openvino_facts(),
        "gpus": gpu_facts(),
    }


def describe_cpu(cpu: dict) -> str:
    """'AMD EPYC (x86_64; AVX2, AVX-512, AVX512-VNNI)': the CPU in one phrase."""
    isa = ", ".join(i for i in cpu.get("isa", []) if i != "FMA") or "no vector ISA flags read"
    return f"{cpu.get('model')} ({cpu.get('arch')}; {isa})"


def machine_differences(a: dict | None, b: dict | None) -> list[str]:
    """How two reports' machines differ in what decides CPU latency: the CPU model and the vector ISA.

    Empty when they match, or when either report predates machine facts (nothing to compare).
    """
    ca, cb = (a or {}).get("cpu"), (b or {}).get("cpu")
    if not ca or not cb:
        return []
    diffs = []
    if ca.get("model") != cb.get("model"):
        diffs.append(f"CPU {ca.get('model')!r} vs {cb.get('model')!r}")
    ia, ib = set(ca.get("isa", [])), set(cb.get("isa", []))
    if ia != ib:
        only_a, only_b = sorted(ia - ib), sorted(ib - ia)
        parts = [f"only the first has {', '.join(only_a)}"] if only_a else []
        parts += [f"only the second has {', '.join(only_b)}"] if only_b else []
        diffs.append(f"vector ISA differs ({'; '.join(parts)})")
    return diffs


def int8_speed_note(int8: dict, parent: dict, cpu: dict, *, on_cpu: bool) -> str | None:
    """The ledger's note when an INT8 row is not faster than its FP32 parent here, and why; else None."""
    a, b = int8["latency_ms"]["p50"], parent["latency_ms"]["p50"]
    if a is None or b is None or a < b:
        return None
    head = (
        f"INT8 is not faster than its FP32 parent `{parent['name']}` here (p50 {a:.2f} ms vs {b:.2f} ms, x{a / b:.2f})"
    )
    fp32 = f"deploy the FP32 artifact ({parent['artifact']})" if parent.get("artifact") else "deploy FP32"
    if not on_cpu:
        return f"{head} on {int8['device']}. Measure both on the deployment device before choosing; else {fp32}."
    units = cpu.get("int8_dot_product") or []
    if not units:
        return (
            f"{head}: this CPU, {describe_cpu(cpu)}, has no VNNI or AMX (no 8-bit dot-product instructions), so "
            f"INT8 convolutions run on the same vector units as FP32 and pay for quantize/dequantize. On this host "
            f"{fp32}; for INT8, measure on the target CPU (one with VNNI or AMX)."
        )
    return (
        f"{head}, although this CPU has {', '.join(units)}: at this model size and input, the quantize/dequantize "
        f"and layout work costs what the INT8 kernels save. Measure at the deployment input size, or {fp32}."
    )


def machine_line(machine: dict) -> str:
    """The machine in one line, for report.md and the printed ledger."""
    parts = [f"CPU {describe_cpu(machine.get('cpu') or {})}"]
    ov = (machine.get("openvino") or {}).get("devices") or {}
    caps = (ov.get("CPU") or {}).get("OPTIMIZATION_CAPABILITIES")
    if caps:
        parts.append(f"OpenVINO CPU capabilities {', '.join(caps)}")
    gpus = machine.get("gpus") or []
    parts.append(
        "GPU " + "; ".join(f"{g['name']}" + (f" (driver {g['driver']})" if g.get("driver") else "") for g in gpus)
        if gpus
        else "no NVIDIA GPU"
    )
    return ", ".join(parts)
