"""The training loop shared by teachers, plain students and distilled students.

SGD with momentum and the poly schedule (the paper's protocol), iteration-based, evaluation every
``eval_every`` iterations with the best checkpoint kept, a progress bar with every loss term and
the ETA, repeatable runs from one seed, mixed precision (bf16 or fp16 autocast on CUDA, bf16 on the CPU; see
:func:`resolve_precision`) and channels_last, and
data-parallel training under torchrun (see ``distributed.py``).

The full training state (trainable modules, optimizer, loss scaler, RNG states, iteration, best
score) is written atomically every ``checkpoint_every`` iterations and at every evaluation, so a
killed run continues with ``resume=True``; on CPU the resumed run is bit-identical to an
uninterrupted one. A non-finite loss stops training at once: the last good checkpoint on disk is
never overwritten by a diverged model.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..configs import TrainConfig
from ..errors import ConfigError, NonFiniteLossError
from ..fileio import atomic_write
from .checkpoint import load_payload
from .distributed import SINGLE, DistEnv, GlobalBatchSampler, SeededSamples, gather_objects
from .task import StepInfo

STATE_FORMAT = "bckd-pipeline/train-state-v1"


# Settings that may change between an interrupted run and its resume without changing the result.
_RESUMABLE = {"num_workers", "checkpoint_every", "device"}


# Whether --train-precision auto trains in bf16 on a CPU with native bf16 instructions: on, as the paired-seed study
# of fp32 against bf16 supports (docs/decisions.md, "bf16 training on the CPU"; docs/benchmarks.md).
CPU_AUTO_BF16 = True

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainPrecision:
    """The precision a run trains in (``used``: fp32, bf16 or fp16 autocast) and why (``reason``)."""

    used: str
    reason: str
    slower_than_fp32: bool = False  # bf16 on a CPU without native bf16 instructions

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for full fp32."""
        return _DTYPES[self.used]

    def as_dict(self) -> dict:
        return {"used": self.used, "reason": self.reason}


def resolve_precision(
    cfg: TrainConfig, cpu: dict | None = None, *, auto_bf16_on_cpu: bool | None = None
) -> TrainPrecision:
    """What ``--train-precision`` means on this device. On CUDA, auto is bf16 where the GPU has it, else fp16 (with
    loss scaling). On the CPU, auto is bf16 only on a CPU with native bf16 instructions (``cpu``: machine.cpu_facts,
    read when None) and only while :data:`CPU_AUTO_BF16` allows it; bf16 asked for on a CPU without them is
    granted, and the reason says that it trains slower than fp32 there."""
    asked = cfg.precision
    if asked == "fp32":
        return TrainPrecision("fp32", "--train-precision fp32")
    if cfg.device.startswith("cuda"):
        if asked != "auto":
            return TrainPrecision(asked, f"--train-precision {asked} on CUDA")
        if torch.cuda.is_bf16_supported():
            return TrainPrecision("bf16", "auto on CUDA: the GPU supports bf16")
        return TrainPrecision("fp16", "auto on CUDA: the GPU has no bf16, so fp16 with loss scaling")
    from ..machine import cpu_facts, describe_cpu, native_bf16

    cpu = cpu if cpu is not None else cpu_facts()
    units = native_bf16(cpu)
    allow = CPU_AUTO_BF16 if auto_bf16_on_cpu is None else auto_bf16_on_cpu
    if asked == "bf16":
        if units:
            return TrainPrecision("bf16", f"--train-precision bf16 on a CPU with native bf16 ({', '.join(units)})")
        return TrainPrecision(
            "bf16",
            f"--train-precision bf16 on a CPU with no native bf16 instructions ({describe_cpu(cpu)}): bf16 "
            "products run as conversions around fp32 arithmetic, so training is slower than in fp32 here",
            slower_than_fp32=True,
        )
    if not units:
        return TrainPrecision("fp32", "auto on a CPU without native bf16 instructions (AVX512-BF16, AMX-BF16)")
    if allow:
        return TrainPrecision(
            "bf16",
            f"auto on a CPU with native bf16 ({', '.join(units)}): bf16 autocast, whose paired-seed accuracy matched "
            'fp32\'s within the study\'s intervals (docs/decisions.md, "bf16 training on the CPU"); '
            "--train-precision fp32 trains in fp32",
        )
    return TrainPrecision(
        "fp32",
        f"auto on the CPU stays fp32: this CPU has native bf16 ({', '.join(units)}), but no paired-seed study has "
        'shown yet that bf16 training matches fp32 accuracy here (docs/decisions.md, "bf16 training on the CPU"); '
        "--train-precision bf16 trains in bf16",
    )


def autocast_dtype(cfg: TrainConfig) -> torch.dtype | None:
    """The autocast dtype for this run, or None for full fp32."""
    return resolve_precision(cfg).dtype


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    best_score: float
    best_iteration: int
    iterations: int
    history: list[dict]
    seconds: float
    resumed_from: int = 0
    eval_seconds: float = 0.0
    precision: dict = field(default_factory=dict)  # TrainPrecision.as_dict(): what the steps ran in, and why


class ProgressBar:
    """A rich progress bar with each loss term and the ETA; silent when disabled."""

    def __init__(self, total: int, description: str, enabled: bool, completed: int = 0):
        self.enabled = enabled
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[terms]}"),
                console=Console(stderr=True),  # progress is not output: stdout holds the ledger and results
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task(description, total=total, completed=completed, terms="")

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


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((3, tuple(py[:-1]), None))
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy().astype(np.uint32), state["numpy"]["pos"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(path: Path, payload: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_train_state(path: Path, fingerprint: dict) -> dict:
    """Read a training state written by :func:`train`, refusing one from a different run."""
    state = load_payload(
        path,
        expected_format=STATE_FORMAT,
        what="Training state",
        missing_hint="--resume was given but there is nothing to resume in this --out folder. Drop --resume to "
        "start fresh, or pass the --out of the interrupted run.",
        unreadable_hint="Delete it and start without --resume.",
    )
    if state["fingerprint"] != fingerprint:
        diff = {k: (state["fingerprint"].get(k), v) for k, v in fingerprint.items() if state["fingerprint"].get(k) != v}
        raise ConfigError(
            f"--resume: the run in {str(Path(path).parent)!r} was started with other settings {diff} "
            "(saved, now). Resume with the original flags, or use a new --out."
        )
    return state


def _kept(best_it: int, best: float) -> str:
    if best_it == 0:
        return "no checkpoint had been saved yet."
    return f"the last good checkpoint (iteration {best_it}, score {best:.2f}) is kept."


@dataclass
class _LoopState:
    """What the loop carries from one iteration to the next; a resume restores it."""

    iteration: int = 0
    best: float = -math.inf
    best_iteration: int = 0
    history: list[dict] = field(default_factory=list)
    eval_seconds: float = 0.0

    def result(self, seconds: float, resumed_from: int, precision: TrainPrecision) -> TrainResult:
        return TrainResult(
            self.best,
            self.best_iteration,
            self.iteration,
            self.history,
            seconds,
            resumed_from=resumed_from,
            eval_seconds=self.eval_seconds,
            precision=precision.as_dict(),
        )


def _check_one_batch_fits(train_set: Dataset, cfg: TrainConfig) -> None:
    if len(train_set) < cfg.batch_size:
        raise ConfigError(
            f"The training split has {len(train_set)} images, fewer than one batch of {cfg.batch_size}. "
            "Lower --batch-size or use more training images."
        )


def _trainable_modules(task: nn.Module, cfg: TrainConfig, env: DistEnv) -> dict[str, nn.Module]:
    """The modules a resume must restore, with BatchNorm synchronised across ranks when asked."""
    # Tasks name the modules a resume needs; any other loss-dict module is saved whole.
    modules: dict[str, nn.Module] = task.trainable_modules() if hasattr(task, "trainable_modules") else {"task": task}
    if cfg.sync_bn and env.distributed:
        for name, module in modules.items():
            converted = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            if converted is not module:
                setattr(task, name, converted)
                modules[name] = converted
    return modules


def _restore(
    state_path: Path,
    fingerprint: dict,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    env: DistEnv,
) -> _LoopState:
    """Load the saved training state into the modules, optimizer, scaler and RNGs."""
    state = load_train_state(state_path, fingerprint)
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"][min(env.rank, len(state["rng"]) - 1)])
    return _LoopState(state["iteration"], state["best"], state["best_iteration"], state["history"])


def _parallel(task: nn.Module, cfg: TrainConfig, env: DistEnv, device: torch.device) -> nn.Module:
    """The module the loop calls: ``task`` wrapped in DDP under torchrun, compiled when asked."""
    model: nn.Module = task
    if env.distributed:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(task, device_ids=ids)
    if cfg.compile:
        model = torch.compile(model)
    return model


def _loader(
    train_set: Dataset,
    cfg: TrainConfig,
    env: DistEnv,
    device: torch.device,
    start_it: int,
    collate: Callable | None = None,
) -> DataLoader:
    """This rank's batches for iterations ``start_it`` to ``cfg.iters``, put together by ``collate`` (torch's
    default stacking when None; detection's lists of target dicts need ``collate_detection``)."""
    sampler = GlobalBatchSampler(
        len(train_set), cfg.batch_size, iterations=cfg.iters, seed=cfg.seed, env=env, start_iteration=start_it
    )
    return DataLoader(
        SeededSamples(train_set),
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def _set_poly_lr(optimizer: torch.optim.Optimizer, cfg: TrainConfig, iteration: int) -> float:
    """Set and return the poly-schedule learning rate for ``iteration``."""
    lr = cfg.lr * (1 - iteration / cfg.iters) ** cfg.poly_power
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def _to_device(images: torch.Tensor, targets, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, Any]:
    """The batch on ``device``: the images, and the targets (a mask tensor, or per image a dict of tensors)."""
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if isinstance(targets, torch.Tensor):
        return images, targets.to(device, non_blocking=True)
    return images, [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]


def _optimizer_step(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    step: StepInfo,
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None,
    loop: _LoopState,
) -> dict[str, torch.Tensor]:
    """One forward and backward pass and the optimizer update; returns the task's loss dict."""
    images, masks = batch
    device_type = images.device.type
    with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = model(images, masks, step)
    loss = out["loss"]
    if not torch.isfinite(loss):
        terms = {k: float(v) for k, v in out.items() if k.startswith("loss/")}
        raise NonFiniteLossError(
            f"The loss became {float(loss.detach())} at iteration {step.iteration + 1} (terms: {terms}). "
            f"Training stopped; {_kept(loop.best_iteration, loop.best)} "
            "Lower --lr, or the weight of the term that diverged."
        )
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return out


def _accumulate(running: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    """Add this iteration's loss and BCKD terms to the running sums."""
    for k, v in out.items():
        if k.startswith(("loss", "bckd/")):
            # Tensors, not floats: a float() per term per step would stall the GPU queue.
            running[k] = running.get(k, 0.0) + v.detach()


def _log_interval(
    running: dict[str, torch.Tensor],
    out: dict[str, torch.Tensor],
    n: int,
    lr: float,
    loop: _LoopState,
    bar: ProgressBar,
) -> None:
    """Append the mean of each term over the last ``n`` iterations to the history and the bar."""
    means = {k: float(v) / n for k, v in running.items()}
    # grad/* are one measurement on this iteration, not a mean over the interval.
    means |= {k: float(v) for k, v in out.items() if k.startswith("grad/")}
    loop.history.append({"iteration": loop.iteration, "lr": lr, **means})
    bar.update(loop.iteration, means)
    running.clear()


def _validate(
    task: nn.Module,
    params: list[nn.Parameter],
    loop: _LoopState,
    *,
    evaluate: Callable[[], float],
    save_best: Callable[[int, float], None],
    bar: ProgressBar,
    label: str,
    env: DistEnv,
    score_name: tuple[str, str] = ("miou", "mIoU"),
) -> None:
    """Score the current weights and keep them when they beat the best so far (history key ``val_<name>``)."""
    it = loop.iteration
    # A finite loss can still give non-finite gradients; never evaluate or save such weights.
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise NonFiniteLossError(
            f"The weights became non-finite at iteration {it} (the loss was finite, its "
            f"gradient was not). Training stopped; {_kept(loop.best_iteration, loop.best)} "
            "Lower --lr, or the weight of the term that diverged."
        )
    t0 = time.perf_counter()
    score = evaluate()
    loop.eval_seconds += time.perf_counter() - t0
    task.train()
    key, shown = score_name
    loop.history.append({"iteration": it, f"val_{key}": score})
    bar.log(f"[{label}] iteration {it}: val {shown} {score:.2f}")
    if score > loop.best:
        loop.best, loop.best_iteration = score, it
        if env.is_main:
            save_best(it, score)


def _save_state(
    state_path: Path,
    fingerprint: dict,
    loop: _LoopState,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    env: DistEnv,
) -> None:
    """Write the full training state (rank 0 writes; every rank contributes its RNG state)."""
    rng_states = gather_objects(env, _rng_state())  # a collective: every rank takes part
    if env.is_main:
        payload = {
            "format": STATE_FORMAT,
            "fingerprint": fingerprint,
            "iteration": loop.iteration,
            "best": loop.best,
            "best_iteration": loop.best_iteration,
            "history": loop.history,
            "modules": {name: m.state_dict() for name, m in modules.items()},
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_states,
        }
        save_train_state(state_path, payload)


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
    state_path: Path | None = None,
    resume: bool = False,
    fingerprint: dict | None = None,
    env: DistEnv = SINGLE,
    collate: Callable | None = None,
    score_name: tuple[str, str] = ("miou", "mIoU"),
) -> TrainResult:
    """Train ``task`` (a module returning a loss dict) for ``cfg.iters`` iterations.

    ``evaluate()`` returns the score to maximise (the task's metric, ``score_name`` = (key, label): val mIoU, or
    AP for detection; under torchrun every rank calls it and it must reduce across ranks);
    ``save_best(iteration, score)`` is called on rank 0 whenever the score improves and must write the
    checkpoint atomically. ``state_path`` receives the full
    training state; ``resume`` continues from it. ``fingerprint`` (plain values) must match the
    saved one for a resume to be accepted. ``collate`` batches the dataset's items (``collate_detection`` for
    detection); targets that are lists of dicts are moved to the device tensor by tensor.
    """
    seed_everything(cfg.seed)
    device = torch.device(env.device if env.distributed else cfg.device)
    fingerprint = {**(fingerprint or {}), **{k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE}}
    task.to(device)
    if cfg.channels_last:
        task.to(memory_format=torch.channels_last)
    modules = _trainable_modules(task, cfg, env)
    params = task.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    precision = resolve_precision(cfg)
    amp_dtype = precision.dtype
    if precision.slower_than_fp32 and env.is_main:
        print(f"warning: {precision.reason}. Use --train-precision fp32 (or auto) for speed.", file=sys.stderr)
    # bf16 needs no loss scaling and cannot overflow where fp16 would.
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    _check_one_batch_fits(train_set, cfg)

    if resume:
        loop = _restore(state_path, fingerprint, modules, optimizer, scaler, env)
    else:
        loop = _LoopState()
        # Dropout and other in-model randomness differ per rank; the weights do not (DDP broadcasts rank 0's).
        torch.manual_seed(cfg.seed + env.rank)
    start_it = loop.iteration
    model = _parallel(task, cfg, env, device)
    loader = _loader(train_set, cfg, env, device, start_it, collate)
    eval_every = cfg.eval_every or cfg.iters
    save_every = cfg.checkpoint_every or eval_every
    bar = ProgressBar(cfg.iters, description, progress and env.is_main, completed=start_it)
    running: dict[str, torch.Tensor] = {}
    started = time.perf_counter()
    try:
        task.train()
        for images, masks in loader:
            it = loop.iteration
            lr = _set_poly_lr(optimizer, cfg, it)
            batch = _to_device(images, masks, device, cfg.channels_last)
            # Gradient norms cost a partial backward per term: measured on the logged iterations only.
            logged = (it + 1) % log_every == 0 or it + 1 == cfg.iters
            step = StepInfo(it, cfg.iters, cfg.batch_size, len(train_set), measure_grads=logged)
            out = _optimizer_step(
                model, batch, step, optimizer=optimizer, scaler=scaler, amp_dtype=amp_dtype, loop=loop
            )
            loop.iteration = it = it + 1
            _accumulate(running, out)
            if logged:
                _log_interval(running, out, log_every if it % log_every == 0 else it % log_every, lr, loop, bar)
            evaluated = it % eval_every == 0 or it == cfg.iters
            if evaluated:
                _validate(
                    task,
                    params,
                    loop,
                    evaluate=evaluate,
                    save_best=save_best,
                    bar=bar,
                    label=description,
                    env=env,
                    score_name=score_name,
                )
            if state_path is not None and (evaluated or it % save_every == 0):
                _save_state(state_path, fingerprint, loop, modules, optimizer, scaler, env)
    finally:
        bar.close()
    return loop.result(time.perf_counter() - started, resumed_from=start_it, precision=precision)
