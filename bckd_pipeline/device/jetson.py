"""What is recorded with every measurement on a Jetson (and on a discrete NVIDIA GPU).

Latency on a Jetson depends on the power mode (nvpmodel), on whether clocks are pinned
(jetson_clocks), on temperature and throttling, and on the JetPack / TensorRT versions, so each is
read and stored next to the numbers. Every value is None where it cannot be read, and ``notes`` says
why. All paths are read under ``root`` and commands go through ``run``, so tests can fake a Jetson.

Part of the device-side agent: standard library only (tensorrt is imported lazily, if present).

JetPack <- Jetson Linux (L4T) mapping, and the TensorRT each JetPack ships. Sources:
NVIDIA's JetPack SDK pages (developer.nvidia.com/embedded/jetpack-sdk-51: "JetPack 5.1 ... Jetson
Linux 35.2.1 ... CUDA 11.4, TensorRT 8.5.2"), the JetPack archive (developer.nvidia.com/embedded/
jetpack-archive; docs.nvidia.com/jetson/archives/jetpack-archived/jetpack-515 for 5.1.5), Torch-TensorRT's
JetPack page ("JetPack 6.1 ... CUDA 12.6, TensorRT 10.3"), a vendor BSP release table (36.4.4 -> 6.2.1,
36.4.3 -> 6.2, 36.4 -> 6.1, 36.3 -> 6.0), and for JetPack 6.0 = L4T 36.3 (TensorRT 8.6, not 10.3) and
35.1 = 5.0.2 (TensorRT 8.4.1, which this agent refuses) a code review (docs/decisions.md). 38.2 -> 7.0 and 38.4 -> 7.1
from NVIDIA's JetPack 7 download pages (their TensorRT is not in the table: unknown, not guessed).
Releases not in the table are reported as None with a note (never guessed).

Part of the device-side agent, which runs on Python 3.8 (JetPack 5): typing's generics only.
"""

from __future__ import annotations

import re
import subprocess
from typing import Callable
from pathlib import Path

# (major, minor, patch or None for "any patch") -> JetPack. Exact matches win over "any patch".
JETPACK_BY_L4T = {
    (38, 4, None): "7.1",
    (38, 2, None): "7.0",
    (36, 4, 4): "6.2.1",
    (36, 4, 3): "6.2",
    (36, 4, 0): "6.1",
    (36, 3, None): "6.0",
    (36, 2, None): "6.0 DP",
    (35, 6, 1): "5.1.5",
    (35, 6, 0): "5.1.4",
    (35, 5, 0): "5.1.3",
    (35, 4, 1): "5.1.2",
    (35, 3, 1): "5.1.1",
    (35, 2, 1): "5.1",
    (35, 1, 0): "5.0.2",
}  # type: Dict[Tuple[int, int, Optional[int]], str]
# JetPack -> the TensorRT it ships (major.minor); the agent needs >= 8.5.
TENSORRT_BY_JETPACK = {
    "6.2.1": "10.3",
    "6.2": "10.3",
    "6.1": "10.3",
    "6.0": "8.6",
    "6.0 DP": "8.6",
    "5.1.5": "8.5",
    "5.1.4": "8.5",
    "5.1.3": "8.5",
    "5.1.2": "8.5",
    "5.1.1": "8.5",
    "5.1": "8.5",
    "5.0.2": "8.4",
}

Run = Callable[..., subprocess.CompletedProcess]


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel.lstrip("/")).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _command(run: Run, argv: list[str], notes: list[str]) -> str | None:
    try:
        result = run(argv, capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        notes.append(f"{argv[0]}: command not found")
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        notes.append(f"{argv[0]}: could not run ({exc})")
        return None
    if result.returncode != 0:
        err = (result.stderr or "").strip().splitlines()
        notes.append(f"{' '.join(argv)}: exit {result.returncode}" + (f" ({err[-1][:200]})" if err else ""))
        return None
    return result.stdout


def parse_l4t_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.3, GCID: ...' -> '36.4.3'; 'REVISION: 4.0' -> '36.4.0'."""
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if not match:
        return None
    major, minor, patch = match.groups()
    return f"{int(major)}.{int(minor)}.{int(patch or 0)}"


def jetpack_for_l4t(release: str) -> str | None:
    parts = [int(p) for p in release.split(".")] + [0, 0]
    major, minor, patch = parts[:3]
    return JETPACK_BY_L4T.get((major, minor, patch)) or JETPACK_BY_L4T.get((major, minor, None))


def parse_nvpmodel(text: str) -> dict | None:
    """'NV Power Mode: 15W\\n0\\n' -> {'name': '15W', 'id': 0}."""
    match = re.search(r"NV Power Mode:\s*(.+)", text)
    if not match:
        return None
    after = text[match.end() :].split()
    mode_id = int(after[0]) if after and after[0].isdigit() else None
    return {"name": match.group(1).strip(), "id": mode_id}


def _thermal(root: Path, notes: list[str]) -> tuple[dict, list[str] | None]:
    zones = sorted((root / "sys/class/thermal").glob("thermal_zone*"), key=lambda p: int(p.name[12:] or 0))
    temps: dict[str, float] = {}
    throttling: list[str] = []
    trips_seen = False
    for zone in zones:
        kind = (_read(zone, "type") or zone.name).strip()
        milli = _read_int(zone / "temp")
        if milli is None:
            continue
        temps[kind] = milli / 1000.0
        for type_file in sorted(zone.glob("trip_point_*_type")):
            if (_read(type_file.parent, type_file.name) or "").strip() != "passive":
                continue
            trip = _read_int(zone / type_file.name.replace("_type", "_temp"))
            if trip is None:
                continue
            trips_seen = True
            if milli >= trip:
                throttling.append(f"{kind}: {milli / 1000:.1f} C >= passive trip {trip / 1000:.1f} C")
    if not zones:
        notes.append("no /sys/class/thermal/thermal_zone*: temperatures unknown")
    if not trips_seen:
        notes.append("no readable passive trip points: throttling unknown")
        return temps, None
    return temps, throttling


def _clocks(root: Path, notes: list[str]) -> dict | None:
    """Pinned clocks: every CPU at its max frequency and the GPU devfreq at its max (what jetson_clocks does)."""
    cpus = []
    for cpufreq in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq")):
        cur, top = _read_int(cpufreq / "scaling_cur_freq"), _read_int(cpufreq / "scaling_max_freq")
        if cur is not None and top is not None:
            cpus.append({"cpu": cpufreq.parent.name, "cur_khz": cur, "max_khz": top})
    gpu = None
    for dev in sorted((root / "sys/class/devfreq").glob("*")):
        name = dev.name.lower()
        if "gpu" in name or re.search(r"g[a-z]\d+b", name):  # 17000000.ga10b (Orin), 17000000.gv11b (Xavier)
            cur, top = _read_int(dev / "cur_freq"), _read_int(dev / "max_freq")
            if cur is not None and top is not None:
                gpu = {"device": dev.name, "cur_hz": cur, "max_hz": top}
                break
    if not cpus and gpu is None:
        notes.append("jetson_clocks state unknown: no readable cpufreq or GPU devfreq files")
        return None
    at_max = all(c["cur_khz"] >= c["max_khz"] for c in cpus) and (gpu is None or gpu["cur_hz"] >= gpu["max_hz"])
    if gpu is None:
        notes.append("GPU devfreq not readable: clock state judged from the CPUs alone")
    return {
        "source": "sysfs cpufreq scaling_cur_freq/scaling_max_freq + devfreq cur_freq/max_freq",
        "pinned_at_max": at_max,
        "cpus": cpus,
        "gpu": gpu,
    }


def _tensorrt_version(notes: list[str]) -> str | None:
    try:
        import tensorrt
    except ImportError:
        notes.append("tensorrt is not importable: TensorRT version unknown")
        return None
    return tensorrt.__version__


def device_facts(root: Path = Path("/"), run: Run = subprocess.run) -> dict:
    """Module, L4T/JetPack, TensorRT, power mode, clocks, temperatures and throttling of a Jetson.

    Keys: is_jetson, model, l4t, jetpack, tensorrt, power_mode ({'name', 'id'}), clocks
    ({'source', 'pinned_at_max', 'cpus', 'gpu'}), temperatures_c ({zone type: degrees C}), throttling
    (list of zones at/above a passive trip point; [] none; None unknown), notes (list of str).
    """
    root = Path(root)
    notes: list[str] = []
    model = _read(root, "proc/device-tree/model")
    model = model.replace("\x00", "").strip() if model is not None else None
    if model is None:
        notes.append("no /proc/device-tree/model: module model unknown")

    release_text = _read(root, "etc/nv_tegra_release")
    l4t = parse_l4t_release(release_text) if release_text is not None else None
    if release_text is None:
        notes.append("no /etc/nv_tegra_release: not a Jetson, or L4T release unknown")
    elif l4t is None:
        notes.append(f"/etc/nv_tegra_release not understood: {release_text.strip()[:120]!r}")
    jetpack = jetpack_for_l4t(l4t) if l4t else None
    shipped = TENSORRT_BY_JETPACK.get(jetpack) if jetpack else None
    if l4t and jetpack is None:
        notes.append(f"L4T {l4t} is not in the JetPack table of bckd_pipeline.device.jetson; JetPack unknown")

    is_jetson = l4t is not None or (model is not None and "jetson" in model.lower())
    power_mode = None
    if is_jetson:
        out = _command(run, ["nvpmodel", "-q"], notes)
        power_mode = parse_nvpmodel(out) if out is not None else None
        if out is not None and power_mode is None:
            notes.append(f"nvpmodel -q output not understood: {out.strip()[:120]!r}")
    else:
        notes.append("nvpmodel not asked: not a Jetson")

    temps, throttling = _thermal(root, notes)
    return {
        "is_jetson": is_jetson,
        "model": model,
        "l4t": l4t,
        "jetpack": jetpack,
        "jetpack_tensorrt": shipped,  # the TensorRT that JetPack ships (the one found is "tensorrt")
        "tensorrt": _tensorrt_version(notes),
        "power_mode": power_mode,
        "clocks": _clocks(root, notes),
        "temperatures_c": temps or None,
        "throttling": throttling,
        "notes": notes,
    }


GPU_QUERY = (
    "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,temperature.gpu,power.draw,power.limit,"
    "clocks_throttle_reasons.active"
)


NOT_AVAILABLE = ("", "[N/A]", "[Not Supported]", "N/A")


def _text(value: str) -> str | None:
    value = value.strip()
    return None if value in NOT_AVAILABLE else value


def _number(value: str):
    value = value.strip()
    if value in NOT_AVAILABLE:
        return None
    try:
        return float(value) if "." in value else int(value, 0)
    except ValueError:
        return value


def gpu_facts(run: Run = subprocess.run) -> dict:
    """A discrete NVIDIA GPU via ``nvidia-smi --query-gpu`` (first GPU); None values and notes when absent.

    Keys: name, driver, sm_clock_mhz, sm_clock_max_mhz, mem_clock_mhz, mem_clock_max_mhz, temperature_c,
    power_w, power_limit_w, throttle_reasons (bitmask), notes.
    """
    notes: list[str] = []
    keys = (
        "name",
        "driver",
        "sm_clock_mhz",
        "sm_clock_max_mhz",
        "mem_clock_mhz",
        "mem_clock_max_mhz",
        "temperature_c",
        "power_w",
        "power_limit_w",
        "throttle_reasons",
    )
    facts: dict = dict.fromkeys(keys)
    out = _command(run, ["nvidia-smi", f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"], notes)
    if out is None:
        return {**facts, "notes": notes}
    line = out.strip().splitlines()[0] if out.strip() else ""
    values = [v.strip() for v in line.split(",")]
    if len(values) != len(keys):
        notes.append(f"nvidia-smi output not understood: {line[:160]!r}")
        return {**facts, "notes": notes}
    facts = {
        k: _text(v) if k in ("name", "driver") else _number(v) for k, v in zip(keys, values)
    }  # lengths checked above
    return {**facts, "notes": notes}
