"""The Bayesian Gaussian mixture against scikit-learn's (same start, same trajectory), its
maths against closed forms, the protocol, the estimator adapter and the BIC-free selection."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.mixture import BayesianGaussianMixture as SklearnBGMM

import genlab
from genlab import evaluation
from genlab.compare import Settings, compare
from genlab.models import FAMILIES, BayesianGaussianMixture, ConvergenceWarning
from genlab.models import bgmm_maths as bm
from genlab.sklearn_bayesian import BayesianGaussianMixture as SkBGMM

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::genlab.models.ConvergenceWarning"),  # tol=0 fits
]

COVARIANCES = ["full", "tied", "diag", "spherical"]
PRIORS = ["dirichlet_process", "dirichlet_distribution"]


def blobs(n_per: int = 100, d: int = 3, seed: int = 0) -> np.ndarray:
    """Three Gaussian clusters of n_per points in d dimensions."""
    rng = np.random.RandomState(seed)
    centres = np.array([[0.0] * d, [6.0] * d, [0.0] * (d - 1) + [7.0]])
    return np.concatenate(
        [rng.randn(n_per, d) * s + c for c, s in zip(centres, (1, 0.7, 1.3), strict=True)]
    )


X = blobs()


def separated(n_per: int = 200, d: int = 2, seed: int = 0) -> torch.Tensor:
    """Three unit-variance clusters 7 apart (at 0, 7 e_1, 7 e_2), float64."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.zeros(3, d, dtype=torch.float64)
    centres[1, 0], centres[2, 1] = 7.0, 7.0
    return torch.cat([torch.randn(n_per, d, generator=g, dtype=torch.float64) + c for c in centres])


def sklearn_random_start(n: int, k: int, seed: int) -> np.ndarray:
    """scikit-learn's init_params="random" responsibilities for random_state=seed."""
    resp = np.random.RandomState(seed).uniform(size=(n, k))
    return resp / resp.sum(1, keepdims=True)


def fit_both(ct: str, wt: str, k: int = 5, iters: int = 12, **priors):
    kw = {"covariance_type": ct, "weight_concentration_prior_type": wt, **priors}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SklearnBGMM(
            n_components=k, init_params="random", random_state=1, max_iter=iters, tol=0.0, **kw
        ).fit(X)
        ours = BayesianGaussianMixture(k, max_iter=iters, tol=0.0, **kw).fit(
            torch.from_numpy(X), resp_init=sklearn_random_start(len(X), k, 1)
        )
    return sk, ours


# -- same start, same trajectory -------------------------------------------------------------------
@pytest.mark.parametrize("wt", PRIORS)
@pytest.mark.parametrize("ct", COVARIANCES)
def test_lower_bound_and_posterior_follow_scikit_learn(ct, wt):
    """From scikit-learn's own start, every iteration's lower bound agrees to 1e-9 relative
    (the target is 1e-6), and so do the posterior and the predictions."""
    sk, ours = fit_both(ct, wt)
    np.testing.assert_allclose(ours.lower_bounds_, np.ravel(sk.lower_bounds_), rtol=1e-9)
    assert ours.n_iter_ == sk.n_iter_ == 12
    close = {"rtol": 1e-8, "atol": 1e-10}
    for name in (
        "weights_",
        "means_",
        "covariances_",
        "precisions_cholesky_",
        "mean_precision_",
        "degrees_of_freedom_",
        "mean_prior_",
    ):
        np.testing.assert_allclose(getattr(ours, name).numpy(), getattr(sk, name), **close)
    np.testing.assert_allclose(ours.precisions_.numpy(), sk.precisions_, **close)
    np.testing.assert_allclose(
        ours.weight_concentration_.numpy(), np.asarray(sk.weight_concentration_), **close
    )
    np.testing.assert_allclose(ours.covariance_prior_.numpy(), sk.covariance_prior_, **close)
    x = torch.from_numpy(X)
    np.testing.assert_allclose(ours.variational_log_prob(x).numpy(), sk.score_samples(X), **close)
    np.testing.assert_allclose(ours.predict_proba(x).numpy(), sk.predict_proba(X), atol=1e-9)


def test_user_priors_follow_scikit_learn():
    priors = {
        "weight_concentration_prior": 0.3,
        "mean_precision_prior": 0.5,
        "degrees_of_freedom_prior": 5.0,
    }
    arrays = {"mean_prior": np.array([1.0, -1.0, 2.0]), "covariance_prior": 2 * np.eye(3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SklearnBGMM(
            n_components=4,
            init_params="random",
            random_state=1,
            max_iter=8,
            tol=0.0,
            **priors,
            **arrays,
        ).fit(X)
        ours = BayesianGaussianMixture(4, max_iter=8, tol=0.0, **priors, **arrays).fit(
            X, resp_init=sklearn_random_start(len(X), 4, 1)
        )
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=1e-9)
    np.testing.assert_allclose(ours.means_.numpy(), sk.means_, rtol=1e-8)


@pytest.mark.parametrize(
    ("ct", "wt"),
    [("full", PRIORS[0]), ("diag", PRIORS[0]), ("spherical", PRIORS[0]), ("tied", PRIORS[1])],
)
def test_adapter_follows_scikit_learn_from_its_kmeans_start(ct, wt):
    """The estimator draws scikit-learn's k-means start from random_state (its own KMeans),
    so the whole fit, n_init=2 included, is scikit-learn's to round-off.

    The cases are ones where the second start wins by far more than round-off: where both
    starts reach the same optimum (diag with the Dirichlet distribution at every seed 0-39)
    the winner is decided by the last bits of the bound, and either choice is right."""
    kw = {
        "n_components": 6,
        "covariance_type": ct,
        "weight_concentration_prior_type": wt,
        "random_state": 3,
        "max_iter": 200,
    }
    first = SklearnBGMM(**kw, n_init=1).fit(X).lower_bound_
    kw["n_init"] = 2
    sk, ours = SklearnBGMM(**kw).fit(X), SkBGMM(**kw).fit(X)
    assert sk.lower_bound_ - first > 1e-9 * abs(first), "a round-off tie between the starts"
    np.testing.assert_allclose(ours.lower_bounds_, np.ravel(sk.lower_bounds_), rtol=1e-9)
    assert (ours.n_iter_, ours.converged_) == (sk.n_iter_, sk.converged_)
    np.testing.assert_allclose(ours.weights_, sk.weights_, atol=1e-9)
    np.testing.assert_array_equal(ours.predict(X), sk.predict(X))
    np.testing.assert_allclose(ours.score_samples(X), sk.score_samples(X), rtol=1e-9)
    assert ours.score(X) == pytest.approx(sk.score(X), rel=1e-9)
    assert ours.n_features_in_ == 3
    if wt == "dirichlet_process":
        assert isinstance(ours.weight_concentration_, tuple)
        np.testing.assert_allclose(
            ours.weight_concentration_[1], sk.weight_concentration_[1], rtol=1e-8, atol=1e-9
        )
    assert ours.degrees_of_freedom_prior_ == sk.degrees_of_freedom_prior_ == 3


@pytest.mark.parametrize("init", ["random", "random_from_data", "k-means++"])
def test_adapter_starts_as_scikit_learn_for_every_init(init):
    kw = {
        "n_components": 4,
        "init_params": init,
        "random_state": 0,
        "max_iter": 3,
        "covariance_type": "diag",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk, ours = SklearnBGMM(**kw).fit(X), SkBGMM(**kw).fit(X)
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=1e-9)


def test_warm_start_continues_as_scikit_learn():
    """max_iter=1 fits with warm_start: the same lower bounds, n_iter_ and converged_."""
    kw = {"n_components": 4, "random_state": 0, "max_iter": 1, "warm_start": True, "tol": 1e-1}
    sk, ours = SklearnBGMM(**kw), SkBGMM(**kw)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(60):
            sk.fit(X)
            ours.fit(X)
            assert ours.lower_bound_ == pytest.approx(float(sk.lower_bound_), rel=1e-9)
            assert (ours.n_iter_, ours.converged_) == (sk.n_iter_, sk.converged_)
            seen.append(ours.converged_)
            if ours.converged_:
                break
    assert seen[0] is False and seen[-1] is True and len(seen) > 2  # converges on the way


# -- what the prior does -----------------------------------------------------------------------
@pytest.mark.parametrize("init", ["kmeans", "random", "k-means++"])
def test_dirichlet_process_switches_off_surplus_components(init):
    """Three clusters and K=10: the DP prior keeps 3 components (weight > 0.01), or 4 where
    the mean-field fit stays in a local optimum that splits a cluster; the other components
    are switched off."""
    x = separated()
    model = BayesianGaussianMixture(10, init=init, max_iter=300).fit(x)
    assert model.converged_
    assert 3 <= model.effective_components() <= 4
    assert sorted(model.weights_.numpy())[-3] > 0.25  # each cluster has its component
    assert model.weights_.sort().values[:6].sum() < 0.03  # six or more are switched off
    est = SkBGMM(n_components=10, random_state=0, max_iter=300).fit(x.numpy())
    assert 3 <= (est.weights_ > 0.01).sum() <= 4


# -- the maths alone ---------------------------------------------------------------------------
def test_expected_log_weights_against_monte_carlo():
    """E[log pi_k] of the stick-breaking Beta posterior and of a Dirichlet, by sampling
    (within 5 standard errors)."""
    a, b = torch.tensor([3.0, 2.0, 5.0]), torch.tensor([4.0, 1.5, 0.5])
    alpha = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):  # torch.distributions draw from the global RNG
        torch.manual_seed(0)
        v = torch.distributions.Beta(a.double(), b.double()).sample((40_000,))
        pi = torch.distributions.Dirichlet(alpha).sample((40_000,))
    sticks = torch.cat([torch.ones(len(v), 1, dtype=v.dtype), (1 - v).cumprod(1)[:, :-1]], 1)
    for draws, exact in (
        ((v * sticks).log(), bm.expected_log_weights(torch.stack([a, b]).double(), PRIORS[0])),
        (pi.log(), bm.expected_log_weights(alpha, PRIORS[1])),
    ):
        error = 5 * draws.std(0) / len(draws) ** 0.5
        assert ((exact - draws.mean(0)).abs() < error).all(), (exact, draws.mean(0))


def test_expected_log_det_against_monte_carlo():
    """E[log |Lambda|] - log |nu W| for Lambda ~ Wishart(W, nu) (scipy's sampler)."""
    from scipy.stats import wishart

    nu, w = 6.5, np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]])
    log_dets = np.linalg.slogdet(wishart(df=nu, scale=w).rvs(50_000, random_state=1))[1]
    mc = log_dets.mean() - np.linalg.slogdet(nu * w)[1]
    exact = bm.expected_log_det(torch.tensor(nu, dtype=torch.float64), 3)
    assert float(exact) == pytest.approx(mc, abs=5 * log_dets.std() / len(log_dets) ** 0.5)


def test_posterior_weights_are_the_stick_breaking_means():
    a, b = torch.tensor([2.0, 3.0, 1.0]), torch.tensor([5.0, 1.0, 0.1])
    w = bm.posterior_weights(torch.stack([a, b]).double(), "dirichlet_process")
    ev = a / (a + b)
    raw = torch.stack([ev[0], (1 - ev[0]) * ev[1], (1 - ev[0]) * (1 - ev[1]) * ev[2]])
    torch.testing.assert_close(w, (raw / raw.sum()).double())


# -- the protocol ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    return BayesianGaussianMixture(6, max_iter=100).fit(torch.from_numpy(X))


def test_log_prob_is_the_posterior_mean_mixtures_exact_density(fitted):
    """log_prob = log sum_k w_k N(x | m_k, Sigma_k) with the point estimates (scipy)."""
    m = fitted
    pts = X[:20] + 0.3
    comps = [
        np.log(w) + multivariate_normal(mu, cov).logpdf(pts)
        for w, mu, cov in zip(
            m.weights_.numpy(), m.means_.numpy(), m.covariances_.numpy(), strict=True
        )
    ]
    expected = logsumexp(np.stack(comps), axis=0)
    np.testing.assert_allclose(m.log_prob(pts).numpy(), expected, rtol=1e-10)
    assert m.log_prob_kind == "exact"
    assert m.score(pts) == pytest.approx(expected.mean(), rel=1e-10)
    # the point-estimate density is normalised, the variational score is not: it is lower
    assert (m.variational_log_prob(pts) < m.log_prob(pts)).all()


def test_samples_follow_the_point_estimate_mixture(fitted):
    s, labels = fitted.sample(20_000, seed=0, return_labels=True)
    counts = torch.bincount(labels, minlength=6).double() / len(labels)
    torch.testing.assert_close(counts, fitted.weights_, atol=0.015, rtol=0)
    torch.testing.assert_close(s.mean(0), fitted.weights_ @ fitted.means_, atol=0.06, rtol=0)
    assert torch.equal(s, fitted.sample(20_000, seed=0))


def test_save_load_keeps_every_fitted_tensor(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    loaded = genlab.load(tmp_path / "m")
    assert type(loaded) is BayesianGaussianMixture and loaded.lower_bounds_ == fitted.lower_bounds_
    for k, v in fitted.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    x = torch.from_numpy(X[:30])
    torch.testing.assert_close(loaded.predict_proba(x), fitted.predict_proba(x))
    assert loaded.degrees_of_freedom_prior_ == fitted.degrees_of_freedom_prior_ == 3.0


@pytest.mark.parametrize("ct", COVARIANCES)
def test_residual_path_gives_the_feature_paths_answers(ct):
    """The large-D path (whitened residuals, Gram matrices) against the feature path, from
    the same start: lower bounds, densities and responsibilities to round-off."""
    x, resp = torch.from_numpy(X), sklearn_random_start(len(X), 4, 2)
    fits = {
        path: BayesianGaussianMixture(4, covariance_type=ct, max_iter=10, tol=0.0, estep=path,
                                      chunk_size=64).fit(x, resp_init=resp)
        for path in ("features", "residuals")
    }  # fmt: skip
    ours, ref = fits["residuals"], fits["features"]
    assert (ours.estep_, ref.estep_) == ("residuals", "features")
    np.testing.assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=1e-10)
    torch.testing.assert_close(ours.log_prob(x), ref.log_prob(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.predict_proba(x), ref.predict_proba(x), rtol=0, atol=1e-10)
    low = BayesianGaussianMixture(4, covariance_type=ct, max_iter=10, tol=0.0, dtype="float32",
                                  estep="residuals").fit(x, resp_init=resp)  # fmt: skip
    np.testing.assert_allclose(low.lower_bounds_, ref.lower_bounds_, rtol=1e-5)


def test_auto_path_follows_the_cost_model():
    assert BayesianGaussianMixture(4).fit(X).estep_ == "features"  # D = 3
    wide = torch.randn(40, 300, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = BayesianGaussianMixture(2, max_iter=2).fit(wide)
    assert model.estep_ == "residuals" and torch.isfinite(model.log_prob(wide)).all()


def test_chunks_float32_and_warm_start_change_nothing_that_matters():
    x = torch.from_numpy(X)
    resp = sklearn_random_start(len(X), 4, 2)
    base = BayesianGaussianMixture(4, max_iter=10, tol=0.0).fit(x, resp_init=resp)
    chunked = BayesianGaussianMixture(4, max_iter=10, tol=0.0, chunk_size=7).fit(x, resp_init=resp)
    np.testing.assert_allclose(chunked.lower_bounds_, base.lower_bounds_, rtol=1e-12)
    low = BayesianGaussianMixture(4, max_iter=10, tol=0.0, dtype="float32").fit(x, resp_init=resp)
    np.testing.assert_allclose(low.lower_bounds_, base.lower_bounds_, rtol=1e-5)
    five = BayesianGaussianMixture(4, max_iter=5, tol=0.0).fit(x, resp_init=resp)
    five.fit(x, warm_start=True)
    np.testing.assert_allclose(five.lower_bounds_, base.lower_bounds_[5:], rtol=1e-10)


def test_sampled_init_on_more_rows_than_the_init_sample(monkeypatch):
    """Beyond INIT_SAMPLE rows, init statistics come from a sample scaled to n rows."""
    from genlab.models import mixture

    monkeypatch.setattr(mixture, "INIT_SAMPLE", 100)
    model = BayesianGaussianMixture(8, max_iter=200).fit(X)
    assert model.effective_components() == 3


def test_bad_input_is_refused_with_the_fix():
    x = torch.from_numpy(X)
    with pytest.raises(ValueError, match="degrees_of_freedom_prior should be greater than 2"):
        BayesianGaussianMixture(2, degrees_of_freedom_prior=1.5).fit(x)
    with pytest.raises(ValueError, match=r"covariance_prior must have shape \(3, 3\)"):
        BayesianGaussianMixture(2, covariance_prior=np.eye(2)).fit(x)
    with pytest.raises(ValueError, match="positive-definite"):
        BayesianGaussianMixture(2, covariance_prior=-np.eye(3)).fit(x)
    with pytest.raises(ValueError, match=r"mean_prior must be a finite \(3,\)"):
        BayesianGaussianMixture(2, mean_prior=[0.0]).fit(x)
    with pytest.raises(ValueError, match=r"resp_init must have shape \(300, 2\)"):
        BayesianGaussianMixture(2).fit(x, resp_init=np.ones((3, 2)))
    with pytest.raises(ValueError, match="n_components=400"):
        BayesianGaussianMixture(400).fit(x)
    with pytest.raises(ValueError, match="weight_concentration_prior must be"):
        BayesianGaussianMixture(2, weight_concentration_prior=0.0)
    with pytest.raises(ValueError, match="degrees_of_freedom_prior"):
        SkBGMM(n_components=2, degrees_of_freedom_prior=1.0).fit(X)


def test_max_time_stops_after_one_iteration():
    with pytest.warns(ConvergenceWarning, match="max_time"):
        model = BayesianGaussianMixture(4, max_time=1e-9, tol=0.0).fit(X)
    assert model.n_iter_ == 1 and not model.converged_


def test_adapter_sample_and_fit_predict():
    est = SkBGMM(n_components=5, random_state=0)
    labels = est.fit_predict(X)
    np.testing.assert_array_equal(labels, est.predict(X))
    s, y = est.sample(50)
    assert s.shape == (50, 3) and y.shape == (50,) and s.dtype == np.float64
    np.testing.assert_allclose(
        est.model_.log_prob(X).numpy(), est.model_.log_prob(torch.from_numpy(X)).numpy()
    )


# -- the BIC-free selection in the GMM study, compare and the CLI -----------------------------
def test_fit_for_budget_and_select_components():
    from genlab.data import load_dataset
    from genlab.models.base import Budget

    data = load_dataset("8gaussians", n=400)
    model, details = BayesianGaussianMixture.fit_for_budget(data, Budget(seconds=30))
    assert details["n_components"] == 32 and details["steps"] is None
    assert 4 <= details["effective_components"] <= 32
    assert details["effective_components"] == model.effective_components()
    rec = BayesianGaussianMixture.select_components(separated(), 10, test=separated(50, seed=1))
    assert rec["effective_components"] == 3 and rec["error"] is None
    assert rec["test_nll"] == pytest.approx(-rec["model"].score(separated(50, seed=1)))


def test_gmm_study_shows_the_dp_mixture_next_to_the_bic_sweep():
    train, test = separated(200, d=4), separated(30, d=4, seed=1)
    study = evaluation.gmm_nll_vs_components(train, test, [2, 4], [1, 2, 8], seed=0)
    free = study["bic_free"]
    assert free["family"] == "bgmm" and free["n_components"] == 8
    assert free["effective_components"] == [3, 3] and free["notes"] == [None, None]
    assert all(v is not None and math.isfinite(v) for v in free["test_bits_per_dim"])
    none = evaluation.gmm_nll_vs_components(train, test, [2], [1], selection_family=None)
    assert "bic_free" not in none
    spent = evaluation.gmm_nll_vs_components(train, test, [2], [1], max_seconds=-1.0)
    assert spent["bic_free"]["effective_components"] == [None]


def test_compare_accepts_the_family_and_the_cli_fits_it(tmp_path, capsys):
    from genlab.cli import run

    settings = Settings(n_samples=100, gmm_components=(1, 2), gmm_study_dims=(2,), density_grid=12)
    records = compare(
        "moons",
        ["bgmm"],
        budget_seconds=5.0,
        n_train=200,
        n_test=100,
        settings=settings,
        options={"bgmm": {"n_components": 6}},
        progress=False,
        report=False,
    )
    row = records[0]
    assert row["family"] == "bgmm" and row["status"] == "ok", row["error"]
    assert row["log_prob_kind"] == "exact" and math.isfinite(row["nll_nats"])
    assert row["details"]["n_components"] == 6
    assert "bgmm" in FAMILIES
    code = run(["fit", "bgmm", "--n", "200", "-k", "4", "--out", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert code == 0 and "components with weight > 0.01" in out
    assert genlab.load(tmp_path / "m").config.n_components == 4
