"""Latent generative models: a frozen autoencoder, and any family fitted on its codes.

    x --encoder--> codes c(x) ~ prior (any registered family) --decoder--> x ~ p(x | z)

`fit` trains (or takes) the autoencoder, freezes it, encodes the training data and fits the
prior on the codes; `sample` draws codes from the prior and decodes them; `log_prob` bounds
log p(x) of the whole model, in nats of x, so that bits/dim sit on the scale of every other
family (a log-mass of quantised images when the decoder's likelihood is discretised).

Continuous (KL) codes, q(z | x) = N(mu(x), diag sigma^2(x)) of shape latent_shape: the ELBO
of the VAE with the prior's log-density in place of N(0, I),

    log p(x) >= ELBO(x) = E_q[log p(x | z) + log p_prior(z)] + H[q(z | x)],
    H[q] = 1/2 sum_j (log(2 pi e) + log sigma_j^2)                                  (nats)

estimated with `elbo_samples` reparameterised draws z (an unbiased estimate of the bound;
the entropy in closed form). Its units cancel: log p_prior(z) is a density of z, H[q] a
differential entropy of z. A prior whose own log_prob is an estimate (the VAE's IWAE) makes
the whole an estimate (`log_prob_kind`).

FSQ codes (tokens t(x) in {0..K-1}^L, a deterministic encoder, zhat(x) their grid values):

    log p(x) = log sum_t P_prior(t) p(x | zhat(t)) >= log P_prior(t(x)) + log p(x | zhat(x))

one term of the sum: the prior's bits on the tokens (exact for the autoregressive family)
plus the decoder's. The prior sees the tokens as a sequence of L "pixels" t / (K - 1) with
K levels (the image tokenizer of the sequence families: token t is level t).

The prior is any family in `FAMILIES`, looked up by name (a family never imports another):
gmm, flow, diffusion or vae on continuous codes (flattened to vectors of L numbers),
autoregressive or masked_diffusion on tokens. Labels and classifier-free guidance go through
the prior: `fit(x, y)` fits a conditional prior, `sample(n, y=..., guidance=...)` passes them on.

Budget (`max_time` / `max_steps`, for the pair): the autoencoder trains on
`autoencoder_share` of it, the prior on what is left after the encoding (seconds) or the
remaining steps; `split_` records how it went (`fit_summary`, compare's details).

The folder: config.json + model.safetensors hold the whole model (the parts' configs and
fitted facts inline, their tensors under the prefixes `autoencoder.` and `prior.`), written
as one atomic version (`GenerativeModel.save`); `autoencoder/` and `prior/` beside them are
the same two parts as model folders of their own (each written atomically just before), so
`genlab.load(RUN / "autoencoder")` or `genlab fit latent --autoencoder RUN/autoencoder`
reuses one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from genlab.data.dataset import Dataset
from genlab.models import limits
from genlab.models.base import (
    FAMILIES,
    Budget,
    GenerativeModel,
    NotFittedError,
    TrainingData,
)
from genlab.options import Choice, Constraint, Integer, Real, option
from genlab.train import AUTOCAST, Precision

AUTOENCODER_FAMILY = "autoencoder"  # the family `fit` trains when given no autoencoder
TOKEN_PRIORS = ("autoregressive", "masked_diffusion")  # priors of the examples on FSQ tokens
EVAL_ROWS = 1024  # rows per encoder / decoder pass
DRAW_ROWS = 8192  # rows x draws z ~ q(z | x) per pass of log_prob's ELBO
LOG_2PI_E = math.log(2 * math.pi) + 1.0
PARTS = ("autoencoder", "prior")
MLP_AE = {"net": "mlp"}  # compare's autoencoder (`Latent.presets`)


# -- the maths -------------------------------------------------------------------------------------
def gaussian_entropy(log_var: Tensor) -> Tensor:
    """H[N(mu, diag exp(log_var))] = 1/2 sum_j (log(2 pi e) + log_var_j), nats: (n, ...) -> (n,)
    (float64)."""
    lv = log_var.double().flatten(1)
    return 0.5 * (LOG_2PI_E * lv.shape[1] + lv.sum(1))


def elbo_with_prior(log_px_given_z: Tensor, log_prior: Tensor, entropy: Tensor) -> Tensor:
    """ELBO(x) = mean_s [log p(x | z_s) + log p_prior(z_s)] + H[q(z | x)], nats: (n,).

    log_px_given_z, log_prior: (n, S) at S draws z_s ~ q(z | x); entropy: (n,)."""
    return (log_px_given_z.double() + log_prior.double()).mean(1) + entropy.double()


def tokens_as_levels(tokens: Tensor, codebook_size: int) -> Tensor:
    """Tokens t in {0..K-1} (n, L) as the sequence families' quantised values t / (K - 1)
    (float32; t = round(v (K - 1)) recovers them exactly for K < 2^23)."""
    return tokens.float() / (codebook_size - 1)


def levels_as_tokens(values: Tensor, codebook_size: int) -> Tensor:
    """The inverse of `tokens_as_levels`: (n, L) values k / (K - 1) -> (n, L) int64 tokens."""
    return torch.round(values.double() * (codebook_size - 1)).long().clamp(0, codebook_size - 1)


def split_budget(
    seconds: float | None, steps: int | None, share: float
) -> tuple[float | None, int | None]:
    """The autoencoder's part of a budget for the pair: share * seconds, round(share * steps)
    (at least 1 step, leaving the prior at least 1)."""
    ae_seconds = None if seconds is None else share * seconds
    ae_steps = None if steps is None else min(max(1, round(share * steps)), max(steps - 1, 1))
    return ae_seconds, ae_steps


def prior_budget(
    seconds: float | None, steps: int | None, spent_seconds: float, ae_steps: int | None,
    share: float,
) -> tuple[float | None, int | None]:  # fmt: skip
    """What the prior may spend: the seconds left after the autoencoder and the encoding (at
    least a tenth of its planned share), the steps left."""
    left = None
    if seconds is not None:
        left = max(seconds - spent_seconds, 0.1 * (1 - share) * seconds, 1e-3)
    rest = None if steps is None else max(steps - (ae_steps or 0), 1)
    return left, rest


# -- options ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptionsOf(Constraint):
    """A JSON object of a family's options ({name: value}, names are strings), or None."""

    optional: bool = True

    def accepts(self, v: Any) -> bool:
        if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
            return False
        try:
            json.dumps(dict(v))
        except (TypeError, ValueError):
            return False
        return True

    def describe(self) -> str:
        return "a dict of JSON-able options {name: value}"


@dataclass(frozen=True)
class LatentConfig:
    """The options of a latent model (what config.json stores)."""

    # fmt: off
    prior: str = option("gmm", "Family of the prior on the codes: gmm, flow, diffusion or vae "
                        "on continuous codes; autoregressive on FSQ tokens.")
    prior_options: dict[str, Any] | None = option(
        None, "Options of the prior, KEY=VALUE,... (e.g. hidden=256,sample_steps=50).",
        OptionsOf())
    autoencoder: str | None = option(
        None, "Folder of a trained autoencoder to reuse, frozen (None: train one).")
    autoencoder_options: dict[str, Any] | None = option(
        None, "Options of the autoencoder trained first, KEY=VALUE,... (e.g. "
        "latent=fsq,levels=[8,5,5,5]).", OptionsOf())
    autoencoder_share: float = option(
        0.5, "Share of max_time / max_steps that trains the autoencoder; the prior gets the "
        "rest (a reused autoencoder: all of it).", Real(0, 1, low_open=True, high_open=True))
    max_time: float | None = option(
        None, "Wall-clock budget in seconds of the pair (None: each part's own default).",
        Real(0, low_open=True, optional=True))
    max_steps: int | None = option(
        None, "Optimisation steps of the pair (None: each part's own default).",
        Integer(2, optional=True))
    seed: int = option(0, "Seed of both parts and of log_prob's draws.", Integer(0, 2**63 - 1))
    precision: Precision = option(
        "fp32", "Training precision of each part that trains networks (fp32, bf16, fp16; "
        "see genlab.train).", Choice(tuple(AUTOCAST)))
    elbo_samples: int = option(
        1, "Draws z ~ q(z | x) per row of log_prob's ELBO (continuous codes).",
        Integer(1, limits.MAX_STEPS))
    # fmt: on

    def __post_init__(self) -> None:
        from genlab.options import validate

        validate(self)
        if not isinstance(self.prior, str) or not self.prior:
            raise ValueError(f"prior must be a family name such as 'gmm', got {self.prior!r}")
        if self.autoencoder is not None and not isinstance(self.autoencoder, str):
            raise ValueError(
                f"autoencoder must be the folder of a trained autoencoder, got "
                f"{type(self.autoencoder).__name__}"
            )
        if self.autoencoder is not None and self.autoencoder_options:
            raise ValueError(
                "autoencoder (a trained one, reused) and autoencoder_options (for one to "
                "train) exclude each other: give one"
            )
        for name in ("prior_options", "autoencoder_options"):  # as config.json will hold them
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, json.loads(json.dumps(dict(value))))


class Encoded(NamedTuple):
    """`Latent.encode`: mu (n, L), the codes the prior models (posterior means, or FSQ grid
    values), flattened."""

    mu: Tensor


# -- the model -------------------------------------------------------------------------------------
class Latent(GenerativeModel, family="latent"):
    """A prior of any family on the codes of a frozen autoencoder; `log_prob` is a bound.

    Args:
        autoencoder: a trained autoencoder (used frozen), the folder of one (str or path),
            a dict of options for one to train (`autoencoder_options`), or None (train one
            with the defaults).
        prior: the family of the prior on the codes (a name in `FAMILIES`).
        prior_options: the prior's constructor options (over the budget split and seed).
        autoencoder_share, max_time, max_steps, seed, elbo_samples: see `LatentConfig`.
        device: "cuda", "cpu" or None (cuda when present).

    Attributes (after fit):
        autoencoder, prior: the two fitted parts (sub-modules; their tensors are this model's).
        latent_kind_: "continuous" (KL codes) or "tokens" (FSQ).
        split_: how the budget was spent: seconds and steps of each stage.
    """

    config_class = LatentConfig
    log_prob_kind = "bound"  # per model: "estimate" when the prior's log_prob is an estimate
    fitted_facts = ("latent_kind", "parts", "split")
    has_encoder: ClassVar[bool] = True
    takes_labels: ClassVar[bool] = True
    example_data: ClassVar[str] = "digits"
    log_prob_options: ClassVar[frozenset[str]] = frozenset({"k", "seed"})
    #: names under which compare runs this family with a given prior (`genlab compare
    #: --families latent-gmm,latent-diffusion`); the caller's options come on top. The
    #: autoencoder is an MLP: the conv one costs ~35x more per step on a CPU (MNIST), and at
    #: equal steps on digits (1,000) latent-gmm with it reached Fréchet 8.8 against flow's 33
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "latent-gmm": {"prior": "gmm", "autoencoder_share": 0.9, "autoencoder_options": MLP_AE},
        "latent-flow": {"prior": "flow", "autoencoder_share": 0.7, "autoencoder_options": MLP_AE},
        "latent-diffusion": {"prior": "diffusion", "autoencoder_share": 0.7,
                             "autoencoder_options": MLP_AE},
        "latent-vae": {"prior": "vae", "autoencoder_share": 0.7, "autoencoder_options": MLP_AE},
        "latent-autoregressive": {"prior": "autoregressive", "autoencoder_share": 0.7,
                                  "autoencoder_options": {**MLP_AE, "latent": "fsq",
                                                          "latent_shape": "4,4"}},
    }  # fmt: skip

    def __init__(self, *args: Any, autoencoder: Any = None, device: Any = None, **options: Any):
        given = None
        if isinstance(autoencoder, GenerativeModel):
            given, autoencoder = autoencoder, None
        elif isinstance(autoencoder, Mapping):
            if options.get("autoencoder_options"):
                raise TypeError("give the autoencoder's options once: autoencoder={...} or "
                                "autoencoder_options={...}")  # fmt: skip
            options["autoencoder_options"], autoencoder = dict(autoencoder), None
        elif isinstance(autoencoder, os.PathLike):
            autoencoder = os.fspath(autoencoder)
        if autoencoder is not None:
            options["autoencoder"] = autoencoder
        super().__init__(*args, device=device, **options)
        if given is not None:
            _check_autoencoder(given)
        self._given_autoencoder = given
        self.latent_kind_: str | None = None
        self.split_: dict[str, Any] = {}

    # -- what the parts say ------------------------------------------------------------------------
    @property
    def parts_(self) -> dict[str, dict[str, Any]]:
        """config.json's record of each part: {"family", "config", "fitted"}."""
        return {name: {"family": part.family, "config": dataclasses.asdict(part.config),
                       "fitted": part._fitted_meta()}
                for name in PARTS for part in [getattr(self, name)]}  # fmt: skip

    @property
    def log_prob_space(self) -> Literal["continuous", "discrete"]:
        """The autoencoder's: "discrete" (a log-mass) for a discretised decoder likelihood."""
        if not self.is_fitted:
            return "continuous"
        return self.autoencoder.log_prob_space

    @property
    def conditional(self) -> bool:
        return self.is_fitted and self.prior.conditional

    @property
    def n_parameters(self) -> int:
        return self.autoencoder.n_parameters + self.prior.n_parameters

    def _adopt_prior(self) -> None:
        """The prior's sampling and scoring options become this model's (instance values
        over the class's), and the bound's kind follows the prior's log_prob."""
        prior = self.prior
        self.sample_options = prior.sample_options
        self.log_prob_options = frozenset(prior.log_prob_options) | {"k", "seed"}
        self.quick_log_prob = dict(prior.quick_log_prob)
        self.log_prob_kind = "estimate" if prior.log_prob_kind == "estimate" else "bound"
        if self.latent_kind_ == "tokens" and prior.log_prob_space != "discrete":
            raise ValueError(
                f"the {prior.family} prior gives a density, but FSQ tokens need a log-mass "
                f"(bits on the tokens): use prior={' or '.join(map(repr, TOKEN_PRIORS))}, or a "
                "KL autoencoder for a density prior"
            )

    def _build(self, event_shape: tuple[int, ...], fitted: dict[str, Any]) -> None:
        from genlab.models.folder import _build_model  # the checked rebuild of a folder's model

        parts = fitted["parts"]
        if not isinstance(parts, dict) or set(parts) != set(PARTS):
            raise ValueError(f"fitted.parts must hold {PARTS}, got {parts!r}")
        for name in PARTS:
            meta = parts[name]
            cls = FAMILIES.get(meta["family"]) if isinstance(meta, dict) else None
            if cls is None or cls is Latent:
                raise ValueError(f"fitted.parts.{name}: not a model of a known family")
            model = _build_model(cls, meta, Path(name) / "config.json", self.device_)
            setattr(self, name, model.eval())
        if fitted["latent_kind"] not in ("continuous", "tokens"):
            raise ValueError(f"fitted.latent_kind must be continuous or tokens, got "
                             f"{fitted['latent_kind']!r}")  # fmt: skip
        if tuple(self.autoencoder.event_shape) != tuple(event_shape):
            raise ValueError(f"fitted.event_shape {list(event_shape)} is not the autoencoder's "
                             f"{list(self.autoencoder.event_shape)}")  # fmt: skip
        if self.autoencoder.latent_kind != fitted["latent_kind"]:
            raise ValueError(f"fitted.latent_kind {fitted['latent_kind']!r} is not the "
                             f"autoencoder's {self.autoencoder.latent_kind!r}")  # fmt: skip
        self.latent_kind_ = fitted["latent_kind"]
        self.split_ = dict(fitted.get("split") or {})
        self._freeze()
        self._adopt_prior()

    def _freeze(self) -> None:
        self.autoencoder.eval()
        for p in self.autoencoder.parameters():
            p.requires_grad_(False)

    # -- fitting -----------------------------------------------------------------------------------
    def fit(self, x: Any, y: Any = None, *, progress: bool | None = None) -> Latent:
        """Train (or take) the autoencoder, freeze it, encode x and fit the prior on the codes.

        Args:
            x: (n, *event_shape) Tensor, array or Dataset (a Dataset's grey levels are used:
                the autoencoder's discretised likelihood; its labels are not).
            y: (n,) labels for a class-conditional prior, or None.
            progress: the parts' progress bars.

        Raises:
            ValueError: data the model cannot take (text), a prior family that is unknown,
                cannot take labels or does not fit the codes' kind; an autoencoder of the
                wrong event shape.
        """
        cfg = self.config
        data = TrainingData.from_input(x, y)
        reason = self.unsupported(data)
        if reason is not None:
            raise ValueError(reason)
        prior_cls = _family(cfg.prior, "prior")
        if data.y is not None and not prior_cls.takes_labels:
            raise ValueError(
                f"the {cfg.prior} prior takes no labels: fit without y, or choose a prior that "
                "does (flow, diffusion, vae, autoregressive)"
            )
        dataset = x if isinstance(x, Dataset) else Dataset(
            data.x, None, data.event_shape, data.kind, data.name, data.levels)  # fmt: skip
        dataset = dataclasses.replace(dataset, y=None)
        device = str(self.device_)
        start = time.perf_counter()
        ae, how, ae_steps = self._autoencoder(dataset, device, progress)
        ae_seconds = time.perf_counter() - start
        if tuple(ae.event_shape) != tuple(data.event_shape):
            raise ValueError(
                f"the autoencoder models samples of shape {tuple(ae.event_shape)}, the data "
                f"has {data.event_shape}: use one fitted on this data"
            )
        self.autoencoder = ae
        self._freeze()
        self.latent_kind_ = ae.latent_kind
        codes = self._code_data(data.rows(), dataset.name)
        encode_seconds = time.perf_counter() - start - ae_seconds
        share = cfg.autoencoder_share if how == "trained" else 0.0
        seconds, steps = prior_budget(cfg.max_time, cfg.max_steps, time.perf_counter() - start,
                                      ae_steps if how == "trained" else 0, share)  # fmt: skip
        prior_start = time.perf_counter()
        self.prior, prior_details = fit_part(
            prior_cls, codes, data.y, seconds=seconds, steps=steps, seed=cfg.seed,
            device=device, progress=progress, options=self._part_options(prior_cls, "prior"),
        )  # fmt: skip
        self.prior.eval()
        prior_seconds = time.perf_counter() - prior_start
        self.split_ = json.loads(json.dumps({
            "autoencoder": how, "autoencoder_share": share,
            "autoencoder_seconds": ae_seconds, "autoencoder_steps": ae_steps,
            "encode_seconds": encode_seconds, "prior_seconds": prior_seconds,
            "prior_steps": prior_details.get("steps"), "latent_kind": self.latent_kind_,
            "latent_shape": list(ae.latent_shape), "code_dim": int(codes.dim),
        }, default=str))  # fmt: skip
        self.event_shape = data.event_shape
        self.label_names_ = data.label_names  # an image folder's classes: sample(y="cat")
        self._adopt_prior()
        return self

    def _autoencoder(
        self, data: Dataset, device: str, progress: bool | None
    ) -> tuple[GenerativeModel, str, int | None]:
        """(the autoencoder, how it came: "given", "reused: PATH" or "trained", its steps)."""
        cfg = self.config
        if self._given_autoencoder is not None:
            return self._given_autoencoder.to(self.device_), "given", None
        if cfg.autoencoder is not None:
            from genlab.models.folder import load

            model = load(cfg.autoencoder, device=self.device_)
            _check_autoencoder(model)
            return model, f"reused: {cfg.autoencoder}", None
        seconds, steps = split_budget(cfg.max_time, cfg.max_steps, cfg.autoencoder_share)
        cls = _family(AUTOENCODER_FAMILY, "autoencoder")
        model, details = fit_part(
            cls, data, None, seconds=seconds, steps=steps, seed=cfg.seed, device=device,
            progress=progress, options=self._part_options(cls, "autoencoder"),
        )  # fmt: skip
        _check_autoencoder(model)
        return model, "trained", details.get("steps")

    def _part_options(self, cls: type[GenerativeModel], part: str) -> dict[str, Any]:
        """The options of a part (config.prior_options / autoencoder_options), with this
        model's `precision` for a part that has the field (unless given there)."""
        options = dict(getattr(self.config, f"{part}_options") or {})
        names = {f.name for f in dataclasses.fields(cls.config_class)}
        if self.config.precision != "fp32" and "precision" in names:
            options.setdefault("precision", self.config.precision)
        return options

    @torch.no_grad()
    def _code_data(self, rows: Tensor, name: str) -> Dataset:
        """The prior's training data: continuous codes (posterior means, flattened to (n, L))
        as points; FSQ tokens (n, L) as quantised values with K levels (`tokens_as_levels`)."""
        ae = self.autoencoder
        label = f"{name} codes" if name else "codes"
        if self.latent_kind_ == "tokens":
            tokens = self._batched(ae.encode_tokens, rows)
            values = tokens_as_levels(tokens, int(ae.codebook_size))
            return Dataset(values, None, tuple(values.shape[1:]), "image", label,
                           int(ae.codebook_size))  # fmt: skip
        z = self._batched(ae.encode, rows).flatten(1).float()
        return Dataset(z, None, tuple(z.shape[1:]), "points", label)

    def _batched(self, fn: Any, x: Tensor) -> Tensor:
        return torch.cat([fn(x[i : i + EVAL_ROWS].to(self.device)).detach()
                          for i in range(0, len(x), EVAL_ROWS)])  # fmt: skip

    @classmethod
    def fit_for_budget(cls, data: Dataset, budget: Budget) -> tuple[Latent, dict]:
        """One budget for the pair (what compare calls): construct with max_time / max_steps
        (and `options`), fit without labels, and report the split ("split" in the details)."""
        b = budget
        kwargs = {"seed": b.seed, "max_time": b.seconds, "max_steps": b.steps, **b.options}
        if b.device is not None:
            kwargs.setdefault("device", b.device)
        model = cls(**kwargs).fit(dataclasses.replace(data, y=None), progress=b.progress)
        split = model.split_
        steps = [s for s in (split.get("autoencoder_steps"), split.get("prior_steps")) if s]
        return model, {"steps": sum(steps) if steps else None, "split": split,
                       "options": dict(b.options)}  # fmt: skip

    def fit_summary(self) -> dict[str, Any]:
        s = self.split_
        latent = f"{s.get('latent_kind')} {tuple(s.get('latent_shape') or ())}"
        rows = {"prior": self.prior.family, "latent": latent, "autoencoder": s.get("autoencoder")}
        for stage in ("autoencoder", "prior"):
            seconds, steps = s.get(f"{stage}_seconds"), s.get(f"{stage}_steps")
            if seconds is not None:
                rows[f"{stage} stage"] = f"{seconds:.1f} s" + (f", {steps} steps" if steps else "")
        return rows

    # -- sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, seed: int | None = None, **options: Any) -> Tensor:
        """n draws: codes from the prior (`prior.sample(n, seed=seed, **options)`: labels y,
        guidance, steps, ... as the prior takes them), decoded: (n, *event_shape).

        The decoder's mean at each code is returned (as latent diffusion decodes), not a draw
        of the decoder's pixel noise, whose likelihood `log_prob` includes. Sets `nfe_` (the
        prior's).
        """
        self.check_is_fitted()
        n = self.check_sample_size(n)
        codes = self.prior.sample(n, seed=seed, **options)
        self.nfe_ = self.prior.nfe_
        if n == 0:
            return torch.zeros(0, *self.event_shape, device=self.device)
        return self.decode(codes)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes as the prior models them ((n, L) flat codes, or tokens as K-level values)
        -> decoder means (n, *event_shape)."""
        ae = self.autoencoder
        codes = codes.to(self.device)
        if self.latent_kind_ == "tokens":
            tokens = levels_as_tokens(codes.reshape(len(codes), -1), int(ae.codebook_size))
            return self._batched(ae.decode_tokens, tokens)
        z = codes.float().reshape(len(codes), *ae.latent_shape)
        return self._batched(ae.decode, z)

    @torch.no_grad()
    def encode(self, x: Any, y: Any = None) -> Encoded:
        """The codes of x as the prior models them, flattened: Encoded(mu (n, L))."""
        x = self.checked_rows(x)
        return Encoded(self._batched(self.autoencoder.encode, x).flatten(1))

    @torch.no_grad()
    def reconstruct(self, x: Any, y: Any = None) -> Tensor:
        """decode(encode(x)): the decoder means at the codes of x, (n, *event_shape)."""
        x = self.checked_rows(x)
        ae = self.autoencoder
        return self._batched(lambda b: ae.decode(ae.encode(b)), x)

    def reconstruction_error(self, x: Any) -> float:
        """Mean squared error of `reconstruct` in data space (the autoencoder's)."""
        x = self.checked_rows(x)
        return float(self.autoencoder.reconstruction_error(x))

    # -- the bound ---------------------------------------------------------------------------------
    @torch.no_grad()
    def log_prob(
        self, x: Any, y: Any = None, *, k: int | None = None, seed: int | None = 0,
        **prior_options: Any,
    ) -> Tensor:  # fmt: skip
        """A lower bound of log p(x) (or log p(x | y)), nats: (n,) for x (n, *event_shape).

        Continuous codes: the ELBO with the prior (module docstring), estimated with k draws
        z ~ q(z | x) (default `elbo_samples`) from a generator seeded `seed`; FSQ tokens:
        log P_prior(t(x)) + log p(x | zhat(x)), deterministic. A log-mass of quantised x when
        the decoder's likelihood is discretised (`log_prob_space`), else a density.

        Args:
            x: (n, *event_shape) Tensor, array or Dataset (whose labels are ignored).
            y: labels (an int or (n,)) of a conditional prior.
            k: draws of the ELBO (continuous codes).
            seed: seed of those draws (None: fresh); passed on to a prior that takes one.
            prior_options: the prior's own log_prob options (e.g. an ODE solver's rtol).
        """
        x = self.checked_rows(x)
        k = self.config.elbo_samples if k is None else limits.check_steps(k, "k (draws)")
        options = dict(prior_options)
        if "seed" in self.prior.log_prob_options:
            options["seed"] = seed
        labels = None
        if y is not None:
            if not self.conditional:
                raise ValueError("this latent model's prior was fitted without labels: it takes "
                                 "no y")  # fmt: skip
            labels = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y)
            labels = labels.expand(len(x)) if labels.ndim == 0 else labels  # the prior checks them
        out = []
        g = self.generator(seed)
        for i in range(0, len(x), EVAL_ROWS):
            xb = x[i : i + EVAL_ROWS]
            yb = None if labels is None else {"y": labels[i : i + EVAL_ROWS]}
            out.append(self._bound(xb, k, g, yb or {}, options))
        return limits.log_prob_result(torch.cat(out))

    def _bound(self, x: Tensor, k: int, g: torch.Generator, y: dict, options: dict) -> Tensor:
        ae = self.autoencoder
        if self.latent_kind_ == "tokens":
            tokens = ae.encode_tokens(x)
            log_px = ae.decoder_log_prob(x, ae.encode(x)).double()
            values = tokens_as_levels(tokens, int(ae.codebook_size))
            return log_px + self.prior.log_prob(values, **y, **options).double()
        mean, log_var = ae.posterior(x)
        std = torch.exp(0.5 * log_var)
        log_px, log_pz = [], []
        per = max(1, min(k, DRAW_ROWS // max(len(x), 1)))  # draws per pass: <= DRAW_ROWS rows
        for start in range(0, k, per):
            m = min(per, k - start)
            eps = torch.randn((m, *mean.shape), generator=g, device=g.device).to(mean)
            z = (mean + std * eps).flatten(0, 1)  # (m * n, *latent_shape), draw-major
            x_rep = x.repeat(m, *[1] * (x.ndim - 1))
            y_rep = {"y": y["y"].repeat(m)} if y else {}
            log_px.append(ae.decoder_log_prob(x_rep, z).view(m, len(x)))
            log_pz.append(self.prior.log_prob(z.flatten(1), **y_rep, **options).view(m, len(x)))
        return elbo_with_prior(torch.cat(log_px).T, torch.cat(log_pz).T, gaussian_entropy(log_var))

    # -- the folder --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write path/autoencoder/ and path/prior/ (each part's own model folder), then
        path/config.json + path/model.safetensors holding the whole model as one atomic
        version (what `genlab.load(path)` reads; see the module docstring).

        Raises:
            NotFittedError: before fit.
        """
        self.check_is_fitted()
        folder = Path(path)
        for name in PARTS:
            getattr(self, name).save(folder / name)
        return super().save(folder)

    def extra_repr(self) -> str:
        return f"prior={self.config.prior!r}, latent_kind={self.latent_kind_!r}"


# -- helpers ---------------------------------------------------------------------------------------
def _family(name: str, role: str) -> type[GenerativeModel]:
    """The registered family `name` (the prior's, or the autoencoder's).

    Raises:
        ValueError: an unknown name (the message lists the families), or the latent family.
    """
    from genlab.models import import_families

    families = import_families()
    if name not in families or families[name] is Latent:
        known = ", ".join(sorted(f for f in families if families[f] is not Latent))
        raise ValueError(f"the {role} must be a registered family ({known}), got {name!r}")
    return families[name]


def _check_autoencoder(model: GenerativeModel) -> None:
    """A fitted model with the autoencoder interface (encode, decode, latent_kind, ...).

    Raises:
        NotFittedError: an autoencoder not fitted yet.
        TypeError: a model without the autoencoder's methods.
    """
    needed = ("encode", "decode", "posterior", "decoder_log_prob", "latent_kind", "latent_shape")
    if not all(hasattr(type(model), a) or hasattr(model, a) for a in needed[:4]):
        raise TypeError(
            f"autoencoder must be a genlab autoencoder (encode, decode, decoder_log_prob), got "
            f"a {type(model).__name__}"
        )
    if not model.is_fitted:
        raise NotFittedError("the autoencoder is not fitted: fit it first, or pass its options")


def fit_part(
    cls: type[GenerativeModel], data: Dataset, y: Tensor | None, *, seconds: float | None,
    steps: int | None, seed: int, device: str | None, progress: bool | None,
    options: Mapping[str, Any],
) -> tuple[GenerativeModel, dict[str, Any]]:  # fmt: skip
    """Fit one part on `data` within a budget: without labels and with a budget, the family's
    own `fit_for_budget` (the GMM's BIC sweep, a neural family's validation and best weights);
    otherwise the family constructed with the budget (the fields it has) and fitted on (x, y).
    Returns (model, details with "steps")."""
    if y is None and (seconds is not None or steps is not None):
        return cls.fit_for_budget(data, Budget(seconds, steps, seed, device, bool(progress),
                                               dict(options)))  # fmt: skip
    names = {f.name for f in dataclasses.fields(cls.config_class)}
    kwargs: dict[str, Any] = {"seed": seed} if "seed" in names else {}
    budget = {"max_time": seconds, "max_steps": steps}
    kwargs |= {k: v for k, v in budget.items() if v is not None and k in names}
    model = cls(**{**kwargs, **options}, device=device).fit(data, y, progress=progress)
    result = getattr(model, "train_result_", None)
    return model, {"steps": None if result is None else result.steps}
