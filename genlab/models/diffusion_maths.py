"""The maths of denoising diffusion as pure functions: prediction conversions, loss weights,
sampling grids, the DDPM / DDIM / DPM-Solver++ steps and the Gaussian terms of the bound.

Notation (a `genlab.schedules` schedule; t in [0, 1], t = 0 the data, t = 1 the noise):

    x_t = alpha_t x_0 + sigma_t eps,   eps ~ N(0, I)
    alpha_bar_i = alpha(i / T)^2        the discrete chain, i = 0..T (alpha_bar_0 = 1)
    lambda_t = log(alpha_t^2 / sigma_t^2)    the log-SNR (DPM-Solver's lambda is half of it)

The steps hold for a general path (alpha, sigma), not only a variance-preserving one
(alpha^2 + sigma^2 = 1): a point of the path is passed as `Point` = (alpha, sigma), or, for
the VP schedules as before, as the float alpha_bar (alpha = sqrt(ab), sigma = sqrt(1 - ab)).
From s < t (Kingma et al. 2021, VDM, eq. 2-3 and app. A):

    alpha_{t|s} = alpha_t / alpha_s,   sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2
    q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I)

`genlab.models.diffusion` uses them (and re-exports them); each is tested on its own.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from genlab.grids import time_grid
from genlab.schedules import Schedule, broadcast_to
from genlab.solvers import LOG_2PI

Point = float | tuple[float, float]
"""A point of the path: (alpha_t, sigma_t), or alpha_bar_t = alpha_t^2 of a VP schedule."""

MIN_SNR_GAMMA = 5.0
EDM_SIGMA_DATA = 1.0  # our data are standardised (points) or in [-1, 1] (images)


def coefficients(point: Point) -> tuple[float, float]:
    """(alpha, sigma) of a `Point`: itself, or (sqrt(ab), sqrt(1 - ab)) for a VP alpha_bar."""
    if isinstance(point, tuple):
        alpha, sigma = point
        return float(alpha), float(sigma)
    return math.sqrt(point), math.sqrt(max(1.0 - point, 0.0))


def path_point(schedule: Schedule, t: float | Tensor) -> tuple[float, float]:
    """(alpha(t), sigma(t)) of the schedule as floats (float64), sigma = 0 at t = 0."""
    td = torch.as_tensor(t, dtype=torch.float64)
    alpha, sigma = float(schedule.alpha(td)), float(schedule.sigma(td))
    return alpha, 0.0 if math.isnan(sigma) and float(td) == 0.0 else sigma


def alpha_sigma(schedule: Schedule, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha_t, sigma_t) of t (B,), shaped to broadcast against `like` (B, ...)."""
    return broadcast_to(schedule.alpha(t), like), broadcast_to(schedule.sigma(t), like)


def to_x0_eps(
    out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, prediction: str
) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps_hat) from the network output under x_t = alpha x0 + sigma eps.

    alpha, sigma broadcast against x_t (B, ...). For v = alpha eps - sigma x0:
    x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2), eps = (sigma x_t + alpha v) / (...).
    """
    if prediction == "eps":
        return (x_t - sigma * out) / alpha, out
    if prediction == "x0":
        return out, (x_t - alpha * out) / sigma
    norm = alpha**2 + sigma**2
    return (alpha * x_t - sigma * out) / norm, (sigma * x_t + alpha * out) / norm


def from_x0_eps(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, prediction: str) -> Tensor:
    """The network's target for (x0, eps): eps, x0 or v = alpha eps - sigma x0."""
    return {"eps": eps, "x0": x0}.get(prediction, alpha * eps - sigma * x0)


def standard_normal_prediction(
    x_t: Tensor, alpha: Tensor, sigma: Tensor, prediction: str, variance_preserving: bool = True
):
    """The optimal prediction for data ~ N(0, I): with n = alpha^2 + sigma^2 (the variance of
    x_t), x0 = alpha x_t / n, eps = sigma x_t / n, v = 0. variance_preserving: n = 1 is taken
    as exact (a VP schedule; the old arithmetic, bit for bit)."""
    if not variance_preserving:
        n = alpha**2 + sigma**2
        alpha, sigma = alpha / n, sigma / n
    return {"eps": sigma * x_t, "x0": alpha * x_t}.get(prediction, torch.zeros_like(x_t))


def loss_weight(log_snr: Tensor, name: str) -> Tensor:
    """w(lambda) multiplying the eps-MSE, snr = exp(lambda) (x0-MSE = eps-MSE / snr,
    v-MSE = eps-MSE (1 + 1 / snr)):

        "simple":        w = 1                   DDPM's L_simple
        "min_snr":       w = min(1, 5 / snr)     x0-MSE weighted by min(snr, 5) (Hang et al. 2023)
        "truncated_snr": w = max(1, 1 / snr)     x0-MSE weighted by max(snr, 1) (Salimans & Ho 2022)
        "edm":           w = 1 + 1 / snr         x0-MSE weighted by EDM's lambda(sigma) =
                         (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 with sigma^2 = 1 / snr
                         and sigma_data = 1 (Karras et al. 2022, Table 1): the v-MSE, i.e. unit
                         weight on EDM's F_theta (`edm_preconditioning`)
        "flow":          w = (1 + 1 / sqrt(snr))^2   the velocity MSE of rectified flow on the
                         path alpha = 1 - t, sigma = t (SD3, Esser et al. 2024; flow matching,
                         Lipman et al. 2023): |u - u_hat|^2 with u = eps - x0 is
                         |eps - eps_hat|^2 / alpha^2, and 1 / alpha = 1 + sigma / alpha
    """
    snr = torch.exp(log_snr)
    if name == "simple":
        return torch.ones_like(snr)
    if name == "min_snr":
        return torch.clamp(MIN_SNR_GAMMA / snr, max=1.0)
    if name == "edm":
        sigma2 = torch.exp(-log_snr)  # EDM's sigma^2 = (sigma_t / alpha_t)^2
        return edm_preconditioning(sigma2.sqrt())[3] * sigma2
    if name == "flow":
        return (1.0 + torch.exp(-log_snr / 2)).square()
    return torch.clamp(1.0 / snr, min=1.0)


def edm_preconditioning(
    sigma: Tensor, sigma_data: float = EDM_SIGMA_DATA
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM's (c_skip, c_out, c_in, lambda) at noise level sigma (Karras et al. 2022, Table 1):

        D(y; sigma) = c_skip y + c_out F(c_in y),   y = x0 + sigma n
        c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
        c_in = 1 / sqrt(sigma^2 + sd^2),   lambda = (sigma^2 + sd^2) / (sigma sd)^2

    with sd = sigma_data. For a VP schedule, y = x_t / alpha_t and sigma = sigma_t / alpha_t,
    so with sd = 1 (standardised data): c_in y = x_t, c_skip y = alpha_t x_t, c_out = sigma_t,
    and D = alpha_t x_t + sigma_t F is the x0 of prediction="v" through `StandardNormalSkip`
    with F = -v_hat: v-prediction is EDM's preconditioning, and "edm" in `loss_weight` its
    loss weight in eps-MSE units, lambda sigma^2.
    """
    total = sigma**2 + sigma_data**2
    return (sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(),
            total / (sigma * sigma_data) ** 2)  # fmt: skip


def sampling_times(
    schedule: Schedule, timesteps: int, steps: int, grid: str, t_max: float = 1.0
) -> Tensor:
    """The steps + 1 times (float64, decreasing from t_max) a discrete sampler visits.

    "uniform": round(linspace(i_max, 0, steps + 1)) / T with i_max = round(t_max T), the
    respaced chain ("trailing": it starts at the end of the chain, Lin et al. 2024, and ends at
    the data, t = 0); below t_max = 1 the first time is t_max itself (the time an SDEdit start
    was noised to), then the chain. Needs steps <= i_max (distinct chain steps).
    "quadratic" (uniform in sqrt(t), DPM-Solver's "time_quadratic": denser near the data than
    uniform, less so than logsnr), "logsnr" (uniform in log-SNR, DPM-Solver's grid for small
    data, Lu et al. 2022) and "karras" (EDM's sigma / alpha spaced with rho = 7, Karras et
    al. 2022) are `genlab.grids.time_grid` from t_max to t_min = 1 / T, the smallest trained
    time, where they end. "power" (t^(1/1.5) uniform, `genlab.grids.POWER_RHO`) runs from
    t_max to 0 as "uniform" does, off the chain: its last evaluation is at t_max (1 /
    steps)^1.5, below 1 / T beyond about T^(2/3) steps (100 for T = 1000).
    """
    if grid == "power":
        return time_grid(schedule, grid, steps, t_max=t_max, t_min=0.0)
    if grid != "uniform":
        return time_grid(schedule, grid, steps, t_max=t_max, t_min=1.0 / timesteps)
    top = max(1, round(t_max * timesteps))
    if steps > top:
        raise ValueError(
            f"the uniform grid from t = {t_max:g} has {top} chain steps (of timesteps="
            f"{timesteps}), fewer than steps={steps}: pass steps <= {top}"
        )
    times = torch.tensor(np.round(np.linspace(top, 0, steps + 1)) / timesteps)
    times[0] = t_max
    return times


def transition(point_t: Point, point_s: Point) -> tuple[float, float]:
    """(alpha_{t|s}, sigma_{t|s}^2) of q(x_t | x_s) for s < t (module docstring); for a VP
    schedule alpha_{t|s}^2 = 1 - beta and sigma_{t|s}^2 = beta, DDPM's step."""
    (a_t, s_t), (a_s, s_s) = coefficients(point_t), coefficients(point_s)
    a_ts = a_t / a_s
    if not isinstance(point_t, tuple) and not isinstance(point_s, tuple):
        return a_ts, 1.0 - point_t / point_s  # VP: beta, without the cancellation below
    return a_ts, max(s_t**2 - a_ts**2 * s_s**2, 0.0)


def posterior(ab_t: Point, ab_s: Point) -> tuple[float, float, float]:
    """q(x_s | x_t, x_0) = N(c0 x_0 + ct x_t, var) for s < t, from the path's points at t, s.

    With alpha_{t|s}, sigma_{t|s}^2 = `transition` (VDM eq. A.1):
    c0 = alpha_s sigma_{t|s}^2 / sigma_t^2, ct = alpha_{t|s} sigma_s^2 / sigma_t^2,
    var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2. For a VP schedule (Ho et al. eq. 7, with
    beta = 1 - ab_t / ab_s): c0 = sqrt(ab_s) beta / (1 - ab_t),
    ct = sqrt(1 - beta) (1 - ab_s) / (1 - ab_t), var = beta (1 - ab_s) / (1 - ab_t).
    """
    s_t, (a_s, s_s) = coefficients(ab_t)[1], coefficients(ab_s)
    a_ts, var_ts = transition(ab_t, ab_s)
    if not isinstance(ab_t, tuple) and not isinstance(ab_s, tuple):  # VP: the old arithmetic
        s_t2, s_s2 = 1.0 - ab_t, 1.0 - ab_s
    else:
        s_t2, s_s2 = s_t**2, s_s**2
    return a_s * var_ts / s_t2, a_ts * s_s2 / s_t2, var_ts * s_s2 / s_t2


def ddpm_step(x_t: Tensor, x0_hat: Tensor, ab_t: Point, ab_s: Point, noise: Tensor) -> Tensor:
    """Ancestral step x_s ~ q(x_s | x_t, x0 = x0_hat) (posterior variance, `posterior`)."""
    c0, ct, var = posterior(ab_t, ab_s)
    return c0 * x0_hat + ct * x_t + math.sqrt(var) * noise


def ddim_step(
    x0_hat: Tensor, eps_hat: Tensor, ab_t: Point, ab_s: Point, eta: float, noise: Tensor
) -> Tensor:
    """DDIM (Song et al. 2021a, eq. 12 and 16) from t to s < t on a general path:

    sigma_eta^2 = eta^2 var,  var the posterior's (`posterior`; VP: (1 - ab_s) / (1 - ab_t)
    (1 - ab_t / ab_s))
    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - sigma_eta^2) eps_hat + sigma_eta z
    """
    a_s, s_s = coefficients(ab_s)
    var = posterior(ab_t, ab_s)[2]
    if not isinstance(ab_t, tuple) and not isinstance(ab_s, tuple):  # VP: the old arithmetic
        var = (1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s)
        s_s2 = 1.0 - ab_s
    else:
        s_s2 = s_s**2
    sigma_eta = eta * math.sqrt(var)
    direction = math.sqrt(max(s_s2 - sigma_eta**2, 0.0))
    return a_s * x0_hat + direction * eps_hat + sigma_eta * noise


def clip_x0(x0_hat: Tensor, x_t: Tensor, ab: Point) -> tuple[Tensor, Tensor]:
    """x0_hat clipped to the image range [-1, 1] and eps_hat re-derived from it:
    eps_hat = (x_t - alpha x0_hat) / sigma (VP: alpha = sqrt(ab), sigma = sqrt(1 - ab))."""
    alpha, sigma = coefficients(ab)
    if not isinstance(ab, tuple):
        sigma = math.sqrt(1.0 - ab)
    x0_hat = x0_hat.clamp(-1.0, 1.0)
    return x0_hat, (x_t - alpha * x0_hat) / sigma


def half_log_snr(ab: Point) -> float:
    """DPM-Solver's lambda = log(alpha / sigma) (VP: log(ab / (1 - ab)) / 2); +inf at sigma = 0."""
    if isinstance(ab, tuple):
        alpha, sigma = coefficients(ab)
        return math.inf if sigma <= 0.0 else math.log(alpha) - math.log(sigma)
    return math.inf if ab >= 1.0 else 0.5 * math.log(ab / (1.0 - ab))


def dpm_solver_pp_orders(steps: int, order: int) -> list[int]:
    """The order of each of `steps` multistep updates: min(order, k + 1, steps - k) at step k,
    so the first steps warm up on the history they have and the last ones step down to
    first order ("lower order final" of Lu et al. 2022: it stabilises few-step sampling;
    the last step, to t_min or sigma = 0, is the longest in log-SNR)."""
    return [min(order, k + 1, steps - k) for k in range(steps)]


def dpm_solver_pp_step(
    x: Tensor, history: list[Tensor], lams: list[float], ab_t: Point, ab_s: Point, order: int
) -> Tensor:
    """One DPM-Solver++ multistep update (Lu et al. 2022, data prediction) from t to s < t.

    history: the data predictions D_0, D_1, D_2 (x0_hat, newest first) at the half log-SNRs
    lams[0] > lams[1] > lams[2] (`half_log_snr`; lams[0] is t's); order 1, 2 or 3 uses that
    many of them. With h = lambda_s - lambda_t, r_i = (lams[i] - lams[i+1]) / h and
    phi_1 = exp(-h) - 1, phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1 / 2:

        1: x_s = (sigma_s / sigma_t) x - alpha_s phi_1 D_0                      (= DDIM)
        2: ... - alpha_s phi_1 (D_0 - D_1) / (2 r_0)                            (2M)
        3: ... + alpha_s phi_2 E_1 - alpha_s phi_3 E_2                          (3M)

    with the divided differences F_0 = (D_0 - D_1) / r_0, F_1 = (D_1 - D_2) / r_1,
    E_1 = F_0 + r_0 (F_0 - F_1) / (r_0 + r_1), E_2 = (F_0 - F_1) / (r_0 + r_1): the published
    3M coefficients (Lu et al.'s code, and diffusers). A Taylor expansion puts twice this
    weight on E_2 (order exactly 3 on Gaussian data); the published weight has the lower error
    at 10-20 steps on trained 2-D models (benchmarks/diffusion_solver_error.py). A step to
    sigma_s = 0 (h = inf) is taken at first order: x_s = D_0. The update holds on any path
    (Lu et al. write it for general alpha_t, sigma_t); t and s are `Point`s.
    """
    (a_s, s_s), s_t = coefficients(ab_s), coefficients(ab_t)[1]
    h = half_log_snr(ab_s) - lams[0]
    if not math.isfinite(h):
        return history[0]
    phi_1 = math.expm1(-h)
    x_s = (s_s / s_t) * x - a_s * phi_1 * history[0]
    if order == 1:
        return x_s
    r_0 = (lams[0] - lams[1]) / h
    f_0 = (history[0] - history[1]) / r_0
    if order == 2:
        return x_s - 0.5 * a_s * phi_1 * f_0
    r_1 = (lams[1] - lams[2]) / h
    f_1 = (history[1] - history[2]) / r_1
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    e_1 = f_0 + r_0 / (r_0 + r_1) * (f_0 - f_1)
    e_2 = (f_0 - f_1) / (r_0 + r_1)
    return x_s + a_s * phi_2 * e_1 - a_s * phi_3 * e_2


def dpm_solver_pp_sde_step(
    x: Tensor,
    history: list[Tensor],
    lams: list[float],
    ab_t: Point,
    ab_s: Point,
    order: int,
    eta: float,
    noise: Tensor,
) -> Tensor:
    """One SDE-DPM-Solver++ multistep update (Lu et al. 2022, sec. 5 and app. B; the
    "midpoint" 2M form of k-diffusion's `sample_dpmpp_2m_sde` and diffusers'
    "sde-dpmsolver++"), in VP form, from t to s < t with noise z (x's shape):

        x_s = (sigma_s / sigma_t) e^(-eta h) x + alpha_s (1 - e^(-(1 + eta) h)) D_0
              [+ alpha_s (1 - e^(-(1 + eta) h)) (D_0 - D_1) / (2 r_0)]          (order 2)
              + sigma_s sqrt(1 - e^(-2 eta h)) z

    with h = lambda_s - lambda_t (half log-SNRs, `half_log_snr`), r_0 as in
    `dpm_solver_pp_step`. eta = 0 is DPM-Solver++ (the ODE); eta = 1 the reverse SDE, whose
    first-order step is DDPM's posterior step (`ddpm_step`). A step to sigma_s = 0 returns D_0.
    General paths as `dpm_solver_pp_step` (the VE form of k-diffusion is alpha = 1).
    """
    (a_s, s_s), s_t = coefficients(ab_s), coefficients(ab_t)[1]
    h = half_log_snr(ab_s) - lams[0]
    if not math.isfinite(h):
        return history[0]
    gain = -math.expm1(-(1.0 + eta) * h)
    x_s = (s_s / s_t) * math.exp(-eta * h) * x + a_s * gain * history[0]
    if order >= 2:
        r_0 = (lams[0] - lams[1]) / h
        x_s = x_s + 0.5 * a_s * gain * (history[0] - history[1]) / r_0
    if eta > 0:
        x_s = x_s + s_s * math.sqrt(-math.expm1(-2.0 * eta * h)) * noise
    return x_s


def gaussian_log_prob(x: Tensor, mean: Tensor | float, var: float) -> Tensor:
    """log N(x | mean, var I) summed over all but the first axis: (B, ...) -> (B,) nats."""
    d = x[0].numel()
    sq = (x - mean).reshape(len(x), -1).square().sum(1)
    return -0.5 * (d * (LOG_2PI + math.log(var)) + sq / var)


def discretized_gaussian_log_prob(x: Tensor, mean: Tensor, std: float, levels: int) -> Tensor:
    """DDPM's decoder (Ho et al. eq. 13) for x in [-1, 1] on `levels` grid points: the mass of
    N(mean, std^2) over each point's bin of half-width 1 / (levels - 1), edge bins to +-inf.
    (B, ...) -> (B,) nats (a log-mass)."""
    half = 1.0 / (levels - 1)
    normal = torch.distributions.Normal(mean.double(), std)
    upper = torch.where(x >= 1 - half / 2, 1.0, normal.cdf(x.double() + half))
    lower = torch.where(x <= -1 + half / 2, 0.0, normal.cdf(x.double() - half))
    mass = (upper - lower).clamp(min=1e-300)
    return mass.log().reshape(len(x), -1).sum(1).to(x.dtype)


class StandardNormalSkip(nn.Module):
    """net(x_t, t, y) + `standard_normal_prediction`: the net learns the residual from the
    optimal denoiser of N(0, I) data (EDM's c_skip with sigma_data = 1; our data are
    standardised). It keeps eps- and x0-predictions right far out in the tails at high noise,
    where a net with a bounded output (LayerNorm before the last layer) would saturate and
    the deterministic samplers carry the error (x0_hat = (x_t - sigma eps_hat) / alpha)."""

    def __init__(self, net: nn.Module, schedule: Schedule, prediction: str):
        super().__init__()
        self.net, self.schedule, self.prediction = net, schedule, prediction

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """On a path that is not variance preserving the net also sees x_t / sqrt(alpha^2 +
        sigma^2) (unit variance for N(0, I) data: EDM's c_in), as on a VP path it does."""
        alpha, sigma = alpha_sigma(self.schedule, t, x)
        vp = self.schedule.variance_preserving
        x_in = x if vp else x * torch.rsqrt(alpha**2 + sigma**2)
        skip = standard_normal_prediction(x, alpha, sigma, self.prediction, vp)
        return self.net(x_in, t, y) + skip
