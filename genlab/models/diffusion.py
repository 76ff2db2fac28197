"""Denoising diffusion models (Ho et al. 2020) with DDIM, DPM-Solver++ and the probability-flow ODE.

Notation (a `genlab.schedules` VP schedule; t in [0, 1], t = 0 the data, t = 1 the noise):

    x_t = alpha_t x_0 + sigma_t eps,   eps ~ N(0, I),   alpha_t^2 + sigma_t^2 = 1
    alpha_bar_i = alpha(i / T)^2        the discrete chain, i = 0..T (alpha_bar_0 = 1)
    lambda_t = log(alpha_t^2 / sigma_t^2)    the log-SNR (DPM-Solver's lambda is half of it)

One schedule object serves the discrete samplers (through alpha_bar(t), in float64) and the
continuous ones (alpha(t), sigma(t) and their derivatives). The network is called with the
continuous time t = i / T and predicts (`prediction`):

    "eps": eps        "x0": x_0        "v": v = alpha eps - sigma x_0  (Salimans & Ho 2022)

Training draws i ~ U{1, ..., T} and minimises w(lambda_i) |eps_hat - eps|^2 / D, the
prediction converted to eps whatever its parameterisation; `loss_weight` picks w (in
eps-MSE units; x0-MSE = eps-MSE / snr, v-MSE = eps-MSE (1 + 1 / snr)):

    "simple":        w = 1                   DDPM's L_simple
    "min_snr":       w = min(1, 5 / snr)     x0-MSE weighted by min(snr, 5) (Hang et al. 2023)
    "truncated_snr": w = max(1, 1 / snr)     x0-MSE weighted by max(snr, 1) (Salimans & Ho 2022)

Samplers (`sample(method=...)`) on a grid of `steps + 1` times from 1 down (`sampling_times`):
"ddpm" (ancestral, Ho et al. eq. 6-7, on the respaced alpha_bar), "ddim" (Song et al. 2021a
eq. 12, eta=0 deterministic, eta=1 the DDPM posterior), "dpm++" (DPM-Solver++ 3M or 2M, Lu et
al. 2022, multistep, one evaluation per step) and "ode" (the probability-flow ODE
dx/dt = alpha' x0_hat + sigma' eps_hat through `genlab.solvers.solve`). `log_prob` integrates
the same ODE with the instantaneous change of variables; `vlb` is DDPM's discrete bound.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from genlab import solvers, train
from genlab.data.dataset import Dataset
from genlab.models.base import (
    GenerativeModel,
    as_data,
    as_labels,
    check_finite,
    check_train_labels,
    image_geometry,
)
from genlab.models.continuous import (
    LOG_2PI,
    SampleTrajectory,
    check_guidance,
    drop_labels,
    exact_divergence,
    guided,
    hutchinson_divergence,
    standard_normal_log_prob,
)
from genlab.nets import MLP, UNet
from genlab.schedules import SCHEDULES, Schedule, broadcast_to

ScheduleName = Literal["linear", "cosine"]
PredictionName = Literal["eps", "x0", "v"]
LossWeightName = Literal["simple", "min_snr", "truncated_snr"]
SamplerName = Literal["ddpm", "ddim", "dpm++", "ode"]
GridName = Literal["uniform", "logsnr", "quadratic"]
NetName = Literal["auto", "mlp", "unet"]
PREDICTIONS = ("eps", "x0", "v")
LOSS_WEIGHTS = ("simple", "min_snr", "truncated_snr")
SAMPLERS = ("ddpm", "ddim", "dpm++", "ode")
GRIDS = ("uniform", "logsnr", "quadratic")
NETS = ("auto", "mlp", "unet")
DEFAULT_STEPS = {"ddim": 50, "dpm++": 20}  # ddpm: all T steps; ode: dopri5 (adaptive)
DEFAULT_GRID = {"ddpm": "uniform", "ddim": "quadratic", "dpm++": "quadratic", "ode": "uniform"}
MIN_SNR_GAMMA = 5.0
EVAL_ROWS = 8192  # network rows per forward pass in vlb / log_prob


# -- the maths, as pure functions ----------------------------------------------------------------
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


def standard_normal_prediction(x_t: Tensor, alpha: Tensor, sigma: Tensor, prediction: str):
    """The optimal prediction for data ~ N(0, I) (VP): x0 = alpha x_t, eps = sigma x_t, v = 0."""
    return {"eps": sigma * x_t, "x0": alpha * x_t}.get(prediction, torch.zeros_like(x_t))


def loss_weight(log_snr: Tensor, name: str) -> Tensor:
    """w(lambda) multiplying the eps-MSE (see the module docstring), snr = exp(lambda)."""
    snr = torch.exp(log_snr)
    if name == "simple":
        return torch.ones_like(snr)
    if name == "min_snr":
        return torch.clamp(MIN_SNR_GAMMA / snr, max=1.0)
    return torch.clamp(1.0 / snr, min=1.0)


def sampling_times(schedule: Schedule, timesteps: int, steps: int, grid: str) -> Tensor:
    """The steps + 1 times (float64, decreasing from 1) a discrete sampler visits.

    "uniform": round(linspace(T, 0, steps + 1)) / T, the respaced chain ("trailing": it starts
    at the end of the chain, Lin et al. 2024, and ends at the data, t = 0).
    "logsnr": uniform in log-SNR from lambda(1) to lambda(1 / T), DPM-Solver's grid for
    small data (Lu et al. 2022); it ends at t_min = 1 / T, the smallest trained time.
    "quadratic": uniform in sqrt(t) from 1 to sqrt(t_min), DPM-Solver's "time_quadratic":
    denser near the data than uniform, less so than logsnr.
    """
    if grid == "uniform":
        return torch.tensor(np.round(np.linspace(timesteps, 0, steps + 1)) / timesteps)
    if grid == "quadratic":
        root = torch.linspace(1.0, (1.0 / timesteps) ** 0.5, steps + 1, dtype=torch.float64)
        return root.square()
    ends = torch.tensor([1.0, 1.0 / timesteps], dtype=torch.float64)
    lam = schedule.log_snr(ends)
    times = schedule.t_of_log_snr(torch.linspace(float(lam[0]), float(lam[1]), steps + 1,
                                                 dtype=torch.float64))  # fmt: skip
    times[0], times[-1] = ends
    return times


def posterior(ab_t: float, ab_s: float) -> tuple[float, float, float]:
    """q(x_s | x_t, x_0) = N(c0 x_0 + ct x_t, var) for s < t, from alpha_bar at t and s.

    With beta = 1 - ab_t / ab_s (Ho et al. eq. 7): c0 = sqrt(ab_s) beta / (1 - ab_t),
    ct = sqrt(1 - beta) (1 - ab_s) / (1 - ab_t), var = beta (1 - ab_s) / (1 - ab_t).
    """
    beta = 1.0 - ab_t / ab_s
    c0 = math.sqrt(ab_s) * beta / (1.0 - ab_t)
    ct = math.sqrt(1.0 - beta) * (1.0 - ab_s) / (1.0 - ab_t)
    return c0, ct, beta * (1.0 - ab_s) / (1.0 - ab_t)


def ddpm_step(x_t: Tensor, x0_hat: Tensor, ab_t: float, ab_s: float, noise: Tensor) -> Tensor:
    """Ancestral step x_s ~ q(x_s | x_t, x0 = x0_hat) (posterior variance beta_tilde)."""
    c0, ct, var = posterior(ab_t, ab_s)
    return c0 * x0_hat + ct * x_t + math.sqrt(var) * noise


def ddim_step(
    x0_hat: Tensor, eps_hat: Tensor, ab_t: float, ab_s: float, eta: float, noise: Tensor
) -> Tensor:
    """DDIM (Song et al. 2021a, eq. 12 and 16) from alpha_bar_t to alpha_bar_s > alpha_bar_t:

    sigma_eta = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s)
    x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma_eta^2) eps_hat + sigma_eta z
    """
    sigma_eta = eta * math.sqrt((1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s))
    direction = math.sqrt(max(1.0 - ab_s - sigma_eta**2, 0.0))
    return math.sqrt(ab_s) * x0_hat + direction * eps_hat + sigma_eta * noise


def half_log_snr(ab: float) -> float:
    """DPM-Solver's lambda = log(alpha / sigma) = log(ab / (1 - ab)) / 2; +inf at ab = 1."""
    return math.inf if ab >= 1.0 else 0.5 * math.log(ab / (1.0 - ab))


def dpm_solver_pp_orders(steps: int, order: int) -> list[int]:
    """The order of each of `steps` multistep updates: min(order, k + 1, steps - k) at step k,
    so the first steps warm up on the history they have and the last ones step down to
    first order ("lower order final" of Lu et al. 2022: it stabilises few-step sampling;
    the last step, to t_min or sigma = 0, is the longest in log-SNR)."""
    return [min(order, k + 1, steps - k) for k in range(steps)]


def dpm_solver_pp_step(
    x: Tensor, history: list[Tensor], lams: list[float], ab_t: float, ab_s: float, order: int
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
    sigma_s = 0 (h = inf) is taken at first order: x_s = D_0.
    """
    a_s, s_s, s_t = math.sqrt(ab_s), math.sqrt(1 - ab_s), math.sqrt(1 - ab_t)
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
        alpha, sigma = (
            broadcast_to(self.schedule.alpha(t), x),
            broadcast_to(self.schedule.sigma(t), x),
        )
        return self.net(x, t, y) + standard_normal_prediction(x, alpha, sigma, self.prediction)


# -- config and model -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffusionConfig(train.TrainConfig):
    schedule: ScheduleName = "linear"
    prediction: PredictionName = "eps"
    timesteps: int = 1000
    net: NetName = "auto"
    hidden: int = 256
    base_channels: int = 32
    loss_weight: LossWeightName = "simple"
    label_dropout: float = 0.1
    clip_denoised: bool = True
    exact_trace_max_dim: int = 16
    hutchinson_probes: int = 1

    def __post_init__(self):
        super().__post_init__()
        for name, minimum in (("timesteps", 2), ("hidden", 8), ("base_channels", 4),
                              ("exact_trace_max_dim", 0), ("hutchinson_probes", 1)):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
        for name, options in (("schedule", tuple(SCHEDULES)), ("prediction", PREDICTIONS),
                              ("net", NETS), ("loss_weight", LOSS_WEIGHTS)):  # fmt: skip
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        p = self.label_dropout
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
            raise ValueError(f"label_dropout must be a number in [0, 1), got {p!r}")
        if not isinstance(self.clip_denoised, bool):
            raise ValueError(f"clip_denoised must be True or False, got {self.clip_denoised!r}")


class Diffusion(GenerativeModel, family="diffusion"):
    """A denoising diffusion model; `log_prob` is exact along the probability-flow ODE.

    Args:
        schedule: "linear" (DDPM's betas 1e-4..0.02 as a VP-SDE) or "cosine" (Nichol &
            Dhariwal), from `genlab.schedules.SCHEDULES`, with their default parameters.
        prediction: what the network predicts: "eps", "x0" or "v".
        timesteps: T, the length of the discrete chain (training draws i in 1..T).
        net: "auto" (a UNet for square images, else an MLP), "mlp" or "unet".
        hidden: width of the MLP (three residual FiLM blocks).
        base_channels: width of the UNet's first level (levels (1, 2)).
        loss_weight: "simple", "min_snr" or "truncated_snr" (module docstring).
        label_dropout: probability of replacing a label by the null label while training,
            for classifier-free guidance (conditional models only).
        clip_denoised: clip x0_hat to the data range [-1, 1] of images in the discrete
            samplers (ddpm, ddim, dpm++); never in the ODE, and never for points.
        exact_trace_max_dim: `log_prob` takes the exact divergence up to this dimension, else
            Hutchinson's estimate with `hutchinson_probes` Rademacher probes.
        device: "cuda", "cpu" or None (cuda when present).
        **train_options: the fields of `genlab.train.TrainConfig` (max_steps, max_time,
            batch_size, lr, ..., seed).

    Data: images in [0, 1] are mapped to [-1, 1] (x * 2 - 1), everything else is
    standardised per dimension by the training mean and standard deviation; `log_prob` and
    `vlb` add the log-Jacobian, so they are densities of the data as given. Quantised images
    (a Dataset with `levels`) are dequantised afresh in every batch, x = (k + u) / levels, so
    the density is that of the dequantised data, as `genlab eval` measures it.
    """

    config_class = DiffusionConfig

    def __init__(
        self,
        schedule: ScheduleName = "linear",
        prediction: PredictionName = "eps",
        timesteps: int = 1000,
        net: NetName | None = None,
        *,
        hidden: int = 256,
        base_channels: int = 32,
        loss_weight: LossWeightName = "simple",
        label_dropout: float = 0.1,
        clip_denoised: bool = True,
        exact_trace_max_dim: int = 16,
        hutchinson_probes: int = 1,
        device: str | torch.device | None = None,
        **train_options: Any,
    ):
        try:
            config = DiffusionConfig(
                schedule=schedule, prediction=prediction, timesteps=timesteps,
                net="auto" if net is None else net, hidden=hidden, base_channels=base_channels,
                loss_weight=loss_weight, label_dropout=label_dropout,
                clip_denoised=clip_denoised, exact_trace_max_dim=exact_trace_max_dim,
                hutchinson_probes=hutchinson_probes, **train_options,
            )  # fmt: skip
        except TypeError as e:
            names = sorted(DiffusionConfig.__dataclass_fields__)
            raise TypeError(f"{e}; the Diffusion's options are {names}") from None
        super().__init__(config, device)
        self.schedule: Schedule = SCHEDULES[config.schedule]()
        self.nfe_: int | None = None

    @property
    def log_prob_kind(self) -> Literal["exact", "estimate"]:
        """What log_prob returns: "exact" (along the ODE) when the dimension is <=
        exact_trace_max_dim, else "estimate" (Hutchinson); before fit, "exact"."""
        d = math.prod(self.event_shape or ())
        return "exact" if d <= self.config.exact_trace_max_dim else "estimate"

    @property
    def conditional(self) -> bool:
        return self.is_fitted and self.n_classes_ is not None

    # -- building ---------------------------------------------------------------------------------
    def _build(self, event_shape: tuple[int, ...], fitted: dict[str, Any]) -> None:
        cfg = self.config
        self.kind_, self.net_ = fitted["kind"], fitted["net"]
        self.levels_, self.n_classes_ = fitted.get("levels"), fitted.get("n_classes")
        d = math.prod(event_shape)
        if self.net_ == "unet":
            c, s = image_geometry(event_shape)
            self.model_shape_ = (c, s, s)
            net = UNet(c, s, base_channels=cfg.base_channels, n_classes=self.n_classes_)
        else:
            self.model_shape_ = (d,)
            net = MLP(d, d, (cfg.hidden,) * 3, time_dim=min(cfg.hidden, 128),
                      n_classes=self.n_classes_)  # fmt: skip
        self.net = StandardNormalSkip(net, self.schedule, cfg.prediction)
        self.register_buffer("data_loc", torch.zeros(d, dtype=torch.float64))
        self.register_buffer("data_scale", torch.ones(d, dtype=torch.float64))
        self.to(self.device_)

    def _fitted_meta(self) -> dict[str, Any]:
        return {**super()._fitted_meta(), "kind": self.kind_, "net": self.net_,
                "levels": self.levels_, "n_classes": self.n_classes_}  # fmt: skip

    def fit(
        self,
        x: Any,
        y: Any = None,
        *,
        out: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        progress: bool | None = None,
        callback: Callable | None = None,
        callback_every: int | None = None,
    ) -> Diffusion:
        """Build the net for the data and train the denoising loss with `genlab.train.fit`.

        Args:
            x: (n, *event_shape) Tensor, array or Dataset (its labels are ignored; its kind
                and levels are kept).
            y: (n,) integer labels for a conditional model (classifier-free guidance), or None.
            out, checkpoint_every, resume, progress, callback, callback_every: passed to
                `genlab.train.fit`.
        """
        levels, kind = (x.levels, x.kind) if isinstance(x, Dataset) else (None, None)
        x, y, event_shape = as_data(x.x if isinstance(x, Dataset) else x, y)
        x = x if isinstance(x, Tensor) else x[:]
        x = x.float() if x.dtype != torch.float32 else x
        check_finite(x)
        unit = bool(x.min() >= 0 and x.max() <= 1)
        image = (kind or ("image" if len(event_shape) >= 2 else "points")) == "image" and unit
        fitted = {"kind": "image" if image else "points", "levels": levels if image else None,
                  "n_classes": check_train_labels(y),
                  "net": self._resolve_net(event_shape)}  # fmt: skip
        with torch.random.fork_rng(devices=[]):  # the net's init follows config.seed alone
            torch.manual_seed(self.config.seed)
            self._build(event_shape, fitted)
        self.event_shape = event_shape
        with torch.no_grad():
            if image:
                self.data_loc.fill_(0.5), self.data_scale.fill_(0.5)
            else:
                flat = x.reshape(len(x), -1).double()
                self.data_loc.copy_(flat.mean(0))
                self.data_scale.copy_(flat.std(0, correction=0).clamp(min=1e-6))
        self.train_result_ = train.fit(
            self, x, y, self.config, out=out, checkpoint_every=checkpoint_every, resume=resume,
            callback=callback, callback_every=callback_every, progress=progress,
            device=self.device_,
        )  # fmt: skip
        self.eval()
        return self

    def _resolve_net(self, event_shape: tuple[int, ...]) -> str:
        image = image_geometry(event_shape)
        if self.config.net == "unet" and image is None:
            raise ValueError(
                f'net="unet" needs square images (C, S, S) or (S, S), got samples of shape '
                f'{event_shape}; use net="mlp"'
            )
        if self.config.net == "auto":
            return "unet" if image is not None else "mlp"
        return self.config.net

    def loss(self, batch: tuple[Tensor, ...], step: int) -> dict[str, Tensor]:
        """mean_b w(lambda_i) |eps_hat - eps|^2 / D with i ~ U{1..T} and x_t = alpha x0 + sigma eps;
        labels are replaced by the null label with probability label_dropout."""
        x = batch[0]
        if self.levels_ is not None:  # fresh uniform dequantisation (k + u) / levels, as eval
            x = (torch.round(x * (self.levels_ - 1)) + torch.rand_like(x)) / self.levels_
        x0 = self._to_model_space(x)
        y = batch[1] if len(batch) > 1 else None
        i = torch.randint(1, self.config.timesteps + 1, (len(x0),), device=x0.device)
        t = i.to(x0.dtype) / self.config.timesteps
        alpha, sigma = (
            broadcast_to(self.schedule.alpha(t), x0),
            broadcast_to(self.schedule.sigma(t), x0),
        )
        eps = torch.randn_like(x0)
        x_t = alpha * x0 + sigma * eps
        if y is not None:
            y = drop_labels(y, self.config.label_dropout, self.n_classes_)
        _, eps_hat = to_x0_eps(self.net(x_t, t, y), x_t, alpha, sigma, self.config.prediction)
        mse = (eps_hat - eps).square().reshape(len(x0), -1).mean(1)
        w = loss_weight(self.schedule.log_snr(t), self.config.loss_weight).to(mse.dtype)
        return {"loss": (w * mse).mean(), "eps_mse": mse.mean().detach()}

    # -- spaces and inputs ------------------------------------------------------------------------
    def _to_model_space(self, x: Tensor) -> Tensor:
        z = (x.reshape(len(x), -1) - self.data_loc) / self.data_scale
        return z.to(torch.float32).reshape(len(x), *self.model_shape_)

    def _to_data_space(self, z: Tensor) -> Tensor:
        x = z.flatten(1).double() * self.data_scale + self.data_loc
        return x.to(torch.float32).reshape(len(z), *self.event_shape)

    def _log_jacobian(self) -> float:
        """log |d model / d data| = -sum log data_scale (d log 2 for images)."""
        return -float(self.data_scale.log().sum())

    def _prepare(self, x: Any) -> Tensor:
        """Validated model-space z (n, *model_shape) of data x."""
        return self._to_model_space(self.checked_rows(x))

    def _labels(self, y: Any, n: int) -> Tensor | None:
        """(n,) long labels from an int or a sequence; None stays None (the null label)."""
        if y is None:
            if self.conditional and self.config.label_dropout == 0:
                raise ValueError(
                    "this Diffusion was trained with label_dropout=0, so it has no "
                    "unconditional denoiser: pass y (an int or (n,) labels)"
                )
            return None
        if not self.conditional:
            raise ValueError("this Diffusion model was fitted without labels, so it takes no y")
        return as_labels(y, n, self.n_classes_).to(self.device)

    # -- the denoiser -----------------------------------------------------------------------------
    def denoiser(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, guidance: float = 0.0
    ) -> Tensor:
        """The network's output at (x_t, t) in model space, with classifier-free guidance
        (`genlab.models.continuous.guided`):

            out = out(null) + (1 + w) (out(y) - out(null)),   w = guidance

        (w = 0: plain conditional; the conditional and null rows run as one batch). t: (B,).
        """
        if y is None or guidance == 0:
            return self.net(x, t, y)
        null = torch.full_like(y, self.n_classes_)
        both = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = both.chunk(2)
        return guided(cond, uncond, guidance)

    def _predict(self, x: Tensor, t: float | Tensor, y: Tensor | None, guidance: float):
        """(x0_hat, eps_hat) at x_t (B, ...), t a float or (B,)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(len(x))
        alpha, sigma = (
            broadcast_to(self.schedule.alpha(t), x),
            broadcast_to(self.schedule.sigma(t), x),
        )
        return to_x0_eps(self.denoiser(x, t, y, guidance), x, alpha, sigma, self.config.prediction)

    def _velocity(self, x: Tensor, t: Tensor, y: Tensor | None, guidance: float = 0.0) -> Tensor:
        """The probability-flow field dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat; t: 0-d."""
        tb = t.to(x.dtype).expand(len(x))
        x0, eps = self._predict(x, tb, y, guidance)
        return self.schedule.velocity(x0, eps, tb)

    # -- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        steps: int | None = None,
        method: SamplerName = "dpm++",
        eta: float = 0.0,
        y: Any = None,
        guidance: float = 0.0,
        return_trajectory: bool = False,
        grid: GridName | None = None,
        order: int | None = None,
        solver: solvers.Method | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
    ) -> Tensor | SampleTrajectory:
        """n samples from x_1 ~ N(0, I) by a reverse-time sampler: (n, *event_shape).

        Args:
            n: number of samples.
            seed: seed of a local generator (same seed, same samples).
            steps: sampler steps: ddpm T (default) or fewer, on the respaced chain; ddim 50;
                dpm++ 20; ode: fixed solver steps (default: dopri5, adaptive).
            method: "ddpm", "ddim", "dpm++" or "ode" (module docstring).
            eta: DDIM's noise (0: deterministic; 1: the DDPM posterior); ddim only.
            y: an int or (n,) labels for a conditional model; None samples unconditionally
                (the null label).
            guidance: classifier-free guidance weight w (needs y), see `denoiser`.
            return_trajectory: return a `SampleTrajectory` instead of the samples.
            grid: the times of ddpm, ddim and dpm++ (`sampling_times`): "uniform" (default
                of ddpm), "quadratic" (default of ddim and dpm++; DDIM's choice for CIFAR-10,
                Song et al. 2021a) or "logsnr".
            order: DPM-Solver++'s multistep order, 1, 2 (2M) or 3 (3M); default 3, and 2
                with guidance (higher orders are unstable with large guidance weights, Lu et
                al. 2022). The last steps step down in order (`dpm_solver_pp_orders`).
            solver: the ODE solver of method="ode" (default dopri5 without steps, else heun).
            rtol, atol: dopri5's tolerances.

        After the call `self.nfe_` holds the number of network evaluations (a guided
        evaluation, cond and null rows in one batch, counts once): `steps` for ddpm, ddim and
        dpm++; the solver's NFE for ode. The ODE and the "logsnr" and "quadratic" grids stop
        at t = 1 / T (the smallest time the net was trained at) and return x there, the data
        blurred by sigma(1 / T) (0.01 for the linear schedule); the "uniform" grid ends with
        x0_hat.
        Images are clipped to [0, 1].
        """
        self.check_is_fitted()
        n = self.check_n(n)
        labels = self._labels(y, n)
        guidance = check_guidance(guidance, labels)
        method, steps, grid, solver = self._check_sampler(method, steps, eta, grid, solver)
        order = self._check_order(order, method, guidance)
        g = self.generator(seed)
        x = torch.randn(n, *self.model_shape_, generator=g, device=self.device)
        if n == 0:
            self.nfe_ = 0
            states, times = [x, x], torch.tensor([1.0, 0.0])
        elif method == "ode":
            states, times = self._sample_ode(x, steps, solver, labels, guidance, rtol, atol,
                                             return_trajectory)  # fmt: skip
        else:
            times = sampling_times(self.schedule, self.config.timesteps, steps, grid)
            states = self._sample_discrete(x, method, times, eta, order, labels, guidance, g,
                                           return_trajectory)  # fmt: skip
        samples = self._to_data_space(states[-1])
        if self.kind_ == "image":
            samples = samples.clamp(0.0, 1.0)
        if not return_trajectory:
            return samples
        path = torch.stack([self._to_data_space(s).cpu() for s in states[:-1]] + [samples.cpu()])
        return SampleTrajectory(samples, path, times.float().cpu())

    def _check_sampler(self, method, steps, eta, grid, solver):
        if method not in SAMPLERS:
            raise ValueError(f"method must be one of {SAMPLERS}, got {method!r}")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int | np.integer)
                                  or steps < 1):  # fmt: skip
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        T = self.config.timesteps
        if method == "ddpm" and steps is not None and steps > T:
            raise ValueError(f"ddpm takes at most timesteps={T} steps, got steps={steps}")
        if isinstance(eta, bool) or not (isinstance(eta, int | float) and 0 <= eta <= 1):
            raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
        if eta != 0 and method != "ddim":
            raise ValueError(f"eta applies to method='ddim' only, not {method!r}")
        if grid is not None and (grid not in GRIDS or method == "ode"):
            raise ValueError(f"grid must be one of {GRIDS}, for ddpm, ddim or dpm++")
        if solver is not None and (method != "ode" or solver not in solvers.METHODS):
            raise ValueError(f"solver must be one of {solvers.METHODS}, with method='ode'")
        if method == "ode":
            solver = solver or ("dopri5" if steps is None else "heun")
            if (solver == "dopri5") != (steps is None):
                raise ValueError("pass steps for a fixed-step solver, and none for dopri5")
        else:
            steps = steps or DEFAULT_STEPS.get(method, T)
        grid = grid or DEFAULT_GRID[method]
        return method, None if steps is None else int(steps), grid, solver

    def _sample_discrete(self, x, method, times, eta, order, y, guidance, g, keep) -> list[Tensor]:
        """ddpm / ddim / dpm++ through `times` (float64, decreasing); the states at every time
        (only the last unless `keep`)."""
        clip = self.config.clip_denoised and self.kind_ == "image"
        ab = self.schedule.alpha_bar(times).tolist()
        orders = dpm_solver_pp_orders(len(times) - 1, order)
        states, history, lams = [x], [], []
        for k, (t, ab_t, ab_s) in enumerate(zip(times.tolist(), ab, ab[1:], strict=False)):
            x0, eps = self._predict(x, t, y, guidance)
            if clip:
                x0, eps = self._clip(x0, x, ab_t)
            if method == "dpm++":
                history, lams = [x0, *history[:2]], [half_log_snr(ab_t), *lams[:2]]
                x = dpm_solver_pp_step(x, history, lams, ab_t, ab_s, orders[k])
            else:
                noise = torch.randn(x.shape, generator=g, device=x.device)
                x = (ddpm_step(x, x0, ab_t, ab_s, noise) if method == "ddpm"
                     else ddim_step(x0, eps, ab_t, ab_s, eta, noise))  # fmt: skip
            if keep:
                states.append(x)
        self.nfe_ = len(times) - 1
        return states if keep else [x]

    def _sample_ode(self, x, steps, solver, y, guidance, rtol, atol, keep):
        """Integrate the probability-flow ODE from t = 1 to t = 1 / T."""
        sol = solvers.solve(lambda t, x_t: self._velocity(x_t, t, y, guidance), x, 1.0,
                            1.0 / self.config.timesteps, method=solver, steps=steps, rtol=rtol,
                            atol=atol, return_trajectory=keep)  # fmt: skip
        self.nfe_ = sol.nfe
        states = list(sol.trajectory.unbind(0)) if keep else [sol.x]
        return states, sol.times.double().cpu()

    @staticmethod
    def _check_order(order: Any, method: str, guidance: float) -> int:
        if order is None:
            return 2 if guidance else 3
        if method != "dpm++":
            raise ValueError(f"order applies to method='dpm++' only, not {method!r}")
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        return int(order)

    def _clip(self, x0: Tensor, x: Tensor, ab: float) -> tuple[Tensor, Tensor]:
        """Clip x0_hat to [-1, 1] (images, clip_denoised) and re-derive eps_hat from it."""
        x0 = x0.clamp(-1.0, 1.0)
        return x0, (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)

    # -- likelihoods ------------------------------------------------------------------------------
    @torch.no_grad()
    def log_prob(
        self,
        x: Any,
        y: Any = None,
        *,
        steps: int | None = None,
        method: solvers.Method = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        seed: int | None = 0,
    ) -> Tensor:
        """log p(x) along the probability-flow ODE (nats, a density of the data as given): (n,).

        The ODE dx/dt = f(t, x) = alpha' x0_hat + sigma' eps_hat is integrated from the data at
        t_min = 1 / T to t = 1 together with the divergence (instantaneous change of variables):

            log p_tmin(x) = log N(x_1; 0, I) + int_tmin^1 div f(t, x_t) dt

        plus the log-Jacobian of the data scaling. Exact for this ODE (up to the solver's
        tolerance) when D <= exact_trace_max_dim (`exact_divergence`); above it, Hutchinson's
        estimate (`hutchinson_divergence`) with `hutchinson_probes` fixed Rademacher probes
        (seeded by `seed`). Two approximations, both small: x is taken as a point at t_min
        (the model density is that of the data scaled by alpha(t_min) and blurred by
        sigma(t_min), 0.01 in model units for T = 1000), and p_1 = N(alpha_1 m, alpha_1^2 C +
        sigma_1^2 I) as N(0, I), exact to O(alpha_1^2) for standardised data (alpha_1 = 7e-3
        linear, 5e-5 cosine). dopri5 controls the error of a whole batch of rows, so results
        depend slightly on the batching.

        Args:
            x: (n, *event_shape) Tensor, array or Dataset (labels ignored).
            y: labels for log p(x | y) under a conditional model; None: the null label.
            steps, method, rtol, atol: `genlab.solvers.solve` options (dopri5 by default).
            seed: seed of the Hutchinson probes.
        """
        z = self._prepare(x)
        y = self._labels(y, len(z))
        d = z[0].numel()
        g = torch.Generator(device=self.device).manual_seed(0 if seed is None else int(seed))
        k = None if d <= self.config.exact_trace_max_dim else self.config.hutchinson_probes
        rows = max(1, EVAL_ROWS // (d if k is None else 4 * k))
        out = []
        for start in range(0, len(z), rows):
            zb = z[start : start + rows]
            yb = None if y is None else y[start : start + rows]
            probes = None
            if k is not None:
                probes = torch.randint(0, 2, (k, *zb.shape), generator=g, device=self.device)
                probes = probes.to(zb.dtype) * 2 - 1

            def field(t: Tensor, state: tuple[Tensor, Tensor], yb=yb, probes=probes):
                f = lambda u: self._velocity(u, t, yb)  # noqa: E731
                return exact_divergence(f, state[0]) if probes is None else (
                    hutchinson_divergence(f, state[0], probes))  # fmt: skip

            zero = torch.zeros(len(zb), dtype=zb.dtype, device=zb.device)
            sol = solvers.solve(field, (zb, zero), 1.0 / self.config.timesteps, 1.0,
                                method=method, steps=steps, rtol=rtol, atol=atol)  # fmt: skip
            x1, integral = sol.x
            out.append(standard_normal_log_prob(x1) + integral)
        return torch.cat(out) + self._log_jacobian()

    @torch.no_grad()
    def vlb(
        self,
        x: Any,
        y: Any = None,
        *,
        decoder: Literal["gaussian", "discretized"] = "gaussian",
        seed: int | None = 0,
    ) -> Tensor:
        """DDPM's variational bound -(L_T + sum_{t=2}^T L_{t-1} + L_0) <= log p(x), nats: (n,).

            L_T     = KL(q(x_T | x_0) || N(0, I))
            L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || N(mu_t(x_t, x0_hat), beta_t I))
                    = D/2 (r - 1 - log r) + c0_t^2 |x_0 - x0_hat|^2 / (2 beta_t)
            L_0     = -log p(x_0 | x_1),  p = N(x0_hat(x_1, 1), beta_1 I)

        with x_t ~ q(x_t | x_0), r = beta~_t / beta_t, and mu_t, c0_t, beta~_t the posterior's
        (`posterior`). The reverse variances are
        beta_t (DDPM's "fixedlarge"), the true reverse variance for standardised data: on a 2-D
        Gaussian with the exact denoiser the bound is within 0.01 nats of log p(x), where
        beta~_t (the ancestral sampler's) leaves a gap of about 1 nat. One draw of x_t per step
        and row (seeded), so this is an unbiased estimate of the bound; T network passes.
        decoder="gaussian": a density bound with the data's log-Jacobian, on the scale of
        `log_prob`; "discretized": DDPM's discretised Gaussian decoder, a bound on the log-mass
        of quantised images x = k / (levels - 1) (needs a model fitted on such a Dataset).
        """
        if decoder not in ("gaussian", "discretized"):
            raise ValueError(f"decoder must be 'gaussian' or 'discretized', got {decoder!r}")
        z = self._prepare(x)
        y = self._labels(y, len(z))
        if decoder == "discretized" and (self.kind_ != "image" or not self.levels_):
            raise ValueError('decoder="discretized" needs a model fitted on quantised images')
        g = self.generator(seed)
        T, d = self.config.timesteps, z[0].numel()
        ab = self.schedule.discrete_alpha_bars(T).tolist()
        flat = z.double().reshape(len(z), -1)
        total = -0.5 * (ab[T] * flat.square() - ab[T] - math.log(1 - ab[T])).sum(1)  # -L_T
        for i in range(1, T + 1):  # one network pass per step, over all rows
            eps = torch.randn(z.shape, generator=g, device=z.device)
            x_t = math.sqrt(ab[i]) * z + math.sqrt(1 - ab[i]) * eps
            x0 = torch.cat([self._predict(x_t[s : s + EVAL_ROWS], i / T,
                                          None if y is None else y[s : s + EVAL_ROWS], 0.0)[0]
                            for s in range(0, len(z), EVAL_ROWS)])  # fmt: skip
            beta = 1 - ab[i] / ab[i - 1]
            if i > 1:
                c0, _, var = posterior(ab[i], ab[i - 1])
                sq = (flat - x0.double().reshape(len(z), -1)).square().sum(1)
                r = var / beta
                total -= 0.5 * (d * (r - 1 - math.log(r)) + c0**2 * sq / beta)
            elif decoder == "gaussian":
                total += gaussian_log_prob(z.double(), x0.double(), beta)
            else:
                total += discretized_gaussian_log_prob(z, x0, math.sqrt(beta), self.levels_)
        jacobian = self._log_jacobian() if decoder == "gaussian" else 0.0
        return (total + jacobian).float()
