"""genlab.sklearn.GaussianMixture: scikit-learn's estimator checks, and scikit-learn as oracle."""

import functools
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SklearnGMM
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from genlab.sklearn import GaussianMixture

COV_TYPES = ["full", "tied", "diag", "spherical"]


pytestmark = pytest.mark.usefixtures("one_thread")


def overlapping_clusters(seed: int = 0) -> np.ndarray:
    """Three correlated, overlapping 3-D clusters of unequal size, far from the origin."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [1.5, 1.0, 0.0], [0.0, 2.0, 1.0]])
    parts = []
    for c, n in zip(centres, (150, 100, 120), strict=True):
        a = rng.normal(size=(3, 3)) * 0.6 + 0.5 * np.eye(3)
        parts.append(rng.normal(size=(n, 3)) @ a + c)
    return np.concatenate(parts) + np.array([40.0, -25.0, 10.0])


def separated_clusters(seed: int = 0) -> np.ndarray:
    """Three well separated 2-D blobs, shuffled (so that unshuffled CV folds mix them)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(60, 2)) + c for c in ([0, 0], [8, 0], [0, 8])])
    return x[rng.permutation(len(x))]


def common_start(x: np.ndarray, k: int, covariance_type: str) -> dict:
    """A poor starting point shared by both implementations: k random rows, unit precisions."""
    d = x.shape[1]
    rng = np.random.default_rng(5)
    precisions = {
        "full": np.stack([np.eye(d)] * k),
        "tied": np.eye(d),
        "diag": np.ones((k, d)),
        "spherical": np.ones(k),
    }[covariance_type]
    return {
        "weights_init": np.full(k, 1.0 / k),
        "means_init": x[rng.choice(len(x), k, replace=False)],
        "precisions_init": precisions,
    }


# -- scikit-learn's estimator checks, one pytest test each -----------------------------------------
def _unwrap(check) -> tuple[str, dict]:
    """(check function name, its keyword arguments) of a (nested) functools.partial."""
    keywords = {}
    while isinstance(check, functools.partial):
        keywords = {**check.keywords, **keywords}
        check = check.func
    return check.__name__, keywords


@parametrize_with_checks([GaussianMixture()])
def test_sklearn_estimator_checks(estimator, check):
    name, keywords = _unwrap(check)
    if name == "check_array_api_input" and os.environ.get("SCIPY_ARRAY_API") != "1":
        # This check skips itself unless SCIPY_ARRAY_API=1, which scipy reads once at import:
        # run it in a fresh interpreter with the variable set rather than skip it.
        code = (
            "from sklearn.utils.estimator_checks import check_array_api_input\n"
            "from genlab.sklearn import GaussianMixture\n"
            f"check_array_api_input('GaussianMixture', GaussianMixture(), **{keywords!r})\n"
        )
        env = {**os.environ, "SCIPY_ARRAY_API": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return
    check(estimator)


# -- scikit-learn as the oracle --------------------------------------------------------------------
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_same_start_same_fit_as_sklearn(covariance_type):
    x = overlapping_clusters()
    params = {"n_components": 3, "covariance_type": covariance_type, "tol": 1e-6, "max_iter": 300}
    start = common_start(x, 3, covariance_type)
    sk = SklearnGMM(**params, **start).fit(x)
    ours = GaussianMixture(**params, **start).fit(x)

    assert sk.n_iter_ >= 20 and sk.converged_  # a real trajectory that stops on tol
    assert (ours.n_iter_, ours.converged_) == (sk.n_iter_, sk.converged_)
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=0, atol=1e-6)
    assert ours.lower_bound_ == pytest.approx(sk.lower_bound_, abs=1e-6)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        got, want = getattr(ours, name), getattr(sk, name)
        assert isinstance(got, np.ndarray) and got.dtype == np.float64, name
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)
    assert ours.n_features_in_ == 3
    np.testing.assert_allclose(ours.score_samples(x), sk.score_samples(x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(x), sk.predict_proba(x), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ours.predict(x), sk.predict(x))
    assert ours.score(x) == pytest.approx(sk.score(x), abs=1e-6)
    assert ours.bic(x) == pytest.approx(sk.bic(x), abs=1e-6)
    assert ours.aic(x) == pytest.approx(sk.aic(x), abs=1e-6)


def test_warm_start_continues_like_sklearn():
    x = overlapping_clusters()
    params = {"n_components": 3, "tol": 0.0, "max_iter": 5, "warm_start": True}
    start = common_start(x, 3, "full")
    sk, ours = SklearnGMM(**params, **start), GaussianMixture(**params, **start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol=0: never converges
        for _ in range(2):
            sk.fit(x)
            ours.fit(x)
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.means_, sk.means_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.precisions_, sk.precisions_, rtol=1e-6, atol=1e-6)
    # the second fit went on where the first stopped: 5 + 5 iterations == 10 in one go
    cold = GaussianMixture(**{**params, "warm_start": False, "max_iter": 10}, **start)
    with pytest.warns(ConvergenceWarning):
        cold.fit(x)
    np.testing.assert_allclose(ours.lower_bounds_, cold.lower_bounds_[5:], rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="features"):  # a warm start keeps the features
        ours.fit(x[:, :2])


def test_max_iter_zero_keeps_the_start():
    # scikit-learn's conventions for max_iter=0 (no EM step: n_iter_=0, no lower bound). Not
    # compared with scikit-learn itself: with all three starts given it raises AttributeError
    # (its _get_parameters reads covariances_, which precisions_init leaves unset).
    x = overlapping_clusters()
    start = common_start(x, 3, "diag")
    ours = GaussianMixture(3, covariance_type="diag", max_iter=0, **start).fit(x)
    assert (ours.n_iter_, ours.converged_, ours.lower_bounds_) == (0, False, [])
    assert ours.lower_bound_ == -np.inf
    np.testing.assert_allclose(ours.weights_, start["weights_init"])
    np.testing.assert_allclose(ours.means_, start["means_init"])
    np.testing.assert_allclose(ours.precisions_, start["precisions_init"])
    dens = [
        multivariate_normal(m, np.diag(1 / p)).logpdf(x) + np.log(w)
        for w, m, p in zip(*start.values(), strict=True)
    ]
    np.testing.assert_allclose(ours.score_samples(x), logsumexp(dens, axis=0), atol=1e-9)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("weights_init", np.array([0.5, 0.4, 0.2])),  # does not sum to 1
        ("weights_init", np.array([0.5, 0.5])),  # wrong shape
        ("means_init", np.zeros((3, 2))),  # wrong number of features
        ("precisions_init", np.array([[[1.0, 0.5], [0.0, 1.0]]] * 3)),  # not symmetric
        ("precisions_init", np.stack([-np.eye(2)] * 3)),  # not positive definite
    ],
)
def test_bad_starting_values_rejected_like_sklearn(name, value):
    x = separated_clusters()
    if name == "means_init":
        x = np.hstack([x, x[:, :1]])
    with pytest.raises(ValueError):
        SklearnGMM(3, **{name: value}).fit(x)
    with pytest.raises(ValueError, match="should"):
        GaussianMixture(3, **{name: value}).fit(x)


# -- the rest of the API ---------------------------------------------------------------------------
def test_sample_shapes_and_reproducibility():
    x = separated_clusters()
    gm = GaussianMixture(3, random_state=0).fit(x)
    xs, ys = gm.sample(50)
    assert xs.shape == (50, 2) and xs.dtype == np.float64
    assert ys.shape == (50,) and set(np.unique(ys)) <= {0, 1, 2}
    xs2, ys2 = gm.sample(50)
    np.testing.assert_array_equal(xs, xs2)  # an int random_state: the same draws every call
    np.testing.assert_array_equal(ys, ys2)
    assert gm.sample()[0].shape == (1, 2)  # n_samples=1 by default
    other = GaussianMixture(3, random_state=1).fit(x).sample(50)[0]
    assert not np.allclose(np.sort(xs, axis=0), np.sort(other, axis=0))
    with pytest.raises(ValueError, match="n_samples"):
        gm.sample(0)


def test_random_state_int_or_randomstate_same_fit():
    x = overlapping_clusters()
    a = GaussianMixture(3, init_params="random", random_state=3).fit(x)
    b = GaussianMixture(3, init_params="random", random_state=np.random.RandomState(3)).fit(x)
    np.testing.assert_array_equal(a.means_, b.means_)
    assert a.lower_bounds_ == b.lower_bounds_


def test_fit_predict_equals_fit_then_predict():
    x = overlapping_clusters()
    labels = GaussianMixture(3, max_iter=3, random_state=0)
    with pytest.warns(ConvergenceWarning):  # scikit-learn's warning class, not genlab's
        labels = labels.fit_predict(x)
    with pytest.warns(ConvergenceWarning):
        fitted = GaussianMixture(3, max_iter=3, random_state=0).fit(x)
    np.testing.assert_array_equal(labels, fitted.predict(x))
    assert labels.dtype == np.int64 and len(np.unique(labels)) == 3


def test_pipeline_and_grid_search():
    x = separated_clusters() * 10 + 100
    pipe = make_pipeline(StandardScaler(), GaussianMixture(3, random_state=0)).fit(x)
    scaler, gm = pipe[0], pipe[1]
    assert pipe.score(x) == pytest.approx(gm.score(scaler.transform(x)))
    assert np.isfinite(pipe.score(x))

    search = GridSearchCV(GaussianMixture(random_state=0), {"n_components": [1, 2, 3]}, cv=3)
    search.fit(separated_clusters())
    assert search.best_params_ == {"n_components": 3}
    assert np.all(np.diff(search.cv_results_["mean_test_score"]) > 0)


def test_verbose_shows_progress_bar(capsys):
    x = separated_clusters()
    GaussianMixture(3, random_state=0).fit(x)
    assert "EM" not in capsys.readouterr().err
    GaussianMixture(3, random_state=0, verbose=1).fit(x)
    assert "EM" in capsys.readouterr().err


def test_far_rows_and_absurd_sample_sizes():
    x = separated_clusters()
    gm = GaussianMixture(n_components=3, random_state=0).fit(x)
    rows = np.concatenate([x[:2], [[1e18, 0.0], [0.0, 1e10]]])
    scores = gm.score_samples(rows)
    np.testing.assert_array_equal(scores[:2], gm.score_samples(x[:2]))
    assert np.isfinite(scores).all() and scores[2:].max() < scores[:2].min()
    with pytest.raises(ValueError, match="of memory"):
        gm.sample(10**12)
