"""Data-parallel training with PyTorch's own engine: torchrun + DistributedDataParallel.

``torchrun --nproc_per_node=N -m bckd_pipeline.cli distill ...`` sets RANK, WORLD_SIZE and
LOCAL_RANK; :func:`setup` reads them and joins the process group (NCCL on CUDA, gloo on CPU).
Without them everything here degrades to a single process, so the same code path runs everywhere.

Sampling is by *global* batch: every iteration draws one batch of ``batch_size`` images from a
per-epoch permutation, and rank r takes items r, r + W, ... of it. The images a step sees are
therefore the same for any number of processes (and after a resume), and each image's
augmentation is seeded by (seed, epoch, index), so it does not depend on which worker or rank
loads it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from ..errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = DistEnv()


def setup(device: str) -> DistEnv:
    """Join the torchrun process group if this process was launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--train-device cuda was given but no CUDA device is visible to this rank.")
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device)


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_sum(env: DistEnv, tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place) and return it; a no-op in one process."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(env: DistEnv, obj) -> list:
    """Every rank's ``obj``, in rank order (a collective under torchrun)."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one image in one epoch: independent of rank, worker and resume."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's share of each global batch, from ``start_iteration`` to ``iterations``.

    Epoch e uses ``randperm(n)`` drawn from a generator seeded with (seed, e); iteration i of
    the epoch takes the i-th slice of ``batch_size`` (incomplete tail batches are dropped), and
    rank r keeps items r, r + W, ... of that slice. Items are ``(index, augmentation_seed)``.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        *,
        iterations: int,
        seed: int,
        env: DistEnv = SINGLE,
        start_iteration: int = 0,
    ):
        if batch_size % env.world_size:
            raise ConfigError(
                f"--batch-size {batch_size} is the global batch and must split evenly over {env.world_size} "
                f"processes. Use a multiple of {env.world_size}."
            )
        self.n, self.batch, self.env = dataset_size, batch_size, env
        self.iterations, self.seed, self.start = iterations, seed, start_iteration
        self.per_epoch = dataset_size // batch_size

    def __len__(self) -> int:
        return max(0, self.iterations - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm, perm_epoch = None, -1
        for it in range(self.start, self.iterations):
            epoch, pos = divmod(it, self.per_epoch)
            if epoch != perm_epoch:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm, perm_epoch = torch.randperm(self.n, generator=gen).tolist(), epoch
            batch = perm[pos * self.batch : (pos + 1) * self.batch]
            yield [(i, sample_seed(self.seed, epoch, i)) for i in batch[self.env.rank :: self.env.world_size]]


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` runs its random augmentation from ``seed``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        np.random.seed(seed)
        random.seed(seed)
        return self.dataset[index]


def shard(env: DistEnv, length: int) -> range:
    """This rank's share of an evaluation set: indices rank, rank + W, ..."""
    return range(env.rank, length, env.world_size)
