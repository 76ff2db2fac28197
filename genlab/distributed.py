"""torch.distributed helpers shared by the trainer and the mixture's EM (launched by torchrun).

Without an initialised process group every reduction is the one-process identity, so callers
need no branches of their own; `data_parallel` (the trainer's DistributedDataParallel wrapper)
is for an initialised group only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "LossModule",
    "all_gather_padded",
    "all_reduce",
    "data_parallel",
    "is_distributed",
    "rank0_seconds",
    "rank_and_world",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes); (0, 1) outside torch.distributed."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """t summed over processes, in place (t itself outside torch.distributed)."""
    if is_distributed():
        dist.all_reduce(t)
    return t


def all_gather_padded(lp: torch.Tensor, z: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Every process's rows (lp (m,), z (m, D)), each padded to k rows with lp = +inf, then
    concatenated over processes (the inputs themselves outside torch.distributed)."""
    if not is_distributed():
        return lp, z
    pad = k - len(lp)
    lp = torch.cat([lp, lp.new_full((pad,), math.inf)])
    z = torch.cat([z, z.new_zeros(pad, z.shape[1])])
    _, world = rank_and_world()
    lps = [torch.empty_like(lp) for _ in range(world)]
    zs = [torch.empty_like(z) for _ in range(world)]
    dist.all_gather(lps, lp.contiguous())
    dist.all_gather(zs, z.contiguous())
    return torch.cat(lps), torch.cat(zs)


class LossModule(nn.Module):
    """`loss_fn(batch, step)` (a model's `loss`) as the forward of a module holding the model,
    so that `DistributedDataParallel` can wrap it: the trainer calls losses, not forwards."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: tuple[torch.Tensor, ...], step: int) -> Any:
        return self.loss_fn(batch, step)


def data_parallel(
    model: nn.Module, loss_fn: Callable, device: torch.device
) -> DistributedDataParallel:
    """`loss_fn` wrapped in `DistributedDataParallel` over `model`'s parameters: construction
    copies rank 0's parameters and buffers to every process, and each backward all-reduces
    the gradients (their mean over processes) in buckets while it runs, overlapping
    communication with compute; `no_sync()` skips that for micro-batches that accumulate.

    Buffers are not re-broadcast at each forward (the families' buffers are fixed at set-up);
    every trainable parameter must take part in the loss (DDP's reducer waits for each).
    On CUDA the module's device is `device_ids=[device.index]`; on the CPU (gloo) none.
    """
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(
        LossModule(model, loss_fn), device_ids=device_ids, broadcast_buffers=False
    )


def rank0_seconds(seconds: float, device: torch.device) -> float:
    """Rank 0's clock on every process, so all agree on when max_time stops the run."""
    t = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t.item())
