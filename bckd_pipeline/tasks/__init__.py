"""Tasks: what the pipeline does differently for each kind of prediction (tasks/base.py says what a task is).

``TASKS`` maps a task's name to its one instance; a run records its task's name in report.json
(``"task"``), and readers call ``get_task(report.get("task", DEFAULT_TASK))``.
"""

from __future__ import annotations

from ..errors import unknown_name
from .base import BudgetKey, Column, Interval, ParityMeter, SplitScore, Task
from .detection import DETECTION
from .segmentation import SEGMENTATION

DEFAULT_TASK = "segmentation"

TASKS: dict[str, Task] = {SEGMENTATION.name: SEGMENTATION, DETECTION.name: DETECTION}


def get_task(name: str) -> Task:
    """The registered task called ``name``; a ConfigError listing the tasks otherwise."""
    task = TASKS.get(name)
    if task is None:
        raise unknown_name("task", name, TASKS, "A new task is registered in bckd_pipeline/tasks/__init__.py (TASKS).")
    return task


__all__ = ["DEFAULT_TASK", "TASKS", "BudgetKey", "Column", "Interval", "ParityMeter", "SplitScore", "Task", "get_task"]
