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

Editing (the samplers' hooks `_edit_start` and `_project_step`, used by both families):
`invert(x)` maps data to that noise by the deterministic ODE (DDIM inversion), so
`sample(n, noise=invert(x), **inversion_sampler())` reconstructs x up to the solver's error;
`sample(n, init=x, strength=s)` starts the sampler at t = s from x noised along the path
(SDEdit, diffusers' img2img); `inpaint(x, mask)` generates the entries where mask = 1 and
keeps the others exactly (diffusers' convention: white = repaint).
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
from genlab.data.dataset import Dataset, check_seed, image_geometry, shape_kind
from genlab.models import limits
from genlab.models.base import NeuralModel, TrainingData, as_labels
from genlab.models.inputs import as_data
from genlab.nets.mlp import MAX_INPUT_FREQUENCIES
from genlab.options import Choice, Flag, Integer, Real, option
from genlab.solvers import (  # noqa: F401  (re-exported: the continuous families' toolbox)
    LOG_2PI,
    Method,
    ODELikelihood,
    exact_divergence,
    hutchinson_divergence,
    log_likelihood,
    solve,
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
    input_frequencies: int = option(
        0,
        "MLP: octaves L of sin/cos(2^k pi z) features of each input coordinate (0: none).",
        Integer(0, MAX_INPUT_FREQUENCIES),
    )
    cond_width: int | None = option(
        None,
        "MLP: width of the time (and label) embedding that drives FiLM (None: the hidden width).",
        Integer(1, optional=True),
    )
    dropout: float = option(
        0.0,
        "Dropout inside the net's residual blocks (regularises a small data set).",
        Real(0, 1, high_open=True),
    )
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
    #: `invert`, `inpaint` and `sample(init=, strength=)` exist (`genlab edit`, `genlab plot`)
    editable: ClassVar[bool] = True
    #: compare keeps the last EMA weights, not the lowest validation loss: the loss regresses
    #: a noisy target (the conditional velocity / noise), whose variance swamps the gains of
    #: late steps, so its minimum falls on a random checkpoint. On the 8 toys at 120 s the
    #: best-validation weights were worse than the last in 9 of the 10 runs where they
    #: differed (swissroll flow: step 1,750 of 4,237, MMD² 8.9e-4 against 2.8e-4; BENCHMARKS.md
    #: "Best validation weights against the last"). Reflow's teacher draws its pairs with
    #: its last weights likewise.
    selects_by_validation: ClassVar[bool] = False

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
        if fitted["net"] == "unet" and self.config.input_frequencies:
            raise ValueError(
                f"input_frequencies={self.config.input_frequencies} feeds an MLP, and this net "
                "is a UNet (net='auto' picks one for images above 256 pixels): set "
                "input_frequencies=0, or net='mlp'"
            )
        if fitted["net"] == "unet" and self.config.cond_width is not None:
            raise ValueError(
                f"cond_width={self.config.cond_width} sizes an MLP's conditioning, and this net "
                "is a UNet (net='auto' picks one for images above 256 pixels): drop cond_width, "
                "or set net='mlp'"
            )
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

    # -- editing hooks (called by every sampler; the editing API is below) ----------------------
    def _edit_start(self, init: Any, strength: float, eps: Tensor) -> tuple[Tensor, float]:
        """(z, t_start): the sampler's starting state in model space (n, *net_shape) and its
        schedule time, for `sample(..., init=, strength=)` (SDEdit, Meng et al. 2022; diffusers'
        img2img):

            init is None:   (eps, 1.0)                               plain sampling
            strength = s:   (alpha(s) z_init + sigma(s) eps, s)      z_init = (init - loc) / scale
            strength = 0:   (z_init, 0.0)   nothing to do: the family returns init itself
            strength = 1:   (eps, 1.0)      plain sampling from the same noise (init ignored)

        At s = 1 the path's alpha(1) (0 for flows, ~7e-3 for diffusion's linear schedule) is
        taken as 0, as plain sampling does, so strength=1 and a seed give exactly the samples
        of `sample(n, seed=...)`. eps: the start noise (n, *net_shape) of `_start`.
        init: (n, *event_shape) or (1, *event_shape) rows (a Tensor, array or Dataset; one
        row is used for all n samples), finite, images in [0, 1].

        Raises:
            ValueError: strength not a number in [0, 1], strength != 1 without init, or init
                of the wrong shape, number of rows or range (TypeError: not numbers).
        """
        s = check_strength(strength)
        if init is None:
            if s != 1:
                raise ValueError(
                    f"strength={s:g} edits given rows: pass them as init=x (SDEdit), or leave "
                    "strength at 1 for plain sampling"
                )
            return eps, 1.0
        rows = self._edit_rows(init, "init")[0]
        n = len(eps)
        if len(rows) not in (1, n):
            raise ValueError(
                f"init has {len(rows)} rows for n={n} samples: pass n=len(init), or one init "
                "row for all n samples"
            )
        z_init = self._to_model_space(rows).expand(n, *self.net_shape_)
        if s == 0:
            return z_init.clone(), 0.0
        if s == 1:
            return eps, 1.0
        alpha, sigma = self._alpha_sigma(s)
        return alpha * z_init + sigma * eps, s

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

    # -- editing: inversion, SDEdit, inpainting --------------------------------------------------
    def _alpha_sigma(self, t: float) -> tuple[float, float]:
        """(alpha(t), sigma(t)) of the family's path as floats."""
        return float(self.schedule.alpha(float(t))), float(self.schedule.sigma(float(t)))

    def _edit_rows(self, x: Any, what: str) -> tuple[Tensor, Tensor]:
        """(rows, given): `checked_rows(x)` (float32 (n, *event_shape) on the device) and the
        caller's own values as a tensor on the device in their own dtype (so known pixels can
        be returned bit for bit). Images must lie in [0, 1].

        Raises:
            ValueError / TypeError: naming `what`, the shape expected and the fix.
        """
        self.check_is_fitted()
        try:
            rows = self.checked_rows(x)
        except (ValueError, TypeError) as e:
            shape = ", ".join(map(str, self.event_shape))
            raise type(e)(f"{what} must be rows of shape (n, {shape}) like the model's "
                          f"samples: {e}") from None  # fmt: skip
        if self.kind_ == "image" and bool(((rows < 0) | (rows > 1)).any()):
            raise ValueError(
                f"{what} holds values outside [0, 1], but images are in [0, 1]: divide 8-bit "
                "images by 255"
            )
        given, _, _ = as_data(x.x if isinstance(x, Dataset) else x)
        given = (given if isinstance(given, Tensor) else given[:]).to(self.device)
        return rows, given

    def _invert_solver(self, method: str | None, steps: int | None):
        """(field, t0, method, steps) of `invert`: the family's `_likelihood_ode`, with heun
        and the family's sample_steps (else EDIT_STEPS) by default."""
        field, t0, method, steps = self._likelihood_ode("heun" if method is None else method,
                                                        steps)  # fmt: skip
        if steps is None and method != "dopri5":
            steps = getattr(self.config, "sample_steps", EDIT_STEPS)
        return field, t0, method, None if steps is None else limits.check_steps(steps)

    def inversion_sampler(self, method: str | None = None, steps: int | None = None) -> dict:
        """The `sample` options that integrate `invert`'s ODE backwards, from the noise to the
        data, with the same solver: flow {"method": m, "steps": k}; diffusion {"method": "ode",
        "solver": m, "steps": k} (no steps for dopri5). So

            sample(n, noise=model.invert(x, steps=k), **model.inversion_sampler(steps=k))

        reconstructs x up to the solver's error."""
        _, _, method, steps = self._invert_solver(method, steps)
        ode = "solver" in self.sample_options  # diffusion: method="ode" with a solver
        options: dict[str, Any] = {"method": "ode", "solver": method} if ode else {"method": method}
        return options if steps is None else {**options, "steps": steps}

    @torch.no_grad()
    def invert(
        self,
        x: Any,
        y: Any = None,
        *,
        steps: int | None = None,
        method: Method | None = None,
        guidance: float = 0.0,
        progress: bool | None = None,
    ) -> Tensor:
        """Data -> noise by the deterministic ODE: (n, *event_shape) noise in the normalised
        space, the space of `sample(noise=...)` (DDIM inversion, Song et al. 2021a sec. 4.3,
        for any path).

        Integrates the family's ODE dz/dt = f(z, t) (`_likelihood_ode`: the flow's velocity,
        diffusion's probability-flow field) from the data z(t0) = (x - loc) / scale at its data
        end t0 (flow 0, diffusion 1 / T) to t = 1, the state only (no divergence). The ODE's
        flow map is a bijection, so `sample(n, noise=model.invert(x, steps=k),
        **model.inversion_sampler(steps=k))` integrates it back and reconstructs x up to the
        solver's error, which falls with the steps (heun: as 1 / steps^2). For a flow the
        noise is exactly the flow map's image of x up to that error; for diffusion, too, but
        its ODE starts from x at t0 = 1 / T (data blurred by sigma(1 / T)).

        Args:
            x: (n, *event_shape) rows (Tensor, array or Dataset), finite; images in [0, 1].
            y: labels (an int or (n,)) of a conditional model; None: the null label.
            steps, method: the solver (`genlab.solvers`): default heun with the family's
                config.sample_steps (diffusion: EDIT_STEPS = 50); dopri5 takes no steps.
            guidance: classifier-free guidance weight of the field (needs y).
            progress: a tqdm bar over the solver steps on stderr; None: only on a TTY.

        Sets `nfe_`, the field evaluations per row.
        """
        x = self._edit_rows(x, "x")[0]
        labels = self._labels(y, len(x))
        w = check_guidance(guidance, labels)
        field, t0, method, steps = self._invert_solver(method, steps)
        z = self._to_model_space(x)
        rows = EVAL_ROWS[self.net_]

        def f(t: Tensor, v: Tensor) -> Tensor:
            return torch.cat([field(v[i : i + rows], t, None if labels is None
                                    else labels[i : i + rows], w)
                              for i in range(0, len(v), rows)])  # fmt: skip

        sol = solve(f, z, t0, 1.0, method=method, steps=steps, progress=progress)
        self.nfe_ = sol.nfe
        noise = sol.x.reshape(len(x), *self.event_shape)
        limits.check_outputs(noise, "the inverted noise")
        return noise

    @torch.no_grad()
    def inpaint(
        self,
        x: Any,
        mask: Any,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        y: Any = None,
        guidance: float = 0.0,
        steps: int | None = None,
        method: str | None = None,
        strength: float = 1.0,
        resample: int = 0,
        progress: bool | None = None,
        **sample_options: Any,
    ) -> Tensor:
        """Generate the masked entries of x and keep the others: (n, *event_shape).

        Mask convention (diffusers': white = repaint): mask 1 / True = generate, 0 / False =
        keep. The kept entries of the result are those of x bit for bit (in the promoted dtype
        of x and the samples); for 2-D points, masking one coordinate samples it given the
        other (conditional sampling).

        The sampler runs as `sample(n, noise=eps, ...)` from start noise eps (n, *event_shape)
        (drawn from seed / generator, or the caller's `noise=`), while a projection (read by
        `_project_step`, which every sampler applies at its start and after each step)
        replaces the known entries of its state z_t by the data noised to the time reached
        along the same noise:

            z_t[keep] = alpha(t) z_known + sigma(t) eps        (z_known = (x - loc) / scale)

        so the known entries follow the path from eps to the data that the sampler would
        follow, and the generated ones see them through the field at every step (replacement
        inpainting: Song et al. 2021b app. I.2; diffusers' inpaint pipelines blend the same
        way, with the same noise). At the end the known entries are copied from x exactly.
        Replacement only approximates conditional sampling: where the generated entries
        depend strongly on the known ones it lands between the marginal and the conditional
        (y given x of a Gaussian with correlation 0.9: an eighth of the way, with the exact
        field); `resample` rounds move it towards the conditional (tests/test_editing.py).
        strength < 1 also starts from x noised to t = strength (`sample(init=x,
        strength=...)`, diffusers' inpaint strength). Needs a fixed-step method (not dopri5).

        Args:
            x: (n, *event_shape) rows (Tensor, array or Dataset), finite; images in [0, 1].
            mask: (n, *event_shape), (1, *event_shape) or (*event_shape), bool or 0/1
                numbers; any event dimension may be 1 and is broadcast (an image mask
                (1, 1, H, W) covers every channel).
            seed, generator: the start noise and any later draws (`sample`).
            y, guidance, steps, method, progress: as in the family's `sample`.
            strength: in (0, 1]; 1: start from pure noise.
            resample: RePaint's resampling rounds after every step (`_resampler`; 2 NFE
                each, included in `nfe_`): 0 (default) is plain replacement; a few rounds
                make the generated entries agree better with the known ones (conditional
                samples of points closer to the true conditional), at that cost.
            sample_options: the family's other `sample` options (e.g. `noise`, `grid`, `eta`,
                `solver`, `times`, `callback`); not init or return_trajectory.

        Raises:
            ValueError: a mask of the wrong shape or values, dopri5, bad strength, x of the
                wrong shape or range.
        """
        rows, given = self._edit_rows(x, "x")
        n = len(rows)
        keep = ~check_mask(mask, n, tuple(self.event_shape)).to(self.device)
        s = check_strength(strength)
        for name in ("init", "return_trajectory"):
            if name in sample_options:
                raise ValueError(f"inpaint takes no {name}= (x is the image it edits, and it "
                                 "returns the samples only)")  # fmt: skip
        if method == "dopri5" or sample_options.get("solver") == "dopri5":
            raise ValueError(
                "inpaint needs a fixed-step method: dopri5's error control cannot follow the "
                "projected known pixels; pass method='heun' (flow) or a fixed-step sampler"
            )
        eps, g = self._start(n, seed, generator, sample_options.pop("noise", None))
        z_known = self._to_model_space(rows)
        keep_z = keep.reshape(n, *self.net_shape_)
        harmonise = self._resampler(check_resample(resample), y, guidance, n, g)
        reached: list[float] = []

        def replace(z: Tensor, t: float) -> Tensor:
            alpha, sigma = self._alpha_sigma(t)
            return torch.where(keep_z, alpha * z_known + sigma * eps, z)

        def projection(z: Tensor, t: float) -> Tensor:
            z = replace(z, t)
            if reached and t < reached[-1]:
                z = harmonise(z, t, reached[-1], replace)
            reached.append(t)
            return z

        options = {"steps": steps, "method": method}
        options = {**{k: v for k, v in options.items() if v is not None}, **sample_options}
        if s < 1:
            options.update(init=rows, strength=s)
        self._projection, self._resample_nfe = projection, 0
        try:
            samples = self.sample(n, generator=g, noise=eps.reshape(n, *self.event_shape), y=y,
                                  guidance=guidance, progress=progress, **options)  # fmt: skip
        finally:
            self._projection = None
        self.nfe_ = (self.nfe_ or 0) + self._resample_nfe
        dtype = torch.promote_types(given.dtype, samples.dtype)
        if not given.is_floating_point():
            dtype = samples.dtype
        return torch.where(keep, given.to(dtype), samples.to(dtype))

    def _resampler(
        self, rounds: int, y: Any, guidance: float, n: int, g: torch.Generator
    ) -> Callable[[Tensor, float, float, Callable[[Tensor, float], Tensor]], Tensor]:
        """RePaint's resampling (Lugmayr et al. 2022) as `inpaint`'s projection runs it after
        a sampler step t_hi -> t_lo, `rounds` times: diffuse the state back to t_hi with the
        path's forward transition (fresh noise from g),

            z_hi = r z_lo + sqrt(sigma_hi^2 - r^2 sigma_lo^2) n,   r = alpha_hi / alpha_lo,

        put the known entries at t_hi, take one heun step of the family's ODE field
        (`_likelihood_ode`) back to t_lo (2 NFE, counted in `_resample_nfe`) and put them at
        t_lo again. The generated entries so see the known ones several times per step, which
        the plain replacement (rounds = 0, the identity here) does only once. Steps that end
        at or below the ODE's data end t0 are not resampled."""
        if rounds == 0:
            return lambda z, t_lo, t_hi, replace: z
        labels = self._labels(y, n)
        w = check_guidance(guidance, labels)
        field, t0, _, _ = self._likelihood_ode("heun", 1)
        rows = EVAL_ROWS[self.net_]

        def f(t: Tensor, v: Tensor) -> Tensor:
            return torch.cat([field(v[i : i + rows], t, None if labels is None
                                    else labels[i : i + rows], w)
                              for i in range(0, len(v), rows)])  # fmt: skip

        def harmonise(z: Tensor, t_lo: float, t_hi: float, replace) -> Tensor:
            if t_lo <= t0:
                return z
            (a_lo, s_lo), (a_hi, s_hi) = self._alpha_sigma(t_lo), self._alpha_sigma(t_hi)
            r = a_hi / a_lo
            spread = math.sqrt(max(s_hi**2 - (r * s_lo) ** 2, 0.0))
            for _ in range(rounds):
                noise = sampling.standard_normal(z.shape, g, z.device, z.dtype)
                z = replace(r * z + spread * noise, t_hi)
                z = replace(solve(f, z, t_hi, t_lo, method="heun", steps=1).x, t_lo)
                self._resample_nfe += 2
            return z

        return harmonise


# -- editing: checks -----------------------------------------------------------------------------
EDIT_STEPS = 50
"""Fixed solver steps of `invert` for a family without config.sample_steps (diffusion)."""
MAX_RESAMPLE = 1000
"""The most resampling rounds per step of `inpaint` (more is an error of units)."""


def check_resample(value: Any) -> int:
    """inpaint's resample= as an int in [0, MAX_RESAMPLE].

    Raises:
        ValueError: not such an integer.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"resample must be an integer >= 0, got {value!r}")
    if not 0 <= value <= MAX_RESAMPLE:
        raise ValueError(f"resample must be in [0, {MAX_RESAMPLE}], got {value!r}")
    return int(value)


def check_strength(strength: Any) -> float:
    """strength as a float in [0, 1] (SDEdit's noise level: the start time of the sampler).

    Raises:
        ValueError: not a real number in [0, 1].
    """
    if isinstance(strength, bool) or not isinstance(strength, int | float | np.integer |
                                                    np.floating):  # fmt: skip
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
    if not 0 <= strength <= 1:  # NaN fails too
        raise ValueError(
            f"strength must be in [0, 1] (0: return init, 1: plain sampling), got {strength!r}"
        )
    return float(strength)


def check_mask(mask: Any, n: int, event_shape: tuple[int, ...]) -> Tensor:
    """An inpainting mask as bool (n, *event_shape), True = generate, False = keep.

    mask: (n, *event_shape), (1, *event_shape) or (*event_shape) (one mask for all rows), any
    event dimension of size 1 broadcast; bool, or numbers that are all 0 or 1.

    Raises:
        TypeError: not a tensor or array of numbers.
        ValueError: the wrong shape, or values other than 0 and 1.
    """
    if isinstance(mask, np.ndarray | list | tuple):
        arr = np.asarray(mask)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise TypeError(f"mask must hold booleans or 0/1 numbers, got dtype {arr.dtype}")
        mask = torch.from_numpy(np.ascontiguousarray(arr))
    elif not isinstance(mask, Tensor):
        raise TypeError(
            f"mask must be a bool or 0/1 Tensor or array (1 = generate, 0 = keep), got "
            f"{type(mask).__name__}"
        )
    if mask.is_complex():
        raise TypeError(f"mask must hold booleans or 0/1 numbers, got dtype {mask.dtype}")
    expected = f"(n={n}, {', '.join(map(str, event_shape))}) (or 1 for n, or any event size 1)"
    if mask.ndim == len(event_shape):
        mask = mask[None]
    if (
        mask.ndim != len(event_shape) + 1
        or mask.shape[0] not in (1, n)
        or any(m not in (1, e) for m, e in zip(mask.shape[1:], event_shape, strict=True))
    ):
        raise ValueError(f"mask must have shape {expected}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                "mask must hold 0 or 1 only (1 = generate, 0 = keep), got other values; "
                "threshold it, e.g. mask > 0.5"
            )
        mask = mask != 0
    return mask.expand(n, *event_shape)
