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
Where scikit-learn's users rely on its behaviour, the estimator behaves the same: `warm_start`
(`converged_` and `n_iter_` across successive fits), the stopping rule (|change| < tol, the
first change taken from the previous fit's bound when warm), the texts of the
`ConvergenceWarning` and of the ill-defined-covariance `ValueError`, and `fit_predict` ==
`fit(X).predict(X)`. Beyond scikit-learn: `fit(X, sample_weight=w)` (integer weights equal
repeated rows), weighted `score`/`bic`/`aic`, and `partial_fit` (online EM).
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
from sklearn.utils.validation import (
    _check_sample_weight,
    check_array,
    check_is_fitted,
    validate_data,
)

from genlab.models import gmm, mixture
from genlab.models.base import ConvergenceWarning as GenlabConvergenceWarning

SEED_BOUND = np.iinfo(np.int32).max  # seeds are drawn as check_random_state(rs).randint(this)
# scikit-learn appends this to the ill-defined-covariance message for float32 data
FLOAT32_HINT = (
    " The numerical accuracy can also be improved by passing float64 data instead of float32."
)


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


class _MixtureEstimator(DensityMixin, BaseEstimator):
    """What the two mixture estimators share: the common parameters' constraints, the checks
    of X, and the predictions and sampling delegated to the genlab model `model_`."""

    _parameter_constraints: ClassVar[dict] = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions(set(mixture.COVARIANCE_TYPES))],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions(set(mixture.INIT_METHODS))],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
        "dtype": [StrOptions({"float32", "float64"})],
        "device": [str, torch.device, None],
        "chunk_size": [Interval(Integral, 1, None, closed="left"), None],
    }

    def _set_params_from(self, values: dict[str, Any]) -> None:
        """__init__'s body: store each constructor parameter (`values`: its locals()) as is,
        as scikit-learn requires (no validation until fit)."""
        for name in self._get_param_names():
            setattr(self, name, values[name])

    def _check_fit_X(self, X: Any, warm: bool) -> np.ndarray:
        """X for fit (scikit-learn's checks; a warm start keeps the fitted features).

        Raises:
            ValueError: fewer than 2 rows, or fewer rows than n_components.
        """
        X = validate_data(
            self, X, dtype=[np.float64, np.float32], ensure_min_samples=2, reset=not warm
        )
        if len(X) < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components but got "
                f"n_components = {self.n_components}, n_samples = {len(X)}"
            )
        return X

    def _check_X(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return _writeable(X)

    def _warn_not_converged(self) -> None:
        """scikit-learn's ConvergenceWarning when the kept run did not converge."""
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(gmm.NOT_CONVERGED, ConvergenceWarning, stacklevel=3)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Component probabilities of each row, the model's responsibilities:
        (n_samples, n_components) float64."""
        X = self._check_X(X)  # before model_: unfitted raises NotFittedError
        return _numpy(self.model_.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """Most probable component of each row: (n_samples,) int64."""
        X = self._check_X(X)
        return self.model_.predict(X).cpu().numpy()

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw n_samples points of the (point-estimate) mixture: X (n_samples, n_features)
        float64 and their components y (n_samples,) int64. Rows come in random order
        (scikit-learn groups them by component)."""
        check_is_fitted(self)
        if isinstance(n_samples, bool) or not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples!r}. The sampling requires at least "
                "one sample."
            )
        seed = int(check_random_state(self.random_state).randint(SEED_BOUND))
        x, labels = self.model_.sample(int(n_samples), seed=seed, return_labels=True)
        return _numpy(x), labels.cpu().numpy()


class GaussianMixture(_MixtureEstimator):
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
        warm_start: a second `fit` continues EM from the fitted parameters (exactly: no
            initialisation, n_init ignored) and, as in scikit-learn, its first iteration's
            bound is compared with the previous fit's `lower_bound_` against `tol`, so that
            successive `max_iter=1` fits set `converged_` and `n_iter_` as scikit-learn does.
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
        **_MixtureEstimator._parameter_constraints,
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
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
        self._set_params_from(locals())

    # -- fit --------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> GaussianMixture:
        """Fit by EM on X (n_samples, n_features); `y` is ignored. Returns self.

        sample_weight: optional (n_samples,) weights >= 0 (or a scalar): EM maximises
        sum w log p(x) / sum w, so integer weights equal repeated rows (0: a dropped row); see
        `genlab.models.GaussianMixture.fit`.
        """
        self.fit_predict(X, y, sample_weight=sample_weight)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fit by EM, then label X by a final E-step: equal to `fit(X).predict(X)`, (n,) int64."""
        warm = self.warm_start and hasattr(self, "model_")
        X = self._check_fit_X(X, warm)  # a warm start continues the fit: X keeps its features
        d = X.shape[1]
        if sample_weight is not None:  # scikit-learn's checks and messages, then genlab's
            sample_weight = _check_sample_weight(
                sample_weight, X, dtype=np.float64, ensure_non_negative=True
            )
        starts = self._user_starts(d)  # checked even when a warm start ignores them
        seed = int(check_random_state(self.random_state).randint(SEED_BOUND))
        model = self._model(
            # with every start given, `init` is overwritten: take the cheapest one
            init="random_from_data" if all(v is not None for v in starts) else self.init_params,
            seed=seed,
            n_init=1 if warm else int(self.n_init),  # scikit-learn: one run when warm
            warm_start=warm,
            weights_init=starts[0],
            means_init=starts[1],
            precisions_init=starts[2],
        )
        if warm:
            _continue_from(model, self.model_, self.lower_bound_)
        with warnings.catch_warnings():  # re-raised below as scikit-learn's warning
            warnings.simplefilter("ignore", GenlabConvergenceWarning)
            try:
                model.fit(_writeable(X), sample_weight=sample_weight, progress=bool(self.verbose))
            except gmm.IllDefinedCovarianceError as e:  # scikit-learn's words for it
                float32 = FLOAT32_HINT if X.dtype == np.float32 else ""
                raise ValueError(gmm.ILL_DEFINED + float32) from e
        self._set_fitted(model)
        self._warn_not_converged()
        return model.predict(_writeable(X)).cpu().numpy()

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> GaussianMixture:
        """One stepwise (online) EM update on the mini-batch X (`y` is ignored); returns self.

        Delegates to `genlab.models.GaussianMixture.partial_fit` (step size
        (t + t0)^-kappa, see `genlab.models.gmm_online`): the first call on an unfitted
        estimator initialises the mixture from X (`init_params`, `random_state`, the `*_init`
        starts), a call after `fit` continues from the fitted parameters. The parameter
        attributes are refreshed after each call; `converged_`, `n_iter_` and the lower bounds
        describe the last `fit` only (EM on a stream has no end to converge to).
        """
        first = not hasattr(self, "model_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=first)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(
                sample_weight, X, dtype=np.float64, ensure_non_negative=True
            )
        if first:
            starts = self._user_starts(X.shape[1])
            seed = int(check_random_state(self.random_state).randint(SEED_BOUND))
            model = self._model(
                init="random_from_data" if all(v is not None for v in starts) else self.init_params,
                seed=seed,
                n_init=1,
                weights_init=starts[0],
                means_init=starts[1],
                precisions_init=starts[2],
            )
        else:
            model = self.model_
        try:
            model.partial_fit(_writeable(X), sample_weight=sample_weight)
        except gmm.IllDefinedCovarianceError as e:
            float32 = FLOAT32_HINT if X.dtype == np.float32 else ""
            raise ValueError(gmm.ILL_DEFINED + float32) from e
        self._set_fitted(model, fitted_by_em=False)
        return self

    def _model(self, **options: Any) -> gmm.GaussianMixture:
        """genlab's mixture with this estimator's parameters (and `options`)."""
        return gmm.GaussianMixture(
            int(self.n_components),
            covariance_type=self.covariance_type,
            tol=float(self.tol),
            reg_covar=float(self.reg_covar),
            max_iter=int(self.max_iter),
            dtype=self.dtype,
            chunk_size=self.chunk_size,
            device=self.device,
            **options,
        )

    def _user_starts(self, d: int) -> tuple[Any, Any, Any]:
        k, ct = self.n_components, self.covariance_type
        return (
            None if self.weights_init is None else check_weights(self.weights_init, k),
            None if self.means_init is None else check_means(self.means_init, k, d),
            None
            if self.precisions_init is None
            else check_precisions(self.precisions_init, ct, k, d),
        )

    def _set_fitted(self, model: gmm.GaussianMixture, fitted_by_em: bool = True) -> None:
        """The fitted attributes from `model`; fitted_by_em=False (partial_fit after a fit)
        refreshes the parameters only."""
        self.model_ = model
        self.weights_ = _numpy(model.weights_)
        self.means_ = _numpy(model.means_)
        self.covariances_ = _numpy(model.covariances_)
        self.precisions_cholesky_ = _numpy(model.precisions_cholesky_)
        self.precisions_ = _numpy(model.precisions_)
        if not fitted_by_em and hasattr(self, "converged_"):
            return
        if not fitted_by_em:  # a first partial_fit: no EM run, no lower bound yet
            self.converged_, self.n_iter_, self.lower_bound_, self.lower_bounds_ = (
                False, 0, -math.inf, [],
            )  # fmt: skip
            return
        self.converged_ = bool(model.converged_)
        if self.max_iter == 0:  # scikit-learn: no EM step ran, so no lower bound
            self.n_iter_, self.lower_bound_, self.lower_bounds_ = 0, -math.inf, []
        else:
            self.n_iter_ = int(model.n_iter_)
            self.lower_bound_ = np.float64(model.lower_bound_)  # scikit-learn's types
            self.lower_bounds_ = [np.float64(v) for v in model.lower_bounds_]

    # -- the fitted density -----------------------------------------------------------------------
    def score_samples(self, X: Any) -> np.ndarray:
        """log p(x) of each row, nats: (n_samples,) float64."""
        X = self._check_X(X)
        return _numpy(self.model_.log_prob(X))

    def _weighted_log_prob(self, X: Any, sample_weight: Any) -> tuple[np.ndarray, float]:
        """(w_i log p(x_i) (n,), sum w), w = 1 without weights."""
        lp = self.score_samples(X)
        if sample_weight is None:
            return lp, float(len(lp))
        w = _check_sample_weight(sample_weight, lp, dtype=np.float64, ensure_non_negative=True)
        return np.where(w > 0, w * lp, 0.0), float(w.sum())

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Mean log-likelihood per sample of X, nats: sum w log p(x) / sum w (`y` is ignored;
        w = 1 by default)."""
        wlp, mass = self._weighted_log_prob(X, sample_weight)
        return float(wlp.sum() / mass)

    def bic(self, X: Any, sample_weight: Any = None) -> float:
        """Bayesian information criterion -2 sum w log p(x) + p log(sum w) on X, p the free
        parameters (w = 1 by default: -2 log L + p log n); lower is better."""
        wlp, mass = self._weighted_log_prob(X, sample_weight)
        return float(-2 * wlp.sum() + self.model_.n_parameters * math.log(mass))

    def aic(self, X: Any, sample_weight: Any = None) -> float:
        """Akaike information criterion -2 sum w log p(x) + 2 p on X (lower is better)."""
        wlp, _ = self._weighted_log_prob(X, sample_weight)
        return float(-2 * wlp.sum() + 2 * self.model_.n_parameters)


def _continue_from(model: gmm.GaussianMixture, old: gmm.GaussianMixture, bound: float) -> None:
    """warm_start: give the new `model` (options of this fit, warm_start=True) the fitted
    parameters of `old` exactly, and `bound` (the estimator's `lower_bound_`) as the bound its
    first iteration is compared with, as scikit-learn compares it with its last fit's."""
    was, now = old.config, model.config
    if (was.n_components, was.covariance_type) != (now.n_components, now.covariance_type):
        raise ValueError(
            f"warm_start continues the last fit (n_components={was.n_components}, "
            f"covariance_type={was.covariance_type!r}), which these parameters no longer "
            "match; set warm_start=False to fit afresh"
        )
    model._build(old.event_shape, {})  # the buffers, as genlab.load makes them
    model.event_shape = old.event_shape
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        setattr(model, name, getattr(old, name).detach().clone().to(model.device))
    model.lower_bound_ = bound


def _writeable(X: np.ndarray) -> np.ndarray:
    """X itself, or a copy when read-only (torch.from_numpy warns on read-only memory)."""
    return X if X.flags.writeable else X.copy()


def __getattr__(name: str) -> Any:
    """`genlab.sklearn.BayesianGaussianMixture`, imported on first use (its module imports
    this one's shared estimator base, so an import here at load time would be circular)."""
    if name == "BayesianGaussianMixture":
        from genlab.sklearn_bayesian import BayesianGaussianMixture

        return BayesianGaussianMixture
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
