"""torch.distributed helpers shared by the trainer and the mixture's EM (launched by torchrun).

Without an initialised process group every function is the one-process identity, so callers
need no branches of their own.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "all_gather_padded",
    "all_reduce",
    "all_reduce_gradients",
    "broadcast_state",
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


def broadcast_state(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process."""
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, 0)


def all_reduce_gradients(params: list[nn.Parameter], weight: float) -> None:
    """grad <- sum over processes of weight * grad (weight: this process's share of the global
    batch, so the result is the global mean), one flat buffer per dtype. Unused parameters
    contribute zeros, so every process reduces the same buffers."""
    buckets: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        buckets.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in grads]).mul_(weight)
        dist.all_reduce(flat)
        for g, chunk in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(chunk.view_as(g))


def rank0_seconds(seconds: float, device: torch.device) -> float:
    """Rank 0's clock on every process, so all agree on when max_time stops the run."""
    t = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t.item())
