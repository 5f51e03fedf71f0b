"""Evaluation metrics: mIoU, boundary F-score, LHD (Eq. 24-25), fragmentation, MFS (Eq. 22-23), cost; and the
torch evaluation loop of a detector, scored by the detection task's COCO AP (tasks/detection_ap.py).

Label conventions shared by every metric here:

- Labels are integer maps; ``ignore_index`` (255) marks pixels that count for nothing.
- A *boundary pixel* is a valid pixel whose 8-neighbourhood contains a different valid label
  (:func:`boundary_map`). Boundaries are class-agnostic and taken at label resolution.
- When a prediction is compared with a reference that has ignore pixels, the prediction is
  masked with the reference's ignore pixels first, so that nothing is counted where the
  reference says nothing.

Equation numbers refer to the BCKD paper as reconstructed in ``shared/BCKD_SPEC.md`` (section 2 and
the section 4 pseudocode). MFS and LHD are low-confidence reconstructions; their settings are
reported next to the numbers (spec section 7, item 11).

One module over 400 lines on purpose: every metric here rests on the conventions above, and split
across files they would be stated once and applied in several places.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from bckd_pipeline.errors import ConfigError, DataError
from bckd_pipeline.inference import padded_logits
from bckd_pipeline.tasks.detection import DETECTION, HEAD_NAMES as DET_OUTPUT_NAMES
from bckd_pipeline.tasks.detection_decode import HeadOutputs
from bckd_pipeline.tasks.segmentation import confusion_of, miou_of, per_class_iou_of
from bckd_pipeline.tasks.segmentation_metrics import (  # noqa: F401  (BoundaryFScore: imported from here too)
    BoundaryFScore,
    boundary_map,
    distance_to,
    mask_ignored,
)

ArrayLike = np.ndarray | torch.Tensor
FeatureFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _to_numpy(x: ArrayLike) -> np.ndarray:
    """Return ``x`` as a numpy array (torch tensors are detached and copied to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _pair_hw(pred: ArrayLike, ref: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Check that ``pred`` and ``ref`` are matching HxW label maps and return them as numpy."""
    p, r = _to_numpy(pred), _to_numpy(ref)
    if p.ndim != 2 or p.shape != r.shape:
        raise DataError(
            f"{what} takes two HxW label maps of the same shape; got pred {p.shape} and reference "
            f"{r.shape}. Pass one image at a time (index the batch) at label resolution."
        )
    return p, r


def _nan_to_none(x: float) -> float | None:
    """JSON has no NaN: map NaN to ``None`` and everything else to a plain float."""
    return None if math.isnan(x) else float(x)


def _disk(radius: int) -> np.ndarray:
    """Boolean disk footprint ``{q : ||q|| <= radius}`` of shape (2r+1, 2r+1)."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return yy**2 + xx**2 <= radius**2


# ---------------------------------------------------------------------------------------------
# mIoU
# ---------------------------------------------------------------------------------------------
class ConfusionMatrix:
    """Dataset-level confusion matrix ``matrix[target, pred]`` (int64) for mIoU and pixel accuracy.

    IoU_c = TP_c / (TP_c + FP_c + FN_c), with the counts summed over the *whole dataset* before the
    division (the standard mmseg/Cityscapes protocol), not a mean of per-image IoUs.
    mIoU = nanmean_c IoU_c, where a class absent from both target and prediction is NaN and left out.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1; got {num_classes}. Pass the dataset's class count.")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add one prediction/target pair of any matching shape (HxW or NxHxW); ignore pixels are skipped."""
        self.matrix += confusion_of(_to_numpy(pred), _to_numpy(target), self.num_classes, self.ignore_index)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (for summing across workers or ranks); return self."""
        if other.num_classes != self.num_classes:
            raise ConfigError(
                f"Cannot merge confusion matrices of {self.num_classes} and {other.num_classes} classes. "
                "Build both with the same num_classes."
            )
        self.matrix += other.matrix
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def per_class_iou(self) -> np.ndarray:
        """IoU_c = TP / (TP + FP + FN) as fractions in [0, 1]; NaN for a class absent from target and pred."""
        return per_class_iou_of(self.matrix)

    def miou(self) -> float:
        """Mean IoU in percent: 100 * nanmean_c IoU_c (NaN when no class has been seen)."""
        return float(miou_of(self.matrix))

    def pixel_accuracy(self) -> float:
        """Pixel accuracy in percent: 100 * sum_c TP_c / (number of valid pixels)."""
        total = self.matrix.sum()
        return float(100.0 * np.trace(self.matrix) / total) if total else math.nan


# ---------------------------------------------------------------------------------------------
# boundaries: boundary_map and BoundaryFScore live in tasks/segmentation_metrics.py (no torch)
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# LHD, Eq. (24)-(25)
# ---------------------------------------------------------------------------------------------
def lhd(pred_hw: ArrayLike, ref_hw: ArrayLike, k: int = 5, ignore_index: int = 255) -> float:
    """Local Hausdorff distance between the boundaries of a prediction and a reference, Eq. (24)-(25).

        LHD(p) = max{ max_{a ∈ ∂P ∩ N_k(p)} min_{b ∈ ∂G} ||a-b||,
                      max_{b ∈ ∂G ∩ N_k(p)} min_{a ∈ ∂P} ||a-b|| }                          (24)
        N_k(p) = {q ∈ Z² : ||q-p||₂ <= k},   LHD = (1/|∂G|) Σ_{p ∈ ∂G} LHD(p)              (25)

    with ∂P, ∂G the :func:`boundary_map` of ``pred_hw`` and ``ref_hw``. Computed exactly in O(HW): a
    Euclidean distance transform gives min_b ||a-b|| for every a, then a maximum filter with a disk of
    radius k takes the local max (a max over an empty set is 0).

    Settings (spec section 2, options in brackets; this function implements the first of each):
    neighbourhood disk of radius k [window (2k+1)², kNN]; aggregation mean over ∂G [over ∂P ∪ ∂G];
    no local min and no cap on distances; the reference ∂G is whatever the caller passes [ground
    truth, or the teacher's prediction, which gives the teacher LHD 0 as in Tables IV-V].
    Assumptions: prediction pixels under reference ignore pixels are dropped; if ∂P is empty while
    ∂G is not (e.g. a one-class prediction), every distance to ∂P is taken as the image diagonal
    sqrt(H² + W²), the bound of every finite distance in the image, so the result stays finite and
    maximal instead of inf. Returns NaN if ∂G is empty (nothing to average over).
    """
    if k < 0:
        raise ConfigError(f"LHD neighbourhood radius k must be >= 0; got {k}. The paper uses k=5.")
    pred, ref = _pair_hw(pred_hw, ref_hw, "lhd")
    bp = boundary_map(mask_ignored(pred, ref, ignore_index), ignore_index)
    bg = boundary_map(ref, ignore_index)
    if not bg.any():
        return math.nan
    a = np.where(bp, distance_to(bg), 0.0)  # a ∈ ∂P: min_b ||a-b||
    b = np.where(bg, distance_to(bp, empty=math.hypot(*ref.shape)), 0.0)  # b ∈ ∂G: min_a ||a-b||
    disk = _disk(k)
    local = np.maximum(
        ndimage.maximum_filter(a, footprint=disk, mode="constant", cval=0.0),
        ndimage.maximum_filter(b, footprint=disk, mode="constant", cval=0.0),
    )
    return float(local[bg].mean())


class LHDMeter:
    """Per-image :func:`lhd` over a dataset; images without a reference boundary (NaN) are skipped."""

    def __init__(self, k: int = 5, ignore_index: int = 255) -> None:
        self.k = k
        self.ignore_index = ignore_index
        self.values: list[float] = []

    def update(self, pred: ArrayLike, ref: ArrayLike) -> None:
        """Add the LHD of one HxW prediction against its HxW reference."""
        value = lhd(pred, ref, self.k, self.ignore_index)
        if not math.isnan(value):
            self.values.append(value)

    def compute(self) -> dict[str, float]:
        """Return ``{"mean", "std", "count"}`` over the images with a reference boundary (population std)."""
        if not self.values:
            return {"mean": math.nan, "std": math.nan, "count": 0}
        v = np.asarray(self.values)
        return {"mean": float(v.mean()), "std": float(v.std()), "count": len(v)}


# ---------------------------------------------------------------------------------------------
# fragmentation
# ---------------------------------------------------------------------------------------------
def _components_per_class(labels: np.ndarray, ignore_index: int) -> dict[int, int]:
    """Number of 8-connected components of every class present in ``labels`` (ignore pixels excluded)."""
    return {
        int(c): int(ndimage.label(labels == c, structure=_EIGHT_CONNECTED)[1])
        for c in np.unique(labels)
        if c != ignore_index
    }


class FragmentStats:
    """Connectivity of predicted regions: 8-connected components per class, prediction vs reference.

    For image i and class c, let n^P_ic and n^G_ic be the numbers of connected components of class c in
    the prediction (restricted to the reference's valid pixels) and in the reference. Then

        fragments_pred = mean_i Σ_c n^P_ic,      fragments_ref = mean_i Σ_c n^G_ic,
        fragment_ratio = Σ_{(i,c): n^G_ic > 0} n^P_ic  /  Σ_{(i,c)} n^G_ic

    fragment_ratio is 1.0 when every reference class is predicted as many pieces as it has, > 1 when
    the prediction breaks regions up (classes absent from the reference do not enter the ratio).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1; got {num_classes}. Pass the dataset's class count.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.num_images = self.pred_total = self.ref_total = 0
        self.pred_on_ref_classes = 0

    def update(self, pred_hw: ArrayLike, ref_hw: ArrayLike) -> None:
        """Add one HxW prediction/reference pair."""
        pred, ref = _pair_hw(pred_hw, ref_hw, "FragmentStats.update")
        n_pred = _components_per_class(mask_ignored(pred, ref, self.ignore_index), self.ignore_index)
        n_ref = _components_per_class(ref, self.ignore_index)
        self.num_images += 1
        self.pred_total += sum(n_pred.values())
        self.ref_total += sum(n_ref.values())
        self.pred_on_ref_classes += sum(n_pred.get(c, 0) for c in n_ref)

    def compute(self) -> dict[str, float]:
        """Return ``{"fragments_pred", "fragments_ref", "fragment_ratio"}`` (NaN before any update)."""
        n = self.num_images
        return {
            "fragments_pred": self.pred_total / n if n else math.nan,
            "fragments_ref": self.ref_total / n if n else math.nan,
            "fragment_ratio": self.pred_on_ref_classes / self.ref_total if self.ref_total else math.nan,
        }


# ---------------------------------------------------------------------------------------------
# MFS, Eq. (22)-(23)
# ---------------------------------------------------------------------------------------------
def _lipschitz(features: FeatureFn, x: torch.Tensor, deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. (22) per image and layer (N x L): max over ``deltas`` of ||f_l(x+δ) - f_l(x)||₂ / ||δ||₂."""
    f0 = list(features(x))
    ratios = []
    for d in deltas:
        f1 = list(features(x + d))
        if len(f1) != len(f0):
            raise ConfigError(
                f"A feature callable returned {len(f1)} stage tensors after returning {len(f0)}. It must "
                "return the same stages (e.g. the 4 backbone stages) for every input."
            )
        dn = d.flatten(1).norm(dim=1)
        per_layer = [(a - b).flatten(1).norm(dim=1) / dn for a, b in zip(f1, f0, strict=True)]
        ratios.append(torch.stack(per_layer, dim=1))
    return torch.stack(ratios).amax(dim=0)


@torch.no_grad()
def mfs(
    student_features: FeatureFn,
    teacher_features: FeatureFn,
    images: torch.Tensor | Iterable[torch.Tensor],
    *,
    eps: float = 1e-2,
    draws: int = 8,
    eta: float = 1e-6,
    seed: int = 0,
) -> dict[str, Any]:
    """Manifold stability, Eq. (22)-(23): student/teacher ratio of local Lipschitz constants.

        Lip_l(f) = sup_{x ∈ X, 0 < ||δ|| <= ε} ||f_l(x+δ) - f_l(x)||₂ / ||δ||₂                    (22)
        MFS      = (1/|L|) Σ_{l ∈ L} Lip_l(f^s) / max(Lip_l(f^t), η)                               (23)

    Settings (spec section 2; low confidence, report them with the numbers):
    - ball l2 on the whole normalised image: δ = ε·u/||u||₂ with u ~ N(0, I), so ||δ||₂ = ε;
    - agg max: the sup is approximated by the max over ``draws`` draws per image;
    - common random numbers: the same δ for student and teacher; δ drawn on the CPU from ``seed``;
    - direction S/T (the teacher scores exactly 1); the layer set is whatever the callables return
      (the spec uses the 4 backbone stages); no rms normalisation by feature size.

    ``student_features`` / ``teacher_features`` map an image batch (N x 3 x H x W) to a list of stage
    feature tensors; put the models in eval mode first. ``images`` is one batch or an iterable of
    batches. Returns ``{"mean", "std", "per_image", ...settings}``: the per-image MFS (mean over layers)
    and its mean and population std over images.
    """
    if draws < 1 or eps <= 0 or eta <= 0:
        raise ConfigError(
            f"MFS needs draws >= 1, eps > 0 and eta > 0; got draws={draws}, eps={eps}, eta={eta}. "
            "Defaults: draws=8, eps=1e-2, eta=1e-6."
        )
    batches = [images] if isinstance(images, torch.Tensor) else images
    gen = torch.Generator().manual_seed(seed)
    per_image: list[float] = []
    for x in batches:
        if x.ndim != 4:
            raise DataError(f"MFS takes image batches N x C x H x W; got shape {tuple(x.shape)}.")
        deltas = []
        for _ in range(draws):
            u = torch.randn(x.shape, generator=gen, dtype=torch.float32).to(x.device, x.dtype)
            deltas.append(eps * u / u.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
        lip_s = _lipschitz(student_features, x, deltas)
        lip_t = _lipschitz(teacher_features, x, deltas)
        if lip_s.shape != lip_t.shape:
            raise ConfigError(
                f"Student returned {lip_s.shape[1]} feature stages and teacher {lip_t.shape[1]}; MFS "
                "pairs them layer by layer. Return the same number of stages from both callables."
            )
        per_image += (lip_s / lip_t.clamp_min(eta)).mean(dim=1).double().cpu().tolist()
    v = np.asarray(per_image)
    return {
        "mean": float(v.mean()) if v.size else math.nan,
        "std": float(v.std()) if v.size else math.nan,
        "per_image": per_image,
        "eps": eps,
        "draws": draws,
        "eta": eta,
        "ball": "l2",
        "agg": "max",
        "direction": "S/T",
    }


# ---------------------------------------------------------------------------------------------
# cost
# ---------------------------------------------------------------------------------------------
def count_params(model: nn.Module) -> int:
    """Total number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 512, 512)) -> int:
    """FLOPs of one forward pass on a zero input of ``input_shape``, in eval mode and without grad.

    Counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as 2 FLOPs
    (FLOPs = 2 * MACs; MACs = FLOPs // 2) and counts matmul/convolution-like ops only (no bias adds,
    norms or activations). The model's training mode is restored afterwards.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(input_shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_cost(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 512, 512)) -> dict[str, Any]:
    """Return ``{"params", "flops", "macs", "input_shape"}``, macs = flops // 2 (see :func:`count_flops`)."""
    flops = count_flops(model, input_shape)
    return {
        "params": count_params(model),
        "flops": flops,
        "macs": flops // 2,
        "input_shape": list(input_shape),
    }


# ---------------------------------------------------------------------------------------------
# evaluation loop
# ---------------------------------------------------------------------------------------------
def predict_labels(model: nn.Module, images: torch.Tensor, label_hw: tuple[int, int], num_classes: int) -> np.ndarray:
    """Argmax labels (N x H x W, numpy int64) of ``model`` on ``images``, logits resized to ``label_hw``."""
    logits = padded_logits(model, images)
    if logits.ndim != 4 or logits.shape[1] != num_classes:
        raise ConfigError(
            f"The model outputs logits of shape {tuple(logits.shape)}, but num_classes={num_classes} needs "
            f"N x {num_classes} x h x w. Pass the num_classes the model was built with."
        )
    if tuple(logits.shape[-2:]) != label_hw:
        logits = F.interpolate(logits.float(), size=label_hw, mode="bilinear", align_corners=False)
    return logits.argmax(1).cpu().numpy().astype(np.int64)


def _equal_shape_groups(items: list[tuple[Any, ...]]) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Stack consecutive (image, mask) items of equal shapes into batches."""
    group: list[tuple[torch.Tensor, torch.Tensor]] = []
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DataError(
                f"The dataset yielded {type(item).__name__}; evaluate() needs (image 3xHxW, mask HxW) pairs."
            )
        image, mask = torch.as_tensor(item[0]), torch.as_tensor(item[1])
        if image.ndim != 3 or mask.ndim != 2:
            raise DataError(
                f"The dataset yielded image {tuple(image.shape)} and mask {tuple(mask.shape)}; "
                "evaluate() needs image 3xHxW (float) and mask HxW (int64)."
            )
        if group and (image.shape != group[0][0].shape or mask.shape != group[0][1].shape):
            yield torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group])
            group = []
        group.append((image, mask))
    if group:
        yield torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group])


def _model_batches(
    models: Sequence[nn.Module],
    dataset: Dataset,
    *,
    batch_size: int,
    device: str | torch.device,
    num_workers: int,
) -> Iterable[list[Any]]:
    """The split's items in lists of ``batch_size``, with ``models`` on ``device`` in eval mode meanwhile; their
    training modes are restored when the loop ends or is abandoned. What both evaluation loops share."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    modes = [m.training for m in models]
    try:
        for m in models:
            m.to(device).eval()
        yield from loader
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


@torch.no_grad()
def predicted_batches(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    reference_model: nn.Module | None = None,
    num_workers: int = 0,
) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """The one evaluation loop of a torch model over a split: ``(predictions, ground truths, reference
    predictions or None)`` per batch of equally shaped (image 3xHxW, mask HxW) pairs, as N x H x W int64 label
    maps at the masks' resolution (:func:`predict_labels`). The models run in eval mode without grad on
    ``device``; their training modes are restored when the loop ends or is abandoned."""
    models = [m for m in (model, reference_model) if m is not None]
    for items in _model_batches(models, dataset, batch_size=batch_size, device=device, num_workers=num_workers):
        for images, masks in _equal_shape_groups(items):
            images = images.to(device, torch.float32)
            label_hw = tuple(masks.shape[-2:])
            preds = predict_labels(model, images, label_hw, num_classes)
            refs = None
            if reference_model is not None:
                refs = predict_labels(reference_model, images, label_hw, num_classes)
            yield preds, masks.numpy().astype(np.int64), refs


def detect_boxes(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """A torch detector's detections of ``images`` (N x 3 x H x W): its raw ``(scores, boxes, centerness)`` as
    numpy ``HeadOutputs`` decoded by the task (``DETECTION.prediction_of``): ``[N, 100, 6]`` rows x1, y1, x2, y2,
    score, label in input pixels, padded with label -1."""
    outputs = model(images)
    if not isinstance(outputs, (tuple, list)) or len(outputs) != len(DET_OUTPUT_NAMES):
        raise ConfigError(
            f"A detector returns ({', '.join(DET_OUTPUT_NAMES)}); this model returned {type(outputs).__name__}. "
            "Use a detector preset (`bckd-pipeline models`)."
        )
    named = {n: o.detach().float().cpu().numpy() for n, o in zip(DET_OUTPUT_NAMES, outputs, strict=True)}
    strides = getattr(model, "strides", DETECTION.strides)
    return DETECTION.prediction_of(HeadOutputs.of(named, images.shape[-2:], strides))


@torch.no_grad()
def detected_batches(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> Iterable[tuple[np.ndarray, list[dict]]]:
    """The detection twin of :func:`predicted_batches`: ``(detections [N, 100, 6], targets)`` per batch of
    (image 3xHxW, target dict) items of one size (:func:`detect_boxes`), over the same shared loop."""
    from bckd_pipeline.data.instances import collate_detection

    for items in _model_batches([model], dataset, batch_size=batch_size, device=device, num_workers=num_workers):
        images, targets = collate_detection(items)
        yield detect_boxes(model, images.to(device, torch.float32)), targets


def detection_evidence(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> tuple[np.ndarray, int]:
    """Per-image AP evidence (``DETECTION.image_evidence``) summed over the split (int64), and the image count."""
    score = DETECTION.split_score(num_classes, ignore_index=-1)
    batches = detected_batches(model, dataset, batch_size=batch_size, device=device, num_workers=num_workers)
    for rows, targets in batches:
        score.update(rows, targets)
    return (score.evidence if score.evidence is not None else np.zeros(0, np.int64)), score.images


def evaluate_detection(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> dict[str, Any]:
    """COCO AP of a detector on a dataset of (image 3xHxW float, target dict) pairs: the task's summary of the
    summed evidence (``DETECTION.summary``: ``map`` = AP@[.5:.95], ``ap50``, ``ap75``, ``ap_small``, ``ap_medium``,
    ``ap_large`` in points, ``per_class_ap``; None where no ground truth makes one) and ``num_images``."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {batch_size}.")
    if len(dataset) < 1:
        raise DataError("Nothing to evaluate: the detection split has no images. Check the dataset path and split.")
    evidence, n = detection_evidence(
        model, dataset, num_classes=num_classes, batch_size=batch_size, device=device, num_workers=num_workers
    )
    return {**DETECTION.summary(evidence), "num_images": n}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    ignore_index: int = 255,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    reference_model: nn.Module | None = None,
    max_images: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    num_workers: int = 0,
    boundary_tolerance_px: int = 2,
    lhd_k: int = 5,
) -> dict[str, Any]:
    """Evaluate a segmentation model on a dataset of (image 3xHxW float, mask HxW int64) pairs.

    The model (and ``reference_model``) is moved to ``device`` and run in eval mode without grad;
    logits of another size than the mask are resized bilinearly to it, then argmax. Images of
    different sizes are allowed (batches are split where the size changes). Training modes are
    restored afterwards. Returns a JSON-serialisable dict (NaN is written as ``None``):

    ``miou``, ``pixel_accuracy`` (percent, dataset-level :class:`ConfusionMatrix`), ``per_class_iou``
    (percent), ``boundary_f`` (:class:`BoundaryFScore`), ``lhd`` (:func:`lhd` against the ground truth),
    ``fragments`` (:class:`FragmentStats` against the ground truth), ``num_images``; and with
    ``reference_model`` (e.g. the teacher) also ``lhd_vs_reference``: LHD with the reference model's
    prediction as ∂G, masked with the ground truth's ignore pixels (the paper's tables give the
    teacher LHD 0, which implies this reading; both are reported). ``progress(done, total)`` is
    called after every batch.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {batch_size}.")
    total = len(dataset) if max_images is None else min(len(dataset), max_images)
    if total < 1:
        raise DataError(
            f"Nothing to evaluate: the dataset has {len(dataset)} images and max_images={max_images}. "
            "Check the dataset path and split, and pass max_images >= 1 or None."
        )
    subset = dataset if total == len(dataset) else torch.utils.data.Subset(dataset, range(total))

    confusion = ConfusionMatrix(num_classes, ignore_index)
    boundary = BoundaryFScore(boundary_tolerance_px, ignore_index)
    lhd_gt = LHDMeter(lhd_k, ignore_index)
    lhd_ref = LHDMeter(lhd_k, ignore_index)
    fragments = FragmentStats(num_classes, ignore_index)
    done = 0
    batches = predicted_batches(
        model,
        subset,
        num_classes=num_classes,
        batch_size=batch_size,
        device=device,
        reference_model=reference_model,
        num_workers=num_workers,
    )
    for preds, gts, refs in batches:
        confusion.update(preds, gts)
        if refs is not None:
            refs[gts == ignore_index] = ignore_index
        for i, (pred, gt) in enumerate(zip(preds, gts, strict=True)):
            boundary.update(pred, gt)
            lhd_gt.update(pred, gt)
            fragments.update(pred, gt)
            if refs is not None:
                lhd_ref.update(pred, refs[i])
        done += len(preds)
        if progress is not None:
            progress(done, total)

    def lhd_summary(meter: LHDMeter, reference: str) -> dict[str, Any]:
        s = meter.compute()
        return {
            "mean": _nan_to_none(s["mean"]),
            "std": _nan_to_none(s["std"]),
            "count": s["count"],
            "k": lhd_k,
            "reference": reference,
        }

    result: dict[str, Any] = {
        "miou": _nan_to_none(confusion.miou()),
        "pixel_accuracy": _nan_to_none(confusion.pixel_accuracy()),
        "per_class_iou": [_nan_to_none(100.0 * v) for v in confusion.per_class_iou()],
        "boundary_f": {k: _nan_to_none(v) for k, v in boundary.compute().items()}
        | {"tolerance_px": boundary_tolerance_px},
        "lhd": lhd_summary(lhd_gt, "gt"),
        "fragments": {k: _nan_to_none(v) for k, v in fragments.compute().items()},
        "num_images": done,
    }
    if reference_model is not None:
        result["lhd_vs_reference"] = lhd_summary(lhd_ref, "reference_model")
    return result
