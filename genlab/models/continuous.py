"""What the continuous-time families (flow matching, diffusion) share: the record of a sampled
trajectory, the divergence of a vector field for the instantaneous change of variables, and
classifier-free guidance (label dropout at training, the guided combination at sampling).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from genlab.solvers import (  # noqa: F401  (re-exported: the continuous families' toolbox)
    LOG_2PI,
    exact_divergence,
    hutchinson_divergence,
    standard_normal_log_prob,
)


class SampleTrajectory(NamedTuple):
    """`sample(..., return_trajectory=True)`: samples (n, *event_shape); trajectory
    (S+1, n, *event_shape) from the noise (index 0) to the samples (index -1), data space, CPU;
    times (S+1,): the schedule time of each state, from 1 (noise) to 0 (data)."""

    samples: Tensor
    trajectory: Tensor
    times: Tensor


def drop_labels(y: Tensor, p: float, null_index: int) -> Tensor:
    """Each label replaced by the null index with probability p (global RNG: training only)."""
    if p <= 0:
        return y
    return torch.where(torch.rand(y.shape, device=y.device) < p, null_index, y)


def guided(cond: Tensor, uncond: Tensor, w: float) -> Tensor:
    """Classifier-free guidance: v = v_uncond + (1 + w)(v_cond - v_uncond); w = 0: v_cond."""
    return uncond + (1 + w) * (cond - uncond)


def check_guidance(guidance: Any, labels: Tensor | None) -> float:
    if isinstance(guidance, bool) or not isinstance(guidance, int | float | np.floating):
        raise TypeError(f"guidance must be a number, got {type(guidance).__name__}")
    if not math.isfinite(guidance):
        raise ValueError(f"guidance must be finite, got {guidance}")
    if guidance != 0 and labels is None:
        raise ValueError("classifier-free guidance needs labels: pass y (an int or (n,) labels)")
    return float(guidance)
