"""The training loop shared by teachers, plain students and distilled students.

SGD with momentum and the poly schedule (the paper's protocol), iteration-based, evaluation every
``eval_every`` iterations with the best checkpoint kept, a progress bar with every loss term and
the ETA, repeatable runs from one seed, and AMP on CUDA. A non-finite loss stops training at
once: the last good checkpoint on disk is never overwritten by a diverged model.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, NonFiniteLossError
from .task import StepInfo


@dataclass(frozen=True)
class TrainConfig:
    iters: int = 1000
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    eval_every: int = 0  # 0: only at the end
    seed: int = 0
    num_workers: int = 2
    device: str = "cpu"
    amp: bool = True  # only takes effect on CUDA

    def __post_init__(self):
        for name in ("iters", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}.")


def epochs_to_iters(epochs: int, dataset_size: int, batch_size: int) -> int:
    """Iterations for ``epochs`` passes with drop_last batches."""
    return max(1, epochs * max(1, dataset_size // batch_size))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    # Each worker gets its own stream derived from the loader's seed, so augmentation repeats.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, num_workers: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle,
        num_workers=num_workers,
        worker_init_fn=_worker_init,
        generator=gen,
        persistent_workers=num_workers > 0,
    )


@dataclass
class TrainResult:
    best_score: float
    best_iteration: int
    iterations: int
    history: list[dict]
    seconds: float


class ProgressBar:
    """A rich progress bar with each loss term and the ETA; silent when disabled."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.enabled = enabled
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[terms]}"),
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task(description, total=total, terms="")

    def update(self, completed: int, terms: dict[str, float]) -> None:
        if self.enabled:
            text = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in terms.items())
            self.progress.update(self.task, completed=completed, terms=text)

    def log(self, message: str) -> None:
        if self.enabled:
            self.progress.console.print(message)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()


def _kept(best_it: int, best: float) -> str:
    if best_it == 0:
        return "no checkpoint had been saved yet."
    return f"the last good checkpoint (iteration {best_it}, score {best:.2f}) is kept."


def train(
    task: nn.Module,
    train_set: Dataset,
    cfg: TrainConfig,
    *,
    evaluate: Callable[[], float],
    save_best: Callable[[int, float], None],
    description: str = "train",
    progress: bool = True,
    log_every: int = 10,
) -> TrainResult:
    """Train ``task`` (a module returning a loss dict) for ``cfg.iters`` iterations.

    ``evaluate()`` returns the score to maximise (val mIoU); ``save_best(iteration, score)`` is
    called whenever it improves and must write the checkpoint atomically.
    """
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    task.to(device)
    params = task.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    # bf16 needs no loss scaling and cannot overflow where fp16 would; fp16 only on older GPUs.
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    loader = make_loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, num_workers=cfg.num_workers)
    if len(loader) == 0:
        raise ConfigError(
            f"The training split has {len(train_set)} images, fewer than one batch of {cfg.batch_size}. "
            "Lower --batch-size or use more training images."
        )
    eval_every = cfg.eval_every or cfg.iters
    bar = ProgressBar(cfg.iters, description, progress)
    history: list[dict] = []
    running: dict[str, float] = {}
    best, best_it = -math.inf, 0
    start = time.perf_counter()
    it = 0
    try:
        task.train()
        while it < cfg.iters:
            for images, masks in loader:
                if it >= cfg.iters:
                    break
                lr = cfg.lr * (1 - it / cfg.iters) ** cfg.poly_power
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = images.to(device, non_blocking=True)
                masks = masks.to(device, non_blocking=True)
                step = StepInfo(it, cfg.iters, cfg.batch_size, len(train_set))
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    out = task(images, masks, step)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    terms = {k: float(v) for k, v in out.items() if k.startswith("loss/")}
                    raise NonFiniteLossError(
                        f"The loss became {float(loss.detach())} at iteration {it + 1} (terms: {terms}). "
                        f"Training stopped; {_kept(best_it, best)} "
                        "Lower --lr, or the weight of the term that diverged."
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                it += 1
                for k, v in out.items():
                    if k.startswith(("loss", "bckd/")) and k != "logits":
                        running[k] = running.get(k, 0.0) + float(v.detach())
                if it % log_every == 0 or it == cfg.iters:
                    n = log_every if it % log_every == 0 else it % log_every
                    means = {k: v / n for k, v in running.items()}
                    history.append({"iteration": it, "lr": lr, **means})
                    bar.update(it, means)
                    running.clear()
                if it % eval_every == 0 or it == cfg.iters:
                    # A finite loss can still give non-finite gradients; never evaluate or save such weights.
                    if not all(bool(torch.isfinite(p).all()) for p in params):
                        raise NonFiniteLossError(
                            f"The weights became non-finite at iteration {it} (the loss was finite, its "
                            f"gradient was not). Training stopped; {_kept(best_it, best)} "
                            "Lower --lr, or the weight of the term that diverged."
                        )
                    score = evaluate()
                    task.train()
                    history.append({"iteration": it, "val_miou": score})
                    bar.log(f"[{description}] iteration {it}: val mIoU {score:.2f}")
                    if score > best:
                        best, best_it = score, it
                        save_best(it, score)
    finally:
        bar.close()
    return TrainResult(best, best_it, it, history, time.perf_counter() - start)
