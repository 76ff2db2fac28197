"""The two E/M paths of GaussianMixture (features phi(x), whitened residuals with Gram matrices)
against scikit-learn and against each other, on every covariance type."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from gmm_helpers import flat_far_component, overlapping_clusters, sklearn_start
from sklearn.mixture import GaussianMixture as SklearnGMM

from genlab.models import GaussianMixture
from genlab.models.gmm import RESIDUAL_BUDGET
from genlab.models.gmm_maths import (
    FEATURES,
    add_second_moments,
    cheaper_estep,
    estep_seconds,
    feature_statistics,
    natural_parameters,
    precision_cholesky,
    residual_logits,
    responsibility_statistics,
    second_moments_shape,
    triangle_blocks,
    triangle_fraction,
    whitening,
)

COV_TYPES = ["full", "tied", "diag", "spherical"]
PATHS = ["features", "residuals"]


def clusters(n_per: int = 150, d: int = 6) -> np.ndarray:
    """Three correlated, overlapping clusters near the origin: a trajectory of many steps."""
    return overlapping_clusters(n_per, d, k=3, seed=3, offset=10.0)


def fit(x, k: int, cov: str, estep: str, **kw) -> GaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GaussianMixture(k, covariance_type=cov, estep=estep, **kw).fit(x)


# -- the maths alone ----------------------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 3, 7, 130, 300])
def test_triangle_blocks_cover_the_dimensions(d):
    blocks = triangle_blocks(d)
    assert blocks[0][0] == 0 and blocks[-1][1] == d
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in itertools.pairwise(blocks))
    assert 0.5 < triangle_fraction(d) <= 1.0


@pytest.mark.parametrize("cov", COV_TYPES)
def test_residual_logits_are_the_gaussian_log_density(cov):
    """const_k - |(z - nu_k) U_k|^2 / 2 equals phi(z) . Theta_k (itself checked against
    torch.distributions in test_gmm.py), for D spanning several triangle blocks."""
    g = torch.Generator().manual_seed(0)
    k, d = 3, 9
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64)
    full = a @ a.mT + 0.5 * torch.eye(d, dtype=torch.float64)
    covs = {"full": full, "tied": full[0], "diag": full.diagonal(dim1=1, dim2=2),
            "spherical": full.diagonal(dim1=1, dim2=2).mean(1)}[cov]  # fmt: skip
    nu = torch.randn(k, d, generator=g, dtype=torch.float64)
    log_w = torch.log_softmax(torch.randn(k, generator=g, dtype=torch.float64), 0)
    z = torch.randn(40, d, generator=g, dtype=torch.float64) * 2
    u = precision_cholesky(covs, cov)
    expected = (natural_parameters(log_w, nu, u, cov) @ FEATURES[cov](z)).T
    got = residual_logits(z, whitening(log_w, nu, u, cov), cov)
    assert len(triangle_blocks(d)) > 1
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_gram_statistics_equal_the_feature_statistics(cov):
    """N_k, S1_k and the second moments from Gram matrices (in any chunking) give the M-step
    the same parameters as R^T phi(z) (tied: only the pooled second moments agree)."""
    from genlab.models.gmm_maths import m_step

    g = torch.Generator().manual_seed(1)
    z = torch.randn(70, 11, generator=g, dtype=torch.float64) + 0.5
    resp = torch.softmax(torch.randn(70, 4, generator=g, dtype=torch.float64), 1)
    expected = (FEATURES[cov](z) @ resp).T
    got = responsibility_statistics(z, resp, cov, budget=4 * 11 * 16)  # chunks of 16 rows
    acc = torch.zeros(second_moments_shape(cov, 4, 11), dtype=torch.float64)
    add_second_moments(acc, z, resp, cov, triangle_blocks(11))
    once = feature_statistics(resp.sum(0), resp.T @ z, acc, cov)
    torch.testing.assert_close(got, once, rtol=1e-13, atol=1e-12)
    if cov == "tied":
        torch.testing.assert_close(got[:, 12:].sum(0), expected[:, 12:].sum(0))
        torch.testing.assert_close(got[:, :12], expected[:, :12])
    else:
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(m_step(got, cov, 1e-6, 11), m_step(expected, cov, 1e-6, 11), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_cost_model_picks_features_at_small_d_and_residuals_at_large_d():
    assert cheaper_estep("full", 16, 8) == "features"
    assert cheaper_estep("full", 32, 16) == "features"
    assert cheaper_estep("full", 10, 256) == "residuals"
    assert cheaper_estep("full", 4, 784) == "residuals"
    assert cheaper_estep("diag", 4, 784) == "features"
    # modelled costs grow with K and D on both paths
    for path in PATHS:
        assert estep_seconds(path, "full", 8, 64) < estep_seconds(path, "full", 16, 64)
        assert estep_seconds(path, "full", 8, 64) < estep_seconds(path, "full", 8, 128)


# -- whole fits -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("estep", PATHS)
def test_same_start_same_trajectory_as_sklearn(cov, estep):
    x = clusters()
    start = sklearn_start(x, 4, cov)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SklearnGMM(4, covariance_type=cov, max_iter=40, tol=1e-10, **start).fit(x)
    ours = fit(x, 4, cov, estep, max_iter=40, tol=1e-10, **start)
    assert ours.estep_ == estep
    assert len(sk.lower_bounds_) >= 15
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.means_.numpy(), sk.means_, atol=1e-6)
    np.testing.assert_allclose(ours.covariances_.numpy(), sk.covariances_, atol=1e-6)
    np.testing.assert_allclose(ours.log_prob(x).numpy(), sk.score_samples(x), atol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(x).numpy(), sk.predict_proba(x), atol=1e-6)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_both_paths_give_the_same_fit_to_round_off(cov):
    """float64, kmeans init, weighted rows: the two paths agree to ~1e-10 everywhere."""
    x = clusters(n_per=100, d=5)
    w = np.random.default_rng(0).integers(0, 4, size=len(x)).astype(np.float64)
    kw = {"max_iter": 25, "tol": 0, "seed": 1, "chunk_size": 64}
    a = fit(x, 3, cov, "features", **kw)
    b = fit(x, 3, cov, "residuals", **kw)
    np.testing.assert_allclose(b.lower_bounds_, a.lower_bounds_, rtol=0, atol=1e-10)
    torch.testing.assert_close(b.means_, a.means_, rtol=0, atol=1e-10)
    torch.testing.assert_close(b.covariances_, a.covariances_, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b.predict_proba(x), a.predict_proba(x), rtol=0, atol=1e-10)
    centre = a.weights_ @ a.means_
    xt, tw = torch.from_numpy(x), torch.from_numpy(w)
    ta, sa = a._em_pass(xt, centre, a._theta(centre), True, tw)
    tb, sb = b._em_pass(xt, centre, b._theta(centre), True, tw)
    torch.testing.assert_close(tb, ta, rtol=1e-12, atol=1e-9)
    if cov == "tied":  # the residual path keeps only the pooled second moments
        sa = torch.cat([sa[:, :6], sa[:, 6:].sum(0, keepdim=True).expand(3, -1) / 3], 1)
    torch.testing.assert_close(sb, sa, rtol=1e-12, atol=1e-9)
    # integer weights: the same statistics as repeating each row w_i times
    reps = torch.from_numpy(np.repeat(x, w.astype(int), axis=0))
    tr, sr = b._em_pass(reps, centre, b._theta(centre), True)
    torch.testing.assert_close(tb, tr, rtol=1e-12, atol=1e-8)
    torch.testing.assert_close(sb, sr, rtol=1e-12, atol=1e-8)


@pytest.mark.filterwarnings("ignore::genlab.models.ConvergenceWarning")
def test_residual_path_streams_from_a_file_and_shards_add_up(tmp_path):
    """A chunked fit from an NpyArray equals the in-memory one; the pass's statistics over
    two shards sum to those of the whole (what the torchrun all-reduce relies on)."""
    from genlab.data import NpyArray

    x = clusters(d=4).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    lazy = NpyArray(tmp_path / "x.npy")
    kw = {"max_iter": 20, "tol": 0, "seed": 2}
    mem = fit(torch.from_numpy(x), 3, "full", "residuals", **kw)
    chunked = fit(lazy, 3, "full", "residuals", chunk_size=37, **kw)
    np.testing.assert_allclose(chunked.lower_bounds_, mem.lower_bounds_, rtol=0, atol=1e-10)
    torch.testing.assert_close(chunked.means_, mem.means_, rtol=0, atol=1e-9)
    torch.testing.assert_close(chunked.log_prob(lazy), mem.log_prob(x), rtol=0, atol=1e-9)
    centre = mem.weights_ @ mem.means_
    theta = mem._theta(centre)
    xt = torch.from_numpy(x)
    whole = mem._em_pass(xt, centre, theta, True)
    parts = [mem._em_pass(xt[s], centre, theta, True) for s in (slice(0, 200), slice(200, None))]
    torch.testing.assert_close(parts[0][0] + parts[1][0], whole[0], rtol=1e-13, atol=1e-9)
    torch.testing.assert_close(parts[0][1] + parts[1][1], whole[1], rtol=1e-13, atol=1e-9)


@pytest.mark.filterwarnings("ignore::genlab.models.ConvergenceWarning")
def test_residual_float32_falls_back_to_float64_on_a_degenerate_component(monkeypatch):
    """As on the features path: float32 second moments of a flat component far from the
    centre are not positive definite, so that pass is redone in float64."""
    x, means = flat_far_component()
    exact_passes = []
    original = GaussianMixture._residual_pass

    def spy(self, x, centre, white, exact, weights):
        exact_passes.append(exact)
        return original(self, x, centre, white, exact, weights)

    monkeypatch.setattr(GaussianMixture, "_residual_pass", spy)
    kw = {"means_init": means, "max_iter": 5, "tol": 0}
    f32 = fit(x, 2, "full", "residuals", dtype="float32", **kw)
    assert set(exact_passes) == {False, True}
    f64 = fit(x, 2, "full", "features", **kw)
    assert 0 < f32.covariances_[1, 2, 2] < 1e-5
    torch.testing.assert_close(f32.covariances_, f64.covariances_, rtol=1e-4, atol=1e-5)


def test_auto_chooses_by_dimension_and_the_choice_survives_save_and_load(tmp_path):
    import genlab

    rng = np.random.default_rng(0)
    small = fit(rng.normal(size=(200, 3)), 2, "full", "auto", max_iter=3)
    assert small.estep_ == "features"
    wide = rng.normal(size=(200, 300)) + rng.integers(0, 2, size=(200, 1)) * 3
    big = fit(wide, 2, "full", "auto", max_iter=3, reg_covar=1e-3)
    assert big.estep_ == "residuals"
    assert big._chunk_size(300) == RESIDUAL_BUDGET // (2 * 300)  # rows by the (K, D) scratch
    big.save(tmp_path / "m")
    loaded = genlab.load(tmp_path / "m")
    assert loaded.estep_ == "residuals" and loaded.config.estep == "auto"
    torch.testing.assert_close(loaded.log_prob(wide), big.log_prob(wide), rtol=0, atol=1e-9)
    forced = fit(wide, 2, "full", "features", max_iter=3, reg_covar=1e-3)
    torch.testing.assert_close(forced.log_prob(wide), big.log_prob(wide), rtol=1e-9, atol=1e-7)


def test_a_bad_estep_names_the_choices():
    with pytest.raises(ValueError, match="estep"):
        GaussianMixture(2, estep="gram")


@pytest.mark.parametrize("cov", COV_TYPES)
def test_residual_m_step_equals_m_step_of_the_feature_layout(cov):
    """The residuals path's M-step from dense Gram matrices gives bit for bit what m_step gives
    from the (K, p) layout of the same statistics (float64, about arbitrary means)."""
    from genlab.models.gmm_maths import m_step, residual_m_step

    gen = torch.Generator().manual_seed(0)
    k, d = 3, 9
    z = torch.randn(40, d, generator=gen, dtype=torch.float64)
    resp = torch.rand(40, k, generator=gen, dtype=torch.float64)
    about = torch.randn(k, d, generator=gen, dtype=torch.float64) if cov == "full" else None
    acc = torch.zeros(second_moments_shape(cov, k, d), dtype=torch.float64)
    dz = None if about is None else z.unsqueeze(0) - about.unsqueeze(1)
    add_second_moments(acc, z, resp, cov, triangle_blocks(d), dz)
    nk, s1 = resp.sum(0), resp.T @ z
    old = m_step(feature_statistics(nk, s1, acc.clone(), cov, about), cov, 1e-6, d)
    new = residual_m_step(nk, s1, acc.clone(), cov, 1e-6, about)
    for a, b in zip(old, new, strict=True):
        assert torch.equal(a, b)
    direct = torch.einsum("nk,ni,nj->kij", resp, z, z) / (nk[:, None, None] + 1e-15)
    if cov == "full":  # against the definition: sum r z z^T / N - nu nu^T + reg I
        nu = s1 / nk[:, None]
        want = direct - nu[:, :, None] * nu[:, None, :] + 1e-6 * torch.eye(d, dtype=torch.float64)
        torch.testing.assert_close(new.covariances, want, rtol=1e-10, atol=1e-12)


def test_lower_triangular_inverse_and_the_one_factorisation_check():
    """Blocked L^-1 matches a triangular solve against I (D across the recursion's sizes);
    precision_cholesky_or_none gives precision_cholesky's factor, or None when a covariance
    is not positive definite (one Cholesky both checks and factorises)."""
    from genlab.models.gmm_maths import lower_triangular_inverse, precision_cholesky_or_none

    gen = torch.Generator().manual_seed(1)
    for d in (1, 64, 65, 200):
        a = torch.randn(2, d, 2 * d, generator=gen, dtype=torch.float64)
        chol = torch.linalg.cholesky(a @ a.mT / (2 * d) + 0.1 * torch.eye(d, dtype=torch.float64))
        eye = torch.eye(d, dtype=torch.float64).expand_as(chol)
        want = torch.linalg.solve_triangular(chol, eye, upper=False)
        got = lower_triangular_inverse(chol)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert bool((got.triu(1) == 0).all())
    covs = chol @ chol.mT
    u = precision_cholesky_or_none(covs, "full")
    torch.testing.assert_close(u @ u.mT, torch.linalg.inv(covs), rtol=1e-9, atol=1e-9)
    bad = covs.clone()
    bad[1] = -bad[1]
    assert precision_cholesky_or_none(bad, "full") is None
    with pytest.raises(ValueError, match="increase reg_covar"):
        precision_cholesky(bad, "full")
    assert precision_cholesky_or_none(torch.tensor([[1.0, -1.0]]), "diag") is None
