"""scikit-learn's `GaussianMixture` contract, numpy in and numpy out, over genlab's batched EM.

    from genlab.sklearn import GaussianMixture
    gm = GaussianMixture(n_components=3, random_state=0).fit(X)      # X: (n_samples, n_features)
    gm.score_samples(X), gm.predict(X), gm.sample(100), gm.bic(X)

The estimator takes scikit-learn's constructor parameters (same names and defaults), validates
inputs with scikit-learn's own helpers (so errors and types are scikit-learn's) and delegates
the EM, the densities and the sampling to `genlab.models.GaussianMixture`, kept as `model_`
(save it with `gm.model_.save(path)`). Given the same starting values it follows scikit-learn's
EM trajectory to round-off; what differs is how the starting values are drawn (genlab's own
k-means, not `sklearn.cluster.KMeans`) and that components left with no data are re-seeded.
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from genlab.models import gmm
from genlab.models.base import ConvergenceWarning as GenlabConvergenceWarning

SEED_BOUND = np.iinfo(np.int32).max  # seeds are drawn as check_random_state(rs).randint(this)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _shape_error(name: str, expected: tuple[int, ...], got: tuple[int, ...]) -> ValueError:
    return ValueError(f"The parameter '{name}' should have the shape of {expected}, but got {got}")


def check_weights(weights: Any, k: int) -> np.ndarray:
    """(K,) float64 weights in [0, 1] that sum to 1 (float64: to 1e-8)."""
    w = check_array(weights, dtype=[np.float64, np.float32], ensure_2d=False)
    if w.shape != (k,):
        raise _shape_error("weights", (k,), w.shape)
    if (w < 0).any() or (w > 1).any():
        raise ValueError(
            f"The parameter 'weights' should be in the range [0, 1], but got max value "
            f"{w.max():.5f}, min value {w.min():.5f}"
        )
    atol = 1e-6 if w.dtype == np.float32 else 1e-8
    if abs(1.0 - float(w.sum())) > atol:
        raise ValueError(
            f"The parameter 'weights' should be normalized, but got sum(weights) = {w.sum():.5f}"
        )
    return w.astype(np.float64)


def check_means(means: Any, k: int, d: int) -> np.ndarray:
    """(K, D) float64 means."""
    mu = check_array(means, dtype=[np.float64, np.float32], ensure_2d=False)
    if mu.shape != (k, d):
        raise _shape_error("means", (k, d), mu.shape)
    return mu.astype(np.float64)


def check_precisions(precisions: Any, covariance_type: str, k: int, d: int) -> np.ndarray:
    """Precisions in the covariance type's shape: symmetric positive definite, or positive."""
    shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]
    p = check_array(
        precisions,
        dtype=[np.float64, np.float32],
        ensure_2d=False,
        allow_nd=covariance_type == "full",
    ).astype(np.float64)
    if p.shape != shape:
        raise _shape_error(f"{covariance_type} precision", shape, p.shape)
    if covariance_type in ("full", "tied"):
        mats = p.reshape(-1, d, d)
        symmetric = np.allclose(mats, mats.transpose(0, 2, 1), rtol=1e-5, atol=1e-8)
        if not (symmetric and (np.linalg.eigvalsh(mats) > 0).all()):
            raise ValueError(
                f"'{covariance_type} precision' should be symmetric, positive-definite"
            )
    elif (p <= 0).any():
        raise ValueError(f"'{covariance_type} precision' should be positive")
    return p


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM, with scikit-learn's API, over genlab's batched EM.

    Parameters are scikit-learn's (`sklearn.mixture.GaussianMixture`): see its documentation
    for their full meaning. How each reaches genlab:

    Args:
        n_components: K.
        covariance_type: "full" (K, D, D), "tied" (D, D), "diag" (K, D), "spherical" (K,).
        tol: EM stops when the mean log-likelihood (nats) changes by less than this.
        reg_covar: added to the diagonal of every covariance.
        max_iter: EM iterations per initialisation (0: keep the initial parameters).
        n_init: initialisations; the one with the highest final lower bound is kept.
        init_params: genlab's `init` ("kmeans", "k-means++", "random", "random_from_data");
            genlab runs its own k-means, so the starting point differs from scikit-learn's
            for the same `random_state`.
        weights_init, means_init, precisions_init: starting values, scikit-learn's shapes.
        random_state: None, an int or a `RandomState`; genlab's seed is
            `check_random_state(random_state).randint(2**31 - 1)`, drawn once per `fit` and
            once per `sample` (so an int gives the same samples at every call).
        warm_start: a second `fit` continues EM from the fitted parameters (one
            initialisation). Unlike scikit-learn, the first iteration of the new fit is never
            compared with the previous fit's lower bound, so it runs at least two iterations.
        verbose: > 0 shows genlab's progress bar (per-iteration log-likelihood and change).
        verbose_interval: accepted for compatibility; the bar refreshes every iteration.
        dtype: genlab's E-step precision ("float64" matches scikit-learn to round-off).
        device: "cuda", "cpu" or None (cuda when present).
        chunk_size: rows per chunk of genlab's E/M passes (None: about 4M feature elements).

    Fitted attributes (numpy float64 copies of `model_`'s tensors, scikit-learn's shapes):
    `weights_`, `means_`, `covariances_`, `precisions_`, `precisions_cholesky_`; `converged_`,
    `n_iter_`, `lower_bound_` and `lower_bounds_` (mean log-likelihood in nats at each E-step
    of the kept run), `n_features_in_` (and `feature_names_in_` for a DataFrame). Predictions
    are computed by `model_`: editing the arrays does not change them.
    """

    _parameter_constraints: ClassVar[dict] = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions(set(gmm.COVARIANCE_TYPES))],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions(set(gmm.INIT_METHODS))],
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
        "dtype": [StrOptions({"float32", "float64"})],
        "device": [str, torch.device, None],
        "chunk_size": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: gmm.CovarianceType = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: gmm.InitMethod = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        random_state: int | np.random.RandomState | None = None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        dtype: Literal["float32", "float64"] = "float64",
        device: str | torch.device | None = None,
        chunk_size: int | None = None,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.dtype = dtype
        self.device = device
        self.chunk_size = chunk_size

    # -- fit --------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> GaussianMixture:
        """Fit by EM on X (n_samples, n_features); `y` is ignored. Returns self."""
        self.fit_predict(X, y)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit by EM, then label X by a final E-step: equal to `fit(X).predict(X)`, (n,) int64."""
        warm = self.warm_start and hasattr(self, "converged_")
        # a warm start continues the previous fit, so X must have its features
        X = validate_data(
            self, X, dtype=[np.float64, np.float32], ensure_min_samples=2, reset=not warm
        )
        n, d = X.shape
        if n < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components but got "
                f"n_components = {self.n_components}, n_samples = {n}"
            )
        starts = self._previous_fit() if warm else self._user_starts(d)
        seed = int(check_random_state(self.random_state).randint(SEED_BOUND))
        model = gmm.GaussianMixture(
            int(self.n_components),
            covariance_type=self.covariance_type,
            tol=float(self.tol),
            reg_covar=float(self.reg_covar),
            max_iter=int(self.max_iter),
            n_init=1 if warm else int(self.n_init),
            # with every start given, `init` is overwritten: take the cheapest one
            init="random_from_data" if all(v is not None for v in starts) else self.init_params,
            seed=seed,
            dtype=self.dtype,
            chunk_size=self.chunk_size,
            device=self.device,
            weights_init=starts[0],
            means_init=starts[1],
            precisions_init=starts[2],
        )
        with warnings.catch_warnings():  # re-raised below as scikit-learn's warning
            warnings.simplefilter("ignore", GenlabConvergenceWarning)
            model.fit(_writeable(X), progress=bool(self.verbose))
        self._set_fitted(model)
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                f"EM did not converge in max_iter={self.max_iter} iterations (tol={self.tol}): "
                "raise max_iter or tol, try other init parameters, or check for degenerate data",
                ConvergenceWarning,
                stacklevel=2,
            )
        return model.predict(_writeable(X)).cpu().numpy()

    def _user_starts(self, d: int) -> tuple[Any, Any, Any]:
        k, ct = self.n_components, self.covariance_type
        return (
            None if self.weights_init is None else check_weights(self.weights_init, k),
            None if self.means_init is None else check_means(self.means_init, k, d),
            None
            if self.precisions_init is None
            else check_precisions(self.precisions_init, ct, k, d),
        )

    def _previous_fit(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """warm_start: the last fit's parameters as starting values (copies)."""
        return self.weights_.copy(), self.means_.copy(), self.precisions_.copy()

    def _set_fitted(self, model: gmm.GaussianMixture) -> None:
        self.model_ = model
        self.weights_ = _numpy(model.weights_)
        self.means_ = _numpy(model.means_)
        self.covariances_ = _numpy(model.covariances_)
        self.precisions_cholesky_ = _numpy(model.precisions_cholesky_)
        self.precisions_ = _numpy(model.precisions_)
        self.converged_ = bool(model.converged_)
        if self.max_iter == 0:  # scikit-learn: no EM step ran, so no lower bound
            self.n_iter_, self.lower_bound_, self.lower_bounds_ = 0, -math.inf, []
        else:
            self.n_iter_ = int(model.n_iter_)
            self.lower_bound_ = float(model.lower_bound_)
            self.lower_bounds_ = [float(v) for v in model.lower_bounds_]

    # -- the fitted density -----------------------------------------------------------------------
    def _check_X(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return _writeable(X)

    def score_samples(self, X: Any) -> np.ndarray:
        """log p(x) of each row, nats: (n_samples,) float64."""
        X = self._check_X(X)
        return _numpy(self.model_.log_prob(X))

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per sample of X, nats (`y` is ignored)."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X: Any) -> np.ndarray:
        """Posterior component probabilities p(k | x): (n_samples, n_components) float64."""
        X = self._check_X(X)
        return _numpy(self.model_.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """Most probable component of each row: (n_samples,) int64."""
        X = self._check_X(X)
        return self.model_.predict(X).cpu().numpy()

    def bic(self, X: Any) -> float:
        """Bayesian information criterion -2 log L + p log n on X (lower is better)."""
        lp = self.score_samples(X)
        return float(-2 * lp.sum() + self.model_.n_parameters * math.log(len(lp)))

    def aic(self, X: Any) -> float:
        """Akaike information criterion -2 log L + 2 p on X (lower is better)."""
        return float(-2 * self.score_samples(X).sum() + 2 * self.model_.n_parameters)

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw n_samples points: X (n_samples, n_features) float64 and their components y
        (n_samples,) int64. Rows come in random order (scikit-learn groups them by component).
        """
        check_is_fitted(self)
        if isinstance(n_samples, bool) or not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples!r}. The sampling requires at least "
                "one sample."
            )
        seed = int(check_random_state(self.random_state).randint(SEED_BOUND))
        x, labels = self.model_.sample(int(n_samples), seed=seed, return_labels=True)
        return _numpy(x), labels.cpu().numpy()


def _writeable(X: np.ndarray) -> np.ndarray:
    """X itself, or a copy when read-only (torch.from_numpy warns on read-only memory)."""
    return X if X.flags.writeable else X.copy()
