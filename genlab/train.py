"""The one training loop every neural family uses: AdamW, warm-up + cosine LR, EMA, bf16,
checkpoints that resume bit-exactly, and data parallelism under torchrun.

The trainer knows only `model.loss(batch, step) -> {"loss": scalar, **terms}`, where `batch` is
`(x_batch,)` or `(x_batch, y_batch)` on the device, plus `parameters()`, `state_dict()` /
`load_state_dict()` and `train()` / `eval()`; nothing here is specific to a family. The maths
(`lr_at`, `ema_decay_at`, `iterate_batches`) lives in pure functions that are tested alone.

Under `torch.distributed` (launched by torchrun) every process holds all of x, draws the same
global batch and takes its interleaved share `rows[rank::world]`; gradients are summed with
weights share/global (the mean over the global batch), so N processes follow the same
trajectory as one process with the same `batch_size`. Only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from genlab.checkpoints import (
    CHECKPOINT_FILE,
    LOG_FILE,
    RunState,
    checkpoint,
    data_fingerprint,
    load_checkpoint,
    read_log,
    restore,
)
from genlab.distributed import (
    all_reduce_gradients,
    broadcast_state,
    rank0_seconds,
    rank_and_world,
)
from genlab.io import atomic_write, remove_stale_temps
from genlab.options import Choice, Flag, Integer, Real, option, validate

__all__ = [
    "CHECKPOINT_FILE",
    "LOG_FILE",
    "DivergedError",
    "TrainConfig",
    "TrainResult",
    "fit",
    "read_log",
]

DEFAULT_MAX_STEPS = 2000
"""Optimisation steps of a run given neither max_steps nor max_time."""


class DivergedError(FloatingPointError, ValueError):
    """Training diverged (a non-finite loss, weights or samples): "training diverged: ...".

    A ValueError too, so callers that turn user errors into one line (the CLI) catch it; the
    message says the fix (a lower learning rate, cleaner data). Also `genlab.models.base.
    DivergedError` and `genlab.models.DivergedError` (defined here, below the models)."""


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters shared by every neural family (each family's frozen config
    subclasses it, so the names, help texts and rules are the same everywhere)."""

    max_steps: int | None = option(
        None,
        f"Optimisation steps (default: {DEFAULT_MAX_STEPS} when max_time is not set either); "
        "with max_time, training stops at whichever comes first.",
        Integer(1, optional=True),
    )
    max_time: float | None = option(
        None,
        "Wall-clock training budget in seconds; alone, it is the whole budget.",
        Real(0, low_open=True, optional=True),
    )
    batch_size: int = option(128, "Samples per step (the global batch under torchrun).", Integer(1))
    lr: float = option(1e-3, "Peak learning rate (AdamW).", Real(0, low_open=True))
    weight_decay: float = option(0.0, "AdamW weight decay (matrices and kernels only).", Real(0))
    warmup_steps: int = option(
        100, "Linear learning-rate warm-up steps, then cosine decay.", Integer(0)
    )
    min_lr_ratio: float = option(
        0.1, "Learning rate at the end of the cosine decay, as a fraction of lr.", Real(0, 1)
    )
    grad_clip: float | None = option(
        1.0, "Global gradient-norm clipping (None: off).", Real(0, low_open=True, optional=True)
    )
    ema_decay: float | None = option(
        0.999,
        "Decay of the exponential moving average of the weights used for sampling (None: off).",
        Real(0, 1, high_open=True, optional=True),
    )
    seed: int = option(
        0, "Seed of the initialisation, the data order and the noise.", Integer(0, 2**63 - 1)
    )
    precision: Literal["fp32", "bf16"] = option(
        "fp32", "bf16: bfloat16 autocast in training.", Choice(("fp32", "bf16"))
    )
    compile: bool = option(False, "torch.compile the loss (slow first step).", Flag())

    def __post_init__(self) -> None:
        validate(self)

    @property
    def step_limit(self) -> int | None:
        """max_steps; DEFAULT_MAX_STEPS when neither budget is set; None under max_time alone."""
        if self.max_steps is None and self.max_time is None:
            return DEFAULT_MAX_STEPS
        return self.max_steps


@dataclass
class TrainResult:
    """What `fit` did: steps taken (in total, across resumes), seconds, and the logged rows."""

    steps: int
    seconds: float
    history: list[dict[str, float]]


# -- the maths: learning rate, EMA, data order -------------------------------------------------
def planned_steps(step: int, seconds: float, config: TrainConfig) -> float:
    """The run's total steps: max_steps, or the pace so far extrapolated to max_time (whichever
    ends first), so that progress = step / total is step/max_steps or seconds/max_time."""
    limit = config.step_limit
    totals = [math.inf if limit is None else float(limit)]
    if config.max_time is not None and seconds > 0:
        totals.append(step * config.max_time / seconds)
    return min(totals)


def lr_at(step: int, config: TrainConfig, total: float) -> float:
    """Learning rate of optimisation step `step` (0-based) in a run of `total` steps.

    lr * (step + 1) / warmup_steps during warm-up, then lr * (r + (1 - r)(1 + cos(pi t)) / 2)
    with r = min_lr_ratio and t = (step - warmup_steps) / (total - warmup_steps) in [0, 1].
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = total - config.warmup_steps
    t = min(max((step - config.warmup_steps) / span, 0.0), 1.0) if span > 0 else 1.0
    r = config.min_lr_ratio
    return config.lr * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * t)))


def ema_decay_at(decay: float, updates: int) -> float:
    """Decay of update number `updates` (1, 2, ...) that makes the EMA the bias-corrected average
    sum_i d^(t-i) theta_i / sum_i d^(t-i) over the weights theta_1..theta_t after each step
    (Adam's bias correction; the first update copies), so early weights never dominate."""
    return decay * (1 - decay ** (updates - 1)) / (1 - decay**updates)


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], state: dict[str, torch.Tensor], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * state, in place, for every key of ema."""
    for name, average in ema.items():
        average.lerp_(state[name], 1 - decay)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The row order of `epoch`: a permutation from a generator seeded by (seed, epoch), mixed
    into the 32 bits that torch's CPU generator uses."""
    mixed = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1)[0]
    generator = torch.Generator().manual_seed(int(mixed))
    return torch.randperm(n, generator=generator)


def iterate_batches(
    n: int, batch_size: int, seed: int, epoch: int = 0, index: int = 0
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (epoch, index, rows) forever, starting at position (epoch, index).

    Each epoch has n // batch_size batches of rows (the incomplete last one is dropped), or a
    single batch of all n rows when n < batch_size.
    """
    per_epoch, size = max(n // batch_size, 1), min(batch_size, n)
    while True:
        order = epoch_permutation(n, seed, epoch)
        for i in range(index, per_epoch):
            yield epoch, i, order[i * size : (i + 1) * size]
        epoch, index = epoch + 1, 0


@contextmanager
def private_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run inside with torch's, NumPy's and Python's global RNGs seeded by `seed`, and give
    the caller's states back afterwards: training draws its noise from the global generators
    (so checkpoints can store and restore them) without touching the caller's."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


# -- the loop -------------------------------------------------------------------------------
def budget_spent(run: RunState, config: TrainConfig) -> bool:
    """Whether max_steps or max_time (whichever is set and comes first) is reached."""
    limit = config.step_limit
    out_of_steps = limit is not None and run.step >= limit
    return out_of_steps or (config.max_time is not None and run.seconds >= config.max_time)


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and kernels (ndim >= 2), none on biases and norms."""
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def train_step(
    loss_fn: Callable, batch: tuple[torch.Tensor, ...], step: int, params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer, lr: float, weight: float, config: TrainConfig,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """One update: loss (under bf16 autocast if asked), backward, gradient all-reduce with this
    process's share `weight` of the global batch, global-norm clipping, AdamW at `lr`."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    bf16 = config.precision == "bf16"
    with torch.autocast(batch[0].device.type, torch.bfloat16, enabled=bf16):
        terms = loss_fn(batch, step)
    if not isinstance(terms, dict) or "loss" not in terms:
        raise TypeError("model.loss(batch, step) must return a dict with the key 'loss'")
    terms["loss"].backward()
    if rank_and_world()[1] > 1:
        all_reduce_gradients(params, weight)
    if config.grad_clip is not None:
        terms = {**terms, "grad_norm": nn.utils.clip_grad_norm_(params, config.grad_clip)}
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return terms


@torch.no_grad()
def _copy_into(state: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> None:
    for k, v in weights.items():
        state[k].copy_(v)


@contextmanager
def ema_weights(model: nn.Module, ema: dict[str, torch.Tensor] | None) -> Iterator[nn.Module]:
    """The model with the EMA weights (when any) in eval mode; raw weights and train mode after."""
    state = model.state_dict()
    raw = {k: state[k].clone() for k in ema or {}}
    _copy_into(state, ema or {})
    model.eval()
    try:
        yield model
    finally:
        _copy_into(state, raw)
        model.train()


def _summarise(
    sums: dict[str, torch.Tensor], count: int, weight: float, step: int
) -> dict[str, float]:
    """Mean of each term over `count` steps (and over the global batch under torchrun)."""
    means = torch.stack([v / count for v in sums.values()])
    if rank_and_world()[1] > 1:
        means = means * weight
        dist.all_reduce(means)
    row = dict(zip(sums, means.tolist(), strict=True))
    if not math.isfinite(row["loss"]):
        raise DivergedError(
            f"training diverged: the loss is {row['loss']} at step {step}; lower the learning "
            "rate (lr) or check the data for extreme values"
        )
    return row


def checked_device(device: str | torch.device) -> torch.device:
    """torch.device(device), refused up front when this machine does not have it.

    Raises:
        ValueError: an unknown device name, CUDA on a machine without it, or a GPU index
            beyond the visible GPUs.
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or None, got {device!r} ({e})"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA is not available on this machine; use device='cpu' or None")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r}: this machine has {torch.cuda.device_count()} GPU(s); "
                "use cuda:0 .. cuda:N-1, 'cpu' or None"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("MPS is not available on this machine; use device='cpu' or None")
    return device


def _resolve_device(device: str | torch.device | None, world: int) -> torch.device:
    """None: cuda when available, else cpu; a bare "cuda" under torchrun: this process's GPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = checked_device(device)
    if device.type == "cuda" and device.index is None:
        index = int(os.environ.get("LOCAL_RANK", 0)) if world > 1 else torch.cuda.current_device()
        device = torch.device("cuda", index)
    if device.type == "cuda" and world > 1:
        torch.cuda.set_device(device)  # collectives (NCCL) use the current device
    return device


def _check_fit_args(x, y, config, out, checkpoint_every, resume, callback, callback_every,
                    log_every, world) -> None:  # fmt: skip
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(x, torch.Tensor) or x.ndim == 0 or len(x) == 0:
        raise ValueError("x must be a non-empty tensor of shape (n, ...)")
    if y is not None and (not isinstance(y, torch.Tensor) or len(y) != len(x)):
        raise ValueError(f"y must be None or a tensor with {len(x)} rows, like x")
    for name, v in [("checkpoint_every", checkpoint_every), ("callback_every", callback_every),
                    ("log_every", log_every)]:  # fmt: skip
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if out is None and (resume or checkpoint_every is not None):
        raise ValueError("resume and checkpoint_every need an out folder")
    if (callback is None) != (callback_every is None):
        raise ValueError("pass callback and callback_every together")
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {world} processes")
    if len(x) < world:
        raise ValueError(f"{len(x)} rows cannot be shared by {world} processes")


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    config: TrainConfig,
    *,
    out: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    callback: Callable[[int, nn.Module], dict[str, float] | None] | None = None,
    callback_every: int | None = None,
    log_every: int = 50,
    progress: bool | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Minimise `model.loss(batch, step)["loss"]` over rows of x (and y) with AdamW.

    Args:
        out: folder for checkpoint.pt and log.jsonl (None: no files). Without resume (or
            without a checkpoint to resume), a checkpoint and log already there are replaced;
            temp files of killed writes are removed.
        checkpoint_every: steps between checkpoints (one is also written at the end).
        resume: continue exactly from out/checkpoint.pt when it exists.
        callback: called as callback(step, model) every `callback_every` steps, on every
            process, with the EMA weights loaded and the model in eval mode; the numbers it
            returns are logged.
        log_every: steps per logged row; a row holds the mean of each loss term since the
            previous row, the lr and the elapsed seconds.
        progress: tqdm bar (None: only on a TTY).
        device: None: cuda (this process's GPU under torchrun) when available, else cpu.

    Returns:
        TrainResult. The model ends on the device in eval mode, holding the EMA weights (the
        raw weights when ema_decay is None); the checkpoint keeps both.

    Raises:
        ValueError: bad arguments, a device this machine lacks, a corrupt checkpoint, or one
            written with another config or for other data (its fingerprint: shape, dtype and
            a hash of sampled rows of x and y) or for another model.
        DivergedError: the loss became NaN or infinite.
    """
    rank, world = rank_and_world()
    _check_fit_args(x, y, config, out, checkpoint_every, resume, callback, callback_every,
                    log_every, world)  # fmt: skip
    device = _resolve_device(device, world)
    with private_rng((config.seed + rank) % 2**32, device):
        return _run(model, x, y, config, device, out, checkpoint_every, resume, callback,
                    callback_every, log_every, progress)  # fmt: skip


def _run(model, x, y, config, device, out, checkpoint_every, resume, callback, callback_every,
         log_every, progress) -> TrainResult:  # fmt: skip
    """The loop of `fit`, inside its private RNG state."""
    rank, world = rank_and_world()
    params = [p for p in model.to(device).parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = make_optimizer(params, config)
    folder = None if out is None else Path(out)
    ckpt_path = None if folder is None else folder / CHECKPOINT_FILE

    fingerprint = None if folder is None else data_fingerprint(x, y)
    if rank == 0 and folder is not None:  # killed writes' temp files (can be large)
        remove_stale_temps(folder, (CHECKPOINT_FILE, LOG_FILE))
    run = RunState()
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, config, fingerprint)
        run = restore(ckpt, model, optimizer, device, ckpt_path)
    elif world > 1:
        broadcast_state(model)
    state = model.state_dict()  # tensors sharing storage with the model's
    if run.ema is None and config.ema_decay is not None:
        run.ema = {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}
    history = read_log(folder / LOG_FILE, run.step) if run.step else []
    log = None
    if rank == 0 and folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        if run.step == 0:
            ckpt_path.unlink(missing_ok=True)  # never resume an older run after this one's log
        text = "".join(json.dumps(row) + "\n" for row in history)
        atomic_write(folder / LOG_FILE, lambda f: f.write(text.encode()))
        log = open(folder / LOG_FILE, "a")  # noqa: SIM115 (closed in finally)

    def emit(row: dict[str, float]) -> None:
        history.append(row)
        if log is not None:
            log.write(json.dumps(row) + "\n")
            log.flush()

    loss_fn = torch.compile(model.loss) if config.compile else model.loss
    batches = iterate_batches(len(x), config.batch_size, config.seed, *run.data)
    hide = None if progress is None else not progress  # None: tqdm hides it off a TTY
    bar = tqdm(total=config.step_limit, initial=run.step, disable=True if rank else hide)
    sums: dict[str, torch.Tensor] = {}
    count, saved, start = 0, -1, time.perf_counter() - run.seconds
    model.train()
    try:
        while True:
            run.seconds = time.perf_counter() - start
            if world > 1 and config.max_time is not None:
                run.seconds = rank0_seconds(run.seconds, device)
            if budget_spent(run, config):
                break
            epoch, index, rows = next(batches)
            share = rows[rank::world]  # this process's interleaved part of the global batch
            batch = tuple(t[share].to(device) for t in (x, y) if t is not None)
            weight = len(share) / len(rows)
            lr = lr_at(run.step, config, planned_steps(run.step, run.seconds, config))
            terms = train_step(loss_fn, batch, run.step, params, optimizer, lr, weight, config)
            run.step, run.data = run.step + 1, (epoch, index + 1)
            if run.ema is not None:
                ema_update(run.ema, state, ema_decay_at(config.ema_decay, run.step))
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + torch.as_tensor(v, device=device).detach().float()
            count += 1
            bar.update()

            row: dict[str, float] = {}
            if run.step % log_every == 0:
                row, sums, count = {**_summarise(sums, count, weight, run.step), "lr": lr}, {}, 0
                shown = {"loss": f"{row['loss']:.4g}", "lr": f"{lr:.2e}"}
                if config.max_time is not None:
                    shown["left"] = f"{config.max_time - run.seconds:.0f}s"
                bar.set_postfix(shown, refresh=False)
            if callback is not None and run.step % callback_every == 0:
                with ema_weights(model, run.ema):
                    row.update({k: float(v) for k, v in (callback(run.step, model) or {}).items()})
            if row:
                emit({"step": run.step, **row, "seconds": time.perf_counter() - start})
            if checkpoint_every is not None and run.step % checkpoint_every == 0:
                run.seconds = time.perf_counter() - start
                checkpoint(ckpt_path, model, optimizer, run, config, fingerprint)
                saved = run.step
        if count:  # the steps since the last row
            emit({"step": run.step, **_summarise(sums, count, weight, run.step), "lr": lr,
                  "seconds": run.seconds})  # fmt: skip
        if ckpt_path is not None and saved != run.step:
            checkpoint(ckpt_path, model, optimizer, run, config, fingerprint)
    finally:
        bar.close()
        if log is not None:
            log.close()
    _copy_into(state, run.ema or {})
    model.eval()
    return TrainResult(steps=run.step, seconds=run.seconds, history=history)
