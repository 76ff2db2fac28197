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

The net works in a normalised space z = (x - loc) / scale: points are standardised per
dimension, images in [0, 1] are mapped to [-1, 1] (loc = scale = 1/2); `log_prob` adds
-sum(log scale) so it is a density of x as given. Quantised images (a Dataset with `levels`)
are dequantised afresh in every batch, x = (k + u) / levels, so the density is that of the
dequantised data, as `genlab eval` measures it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from genlab import train
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
    SampleTrajectory,
    check_guidance,
    drop_labels,
    exact_divergence,
    guided,
    hutchinson_divergence,
    standard_normal_log_prob,
)
from genlab.nets import MLP, UNet
from genlab.schedules import PATHS, Schedule
from genlab.solvers import METHODS, solve

PathName = Literal["linear", "vp"]
CouplingName = Literal["independent", "ot"]
FlowNetName = Literal["auto", "mlp", "unet"]
SolverName = Literal["euler", "midpoint", "heun", "rk4", "dopri5"]
COUPLINGS = ("independent", "ot")
FLOW_NETS = ("auto", "mlp", "unet")
TIME_FEATURES = 64  # sinusoidal time features of the MLP
EVAL_ROWS = {"mlp": 4096, "unet": 256}  # rows per ODE solve in sample / log_prob


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
class FlowConfig(train.TrainConfig):
    path: PathName = "linear"
    coupling: CouplingName = "independent"
    sigma_min: float = 0.0
    net: FlowNetName = "auto"
    hidden: int = 128
    depth: int = 3
    base_channels: int = 32
    label_dropout: float = 0.1
    dequantize: bool = True
    exact_trace_max_dim: int = 16
    hutchinson_probes: int = 1
    sample_steps: int = 50
    sample_method: SolverName = "heun"

    def __post_init__(self):
        super().__post_init__()
        for name, minimum in (("hidden", 1), ("depth", 1), ("base_channels", 4),
                              ("exact_trace_max_dim", 0), ("hutchinson_probes", 1),
                              ("sample_steps", 1)):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
        for name, options in (("path", tuple(PATHS)), ("coupling", COUPLINGS),
                              ("net", FLOW_NETS), ("sample_method", METHODS)):  # fmt: skip
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        if not (isinstance(self.sigma_min, int | float) and 0 <= self.sigma_min < 1):
            raise ValueError(f"sigma_min must be a number in [0, 1), got {self.sigma_min!r}")
        if self.path != "linear" and self.sigma_min != 0:
            raise ValueError('sigma_min belongs to path="linear"; set it to 0 for path="vp"')
        if not (isinstance(self.label_dropout, int | float) and 0 <= self.label_dropout < 1):
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout!r}")
        if not isinstance(self.dequantize, bool):
            raise ValueError(f"dequantize must be True or False, got {self.dequantize!r}")


class FlowMatching(GenerativeModel, family="flow"):
    """A continuous normalising flow trained by flow matching; exact ODE likelihood.

    Args:
        path: "linear" (conditional OT / rectified) or "vp" (cosine) probability path.
        coupling: "independent" or "ot" (exact minibatch optimal transport per batch).
        sigma_min: width of the linear path at the data end (0: the data themselves).
        net: None or "auto" (a UNet for square images, else an MLP), "mlp" or "unet".
        hidden, depth: MLP width and number of residual blocks.
        base_channels: UNet width of the first level.
        label_dropout: probability of training on the null label (classifier-free guidance).
        dequantize: add fresh uniform noise to quantised images (a Dataset with `levels`).
        exact_trace_max_dim: `log_prob` uses the exact trace up to this many dimensions.
        hutchinson_probes: Rademacher probes of Hutchinson's estimator above that.
        sample_steps, sample_method: the default solver of `sample`.
        device: "cuda", "cpu" or None (cuda when present).
        **train_options: the fields of `genlab.train.TrainConfig` (max_steps, max_time,
            batch_size, lr, weight_decay, warmup_steps, min_lr_ratio, grad_clip, ema_decay,
            seed, precision, compile).

    Labels are used only when passed as `y=` (a Dataset's labels are ignored): `fit(x, y)`
    trains v(x, t | y), dropping labels to the null class with probability label_dropout, and
    `sample(n, y=..., guidance=w)` samples with classifier-free guidance. Without y, a
    conditional model uses the null label, i.e. the unconditional field learned by dropout.
    """

    config_class = FlowConfig

    def __init__(
        self,
        path: PathName = "linear",
        *,
        coupling: CouplingName = "independent",
        sigma_min: float = 0.0,
        net: FlowNetName | None = None,
        hidden: int = 128,
        depth: int = 3,
        base_channels: int = 32,
        label_dropout: float = 0.1,
        dequantize: bool = True,
        exact_trace_max_dim: int = 16,
        hutchinson_probes: int = 1,
        sample_steps: int = 50,
        sample_method: SolverName = "heun",
        device: str | torch.device | None = None,
        **train_options: Any,
    ):
        try:
            config = FlowConfig(
                path=path, coupling=coupling, sigma_min=sigma_min, net=net or "auto",
                hidden=hidden, depth=depth, base_channels=base_channels,
                label_dropout=label_dropout, dequantize=dequantize,
                exact_trace_max_dim=exact_trace_max_dim, hutchinson_probes=hutchinson_probes,
                sample_steps=sample_steps, sample_method=sample_method, **train_options,
            )  # fmt: skip
        except TypeError as e:
            names = sorted(FlowConfig.__dataclass_fields__)
            raise TypeError(f"{e}; the flow's options are {names}") from None
        super().__init__(config, device)
        self.nfe_: int | None = None

    @property
    def schedule(self) -> Schedule:
        """The probability path x_t = alpha(t) x0 + sigma(t) eps (`genlab.schedules`)."""
        cfg = self.config
        return PATHS[cfg.path](cfg.sigma_min) if cfg.path == "linear" else PATHS[cfg.path]()

    @property
    def dim(self) -> int:
        self.check_is_fitted()
        return int(np.prod(self.event_shape))

    @property
    def log_prob_kind(self) -> Literal["exact", "estimate"]:
        """What log_prob returns: "exact" (autograd trace) up to exact_trace_max_dim
        dimensions, else "estimate" (Hutchinson's unbiased estimator)."""
        exact = not self.is_fitted or self.dim <= self.config.exact_trace_max_dim
        return "exact" if exact else "estimate"

    @property
    def conditional(self) -> bool:
        return self.is_fitted and self.n_classes_ is not None

    # -- building and training --------------------------------------------------------------------
    def _build(self, event_shape: tuple[int, ...], fitted: dict[str, Any]) -> None:
        cfg = self.config
        self.net_name_, self.levels_ = fitted["net"], fitted.get("levels")
        self.n_classes_ = fitted.get("n_classes")
        d = int(np.prod(event_shape))
        if self.net_name_ == "mlp":
            self.net_shape_: tuple[int, ...] = (d,)
            self.net = MLP(d, d, hidden=(cfg.hidden,) * cfg.depth, time_dim=TIME_FEATURES,
                           n_classes=self.n_classes_)  # fmt: skip
        else:
            channels, side = image_geometry(event_shape)
            mults, attention = unet_levels(side)
            self.net_shape_ = (channels, side, side)
            self.net = UNet(channels, side, base_channels=cfg.base_channels, channel_mults=mults,
                            attention_resolutions=attention, n_classes=self.n_classes_)  # fmt: skip
        self.register_buffer("data_loc", torch.zeros(d))
        self.register_buffer("data_scale", torch.ones(d))

    def _fitted_meta(self) -> dict[str, Any]:
        return {**super()._fitted_meta(), "net": self.net_name_, "levels": self.levels_,
                "n_classes": self.n_classes_}  # fmt: skip

    def _resolve_net(self, event_shape: tuple[int, ...]) -> str:
        image = image_geometry(event_shape)
        if self.config.net == "unet" and image is None:
            raise ValueError(
                f'net="unet" needs square images (C, S, S) or (S, S) with S >= 4, got samples '
                f'of shape {event_shape}; use net="mlp"'
            )
        if self.config.net == "auto":
            return "unet" if image is not None else "mlp"
        return self.config.net

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
    ) -> FlowMatching:
        """Build the velocity net for the data and train it with `genlab.train.fit`.

        Args:
            x: (n, *event_shape) Tensor, array or Dataset (its `levels` and `kind` are used;
                its labels are not).
            y: (n,) integer labels for a class-conditional flow, or None.
            out, checkpoint_every, resume, progress, callback, callback_every: passed to
                `genlab.train.fit` (checkpoints and log.jsonl go to `out`).
        """
        levels, kind = (x.levels, x.kind) if isinstance(x, Dataset) else (None, None)
        x, y, event_shape = as_data(x.x if isinstance(x, Dataset) else x, y)
        x = x if isinstance(x, Tensor) else x[:]
        x = x.float() if x.dtype != torch.float32 else x
        check_finite(x)
        n_classes = check_train_labels(y)
        unit = (kind or ("image" if image_geometry(event_shape) else "points")) == "image"
        unit = unit and bool(x.min() >= 0 and x.max() <= 1)
        fitted = {"net": self._resolve_net(event_shape), "n_classes": n_classes,
                  "levels": levels if (unit and self.config.dequantize) else None}  # fmt: skip
        with torch.random.fork_rng(devices=[]):  # the net's init follows config.seed alone
            torch.manual_seed(self.config.seed)
            self._build(event_shape, fitted)
        self.event_shape = event_shape
        with torch.no_grad():
            flat = x.reshape(len(x), -1).double()
            loc, scale = (0.5, 0.5) if unit else (flat.mean(0), flat.std(0, correction=0))
            self.data_loc.copy_(torch.as_tensor(loc).expand(flat.shape[1]))
            self.data_scale.copy_(torch.as_tensor(scale).expand(flat.shape[1]).clamp(min=1e-6))
        self.train_result_ = train.fit(
            self, x, y, self.config, out=out, checkpoint_every=checkpoint_every, resume=resume,
            callback=callback, callback_every=callback_every, progress=progress,
            device=self.device_,
        )  # fmt: skip
        self.eval()
        return self

    def loss(self, batch: tuple[Tensor, ...], step: int) -> dict[str, Tensor]:
        """Flow-matching regression: mean over batch and dimensions of |v(x_t, t) - u_t|^2."""
        x0 = batch[0]
        if self.levels_ is not None:  # fresh uniform dequantisation: (k + u) / levels
            k = torch.round(x0 * (self.levels_ - 1))
            x0 = (k + torch.rand_like(x0)) / self.levels_
        z0 = self._to_model_space(x0)
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

    # -- spaces, labels and the field -------------------------------------------------------------
    def _to_model_space(self, x: Tensor) -> Tensor:
        """z = (x - loc) / scale as (B, *net_shape) in the buffers' dtype."""
        flat = x.reshape(len(x), -1).to(self.data_loc.dtype)
        return ((flat - self.data_loc) / self.data_scale).reshape(len(x), *self.net_shape_)

    def _to_data_space(self, z: Tensor) -> Tensor:
        flat = z.reshape(len(z), -1) * self.data_scale + self.data_loc
        return flat.reshape(len(z), *self.event_shape)

    def _prepare(self, x: Any) -> Tensor:
        """Validated model-space z (n, *net_shape) of data x."""
        return self._to_model_space(self.checked_rows(x))

    def _labels(self, y: Any, n: int) -> Tensor | None:
        """(n,) long labels on the device from an int, a sequence or a tensor; None stays None."""
        if y is None:
            if self.conditional and self.config.label_dropout == 0:
                raise ValueError(
                    "this flow was trained with label_dropout=0, so it has no unconditional "
                    "field: pass y (an int or (n,) labels)"
                )
            return None
        if not self.conditional:
            raise ValueError("this flow was fitted without labels, so it takes no y")
        return as_labels(y, n, self.n_classes_).to(self.device)

    def velocity(self, z: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """The learned dz/dt at schedule time t: z (B, *net_shape), t () or (B,) -> like z."""
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(len(z))
        return self.net(z, t, y)

    def _field(self, y: Tensor | None, w: float) -> Callable[[Tensor, Tensor], Tensor]:
        """f(t, z) for the solver; with guidance, cond and null rows go through one net call."""
        if y is None or w == 0:
            return lambda t, z: self.velocity(z, t, y)
        null = torch.full_like(y, self.n_classes_)

        def f(t: Tensor, z: Tensor) -> Tensor:
            cond, uncond = self.velocity(torch.cat([z, z]), t, torch.cat([y, null])).chunk(2)
            return guided(cond, uncond, w)

        return f

    def _solver(self, method: str | None, steps: int | None) -> tuple[str, int | None]:
        """(method, steps) with the config's defaults; dopri5 takes no steps."""
        method = self.config.sample_method if method is None else method
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if steps is None and method != "dopri5":
            steps = self.config.sample_steps
        return method, steps

    # -- sampling and likelihood ------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        seed: int | None = None,
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
            seed: seed of a local generator for the noise (same seed, same samples).
            steps, method: the solver (`genlab.solvers`): "euler", "midpoint", "heun", "rk4"
                take `steps` uniform steps (default: config.sample_steps); "dopri5" adapts its
                steps to rtol/atol. Default method: config.sample_method.
            y: labels of a conditional flow (an int or (n,)); None: the unconditional field.
            guidance: classifier-free guidance weight w: v = v_u + (1 + w)(v_y - v_u); 0 is
                plain conditional sampling. Needs y.
            return_trajectory: return a `SampleTrajectory` (states at every step) instead.

        Returns:
            (n, *event_shape) samples in data space, or a `SampleTrajectory`. Sets `nfe_`, the
            evaluations of the field per trajectory; a guided evaluation (conditional and
            unconditional rows in one batched net call) counts as one.
        """
        self.check_is_fitted()
        n = self.check_n(n)
        labels = self._labels(y, n)
        w = check_guidance(guidance, labels)
        method, steps = self._solver(method, steps)
        g = self.generator(seed)
        eps = torch.randn(n, *self.net_shape_, generator=g, device=self.device,
                          dtype=self.data_loc.dtype)  # fmt: skip
        rows = max(n, 1) if return_trajectory else EVAL_ROWS[self.net_name_]
        kw = {"method": method, "steps": steps, "rtol": rtol, "atol": atol,
              "return_trajectory": return_trajectory}  # fmt: skip
        sols = [solve(self._field(None if labels is None else labels[i : i + rows], w),
                      eps[i : i + rows], 1.0, 0.0, **kw) for i in range(0, n, rows)]  # fmt: skip
        self.nfe_ = max((s.nfe for s in sols), default=0)
        samples = self._to_data_space(torch.cat([s.x for s in sols])) if sols else eps
        if n == 0:
            samples = samples.reshape(0, *self.event_shape)
        if not return_trajectory:
            return samples
        if not sols:
            empty = torch.zeros(1, 0, *self.event_shape)
            return SampleTrajectory(samples.cpu(), empty, torch.ones(1))
        traj = sols[0].trajectory
        states = self._to_data_space(traj.reshape(-1, *self.net_shape_))
        trajectory = states.reshape(len(traj), n, *self.event_shape).cpu()
        return SampleTrajectory(samples, trajectory, sols[0].times.cpu())

    @torch.no_grad()
    def log_prob(
        self,
        x: Any,
        y: Any = None,
        *,
        steps: int | None = None,
        method: SolverName = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        seed: int | None = 0,
    ) -> Tensor:
        """log p(x) (or log p(x | y)) by the instantaneous change of variables, nats: (n,).

            log p(x) = log N(z(1); 0, I) + int_0^1 div v(z(t), t) dt - sum_d log scale_d

        integrating (z, delta) from the data z(0) = (x - loc) / scale to the noise end. The
        divergence is the exact Jacobian trace (autograd, one pass per dimension) when the
        dimension is at most config.exact_trace_max_dim; above it, Hutchinson's unbiased
        estimator with config.hutchinson_probes Rademacher probes per row, drawn once from a
        generator seeded by `seed` and held fixed along the path (`log_prob_kind` says which,
        and `log_prob_estimator_` names it after each call). Sets `log_prob_nfe_`.

        Args:
            x: (n, *event_shape) Tensor, array or Dataset (whose labels are ignored).
            y: labels for log p(x | y) of a conditional flow; None: the unconditional field.
            steps, method: the solver; fixed-step methods default to config.sample_steps.
            rtol, atol: dopri5's tolerances.
            seed: seed of Hutchinson's probes (None: fresh probes).
        """
        z = self._prepare(x)
        labels = self._labels(y, len(z))
        method, steps = self._solver(method, steps)
        exact = self.log_prob_kind == "exact"
        k = self.config.hutchinson_probes
        self.log_prob_estimator_ = (
            "exact trace" if exact else f"hutchinson ({k} rademacher probe{'s' * (k > 1)})"
        )
        g = self.generator(seed)
        rows, out, self.log_prob_nfe_ = EVAL_ROWS[self.net_name_], [], 0
        for i in range(0, len(z), rows):
            zb, yb = z[i : i + rows], None if labels is None else labels[i : i + rows]
            probes = None
            if not exact:
                bits = torch.randint(0, 2, (k, *zb.shape), generator=g, device=zb.device)
                probes = (2 * bits - 1).to(zb.dtype)

            def f(t: Tensor, state: tuple[Tensor, Tensor], yb=yb, probes=probes):
                v = lambda u: self.velocity(u, t, yb)  # noqa: E731
                return exact_divergence(v, state[0]) if probes is None else (
                    hutchinson_divergence(v, state[0], probes))  # fmt: skip

            start = (zb, torch.zeros(len(zb), dtype=zb.dtype, device=zb.device))
            sol = solve(f, start, 0.0, 1.0, method=method, steps=steps, rtol=rtol, atol=atol)
            self.log_prob_nfe_ = max(self.log_prob_nfe_, sol.nfe)
            z1, delta = sol.x
            out.append(standard_normal_log_prob(z1) + delta)
        return torch.cat(out) - torch.log(self.data_scale).sum()
