"""The budgets file of the CI gate (TOML): what a deployed model may cost and must keep.

Schema (docs/ci.md has the full text, with units and defaults)::

    [gate]                        # optional: how noise is judged (these are the defaults)
    confidence = 0.95             # one-sided confidence of the ΔmIoU and latency-regression bounds
    latency_tolerance = 0.10      # relative slack on every latency / FPS budget and baseline comparison
    bootstrap_resamples = 2000
    seed = 0

    [onnxruntime-cpu]             # one table per target name; its keys budget the deployed stage
    max_p50_ms = 5.0
    min_miou = 15

    [onnxruntime-cpu.stages.onnx-simplified]   # a stage that needs its own budgets (or overrides)
    max_p50_ms = 8

Every budget key carries its unit in its name (``_ms`` milliseconds, ``_mb`` megabytes = 10^6
bytes, ``fps`` images per second, ``miou`` mIoU points 0..100, ``pixel_agreement`` a fraction
0..1), so values are plain numbers: ``"12 ms"`` is refused with a message saying so. A target's
table starts from its profile's ``default_budgets`` (``bckd-pipeline targets``); the file's keys win.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DataError, did_you_mean
from ..tasks import TASKS, BudgetKey, Task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport (a dependency there)
    import tomli as tomllib


# The task-independent budgets; each task adds its own (Task.budget_keys: segmentation's min_miou,
# max_miou_drop, min_pixel_agreement, max_baseline_miou_drop).
COMMON_BUDGET_KEYS: dict[str, BudgetKey] = {
    "max_p50_ms": BudgetKey("ms", "max", 0.0, None, "median latency of the timed runs", check="latency"),
    "max_p99_ms": BudgetKey("ms", "max", 0.0, None, "99th percentile latency of the timed runs", check="latency"),
    "min_fps": BudgetKey(
        "fps", "min", 0.0, None, "images per second, one request at a time (batch / mean latency)", check="latency"
    ),
    "max_artifact_mb": BudgetKey(
        "MB", "max", 0.0, None, "size of the stage's artifact files (10^6 bytes)", check="artifact", example="25"
    ),
}


def budget_keys(task: Task) -> dict[str, BudgetKey]:
    """The budgets a report of ``task`` is gated on: the common ones and the task's."""
    return COMMON_BUDGET_KEYS | dict(task.budget_keys)


def all_budget_keys() -> dict[str, BudgetKey]:
    """Every key a budgets file may hold: a file budgets targets, whatever task their reports are of."""
    keys = dict(COMMON_BUDGET_KEYS)
    for task in TASKS.values():
        keys.update(task.budget_keys)
    return keys




@dataclass(frozen=True)
class GateSettings:
    """How the gate separates a real change from measurement noise (docs/ci.md, "Noise")."""

    confidence: float = 0.95
    latency_tolerance: float = 0.10
    bootstrap_resamples: int = 2000
    seed: int = 0
    allow_degenerate: bool = False  # a deployed row whose predictions are degenerate passes (the report still warns)


SETTING_KEYS = {
    "confidence": "a fraction in (0.5, 1), e.g. 0.95",
    "latency_tolerance": "a fraction >= 0, e.g. 0.10 for 10%",
    "bootstrap_resamples": "an integer >= 100, e.g. 2000",
    "seed": "an integer, e.g. 0",
    "allow_degenerate": "true or false",
}
FLAG_SETTINGS = ("allow_degenerate",)


@dataclass(frozen=True)
class TargetBudgets:
    """The budgets of one target: ``deployed`` for its shipped stage, ``stages`` for named ledger stages."""

    target: str
    deployed: dict[str, float]
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    from_defaults: tuple[str, ...] = ()  # keys of ``deployed`` that came from the profile, not the file


@dataclass(frozen=True)
class Budgets:
    path: str
    settings: GateSettings
    targets: dict[str, TargetBudgets]

    def for_target(self, target: str, where: str) -> TargetBudgets:
        """The table for ``target``; a report of another target is bad input (``where`` names the report or run)."""
        if target not in self.targets:
            raise DataError(
                f"{self.path} has no [{target}] table: {where} is of target {target!r}, and the file budgets "
                f"{', '.join(sorted(self.targets))}. Gate a report of a target the file budgets, or add a [{target}] "
                "table (an empty one gives the target's default budgets)."
            )
        return self.targets[target]


def _where(path: str, table: str, key: str | None = None) -> str:
    return f"{path}: [{table}]" + (f" {key}" if key else "")


def _number(path: str, table: str, key: str, value) -> float:
    spec = all_budget_keys()[key]
    if isinstance(value, str):
        raise ConfigError(
            f"{_where(path, table, key)} = {value!r} is a string. The unit is fixed by the key name ({spec.unit}); "
            f"write a bare number, e.g. {key} = {_example(key)}."
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{_where(path, table, key)} = {value!r} is a {type(value).__name__}; a number of {spec.unit} is needed, "
            f"e.g. {key} = {_example(key)}."
        )
    value = float(value)
    if value != value or value < spec.low or (spec.high is not None and value > spec.high):
        allowed = f">= {spec.low:g}" if spec.high is None else f"between {spec.low:g} and {spec.high:g}"
        hint = ""
        if spec.unit == "fraction" and 1 < value <= 100:
            hint = f" {value:g} looks like a percentage: write {value / 100:g}."
        raise ConfigError(
            f"{_where(path, table, key)} = {value:g} is out of range: {spec.unit} {allowed}.{hint} "
            f"It budgets the {spec.what}."
        )
    return value


def _example(key: str) -> str:
    return all_budget_keys()[key].example


def _budget_table(path: str, table: str, body: Mapping, *, allow_stages: bool) -> dict[str, float]:
    values = {}
    for key, value in body.items():
        if key == "stages" and allow_stages:
            continue
        known = all_budget_keys()
        if key not in known:
            allowed = list(known) + (["stages"] if allow_stages else [])
            hint = ""
            if key in SETTING_KEYS:
                hint = f" {key!r} is a gate setting: put it in the [gate] table."
            raise ConfigError(
                f"{_where(path, table)} has unknown key {key!r}.{did_you_mean(key, allowed)}{hint} "
                f"Allowed: {', '.join(allowed)}."
            )
        values[key] = _number(path, table, key, value)
    return values


def _settings(path: str, body) -> GateSettings:
    if not isinstance(body, Mapping):
        raise ConfigError(f"{path}: 'gate' must be a table ([gate]), got {type(body).__name__}.")
    for key in body:
        if key not in SETTING_KEYS:
            raise ConfigError(
                f"{_where(path, 'gate')} has unknown key {key!r}.{did_you_mean(key, SETTING_KEYS)} "
                f"Allowed: {', '.join(SETTING_KEYS)}."
            )
    s = GateSettings()
    values = {k: body.get(k, getattr(s, k)) for k in SETTING_KEYS}
    for key, value in values.items():
        if key in FLAG_SETTINGS:
            if not isinstance(value, bool):
                raise ConfigError(f"{_where(path, 'gate', key)} = {value!r}: expected {SETTING_KEYS[key]}.")
            continue
        integer = key in ("bootstrap_resamples", "seed")
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise ConfigError(f"{_where(path, 'gate', key)} = {value!r}: expected {SETTING_KEYS[key]}.")
    if not 0.5 < values["confidence"] < 1:
        raise ConfigError(
            f"{_where(path, 'gate', 'confidence')} = {values['confidence']!r}: expected {SETTING_KEYS['confidence']}"
            + (" (a fraction, not a percentage)." if values["confidence"] > 1 else ".")
        )
    if values["latency_tolerance"] < 0:
        raise ConfigError(
            f"{_where(path, 'gate', 'latency_tolerance')} is negative: expected {SETTING_KEYS['latency_tolerance']}."
        )
    if values["bootstrap_resamples"] < 100:
        raise ConfigError(
            f"{_where(path, 'gate', 'bootstrap_resamples')} = {values['bootstrap_resamples']}: expected "
            f"{SETTING_KEYS['bootstrap_resamples']}; fewer resamples make the confidence bound itself noisy."
        )
    return GateSettings(
        **{
            k: v if k in FLAG_SETTINGS else int(v) if k in ("bootstrap_resamples", "seed") else float(v)
            for k, v in values.items()
        }
    )


def parse_budgets(text: str, path: str = "<budgets>") -> Budgets:
    """Parse and validate a budgets file's text; every error names the file, the table and the key."""
    from ..ledger import ledger_row_names
    from ..targets import TARGETS, get_target
    from ..targets.aliases import did_you_mean_target

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}. Fix the syntax (https://toml.io).") from None
    settings = _settings(path, data.get("gate", {}))
    targets = {}
    for name, body in data.items():
        if name == "gate":
            continue
        if name not in TARGETS:
            raise ConfigError(
                f"{path}: [{name}] is not a target.{did_you_mean_target(name, TARGETS)} Allowed tables: gate, "
                f"{', '.join(sorted(TARGETS))}. Name each budgets table after a target (`bckd-pipeline targets`)."
            )
        if not isinstance(body, Mapping):
            raise ConfigError(f"{path}: {name!r} must be a table ([{name}]) of budgets, got {type(body).__name__}.")
        file_values = _budget_table(path, name, body, allow_stages=True)
        stages_body = body.get("stages", {})
        if not isinstance(stages_body, Mapping):
            raise ConfigError(f"{path}: [{name}] stages must hold tables ([{name}.stages.STAGE]).")
        profile = get_target(name)
        known = ledger_row_names(profile)
        stages = {}
        for stage, sbody in stages_body.items():
            if stage not in known:
                raise ConfigError(
                    f"{_where(path, f'{name}.stages.{stage}')}: target {name!r} has no ledger stage {stage!r}."
                    f"{did_you_mean(stage, known)} Its stages: {', '.join(known)}."
                )
            if not isinstance(sbody, Mapping):
                raise ConfigError(f"{path}: [{name}.stages.{stage}] must be a table of budgets.")
            stages[stage] = _budget_table(path, f"{name}.stages.{stage}", sbody, allow_stages=False)
        defaults = dict(profile.default_budgets)
        deployed = defaults | file_values
        targets[name] = TargetBudgets(name, deployed, stages, tuple(k for k in defaults if k not in file_values))
    if not targets:
        raise ConfigError(
            f"{path} has no target table. Add one per target you gate, e.g. [onnxruntime-cpu] with max_p50_ms = 5."
        )
    return Budgets(path, settings, targets)


def load_budgets(path: Path) -> Budgets:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"--budgets {str(path)!r} does not exist. Pass the path of a TOML budgets file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--budgets {str(path)!r} cannot be read as text ({exc}). Pass a TOML file.") from None
    return parse_budgets(text, str(path))
