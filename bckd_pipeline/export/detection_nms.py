"""A raw detection graph with the decoding and NMS appended as ONNX ops (the ``nms`` export head).

:func:`with_nms` takes the exported raw graph (input ``image``; outputs ``scores`` ``[N, A, C]`` logits,
``boxes`` ``[N, A, 4]`` (l, t, r, b) distances in input pixels, ``centerness`` ``[N, A, 1]`` logits over the
anchor points of ``tasks/detection_decode.py``) and appends what ``detection_decode.decode`` does on the host
(torchvision FCOS's ``postprocess_detections``):

1. score ``sqrt(sigmoid(cls) * sigmoid(ctr))`` per (anchor, class); box ``(x - l, y - t, x + r, y + b)``,
   clipped to ``[0, W] x [0, H]``;
2. per level, the ``topk_candidates`` highest (anchor, class) scores (``TopK`` over the level's flattened
   ``A_l * C`` scores, ties to the lower index as the host's stable sort); a candidate keeps its score in its own
   class and 0 in every other (a one-hot ``[N, B, C]`` score tensor over the ``B = sum_l min(topk, A_l * C)``
   candidates), so a class-wise NMS over the candidates is the host's NMS over (box, class) pairs;
3. class-wise NMS at ``nms_thresh`` dropping scores at or under ``score_thresh``, then the
   ``detections_per_img`` highest scores of the image.

**Output contract** (both variants, every runtime):

- ``num_dets`` ``[N, 1]`` int32: how many rows of the image are detections;
- ``det_boxes`` ``[N, K, 4]`` float32: x1, y1, x2, y2 in input pixels;
- ``det_scores`` ``[N, K]`` float32, highest first;
- ``det_labels`` ``[N, K]`` int32 class ids;

with ``K = detections_per_img``. Rows at and after ``num_dets[i]`` are padding, to be ignored (this graph writes
zero boxes and scores and label -1 there; the plugin's padding is its own). Four separate tensors, not one
``[N, K, 6]``: they are the outputs of NVIDIA's ``EfficientNMS_TRT`` plugin (``num_detections``,
``detection_boxes``, ``detection_scores``, ``detection_classes``, int32 counts and classes) that the ONNX ops
can also compute, so that one reader (``tasks/detection.py``) serves both variants without a ``Concat`` of
int32 labels into float rows after the plugin.

**Variants.** ``"onnx"``: the standard ``NonMaxSuppression`` op (ONNX Runtime, OpenVINO), its selected
``(batch, class, box)`` triples scattered into a ``[N, C, B]`` map of kept scores whose per-image ``TopK``
gives the rows. ``"tensorrt"``, by ``trt_version``:

- TensorRT >= 8.5: the same graph: the ONNX parser imports ``NonMaxSuppression`` natively as ``INMSLayer``
  since 8.5 (onnx-tensorrt docs/Changelog.md, "TensorRT 8.5 GA Release": "Added native support for the
  NonMaxSuppression operator"; docs/operators.md lists it for FP32/FP16). ``INMSLayer`` considers at most
  its TopK box limit per image: 5000, 2000 on SM 5.3 and 6.2 devices (TensorRT operator docs, NMS:
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/operators/NMS.html);
- older TensorRT (8.0 to 8.4): the ``EfficientNMS_TRT`` plugin (added in TensorRT 8.0.1, NVIDIA/TensorRT
  CHANGELOG.md; deprecated in 10.12 for a newer plugin version), one node on the candidates ``[N, B, 4]`` and the
  one-hot scores ``[N, B, C]`` (plugin/efficientNMSPlugin/README.md) with its attributes ``score_threshold``,
  ``iou_threshold``, ``max_output_boxes``, ``background_class`` (-1), ``score_activation`` (0: the scores are
  already probabilities), ``box_coding`` (0: corners); ``class_agnostic`` is left out (it came in 2023, its
  default is class-wise NMS). The node is in the default domain as NVIDIA's samples write it; the ONNX checker
  and the CPU runtimes do not know it, TensorRT's parser finds the plugin by the op type.

**Where the graph may differ from the host decoding** (the tests bound each):

- scores: ONNX ``Sigmoid``/``Sqrt`` against numpy's, a few ulps (tests: 1e-5); an order of candidates within
  that distance of a tie, or of a score within it of ``score_thresh`` or a box pair within it of ``nms_thresh``,
  may decide differently (measure zero on real-valued outputs, not seen in the tests);
- boxes: the same float32 additions and clips, equal;
- ``max_output_boxes_per_class = detections_per_img``: exact, since every kept box among an image's
  ``detections_per_img`` best is among the first ``detections_per_img`` its class's greedy NMS keeps;
- thresholds at equality: the host keeps ``score > score_thresh`` and suppresses at ``IoU > nms_thresh``; so do
  ``INMSLayer`` (its docs: a score "above a given threshold", an IoU "less than or equal to" the threshold is
  kept) and ONNX Runtime (``nms_helpers``: ``intersection_over_union > iou_threshold``, and a box of zero area
  suppresses nothing, as the host's IoU of 0 or NaN); ``EfficientNMS_TRT`` keeps ``score >= score_threshold``
  and suppresses at ``IoU >= iou_threshold`` (efficientNMSInference.cu): only exact equalities differ;
- TensorRT caps: the candidates ``B`` must fit ``INMSLayer``'s TopK limit (2000 on SM 5.3/6.2) and
  ``EfficientNMS_TRT``'s 4096 highest scores; :func:`with_nms` says how many candidates a graph holds
  (:func:`candidate_count`), and ``TopK`` in TensorRT takes ``K < 3840`` (onnx-tensorrt docs/operators.md).
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from ..tasks.detection_decode import OUTPUT_NAMES, DecodeSettings, anchor_points
from ..tasks.detection import NMS_OUTPUT_NAMES

VARIANTS = ("onnx", "tensorrt")
# The first TensorRT whose ONNX parser maps NonMaxSuppression to INMSLayer (onnx-tensorrt Changelog, 8.5 GA).
TRT_NATIVE_NMS = (8, 5)
# The first TensorRT with the EfficientNMS_TRT plugin (NVIDIA/TensorRT CHANGELOG, 8.0.1).
TRT_EFFICIENT_NMS = (8, 0)
EFFICIENT_NMS_MAX_BOXES = 4096  # the plugin's NMS kernel takes the 4096 highest scores (its README)
INMS_TOPK_LIMIT = 2000  # INMSLayer's TopK box limit on SM 5.3 / 6.2 devices (5000 on others)
TRT_TOPK_MAX = 3840  # onnx-tensorrt: TopK's K must be less than this


def candidate_count(num_classes: int, input_hw: Sequence[int], strides: Sequence[int], topk: int) -> int:
    """``B``: the candidates the graph passes to NMS, ``sum_l min(topk, A_l * C)``."""
    return sum(min(topk, len(p) * num_classes) for p in anchor_points(int(input_hw[0]), int(input_hw[1]), strides))


def _version(v) -> tuple:
    if isinstance(v, str):
        parts = v.split(".")
        try:
            return tuple(int(p) for p in parts[:2])
        except ValueError:
            raise ConfigError(f"TensorRT version {v!r} is not a version; give one like '10.3' or '8.4'.") from None
    return tuple(int(p) for p in v)[:2]


def _check(settings: DecodeSettings, variant: str, trt_version) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"NMS variant {variant!r} is not one of {', '.join(VARIANTS)}; pick one.")
    if variant == "tensorrt" and trt_version is None:
        raise ConfigError("The TensorRT NMS graph depends on the TensorRT version; give trt_version (e.g. '10.3').")
    if variant == "tensorrt" and _version(trt_version) < TRT_EFFICIENT_NMS:
        raise ConfigError(
            f"TensorRT {trt_version} has neither INMSLayer (8.5 and newer) nor the EfficientNMS_TRT plugin (8.0 and "
            "newer); deploy the raw head and decode on the host, or use TensorRT 8.0 or newer."
        )
    if not 0.0 <= settings.score_thresh < 1.0 or not 0.0 <= settings.nms_thresh <= 1.0:
        raise ConfigError(
            f"score_thresh {settings.score_thresh} and nms_thresh {settings.nms_thresh} must lie in [0, 1) and [0, 1]."
        )
    if settings.topk_candidates < 1 or settings.detections_per_img < 1:
        raise ConfigError("topk_candidates and detections_per_img must be at least 1.")


def with_nms(
    model,
    settings: DecodeSettings,
    strides: Sequence[int],
    input_hw: Sequence[int],
    variant: str = "onnx",
    *,
    trt_version=None,
):
    """``model`` (an ``onnx.ModelProto`` of the raw head) with the decoding and NMS appended: a new ModelProto whose
    outputs are :data:`NMS_OUTPUT_NAMES` (the module docstring's contract). ``input_hw`` is the network input's
    (H, W) (the graph is static in H, W); ``variant`` ``"onnx"`` or ``"tensorrt"`` (then ``trt_version``, e.g.
    ``"10.3"``, picks ``NonMaxSuppression`` from 8.5 on, else the ``EfficientNMS_TRT`` plugin)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    _check(settings, variant, trt_version)
    graph_outputs = [o.name for o in model.graph.output]
    if list(graph_outputs[:3]) != list(OUTPUT_NAMES):
        raise ConfigError(
            f"The raw detection graph's outputs are {', '.join(graph_outputs)}; the NMS head needs "
            f"{', '.join(OUTPUT_NAMES)} first, in that order (the raw head's contract)."
        )
    classes_dim = model.graph.output[0].type.tensor_type.shape.dim[2]
    if not classes_dim.HasField("dim_value"):
        raise ConfigError("The raw graph's scores output has no static class count; export it with static shapes.")
    num_classes = int(classes_dim.dim_value)
    height, width = (int(v) for v in input_hw)
    if height <= 0 or width <= 0:
        raise ConfigError(f"input_hw {tuple(input_hw)} is not an input size; give the network input's (H, W).")
    points = anchor_points(height, width, strides)
    sizes = [len(p) for p in points]
    anchors_dim = model.graph.output[0].type.tensor_type.shape.dim[1]
    if anchors_dim.HasField("dim_value") and anchors_dim.dim_value != sum(sizes):
        raise ConfigError(
            f"The raw graph has {anchors_dim.dim_value} anchor points; an input of {height}x{width} at strides "
            f"{tuple(strides)} has {sum(sizes)}. Give the input size and strides the model was exported with."
        )
    k_out = settings.detections_per_img
    use_plugin = variant == "tensorrt" and _version(trt_version) < TRT_NATIVE_NMS
    if variant == "tensorrt" and k_out >= TRT_TOPK_MAX:
        raise ConfigError(f"TensorRT's TopK takes K < {TRT_TOPK_MAX}; detections_per_img is {k_out}.")

    nodes, inits = [], []

    def const(name, value, dtype=None):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), f"nms/const/{name}"))
        return f"nms/const/{name}"

    def node(op, inputs, name, n_out=1, **attrs):
        outs = [f"nms/{name}"] if n_out == 1 else [f"nms/{name}_{i}" for i in range(n_out)]
        nodes.append(helper.make_node(op, list(inputs), outs, name=f"nms/{name}", **attrs))
        return outs[0] if n_out == 1 else outs

    scores_in, boxes_in, ctr_in = OUTPUT_NAMES
    # 1. scores and boxes of every (anchor, class)
    cls_prob, ctr_prob = node("Sigmoid", [scores_in], "cls_sig"), node("Sigmoid", [ctr_in], "ctr_sig")
    prob = node("Sqrt", [node("Mul", [cls_prob, ctr_prob], "prob_sq")], "prob")  # [N, A, C]
    pts = np.concatenate(points)
    signed = node("Mul", [boxes_in, const("sign", [-1, -1, 1, 1], np.float32)], "signed")
    corners = node("Add", [const("points", np.concatenate([pts, pts], axis=1), np.float32), signed], "corners")
    zero = const("zero", 0.0, np.float32)
    limit = const("limit", [width, height, width, height], np.float32)
    clipped = node("Min", [node("Max", [corners, zero], "clip_lo"), limit], "decoded")  # [N, A, 4]

    # 2. the top candidates of each level
    cand_scores, cand_anchors, cand_labels = [], [], []
    start = 0
    for level, n in enumerate(sizes):
        bounds = [const(f"s{level}", [start], np.int64), const(f"e{level}", [start + n], np.int64)]
        lvl = node("Slice", [prob, *bounds, const(f"ax{level}", [1], np.int64)], f"level{level}")
        flat = node("Reshape", [lvl, const(f"flat{level}", [0, n * num_classes], np.int64)], f"flat{level}")
        k = min(settings.topk_candidates, n * num_classes)
        val, idx = node("TopK", [flat, const(f"k{level}", [k], np.int64)], f"topk{level}", 2, axis=1, sorted=1)
        c = const(f"c{level}", num_classes, np.int64)
        cand_scores.append(val)
        in_level = node("Div", [idx, c], f"anchor_in{level}")
        cand_anchors.append(node("Add", [in_level, const(f"off{level}", start, np.int64)], f"anchor{level}"))
        cand_labels.append(node("Mod", [idx, c], f"label{level}"))
        start += n
    cand_score = node("Concat", cand_scores, "cand_score", axis=1)  # [N, B]
    cand_anchor = node("Concat", cand_anchors, "cand_anchor", axis=1)
    cand_label = node("Concat", cand_labels, "cand_label", axis=1)
    last = const("last", [2], np.int64)
    cand_anchor3 = node("Unsqueeze", [cand_anchor, last], "cand_anchor3")
    cand_boxes = node("GatherND", [clipped, cand_anchor3], "cand_boxes", batch_dims=1)  # [N, B, 4]
    classes = const("classes", np.arange(num_classes), np.int64)
    is_class = node("Equal", [node("Unsqueeze", [cand_label, last], "cand_label3"), classes], "is_class")
    onehot = node("Cast", [is_class], "onehot", to=TensorProto.FLOAT)
    scores_nbc = node("Mul", [onehot, node("Unsqueeze", [cand_score, last], "cand_score3")], "scores_nbc")

    out_names = list(NMS_OUTPUT_NAMES)
    if use_plugin:
        # 3. the plugin: NMS and the image's best rows in one node
        nodes.append(
            helper.make_node(
                "EfficientNMS_TRT",
                [cand_boxes, scores_nbc],
                out_names,
                name="nms/efficient_nms",
                plugin_version="1",
                plugin_namespace="",
                score_threshold=float(settings.score_thresh),
                iou_threshold=float(settings.nms_thresh),
                max_output_boxes=int(k_out),
                background_class=-1,
                score_activation=0,
                box_coding=0,
            )
        )
    else:
        # 3. NMS, its selection as a map of kept scores, the image's best rows
        scores_ncb = node("Transpose", [scores_nbc], "scores_ncb", perm=[0, 2, 1])
        limits = [
            const("max_per_class", [k_out], np.int64),
            const("iou", [settings.nms_thresh], np.float32),
            const("score_thresh", [settings.score_thresh], np.float32),
        ]
        selected = node("NonMaxSuppression", [cand_boxes, scores_ncb, *limits], "selected", center_point_box=0)
        zeros = numpy_helper.from_array(np.zeros(1, np.float32))
        empty = node("ConstantOfShape", [node("Shape", [scores_ncb], "ncb_shape")], "zeros", value=zeros)
        selected_scores = node("GatherND", [scores_ncb, selected], "selected_scores")
        kept = node("ScatterND", [empty, selected, selected_scores], "kept")  # [N, C, B]: the kept scores
        b = candidate_count(num_classes, (height, width), strides, settings.topk_candidates)
        flat_kept = node("Reshape", [kept, const("flat_kept", [0, num_classes * b], np.int64)], "flat_kept")
        k = min(k_out, num_classes * b)
        top_val, top_idx = node("TopK", [flat_kept, const("k_out", [k], np.int64)], "top", 2, axis=1, sorted=1)
        if k < k_out:  # fewer (box, class) pairs than rows: pad with zero scores (padding rows)
            pad = const("pad", [0, 0, 0, k_out - k], np.int64)
            top_val = node("Pad", [top_val, pad], "top_val_padded")
            top_idx = node("Pad", [top_idx, pad], "top_idx_padded")
        valid = node("Greater", [top_val, zero], "valid")
        bcount = const("b", b, np.int64)
        label = node("Cast", [node("Div", [top_idx, bcount], "top_label")], "top_label32", to=TensorProto.INT32)
        box_idx = node("Unsqueeze", [node("Mod", [top_idx, bcount], "top_box"), last], "top_box3")
        rows = node("GatherND", [cand_boxes, box_idx], "top_boxes", batch_dims=1)
        valid_f = node("Cast", [valid], "valid_f", to=TensorProto.FLOAT)
        valid3 = node("Unsqueeze", [valid_f, last], "valid3")
        valid_i = node("Cast", [valid], "valid_i", to=TensorProto.INT32)
        pad_label = const("pad_label", -1, np.int32)
        num_dets, det_boxes, det_scores, det_labels = out_names
        # Named, as every node here: quantizers keep nodes in float by name (calibrate/exclude.py)
        nodes += [
            helper.make_node(
                "ReduceSum", [valid_i, const("axis1", [1], np.int64)], [num_dets], name="nms/num_dets", keepdims=1
            ),
            helper.make_node("Mul", [rows, valid3], [det_boxes], name="nms/det_boxes"),
            helper.make_node("Mul", [top_val, valid_f], [det_scores], name="nms/det_scores"),
            helper.make_node("Where", [valid, label, pad_label], [det_labels], name="nms/det_labels"),
        ]

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    g.node.extend(nodes)
    g.initializer.extend(inits)
    batch = model.graph.output[0].type.tensor_type.shape.dim[0]
    n_dim = batch.dim_value if batch.HasField("dim_value") else (batch.dim_param or "N")
    del g.output[:]
    g.output.extend(
        [
            helper.make_tensor_value_info(out_names[0], TensorProto.INT32, [n_dim, 1]),
            helper.make_tensor_value_info(out_names[1], TensorProto.FLOAT, [n_dim, k_out, 4]),
            helper.make_tensor_value_info(out_names[2], TensorProto.FLOAT, [n_dim, k_out]),
            helper.make_tensor_value_info(out_names[3], TensorProto.INT32, [n_dim, k_out]),
        ]
    )
    props = {p.key: p.value for p in out.metadata_props}
    props["bckd.output"] = json.dumps({"name": out_names[0], "names": out_names, "kind": "nms"})
    props["bckd.nms"] = json.dumps(
        {
            "variant": "efficient_nms_trt" if use_plugin else "NonMaxSuppression",
            "score_thresh": settings.score_thresh,
            "nms_thresh": settings.nms_thresh,
            "topk_candidates": settings.topk_candidates,
            "detections_per_img": settings.detections_per_img,
            "candidates": candidate_count(num_classes, (height, width), strides, settings.topk_candidates),
            "strides": list(strides),
        }
    )
    del out.metadata_props[:]
    for key, value in props.items():
        out.metadata_props.add(key=key, value=value)
    return out


def nms_graph(
    raw_path, out_path, settings: DecodeSettings, strides, input_hw, variant: str = "onnx", *, trt_version=None
):
    """The export stage's entry point: the simplified raw graph at ``raw_path`` with NMS appended, checked (ONNX
    checker, unless the plugin node is in it) and written atomically to ``out_path``; returns ``out_path``."""
    from pathlib import Path

    import onnx

    from ..fileio import atomic_write

    model = with_nms(onnx.load(str(raw_path)), settings, strides, input_hw, variant, trt_version=trt_version)
    if not any(n.op_type == "EfficientNMS_TRT" for n in model.graph.node):
        onnx.checker.check_model(model, full_check=True)
    out_path = Path(out_path)
    atomic_write(out_path, lambda tmp: onnx.save(model, str(tmp)))
    return out_path
