"""Gaussian mixtures fitted by maximum likelihood with EM, every component batched.

    log p(x) = logsumexp_k [ log w_k + log N(x | mu_k, Sigma_k) ]        (exact, nats)

The maths (feature maps phi(z), natural parameters Theta, the E- and M-steps, k-means++) are
pure functions in `genlab.models.gmm_maths`; this module runs the loop: an E-step is one
matrix product Theta phi(Z)^T and a log-sum-exp over chunks of rows (at large D, whitened
residuals and Gram matrices instead: `estep`), so memory is set by `chunk_size`, not by n;
statistics are summed in float64 and, under `torch.distributed`,
all-reduced across processes. `GaussianMixture.sweep` fits one mixture per number of
components (model selection by BIC, and the components-vs-dimension study). The options, the
buffers, the chunks of rows, the initial sample and the fitted density are shared with the
Bayesian mixture (`genlab.models.mixture.MixtureBase`); EM's passes and loop live here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from genlab.data.dataset import ArrayLike, Dataset
from genlab.distributed import all_gather_padded, all_reduce, rank_and_world
from genlab.models import gmm_selection
from genlab.models.base import Budget, ConvergenceWarning
from genlab.models.gmm_maths import (  # re-exported: the maths' public home is gmm_maths
    FEATURES,
    Params,
    Whitening,
    _Scratch,
    add_second_moments,
    component_residuals,
    covariances_from_precisions,
    dense_covariances,
    e_step,
    feature_statistics,
    initial_responsibilities,
    m_step,
    n_features,
    natural_parameters,
    normalise_logits,
    precision_cholesky,
    precision_cholesky_or_none,
    residual_logits,
    residual_m_step,
    responsibility_statistics,
    second_moments_shape,
)
from genlab.models.gmm_online import OnlineEM
from genlab.models.mixture import (  # re-exported: callers import the options from here
    COVARIANCE_TYPES,
    INIT_METHODS,
    INIT_SAMPLE,
    RESIDUAL_BUDGET,
    CovarianceType,
    InitMethod,
    MixtureBase,
    MixtureConfig,
    check_sample_weight,
)
from genlab.options import Flag, Real, option
from genlab.solvers import local_generator

__all__ = [  # and, from gmm_maths and mixture, what callers import from here
    "COVARIANCE_TYPES",
    "FEATURES",
    "INIT_METHODS",
    "INIT_SAMPLE",
    "RESIDUAL_BUDGET",
    "CovarianceType",
    "GMMConfig",
    "GaussianMixture",
    "InitMethod",
    "n_features",
    "natural_parameters",
    "precision_cholesky",
]

DEAD_MASS = 1e-3  # a component with less total responsibility than this is re-seeded
# scikit-learn's wording (its users match on these texts); genlab's messages add their detail
NOT_CONVERGED = (
    "Best performing initialization did not converge. Try different init parameters, or "
    "increase max_iter, tol, or check for degenerate data."
)
ILL_DEFINED = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
    "number of components, increase reg_covar, or scale the input data."
)


class IllDefinedCovarianceError(ValueError):
    """EM gave a component a covariance that is not positive definite (it collapsed onto one
    point, or onto identical or collinear points); the message starts with `ILL_DEFINED`."""


@dataclass(frozen=True)
class GMMConfig(MixtureConfig):
    """The mixture's options (what config.json stores and `genlab fit gmm` offers): the
    shared ones (`MixtureConfig`), then EM's own."""

    warm_start: bool = option(
        False,
        "A second fit continues EM from the fitted parameters (one run, no initialisation).",
        Flag(),
        cli=False,
    )
    online_t0: float = option(
        1.0, "partial_fit's step offset t0 in rho_t = (t + t0)^-kappa (0: rho_1 = 1).",
        Real(0), cli=False,
    )  # fmt: skip
    online_kappa: float = option(
        0.6, "partial_fit's step decay kappa in rho_t = (t + t0)^-kappa.",
        Real(0.5, 1, low_open=True), cli=False,
    )  # fmt: skip


class GaussianMixture(OnlineEM, MixtureBase, family="gmm"):
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
            p = 1 + D + D(D+1)/2 for full, on the features path; ~3 chunk_size * K * D on the
            residuals path); default 4096 rows, fewer when p (K D) is large.
        estep: how the passes compute: "features" (the log-densities and statistics as
            products with phi(z), p columns: fastest at small D), "residuals" (whitened
            residuals (z - mu_k) U_k and weighted Gram matrices about the current means,
            batched over components: fastest at large D, and more accurate in float32) or
            "auto" (the cheaper by `gmm_maths.estep_seconds`, a cost model of this CPU; the
            choice is `estep_`). Both give the same answers to round-off.
        dequantize: fit a Dataset of quantised images on its dequantised pixels (see `fit`).
        warm_start: a second `fit` of a fitted model continues EM from its parameters (one
            run, no initialisation), its first change measured from the last `lower_bound_`
            (scikit-learn's `warm_start`).
        device: "cuda", "cpu" or None (cuda when present).
        weights_init, means_init, precisions_init: optional starting values (scikit-learn's
            shapes); they replace what `init` computes. Not saved with the model.

    Fitted attributes (tensors, float64): `weights_`, `means_`, `covariances_`,
    `precisions_cholesky_`, `precisions_`; `converged_`, `n_iter_`, `lower_bound_` and
    `lower_bounds_` (mean log-likelihood in nats at each E-step of the kept run); `estep_`
    (the E/M path used: "features" or "residuals", recomputed from the config on load).
    Under `torch.distributed`, each process passes its shard of the data to `fit`; statistics
    are all-reduced, so every process ends with the model fitted to the union of the shards.
    """

    config_class = GMMConfig
    fitted_facts = ("converged", "n_iter", "lower_bound", "lower_bounds")
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

    # -- state ----------------------------------------------------------------------------------
    def _build(self, event_shape: tuple[int, ...], fitted: dict[str, Any]) -> None:
        super()._build(event_shape, fitted)  # the point estimate's buffers (`MixtureBase`)
        self._build_online(fitted)  # partial_fit's state (gmm_online)

    def _set_params(self, p: Params, centre: torch.Tensor, check: bool = True) -> None:
        """Store parameters (means back in data coordinates); check=False tolerates a collapsed
        covariance for one pass (its component is about to be re-seeded). The precision
        factor comes from `_em_step`'s check when it factorised these very covariances."""
        self.weights_ = p.weights
        self.means_ = p.means + centre
        self.covariances_ = p.covariances
        ct = self.config.covariance_type
        done, self._factor = getattr(self, "_factor", None), None
        if done is not None and done[0] is p.covariances:  # `_em_step`'s check factorised them
            self.precisions_cholesky_ = done[1]
            return
        try:
            self.precisions_cholesky_ = precision_cholesky(p.covariances, ct)
        except ValueError:
            if check:
                raise

    # -- EM's passes over the data (the chunks of rows: `MixtureBase`) ---------------------------
    def _em_pass(
        self,
        x: ArrayLike,
        centre: torch.Tensor,
        theta,
        exact: bool,
        weights: torch.Tensor | None = None,
    ):
        """One E-step over all rows: (sum of w_i log p(x_i), statistics sum_i w_i r_ik phi(z_i)
        (K, p)), float64, on the path of `theta` (`_theta`); w: the sample weights (n,)
        (None: ones).

        exact: compute the statistics' products in float64 (else in the compute dtype, each
        chunk's products then summed in float64).
        """
        if isinstance(theta, Whitening):
            total, (nk, s1, acc, about) = self._residual_pass(x, centre, theta, exact, weights)
            return total, feature_statistics(nk, s1, acc, self.config.covariance_type, about)
        ct, (k, p) = self.config.covariance_type, theta.shape
        f64, low = torch.float64, theta.dtype
        high = f64 if exact else low
        stats = torch.zeros(k, p, dtype=f64, device=self.device)
        total = torch.zeros((), dtype=f64, device=self.device)
        buf = _Scratch(self.device)
        for start, z in self._rows(x, centre, high):
            m = len(z)
            phi_t = FEATURES[ct](z, out=buf("phi", (p, m), high))
            phi_low = phi_t if low == high else buf("phi_low", (p, m), low).copy_(phi_t)
            lp, resp_t = e_step(phi_low, theta, out=buf("logits", (k, m), low))
            if high == f64:
                resp64 = resp_t if low == f64 else buf("resp64", (k, m), f64).copy_(resp_t)
                if weights is not None:
                    w = weights[start : start + m].to(self.device, f64)
                    resp64.mul_(w)
                    lp = lp * w
                stats.addmm_(resp64, phi_t.T)
            else:
                if weights is not None:
                    w = weights[start : start + m].to(self.device, f64)
                    resp_t.mul_(w.to(low))
                    lp = lp * w
                stats += torch.mm(resp_t, phi_t.T, out=buf("stats_low", (k, p), low))
            total += lp.sum(dtype=f64)
        return total, stats

    def _residual_pass(
        self,
        x: ArrayLike,
        centre: torch.Tensor,
        white: Whitening,
        exact: bool,
        weights: torch.Tensor | None,
    ):
        """`_em_pass` on the residuals path: the E-step from whitened residuals, the
        statistics N_k = sum r, S1_k = sum r z and the second moments from weighted Gram
        matrices (`gmm_maths.add_second_moments`; full: about the current means nu_k, from the
        residuals z - nu_k that the E-step used): (sum w log p, (N (K,), S1 (K, D), the
        accumulator, the means the Gram matrices are about (K, D) float64 or None)), all
        float64; `gmm_maths.feature_statistics` lays them out as R^T phi, and
        `gmm_maths.residual_m_step` takes them as they are."""
        ct, k, d = self.config.covariance_type, white.const.numel(), centre.numel()
        f64, low = torch.float64, white.const.dtype
        high = f64 if exact else low
        nk = torch.zeros(k, dtype=f64, device=self.device)
        s1 = torch.zeros(k, d, dtype=f64, device=self.device)
        acc = torch.zeros(second_moments_shape(ct, k, d), dtype=f64, device=self.device)
        total = torch.zeros((), dtype=f64, device=self.device)
        about = white.means.to(high)
        for start, z in self._rows(x, centre, high):
            dz = component_residuals(z, about) if ct in ("full", "diag", "spherical") else None
            dz_low = None if dz is None else dz.to(low)
            lp, resp = normalise_logits(residual_logits(z.to(low), white, ct, dz_low))
            resp = resp.to(high)
            if weights is not None:
                w = weights[start : start + len(z)].to(self.device, f64)
                resp.mul_(w.to(high).unsqueeze(1))
                lp = lp * w
            total += lp.sum(dtype=f64)
            nk += resp.sum(0, dtype=f64)
            s1 += resp.T @ z
            add_second_moments(acc, z, resp, ct, white.blocks, dz if ct == "full" else None)
        about = about.to(f64) if ct == "full" else None
        return total, (nk, s1, acc, about)

    def _em_step(
        self,
        x: ArrayLike,
        n: float,
        centre: torch.Tensor,
        exact: bool,
        weights: torch.Tensor | None = None,
    ):
        """E-step statistics and M-step parameters: (sum w log p(x), stats, Params, exact).

        n: the number of rows (the total weight with `weights`). stats: (K, p) in the layout
        of R^T phi on the features path; on the residuals path only its first 1 + D columns
        [N_k, S1_k] (the second moments go to `residual_m_step` without the (K, p) layout).
        With exact=False the statistics come from float32 products first; if they give a
        covariance that is not positive definite (cancellation in S2/N - mu mu^T on a
        near-degenerate component) the pass is redone with float64 statistics, and the
        returned `exact` is True so that the caller stays in float64 from then on. The
        check's Cholesky factorisation gives the precision factor that `_set_params` stores.
        """
        cfg, theta = self.config, self._theta(centre)
        ct = cfg.covariance_type
        for in_float64 in dict.fromkeys([exact, True]):
            if isinstance(theta, Whitening):
                total, (nk, s1, acc, about) = self._residual_pass(
                    x, centre, theta, in_float64, weights
                )
                all_reduce(total), all_reduce(nk), all_reduce(s1), all_reduce(acc)
                stats = torch.cat([nk.unsqueeze(1), s1], dim=1)
                p = residual_m_step(nk, s1, acc, ct, cfg.reg_covar, about)
            else:
                total, stats = self._em_pass(x, centre, theta, in_float64, weights)
                all_reduce(total), all_reduce(stats)
                p = m_step(stats, ct, cfg.reg_covar, self.n_dims)
            factor = precision_cholesky_or_none(p.covariances, ct)
            if in_float64 or factor is not None:
                break
        self._factor = None if factor is None else (p.covariances, factor)
        return total, stats, p, in_float64

    def _worst_rows(self, x: ArrayLike, centre: torch.Tensor, k: int, weights=None):
        """The k rows with the lowest log-density (log p, centred rows), for re-seeding;
        rows of sample weight 0 (`weights`) are never chosen."""
        theta = self._theta(centre)
        low = self.compute_dtype
        worst_lp = torch.empty(0, dtype=low, device=self.device)
        worst_z = torch.empty(0, centre.numel(), dtype=torch.float64, device=self.device)
        for start, z in self._rows(x, centre, torch.float64):
            lp, _ = self._log_terms(z.to(low), theta)
            if weights is not None:  # a row of weight 0 is not data: never re-seed onto it
                lp = lp.masked_fill(weights[start : start + len(z)].to(lp.device) == 0, math.inf)
            lp, z = torch.cat([worst_lp, lp]), torch.cat([worst_z, z])
            idx = lp.topk(min(k, len(lp)), largest=False).indices
            worst_lp, worst_z = lp[idx], z[idx]
        return worst_lp, worst_z

    # -- fit -------------------------------------------------------------------------------------
    def fit(
        self,
        x: Any,
        y: Any = None,
        *,
        sample_weight: Any = None,
        progress: bool | None = None,
    ) -> GaussianMixture:
        """Fit by EM (`y` is ignored).

        Args:
            x: (n, *event_shape) Tensor, array, NpyArray or Dataset. A Dataset of quantised
                images (`levels` set: digits, MNIST) is fitted on its pixels dequantised once,
                (k + u) / levels (config.dequantize; the noise is drawn with seed + 1, apart
                from evaluation's dequantisation of test points with the seed itself).
            sample_weight: optional (n,) weights w_i >= 0 of the rows (under torch.distributed:
                of this process's rows). EM then maximises sum_i w_i log p(x_i) / sum_i w_i:
                every statistic of the M-step is weighted, w_i r_ik, the k-means++ seeding and
                Lloyd steps of the initialisation are weighted, and `lower_bounds_` are the
                weighted means. Integer weights give the fit on the rows repeated w_i times
                (0: the row is dropped), to round-off. Only their ratios matter.
            progress: a tqdm bar of the EM iterations (None: only on a TTY).

        With config.warm_start and a fitted model, EM continues from the fitted parameters
        (one run, no initialisation) and its first iteration is compared with the previous
        fit's `lower_bound_` against `tol`, as scikit-learn's `warm_start` does.

        Raises:
            ValueError: bad x or sample_weight (the message names the fix), fewer rows of
                positive weight than components; `IllDefinedCovarianceError` (a ValueError)
                when a component's covariance is not positive definite.
        """
        cfg = self.config
        x, event_shape = self._numbers(x, y)
        weights = check_sample_weight(sample_weight, len(x))
        warm = cfg.warm_start and self.is_fitted
        if warm and tuple(event_shape) != tuple(self.event_shape):
            raise ValueError(
                f"x has samples of shape {tuple(event_shape)}, but warm_start continues a "
                f"mixture fitted on samples of shape {tuple(self.event_shape)}; pass data of "
                "that shape, or fit a new model (warm_start=False)"
            )
        if warm:
            self._build_online({})  # fit discards partial_fit's online state
        else:
            self._build(event_shape, {})
            self.event_shape = event_shape
        n, centre, weights, mass = self._scan_weighted(
            x,
            weights,
            lambda rows: (
                f"n_samples={rows} should be >= n_components={cfg.n_components}; "
                "use fewer components or more data"
                if weights is None
                else f"only {rows} rows have a positive sample_weight, fewer than "
                f"n_components={cfg.n_components}; give more rows a positive weight or use "
                "fewer components"
            ),
        )
        if warm:  # scikit-learn: one run from the fitted parameters, compared with its bound
            history = self._run_em(x, mass, centre, progress, 0, weights, self.lower_bound_)
            converged = self.converged_
        else:
            g = local_generator(cfg.seed)  # on the CPU; None: OS entropy, never the global RNG
            best = None
            for run in range(cfg.n_init):
                self._initialise(x, n, centre, g, weights)
                history = self._run_em(x, mass, centre, progress, run, weights)
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
                f"{NOT_CONVERGED} (EM ran max_iter={cfg.max_iter} iterations, tol={cfg.tol}; "
                "the data's scale matters: standardise it if its columns differ by orders of "
                "magnitude)",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _normalised_weights(
        self, weights: torch.Tensor | None, n: int
    ) -> tuple[torch.Tensor | None, float, int]:
        """(weights scaled to sum to the number of rows of positive weight, that sum, that
        number), over all processes; without weights (None, n, n).

        The scale makes EM's absolute thresholds (DEAD_MASS, the re-seeded weight 1 / n, the
        M-step's epsilon on N_k) mean "rows" whatever the weights' units; the fit depends only
        on the weights' ratios.

        Raises:
            ValueError: every weight is 0, or their sum overflows float64.
        """
        if weights is None:
            return None, float(n), n
        stats = torch.stack([weights.sum(), (weights > 0).sum().double()]).to(self.device)
        mass, rows = (float(v) for v in all_reduce(stats).cpu())
        if mass == 0:
            raise ValueError(
                "sample_weight is all zero: give at least one row a positive weight "
                "(a weight of 0 drops its row)"
            )
        if not math.isfinite(mass):
            raise ValueError(
                "sample_weight sums to more than float64 holds: divide the weights by a "
                "constant (only their ratios matter)"
            )
        return weights / (mass / rows), rows, int(rows)

    def _scan_weighted(
        self, x: ArrayLike, weights: torch.Tensor | None, too_few: Callable[[int], str]
    ) -> tuple[int, torch.Tensor, torch.Tensor | None, float]:
        """`_scan` and `_check_size`, then the weights normalised (`_normalised_weights`):
        (rows n, centre, weights, their total).

        Raises:
            ValueError: too_few(rows) when fewer rows of positive weight than components.
        """
        d = self.n_dims
        n, centre = self._scan(x, d)
        self._check_size(d, n)
        weights, mass, rows = self._normalised_weights(weights, n)
        if rows < self.config.n_components:
            raise ValueError(too_few(rows))
        return n, centre, weights, mass

    def _initialise(
        self,
        x: ArrayLike,
        n: int,
        centre: torch.Tensor,
        g: torch.Generator,
        weights: torch.Tensor | None = None,
    ) -> None:
        """First M-step on the init sample of x (`_init_draw`: n rows in all, drawn with g;
        centred, its rows weighted by `weights`), then the user's starting values."""
        cfg, d = self.config, self.n_dims
        z, weights = self._init_draw(x, n, g, weights)
        z = z - centre
        resp = initial_responsibilities(z, cfg.n_components, cfg.init, g, weights)
        if weights is not None:
            resp = resp * weights.unsqueeze(1)
        stats = responsibility_statistics(z, resp, cfg.covariance_type)
        p = m_step(stats, cfg.covariance_type, cfg.reg_covar, d)
        self._store(p, centre, stats[:, 0])
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

    def _store(self, p: Params, centre: torch.Tensor, mass: torch.Tensor) -> None:
        """`_set_params`, naming the collapsed components (total responsibility `mass`) when a
        covariance is not positive definite.

        Raises:
            IllDefinedCovarianceError: scikit-learn's message, then which components failed.
        """
        try:
            self._set_params(p, centre)
        except ValueError:
            ct = self.config.covariance_type
            cov = p.covariances if ct != "tied" else p.covariances.unsqueeze(0)
            if ct in ("full", "tied"):
                bad = (torch.linalg.cholesky_ex(cov).info != 0).nonzero().flatten().tolist()
            else:
                bad = (cov <= 0).reshape(len(cov), -1).any(1).nonzero().flatten().tolist()
            named = [f"{k} ({float(mass[k]):.3g} rows of responsibility)" for k in bad[:5]]
            named += [f"{len(bad) - 5} more"] if len(bad) > 5 else []
            if ct == "tied":
                which = "the tied covariance is"
            elif len(bad) == 1:
                which = f"component {named[0]} is"
            else:
                which = f"components {', '.join(named)} are"
            raise IllDefinedCovarianceError(
                f"{ILL_DEFINED} In genlab: {which} not positive definite with "
                f"reg_covar={self.config.reg_covar:g}."
            ) from None

    def _run_em(
        self,
        x: ArrayLike,
        n: float,
        centre: torch.Tensor,
        progress,
        run: int,
        weights: torch.Tensor | None = None,
        previous: float = -math.inf,
    ) -> list:
        """EM from the current parameters: the mean log-likelihood (weighted by `weights`,
        of total weight n) at each E-step, before its M-step.

        Stops, as scikit-learn's `BaseMixture.fit_predict` does, at the first iteration whose
        bound changes by less than tol from the one before (the first from `previous`: the
        last fit's bound under warm_start, else -inf), so a run that has reached tol stops
        before round-off can lower the bound by an ulp.
        """
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
        lower = previous
        for _ in bar:
            step = self._em_step(x, n, centre, exact, weights=weights)
            total, stats, p, exact = step
            history.append(float(total.item()) / n)
            if (stats[:, 0] < DEAD_MASS).any():
                self._set_params(p, centre, check=False)
                p = self._reseed_dead(
                    p, stats[:, 0], self._worst_rows(x, centre, cfg.n_components, weights), n
                )
            self._store(p, centre, stats[:, 0])
            change, lower = history[-1] - lower, history[-1]
            bar.set_postfix(loglik=f"{history[-1]:.5f}", change=f"{change:.2e}")
            if abs(change) < cfg.tol:
                self.converged_ = True
                break
        bar.close()
        if not history:  # max_iter=0: the initial parameters' mean log-likelihood ranks runs
            theta = self._theta(centre)
            total, _ = self._em_pass(x, centre, theta, exact=True, weights=weights)
            history.append(float(all_reduce(total).item()) / n)
        return history

    def _reseed_dead(self, p: Params, mass: torch.Tensor, worst, n: float) -> Params:
        """Move components with total responsibility < DEAD_MASS (rows: weights are scaled to
        sum to the rows of positive weight) onto the worst-explained rows; each gets weight
        1 / n, n the total weight."""
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
    def _weighted_log_prob(self, x: Any, sample_weight: Any) -> tuple[torch.Tensor, float]:
        """(w_i log p(x_i) (n,) float64, sum w) with w = 1 without weights."""
        lp = self.log_prob(x).double()
        w = check_sample_weight(sample_weight, len(lp))
        if w is None:
            return lp, float(len(lp))
        mass = float(w.sum())
        if mass == 0:
            raise ValueError("sample_weight is all zero: give at least one row a positive weight")
        return torch.where(w > 0, w.to(lp.device) * lp, 0.0), mass

    def score(self, x: Any, sample_weight: Any = None) -> float:
        """Mean log-likelihood per sample, nats: sum w log p(x) / sum w (w = 1 by default)."""
        wlp, mass = self._weighted_log_prob(x, sample_weight)
        return float(wlp.sum()) / mass

    def bic(self, x: Any, sample_weight: Any = None) -> float:
        """Bayesian information criterion -2 sum w log p(x) + p log(sum w), p the free
        parameters (w = 1 by default: -2 log L + p log n); lower is better."""
        wlp, mass = self._weighted_log_prob(x, sample_weight)
        return float(-2 * wlp.sum() + self.n_parameters * math.log(mass))

    def aic(self, x: Any, sample_weight: Any = None) -> float:
        """Akaike information criterion -2 sum w log p(x) + 2p (lower is better)."""
        wlp, _ = self._weighted_log_prob(x, sample_weight)
        return float(-2 * wlp.sum() + 2 * self.n_parameters)

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
