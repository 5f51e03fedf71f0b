"""Data-parallel training, checkpoints and resume, on CPU (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bckd_pipeline.distill.distributed import DistEnv, GlobalBatchSampler
from bckd_pipeline.distill.stage import _miou_only
from bckd_pipeline.configs import TrainConfig
from bckd_pipeline.distill.trainer import load_train_state, save_train_state, train
from bckd_pipeline.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ sampler
def test_global_batches_are_split_across_ranks_and_survive_a_resume():
    single = list(GlobalBatchSampler(20, 4, iterations=12, seed=3))
    ranks = [list(GlobalBatchSampler(20, 4, iterations=12, seed=3, env=DistEnv(r, 2))) for r in range(2)]
    for it, batch in enumerate(single):
        assert sorted(ranks[0][it] + ranks[1][it]) == sorted(batch)
        assert len(ranks[0][it]) == len(ranks[1][it]) == 2
    # 20 images, batch 4: 5 iterations an epoch, each image once per epoch with one seed per (epoch, image)
    epoch0 = [i for b in single[:5] for i, _ in b]
    assert sorted(epoch0) == list(range(20))
    assert single[:5] != single[5:10]
    resumed = list(GlobalBatchSampler(20, 4, iterations=12, seed=3, start_iteration=7))
    assert resumed == single[7:]


def test_global_batch_must_split_evenly():
    with pytest.raises(ConfigError, match="must split evenly over 3 processes"):
        GlobalBatchSampler(20, 8, iterations=1, seed=0, env=DistEnv(0, 3))


# ------------------------------------------------------------------------------------ DDP == one process
class NormFree(nn.Module):
    """BatchNorm statistics are per process without SyncBatchNorm (CUDA-only), so the equality
    test uses a net without them; everything else (sampling, gradient averaging) is exercised."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))

    def forward(self, x):
        return self.net(x)


class Task(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def trainable_parameters(self):
        return list(self.model.parameters())

    def trainable_modules(self):
        return {"model": self.model}

    def forward(self, images, masks, step=None):
        logits = self.model(images)
        loss = nn.functional.cross_entropy(logits, masks)
        return {"loss": loss, "loss/ce": loss.detach(), "logits": logits}


class Images(torch.utils.data.Dataset):
    """Random images; the label is a pixel's brightest channel. Flips follow np.random, like augmentation."""

    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 8, 8, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        if np.random.rand() < 0.5:
            x = x.flip(-1)
        return x, x.argmax(0)


def _train_tiny(env: DistEnv) -> dict:
    torch.manual_seed(0)
    task = Task(NormFree())
    # fp32: the comparison is of the gradient averaging, to 1e-5 (bf16 autocast, auto's choice on some CPUs, rounds
    # each process's forward differently)
    cfg = TrainConfig(iters=6, batch_size=4, lr=0.1, num_workers=0, seed=1, checkpoint_every=0, precision="fp32")
    train(task, Images(), cfg, evaluate=lambda: 0.0, save_best=lambda *_: None, progress=False, env=env)
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


def _ddp_worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    weights = _train_tiny(DistEnv(rank, world, rank, "cpu"))
    if rank == 0:
        torch.save(weights, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rendezvous"), str(out)), nprocs=2, join=True)
    ddp, single = torch.load(out, weights_only=True), _train_tiny(DistEnv())
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-5, atol=1e-6)
    # and training moved the weights at all, so the comparison means something
    torch.manual_seed(0)
    init = NormFree().state_dict()
    assert any(not torch.allclose(init[k], single[k]) for k in single)


def _eval_worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    score = _sharded_score(DistEnv(rank, world, rank, "cpu"))
    if rank == 0:
        Path(out).write_text(json.dumps(score))
    dist.destroy_process_group()


def _sharded_score(env: DistEnv) -> float:
    class Info:
        num_classes, ignore_index = 3, 255

    torch.manual_seed(0)
    model = NormFree()
    data = [(torch.randn(3, 8, 8), torch.randint(0, 3, (8, 8))) for _ in range(7)]  # 7: shards of 4 and 3
    return _miou_only(model, data, Info, TrainConfig(batch_size=2, num_workers=0), env)()


def test_validation_sums_confusion_matrices_across_ranks(tmp_path):
    out = tmp_path / "score.json"
    mp.spawn(_eval_worker, args=(2, str(tmp_path / "rendezvous"), str(out)), nprocs=2, join=True)
    assert json.loads(out.read_text()) == pytest.approx(_sharded_score(DistEnv()), abs=1e-12)


# ------------------------------------------------------------------------------------ CLI under torchrun
def _cli(*args, env_extra=None, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, **kw)


@pytest.mark.slow
def test_torchrun_two_processes_train_and_only_rank0_writes(tmp_path):
    out = tmp_path / "t"
    proc = _cli(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "bckd_pipeline.cli", "train-teacher", "--preset", "smoke", "--iters", "4",
        "--train-device", "cpu", "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("teacher mIoU") == 1  # one rank prints
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "teacher.pt", "train_state.pt"]
    assert json.loads((out / "metrics.json").read_text())["train"]["iterations"] == 4


# ------------------------------------------------------------------------------------ resume
@pytest.fixture(scope="module")
def smoke_teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    proc = _cli("-m", "bckd_pipeline.cli", "train-teacher", "--preset", "smoke", "--iters", "6",
                "--train-device", "cpu", "--no-progress", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out / "teacher.pt"


def _distill_args(teacher: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "bckd_pipeline.cli", "distill", "--preset", "smoke", "--teacher", str(teacher),
            "--iters", "40", "--checkpoint-every", "4", "--eval-every", "20", "--mfs-images", "0",
            "--train-device", "cpu", "--no-progress", "--out", str(out), *extra]  # fmt: skip


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, smoke_teacher):
    full, part = tmp_path / "full", tmp_path / "part"
    assert _cli(*_distill_args(smoke_teacher, full)).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *_distill_args(smoke_teacher, part)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    state = part / "train_state.pt"
    deadline = time.time() + 300  # generous: a loaded machine is slow to reach the first save
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(state, weights_only=True)
    assert 0 < saved["iteration"] < 40, "the run must be killed part-way for this test to mean anything"
    assert not (part / "metrics.json").exists()

    resumed = _cli(*_distill_args(smoke_teacher, part, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(full / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(part / "student.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, part))
    assert ma["miou"] == mb["miou"] and mb["train"]["iterations"] == 40


@pytest.mark.slow
def test_resume_refuses_other_settings_and_a_missing_state(tmp_path, smoke_teacher):
    out = tmp_path / "run"
    assert _cli(*_distill_args(smoke_teacher, out)).returncode == 0
    other = _cli(*_distill_args(smoke_teacher, out, "--resume", "--kd", "kd"))
    assert other.returncode == 2 and "started with other settings" in other.stderr
    assert "Traceback" not in other.stderr
    missing = _cli(*_distill_args(smoke_teacher, tmp_path / "empty", "--resume"))
    assert missing.returncode == 2 and "nothing to resume" in missing.stderr


KILL_DURING_SAVE = """
import os, signal, sys, torch
from bckd_pipeline.distill import trainer
path = sys.argv[1]
real_save = torch.save
def dying_save(obj, f, *a, **k):
    with open(f, "wb") as fh:
        fh.write(b"half a checkpoint")
        fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
trainer.save_train_state(path, {"format": "x", "iteration": 2})
"""


def test_a_kill_during_save_leaves_the_previous_state_intact(tmp_path):
    path = tmp_path / "train_state.pt"
    first = {"format": "bckd-pipeline/train-state-v1", "iteration": 1, "fingerprint": {}}
    save_train_state(path, first)
    proc = _cli("-c", KILL_DURING_SAVE, str(path))
    assert proc.returncode == -signal.SIGKILL
    assert load_train_state(path, {})["iteration"] == 1  # the real name still holds the last complete state
    save_train_state(path, {**first, "iteration": 3})  # and the next save works despite the stale temp file
    assert load_train_state(path, {})["iteration"] == 3


def test_corrupt_state_is_a_clear_error(tmp_path):
    path = tmp_path / "train_state.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_train_state(path, {})


def test_fp16_and_sync_bn_need_cuda_bf16_does_not():
    with pytest.raises(ConfigError, match="needs --train-device cuda"):
        TrainConfig(device="cpu", precision="fp16")
    assert TrainConfig(device="cpu", precision="bf16").precision == "bf16"
    with pytest.raises(ConfigError, match="SyncBatchNorm"):
        TrainConfig(device="cpu", sync_bn=True)
    with pytest.raises(ConfigError, match="Allowed: auto, fp32, bf16, fp16"):
        TrainConfig(precision="fp8")
