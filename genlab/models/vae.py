"""Variational autoencoders (Kingma & Welling, 2014), optionally conditioned on a class label.

    p(z) = N(0, I)        q(z | x) = N(mu(x), diag sigma^2(x))        p(x | z) = decoder(z)

    ELBO(x)   = E_q[log p(x | z)] - KL(q(z | x) || p(z))                      <= log p(x)
    IWAE_k(x) = E[ log (1/k) sum_i p(x, z_i) / q(z_i | x) ],  z_i ~ q(z | x)   <= log p(x)

(nats per sample). The ELBO is trained with one reparameterised draw z = mu + sigma * eps
and the KL term in closed form; `log_prob` is the importance-weighted estimate of Burda,
Grosse & Salakhutdinov (2016), which equals the ELBO at k = 1 and tightens towards log p(x)
as k grows.

The decoder's likelihood p(x | z) follows the data ("auto"):

- "bernoulli": binary data, p(x_d = 1 | z) = sigmoid(logit_d); a mass over {0, 1}^D.
- "discretized": quantised images x = k / (levels - 1); a logistic with per-pixel location
  and log-scale, integrated over each level's bin, the two edge bins taking the tails, so the
  `levels` probabilities of a pixel sum to exactly one (PixelCNN++); a mass.
- "gaussian": continuous vectors, N(mean(z), diag s^2) with a learned per-dimension scale s,
  on data standardised by the training mean and standard deviation (the log-Jacobian is
  added back, so `log_prob` is a density of the raw x).

`sample(n)` draws from the model, x ~ p(x | z) with z ~ N(0, I), like every family's
`sample`; `sample(n, mean=True)` returns the decoder means E[x | z] instead, the customary
(smooth) grid of images, which `genlab plot` shows.

Nothing non-finite is passed on: the bounds sum their weights in float64 log space, so a
point far from the data gets a finite, very negative value (rows where the encoder itself
overflows take the prior as proposal; a value beyond float32 is a ValueError); decoder outputs
that are not finite raise `DivergedError` in `sample` and `decode` before a sigmoid or clamp
could make them look finite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from genlab import metrics, sampling, train
from genlab.data.dataset import Dataset, image_geometry
from genlab.models import limits
from genlab.models.base import NeuralModel, TrainingData, as_labels, check_finite
from genlab.models.vae_maths import (  # re-exported: the maths' home is vae_maths
    LIKELIHOOD_FNS,
    LOG_SCALE_MIN,
    Likelihood,
    LikelihoodName,
    _on_grid,
    bernoulli_log_prob,
    discretized_logistic_log_prob,
    gaussian_kl,
    gaussian_log_prob,
    infer_levels,
    iwae_bound,
    kl_weight,
    log1mexp,
    normal_log_prob,
    resolve_likelihood,
)
from genlab.nets import MLP, ConvDecoder, ConvEncoder
from genlab.options import Choice, Integer, Real, option
from genlab.solvers import local_generator

__all__ = [
    "LIKELIHOOD_FNS",
    "LOG_SCALE_MIN",
    "VAE",
    "Likelihood",
    "LikelihoodName",
    "Posterior",
    "VAEConfig",
    "bernoulli_log_prob",
    "default_latent_dim",
    "discretized_logistic_log_prob",
    "gaussian_kl",
    "gaussian_log_prob",
    "infer_levels",
    "iwae_bound",
    "kl_weight",
    "log1mexp",
    "normal_log_prob",
    "resolve_likelihood",
]

NetName = Literal["auto", "mlp", "conv"]
LIKELIHOODS = ("auto", "bernoulli", "gaussian", "discretized")
NETS = ("auto", "mlp", "conv")
EVAL_BATCH = 4096  # decoder evaluations (rows x importance samples) per forward pass
LOG_VAR_RANGE = (-20.0, 10.0)  # clamp of the encoder's log-variance (overflow guard)
MAX_LATENT = 16  # latent_dim=None: min(MAX_LATENT, D)
SCORE_ROWS = 2000  # training rows of the ELBO that `genlab fit` prints


class Posterior(NamedTuple):
    """q(z | x) = N(mu, diag exp(log_var)); each (n, latent_dim)."""

    mu: Tensor
    log_var: Tensor


# -- config and model -----------------------------------------------------------------------------
def default_latent_dim(dim: int) -> int:
    """latent_dim when the config leaves it None ("auto"): min(16, D) for samples of D numbers
    (a 2-D toy gets a 2-D latent; images, 16)."""
    return min(MAX_LATENT, dim)


@dataclass(frozen=True)
class VAEConfig(train.TrainConfig):
    latent_dim: int | None = option(
        None, "Size of the latent z (None: min(16, D)).", Integer(1, optional=True)
    )
    likelihood: LikelihoodName = option(
        "auto", "p(x|z): auto (bernoulli if binary, discretized if quantised, else gaussian).",
        Choice(LIKELIHOODS),
    )  # fmt: skip
    beta: float = option(1.0, "Weight of the KL term in the training loss (1: the ELBO).", Real(0))
    kl_warmup_steps: int = option(
        0, "Steps over which the KL weight rises from 0 to beta.", Integer(0)
    )
    hidden: int = option(256, "MLP width (conv nets: channels hidden/8, hidden/4).", Integer(8))
    net: NetName = option("auto", "auto: conv for square images, else mlp.", Choice(NETS))
    iwae_samples: int = option(
        100, "Importance samples k of log_prob's IWAE estimate.", Integer(1, limits.MAX_STEPS)
    )


class VAE(NeuralModel, family="vae"):
    """A VAE with a Gaussian encoder and a likelihood chosen by the data; `log_prob` is an estimate.

    Args:
        latent_dim: size of z (None: `default_latent_dim`, min(16, D); the value used is
            `latent_dim_`).
        likelihood: "auto" (by the data, see the module docstring), "bernoulli",
            "discretized" or "gaussian".
        beta: weight of the KL term in the training loss (1: the ELBO; `elbo` and
            `log_prob` always use 1).
        kl_warmup_steps: the KL weight rises linearly from 0 to beta over these steps.
        hidden: width of the MLP encoder and decoder (two residual blocks each); for the
            convolutional nets, channels (hidden / 8, hidden / 4).
        net: "auto" (conv for square images of side >= 4, else mlp), "mlp" or "conv".
        iwae_samples: default number k of importance samples of `log_prob`.
        device: "cuda", "cpu" or None (cuda when present).
        **train_options: the fields of `genlab.train.TrainConfig` (max_steps, max_time,
            batch_size, lr, weight_decay, warmup_steps, min_lr_ratio, grad_clip, ema_decay,
            seed, precision, compile).

    `fit(x, y=None)` (`NeuralModel.fit`) trains the ELBO; a gaussian likelihood fitted on
    quantised images (a Dataset with `levels`) sees them freshly dequantised in every batch,
    (k + u) / levels, so it is a density of the dequantised data, as evaluation measures it.
    Labels are used only when passed as `y=` (a Dataset's labels are ignored): `fit(x, y)`
    trains p(x | y), the label's embedding entering encoder and decoder. A conditional VAE
    given no y marginalises over the training label frequencies p(y): `sample` draws y ~ p(y),
    `log_prob` and `elbo` return log sum_y p(y) p(x | y) (estimated / bounded per class).
    """

    log_prob_kind = "estimate"
    config_class = VAEConfig
    fitted_facts = ("likelihood", "levels", "n_classes", "net", "kind", "latent_dim")
    positional: ClassVar[tuple[str, ...]] = ("latent_dim",)
    has_encoder: ClassVar[bool] = True
    sample_options: ClassVar[frozenset[str]] = frozenset({"y", "mean"})
    log_prob_options: ClassVar[frozenset[str]] = frozenset({"k", "seed"})
    quick_log_prob: ClassVar[dict[str, Any]] = {"k": 16}
    picture_sample: ClassVar[dict[str, Any]] = {"mean": True}
    density_grid: ClassVar[int] = 100
    example_data: ClassVar[str] = "digits"
    likelihood_: str | None = None  # before fit
    #: rows of the last log_prob / elbo whose encoder output overflowed (the prior as q)
    log_prob_far_rows_: int = 0
    _dequantize_levels: int | None = None  # gaussian on quantised data: training dequantises

    @property
    def log_prob_space(self) -> Literal["continuous", "discrete"]:
        """What log_prob measures: "discrete" (a log-mass) for bernoulli and discretized
        likelihoods, "continuous" (a log-density) for gaussian (before fit: by the config)."""
        name = self.likelihood_ or self.config.likelihood
        return LIKELIHOOD_FNS[name].space if name in LIKELIHOOD_FNS else "continuous"

    @property
    def conditional(self) -> bool:
        return self.n_classes_ is not None if self.is_fitted else False

    # -- building ---------------------------------------------------------------------------------
    def _build(self, event_shape: tuple[int, ...], fitted: dict[str, Any]) -> None:
        cfg = self.config
        self.likelihood_ = fitted["likelihood"]
        self.levels_ = fitted.get("levels")
        self.n_classes_ = fitted.get("n_classes")
        self.net_ = fitted["net"]
        self.kind_ = fitted.get("kind", "points")
        d = int(np.prod(event_shape))
        self.latent_dim_ = latent = int(fitted.get("latent_dim") or cfg.latent_dim)
        n_out = LIKELIHOOD_FNS[self.likelihood_].n_outputs

        def nets() -> nn.ModuleDict:
            if self.net_ == "conv":
                c, side = image_geometry(event_shape)
                channels = (max(cfg.hidden // 8, 1), max(cfg.hidden // 4, 1))
                return nn.ModuleDict({
                    "encoder": ConvEncoder(c, side, 2 * latent, channels, self.n_classes_),
                    "decoder": ConvDecoder(latent, c * n_out, side, channels[::-1],
                                           self.n_classes_),
                })  # fmt: skip
            widths = (cfg.hidden, cfg.hidden)
            return nn.ModuleDict({
                "encoder": MLP(d, 2 * latent, widths, n_classes=self.n_classes_),
                "decoder": MLP(latent, n_out * d, widths, n_classes=self.n_classes_),
            })  # fmt: skip

        built = limits.build_within_memory(
            nets, "the VAE's encoder and decoder", "use a smaller hidden or latent_dim"
        )
        self.encoder, self.decoder = built["encoder"], built["decoder"]
        if self.likelihood_ == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(d))
            self.register_buffer("data_loc", torch.zeros(d))
            self.register_buffer("data_scale", torch.ones(d))
        if self.n_classes_ is not None:
            self.register_buffer("class_prior", torch.zeros(self.n_classes_))
        self.to(self.device_)

    # -- the networks -----------------------------------------------------------------------------
    def _encode(self, x: Tensor, y: Tensor | None) -> Posterior:
        """Flat model-space x (B, D) -> q(z | x)."""
        x = x.float()
        if self.net_ == "conv":
            c, side = image_geometry(self.event_shape)
            x = x.view(len(x), c, side, side)
        mu, log_var = self.encoder(x, y=y).float().chunk(2, dim=-1)  # float: under bf16 too
        return Posterior(mu, log_var.clamp(*LOG_VAR_RANGE))

    def _decode(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, ...]:
        """z (B, L) -> the likelihood's parameters theta, each (B, D) in model space."""
        out = self.decoder(z, y=y).float()
        d = int(np.prod(self.event_shape))
        n_out = LIKELIHOOD_FNS[self.likelihood_].n_outputs
        out = out.reshape(len(z), n_out, d)  # conv: channels (n_out * C) come first
        if self.likelihood_ == "gaussian":
            return out[:, 0], self.log_scale.clamp(min=LOG_SCALE_MIN).expand(len(z), d)
        if self.likelihood_ == "discretized":
            return out[:, 0], out[:, 1].clamp(min=LOG_SCALE_MIN)
        return (out[:, 0],)

    def _log_likelihood(self, x: Tensor, theta: tuple[Tensor, ...]) -> Tensor:
        """log p(x | z) of flat model-space x (B, D), in nats of the *raw* data: (B,)."""
        lik = LIKELIHOOD_FNS[self.likelihood_]
        lp = lik.log_prob(x, theta, self.levels_).sum(-1)
        if self.likelihood_ == "gaussian":
            lp = lp - self.data_scale.log().sum()
        return lp

    def _to_model_space(self, x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        x = x.reshape(len(x), -1).to(self.device, dtype)
        if self.likelihood_ == "gaussian":
            x = (x - self.data_loc) / self.data_scale
        return x

    def _to_data_space(self, x: Tensor) -> Tensor:
        if self.likelihood_ == "gaussian":
            x = x * self.data_scale + self.data_loc
        return x.reshape(len(x), *self.event_shape)

    # -- training ---------------------------------------------------------------------------------
    def _setup(self, data: TrainingData) -> tuple[Tensor, Tensor | None]:
        """Resolve the likelihood, the net and latent_dim for the data, build the nets, set the
        standardisation (gaussian) and p(y) (conditional); return (rows, labels). A lazy
        NpyArray stays lazy: the likelihood rule and the moments stream its rows."""
        x = data.lazy_rows()
        likelihood, levels = resolve_likelihood(x, self.config.likelihood, data.kind, data.levels)
        latent = self.config.latent_dim or default_latent_dim(data.dim)
        fitted = {"likelihood": likelihood, "levels": levels, "kind": data.kind,
                  "n_classes": data.n_classes, "net": self._resolve_net(data.event_shape),
                  "latent_dim": latent}  # fmt: skip
        self._build(data.event_shape, fitted)
        self.event_shape = data.event_shape
        self._dequantize_levels = data.levels if likelihood == "gaussian" else None
        with torch.no_grad():
            if likelihood == "gaussian":
                stats = data.moments()  # streamed over chunks of rows
                self.data_loc.copy_(stats.mean)
                self.data_scale.copy_(stats.std.clamp(min=1e-6))
            if data.n_classes is not None:
                counts = torch.bincount(data.y, minlength=data.n_classes).double()
                self.class_prior.copy_(counts / counts.sum())
        return x, data.y

    def _resolve_net(self, event_shape: tuple[int, ...]) -> str:
        image = image_geometry(event_shape)
        if self.config.net == "conv" and image is None:
            raise ValueError(
                f'net="conv" needs square images (C, S, S) or (S, S) with S >= 4, got samples '
                f'of shape {event_shape}; use net="mlp"'
            )
        if self.config.net == "auto":
            return "conv" if image is not None else "mlp"
        return self.config.net

    def loss(self, batch: tuple[Tensor, ...], step: int) -> dict[str, Tensor]:
        """The negative ELBO (one reparameterised draw, KL in closed form), beta-weighted.

        loss = mean_b -(recon_b - beta_t KL_b); logs recon, kl and elbo (nats per sample).
        """
        x = self._to_model_space(self.dequantize_batch(batch[0], self._dequantize_levels))
        y = batch[1] if len(batch) > 1 else None
        post = self._encode(x, y)
        z = post.mu + torch.exp(0.5 * post.log_var) * torch.randn_like(post.mu)
        recon = self._log_likelihood(x, self._decode(z, y))
        kl = gaussian_kl(*post)
        beta_t = kl_weight(step, self.config.beta, self.config.kl_warmup_steps)
        loss = -(recon - beta_t * kl).mean()
        return {"loss": loss, "recon": recon.mean().detach(), "kl": kl.mean().detach(),
                "elbo": (recon - kl).mean().detach()}  # fmt: skip

    # -- inputs -----------------------------------------------------------------------------------
    def _prepare(self, x: Any) -> Tensor:
        """Validated flat model-space x (n, D) for inference, in float64 (far rows of a
        gaussian likelihood stay finite there)."""
        x = self.checked_rows(x)
        if self.likelihood_ == "bernoulli" and not bool((x >= 0).all() and (x <= 1).all()):
            raise ValueError("this VAE's Bernoulli likelihood needs x in [0, 1] (binary data)")
        if self.likelihood_ == "discretized" and not (
            bool((x >= 0).all() and (x <= 1).all()) and _on_grid(x, self.levels_)
        ):
            raise ValueError(
                f"this VAE's discretized likelihood needs x = k / {self.levels_ - 1} in [0, 1] "
                f"({self.levels_} levels), like its training data"
            )
        return self._to_model_space(x, torch.float64)

    def _labels(self, y: Any, n: int, required: bool = False) -> Tensor | None:
        """(n,) long labels on the device from an int, a sequence or a tensor; None stays None."""
        if y is None:
            if required and self.conditional:
                raise ValueError("this VAE is conditional: pass y (an int or (n,) labels)")
            return None
        if not self.conditional:
            raise ValueError("this VAE was fitted without labels, so it takes no y")
        return as_labels(y, n, self.n_classes_).to(self.device)

    def _marginalise(self, fn: Callable[[Tensor | None], Tensor], y: Tensor | None) -> Tensor:
        """fn(y) for given labels; for a conditional VAE without y, log sum_c p(c) exp fn(c)."""
        if y is not None or not self.conditional:
            return fn(y)
        classes = (self.class_prior > 0).nonzero().flatten().tolist()
        per_class = [self.class_prior[c].log() + fn(c) for c in classes]
        return torch.logsumexp(torch.stack(per_class, -1), -1)

    # -- the bounds -------------------------------------------------------------------------------
    def _proposal(self, x: Tensor, y: Tensor | None) -> tuple[Posterior, Tensor]:
        """(q, far): the encoder's q(z | x) for the bounds, with the prior N(0, I) in the rows
        `far` where the encoder's output is not finite (x so far from the training data that
        the network overflows): an importance-weighted bound with any proposal is still a
        bound of log p(x), only a looser one."""
        post = self._encode(x, y)
        far = ~(torch.isfinite(post.mu).all(1) & torch.isfinite(post.log_var).all(1))
        if bool(far.any()):
            post = Posterior(*(t.masked_fill(far[:, None], 0.0) for t in post))
        return post, far

    def _bound(self, x: Tensor, y: Tensor | None, k: int, per_rows: Callable) -> Tensor:
        """per_rows(xb, yb, q) (float64 nats) over chunks of rows of model-space x, for the
        given labels or marginalised over the classes (`_marginalise`); returned as float32
        (`limits.log_prob_result`). Sets `log_prob_far_rows_`: the rows scored with the
        prior as proposal (`_proposal`)."""
        far = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        rows = max(1, EVAL_BATCH // k)

        def bound(labels: Tensor | int | None) -> Tensor:
            out = []
            for start in range(0, len(x), rows):
                xb = x[start : start + rows]
                if isinstance(labels, int):
                    yb = torch.full((len(xb),), labels, dtype=torch.long, device=self.device)
                else:
                    yb = None if labels is None else labels[start : start + rows]
                post, far_b = self._proposal(xb, yb)
                far[start : start + len(xb)] |= far_b
                out.append(per_rows(xb, yb, post))
            return torch.cat(out)

        log_p = self._marginalise(bound, y)
        self.log_prob_far_rows_ = int(far.sum())
        return limits.log_prob_result(log_p)

    def _draws(self, x: Tensor, y: Tensor | None, post: Posterior, k: int, g: torch.Generator):
        """k draws z_i ~ q(z | x) per row: (log p(x | z_i), log p(z_i) - log q(z_i | x)), each
        (B, k) in float64 (a far x keeps a finite likelihood), decoded in chunks of at most
        EVAL_BATCH rows."""
        std = torch.exp(0.5 * post.log_var)
        mu64, log_var64 = post.mu.double()[:, None], post.log_var.double()[:, None]
        per = max(1, min(k, EVAL_BATCH // max(len(x), 1)))
        log_px, log_ratio = [], []
        for s in range(0, k, per):
            m = min(per, k - s)
            eps = torch.randn(len(x), m, post.mu.shape[1], generator=g, device=self.device)
            z = post.mu[:, None] + std[:, None] * eps  # (B, m, L)
            y_rep = None if y is None else y.repeat_interleave(m)
            theta = tuple(t.double() for t in self._decode(z.reshape(-1, z.shape[-1]), y_rep))
            log_px.append(self._log_likelihood(x.repeat_interleave(m, 0), theta).view(len(x), m))
            z = z.double()
            log_ratio.append(normal_log_prob(z) - normal_log_prob(z, mu64, log_var64))
        return torch.cat(log_px, 1), torch.cat(log_ratio, 1)

    @torch.no_grad()
    def log_prob(
        self, x: Any, y: Any = None, *, k: int | None = None, seed: int | None = 0
    ) -> Tensor:
        """IWAE estimate of log p(x) (or log p(x | y)), nats: (n,) for x (n, *event_shape).

            log p(x) ~ log (1/k) sum_{i=1}^k p(x | z_i) p(z_i) / q(z_i | x),   z_i ~ q(z | x)

        A stochastic lower bound of log p(x) in expectation, which tightens as k grows (k = 1
        is the ELBO); hence `log_prob_kind = "estimate"`. For bernoulli/discretized
        likelihoods it is a log-mass of the quantised x, for gaussian a log-density.
        The weights are summed in log space (logsumexp) in float64, so a point far from the
        data gets a finite, very negative value; where the encoder itself overflows (a row
        ~1e20 out), the prior N(0, I) is that row's proposal (`log_prob_far_rows_` counts
        them). A value beyond float32's range is a ValueError (`limits.log_prob_result`).

        Args:
            x: (n, *event_shape) Tensor, array or Dataset (whose labels are ignored).
            y: labels (an int or (n,)) for log p(x | y) under a conditional VAE; without them a
                conditional VAE returns log sum_y p(y) p(x | y).
            k: importance samples per row (default: config.iwae_samples; at most
                `limits.MAX_STEPS`).
            seed: seed of the draws z_i (a local generator; None: fresh draws).
        """
        x = self._prepare(x)
        y = self._labels(y, len(x))
        k = self.config.iwae_samples if k is None else _check_k(k)
        g = self.generator(seed)
        return self._bound(x, y, k, lambda xb, yb, q: iwae_bound(sum(self._draws(xb, yb, q, k, g))))

    @torch.no_grad()
    def elbo(self, x: Any, y: Any = None, k: int = 1, *, seed: int | None = 0) -> Tensor:
        """ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || N(0, I)), nats: (n,).

        The expectation is averaged over k draws z ~ q(z | x); the KL is exact. A conditional
        VAE without y returns log sum_y p(y) exp ELBO(x | y), also a lower bound of log p(x).
        Far rows are handled as in `log_prob` (the prior as q: their KL term is 0).
        """
        x = self._prepare(x)
        y = self._labels(y, len(x))
        k, g = _check_k(k), self.generator(seed)

        def elbo_rows(xb: Tensor, yb: Tensor | None, q: Posterior) -> Tensor:
            log_px, _ = self._draws(xb, yb, q, k, g)
            return log_px.mean(1) - gaussian_kl(q.mu.double(), q.log_var.double())

        return self._bound(x, y, k, elbo_rows)

    # -- sampling and the latent space ------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        y: Any = None,
        mean: bool = False,
    ) -> Tensor:
        """n draws x ~ p(x) = E_{z ~ N(0, I)} p(x | z): (n, *event_shape).

        Draws, in this order, from one generator: the labels (conditional, y=None), the
        latents z (unless given as `noise`), then x ~ p(x | z) (unless mean=True). Every draw
        is made on the generator's device (the CPU by default) and moved to the model's.

        Args:
            n: number of samples.
            seed: seed of a CPU generator (same seed, same samples, on any device; None: OS
                entropy); seed=s is the same as generator=torch.Generator().manual_seed(s).
            generator: a torch.Generator for the draws instead (advanced in place; not with
                seed).
            noise: (n, latent_dim) the latents z ~ N(0, I) to decode instead of drawing them
                (then the generator is not advanced for them); with mean=True and given or
                no labels, the samples are a deterministic function of z.
            y: for a conditional VAE, an int or (n,) labels; None draws y ~ p(y) (the training
                label frequencies).
            mean: return the decoder means E[x | z] instead of draws from p(x | z)
                (probabilities for bernoulli, the location clipped to [0, 1] for discretized,
                the mean for gaussian): the customary grid of smooth images.
        """
        self.check_is_fitted()
        n = self.check_sample_size(n)
        limits.check_flag(mean, "mean")
        g = sampling.resolve_generator(seed, generator)
        labels = self._labels(y, n)
        if noise is not None:
            what = "noise (the latents z ~ N(0, I), one row per sample)"
            noise = sampling.check_noise(noise, (n, self.latent_dim_), what)
        if n == 0:
            return torch.zeros(0, *self.event_shape, device=self.device)
        if labels is None and self.conditional:
            labels = sampling.categorical(self.class_prior, n, g)
        if noise is None:
            z = sampling.standard_normal((n, self.latent_dim_), g, self.device)
        else:
            z = noise.to(self.device, torch.float32)
        theta = self._decode(z, labels)
        limits.check_outputs(theta, "the decoder's outputs")  # before any clamp or sigmoid
        lik = LIKELIHOOD_FNS[self.likelihood_]
        if mean:
            draws = lik.mean(theta)
        else:  # drawn on the generator's device, then moved
            on_g = tuple(t.to(g.device) for t in theta)
            draws = lik.sample(on_g, g, self.levels_).to(self.device)
        x = self._to_data_space(draws)
        limits.check_outputs(x, "the samples")
        return x

    @torch.no_grad()
    def encode(self, x: Any, y: Any = None) -> Posterior:
        """q(z | x) of each row: Posterior(mu, log_var), each (n, latent_dim).

        Raises:
            ValueError: the encoder's output is not finite for a row (one so far from the
                training data that the network overflows).
        """
        x = self._prepare(x)
        post, far = self._proposal(x, self._labels(y, len(x), required=True))
        row = limits.first_row(far)
        if row is not None:
            raise ValueError(
                f"the encoder's output for row {row} is not finite: the "
                "row lies too far from the training data for the network (log_prob scores such "
                "rows with the prior as proposal); remove such rows or rescale the data"
            )
        return post

    @torch.no_grad()
    def decode(self, z: Any, y: Any = None) -> Tensor:
        """Decoder means E[x | z] in data space: (n, latent_dim) -> (n, *event_shape).

        Raises:
            ValueError: z of the wrong shape, not finite, or farther than
                `limits.FAR_SIGMAS` from the prior N(0, I) (where the decoder overflows).
            DivergedError: the decoder's outputs are not finite (diverged weights).
        """
        self.check_is_fitted()
        z = torch.as_tensor(np.asarray(z) if not isinstance(z, Tensor) else z)
        if z.ndim != 2 or z.shape[1] != self.latent_dim_:
            raise ValueError(f"z must have shape (n, {self.latent_dim_}), got {tuple(z.shape)}")
        z = z.to(self.device, torch.float32)
        check_finite(z, "z")
        row = limits.first_row(z.abs().amax(1) > limits.FAR_SIGMAS)
        if row is not None:
            raise ValueError(
                f"row {row} of z lies more than {limits.FAR_SIGMAS:g} standard deviations from "
                "the prior N(0, I) of the latent space; decode points of the prior's range"
            )
        theta = self._decode(z, self._labels(y, len(z), required=True))
        limits.check_outputs(theta, "the decoder's outputs")
        return self._to_data_space(LIKELIHOOD_FNS[self.likelihood_].mean(theta))

    def reconstruct(self, x: Any, y: Any = None) -> Tensor:
        """decode(encode(x).mu): the decoder means at the posterior means, (n, *event_shape)."""
        return self.decode(self.encode(x, y).mu, y)

    def interpolate(self, x0: Any, x1: Any, steps: int = 8, y: int | None = None) -> Tensor:
        """Decode the straight line between the posterior means of x0 and x1: (steps, *event_shape).

        x0, x1: single samples of shape event_shape (or (1, *event_shape)); y: one label for
        a conditional VAE.
        """
        self.check_is_fitted()
        if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 2:
            raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
        self.check_sample_size(steps)
        ends = [
            torch.as_tensor(np.asarray(e) if not isinstance(e, Tensor) else e) for e in (x0, x1)
        ]
        ends = [e[None] if tuple(e.shape) == self.event_shape else e for e in ends]
        if any(tuple(e.shape) != (1, *self.event_shape) for e in ends):
            raise ValueError(f"x0 and x1 must each have shape {self.event_shape}")
        mu = self.encode(torch.cat(ends), None if y is None else [y, y]).mu
        t = torch.linspace(0, 1, int(steps), device=self.device)[:, None]
        return self.decode((1 - t) * mu[0] + t * mu[1], y)

    # -- what `genlab fit` prints -----------------------------------------------------------------
    def score_rows(self, data: Dataset, limit: int = SCORE_ROWS) -> tuple[str, float]:
        """("train ELBO" (or "train ELBO (first N)"), the mean ELBO in nats) of up to `limit`
        training rows, with their labels for a conditional VAE (a gaussian likelihood on
        quantised data: at dequantised rows, as it was trained)."""
        x = data.x[:limit]
        x = x if isinstance(x, Tensor) else x[:]
        if data.levels is not None and self.likelihood_ == "gaussian":
            x = metrics.dequantize(x.float(), data.levels, generator=local_generator(0))
        y = data.y[: len(x)] if self.conditional and data.y is not None else None
        label = "train ELBO" if len(x) == len(data) else f"train ELBO (first {len(x)})"
        return label, float(self.elbo(x, y).double().mean())

    def fit_summary(self) -> dict[str, Any]:
        return super().fit_summary() | {
            "likelihood": self.likelihood_, "net": self.net_, "latent dim": self.latent_dim_,
            "conditional": self.conditional,
        }  # fmt: skip


def _check_k(k: Any) -> int:
    return limits.check_steps(k, "k (importance samples)")
