"""Distillation losses: logit KD, CWD, and the two BCKD terms (boundary, context).

Every loss takes the student tensor first and the teacher tensor second. Teacher tensors are
detached inside the loss, so no gradient can reach the teacher whatever the caller does.
Equation numbers refer to BCKD (Zhang et al., arXiv:2401.13174v5); the reconstruction of each
equation is in the project's BCKD spec.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Pixel-wise logit KD (Hinton et al., 2015), the paper's Eq. (1) in its KL form.

    ``L_KD = T^2 / (N H W) * sum_{n,i} sum_c  p^t_{n,c,i} * (log p^t_{n,c,i} - log p^s_{n,c,i})``
    with ``p = softmax(f / T)`` over classes. KL differs from Eq. (1)'s cross-entropy by the
    teacher's entropy, a constant, so the gradients are identical and the loss is 0 at a match.
    """
    t = temperature
    log_ps = F.log_softmax(student_logits / t, dim=1)
    log_pt = F.log_softmax(teacher_logits.detach() / t, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(1)
    return kl.mean() * t * t


def cwd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, *, detach_teacher: bool = True
) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021), as in MMRazor's ``ChannelWiseDivergence``.

    Each channel is a distribution over spatial positions, ``phi(y)_{c,i} = softmax_i(y_{c,i} / T)``:
    ``L_cwd = T^2 / (N C) * sum_{n,c} sum_i phi(y^t)_{c,i} * (log phi(y^t)_{c,i} - log phi(y^s)_{c,i})``.
    """
    t = temperature
    n, c = student_logits.shape[:2]
    s = student_logits.reshape(n, c, -1) / t
    tt = (teacher_logits.detach() if detach_teacher else teacher_logits).reshape(n, c, -1) / t
    log_pt = F.log_softmax(tt, dim=-1)
    return (log_pt.exp() * (log_pt - F.log_softmax(s, dim=-1))).sum(-1).mean() * t * t


def spatial_kl(
    student_maps: torch.Tensor, teacher_maps: torch.Tensor, temperature: float = 1.0, *, detach_teacher: bool = True
) -> torch.Tensor:
    """BCKD boundary loss, Eq. (3): KL between spatial softmaxes of boundary maps.

    ``phi(B)_{p,i} = exp(B_{p,i} / T) / sum_i' exp(B_{p,i'} / T)`` over positions i, one
    distribution per map p (a path direction, or the single pixel map), and
    ``L_b = T^2 / (N P) * sum_{n,p} sum_i phi(B^t)_{p,i} * log(phi(B^t)_{p,i} / phi(B^s)_{p,i})``.
    The normalisation follows CWD/MMRazor, the construction the paper's phi names.
    """
    return cwd_loss(student_maps, teacher_maps, temperature, detach_teacher=detach_teacher)


def search_paths(radius: int) -> list[list[tuple[int, int]]]:
    """IRNet's half-disc of pixel pairs within ``radius`` and the grid points on each segment.

    Directions ``(dy, dx)`` with ``dy >= 0``, ``dx^2 + dy^2 < radius^2`` (and ``dx > 0`` when
    ``dy == 0``): 12 for r=3, 34 for r=5. The path of a direction holds every grid point within
    perpendicular distance < 1 of the segment from (0, 0) to (dy, dx), both ends included
    (IRNet ``misc/indexing.py::get_search_paths_dst``). This is Eq. (2)'s set Pi_ij.
    """
    if radius < 2:
        raise ValueError(f"radius must be >= 2, got {radius}")
    dirs = [(0, x) for x in range(1, radius)]
    dirs += [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius) if x * x + y * y < radius * radius]
    paths = []
    for dy, dx in dirs:
        length_sq = dy * dy + dx * dx
        pts = [
            (y, x)
            for y in range(min(0, dy), max(0, dy) + 1)
            for x in range(min(0, dx), max(0, dx) + 1)
            if (dy * x - dx * y) ** 2 / length_sq < 1
        ]
        paths.append(pts)
    return paths


class PairwiseBoundary(nn.Module):
    """Eq. (2): ``B_ij = max_{k in Pi_ij} b(x_k)`` for every pair (i, j) of IRNet's half-disc.

    Takes per-pixel boundary logits ``z`` (N x 1 x H x W) and returns the max logit along each
    path, N x P x (H - r + 1) x (W - 2(r - 1)): source pixels are cropped so that every
    destination lies inside the grid. Because the sigmoid is monotone,
    ``sigmoid(max_k z_k) = max_k sigmoid(z_k)``, so the caller applies delta afterwards.
    The module has no parameters.
    """

    def __init__(self, radius: int = 5):
        super().__init__()
        self.radius = radius
        paths = search_paths(radius)
        offsets = sorted({p for path in paths for p in path})
        index = {o: i for i, o in enumerate(offsets)}
        longest = max(len(p) for p in paths)
        # Padding repeats the source pixel (0, 0), which is on every path, so the max is unchanged.
        rows = [[index[p] for p in path] + [index[(0, 0)]] * (longest - len(path)) for path in paths]
        self.offsets = offsets
        self.register_buffer("path_index", torch.tensor(rows, dtype=torch.long), persistent=False)

    @property
    def num_directions(self) -> int:
        return self.path_index.shape[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        rf = self.radius - 1
        h, w = z.shape[-2:]
        hc, wc = h - rf, w - 2 * rf
        if hc < 1 or wc < 1:
            raise ValueError(
                f"The feature grid {h}x{w} is too small for boundary radius {self.radius}: it needs at least "
                f"{rf + 1}x{2 * rf + 1}. Use a larger input, a finer grid (grid_stride), or a smaller radius."
            )
        shifted = torch.stack([z[:, 0, oy : oy + hc, rf + ox : rf + ox + wc] for oy, ox in self.offsets], 1)
        return shifted[:, self.path_index].amax(dim=2)


def semantic_boundary(probs: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Per-pixel boundary probability from class probabilities, as logits (N x 1 x H x W).

    ``b_k = 1 - sum_c p_{k,c} * pbar_{k,c}`` where ``pbar`` is the 3x3 neighbourhood mean of p:
    the probability that pixel k and a random neighbour carry different labels (the paper's
    definition of a boundary, "1 if they belong to different classes"). Returned as
    ``logit(b)`` clamped to [eps, 1 - eps] so it feeds the same path max as a learned head.
    """
    pbar = F.avg_pool2d(probs, 3, stride=1, padding=1, count_include_pad=False)
    b = (1.0 - (probs * pbar).sum(1, keepdim=True)).clamp(eps, 1 - eps)
    return torch.log(b) - torch.log1p(-b)


def _relation_logits(q: torch.Tensor, rows: slice, scale: float) -> torch.Tensor:
    return torch.einsum("ncl,ncm->nlm", q[:, :, rows], q) * scale


def relation_kl(
    student_q: torch.Tensor,
    teacher_q: torch.Tensor,
    *,
    student_scale: float,
    teacher_scale: float,
    teacher_tau: float = 1.0,
    chunk: int = 512,
) -> torch.Tensor:
    """BCKD context loss, Eqs. (4)-(5), evaluated exactly in row blocks.

    Eq. (4): ``R = softmax_row(scale * Q^T Q)`` with Q = Psi(F) reshaped to C x HW, so row i of R
    is a distribution over the HW positions. Eq. (5):
    ``L_c = 1 / (N HW) * sum_n sum_i KL(R^t_i || R^s_i)``.
    The row softmax makes the loss a sum over rows, so only an N x chunk x HW block of each
    relation matrix is alive at a time; activation checkpointing recomputes the block in backward
    instead of storing it. Peak memory is O(N * chunk * HW) instead of O(N * HW^2).
    ``teacher_tau`` < 1 sharpens the teacher relation (SERE uses 0.5; the paper says nothing, so 1).
    """
    qs = student_q.flatten(2)
    qt = teacher_q.detach().flatten(2)
    n, _, length = qs.shape

    def block(qs_: torch.Tensor, r0: int) -> torch.Tensor:
        rows = slice(r0, r0 + chunk)
        log_ps = _relation_logits(qs_, rows, student_scale).float().log_softmax(-1)
        with torch.no_grad():
            lt = _relation_logits(qt, rows, teacher_scale / teacher_tau).float()
            log_pt = lt.log_softmax(-1)
        return (log_pt.exp() * (log_pt - log_ps)).sum()

    total = qs.new_zeros((), dtype=torch.float32)
    for r0 in range(0, length, chunk):
        if qs.requires_grad:
            total = total + checkpoint(functools.partial(block, r0=r0), qs, use_reentrant=False)
        else:
            total = total + block(qs, r0)
    return total / (n * length)


def relation_mse(
    student_q: torch.Tensor, teacher_q: torch.Tensor, *, student_scale: float, teacher_scale: float, chunk: int = 512
) -> torch.Tensor:
    """SKD-style alternative to Eq. (5): ``mean((S^s - S^t)^2)`` of the raw similarity matrices."""
    qs = student_q.flatten(2)
    qt = teacher_q.detach().flatten(2)
    n, _, length = qs.shape

    def block(qs_: torch.Tensor, r0: int) -> torch.Tensor:
        rows = slice(r0, r0 + chunk)
        with torch.no_grad():
            st = _relation_logits(qt, rows, teacher_scale)
        return ((_relation_logits(qs_, rows, student_scale) - st) ** 2).sum()

    total = qs.new_zeros(())
    for r0 in range(0, length, chunk):
        fn = functools.partial(block, r0=r0)
        total = total + (checkpoint(fn, qs, use_reentrant=False) if qs.requires_grad else fn(qs))
    return total / (n * length * length)


def decay_factor(iteration: int, max_iters: int, *, samples_per_iter: int, dataset_size: int, mode: str) -> float:
    """Eq. (7): ``gamma(e) = 1 - (e - 1) / E``, with e the 1-based epoch and E the last epoch.

    For iteration-based training, ``e = floor(it * B / |D|) + 1`` and ``E = ceil(max_it * B / |D|)``
    (mode "epoch"), or the continuous form ``gamma = 1 - it / max_it`` (mode "iter").
    """
    if mode == "iter":
        return 1.0 - iteration / max_iters
    epoch = iteration * samples_per_iter // dataset_size + 1
    max_epoch = max(1, -(-max_iters * samples_per_iter // dataset_size))
    return 1.0 - (min(epoch, max_epoch) - 1) / max_epoch


class TemperatureSchedule(nn.Module):
    """The temperature rule of Phuong & Lampert (ICCV 2019), cited by BCKD's training details.

    Every step, ``m = mean over maps of max_i softmax(B^t / T)_i``; if ``m > threshold`` then
    ``T <- T * factor`` (official code: T0 = 1, factor 1.05, threshold 0.5). The state is a
    buffer so it is saved and restored with the distiller.
    """

    def __init__(self, initial: float = 1.0, factor: float = 1.05, threshold: float = 0.5, enabled: bool = True):
        super().__init__()
        self.factor, self.threshold, self.enabled = factor, threshold, enabled
        self.register_buffer("value", torch.tensor(float(initial)))

    @torch.no_grad()
    def update(self, teacher_maps: torch.Tensor) -> float:
        t = float(self.value)
        if self.enabled and self.training:
            maxprob = (teacher_maps.flatten(2).float() / t).softmax(-1).amax(-1).mean()
            if maxprob > self.threshold:
                self.value.mul_(self.factor)
        return float(self.value)
