"""Training precision: what --train-precision resolves to on each CPU and GPU, and the losses' fp32 islands.

Under bf16 autocast a convolution's output is bf16, so every loss is fed bf16 tensors. The losses compute in fp32
whatever autocast is active (``in_fp32``, ``full_precision``): given bf16 inputs under autocast, each loss equals
the fp32 loss of the same inputs (the inputs' rounding to bf16 is the network's business, not the loss's). The
tolerances below are stated per loss; the relation losses run their Gram products in the autocast dtype on
purpose (the costly part), so theirs is looser.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bckd_pipeline.configs import BCKDConfig, TrainConfig
from bckd_pipeline.distill import trainer
from bckd_pipeline.distill.bckd import BCKD, unit_channels
from bckd_pipeline.distill.losses import (
    PairwiseBoundary,
    cwd_loss,
    kd_loss,
    relation_kl,
    relation_mse,
    semantic_boundary,
    spatial_kl,
)
from bckd_pipeline.distill.trainer import resolve_precision
from bckd_pipeline.errors import ConfigError
from bckd_pipeline.machine import cpu_facts, native_bf16

AVX512_BF16 = {"model": "AMD EPYC", "isa": ["AVX2", "AVX-512", "AVX512-VNNI", "AVX512-BF16"]}
AMX = {"model": "Intel Xeon", "isa": ["AVX2", "AVX-512", "AMX", "AMX-BF16"]}
AVX2_ONLY = {"model": "Intel Core", "isa": ["AVX2", "FMA"]}


# --- what auto and bf16 resolve to ---------------------------------------------------------------------------------


def test_native_bf16_is_read_from_cpuinfo_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n")
    cpu = cpu_facts(info)
    assert native_bf16(cpu) == ["AVX512-BF16"] == cpu["bf16_native"]
    info.write_text("model name\t: Intel Xeon\nflags\t\t: avx2 amx_tile amx_bf16 amx_int8\n")
    assert native_bf16(cpu_facts(info)) == ["AMX-BF16"]
    info.write_text("model name\t: Intel Core\nflags\t\t: avx2 fma\n")
    assert native_bf16(cpu_facts(info)) == []


@pytest.mark.parametrize("cpu", [AVX512_BF16, AMX])
def test_auto_on_a_native_bf16_cpu_follows_the_policy(cpu):
    cfg = TrainConfig(device="cpu", precision="auto")
    held = resolve_precision(cfg, cpu, auto_bf16_on_cpu=False)
    assert held.used == "fp32" and held.dtype is None and "docs/decisions.md" in held.reason
    assert native_bf16(cpu)[0] in held.reason
    granted = resolve_precision(cfg, cpu, auto_bf16_on_cpu=True)
    assert granted.used == "bf16" and granted.dtype is torch.bfloat16 and native_bf16(cpu)[0] in granted.reason


def test_auto_follows_the_module_policy_constant(monkeypatch):
    cfg = TrainConfig(device="cpu")
    monkeypatch.setattr(trainer, "CPU_AUTO_BF16", True)
    assert resolve_precision(cfg, AVX512_BF16).used == "bf16"
    monkeypatch.setattr(trainer, "CPU_AUTO_BF16", False)
    assert resolve_precision(cfg, AVX512_BF16).used == "fp32"


def test_auto_without_native_bf16_is_fp32_whatever_the_policy():
    p = resolve_precision(TrainConfig(device="cpu"), AVX2_ONLY, auto_bf16_on_cpu=True)
    assert p.used == "fp32" and "without native bf16" in p.reason and not p.slower_than_fp32


def test_bf16_on_a_cpu_without_native_bf16_is_granted_and_says_it_is_slower():
    p = resolve_precision(TrainConfig(device="cpu", precision="bf16"), AVX2_ONLY)
    assert p.used == "bf16" and p.slower_than_fp32 and "slower than in fp32" in p.reason
    native = resolve_precision(TrainConfig(device="cpu", precision="bf16"), AVX512_BF16)
    assert native.used == "bf16" and not native.slower_than_fp32


def test_fp32_and_fp16_on_the_cpu():
    assert resolve_precision(TrainConfig(device="cpu", precision="fp32"), AVX512_BF16).used == "fp32"
    with pytest.raises(ConfigError, match="fp16 needs --train-device cuda"):
        TrainConfig(device="cpu", precision="fp16")


@pytest.mark.parametrize(("supported", "used"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_reads_the_gpu(monkeypatch, supported, used):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    p = resolve_precision(TrainConfig(device="cuda"), AVX2_ONLY)
    assert p.used == used and p.as_dict() == {"used": used, "reason": p.reason}


def test_bf16_training_on_the_cpu_records_its_precision_and_saves_fp32_weights(monkeypatch):
    """The training step runs under bf16 autocast; the trained weights (what the checkpoint and every deploy
    stage load) stay fp32, and evaluation runs outside autocast."""
    from torch.utils.data import TensorDataset

    from bckd_pipeline.distill.models import build_model
    from bckd_pipeline.distill.task import SegTrainTask

    monkeypatch.setattr(trainer, "resolve_precision", lambda cfg: trainer.TrainPrecision("bf16", "test"))
    torch.manual_seed(0)
    model = build_model("tiny-student", 3)
    data = TensorDataset(torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4, 32, 32)))
    seen = {}
    real_forward = model.forward

    def forward(x):
        seen.setdefault("dtype", torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return real_forward(x)

    model.forward = forward

    def evaluate() -> float:
        seen["eval_autocast"] = torch.is_autocast_enabled("cpu")
        return 1.0

    cfg = TrainConfig(iters=2, batch_size=2, num_workers=0, precision="bf16")
    result = trainer.train(SegTrainTask(model), data, cfg, evaluate=evaluate, save_best=lambda *a: None, progress=False)
    assert seen == {"dtype": torch.bfloat16, "eval_autocast": False}
    assert result.precision == {"used": "bf16", "reason": "test"}
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())


# --- the losses' fp32 islands --------------------------------------------------------------------------------------


def _bf16(*shape, scale=1.0, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).bfloat16()


def _both(fn, *inputs):
    """(loss and input gradients under bf16 autocast with the bf16 inputs, the same in fp32 from those inputs)."""
    out = []
    for autocast in (True, False):
        leaves = [(x if autocast else x.float()).detach().requires_grad_(i == 0) for i, x in enumerate(inputs)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = fn(*leaves)
        (grad,) = torch.autograd.grad(loss, leaves[0])
        out.append((loss.detach(), grad.float()))
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


GRAD_TOL = 1e-4
LOGITS = (8, 11, 24, 32)
PATH = PairwiseBoundary(5)
CASES = {
    # name: (loss of (student, teacher), student input, teacher input, relative tolerance on the loss[, gradient])
    "kd": (lambda s, t: kd_loss(s, t), _bf16(*LOGITS, scale=3), _bf16(*LOGITS, scale=3, seed=1), 1e-5),
    "kd_T4": (lambda s, t: kd_loss(s, t, 4.0), _bf16(*LOGITS, scale=3), _bf16(*LOGITS, scale=3, seed=1), 1e-5),
    "cwd": (lambda s, t: cwd_loss(s, t), _bf16(*LOGITS, scale=3), _bf16(*LOGITS, scale=3, seed=1), 1e-5),
    "boundary_path_max": (
        lambda s, t: spatial_kl(PATH(s), PATH(t)),
        _bf16(8, 1, 12, 16, scale=2),
        _bf16(8, 1, 12, 16, scale=2, seed=1),
        1e-5,
    ),
    "semantic_boundary": (
        lambda s, t: F.mse_loss(semantic_boundary(s), semantic_boundary(t)),
        _bf16(8, 11, 12, 16, scale=3).float().softmax(1).bfloat16(),
        _bf16(8, 11, 12, 16, scale=3, seed=1).float().softmax(1).bfloat16(),
        1e-5,
    ),
    # The Gram products run in the autocast dtype (the costly part, as on CUDA); the row softmaxes and the KL in fp32.
    # At the default relation_tau 0.1 (logits up to 10) the products' bf16 rounding moves the loss by about 0.15%
    # and its gradient by about 5% (norm of the difference over the norm).
    "relation_kl": (
        lambda s, t: relation_kl(s, t, student_scale=10.0, teacher_scale=10.0),
        unit_channels(_bf16(4, 64, 12, 16).float()).bfloat16(),
        unit_channels(_bf16(4, 64, 12, 16, seed=1).float()).bfloat16(),
        2e-3,
        6e-2,
    ),
    "relation_mse": (
        lambda s, t: relation_mse(s, t, student_scale=1.0, teacher_scale=1.0),
        unit_channels(_bf16(4, 64, 12, 16).float()).bfloat16(),
        unit_channels(_bf16(4, 64, 12, 16, seed=1).float()).bfloat16(),
        1e-4,
        5e-3,
    ),
    # Autocast itself casts cross-entropy's input to fp32 (its fp32 op list, on the CPU and on CUDA).
    "cross_entropy": (
        lambda s, t: F.cross_entropy(s, t.float().argmax(1)),
        _bf16(*LOGITS, scale=3),
        _bf16(*LOGITS, scale=3, seed=1),
        1e-5,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_loss_under_bf16_autocast_equals_its_fp32_value(name):
    fn, student, teacher, tol, *grad_tol = CASES[name]
    (loss, grad), (ref, ref_grad) = _both(fn, student, teacher)
    assert loss.dtype == torch.float32, f"{name} returned {loss.dtype} under autocast"
    assert _rel(loss, ref) < tol, (name, float(loss), float(ref))
    # The gradient reaches the network's bf16 tensor rounded to bf16, as any gradient of a bf16 activation is.
    got = _rel(grad, ref_grad.bfloat16())
    assert got < (grad_tol[0] if grad_tol else GRAD_TOL), (name, got)


def test_the_bckd_boundary_term_runs_its_path_max_and_softmax_in_fp32():
    """BCKD's own boundary path (head logits in bf16 from the autocast convolution, a semantic teacher map)."""
    bckd = BCKD(BCKDConfig(grid_stride=4, radius=3, fusion_dim=8, context=False), [6, 10], [12, 8]).train()
    zs = _bf16(4, 1, 12, 16, scale=2)
    t_logits = _bf16(4, 5, 48, 64, scale=3, seed=1).float()
    values = []
    for autocast in (True, False):
        z = (zs if autocast else zs.float()).detach().requires_grad_(True)
        bckd.temperature.value.fill_(1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = bckd._boundary(None, None, None, t_logits, (12, 16), None, zs=z)
        (grad,) = torch.autograd.grad(out["boundary"], z)
        values.append((out["boundary"].detach(), grad.float()))
    (loss, grad), (ref, ref_grad) = values
    assert loss.dtype == torch.float32 and _rel(loss, ref) < 1e-5 and _rel(grad, ref_grad.bfloat16()) < GRAD_TOL


# --- where the choice is recorded ----------------------------------------------------------------------------------


def test_the_run_summary_and_the_report_carry_the_distilled_students_precision(tmp_path):
    from bckd_pipeline.distill.cached import summarize
    from bckd_pipeline.report.markdown import distillation_line

    chosen = {"used": "bf16", "reason": "--train-precision bf16 on a CPU with native bf16 (AVX512-BF16)"}
    distilled = {"miou": 60.0, "kd": "kd+bckd", "teacher_model": "t", "model": "s", "boundary_f": {}, "lhd": {}}
    summary = summarize({"miou": 70.0}, {"model": "s", "miou": 50.0}, {**distilled, "train_precision": chosen},
                        tmp_path / "t.pt", tmp_path / "s.pt")
    assert summary["train_precision"] == chosen
    assert summarize(None, {"model": "s", "miou": 50.0}, distilled, tmp_path, tmp_path)["train_precision"] is None
    report = {"distill": {"kd": "kd+bckd", "teacher_miou": 70.0, "student_miou": 50.0, "distilled_miou": 60.0,
                          "train_precision": chosen}}
    assert distillation_line(report).endswith(f"Trained in bf16: {chosen['reason']}.")


def test_the_stage_cache_key_holds_the_precision_auto_resolves_to(monkeypatch):
    """Flipping the CPU policy must not reuse a stage trained in the other precision from the cache."""
    import bckd_pipeline.machine as machine
    from bckd_pipeline.distill import cached, trainer

    monkeypatch.setattr(machine, "cpu_facts", lambda *a, **k: AVX512_BF16)
    cfg = TrainConfig(device="cpu", precision="auto")
    monkeypatch.setattr(trainer, "CPU_AUTO_BF16", False)
    fp32 = cached._train_options(cfg)
    monkeypatch.setattr(trainer, "CPU_AUTO_BF16", True)
    bf16 = cached._train_options(cfg)
    assert (fp32["precision_used"], bf16["precision_used"]) == ("fp32", "bf16")
