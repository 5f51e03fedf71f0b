"""Stage 3, calibration and INT8: ONNX Runtime static QDQ, OpenVINO NNCF PTQ, TensorRT's Q/DQ.

The feeds it calibrates on are ``data/feeds.py``'s, shared with parity and the device bundle.
"""
