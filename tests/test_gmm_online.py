"""Online (stepwise) EM, `GaussianMixture.partial_fit`, against closed forms, scikit-learn's EM
step and batch EM on the same stream."""

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture as SklearnGMM

import genlab
from genlab.models import GaussianMixture
from genlab.models.gmm_maths import Params, m_step
from genlab.models.gmm_online import parameter_statistics, step_size, stepwise_update

COV_TYPES = ["full", "tied", "diag", "spherical"]
MEANS = np.array([[0.0, 0.0], [6.0, 4.0], [-5.0, 5.0]])
WEIGHTS = np.array([0.5, 0.3, 0.2])
SCALES = [np.array([[1.0, 0.3], [0.0, 0.6]]), np.eye(2) * 0.7, np.array([[0.5, 0.0], [-0.4, 1.0]])]
COVS = np.stack([a @ a.T for a in SCALES])


def stream(seed: int, batch: int):
    """An endless generator of fresh mini-batches from the known 3-component 2-D mixture."""
    rng = np.random.default_rng(seed)
    while True:
        k = rng.choice(3, size=batch, p=WEIGHTS)
        z = rng.normal(size=(batch, 2))
        yield MEANS[k] + np.einsum("nij,nj->ni", np.stack(SCALES)[k], z)


def draws(n: int, seed: int) -> np.ndarray:
    return next(stream(seed, n))


def matched(model: GaussianMixture) -> np.ndarray:
    """The model's component index nearest to each true mean."""
    means = model.means_.cpu().numpy()
    order = np.argmin(((MEANS[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert len(set(order)) == 3
    return order


# -- the maths ----------------------------------------------------------------------------------
def test_step_size_is_t_plus_t0_to_the_minus_kappa():
    assert step_size(1, 0.0, 0.6) == 1.0
    assert step_size(1, 1.0, 0.6) == pytest.approx(2**-0.6, rel=1e-15)
    assert step_size(7, 2.5, 0.75) == pytest.approx(9.5**-0.75, rel=1e-15)
    assert step_size(10, 0.0, 1.0) == pytest.approx(0.1, rel=1e-15)
    for bad in [(0, 1.0, 0.6), (1, -1.0, 0.6), (1, 1.0, 0.5), (1, 1.0, 1.01)]:
        with pytest.raises(ValueError, match="step_size needs"):
            step_size(*bad)
    s, sb = torch.ones(2, 3), torch.zeros(2, 3)
    torch.testing.assert_close(stepwise_update(s, sb, 0.25), torch.full((2, 3), 0.75))


def test_config_validates_the_step_options():
    with pytest.raises(ValueError, match=r"online_kappa must be a number in \(0.5, 1\]"):
        GaussianMixture(2, online_kappa=0.5)
    with pytest.raises(ValueError, match="online_t0 must be a number >= 0"):
        GaussianMixture(2, online_t0=-1.0)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_parameter_statistics_invert_the_m_step(cov):
    g = torch.Generator().manual_seed(0)
    k, d, reg = 4, 3, 1e-3
    weights = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
    nu = torch.randn(k, d, generator=g, dtype=torch.float64) * 3
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64)
    full = a @ a.mT + torch.eye(d, dtype=torch.float64)
    cov_param = {"full": full, "tied": full[0], "diag": full.diagonal(dim1=1, dim2=2),
                 "spherical": full.diagonal(dim1=1, dim2=2).mean(1)}[cov]  # fmt: skip
    p = Params(weights / weights.sum(), nu, cov_param)
    s = parameter_statistics(p, cov, reg)
    assert s[:, 0].sum().item() == pytest.approx(1.0, abs=1e-14)
    back = m_step(s, cov, reg, d)
    for got, want in zip(back, p, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# -- the updates ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cov", COV_TYPES)
def test_first_update_with_rho_1_is_one_em_step_like_sklearn(cov):
    """t0 = 0 gives rho_1 = 1: one partial_fit on all the data is one EM step from the init,
    checked against scikit-learn's EM step from the same start (and against fit)."""
    x = draws(600, seed=1)
    start = GaussianMixture(3, covariance_type=cov, max_iter=0).fit(x)  # fit's init alone
    online = GaussianMixture(3, covariance_type=cov, online_t0=0.0).partial_fit(x)
    sk = SklearnGMM(3, covariance_type=cov, max_iter=1, tol=0, reg_covar=1e-6,
                    weights_init=start.weights_.numpy(), means_init=start.means_.numpy(),
                    precisions_init=start.precisions_.numpy())  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(x)
        batch = GaussianMixture(3, covariance_type=cov, max_iter=1, tol=0).fit(x)
    for name in ("weights_", "means_", "covariances_"):
        got = getattr(online, name).numpy()
        np.testing.assert_allclose(got, getattr(sk, name), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(got, getattr(batch, name).numpy(), rtol=1e-10, atol=1e-12)
    assert online.n_batches_seen_ == 1 and online.n_rows_seen_ == 600
    assert online.batch_log_likelihood_ == pytest.approx(batch.lower_bounds_[0], rel=1e-12)


def test_each_update_blends_the_batch_statistics_with_step_rho_t():
    """s_2 = (1 - rho_2) s_1 + rho_2 sbar_2, with sbar_2 built here from predict_proba."""
    gen = stream(2, 400)
    m = GaussianMixture(3, online_t0=2.0, online_kappa=0.7).partial_fit(next(gen))
    s1, centre = m.online_statistics_.clone(), m.online_centre_.clone()
    x2 = torch.from_numpy(next(gen))
    r = m.predict_proba(x2)  # (n, K) under the parameters before the update
    z = x2 - centre
    i, j = torch.triu_indices(2, 2)
    phi = torch.cat([torch.ones(len(z), 1, dtype=z.dtype), z, z[:, i] * z[:, j]], dim=1)
    sbar = r.T @ phi / len(z)
    m.partial_fit(x2)
    rho = (2 + 2.0) ** -0.7
    torch.testing.assert_close(m.online_statistics_, (1 - rho) * s1 + rho * sbar,
                               rtol=1e-10, atol=1e-12)  # fmt: skip
    assert m.n_batches_seen_ == 2 and m.n_rows_seen_ == 800
    assert torch.equal(m.online_centre_, centre)  # the centre stays where the first batch put it


def test_batch_size_splits_a_chunk_into_updates():
    x = draws(1000, seed=3)
    whole = GaussianMixture(3).partial_fit(x, batch_size=300)
    parts = GaussianMixture(3)
    for a in range(0, 1000, 300):
        parts.partial_fit(x[a : a + 300])
    assert whole.n_batches_seen_ == parts.n_batches_seen_ == 4
    torch.testing.assert_close(whole.online_statistics_, parts.online_statistics_, rtol=0, atol=0)


def test_online_em_converges_on_an_endless_stream():
    """Fresh draws only (nothing is stored): after 250 batches of 400 rows the parameters are
    near the truth and near batch EM's on as many rows, and so is the held-out likelihood."""
    gen = stream(4, 400)
    m = GaussianMixture(3)
    seen = []
    for _ in range(250):
        x = next(gen)
        seen.append(x)
        m.partial_fit(x)
    batch = GaussianMixture(3, tol=1e-8, max_iter=500).fit(np.concatenate(seen))
    order, border = matched(m), matched(batch)
    means, cov, w = m.means_.numpy(), m.covariances_.numpy(), m.weights_.numpy()
    # the running statistics average ~1 / rho_250 = 27 batches (11k rows, 2.2k in the
    # smallest component): standard errors ~0.02 on a mean, ~0.035 on a variance, 0.004 on a
    # weight; the bounds are ~3 of them
    np.testing.assert_allclose(means[order], MEANS, atol=0.07)
    np.testing.assert_allclose(w[order], WEIGHTS, atol=0.012)
    np.testing.assert_allclose(cov[order], COVS, atol=0.1)
    np.testing.assert_allclose(means[order], batch.means_.numpy()[border], atol=0.07)
    np.testing.assert_allclose(cov[order], batch.covariances_.numpy()[border], atol=0.1)
    np.testing.assert_allclose(w[order], batch.weights_.numpy()[border], atol=0.012)
    held_out = draws(50_000, seed=5)
    assert m.score(held_out) == pytest.approx(batch.score(held_out), abs=3e-3)
    assert m.online_log_likelihood_ == pytest.approx(batch.score(held_out), abs=0.05)
    assert m.n_batches_seen_ == 250 and m.n_rows_seen_ == 100_000


def test_a_dead_component_is_reseeded_onto_the_worst_rows():
    x = draws(600, seed=6)
    means = np.array([[0.0, 0.0], [6.0, 4.0], [500.0, 500.0]])  # the third explains nothing
    m = GaussianMixture(3, max_iter=0, means_init=means, online_t0=0.0).fit(x)
    m.partial_fit(x)  # rho_1 = 1: the third component's statistics are all this batch's: 0
    assert torch.isfinite(m.covariances_).all() and (m.weights_ > 0).all()
    far = m.means_[2].numpy()
    assert np.abs(far).max() < 50  # moved onto the data
    assert np.isclose(((x - far) ** 2).sum(1), 0, atol=1e-9).any()  # onto one of its rows


# -- integer weights, save and load, warm starts -------------------------------------------------
def test_integer_sample_weight_equals_repeated_rows():
    gen = stream(7, 300)
    x1, x2 = next(gen), next(gen)
    w = np.random.default_rng(0).integers(0, 4, size=len(x2))
    weighted = GaussianMixture(3).partial_fit(x1).partial_fit(x2, sample_weight=w)
    repeated = GaussianMixture(3).partial_fit(x1).partial_fit(np.repeat(x2, w, axis=0))
    for name in ("online_statistics_", "weights_", "means_", "covariances_"):
        torch.testing.assert_close(getattr(weighted, name), getattr(repeated, name),
                                   rtol=1e-10, atol=1e-12)  # fmt: skip
    assert weighted.batch_log_likelihood_ == pytest.approx(repeated.batch_log_likelihood_, 1e-12)


def test_weighted_first_call_with_rho_1_is_weighted_fit_for_one_iteration():
    x = draws(500, seed=11)
    w = np.random.default_rng(1).uniform(0, 3, size=500) * (np.arange(500) % 7 != 0)
    online = GaussianMixture(3, online_t0=0.0).partial_fit(x, sample_weight=w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = GaussianMixture(3, max_iter=1, tol=0).fit(x, sample_weight=w)
    for name in ("weights_", "means_", "covariances_"):
        torch.testing.assert_close(getattr(online, name), getattr(batch, name),
                                   rtol=1e-10, atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_both_e_step_paths_give_the_same_updates(cov):
    gen = stream(12, 300)
    batches = [next(gen) for _ in range(4)]
    paths = [GaussianMixture(3, covariance_type=cov, estep=e) for e in ("features", "residuals")]
    for m in paths:
        for x in batches:
            m.partial_fit(x)
    for name in ("online_statistics_", "means_", "covariances_"):
        torch.testing.assert_close(getattr(paths[0], name), getattr(paths[1], name),
                                   rtol=1e-9, atol=1e-11)  # fmt: skip


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_partial_fit_continues_identically_after_save_and_load(tmp_path, dtype):
    gen = stream(8, 300)
    m = GaussianMixture(3, dtype=dtype, covariance_type="diag")
    for _ in range(5):
        m.partial_fit(next(gen))
    m.save(tmp_path / "m")
    facts = json.loads((tmp_path / "m" / "config.json").read_text())["fitted"]["online"]
    assert facts["batches"] == 5 and facts["rows"] == 1500
    loaded = genlab.load(tmp_path / "m", device="cpu")
    assert loaded.n_batches_seen_ == 5 and loaded.n_rows_seen_ == 1500
    for _ in range(3):
        x = next(gen)
        m.partial_fit(x)
        loaded.partial_fit(x)
    for name, t in m.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[name]), name
    assert loaded.online_log_likelihood_ == m.online_log_likelihood_
    assert loaded.n_batches_seen_ == 8


def test_fit_discards_the_online_state_and_partial_fit_continues_from_fit(tmp_path):
    x = draws(800, seed=9)
    m = GaussianMixture(3).partial_fit(x)
    m.fit(x)
    assert not m.is_online and "online_statistics_" not in m.state_dict()
    m.save(tmp_path / "fitted")
    assert "online" not in json.loads((tmp_path / "fitted" / "config.json").read_text())["fitted"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        three = GaussianMixture(3, max_iter=3, tol=0).fit(x)
        four = GaussianMixture(3, max_iter=4, tol=0).fit(x)
    three.config = GaussianMixture(3, online_t0=0.0).config  # rho_1 = 1: one more EM step
    three.partial_fit(x)
    for name in ("weights_", "means_", "covariances_"):
        torch.testing.assert_close(getattr(three, name), getattr(four, name),
                                   rtol=1e-9, atol=1e-11)  # fmt: skip


# -- bad input ----------------------------------------------------------------------------------
def test_bad_input_is_refused_and_leaves_the_model_as_it_was():
    x = draws(300, seed=10)
    with pytest.raises(ValueError, match=r"fewer than n_components=3.*at least 3 rows"):
        GaussianMixture(3).partial_fit(x[:2])
    fresh = GaussianMixture(3)
    with pytest.raises(ValueError, match="NaN or infinity"):
        fresh.partial_fit(np.where(np.arange(300)[:, None] == 7, np.nan, x))
    assert not fresh.is_fitted  # a failed first call leaves it unfitted

    m = GaussianMixture(3).partial_fit(x)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    bad_rows = x.copy()
    bad_rows[5, 1] = np.inf
    with pytest.raises(ValueError, match=r"NaN or infinity \(first in row 0 \+ 5\)"):
        m.partial_fit(bad_rows)
    with pytest.raises(ValueError, match=r"shape \(3,\), but the model was fitted on .*\(2,\)"):
        m.partial_fit(np.zeros((10, 3)))
    with pytest.raises(
        ValueError, match=r"sample_weight has shape .* give one weight per row, shape \(300,\)"
    ):
        m.partial_fit(x, sample_weight=np.ones(299))
    with pytest.raises(ValueError, match="weights must be"):
        m.partial_fit(x, sample_weight=-np.ones(300))
    with pytest.raises(ValueError, match="sample_weight sums to 0"):
        m.partial_fit(x, sample_weight=np.zeros(300))
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        m.partial_fit(x, batch_size=0)
    with pytest.raises(ValueError, match="not text"):
        m.partial_fit("some text")
    assert m.n_batches_seen_ == 1
    for name, t in m.state_dict().items():
        assert torch.equal(t, before[name]), name
