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

The net works in the normalised space of `genlab.models.continuous` (points standardised,
images in [0, 1] mapped to [-1, 1]); `log_prob` adds the log-Jacobian, so it is a density of x
as given. Quantised images (a Dataset with `levels`) are dequantised afresh in every batch,
x = (k + u) / levels, so the density is that of the dequantised data, as evaluation measures it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from genlab.models import limits
from genlab.models.base import TrajectoryPicture
from genlab.models.continuous import (
    EVAL_ROWS,
    ContinuousConfig,
    ContinuousModel,
    SampleTrajectory,
    check_guidance,
    drop_labels,
    guided_call,
)
from genlab.nets import MLP, UNet
from genlab.options import Choice, Integer, Real, option
from genlab.schedules import PATHS, Schedule
from genlab.solvers import METHODS, StepCallback, check_callback, solve

PathName = Literal["linear", "vp"]
CouplingName = Literal["independent", "ot"]
SolverName = Literal["euler", "midpoint", "heun", "rk4", "dopri5"]
COUPLINGS = ("independent", "ot")
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
    hidden: int = option(128, "MLP width.", Integer(1))
    depth: int = option(3, "MLP residual blocks.", Integer(1, MAX_DEPTH))
    sample_steps: int = option(
        50, "Default solver steps of sample, eval and plot.", Integer(1, limits.MAX_STEPS)
    )
    sample_method: SolverName = option(
        "heun", "Default solver of sample, eval and plot.", Choice(METHODS)
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
        hidden, depth: MLP width and number of residual blocks.
        base_channels: UNet width of the first level.
        label_dropout: probability of training on the null label (classifier-free guidance).
        dequantize: add fresh uniform noise to quantised images (a Dataset with `levels`).
        exact_trace_max_dim: `log_prob` uses the exact trace up to this many dimensions.
        hutchinson_probes: Rademacher probes of Hutchinson's estimator above that.
        sample_steps, sample_method: the default solver of `sample`.
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
        {"steps", "method", "y", "guidance", "return_trajectory", "rtol", "atol"}
    )
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
        return {**super().fit_summary(), "path": cfg.path, "coupling": cfg.coupling,
                "net": self.net_, "log_prob": estimator,
                "conditional": self.conditional}  # fmt: skip

    # -- building and training --------------------------------------------------------------------
    def _build_net(self, d: int) -> nn.Module:
        cfg = self.config
        if self.net_ == "mlp":
            return MLP(d, d, hidden=(cfg.hidden,) * cfg.depth, time_dim=TIME_FEATURES,
                       n_classes=self.n_classes_)  # fmt: skip
        channels, side = self.net_shape_[:2]
        mults, attention = unet_levels(side)
        return UNet(channels, side, base_channels=cfg.base_channels, channel_mults=mults,
                    attention_resolutions=attention, n_classes=self.n_classes_)  # fmt: skip

    def loss(self, batch: tuple[Tensor, ...], step: int) -> dict[str, Tensor]:
        """Flow-matching regression: mean over batch and dimensions of |v(x_t, t) - u_t|^2."""
        z0 = self._train_rows(batch[0])
        y = batch[1] if len(batch) > 1 else None
        eps = torch.randn_like(z0)
        if self.config.coupling == "ot":
            eps = eps[ot_pairing(z0, eps, y)]
        t = torch.rand(len(z0), device=z0.device, dtype=z0.dtype)
        x_t = self.schedule.marginal(z0, eps, t)
        target = self.schedule.velocity(z0, eps, t)
        if y is not None:
            y = drop_labels(y, self.config.label_dropout, self.n_classes_)
        loss = (self.net(x_t, t, y) - target).square().mean()
        return {"loss": loss}

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
        v = guided_call(self.net, z, t, y, guidance, self.n_classes_)
        limits.check_outputs(v, "the velocity field's values")
        return v

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
    ) -> Tensor | SampleTrajectory:
        """n draws: integrate dx/dt = v(x, t) from t = 1 (x ~ N(0, I)) to t = 0.

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
                take `steps` uniform steps (default: config.sample_steps); "dopri5" adapts its
                steps to rtol/atol, controlling the error of all n samples together. Default
                method: config.sample_method.
            y: labels of a conditional flow (an int or (n,)); None: the unconditional field.
            guidance: classifier-free guidance weight w: v = v_u + (1 + w)(v_y - v_u); 0 is
                plain conditional sampling. Needs y.
            return_trajectory: return a `SampleTrajectory` (states at every step) instead.

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
        limits.check_tolerances(rtol, atol)
        if limits.check_flag(return_trajectory, "return_trajectory") and steps is not None:
            limits.check_trajectory(steps, n, self.dim)
        check_callback(callback)
        eps, _ = self._start(n, seed, generator, noise)
        if n == 0:
            self.nfe_ = 0
            samples = eps.reshape(0, *self.event_shape)
            if not return_trajectory:
                return samples
            empty = torch.zeros(1, 0, *self.event_shape)
            return SampleTrajectory(samples.cpu(), empty, torch.ones(1))
        rows = EVAL_ROWS[self.net_]

        def field(t: Tensor, z: Tensor) -> Tensor:
            return torch.cat([self.velocity(z[i : i + rows], t, None if labels is None
                                            else labels[i : i + rows], w)
                              for i in range(0, len(z), rows)])  # fmt: skip

        watch = None if callback is None else lambda k, t, z: callback(k, t, self._to_data_space(z))
        sol = solve(field, eps, 1.0, 0.0, method=method, steps=steps, rtol=rtol, atol=atol,
                    return_trajectory=return_trajectory, callback=watch,
                    progress=progress)  # fmt: skip
        self.nfe_ = sol.nfe
        samples = self._to_data_space(sol.x)
        limits.check_outputs(samples, "the samples")
        if not return_trajectory:
            return samples
        traj = sol.trajectory
        states = self._to_data_space(traj.reshape(-1, *self.net_shape_))
        trajectory = states.reshape(len(traj), n, *self.event_shape).cpu()
        return SampleTrajectory(samples, trajectory, sol.times.cpu())
