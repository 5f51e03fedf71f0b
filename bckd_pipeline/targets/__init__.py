"""Stage 3 targets: what each deployment target is (profiles) and whether this host can run it."""

from .availability import ALL_LOCAL, Availability, check_availability, expand_targets
from .profiles import TARGETS, Backend, CalibrationSpec, ParityCriteria, Precision, TargetProfile, get_target

__all__ = [
    "ALL_LOCAL",
    "TARGETS",
    "Availability",
    "Backend",
    "CalibrationSpec",
    "ParityCriteria",
    "Precision",
    "TargetProfile",
    "check_availability",
    "expand_targets",
    "get_target",
]
