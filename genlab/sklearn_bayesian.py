"""scikit-learn's `BayesianGaussianMixture` contract, numpy in and numpy out, over genlab's
batched variational inference (`genlab.models.BayesianGaussianMixture`, kept as `model_`).

    from genlab.sklearn import BayesianGaussianMixture
    bgm = BayesianGaussianMixture(n_components=10, random_state=0).fit(X)
    bgm.weights_, bgm.predict(X), bgm.score_samples(X), bgm.sample(100)

The constructor takes scikit-learn's parameters (same names and defaults). The starting
responsibilities are drawn exactly as scikit-learn draws them from `random_state` (its own
`KMeans` and `kmeans_plusplus` for "kmeans" and "k-means++", `RandomState.uniform` and
`RandomState.choice` for "random" and "random_from_data"), and the updates and the lower bound
are scikit-learn's, so a fit follows scikit-learn's trajectory to round-off; genlab's batched
E-step makes each iteration faster. `score_samples` is scikit-learn's (the E-step's
normaliser, not a normalised density); `model_.log_prob` is the normalised density of the
posterior-mean mixture.
"""

from __future__ import annotations

import warnings
from numbers import Real
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from sklearn import cluster
from sklearn.base import _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array

from genlab.models import bgmm, mixture
from genlab.models.base import ConvergenceWarning as GenlabConvergenceWarning
from genlab.models.bgmm_maths import WEIGHT_PRIORS
from genlab.sklearn import _MixtureEstimator, _numpy, _writeable

__all__ = ["BayesianGaussianMixture", "initial_responsibilities"]


def initial_responsibilities(
    X: np.ndarray, n_components: int, init_params: str, random_state: np.random.RandomState
) -> np.ndarray:
    """(n, K) starting responsibilities drawn as scikit-learn 1.9's
    `BaseMixture._initialize_parameters` draws them from `random_state` (same draws)."""
    n = len(X)
    resp = np.zeros((n, n_components), dtype=np.float64)
    if init_params == "kmeans":
        km = cluster.KMeans(n_clusters=n_components, n_init=1, random_state=random_state)
        resp[np.arange(n), km.fit(X).labels_] = 1
    elif init_params == "random":
        resp = random_state.uniform(size=(n, n_components))
        resp /= resp.sum(axis=1)[:, np.newaxis]
    elif init_params == "random_from_data":
        indices = random_state.choice(n, size=n_components, replace=False)
        resp[indices, np.arange(n_components)] = 1
    else:  # "k-means++"
        _, indices = cluster.kmeans_plusplus(X, n_components, random_state=random_state)
        resp[indices, np.arange(n_components)] = 1
    return resp


class BayesianGaussianMixture(_MixtureEstimator):
    """Variational Bayesian Gaussian mixture with scikit-learn's API, over genlab's batched
    E-step.

    Parameters are scikit-learn's (`sklearn.mixture.BayesianGaussianMixture`; see its
    documentation for their full meaning), plus genlab's `dtype`, `device` and `chunk_size`.

    Args:
        n_components: K, an upper bound (surplus components end with weight ~0).
        covariance_type: "full", "tied", "diag" or "spherical".
        tol: stop when the lower bound (a total, nats) changes by less than this.
        reg_covar: added to the diagonal of each component's scatter.
        max_iter: iterations per initialisation (0: keep the initial posterior).
        n_init: initialisations, drawn in turn from `random_state`; the best lower bound wins.
        init_params: "kmeans", "k-means++", "random" or "random_from_data" (scikit-learn's).
        weight_concentration_prior_type: "dirichlet_process" or "dirichlet_distribution".
        weight_concentration_prior: gamma / alpha_0 (None: 1 / n_components).
        mean_precision_prior: beta_0 (None: 1). mean_prior: m_0 (None: the data's mean).
        degrees_of_freedom_prior: nu_0 (None: n_features).
        covariance_prior: W_0^-1 (None: the data's covariance, variances, or their mean).
        random_state: None, an int or a `RandomState`: the initial draws (scikit-learn's), and
            genlab's sampling seed `check_random_state(random_state).randint(2**31 - 1)`.
        warm_start: a second `fit` continues from the fitted posterior (one initialisation;
            the first change is measured from the previous `lower_bound_`, as scikit-learn).
        verbose: > 0 shows genlab's progress bar. verbose_interval: accepted, unused.
        dtype, device, chunk_size: genlab's E-step precision, device and rows per chunk.

    Fitted attributes (numpy float64, scikit-learn's shapes): `weights_`, `means_`,
    `covariances_`, `precisions_`, `precisions_cholesky_`, `weight_concentration_` (a pair of
    (K,) arrays for the DP, else (K,)), `mean_precision_`, `degrees_of_freedom_` (a float for
    tied), `weight_concentration_prior_`, `mean_precision_prior_`, `mean_prior_`,
    `degrees_of_freedom_prior_`, `covariance_prior_`; `converged_`, `n_iter_`, `lower_bound_`,
    `lower_bounds_`, `n_features_in_` (and `feature_names_in_` for a DataFrame).
    """

    _parameter_constraints: ClassVar[dict] = {
        **_MixtureEstimator._parameter_constraints,
        "weight_concentration_prior_type": [StrOptions(set(WEIGHT_PRIORS))],
        "weight_concentration_prior": [None, Interval(Real, 0.0, None, closed="neither")],
        "mean_precision_prior": [None, Interval(Real, 0.0, None, closed="neither")],
        "mean_prior": [None, "array-like"],
        "degrees_of_freedom_prior": [None, Interval(Real, 0.0, None, closed="neither")],
        "covariance_prior": [None, "array-like", Interval(Real, 0.0, None, closed="neither")],
    }

    def __init__(
        self,
        *,
        n_components: int = 1,
        covariance_type: mixture.CovarianceType = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: mixture.InitMethod = "kmeans",
        weight_concentration_prior_type: str = "dirichlet_process",
        weight_concentration_prior: float | None = None,
        mean_precision_prior: float | None = None,
        mean_prior: Any = None,
        degrees_of_freedom_prior: float | None = None,
        covariance_prior: Any = None,
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
    def fit(self, X: Any, y: Any = None) -> BayesianGaussianMixture:
        """Fit on X (n_samples, n_features); `y` is ignored. Returns self."""
        self.fit_predict(X, y)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit, then label X by a final E-step: equal to `fit(X).predict(X)`, (n,) int64."""
        warm = self.warm_start and hasattr(self, "converged_")
        X = _writeable(self._check_fit_X(X, warm))
        priors = self._checked_priors(X.shape[1])
        with warnings.catch_warnings():  # re-raised below as scikit-learn's warning
            warnings.simplefilter("ignore", GenlabConvergenceWarning)
            if warm:
                self.model_.fit(X, progress=bool(self.verbose), warm_start=True)
                model = self.model_
            else:
                model = self._fit_runs(X, priors)
        self._set_fitted(model)
        self._warn_not_converged()
        return model.predict(X).cpu().numpy()

    def _checked_priors(self, d: int) -> dict[str, Any]:
        """mean_prior / covariance_prior as arrays (scikit-learn's checks and messages)."""
        if self.degrees_of_freedom_prior is not None and self.degrees_of_freedom_prior <= d - 1:
            raise ValueError(
                "The parameter 'degrees_of_freedom_prior' should be greater than "
                f"{d - 1}, but got {self.degrees_of_freedom_prior:.3f}."
            )
        mean = None
        if self.mean_prior is not None:
            mean = check_array(self.mean_prior, dtype=[np.float64, np.float32], ensure_2d=False)
            if mean.shape != (d,):
                raise ValueError(
                    f"The parameter 'means' should have the shape of {(d,)}, but got {mean.shape}"
                )
        cov = self.covariance_prior
        if cov is not None and self.covariance_type != "spherical":
            cov = check_array(cov, dtype=[np.float64, np.float32], ensure_2d=False)
        return {"mean_prior": mean, "covariance_prior": cov}

    def _new_model(self, priors: dict[str, Any]) -> bgmm.BayesianGaussianMixture:
        return bgmm.BayesianGaussianMixture(
            int(self.n_components),
            covariance_type=self.covariance_type,
            weight_concentration_prior_type=self.weight_concentration_prior_type,
            weight_concentration_prior=_float(self.weight_concentration_prior),
            mean_precision_prior=_float(self.mean_precision_prior),
            degrees_of_freedom_prior=_float(self.degrees_of_freedom_prior),
            tol=float(self.tol),
            reg_covar=float(self.reg_covar),
            max_iter=int(self.max_iter),
            dtype=self.dtype,
            chunk_size=self.chunk_size,
            dequantize=False,
            device=self.device,
            **priors,
        )

    def _fit_runs(self, X: np.ndarray, priors: dict[str, Any]) -> bgmm.BayesianGaussianMixture:
        """n_init fits, each from responsibilities drawn in turn from one `random_state`, as
        scikit-learn draws them; the highest final lower bound is kept (with max_iter=0, the
        last run)."""
        random_state = check_random_state(self.random_state)
        best = None
        for _ in range(int(self.n_init)):
            resp = initial_responsibilities(
                X, int(self.n_components), self.init_params, random_state
            )
            model = self._new_model(priors).fit(X, progress=bool(self.verbose), resp_init=resp)
            if best is None or self.max_iter == 0 or model.lower_bound_ > best.lower_bound_:
                best = model
        return best

    def _set_fitted(self, model: bgmm.BayesianGaussianMixture) -> None:
        self.model_ = model
        for name in (
            "weights_",
            "means_",
            "covariances_",
            "precisions_cholesky_",
            "precisions_",
            "mean_precision_",
            "mean_prior_",
        ):
            setattr(self, name, _numpy(getattr(model, name)))
        wc = _numpy(model.weight_concentration_)
        self.weight_concentration_ = (wc[0], wc[1]) if wc.ndim == 2 else wc
        dof = _numpy(model.degrees_of_freedom_)
        self.degrees_of_freedom_ = float(dof) if dof.ndim == 0 else dof
        prior = _numpy(model.covariance_prior_)
        self.covariance_prior_ = float(prior) if prior.ndim == 0 else prior
        self.weight_concentration_prior_ = model.weight_concentration_prior_
        self.mean_precision_prior_ = model.mean_precision_prior_
        dof0 = model.degrees_of_freedom_prior_
        self.degrees_of_freedom_prior_ = int(dof0) if dof0 == self.n_features_in_ else dof0
        self.converged_ = bool(model.converged_)
        self.n_iter_ = int(model.n_iter_)
        self.lower_bound_ = float(model.lower_bound_)
        self.lower_bounds_ = [float(v) for v in model.lower_bounds_]

    # -- the fitted model -------------------------------------------------------------------------
    def score_samples(self, X: Any) -> np.ndarray:
        """scikit-learn's score: log sum_k exp(E[log pi_k] + E[log N(x | mu_k, Lambda_k)])
        (n_samples,) nats, the E-step's normaliser (not a normalised density; the posterior-
        mean mixture's density is `model_.log_prob`)."""
        X = self._check_X(X)  # before model_: unfitted raises NotFittedError
        return _numpy(self.model_.variational_log_prob(X))

    def score(self, X: Any, y: Any = None) -> float:
        """Mean of `score_samples` over X (`y` is ignored)."""
        return float(self.score_samples(X).mean())


def _float(v: Any) -> float | None:
    return None if v is None else float(v)
