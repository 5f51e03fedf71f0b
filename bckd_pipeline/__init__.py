"""bckd-pipeline: BCKD distillation of segmentation students, carried to edge targets.

``from bckd_pipeline import Segmenter`` (or ``Detector``; ``load`` returns the one of the artifact's task)
runs a deployed model on your images (bckd_pipeline/predict/); it is imported on first use, so importing the
package (as the command line does) stays light.
"""

__version__ = "0.1.0"

__all__ = ["Detector", "Segmenter", "__version__", "load"]


def __getattr__(name: str):
    if name in ("Detector", "Segmenter", "load"):
        from . import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'bckd_pipeline' has no attribute {name!r}")
