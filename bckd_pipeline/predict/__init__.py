"""Running a deployed model on the user's own images: ``Segmenter`` and ``Detector`` (the Python API; ``load``
returns the one of the artifact's task) and what ``bckd-pipeline predict`` adds around it (sources, written
outputs).

- ``artifact.py``: which file a run folder deploys, its backend, the contract it carries, its Runtime;
- ``image.py``: decoding, resize or letterbox to the model's input, and mapping labels back;
- ``predictor.py``: ``Predictor`` (opening an artifact, the input's checks, the feed, info, lifecycle);
- ``loading.py``: ``load(...)``, the API of the artifact's task;
- ``segmenter.py``: ``Segmenter.load(...)``, ``seg(image)``, ``seg.predict_batch(...)``;
- ``detector.py``: ``Detector.load(...)``, ``det(image)`` -> ``Boxes`` (``xyxy``, ``conf``, ``cls``);
- ``sources.py``: an image, a folder of images (recursive) or a video, as named items;
- ``outputs.py``: predictions.json, and each image's files as the run's task writes them (segmentation:
  palette PNG label maps, overlays; detection: COCO-style boxes in predictions.json, drawn boxes).

Nothing here imports torch unless a checkpoint is run, nor onnx/openvino until a model of theirs is loaded.
"""

from .detector import Boxes, DetectionResult, Detector
from .loading import load
from .predictor import Predictor, PredictorInfo
from .segmenter import Prediction, Segmenter, SegmenterInfo

__all__ = [
    "Boxes",
    "DetectionResult",
    "Detector",
    "Prediction",
    "Predictor",
    "PredictorInfo",
    "Segmenter",
    "SegmenterInfo",
    "load",
]
