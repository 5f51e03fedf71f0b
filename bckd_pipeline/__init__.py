"""bckd-pipeline: BCKD distillation of segmentation students, carried to edge targets."""

__version__ = "0.1.0"
