"""What BCKD is fed and how: padded crops masked out of every term, the identity and normalised teacher fusions,
the teachers' semantic taps, gradient-norm logging and balancing, CWD at the head's native stride, one teacher
softmax shared by KD and the semantic boundary, and refused option combinations."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bckd_pipeline.data.base import PAD_LABEL
from bckd_pipeline.configs import BCKDConfig, DistillConfig
from bckd_pipeline.distill.bckd import BCKD, TeacherFusion
from bckd_pipeline.distill.losses import cwd_loss, relation_kl
from bckd_pipeline.distill.models import build_model, default_taps, native_logits_tap
from bckd_pipeline.distill.task import SegDistillTask, StepInfo
from bckd_pipeline.errors import ConfigError

S_CH, T_CH = [6, 10], [12, 8]


def _cfg(**kw) -> BCKDConfig:
    return BCKDConfig(**{"grid_stride": 4, "radius": 3, "fusion_dim": 8, "chunk": 16, **kw})


def _crop_and_padded(seed: int, rows: slice, cols: slice, padded_hw=(40, 48), crop_hw=(24, 32)):
    """Grid-level features of a crop, and the same crop placed at (rows, cols) of a larger input whose
    other positions hold junk. Stage features are at the grid (stride 4) so fusion is a pure concat."""
    g = torch.Generator().manual_seed(seed)
    gh, gw = crop_hw[0] // 4, crop_hw[1] // 4
    ph, pw = padded_hw[0] // 4, padded_hw[1] // 4
    grid_rows = slice(rows.start // 4, rows.start // 4 + gh)
    grid_cols = slice(cols.start // 4, cols.start // 4 + gw)

    def pair(c, at_pixels=False):
        small = torch.randn(1, c, *(crop_hw if at_pixels else (gh, gw)), generator=g)
        big = torch.randn(1, c, *(padded_hw if at_pixels else (ph, pw)), generator=g) * 5
        r, cc = (rows, cols) if at_pixels else (grid_rows, grid_cols)
        big[..., r, cc] = small
        return small, big

    sf = [pair(c) for c in S_CH]
    tf = [pair(c) for c in T_CH]
    sl = pair(3)
    tl = pair(3, at_pixels=True)
    valid = torch.zeros(1, 1, *padded_hw, dtype=torch.bool)
    valid[..., rows, cols] = True
    crop = ([a for a, _ in sf], [a for a, _ in tf], sl[0], tl[0])
    padded = ([b for _, b in sf], [b for _, b in tf], sl[1], tl[1])
    return crop, padded, valid


@pytest.mark.parametrize("where", ["bottom-right", "bottom-left (flipped)"])
@pytest.mark.parametrize("options", [{}, {"boundary_student": "semantic"}, {"boundary_repr": "pixel"}])
def test_padded_crop_changes_no_bckd_term_when_masked(where, options):
    cols = slice(0, 32) if where == "bottom-right" else slice(16, 48)
    crop, padded, valid = _crop_and_padded(0, slice(0, 24), cols)
    torch.manual_seed(0)  # the module's initial weights: the leak check below compares against fixed values
    bckd = BCKD(_cfg(**options), S_CH, T_CH).eval()  # eval: BatchNorm must not pool the padding's statistics
    alone = bckd(*crop, (24, 32))
    masked = bckd(*padded, (40, 48), valid)
    for term in ("boundary", "context"):
        # A KL sums p (log p_t - log p_s) over nearly equal log-probabilities: float32 rounding of the softmaxes,
        # which differs between the padded and the cropped grid (other row lengths), reaches about 2e-5 of it.
        torch.testing.assert_close(masked[term], alone[term], rtol=1e-4, atol=1e-7)
    # The same padded input without the mask sees the junk: the test can fail.
    unmasked = BCKD(_cfg(mask_padding=False, **options), S_CH, T_CH).eval()
    unmasked.load_state_dict(bckd.state_dict())
    leaked = unmasked(*padded, (40, 48), valid)
    assert abs(float(leaked["context"].detach()) - float(alone["context"].detach())) > 1e-3
    assert abs(float(leaked["boundary"].detach()) - float(alone["boundary"].detach())) > 1e-4


def test_identity_fusion_leaves_the_relation_of_equal_features_unchanged():
    f = torch.randn(2, 12, 6, 8)
    gen = torch.Generator().manual_seed(0)
    identity = TeacherFusion([12], 4, "identity", gen)
    assert torch.equal(identity([f], (6, 8)), f)
    q = dict(student_scale=10.0, teacher_scale=10.0)
    fused = torch.nn.functional.normalize(identity([f], (6, 8)), dim=1)
    raw = torch.nn.functional.normalize(f, dim=1)
    assert float(relation_kl(fused, raw, **q)) == pytest.approx(0.0, abs=1e-7)
    # A frozen random projection (the "frozen" option) moves the cosines: the relation is not the teacher's.
    frozen = torch.nn.functional.normalize(TeacherFusion([12], 4, "frozen", gen)([f], (6, 8)), dim=1)
    assert float(relation_kl(frozen, raw, **q)) > 1e-3
    # The default (per-stage normalisation) keeps a single stage's cosine relation exactly.
    assert BCKDConfig().teacher_fusion == "normalized"
    normalized = TeacherFusion([12], 4, "normalized", gen)([f], (6, 8))
    assert float(relation_kl(normalized, raw, **q)) == pytest.approx(0.0, abs=1e-7)


def test_normalized_fusion_weighs_every_stage_equally():
    a, b = torch.randn(1, 3, 4, 4) * 100, torch.randn(1, 5, 4, 4)
    fused = TeacherFusion([3, 5], 4, "normalized", torch.Generator())([a, b], (4, 4))
    norms = fused.norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, 2**0.5))


def test_teacher_taps_reach_the_decoder_and_students_tap_the_encoder():
    assert default_taps("pspnet-r50", role="teacher") == ["encoder", "decoder"]
    assert default_taps("deeplabv3plus-mbv2") == ["encoder"]
    assert default_taps("tiny-teacher", role="teacher")[-1] == "fuse"
    model = build_model("pspnet-r18", 4)
    assert native_logits_tap(model) == "segmentation_head.0"
    assert native_logits_tap(build_model("tiny-student", 4)) == "head"
    assert native_logits_tap(torch.nn.Conv2d(3, 4, 1)) is None


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"delta": "hard_ste", "softmax_input": "logit"}, "does nothing with softmax_input=logit"),
        ({"delta": "hard_ste", "softmax_input": "prob"}, "gives an all-zero teacher map"),
        ({"balance_context": 0.0}, "target ratios"),
    ],
)
def test_silent_combinations_are_refused(options, expected):
    with pytest.raises(ConfigError, match=expected):
        BCKDConfig(**options)


def test_no_bckd_term_is_refused_only_when_bckd_is_used():
    off = BCKDConfig(boundary=False, context=False)
    with pytest.raises(ConfigError, match="leave BCKD with no term"):
        DistillConfig(kd="kd+bckd", bckd=off)
    assert DistillConfig(kd="kd", bckd=off).terms == {"kd"}


def test_semantic_student_boundary_without_context_has_no_idle_parameters():
    """Before: the student fusion ran without a gradient, which DDP rejects at the second step."""
    bckd = BCKD(_cfg(boundary_student="semantic", context=False), S_CH, T_CH)
    assert bckd.student_fusion is None
    assert not [p for p in bckd.parameters() if p.requires_grad]


def _task(kd: str, **bckd_options) -> SegDistillTask:
    torch.manual_seed(0)
    student, teacher = build_model("tiny-student", 3), build_model("tiny-teacher", 3)
    return SegDistillTask(
        student,
        teacher,
        cfg=DistillConfig(kd=kd, bckd=_cfg(**bckd_options)),
        student_taps=default_taps("tiny-student"),
        teacher_taps=default_taps("tiny-teacher", role="teacher"),
        example_input=torch.randn(2, 3, 32, 32),
    )


def _batch():
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (2, 32, 32), generator=g)
    masks[:, 24:] = PAD_LABEL
    return torch.randn(2, 3, 32, 32, generator=g), masks


def test_gradient_norms_are_reported_on_measured_steps_only():
    task = _task("kd+bckd").train()
    images, masks = _batch()
    quiet = task(images, masks, StepInfo(0, 10, 2, 8))
    assert not [k for k in quiet if k.startswith("grad/")]
    out = task(images, masks, StepInfo(0, 10, 2, 8, measure_grads=True))
    assert {"grad/ce", "grad/kd", "grad/boundary", "grad/context"} <= set(out)
    assert all(float(out[k]) > 0 for k in out if k.startswith("grad/"))
    out["loss"].backward()  # the measurement retained the graph; the real backward still works


def test_cwd_uses_the_native_stride_logits():
    task = _task("cwd").eval()  # eval: a second forward must give the same logits
    images, _ = _batch()
    seen = {}
    task.student.head.register_forward_hook(lambda m, i, o: seen.__setitem__("student", o))
    task.teacher.model.head.register_forward_hook(lambda m, i, o: seen.__setitem__("teacher", o))
    out = task(images, torch.zeros(2, 32, 32, dtype=torch.long), StepInfo(0, 10, 2, 8))
    assert seen["student"].shape[-2:] == (8, 8)  # TinySegNet's head sits at stride 4 of a 32 x 32 input
    expected = cwd_loss(seen["student"], seen["teacher"], 1.0)
    torch.testing.assert_close(out["loss/cwd"], expected)
    assert DistillConfig().cwd_weight == 5.0 and DistillConfig().cwd_temperature == 1.0


def test_grad_balance_sets_each_weight_to_its_target_ratio():
    task = _task("bckd", balance="grad", balance_boundary=0.5, balance_context=0.25, balance_iters=2).train()
    images, masks = _batch()
    for it in range(3):
        out = task(images, masks, StepInfo(it, 10, 2, 8, measure_grads=True))
    assert int(task.bckd.balance_seen) == 2 and not task.bckd.balancing
    # After balancing, the measured weighted norms sit at the targets (same batch, weights frozen;
    # the model did not move: no optimizer step ran).
    ce = float(out["grad/ce"])
    assert float(out["grad/boundary"]) == pytest.approx(0.5 * ce, rel=1e-4)
    assert float(out["grad/context"]) == pytest.approx(0.25 * ce, rel=1e-4)
    assert float(out["bckd/alpha"]) != 10.0
    state = task.bckd.state_dict()
    assert "term_weights" in state and "balance_seen" in state  # a resumed run keeps them


def test_kd_and_the_semantic_boundary_share_one_teacher_softmax(monkeypatch):
    """With logit KD at T = 1 and the semantic teacher boundary, the task computes the teacher's probabilities
    once for both: the same terms as each computing its own."""
    task = _task("kd+bckd").eval()  # eval: two forwards must see the same BatchNorm statistics
    images, masks = _batch()  # padded rows: the masked path too
    assert task._shared_teacher_probs(*[torch.randn(2, 3, 8, 8)] * 2) is not None
    shared = task(images, masks)
    monkeypatch.setattr(SegDistillTask, "_shared_teacher_probs", lambda self, *_: None)
    separate = task(images, masks)
    for key in ("loss/kd", "loss/boundary", "loss/context", "loss"):
        torch.testing.assert_close(shared[key], separate[key], msg=key)
    # At another temperature KD's probabilities are not the boundary's: nothing is shared.
    monkeypatch.undo()
    warm = _task("kd+bckd")
    warm.cfg = dataclasses.replace(warm.cfg, kd_temperature=4.0)
    assert warm._shared_teacher_probs(*[torch.randn(2, 3, 8, 8)] * 2) is None


# The boundary term against the paper (docs/bckd.md, "Boundary term: paper vs code"): each test pins a reading.


def test_boundary_maps_at_a_96x128_input_have_8x8_sources_on_the_12x16_grid():
    """Eq. (2) over IRNet's half-disc, not over every pair: with the defaults (grid_stride 8, radius 5) a 96 x 128
    input gives a 12 x 16 grid whose sources are cropped to 8 x 8, a third of the grid, each with 34 paths."""
    cfg = BCKDConfig(boundary=True, context=False)
    bckd = BCKD(cfg, S_CH, T_CH)
    assert bckd.grid((96, 128)) == (12, 16)
    bckd.check_input((96, 128))
    maps = bckd.paths(torch.randn(2, 1, 12, 16))
    assert maps.shape == (2, 34, 8, 8)


def test_default_spatial_softmax_reads_the_path_max_logits():
    """Eq. (3)'s softmax runs over the max logit along each path (softmax_input="logit"), not over the paper's
    delta(.) in [0, 1]: the maps are the path maxima themselves."""
    bckd = BCKD(_cfg(context=False), S_CH, T_CH)
    assert bckd.cfg.softmax_input == "logit" and BCKDConfig().softmax_input == "logit"
    z = torch.randn(2, 1, 6, 8)
    torch.testing.assert_close(bckd._maps(z), bckd.paths(z))


def test_semantic_teacher_map_reads_the_teacher_probabilities_not_its_features():
    """boundary_teacher="semantic" (the default): B^t comes from the teacher's class probabilities, so L_b does
    not move when the teacher's features do, and does when its logits do."""
    torch.manual_seed(0)
    bckd = BCKD(_cfg(context=False), S_CH, T_CH).eval()
    assert BCKDConfig().boundary_teacher == "semantic"
    g = torch.Generator().manual_seed(1)
    sf = [torch.randn(2, c, 6, 8, generator=g) for c in S_CH]
    tf = [torch.randn(2, c, 6, 8, generator=g) for c in T_CH]
    sl, tl = torch.randn(2, 3, 6, 8, generator=g), torch.randn(2, 3, 24, 32, generator=g)
    base = bckd(sf, tf, sl, tl, (24, 32))["boundary"]
    other_feats = bckd(sf, [f * 3 + 1 for f in tf], sl, tl, (24, 32))["boundary"]
    other_logits = bckd(sf, tf, sl, tl * 10, (24, 32))["boundary"]  # sharper class probabilities
    torch.testing.assert_close(base, other_feats)
    assert abs(float(base - other_logits)) > 0.02 * float(base)


def test_boundary_temperature_follows_the_max_probability_rule_not_the_range():
    """The paper's T grows "whenever the range of values ... exceeds" a lost threshold; the code follows Phuong &
    Lampert's code (T x 1.05 when the teacher's mean max-probability exceeds 0.5). Two equal peaks give a range of
    200 but a max-probability of exactly 0.5: T stays; one peak makes it grow."""
    from bckd_pipeline.distill.losses import TemperatureSchedule

    two_peaks = torch.full((1, 1, 4, 4), -100.0)
    two_peaks[..., 0, 0] = two_peaks[..., 3, 3] = 100.0
    schedule = TemperatureSchedule()
    assert schedule.update(two_peaks) == 1.0
    one_peak = torch.full((1, 1, 4, 4), -100.0)
    one_peak[..., 0, 0] = 100.0
    assert schedule.update(one_peak) == pytest.approx(1.05)
