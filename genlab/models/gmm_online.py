"""Online EM for Gaussian mixtures: `partial_fit` on mini-batches of a stream that may never end.

Stepwise EM (Cappé & Moulines 2009, "On-line expectation-maximization algorithm for latent
data models", JRSS B 71(3); Liang & Klein 2009, "Online EM for unsupervised models", NAACL)
keeps running normalised sufficient statistics, in the layout of the batch EM's R^T phi(Z)
(`genlab.models.gmm_maths`, rows centred at a fixed point c, z = x - c):

    s = (sum_i r_ik, sum_i r_ik z_i, sum_i r_ik vech(z_i z_i^T)) / n          (K, p)

Update t = 1, 2, ... takes one mini-batch B_t: an E-step under the current parameters gives
its normalised statistics sbar_t = R^T phi(Z_B) / |B_t| (weights w_i multiply r_ik, and |B_t|
is then sum w_i), and

    s_t = (1 - rho_t) s_{t-1} + rho_t sbar_t,        rho_t = (t + t0)^(-kappa),

then the usual M-step `m_step(s_t)` (weights s_k0, means s_k1 / s_k0, covariances
s_k2 / s_k0 - nu nu^T + reg_covar). s_0 holds the statistics the initial parameters imply
(`parameter_statistics`, the inverse of the M-step). kappa in (0.5, 1] makes sum rho_t
infinite and sum rho_t^2 finite (the Robbins-Monro conditions under which Cappé & Moulines
prove convergence); t0 >= 0 damps the first steps: t0 = 0 gives rho_1 = 1 (the first update
forgets the initial parameters: one `partial_fit` on all the data is one batch EM step),
t0 = 1 is Liang & Klein's (k + 2)^(-kappa) with k counted from 0; kappa = 1, t0 = 0 is the
plain average of the batches' statistics. Both are config fields (`online_t0`,
`online_kappa`), so they are saved with the model.

One `partial_fit` call is one mini-batch (one update) unless `batch_size` splits it into
consecutive mini-batches of that many rows. Memory is that of one E-step pass (chunks of
rows) plus the (K, p) statistics: nothing of the data is kept, so a stream may go on forever.
The E-step is the model's own pass (`GaussianMixture._em_pass`: float32 products where
config.dtype says so, float64 when their statistics break a covariance, as `fit` does; the
statistics are all-reduced under torch.distributed, each process passing its shard).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
import torch

from genlab.data.dataset import NpyArray
from genlab.distributed import all_reduce
from genlab.models.gmm_maths import Params, m_step, n_features, positive_definite
from genlab.models.mixture import check_sample_weight
from genlab.solvers import local_generator

__all__ = ["OnlineEM", "parameter_statistics", "step_size", "stepwise_update"]

DEAD_MASS = 1e-3  # as fit's: a component with less responsibility (rows) than this is re-seeded
ONLINE_BUFFERS = ("online_statistics_", "online_centre_")

_M = TypeVar("_M", bound="OnlineEM")


# -- the maths ------------------------------------------------------------------------------------
def step_size(t: int, t0: float, kappa: float) -> float:
    """rho_t = (t + t0)^(-kappa) for update t = 1, 2, ...: the weight of the t-th mini-batch's
    statistics in the running ones (1 at t = 1 when t0 = 0).

    Raises:
        ValueError: t < 1, t0 < 0, or kappa outside (0.5, 1].
    """
    if t < 1 or t0 < 0 or not 0.5 < kappa <= 1:
        raise ValueError(
            f"step_size needs t >= 1, t0 >= 0, 0.5 < kappa <= 1; got {t}, {t0}, {kappa}"
        )
    return float((t + t0) ** -kappa)


def stepwise_update(s: torch.Tensor, s_batch: torch.Tensor, rho: float) -> torch.Tensor:
    """(1 - rho) s + rho s_batch: the stepwise-EM update of the normalised statistics (K, p)."""
    return torch.lerp(s, s_batch, rho)


def parameter_statistics(p: Params, covariance_type: str, reg_covar: float) -> torch.Tensor:
    """The normalised statistics (K, p) that parameters imply, so m_step(them) = p (to
    round-off): (w_k, w_k nu_k, w_k E[phi_2(z) | k]) with E[z z^T | k] = Sigma_k - reg I +
    nu_k nu_k^T (the M-step adds reg_covar back); diag keeps the diagonal, spherical the
    trace. p holds centred means nu (K, D) and the covariance type's covariances."""
    w, nu, cov = p
    k, d = nu.shape
    if covariance_type in ("full", "tied"):
        eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
        second = (cov - reg_covar * eye).expand(k, d, d) + nu.unsqueeze(-1) * nu.unsqueeze(-2)
        i, j = torch.triu_indices(d, d, device=nu.device)  # gmm_maths' vech order
        second = second[:, i, j]
    elif covariance_type == "diag":
        second = cov - reg_covar + nu**2
    else:
        second = (d * (cov - reg_covar) + (nu**2).sum(-1)).unsqueeze(-1)
    w = w.unsqueeze(-1)
    return torch.cat([w, w * nu, w * second], dim=1)


# -- the mixin ------------------------------------------------------------------------------------
class OnlineEM:
    """`partial_fit` (stepwise EM on mini-batches) for `GaussianMixture`, which inherits it.

    Online state (saved with the model, so partial_fit continues after save -> genlab.load):
    `online_statistics_` (K, p) float64 running statistics s, `online_centre_` (D,) the
    fixed centre c (the first mini-batch's mean), and the counters `n_batches_seen_` (updates
    made: t), `n_rows_seen_`, `batch_log_likelihood_` (mean log p in nats of the last
    mini-batch under the parameters before its update: scored before it was learnt from)
    and `online_log_likelihood_` (those batch means averaged with the step sizes, as s is).
    `fit` discards the online state; `partial_fit` after `fit` continues from the fitted
    parameters.
    """

    n_batches_seen_: int = 0
    n_rows_seen_: int = 0
    batch_log_likelihood_: float = -math.inf
    online_log_likelihood_: float = -math.inf
    _online_exact: bool = False

    @property
    def is_online(self) -> bool:
        """Whether the model holds an online state (`partial_fit` was called since `fit`)."""
        return "online_statistics_" in dict(self.named_buffers(recurse=False))

    @torch.no_grad()
    def partial_fit(
        self: _M,
        x: Any,
        y: Any = None,
        *,
        sample_weight: Any = None,
        batch_size: int | None = None,
    ) -> _M:
        """One stepwise-EM update per mini-batch (`y` is ignored).

        The first call on an unfitted model initialises it from its first mini-batch as `fit`
        does (config.init on at most 100,000 of its rows, seeded by config.seed; n_init is not
        used) and fixes the centre at that batch's mean; on a model fitted by `fit` it starts
        from the fitted parameters. Every call then makes one update per mini-batch with step
        rho_t = (t + online_t0)^(-online_kappa) (see the module docstring). A component left
        with less than 1e-3 rows' worth of responsibility in a batch is re-seeded as `fit`
        does (onto the batch's rows worst explained by the current mixture). A mini-batch
        that raises leaves the model as it was (the earlier mini-batches of the call stay
        learnt), so a stream may skip a bad batch and go on.

        Args:
            x: (n, *event_shape) Tensor, array, NpyArray or Dataset (quantised images are
                dequantised, each call with its own noise, seed + 1 + batches seen).
            sample_weight: (n,) non-negative weights multiplying the responsibilities (an
                integer weight equals repeating the row); None: all 1.
            batch_size: split x into consecutive mini-batches of this many rows (the last
                may be shorter), one update each; None: x is one mini-batch.

        Raises:
            ValueError: rows of another shape than the first batch's, NaN/inf, a first
                mini-batch with fewer rows than n_components, bad weights or batch_size,
                or a mini-batch whose weights sum to 0.
        """
        cfg = self.config
        seed = None if cfg.seed is None else cfg.seed + 1 + self.n_batches_seen_
        x, event_shape = self._numbers(x, seed=seed)  # text refused, images dequantised
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer)
            or batch_size < 1
        ):  # fmt: skip
            raise ValueError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
        w = None if sample_weight is None else check_sample_weight(sample_weight, len(x))
        if self.is_fitted:
            self.check_event_shape(x)
        n = len(x)
        step = n if batch_size is None else int(batch_size)
        for start in range(0, n, step):
            stop = min(n, start + step)
            batch = x.rows(start, stop) if isinstance(x, NpyArray) else x[start:stop]
            self._online_batch(batch, event_shape, None if w is None else w[start:stop])
        return self

    # -- one mini-batch ---------------------------------------------------------------------------
    def _online_batch(self, x: Any, event_shape: tuple[int, ...], w: torch.Tensor | None) -> None:
        if w is not None and not float(w.sum()) > 0:
            raise ValueError(
                f"sample_weight sums to 0 over a mini-batch of {len(x)} rows: it would teach "
                "the mixture nothing; give it a positive weight or leave it out"
            )
        fresh, started = not self.is_fitted, False
        try:
            if not self.is_online:
                self._online_start(x, event_shape, w)
                started = True
            else:
                self._check_batch_rows(x, self.online_centre_)
            self._online_update(x, w)
        except BaseException:
            if fresh:
                self.event_shape = None
            elif started:
                self._build_online({})
            raise

    def _online_start(self, x: Any, event_shape: tuple[int, ...], w: torch.Tensor | None) -> None:
        """Initial parameters and s_0: from the first mini-batch (config.init on it, weighted
        by w as `fit` weights its init; centre at its mean) on an unfitted model, else from the
        fitted parameters."""
        cfg = self.config
        if self.is_fitted:  # continue from fit: centre at the mixture's mean
            self._check_batch_rows(x, self.weights_ @ self.means_)
            centre = self.weights_ @ self.means_
        else:
            self._build(event_shape, {})
            self.event_shape = event_shape
            what = "rows" if w is None else "rows of positive sample_weight"
            n, centre, w, _ = self._scan_weighted(
                x, w, lambda rows: f"the first mini-batch has {rows} {what}, fewer than "
                f"n_components={cfg.n_components}: partial_fit initialises the mixture on it; "
                f"pass a first batch of at least {cfg.n_components} {what}",
            )  # fmt: skip
            g = local_generator(cfg.seed)  # on the CPU; None: OS entropy, never the global RNG
            self._initialise(x, n, centre, g, w)
        p = Params(self.weights_, self.means_ - centre, self.covariances_)
        s0 = parameter_statistics(p, cfg.covariance_type, cfg.reg_covar)
        self.register_buffer("online_statistics_", s0)
        self.register_buffer("online_centre_", centre.clone())
        self._online_exact = self.compute_dtype == torch.float64

    def _check_batch_rows(self, x: Any, centre: torch.Tensor) -> None:
        """Reject NaN/inf rows and rows whose squares the compute dtype cannot sum."""
        spread = torch.zeros(self.n_dims, dtype=torch.float64, device=self.device)
        for _, chunk in self._checked_chunks(x, torch.float64):
            spread = torch.maximum(spread, (chunk - centre).abs().amax(0))
        self._check_spread(len(x), spread)

    def _online_update(self, x: Any, w: torch.Tensor | None) -> None:
        """s_t = (1 - rho_t) s_{t-1} + rho_t sbar_t and the M-step; committed only at the end."""
        cfg, ct, d = self.config, self.config.covariance_type, self.n_dims
        centre, s_prev = self.online_centre_, self.online_statistics_
        t = self.n_batches_seen_ + 1
        rho = step_size(t, cfg.online_t0, cfg.online_kappa)
        theta = self._theta(centre)
        for exact in dict.fromkeys([self._online_exact, True]):
            total, stats, weight, rows, positive = self._batch_pass(x, centre, theta, exact, w)
            s = stepwise_update(s_prev, stats / weight, rho)
            p = m_step(s, ct, cfg.reg_covar, d)
            if exact or positive_definite(p.covariances, ct):
                break
        mass = s[:, 0] * positive  # in rows of this batch (of positive weight), as fit counts
        if bool((mass < DEAD_MASS).any()):  # onto the rows the current mixture explains worst
            worst = self._worst_rows(x, centre, cfg.n_components, w)
            p = self._reseed_dead(p, mass, worst, positive)
            s = parameter_statistics(p, ct, cfg.reg_covar)
        old = (self.weights_, self.means_, self.covariances_, self.precisions_cholesky_)
        try:
            self._store(p, centre, mass)  # IllDefinedCovarianceError naming the components
        except BaseException:
            self.weights_, self.means_, self.covariances_, self.precisions_cholesky_ = old
            raise
        mean_lp = float(total / weight)
        self.online_log_likelihood_ = (
            mean_lp if t == 1 else (1 - rho) * self.online_log_likelihood_ + rho * mean_lp
        )
        self.batch_log_likelihood_ = mean_lp
        self.online_statistics_ = s
        self.n_batches_seen_, self.n_rows_seen_ = t, self.n_rows_seen_ + rows
        self._online_exact = exact

    def _batch_pass(self, x: Any, centre: torch.Tensor, theta: torch.Tensor, exact: bool,
                    w: torch.Tensor | None):  # fmt: skip
        """(sum w log p, weighted statistics R^T phi (K, p), total weight, rows, rows of
        positive weight), all-reduced over processes."""
        f64 = {"dtype": torch.float64, "device": self.device}
        total, stats = self._em_pass(x, centre, theta, exact, weights=w)
        rows = torch.tensor(float(len(x)), **f64)
        weight = rows.clone() if w is None else w.sum().to(**f64)
        positive = rows.clone() if w is None else (w > 0).sum().to(**f64)
        for t in (total, stats, weight, rows, positive):
            all_reduce(t)
        return total, stats, weight, int(rows.item()), float(positive)

    # -- saved state ------------------------------------------------------------------------------
    def _build_online(self, fitted: dict[str, Any]) -> None:
        """(GaussianMixture._build) Create the online buffers and counters that config.json's
        fitted "online" facts describe, or discard them when there are none (fit)."""
        for name in ONLINE_BUFFERS:
            if name in dict(self.named_buffers(recurse=False)):
                delattr(self, name)
        facts = fitted.get("online")
        self.n_batches_seen_ = self.n_rows_seen_ = 0
        self.batch_log_likelihood_ = self.online_log_likelihood_ = -math.inf
        self._online_exact = False
        if facts is None:
            return
        ints = (facts["batches"], facts["rows"])
        floats = (facts["batch_log_likelihood"], facts["online_log_likelihood"])
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in ints):
            raise ValueError(f"online batches and rows must be integers >= 1, got {ints}")
        if not all(isinstance(v, float | int) and math.isfinite(v) for v in floats):
            raise ValueError(f"online log-likelihoods must be finite numbers, got {floats}")
        if not isinstance(facts["exact"], bool):
            raise ValueError(f"online exact must be true or false, got {facts['exact']!r}")
        (k, d), ct = self.means_.shape, self.config.covariance_type  # _build made means_
        f64 = {"dtype": torch.float64, "device": self.device_}
        self.register_buffer("online_statistics_", torch.zeros(k, n_features(ct, d), **f64))
        self.register_buffer("online_centre_", torch.zeros(d, **f64))
        self.n_batches_seen_, self.n_rows_seen_ = ints
        self.batch_log_likelihood_, self.online_log_likelihood_ = map(float, floats)
        self._online_exact = facts["exact"]

    def _fitted_meta(self) -> dict[str, Any]:
        meta = super()._fitted_meta()
        if self.is_online:
            meta["online"] = {
                "batches": self.n_batches_seen_,
                "rows": self.n_rows_seen_,
                "batch_log_likelihood": self.batch_log_likelihood_,
                "online_log_likelihood": self.online_log_likelihood_,
                "exact": self._online_exact,
            }
        return meta
