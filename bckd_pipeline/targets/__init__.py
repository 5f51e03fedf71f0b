"""Stage 3 targets: what each deployment target is (profiles) and whether this host can run it."""

from .availability import Availability, check_availability
from .profiles import TARGETS, Backend, CalibrationSpec, ParityCriteria, Precision, TargetProfile, get_target

__all__ = [
    "TARGETS",
    "Availability",
    "Backend",
    "CalibrationSpec",
    "ParityCriteria",
    "Precision",
    "TargetProfile",
    "check_availability",
    "get_target",
]
