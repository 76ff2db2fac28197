"""What the two Gaussian-mixture families share: the options, the buffers, the chunked passes.

`GaussianMixture` (EM, `genlab.models.gmm`) and `BayesianGaussianMixture` (variational
inference, `genlab.models.bgmm`) both hold a point-estimate mixture (weights_, means_,
covariances_, precisions_cholesky_) and read their data the same way: chunks of rows checked
for NaN/inf (`_checked_chunks`), centred at the data mean (`_rows`), an E-step per chunk on one
of two paths (`estep_`: features phi(z), or whitened residuals at large D), a <= 100,000-row
sample for the initialisation (`_init_draw`), and the fitted density mapped over chunks
(`_map_rows`: log_prob, predict_proba, predict, sample). Each family adds its own loop (EM's,
or coordinate ascent on the lower bound) and its own statistics; the maths stays in
`genlab.models.gmm_maths` (after scikit-learn's `BaseMixture` in `sklearn/mixture/_base.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch
import torch.distributed as dist

from genlab.data.dataset import ArrayLike, Dataset
from genlab.distributed import all_reduce, is_distributed, rank_and_world
from genlab.models import gmm_selection, limits
from genlab.models.base import (
    GenerativeModel,
    as_data,
    check_finite,
    check_memory,
    iter_chunks,
    resolve_dtype,
)
from genlab.models.gmm_maths import (
    FEATURES,
    Whitening,
    cheaper_estep,
    component_noise,
    covariance_shape,
    e_step,
    n_features,
    n_free_parameters,
    natural_parameters,
    residual_e_step,
    second_moments_shape,
    whitening,
    whitening_to,
)
from genlab.options import Choice, Flag, Integer, Real, option, validate

__all__ = [
    "COVARIANCE_TYPES",
    "INIT_METHODS",
    "CovarianceType",
    "InitMethod",
    "MixtureBase",
    "MixtureConfig",
    "estep_parameters",
]

CovarianceType = Literal["full", "tied", "diag", "spherical"]
InitMethod = Literal["kmeans", "k-means++", "random", "random_from_data"]
COVARIANCE_TYPES: tuple[str, ...] = get_args(CovarianceType)
INIT_METHODS: tuple[str, ...] = get_args(InitMethod)
EStep = Literal["auto", "features", "residuals"]
ESTEP_CHOICES: tuple[str, ...] = get_args(EStep)
INIT_SAMPLE = 100_000  # rows on which the initial parameters are computed
CHUNK_ROWS = 4096  # default rows per chunk: its K x n scratch stays in cache (measured best)
FEATURE_BUDGET = 2**23  # at most this many elements of phi(z) per chunk by default
RESIDUAL_BUDGET = 2**21  # elements of the (rows, K, D) residuals per chunk (measured best)
MAX_INITS = 1000  # n_init: each initialisation is a whole run


@dataclass(frozen=True)
class MixtureConfig:
    """The options both mixture families take (each family's config adds its own)."""

    n_components: int = option(
        1, "Number of mixture components K.", Integer(1), flag="--components", short="-k"
    )
    covariance_type: CovarianceType = option(
        "full",
        "Covariance per component: full, one tied, diagonal or spherical.",
        Choice(COVARIANCE_TYPES),
        flag="--covariance",
    )
    tol: float = option(
        1e-3, "Stop when the mean log-likelihood (nats) changes by less than this.", Real(0)
    )
    reg_covar: float = option(1e-6, "Added to each covariance's diagonal.", Real(0))
    max_iter: int = option(100, "Iterations per initialisation.", Integer(0))
    n_init: int = option(
        1, "Initialisations; the one with the best fit is kept.", Integer(1, MAX_INITS)
    )
    init: InitMethod = option(
        "kmeans",
        "How the first parameters are chosen: kmeans, k-means++, random or random_from_data.",
        Choice(INIT_METHODS),
    )
    seed: int | None = option(
        0, "Seed of the initialisation and the dequantisation (None: fresh).",
        Integer(0, 2**63 - 1, optional=True),
    )  # fmt: skip
    dtype: Literal["float32", "float64"] = option(
        "float64",
        "Precision of the E-step (float64: scikit-learn's answers; float32: faster).",
        Choice(("float32", "float64")),
    )
    chunk_size: int | None = option(
        None, "Rows per chunk of the E/M passes (None: 4096, fewer when D is large).",
        Integer(1, optional=True),
    )  # fmt: skip
    estep: EStep = option(
        "auto",
        "E/M path: features phi(x) (small D), whitened residuals and Gram matrices (large D), "
        "or auto (a cost model picks).",
        Choice(ESTEP_CHOICES),
    )
    dequantize: bool = option(
        True,
        "Fit quantised images (digits, MNIST) on uniformly dequantised pixels (k + u) / levels.",
        Flag(),
    )

    def __post_init__(self) -> None:
        validate(self)


def estep_parameters(
    path: str,
    const: torch.Tensor,
    nu: torch.Tensor,
    u: torch.Tensor,
    covariance_type: str,
    dtype: torch.dtype,
) -> torch.Tensor | Whitening:
    """The E-step's parameters, in `dtype`, of logits const_k + log N(z | nu_k, (U_k U_k^T)^-1)
    on `path`: natural parameters Theta (K, p) ("features") or a `Whitening` ("residuals")."""
    if path == "residuals":
        return whitening_to(whitening(const, nu, u, covariance_type), dtype)
    return natural_parameters(const, nu, u, covariance_type).to(dtype)


class MixtureBase(GenerativeModel):
    """A mixture of K Gaussians held as a point estimate (float64 buffers `weights_` (K,),
    `means_` (K, D), `covariances_` and `precisions_cholesky_` in the covariance type's shape),
    with the passes over chunks of rows that both families' fits use. A family subclasses it
    with `family=...`, its config (a `MixtureConfig`), its `fit` and its statistics."""

    log_prob_kind = "exact"
    positional: ClassVar[tuple[str, ...]] = ("n_components",)
    #: float64 numbers per component that the family keeps beyond weights and means
    component_scalars: ClassVar[int] = 1
    #: (chunk, K, D) arrays the family's residuals pass holds at once
    residual_arrays: ClassVar[int] = 4
    #: what `lower_bounds_` holds (the y label of `fit_curve`)
    bound_label: ClassVar[str] = "mean log-likelihood (nats)"

    def __init__(self, *args: Any, device: str | torch.device | None = None, **options: Any):
        super().__init__(*args, device=device, **options)
        self.converged_, self.n_iter_ = False, 0
        self.lower_bound_, self.lower_bounds_ = -math.inf, []

    # -- state ----------------------------------------------------------------------------------
    @property
    def compute_dtype(self) -> torch.dtype:
        return resolve_dtype(self.config.dtype)

    @property
    def n_dims(self) -> int:
        return int(np.prod(self.event_shape)) if self.event_shape is not None else 0

    def _cov_shape(self, d: int) -> tuple[int, ...]:
        return covariance_shape(self.config.covariance_type, self.config.n_components, d)

    def _build(self, event_shape: tuple[int, ...], fitted: dict[str, Any]) -> None:
        """The point-estimate buffers and the run's facts (converged, n_iter, lower bounds)."""
        d, k = int(np.prod(event_shape)), self.config.n_components
        self._check_size(d)
        f64 = {"dtype": torch.float64, "device": self.device_}
        self.register_buffer("weights_", torch.full((k,), 1.0 / k, **f64))
        self.register_buffer("means_", torch.zeros(k, d, **f64))
        self.register_buffer("covariances_", torch.ones(self._cov_shape(d), **f64))
        self.register_buffer("precisions_cholesky_", torch.ones(self._cov_shape(d), **f64))
        self.converged_ = bool(fitted.get("converged", False))
        self.n_iter_ = int(fitted.get("n_iter", 0))
        self.lower_bound_ = float(fitted.get("lower_bound", -math.inf))
        self.lower_bounds_ = [float(v) for v in fitted.get("lower_bounds", [])]

    @property
    def precisions_(self) -> torch.Tensor:
        """The precisions P = U U^T in the covariance type's shape."""
        self.check_is_fitted()
        u = self.precisions_cholesky_
        return u @ u.mT if self.config.covariance_type in ("full", "tied") else u**2

    @property
    def n_parameters(self) -> int:
        """Free parameters of the point-estimate mixture: K-1 weights, K*D means and the
        covariances' free entries (all K components)."""
        self.check_is_fitted()
        return n_free_parameters(self.config.covariance_type, self.config.n_components, self.n_dims)

    def _check_size(self, d: int, n: int = CHUNK_ROWS) -> None:
        """Choose the E/M path (`estep_`), then refuse, before allocating, a mixture whose
        parameters (covariances and their precision factors) and pass scratch would not fit in
        memory, in float64: features: phi (p, chunk), statistics (K, p) and logits (K, chunk);
        residuals: `residual_arrays` (chunk, K, D) arrays, the second moments (K, D, D) and the
        statistics (K, p); chunks of at most n rows.

        Raises:
            ValueError: naming the memory it would need.
        """
        ct, k = self.config.covariance_type, self.config.n_components
        self.estep_ = self._choose_estep(d)
        p, chunk = n_features(ct, d), min(self._chunk_size(d), n)
        cov = math.prod(self._cov_shape(d))
        elements = 2.0 * cov + k * d + self.component_scalars * k + k * p + 2.0 * k * chunk
        if self.estep_ == "features":
            elements += 2.0 * p * chunk
        else:
            elements += self.residual_arrays * k * d * chunk
            elements += math.prod(second_moments_shape(ct, k, d))
        check_memory(
            8.0 * elements, f"a {ct} mixture of {k:,} components in {d:,} dimensions",
            "use fewer components, covariance_type='diag', or fewer dimensions",
        )  # fmt: skip

    def _choose_estep(self, d: int) -> str:
        """config.estep, or for "auto" the path the cost model (`gmm_maths.estep_seconds`)
        predicts to be faster for this K, D, covariance type and compute dtype."""
        if self.config.estep != "auto":
            return self.config.estep
        itemsize = self.compute_dtype.itemsize
        return cheaper_estep(self.config.covariance_type, self.config.n_components, d, itemsize)

    # -- passes over the data -------------------------------------------------------------------
    def _chunk_size(self, d: int) -> int:
        """config.chunk_size, else rows such that the chunk's scratch holds about
        FEATURE_BUDGET elements of phi (features) or RESIDUAL_BUDGET of the (rows, K, D)
        residuals (residuals), between 256 (64) and CHUNK_ROWS rows."""
        if self.config.chunk_size:
            return self.config.chunk_size
        if getattr(self, "estep_", "features") == "residuals":
            return max(64, min(CHUNK_ROWS, RESIDUAL_BUDGET // (self.config.n_components * d)))
        p = n_features(self.config.covariance_type, d)
        return max(256, min(CHUNK_ROWS, FEATURE_BUDGET // p))

    def _rows(self, x: ArrayLike, centre: torch.Tensor, dtype: torch.dtype = torch.float64):
        """Yield (start, z) with z = x[start:start+chunk] - centre, flattened, in `dtype`."""
        d = centre.numel()
        for start, chunk in iter_chunks(x, self._chunk_size(d)):
            z = chunk.reshape(len(chunk), d).to(self.device, dtype, copy=True)
            yield start, z.sub_(centre.to(dtype))

    def _checked_chunks(
        self, x: ArrayLike, dtype: torch.dtype | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (start, rows (m, D) on the device, in `dtype` (None: x's)), refusing NaN/inf.

        Raises:
            ValueError: naming the first bad row of x.
        """
        d = self.n_dims
        for start, chunk in iter_chunks(x, self._chunk_size(d)):
            chunk = chunk.reshape(len(chunk), d).to(device=self.device, dtype=dtype)
            try:
                check_finite(chunk)
            except ValueError as e:
                raise ValueError(str(e).replace("row ", f"row {start} + ")) from None
            yield start, chunk

    def _theta(
        self, centre: torch.Tensor, dtype: torch.dtype | None = None, const: Any = None
    ) -> torch.Tensor | Whitening:
        """The E-step's parameters (`estep_parameters`) of the fitted mixture for data centred
        at `centre`, in `dtype` (default: the compute dtype), with logits' constants `const`
        (K,) (default: log w_k)."""
        const = self.weights_.log() if const is None else const
        return estep_parameters(self.estep_, const, self.means_ - centre,
                                self.precisions_cholesky_, self.config.covariance_type,
                                dtype or self.compute_dtype)  # fmt: skip

    def _log_terms(self, z: torch.Tensor, theta) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p (m,), R^T (K, m)) of centred rows z (in theta's dtype) on theta's path."""
        ct = self.config.covariance_type
        if isinstance(theta, Whitening):
            return residual_e_step(z, theta, ct)
        return e_step(FEATURES[ct](z), theta)

    def _scan(self, x: ArrayLike, d: int) -> tuple[int, torch.Tensor]:
        """Count rows, reject NaN/inf and values whose squares the passes cannot sum in the
        compute dtype, and return (n, mean) over all processes."""
        n = torch.zeros((), dtype=torch.float64, device=self.device)
        total = torch.zeros(d, dtype=torch.float64, device=self.device)
        top = torch.full((2, d), -math.inf, dtype=torch.float64, device=self.device)
        for _, chunk in self._checked_chunks(x, torch.float64):
            n += len(chunk)
            total += chunk.sum(0)
            top = torch.maximum(top, torch.stack([chunk.amax(0), -chunk.amin(0)]))
        all_reduce(n), all_reduce(total)
        if is_distributed():
            dist.all_reduce(top, op=dist.ReduceOp.MAX)
        mean = total / n
        self._check_spread(int(n.item()), (top + torch.stack([-mean, mean])).amax(0))
        return int(n.item()), mean

    def _check_spread(self, n: int, spread: torch.Tensor) -> None:
        """The passes sum n squared centred rows: refuse data whose largest distance from the
        mean (`spread`, per dimension) would overflow the compute dtype there.

        Raises:
            ValueError: naming the largest deviation and the fix.
        """
        need = n * float(spread.double().square().sum())
        if need <= torch.finfo(self.compute_dtype).max:
            return
        fix = "rescale the data (e.g. standardise each column)"
        if self.compute_dtype != torch.float64 and need <= torch.finfo(torch.float64).max:
            fix = f"use dtype='float64', or {fix}"
        raise ValueError(
            f"x has values up to {float(spread.max()):.3g} from its mean: the second moments "
            f"of them overflow {self.config.dtype}; {fix}"
        )

    def _numbers(self, x: Any, y: Any = None, seed: int | None = None):
        """(rows, event_shape) of fit's data: text refused, quantised images dequantised once
        (config.dequantize) with `seed` (default: config.seed + 1)."""
        if isinstance(x, str) or (isinstance(x, Dataset) and x.kind == "text"):
            raise ValueError(f"{type(self).__name__} models numbers (points or images), not text")
        cfg = self.config
        if cfg.dequantize:
            seed = seed if seed is not None or cfg.seed is None else cfg.seed + 1
            x = gmm_selection.dequantized_rows(x, seed)
        x, _, event_shape = as_data(x, y)
        return x, event_shape

    def _init_draw(
        self, x: ArrayLike, n_total: int, g: torch.Generator, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The same <= INIT_SAMPLE-row sample (m, D) float64 on every process (rows of the
        concatenated shards, drawn with g) and, with weights, the sampled rows' weights."""
        d = self.n_dims
        m = min(n_total, INIT_SAMPLE)
        chosen = torch.randperm(n_total, generator=g, device="cpu")[:m].sort().values
        rank, world = rank_and_world()
        sizes = torch.zeros(world, dtype=torch.float64, device=self.device)
        sizes[rank] = len(x)
        offset = int(all_reduce(sizes)[:rank].sum().item())
        mine = (chosen >= offset) & (chosen < offset + len(x))
        sample = torch.zeros(m, d, dtype=torch.float64, device=self.device)
        rows = x[(chosen[mine] - offset).numpy()] if mine.any() else None
        if rows is not None:
            sample[mine.to(self.device)] = rows.reshape(len(rows), d).to(self.device, torch.float64)
        if weights is None:
            return all_reduce(sample), None
        w = torch.zeros(m, dtype=torch.float64, device=self.device)
        w[mine.to(self.device)] = weights[chosen[mine] - offset].to(self.device)
        return all_reduce(sample), all_reduce(w)

    # -- the fitted density ---------------------------------------------------------------------
    @property
    def _map_dtype(self) -> torch.dtype:
        """The dtype of `_map_rows`'s E-step (the compute dtype)."""
        return self.compute_dtype

    def _responsibility_const(self, centre: torch.Tensor) -> torch.Tensor | None:
        """The logits' constants of `predict_proba` and `predict` (None: log w_k)."""
        return None

    def _prepare(self, x: Any) -> tuple[ArrayLike, torch.Tensor]:
        self.check_is_fitted()
        x, _, _ = as_data(x)
        self.check_event_shape(x)
        return x, self.weights_ @ self.means_

    def _map_rows(
        self,
        x: Any,
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        const_of: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """fn(log-normaliser (m,) float64, responsibilities R^T (K, m)) over chunks of rows of
        x, of the logits const_k + log N(x | mu_k, Sigma_k), const = const_of(centre) (default
        log w_k: log p and p(k | x)).

        The E-step runs on the fitted path (`estep_`) in `_map_dtype`; rows that overflow it
        (a float32 mixture asked about a point ~1e19 out) are redone in float64, so every
        finite row gets its exact value (`log_prob` refuses one beyond the range of the dtype).

        Raises:
            ValueError: a row holds NaN/inf, or lies so far out that float64 overflows too.
        """
        x, centre = self._prepare(x)
        const = None if const_of is None else const_of(centre)
        low = self._map_dtype
        theta, theta64 = self._theta(centre, low, const), None
        out = []
        for start, chunk in self._checked_chunks(x):
            lp, resp_t = self._log_terms(chunk.to(low) - centre.to(low), theta)
            lp = lp.double()
            bad = ~torch.isfinite(lp)
            if bool(bad.any()):
                theta64 = self._theta(centre, torch.float64, const) if theta64 is None else theta64
                lp64, resp64 = self._log_terms(chunk[bad].double() - centre, theta64)
                worst = limits.first_row(~torch.isfinite(lp64))
                if worst is not None:
                    raise ValueError(
                        f"row {start + int(bad.nonzero()[worst, 0])} of x lies so far from the "
                        "mixture that its log-density overflows float64; remove such rows or "
                        "rescale the data"
                    )
                lp[bad], resp_t[:, bad] = lp64, resp64.to(resp_t.dtype)
            out.append(fn(lp, resp_t))
        return torch.cat(out)

    @torch.no_grad()
    def log_prob(self, x: Any) -> torch.Tensor:
        """Exact log-density log p(x) = logsumexp_k [log w_k + log N(x | mu_k, Sigma_k)] in nats
        of the point-estimate mixture: (n,) for x of shape (n, *event_shape), in the compute
        dtype (config.dtype).

        Raises:
            ValueError: a row so far from the mixture that its log-density is beyond the
                range of the compute dtype (`limits.log_prob_result`).
        """
        return limits.log_prob_result(self._map_rows(x, lambda lp, _: lp), self.compute_dtype)

    @torch.no_grad()
    def predict_proba(self, x: Any) -> torch.Tensor:
        """Component probabilities of each row, the E-step's responsibilities: (n, K)."""
        return self._map_rows(x, lambda _, resp_t: resp_t.T, self._responsibility_const)

    @torch.no_grad()
    def predict(self, x: Any) -> torch.Tensor:
        """Most probable (responsible) component of each row: (n,) int64."""
        return self._map_rows(x, lambda _, resp_t: resp_t.argmax(0), self._responsibility_const)

    @torch.no_grad()
    def sample(self, n: int, *, seed: int | None = None, return_labels: bool = False):
        """n draws of the point-estimate mixture: k ~ Categorical(w), then x ~ N(mu_k, Sigma_k).

        The same seed gives the same samples; seed=None draws fresh ones.

        Returns:
            (n, *event_shape) samples in the compute dtype; with `return_labels`, also the
            (n,) int64 components.
        """
        self.check_is_fitted()
        n = self.check_sample_size(n)
        g = self.generator(seed)
        if n == 0:
            labels = torch.zeros(0, dtype=torch.long, device=self.device)
        else:
            labels = torch.multinomial(self.weights_, n, replacement=True, generator=g)
        z = torch.randn(n, self.n_dims, generator=g, device=self.device, dtype=torch.float64)
        noise = component_noise(z, labels, self.covariances_, self.config.covariance_type)
        x = (self.means_[labels] + noise).to(self.compute_dtype)
        if not bool(torch.isfinite(x).all()):  # the float64 draws are finite: a cast overflowed
            raise ValueError(
                f"samples of this mixture overflow {self.config.dtype} (its means or spread are "
                "beyond that range); fit it with dtype='float64', or rescale the data"
            )
        x = x.reshape(n, *self.event_shape)
        return (x, labels) if return_labels else x

    # -- what callers ask ------------------------------------------------------------------------
    def fit_curve(self) -> tuple[str, list[float]] | None:
        return (self.bound_label, self.lower_bounds_) if self.lower_bounds_ else None

    def fit_summary(self) -> dict[str, Any]:
        return {"iterations": self.n_iter_, "converged": self.converged_}


def check_sample_weight(sample_weight: Any, n: int) -> torch.Tensor | None:
    """Sample weights as a float64 CPU tensor of shape (n,) (a copy), validated; None stays None.

    Raises:
        TypeError: they are not real numbers.
        ValueError: not one per row, NaN or infinite, or negative (naming the first bad row).
    """
    if sample_weight is None:
        return None
    if isinstance(sample_weight, torch.Tensor):
        if sample_weight.is_complex():
            raise TypeError("sample_weight must hold real numbers, got complex ones")
        w = sample_weight.detach().to("cpu", torch.float64, copy=True)
    else:
        arr = np.asarray(sample_weight)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or (
            np.iscomplexobj(arr)
        ):
            raise TypeError(f"sample_weight must hold real numbers, got dtype {arr.dtype}")
        w = torch.from_numpy(arr.astype(np.float64, copy=True))
    if tuple(w.shape) != (n,):
        raise ValueError(
            f"sample_weight has shape {tuple(w.shape)}, but x has {n} rows: give one weight "
            f"per row, shape ({n},)"
        )
    bad = limits.first_row(~torch.isfinite(w))
    if bad is not None:
        raise ValueError(
            f"sample_weight[{bad}] is {float(w[bad])}: weights must be finite numbers >= 0"
        )
    bad = limits.first_row(w < 0)
    if bad is not None:
        raise ValueError(
            f"sample_weight[{bad}] = {float(w[bad]):g} is negative: weights must be >= 0 "
            "(a weight of 0 drops its row)"
        )
    return w
