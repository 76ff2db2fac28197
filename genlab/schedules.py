"""Noise schedules and probability paths: x_t = alpha(t) x0 + sigma(t) eps, one object for all.

Time runs over [0, 1] with t = 0 the data and t = 1 the noise (the diffusion convention; flow
matching integrates the same objects from t = 1 to t = 0). x0 is a data point, eps ~ N(0, I).

    schedule = SCHEDULES["cosine"]()
    xt = schedule.marginal(x0, eps, t)          # q(x_t | x0) sample
    u = schedule.velocity(x0, eps, t)           # d x_t / dt along the conditional path
    lam = schedule.log_snr(t)                   # log(alpha^2 / sigma^2), decreasing in t
    ab = schedule.discrete_alpha_bars(1000)     # alpha_bar(i / T), i = 0..T, float64

A schedule is given by alpha and sigma (and their time derivatives) in closed form; everything
else (log-SNR, its inverse, the discrete alpha_bar of a T-step sampler, marginals and conditional
velocities) follows here, so discrete samplers (DDPM, DDIM) and continuous ones (probability-flow
ODE, DPM-Solver) read one object. Values are computed in float64 and returned in the dtype of t.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_SNR_END = -20.0
"""log-SNR at t = 1 of the cosine diffusion schedule: alpha_bar(1) = sigmoid(-20) ~ 2e-9, about
where Nichol & Dhariwal's clipped discrete schedule ends; alpha(1) > 0 keeps log-SNR finite."""


def _as_time(t: Tensor | float) -> Tensor:
    t = t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)
    if not t.dtype.is_floating_point:
        raise TypeError(f"t must be a float tensor of times in [0, 1], got dtype {t.dtype}")
    return t


def _f64(fn):
    """Evaluate a coefficient in float64 and return it in the dtype and device of t."""

    def wrapped(self, t: Tensor | float) -> Tensor:
        t = _as_time(t)
        return fn(self, t.double()).to(t.dtype)

    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


def broadcast_to(coef: Tensor, x: Tensor) -> Tensor:
    """View a () or (B,) coefficient as (B, 1, ..., 1) so it multiplies x of shape (B, ...)."""
    return coef.reshape(-1, *([1] * (x.ndim - 1))) if coef.ndim == 1 else coef


class Schedule:
    """x_t = alpha(t) x0 + sigma(t) eps for t in [0, 1]; subclasses give the four coefficients.
    `variance_preserving`: alpha^2 + sigma^2 = 1 for every t (the VP diffusion schedules)."""

    variance_preserving: bool = False

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        """d alpha / dt."""
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        """d sigma / dt."""
        raise NotImplementedError

    def alpha_bar(self, t: Tensor) -> Tensor:
        """alpha(t)^2, DDPM's cumulative product of (1 - beta)."""
        return self.alpha(t) ** 2

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2), strictly decreasing; +inf where sigma = 0."""
        t = _as_time(t)
        td = t.double()
        return (2 * (torch.log(self.alpha(td)) - torch.log(self.sigma(td)))).to(t.dtype)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """The inverse of `log_snr`: t with log_snr(t) = lam (60 bisection steps in float64)."""
        lam = _as_time(lam)
        target = lam.double()
        lo, hi = torch.zeros_like(target), torch.ones_like(target)
        for _ in range(60):
            mid = (lo + hi) / 2
            above = self.log_snr(mid) > target  # still too little noise: go later
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return ((lo + hi) / 2).to(lam.dtype)

    def discrete_alpha_bars(self, timesteps: int) -> Tensor:
        """alpha_bar(i / T) for i = 0..T, float64 (T + 1,): the discrete sampler's schedule."""
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
            raise ValueError(f"timesteps must be an integer >= 1, got {timesteps!r}")
        return self.alpha_bar(torch.arange(timesteps + 1, dtype=torch.float64) / timesteps)

    def marginal(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps; t is () or (B,) and broadcasts over x0 (B, ...)."""
        return broadcast_to(self.alpha(t), x0) * x0 + broadcast_to(self.sigma(t), x0) * eps

    def velocity(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """d x_t / dt = alpha'(t) x0 + sigma'(t) eps along the path through (x0, eps)."""
        return broadcast_to(self.d_alpha(t), x0) * x0 + broadcast_to(self.d_sigma(t), x0) * eps

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


# -- flow-matching paths ---------------------------------------------------------------------------
class LinearPath(Schedule):
    """The straight (conditional optimal transport / rectified flow) path.

    alpha = 1 - t, sigma = sigma_min + (1 - sigma_min) t: at t = 0 the data blurred by
    sigma_min, at t = 1 pure noise (Lipman et al. 2023, with their time reversed).
    """

    def __init__(self, sigma_min: float = 0.0):
        if not (isinstance(sigma_min, int | float) and 0.0 <= sigma_min < 1.0):
            raise ValueError(f"sigma_min must be a number in [0, 1), got {sigma_min!r}")
        self.sigma_min = float(sigma_min)

    @_f64
    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    @_f64
    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min + (1 - self.sigma_min) * t

    @_f64
    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -1.0)

    @_f64
    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.full_like(t, 1 - self.sigma_min)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """Closed form: with r = exp(lam / 2) = alpha / sigma, t = (1 - r s) / (1 + r (1 - s))."""
        lam = _as_time(lam)
        r = torch.exp(lam.double() / 2)
        s = self.sigma_min
        return ((1 - r * s) / (1 + r * (1 - s))).to(lam.dtype)


class CosinePath(Schedule):
    """The variance-preserving cosine path of flow matching: alpha = cos(pi t / 2), sigma = sin."""

    @_f64
    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(math.pi / 2 * t)

    @_f64
    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(math.pi / 2 * t)

    @_f64
    def d_alpha(self, t: Tensor) -> Tensor:
        return -math.pi / 2 * torch.sin(math.pi / 2 * t)

    @_f64
    def d_sigma(self, t: Tensor) -> Tensor:
        return math.pi / 2 * torch.cos(math.pi / 2 * t)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """Closed form: alpha / sigma = cot(pi t / 2) = exp(lam / 2)."""
        lam = _as_time(lam)
        return (torch.atan(torch.exp(-lam.double() / 2)) * 2 / math.pi).to(lam.dtype)


# -- variance-preserving diffusion schedules -------------------------------------------------------
class VPSchedule(Schedule):
    """Variance preserving: alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar), where
    alpha_bar(t) = exp(-g(t)) with g increasing, g(0) = 0. Subclasses give g and g'."""

    variance_preserving = True

    def g(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def dg(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    @_f64
    def alpha_bar(self, t: Tensor) -> Tensor:
        return torch.exp(-self.g(t))

    @_f64
    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-self.g(t) / 2)

    @_f64
    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.g(t)))

    @_f64
    def d_alpha(self, t: Tensor) -> Tensor:
        """alpha' = -g'/2 alpha."""
        return -self.dg(t) / 2 * torch.exp(-self.g(t) / 2)

    @_f64
    def d_sigma(self, t: Tensor) -> Tensor:
        """sigma' = g' alpha_bar / (2 sigma)."""
        g = self.g(t)
        return self.dg(t) * torch.exp(-g) / (2 * torch.sqrt(-torch.expm1(-g)))

    @_f64
    def log_snr(self, t: Tensor) -> Tensor:
        """lambda = log(alpha_bar / (1 - alpha_bar)) = -log(expm1(g))."""
        return -torch.log(torch.expm1(self.g(t)))


class LinearBetaSchedule(VPSchedule):
    """DDPM's linear betas (Ho et al. 2020) as the VP-SDE of Song et al. 2021.

    beta(t) = T (beta_start + (beta_end - beta_start) t), so
    g(t) = T (beta_start t + (beta_end - beta_start) t^2 / 2); alpha_bar(i / T) is within
    O(beta^2) per step of DDPM's prod_{j <= i} (1 - beta_j).
    """

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, timesteps: int = 1000):
        if not (0 < beta_start <= beta_end < 1):
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start!r}, "
                f"beta_end={beta_end!r}"
            )
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
            raise ValueError(f"timesteps must be an integer >= 1, got {timesteps!r}")
        self.beta_start, self.beta_end, self.timesteps = (
            float(beta_start),
            float(beta_end),
            timesteps,
        )

    def g(self, t: Tensor) -> Tensor:
        b0, b1, n = self.beta_start, self.beta_end, self.timesteps
        return n * (b0 * t + (b1 - b0) * t**2 / 2)

    def dg(self, t: Tensor) -> Tensor:
        b0, b1, n = self.beta_start, self.beta_end, self.timesteps
        return n * (b0 + (b1 - b0) * t)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """Closed form: g = softplus(-lam), then the positive root of the quadratic g(t)."""
        lam = _as_time(lam)
        g = torch.nn.functional.softplus(-lam.double()) / self.timesteps
        b0, db = self.beta_start, self.beta_end - self.beta_start
        t = g / b0 if db == 0 else (torch.sqrt(b0**2 + 2 * db * g) - b0) / db
        return t.to(lam.dtype)


class CosineSchedule(VPSchedule):
    """Nichol & Dhariwal's cosine schedule, alpha_bar(t) = f(t) / f(0) with
    f(t) = cos^2((t c + s) / (1 + s) * pi / 2), where c < 1 is chosen so that
    log_snr(1) = LOG_SNR_END (the original has alpha_bar(1) = 0 and clips beta at 0.999)."""

    def __init__(self, s: float = 0.008):
        if not (isinstance(s, int | float) and 0 <= s < 1):
            raise ValueError(f"s must be a number in [0, 1), got {s!r}")
        self.s = float(s)
        # alpha_bar(1) = sigmoid(LOG_SNR_END): solve f(c) = f(0) alpha_bar(1) for c.
        ab_end = 1 / (1 + math.exp(-LOG_SNR_END))
        u = math.acos(math.sqrt(self._f0 * ab_end))  # the angle (c + s) / (1 + s) * pi / 2
        self._c = u * 2 / math.pi * (1 + self.s) - self.s

    @property
    def _f0(self) -> float:
        return math.cos(self.s / (1 + self.s) * math.pi / 2) ** 2

    def _angle(self, t: Tensor) -> Tensor:
        return (t * self._c + self.s) / (1 + self.s) * math.pi / 2

    def g(self, t: Tensor) -> Tensor:
        """Clamped at 0: rounding makes g(0) = -2e-18, and sigma(0) = sqrt(-expm1(-g)) NaN."""
        return (math.log(self._f0) - 2 * torch.log(torch.cos(self._angle(t)))).clamp(min=0)

    def dg(self, t: Tensor) -> Tensor:
        return 2 * torch.tan(self._angle(t)) * self._c / (1 + self.s) * math.pi / 2


# -- the rectified (straight) diffusion schedule ---------------------------------------------------
class RectifiedSchedule(Schedule):
    """The straight path of rectified flows as a diffusion schedule (Liu et al. 2023; Esser et
    al. 2024, SD3: alpha = 1 - t, sigma = t), with alpha(1) kept just above 0:

        alpha = 1 - (1 - alpha_end) t,   sigma = t,   alpha_end = exp(LOG_SNR_END / 2) ~ 4.5e-5

    so log_snr(1) = LOG_SNR_END as for the cosine schedule: x_0 = (x_t - sigma eps) / alpha and
    DPM-Solver's lambda stay finite at t = 1, and x_1 is N(0, I) to within alpha_end x_0. Not
    variance preserving: alpha^2 + sigma^2 = 1 only at the ends (1/2 at t = 1/2).
    """

    variance_preserving = False

    def __init__(self, alpha_end: float = math.exp(LOG_SNR_END / 2)):
        if not (isinstance(alpha_end, int | float) and 0.0 < alpha_end < 1.0):
            raise ValueError(f"alpha_end must be a number in (0, 1), got {alpha_end!r}")
        self.alpha_end = float(alpha_end)

    @_f64
    def alpha(self, t: Tensor) -> Tensor:
        return 1 - (1 - self.alpha_end) * t

    @_f64
    def sigma(self, t: Tensor) -> Tensor:
        return t.clone()

    @_f64
    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1 - self.alpha_end))

    @_f64
    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """Closed form: alpha / sigma = (1 - c t) / t = r = exp(lam / 2), c = 1 - alpha_end,
        so t = 1 / (r + c)."""
        lam = _as_time(lam)
        r = torch.exp(lam.double() / 2)
        return (1 / (r + (1 - self.alpha_end))).to(lam.dtype)


PATHS: dict[str, type[Schedule]] = {"linear": LinearPath, "vp": CosinePath}
"""Flow-matching probability paths by name."""

SCHEDULES: dict[str, type[Schedule]] = {
    "linear": LinearBetaSchedule,
    "cosine": CosineSchedule,
    "rectified": RectifiedSchedule,
}
"""Diffusion noise schedules by name ("linear" and "cosine" are variance preserving)."""
