"""GaussianMixture against scikit-learn, closed forms and brute force."""

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gmm_helpers import flat_far_component, overlapping_clusters, sklearn_start
from sklearn.mixture import GaussianMixture as SklearnGMM

import genlab
from genlab.data import Dataset, NpyArray
from genlab.models import GaussianMixture, NotFittedError
from genlab.models.gmm import FEATURES, n_features, natural_parameters, precision_cholesky

COV_TYPES = ["full", "tied", "diag", "spherical"]


@pytest.mark.parametrize("cov", COV_TYPES)
def test_same_init_same_trajectory_as_sklearn(cov):
    x = overlapping_clusters()
    start = sklearn_start(x, 6, cov)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SklearnGMM(6, covariance_type=cov, max_iter=60, tol=1e-10, **start).fit(x)
        ours = GaussianMixture(6, covariance_type=cov, max_iter=60, tol=1e-10, **start).fit(x)
    assert len(sk.lower_bounds_) >= 20  # a real trajectory, not a two-step convergence
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.weights_.numpy(), sk.weights_, atol=1e-6)
    np.testing.assert_allclose(ours.means_.numpy(), sk.means_, atol=1e-6)
    np.testing.assert_allclose(ours.covariances_.numpy(), sk.covariances_, atol=1e-6)
    np.testing.assert_allclose(ours.precisions_.numpy(), sk.precisions_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.log_prob(x).numpy(), sk.score_samples(x), atol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(x).numpy(), sk.predict_proba(x), atol=1e-6)
    assert ours.bic(x) == pytest.approx(sk.bic(x), rel=1e-9)
    assert ours.aic(x) == pytest.approx(sk.aic(x), rel=1e-9)
    assert ours.n_parameters == sk._n_parameters()


@pytest.mark.parametrize("cov", COV_TYPES)
def test_float32_close_to_float64(cov):
    x = overlapping_clusters()
    start = sklearn_start(x, 6, cov)
    kw = {"covariance_type": cov, "max_iter": 15, "tol": 0, **start}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f64 = GaussianMixture(6, **kw).fit(x)
        f32 = GaussianMixture(6, dtype="float32", **kw).fit(x)
    np.testing.assert_allclose(f32.lower_bounds_, f64.lower_bounds_, atol=1e-3)
    assert f32.log_prob(x).dtype == torch.float32


@pytest.mark.parametrize("cov", COV_TYPES)
def test_natural_parameters_give_the_gaussian_log_density(cov):
    """phi(z) Theta equals log w + log N(z | mu, Sigma) computed by torch.distributions."""
    g = torch.Generator().manual_seed(0)
    k, d = 3, 4
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64)
    full = a @ a.mT + 0.5 * torch.eye(d, dtype=torch.float64)
    covs = {
        "full": full,
        "tied": full[0],
        "diag": full.diagonal(dim1=1, dim2=2),
        "spherical": full.diagonal(dim1=1, dim2=2).mean(1),
    }[cov]
    dense = {
        "full": full,
        "tied": full[0].expand(k, d, d),
        "diag": torch.diag_embed(covs),
        "spherical": covs[:, None, None] * torch.eye(d, dtype=torch.float64),
    }[cov]
    means = torch.randn(k, d, generator=g, dtype=torch.float64)
    log_w = torch.log_softmax(torch.randn(k, generator=g, dtype=torch.float64), 0)
    z = torch.randn(50, d, generator=g, dtype=torch.float64) * 2
    theta = natural_parameters(log_w, means, precision_cholesky(covs, cov), cov)
    assert FEATURES[cov](z).shape == (n_features(cov, d), 50)
    ours = (theta @ FEATURES[cov](z)).T
    mvn = torch.distributions.MultivariateNormal(means, covariance_matrix=dense)
    expected = log_w + mvn.log_prob(z[:, None, :])
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_sample_moments_match_the_model(cov):
    x = overlapping_clusters(n_per=200, d=3, k=3, seed=4)
    m = GaussianMixture(3, covariance_type=cov, seed=0).fit(x)
    s = m.sample(200_000, seed=1).double()
    w, mu = m.weights_, m.means_
    k, d = mu.shape
    cov_k = {
        "full": m.covariances_,
        "tied": m.covariances_.expand(k, d, d),
        "diag": torch.diag_embed(m.covariances_),
        "spherical": m.covariances_[:, None, None] * torch.eye(d, dtype=torch.float64),
    }[cov]
    mean = w @ mu
    second = torch.einsum("k,kij->ij", w, cov_k + mu[:, :, None] * mu[:, None, :])
    expected_cov = second - mean[:, None] * mean[None, :]
    scale = expected_cov.diagonal().sqrt()
    assert torch.allclose(s.mean(0), mean, atol=(4 * scale / math.sqrt(len(s))).max().item())
    np.testing.assert_allclose(np.cov(s.numpy().T), expected_cov.numpy(), rtol=0.02, atol=0.02)
    _, labels = m.sample(200_000, seed=1, return_labels=True)
    freq = torch.bincount(labels, minlength=k).double() / len(labels)
    assert torch.allclose(freq, w, atol=0.01)


def test_sample_is_reproducible_and_seeded():
    m = GaussianMixture(3).fit(overlapping_clusters(d=2))
    assert torch.equal(m.sample(100, seed=7), m.sample(100, seed=7))
    assert not torch.equal(m.sample(100, seed=7), m.sample(100, seed=8))
    assert m.sample(0).shape == (0, 2)


def test_density_integrates_to_one_on_a_grid():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.normal(size=(300, 2)) * 0.6, rng.normal(size=(300, 2)) + np.array([3, 1])]
    )
    m = GaussianMixture(4, seed=0).fit(x)
    lin = torch.linspace(-8, 11, 600, dtype=torch.float64)
    gx, gy = torch.meshgrid(lin, lin, indexing="ij")
    dens = m.log_prob(torch.stack([gx.flatten(), gy.flatten()], 1)).exp().reshape(600, 600)
    integral = torch.trapezoid(torch.trapezoid(dens, lin, dim=1), lin).item()
    assert integral == pytest.approx(1.0, abs=1e-4)


def test_bic_picks_the_true_number_of_components():
    rng = np.random.default_rng(3)
    centres = np.array([[0, 0], [6, 0], [0, 6]])
    x = np.concatenate([rng.normal(size=(400, 2)) + c for c in centres])
    bics = {k: GaussianMixture(k, n_init=2, seed=0).fit(x).bic(x) for k in range(1, 7)}
    assert min(bics, key=bics.get) == 3


def test_kmeans_init_recovers_separated_means():
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(5, 3)) * 10
    x = np.concatenate([rng.normal(size=(500, 3)) + c for c in centres])
    m = GaussianMixture(5, seed=0).fit(x)
    dist = torch.cdist(m.means_, torch.as_tensor(centres))
    assert dist.min(0).values.max() < 0.3  # every true centre has a fitted mean next to it
    assert m.converged_ and m.n_iter_ < 20


@pytest.mark.parametrize("init", ["kmeans", "k-means++", "random", "random_from_data"])
def test_every_init_fits(init):
    x = overlapping_clusters(d=2)
    m = GaussianMixture(4, init=init, seed=0).fit(x)
    assert np.isfinite(m.lower_bound_)
    assert (np.diff(m.lower_bounds_) >= -1e-9).all()  # EM never decreases the likelihood


def test_n_init_keeps_the_best_run():
    x = overlapping_clusters(d=2)
    one = GaussianMixture(8, init="random", max_iter=20, seed=3)
    many = GaussianMixture(8, init="random", max_iter=20, seed=3, n_init=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert many.fit(x).lower_bound_ >= one.fit(x).lower_bound_


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_dead_component_is_reseeded_not_nan(cov):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 5])
    means = np.array([[0.0, 0.0], [5.0, 5.0], [1e4, 1e4]])  # the third gets no data
    m = GaussianMixture(3, covariance_type=cov, means_init=means, max_iter=50).fit(x)
    assert torch.isfinite(m.means_).all() and torch.isfinite(m.covariances_).all()
    assert (m.means_.abs() < 100).all()  # the far component was moved onto the data
    assert (m.weights_ > 1e-3).all()
    assert np.isfinite(m.lower_bounds_).all()


def test_chunked_lazy_file_fit_equals_in_memory(tmp_path):
    x = overlapping_clusters(d=3).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    lazy = NpyArray(tmp_path / "x.npy")
    kw = {"covariance_type": "full", "max_iter": 30, "tol": 0, "seed": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = GaussianMixture(5, **kw).fit(torch.from_numpy(x))
        chunked = GaussianMixture(5, chunk_size=97, **kw).fit(lazy)
    np.testing.assert_allclose(chunked.lower_bounds_, mem.lower_bounds_, rtol=0, atol=1e-10)
    torch.testing.assert_close(chunked.means_, mem.means_, rtol=0, atol=1e-9)
    torch.testing.assert_close(chunked.log_prob(lazy), mem.log_prob(x), rtol=0, atol=1e-9)


def test_save_load_round_trip(tmp_path):
    x = overlapping_clusters(d=2)
    m = GaussianMixture(3, covariance_type="diag", seed=0).fit(x)
    m.save(tmp_path / "gmm")
    meta = json.loads((tmp_path / "gmm" / "config.json").read_text())
    assert meta["family"] == "gmm" and meta["config"]["covariance_type"] == "diag"
    assert not list((tmp_path / "gmm").glob("*.tmp"))  # no temp files left behind
    m2 = genlab.load(tmp_path / "gmm")
    assert isinstance(m2, GaussianMixture)
    torch.testing.assert_close(m2.log_prob(x), m.log_prob(x), rtol=0, atol=0)
    assert torch.equal(m2.sample(50, seed=3), m.sample(50, seed=3))
    assert m2.lower_bounds_ == m.lower_bounds_ and m2.converged_ == m.converged_


def test_corrupt_model_folders_give_clear_errors(tmp_path):
    m = GaussianMixture(2).fit(overlapping_clusters(d=2))
    good = m.save(tmp_path / "good")
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        genlab.load(tmp_path / "missing")
    for name, mutate, err, msg in [
        ("nojson", lambda f: (f / "config.json").unlink(), FileNotFoundError, "config.json"),
        ("badjson", lambda f: (f / "config.json").write_text("{oops"), ValueError, "corrupt"),
        (
            "family",
            lambda f: (f / "config.json").write_text('{"family": "nope", "config": {}}'),
            ValueError,
            "unknown family",
        ),
        (
            "trunc",
            lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 10),
            ValueError,
            "safetensors",
        ),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        for f in good.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        mutate(folder)
        with pytest.raises(err, match=msg):
            genlab.load(folder)
    # a foreign but valid safetensors file: wrong tensor names
    folder = tmp_path / "foreign"
    folder.mkdir()
    (folder / "config.json").write_text((good / "config.json").read_text())
    import safetensors.torch

    safetensors.torch.save_file({"w": torch.zeros(3)}, folder / "model.safetensors")
    with pytest.raises(ValueError, match="does not match"):
        genlab.load(folder)


def test_bad_input_is_rejected_clearly():
    x = overlapping_clusters(d=2)
    bad = x.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinity.*row"):
        GaussianMixture(2).fit(bad)
    bad[7, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        GaussianMixture(2).fit(bad)
    with pytest.raises(ValueError, match="shape"):
        GaussianMixture(2).fit(x[:, 0])
    with pytest.raises(ValueError, match="empty"):
        GaussianMixture(2).fit(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="n_components"):
        GaussianMixture(5).fit(x[:3])
    with pytest.raises(TypeError, match="dtype"):
        GaussianMixture(2).fit(np.array([["a", "b"]] * 5))
    with pytest.raises(NotFittedError, match="fit"):
        GaussianMixture(2).sample(3)
    with pytest.raises(ValueError, match="n_components"):
        GaussianMixture(0)
    with pytest.raises(ValueError, match="covariance_type"):
        GaussianMixture(2, covariance_type="bogus")
    with pytest.raises(ValueError, match="reg_covar"):
        GaussianMixture(2, reg_covar=-1)
    m = GaussianMixture(2).fit(x)
    with pytest.raises(ValueError, match="shape"):
        m.log_prob(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        m.log_prob(bad)
    with pytest.raises(ValueError, match="non-negative integer"):
        m.sample(-1)
    with pytest.raises(ValueError, match="means_init"):
        GaussianMixture(2, means_init=np.zeros((3, 2))).fit(x)


def test_collapsed_data_with_no_regularisation_says_how_to_fix():
    x = np.repeat(np.eye(3), 10, axis=0)  # three points, each repeated: zero covariance
    with pytest.raises(ValueError, match="reg_covar"):
        GaussianMixture(3, reg_covar=0).fit(x)


def test_images_keep_their_event_shape():
    x = torch.rand(300, 1, 4, 4)
    m = GaussianMixture(2, covariance_type="diag").fit(x)
    assert m.sample(5).shape == (5, 1, 4, 4)
    assert m.log_prob(x).shape == (300,)


WORKER = Path(__file__).parent / "gmm_distributed_worker.py"


@pytest.mark.parametrize("init", ["given", "kmeans"])
def test_torchrun_two_processes_equal_one(tmp_path, init):
    """torchrun --nproc_per_node=2 (gloo, CPU): each process fits its shard, same result."""
    out = tmp_path / "dist.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*cmd, str(WORKER), str(out), init], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sys.path.insert(0, str(WORKER.parent))
    from gmm_distributed_worker import fit_model, make_data

    single = fit_model(torch.from_numpy(make_data()), init)
    got = np.load(out)
    np.testing.assert_allclose(got["lower_bounds"], single.lower_bounds_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got["means"], single.means_.numpy(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(got["covariances"], single.covariances_.numpy(), atol=1e-8)


@pytest.mark.filterwarnings("ignore::genlab.models.ConvergenceWarning")
def test_float32_statistics_fall_back_to_float64_on_a_degenerate_component(monkeypatch):
    """A component with zero spread far from the centre: float32 S2/N - mu^2 is not positive
    definite, so that iteration's statistics are recomputed in float64."""
    x, means = flat_far_component()
    exact_passes = []
    original = GaussianMixture._em_pass

    def spy(self, x, centre, theta, exact, weights=None):
        exact_passes.append(exact)
        return original(self, x, centre, theta, exact, weights)

    monkeypatch.setattr(GaussianMixture, "_em_pass", spy)
    f32 = GaussianMixture(2, dtype="float32", means_init=means, max_iter=5, tol=0).fit(x)
    assert set(exact_passes) == {False, True}  # a float32 pass, then the float64 fallback
    f64 = GaussianMixture(2, means_init=means, max_iter=5, tol=0).fit(x)
    # reg_covar alone; raw moments lose ~eps64 * 1500^2 * sqrt(n) ~ 1e-8 here even in float64
    assert f64.covariances_[1, 2, 2] == pytest.approx(1e-6, abs=5e-8)
    assert 0 < f32.covariances_[1, 2, 2] < 1e-5  # positive: never a NaN or a failed Cholesky
    torch.testing.assert_close(f32.covariances_, f64.covariances_, rtol=1e-4, atol=1e-5)


# -- the config, declared once -----------------------------------------------------------------
def test_config_fields_carry_help_rules_and_cli_flags():
    from genlab.models.gmm import GMMConfig
    from genlab.options import options

    declared = {o.name: o for o in options(GMMConfig)}
    assert all(o.help and o.check is not None for o in declared.values())
    assert (declared["n_components"].flag, declared["n_components"].short) == ("--components", "-k")
    assert declared["covariance_type"].flag == "--covariance"
    assert declared["dequantize"].default is True
    with pytest.raises(ValueError, match=r"n_init must be an integer in \[1, 1000\], got 0"):
        GMMConfig(n_init=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        GaussianMixture(2, dtype="float16")
    with pytest.raises(TypeError, match="no option 'n_component'"):
        GaussianMixture(n_component=2)
    with pytest.raises(TypeError, match="twice"):
        GaussianMixture(2, n_components=3)


@pytest.mark.filterwarnings("ignore::genlab.models.ConvergenceWarning")
def test_unseeded_fit_leaves_the_global_rng_alone():
    x = overlapping_clusters(d=2)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    GaussianMixture(2, seed=None, max_iter=5).fit(x)
    assert torch.equal(torch.rand(3), expected)


# -- quantised images are fitted dequantised -----------------------------------------------------
@pytest.mark.filterwarnings("ignore::genlab.models.ConvergenceWarning")
def test_quantised_datasets_are_fitted_on_dequantised_pixels():
    from genlab import metrics
    from genlab.data import load_dataset
    from genlab.solvers import local_generator

    digits = load_dataset("digits", n=200)
    kw = {"covariance_type": "diag", "max_iter": 10, "seed": 4}
    ours = GaussianMixture(2, **kw).fit(digits)
    noise = metrics.dequantize(digits.x, 17, generator=local_generator(5))  # seed + 1
    by_hand = GaussianMixture(2, **kw).fit(noise)
    torch.testing.assert_close(ours.means_, by_hand.means_, rtol=0, atol=0)
    raw = GaussianMixture(2, dequantize=False, **kw).fit(digits)
    torch.testing.assert_close(raw.means_, GaussianMixture(2, **kw).fit(digits.x).means_)
    assert not torch.allclose(raw.means_, ours.means_)


# -- model selection: one fitting path -----------------------------------------------------------
def test_sweep_records_bic_test_nll_skips_and_errors():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=(150, 2)) + c for c in ([0, 0], [6, 0], [0, 6])])
    test = rng.normal(size=(40, 2))
    records = GaussianMixture.sweep(x, [1, 3, 500], test=test, seed=0, covariance_type="diag")
    assert [r["n_components"] for r in records] == [1, 3, 500]
    for r in records[:2]:
        model = r["model"]
        assert model.config.n_components == r["n_components"] and r["seconds"] > 0
        assert model.config.covariance_type == "diag"
        assert r["bic"] == pytest.approx(model.bic(x)) and r["error"] is r["skipped"] is None
        assert r["test_nll"] == pytest.approx(-model.score(test))
    assert records[1]["bic"] < records[0]["bic"]
    assert records[2]["model"] is None and "500" in records[2]["skipped"]
    # a budget spent by the first fit: the next K are predicted to overrun it
    quick = GaussianMixture.sweep(x, [1, 2, 4], max_seconds=1e-9)
    assert quick[0]["model"] is not None and quick[0]["test_nll"] is None
    assert all("overrun" in r["skipped"] and r["model"] is None for r in quick[1:])
    # a collapsed covariance is recorded, not raised
    collapsed = np.repeat(np.eye(3), 10, axis=0)
    (failed,) = GaussianMixture.sweep(collapsed, [3], reg_covar=0.0)
    assert failed["model"] is None and "reg_covar" in failed["error"]


def test_fit_for_budget_keeps_the_lowest_bic():
    from genlab.data import load_dataset
    from genlab.models.base import Budget

    moons = load_dataset("moons", n=300)
    model, details = GaussianMixture.fit_for_budget(
        moons, Budget(steps=5, seed=0, options={"components": (1, 2, 8, 1000)})
    )
    assert set(details["bic"]) == {"1", "2", "8"}  # K above the number of rows dropped
    best = min(details["bic"], key=details["bic"].get)
    assert details["n_components"] == model.config.n_components == int(best)
    assert details["steps"] is None and details["em_iterations"] == model.n_iter_
    assert details["converged"] == model.converged_
    assert model.config.covariance_type == "full" and model.config.seed == 0
    assert details["options"] == {"covariance_type": "full", "n_components": int(best)}
    assert details["bic"][best] == pytest.approx(model.bic(moons))
    one, details = GaussianMixture.fit_for_budget(
        moons, Budget(seconds=60, seed=1, options={"n_components": 3, "tol": 1e-2})
    )
    assert one.config.n_components == 3 and one.config.tol == 1e-2 and set(details["bic"]) == {"3"}
    collapsed = Dataset(torch.from_numpy(np.repeat(np.eye(3), 10, axis=0)), None, (3,), "points")
    with pytest.raises(ValueError, match="no GMM could be fitted"):
        GaussianMixture.fit_for_budget(
            collapsed, Budget(options={"n_components": 3, "reg_covar": 0.0})
        )
    with pytest.raises(ValueError, match="reg_covar"):  # a bad option is not a failed fit
        GaussianMixture.fit_for_budget(moons, Budget(options={"reg_covar": -1.0}))


# -- what callers ask ----------------------------------------------------------------------------
@pytest.mark.parametrize("cov", COV_TYPES)
def test_ellipses_2d_are_the_components_as_matrices(cov):
    x = overlapping_clusters(d=2)
    m = GaussianMixture(3, covariance_type=cov, seed=0).fit(x)
    means, covs, weights = m.ellipses_2d()
    assert (
        covs.shape == (3, 2, 2)
        and torch.equal(means, m.means_)
        and torch.equal(weights, m.weights_)
    )
    # each matrix is the covariance of that component's samples
    s, labels = m.sample(100_000, seed=0, return_labels=True)
    for k in range(3):
        np.testing.assert_allclose(np.cov(s[labels == k].numpy().T), covs[k].numpy(), rtol=0.05,
                                   atol=0.05)  # fmt: skip
    assert GaussianMixture(2).fit(overlapping_clusters(d=3)).ellipses_2d() is None
    assert m.fit_summary() == {"iterations": m.n_iter_, "converged": m.converged_}
    assert GaussianMixture.component_study and GaussianMixture.sample_options == frozenset()


# -- folders saved before the redesign -----------------------------------------------------------
def test_a_folder_saved_before_the_redesign_scores_the_same():
    from genlab.data import load_dataset

    folder = Path(__file__).parent / "fixtures" / "v1" / "gmm-moons"
    expected = json.loads((folder / "expected.json").read_text())
    model = genlab.load(folder)
    assert model.config.dequantize  # a field added since: its default
    x = load_dataset("moons", split="test", n=5).x[:5]
    np.testing.assert_allclose(model.log_prob(x).numpy(), expected["log_prob"], rtol=0, atol=1e-4)
    s = model.sample(3, seed=0).flatten(1)[:, :6]
    np.testing.assert_allclose(s.numpy(), expected["sample"], rtol=0, atol=1e-4)


# -- bad input: far points, overflowing data, absurd sizes, seeds ---------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_far_points_get_their_exact_finite_density(dtype):
    x = torch.from_numpy(overlapping_clusters(n_per=100, d=2))
    model = GaussianMixture(3, dtype=dtype).fit(x)
    rows = x[:4].clone()
    far = rows.clone()
    far[1], far[2] = torch.tensor([1e18, 50.0], dtype=torch.float64), 1e10  # float32: overflow
    plain, mixed = model.log_prob(rows), model.log_prob(far)
    assert mixed.dtype == getattr(torch, dtype)
    torch.testing.assert_close(mixed[[0, 3]], plain[[0, 3]], rtol=0, atol=0)
    assert torch.isfinite(mixed).all() and bool(mixed[1:3].max() < plain.min())
    exact = GaussianMixture(3, dtype="float64").fit(x).log_prob(far[1:2])  # same fit, float64
    torch.testing.assert_close(mixed[1:2].double(), exact, rtol=1e-5, atol=0)
    assert model.predict(far).shape == (4,) and torch.isfinite(model.predict_proba(far)).all()
    top, message = (1e20, "beyond the range of float32") if dtype == "float32" else (
        1e200, "overflows float64")  # fmt: skip
    with pytest.raises(ValueError, match=message):
        model.log_prob(torch.tensor([[top, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("dtype, big, fix", [("float32", 1e20, "use dtype='float64'"),
                                             ("float64", 1e200, "rescale the data")])  # fmt: skip
def test_data_whose_squares_overflow_is_refused_before_em(dtype, big, fix):
    x = torch.randn(50, 2, dtype=torch.float64)
    x[3, 1] = big
    with pytest.raises(ValueError, match=f"values up to .* overflow {dtype}; {fix}"):
        GaussianMixture(2, dtype=dtype).fit(x)


def test_absurd_sizes_seeds_and_overflowing_samples_are_refused():
    with pytest.raises(ValueError, match=r"mixture of 100,000 components in 1,000 dim.*memory"):
        GaussianMixture(10**5).fit(torch.randn(10, 1000))
    with pytest.raises(ValueError, match="n_init must be"):
        GaussianMixture(n_init=10**12)  # each initialisation is a whole EM run
    with pytest.raises(ValueError, match="not text"):
        GaussianMixture().fit("some text")
    with pytest.raises(ValueError, match="seed must be"):
        GaussianMixture(seed=2**63)
    assert GaussianMixture(seed=2**63 - 1).config.seed == 2**63 - 1
    model = GaussianMixture(2, dtype="float32").fit(torch.randn(50, 2))
    with pytest.raises(ValueError, match="of memory"):
        model.sample(10**12)
    with pytest.raises(ValueError):  # beyond 64 bits (torch's message until base checks seeds)
        model.sample(2, seed=2**70)
    model.means_ = model.means_ + 1e39  # beyond float32
    with pytest.raises(ValueError, match=r"overflow float32.*dtype='float64'"):
        model.sample(3, seed=0)
