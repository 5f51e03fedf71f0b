"""Running a deployed model on the user's own images: ``Segmenter`` (the Python API) and what
``bckd-pipeline predict`` adds around it (sources, written outputs).

- ``artifact.py``: which file a run folder deploys, its backend, the contract it carries, its Runtime;
- ``image.py``: decoding, resize or letterbox to the model's input, and mapping labels back;
- ``segmenter.py``: ``Segmenter.load(...)``, ``seg(image)``, ``seg.predict_batch(...)``;
- ``sources.py``: an image, a folder of images (recursive) or a video, as named items;
- ``outputs.py``: predictions.json, and each image's files as the run's task writes them (segmentation:
  palette PNG label maps, overlays).

Nothing here imports torch unless a checkpoint is run, nor onnx/openvino until a model of theirs is loaded.
"""

from .segmenter import Prediction, Segmenter, SegmenterInfo

__all__ = ["Prediction", "Segmenter", "SegmenterInfo"]
