"""What a user meant by a target name that is not one: the suggestion of an unknown ``--target``.

Names are suggested by meaning before spelling: ``ort``/``onnxruntime``/``onnx`` are ONNX Runtime, ``ov``/
``openvino`` OpenVINO, ``trt`` TensorRT, each on the CPU target where the backend has several (the target a
user without a GPU or NPU means). Case, ``_`` and spaces are forgiven. Only then the closest spelling.
An alias is suggested, never accepted: a typo must not pick a target silently, and the name written in a
script is the name the report, the ledger and the budgets file carry.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from ..errors import ConfigError

# A backend's other names -> its default target.
ALIASES = {
    "ort": "onnxruntime-cpu",
    "onnxruntime": "onnxruntime-cpu",
    "onnx": "onnxruntime-cpu",
    "onnx-runtime": "onnxruntime-cpu",
    "ov": "openvino-cpu",
    "openvino": "openvino-cpu",
    "trt": "tensorrt",
    "tensorrt-gpu": "tensorrt",
}
PRECISIONS = ("int8", "fp16", "fp32")
# Short backend names in front of a device or precision: ``ov-gpu`` -> ``openvino-gpu``.
PREFIXES = {
    "ort": "onnxruntime",
    "onnx": "onnxruntime",
    "onnx-runtime": "onnxruntime",
    "ov": "openvino",
    "trt": "tensorrt",
}


def normalise(name: str) -> str:
    return "-".join(str(name).strip().lower().replace("_", "-").split())


def suggest_target(given: str, targets: Iterable[str]) -> str | None:
    """The target ``given`` most likely means, or None."""
    targets = list(targets)
    name = normalise(given)
    if name in targets:
        return name
    if name in ALIASES and ALIASES[name] in targets:
        return ALIASES[name]
    for alias, backend in sorted(PREFIXES.items(), key=lambda kv: -len(kv[0])):
        rest = name[len(alias) + 1 :] if name.startswith(alias + "-") else None
        if rest and f"{backend}-{rest}" in targets:
            return f"{backend}-{rest}"
    short, _, rest = name.partition("-")
    if short in ALIASES and rest:  # ``onnxruntime-fp32``, ``openvino-int8``: the backend's target at that precision
        for meant in (f"{ALIASES[short]}-{rest}", ALIASES[short] if rest in PRECISIONS else ""):
            if meant in targets:
                return meant
    close = difflib.get_close_matches(name, targets, n=1, cutoff=0.5)
    return close[0] if close else None


def did_you_mean_target(given: str, targets: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the target ``given`` most likely means, or ''."""
    meant = suggest_target(given, targets)
    return f" Did you mean {meant!r}?" if meant else ""


def unknown_target(given: str, targets: Iterable[str], how_to_fix: str = "") -> ConfigError:
    """The 'unknown --target' error: what was given, what is allowed, what was probably meant, how to fix."""
    targets = sorted(targets)
    msg = f"Unknown --target {given!r}. Allowed: {', '.join(targets)}.{did_you_mean_target(given, targets)}"
    return ConfigError(msg + (f" {how_to_fix}" if how_to_fix else ""))
