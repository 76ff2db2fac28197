"""VAE: its maths against closed forms, Monte Carlo and numerical integration; fitting; errors."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import genlab
from genlab.data import load_dataset
from genlab.models import VAE, NotFittedError
from genlab.models.vae import (
    LIKELIHOOD_FNS,
    Posterior,
    bernoulli_log_prob,
    discretized_logistic_log_prob,
    gaussian_kl,
    infer_levels,
    iwae_bound,
    kl_weight,
    resolve_likelihood,
)

TINY = {"hidden": 32, "warmup_steps": 10, "ema_decay": None}  # fast nets for the fitted tests


pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = np.array([1.0, -2.0])
    cov = np.array([[1.0, 0.6], [0.6, 0.5]])
    x = np.random.default_rng(seed).multivariate_normal(mean, cov, size=n).astype(np.float32)
    return x, mean, cov


@pytest.fixture(scope="module")
def gaussian_points_1000() -> np.ndarray:
    return gaussian_points(1000)[0]


@pytest.fixture(scope="module")
def gaussian_vae(gaussian_points_1000):
    """A VAE with a 1-D latent fitted on correlated 2-D Gaussian data (fixed seed)."""
    x = gaussian_points_1000
    return VAE(latent_dim=1, max_steps=300, lr=3e-3, **TINY).fit(x), x


@pytest.fixture(scope="module")
def binary_vae():
    """A VAE on binary 4 x 4 images (stripes with flipped pixels): Bernoulli likelihood."""
    rng = np.random.default_rng(0)
    base = np.zeros((2, 1, 4, 4), np.float32)
    base[0, 0, :, ::2] = base[1, 0, ::2, :] = 1
    x = base[rng.integers(0, 2, 400)]
    x = np.abs(x - (rng.random(x.shape) < 0.1)).astype(np.float32)
    return VAE(latent_dim=2, max_steps=100, net="mlp", **TINY).fit(x), x


# -- the maths alone -------------------------------------------------------------------------------
def test_gaussian_kl_closed_form_by_hand_and_monte_carlo():
    rng = np.random.default_rng(0)
    mu, log_var = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    ours = gaussian_kl(torch.from_numpy(mu), torch.from_numpy(log_var)).numpy()
    # by hand: KL(N(m, S) || N(0, I)) = 1/2 (tr S + m^T m - d - log det S) with S = diag(var)
    var = np.exp(log_var)
    by_hand = 0.5 * (var.sum(1) + (mu**2).sum(1) - 3 - np.log(var.prod(1)))
    np.testing.assert_allclose(ours, by_hand, rtol=1e-12)
    # Monte Carlo: E_q[log q(z) - log p(z)] with scipy's densities
    z = mu[:, None] + np.sqrt(var)[:, None] * rng.normal(size=(4, 200_000, 3))
    log_ratio = stats.norm.logpdf(z, mu[:, None], np.sqrt(var)[:, None]) - stats.norm.logpdf(z)
    samples = log_ratio.sum(-1)
    se = samples.std(1) / math.sqrt(samples.shape[1])
    assert np.all(np.abs(samples.mean(1) - ours) < 5 * se + 1e-3)


@pytest.mark.parametrize("levels", [17, 256])
def test_discretized_logistic_sums_to_one_and_matches_scipy(levels):
    x = torch.arange(levels, dtype=torch.float64) / (levels - 1)
    rng = np.random.default_rng(levels)
    for loc, log_scale in [(0.3, -3.0), (-0.4, 0.5), (1.2, -2.0), *rng.normal(0.5, 1, (5, 2))]:
        loc_t, ls_t = torch.tensor(loc, dtype=torch.float64), torch.tensor(log_scale).double()
        lp = discretized_logistic_log_prob(x, loc_t, ls_t, levels)
        assert torch.isfinite(lp).all()
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
        # reference: differences of scipy's CDF (left of loc) or survival function (right of
        # loc), which do not cancel there, with the edge bins open to -inf and +inf
        half, s = 0.5 / (levels - 1), math.exp(log_scale)
        lo = np.where(np.arange(levels) == 0, -np.inf, x.numpy() - half)
        up = np.where(np.arange(levels) == levels - 1, np.inf, x.numpy() + half)
        left = stats.logistic.cdf(up, loc, s) - stats.logistic.cdf(lo, loc, s)
        right = stats.logistic.sf(lo, loc, s) - stats.logistic.sf(up, loc, s)
        ref = np.log(np.where(x.numpy() < loc, left, right))
        np.testing.assert_allclose(lp.numpy(), ref, rtol=1e-6, atol=1e-9)


def test_discretized_logistic_draws_follow_its_mass():
    loc, log_scale, levels, n = torch.tensor(0.15), torch.tensor(-2.0), 17, 200_000
    g = torch.Generator().manual_seed(0)
    draws = LIKELIHOOD_FNS["discretized"].sample((loc.expand(n), log_scale.expand(n)), g, levels)
    counts = torch.bincount(torch.round(draws * (levels - 1)).long(), minlength=levels)
    grid = torch.arange(levels) / (levels - 1)
    p = discretized_logistic_log_prob(grid, loc, log_scale, levels).exp()
    se = (p * (1 - p) / n).sqrt()
    assert ((counts / n - p).abs() <= 5 * se + 1e-4).all()
    assert p[0] > 0.1  # the lowest level takes the left tail, a real test of the edges


def test_discretized_logistic_is_finite_in_the_far_tails():
    x = torch.tensor([0.0, 0.5, 1.0])
    for loc in (-50.0, 0.5, 50.0):
        lp = discretized_logistic_log_prob(x, torch.tensor(loc), torch.tensor(-7.0), 256)
        assert torch.isfinite(lp).all()  # log-masses of -1e5 nats, not log(0)
    lp = discretized_logistic_log_prob(x, torch.tensor(0.5), torch.tensor(-7.0), 256)
    assert lp[1].item() == pytest.approx(math.log(math.tanh(0.5 / 255 / 2 / math.exp(-7.0))), 1e-4)


def test_bernoulli_sums_to_one_over_zero_and_one():
    logits = torch.linspace(-30, 30, 13, dtype=torch.float64)
    p0 = bernoulli_log_prob(torch.zeros_like(logits), logits).exp()
    p1 = bernoulli_log_prob(torch.ones_like(logits), logits).exp()
    torch.testing.assert_close(p0 + p1, torch.ones_like(logits), rtol=0, atol=1e-12)
    torch.testing.assert_close(p1, torch.sigmoid(logits))


def test_iwae_bound_and_kl_weight():
    log_w = torch.tensor([[0.0, math.log(3.0)], [-1.0, -1.0]])
    torch.testing.assert_close(iwae_bound(log_w), torch.tensor([math.log(2.0), -1.0]))
    assert [kl_weight(s, 2.0, 10) for s in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    assert kl_weight(0, 0.5, 0) == 0.5


def test_likelihood_and_levels_follow_the_data():
    digits = load_dataset("digits", n=200)
    assert infer_levels(digits.x) == 17
    assert infer_levels(torch.tensor([0.0, 0.5, 1.0])) == 3
    assert infer_levels(torch.rand(1000)) is None
    assert infer_levels(torch.tensor([-1.0, 1.0])) is None
    binary = (digits.x > 0.5).float()
    assert resolve_likelihood(binary, "auto", "image", 17) == ("bernoulli", 2)
    assert resolve_likelihood(digits.x, "auto", "image", None) == ("discretized", 17)
    assert resolve_likelihood(torch.randn(50, 2), "auto", "points", None) == ("gaussian", None)
    assert resolve_likelihood(digits.x, "gaussian", "image", 17) == ("gaussian", None)
    with pytest.raises(ValueError, match="quantised"):
        resolve_likelihood(torch.rand(50, 1, 4, 4), "discretized", "image", None)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        resolve_likelihood(torch.randn(50, 2), "bernoulli", "points", None)


# -- the bounds of a fitted model against independent estimates ----------------------------------
def brute_force_elbo(model: VAE, x: np.ndarray, n_draws: int, seed: int = 0):
    """E_q[log p(x | z) + log p(z) - log q(z | x)] by Monte Carlo, with scipy's densities:
    (estimates (n,), their standard errors (n,), those of E_q[log p(x | z)] alone (n,))."""
    mu, log_var = (t.double().numpy() for t in model.encode(torch.from_numpy(x)))
    sd = np.exp(0.5 * log_var)
    rng = np.random.default_rng(seed)
    z = mu[:, None] + sd[:, None] * rng.normal(size=(len(x), n_draws, mu.shape[1]))
    means = model.decode(torch.from_numpy(z.reshape(-1, mu.shape[1])).float()).double().numpy()
    means = means.reshape(len(x), n_draws, -1)
    flat = x.reshape(len(x), 1, -1)
    if model.likelihood_ == "gaussian":
        scale = (model.log_scale.exp() * model.data_scale).double().detach().numpy()
        log_px = stats.norm.logpdf(flat, means, scale).sum(-1)
    else:
        log_px = stats.bernoulli.logpmf(flat, np.clip(means, 1e-12, 1 - 1e-12)).sum(-1)
    log_pz = stats.norm.logpdf(z).sum(-1)
    log_qz = stats.norm.logpdf(z, mu[:, None], sd[:, None]).sum(-1)
    log_w = log_px + log_pz - log_qz
    return log_w.mean(1), log_w.std(1) / math.sqrt(n_draws), log_px.std(1) / math.sqrt(n_draws)


@pytest.mark.parametrize("which", ["gaussian_vae", "binary_vae"])
def test_elbo_matches_brute_force_monte_carlo(which, request):
    model, x = request.getfixturevalue(which)
    x = x[:6]
    ours = model.elbo(x, k=100_000, seed=1).double().numpy()
    ref, se_ref, se_ours = brute_force_elbo(model, x, n_draws=100_000)
    tol = 5 * np.hypot(se_ref, se_ours)
    assert (tol < 0.05).all()  # tight enough to tell a 0.1-nat error
    assert np.all(np.abs(ours - ref) < tol), (ours, ref, tol)


def brute_force_log_p(model: VAE, x: np.ndarray) -> np.ndarray:
    """log p(x) = log int p(x | z) N(z; 0, 1) dz for a 1-D latent, by the trapezoid rule."""
    z = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    means = model.decode(z[:, None].float()).double()  # (G, 2)
    scale = (model.log_scale.exp() * model.data_scale).double().detach()
    xs = torch.from_numpy(x).double()
    log_px = torch.distributions.Normal(means[None], scale).log_prob(xs[:, None]).sum(-1)
    log_joint = log_px + torch.distributions.Normal(0.0, 1.0).log_prob(z)  # (n, G)
    top = log_joint.max(1, keepdim=True).values
    return (top[:, 0] + torch.trapezoid((log_joint - top).exp(), z).log()).numpy()


def test_iwae_k1_is_the_elbo_in_expectation_and_tightens_with_k(gaussian_points_1000):
    # a briefly trained model: q(z | x) is still poor, so the gaps are large (~0.5 nats)
    model = VAE(latent_dim=1, max_steps=20, lr=3e-3, **TINY).fit(gaussian_points_1000)
    x = gaussian_points_1000[:20]
    elbo = model.elbo(x, k=20_000, seed=0).double().mean().item()
    runs = {k: np.array([model.log_prob(x, k=k, seed=s).double().mean().item() for s in range(n)])
            for k, n in ((1, 100), (10, 30), (100, 30))}  # fmt: skip
    mean = {k: v.mean() for k, v in runs.items()}
    se = {k: v.std() / math.sqrt(len(v)) for k, v in runs.items()}
    log_p = brute_force_log_p(model, x).mean()
    assert abs(mean[1] - elbo) < 4 * se[1] + 0.005
    assert elbo + 4 * se[10] < mean[10] and mean[10] + 4 * se[100] < mean[100]
    assert mean[100] < log_p and log_p - elbo > 0.2


def test_iwae_is_tight_at_large_k_for_a_good_posterior(gaussian_vae):
    model, x = gaussian_vae
    x = x[:5]
    log_p = brute_force_log_p(model, x)
    np.testing.assert_allclose(model.log_prob(x, k=20_000, seed=0).numpy(), log_p, atol=0.005)
    assert (model.elbo(x, k=20_000, seed=0).numpy() < log_p + 0.005).all()


def test_log_prob_is_reproducible_with_a_seed(binary_vae):
    model, x = binary_vae
    a = model.log_prob(x[:20], seed=5, k=7)
    torch.testing.assert_close(a, model.log_prob(x[:20], seed=5, k=7))
    assert not torch.equal(a, model.log_prob(x[:20], seed=6, k=7))
    assert a.shape == (20,) and (a < 0).all()  # a log-mass of binary images


# -- fitting ---------------------------------------------------------------------------------------
def test_fitted_gaussian_recovers_mean_and_covariance(gaussian_vae):
    model, _ = gaussian_vae
    _, mean, cov = gaussian_points(1)
    samples = model.sample(20_000, seed=0).double().numpy()
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.15)
    np.testing.assert_allclose(np.cov(samples.T), cov, atol=0.15)
    assert model.likelihood_ == "gaussian" and model.log_prob_space == "continuous"
    assert model.net_ == "mlp" and model.log_prob_kind == "estimate"
    history = model.train_result_.history
    assert history[-1]["loss"] < history[0]["loss"]
    assert {"loss", "recon", "kl"} <= set(history[-1])


def test_sample_mean_and_latent_space(binary_vae):
    model, x = binary_vae
    draws = model.sample(50, seed=0)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}  # draws from p(x | z) are binary
    means = model.sample(50, seed=0, mean=True)
    assert means.shape == (50, 1, 4, 4) and means.min() > 0 and means.max() < 1
    assert model.sample(0).shape == (0, 1, 4, 4)
    post = model.encode(x[:3])
    assert isinstance(post, Posterior) and post.mu.shape == post.log_var.shape == (3, 2)
    torch.testing.assert_close(model.reconstruct(x[:3]), model.decode(post.mu))
    path = model.interpolate(x[0], x[1], steps=5)
    assert path.shape == (5, 1, 4, 4)
    torch.testing.assert_close(path[[0, -1]], model.reconstruct(x[:2]))
    assert model.log_prob_space == "discrete"


def test_digits_discretized_conv_and_conditional_save_load(tmp_path):
    digits = load_dataset("digits", n=300)
    model = VAE(latent_dim=4, max_steps=30, hidden=64, ema_decay=None, warmup_steps=5)
    model.fit(digits.x, digits.y)
    assert (model.likelihood_, model.levels_, model.net_) == ("discretized", 17, "conv")
    assert model.conditional and model.n_classes_ == 10
    assert model.sample(7, y=3, seed=0).shape == (7, 1, 8, 8)
    s = model.sample(10, y=torch.arange(10), seed=0)
    assert s.shape == (10, 1, 8, 8) and set(s.unique().tolist()) <= {k / 16 for k in range(17)}
    assert not torch.equal(model.sample(10, y=1, seed=0), model.sample(10, y=2, seed=0))

    test = load_dataset("digits", split="test", n=20)
    model.save(tmp_path / "m")
    loaded = genlab.load(tmp_path / "m")
    assert loaded.conditional and loaded.levels_ == 17
    for y in (None, test.y):
        torch.testing.assert_close(
            loaded.log_prob(test.x, y, seed=3), model.log_prob(test.x, y, seed=3)
        )
    torch.testing.assert_close(loaded.sample(5, seed=2), model.sample(5, seed=2))
    # without labels, log p(x) = log sum_y p(y) p(x | y) >= the joint with the true label
    marginal = model.log_prob(test.x, k=50)
    joint = model.log_prob(test.x, test.y, k=50) + model.class_prior[test.y].log()
    assert (marginal > joint - 0.5).all()


def test_conditional_samples_follow_their_label():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    x = (rng.normal(size=(600, 2)) * 0.3 + np.where(y[:, None] == 1, 3.0, -3.0)).astype(np.float32)
    model = VAE(latent_dim=2, max_steps=200, lr=3e-3, **TINY).fit(x, y)
    assert model.sample(500, y=0, seed=0)[:, 0].mean() < -2
    assert model.sample(500, y=1, seed=0)[:, 0].mean() > 2
    unlabelled = model.sample(1000, seed=0)[:, 0]  # y ~ p(y): both clusters
    assert 0.3 < (unlabelled > 0).float().mean() < 0.7


# -- bad input -------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(binary_vae):
    model, x = binary_vae
    with pytest.raises(NotFittedError, match="fit"):
        VAE().sample(3)
    with pytest.raises(NotFittedError):
        VAE().log_prob(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="NaN"):
        VAE(max_steps=2).fit(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(torch.zeros(3, 1, 5, 5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.log_prob(torch.full((2, 1, 4, 4), 2.0))
    with pytest.raises(ValueError, match="without labels"):
        model.sample(3, y=1)
    with pytest.raises(ValueError, match="k"):
        model.log_prob(x[:2], k=0)
    with pytest.raises(ValueError, match="shape"):
        model.decode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="latent_dim"):
        VAE(latent_dim=0)
    with pytest.raises(ValueError, match="likelihood"):
        VAE(likelihood="poisson")
    with pytest.raises(ValueError, match="lr"):
        VAE(lr=-1.0)
    with pytest.raises(TypeError, match="options"):
        VAE(n_components=3)
    with pytest.raises(ValueError, match="conv"):
        VAE(net="conv", max_steps=2).fit(torch.randn(10, 2))


def test_bad_labels_raise_clear_errors():
    x = torch.randn(40, 2)
    with pytest.raises(ValueError, match="y must have shape"):
        VAE(max_steps=2).fit(x, torch.zeros(39, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        VAE(max_steps=2).fit(x, torch.zeros(40))
    model = VAE(max_steps=2, **TINY).fit(x, torch.arange(40) % 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model.sample(2, y=3)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        model.log_prob(x[:4], y=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="conditional: pass y"):
        model.encode(x[:4])
    with pytest.raises(TypeError, match="integer"):
        model.sample(2, y=torch.tensor([0.5, 1.0]))


# -- defaults decided once, capabilities, what `genlab fit` prints ------------------------------
def test_latent_dim_auto_is_min_16_d_and_is_saved(tmp_path):
    from genlab.models.vae import default_latent_dim

    assert [default_latent_dim(d) for d in (1, 2, 16, 64, 784)] == [1, 2, 16, 16, 16]
    moons = load_dataset("moons", n=100)
    model = VAE(max_steps=2, **TINY).fit(moons)
    assert model.config.latent_dim is None and model.latent_dim_ == 2
    assert model.encode(moons.x[:3]).mu.shape == (3, 2)
    model.save(tmp_path / "m")
    loaded = genlab.load(tmp_path / "m")
    assert loaded.latent_dim_ == 2 and loaded.kind_ == "points"
    torch.testing.assert_close(loaded.log_prob(moons.x[:5]), model.log_prob(moons.x[:5]))
    digits = VAE(max_steps=1, net="mlp", **TINY).fit(load_dataset("digits", n=50))
    assert digits.latent_dim_ == 16 and digits.kind_ == "image"
    assert VAE(3, max_steps=1, **TINY).fit(moons).latent_dim_ == 3  # positional latent_dim


def test_capabilities_and_fit_summary(binary_vae):
    model, _ = binary_vae
    assert VAE.has_encoder and VAE.picture_sample == {"mean": True}
    assert VAE.quick_log_prob == {"k": 16} and VAE.density_grid == 100
    assert {"y", "mean"} <= VAE.sample_options and VAE.example_data == "digits"
    summary = model.fit_summary()
    assert summary["steps"] == 100 and math.isfinite(summary["final loss"])
    assert (summary["likelihood"], summary["net"], summary["conditional"]) == (
        "bernoulli", "mlp", False)  # fmt: skip


def test_score_rows_is_the_train_elbo():
    from genlab.data import Dataset

    digits = load_dataset("digits", n=60)
    model = VAE(latent_dim=2, max_steps=3, net="mlp", **TINY).fit(digits, digits.y)
    label, value = model.score_rows(digits)
    assert label == "train ELBO"
    assert value == pytest.approx(float(model.elbo(digits.x, digits.y).double().mean()), rel=1e-6)
    label, value = model.score_rows(digits, limit=20)
    assert label == "train ELBO (first 20)"
    assert value == pytest.approx(float(model.elbo(digits.x[:20], digits.y[:20]).mean()), 1e-5)
    points = Dataset(torch.randn(2500, 2), None, (2,), "points")
    label, _ = VAE(max_steps=1, **TINY).fit(points).score_rows(points)
    assert label == "train ELBO (first 2000)"  # at most 2000 rows by default


def test_gaussian_likelihood_on_quantised_images_trains_on_dequantised_batches(monkeypatch):
    seen = []
    original = VAE._to_model_space

    def spy(self, x):
        seen.append(x.detach().clone())
        return original(self, x)

    monkeypatch.setattr(VAE, "_to_model_space", spy)
    digits = load_dataset("digits", n=64)
    VAE(likelihood="gaussian", max_steps=2, net="mlp", batch_size=64, **TINY).fit(digits)
    batch = seen[0]  # the first training batch
    assert not torch.equal(batch * 16, torch.round(batch * 16))  # off the grid k / 16
    k = torch.floor(batch * 17)  # (k + u) / 17 lies in the cell of k
    assert set(k.unique().tolist()) <= set(range(17))
    seen.clear()
    VAE(max_steps=1, net="mlp", batch_size=64, **TINY).fit(digits)  # discretized: a mass
    assert torch.equal(seen[0] * 16, torch.round(seen[0] * 16))


@pytest.mark.parametrize("folder", ["vae-moons", "vae-digits"])
def test_folders_saved_before_the_redesign_score_the_same(folder):
    import json
    from pathlib import Path

    path = Path(__file__).parent / "fixtures" / "v1" / folder
    expected = json.loads((path / "expected.json").read_text())
    model = genlab.load(path)
    assert model.latent_dim_ == model.config.latent_dim  # old folders: an int in the config
    x = load_dataset(folder.split("-", 1)[1], split="test", n=5).x[:5]
    np.testing.assert_allclose(model.log_prob(x).numpy(), expected["log_prob"], rtol=1e-4,
                               atol=1e-4)  # fmt: skip
    s = model.sample(3, seed=0).flatten(1)[:, :6]
    np.testing.assert_allclose(s.numpy(), expected["sample"], rtol=1e-4, atol=1e-4)


# -- bad input: far points, divergence, absurd sizes ----------------------------------------------
def test_far_points_get_finite_bounds_and_leave_the_other_rows_unchanged(gaussian_vae):
    model, x = gaussian_vae
    x = torch.from_numpy(x[:5])
    far = x.clone()
    far[1], far[2], far[3] = torch.tensor([1e18, 0.0]), torch.tensor([0.0, -1e10]), 1e5
    for score in (model.log_prob, model.elbo):
        plain, mixed = score(x), score(far)
        torch.testing.assert_close(mixed[[0, 4]], plain[[0, 4]], rtol=0, atol=0)
        assert torch.isfinite(mixed).all() and bool(mixed[1:4].max() < plain.min())
        assert mixed[1] < mixed[2] < mixed[3]  # farther is less likely
        with pytest.raises(ValueError, match="beyond the range of float32"):
            score(torch.tensor([[1e20, 1e20]]))


def test_rows_the_encoder_overflows_on_take_the_prior_as_proposal(gaussian_vae, monkeypatch):
    model, x = gaussian_vae
    x = torch.from_numpy(x[:3])
    forward = model.encoder.forward

    def overflowing(h, y=None):  # the encoder's output of row 1 is not finite
        out = forward(h, y=y).clone()
        out[1] = float("nan")
        return out

    monkeypatch.setattr(model.encoder, "forward", overflowing)
    lp = model.log_prob(x, k=8)
    assert torch.isfinite(lp).all() and model.log_prob_far_rows_ == 1
    elbo = model.elbo(x, k=8)
    assert torch.isfinite(elbo).all() and model.log_prob_far_rows_ == 1
    with pytest.raises(ValueError, match="encoder's output for row 1 is not finite"):
        model.encode(x)


def test_a_diverged_vae_never_samples_inf():
    from genlab.models import DivergedError

    x, _, _ = gaussian_points(200)
    with pytest.raises(DivergedError, match=r"not finite|diverged"):  # lr=1e3: samples overflow
        VAE(hidden=16, lr=1e3, max_steps=20, warmup_steps=0, ema_decay=None).fit(x)
    digits = load_dataset("digits", n=64)
    model = VAE(max_steps=2, net="mlp", **TINY).fit(digits)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.fill_(1e30)  # huge weights: the decoder's outputs overflow
    for mean in (False, True):  # sigmoid / clamps would turn inf into finite pixels
        with pytest.raises(DivergedError, match="decoder's outputs are not finite"):
            model.sample(2, seed=0, mean=mean)
    with pytest.raises(DivergedError, match="decoder's outputs are not finite"):
        model.decode(torch.zeros(1, model.latent_dim_))
    with pytest.raises(ValueError, match="row 1 of z lies more than 10000 standard deviations"):
        model.decode(torch.tensor([[0.0] * model.latent_dim_, [1e20] * model.latent_dim_]))


def test_absurd_sizes_are_refused_up_front(gaussian_vae):
    model, x = gaussian_vae
    with pytest.raises(ValueError, match=r"encoder and decoder .* of memory.*smaller hidden"):
        VAE(hidden=10**6, max_steps=1).fit(x[:10])
    with pytest.raises(ValueError, match="of memory"):
        VAE(latent_dim=10**9, max_steps=1).fit(x[:10])
    with pytest.raises(ValueError, match="at most 100,000"):
        model.log_prob(x[:2], k=10**12)
    with pytest.raises(ValueError, match="iwae_samples must be"):
        VAE(iwae_samples=10**12)
    with pytest.raises(ValueError, match="of memory"):
        model.sample(10**12)
    with pytest.raises(ValueError, match="of memory"):
        model.interpolate(x[0], x[1], steps=10**12)
    with pytest.raises(ValueError, match="more memory than any machine"):
        VAE(hidden=10**12, max_steps=1).fit(x[:10])
    with pytest.raises(ValueError):  # beyond 64 bits (torch's message until base checks seeds)
        model.sample(2, seed=2**70)
    with pytest.raises(TypeError, match="mean must be True or False"):
        model.sample(2, mean="yes")
