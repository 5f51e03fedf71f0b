"""The model presets of each task: segmentation networks (``models.PRESETS``) and detectors
(``detection.DETECTOR_PRESETS``). A preset of the other task is refused with the flag that named it, the task
given, and the presets that task takes; a detection run's ``--kd`` choices are checked here too.
"""

from __future__ import annotations

from torch import nn

from ..configs import KD_CHOICES_OF_TASK, TASK_NAMES
from ..errors import ConfigError, unknown_name
from .detection import DETECTOR_PRESETS, build_detector
from .models import PRESETS, build_model


def presets_of(task: str) -> dict:
    """The preset registry of ``task``: name -> preset (each with ``role`` and ``description``)."""
    if task not in TASK_NAMES:
        raise unknown_name("--task", task, TASK_NAMES, "Pass --task segmentation or --task detection.")
    return DETECTOR_PRESETS if task == "detection" else PRESETS


def check_preset(name: str, task: str, flag: str) -> None:
    """``name`` (given by ``flag``) is a preset of ``task``; a ConfigError says which task it belongs to otherwise."""
    presets = presets_of(task)
    if name in presets:
        return
    other = "segmentation" if task == "detection" else "detection"
    if name in presets_of(other):
        choices = ", ".join(n for n, p in presets.items() if p.role != "test")
        raise ConfigError(
            f"{flag} {name} is a {other} preset, and this is a --task {task} run. {task.capitalize()} presets: "
            f"{choices} (`bckd-pipeline models`). Pick one of them, or pass --task {other}."
        )
    # The words of build_model's and build_detector's own refusals.
    what = "detector" if task == "detection" else "model"
    raise unknown_name(what, name, presets, "Run `bckd-pipeline models` to list them.")


def build_preset(name: str, task: str, num_classes: int, *, pretrained: str, class_names=None) -> nn.Module:
    """A preset of ``task`` built by name (``--pretrained imagenet``: its encoder or backbone's ImageNet weights)."""
    if task == "detection":
        return build_detector(name, num_classes, pretrained=pretrained, class_names=class_names)
    return build_model(name, num_classes, pretrained=pretrained)


def check_kd(kd: str, task: str) -> None:
    """``--kd`` names a distillation method of ``task``; a ConfigError lists that task's methods otherwise."""
    allowed = KD_CHOICES_OF_TASK[task]
    if kd in allowed:
        return
    if not any(kd in methods for methods in KD_CHOICES_OF_TASK.values()):
        raise unknown_name(f"--task {task} --kd method", kd, allowed, "Pick one of them, e.g. --kd bckd.")
    other = next(t for t, methods in KD_CHOICES_OF_TASK.items() if t != task)
    raise ConfigError(
        f"--kd {kd} is not a --task {task} method (it is one of --task {other}'s). Allowed for {task}: "
        f"{', '.join(allowed)}. Pick one of them."
    )
