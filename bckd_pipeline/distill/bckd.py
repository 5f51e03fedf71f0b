"""BCKD: boundary and context distillation from hierarchical features (Sec. IV of the paper).

``BCKD`` owns the distillation-only modules (student-side fusion, boundary head, Psi_s and the
frozen teacher-side pieces). They are trained with the student and thrown away afterwards: the
saved student has exactly its own parameters.

Options the paper leaves open are fields of :class:`BCKDConfig`; see the spec's section 7 and the
project docs for what each default is and which measurement chose it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import BCKDConfig
from ..errors import ConfigError
from .losses import (
    PairwiseBoundary,
    TemperatureSchedule,
    full_precision,
    relation_kl,
    relation_mse,
    semantic_boundary,
    spatial_kl,
)




class StudentFusion(nn.Module):
    """Sec. IV-A: ``F = Concat_k Resize_grid(P_k(X_k))`` with P_k = 1x1 conv + BN + ReLU (trainable)."""

    def __init__(self, in_channels: list[int], dim: int):
        super().__init__()
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
            for c in in_channels
        )

    def forward(self, feats: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        return torch.cat([_resize(p(f), grid) for p, f in zip(self.proj, feats, strict=True)], 1)


class TeacherFusion(nn.Module):
    """Teacher-side fusion, never trained (spec §7.1): a learned teacher-side projection can collapse.

    "identity": resize and concatenate the raw stages, so the relations are those of the teacher's
    own features. "normalized": the same with each stage L2-normalised per position first, so a
    cosine relation averages the stages' cosines instead of following the loudest stage.
    "frozen": a fixed random 1x1 projection per stage with N(0, 1/dim) weights, which preserves
    inner products only in expectation (Johnson-Lindenstrauss): individual cosines move, and the
    target depends on the seed.
    """

    def __init__(self, in_channels: list[int], dim: int, mode: str, generator: torch.Generator):
        super().__init__()
        self.mode = mode
        if mode == "frozen":
            for i, c in enumerate(in_channels):
                self.register_buffer(f"w{i}", torch.randn(dim, c, 1, 1, generator=generator) / math.sqrt(dim))
        self.out_channels = dim * len(in_channels) if mode == "frozen" else sum(in_channels)

    @torch.no_grad()
    def forward(self, feats: list[torch.Tensor], grid: tuple[int, int], *, unit: bool = False) -> torch.Tensor:
        """The fused features; ``unit=True`` also L2-normalises each position over the whole concatenation
        (``unit_channels`` of the result: what a cosine relation reads)."""
        feats = [f.float() for f in feats]
        if self.mode == "frozen":
            feats = [F.conv2d(f, getattr(self, f"w{i}")) for i, f in enumerate(feats)]
        resized = [_resize(f, grid) for f in feats]
        if self.mode == "normalized":
            # Each stage's squared norm s_k gives both its own scale r_k = 1/max(|x_k|, eps) and the squared norm
            # s_k r_k^2 (1, or less for an all-zero position) of the normalised stage in the concatenation, so the
            # concatenation's norm needs no second pass over its channels: one multiply per stage.
            eps2 = 1e-24
            sq = [f.square().sum(1, keepdim=True) for f in resized]
            inv = [s.clamp_min(eps2).rsqrt() for s in sq]
            if unit:
                total = sum(s * r * r for s, r in zip(sq, inv, strict=True))
                whole = total.clamp_min(eps2).rsqrt()
                inv = [r * whole for r in inv]
            # Each stage is scaled straight into its channels of the concatenation: one pass, no separate cat.
            fused = resized[0].new_empty(resized[0].shape[0], self.out_channels, *grid)
            start = 0
            for f, r in zip(resized, inv, strict=True):
                torch.mul(f, r, out=fused[:, start : start + f.shape[1]])
                start += f.shape[1]
            return fused
        fused = torch.cat(resized, 1)
        return unit_channels(fused) if unit else fused


def unit_channels(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(x, dim=1)`` (x / max(||x||, eps) along channels), as x * rsqrt(max(||x||^2, eps^2)):
    the same values, faster on the CPU, where the norm over a strided channel axis is slow."""
    return x * x.square().sum(1, keepdim=True).clamp_min(eps * eps).rsqrt()


def grid_validity(valid: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A pixel validity mask (N x 1 x H x W, bool) on a coarser grid: a cell is valid only if every
    pixel it pools is, so no grid feature mixes image and padding."""
    if valid.shape[-2:] == grid:
        return valid
    return F.adaptive_max_pool2d((~valid).float(), grid) == 0


def _resize(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    if x.shape[-2:] == grid:
        return x
    h, w = x.shape[-2:]
    if h % grid[0] == 0 and w % grid[1] == 0:
        kh, kw = h // grid[0], w // grid[1]
        if kh <= 2 and kw <= 2:
            # A 2x2 mean as strided adds, rows then columns: the same numbers as avg_pool2d (to rounding) at a
            # fraction of its CPU time on channel-major maps (docs/decisions.md, "BCKD's CPU kernels"), and a
            # backward of two slice scatters instead of a pooling kernel.
            if kh == 2:
                x = x[..., 0::2, :] + x[..., 1::2, :]
            if kw == 2:
                x = x[..., 0::2] + x[..., 1::2]
            return x * (1.0 / (kh * kw))
        # The same numbers as adaptive pooling when the grid divides the map, at a fraction of its CPU time.
        return F.avg_pool2d(x, (kh, kw))
    if h >= grid[0] and w >= grid[1]:
        return F.adaptive_avg_pool2d(x, grid)
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)


class BCKD(nn.Module):
    """The BCKD loss terms for one batch: ``{"boundary": L_b, "context": L_c}`` plus diagnostics.

    Built from the channel counts of the tapped student and teacher stages. Eq. (6)/(8) weighting
    (alpha, beta, gamma) is applied by the task, which also owns the schedule.
    """

    def __init__(self, cfg: BCKDConfig, student_channels: list[int], teacher_channels: list[int]):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        # The student fusion feeds the boundary head and the context term; with neither (semantic
        # student boundary, no context) it would run without a gradient, which DDP refuses.
        needs_fusion = cfg.context or (cfg.boundary and cfg.boundary_student == "head")
        self.student_fusion = StudentFusion(student_channels, cfg.fusion_dim) if needs_fusion else None
        self.teacher_fusion = TeacherFusion(teacher_channels, cfg.fusion_dim, cfg.teacher_fusion, gen)
        cs, ct = cfg.fusion_dim * len(student_channels), self.teacher_fusion.out_channels
        if cfg.boundary:
            self.boundary_head = nn.Conv2d(cs, 1, 1) if cfg.boundary_student == "head" else None
            if cfg.boundary_teacher in ("conv", "trainable"):
                self.teacher_boundary_head = nn.Conv2d(ct, 1, 1)
                if cfg.boundary_teacher == "conv":
                    # A fixed random read-out: seeded, and never updated (spec §7.1).
                    with torch.no_grad():
                        self.teacher_boundary_head.weight.normal_(0, 1 / math.sqrt(ct), generator=gen)
                        self.teacher_boundary_head.bias.zero_()
                    self.teacher_boundary_head.requires_grad_(False)
            self.paths = PairwiseBoundary(cfg.radius) if cfg.boundary_repr == "pairwise" else None
            self.temperature = TemperatureSchedule(
                cfg.temperature, cfg.temperature_factor, cfg.temperature_threshold, cfg.temperature_schedule
            )
        if cfg.context:
            if cfg.relation == "dot":
                self.psi_s = nn.Sequential(nn.Conv2d(cs, ct, 1, bias=False), nn.BatchNorm2d(ct), nn.ReLU(inplace=True))
                self.psi_t = nn.Sequential(nn.BatchNorm2d(ct, affine=False, track_running_stats=False), nn.ReLU())
            else:
                # A cosine relation needs no channel matching: the student's Gram matrix has rank <= cs
                # whatever the width of Psi_s, so cs -> cs is as expressive as cs -> ct, and cheaper.
                self.psi_s = nn.Conv2d(cs, cs, 1)
                self.psi_t = nn.Identity()
        # Eq. (6)'s weights. Under balance="grad" they are measured over the first iterations
        # (observe_gradients), then frozen; buffers, so a resumed run keeps them.
        self.register_buffer("term_weights", torch.tensor([cfg.alpha, cfg.beta], dtype=torch.float32))
        self.register_buffer("balance_seen", torch.tensor(0))

    def grid(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        s = self.cfg.grid_stride
        return (max(1, input_hw[0] // s), max(1, input_hw[1] // s))

    def check_input(self, input_hw: tuple[int, int]) -> None:
        """Fail before training if the crop is too small for the boundary paths."""
        if self.cfg.boundary and self.paths is not None:
            h, w = self.grid(input_hw)
            r = self.cfg.radius
            if h < r or w < 2 * r - 1:
                raise ConfigError(
                    f"A {input_hw[0]}x{input_hw[1]} input gives a {h}x{w} BCKD grid (grid_stride="
                    f"{self.cfg.grid_stride}), too small for boundary radius {r} (needs at least {r}x{2 * r - 1}). "
                    f"Use a larger --crop, --bckd grid_stride={max(1, self.cfg.grid_stride // 2)}, "
                    "or --bckd radius=3."
                )

    def forward(
        self,
        student_feats: list[torch.Tensor],
        teacher_feats: list[torch.Tensor],
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        input_hw: tuple[int, int],
        valid: torch.Tensor | None = None,
        *,
        teacher_probs: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The unweighted terms. ``valid`` (N x 1 x H x W, bool, at the input size) marks the real
        pixels of a padded crop; with ``mask_padding`` the terms ignore the rest. ``teacher_probs``:
        ``softmax(teacher_logits)`` over classes, when the caller has it already (see
        :attr:`reads_teacher_probs`)."""
        grid = self.grid(input_hw)
        gv = grid_validity(valid, grid) if valid is not None and self.cfg.mask_padding else None
        fs = self.student_fusion(student_feats, grid) if self.student_fusion is not None else None
        cfg = self.cfg
        # A cosine relation of the raw fused teacher features (no pooling before it) reads them normalised: the
        # fusion does that itself, in fewer passes. The boundary's conv read-outs take the fused features as they are.
        teacher_unit = self._cosine_at_full_grid
        ft = ft_unit = None
        if cfg.boundary and cfg.boundary_teacher != "semantic":
            ft = self.teacher_fusion(teacher_feats, grid)
        if cfg.context:
            ft_unit = self.teacher_fusion(teacher_feats, grid, unit=teacher_unit) if ft is None or teacher_unit else ft
        # The boundary head and a plain-conv Psi_s read the same fused features: one convolution runs both.
        zs, qs = self._readouts(fs) if self._joint_readout else (None, None)
        out: dict[str, torch.Tensor] = {}
        if cfg.boundary:
            out.update(self._boundary(fs, ft, student_logits, teacher_logits, grid, gv, zs=zs, t_probs=teacher_probs))
        if cfg.context:
            out["context"] = self._context(fs, ft_unit, gv, teacher_unit=teacher_unit, qs=qs)
        return out

    @property
    def reads_teacher_probs(self) -> bool:
        """The boundary term reads the teacher's class probabilities (``boundary_teacher="semantic"``)."""
        return self.cfg.boundary and self.cfg.boundary_teacher == "semantic"

    @property
    def _cosine_at_full_grid(self) -> bool:
        """The context term is a cosine relation of the fused features at the full grid (no pooling first)."""
        cfg = self.cfg
        return cfg.context and cfg.relation == "cosine" and cfg.context_pool == 1

    @property
    def _joint_readout(self) -> bool:
        return self.cfg.boundary and self.boundary_head is not None and self._cosine_at_full_grid

    def _readouts(self, fs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(boundary logits Z_s, Psi_s(F^s)) from one 1x1 convolution with both weight sets stacked: the same
        numbers as the two modules, at one convolution's fixed cost instead of two (a one-channel convolution
        is mostly fixed cost on the CPU)."""
        head, psi = self.boundary_head, self.psi_s
        both = F.conv2d(fs, torch.cat([head.weight, psi.weight]), torch.cat([head.bias, psi.bias]))
        return both[:, :1], both[:, 1:]

    @property
    def balancing(self) -> bool:
        """True while balance="grad" is still measuring the terms' gradient norms."""
        return self.cfg.balance == "grad" and int(self.balance_seen) < self.cfg.balance_iters

    @torch.no_grad()
    def observe_gradients(self, ce: float, boundary: float | None, context: float | None) -> None:
        """One measurement of the unweighted gradient norms: fold ``target * |g_ce| / |g_term|`` into
        the running mean of each weight (all ranks agree: the caller reduces the norms first)."""
        k = int(self.balance_seen)
        targets = (self.cfg.balance_boundary, self.cfg.balance_context)
        for i, (g, target) in enumerate(zip((boundary, context), targets, strict=True)):
            if g is not None and g > 0:
                self.term_weights[i] = (self.term_weights[i] * k + target * ce / g) / (k + 1)
        self.balance_seen += 1

    def _boundary(
        self, fs, ft, student_logits, teacher_logits, grid, gv, *, zs=None, t_probs=None
    ) -> dict[str, torch.Tensor]:
        """Eqs. (2)-(3). ``zs``: the head's logits when :meth:`_readouts` computed them; ``t_probs``: the
        teacher's class probabilities when the caller had them."""
        cfg = self.cfg
        if zs is None and self.boundary_head is not None:
            zs = self.boundary_head(fs)
        elif zs is None:
            zs = semantic_boundary(_resize(student_logits.float().softmax(1), grid), valid=gv)
        if cfg.boundary_teacher == "semantic":
            with torch.no_grad():
                if t_probs is None:
                    t_probs = teacher_logits.detach().float().softmax(1)
                probs = _resize(t_probs, grid)
                zt = semantic_boundary(probs, valid=gv)
        elif cfg.boundary_teacher == "conv":
            with torch.no_grad():
                zt = self.teacher_boundary_head(ft)
        else:
            zt = self.teacher_boundary_head(ft.detach())
        map_valid = None
        if gv is not None:
            map_valid = self.paths.valid_sources(gv) if self.paths is not None else gv
        # The path max and the spatial softmax in fp32 under autocast: bf16 logits tie along a path far more
        # often, and a softmax over a few hundred positions needs more than bf16's 8-bit mantissa.
        with full_precision(zs.device.type):
            bs, bt = self._maps(zs.float()), self._maps(zt.float())
            t = self.temperature.update(bt.detach(), map_valid)
            # "trainable": MMRazor trains teacher-side connectors through the same loss (spec §7.1).
            loss = spatial_kl(bs, bt, t, detach_teacher=cfg.boundary_teacher != "trainable", valid=map_valid)
        return {"boundary": loss, "temperature": torch.tensor(t), "teacher_boundary_std": bt.detach().std()}

    def _maps(self, z: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits -> the maps that Eq. (3) softmaxes (Eq. (2) plus delta and polarity)."""
        cfg = self.cfg
        m = self.paths(z) if self.paths is not None else z
        if cfg.softmax_input == "logit":
            return m if cfg.polarity == "boundary" else -m
        b = torch.sigmoid(m)
        if cfg.delta == "hard_ste":
            b = (b > 0.5).to(b.dtype) + b - b.detach()
        return b if cfg.polarity == "boundary" else 1.0 - b

    def _context(
        self,
        fs: torch.Tensor,
        ft: torch.Tensor,
        gv: torch.Tensor | None = None,
        *,
        teacher_unit: bool = False,
        qs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Eqs. (4)-(5). ``teacher_unit``: ``ft`` is already unit-norm per position (TeacherFusion(unit=True)).
        ``qs``: Psi_s(F^s) when :meth:`_readouts` computed it (at the full grid, so with ``context_pool`` 1)."""
        cfg = self.cfg
        if cfg.context_pool > 1:
            fs, ft = F.avg_pool2d(fs, cfg.context_pool), F.avg_pool2d(ft, cfg.context_pool)
            if gv is not None:
                gv = F.max_pool2d((~gv).float(), cfg.context_pool) == 0
        qs, qt = (self.psi_s(fs) if qs is None else qs), self.psi_t(ft)
        if cfg.relation == "cosine":
            qs, qt = unit_channels(qs), (qt if teacher_unit else unit_channels(qt))
            ss = st = 1.0 / cfg.relation_tau
        else:
            ss, st = qs.shape[1] ** -0.5, qt.shape[1] ** -0.5
        if cfg.context_loss == "mse":
            return relation_mse(qs, qt, student_scale=ss, teacher_scale=st, chunk=cfg.chunk, valid=gv)
        return relation_kl(
            qs, qt, student_scale=ss, teacher_scale=st, teacher_tau=cfg.teacher_tau, chunk=cfg.chunk, valid=gv
        )
