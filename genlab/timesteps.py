"""Training-time distributions: where on the path t in (0, 1) (t = 0 the data, t = 1 the
noise, as in `genlab.schedules`) a flow or diffusion loss is evaluated.

    "uniform":      t ~ U(0, 1)                                       (Lipman et al. 2023; DDPM)
    "logit_normal": t = sigmoid(m + s n), n ~ N(0, 1)                 (Esser et al. 2024, SD3:
                    m = 0, s = 1 puts most weight on the middle of the path)
    "lognormal":    sigma/alpha = exp(m + s n), n ~ N(0, 1), mapped to t by the schedule's
                    log-SNR, lambda(t) = -2 (m + s n)                 (Karras et al. 2022, EDM:
                    m = -1.2, s = 1.2 in sigma = noise-to-signal units)

Pure functions over a local `torch.Generator` or the caller's RNG (the trainer's, for
resumable runs), never a family: the flow and diffusion losses call `draw_times`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from genlab.schedules import Schedule

TimeSampling = Literal["uniform", "logit_normal", "lognormal"]
TIME_SAMPLINGS: tuple[str, ...] = ("uniform", "logit_normal", "lognormal")
DEFAULT_LOCATION = {"uniform": 0.0, "logit_normal": 0.0, "lognormal": -1.2}
DEFAULT_SCALE = {"uniform": 1.0, "logit_normal": 1.0, "lognormal": 1.2}
T_EPS = 1e-5  # times are kept in [T_EPS, 1 - T_EPS]: both ends of the path are singular


def draw_times(
    name: str,
    n: int,
    schedule: Schedule,
    *,
    location: float | None = None,
    scale: float | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """n training times in [T_EPS, 1 - T_EPS] from the distribution `name` (module docstring):
    (n,) of `dtype` on `device`. location / scale: m and s (None: the distribution's
    defaults, `DEFAULT_LOCATION` / `DEFAULT_SCALE`; uniform ignores them)."""
    if name not in TIME_SAMPLINGS:
        raise ValueError(f"time sampling must be one of {TIME_SAMPLINGS}, got {name!r}")
    m = DEFAULT_LOCATION[name] if location is None else float(location)
    s = DEFAULT_SCALE[name] if scale is None else float(scale)
    if not (math.isfinite(m) and math.isfinite(s) and s > 0):
        raise ValueError(f"time sampling needs a finite location and a scale > 0, got {m}, {s}")
    if name == "uniform":
        t = torch.rand(n, device=device, dtype=torch.float64, generator=generator)
    else:
        normal = torch.randn(n, device=device, dtype=torch.float64, generator=generator)
        if name == "logit_normal":
            t = torch.sigmoid(m + s * normal)
        else:  # log sigma ~ N(m, s^2); lambda = log(alpha^2 / sigma^2) = -2 log sigma
            t = schedule.t_of_log_snr(-2.0 * (m + s * normal)).to(device)
    return t.clamp(T_EPS, 1 - T_EPS).to(dtype)


def time_density(name: str, t: Tensor, schedule: Schedule, location=None, scale=None) -> Tensor:
    """The density p(t) of `draw_times` at t in (0, 1) (float64), for tests and loss weights:
    uniform 1; logit-normal N(logit t; m, s) / (t (1 - t)); lognormal by the change of
    variables log sigma = -lambda(t) / 2, |d log sigma / dt| = |lambda'(t)| / 2."""
    m = DEFAULT_LOCATION[name] if location is None else float(location)
    s = DEFAULT_SCALE[name] if scale is None else float(scale)
    t = t.double()
    if name == "uniform":
        return torch.ones_like(t)
    normal = torch.distributions.Normal(torch.tensor(m, dtype=torch.float64), s)
    if name == "logit_normal":
        return normal.log_prob(torch.logit(t)).exp() / (t * (1 - t))
    tt = t.clone().requires_grad_(True)
    with torch.enable_grad():
        lam = schedule.log_snr(tt)
        (dlam,) = torch.autograd.grad(lam.sum(), tt)
    return normal.log_prob(-lam.detach() / 2).exp() * dlam.abs() / 2
