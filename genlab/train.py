"""The one training loop every neural family uses: AdamW, warm-up + cosine LR, EMA, mixed
precision, gradient accumulation, validation with a best model and early stopping,
checkpoints that resume bit-exactly, and data parallelism under torchrun.

The trainer knows only `model.loss(batch, step) -> {"loss": scalar, **terms}`, where `batch` is
`(x_batch,)` or `(x_batch, y_batch)` on the device, plus `parameters()`, `state_dict()` /
`load_state_dict()` and `train()` / `eval()`; nothing here is specific to a family. The maths
(`lr_at`, `ema_decay_at`, `holdout_rows`; the data order is `genlab.batches.batch_indices`)
lives in pure functions that are tested alone.

- **Accumulation** (`grad_accum_steps` = k): the batch_size rows of a step are split into k
  micro-batches, and micro-batch i's loss is scaled by its share n_i / batch_size before
  backward, so the summed gradient is the gradient of the batch mean (nanoGPT's scaled-loss
  accumulation): k micro-batches of b / k rows take the same step as one batch of b rows.
- **Precision**: "bf16" runs the loss under bfloat16 autocast; "fp16" under float16 autocast
  with a `torch.amp.GradScaler` (the loss is scaled up before backward, the gradients are
  unscaled before clipping, and a step with non-finite gradients is skipped).
- **Validation** (`val=` rows or `val_fraction`): every `eval_every` steps, and at the end, the
  mean of `model.loss` over all validation rows (batches of batch_size, weighted by rows) with
  the EMA weights loaded, in eval mode and without gradients; its noise comes from a private
  RNG seeded by config.seed, the same at every evaluation, and the training RNG is left as it
  was (so a resumed run stays bit-exact). The best evaluation's weights are kept
  (`TrainResult.best_state`; with `out` and `save_best`, written as the model folder
  out/best/), and `patience` evaluations without a lower loss stop the run early.
- **Data parallel**: under `torch.distributed` (launched by torchrun) every process holds all
  of x, draws the same global batch and takes its interleaved share `rows[rank::world]`;
  `model.loss` is wrapped in `DistributedDataParallel`, which all-reduces gradient buckets
  during backward (skipped by `no_sync` on all but the last micro-batch). Each process's loss
  is scaled by world * share / global batch, so DDP's mean over processes is the mean over
  the global batch and N processes follow the trajectory of one with the same batch_size.
  Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from genlab.batches import RowSource, batch_indices, default_window, window_permutation
from genlab.checkpoints import (
    CHECKPOINT_FILE,
    LOG_FILE,
    RunState,
    check_val_fingerprint,
    checkpoint,
    data_fingerprint,
    load_checkpoint,
    read_log,
    restore,
)
from genlab.data.dataset import NpyArray
from genlab.distributed import data_parallel, rank0_seconds, rank_and_world
from genlab.io import PENDING, atomic_write, remove_stale_temps
from genlab.options import Choice, Flag, Integer, Real, option, validate

__all__ = [
    "BEST_FOLDER",
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
BEST_FOLDER = "best"
"""out/best/: the model folder of the best validation loss (`fit`'s save_best)."""
AUTOCAST: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""The autocast dtype of each precision (fp16 also scales the loss: `torch.amp.GradScaler`)."""
Precision = Literal["fp32", "bf16", "fp16"]
VAL_SPLIT_KEY = 1  # SeedSequence spawn key of the validation split (epochs use [seed, epoch])
VAL_NOISE_KEY = 2  # ... and of the validation noise


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
    precision: Precision = option(
        "fp32",
        "fp32; bf16: bfloat16 autocast in training; fp16: float16 autocast with a gradient "
        "scaler (for GPUs without bf16).",
        Choice(tuple(AUTOCAST)),
    )
    compile: bool = option(False, "torch.compile the loss (slow first step).", Flag())
    grad_accum_steps: int = option(
        1,
        "Micro-batches per optimisation step: batch_size rows are split into this many "
        "forward/backward passes (less memory, the same update).",
        Integer(1),
    )
    eval_every: int = option(
        250,
        "Steps between validation evaluations (and one at the end); used only with "
        "validation data (val= or val_fraction).",
        Integer(1),
    )
    patience: int | None = option(
        None,
        "Stop early after this many validation evaluations without a lower loss (None: off).",
        Integer(1, optional=True),
    )
    val_fraction: float | None = option(
        None,
        "Hold out this fraction of the training rows as validation data when none is given "
        "(None: no validation unless given).",
        Real(0, 1, low_open=True, high_open=True, optional=True),
    )
    data_window: int | None = option(
        None,
        "Rows per contiguous window of a batch (None: 1 for data in memory, 64 for a "
        "streamed .npy file).",
        Integer(1, optional=True),
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.grad_accum_steps > self.batch_size:
            raise ValueError(
                f"grad_accum_steps={self.grad_accum_steps} splits batch_size="
                f"{self.batch_size} rows into more micro-batches than rows; use "
                "grad_accum_steps <= batch_size"
            )

    @property
    def step_limit(self) -> int | None:
        """max_steps; DEFAULT_MAX_STEPS when neither budget is set; None under max_time alone."""
        if self.max_steps is None and self.max_time is None:
            return DEFAULT_MAX_STEPS
        return self.max_steps


@dataclass
class TrainResult:
    """What `fit` did: steps taken (in total, across resumes), seconds, the logged rows, and
    with validation the best evaluation (its step, mean loss and weights) and whether
    `patience` stopped the run."""

    steps: int
    seconds: float
    history: list[dict[str, float]]
    best_step: int | None = None
    best_val_loss: float | None = None
    stopped_early: bool = False
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)


# -- the maths: learning rate, EMA, validation split -----------------------------------------------
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
def ema_update(ema: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * weights, in place, for each pair (one fused
    `torch._foreach_lerp_` over the lists)."""
    torch._foreach_lerp_(list(ema), list(weights), 1 - decay)


epoch_permutation = window_permutation  # the row order of an epoch (one row per window)
iterate_batches = batch_indices  # the data order (window=1: single rows), under its old name


def _seed_of(seed: int, key: int) -> int:
    """32 bits mixed from (seed, key) for a CPU generator or torch.manual_seed."""
    sequence = np.random.SeedSequence(seed % 2**64, spawn_key=(key,))
    return int(sequence.generate_state(1)[0])


def holdout_rows(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, validation rows), each sorted: round(n * fraction) rows (at least 1)
    drawn without replacement by a generator seeded by `seed`, the others for training.

    Raises:
        ValueError: n and fraction leave no training row.
    """
    m = max(1, round(n * fraction))
    if m >= n:
        raise ValueError(
            f"val_fraction={fraction} of {n} rows leaves no training rows; use a smaller "
            "val_fraction or more data"
        )
    generator = torch.Generator().manual_seed(_seed_of(seed, VAL_SPLIT_KEY))
    order = torch.randperm(n, generator=generator)
    return order[m:].sort().values, order[:m].sort().values


def split_validation(x, y, fraction: float, seed: int) -> tuple:
    """(x, y, (val_x, val_y)) with `holdout_rows`' rows held out of an in-memory x; a streamed
    `NpyArray` holds out its last round(n * fraction) rows instead (views of the file, so
    nothing is read: reads stay contiguous)."""
    n = len(x)
    if isinstance(x, NpyArray):
        keep = n - holdout_rows(n, fraction, seed)[1].numel()
        ys = (None, None) if y is None else (y[:keep], y[keep:])
        return x.rows(0, keep), ys[0], (x.rows(keep, n), ys[1])
    train_rows, val_rows = holdout_rows(n, fraction, seed)
    ys = (None, None) if y is None else (y[train_rows], y[val_rows])
    return x[train_rows], ys[0], (x[val_rows], ys[1])


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


def out_of_patience(run: RunState, config: TrainConfig) -> bool:
    """Whether `patience` evaluations in a row brought no lower validation loss."""
    return config.patience is not None and run.bad_evals >= config.patience


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and kernels (ndim >= 2), none on biases and norms.

    With the multi-tensor ("foreach") kernels: bit for bit the per-tensor loop's update, whose
    per-tensor overhead was most of the optimiser's time on small networks (the digits flow,
    hidden 128, one thread: 1.37x the loop's steps/s; the fused kernel 1.59x, but it rounds
    differently, so runs would no longer repeat those of earlier versions;
    `benchmarks/adamw_kernels.py`)."""
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, foreach=True)


def micro_batches(rows: torch.Tensor, total: int, k: int) -> list[tuple[torch.Tensor, float]]:
    """This process's rows of a step as k micro-batches (`tensor_split`: sizes differ by at
    most one; empty ones dropped), each with its share of the `total` rows of the global
    batch, which weights its loss."""
    if k == 1:
        return [(rows, len(rows) / total)]
    return [(part, len(part) / total) for part in rows.tensor_split(k) if len(part)]


def train_step(
    forward: Callable, source: RowSource, parts: list[tuple[torch.Tensor, float]], step: int,
    params: list[nn.Parameter], optimizer: torch.optim.Optimizer, lr: float, config: TrainConfig,
    *, world: int = 1, scaler: torch.amp.GradScaler | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = nullcontext,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """One update from micro-batches `parts` [(rows, share)]: each loss under `autocast`,
    scaled by world * share (DDP averages over the world) and by the fp16 scaler, then
    backward (`no_sync` on all but the last micro-batch: one all-reduce per step); then
    unscale, global-norm clipping and AdamW at `lr`.

    Returns:
        The loss terms (detached) weighted by share and summed over micro-batches: this
        process's part of the global batch mean, plus "grad_norm" (weighted likewise).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    total: dict[str, torch.Tensor] = {}
    for i, (rows, share) in enumerate(parts):
        batch = source.take(rows)
        last = i == len(parts) - 1
        with nullcontext() if no_sync is None or last else no_sync():
            with autocast():
                terms = forward(batch, step)
            if not isinstance(terms, dict) or "loss" not in terms:
                raise TypeError("model.loss(batch, step) must return a dict with the key 'loss'")
            loss = terms["loss"]
            scale = world * share
            if scale != 1.0:
                loss = loss * scale
            (loss if scaler is None else scaler.scale(loss)).backward()
        for k, v in terms.items():
            v = v.detach() if isinstance(v, torch.Tensor) else torch.as_tensor(v)
            v = v if share == 1.0 else v * share
            total[k] = v if k not in total else total[k] + v
    if scaler is not None:
        scaler.unscale_(optimizer)
    if config.grad_clip is not None:
        norm = nn.utils.clip_grad_norm_(params, config.grad_clip)
        weight = sum(share for _, share in parts)
        total["grad_norm"] = norm if weight == 1.0 else norm * weight
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total


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


@torch.no_grad()
def validation_loss(
    loss_fn: Callable, source: RowSource, step: int, batch_size: int, seed: int,
    device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager] = nullcontext,
) -> float:  # fmt: skip
    """Mean of loss_fn(batch, step)["loss"] over every row of `source`, in batches of
    batch_size in row order, each weighted by its rows; the noise comes from torch's, NumPy's
    and Python's RNGs seeded by `seed` (the same draws at every call) and the caller's RNG
    states are given back (`private_rng`)."""
    n = len(source)
    total = torch.zeros((), dtype=torch.float64, device=device)
    with private_rng(seed, device):
        for start in range(0, n, batch_size):
            rows = torch.arange(start, min(start + batch_size, n))
            with autocast():
                loss = loss_fn(source.take(rows), step)["loss"]
            total += loss.detach().double() * len(rows)
    return float(total) / n


def _summarise(pending: list[dict[str, torch.Tensor]], step: int) -> dict[str, float]:
    """Mean of each term over the pending steps (summed over processes under torchrun: each
    holds its share of the global batch mean)."""
    keys = list(dict.fromkeys(k for terms in pending for k in terms))
    means = torch.stack([
        torch.stack([terms[k].float() for terms in pending if k in terms]).sum() / len(pending)
        for k in keys
    ])  # fmt: skip
    if rank_and_world()[1] > 1:
        dist.all_reduce(means)
    row = dict(zip(keys, means.tolist(), strict=True))
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


def _check_rows(name: str, x, y) -> None:
    if not isinstance(x, torch.Tensor | NpyArray) or x.ndim == 0 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty tensor (or NpyArray) of shape (n, ...)")
    if y is not None and (not isinstance(y, torch.Tensor) or len(y) != len(x)):
        raise ValueError(f"the labels of {name} must be None or a tensor with {len(x)} rows")


def _check_fit_args(x, y, config, val, out, checkpoint_every, resume, callback, callback_every,
                    log_every, loggers, world) -> None:  # fmt: skip
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(x, torch.Tensor | NpyArray) or x.ndim == 0 or len(x) == 0:
        raise ValueError("x must be a non-empty tensor (or NpyArray) of shape (n, ...)")
    if y is not None and (not isinstance(y, torch.Tensor) or len(y) != len(x)):
        raise ValueError(f"y must be None or a tensor with {len(x)} rows, like x")
    if val is not None:
        if not isinstance(val, tuple) or len(val) != 2:
            raise TypeError("val must be (rows, labels or None), like (x, y)")
        _check_rows("val", *val)
        if tuple(val[0].shape[1:]) != tuple(x.shape[1:]) or (val[1] is None) != (y is None):
            raise ValueError(
                f"val rows must have the shape of x's rows {tuple(x.shape[1:])} and labels "
                f"exactly when x has them; got rows of shape {tuple(val[0].shape[1:])}"
            )
    for name, v in [("checkpoint_every", checkpoint_every), ("callback_every", callback_every),
                    ("log_every", log_every)]:  # fmt: skip
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if out is None and (resume or checkpoint_every is not None or loggers):
        raise ValueError("resume, checkpoint_every and loggers need an out folder")
    if (callback is None) != (callback_every is None):
        raise ValueError("pass callback and callback_every together")
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {world} processes")
    if config.batch_size // world < config.grad_accum_steps:
        raise ValueError(
            f"{world} processes' shares of batch_size {config.batch_size} cannot be split into "
            f"grad_accum_steps={config.grad_accum_steps} micro-batches; use a larger batch"
        )
    if len(x) < world:
        raise ValueError(f"{len(x)} rows cannot be shared by {world} processes")


def fit(
    model: nn.Module,
    x: torch.Tensor | NpyArray,
    y: torch.Tensor | None,
    config: TrainConfig,
    *,
    val: tuple[torch.Tensor | NpyArray, torch.Tensor | None] | None = None,
    out: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    callback: Callable[[int, nn.Module], dict[str, float] | None] | None = None,
    callback_every: int | None = None,
    log_every: int = 50,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    save_best: Callable[[Path], object] | None = None,
    loggers: Sequence[str] = (),
) -> TrainResult:
    """Minimise `model.loss(batch, step)["loss"]` over rows of x (and y) with AdamW.

    Args:
        x: (n, ...) rows: a tensor, or a `genlab.data.NpyArray` read batch by batch.
        y: (n,) labels or None.
        val: (rows, labels or None) of validation data (None: config.val_fraction of x's
            rows, when set, else no validation); see the module docstring.
        out: folder for checkpoint.pt and log.jsonl (None: no files). Without resume (or
            without a checkpoint to resume), a checkpoint, log and best/ already there are
            replaced; temp files of killed writes are removed.
        checkpoint_every: steps between checkpoints (one is also written at the end).
        resume: continue exactly from out/checkpoint.pt when it exists (validation included:
            the best weights and the patience count are in the checkpoint).
        callback: called as callback(step, model) every `callback_every` steps, on every
            process, with the EMA weights loaded and the model in eval mode; the numbers it
            returns are logged.
        log_every: steps per logged row; a row holds the mean of each loss term since the
            previous row, the lr and the elapsed seconds. Evaluations log rows {"step",
            "val_loss", "seconds"}.
        progress: tqdm bar (None: only on a TTY).
        device: None: cuda (this process's GPU under torchrun) when available, else cpu.
        save_best: with out and validation, called on rank 0 as save_best(out / "best") with
            the best weights loaded (eval mode) whenever the validation loss improves; it
            should write a model folder atomically (a family's `save`).
        loggers: names for `genlab.loggers.make_loggers` ("csv", "tensorboard"): every logged
            row also goes to them (rank 0, with out).

    Returns:
        TrainResult. The model ends on the device in eval mode, holding the EMA weights (the
        raw weights when ema_decay is None) of the last step; the checkpoint keeps both, and
        `best_state` the best evaluation's.

    Raises:
        ValueError: bad arguments, a device this machine lacks, a corrupt checkpoint, or one
            written with another config or for other data (its fingerprint: shape, dtype and
            a hash of sampled rows of x and y, and of the validation rows) or another model.
        DivergedError: the loss became NaN or infinite.
    """
    rank, world = rank_and_world()
    _check_fit_args(x, y, config, val, out, checkpoint_every, resume, callback, callback_every,
                    log_every, loggers, world)  # fmt: skip
    device = _resolve_device(device, world)
    with private_rng((config.seed + rank) % 2**32, device):
        return _run(model, x, y, config, val, device, out, checkpoint_every, resume, callback,
                    callback_every, log_every, progress, save_best, loggers)  # fmt: skip


def _precision(config: TrainConfig, device: torch.device):
    """(autocast context factory, GradScaler or None) of config.precision."""
    dtype = AUTOCAST[config.precision]
    if dtype is None:
        return nullcontext, None
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype)), scaler


def _run(model, x, y, config, val, device, out, checkpoint_every, resume, callback,
         callback_every, log_every, progress, save_best, loggers) -> TrainResult:  # fmt: skip
    """The loop of `fit`, inside its private RNG state."""
    rank, world = rank_and_world()
    params = [p for p in model.to(device).parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = make_optimizer(params, config)
    autocast, scaler = _precision(config, device)
    folder = None if out is None else Path(out)
    ckpt_path = None if folder is None else folder / CHECKPOINT_FILE

    fingerprint = None if folder is None else data_fingerprint(x, y)
    if val is None and config.val_fraction is not None:
        x, y, val = split_validation(x, y, config.val_fraction, config.seed)
    val_fingerprint = None if folder is None or val is None else data_fingerprint(*val)
    if rank == 0 and folder is not None:  # killed writes' temp files (can be large)
        remove_stale_temps(folder, (CHECKPOINT_FILE, LOG_FILE))
    run = RunState()
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, config, fingerprint)
        check_val_fingerprint(ckpt_path, ckpt, val_fingerprint)
        run = restore(ckpt, model, optimizer, device, ckpt_path, scaler)
    loss_fn = torch.compile(model.loss) if config.compile else model.loss
    ddp = data_parallel(model, loss_fn, device) if world > 1 else None  # broadcasts rank 0's
    state = model.state_dict()  # tensors sharing storage with the model's
    if run.ema is None and config.ema_decay is not None:
        run.ema = {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}
    ema_pairs = ([], []) if run.ema is None else (list(run.ema.values()),
                                                  [state[k] for k in run.ema])  # fmt: skip
    history = read_log(folder / LOG_FILE, run.step) if run.step else []
    log, sinks = None, []
    if rank == 0 and folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        if run.step == 0:
            ckpt_path.unlink(missing_ok=True)  # never resume an older run after this one's log
            _remove_best(folder)
        text = "".join(json.dumps(row) + "\n" for row in history)
        atomic_write(folder / LOG_FILE, lambda f: f.write(text.encode()))
        log = open(folder / LOG_FILE, "a")  # noqa: SIM115 (closed in finally)
        if loggers:
            from genlab.loggers import make_loggers  # only when asked (optional packages)

            sinks = make_loggers(loggers, folder, run.step)

    def emit(row: dict[str, float]) -> None:
        history.append(row)
        if log is not None:
            log.write(json.dumps(row) + "\n")
            log.flush()
        for sink in sinks:
            sink.log(row)

    forward = loss_fn if ddp is None else ddp
    source = RowSource(x, y, device)
    val_source = None if val is None else RowSource(*val, device)
    val_seed = _seed_of(config.seed, VAL_NOISE_KEY)
    window = config.data_window or default_window(x)
    batches = batch_indices(len(x), config.batch_size, config.seed, *run.data, window=window)
    hide = None if progress is None else not progress  # None: tqdm hides it off a TTY
    bar = tqdm(total=config.step_limit, initial=run.step, disable=True if rank else hide)
    pending: list[dict[str, torch.Tensor]] = []
    saved, start, lr = -1, time.perf_counter() - run.seconds, config.lr
    shown: dict[str, str] = {}

    def evaluate() -> None:
        """Validation loss at run.step; keep the best weights, count evaluations without one."""
        with ema_weights(model, run.ema):
            loss = validation_loss(loss_fn, val_source, run.step, config.batch_size, val_seed,
                                   device, autocast)  # fmt: skip
            if run.best_loss is None or loss < run.best_loss:
                weights = run.ema or {k: v for k, v in state.items() if v.is_floating_point()}
                run.best = {k: v.detach().clone() for k, v in weights.items()}
                run.best_step, run.best_loss, run.bad_evals = run.step, loss, 0
                if rank == 0 and folder is not None and save_best is not None:
                    save_best(folder / BEST_FOLDER)
            else:
                run.bad_evals += 1
        run.evaluated = run.step
        shown["val"] = f"{loss:.4g}"
        emit({"step": run.step, "val_loss": loss, "seconds": time.perf_counter() - start})

    model.train()
    try:
        while True:
            run.seconds = time.perf_counter() - start
            if world > 1 and config.max_time is not None:
                run.seconds = rank0_seconds(run.seconds, device)
            if budget_spent(run, config) or out_of_patience(run, config):
                break
            epoch, index, rows = next(batches)
            share = rows[rank::world] if world > 1 else rows  # this process's interleaved part
            parts = micro_batches(share, len(rows), config.grad_accum_steps)
            lr = lr_at(run.step, config, planned_steps(run.step, run.seconds, config))
            terms = train_step(forward, source, parts, run.step, params, optimizer, lr, config,
                               world=world, scaler=scaler, autocast=autocast,
                               no_sync=None if ddp is None else ddp.no_sync)  # fmt: skip
            run.step, run.data = run.step + 1, (epoch, index + 1)
            if ema_pairs[0]:
                ema_update(*ema_pairs, ema_decay_at(config.ema_decay, run.step))
            pending.append(terms)
            bar.update()

            row: dict[str, float] = {}
            if run.step % log_every == 0:
                row, pending = {**_summarise(pending, run.step), "lr": lr}, []
                shown.update(loss=f"{row['loss']:.4g}", lr=f"{lr:.2e}")
                if config.max_time is not None:
                    shown["left"] = f"{config.max_time - run.seconds:.0f}s"
                bar.set_postfix(shown, refresh=False)
            if callback is not None and run.step % callback_every == 0:
                with ema_weights(model, run.ema):
                    row.update({k: float(v) for k, v in (callback(run.step, model) or {}).items()})
            if row:
                emit({"step": run.step, **row, "seconds": time.perf_counter() - start})
            if val_source is not None and run.step % config.eval_every == 0:
                evaluate()
            if checkpoint_every is not None and run.step % checkpoint_every == 0:
                run.seconds = time.perf_counter() - start
                checkpoint(ckpt_path, model, optimizer, run, config, fingerprint,
                           scaler=scaler, val_fingerprint=val_fingerprint)  # fmt: skip
                saved = run.step
        if pending:  # the steps since the last row
            emit({"step": run.step, **_summarise(pending, run.step), "lr": lr,
                  "seconds": run.seconds})  # fmt: skip
        if val_source is not None and run.evaluated != run.step:
            evaluate()  # the last weights are always evaluated
            saved = -1
        if ckpt_path is not None and saved != run.step:
            checkpoint(ckpt_path, model, optimizer, run, config, fingerprint, scaler=scaler,
                       val_fingerprint=val_fingerprint)  # fmt: skip
    finally:
        bar.close()
        if log is not None:
            log.close()
        for sink in sinks:
            sink.close()
        del ddp  # its reducer's hooks go with it: later backward passes stay local
    _copy_into(state, run.ema or {})
    model.eval()
    return TrainResult(steps=run.step, seconds=run.seconds, history=history,
                       best_step=run.best_step, best_val_loss=run.best_loss,
                       stopped_early=out_of_patience(run, config),
                       best_state=run.best)  # fmt: skip


def _remove_best(folder: Path) -> None:
    """Drop an earlier run's out/best/ model folder (a fresh run must not show its best)."""
    best = folder / BEST_FOLDER
    if best.is_dir() and ((best / "config.json").exists() or (best / PENDING).exists()):
        shutil.rmtree(best)
