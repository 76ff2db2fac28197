"""What the continuous-time families (flow matching, diffusion) share: the network rule, the
normalised space the net works in, labels and classifier-free guidance, the ODE likelihood
through `genlab.solvers.log_likelihood`, and the record of a sampled trajectory.

Both families learn a time-dependent field on z = (x - loc) / scale: points are standardised
per dimension, images in [0, 1] are mapped to [-1, 1] (loc = scale = 1/2), so a density of z
becomes one of x by adding -sum(log scale) (`ContinuousModel._log_jacobian`). Quantised images
are dequantised afresh in every training batch (`dequantize`), so the density is that of the
dequantised data, as evaluation measures it. Points so far out (beyond `limits.FAR_SIGMAS`
standard deviations of z) that the field cannot be integrated there are scored in closed form
(`ContinuousModel.log_prob`).

Sampling starts from noise z(1) ~ N(0, I) in that normalised space, drawn on a CPU generator
(`genlab.sampling`), or from the caller's `noise` (n, *event_shape): the same N(0, I) draws,
before any mapping to data units (`ContinuousModel._start`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from genlab import sampling, timesteps, train
from genlab.data.dataset import check_seed, image_geometry, shape_kind
from genlab.models import limits
from genlab.models.base import NeuralModel, TrainingData, as_labels
from genlab.options import Choice, Flag, Integer, Real, option
from genlab.solvers import (  # noqa: F401  (re-exported: the continuous families' toolbox)
    LOG_2PI,
    Method,
    ODELikelihood,
    exact_divergence,
    hutchinson_divergence,
    log_likelihood,
    standard_normal_log_prob,
)

NetName = Literal["auto", "mlp", "unet"]
NETS: tuple[str, ...] = ("auto", "mlp", "unet")
SMALL_IMAGE_PIXELS = 256
"""Square images of at most this many pixels (8 x 8 digits, 16 x 16) get an MLP under
net="auto"; larger ones a UNet (`auto_net`)."""
EVAL_ROWS = {"mlp": 4096, "unet": 256}  # rows per ODE solve in sample / log_prob
MAX_PROBES = 1000  # Hutchinson probes per row (each one a vector-Jacobian product per step)


# -- the network rule ----------------------------------------------------------------------------
def auto_net(data: TrainingData) -> Literal["mlp", "unet"]:
    """The network of net="auto", one rule for flow matching and diffusion: a UNet for square
    images of more than SMALL_IMAGE_PIXELS (256) pixels, an MLP for points and small images.

    On 8 x 8 digits the UNet costs 15-30x more CPU time per step (about 9 steps/s against
    280 for the MLP on one core), so within a budget of seconds the MLP trains for hundreds
    of steps where the UNet manages tens; `benchmarks/net_choice.py` measures the choice.
    """
    image = data.square_image
    return "unet" if image is not None and image[1] ** 2 > SMALL_IMAGE_PIXELS else "mlp"


def resolve_net(net: str, data: TrainingData) -> Literal["mlp", "unet"]:
    """The network named by a config's `net` for this data ("auto": `auto_net`).

    Raises:
        ValueError: net="unet" for samples that are not square images.
    """
    if net == "unet" and image_geometry(data.event_shape) is None:
        raise ValueError(
            f'net="unet" needs square images (C, S, S) or (S, S) with S >= 4, got samples '
            f'of shape {data.event_shape}; use net="mlp"'
        )
    return auto_net(data) if net == "auto" else net  # type: ignore[return-value]


# -- labels and classifier-free guidance -----------------------------------------------------------
class SampleTrajectory(NamedTuple):
    """`sample(..., return_trajectory=True)`: samples (n, *event_shape); trajectory
    (S+1, n, *event_shape) from the noise (index 0) to the samples (index -1), data space, CPU;
    times (S+1,): the schedule time of each state, from 1 (noise) to 0 (data)."""

    samples: Tensor
    trajectory: Tensor
    times: Tensor


def drop_labels(y: Tensor, p: float, null_index: int) -> Tensor:
    """Each label replaced by the null index with probability p (global RNG: training only)."""
    if p <= 0:
        return y
    return torch.where(torch.rand(y.shape, device=y.device) < p, null_index, y)


def guided(cond: Tensor, uncond: Tensor, w: float) -> Tensor:
    """Classifier-free guidance: v = v_uncond + (1 + w)(v_cond - v_uncond); w = 0: v_cond."""
    return uncond + (1 + w) * (cond - uncond)


def guided_call(
    net: Callable[..., Tensor], x: Tensor, t: Tensor, y: Tensor | None, w: float, null: int
) -> Tensor:
    """net(x, t, y) with classifier-free guidance weight w (`guided`): the conditional and the
    null-label rows go through one batched call. x (B, ...), t (B,), y (B,) or None."""
    if y is None or w == 0:
        return net(x, t, y)
    both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null)]))
    cond, uncond = both.chunk(2)
    return guided(cond, uncond, w)


def check_guidance(guidance: Any, labels: Tensor | None) -> float:
    if isinstance(guidance, bool) or not isinstance(guidance, int | float | np.floating):
        raise TypeError(f"guidance must be a number, got {type(guidance).__name__}")
    if not math.isfinite(guidance):
        raise ValueError(f"guidance must be finite, got {guidance}")
    if guidance != 0 and labels is None:
        raise ValueError("classifier-free guidance needs labels: pass y (an int or (n,) labels)")
    return float(guidance)


# -- the shared options and model ------------------------------------------------------------------
@dataclass(frozen=True)
class ContinuousConfig(train.TrainConfig):
    """The options flow matching and diffusion share (network, labels, likelihood)."""

    net: NetName = option(
        "auto", "auto: an MLP for points and small images, a UNet for larger ones.", Choice(NETS)
    )
    base_channels: int = option(32, "UNet width of the first level (images).", Integer(4))
    label_dropout: float = option(
        0.1, "Null-label rate of conditional training (guidance).", Real(0, 1, high_open=True)
    )
    dequantize: bool = option(True, "Dequantise quantised images afresh in each batch.", Flag())
    exact_trace_max_dim: int = option(
        16, "log_prob: exact trace up to this dimension, else Hutchinson.", Integer(0)
    )
    hutchinson_probes: int = option(
        1, "Rademacher probes of Hutchinson's estimate.", Integer(1, MAX_PROBES)
    )
    time_sampling: timesteps.TimeSampling = option(
        "uniform",
        "Training times: uniform, logit_normal (SD3) or lognormal (EDM).",
        Choice(timesteps.TIME_SAMPLINGS),
    )
    time_location: float | None = option(
        None, "Location m of the time sampling (None: its default).", Real(optional=True)
    )
    time_scale: float | None = option(
        None,
        "Scale s of the time sampling (None: its default).",
        Real(0, low_open=True, optional=True),
    )


class ContinuousModel(NeuralModel):
    """The common part of flow matching and diffusion: set-up for the data (`_setup`), the
    normalised space, labels, and `log_prob` through `genlab.solvers.log_likelihood`.

    A family implements `_build_net(d)` (its network for the resolved `net_` and
    `net_shape_`) and `loss`. Fitted attributes: `net_` ("mlp"/"unet"), `kind_`
    ("points"/"image"), `levels_` (grey levels of quantised images, or None), `n_classes_`.
    """

    log_prob_options: ClassVar[frozenset[str]] = frozenset(
        {"steps", "method", "rtol", "atol", "seed"}
    )
    quick_log_prob: ClassVar[dict[str, Any]] = {"method": "rk4", "steps": 4}
    density_grid: ClassVar[int] = 50
    fitted_facts: ClassVar[tuple[str, ...]] = ("net", "kind", "levels", "n_classes")
    #: dtype of data_loc / data_scale, and of the net's space (None: the buffers' dtype)
    buffer_dtype: ClassVar[torch.dtype] = torch.float32
    space_dtype: ClassVar[torch.dtype | None] = None
    #: the config options that set the network's size (named when it cannot fit in memory)
    size_options: ClassVar[tuple[str, ...]] = ("hidden", "base_channels")
    log_prob_nfe_: int | None = None
    log_prob_estimator_: str | None = None
    #: rows of the last `log_prob` scored in closed form (farther than FAR_SIGMAS)
    log_prob_far_rows_: int = 0

    @property
    def dim(self) -> int:
        self.check_is_fitted()
        return math.prod(self.event_shape)

    @property
    def divergence(self) -> Literal["exact", "hutchinson"]:
        """The divergence estimator of `log_prob`: the exact trace up to
        config.exact_trace_max_dim dimensions, else Hutchinson's."""
        d = math.prod(self.event_shape or ())
        return "exact" if d <= self.config.exact_trace_max_dim else "hutchinson"

    @property
    def log_prob_kind(self) -> Literal["exact", "estimate"]:
        """What log_prob returns: "exact" (the autograd trace) up to exact_trace_max_dim
        dimensions, else "estimate" (Hutchinson's unbiased estimator); before fit, "exact"
        unless exact_trace_max_dim is 0."""
        return "exact" if self.divergence == "exact" else "estimate"

    @property
    def conditional(self) -> bool:
        return self.is_fitted and self.n_classes_ is not None

    # -- building -------------------------------------------------------------------------------
    def _build(self, event_shape: tuple[int, ...], fitted: dict[str, Any]) -> None:
        if fitted["net"] not in ("mlp", "unet"):
            raise ValueError(f"net must be 'mlp' or 'unet', got {fitted['net']!r}")
        self.net_ = fitted["net"]
        self.kind_ = fitted.get("kind") or shape_kind(event_shape)  # old flow folders: no kind
        self.levels_, self.n_classes_ = fitted.get("levels"), fitted.get("n_classes")
        d = math.prod(event_shape)
        if self.net_ == "unet":
            channels, side = image_geometry(event_shape)
            self.net_shape_: tuple[int, ...] = (channels, side, side)
        else:
            self.net_shape_ = (d,)
        fix = f"use a smaller {' / '.join(self.size_options)}"
        what = f"the {type(self).__name__}'s network ({self.net_})"
        self.net: nn.Module = limits.build_within_memory(lambda: self._build_net(d), what, fix)
        self.register_buffer("data_loc", torch.zeros(d, dtype=self.buffer_dtype))
        self.register_buffer("data_scale", torch.ones(d, dtype=self.buffer_dtype))

    def _build_net(self, d: int) -> nn.Module:
        raise NotImplementedError

    def _setup(self, data: TrainingData) -> tuple[Tensor, Tensor | None]:
        """The net for the data (`resolve_net`), and loc / scale of the normalised space."""
        fitted = {"net": resolve_net(self.config.net, data), "kind": data.kind,
                  "levels": data.levels, "n_classes": data.n_classes}  # fmt: skip
        self._build(data.event_shape, fitted)
        self.event_shape = data.event_shape
        x = data.lazy_rows()  # a lazy NpyArray stays lazy: the trainer streams its batches
        with torch.no_grad():
            if data.kind == "image":
                loc = scale = torch.full((data.dim,), 0.5, dtype=torch.float64)
            else:  # streamed over chunks of rows (`TrainingData.moments`)
                stats = data.moments()
                loc, scale = stats.mean, stats.std.clamp(min=1e-6)
            self.data_loc.copy_(loc)
            self.data_scale.copy_(scale)
        self.to(self.device_)
        return x, data.y

    def _train_times(self, like: Tensor) -> Tensor:
        """(B,) training times for a batch `like` (B, ...) from config.time_sampling
        (`genlab.timesteps.draw_times`, the trainer's RNG), on its device and dtype."""
        cfg = self.config
        return timesteps.draw_times(cfg.time_sampling, len(like), self.schedule,
                                    location=cfg.time_location, scale=cfg.time_scale,
                                    device=like.device, dtype=like.dtype)  # fmt: skip

    # -- editing hooks (filled in by the editing block below) ------------------------------------
    def _edit_start(self, init: Any, strength: float, eps: Tensor) -> tuple[Tensor, float]:
        """(z, t_start): the sampler's starting state in model space and its time. Without
        init: (eps, 1.0), plain sampling from noise. With init (SDEdit / img2img): init in
        model space noised to t_start = strength along the family's path,
        z = alpha(s) z_init + sigma(s) eps."""
        if init is None:
            return eps, 1.0
        raise NotImplementedError("init= is being built")

    def _project_step(self, z: Tensor, t: float) -> Tensor:
        """Called by every sampler on its model-space state z at time t (the start, and after
        each step): the identity, except while `inpaint` runs, when the known pixels are
        replaced by the data noised to time t."""
        projection = getattr(self, "_projection", None)
        return z if projection is None else projection(z, t)

    def _train_rows(self, x: Tensor) -> Tensor:
        """A training batch in model space, quantised images dequantised afresh."""
        levels = self.levels_ if self.config.dequantize else None
        return self._to_model_space(self.dequantize_batch(x, levels))

    # -- spaces and labels ----------------------------------------------------------------------
    @property
    def model_dtype(self) -> torch.dtype:
        return self.space_dtype or self.data_loc.dtype

    def _to_model_space(self, x: Tensor) -> Tensor:
        """z = (x - loc) / scale as (B, *net_shape) (computed in the buffers' dtype)."""
        flat = x.flatten(1).to(self.data_loc.dtype)
        z = (flat - self.data_loc) / self.data_scale
        return z.to(self.model_dtype).reshape(len(x), *self.net_shape_)

    def _to_data_space(self, z: Tensor) -> Tensor:
        flat = z.flatten(1).to(self.data_loc.dtype) * self.data_scale + self.data_loc
        return flat.to(self.model_dtype).reshape(len(z), *self.event_shape)

    def _log_jacobian(self) -> float:
        """log |dz / dx| = -sum log data_scale (D log 2 for images)."""
        return -float(self.data_scale.log().sum())

    def _prepare(self, x: Any, what: str) -> Tensor:
        """Validated model-space z (n, *net_shape) of data x for `what` (a bound with no
        closed form far out: rows beyond FAR_SIGMAS are refused, `_refuse_far`)."""
        x = self.checked_rows(x)
        self._refuse_far(x, what)
        return self._to_model_space(x)

    def _labels(self, y: Any, n: int) -> Tensor | None:
        """(n,) long labels on the device from an int, a sequence or a tensor; None stays None
        (the null label, the unconditional field learned by label dropout)."""
        name = type(self).__name__
        if y is None:
            if self.conditional and self.config.label_dropout == 0:
                raise ValueError(
                    f"this {name} was trained with label_dropout=0, so it has no "
                    "unconditional field: pass y (an int or (n,) labels)"
                )
            return None
        if not self.conditional:
            raise ValueError(f"this {name} was fitted without labels, so it takes no y")
        return as_labels(y, n, self.n_classes_).to(self.device)

    # -- sampling: the starting noise -------------------------------------------------------------
    def _start(
        self, n: int, seed: int | None, generator: torch.Generator | None, noise: Any
    ) -> tuple[Tensor, torch.Generator]:
        """(z, g): the starting point z(1) of a sampler, (n, *net_shape) in model space on the
        device, and the generator g of any later draws (`sampling.resolve_generator`).

        z is the caller's `noise`, (n, *event_shape) finite floats read as N(0, I) draws in the
        normalised space (no loc / scale applied), else torch.randn(n, *event_shape) drawn on g
        (the same numbers: `sample(n, seed=s)` starts from torch.randn(n, *event_shape,
        generator=torch.Generator().manual_seed(s))). Given noise leaves g unadvanced.
        """
        g = sampling.resolve_generator(seed, generator)
        if noise is None:
            z = sampling.standard_normal((n, *self.net_shape_), g, self.device, self.model_dtype)
            return z, g
        what = "noise (the starting N(0, I) draws, one per sample)"
        z = sampling.check_noise(noise, (n, *self.event_shape), what)
        return z.to(self.device, self.model_dtype).reshape(n, *self.net_shape_), g

    # -- likelihood -----------------------------------------------------------------------------
    def _likelihood_ode(
        self, method: Method, steps: int | None
    ) -> tuple[Callable[[Tensor, Tensor, Tensor | None], Tensor], float, Method, int | None]:
        """The family's ODE for `log_prob`: (field(z, t, labels) -> dz/dt, t0 the data end,
        method, steps) with the family's solver defaults; the noise end is t = 1."""
        raise NotImplementedError

    @torch.no_grad()
    def log_prob(
        self,
        x: Any,
        y: Any = None,
        *,
        steps: int | None = None,
        method: Method = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        seed: int | None = 0,
        progress: bool | None = None,
    ) -> Tensor:
        """log p(x) (or log p(x | y)) by the instantaneous change of variables, nats: (n,).

            log p(x) = log N(z(1); 0, I) + int_t0^1 div f(z(t), t) dt - sum_d log scale_d

        integrating (z, delta) along the family's ODE dz/dt = f(z, t) (`_likelihood_ode`) from
        the data z(t0) = (x - loc) / scale to the noise end, by
        `genlab.solvers.log_likelihood`. The divergence is the exact Jacobian trace (autograd,
        one pass per dimension) up to config.exact_trace_max_dim dimensions; above it,
        Hutchinson's unbiased estimate with config.hutchinson_probes Rademacher probes per
        row, held fixed along the path (`log_prob_kind` says which). dopri5 controls the error
        of a whole batch of rows, so its results depend slightly on the batching.

        Args:
            x: (n, *event_shape) Tensor, array or Dataset (whose labels are ignored).
            y: labels (an int or (n,)) for log p(x | y) of a conditional model; None: the
                unconditional field (the null label).
            steps, method, rtol, atol: the solver (`genlab.solvers.solve`; dopri5 by default).
            seed: seed of the local generator of Hutchinson's probes (same seed, same
                probes); None: fresh probes from OS entropy (never the global RNG).
            progress: a tqdm bar over the solver steps (all batches of rows; a count for
                dopri5) on stderr; None: only on a TTY, and only on rank 0.

        Rows farther than `limits.FAR_SIGMAS` (1e4) standard deviations from the training
        data (in the normalised space z) are not integrated: the network has seen nothing
        within orders of magnitude of them, its field there is an extrapolation, and the
        ODE overflows (dopri5 would report the field as stiff). They get the base density in
        closed form, log N(z; 0, I) - sum_d log scale_d, the value of a field that leaves
        such points in place: a finite, very negative number of the right order (-|z|^2/2;
        on trained 2-D toys within 0.02 % of the integrated value at 1e4 standard
        deviations, where both can be computed), not the model's exact density. The other
        rows are integrated as if the far ones were absent.
        `log_prob_far_rows_` counts them; a value beyond the range of the model's dtype
        (float32: a row more than ~1e19 standard deviations out) is a ValueError
        (`limits.log_prob_result`).

        Sets `log_prob_nfe_` (the solver's NFE, the most of any batch of rows) and
        `log_prob_estimator_` (its name, "exact trace" or "hutchinson (k rademacher ...)").
        """
        field, t0, method, steps = self._likelihood_ode(method, steps)
        if steps is not None:
            limits.check_steps(steps)
        limits.check_tolerances(rtol, atol)
        seed = None if seed is None else check_seed(seed)
        x = self.checked_rows(x)
        labels = self._labels(y, len(x))
        u, far = self._normalised(x)
        near, jacobian = ~far, self._log_jacobian()
        out = torch.empty(len(x), dtype=torch.float64, device=x.device)
        self.log_prob_far_rows_ = int(far.sum())
        if self.log_prob_far_rows_:  # first: a value out of range fails before any solve
            far_rows = standard_normal_log_prob(u[far]) + jacobian
            out[far] = limits.log_prob_result(far_rows, self.model_dtype).double()
        options = {"divergence": self.divergence, "probes": self.config.hutchinson_probes,
                   "seed": seed, "rows": EVAL_ROWS[self.net_], "method": method,
                   "steps": steps, "rtol": rtol, "atol": atol,
                   "progress": progress}  # fmt: skip
        z = self._to_model_space(x[near])
        context = None if labels is None else labels[near]
        log_p, nfe, estimator = log_likelihood(lambda t, v, c=None: field(v, t, c), z, t0, 1.0,
                                               context=context, **options)  # fmt: skip
        self.log_prob_nfe_, self.log_prob_estimator_ = nfe, estimator
        out[near] = log_p.double() + jacobian
        return limits.log_prob_result(out, self.model_dtype)

    def _normalised(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(u, far): x in the normalised space in float64, (n, D) (no overflow for any
        float32 x), and which rows lie farther than FAR_SIGMAS in some coordinate."""
        u = (x.flatten(1).double() - self.data_loc.double()) / self.data_scale.double()
        far = u.abs().amax(1) > limits.FAR_SIGMAS if u.shape[1] else u.new_zeros(len(u)).bool()
        return u, far

    def _refuse_far(self, x: Tensor, what: str) -> None:
        """Raise ValueError when a row of x lies beyond FAR_SIGMAS (for bounds with no
        closed form there)."""
        row = limits.first_row(self._normalised(x)[1])
        if row is not None:
            raise ValueError(
                f"row {row} of x lies more than {limits.FAR_SIGMAS:g} standard deviations from "
                f"the training data, beyond what the network can be evaluated at; {what} "
                "cannot score it (log_prob scores such rows in closed form): remove such rows"
            )
