"""Time grids for the samplers of flow and diffusion: where in t in [0, 1] to evaluate the net.

t = 0 is the data and t = 1 the noise (`genlab.schedules`); a grid is a float64 tensor
(steps + 1,) strictly decreasing from t_max to t_min, which a sampler walks in `steps` steps.

    grid = time_grid(schedule, "karras", 18, t_min=1e-3, to_zero=True)   # EDM's grid
    grid = check_times([1.0, 0.6, 0.3, 0.0])                              # a user's grid

Names (GRIDS):
    "uniform"    t_i linear in i                              (DDIM's uniform spacing)
    "quadratic"  sqrt(t_i) linear in i                        (DPM-Solver's "time_quadratic",
                                                               Lu et al. 2022, sec. 3.4)
    "power"      t_i^(1/rho) linear in i, rho = 1.5 unless     (rho = 1 is "uniform", rho = 2
                 given (POWER_RHO)                             "quadratic": between the two)
    "logsnr"     lambda(t_i) = log(alpha^2 / sigma^2) linear  (DPM-Solver's "logSNR")
    "karras"     the noise-to-signal ratio r = sigma / alpha spaced as
                 r_i = (r_max^(1/rho) + i / (N - 1) (r_min^(1/rho) - r_max^(1/rho)))^rho,
                 i = 0..N-1 (Karras et al. 2022, "Elucidating the design space...", eq. 5;
                 rho = 7), mapped back to t by t = schedule.t_of_log_snr(-2 log r).

"power" is ours: DPM-Solver++ 2M at 15 steps scored a lower MMD² on its rho = 1.5 grid to
t = 0 than on the uniform grid on all 8 toys, but a higher Fréchet distance on digits
(BENCHMARKS.md, "A power grid for DPM-Solver++"). "logsnr" and "karras" need t_min > 0 (the
log-SNR is +inf at t = 0) and a finite log-SNR at t_max (a flow path with alpha(1) = 0 needs
t_max < 1); `to_zero=True` then makes the last step go to t = 0 (EDM's sigma_N = 0), so the
spaced part has `steps` entries and the grid still has steps + 1. The ends are pinned:
grid[0] = t_max and grid[-1] = t_min (or 0) exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from genlab.schedules import Schedule

GRIDS = ("uniform", "quadratic", "power", "logsnr", "karras")
"""The names `time_grid` knows."""
KARRAS_RHO = 7.0
"""EDM's rho (Karras et al. 2022, eq. 5), the "karras" grid's default."""
POWER_RHO = 1.5
"""The "power" grid's default exponent, chosen on the 8 toys against 1.25 and 1.75."""

_NEEDS_POSITIVE_T_MIN = ("logsnr", "karras")


def _real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _check_grid_args(
    name: str, steps: int, t_max: float, t_min: float, rho: float | None, to_zero: bool
) -> tuple[float, float, float]:
    if name not in GRIDS:
        raise ValueError(f"unknown time grid {name!r}; choose one of {', '.join(GRIDS)}")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if rho is None:
        rho = POWER_RHO if name == "power" else KARRAS_RHO
    t_max, t_min, rho = _real(t_max, "t_max"), _real(t_min, "t_min"), _real(rho, "rho")
    if not 0.0 < t_max <= 1.0:
        raise ValueError(f"t_max must be in (0, 1], got {t_max!r}")
    if not 0.0 <= t_min < t_max:
        raise ValueError(f"t_min must be in [0, t_max) = [0, {t_max!r}), got {t_min!r}")
    if rho <= 0.0:
        raise ValueError(f"rho must be > 0 (EDM uses 7, the power grid 1.5), got {rho!r}")
    if not isinstance(to_zero, bool):
        raise TypeError(f"to_zero must be True or False, got {to_zero!r}")
    if name in _NEEDS_POSITIVE_T_MIN and t_min == 0.0:
        raise ValueError(
            f"the {name!r} grid needs t_min > 0 (the log-SNR is infinite at t = 0); pass e.g. "
            "t_min=1e-3 (or 1 / T for a T-step chain), with to_zero=True to end at t = 0"
        )
    if to_zero and t_min == 0.0:
        raise ValueError("to_zero=True needs t_min > 0 (with t_min = 0 the grid already ends at 0)")
    return t_max, t_min, rho


def time_grid(
    schedule: Schedule,
    name: str,
    steps: int,
    *,
    t_max: float = 1.0,
    t_min: float = 0.0,
    rho: float | None = None,
    to_zero: bool = False,
) -> Tensor:
    """The steps + 1 times (float64, strictly decreasing) a sampler visits; see the module doc.

    Without to_zero the grid runs from t_max to t_min; with it, `steps` spaced times run from
    t_max to t_min and a final 0 follows (steps = 1: [t_max, 0]). `rho` is the exponent of
    "power" (default POWER_RHO) and of "karras" (default KARRAS_RHO, EDM's 7); the other grids
    ignore it. With t_max = 1 and t_min = 1 / T, "quadratic" and "logsnr" give the same numbers
    as `genlab.models.diffusion_maths.sampling_times` of a T-step chain.
    """
    t_max, t_min, rho = _check_grid_args(name, steps, t_max, t_min, rho, to_zero)
    n = steps if to_zero else steps + 1  # spaced entries, from t_max to t_min
    if n == 1:
        return torch.tensor([t_max, 0.0], dtype=torch.float64)
    ends = torch.tensor([t_max, t_min], dtype=torch.float64)
    if name == "uniform":
        times = torch.linspace(t_max, t_min, n, dtype=torch.float64)
    elif name == "quadratic":
        times = torch.linspace(math.sqrt(t_max), math.sqrt(t_min), n, dtype=torch.float64).square()
    elif name == "power":
        times = (
            torch.linspace(t_max ** (1 / rho), t_min ** (1 / rho), n, dtype=torch.float64) ** rho
        )
    else:
        lam = schedule.log_snr(ends)
        if not bool(torch.isfinite(lam).all()):
            raise ValueError(
                f"the {name!r} grid needs a finite log-SNR at t_max and t_min, but this schedule "
                f"has log-SNR {lam.tolist()} at t = {[t_max, t_min]} (alpha = 0 at t = 1 for a "
                "flow path): pass t_max < 1, e.g. t_max=1 - 1e-3"
            )
        lo, hi = float(lam[0]), float(lam[1])
        if name == "logsnr":
            lams = torch.linspace(lo, hi, n, dtype=torch.float64)
        else:  # u = r^(1/rho) = exp(a) with a = -lambda / (2 rho), linear in i from u_0 to u_n:
            # log u_i = a_0 + log(1 + w_i (exp(a_n - a_0) - 1)) in logs, then lambda = -2 rho log u
            a_0, a_n = -lo / (2 * rho), -hi / (2 * rho)
            w = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
            lams = -2 * rho * (a_0 + torch.log1p(w * math.expm1(a_n - a_0)))
        times = schedule.t_of_log_snr(lams).double()
    times[0], times[-1] = ends
    if to_zero:
        times = torch.cat([times, times.new_zeros(1)])
    if not bool((times[1:] < times[:-1]).all()):
        raise ValueError(
            f"{steps} steps of the {name!r} grid from t_max={t_max!r} to t_min={t_min!r} give "
            "repeated times in float64: use fewer steps or a wider range"
        )
    return times


def check_times(times: Sequence[float] | np.ndarray | Tensor) -> Tensor:
    """A user-given time grid as a float64 CPU tensor (S + 1,), after checking that it is 1-D,
    has >= 2 finite entries, is strictly decreasing and lies within [0, 1] (t = 1 noise,
    t = 0 data). It may start below 1 (SDEdit) and end above 0."""
    if isinstance(times, str | bytes) or not isinstance(times, Sequence | np.ndarray | Tensor):
        raise TypeError(
            "times must be a 1-D sequence, array or tensor of floats, decreasing from <= 1 to "
            f">= 0, e.g. [1.0, 0.5, 0.0]; got {type(times).__name__}"
        )
    if isinstance(times, Tensor):
        if times.is_complex() or times.dtype == torch.bool:
            raise TypeError(f"times must be real numbers, got a tensor of dtype {times.dtype}")
        grid = times.detach().to("cpu", torch.float64).clone()
    else:
        values = np.asarray(times)
        if values.dtype == object or values.dtype.kind not in "fiu":
            raise TypeError(
                "times must be real numbers, e.g. [1.0, 0.5, 0.0]; got "
                f"{times!r:.80} (dtype {values.dtype})"
            )
        grid = torch.tensor(values.astype(np.float64))
    if grid.ndim != 1:
        raise ValueError(f"times must be 1-D, got shape {tuple(grid.shape)}")
    if len(grid) < 2:
        raise ValueError(
            f"times needs at least 2 entries (a start and an end), got {len(grid)}: e.g. [1.0, 0.0]"
        )
    if not bool(torch.isfinite(grid).all()):
        raise ValueError(f"times must be finite, got {grid.tolist()}")
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(
            "times must be strictly decreasing (from noise, t near 1, to data, t near 0), got "
            f"{grid.tolist()}; sort them in decreasing order and drop repeats"
        )
    if grid[0] > 1.0 or grid[-1] < 0.0:
        raise ValueError(f"times must lie within [0, 1], got {grid[0].item()} to {grid[-1].item()}")
    return grid
