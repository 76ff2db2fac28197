"""Denoising diffusion models (Ho et al. 2020) with DDIM, DPM-Solver++ and the probability-flow ODE.

Notation (a `genlab.schedules` schedule; t in [0, 1], t = 0 the data, t = 1 the noise):

    x_t = alpha_t x_0 + sigma_t eps,   eps ~ N(0, I)
    alpha_bar_i = alpha(i / T)^2        the discrete chain, i = 0..T (alpha_bar_0 = 1)
    lambda_t = log(alpha_t^2 / sigma_t^2)    the log-SNR (DPM-Solver's lambda is half of it)

Schedules: "linear" (DDPM's betas) and "cosine" are variance preserving (alpha^2 + sigma^2 =
1); "rectified" is the straight path alpha = 1 - t, sigma = t of rectified flows and SD3
(`genlab.schedules.RectifiedSchedule`). Every sampler is written for a general path: DDPM's
posterior with alpha_{t|s} = alpha_t / alpha_s, sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2
sigma_s^2, DPM-Solver++ and UniPC in lambda = log(alpha / sigma), EDM's Heun in the VE
variable y = x / alpha (VP schedules) or in t itself (the rectified path, where
sigma / alpha = 2e4 at t = 1), the ODE through d alpha / dt and d sigma / dt.
One schedule object serves the discrete samplers (alpha_bar(t) for VP schedules, (alpha,
sigma) pairs otherwise, in float64) and the continuous ones (alpha(t), sigma(t) and their
derivatives). The network is called with the
continuous time t = i / T and predicts (`prediction`):

    "eps": eps        "x0": x_0        "v": v = alpha eps - sigma x_0  (Salimans & Ho 2022)

Training draws i ~ U{1, ..., T} (or t from `time_sampling`: logit-normal as in SD3, lognormal
as in EDM) and minimises w(lambda_t) |eps_hat - eps|^2 / D, the prediction converted to eps
whatever its parameterisation; `loss_weight` picks w ("simple", "min_snr", "truncated_snr",
"edm"). EDM's preconditioning (Karras et al. 2022, Table 1) for sigma_data = 1, our
standardised data: c_in is the VP scaling itself, c_skip is `StandardNormalSkip`, and c_out
makes prediction="v" exactly EDM's F_theta (`edm_preconditioning`); loss_weight="edm" is
EDM's lambda(sigma). The maths (conversions, grids, the sampler steps, the bound's
Gaussian terms) are pure functions in `genlab.models.diffusion_maths`, re-exported here.

Samplers (`sample(method=...)`) on a grid of `steps + 1` times from 1 down (`sampling_times`,
`genlab.grids`: "uniform", "quadratic", "power", "logsnr", "karras"; or the caller's `times=`):
"ddpm" (ancestral, Ho et al. eq. 6-7, on the respaced alpha_bar), "ddim" (Song et al. 2021a
eq. 12, eta=0 deterministic, eta=1 the DDPM posterior), "dpm++" (DPM-Solver++, Lu et al. 2022,
multistep, one evaluation per step: by default the ODE solver 2M on config.dpm_grid, the
uniform grid except on points, eta=0; eta=1 the SDE variant 2M), "heun" (EDM's Heun
sampler with optional churn, Karras et al. 2022 Alg. 2),
"unipc" (UniPC, Zhao et al. 2023, order 1-3; both in `genlab.models.diffusion_samplers`) and
"ode" (the probability-flow ODE dx/dt = alpha' x0_hat + sigma' eps_hat through
`genlab.solvers.solve`). Every sampler can start from edited data (`init=`, `strength=`,
SDEdit) and calls the inpainting hook `_project_step` after each step. `log_prob` integrates
the same ODE with the instantaneous change of variables; `vlb` is DDPM's discrete bound.

Why dpm++ defaults to its deterministic 2M on the uniform grid (eta=0; 3M on the quadratic
grid until 2026-12-03, so a saved folder's dpm++ samples changed then: pass order=3,
grid="quadratic" for the old ones). On the 8 toys' 100,000-row diffusion models (23,000
steps), 2M and 3M on the uniform grid were within 10% of DDPM at 1,000 steps or below the data
floor at 15 NFE on all 8 toys, 3M quadratic not on circles (1.40 x the floor); on quadratic
grids 2M had 20-72% less solver error than 3M on every toy (BENCHMARKS.md, "DPM-Solver++ at 15
NFE"). On digits (`benchmarks/diffusion_digits_samplers.py`: two 1,500-step models, two noise
seeds) 2M uniform had the lowest Fréchet distance of the four at 10, 15 and 20 NFE on both
models (15 NFE: 22.2 against 3M uniform 22.5, 2M quadratic 23.7, 3M quadratic 23.7, DDPM
1,000 23.1). 2M is also the default order of diffusers' DPMSolverMultistepScheduler; Lu et al.
recommend it for guided sampling and 3 for unconditional, which these runs did not bear out.
On points the recipe sets config.dpm_grid = "power" (t^(2/3) uniform, to t = 0): at 15 NFE,
paired to 50 steps from the same noise, 2M's own cost on it was below the uniform grid's on
all 8 toys' 120 s models (circles 4.1e-6 against 2.45e-5), while on digits it scored a worse
Fréchet distance than uniform at 10, 15 and 20 NFE on both models (BENCHMARKS.md, "A power
grid for DPM-Solver++").
The ODE form was as good as or better than the SDE 2M on 7 of 8 toys at 120 s (BENCHMARKS.md,
"The 8 toys at 120 s"); on rings trained for only 4,000 steps the SDE form had scored better
(2.8e-4 against the ODE's 8.0e-4 at 15 NFE, benchmarks/diffusion_quality_vs_steps.py): the
stochastic sampler corrects a poor denoiser's errors as DDPM does. Pass eta=1 for it.

The default sampler (`sample()` without method) is config.sample_method: dpm++ above, except
on points, whose recipe (`genlab.models.recipes`) makes it EDM's Heun with churn 40 in
CHURN_WINDOW, 25 steps: scored over three noise seeds on two trainings of the 8 toys at 120 s,
it was below the data floor in 12 of the 16 runs against 9 for the heun ODE and 5 for dpm++
15 (dpm++ 20: 5 of the first 8; BENCHMARKS.md, "The 8 toys at 120 s, three noise seeds a
sampler" and the fresh run after it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from genlab import sampling, solvers
from genlab.grids import GRIDS, check_times
from genlab.models import continuous, limits
from genlab.models.base import TrajectoryPicture
from genlab.models.diffusion_maths import (
    EDM_SIGMA_DATA,
    MIN_SNR_GAMMA,
    Point,
    StandardNormalSkip,
    alpha_sigma,
    clip_x0,
    coefficients,
    ddim_step,
    ddpm_step,
    discretized_gaussian_log_prob,
    dpm_solver_pp_orders,
    dpm_solver_pp_sde_step,
    dpm_solver_pp_step,
    edm_preconditioning,
    from_x0_eps,
    gaussian_log_prob,
    half_log_snr,
    loss_weight,
    path_point,
    posterior,
    sampling_times,
    standard_normal_prediction,
    to_x0_eps,
    transition,
)
from genlab.models.diffusion_samplers import edm_heun, unipc
from genlab.nets import MLP, UNet
from genlab.options import Choice, Flag, Integer, Real, option
from genlab.schedules import SCHEDULES, Schedule

__all__ = [  # the maths lives in diffusion_maths; importing it from here keeps working
    "EDM_SIGMA_DATA",
    "MIN_SNR_GAMMA",
    "Diffusion",
    "DiffusionConfig",
    "StandardNormalSkip",
    "alpha_sigma",
    "clip_x0",
    "ddim_step",
    "ddpm_step",
    "discretized_gaussian_log_prob",
    "dpm_solver_pp_orders",
    "dpm_solver_pp_sde_step",
    "dpm_solver_pp_step",
    "edm_preconditioning",
    "from_x0_eps",
    "gaussian_log_prob",
    "half_log_snr",
    "loss_weight",
    "posterior",
    "sampling_times",
    "standard_normal_prediction",
    "to_x0_eps",
]

ScheduleName = Literal["linear", "cosine", "rectified"]
PredictionName = Literal["eps", "x0", "v"]
LossWeightName = Literal["simple", "min_snr", "truncated_snr", "edm", "flow"]
SamplerName = Literal["ddpm", "ddim", "dpm++", "heun", "unipc", "ode"]
GridName = Literal["uniform", "quadratic", "power", "logsnr", "karras"]
PREDICTIONS = ("eps", "x0", "v")
LOSS_WEIGHTS = ("simple", "min_snr", "truncated_snr", "edm", "flow")
SAMPLERS = ("ddpm", "ddim", "dpm++", "heun", "unipc", "ode")
DEFAULT_STEPS = {"ddim": 50, "dpm++": 20, "heun": 10, "unipc": 20}  # ddpm: T; ode: dopri5
DEFAULT_GRID = {"ddpm": "uniform", "ddim": "quadratic", "dpm++": "uniform", "heun": "uniform",
                "unipc": "quadratic", "ode": "uniform"}  # fmt: skip
"""Each method's grid when sample() is given none; the deterministic dpm++ (eta=0) takes
config.dpm_grid instead (its default is this "uniform"; the points recipe makes it "power")."""
DEFAULT_ETA = {"ddim": 0.0, "dpm++": 0.0}  # dpm++: the deterministic 2M
CHURN_WINDOW = (0.1, 3.0)
"""(s_tmin, s_tmax) of the default sampler's churn (config.sample_churn > 0): noise is added
only where sigma / alpha lies in [0.1, 3] (t in [0.09, 0.75] on the rectified path). On the
8 toys at 120 s (BENCHMARKS.md, "The 8 toys at 120 s, three noise seeds a sampler", the
screens at noise seed 0) diffusion's 8gaussians scored 1.9e-4 churned at every level, 1.1e-4
by the ODE and -5.2e-5 churned in this window: the low-noise steps, where the denoiser blurs
fine structure, stay deterministic."""
VLB_ROWS = 8192  # network rows per forward pass in vlb
MAX_DEPTH = 1000  # MLP residual blocks (more is an error of units, not a network)


# -- config and model -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffusionConfig(continuous.ContinuousConfig):
    """Diffusion's options: the schedule, the prediction, the chain, the MLP and the loss (after
    the shared ones of `continuous.ContinuousConfig` and `genlab.train.TrainConfig`)."""

    schedule: ScheduleName = option(
        "linear",
        "Noise schedule: linear (DDPM's betas), cosine, or rectified (alpha = 1 - t, sigma = t).",
        Choice(tuple(SCHEDULES)),
    )
    prediction: PredictionName = option(
        "eps", "What the net predicts: eps, x0 or v.", Choice(PREDICTIONS)
    )
    timesteps: int = option(
        1000, "T, the length of the discrete chain.", Integer(2, limits.MAX_STEPS)
    )
    hidden: int = option(256, "MLP width.", Integer(8))
    depth: int = option(3, "MLP residual blocks.", Integer(1, MAX_DEPTH))
    loss_weight: LossWeightName = option(
        "simple",
        "Loss weighting: simple, min_snr, truncated_snr, edm or flow.",
        Choice(LOSS_WEIGHTS),
    )
    clip_denoised: bool = option(
        True, "Clip x0_hat to the image range in ddpm, ddim and dpm++.", Flag()
    )
    sample_method: SamplerName = option(
        "dpm++", "Default sampler of sample, eval and plot.", Choice(SAMPLERS)
    )
    sample_method_steps: int = option(
        0,
        "Steps of the default sampler (0: that method's own default).",
        Integer(0, limits.MAX_STEPS),
    )
    sample_churn: float = option(
        0.0,
        "EDM's S_churn of a default heun sampler, in sigma/alpha of [0.1, 3] (0: the ODE).",
        Real(0, 1000),
    )
    dpm_grid: GridName = option(
        DEFAULT_GRID["dpm++"],
        "Time grid of dpm++ (eta=0) when sample() is given none (the points recipe: power).",
        Choice(GRIDS),
    )


class Diffusion(continuous.ContinuousModel, family="diffusion"):
    """A denoising diffusion model; `log_prob` is exact along the probability-flow ODE.

    Options (`DiffusionConfig`; schedule, prediction, timesteps and net may be positional):
        schedule: "linear" (DDPM's betas 1e-4..0.02 as a VP-SDE), "cosine" (Nichol &
            Dhariwal) or "rectified" (alpha = 1 - t, sigma = t: rectified flow's straight
            path, SD3), from `genlab.schedules.SCHEDULES`, with their default parameters.
            With "rectified" (and "cosine") predict "v" or "x0": both end at alpha(1) =
            4.5e-5, where an eps net's x0_hat = (x_t - sigma eps_hat) / alpha multiplies its
            error by 2e4 (rings, 600 steps: MMD^2 0.55 with eps against 7e-4 with v).
        prediction: what the network predicts: "eps", "x0" or "v".
        timesteps: T, the length of the discrete chain (training draws i in 1..T).
        net: "auto" (`genlab.models.continuous.auto_net`: an MLP for points and small
            images, a UNet for larger square images), "mlp" or "unet".
        hidden, depth: width of the MLP and its number of residual FiLM blocks (3).
        base_channels: width of the UNet's first level (levels (1, 2)).
        loss_weight: "simple", "min_snr", "truncated_snr", "edm" or "flow" (rectified
            flow's velocity MSE; `loss_weight`).
        time_sampling, time_location, time_scale: the training times (`loss`): "uniform"
            is DDPM's i / T, i ~ U{1..T}; "logit_normal" (SD3) and "lognormal" (EDM) are
            continuous draws (`genlab.timesteps`).
        label_dropout: probability of replacing a label by the null label while training,
            for classifier-free guidance (conditional models only).
        dequantize: dequantise quantised images (a Dataset with `levels`) in every batch.
        clip_denoised: clip x0_hat to the data range [-1, 1] of images in the discrete
            samplers (ddpm, ddim, dpm++); never in the ODE, and never for points.
        exact_trace_max_dim: `log_prob` takes the exact divergence up to this dimension, else
            Hutchinson's estimate with `hutchinson_probes` Rademacher probes.
        and the fields of `genlab.train.TrainConfig` (max_steps, max_time, batch_size, ...).
        device: "cuda", "cpu" or None (cuda when present).

    Data: images in [0, 1] are mapped to [-1, 1] (x * 2 - 1), everything else is
    standardised per dimension by the training mean and standard deviation; `log_prob` and
    `vlb` add the log-Jacobian, so they are densities of the data as given. Quantised images
    (a Dataset with `levels`) are dequantised afresh in every batch, x = (k + u) / levels, so
    the density is that of the dequantised data, as `genlab eval` measures it.
    """

    config_class = DiffusionConfig
    size_options: ClassVar[tuple[str, ...]] = ("hidden", "depth", "base_channels")
    positional = ("schedule", "prediction", "timesteps", "net")
    sample_options: ClassVar[frozenset[str]] = frozenset(
        {"steps", "method", "eta", "y", "guidance", "return_trajectory", "grid", "order",
         "solver", "rtol", "atol", "churn", "s_tmin", "s_tmax", "s_noise", "times", "init",
         "strength"}
    )  # fmt: skip
    trajectory_picture = TrajectoryPicture(
        "denoising", {"method": "dpm++", "steps": 20}, paths=300, images=8, animate=False
    )
    buffer_dtype = torch.float64  # data_loc / data_scale; the net works in float32
    space_dtype = torch.float32

    @property
    def schedule(self) -> Schedule:
        """The noise schedule of config.schedule (`genlab.schedules.SCHEDULES`), built afresh
        when the config changes (fit resolves the data kind's recipe before the net is built)."""
        name = self.config.schedule
        cached = self.__dict__.get("_schedule")
        if cached is None or cached[0] != name:
            cached = (name, SCHEDULES[name]())
            self.__dict__["_schedule"] = cached
        return cached[1]

    def fit_summary(self) -> dict[str, Any]:
        cfg = self.config
        return {**super().fit_summary(), "schedule": cfg.schedule, "prediction": cfg.prediction,
                "net": self.net_, "log_prob": self.log_prob_kind,
                "conditional": self.conditional}  # fmt: skip

    # -- building and training --------------------------------------------------------------------
    def _build_net(self, d: int) -> nn.Module:
        cfg = self.config
        if self.net_ == "unet":
            c, s = self.net_shape_[:2]
            net = UNet(c, s, base_channels=cfg.base_channels, n_classes=self.n_classes_,
                       dropout=cfg.dropout)  # fmt: skip
        else:
            net = MLP(d, d, (cfg.hidden,) * cfg.depth, time_dim=min(cfg.hidden, 128),
                      n_classes=self.n_classes_, dropout=cfg.dropout,
                      input_frequencies=cfg.input_frequencies,
                      cond_dim=cfg.cond_width)  # fmt: skip
        return StandardNormalSkip(net, self.schedule, cfg.prediction)

    def loss(self, batch: tuple[Tensor, ...], step: int) -> dict[str, Tensor]:
        """mean_b w(lambda_t) |eps_hat - eps|^2 / D with x_t = alpha x0 + sigma eps and t = i / T,
        i ~ U{1..T} (time_sampling="uniform", DDPM's draw), else t from config.time_sampling
        (`genlab.timesteps.draw_times`: logit-normal, SD3; lognormal, EDM); w is
        `loss_weight`. Labels are replaced by the null label with probability label_dropout."""
        x0 = self._train_rows(batch[0])
        y = batch[1] if len(batch) > 1 else None
        t = self._loss_times(x0)
        alpha, sigma = alpha_sigma(self.schedule, t, x0)
        eps = torch.randn_like(x0)
        x_t = alpha * x0 + sigma * eps
        if y is not None:
            y = continuous.drop_labels(y, self.config.label_dropout, self.n_classes_)
        _, eps_hat = to_x0_eps(self.net(x_t, t, y), x_t, alpha, sigma, self.config.prediction)
        mse = (eps_hat - eps).square().reshape(len(x0), -1).mean(1)
        w = loss_weight(self.schedule.log_snr(t), self.config.loss_weight).to(mse.dtype)
        return {"loss": (w * mse).mean(), "eps_mse": mse.mean().detach()}

    def _loss_times(self, x0: Tensor) -> Tensor:
        """(B,) training times: i / T with i ~ U{1..T} for "uniform" (the old draw, so old
        configs train as before), else `_train_times` (continuous, in (0, 1))."""
        if self.config.time_sampling == "uniform":
            i = torch.randint(1, self.config.timesteps + 1, (len(x0),), device=x0.device)
            return i.to(x0.dtype) / self.config.timesteps
        return self._train_times(x0)

    # -- the denoiser -----------------------------------------------------------------------------
    def denoiser(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, guidance: float = 0.0
    ) -> Tensor:
        """The network's output at (x_t, t) in model space, with classifier-free guidance
        (`genlab.models.continuous.guided`):

            out = out(null) + (1 + w) (out(y) - out(null)),   w = guidance

        (w = 0: plain conditional; the conditional and null rows run as one batch). t: (B,).
        """
        return continuous.guided_call(self.net, x, t, y, guidance, self.n_classes_)

    def _predict(self, x: Tensor, t: float | Tensor, y: Tensor | None, guidance: float):
        """(x0_hat, eps_hat) at x_t (B, ...), t a float or (B,).

        Raises:
            DivergedError: the net's output is not finite (checked before any clipping).
        """
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(len(x))
        alpha, sigma = alpha_sigma(self.schedule, t, x)
        out = self.denoiser(x, t, y, guidance)
        limits.check_outputs(out, "the denoiser's outputs")
        return to_x0_eps(out, x, alpha, sigma, self.config.prediction)

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
        method: SamplerName | None = None,
        steps: int | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        callback: solvers.StepCallback | None = None,
        progress: bool | None = None,
        eta: float | None = None,
        y: Any = None,
        guidance: float = 0.0,
        return_trajectory: bool = False,
        grid: GridName | None = None,
        order: int | None = None,
        solver: solvers.Method | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
        times: Sequence[float] | Tensor | None = None,
        init: Any = None,
        strength: float = 1.0,
    ) -> Tensor | continuous.SampleTrajectory:
        """n samples from x_1 ~ N(0, I) by a reverse-time sampler: (n, *event_shape).

        Args:
            n: number of samples.
            method: "ddpm", "ddim", "dpm++", "heun", "unipc" or "ode" (module docstring).
                None: config.sample_method ("dpm++"; the points recipe: "heun"), with
                config.sample_method_steps when steps is not given, and for heun
                config.sample_churn in CHURN_WINDOW unless churn options are given.
            steps: sampler steps: ddpm T (default) or fewer, on the respaced chain; ddim 50;
                dpm++ 20; heun 10; unipc 20; ode: fixed solver steps (default: dopri5,
                adaptive). Not with `times` (its length sets the steps).
            seed: seed of a CPU generator (same seed, same samples, on any device; None: OS
                entropy); seed=s is the same as generator=torch.Generator().manual_seed(s).
            generator: a torch.Generator for every draw instead (advanced in place; not with
                seed).
            noise: (n, *event_shape) the starting point x_1: N(0, I) draws in the model's
                normalised space (before loc / scale), e.g. torch.randn(n, *event_shape,
                generator=torch.Generator().manual_seed(s)), which `seed=s` draws. Later noise
                (ddpm's, ddim's and dpm++'s with eta > 0 and heun's churn, per step) still
                comes from the generator, which the given noise leaves unadvanced. ddim and
                dpm++ with eta=0, heun without churn, unipc and ode are deterministic: the same
                noise gives the same samples whatever the seed.
            callback: callback(step, t, x) after each sampler step (each accepted dopri5 step
                of ode): the steps taken (1, 2, ...), the schedule time reached (from 1 down)
                and x, what `sample` would return if it stopped there: the current state x_t in
                data space, (n, *event_shape), images clipped to [0, 1]. Returning True stops
                sampling and returns that x (the trajectory ends there).
            progress: a tqdm bar over the sampler steps on stderr; None: only on a TTY.
            eta: the sampler's noise, ddim and dpm++ only (0, the default: deterministic).
                ddim: DDIM's eta (1: the DDPM posterior). dpm++: eta > 0 is SDE-DPM-Solver++
                (`dpm_solver_pp_sde_step`; 1: the reverse SDE, orders 1 and 2, default 2, on
                the uniform grid), eta=0 the deterministic DPM-Solver++ (2M on
                config.dpm_grid by default, the module docstring says why). On 2-D toys
                trained for 4,000 steps the SDE form scored better at 15 NFE on rings and
                worse on moons; on well-trained models the ODE form is at the data floor
                (BENCHMARKS.md).
            y: an int or (n,) labels for a conditional model; None samples unconditionally
                (the null label).
            guidance: classifier-free guidance weight w (needs y), see `denoiser`.
            return_trajectory: return a `continuous.SampleTrajectory` instead of the samples.
            grid: the times of the discrete samplers (`sampling_times`, `DEFAULT_GRID`):
                "uniform" (the respaced chain, ending at t = 0; the default of ddpm, heun and
                dpm++), "quadratic" (the default of ddim and unipc; DDIM's choice for CIFAR-10,
                Song et al. 2021a), "power" (t^(2/3) uniform, to t = 0: dpm++'s default on
                points, config.dpm_grid), "logsnr" or "karras" (EDM's sigma grid, rho = 7; on 2-D
                toys heun at 15 NFE scored 25x worse on it than on "uniform").
                Not for ode, whose fixed solvers step uniformly in t.
            order: the multistep order of dpm++ (1, 2 = 2M, 3 = 3M) and unipc (1, 2, 3); default
                2 for dpm++ and 3 for unipc, and 2 with guidance (higher orders are unstable
                with large guidance weights, Lu et al. 2022). The last steps step down in order.
            solver: the ODE solver of method="ode" (default dopri5 without steps, else heun).
            rtol, atol: dopri5's tolerances.
            churn, s_tmin, s_tmax, s_noise: EDM's stochastic Heun (method="heun" only;
                Karras et al. 2022 Alg. 2): each step whose noise-to-signal ratio
                sigma_t / alpha_t lies in [s_tmin, s_tmax] first adds noise raising it by the
                factor 1 + min(churn / steps, sqrt(2) - 1), scaled by s_noise. churn = 0 (the
                default) is the deterministic Heun sampler.
            times: a decreasing time grid of your own (`genlab.grids.check_times`: 1-D,
                within [0, 1], >= 2 entries) instead of steps and grid; every method, ode
                included (its fixed-step solver steps along it; its last time must be > 0).
                It may end at t = 0 (the last step then returns x0_hat). With init it must
                start at t = strength.
            init: (n, *event_shape) rows (or one row for all n) to edit (SDEdit, Meng et al.
                2022): the sampler starts from init noised to t = strength
                (`continuous.ContinuousModel._edit_start`) and runs the method's grid from
                there (t_max = strength): ddpm the respaced chain from the chain step nearest
                round(strength T), its first time replaced by strength itself. strength=0
                returns init unchanged (no network call); strength=1 is plain sampling.
            strength: the start time t in [0, 1] for init (1: from noise).

        After the call `self.nfe_` holds the number of network evaluations (a guided
        evaluation, cond and null rows in one batch, counts once): `steps` for ddpm, ddim,
        dpm++ and unipc; 2 steps - 1 for heun on a grid ending at 0, else 2 steps; the
        solver's NFE for ode. The ODE and the "logsnr", "quadratic" and "karras" grids stop at
        t = 1 / T (the smallest time the net was trained at) and return x there, the data
        blurred by sigma(1 / T) (0.01 for the linear schedule); "uniform" and "power" end with
        x0_hat. Images are clipped to [0, 1]. Every sampler applies `_project_step` (the
        inpainting hook) to its state at the start and after every step.
        """
        self.check_is_fitted()
        n = self.check_sample_size(n)
        labels = self._labels(y, n)
        guidance = continuous.check_guidance(guidance, labels)
        if method is None:
            method, steps, churn, s_tmin, s_tmax = self._default_sampler(
                steps, times, (churn, s_tmin, s_tmax, s_noise))  # fmt: skip
        eta = DEFAULT_ETA.get(method, 0.0) if eta is None else eta
        given_steps = steps is not None
        plan = self._check_sampler(method, steps, eta, grid, solver, times,
                                   (churn, s_tmin, s_tmax, s_noise))  # fmt: skip
        method, steps, grid, solver = plan
        order = self._check_order(order, method, guidance or eta)
        if method == "dpm++" and eta and order > 2:
            raise ValueError("dpm++ with eta > 0 (SDE-DPM-Solver++) has orders 1 and 2: "
                             "pass order=2 (the default with eta)")  # fmt: skip
        limits.check_tolerances(rtol, atol)
        if limits.check_flag(return_trajectory, "return_trajectory"):
            length = len(times) - 1 if times is not None else steps
            if method == "ddpm" and length is None:
                length = self.config.timesteps
            if length is not None:
                limits.check_trajectory(length, n, self.dim)
        solvers.check_callback(callback)
        x, g = self._start(n, seed, generator, noise)
        x, t_start = self._edit_start(init, strength, x)
        path = self._sampler_times(method, steps, grid, times, t_start, init is not None,
                                   given_steps)  # fmt: skip
        if n == 0 or len(path) < 2:  # nothing to do: no network call
            self.nfe_ = 0
            states = [x]
            samples = (self._edit_rows(init, "init")[0].expand(n, *self.event_shape).clone()
                       if init is not None and t_start == 0 else self._samples(x))  # fmt: skip
        else:
            x = self._project_step(x, float(path[0]))
            run = self._sample_ode if method == "ode" else self._sample_grid
            dopri5 = method == "ode" and solver == "dopri5"
            options = {"eta": eta, "order": order, "solver": solver, "rtol": rtol, "atol": atol,
                       "churn": (churn, s_tmin, s_tmax, s_noise),
                       "dopri5": dopri5 and times is None}  # fmt: skip
            with solvers.StepMonitor(
                callback,
                progress,
                None if dopri5 else len(path) - 1,
                f"{method} sampling",
                view=self._samples,
            ) as monitor:
                states, path = run(x, method, path, labels, guidance, g, return_trajectory,
                                   monitor, options)  # fmt: skip
            samples = self._samples(states[-1], check=True)
        if not return_trajectory:
            return samples
        trajectory = [self._to_data_space(s).cpu() for s in states[:-1]] + [samples.cpu()]
        return continuous.SampleTrajectory(samples, torch.stack(trajectory), path.float().cpu())

    def _default_sampler(self, steps, times, churn) -> tuple[str, int | None, float, float, float]:
        """(method, steps, churn, s_tmin, s_tmax) of a call without method: config.sample_method
        with config.sample_method_steps (when > 0 and neither steps nor times is given; at most
        the chain's timesteps, which bound the uniform grid's steps) and,
        for heun without churn options of the caller's, config.sample_churn in CHURN_WINDOW."""
        cfg = self.config
        method = cfg.sample_method
        if steps is None and times is None and cfg.sample_method_steps > 0:
            steps = min(cfg.sample_method_steps, cfg.timesteps)  # a short chain has fewer
        amount, s_tmin, s_tmax, _ = churn
        if method == "heun" and cfg.sample_churn > 0 and churn == (0.0, 0.0, math.inf, 1.0):
            amount, (s_tmin, s_tmax) = cfg.sample_churn, CHURN_WINDOW
        return method, steps, amount, s_tmin, s_tmax

    def _samples(self, x: Tensor, check: bool = False) -> Tensor:
        """Model-space states (B, *net_shape) as samples: data space, images clipped to
        [0, 1]; `check`: first a DivergedError if any is not finite."""
        samples = self._to_data_space(x)
        if check:
            limits.check_outputs(samples, "the samples")  # before images are clipped to [0, 1]
        return samples.clamp(0.0, 1.0) if self.kind_ == "image" else samples

    def _check_sampler(self, method, steps, eta, grid, solver, times, churn):
        """(method, steps, grid, solver) after checking the sampler options together."""
        if method not in SAMPLERS:
            raise ValueError(f"method must be one of {SAMPLERS}, got {method!r}")
        if steps is not None:
            steps = limits.check_steps(steps)
        T = self.config.timesteps
        if method == "ddpm" and steps is not None and steps > T:
            raise ValueError(f"ddpm takes at most timesteps={T} steps, got steps={steps}")
        if isinstance(eta, bool) or not (isinstance(eta, int | float) and 0 <= eta <= 1):
            raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
        if eta != 0 and method not in ("ddim", "dpm++"):
            raise ValueError(f"eta applies to method='ddim' or 'dpm++' only, not {method!r}")
        if grid is not None and (grid not in GRIDS or method == "ode"):
            raise ValueError(
                f"grid must be one of {GRIDS}, for {', '.join(m for m in SAMPLERS if m != 'ode')}"
                " (method='ode' steps uniformly in t: pass times= for a grid of your own)"
            )
        if solver is not None and (method != "ode" or solver not in solvers.METHODS):
            raise ValueError(f"solver must be one of {solvers.METHODS}, with method='ode'")
        if method != "heun" and churn != (0.0, 0.0, math.inf, 1.0):
            raise ValueError(
                f"churn, s_tmin, s_tmax and s_noise apply to method='heun' only (EDM's "
                f"stochastic sampler), not {method!r}: use method='heun' or drop them"
            )
        if times is not None:
            if steps is not None or grid is not None:
                raise ValueError("times= is the whole grid: pass it without steps and grid")
            return method, None, None, solver or ("heun" if method == "ode" else None)
        if method == "ode":
            solver = solver or ("dopri5" if steps is None else "heun")
            if (solver == "dopri5") != (steps is None):
                raise ValueError("pass steps for a fixed-step solver, and none for dopri5")
        else:  # ddpm: None, every chain step below the start time (`_sampler_times`)
            steps = steps or DEFAULT_STEPS.get(method)
        if grid is None:
            ode_dpm = method == "dpm++" and eta == 0  # the grid measured for the ODE solver
            grid = self.config.dpm_grid if ode_dpm else DEFAULT_GRID[method]
        return method, None if steps is None else int(steps), grid, solver

    def _sampler_times(
        self, method, steps, grid, times, t_start: float, edit: bool, given_steps: bool
    ) -> Tensor:
        """The times (float64, decreasing from t_start) the sampler visits: the caller's
        `times`, the method's grid (`sampling_times` with t_max = t_start), ode's uniform
        steps, or for dopri5 its two ends [t_start, 1 / T]. One entry: nothing to do
        (t_start = 0, or t_start at or below the end 1 / T of a grid that stops there)."""
        T = self.config.timesteps
        here = torch.tensor([t_start], dtype=torch.float64)
        if t_start <= 0:
            return here
        if times is not None:
            path = check_times(times)
            if edit and abs(float(path[0]) - t_start) > 1e-9:
                raise ValueError(
                    f"times starts at {float(path[0]):g} but init is noised to t = strength = "
                    f"{t_start:g}: pass times starting at the strength"
                )
            if method == "ode" and float(path[-1]) <= 0:
                raise ValueError(
                    "method='ode' needs times ending above 0 (the probability-flow field of an "
                    "x0 or v net is singular at t = 0): end them at e.g. 1 / timesteps"
                )
            return path
        chain = max(1, round(t_start * T))  # the steps of the chain below t_start
        if method == "ddpm" and steps is None:
            steps = chain
        elif grid == "uniform" and method != "ode" and not given_steps:
            steps = min(steps, chain)  # a default step count, capped for a late start
        if grid in ("uniform", "power") and method != "ode":  # grids that end at t = 0
            return sampling_times(self.schedule, T, steps, grid, t_max=t_start)
        if t_start <= 1.0 / T:
            return here
        if method == "ode":
            return torch.linspace(t_start, 1.0 / T, 2 if steps is None else steps + 1,
                                  dtype=torch.float64)  # fmt: skip
        return sampling_times(self.schedule, T, steps, grid, t_max=t_start)

    def _denoise(self, y: Tensor | None, guidance: float, clip: bool):
        """The denoiser callable (x, t) -> (x0_hat, eps_hat) of `diffusion_samplers`, x0_hat
        clipped to [-1, 1] (and eps_hat re-derived) when `clip`."""

        def denoise(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            x0, eps = self._predict(x, t, y, guidance)
            return clip_x0(x0, x, self._points(t.reshape(1))[0]) if clip else (x0, eps)

        return denoise

    def _points(self, times: Tensor) -> list[Point]:
        """The path at `times` as the sampler steps read it (`diffusion_maths.Point`): alpha_bar
        floats for a VP schedule (the arithmetic of old folders, unchanged), else (alpha,
        sigma) pairs."""
        times = times.double()
        if self.schedule.variance_preserving:
            return self.schedule.alpha_bar(times).tolist()
        return [path_point(self.schedule, t) for t in times]

    def _sample_grid(
        self, x, method, times, y, guidance, g, keep, monitor: solvers.StepMonitor, options
    ) -> tuple[list[Tensor], Tensor]:
        """ddpm / ddim / dpm++ / heun / unipc through `times` (float64, decreasing): (the states
        at every time (only the last unless `keep`), the times reached). After each step the
        state is projected (`_project_step`) and monitor(t, x) returning True stops there."""
        clip = self.config.clip_denoised and self.kind_ == "image"
        states = [x]

        def on_step(step: int, t: float, x_t: Tensor) -> bool:
            if keep:
                states.append(x_t)
            else:
                states[-1:] = [x_t]
            return monitor(t, x_t)

        if method in ("heun", "unipc"):
            project = lambda x_t, t: self._project_step(x_t, float(t))  # noqa: E731
            denoise = self._denoise(y, guidance, clip)
            if method == "heun":
                churn, s_tmin, s_tmax, s_noise = options["churn"]
                variable = "r" if self.schedule.variance_preserving else "t"  # HEUN_VARIABLES
                _, self.nfe_ = edm_heun(denoise, x, times, self.schedule, churn=churn,
                                        s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise,
                                        generator=g, project=project, on_step=on_step,
                                        variable=variable)  # fmt: skip
            else:
                _, self.nfe_ = unipc(denoise, x, times, self.schedule, order=options["order"],
                                     project=project, on_step=on_step)  # fmt: skip
            return states, times[: monitor.steps + 1]
        ab = self._points(times)
        orders = dpm_solver_pp_orders(len(times) - 1, options["order"])
        history, lams, grid = [], [], times.tolist()
        for k, (t, ab_t, ab_s) in enumerate(zip(grid, ab, ab[1:], strict=False)):
            x0, eps = self._predict(x, t, y, guidance)
            if clip:
                x0, eps = clip_x0(x0, x, ab_t)
            if method == "dpm++":
                history, lams = [x0, *history[:2]], [half_log_snr(ab_t), *lams[:2]]
                if options["eta"]:
                    noise = sampling.standard_normal(x.shape, g, x.device, x.dtype)
                    x = dpm_solver_pp_sde_step(x, history, lams, ab_t, ab_s, orders[k],
                                               options["eta"], noise)  # fmt: skip
                else:
                    x = dpm_solver_pp_step(x, history, lams, ab_t, ab_s, orders[k])
            else:
                noise = sampling.standard_normal(x.shape, g, x.device, x.dtype)
                x = (ddpm_step(x, x0, ab_t, ab_s, noise) if method == "ddpm"
                     else ddim_step(x0, eps, ab_t, ab_s, options["eta"], noise))  # fmt: skip
            x = self._project_step(x, grid[k + 1])
            if on_step(k + 1, grid[k + 1], x):
                break
        self.nfe_ = monitor.steps
        return states, times[: monitor.steps + 1]

    def _sample_ode(
        self, x, method, times, y, guidance, g, keep, monitor: solvers.StepMonitor, options
    ) -> tuple[list[Tensor], Tensor]:
        """Integrate the probability-flow ODE along `times` (a fixed-step solver), or by dopri5
        from times[0] to 1 / T; the state is projected after every fixed step."""
        solver = options["solver"]
        if options["dopri5"]:
            grid = {"t0": float(times[0]), "t1": float(times[-1]), "times": None}
        else:
            grid = {"t0": None, "t1": None, "times": times}
        if solver == "dopri5" and getattr(self, "_projection", None) is not None:
            raise ValueError("inpainting with method='ode' needs a fixed-step solver: pass steps")
        project = (None if solver == "dopri5"
                   else lambda t, z: self._project_step(z, float(t)))  # fmt: skip
        sol = solvers.solve(lambda t, x_t: self._velocity(x_t, t, y, guidance), x,
                            method=solver, rtol=options["rtol"], atol=options["atol"],
                            return_trajectory=keep, project=project,
                            callback=lambda k, t, x_t: monitor(t, x_t), **grid)  # fmt: skip
        self.nfe_ = sol.nfe
        states = list(sol.trajectory.unbind(0)) if keep else [sol.x]
        return states, sol.times.double().cpu()

    @staticmethod
    def _check_order(order: Any, method: str, guided_or_sde: float) -> int:
        """The multistep order: default 2 for dpm++ (2M) and 3 for unipc, 2 with guidance."""
        if order is None:
            return 2 if guided_or_sde or method == "dpm++" else 3
        if method not in ("dpm++", "unipc"):
            raise ValueError(f"order applies to method='dpm++' or 'unipc' only, not {method!r}")
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        return int(order)

    # -- likelihoods ------------------------------------------------------------------------------
    def _likelihood_ode(self, method: solvers.Method, steps: int | None):
        """log_prob (`continuous.ContinuousModel.log_prob`) integrates the probability-flow ODE
        dx/dt = alpha' x0_hat + sigma' eps_hat from the data at t_min = 1 / T to t = 1:

            log p_tmin(x) = log N(x_1; 0, I) + int_tmin^1 div f(t, x_t) dt

        Two approximations, both small: x is taken as a point at t_min (the model density is
        that of the data scaled by alpha(t_min) and blurred by sigma(t_min), 0.01 in model
        units for T = 1000), and p_1 = N(alpha_1 m, alpha_1^2 C + sigma_1^2 I) as N(0, I),
        exact to O(alpha_1^2) for standardised data (alpha_1 = 7e-3 linear, 5e-5 cosine).
        """
        return self._velocity, 1.0 / self.config.timesteps, method, steps

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
        z = self._prepare(x, "vlb")
        y = self._labels(y, len(z))
        if decoder == "discretized" and (self.kind_ != "image" or not self.levels_):
            raise ValueError('decoder="discretized" needs a model fitted on quantised images')
        g = self.generator(seed)
        T, d = self.config.timesteps, z[0].numel()
        ab = self._points(torch.arange(T + 1, dtype=torch.float64) / T)
        flat = z.double().reshape(len(z), -1)
        a_end, s_end = coefficients(ab[T])
        s2_end = s_end**2 if isinstance(ab[T], tuple) else 1 - ab[T]
        total = -0.5 * (a_end**2 * flat.square() + s2_end - 1 - math.log(s2_end)).sum(1)  # -L_T
        for i in range(1, T + 1):  # one network pass per step, over all rows
            eps = torch.randn(z.shape, generator=g, device=z.device)
            a_i, s_i = coefficients(ab[i])
            if not isinstance(ab[i], tuple):
                s_i = math.sqrt(1 - ab[i])
            x_t = a_i * z + s_i * eps
            x0 = torch.cat([self._predict(x_t[s : s + VLB_ROWS], i / T,
                                          None if y is None else y[s : s + VLB_ROWS], 0.0)[0]
                            for s in range(0, len(z), VLB_ROWS)])  # fmt: skip
            beta = transition(ab[i], ab[i - 1])[1]  # sigma_{t|s}^2; VP: DDPM's beta_t
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
