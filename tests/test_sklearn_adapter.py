"""genlab.sklearn.GaussianMixture: scikit-learn's estimator checks, and scikit-learn as oracle."""

import functools
import os
import re
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
    if name == "check_sample_weights_pandas_series" and not _has_pandas():
        # scikit-learn's check skips itself without pandas: check the same contract (weights
        # given as an array-like that is not an ndarray, as a Series is) with a stand-in
        x, w = separated_clusters(), _ArrayLike(np.arange(180) % 3 + 1.0)
        fitted = GaussianMixture(3, random_state=0).fit(x, sample_weight=w)
        repeated = np.repeat(x, np.arange(180) % 3 + 1, axis=0)
        assert fitted.score(repeated) == pytest.approx(
            GaussianMixture(3, random_state=0).fit(x, sample_weight=np.asarray(w)).score(repeated)
        )
        return
    check(estimator)


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


class _ArrayLike:
    """An array-like that is not an ndarray (what pandas' Series is to scikit-learn)."""

    def __init__(self, values: np.ndarray):
        self.values = values

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)

    def __len__(self) -> int:
        return len(self.values)


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


# -- scikit-learn's behaviours its users rely on (issue 15.2) -------------------------------------
def _fit_recording(estimator, x, **fit_params) -> list[str]:
    """Fit and return the texts of the ConvergenceWarnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(x, **fit_params)
    return [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_warm_start_max_iter_1_sets_converged_like_sklearn(covariance_type):
    # successive one-iteration fits: each compares its bound with the previous fit's, so
    # converged_ turns True once a step changes the bound by less than tol (scikit-learn)
    x = overlapping_clusters()
    params = {"n_components": 3, "covariance_type": covariance_type, "max_iter": 1,
              "warm_start": True, "tol": 0.05, **common_start(x, 3, covariance_type)}  # fmt: skip
    sk, ours = SklearnGMM(**params), GaussianMixture(**params)
    seen = []
    for _ in range(10):
        sk_warned, our_warned = _fit_recording(sk, x), _fit_recording(ours, x)
        assert (ours.converged_, ours.n_iter_) == (sk.converged_, sk.n_iter_)
        assert type(ours.converged_) is bool and type(ours.n_iter_) is int
        assert ours.lower_bound_ == pytest.approx(sk.lower_bound_, abs=1e-9)
        np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=0, atol=1e-9)
        assert our_warned == sk_warned  # the same warning, word for word, on the same fits
        seen.append(ours.converged_)
    assert not seen[0] and True in seen and False in seen[1:]  # both states were compared
    np.testing.assert_allclose(ours.means_, sk.means_, rtol=0, atol=1e-8)


def test_warm_start_loop_converges_before_roundoff_like_sklearn():
    # scikit-learn's test_monotonic_likelihood: without regularisation every EM step raises the
    # likelihood; one-step warm fits must stop on tol (as scikit-learn's do, after the same
    # number of fits) before round-off can lower the score by an ulp
    x = overlapping_clusters()
    params = {"n_components": 3, "reg_covar": 0.0, "max_iter": 1, "warm_start": True,
              "tol": 1e-7, **common_start(x, 3, "full")}  # fmt: skip
    fits = {}
    for cls in (SklearnGMM, GaussianMixture):
        gm, scores = cls(**params), []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for _ in range(600):
                scores.append(gm.fit(x).score(x))
                if gm.converged_:
                    break
        assert gm.converged_
        fits[cls] = np.array(scores)
    ours, sk = fits[GaussianMixture], fits[SklearnGMM]
    assert len(ours) == len(sk) > 10
    assert (np.diff(ours) >= 0).all()  # strictly: not even one ulp lower
    np.testing.assert_allclose(ours, sk, rtol=0, atol=1e-9)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_lower_bounds_never_decrease_and_stop_like_sklearn(covariance_type):
    # run to a tolerance near round-off: EM stops on |change| < tol where scikit-learn stops,
    # and no bound of the trajectory is below the one before by any amount
    x = overlapping_clusters()
    params = {"n_components": 3, "covariance_type": covariance_type, "tol": 1e-10,
              "max_iter": 1000, **common_start(x, 3, covariance_type)}  # fmt: skip
    sk, ours = SklearnGMM(**params).fit(x), GaussianMixture(**params).fit(x)
    assert sk.converged_ and ours.converged_ and ours.n_iter_ == sk.n_iter_ > 20
    assert (np.diff(ours.lower_bounds_) >= 0).all()
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=0, atol=1e-9)


def test_convergence_warning_worded_as_sklearn():
    x = overlapping_clusters()
    params = {"n_components": 3, "max_iter": 2, **common_start(x, 3, "full")}
    (want,) = _fit_recording(SklearnGMM(**params), x)
    assert want.startswith("Best performing initialization did not converge.")
    assert _fit_recording(GaussianMixture(**params), x) == [want]
    assert _fit_recording(GaussianMixture(**{**params, "max_iter": 100}), x) == []


@pytest.mark.parametrize(
    ("covariance_type", "dtype"),
    # not tied in float32: scikit-learn's float32 tied covariance rounds to positive and fits
    [(c, np.float64) for c in COV_TYPES] + [(c, np.float32) for c in ("full", "diag", "spherical")],
)
def test_ill_defined_covariance_error_worded_as_sklearn(covariance_type, dtype):
    # scikit-learn's test_regularisation: as many components as rows on two repeated points
    x = np.vstack([np.ones((5, 2)), np.zeros((5, 2))]).astype(dtype)
    params = {"n_components": 10, "covariance_type": covariance_type, "reg_covar": 0.0,
              "random_state": 0}  # fmt: skip
    errors = []
    for cls in (SklearnGMM, GaussianMixture):
        with pytest.raises(ValueError) as caught, warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            cls(**params).fit(x)
        errors.append(caught.value)
    assert type(errors[1]) is ValueError and str(errors[1]) == str(errors[0])
    assert str(errors[1]).startswith("Fitting the mixture model failed because some components")
    assert ("passing float64 data" in str(errors[1])) == (dtype == np.float32)
    assert GaussianMixture(**{**params, "reg_covar": 1e-6}).fit(x).converged_  # the fix works


def test_fit_predict_is_fit_then_predict_with_restarts_and_weights():
    x = overlapping_clusters()
    w = np.random.default_rng(1).integers(0, 3, len(x)).astype(float)
    params = {"n_components": 3, "n_init": 3, "init_params": "random", "random_state": 7,
              "max_iter": 20}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = GaussianMixture(**params).fit_predict(x, sample_weight=w)
        fitted = GaussianMixture(**params).fit(x, sample_weight=w)
    np.testing.assert_array_equal(labels, fitted.predict(x))
    np.testing.assert_array_equal(labels, fitted.predict_proba(x).argmax(1))


def _documented_attributes() -> list[str]:
    """The names in the Attributes section of scikit-learn's GaussianMixture docstring."""
    doc = SklearnGMM.__doc__
    section = doc[doc.index("Attributes\n    ----------") :].split("See Also")[0]
    return re.findall(r"^    (\w+_) : ", section, flags=re.M)


def test_every_documented_attribute_like_sklearn():
    names = _documented_attributes()
    assert {"weights_", "precisions_cholesky_", "lower_bounds_", "feature_names_in_"} <= set(names)
    x = overlapping_clusters()
    for covariance_type in COV_TYPES:
        params = {"n_components": 3, "covariance_type": covariance_type,
                  **common_start(x, 3, covariance_type)}  # fmt: skip
        sk, ours = SklearnGMM(**params).fit(x), GaussianMixture(**params).fit(x)
        for name in names:
            assert hasattr(ours, name) == hasattr(sk, name), name  # feature_names_in_: frames
            if not hasattr(sk, name):
                continue
            got, want = getattr(ours, name), getattr(sk, name)
            assert type(got) is type(want), name
            if isinstance(want, np.ndarray):
                assert got.dtype == want.dtype and got.shape == want.shape, name
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)
            elif isinstance(want, list):
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)
            else:
                assert got == pytest.approx(want, abs=1e-6), name


def test_feature_names_in_from_a_dataframe_like_sklearn():
    x = overlapping_clusters()
    names = np.array(["a", "b", "c"], dtype=object)
    if not _has_pandas():  # scikit-learn stores names only from data frames: none without pandas
        assert not hasattr(GaussianMixture(3, random_state=0).fit(x), "feature_names_in_")
        return
    import pandas as pd

    frame = pd.DataFrame(x, columns=names)
    sk = SklearnGMM(3, **common_start(x, 3, "full")).fit(frame)
    ours = GaussianMixture(3, **common_start(x, 3, "full")).fit(frame)
    np.testing.assert_array_equal(ours.feature_names_in_, sk.feature_names_in_)
    with pytest.raises(ValueError, match="feature names"):
        ours.score_samples(pd.DataFrame(x, columns=["c", "b", "a"]))


# -- sample_weight (issue 15.3) --------------------------------------------------------------------
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_weighted_fit_equals_sklearn_on_repeated_rows(covariance_type):
    x = overlapping_clusters()
    w = np.random.default_rng(2).integers(0, 4, len(x))
    params = {"n_components": 3, "covariance_type": covariance_type, "tol": 1e-8,
              "max_iter": 500, **common_start(x, 3, covariance_type)}  # fmt: skip
    repeated = np.repeat(x, w, axis=0)
    sk = SklearnGMM(**params).fit(repeated)
    ours = GaussianMixture(**params).fit(x, sample_weight=w)
    assert (ours.n_iter_, ours.converged_) == (sk.n_iter_, sk.converged_)
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=0, atol=1e-9)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(sk, name), rtol=1e-8,
                                   atol=1e-9, err_msg=name)  # fmt: skip
    assert ours.bic(x, sample_weight=w) == pytest.approx(sk.bic(repeated), abs=1e-7)
    assert ours.aic(x, sample_weight=w) == pytest.approx(sk.aic(repeated), abs=1e-7)
    assert ours.score(x, sample_weight=w) == pytest.approx(sk.score(repeated), abs=1e-10)
    assert ours.score(x) == pytest.approx(sk.score(x), abs=1e-9)  # unweighted stays the mean


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        (np.ones(5), r"sample_weight.shape == \(5,\), expected \(370,\)"),
        (np.ones((370, 2)), "1D array or scalar"),
        (-np.ones(370), "Negative values in data passed to `sample_weight`"),
        (np.zeros(370), "at least one non-zero"),
        (np.r_[np.nan, np.ones(369)], "NaN"),
    ],
)
def test_bad_sample_weight_rejected_with_sklearn_messages(weights, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(3).fit(overlapping_clusters(), sample_weight=weights)


def test_scalar_sample_weight_is_no_weight():
    x = overlapping_clusters()
    start = common_start(x, 3, "full")
    plain = GaussianMixture(3, **start).fit(x)
    scaled = GaussianMixture(3, **start).fit(x, sample_weight=2.5)
    np.testing.assert_allclose(scaled.lower_bounds_, plain.lower_bounds_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scaled.means_, plain.means_, rtol=0, atol=1e-12)


# -- partial_fit (issue 15.4's online EM, through the adapter) -------------------------------------
def test_partial_fit_delegates_to_genlab_online_em():
    from genlab.models import GaussianMixture as GenlabGMM

    x = overlapping_clusters()[np.random.default_rng(0).permutation(370)]
    start = common_start(x, 3, "full")
    ours, reference = GaussianMixture(3, **start), GenlabGMM(3, **start)
    w = np.arange(370) % 2 + 1.0
    for rows in np.array_split(np.arange(370), 5):
        assert ours.partial_fit(x[rows], sample_weight=w[rows]) is ours
        reference.partial_fit(x[rows], sample_weight=w[rows])
    np.testing.assert_array_equal(ours.means_, reference.means_.numpy())
    assert ours.model_.n_batches_seen_ == 5 and ours.n_features_in_ == 3
    np.testing.assert_allclose(ours.score_samples(x), reference.log_prob(x).numpy())
    with pytest.raises(ValueError, match="features"):
        ours.partial_fit(x[:10, :2])
    fitted = GaussianMixture(3, **start).fit(x)
    bounds, means = fitted.lower_bounds_, fitted.means_
    fitted.partial_fit(x[:100])  # continues from the fit; the fit's record is kept
    assert fitted.lower_bounds_ == bounds and fitted.n_iter_ == len(bounds)
    assert 0 < np.abs(fitted.means_ - means).max() < 0.5
