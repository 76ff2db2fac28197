"""Gaussian mixtures fitted by maximum likelihood with EM, every component batched.

    log p(x) = logsumexp_k [ log w_k + log N(x | mu_k, Sigma_k) ]        (exact, nats)

The maths (feature maps phi(z), natural parameters Theta, the E- and M-steps, k-means++) are
pure functions in `genlab.models.gmm_maths`; this module runs the loop: an E-step is one
matrix product Theta phi(Z)^T and a log-sum-exp over chunks of rows, so memory is set by
`chunk_size`, not by n; statistics are summed in float64 and, under `torch.distributed`,
all-reduced across processes. `GaussianMixture.sweep` fits one mixture per number of
components (model selection by BIC, and the components-vs-dimension study).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from genlab.data.dataset import ArrayLike, Dataset
from genlab.distributed import all_gather_padded, all_reduce, is_distributed, rank_and_world
from genlab.models import gmm_selection, limits
from genlab.models.base import (
    Budget,
    ConvergenceWarning,
    GenerativeModel,
    as_data,
    check_finite,
    check_memory,
    iter_chunks,
    resolve_dtype,
)
from genlab.models.gmm_maths import (  # re-exported: the maths' public home is gmm_maths
    FEATURES,
    Params,
    _Scratch,
    component_noise,
    covariance_shape,
    covariances_from_precisions,
    dense_covariances,
    e_step,
    initial_responsibilities,
    m_step,
    n_features,
    n_free_parameters,
    natural_parameters,
    positive_definite,
    precision_cholesky,
)
from genlab.options import Choice, Flag, Integer, Real, option, validate
from genlab.solvers import local_generator

__all__ = [  # and, from gmm_maths, the maths that callers import from here
    "COVARIANCE_TYPES",
    "FEATURES",
    "INIT_METHODS",
    "CovarianceType",
    "GMMConfig",
    "GaussianMixture",
    "InitMethod",
    "n_features",
    "natural_parameters",
    "precision_cholesky",
]

CovarianceType = Literal["full", "tied", "diag", "spherical"]
InitMethod = Literal["kmeans", "k-means++", "random", "random_from_data"]
COVARIANCE_TYPES: tuple[str, ...] = get_args(CovarianceType)
INIT_METHODS: tuple[str, ...] = get_args(InitMethod)
INIT_SAMPLE = 100_000  # rows on which the initial parameters are computed
DEAD_MASS = 1e-3  # a component with less total responsibility than this is re-seeded
CHUNK_ROWS = 4096  # default rows per chunk: its K x n scratch stays in cache (measured best)
FEATURE_BUDGET = 2**23  # at most this many elements of phi(z) per chunk by default
MAX_INITS = 1000  # n_init: each initialisation is a whole EM run


@dataclass(frozen=True)
class GMMConfig:
    """The mixture's options (what config.json stores and `genlab fit gmm` offers)."""

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
    max_iter: int = option(100, "EM iterations per initialisation.", Integer(0))
    n_init: int = option(
        1, "Initialisations; the one with the best likelihood is kept.", Integer(1, MAX_INITS)
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
    dequantize: bool = option(
        True,
        "Fit quantised images (digits, MNIST) on uniformly dequantised pixels (k + u) / levels.",
        Flag(),
    )

    def __post_init__(self) -> None:
        validate(self)


class GaussianMixture(GenerativeModel, family="gmm"):
    """A mixture of K Gaussians fitted by EM; `log_prob` is exact (nats).

    Args:
        n_components: K.
        covariance_type: "full" (K, D, D), "tied" one (D, D), "diag" (K, D), "spherical" (K,).
        tol: stop when the mean log-likelihood (the EM lower bound) changes by less than this.
        reg_covar: added to every covariance's diagonal (keeps them positive definite).
        max_iter: EM iterations per initialisation.
        n_init: initialisations; the one with the highest final lower bound is kept.
        init: "kmeans" (k-means++ seeding then 10 Lloyd steps), "k-means++" (seeding only),
            "random" (random responsibilities) or "random_from_data" (K random points as means);
            computed on at most 100,000 rows drawn with `seed`.
        seed: seed of the initialisation's random choices.
        dtype: precision of the chunk products ("float64": scikit-learn's answers to
            round-off; "float32": faster; covariance entries then carry an
            error of about 1e-7 * |mu_k - mean|^2 from float32 products). Chunk
            statistics are summed, and M-steps computed, in float64. Covariances from raw
            second moments lose ~eps * |mu|^2 / sigma^2 to cancellation: where float32
            statistics give a covariance that is not positive definite, that iteration and
            the rest of the run use float64 statistics.
        chunk_size: rows per chunk of the E/M passes (peak memory ~ chunk_size * p elements,
            p = 1 + D + D(D+1)/2 for full); default 4096 rows, fewer when p is large.
        dequantize: fit a Dataset of quantised images on its dequantised pixels (see `fit`).
        device: "cuda", "cpu" or None (cuda when present).
        weights_init, means_init, precisions_init: optional starting values (scikit-learn's
            shapes); they replace what `init` computes. Not saved with the model.

    Fitted attributes (tensors, float64): `weights_`, `means_`, `covariances_`,
    `precisions_cholesky_`, `precisions_`; `converged_`, `n_iter_`, `lower_bound_` and
    `lower_bounds_` (mean log-likelihood in nats at each E-step of the kept run).
    Under `torch.distributed`, each process passes its shard of the data to `fit`; statistics
    are all-reduced, so every process ends with the model fitted to the union of the shards.
    """

    config_class = GMMConfig
    fitted_facts = ("converged", "n_iter", "lower_bound", "lower_bounds")
    log_prob_kind = "exact"
    positional: ClassVar[tuple[str, ...]] = ("n_components",)
    component_study: ClassVar[bool] = True

    def __init__(
        self,
        *args: Any,
        device: str | torch.device | None = None,
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        **options: Any,
    ):
        super().__init__(*args, device=device, **options)
        self.weights_init, self.means_init = weights_init, means_init
        self.precisions_init = precisions_init
        self.converged_, self.n_iter_ = False, 0
        self.lower_bound_, self.lower_bounds_ = -math.inf, []

    # -- state ----------------------------------------------------------------------------------
    @property
    def compute_dtype(self) -> torch.dtype:
        return resolve_dtype(self.config.dtype)

    def _cov_shape(self, d: int) -> tuple[int, ...]:
        return covariance_shape(self.config.covariance_type, self.config.n_components, d)

    def _build(self, event_shape: tuple[int, ...], fitted: dict[str, Any]) -> None:
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

    def _set_params(self, p: Params, centre: torch.Tensor, check: bool = True) -> None:
        """Store parameters (means back in data coordinates); check=False tolerates a collapsed
        covariance for one pass (its component is about to be re-seeded)."""
        self.weights_ = p.weights
        self.means_ = p.means + centre
        self.covariances_ = p.covariances
        ct = self.config.covariance_type
        try:
            self.precisions_cholesky_ = precision_cholesky(p.covariances, ct)
        except ValueError:
            if check:
                raise

    @property
    def precisions_(self) -> torch.Tensor:
        """P = U U^T in the covariance type's shape."""
        self.check_is_fitted()
        u = self.precisions_cholesky_
        return u @ u.mT if self.config.covariance_type in ("full", "tied") else u**2

    @property
    def n_dims(self) -> int:
        return int(np.prod(self.event_shape)) if self.event_shape is not None else 0

    @property
    def n_parameters(self) -> int:
        """Free parameters: K-1 weights, K*D means and the covariances' free entries."""
        self.check_is_fitted()
        return n_free_parameters(self.config.covariance_type, self.config.n_components, self.n_dims)

    def _check_size(self, d: int, n: int = CHUNK_ROWS) -> None:
        """Refuse, before allocating, a mixture whose parameters (covariances and their
        precision factors) and E-step scratch (features phi (p, chunk), statistics (K, p),
        logits (K, chunk), chunks of at most n rows) would not fit in memory, in float64.

        Raises:
            ValueError: naming the memory it would need.
        """
        ct, k = self.config.covariance_type, self.config.n_components
        p, chunk = n_features(ct, d), min(self._chunk_size(d), n)
        cov = math.prod(self._cov_shape(d))
        elements = 2.0 * cov + k * d + k + 2.0 * p * chunk + k * p + 2.0 * k * chunk
        check_memory(
            8.0 * elements, f"a {ct} mixture of {k:,} components in {d:,} dimensions",
            "use fewer components, covariance_type='diag', or fewer dimensions",
        )  # fmt: skip

    # -- passes over the data -------------------------------------------------------------------
    def _chunk_size(self, d: int) -> int:
        p = n_features(self.config.covariance_type, d)
        return self.config.chunk_size or max(256, min(CHUNK_ROWS, FEATURE_BUDGET // p))

    def _rows(self, x: ArrayLike, centre: torch.Tensor, dtype: torch.dtype):
        """Yield (start, z) with z = x[start:start+chunk] - centre, flattened, in `dtype`."""
        d = centre.numel()
        for start, chunk in iter_chunks(x, self._chunk_size(d)):
            z = chunk.reshape(len(chunk), d).to(self.device, dtype, copy=True)
            yield start, z.sub_(centre.to(dtype))

    def _theta(self, centre: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        nu = self.means_ - centre
        ct = self.config.covariance_type
        theta = natural_parameters(self.weights_.log(), nu, self.precisions_cholesky_, ct)
        return theta.to(dtype or self.compute_dtype)

    def _em_pass(self, x: ArrayLike, centre: torch.Tensor, theta: torch.Tensor, exact: bool):
        """One E-step over all rows: (sum of log p(x), statistics R^T phi (K, p)), float64.

        exact: build phi(z) and its statistics product in float64 (else in the compute dtype,
        each chunk's product then summed in float64).
        """
        ct, (k, p) = self.config.covariance_type, theta.shape
        f64, low = torch.float64, theta.dtype
        high = f64 if exact else low
        stats = torch.zeros(k, p, dtype=f64, device=self.device)
        total = torch.zeros((), dtype=f64, device=self.device)
        buf = _Scratch(self.device)
        for _, z in self._rows(x, centre, high):
            m = len(z)
            phi_t = FEATURES[ct](z, out=buf("phi", (p, m), high))
            phi_low = phi_t if low == high else buf("phi_low", (p, m), low).copy_(phi_t)
            lp, resp_t = e_step(phi_low, theta, out=buf("logits", (k, m), low))
            if high == f64:
                resp64 = resp_t if low == f64 else buf("resp64", (k, m), f64).copy_(resp_t)
                stats.addmm_(resp64, phi_t.T)
            else:
                stats += torch.mm(resp_t, phi_t.T, out=buf("stats_low", (k, p), low))
            total += lp.sum(dtype=f64)
        return total, stats

    def _em_step(self, x: ArrayLike, n: int, centre: torch.Tensor, exact: bool):
        """E-step statistics and M-step parameters: (sum log p(x), stats, Params, exact).

        With exact=False the statistics come from float32 products first; if they give a
        covariance that is not positive definite (cancellation in S2/N - mu mu^T on a
        near-degenerate component) the pass is redone with float64 statistics, and the
        returned `exact` is True so that the caller stays in float64 from then on.
        """
        cfg, theta = self.config, self._theta(centre)
        for in_float64 in dict.fromkeys([exact, True]):
            total, stats = self._em_pass(x, centre, theta, in_float64)
            all_reduce(total), all_reduce(stats)
            p = m_step(stats, cfg.covariance_type, cfg.reg_covar, self.n_dims)
            if in_float64 or positive_definite(p.covariances, cfg.covariance_type):
                break
        return total, stats, p, in_float64

    def _worst_rows(self, x: ArrayLike, centre: torch.Tensor, k: int):
        """The k rows with the lowest log-density (log p, centred rows), for re-seeding."""
        theta = self._theta(centre)
        worst_lp = torch.empty(0, dtype=theta.dtype, device=self.device)
        worst_z = torch.empty(0, centre.numel(), dtype=torch.float64, device=self.device)
        for _, z in self._rows(x, centre, torch.float64):
            lp, _ = e_step(FEATURES[self.config.covariance_type](z).to(theta.dtype), theta)
            lp, z = torch.cat([worst_lp, lp]), torch.cat([worst_z, z])
            idx = lp.topk(min(k, len(lp)), largest=False).indices
            worst_lp, worst_z = lp[idx], z[idx]
        return worst_lp, worst_z

    def _scan(self, x: ArrayLike, d: int) -> tuple[int, torch.Tensor]:
        """Count rows, reject NaN/inf and values whose squares EM cannot sum in the compute
        dtype, and return (n, mean) over all processes."""
        n = torch.zeros((), dtype=torch.float64, device=self.device)
        total = torch.zeros(d, dtype=torch.float64, device=self.device)
        top = torch.full((2, d), -math.inf, dtype=torch.float64, device=self.device)
        for start, chunk in iter_chunks(x, self._chunk_size(d)):
            chunk = chunk.reshape(len(chunk), d).to(self.device, torch.float64)
            try:
                check_finite(chunk)
            except ValueError as e:
                raise ValueError(str(e).replace("row ", f"row {start} + ")) from None
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
        """EM sums n squared centred rows: refuse data whose largest distance from the mean
        (`spread`, per dimension) would overflow the compute dtype there.

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
            f"x has values up to {float(spread.max()):.3g} from its mean: EM's second moments "
            f"of them overflow {self.config.dtype}; {fix}"
        )

    def _init_sample(self, x: ArrayLike, n_total: int, g: torch.Generator) -> torch.Tensor:
        """The same <= 100k-row sample on every process (rows of the concatenated shards)."""
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
        return all_reduce(sample)

    # -- fit -------------------------------------------------------------------------------------
    def fit(self, x: Any, y: Any = None, *, progress: bool | None = None) -> GaussianMixture:
        """Fit by EM (`y` is ignored).

        Args:
            x: (n, *event_shape) Tensor, array, NpyArray or Dataset. A Dataset of quantised
                images (`levels` set: digits, MNIST) is fitted on its pixels dequantised once,
                (k + u) / levels (config.dequantize; the noise is drawn with seed + 1, apart
                from evaluation's dequantisation of test points with the seed itself).
            progress: a tqdm bar of the EM iterations (None: only on a TTY).
        """
        cfg = self.config
        if isinstance(x, str) or (isinstance(x, Dataset) and x.kind == "text"):
            raise ValueError("GaussianMixture models numbers (points or images), not text")
        if cfg.dequantize:
            x = gmm_selection.dequantized_rows(x, None if cfg.seed is None else cfg.seed + 1)
        x, _, event_shape = as_data(x, y)
        self._build(event_shape, {})
        self.event_shape = event_shape
        d = self.n_dims
        n, centre = self._scan(x, d)
        self._check_size(d, n)
        if n < cfg.n_components:
            raise ValueError(
                f"n_samples={n} should be >= n_components={cfg.n_components}; "
                "use fewer components or more data"
            )
        g = local_generator(cfg.seed)  # on the CPU; None: OS entropy, never the global RNG
        best = None
        for run in range(cfg.n_init):
            sample = self._init_sample(x, n, g)
            self._initialise(sample - centre, centre, g)
            history = self._run_em(x, n, centre, progress, run)
            if best is None or history[-1] > best[1][-1]:
                best = ({k: v.clone() for k, v in self.state_dict().items()}, history,
                        self.converged_)  # fmt: skip
        state, history, converged = best
        self.load_state_dict(state)
        self.lower_bound_ = history[-1]
        self.lower_bounds_ = history if cfg.max_iter > 0 else []
        self.converged_, self.n_iter_ = converged, len(self.lower_bounds_)
        if not converged and cfg.max_iter > 0:
            warnings.warn(
                f"EM did not converge in {cfg.max_iter} iterations (tol={cfg.tol}); "
                "raise max_iter or tol, or check the data's scale",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _initialise(self, z: torch.Tensor, centre: torch.Tensor, g: torch.Generator) -> None:
        """First M-step on the centred init sample, then the user's starting values."""
        cfg, d = self.config, self.n_dims
        resp = initial_responsibilities(z, cfg.n_components, cfg.init, g)
        stats = (FEATURES[cfg.covariance_type](z) @ resp).T
        p = m_step(stats, cfg.covariance_type, cfg.reg_covar, d)
        self._set_params(p, centre)
        self._apply_user_init(d)

    def _apply_user_init(self, d: int) -> None:
        ct, k = self.config.covariance_type, self.config.n_components
        f64 = {"dtype": torch.float64, "device": self.device}
        if self.weights_init is not None:
            w = torch.as_tensor(np.asarray(self.weights_init), **f64)
            if w.shape != (k,) or (w < 0).any() or abs(float(w.sum()) - 1) > 1e-6:
                raise ValueError(f"weights_init must be ({k},), non-negative and sum to 1")
            self.weights_ = w
        if self.means_init is not None:
            mu = torch.as_tensor(np.asarray(self.means_init), **f64)
            if mu.shape != (k, d) or not torch.isfinite(mu).all():
                raise ValueError(f"means_init must be a finite ({k}, {d}) array")
            self.means_ = mu
        if self.precisions_init is not None:
            prec = torch.as_tensor(np.asarray(self.precisions_init), **f64)
            if prec.shape != self._cov_shape(d):
                raise ValueError(f"precisions_init must have shape {self._cov_shape(d)} for {ct}")
            cov = covariances_from_precisions(prec, ct)
            self.covariances_ = cov
            self.precisions_cholesky_ = precision_cholesky(cov, ct)

    def _run_em(self, x: ArrayLike, n: int, centre: torch.Tensor, progress, run: int) -> list:
        cfg = self.config
        history: list[float] = []
        exact = self.compute_dtype == torch.float64  # float32 runs switch once they must
        self.converged_ = False
        show = progress if rank_and_world()[0] == 0 else False
        bar = tqdm(
            range(cfg.max_iter),
            desc=f"EM {run + 1}/{cfg.n_init}" if cfg.n_init > 1 else "EM",
            disable=(not show) if show is not None else None,
            leave=False,
        )
        for _ in bar:
            total, stats, p, exact = self._em_step(x, n, centre, exact)
            history.append(float(total.item()) / n)
            if (stats[:, 0] < DEAD_MASS).any():
                self._set_params(p, centre, check=False)
                p = self._reseed_dead(
                    p, stats[:, 0], self._worst_rows(x, centre, cfg.n_components), n
                )
            self._set_params(p, centre)
            change = history[-1] - history[-2] if len(history) > 1 else math.inf
            bar.set_postfix(loglik=f"{history[-1]:.5f}", change=f"{change:.2e}")
            if abs(change) < cfg.tol:
                self.converged_ = True
                break
        bar.close()
        if not history:  # max_iter=0: the initial parameters' mean log-likelihood ranks runs
            total, _ = self._em_pass(x, centre, self._theta(centre), exact=True)
            history.append(float(all_reduce(total).item()) / n)
        return history

    def _reseed_dead(self, p: Params, mass: torch.Tensor, worst, n: int) -> Params:
        """Move components with total responsibility < DEAD_MASS onto the worst-explained rows."""
        dead = (mass < DEAD_MASS).nonzero().flatten()
        worst_lp, worst_z = all_gather_padded(*worst, self.config.n_components)
        order = worst_lp.argsort()[: len(dead)]
        means, weights, cov = p.means.clone(), p.weights.clone(), p.covariances.clone()
        means[dead[: len(order)]] = worst_z[order].double()
        alive = mass >= DEAD_MASS
        if self.config.covariance_type != "tied":
            cov[dead] = cov[alive].mean(0) if alive.any() else cov[dead]
        weights[dead] = 1.0 / n
        return Params(weights / weights.sum(), means, cov)

    # -- the fitted density ---------------------------------------------------------------------
    def _prepare(self, x: Any) -> tuple[ArrayLike, torch.Tensor, torch.Tensor]:
        self.check_is_fitted()
        x, _, _ = as_data(x)
        self.check_event_shape(x)
        centre = self.weights_ @ self.means_
        return x, centre, self._theta(centre)

    def _map_rows(self, x: Any, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        """fn(log p (m,) float64, responsibilities R^T (K, m)) over chunks of rows of x.

        The E-step runs in the compute dtype; rows whose features overflow it (a float32
        mixture asked about a point ~1e19 out) are redone in float64, so every finite row
        gets its exact value (`log_prob` refuses one beyond the range of the dtype).

        Raises:
            ValueError: a row holds NaN/inf, or lies so far out that float64 overflows too.
        """
        x, centre, theta = self._prepare(x)
        ct, d, low, theta64 = self.config.covariance_type, self.n_dims, self.compute_dtype, None
        out = []
        for start, chunk in iter_chunks(x, self._chunk_size(d)):
            chunk = chunk.reshape(len(chunk), d).to(self.device)
            try:
                check_finite(chunk)
            except ValueError as e:
                raise ValueError(str(e).replace("row ", f"row {start} + ")) from None
            lp, resp_t = e_step(FEATURES[ct](chunk.to(low) - centre.to(low)), theta)
            lp = lp.double()
            bad = ~torch.isfinite(lp)
            if bool(bad.any()):
                theta64 = self._theta(centre, torch.float64) if theta64 is None else theta64
                lp64, resp64 = e_step(FEATURES[ct](chunk[bad].double() - centre), theta64)
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
        """Exact log-density log p(x) in nats: (n,) for x of shape (n, *event_shape), in the
        compute dtype (config.dtype).

        Raises:
            ValueError: a row so far from the mixture that its log-density is beyond the
                range of the compute dtype (`limits.log_prob_result`).
        """
        return limits.log_prob_result(self._map_rows(x, lambda lp, _: lp), self.compute_dtype)

    @torch.no_grad()
    def predict_proba(self, x: Any) -> torch.Tensor:
        """Posterior component probabilities p(k | x): (n, K)."""
        return self._map_rows(x, lambda _, resp_t: resp_t.T)

    @torch.no_grad()
    def predict(self, x: Any) -> torch.Tensor:
        """Most probable component of each row: (n,) int64."""
        return self._map_rows(x, lambda _, resp_t: resp_t.argmax(0))

    def score(self, x: Any) -> float:
        """Mean log-likelihood per sample, nats."""
        return float(self.log_prob(x).double().mean())

    def bic(self, x: Any) -> float:
        """Bayesian information criterion -2 log L + p log n (lower is better)."""
        lp = self.log_prob(x).double()
        return float(-2 * lp.sum() + self.n_parameters * math.log(len(lp)))

    def aic(self, x: Any) -> float:
        """Akaike information criterion -2 log L + 2p (lower is better)."""
        return float(-2 * self.log_prob(x).double().sum() + 2 * self.n_parameters)

    @torch.no_grad()
    def sample(self, n: int, *, seed: int | None = None, return_labels: bool = False):
        """n draws: a component k ~ Categorical(w), then x ~ N(mu_k, Sigma_k).

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
    def ellipses_2d(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(means (K, 2), covariances (K, 2, 2) whatever the covariance type, weights (K,)) on
        the CPU, for pictures of a 2-D mixture; None for other dimensions."""
        self.check_is_fitted()
        if self.n_dims != 2:
            return None
        cov = dense_covariances(self.covariances_, self.config.covariance_type,
                                self.config.n_components, 2)  # fmt: skip
        return self.means_.cpu(), cov.cpu(), self.weights_.cpu()

    def fit_curve(self) -> tuple[str, list[float]] | None:
        return ("mean log-likelihood (nats)", self.lower_bounds_) if self.lower_bounds_ else None

    def fit_summary(self) -> dict[str, Any]:
        return {"iterations": self.n_iter_, "converged": self.converged_}

    # -- model selection (`gmm_selection`) -----------------------------------------------------
    @classmethod
    def sweep(cls, x: Any, components: Sequence[int], **options: Any) -> list[dict[str, Any]]:
        """One mixture per K: the one fitting path of model selection and of the
        components-vs-dimension study (`genlab.models.gmm_selection.sweep`)."""
        return gmm_selection.sweep(cls, x, components, **options)

    @classmethod
    def fit_for_budget(cls, data: Dataset, budget: Budget) -> tuple[GaussianMixture, dict]:
        """The lowest-BIC mixture of a sweep within the budget (`gmm_selection.by_bic`)."""
        return gmm_selection.by_bic(cls, data, budget)
