"""bckd-pipeline: BCKD distillation of segmentation students, carried to edge targets.

``from bckd_pipeline import Segmenter`` runs a deployed model on your images (bckd_pipeline/predict/);
it is imported on first use, so importing the package (as the command line does) stays light.
"""

__version__ = "0.1.0"

__all__ = ["Segmenter", "__version__"]


def __getattr__(name: str):
    if name == "Segmenter":
        from .predict.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'bckd_pipeline' has no attribute {name!r}")
