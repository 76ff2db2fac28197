"""What the continuous-time families (flow matching, diffusion) share: the record of a sampled
trajectory, the divergence of a vector field for the instantaneous change of variables, and
classifier-free guidance (label dropout at training, the guided combination at sampling).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


class SampleTrajectory(NamedTuple):
    """`sample(..., return_trajectory=True)`: samples (n, *event_shape); trajectory
    (S+1, n, *event_shape) from the noise (index 0) to the samples (index -1), data space, CPU;
    times (S+1,): the schedule time of each state, from 1 (noise) to 0 (data)."""

    samples: Tensor
    trajectory: Tensor
    times: Tensor


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over all but the first axis: (B, ...) -> (B,) nats."""
    flat = z.reshape(len(z), -1)
    return -0.5 * (flat.shape[1] * LOG_2PI + flat.square().sum(1))


def drop_labels(y: Tensor, p: float, null_index: int) -> Tensor:
    """Each label replaced by the null index with probability p (global RNG: training only)."""
    if p <= 0:
        return y
    return torch.where(torch.rand(y.shape, device=y.device) < p, null_index, y)


def guided(cond: Tensor, uncond: Tensor, w: float) -> Tensor:
    """Classifier-free guidance: v = v_uncond + (1 + w)(v_cond - v_uncond); w = 0: v_cond."""
    return uncond + (1 + w) * (cond - uncond)


def exact_divergence(f: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """(f(x), div f(x)) with the trace of df/dx summed exactly, one backward pass per dimension.

    (B, ...) -> ((B, ...), (B,)); rows must not interact (f acts row-wise).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = f(x)
        flat_v = v.reshape(len(x), -1)
        d = flat_v.shape[1]
        div = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for i in range(d):
            (grad,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=i < d - 1)
            div = div + grad.reshape(len(x), -1)[:, i]
    return v.detach(), div.detach()


def hutchinson_divergence(
    f: Callable[[Tensor], Tensor], x: Tensor, probes: Tensor
) -> tuple[Tensor, Tensor]:
    """(f(x), mean_k e_k^T (df/dx) e_k): Hutchinson's unbiased estimate of the divergence.

    probes: (K, B, ...) with E[e e^T] = I (Rademacher); one vector-Jacobian product each.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = f(x)
        div = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for k, e in enumerate(probes):
            (vjp,) = torch.autograd.grad(v, x, grad_outputs=e, retain_graph=k < len(probes) - 1)
            div = div + (vjp * e).reshape(len(x), -1).sum(1)
    return v.detach(), div.detach() / len(probes)


def check_guidance(guidance: Any, labels: Tensor | None) -> float:
    if isinstance(guidance, bool) or not isinstance(guidance, int | float | np.floating):
        raise TypeError(f"guidance must be a number, got {type(guidance).__name__}")
    if not math.isfinite(guidance):
        raise ValueError(f"guidance must be finite, got {guidance}")
    if guidance != 0 and labels is None:
        raise ValueError("classifier-free guidance needs labels: pass y (an int or (n,) labels)")
    return float(guidance)
