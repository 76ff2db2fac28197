"""The limits the families check up front, and the finiteness of what they return.

- Sizes: `build_within_memory` builds a family's networks on the meta device first (no
  memory), counts their parameters and buffers and refuses, before anything is allocated,
  networks whose parameters alone (4 bytes each) would not fit in this machine's memory
  (`genlab.models.base.check_memory`, the one place of that arithmetic); `check_steps`
  bounds the network passes one call may ask for per row (solver and sampler steps,
  importance samples) by MAX_STEPS; `check_trajectory` the memory of a returned trajectory.
- Results: `log_prob_result` turns float64 log-probabilities into the float32 that
  `log_prob` returns, refusing NaN and values beyond float32's range (a ValueError naming
  the row, never NaN or -inf passed on); `check_outputs` raises `DivergedError` when a
  network's outputs or a model's samples are not finite, before anything (a clamp, a
  sigmoid, a rounding) could turn them into finite numbers silently.
- FAR_SIGMAS: how far (in standard deviations of the normalised space) a point may lie for
  the networks of the ODE families to be evaluated there (`genlab.models.continuous`).
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from genlab.models.base import DivergedError, check_memory

MAX_STEPS = 100_000
"""The most network passes per row one call may ask for: solver or sampler steps,
diffusion timesteps, importance samples (typical values are 10 to 1,000)."""
FAR_SIGMAS = 1e4
"""Rows farther than this many standard deviations (in the normalised space of the ODE
families) are scored in closed form, not by integrating the network's field there."""


def build_within_memory(make: Callable[[], nn.Module], what: str, fix: str) -> nn.Module:
    """make() (a module), after checking on the meta device that its parameters and
    buffers (4 bytes each) fit in memory.

    Args:
        make: builds the module; called twice (once on the meta device, which allocates
            nothing and draws nothing from the RNG, then for real).
        what: what the module is ("the VAE's networks"), for the message.
        fix: which options make it smaller ("use a smaller hidden").

    Raises:
        ValueError: "<what> (N parameters x 4 bytes) would need X GB of memory; ...".
    """
    try:
        with torch.device("meta"):
            probe = make()
    except RuntimeError as e:  # sizes beyond 2**63 elements overflow even on the meta device
        if "overflow" not in str(e):
            raise
        raise ValueError(
            f"{what} would need more memory than any machine has (its tensor sizes overflow: "
            f"{e}); {fix}"
        ) from None
    count = sum(t.numel() for t in itertools.chain(probe.parameters(), probe.buffers()))
    check_memory(4.0 * count, f"{what} ({count:,} parameters x 4 bytes)", fix)
    return make()


def check_steps(value: Any, name: str = "steps") -> int:
    """value as an int in [1, MAX_STEPS].

    Raises:
        ValueError: not an integer >= 1, or more than MAX_STEPS network passes.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if value > MAX_STEPS:
        raise ValueError(
            f"{name}={value:,} is more than {MAX_STEPS:,}: each one is a network pass over "
            f"every row, so the call would run for days; use at most {MAX_STEPS:,} "
            "(typically 10 to 1,000)"
        )
    return int(value)


def check_flag(value: Any, name: str) -> bool:
    """value, which must be True or False (a truthy string is not a yes).

    Raises:
        TypeError: any other value.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_tolerances(rtol: Any, atol: Any) -> None:
    """Refuse solver tolerances that are not finite numbers > 0 (even where the chosen
    method ignores them: a bad value is a mistake either way).

    Raises:
        ValueError: naming the tolerance.
    """
    for name, value in (("rtol", rtol), ("atol", atol)):
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not (real and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_trajectory(steps: int, n: int, dim: int) -> None:
    """Refuse a trajectory of steps + 1 float32 states of n samples of dim numbers that
    cannot fit in memory.

    Raises:
        ValueError: naming the memory it would need.
    """
    check_memory(
        4.0 * (steps + 1) * n * dim,
        f"return_trajectory with {steps + 1:,} states of {n:,} samples of {dim:,} numbers",
        "draw fewer samples or steps, or pass return_trajectory=False",
    )


def log_prob_result(log_p: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """log-probabilities (computed in float64) as `dtype`, each finite.

    Raises:
        ValueError: a NaN (the model's outputs are not finite there), or a value beyond the
            range of `dtype` (a row so far from the training data that its log-density
            cannot be represented), naming the first such row.
    """
    log_p = log_p.double()
    top, name = float(torch.finfo(dtype).max), str(dtype).removeprefix("torch.")
    row = first_row(torch.isnan(log_p))
    if row is not None:
        raise ValueError(
            f"log_prob is NaN for row {row}: the model's outputs are not finite there (its "
            "weights diverged or were edited); re-fit the model"
        )
    row = first_row(log_p.abs() > top)
    if row is not None:
        raise ValueError(
            f"row {row} lies so far from the training data that its log-probability "
            f"({float(log_p[row]):.3g} nats) is beyond the range of {name} (+-{top:.3g}) "
            "that log_prob returns; remove such rows or rescale the data"
        )
    return log_p.to(dtype)


def first_row(mask: Tensor) -> int | None:
    """The index of the first True of a (n,) boolean mask, or None when there is none."""
    return int(mask.nonzero()[0, 0]) if bool(mask.any()) else None


def check_outputs(values: Tensor | tuple[Tensor, ...], what: str) -> None:
    """Raise DivergedError when any of `values` is NaN or infinite.

    what: what the values are ("the decoder's outputs", "samples"), for the message.
    """
    for v in values if isinstance(values, tuple) else (values,):
        if not bool(torch.isfinite(v).all()):
            raise DivergedError(
                f"{what} are not finite (NaN or infinity): the network's weights make it "
                "overflow (its training diverged, or the weights were edited); re-fit it "
                "with a lower learning rate (lr)"
            )
