"""Stage 3, calibration and INT8: one feed contract, ONNX Runtime static QDQ, OpenVINO NNCF PTQ."""

from .data import DatasetFeeds, FeedDict, FeedSource, check_no_overlap, digests_of, pick_indices, preprocess

__all__ = ["DatasetFeeds", "FeedDict", "FeedSource", "check_no_overlap", "digests_of", "pick_indices", "preprocess"]
