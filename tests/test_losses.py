"""Distillation losses and the BCKD module: properties, naive CPU references, golden values.

Every reference here is written independently of ``bckd_pipeline.distill.losses`` (explicit loops,
numpy, float64). Golden numbers were computed once by those references and are hard-coded so a
change of the loss math is caught even if the reference changes with it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import fields

import numpy as np
import pytest
import torch

from bckd_pipeline.configs import BCKD_CHOICES, BCKDConfig
from bckd_pipeline.distill.bckd import BCKD
from bckd_pipeline.distill.losses import (
    PairwiseBoundary,
    TemperatureSchedule,
    cwd_loss,
    decay_factor,
    kd_loss,
    relation_kl,
    relation_mse,
    search_paths,
    semantic_boundary,
    spatial_kl,
)
from bckd_pipeline.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Naive references (float64 numpy, explicit loops over the items each loss averages over)


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def ref_kd(s: torch.Tensor, t: torch.Tensor, temp: float) -> float:
    """T^2 * mean over (n, pixel) of KL(softmax_c(t/T) || softmax_c(s/T))."""
    s, t = s.double().numpy(), t.double().numpy()
    n, c, h, w = s.shape
    total = 0.0
    for i, y, x in itertools.product(range(n), range(h), range(w)):
        total += _kl(_softmax(t[i, :, y, x] / temp), _softmax(s[i, :, y, x] / temp))
    return temp * temp * total / (n * h * w)


def ref_cwd(s: torch.Tensor, t: torch.Tensor, temp: float) -> float:
    """T^2 * mean over (n, channel) of KL(softmax_space(t/T) || softmax_space(s/T))."""
    s, t = s.double().numpy(), t.double().numpy()
    n, c = s.shape[:2]
    total = 0.0
    for i, k in itertools.product(range(n), range(c)):
        total += _kl(_softmax(t[i, k].ravel() / temp), _softmax(s[i, k].ravel() / temp))
    return temp * temp * total / (n * c)


def ref_relation_kl(qs: torch.Tensor, qt: torch.Tensor, ss: float, st: float, tau: float = 1.0):
    """Full HW x HW relations, row softmax, KL per row, mean over rows and batch (autograd-able)."""
    qs, qt = qs.double().flatten(2), qt.double().flatten(2)
    rs = torch.softmax(qs.transpose(1, 2) @ qs * ss, dim=-1)
    rt = torch.softmax(qt.transpose(1, 2) @ qt * st / tau, dim=-1)
    return (rt * (rt.log() - rs.log())).sum(-1).mean()


def ref_relation_mse(qs: torch.Tensor, qt: torch.Tensor, ss: float, st: float) -> torch.Tensor:
    qs, qt = qs.double().flatten(2), qt.double().flatten(2)
    return ((qs.transpose(1, 2) @ qs * ss - qt.transpose(1, 2) @ qt * st) ** 2).mean()


def ref_pairwise(z: np.ndarray, radius: int) -> np.ndarray:
    """Brute force Eq. (2) before delta: for every cropped source pixel and direction, max over the path."""
    n, _, h, w = z.shape
    rf = radius - 1
    paths = search_paths(radius)
    out = np.empty((n, len(paths), h - rf, w - 2 * rf))
    for b, p, y, x in itertools.product(range(n), range(len(paths)), range(h - rf), range(w - 2 * rf)):
        sy, sx = y, x + rf  # the source pixel in the uncropped grid
        out[b, p, y, x] = max(z[b, 0, sy + dy, sx + dx] for dy, dx in paths[p])
    return out


def _pair(shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale, torch.randn(*shape, generator=g) * scale


# ---------------------------------------------------------------------------------------------
# kd_loss, cwd_loss, spatial_kl

PIXEL_LOSSES = {"kd": kd_loss, "cwd": cwd_loss, "spatial_kl": spatial_kl}


@pytest.mark.parametrize("name", PIXEL_LOSSES)
@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_zero_loss_and_zero_grad_at_match(name, temp):
    loss_fn = PIXEL_LOSSES[name]
    t, _ = _pair((2, 5, 4, 6), seed=1, scale=3.0)
    s = t.clone().requires_grad_(True)
    loss = loss_fn(s, t, temp)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-6
    assert s.grad.abs().max() < 1e-6


@pytest.mark.parametrize("name", PIXEL_LOSSES)
def test_positive_when_different_and_no_grad_reaches_teacher(name):
    loss_fn = PIXEL_LOSSES[name]
    s, t = _pair((2, 5, 4, 6), seed=2)
    s.requires_grad_(True)
    t.requires_grad_(True)  # even a teacher tensor that asks for gradients must not get any
    loss = loss_fn(s, t, 2.0)
    loss.backward()
    assert float(loss.detach()) > 1e-3
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", PIXEL_LOSSES)
@pytest.mark.parametrize("temp", [0.5, 3.0])
def test_temperature_is_t_squared_times_kl_of_scaled_logits(name, temp):
    loss_fn = PIXEL_LOSSES[name]
    s, t = _pair((2, 4, 3, 5), seed=3, scale=2.0)
    scaled = loss_fn(s / temp, t / temp, 1.0)
    torch.testing.assert_close(loss_fn(s, t, temp), temp * temp * scaled, rtol=1e-5, atol=1e-7)


def test_kd_high_temperature_limit_is_zero_mean_mse():
    """Hinton: T^2 KL -> 1/(2C) sum_c (d_c - mean d)^2 per pixel as T grows (d = t - s); T^2 keeps it O(1)."""
    s, t = _pair((2, 5, 3, 4), seed=4)
    d = t - s
    limit = ((d - d.mean(1, keepdim=True)) ** 2).sum(1) / (2 * d.shape[1])
    torch.testing.assert_close(kd_loss(s, t, 200.0), limit.mean(), rtol=2e-2, atol=0)


def test_cwd_high_temperature_limit_is_zero_mean_mse():
    s, t = _pair((2, 3, 4, 5), seed=5)
    d = (t - s).flatten(2)
    limit = ((d - d.mean(-1, keepdim=True)) ** 2).sum(-1) / (2 * d.shape[-1])
    torch.testing.assert_close(cwd_loss(s, t, 200.0), limit.mean(), rtol=2e-2, atol=0)


# Golden values: torch.manual_seed(0); s = randn(2, 4, 3, 5); t = randn(2, 4, 3, 5).
GOLDEN = {
    ("kd", 1.0): 0.679904,
    ("kd", 2.0): 0.797827,
    ("cwd", 1.0): 0.868973,
    ("cwd", 2.0): 0.941071,
}


def _golden_inputs():
    torch.manual_seed(0)
    return torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)


@pytest.mark.parametrize(("name", "temp"), list(GOLDEN))
def test_golden_values(name, temp):
    s, t = _golden_inputs()
    ref = {"kd": ref_kd, "cwd": ref_cwd}[name](s, t, temp)
    got = float(PIXEL_LOSSES[name](s, t, temp))
    assert got == pytest.approx(ref, rel=1e-5)
    assert got == pytest.approx(GOLDEN[name, temp], rel=1e-5)
    if name == "cwd":  # spatial_kl is Eq. (3) in the CWD form
        assert float(spatial_kl(s, t, temp)) == pytest.approx(GOLDEN[name, temp], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# search_paths, PairwiseBoundary


@pytest.mark.parametrize(("radius", "directions", "longest"), [(3, 12, 7), (5, 34, 11), (8, 96, 16), (10, 152, 22)])
def test_search_paths_counts(radius, directions, longest):
    paths = search_paths(radius)
    assert len(paths) == directions
    assert max(len(p) for p in paths) == longest
    ends = set()
    for path in paths:
        assert (0, 0) in path
        # The endpoint is the path point farthest from the source; it lies in the half-disc.
        dy, dx = max(path, key=lambda p: p[0] ** 2 + p[1] ** 2)
        assert dy > 0 or (dy == 0 and dx > 0)
        assert dy * dy + dx * dx < radius * radius
        ends.add((dy, dx))
    assert len(ends) == directions  # one path per direction, no duplicates


def test_search_paths_hand_worked_lines():
    """Grid points within perpendicular distance < 1 of the segment, worked out by hand."""
    paths = {max(p, key=lambda q: q[0] ** 2 + q[1] ** 2): sorted(p) for p in search_paths(3)}
    assert paths[(0, 2)] == [(0, 0), (0, 1), (0, 2)]
    # (1, 2): every point of the 2 x 3 box is within distance 2/sqrt(5) < 1 of the segment.
    assert paths[(1, 2)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    # (2, -2): |x + y| < sqrt(2), i.e. the anti-diagonal band of the 3 x 3 box (7 points, the longest).
    assert paths[(2, -2)] == [(0, -1), (0, 0), (1, -2), (1, -1), (1, 0), (2, -2), (2, -1)]
    assert paths[(2, 0)] == [(0, 0), (1, 0), (2, 0)]


def test_search_paths_rejects_tiny_radius():
    with pytest.raises(ValueError, match="radius"):
        search_paths(1)


@pytest.mark.parametrize("radius", [3, 5])
def test_pairwise_boundary_matches_brute_force(radius):
    torch.manual_seed(radius)
    z = torch.randn(1, 1, 9, 12)
    out = PairwiseBoundary(radius)(z)
    n_dirs = len(search_paths(radius))
    assert out.shape == (1, n_dirs, 9 - radius + 1, 12 - 2 * (radius - 1))
    np.testing.assert_allclose(out.numpy(), ref_pairwise(z.numpy(), radius), rtol=0, atol=0)


@pytest.mark.parametrize("radius", [3, 5])
def test_pairwise_boundary_gather_equals_slices_with_gradients(radius):
    """The one-gather implementation (used on CUDA) gives the same values and gradients as the CPU's unfold/fold."""
    mod = PairwiseBoundary(radius)
    z = torch.randn(3, 1, 11, 14, generator=torch.Generator().manual_seed(radius), requires_grad=True)
    weights = torch.randn_like(mod(z))
    sliced, gathered = mod(z), mod.gathered(z)
    torch.testing.assert_close(gathered, sliced, rtol=0, atol=0)
    (g_sliced,) = torch.autograd.grad((sliced * weights).sum(), z)
    (g_gathered,) = torch.autograd.grad((gathered * weights).sum(), z)
    torch.testing.assert_close(g_gathered, g_sliced)


def test_pairwise_boundary_valid_sources_are_those_of_the_crop_alone():
    mod = PairwiseBoundary(3)
    valid = torch.zeros(1, 1, 9, 12, dtype=torch.bool)
    valid[..., :6, :8] = True  # a 6 x 8 image padded to 9 x 12
    got = mod.valid_sources(valid)
    assert got.shape == (1, 1, 7, 8)
    # The crop alone has sources rows 0..3 and columns 2..5 (of the grid): 4 x 4, at the same places.
    expected = torch.zeros(1, 1, 7, 8, dtype=torch.bool)
    expected[..., :4, :4] = True
    assert torch.equal(got, expected)
    assert mod(torch.randn(1, 1, 6, 8)).shape[-2:] == (4, 4)


def test_pairwise_boundary_has_no_parameters_and_batches():
    mod = PairwiseBoundary(3)
    assert list(mod.parameters()) == []
    z = torch.randn(3, 1, 6, 9)
    out = mod(z)
    assert out.shape == (3, 12, 4, 5)
    torch.testing.assert_close(out[1:2], mod(z[1:2]))


def test_pairwise_boundary_too_small_grid():
    with pytest.raises(ValueError, match=r"too small for boundary radius 5.*at least 5x9"):
        PairwiseBoundary(5)(torch.randn(1, 1, 4, 20))
    with pytest.raises(ValueError, match="too small"):
        PairwiseBoundary(5)(torch.randn(1, 1, 8, 8))
    assert PairwiseBoundary(5)(torch.randn(1, 1, 5, 9)).shape == (1, 34, 1, 1)


# ---------------------------------------------------------------------------------------------
# semantic_boundary


def test_semantic_boundary_lights_up_at_the_border():
    h, w, border = 6, 10, 5  # columns 0..4 are class 0, 5..9 class 1
    probs = torch.zeros(1, 2, h, w)
    probs[0, 0, :, :border] = 1
    probs[0, 1, :, border:] = 1
    z = semantic_boundary(probs)
    assert z.shape == (1, 1, h, w)
    on = z[0, 0, :, border - 1 : border + 1]
    off = torch.cat([z[0, 0, :, : border - 1], z[0, 0, :, border + 1 :]], 1)
    # Border pixels: a third of the 3x3 neighbours differ, b = 1/3, logit(1/3) = -log 2.
    torch.testing.assert_close(on, torch.full_like(on, -math.log(2.0)))
    # Elsewhere b = 0, clamped to eps = 1e-4: logit(1e-4).
    torch.testing.assert_close(off, torch.full_like(off, math.log(1e-4 / (1 - 1e-4))))
    assert on.min() > off.max() + 5


def test_semantic_boundary_uniform_map_is_low_everywhere():
    probs = torch.zeros(2, 3, 5, 5)
    probs[:, 2] = 1
    assert semantic_boundary(probs).max() < -9


# ---------------------------------------------------------------------------------------------
# relation_kl, relation_mse


@pytest.mark.parametrize("chunk", [3, 7, 20, 512])
def test_relation_kl_matches_naive_full_matrix(chunk):
    g = torch.Generator().manual_seed(7)
    qs0 = torch.randn(2, 6, 4, 5, generator=g)
    qt = torch.randn(2, 8, 4, 5, generator=g)
    ss, st = 6**-0.5, 8**-0.5

    qs = qs0.clone().requires_grad_(True)
    loss = relation_kl(qs, qt, student_scale=ss, teacher_scale=st, chunk=chunk)
    loss.backward()

    qs_ref = qs0.clone().double().requires_grad_(True)
    ref = ref_relation_kl(qs_ref, qt, ss, st)
    ref.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    torch.testing.assert_close(qs.grad.double(), qs_ref.grad, rtol=1e-4, atol=1e-7)


def test_relation_kl_golden_value():
    torch.manual_seed(0)
    qs, qt = torch.randn(2, 6, 4, 5), torch.randn(2, 8, 4, 5)
    got = float(relation_kl(qs, qt, student_scale=6**-0.5, teacher_scale=8**-0.5, chunk=7))
    assert got == pytest.approx(float(ref_relation_kl(qs, qt, 6**-0.5, 8**-0.5)), rel=1e-5)
    assert got == pytest.approx(0.765885, rel=1e-5)


def test_relation_kl_without_grad_equals_with_grad():
    qs, qt = _pair((1, 4, 3, 3), seed=8)
    a = relation_kl(qs, qt, student_scale=0.5, teacher_scale=0.5, chunk=4)
    b = relation_kl(qs.clone().requires_grad_(True), qt, student_scale=0.5, teacher_scale=0.5, chunk=4)
    torch.testing.assert_close(a, b.detach())


def test_relation_kl_zero_at_match():
    q, _ = _pair((2, 5, 3, 4), seed=9)
    qs = q.clone().requires_grad_(True)
    loss = relation_kl(qs, q, student_scale=0.7, teacher_scale=0.7, chunk=5)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-6
    assert qs.grad.abs().max() < 1e-6


def test_relation_kl_teacher_tau_and_teacher_gradient():
    qs, qt = _pair((1, 4, 3, 4), seed=10)
    qs.requires_grad_(True)
    qt.requires_grad_(True)
    base = relation_kl(qs, qt, student_scale=0.5, teacher_scale=0.5)
    sharp = relation_kl(qs, qt, student_scale=0.5, teacher_scale=0.5, teacher_tau=0.5)
    assert float(sharp.detach()) != pytest.approx(float(base.detach()), rel=1e-3)
    ref = ref_relation_kl(qs.detach(), qt.detach(), 0.5, 0.5, tau=0.5)
    assert float(sharp.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    (base + sharp).backward()
    assert qt.grad is None
    assert qs.grad is not None


@pytest.mark.parametrize("chunk", [3, 7, 512])
def test_relation_mse_matches_naive(chunk):
    qs0, qt = _pair((2, 3, 4, 5), seed=11)
    qs = qs0.clone().requires_grad_(True)
    qt.requires_grad_(True)
    loss = relation_mse(qs, qt, student_scale=0.3, teacher_scale=0.2, chunk=chunk)
    loss.backward()
    qs_ref = qs0.clone().double().requires_grad_(True)
    ref = ref_relation_mse(qs_ref, qt.detach(), 0.3, 0.2)
    ref.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    torch.testing.assert_close(qs.grad.double(), qs_ref.grad, rtol=1e-4, atol=1e-7)
    assert qt.grad is None
    assert float(relation_mse(qt.detach(), qt.detach(), student_scale=0.2, teacher_scale=0.2)) == 0.0


# ---------------------------------------------------------------------------------------------
# decay_factor, TemperatureSchedule


def test_decay_factor_epoch_mode():
    kw = {"samples_per_iter": 4, "dataset_size": 20, "mode": "epoch"}  # 5 iterations per epoch
    assert decay_factor(0, 50, **kw) == 1.0  # gamma(1) = 1
    assert decay_factor(4, 50, **kw) == 1.0  # still epoch 1
    assert decay_factor(5, 50, **kw) == pytest.approx(0.9)  # epoch 2 of E = 10
    assert decay_factor(49, 50, **kw) == pytest.approx(1 / 10)  # last epoch: 1/E
    assert decay_factor(1000, 50, **kw) == pytest.approx(1 / 10)  # never below 1/E
    # Partial last epoch: E = ceil(12 * 4 / 20) = 3.
    assert decay_factor(11, 12, samples_per_iter=4, dataset_size=20, mode="epoch") == pytest.approx(1 / 3)


def test_decay_factor_iter_mode():
    kw = {"samples_per_iter": 4, "dataset_size": 20, "mode": "iter"}
    for it in (0, 7, 25, 49):
        assert decay_factor(it, 50, **kw) == pytest.approx(1 - it / 50)


def _peaked_maps(peak: float) -> torch.Tensor:
    maps = torch.zeros(2, 3, 4, 4)
    maps[:, :, 1, 2] = peak
    return maps


def test_temperature_schedule_grows_when_peaked():
    sched = TemperatureSchedule(1.0, 1.05, 0.5)
    # softmax over 16 positions with one logit at 10: max prob ~ 0.9993 > 0.5
    assert sched.update(_peaked_maps(10.0)) == pytest.approx(1.05)
    assert sched.update(_peaked_maps(10.0)) == pytest.approx(1.05**2)
    assert float(sched.value) == pytest.approx(1.05**2)
    assert "value" in sched.state_dict()


def test_temperature_schedule_unchanged_when_flat_disabled_or_eval():
    sched = TemperatureSchedule(1.0, 1.05, 0.5)
    assert sched.update(_peaked_maps(1.0)) == 1.0  # max prob ~ 0.15
    sched.eval()
    assert sched.update(_peaked_maps(10.0)) == 1.0
    off = TemperatureSchedule(2.0, 1.05, 0.5, enabled=False)
    assert off.update(_peaked_maps(10.0)) == 2.0


def test_temperature_schedule_uses_current_temperature():
    # At T = 10 the peak of 10 gives max prob e / (e + 15) ~ 0.15 < 0.5: no further growth.
    sched = TemperatureSchedule(10.0, 1.05, 0.5)
    assert sched.update(_peaked_maps(10.0)) == 10.0


# ---------------------------------------------------------------------------------------------
# The BCKD module

S_CH, T_CH = [4, 6, 8], [5, 7, 9]
INPUT_HW = (32, 40)  # grid_stride 4 -> an 8 x 10 grid, enough for radius 3


def _small_cfg(**kw) -> BCKDConfig:
    base = {"grid_stride": 4, "radius": 3, "fusion_dim": 8, "chunk": 32}
    return BCKDConfig(**{**base, **kw})


def _features(seed: int = 0, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    h, w = INPUT_HW
    strides = (4, 8, 16)
    sf = [
        torch.randn(2, c, h // s, w // s, generator=g).requires_grad_(True) for c, s in zip(S_CH, strides, strict=True)
    ]
    tf = [torch.randn(2, c, h // s, w // s, generator=g) for c, s in zip(T_CH, strides, strict=True)]
    sl = torch.randn(2, classes, h // 4, w // 4, generator=g).requires_grad_(True)
    tl = torch.randn(2, classes, h, w, generator=g)
    return sf, tf, sl, tl


CHOICE_CASES = [(name, value) for name, values in BCKD_CHOICES.items() for value in values]
# Choices that only act together with others (alone they are refused: see test_refused_combinations).
COMPANIONS = {("delta", "hard_ste"): {"softmax_input": "prob", "boundary_teacher": "conv"}}


@pytest.mark.parametrize(("name", "value"), CHOICE_CASES, ids=[f"{n}={v}" for n, v in CHOICE_CASES])
def test_every_choice_runs_forward_and_backward(name, value):
    torch.manual_seed(0)
    bckd = BCKD(_small_cfg(**{name: value}, **COMPANIONS.get((name, value), {})), S_CH, T_CH)
    bckd.check_input(INPUT_HW)
    sf, tf, sl, tl = _features()
    out = bckd(sf, tf, sl, tl, INPUT_HW)
    assert set(out) == {"boundary", "context", "temperature", "teacher_boundary_std"}
    for key in ("boundary", "context"):
        assert out[key].dim() == 0 and torch.isfinite(out[key])
        assert float(out[key].detach()) >= -1e-6
    (out["boundary"] + out["context"]).backward()
    trainable = [p for p in bckd.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert all(f.grad is not None for f in sf)  # the student's features are trained
    if name == "boundary_teacher" and value == "conv":
        assert not bckd.teacher_boundary_head.weight.requires_grad
    if name == "boundary_teacher" and value == "trainable":
        assert bckd.teacher_boundary_head.weight.grad is not None


@pytest.mark.parametrize(("boundary", "context"), [(True, False), (False, True)])
def test_ablation_switches(boundary, context):
    bckd = BCKD(_small_cfg(boundary=boundary, context=context), S_CH, T_CH)
    sf, tf, sl, tl = _features()
    out = bckd(sf, tf, sl, tl, INPUT_HW)
    assert ("boundary" in out) == boundary and ("context" in out) == context


def test_semantic_student_boundary_is_zero_at_identical_logits():
    bckd = BCKD(_small_cfg(boundary_student="semantic", context=False), S_CH, T_CH)
    assert bckd.boundary_head is None
    sf, tf, _, tl = _features()
    sl = tl.clone().requires_grad_(True)
    out = bckd(sf, tf, sl, tl, INPUT_HW)
    out["boundary"].backward()
    assert abs(float(out["boundary"].detach())) < 1e-6
    assert sl.grad.abs().max() < 1e-6


def test_context_is_zero_with_identity_psi_and_equal_features():
    # One stage on each side -> C_s = C_t = fusion_dim, so Psi_s can be the identity 1x1 conv.
    bckd = BCKD(_small_cfg(boundary=False, relation="cosine"), [8], [8])
    with torch.no_grad():
        bckd.psi_s.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
        bckd.psi_s.bias.zero_()
    f = torch.randn(2, 8, 6, 7)
    fs = f.clone().requires_grad_(True)
    loss = bckd._context(fs, f)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-5
    assert fs.grad.abs().max() < 1e-5


def test_too_small_input_fails_up_front():
    bckd = BCKD(_small_cfg(radius=5), S_CH, T_CH)
    with pytest.raises(ConfigError, match=r"too small for boundary radius 5.*--bckd radius=3"):
        bckd.check_input((16, 64))  # a 4 x 16 grid
    BCKD(_small_cfg(boundary_repr="pixel", radius=5), S_CH, T_CH).check_input((16, 64))  # no paths: fine


@pytest.mark.parametrize("name", list(BCKD_CHOICES))
def test_invalid_choice_lists_allowed_values(name):
    with pytest.raises(ConfigError) as info:
        BCKDConfig(**{name: "nope"})
    msg = str(info.value)
    assert f"{name}='nope'" in msg
    assert all(v in msg for v in BCKD_CHOICES[name])


@pytest.mark.parametrize("bad", [{"radius": 0}, {"grid_stride": 0}, {"temperature": 0.0}, {"teacher_tau": -1.0}])
def test_invalid_numbers(bad):
    with pytest.raises(ConfigError):
        BCKDConfig(**bad)


def test_from_overrides_parses_types():
    cfg = BCKDConfig.from_overrides(
        {"radius": "3", "alpha": "2.5", "decay": "no", "context": "True", "relation": "dot"}, beta=7.0
    )
    assert cfg.radius == 3 and isinstance(cfg.radius, int)
    assert cfg.alpha == 2.5 and cfg.beta == 7.0
    assert cfg.decay is False and cfg.context is True
    assert cfg.relation == "dot"
    assert BCKDConfig.from_overrides({}) == BCKDConfig()
    # Every field type is one the parser knows.
    assert {f.type for f in fields(BCKDConfig)} <= {"bool", "int", "float", "str"}


def test_from_overrides_rejects_unknown_key_and_bad_values():
    with pytest.raises(ConfigError, match=r"Unknown BCKD option 'radus'.*Did you mean 'radius'\?"):
        BCKDConfig.from_overrides({"radus": "3"})
    with pytest.raises(ConfigError, match=r"radius='three'.*int"):
        BCKDConfig.from_overrides({"radius": "three"})
    with pytest.raises(ConfigError, match=r"decay='maybe'.*bool"):
        BCKDConfig.from_overrides({"decay": "maybe"})
    with pytest.raises(ConfigError, match="Allowed: pairwise, pixel"):
        BCKDConfig.from_overrides({"boundary_repr": "dense"})


def test_relation_kl_closed_form_gradients_match_autograd_with_and_without_masks():
    """The Gram backward (dQ = Q (dG + dG^T)) and the row-KL closed form (w (p_s - p_t)) against a plain autograd
    chain of the same equations, single block and row-chunked, with padded columns and rows masked out."""
    from bckd_pipeline.distill.losses import MASKED_LOGIT, relation_kl

    def _mask_columns(logits, keep):
        return logits.masked_fill(~keep[:, None, :], MASKED_LOGIT)

    def reference(qs, qt, valid):
        n, _, length = qs.shape
        keep = None if valid is None else valid.reshape(n, length)
        ls = torch.einsum("ncl,ncm->nlm", qs, qs) * 0.5
        lt = torch.einsum("ncl,ncm->nlm", qt, qt) * 0.8
        if keep is not None:
            ls, lt = _mask_columns(ls, keep), _mask_columns(lt, keep)
        log_ps, log_pt = ls.log_softmax(-1), lt.log_softmax(-1)
        row = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
        return row.mean() if keep is None else (row * keep).sum() / keep.sum()

    torch.manual_seed(0)
    # 20 positions: one bmm; 140 (at least 32 per block): the CPU's symmetric block Gram, with a short last block.
    cases = [
        (masked, chunk, grid)
        for masked in (False, True)
        for chunk, grid in ((512, (4, 5)), (7, (4, 5)), (512, (10, 14)))
    ]
    for masked, chunk, (h, w) in cases:
        valid = torch.rand(3, 1, h, w) > 0.3 if masked else None
        qs = torch.randn(3, 6, h * w, dtype=torch.float64, requires_grad=True)
        qt = torch.randn(3, 9, h * w, dtype=torch.float64)
        got = relation_kl(qs, qt, student_scale=0.5, teacher_scale=0.8, chunk=chunk, valid=valid)
        (g_got,) = torch.autograd.grad(got, qs)
        want = reference(qs, qt, valid)
        (g_want,) = torch.autograd.grad(want, qs)
        torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-5)  # the logits are taken in float32
        torch.testing.assert_close(g_got, g_want, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("length", [128, 140, 192, 203])
def test_block_gram_equals_one_product_and_is_symmetric(length):
    from bckd_pipeline.distill.losses import gram

    q = torch.randn(2, 33, length, generator=torch.Generator().manual_seed(length))
    got = gram(q)
    torch.testing.assert_close(got, torch.bmm(q.transpose(1, 2), q), atol=1e-4, rtol=1e-5)
    assert torch.equal(got, got.transpose(1, 2))


def test_bckd_fast_paths_give_the_same_numbers():
    """2x2 pooling as strided adds equals adaptive pooling; the teacher fusion normalised over the whole
    concatenation in one pass equals unit_channels of the fusion, all-zero stage positions included."""
    from bckd_pipeline.distill.bckd import TeacherFusion, _resize, unit_channels

    torch.manual_seed(0)
    for shape in [(2, 3, 24, 32), (2, 3, 24, 16), (2, 3, 12, 32), (2, 3, 48, 64)]:
        x = torch.randn(*shape)
        want = torch.nn.functional.adaptive_avg_pool2d(x, (12, 16))
        torch.testing.assert_close(_resize(x, (12, 16)), want, atol=1e-6, rtol=1e-6)
    feats = [torch.randn(2, 5, 24, 32), torch.randn(2, 7, 12, 16)]
    feats[1][0, :, 3, 4] = 0  # a position where one stage is all zero
    fusion = TeacherFusion([5, 7], 4, "normalized", torch.Generator())
    torch.testing.assert_close(fusion(feats, (12, 16), unit=True), unit_channels(fusion(feats, (12, 16))))


def test_bckd_joint_readout_equals_the_two_modules(monkeypatch):
    """The boundary head and Psi_s run as one stacked convolution: the same terms, and the same gradients for
    both modules' parameters and the student features, as running them one after the other."""
    from bckd_pipeline.configs import BCKDConfig
    from bckd_pipeline.distill.bckd import BCKD

    cfg = BCKDConfig(grid_stride=4, radius=3, fusion_dim=8, chunk=16)
    bckd = BCKD(cfg, [6, 10], [12, 8]).train()
    g = torch.Generator().manual_seed(3)
    student = [torch.randn(2, 6, 8, 10, generator=g), torch.randn(2, 10, 4, 5, generator=g)]
    teacher = [torch.randn(2, 12, 8, 10, generator=g), torch.randn(2, 8, 4, 5, generator=g)]
    logits = [torch.randn(2, 3, 32, 40, generator=g) for _ in range(2)]

    def terms_and_grads():
        feats = [f.clone().requires_grad_() for f in student]
        bckd.zero_grad()
        out = bckd(feats, teacher, *logits, (32, 40))
        (out["boundary"] + out["context"]).backward()
        grads = {name: p.grad.clone() for name, p in bckd.named_parameters() if p.grad is not None}
        return out, grads, [f.grad for f in feats]

    assert bckd._joint_readout
    joint, joint_grads, joint_feat_grads = terms_and_grads()
    monkeypatch.setattr(BCKD, "_joint_readout", property(lambda self: False))
    apart, apart_grads, apart_feat_grads = terms_and_grads()
    for term in ("boundary", "context"):
        torch.testing.assert_close(joint[term], apart[term])
    assert joint_grads.keys() == apart_grads.keys() and {"boundary_head.weight", "psi_s.weight"} <= joint_grads.keys()
    for name in joint_grads:
        torch.testing.assert_close(joint_grads[name], apart_grads[name], msg=name)
    for a, b in zip(joint_feat_grads, apart_feat_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_kd_and_relation_ignore_invalid_positions():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g)
    valid = torch.ones(2, 1, 5, 6, dtype=torch.bool)
    valid[:, :, 3:] = False
    junk_s, junk_t = s.clone(), t.clone()
    junk_s[:, :, 3:], junk_t[:, :, 3:] = 100.0, -100.0
    torch.testing.assert_close(kd_loss(junk_s, junk_t, valid=valid), kd_loss(s[:, :, :3], t[:, :, :3]))
    q = dict(student_scale=2.0, teacher_scale=3.0, chunk=7)
    torch.testing.assert_close(
        relation_kl(junk_s, junk_t, valid=valid, **q), relation_kl(s[:, :, :3], t[:, :, :3], **q), rtol=1e-5, atol=0
    )
