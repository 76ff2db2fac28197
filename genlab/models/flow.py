"""Flow matching (Lipman et al. 2023; Liu et al. 2023; Albergo & Vanden-Eijnden 2023), with
minibatch optimal-transport couplings (Tong et al. 2024; Pooladian et al. 2023).

Time t runs over [0, 1] with t = 0 the data and t = 1 the noise, as in `genlab.schedules`:

    x_t = alpha(t) x0 + sigma(t) eps,    eps ~ N(0, I)       (the probability path)
    u_t = alpha'(t) x0 + sigma'(t) eps                       (its conditional velocity dx_t/dt)
    loss = E_{t ~ U(0, 1), (x0, eps) ~ coupling} || v_theta(x_t, t) - u_t ||^2

Paths: "linear" (alpha = 1 - t, sigma = sigma_min + (1 - sigma_min) t: the conditional OT /
rectified path) and "vp" (alpha = cos(pi t / 2), sigma = sin(pi t / 2)). Couplings: pairs
(x0, eps) drawn independently, or matched within each batch by an exact optimal assignment of
squared Euclidean cost ("ot"), which straightens the learned paths so that few solver steps
suffice. The net learns the marginal velocity v(x, t) = E[u_t | x_t = x] in this SCHEDULE
time; sampling integrates dx/dt = v from t = 1 (x ~ N(0, I)) down to t = 0, so a trajectory
runs from noise (index 0) to data (index -1) while its `times` fall from 1 to 0.

Likelihood (the instantaneous change of variables, Chen et al. 2018): along a solution x(t),
d/dt log p_t(x(t)) = -div v(x(t), t), so integrating (x, delta) with d delta/dt = div v from
the data (t = 0) to the noise (t = 1) gives

    log p_0(x) = log N(x(1); 0, I) + delta(1)                                       (nats)

The divergence is the exact trace of the Jacobian (one autograd pass per dimension) up to
`exact_trace_max_dim` dimensions, else Hutchinson's unbiased estimate eps^T (dv/dx) eps with
`hutchinson_probes` Rademacher probes drawn once per call (FFJORD, Grathwohl et al. 2019).

Objectives (`objective`), for sampling in one or a few steps:

    "standard"  the regression above; sampling integrates the ODE (default 50 Heun steps).
    "meanflow"  MeanFlow (Geng et al. 2025, "Mean Flows for One-step Generative Modeling"): the
                net learns the AVERAGE velocity over [r, t], u(z_t, r, t) = 1/(t - r)
                int_r^t v(z_s, s) ds along the ODE, from the MeanFlow identity
                    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),
                    d/dt u = v . d_z u + d_t u   (a Jacobian-vector product, tangent (v, 0, 1)
                                                  on (z, r, t): torch.func.jvp, or the same
                                                  by two reverse passes, `JVPS`)
                regressed on the stop-gradient target with the conditional velocity v = u_t;
                r = t gives back the flow-matching loss. A share `meanflow_ratio` (paper: 25%)
                of the (r, t) pairs has r < t (both drawn from the time distribution, t the
                larger), the rest r = t; the per-row squared error e (mean over dimensions) is
                weighted adaptively by sg(1 / (e + c)^p), c = 1e-3, p = `meanflow_power`
                (paper: 1). The net sees the times (t, t - r) (the paper's best embedding),
                on points as features of t * 1 rather than t * 1000 (`MEANFLOW_POINTS`: the
                target differentiates the net in t).
                Sampling: z_r = z_t - (t - r) u(z_t, r, t) on the grid, one net call per step:
                steps = 1 maps the noise (t = 1) to data (t = 0) in one evaluation. Its
                instantaneous velocity is v(z, t) = u(z, t, t), so `log_prob` and `invert`
                integrate that ODE as for a standard flow.
    "reflow"    rectified-flow reflow (Liu et al. 2023, "Flow Straight and Fast"): `fit` trains
                the standard flow for `reflow_share` (default 0.8) of the budget (max_steps
                and/or max_time), draws its own noise -> sample pairs (eps, x1) with an
                accurate solver (heun, `reflow_steps` = 10 steps, from the EMA weights), then
                trains the same net on the remaining budget on those fixed pairs (the path
                x_t = alpha(t) x1 + sigma(t) eps and its velocity, with the pair's eps), which
                straightens the paths so that one Euler step samples well. The student's
                1-step samples are about as good as its teacher's many-step ones, so the teacher
                gets most of the budget: on moons at 2,000 steps the 1-NFE MMD² was 2.1e-3,
                1.6e-3 and 3.5e-3 for shares 0.5, 0.8 and 0.9 (the teacher at 1,000 steps:
                2.0e-3; `benchmarks/onestep.py`, fixed steps, one thread).
                `reflow_pairs` sets how many pairs the teacher draws (default one per
                training row: 10,000 pairs of 2-D points cost ~4 s, out of the budget).
                `reflow_end_share` (default 1/2) of the student's rows are trained at t = 1,
                where one Euler step evaluates the net: there the regression is x1 = eps -
                v(eps, 1) itself, the distillation of Liu et al. 2023 (section 2.3), and the
                other rows keep the straight-path regression at the drawn times. At 120 s
                (1-NFE MMD², mean of 3 noise seeds; share 0 / 0.5 / 0.8): moons 1.39e-4 /
                6.0e-5 / -, 8gaussians 5.6e-5 / -1.8e-5 / -1.8e-5, 2spirals 2.9e-5 / 2.9e-5 /
                5.0e-5, circles 6.5e-5 / 6.7e-5 / 7.7e-5 (BENCHMARKS.md "Reflow's noise end").

The one-step objectives default to sample_steps = 1 and sample_method = "euler" (a MeanFlow
step is an Euler step with the average velocity), unless those options are given.

The net works in the normalised space of `genlab.models.continuous` (points standardised,
images in [0, 1] mapped to [-1, 1]); `log_prob` adds the log-Jacobian, so it is a density of x
as given. Quantised images (a Dataset with `levels`) are dequantised afresh in every batch,
x = (k + u) / levels, so the density is that of the dequantised data, as evaluation measures it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from genlab import grids, sampling, train
from genlab.data.dataset import check_memory
from genlab.models import limits
from genlab.models.base import TrainingData, TrajectoryPicture
from genlab.models.continuous import (
    EVAL_ROWS,
    ContinuousConfig,
    ContinuousModel,
    SampleTrajectory,
    check_guidance,
    drop_labels,
    guided_call,
)
from genlab.models.diffusion_samplers import edm_heun
from genlab.nets import MLP, UNet
from genlab.nets.embeddings import TIME_SCALE, set_time_scale
from genlab.options import Choice, Integer, Real, option
from genlab.schedules import PATHS, Schedule
from genlab.solvers import METHODS, StepCallback, StepMonitor, check_callback, solve

PathName = Literal["linear", "vp"]
CouplingName = Literal["independent", "ot"]
SolverName = Literal["euler", "midpoint", "heun", "rk4", "dopri5"]
ObjectiveName = Literal["standard", "meanflow", "reflow"]
GridName = Literal["uniform", "quadratic", "power", "logsnr", "karras"]
COUPLINGS = ("independent", "ot")
OBJECTIVES = ("standard", "meanflow", "reflow")
ONE_STEP = ("meanflow", "reflow")
ONE_STEP_DEFAULTS: dict[str, dict[str, Any]] = {
    "meanflow": {"sample_steps": 1, "sample_method": "euler", "time_sampling": "logit_normal",
                 "time_location": -0.4, "time_scale": 1.0},
    "reflow": {"sample_steps": 1, "sample_method": "euler"},
}  # fmt: skip
"""What a one-step objective gets for the options the caller did not give (after the recipe):
one Euler step; MeanFlow's logit-normal(-0.4, 1) times (Geng et al. 2025, their best for
one-step ImageNet). Measured on moons at 1,000 steps (one thread; 1-NFE MMD², n = 4,000):
these defaults 1.5e-2; uniform times 2.4e-1; p = 0.5 1.4e-1; meanflow_ratio 0.75 1.3e-2 (2-NFE
8.2e-3 against 1.3e-2, at 14% more time per step), so the paper's p = 1 and logit-normal times
stay (all with the time features of the standard flow, time_embed_scale 1000)."""
MEANFLOW_POINTS: dict[str, Any] = {"meanflow_ratio": 0.75, "time_embed_scale": 1.0}
"""MeanFlow's further defaults on points (data of kind "points"; digits keep the values above,
which met issue 17's digit target). They mend two faults, found against the closed form of
Gaussian data, whose exact one-step map is the identity in the model's standardised space
(`tests/test_flow_onestep.py`: 300 steps on N(1.5, 0.4^2), RMS error of the one-step map in
data sds: 0.43 before, 0.20 with the first fix, 0.15 with the second alone, 0.11 with both):

1. The time features. The target holds (t - r) d/dt u, and sinusoidal features of t * 1000
   turn at up to 1,000 rad per unit t, so the net's t-derivative is large and rough from the
   start; the target is noisy and the samples grow worse with training (moons, 1-NFE MMD² at
   n = 4,000: 1.1e-2 at 600 steps, 4.3e-2 at 2,000; 0.15 at 120 s). With t * 1 (features of at
   most 1 rad per unit t, as a DiT embedder fed t in [0, 1]): 5.3e-3 against 1.7e-2 at 1,000
   steps (both with p = 0).
2. The share of r < t pairs: at 25% the pairs near (r, t) = (0, 1), the one step, are rarely
   drawn (both times logit-normal, t the larger); 75% learns the one-step map faster (moons at
   600 steps, n = 2,000: 7.4e-3 against 8.2e-3, the 2-NFE samples worse: 1.3e-2 against 9.6e-3).

Measured with `/tmp` scripts at equal steps (one thread, a loaded machine); the 120 s figures
of `benchmarks/onestep.py` are in BENCHMARKS.md."""
MEANFLOW_C = 1e-3  # c of MeanFlow's adaptive weight 1 / (e + c)^p
MAX_REFLOW_PAIRS = 100_000_000  # reflow_pairs' bound (memory is checked for the data's size)
REFLOW_METHOD = "heun"  # how reflow draws its pairs (reflow_steps steps, 2 NFE each)
EDM_SIGMA = (0.002, 80.0)  # EDM's sigma/alpha range: the ends of the logsnr / karras grids
TIME_FEATURES = 64  # sinusoidal time features of the MLP
MAX_DEPTH = 1000  # MLP residual blocks (more is an error of units, not a network)


# -- the maths, as pure functions ----------------------------------------------------------------
def ot_pairing(x0: Tensor, eps: Tensor, groups: Tensor | None = None) -> Tensor:
    """The permutation pi minimising sum_i |x0_i - eps_pi(i)|^2 (exact, Hungarian / LAPJV).

    Within each group (e.g. class label) separately when `groups` (B,) is given, so the noise
    paired with each class stays N(0, I). (B, ...), (B, ...) -> (B,) long: eps[pi] pairs x0.
    """
    a, b = x0.detach().reshape(len(x0), -1).double(), eps.detach().reshape(len(eps), -1).double()
    perm = torch.arange(len(x0))
    labels = torch.zeros(len(x0), dtype=torch.long) if groups is None else groups.cpu()
    for g in labels.unique():
        idx = (labels == g).nonzero().flatten()
        cost = torch.cdist(a[idx.to(a.device)], b[idx.to(b.device)]).square().cpu().numpy()
        _, cols = linear_sum_assignment(cost)
        perm[idx] = idx[torch.from_numpy(cols)]
    return perm.to(x0.device)


def jvp_double_backward(
    f: Callable[..., Tensor], primals: tuple[Tensor, ...], tangents: tuple[Tensor, ...]
) -> tuple[Tensor, Tensor]:
    """(f(*primals), J tangents), the Jacobian-vector product by two reverse passes: with
    g(w) = J^T w (a vector-Jacobian product kept differentiable in w), J v = d/dw <g(w), v>.

    The same numbers as `torch.func.jvp` up to rounding; on CPU with small nets several times
    faster in this PyTorch (its forward-mode rules run Python decompositions per operation).
    The output stays differentiable in f's parameters (the tangent does not).
    """
    xs = tuple(p.detach().requires_grad_(True) for p in primals)
    with torch.enable_grad():
        out = f(*xs)
        w = torch.zeros_like(out, requires_grad=True)
        grads = torch.autograd.grad(out, xs, w, create_graph=True, allow_unused=True)
        inner = sum((g * v).sum() for g, v in zip(grads, tangents, strict=True) if g is not None)
        (jv,) = torch.autograd.grad(inner, w)
    return out, jv.detach()


JVPS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "forward": torch.func.jvp,
    "double_backward": jvp_double_backward,
}
"""How `meanflow_target` takes the Jacobian-vector product: forward mode (`torch.func.jvp`)
or two reverse passes (`jvp_double_backward`, what the loss uses: faster on CPU)."""


def meanflow_target(
    u: Callable[[Tensor, Tensor, Tensor], Tensor],
    z: Tensor,
    r: Tensor,
    t: Tensor,
    v: Tensor,
    jvp: Literal["forward", "double_backward"] = "forward",
) -> tuple[Tensor, Tensor]:
    """(u(z, r, t), the MeanFlow target u_tgt = v - (t - r) (v . d_z u + d_t u)), the target
    detached (stop-gradient) and the prediction differentiable.

    d/dt u(z_t, r, t) along dz/dt = v is one Jacobian-vector product with tangent (v, 0, 1)
    on (z, r, t) (`JVPS[jvp]`). z, v (B, ...), r, t (B,) with r <= t.
    """
    if jvp == "forward":
        pred, dudt = torch.func.jvp(u, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    else:  # r's tangent is 0: leave it out of the reverse passes
        pred, dudt = JVPS[jvp](lambda z_, t_: u(z_, r, t_), (z, t), (v, torch.ones_like(t)))
    gap = (t - r).reshape(-1, *([1] * (z.ndim - 1)))
    return pred, (v - gap * dudt).detach()


def adaptive_weighted(err_sq: Tensor, power: float, c: float = MEANFLOW_C) -> Tensor:
    """mean_b sg(w_b) e_b with w_b = 1 / (e_b + c)^p (MeanFlow's adaptive loss weighting):
    err_sq (B,) per-row squared errors; p = 0 is the plain mean."""
    if power == 0:
        return err_sq.mean()
    weight = (err_sq.detach() + c).pow(-power)
    return (weight * err_sq).mean()


def draw_time_pairs(t1: Tensor, t2: Tensor, ratio: float) -> tuple[Tensor, Tensor]:
    """(r, t): t = max(t1, t2), r = min(t1, t2) on a share `ratio` of the rows (the first
    round(ratio * B), so the count is exact), r = t on the others. (B,), (B,) -> (B,), (B,)."""
    t, r = torch.maximum(t1, t2), torch.minimum(t1, t2)
    unequal = torch.arange(len(t), device=t.device) < round(ratio * len(t))
    return torch.where(unequal, r, t), t


def mean_flow_steps(
    u: Callable[[Tensor, Tensor, Tensor], Tensor],
    z: Tensor,
    times: Sequence[float],
    *,
    project: Callable[[Tensor, Tensor], Tensor] | None = None,
    on_step: Callable[[float, Tensor], bool] | None = None,
    keep_states: bool = False,
) -> tuple[Tensor, list[float], list[Tensor]]:
    """MeanFlow sampling along a decreasing grid t_0 > t_1 > ...: one call of u per step,

        z_{k+1} = z_k - (t_k - t_{k+1}) u(z_k, t_{k+1}, t_k)

    then z_{k+1} = project(t_{k+1}, z_{k+1}) (t a 0-d tensor) and on_step(t_{k+1}, z_{k+1})
    (True stops). u takes (z (B, ...), r (B,), t (B,)). Exact for the true average velocity
    whatever the grid. Returns (z, the times reached, the states there when keep_states).
    """
    states, reached = [z] if keep_states else [], [float(times[0])]
    for t_hi, t_lo in itertools.pairwise(times):
        t = torch.full((len(z),), float(t_hi), dtype=z.dtype, device=z.device)
        r = torch.full_like(t, float(t_lo))
        z = z - (float(t_hi) - float(t_lo)) * u(z, r, t)
        if project is not None:
            z = project(torch.tensor(float(t_lo), dtype=z.dtype, device=z.device), z)
        reached.append(float(t_lo))
        if keep_states:
            states.append(z)
        if on_step is not None and on_step(float(t_lo), z):
            break
    return z, reached, states


def flow_grid(schedule: Schedule, name: str, steps: int, t_start: float = 1.0) -> list[float]:
    """The sampler's steps + 1 times from t_start to 0 on the grid `name` (`genlab.grids`).

    "uniform", "quadratic" and "power" run from t_start to 0. A flow path has alpha(1) = 0, so its
    log-SNR is -inf at t = 1 and +inf at t = 0: "logsnr" and "karras" space the times between
    EDM's noise-to-signal ratios sigma/alpha = 80 and 0.002 (t_hi, t_lo; Karras et al. 2022),
    start with a step from t_start down to t_hi when t_start > t_hi, and end with a last step
    from t_lo to 0.

    Uniform is the flow's best, so it stays the default and there is no config option for
    the grid: on moons (2,000 steps, one thread, MMD² at n = 4,000; heun 50: 4.4e-4) euler 10
    gave uniform 1.8e-3, quadratic 2.9e-3, logsnr 1.5e-2, karras 1.3e-2, and heun 5 (10 NFE)
    4.9e-4, 5.1e-4, 2.3e-2, 6.4e-3 (a flow's velocity is smooth in t, unlike diffusion's
    noise prediction near t = 0, so spending steps near the ends does not pay).
    """
    if name not in grids.GRIDS:
        raise ValueError(f"grid must be one of {grids.GRIDS}, got {name!r}")
    if name in ("uniform", "quadratic", "power"):
        return grids.time_grid(schedule, name, steps, t_max=t_start).tolist()
    lo, hi = (float(schedule.t_of_log_snr(torch.tensor(-2 * math.log(s), dtype=torch.float64)))
              for s in EDM_SIGMA)  # fmt: skip
    if t_start <= lo or steps == 1:
        return [t_start, 0.0]
    if t_start <= hi:
        return grids.time_grid(
            schedule, name, steps, t_max=t_start, t_min=lo, to_zero=True
        ).tolist()
    if steps == 2:
        return [t_start, hi, 0.0]
    rest = grids.time_grid(schedule, name, steps - 1, t_max=hi, t_min=lo, to_zero=True)
    return [t_start, *rest.tolist()]


def flow_denoiser(
    velocity: Callable[[Tensor, Tensor], Tensor], schedule: Schedule
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The denoiser (x, t) -> (x0_hat, eps_hat) that a velocity implies on the path
    x_t = a x0 + s eps (`diffusion_samplers.Denoise`): solving v = a' x0 + s' eps with it,

        x0_hat = (s' x - s v) / (a s' - s a'),    eps_hat = (a v - a' x) / (a s' - s a')

    (the linear path: x0_hat = x - t v, eps_hat = x + (1 - t) v; a s' - s a' = 1)."""

    def denoise(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t64 = t.double()
        a, s = float(schedule.alpha(t64)), float(schedule.sigma(t64))
        da, ds = float(schedule.d_alpha(t64)), float(schedule.d_sigma(t64))
        v, det = velocity(x, t), a * ds - s * da
        return (ds * x - s * v) / det, (a * v - da * x) / det

    return denoise


def pair_labels(labels: Tensor | None, n: int, seed: int) -> Tensor | None:
    """Labels for reflow's n pairs: the training rows' own when n equals their count, else n
    drawn from them uniformly with replacement (seeded), so that the classes keep their
    training frequencies."""
    if labels is None or n == len(labels):
        return labels
    g = torch.Generator().manual_seed(seed)
    return labels[torch.randint(len(labels), (n,), generator=g)]


def at_noise_end(t: Tensor, share: float) -> Tensor:
    """t (B,) with its first round(share * B) entries set to 1, the noise end where a 1-step
    Euler sampler evaluates the net: reflow's student then regresses x1 = eps - v(eps, 1)
    there directly, the distillation step of Liu et al. 2023 (section 2.3), on those rows."""
    k = round(share * len(t))
    return torch.cat([torch.ones_like(t[:k]), t[k:]]) if k else t


def reflow_budgets(config: Any) -> tuple[Any, Any]:
    """(teacher, student) configs of reflow's two phases: the budget (max_steps, max_time;
    DEFAULT_MAX_STEPS when neither is set) split reflow_share : 1 - reflow_share, the teacher
    a standard flow with the validation options, the student without them (it trains on
    pairs). The split is a pure function of the config, so a resumed run finds the
    same two configs."""
    share = config.reflow_share
    steps, seconds = config.step_limit, config.max_time
    first = {"max_steps": None if steps is None else max(1, round(share * steps)),
             "max_time": None if seconds is None else share * seconds}  # fmt: skip
    second = {"max_steps": None if steps is None else max(1, steps - first["max_steps"]),
              "max_time": None if seconds is None else seconds - first["max_time"]}  # fmt: skip
    teacher = dataclasses.replace(config, objective="standard", **first)
    student = dataclasses.replace(config, val_fraction=None, patience=None, **second)
    return teacher, student


def checkpoint_step(path: Path) -> int | None:
    """The step a training checkpoint was written at, or None if it cannot be read (the
    trainer then reports what is wrong with it)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:
        return None


def unet_levels(side: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(channel_mults, attention_resolutions) of the flow's UNet for images of this side."""
    if side < 16:
        return (1, 2), ()
    return (1, 2, 2), ((side + 3) // 4,)


# -- config and model -----------------------------------------------------------------------------
@dataclass(frozen=True)
class FlowConfig(ContinuousConfig):
    """Flow matching's options: the path, the coupling, the MLP and the default solver (after
    the shared ones of `ContinuousConfig` and `genlab.train.TrainConfig`)."""

    path: PathName = option(
        "linear", "Probability path: linear (conditional OT) or vp (cosine).", Choice(tuple(PATHS))
    )
    coupling: CouplingName = option(
        "independent",
        "Noise-data pairs: independent, or ot (minibatch transport).",
        Choice(COUPLINGS),
    )
    sigma_min: float = option(
        0.0, "Width of the linear path at the data end.", Real(0, 1, high_open=True)
    )
    time_embed_scale: float = option(
        TIME_SCALE,
        "Multiplier of t in the net's sinusoidal time features (MeanFlow: a smaller one).",
        Real(0, low_open=True),
    )
    hidden: int = option(128, "MLP width.", Integer(1))
    depth: int = option(3, "MLP residual blocks.", Integer(1, MAX_DEPTH))
    sample_steps: int = option(
        50, "Default solver steps of sample, eval and plot.", Integer(1, limits.MAX_STEPS)
    )
    sample_method: SolverName = option(
        "heun", "Default solver of sample, eval and plot.", Choice(METHODS)
    )
    objective: ObjectiveName = option(
        "standard",
        "Training objective: standard, meanflow (one-step average velocity) or reflow "
        "(retrain on the flow's own pairs).",
        Choice(OBJECTIVES),
    )
    meanflow_ratio: float = option(
        0.25, "MeanFlow: share of (r, t) pairs with r < t (the rest r = t).", Real(0, 1)
    )
    meanflow_power: float = option(
        1.0, "MeanFlow: power p of the adaptive loss weight 1 / (err^2 + c)^p.", Real(0)
    )
    reflow_share: float = option(
        0.8,
        "Reflow: share of the budget for the standard flow before its pairs are drawn.",
        Real(0, 1, low_open=True, high_open=True),
    )
    reflow_pairs: int = option(
        0,
        "Reflow: noise -> sample pairs the teacher draws (0: one per training row).",
        Integer(0, MAX_REFLOW_PAIRS),
    )
    reflow_steps: int = option(
        10, "Reflow: Heun steps of the teacher's ODE for its pairs.", Integer(1, limits.MAX_STEPS)
    )
    reflow_end_share: float = option(
        0.5,
        "Reflow: share of the student's rows trained at t = 1, the one-step sampler's time.",
        Real(0, 1),
    )

    def __post_init__(self):
        super().__post_init__()
        if self.path != "linear" and self.sigma_min != 0:
            raise ValueError('sigma_min belongs to path="linear"; set it to 0 for path="vp"')


class FlowMatching(ContinuousModel, family="flow"):
    """A continuous normalising flow trained by flow matching; exact ODE likelihood.

    Options (`FlowConfig`; path may be positional):
        path: "linear" (conditional OT / rectified) or "vp" (cosine) probability path.
        coupling: "independent" or "ot" (exact minibatch optimal transport per batch).
        sigma_min: width of the linear path at the data end (0: the data themselves).
        net: "auto" (`genlab.models.continuous.auto_net`: an MLP for points and small
            images, a UNet for larger square images), "mlp" or "unet".
        time_embed_scale: the multiplier of t in the net's sinusoidal time features (1000:
            DDPM's step units; MeanFlow's default is smaller, `ONE_STEP_DEFAULTS`).
        hidden, depth: MLP width and number of residual blocks.
        base_channels: UNet width of the first level.
        label_dropout: probability of training on the null label (classifier-free guidance).
        dequantize: add fresh uniform noise to quantised images (a Dataset with `levels`).
        exact_trace_max_dim: `log_prob` uses the exact trace up to this many dimensions.
        hutchinson_probes: Rademacher probes of Hutchinson's estimator above that.
        sample_steps, sample_method: the default solver of `sample` (one-step objectives:
            1 and "euler" unless given).
        objective: "standard", "meanflow" or "reflow" (module docstring).
        meanflow_ratio, meanflow_power: MeanFlow's share of pairs with r < t and the power p
            of its adaptive loss weight.
        reflow_share: reflow's share of the budget for its first, standard phase.
        and the fields of `genlab.train.TrainConfig` (max_steps, max_time, batch_size, ...).
        device: "cuda", "cpu" or None (cuda when present).

    Labels are used only when passed as `y=` (a Dataset's labels are ignored): `fit(x, y)`
    trains v(x, t | y), dropping labels to the null class with probability label_dropout, and
    `sample(n, y=..., guidance=w)` samples with classifier-free guidance. Without y, a
    conditional model uses the null label, i.e. the unconditional field learned by dropout.
    """

    config_class = FlowConfig
    positional = ("path",)
    size_options: ClassVar[tuple[str, ...]] = ("hidden", "depth", "base_channels")
    sample_options: ClassVar[frozenset[str]] = frozenset(
        {"steps", "method", "y", "guidance", "return_trajectory", "rtol", "atol", "init",
         "strength", "times", "grid", "churn", "s_tmin", "s_tmax", "s_noise"}
    )  # fmt: skip
    trajectory_picture = TrajectoryPicture("trajectories", {}, paths=500, images=64, animate=True)

    @property
    def schedule(self) -> Schedule:
        """The probability path x_t = alpha(t) x0 + sigma(t) eps (`genlab.schedules`)."""
        cfg = self.config
        return PATHS[cfg.path](cfg.sigma_min) if cfg.path == "linear" else PATHS[cfg.path]()

    def fit_summary(self) -> dict[str, Any]:
        cfg = self.config
        k = cfg.hutchinson_probes  # as `genlab.solvers.log_likelihood` names it
        hutchinson = f"hutchinson ({k} rademacher probe{'s' * (k > 1)})"
        estimator = "exact trace" if self.divergence == "exact" else hutchinson
        summary = {**super().fit_summary(), "path": cfg.path, "coupling": cfg.coupling,
                   "net": self.net_, "log_prob": estimator,
                   "conditional": self.conditional}  # fmt: skip
        if cfg.objective != "standard":
            summary["objective"] = cfg.objective
        if getattr(self, "reflow_", None):
            summary["reflow"] = dict(self.reflow_)
        return summary

    # -- building and training --------------------------------------------------------------------
    def _build_net(self, d: int) -> nn.Module:
        cfg = self.config
        times = 2 if cfg.objective == "meanflow" else 1  # MeanFlow's net sees (t, t - r)
        if self.net_ == "mlp":
            return MLP(d, d, hidden=(cfg.hidden,) * cfg.depth, time_dim=TIME_FEATURES,
                       n_classes=self.n_classes_, time_inputs=times,
                       time_scale=cfg.time_embed_scale, dropout=cfg.dropout,
                       input_frequencies=cfg.input_frequencies,
                       cond_dim=cfg.cond_width)  # fmt: skip
        channels, side = self.net_shape_[:2]
        mults, attention = unet_levels(side)
        unet = UNet(channels, side, base_channels=cfg.base_channels, channel_mults=mults,
                    attention_resolutions=attention, n_classes=self.n_classes_,
                    time_inputs=times, dropout=cfg.dropout)  # fmt: skip
        return set_time_scale(unet, cfg.time_embed_scale)

    def _apply_recipe(self, data: TrainingData) -> None:
        """The recipe (`NeuralModel._apply_recipe`), then a one-step objective's own defaults
        (`ONE_STEP_DEFAULTS`; MeanFlow on points also `MEANFLOW_POINTS`) for the options the
        caller did not give."""
        super()._apply_recipe(data)
        defaults = dict(ONE_STEP_DEFAULTS.get(self.config.objective, {}))
        if self.config.objective == "meanflow" and data.kind == "points":
            defaults |= MEANFLOW_POINTS
        changes = {k: v for k, v in defaults.items() if k not in self.given_options}
        if changes:
            self.config = dataclasses.replace(self.config, **changes)

    def loss(self, batch: tuple[Tensor, ...], step: int) -> dict[str, Tensor]:
        """Flow-matching regression: mean over batch and dimensions of |v(x_t, t) - u_t|^2,
        with t from `_train_times`; MeanFlow's loss for objective="meanflow"; on reflow's
        pair rows (B, 2, *net_shape) = (eps, x1), the regression along the pairs' paths."""
        y = batch[1] if len(batch) > 1 else None
        if self._is_pair_batch(batch[0]):
            eps, z0 = batch[0][:, 0], batch[0][:, 1]
        else:
            z0 = self._train_rows(batch[0])
            eps = torch.randn_like(z0)
            if self.config.coupling == "ot":
                eps = eps[ot_pairing(z0, eps, y)]
        if self.config.objective == "meanflow":
            return self._meanflow_loss(z0, eps, y)
        t = self._train_times(z0)
        if self._is_pair_batch(batch[0]):
            t = at_noise_end(t, self.config.reflow_end_share)
        x_t = self.schedule.marginal(z0, eps, t)
        target = self.schedule.velocity(z0, eps, t)
        if y is not None:
            y = drop_labels(y, self.config.label_dropout, self.n_classes_)
        loss = (self.net(x_t, t, y) - target).square().mean()
        return {"loss": loss}

    def _meanflow_loss(self, z0: Tensor, eps: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        """MeanFlow (module docstring): the rows with r < t go through one JVP, the others
        (r = t, target v) through a plain forward pass."""
        cfg = self.config
        r, t = draw_time_pairs(self._train_times(z0), self._train_times(z0), cfg.meanflow_ratio)
        z_t = self.schedule.marginal(z0, eps, t)
        v = self.schedule.velocity(z0, eps, t)
        if y is not None:
            y = drop_labels(y, cfg.label_dropout, self.n_classes_)
        k = int((r < t).sum())  # the first k rows (`draw_time_pairs`)
        errors = []
        if k:
            yk = None if y is None else y[:k]
            u, target = meanflow_target(lambda z, r_, t_: self._mean_net(z, r_, t_, yk),
                                        z_t[:k], r[:k], t[:k], v[:k],
                                        jvp="double_backward")  # fmt: skip
            errors.append((u - target).square().flatten(1).mean(1))
        if k < len(z0):
            yr = None if y is None else y[k:]
            u = self._mean_net(z_t[k:], r[k:], t[k:], yr)
            errors.append((u - v[k:]).square().flatten(1).mean(1))
        err = torch.cat(errors)
        return {"loss": adaptive_weighted(err, cfg.meanflow_power), "mse": err.mean().detach()}

    def _mean_net(self, z: Tensor, r: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        """MeanFlow's net u(z, r, t), fed the times (t, t - r): z (B, ...), r, t (B,)."""
        return self.net(z, torch.stack([t, t - r], dim=1), y)

    def _is_pair_batch(self, x: Tensor) -> bool:
        """Whether a batch holds reflow's pair rows (B, 2, *net_shape) rather than data."""
        return self.config.objective == "reflow" and tuple(x.shape[1:]) == (2, *self.net_shape_)

    # -- reflow: two phases through the one trainer --------------------------------------------
    def fit(self, x: Any, y: Any = None, **options: Any) -> FlowMatching:
        """`NeuralModel.fit`; with objective="reflow", its two phases (module docstring).

        Reflow's first phase checkpoints to out/reflow_teacher/ and the second to out/ itself,
        so `resume=True` continues whichever phase was cut: a finished teacher is reloaded
        from its checkpoint and its pairs drawn again (the same seeded noise and solver, so
        the same pairs and the second phase's checkpoint matches them); a teacher that trains
        further on resume (a larger budget) draws other pairs, and the second phase starts
        afresh on them. Callbacks see each
        phase's own step count; `train_result_` sums both phases (the pairs' seconds
        included). Under max_time the pairs' seconds (and any overrun of the first phase) come
        out of the second phase's share, so the whole fit keeps to max_time (max_time may
        change on resume, so a resumed second phase still matches its checkpoint).
        Validation data (val= or val_fraction) serves the first phase only (a validation
        loss means nothing on the pairs): the teacher's last EMA weights draw the pairs
        (`ContinuousModel.selects_by_validation`), and the final model has no best weights.
        """
        if self.config.objective != "reflow":
            return super().fit(x, y, **options)
        return self._fit_reflow(x, y, **options)

    def _fit_reflow(self, x, y=None, *, val=None, out=None, checkpoint_every=None,
                    resume=False, progress=None, callback=None, callback_every=None,
                    loggers=()) -> FlowMatching:  # fmt: skip
        rows, labels, val_rows = self._prepare_fit(x, y, val)
        n_pairs = self.config.reflow_pairs or len(rows)
        pair_bytes = 2 * math.prod(rows.shape[1:]) * 8  # (eps, x1), float64 at most
        check_memory(n_pairs * pair_bytes, f"reflow's {n_pairs:,} pairs",
                     "use a smaller reflow_pairs")  # fmt: skip
        teacher, student = reflow_budgets(self.config)
        folder = None if out is None else Path(out)
        first = None if folder is None else folder / "reflow_teacher"
        resumed_at = None  # the teacher checkpoint's step when resuming from one
        if folder is not None and resume and (first / train.CHECKPOINT_FILE).is_file():
            resumed_at = checkpoint_step(first / train.CHECKPOINT_FILE)
        common = {"checkpoint_every": checkpoint_every, "resume": resume, "callback": callback,
                  "callback_every": callback_every, "progress": progress,
                  "device": self.device_, "loggers": loggers}  # fmt: skip
        one = train.fit(self, rows, labels, teacher, val=val_rows, out=first, **common)
        if folder is not None and one.steps != resumed_at:  # a new or further-trained teacher:
            (folder / train.CHECKPOINT_FILE).unlink(missing_ok=True)  # other pairs, a new student
        clock = time.perf_counter()
        labels = pair_labels(labels, n_pairs, self.config.seed)
        pairs = self._reflow_pairs(n_pairs, labels)
        pair_seconds = time.perf_counter() - clock
        if student.max_time is not None:  # the pairs' seconds come out of the budget
            left = student.max_time - max(0.0, one.seconds - teacher.max_time) - pair_seconds
            student = dataclasses.replace(student, max_time=max(left, 1e-3))
        two = train.fit(self, pairs, labels, student, out=folder, **common)
        history = one.history + [{**row, "step": row["step"] + one.steps} for row in two.history]
        self.train_result_ = train.TrainResult(steps=one.steps + two.steps,
                                               seconds=one.seconds + pair_seconds + two.seconds,
                                               history=history)  # fmt: skip
        self.reflow_ = {
            "teacher_steps": one.steps,
            "pairs": len(pairs),
            "pair_seconds": round(pair_seconds, 3),
            "student_steps": two.steps,
        }
        self.eval()
        self._check_trained()
        return self

    @torch.no_grad()
    def _reflow_pairs(self, n: int, labels: Tensor | None) -> Tensor:
        """(n, 2, *net_shape) pairs (eps, z1) in model space, z1 the teacher's ODE solution
        (REFLOW_METHOD, config.reflow_steps) from eps ~ N(0, I) drawn on a generator seeded
        by config.seed; with labels, each pair is drawn for its label (guidance 0)."""
        was_training = self.training
        self.eval()
        g = sampling.resolve_generator(self.config.seed, None)
        eps = sampling.standard_normal((n, *self.net_shape_), g, self.device, self.model_dtype)
        y = None if labels is None else labels.to(self.device)
        method, steps = REFLOW_METHOD, self.config.reflow_steps
        rows = EVAL_ROWS[self.net_]

        def field(t: Tensor, z: Tensor) -> Tensor:
            return torch.cat([self.velocity(z[i : i + rows], t, None if y is None
                                            else y[i : i + rows])
                              for i in range(0, len(z), rows)])  # fmt: skip

        z1 = solve(field, eps, 1.0, 0.0, method=method, steps=steps).x
        self.train(was_training)
        return torch.stack([eps, z1], dim=1)

    # -- the field --------------------------------------------------------------------------------
    def velocity(
        self, z: Tensor, t: Tensor | float, y: Tensor | None = None, guidance: float = 0.0
    ) -> Tensor:
        """The learned dz/dt at schedule time t: z (B, *net_shape), t () or (B,) -> like z;
        with guidance w, v_null + (1 + w)(v_y - v_null) from one batched net call.

        Raises:
            DivergedError: the net's output is not finite (diverged or edited weights).
        """
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(len(z))
        if self.config.objective == "meanflow":  # the instantaneous velocity u(z, t, t)
            t = torch.stack([t, torch.zeros_like(t)], dim=1)
        v = guided_call(self.net, z, t, y, guidance, self.n_classes_)
        limits.check_outputs(v, "the velocity field's values")
        return v

    def mean_velocity(
        self,
        z: Tensor,
        r: Tensor | float,
        t: Tensor | float,
        y: Tensor | None = None,
        guidance: float = 0.0,
    ) -> Tensor:
        """A MeanFlow model's average velocity u(z, r, t) = (z_t - z_r) / (t - r) over
        [r, t] (r <= t): z (B, *net_shape), r, t () or (B,) -> like z; guidance as in
        `velocity`.

        Raises:
            ValueError: the model's objective is not "meanflow".
        """
        if self.config.objective != "meanflow":
            raise ValueError(
                f'mean_velocity belongs to objective="meanflow"; this flow was trained with '
                f'objective="{self.config.objective}": use velocity(z, t)'
            )
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(len(z))
        r = torch.as_tensor(r, dtype=z.dtype, device=z.device).expand(len(z))
        u = guided_call(self.net, z, torch.stack([t, t - r], dim=1), y, guidance,
                        self.n_classes_)  # fmt: skip
        limits.check_outputs(u, "the average velocity's values")
        return u

    def _likelihood_ode(self, method: SolverName, steps: int | None):
        """log_prob integrates dz/dt = v(z, t) from the data (t = 0); fixed-step methods
        default to config.sample_steps."""
        return self.velocity, 0.0, *self._solver(method, steps)

    def _solver(self, method: str | None, steps: int | None) -> tuple[str, int | None]:
        """(method, steps) with the config's defaults; dopri5 takes no steps."""
        method = self.config.sample_method if method is None else method
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if steps is None and method != "dopri5":
            steps = self.config.sample_steps
        return method, None if steps is None else limits.check_steps(steps)

    # -- sampling and likelihood ------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        callback: StepCallback | None = None,
        progress: bool | None = None,
        steps: int | None = None,
        method: SolverName | None = None,
        y: Any = None,
        guidance: float = 0.0,
        return_trajectory: bool = False,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        init: Any = None,
        strength: float = 1.0,
        times: Sequence[float] | Tensor | None = None,
        grid: GridName = "uniform",
        churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
    ) -> Tensor | SampleTrajectory:
        """n draws: integrate dx/dt = v(x, t) from t = 1 (x ~ N(0, I)) to t = 0 (a MeanFlow
        model: z_r = z_t - (t - r) u(z_t, r, t) along the grid, one net call per step).

        Args:
            n: number of samples.
            seed: seed of a CPU generator for the noise (same seed, same samples, on any
                device); None: OS entropy. seed=s is the same as
                generator=torch.Generator().manual_seed(s) (`genlab.sampling`).
            generator: a torch.Generator to draw the noise from instead (advanced in place;
                not with seed).
            noise: (n, *event_shape) the starting point x(1): N(0, I) draws in the model's
                normalised space (before loc / scale), e.g. torch.randn(n, *event_shape,
                generator=torch.Generator().manual_seed(s)), which `seed=s` draws. The ODE
                is deterministic, so the same noise gives the same samples whatever the seed.
            callback: callback(step, t, x) after each solver step (each accepted dopri5 step):
                the steps taken (1, 2, ...), the schedule time reached (from 1 towards 0) and
                the current state, (n, *event_shape) in data space. Returning True stops
                sampling: that state is returned (and the trajectory ends there).
            progress: a tqdm bar over the solver steps on stderr; None: only on a TTY.
            steps, method: the solver (`genlab.solvers`): "euler", "midpoint", "heun", "rk4"
                take `steps` steps on the grid (default: config.sample_steps); "dopri5" adapts
                its steps to rtol/atol, controlling the error of all n samples together.
                Default method: config.sample_method. A MeanFlow model takes `steps` steps of
                its own rule (method "euler" or None only).
            y: labels of a conditional flow (an int or (n,)); None: the unconditional field.
            guidance: classifier-free guidance weight w: v = v_u + (1 + w)(v_y - v_u); 0 is
                plain conditional sampling. Needs y.
            return_trajectory: return a `SampleTrajectory` (states at every step) instead.
            init, strength: SDEdit / img2img (`ContinuousModel._edit_start`): start from the
                rows init (n or 1 rows, data space) noised to t_start = strength and integrate
                from there to 0 (`steps` steps over [0, strength]); strength = 0 returns init
                (through the normalised space) without any net call, 1 is plain sampling.
            times: a decreasing grid of times for the fixed-step methods instead of steps and
                grid (`genlab.grids.check_times`; it must start at t_start: 1, or strength).
            grid: the spacing of the `steps` times (`flow_grid`): "uniform" (default, linear
                in t, today's numbers), "quadratic", "power" (t^(1/1.5) linear), "logsnr" or
                "karras" (EDM's range sigma/alpha in [0.002, 80], then a last step to t = 0: a
                flow path's log-SNR is infinite at both ends).
            churn, s_tmin, s_tmax, s_noise: EDM's stochastic Heun (method="heun" only; Karras
                et al. 2022, Alg. 2, through `diffusion_samplers.edm_heun` in t): before each
                step whose noise-to-signal ratio sigma_t / alpha_t (t / (1 - t) on the linear
                path) lies in [s_tmin, s_tmax], fresh noise (from the generator, scaled by
                s_noise) raises it by the factor 1 + min(churn / steps, sqrt(2) - 1); the
                field's denoiser is the one the velocity implies (`flow_denoiser`). The step
                from t = 1 is never raised and the last step, to t = 0, is an Euler step:
                2 steps - 1 NFE. churn = 0 (default): the deterministic ODE.

        Every sampler calls `_project_step` on its state at its start time and after each
        step (the editing hook, e.g. inpainting); dopri5 cannot (ValueError while a
        projection is set).

        Returns:
            (n, *event_shape) samples in data space, or a `SampleTrajectory`. Sets `nfe_`, the
            evaluations of the field per trajectory; a guided evaluation (conditional and
            unconditional rows in one batched net call) counts as one. The field is evaluated
            in batches of EVAL_ROWS rows, all n samples stepping together.
        """
        self.check_is_fitted()
        n = self.check_sample_size(n)
        labels = self._labels(y, n)
        w = check_guidance(guidance, labels)
        method, steps = self._solver(method, steps)
        mean_flow = self.config.objective == "meanflow"
        if mean_flow and method != "euler":
            raise ValueError(
                f"a MeanFlow model samples by its own one-step rule z_r = z_t - (t - r) u (an "
                f'Euler step with the average velocity): pass method="euler" or None, not '
                f"{method!r}"
            )
        churned = (churn, s_tmin, s_tmax, s_noise) != (0.0, 0.0, math.inf, 1.0)
        if churned and method != "heun":
            raise ValueError(
                f"churn, s_tmin, s_tmax and s_noise apply to method='heun' only (EDM's "
                f"stochastic sampler), not {method!r}: use method='heun' or drop them"
            )
        limits.check_tolerances(rtol, atol)
        if grid not in grids.GRIDS:
            raise ValueError(f"grid must be one of {grids.GRIDS}, got {grid!r}")
        check_callback(callback)
        eps, g = self._start(n, seed, generator, noise)
        z, t_start = self._edit_start(init, strength, eps)
        done = n == 0 or t_start == 0  # nothing to integrate
        plan = None if done else self._time_plan(method, steps, times, grid, t_start)
        planned = steps if plan is None else len(plan) - 1
        if limits.check_flag(return_trajectory, "return_trajectory") and planned is not None:
            limits.check_trajectory(planned, n, self.dim)
        if done:
            self.nfe_ = 0
            samples = (self._edit_rows(init, "init")[0].expand(n, *self.event_shape).clone()
                       if init is not None and t_start == 0  # strength 0: init, bit for bit
                       else self._to_data_space(self._project_step(z, t_start)).reshape(
                           n, *self.event_shape))  # fmt: skip
            if not return_trajectory:
                return samples
            states = samples.cpu()[None]
            return SampleTrajectory(samples.cpu(), states, torch.full((1,), float(t_start)))
        z = self._project_step(z, t_start)
        rows = EVAL_ROWS[self.net_]

        def batched(fn: Callable[..., Tensor], z: Tensor, *times: Tensor) -> Tensor:
            return torch.cat([fn(z[i : i + rows], *(t if t.ndim == 0 else t[i : i + rows]
                                                    for t in times),
                                 None if labels is None else labels[i : i + rows], w)
                              for i in range(0, len(z), rows)])  # fmt: skip

        def project(t: Tensor, z: Tensor) -> Tensor:
            return self._project_step(z, float(t))

        if mean_flow:
            monitor = StepMonitor(callback, progress, len(plan) - 1, "MeanFlow",
                                  view=self._to_data_space)  # fmt: skip
            with monitor:
                z, reached, states = mean_flow_steps(
                    lambda v, r, t: batched(self.mean_velocity, v, r, t), z, plan,
                    project=project, on_step=monitor, keep_states=return_trajectory,
                )  # fmt: skip
            self.nfe_ = len(reached) - 1
            final, traj, kept = z, (torch.stack(states) if states else None), reached
        elif churned:
            grid_ = plan if plan is not None else torch.linspace(t_start, 0.0, steps + 1).tolist()
            final, traj, kept = self._churned_heun(
                z, grid_, lambda v, t: batched(self.velocity, v, t), (churn, s_tmin, s_tmax,
                s_noise), g, callback, progress, return_trajectory)  # fmt: skip
        else:
            fixed = method != "dopri5"
            projecting = fixed or getattr(self, "_projection", None) is not None
            watch = None if callback is None else (
                lambda k, t, v: callback(k, t, self._to_data_space(v)))  # fmt: skip
            span = {"times": plan} if plan is not None else {"t0": t_start}
            if plan is None:
                span["t1"] = 0.0
            sol = solve(lambda t, v: batched(self.velocity, v, t), z,
                        span.get("t0"), span.get("t1"), times=span.get("times"),
                        method=method, steps=None if plan is not None else steps, rtol=rtol,
                        atol=atol, return_trajectory=return_trajectory, callback=watch,
                        progress=progress, project=project if projecting else None)  # fmt: skip
            self.nfe_ = sol.nfe
            final, traj, kept = sol.x, sol.trajectory, sol.times.cpu().tolist()
        samples = self._to_data_space(final)
        limits.check_outputs(samples, "the samples")
        if not return_trajectory:
            return samples
        states = self._to_data_space(traj.reshape(-1, *self.net_shape_))
        trajectory = states.reshape(len(traj), n, *self.event_shape).cpu()
        return SampleTrajectory(samples, trajectory, torch.tensor(kept, dtype=samples.dtype))

    def _churned_heun(
        self,
        z: Tensor,
        times: list[float],
        velocity: Callable[[Tensor, Tensor], Tensor],
        churn: tuple[float, float, float, float],
        generator: torch.Generator,
        callback: StepCallback | None,
        progress: bool | None,
        keep: bool,
    ) -> tuple[Tensor, Tensor | None, list[float]]:
        """EDM's stochastic Heun along `times` (`edm_heun` in t, the denoiser of
        `flow_denoiser`): (the final state, the states at every time reached when `keep`, those
        times). Sets nfe_."""
        grid = torch.tensor(times, dtype=torch.float64)
        states = [z]

        def on_step(step: int, t: float, x: Tensor) -> bool:
            if keep:
                states.append(x)
            return monitor(t, x)

        amount, s_tmin, s_tmax, s_noise = churn
        with StepMonitor(callback, progress, len(grid) - 1, "heun sampling (churn)",
                         view=self._to_data_space) as monitor:  # fmt: skip
            x, self.nfe_ = edm_heun(
                flow_denoiser(velocity, self.schedule), z, grid, self.schedule, churn=amount,
                s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, generator=generator,
                project=lambda x_, t: self._project_step(x_, float(t)), on_step=on_step,
                variable="t",
            )  # fmt: skip
        return x, (torch.stack(states) if keep else None), grid[: monitor.steps + 1].tolist()

    def _time_plan(
        self, method: str, steps: int | None, times: Any, grid: str, t_start: float
    ) -> list[float] | None:
        """The grid a fixed-step sampler walks from t_start to 0, or None where `solve`'s own
        uniform steps give the same numbers (today's path) and for dopri5 (t_start -> 0)."""
        if times is not None:
            if method == "dopri5":
                raise ValueError("times= is a grid for the fixed-step methods; dopri5 chooses "
                                 "its own steps (pass method='heun' or another)")  # fmt: skip
            plan = grids.check_times(times).tolist()
            if abs(plan[0] - t_start) > 1e-9:
                raise ValueError(
                    f"times must start at the sampler's start time {t_start:g} (1 for plain "
                    f"sampling, strength with init), got {plan[0]:g}"
                )
            return plan
        if method == "dopri5":
            if grid != "uniform":
                raise ValueError("grid= spaces fixed steps; dopri5 chooses its own steps")
            return None
        if grid == "uniform" and self.config.objective != "meanflow":
            return None  # solve's linspace(t_start, 0, steps + 1)
        return flow_grid(self.schedule, grid, steps, t_start)
