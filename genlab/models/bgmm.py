"""Bayesian Gaussian mixtures fitted by variational inference: the components the data do not
need are switched off (their weights go to ~0), so K is an upper bound, not a choice.

    log p(x) = logsumexp_k [ log E[pi_k] + log N(x | m_k, E[Lambda_k]^-1) ]      (exact, nats)

is the density of the point-estimate mixture at the posterior means (`log_prob`). The maths
(Dirichlet-process or Dirichlet weights, Gaussian-Wishart components, the updates and the
lower bound) are pure functions in `genlab.models.bgmm_maths`; the E-step is the EM path's
batched product Theta phi(Z)^T (`genlab.models.gmm_maths`) over chunks of rows, with the
variational constants in place of log w_k, and the statistics R^T phi(Z) are summed in
float64. After scikit-learn's `BayesianGaussianMixture` (same updates, same lower bound);
`genlab.sklearn.BayesianGaussianMixture` is the numpy estimator over this class.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from genlab.data.dataset import ArrayLike, Dataset
from genlab.models import gmm_selection
from genlab.models.base import Budget, ConvergenceWarning
from genlab.models.bgmm_maths import (
    WEIGHT_PRIORS,
    Posterior,
    Priors,
    WeightPrior,
    e_step_constants,
    lower_bound,
    m_step,
    posterior_weights,
    prior_shape,
)
from genlab.models.gmm_maths import (
    FEATURES,
    _Scratch,
    add_second_moments,
    component_residuals,
    dense_covariances,
    e_step,
    feature_statistics,
    initial_responsibilities,
    natural_parameters,
    normalise_logits,
    residual_logits,
    responsibility_statistics,
    second_moments_shape,
)
from genlab.models.mixture import (  # re-exported: the options' names, as gmm's
    COVARIANCE_TYPES,
    INIT_METHODS,
    CovarianceType,
    InitMethod,
    MixtureBase,
    MixtureConfig,
    estep_parameters,
)
from genlab.options import Choice, Integer, Real, option
from genlab.solvers import local_generator

__all__ = [
    "COVARIANCE_TYPES",
    "EFFECTIVE_WEIGHT",
    "INIT_METHODS",
    "BGMMConfig",
    "BayesianGaussianMixture",
    "CovarianceType",
    "InitMethod",
]

EFFECTIVE_WEIGHT = 1e-2  # a component "kept" by the fit has a posterior-mean weight above this
BUDGET_COMPONENTS = 32  # fit_for_budget's K: generous, the prior prunes what is not needed
POSITIVE = {"low": 0.0, "low_open": True, "optional": True}


@dataclass(frozen=True)
class BGMMConfig(MixtureConfig):
    """The Bayesian mixture's options (what config.json stores and `genlab fit bgmm` offers):
    the shared ones (`MixtureConfig`; n_components and tol reworded), then the priors'."""

    n_components: int = option(
        1,
        "Upper bound K on the components (the prior switches off those not needed).",
        Integer(1),
        flag="--components",
        short="-k",
    )
    weight_concentration_prior_type: WeightPrior = option(
        "dirichlet_process",
        "Prior on the weights: dirichlet_process (stick-breaking) or dirichlet_distribution.",
        Choice(WEIGHT_PRIORS),
        flag="--weight-prior",
    )
    weight_concentration_prior: float | None = option(
        None,
        "gamma (DP) or alpha_0 (Dirichlet); small keeps few components (None: 1/K).",
        Real(**POSITIVE),
        flag="--concentration",
    )
    mean_precision_prior: float | None = option(
        None,
        "beta_0: how strongly the means are pulled to the prior mean (None: 1).",
        Real(**POSITIVE),
    )
    degrees_of_freedom_prior: float | None = option(
        None, "nu_0 of the Wishart prior, > D - 1 (None: D).", Real(**POSITIVE)
    )
    tol: float = option(
        1e-3, "Stop when the lower bound (total nats) changes by less than this.", Real(0)
    )
    max_time: float | None = option(
        None,
        "Stop iterating after this many seconds of fitting (None: no limit).",
        Real(**POSITIVE),
    )


class BayesianGaussianMixture(MixtureBase, family="bgmm"):
    """A Gaussian mixture fitted by variational inference (Bishop 2006 §10.2; Blei & Jordan
    2006): Dirichlet-process or Dirichlet weights, Gaussian-Wishart components; `log_prob` is
    the exact density (nats) of the posterior-mean mixture.

    Args:
        n_components: K, an upper bound: surplus components end with weight ~0.
        covariance_type: "full" (K, D, D), "tied" (D, D), "diag" (K, D), "spherical" (K,).
        weight_concentration_prior_type: "dirichlet_process" (stick-breaking, truncated at K)
            or "dirichlet_distribution".
        weight_concentration_prior: gamma (DP) or alpha_0 (Dirichlet); None: 1/K.
        mean_precision_prior: beta_0; None: 1.
        degrees_of_freedom_prior: nu_0 > D - 1; None: D.
        tol: stop when the lower bound (a total, nats, scikit-learn's) changes by less.
        reg_covar: added to the diagonal of each component's scatter S_k.
        max_iter, n_init, init, seed, chunk_size, dequantize: as
            `genlab.models.GaussianMixture`'s (the init's responsibilities give the first
            M-step; on more than 100,000 rows they come from a sample, scaled to n rows).
        dtype: precision of the chunk products ("float64": scikit-learn's answers to
            round-off; "float32": faster, statistics still summed in float64, with a switch
            to float64 where they lose definiteness). The lower bound is a total over rows,
            so float32 gives it a relative error of ~1e-7: on large data raise `tol` with it.
        estep: the E/M path, as `GaussianMixture`'s: "features" (one product with phi(z),
            D(D+1)/2 columns), "residuals" (whitened residuals (z - m_k) U_k and weighted Gram
            matrices, for large D) or "auto" (`gmm_maths.cheaper_estep`'s cost model).
        max_time: stop iterating after this many seconds (at least one iteration runs).
        device: "cuda", "cpu" or None (cuda when present).
        mean_prior: m_0 (D,); None: the mean of the data. Not saved (`mean_prior_` is).
        covariance_prior: W_0^-1: (D, D) full/tied, (D,) diag, a number spherical; None: the
            data's covariance (variances for diag, their mean for spherical; ddof=1). Not saved
            (`covariance_prior_` is).

    The point estimate's passes, `log_prob` (sum_k E[pi_k] N(x | m_k, E[Lambda_k]^-1), a
    normalised density: `variational_log_prob` is scikit-learn's `score_samples`, which is
    not), `sample` and the E/M path `estep_` are `MixtureBase`'s.

    Fitted attributes (float64 tensors): the point estimate `weights_` (E[pi]), `means_` (m_k),
    `covariances_` (E[Lambda_k]^-1 = W_k^-1 / nu_k), `precisions_cholesky_`, `precisions_`;
    the posterior `weight_concentration_` ((2, K) Beta pairs for the DP, (K,) Dirichlet),
    `mean_precision_` (beta_k), `degrees_of_freedom_` (nu_k; () for tied); the priors
    `mean_prior_`, `covariance_prior_`, `weight_concentration_prior_`, `mean_precision_prior_`,
    `degrees_of_freedom_prior_`; `converged_`, `n_iter_`, `lower_bound_` and `lower_bounds_`
    (the lower bound after each iteration of the kept run: total nats up to a constant).
    """

    config_class = BGMMConfig
    fitted_facts = (
        "converged",
        "n_iter",
        "lower_bound",
        "lower_bounds",
        "weight_concentration_prior",
        "mean_precision_prior",
        "degrees_of_freedom_prior",
    )

    component_scalars = 6  # weight concentration (2), beta, nu and their sums
    residual_arrays = 3  # residuals and weighted residuals (chunk, K, D)
    bound_label = "variational lower bound (nats, up to a constant)"

    def __init__(
        self,
        *args: Any,
        device: str | torch.device | None = None,
        mean_prior: Any = None,
        covariance_prior: Any = None,
        **options: Any,
    ):
        super().__init__(*args, device=device, **options)
        self.mean_prior, self.covariance_prior = mean_prior, covariance_prior

    # -- state ----------------------------------------------------------------------------------
    def _build(self, event_shape: tuple[int, ...], fitted: dict[str, Any]) -> None:
        super()._build(event_shape, fitted)  # the point estimate (`MixtureBase`)
        cfg = self.config
        d, k, ct = int(np.prod(event_shape)), cfg.n_components, cfg.covariance_type
        f64 = {"dtype": torch.float64, "device": self.device_}
        dp = cfg.weight_concentration_prior_type == "dirichlet_process"
        buffers = {
            "weight_concentration_": torch.ones((2, k) if dp else (k,), **f64),
            "mean_precision_": torch.ones(k, **f64),
            "degrees_of_freedom_": torch.ones(() if ct == "tied" else (k,), **f64),
            "mean_prior_": torch.zeros(d, **f64),
            "covariance_prior_": torch.ones(prior_shape(ct, d), **f64),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value)
        for name in self.fitted_facts[4:]:
            setattr(self, f"{name}_", float(fitted.get(name, 1.0)))

    def _posterior(self, centre: torch.Tensor) -> Posterior:
        """The fitted posterior with means in coordinates centred at `centre`."""
        return Posterior(
            self.weight_concentration_,
            self.mean_precision_,
            self.means_ - centre,
            self.degrees_of_freedom_,
            self.covariances_,
            self.precisions_cholesky_,
        )

    def _store(self, post: Posterior, centre: torch.Tensor) -> None:
        prior_type = self.config.weight_concentration_prior_type
        self.weight_concentration_ = post.weight_concentration
        self.mean_precision_ = post.mean_precision
        self.means_ = post.means + centre
        self.degrees_of_freedom_ = post.degrees_of_freedom
        self.covariances_ = post.covariances
        self.precisions_cholesky_ = post.precisions_cholesky
        self.weights_ = posterior_weights(post.weight_concentration, prior_type)

    def effective_components(self, threshold: float = EFFECTIVE_WEIGHT) -> int:
        """How many components the fit kept: posterior-mean weights above `threshold`."""
        self.check_is_fitted()
        return int((self.weights_ > threshold).sum())

    # -- passes over the data -------------------------------------------------------------------
    def _pass(self, x: ArrayLike, centre: torch.Tensor, post: Posterior, exact: bool):
        """One variational E-step over all rows: (sum_n r log r, statistics R^T phi (K, p)).

        The logits are log N(z | m_k, nu_k W_k) plus the variational constants
        (`bgmm_maths.e_step_constants`), per chunk on the E/M path (`estep_`): features, one
        product Theta phi(z)^T and the statistics R^T phi(z); residuals, whitened residuals and
        weighted Gram matrices about m_k (`gmm_maths.residual_logits`, `add_second_moments`),
        turned into the same statistics (`feature_statistics`). Products run in float64 when
        `exact`, else in the compute dtype, and are summed in float64. The entropy term needs
        no log of the responsibilities: sum_nk r log r = sum_nk r Theta_k . phi_n - sum_n
        log Z_n = (Theta * stats).sum() - sum_n log Z_n.
        """
        cfg, d = self.config, centre.numel()
        ct, k = cfg.covariance_type, cfg.n_components
        f64 = torch.float64
        low = f64 if exact else self.compute_dtype
        const = e_step_constants(post, cfg.weight_concentration_prior_type)
        theta = natural_parameters(const, post.means, post.precisions_cholesky, ct)
        log_norm = torch.zeros((), dtype=f64, device=self.device)
        buf = _Scratch(self.device)
        if self.estep_ == "features":
            p, theta_low = theta.shape[1], theta.to(low)
            stats = torch.zeros(k, p, dtype=f64, device=self.device)
            for _, z in self._rows(x, centre, low):
                m = len(z)
                phi_t = FEATURES[ct](z, out=buf("phi", (p, m), low))
                lp, resp_t = e_step(phi_t, theta_low, out=buf("logits", (k, m), low))
                if low == f64:
                    stats.addmm_(resp_t, phi_t.T)
                else:
                    stats += torch.mm(resp_t, phi_t.T, out=buf("stats_low", (k, p), low))
                log_norm += lp.sum(dtype=f64)
        else:
            w = estep_parameters("residuals", const, post.means, post.precisions_cholesky, ct, low)
            nk = torch.zeros(k, dtype=f64, device=self.device)
            s1 = torch.zeros(k, d, dtype=f64, device=self.device)
            acc = torch.zeros(second_moments_shape(ct, k, d), dtype=f64, device=self.device)
            for _, z in self._rows(x, centre, low):
                dz = None if ct == "tied" else component_residuals(z, w.means)
                lp, resp = normalise_logits(residual_logits(z, w, ct, dz))
                nk += resp.sum(0, dtype=f64)
                s1 += (resp.T @ z).to(f64)
                add_second_moments(acc, z, resp, ct, w.blocks, dz if ct == "full" else None)
                log_norm += lp.sum(dtype=f64)
            about = w.means.to(f64) if ct == "full" else None
            stats = feature_statistics(nk, s1, acc, ct, about=about)
        sum_r_log_r = (theta.to(low).to(f64) * stats).sum() - log_norm
        return sum_r_log_r, stats

    def _scan_scatter(self, x: ArrayLike, d: int, need_cov: bool):
        """(n, mean (D,), centred scatter sum z z^T (or sum z^2 for diag/spherical) or None),
        rejecting NaN/inf rows and data whose squares overflow (`_scan`)."""
        n, mean = self._scan(x, d)
        if not need_cov:
            return n, mean, None
        full = self.config.covariance_type in ("full", "tied")
        scatter = torch.zeros((d, d) if full else (d,), dtype=torch.float64, device=self.device)
        for _, z in self._rows(x, mean):
            scatter += z.T @ z if full else (z * z).sum(0)
        return n, mean, scatter

    def _priors(self, n: int, d: int, mean: torch.Tensor, scatter: torch.Tensor | None) -> Priors:
        """The priors in coordinates centred at the data mean (scikit-learn's defaults).

        Raises:
            ValueError: nu_0 <= D - 1, or a mean_prior / covariance_prior of the wrong shape
                or not positive (definite).
        """
        cfg, ct = self.config, self.config.covariance_type
        f64 = {"dtype": torch.float64, "device": self.device}
        alpha0 = cfg.weight_concentration_prior or 1.0 / cfg.n_components
        beta0 = cfg.mean_precision_prior or 1.0
        nu0 = float(d) if cfg.degrees_of_freedom_prior is None else cfg.degrees_of_freedom_prior
        if nu0 <= d - 1:
            raise ValueError(
                f"degrees_of_freedom_prior should be greater than {d - 1} (the dimension less "
                f"one), but got {nu0:.3f}; raise it or leave it None (D)"
            )
        if self.mean_prior is None:
            m0 = torch.zeros(d, **f64)
        else:
            m0 = torch.as_tensor(np.asarray(self.mean_prior, dtype=np.float64), **f64)
            if m0.shape != (d,) or not torch.isfinite(m0).all():
                raise ValueError(f"mean_prior must be a finite ({d},) array, got {tuple(m0.shape)}")
            m0 = m0 - mean
        if self.covariance_prior is None:
            if n < 2:
                raise ValueError("the default covariance_prior needs at least 2 rows of data")
            cov = scatter / (n - 1)
            psi = cov.mean() if ct == "spherical" else cov
        else:
            psi = torch.as_tensor(np.asarray(self.covariance_prior, dtype=np.float64), **f64)
            _check_covariance_prior(psi, ct, d)
        self.weight_concentration_prior_, self.mean_precision_prior_ = float(alpha0), float(beta0)
        self.degrees_of_freedom_prior_ = float(nu0)
        self.mean_prior_, self.covariance_prior_ = m0 + mean, psi
        return Priors(float(alpha0), float(beta0), m0, float(nu0), psi)

    # -- fit -------------------------------------------------------------------------------------
    def fit(
        self,
        x: Any,
        y: Any = None,
        *,
        progress: bool | None = None,
        resp_init: Any = None,
        warm_start: bool = False,
    ) -> BayesianGaussianMixture:
        """Fit by coordinate ascent on the lower bound (`y` is ignored).

        Args:
            x: (n, *event_shape) Tensor, array, NpyArray or Dataset (quantised images are
                dequantised once, as `GaussianMixture.fit` does).
            progress: a tqdm bar of the iterations (None: only on a TTY).
            resp_init: (n, K) non-negative responsibilities of the rows for the first M-step,
                replacing `init`; every initialisation then starts there.
            warm_start: continue from the fitted posterior (one run; the first iteration's
                change is measured from the last fit's lower bound, as scikit-learn does).
                The priors are recomputed from x.

        Raises:
            ValueError: text data, fewer rows than components (or than 2), NaN/inf rows, bad
                priors or resp_init, or an ill-defined covariance.
        """
        cfg = self.config
        start_time = time.perf_counter()
        x, event_shape = self._numbers(x, y)  # text refused, images dequantised
        d = int(np.prod(event_shape))
        warm = warm_start and self.is_fitted and self.event_shape == tuple(event_shape)
        if warm_start and self.is_fitted and not warm:
            raise ValueError(
                f"warm_start continues a fit on samples of shape {self.event_shape}, but x has "
                f"samples of shape {tuple(event_shape)}; fit without warm_start"
            )
        if not warm:
            self._build(event_shape, {})
            self.event_shape = event_shape
        self._check_size(d, len(x))
        n, centre, scatter = self._scan_scatter(x, d, need_cov=self.covariance_prior is None)
        if n < max(cfg.n_components, 2):
            raise ValueError(
                f"n_samples={n} should be >= n_components={cfg.n_components} and >= 2; "
                "use fewer components or more data"
            )
        priors = self._priors(n, d, centre, scatter)
        resp = None if resp_init is None else _check_resp(resp_init, n, cfg.n_components)
        g = local_generator(cfg.seed)
        previous = self.lower_bound_ if warm else -math.inf
        best = None
        for run in range(1 if warm else cfg.n_init):
            if warm:
                post = self._posterior(centre)
            else:
                post = m_step(
                    self._initial_stats(x, n, centre, resp, g),
                    priors,
                    cfg.covariance_type,
                    cfg.weight_concentration_prior_type,
                    cfg.reg_covar,
                )
            post, history, converged = self._iterate(
                x, centre, post, priors, previous, progress, run, start_time
            )
            if best is None or not history or history[-1] > best[1][-1]:
                best = (post, history, converged)
        post, history, converged = best
        self._store(post, centre)
        self.lower_bounds_ = history
        self.lower_bound_ = history[-1] if history else -math.inf
        self.converged_, self.n_iter_ = converged, len(history)
        if not converged and cfg.max_iter > 0:
            why = f"in {cfg.max_iter} iterations (tol={cfg.tol})"
            if len(history) < cfg.max_iter:
                why = f"before max_time={cfg.max_time} s ({len(history)} iterations)"
            warnings.warn(
                f"the variational fit did not converge {why}; raise max_iter, max_time or "
                "tol, or check the data's scale",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _initial_stats(
        self, x: ArrayLike, n: int, centre: torch.Tensor, resp: Any, g: torch.Generator
    ) -> torch.Tensor:
        """Statistics R^T phi (K, p) of the first M-step: from the given responsibilities, or
        from `init` on a sample of at most 100,000 rows, scaled to n rows (through Gram
        matrices, `gmm_maths.responsibility_statistics`: no D(D+1)/2-column feature map)."""
        cfg, ct = self.config, self.config.covariance_type
        if resp is not None:
            stats = None
            for start, z in self._rows(x, centre):
                r = resp[start : start + len(z)].to(self.device)
                part = responsibility_statistics(z, r, ct)
                stats = part if stats is None else stats + part
            return stats
        z = self._init_draw(x, n, g, None)[0] - centre
        r = initial_responsibilities(z, cfg.n_components, cfg.init, g)
        return responsibility_statistics(z, r, ct) * (n / len(z))

    def _iterate(self, x, centre, post, priors, previous, progress, run, start_time):
        """E-step, M-step, lower bound, until the bound changes by less than tol:
        (posterior, lower bounds, converged)."""
        cfg = self.config
        ct, wt = cfg.covariance_type, cfg.weight_concentration_prior_type
        history: list[float] = []
        exact = self.compute_dtype == torch.float64  # float32 runs switch once they must
        bar = tqdm(
            range(cfg.max_iter),
            leave=False,
            disable=None if progress is None else not progress,
            desc=f"VB {run + 1}/{cfg.n_init}" if cfg.n_init > 1 else "VB",
        )
        converged = False
        for _ in bar:
            for in_float64 in dict.fromkeys([exact, True]):
                sum_r_log_r, stats = self._pass(x, centre, post, in_float64)
                try:
                    post = m_step(stats, priors, ct, wt, cfg.reg_covar)
                    break
                except ValueError:  # float32 statistics lost definiteness: redo in float64
                    if in_float64:
                        raise
            exact = in_float64
            history.append(lower_bound(sum_r_log_r, post, ct, wt))
            change = history[-1] - (history[-2] if len(history) > 1 else previous)
            bar.set_postfix(bound=f"{history[-1]:.6g}", change=f"{change:.2e}")
            if abs(change) < cfg.tol:
                converged = True
                break
            if cfg.max_time is not None and time.perf_counter() - start_time > cfg.max_time:
                break
        bar.close()
        return post, history, converged

    # -- the fitted density (log_prob, sample: `MixtureBase`'s) ---------------------------------
    @property
    def _map_dtype(self) -> torch.dtype:
        """`_map_rows` computes in float64 (log_prob is cast to the compute dtype after)."""
        return torch.float64

    def _responsibility_const(self, centre: torch.Tensor) -> torch.Tensor:
        """The variational constants in place of log w_k
        (`bgmm_maths.e_step_constants`): predict_proba gives q(z = k | x), scikit-learn's."""
        prior_type = self.config.weight_concentration_prior_type
        return e_step_constants(self._posterior(centre), prior_type)

    @torch.no_grad()
    def variational_log_prob(self, x: Any) -> torch.Tensor:
        """log sum_k exp(E_q[log pi_k] + E_q[log N(x | mu_k, Lambda_k)]) (n,) float64: the
        E-step's normaliser, what scikit-learn's `score_samples` returns. It is below the
        log of the posterior predictive density (Jensen) and does not integrate to one."""
        return self._map_rows(x, lambda lp, _: lp, self._responsibility_const)

    def score(self, x: Any) -> float:
        """Mean log-density of the point-estimate mixture per sample, nats."""
        return float(self.log_prob(x).double().mean())

    # -- what callers ask ------------------------------------------------------------------------
    def ellipses_2d(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(means, covariances (K, 2, 2), weights) of the kept components of a 2-D mixture
        (weights above `EFFECTIVE_WEIGHT`), on the CPU; None for other dimensions."""
        self.check_is_fitted()
        if self.n_dims != 2:
            return None
        cfg = self.config
        cov = dense_covariances(self.covariances_, cfg.covariance_type, cfg.n_components, 2)
        kept = self.weights_ > EFFECTIVE_WEIGHT
        return self.means_[kept].cpu(), cov[kept].cpu(), self.weights_[kept].cpu()

    def fit_summary(self) -> dict[str, Any]:
        kept = {f"components with weight > {EFFECTIVE_WEIGHT:g}": self.effective_components()}
        return {**super().fit_summary(), **kept}

    @classmethod
    def select_components(
        cls,
        x: Any,
        max_components: int,
        *,
        test: Any = None,
        seed: int | None = 0,
        max_seconds: float | None = None,
        device: str | torch.device | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Model selection without BIC: one Dirichlet-process mixture with a generous K, and
        the number of components it keeps (weight > `EFFECTIVE_WEIGHT`).

        Returns:
            {"n_components": K, "effective_components", "test_nll" (mean nats per test row,
            quantised test images dequantised with `seed`), "seconds", "model", "error"},
            None where it does not apply (a ValueError is recorded, not raised).
        """
        began = time.perf_counter()
        record = {
            "n_components": int(max_components),
            **dict.fromkeys(("effective_components", "test_nll", "seconds", "model", "error")),
        }
        limit = None if max_seconds is None or not math.isfinite(max_seconds) else max_seconds
        model = cls(
            int(max_components),
            seed=seed,
            device=device,
            max_time=None if limit is None else max(limit, 1e-3),
            **options,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model.fit(x, progress=False)
                record["effective_components"] = model.effective_components()
                if test is not None:
                    test = gmm_selection.dequantized_rows(test, seed)
                    record["test_nll"] = -model.score(test)
                record["model"] = model
            except ValueError as e:
                record["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
        record["seconds"] = time.perf_counter() - began
        return record

    @classmethod
    def fit_for_budget(cls, data: Dataset, budget: Budget) -> tuple[BayesianGaussianMixture, dict]:
        """One DP mixture of K = options' n_components (default 32, at most the rows), its
        iterations stopped at the budget's seconds (`max_time`; EM has no step budget)."""
        options = {"covariance_type": "full", **budget.options}
        options.pop("components", None)
        k = min(int(options.pop("n_components", BUDGET_COMPONENTS)), len(data))
        options.setdefault("max_time", budget.seconds)
        model = cls(k, seed=budget.seed, device=budget.device, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(data, progress=budget.progress)
        return model, {
            "steps": None,
            "n_components": k,
            "effective_components": model.effective_components(),
            "converged": bool(model.converged_),
            "iterations": model.n_iter_,
            "lower_bound": model.lower_bound_,
            "options": {**options, "n_components": k},
        }


def _check_resp(resp: Any, n: int, k: int) -> torch.Tensor:
    """(n, K) float64 responsibilities: finite and non-negative (rows usually sum to 1; a
    k-means++ start, as scikit-learn's, marks one row per component and leaves the rest 0)."""
    r = torch.as_tensor(np.asarray(resp, dtype=np.float64))
    if r.shape != (n, k):
        raise ValueError(
            f"resp_init must have shape ({n}, {k}) (rows, components), got {tuple(r.shape)}"
        )
    if not torch.isfinite(r).all() or (r < 0).any():
        raise ValueError("resp_init must hold finite, non-negative responsibilities")
    return r


def _check_covariance_prior(psi: torch.Tensor, covariance_type: str, d: int) -> None:
    """W_0^-1 of the type's shape: symmetric positive definite (full/tied) or positive.

    Raises:
        ValueError: naming the shape or property expected.
    """
    shape = prior_shape(covariance_type, d)
    if tuple(psi.shape) != shape:
        raise ValueError(
            f"covariance_prior must have shape {shape} for covariance_type="
            f"{covariance_type!r}, got {tuple(psi.shape)}"
        )
    if covariance_type in ("full", "tied"):
        symmetric = torch.allclose(psi, psi.T)
        if not symmetric or torch.linalg.cholesky_ex(psi).info != 0:
            raise ValueError(
                f"'{covariance_type} covariance_prior' should be symmetric, positive-definite"
            )
    elif not (torch.isfinite(psi).all() and (psi > 0).all()):
        raise ValueError(f"'{covariance_type} covariance_prior' should be positive")
