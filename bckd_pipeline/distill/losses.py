"""Distillation losses: logit KD, CWD, and the two BCKD terms (boundary, context).

Every loss takes the student tensor first and the teacher tensor second. Teacher tensors are
detached inside the loss, so no gradient can reach the teacher whatever the caller does.
Equation numbers refer to BCKD (Zhang et al., arXiv:2401.13174v5); the reconstruction of each
equation is in the project's BCKD spec.

Padding: a random-scale crop smaller than the crop size is padded, and padded positions carry no
image. Every loss takes an optional ``valid`` mask (True where the input is real). Invalid positions
are left out of every softmax (their logits are pushed to ``MASKED_LOGIT``, so their probability is
exactly 0 on both sides) and out of every average, so a padded crop gives the same loss as the crop
alone.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# exp(MASKED_LOGIT - anything finite) is exactly 0 in fp32, and unlike -inf it never makes 0 * inf.
MASKED_LOGIT = -1e9


def full_precision(device_type: str) -> torch.autocast:
    """Autocast off on ``device_type`` ("cpu", "cuda"): inside, every op runs in its inputs' dtype, so a caller that
    passes fp32 tensors gets fp32 softmaxes, logs and sums whatever autocast the training step runs under."""
    return torch.autocast(device_type, enabled=False)


def _fp32(value):
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def in_fp32(fn):
    """Run a loss in fp32 under any autocast: floating tensor arguments are cast to fp32 (a no-op when they are
    already), and autocast is off on their device while ``fn`` runs. Softmaxes over many classes or positions and
    their logs lose the small probability differences a distillation gradient is made of when run in bf16, whose
    8-bit mantissa resolves about 0.4% of a value."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)).device.type
        with full_precision(device):
            return fn(*(_fp32(a) for a in args), **{k: _fp32(v) for k, v in kwargs.items()})

    return wrapper


@in_fp32
def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    *,
    valid: torch.Tensor | None = None,
    teacher_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel-wise logit KD (Hinton et al., 2015), the paper's Eq. (1) in its KL form.

    ``L_KD = T^2 / |V| * sum_{(n,i) in V} sum_c  p^t_{n,c,i} * (log p^t_{n,c,i} - log p^s_{n,c,i})``
    with ``p = softmax(f / T)`` over classes and V the valid pixels (all N H W of them without
    ``valid``, an N x 1 x H x W mask). KL differs from Eq. (1)'s cross-entropy by the teacher's
    entropy, a constant, so the gradients are identical and the loss is 0 at a match.
    ``teacher_probs``: ``p^t`` when the caller has it already (shared with BCKD's semantic boundary).
    """
    t = temperature
    log_ps = F.log_softmax(student_logits / t, dim=1)
    log_pt = F.log_softmax(teacher_logits.detach() / t, dim=1)
    pt = log_pt.exp() if teacher_probs is None else teacher_probs.detach()
    kl = (pt * (log_pt - log_ps)).sum(1, keepdim=True)
    if valid is None:
        return kl.mean() * t * t
    weights = valid.to(kl.dtype).expand_as(kl)
    return (kl * weights).sum() / weights.sum().clamp_min(1.0) * t * t


@in_fp32
def cwd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    *,
    detach_teacher: bool = True,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021), as in MMRazor's ``ChannelWiseDivergence``.

    Each channel is a distribution over spatial positions, ``phi(y)_{c,i} = softmax_i(y_{c,i} / T)``:
    ``L_cwd = T^2 / (N C) * sum_{n,c} sum_i phi(y^t)_{c,i} * (log phi(y^t)_{c,i} - log phi(y^s)_{c,i})``.
    ``valid`` (N x 1 x H x W, or N x C x H x W) leaves invalid positions out of every softmax.
    """
    t = temperature
    n, c = student_logits.shape[:2]
    s = student_logits.reshape(n, c, -1) / t
    tt = (teacher_logits.detach() if detach_teacher else teacher_logits).reshape(n, c, -1) / t
    if valid is not None:
        keep = valid.reshape(n, valid.shape[1], -1).expand_as(s)
        s, tt = s.masked_fill(~keep, MASKED_LOGIT), tt.masked_fill(~keep, MASKED_LOGIT)
    log_pt = F.log_softmax(tt, dim=-1)
    return (log_pt.exp() * (log_pt - F.log_softmax(s, dim=-1))).sum(-1).mean() * t * t


def spatial_kl(
    student_maps: torch.Tensor,
    teacher_maps: torch.Tensor,
    temperature: float = 1.0,
    *,
    detach_teacher: bool = True,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCKD boundary loss, Eq. (3): KL between spatial softmaxes of boundary maps.

    ``phi(B)_{p,i} = exp(B_{p,i} / T) / sum_i' exp(B_{p,i'} / T)`` over positions i, one
    distribution per map p (a path direction, or the single pixel map), and
    ``L_b = T^2 / (N P) * sum_{n,p} sum_i phi(B^t)_{p,i} * log(phi(B^t)_{p,i} / phi(B^s)_{p,i})``.
    The normalisation follows CWD/MMRazor, the construction the paper's phi names. With ``valid``
    (N x 1 x H x W) the softmaxes run over the valid positions only.
    """
    return cwd_loss(student_maps, teacher_maps, temperature, detach_teacher=detach_teacher, valid=valid)


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

    Two exact implementations, both of which find the winner of each path without autograd and
    send the gradient back through the P winners only (not through all P x L path points). On CUDA,
    where kernel launches dominate, one gather of all path points from the flat map (an index per
    grid size, cached), then one gather of the winners with autograd. On CPU, :class:`_PathMax`
    reads the r x (2r - 1) window of every source with one ``unfold`` and scatters the gradient back
    with one ``fold``, rather than a slice per offset (39 at r=5), stacked, indexed and
    max-reduced under autograd (docs/decisions.md, "BCKD's CPU kernels"). Where points of a path tie for
    the max, the CPU splits the gradient evenly between them (as ``amax``'s backward does), while CUDA's
    gather gives it all to one of them: a different subgradient. Ties are common where the head reads
    quantized or all-zero features (QAT, ReLU), so the CPU keeps ``amax``'s choice.
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
        # The same path points as positions in the r x (2r - 1) window that F.unfold reads around a source:
        # offset (oy, ox) is row oy, column ox + r - 1.
        self.window = (radius, 2 * radius - 1)
        in_window = torch.tensor([oy * self.window[1] + ox + radius - 1 for oy, ox in offsets])
        self.register_buffer("window_index", in_window[self.path_index], persistent=False)
        self._gather_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _source_grid(self, h: int, w: int) -> tuple[int, int]:
        rf = self.radius - 1
        hc, wc = h - rf, w - 2 * rf
        if hc < 1 or wc < 1:
            raise ValueError(
                f"The feature grid {h}x{w} is too small for boundary radius {self.radius}: it needs at least "
                f"{rf + 1}x{2 * rf + 1}. Use a larger input, a finer grid (grid_stride), or a smaller radius."
            )
        return hc, wc

    def _indices(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat grid positions: per offset (O x S) and per path point (P x L x S), S = sources."""
        key = (h, w, str(device))
        if key not in self._gather_cache:
            hc, wc = self._source_grid(h, w)
            rf = self.radius - 1
            ys, xs = torch.meshgrid(torch.arange(hc), torch.arange(rf, rf + wc), indexing="ij")
            src = (ys * w + xs).reshape(1, -1)
            shift = torch.tensor([oy * w + ox for oy, ox in self.offsets]).reshape(-1, 1)
            per_offset = (src + shift).to(device)  # O x S
            per_path = per_offset[self.path_index.to(device)]  # P x L x S
            self._gather_cache[key] = (per_offset, per_path)
        return self._gather_cache[key]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n, _, h, w = z.shape
        hc, wc = self._source_grid(h, w)
        # In fp32: the gradient of a path max is spread over its tied points and summed back onto the map, which a
        # bf16 map would do in bf16 (and bf16 logits tie far more often).
        z = z.float()
        if z.device.type != "cuda":
            return _PathMax.apply(z, self.window_index, self.window).reshape(n, -1, hc, wc)
        return self.gathered(z)

    def gathered(self, z: torch.Tensor) -> torch.Tensor:
        """The CUDA implementation of :meth:`forward` (any device; tests compare the two on CPU)."""
        n, _, h, w = z.shape
        hc, wc = self._source_grid(h, w)
        _, per_path = self._indices(h, w, z.device)
        p, length, sources = per_path.shape
        flat = z.reshape(n, h * w)
        with torch.no_grad():
            picked = flat[:, per_path.reshape(-1)].reshape(n, p, length, sources)
            winner = picked.argmax(dim=2, keepdim=True)
            where = per_path.expand(n, -1, -1, -1).gather(2, winner).reshape(n, p * sources)
        return flat.gather(1, where).reshape(n, p, hc, wc)

    def valid_sources(self, valid: torch.Tensor) -> torch.Tensor:
        """Sources (N x 1 x Hc x Wc) whose whole half-disc lies on valid grid positions.

        ``valid`` is N x 1 x H x W (bool). On a padded crop this keeps exactly the sources the
        crop alone would have, so masking makes the boundary term blind to the padding.
        """
        n, _, h, w = valid.shape
        hc, wc = self._source_grid(h, w)
        per_offset, _ = self._indices(h, w, valid.device)
        picked = valid.reshape(n, h * w)[:, per_offset.reshape(-1)].reshape(n, len(self.offsets), -1)
        return picked.all(dim=1).reshape(n, 1, hc, wc)


class _PathMax(torch.autograd.Function):
    """``amax`` over each path's points, read from the unfolded windows of the sources (N x 1 x H x W ->
    N x P x S, S = sources). The backward spreads each path's gradient evenly over its points that tie for
    the max (as ``amax``'s does), adds it up per window position and folds the windows back onto the map:
    three passes, where autograd through slices, a stack, an index and ``amax`` makes one full-size
    scatter per offset."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, window_index: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
        windows = F.unfold(z, window)  # N x (r (2r - 1)) x S
        points = windows[:, window_index]  # N x P x L x S: the L points of each of the P paths
        best = points.amax(dim=2)
        if ctx.needs_input_grad[0]:  # the teacher's map needs no backward
            ctx.save_for_backward(points == best[:, :, None], window_index)
        ctx.map_hw, ctx.window, ctx.window_size = z.shape[-2:], window, windows.shape[1]
        return best

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        winners, window_index = ctx.saved_tensors
        n, paths, length, sources = winners.shape
        share = winners.to(grad.dtype)
        share *= (grad / share.sum(2))[:, :, None]
        where = window_index.reshape(1, paths * length, 1).expand(n, -1, sources)
        grad_windows = grad.new_zeros(n, ctx.window_size, sources)
        grad_windows.scatter_add_(1, where, share.reshape(n, paths * length, sources))
        return F.fold(grad_windows, ctx.map_hw, ctx.window), None, None


@in_fp32
def semantic_boundary(probs: torch.Tensor, eps: float = 1e-4, *, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel boundary probability from class probabilities, as logits (N x 1 x H x W).

    ``b_k = 1 - sum_c p_{k,c} * pbar_{k,c}`` where ``pbar`` is the 3x3 neighbourhood mean of p:
    the probability that pixel k and a random neighbour carry different labels (the paper's
    definition of a boundary, "1 if they belong to different classes"). Returned as
    ``logit(b)`` clamped to [eps, 1 - eps] so it feeds the same path max as a learned head.
    With ``valid`` (N x 1 x H x W) the mean runs over valid neighbours only, so the seam between
    an image and its padding is not a boundary.
    """
    if valid is None:
        pbar = F.avg_pool2d(probs, 3, stride=1, padding=1, count_include_pad=False)
    else:
        v = valid.to(probs.dtype)
        count = F.avg_pool2d(v, 3, stride=1, padding=1, count_include_pad=False)
        summed = F.avg_pool2d(probs * v, 3, stride=1, padding=1, count_include_pad=False)
        # An invalid position with no valid neighbour keeps its own p (b is masked later anyway).
        pbar = torch.where(count > 0, summed / count.clamp_min(1e-12), probs)
    b = (1.0 - (probs * pbar).sum(1, keepdim=True)).clamp(eps, 1 - eps)
    return torch.log(b) - torch.log1p(-b)


def gram(q: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """``Q^T Q`` (N x L x L from N x C x L). On the CPU, from its upper block rows only: block row i is
    ``Q_i^T Q_{i:}`` and the blocks below the diagonal are mirrored, so about (blocks + 1) / (2 blocks) of the
    multiply-adds run (5/8 at 4 blocks; docs/decisions.md, "BCKD's CPU kernels").
    Every entry is the same dot product as in one ``bmm``; the result is exactly symmetric. On CUDA one ``bmm``
    (one kernel beats several there)."""
    length = q.shape[-1]
    if q.device.type == "cuda" or length < 32 * blocks:
        return torch.bmm(q.transpose(1, 2), q)
    step = -(-length // blocks)
    rows = [torch.bmm(q[:, :, r0 : r0 + step].transpose(1, 2), q[:, :, r0:]) for r0 in range(0, length, step)]
    out = rows[0].new_empty(q.shape[0], length, length)
    for r0, block in zip(range(0, length, step), rows, strict=True):
        out[:, r0 : r0 + step, r0:] = block
        out[:, r0 + step :, r0 : r0 + step] = block[:, :, step:].transpose(1, 2)
    return out


class _Gram(torch.autograd.Function):
    """``G = Q^T Q`` (N x L x L from N x C x L) with the backward of a Gram matrix: ``dQ = Q (dG + dG^T)``, one
    batched product where autograd's generic matmul backward runs two (one per operand, the same Q twice)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q)
        return gram(q)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (q,) = ctx.saved_tensors
        sym = grad + grad.transpose(1, 2)
        # Under autocast the forward product ran in the autocast dtype (the gradient's); the backward runs outside
        # autocast, so it casts as autocast would, and returns the gradient in Q's own dtype.
        return torch.bmm(q.to(sym.dtype), sym).to(q.dtype)


class _RowKL(torch.autograd.Function):
    """``sum_i w_i KL(softmax(lt_i) || softmax(ls_i))`` over the rows i of N x R x L logits (masked columns already
    at ``MASKED_LOGIT`` on both sides), rows weighted by ``w`` (N x R; all 1 when None).

    The gradient is the closed form ``w_i (softmax(ls_i) - softmax(lt_i))`` (the teacher's row sums to 1), zero
    on masked columns where both probabilities are 0: one pass where autograd's chain through log_softmax, the
    product, the mask and the sums makes several over the L x L block."""

    @staticmethod
    def forward(ctx, ls, lt, w):
        log_ps = ls.log_softmax(-1)
        # softmax, not log_softmax(lt).exp(): on the CPU exp() of the masked columns' huge negative logits takes a
        # slow underflow path, which the softmax kernel avoids.
        pt = lt.softmax(-1)
        # In place on the teacher's log-probabilities: two fewer N x R x L blocks alive at the peak.
        row_kl = lt.log_softmax(-1).sub_(log_ps).mul_(pt).sum(-1)
        ctx.save_for_backward(log_ps, pt, w)
        return row_kl.sum() if w is None else (row_kl * w).sum()

    @staticmethod
    def backward(ctx, grad):
        log_ps, pt, w = ctx.saved_tensors
        g = log_ps.softmax(-1).sub_(pt)  # softmax(log p_s) = p_s, by the same fast kernel as the forward's
        g.mul_(grad if w is None else grad * w.to(g.dtype)[..., None])
        return g, None, None


def _relation_logits(
    q: torch.Tensor, rows: slice, scale: float, column_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``scale * Q_rows^T Q`` (N x R x L), plus ``column_bias`` (N x 1 x L: 0, or MASKED_LOGIT on a padded column)
    in the same pass when given."""
    if rows.start in (None, 0) and (rows.stop is None or rows.stop >= q.shape[-1]):
        products = _Gram.apply(q) if q.requires_grad else gram(q)
    else:
        products = torch.einsum("ncl,ncm->nlm", q[:, :, rows], q)
    return products * scale if column_bias is None else torch.add(column_bias, products, alpha=scale)


def relation_kl(
    student_q: torch.Tensor,
    teacher_q: torch.Tensor,
    *,
    student_scale: float,
    teacher_scale: float,
    teacher_tau: float = 1.0,
    chunk: int = 512,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCKD context loss, Eqs. (4)-(5), evaluated exactly in row blocks.

    Eq. (4): ``R = softmax_row(scale * Q^T Q)`` with Q = Psi(F) reshaped to C x HW, so row i of R
    is a distribution over the HW positions. Eq. (5):
    ``L_c = 1 / (N HW) * sum_n sum_i KL(R^t_i || R^s_i)``.
    The row softmax makes the loss a sum over rows, so only an N x chunk x HW block of each
    relation matrix is alive at a time; with several blocks, activation checkpointing recomputes each in backward
    instead of storing it. Peak memory is O(N * chunk * HW) instead of O(N * HW^2).
    ``teacher_tau`` < 1 sharpens the teacher relation (SERE uses 0.5; the paper says nothing, so 1).
    With ``valid`` (N x 1 x H x W, or N x HW) invalid positions are masked out of every row's
    softmax (columns) and out of the mean (rows): ``L_c = 1 / |V| * sum_{i in V} KL(R^t_i || R^s_i)``.
    """
    qs = student_q.flatten(2)
    qt = teacher_q.detach().flatten(2)
    n, _, length = qs.shape
    keep = None if valid is None else valid.reshape(n, length)
    # Padded columns leave both softmaxes through a bias added with the scale (one pass, not a scale and a fill).
    bias = None if keep is None else _column_bias(keep)

    def block(qs_: torch.Tensor, r0: int) -> torch.Tensor:
        rows = slice(r0, r0 + chunk)
        # The products run in the autocast dtype (the costly part, and measured harmless: tests/test_precision.py);
        # the row softmaxes and their KL in fp32.
        ls = _relation_logits(qs_, rows, student_scale, bias).float()
        with torch.no_grad():
            lt = _relation_logits(qt, rows, teacher_scale / teacher_tau, bias).float()
        with full_precision(ls.device.type):
            return _RowKL.apply(ls, lt, None if keep is None else keep[:, rows])

    total = qs.new_zeros((), dtype=torch.float32)
    for r0 in range(0, length, chunk):
        if _recompute(qs, length, chunk):
            total = total + checkpoint(functools.partial(block, r0=r0), qs, use_reentrant=False)
        else:
            total = total + block(qs, r0)
    return total / (n * length if keep is None else keep.sum().clamp_min(1))


def _recompute(qs: torch.Tensor, length: int, chunk: int) -> bool:
    """Checkpoint the row blocks only when there are several: that is what bounds the memory. A single
    block (a grid of at most ``chunk`` positions: 192 at 96x128) is as small stored as recomputed, and
    the recompute would run both relations again in backward, the teacher's included."""
    return qs.requires_grad and length > chunk


def _column_bias(keep: torch.Tensor) -> torch.Tensor:
    """N x L validity -> N x 1 x L float32: 0 on a valid column, MASKED_LOGIT on a padded one. Any finite logit
    plus MASKED_LOGIT stays about 1e9 below every valid logit, so its probability is exactly 0 on both sides."""
    return torch.zeros(keep.shape[0], 1, keep.shape[1], device=keep.device).masked_fill_(~keep[:, None], MASKED_LOGIT)


def relation_mse(
    student_q: torch.Tensor,
    teacher_q: torch.Tensor,
    *,
    student_scale: float,
    teacher_scale: float,
    chunk: int = 512,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """SKD-style alternative to Eq. (5): ``mean((S^s - S^t)^2)`` of the raw similarity matrices,
    over the pairs of valid positions when ``valid`` is given."""
    qs = student_q.flatten(2)
    qt = teacher_q.detach().flatten(2)
    n, _, length = qs.shape
    keep = None if valid is None else valid.reshape(n, length).float()

    def block(qs_: torch.Tensor, r0: int) -> torch.Tensor:
        rows = slice(r0, r0 + chunk)
        with torch.no_grad():
            st = _relation_logits(qt, rows, teacher_scale).float()
        ss = _relation_logits(qs_, rows, student_scale).float()
        with full_precision(ss.device.type):  # the difference of close similarities and its sum, in fp32
            sq = (ss - st) ** 2
            return sq.sum() if keep is None else (sq * keep[:, rows, None] * keep[:, None, :]).sum()

    total = qs.new_zeros((), dtype=torch.float32)
    for r0 in range(0, length, chunk):
        fn = functools.partial(block, r0=r0)
        total = total + (checkpoint(fn, qs, use_reentrant=False) if _recompute(qs, length, chunk) else fn(qs))
    pairs = n * length * length if keep is None else (keep.sum(1) ** 2).sum().clamp_min(1)
    return total / pairs


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
    def update(self, teacher_maps: torch.Tensor, valid: torch.Tensor | None = None) -> float:
        t = float(self.value)
        if self.enabled and self.training:
            logits = teacher_maps.flatten(2).float() / t
            if valid is not None:
                logits = logits.masked_fill(~valid.flatten(2).expand_as(logits), MASKED_LOGIT)
            maxprob = logits.softmax(-1).amax(-1).mean()
            if maxprob > self.threshold:
                self.value.mul_(self.factor)
        return float(self.value)
