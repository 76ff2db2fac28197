"""Sample weights in genlab's Gaussian mixture (issue 15.3), warm starts and scikit-learn's
wording in the model itself: integer weights against repeated rows (the identity the weights
must satisfy), zero weights against dropped rows, weighted init, BIC and bad weights."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture as SklearnGMM

from genlab.models import GaussianMixture, gmm
from genlab.models.base import ConvergenceWarning
from genlab.models.gmm_maths import initial_responsibilities, kmeans_plusplus, lloyd

COV_TYPES = ["full", "tied", "diag", "spherical"]

pytestmark = pytest.mark.usefixtures("one_thread")


def clusters(seed: int = 0) -> np.ndarray:
    """Three overlapping, correlated 2-D clusters of unequal size, off the origin."""
    rng = np.random.default_rng(seed)
    parts = [
        rng.normal(size=(n, 2)) @ (rng.normal(size=(2, 2)) * 0.5 + np.eye(2)) + c
        for c, n in zip(([0.0, 0.0], [4.0, 1.0], [1.0, 4.0]), (70, 50, 40), strict=True)
    ]
    return np.concatenate(parts) + np.array([10.0, -5.0])


def start(x: np.ndarray, covariance_type: str) -> dict:
    """A shared, poor starting point: three rows as means, unit precisions."""
    d = x.shape[1]
    precisions = {
        "full": np.stack([np.eye(d)] * 3),
        "tied": np.eye(d),
        "diag": np.ones((3, d)),
        "spherical": np.ones(3),
    }[covariance_type]
    return {
        "weights_init": np.full(3, 1 / 3),
        "means_init": x[[0, 80, 150]],
        "precisions_init": precisions,
    }


def fit(x, covariance_type, sample_weight=None, **options) -> GaussianMixture:
    params = {"tol": 1e-9, "max_iter": 300, **start(clusters(), covariance_type), **options}
    model = GaussianMixture(3, covariance_type=covariance_type, **params)
    return model.fit(x, sample_weight=sample_weight)


def assert_same_fit(a: GaussianMixture, b: GaussianMixture, atol: float = 1e-10) -> None:
    assert (a.n_iter_, a.converged_) == (b.n_iter_, b.converged_)
    np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=0, atol=atol)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        got, want = getattr(a, name).numpy(), getattr(b, name).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=name)


# -- the identities -----------------------------------------------------------------------------
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_integer_weights_equal_repeated_rows(covariance_type):
    x = clusters()
    w = np.random.default_rng(1).integers(0, 4, len(x))  # 0, 1, 2, 3
    weighted = fit(x, covariance_type, sample_weight=w)
    repeated = fit(np.repeat(x, w, axis=0), covariance_type)
    assert weighted.n_iter_ > 5
    assert_same_fit(weighted, repeated)
    # and the same as scikit-learn on the repeated rows, from the same start
    sk = SklearnGMM(3, covariance_type=covariance_type, tol=1e-9, max_iter=300,
                    **start(x, covariance_type)).fit(np.repeat(x, w, axis=0))  # fmt: skip
    np.testing.assert_allclose(weighted.lower_bounds_, sk.lower_bounds_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(weighted.means_.numpy(), sk.means_, rtol=0, atol=1e-9)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_zero_weights_equal_dropped_rows_even_far_ones(covariance_type):
    # rows of weight 0 (here far outliers) are not data: no statistic and no re-seeding sees them
    x = clusters()
    outliers = np.random.default_rng(3).normal(size=(20, 2)) * 5 + 300
    both = np.concatenate([x[:100], outliers, x[100:]])
    w = np.r_[np.ones(100), np.zeros(20), np.ones(len(x) - 100)]
    assert_same_fit(fit(both, covariance_type, sample_weight=w), fit(x, covariance_type))


def test_only_ratios_of_weights_matter():
    x = clusters()
    w = np.random.default_rng(4).uniform(0.1, 3.0, len(x))
    a = fit(x, "full", sample_weight=w)
    b = fit(x, "full", sample_weight=w * 1e-9)
    c = fit(x, "full", sample_weight=torch.from_numpy(w * 1e6))  # a tensor works too
    assert_same_fit(a, b)
    assert_same_fit(a, c, atol=1e-9)


def test_weighted_score_bic_aic_equal_repeated_rows_and_sklearn():
    x = clusters()
    w = np.random.default_rng(5).integers(0, 4, len(x))
    repeated = np.repeat(x, w, axis=0)
    model = fit(x, "full")
    assert model.score(x, sample_weight=w) == pytest.approx(model.score(repeated), abs=1e-12)
    assert model.bic(x, sample_weight=w) == pytest.approx(model.bic(repeated), abs=1e-9)
    assert model.aic(x, sample_weight=w) == pytest.approx(model.aic(repeated), abs=1e-9)
    # the definitions, against scikit-learn's unweighted BIC/AIC on the repeated rows
    sk = SklearnGMM(3, random_state=0).fit(x)  # then given genlab's parameters
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        setattr(sk, name, getattr(model, name).numpy())
    assert model.bic(x, sample_weight=w) == pytest.approx(sk.bic(repeated), abs=1e-8)
    assert model.aic(x, sample_weight=w) == pytest.approx(sk.aic(repeated), abs=1e-8)
    assert model.bic(x) == pytest.approx(sk.bic(x), abs=1e-8)  # unweighted unchanged


# -- weighted initialisation ---------------------------------------------------------------------
def test_weighted_lloyd_equals_lloyd_on_repeated_rows():
    x = torch.from_numpy(clusters())
    w = torch.from_numpy(np.random.default_rng(6).integers(0, 4, len(x)).astype(float))
    centres = x[[0, 80, 150]]
    weighted = lloyd(x, centres, 10, w)
    repeated = lloyd(x.repeat_interleave(w.long(), dim=0), centres, 10)
    np.testing.assert_allclose(weighted.numpy(), repeated.numpy(), rtol=0, atol=1e-12)
    assert not torch.allclose(weighted, lloyd(x, centres, 10))  # the weights changed it


def test_weighted_seeding_never_picks_a_row_of_weight_zero():
    x = torch.from_numpy(clusters())
    w = torch.zeros(len(x), dtype=torch.float64)
    chosen = torch.tensor([3, 60, 75, 120, 155])
    w[chosen] = 1.0
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        centres = kmeans_plusplus(x, 3, g, w)
        assert torch.cdist(centres, x[chosen]).min(1).values.max() == 0  # rows of weight > 0
    g = torch.Generator().manual_seed(0)
    resp = initial_responsibilities(x, 3, "random_from_data", g, w)
    assert resp.shape == (len(x), 3) and (resp.sum(1) == 1).all()
    heavy = torch.ones(len(x), dtype=torch.float64)
    heavy[77] = 1e12  # the first centre is drawn with probability w / sum w
    firsts = {int(torch.cdist(kmeans_plusplus(x, 1, torch.Generator().manual_seed(s), heavy),
                              x).argmin()) for s in range(10)}  # fmt: skip
    assert firsts == {77}


@pytest.mark.parametrize("init", ["kmeans", "k-means++", "random", "random_from_data"])
def test_weighted_fit_with_each_init_ignores_zero_weight_outliers(init):
    x = clusters()
    far = np.full((30, 2), 1e3) + np.random.default_rng(7).normal(size=(30, 2))
    both = np.concatenate([far, x])
    w = np.r_[np.zeros(30), np.ones(len(x))]
    model = GaussianMixture(3, init=init, seed=0, tol=1e-6, max_iter=1000)  # random: slow
    model.fit(both, sample_weight=w)
    assert model.means_.abs().max() < 50  # no component went to the outliers
    assert model.score(x) > GaussianMixture(1).fit(x).score(x) + 0.1  # a mixture of x
    assert model.score(far) < -1e4  # and nothing of it covers the outliers


# -- bad weights -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("weights", "error", "match"),
    [
        (np.ones(5), ValueError, r"shape \(5,\), but x has 160 rows: give one weight per row"),
        (np.ones((160, 1)), ValueError, "one weight per row"),
        (np.r_[np.nan, np.ones(159)], ValueError, r"sample_weight\[0\] is nan: .*finite"),
        (np.r_[np.ones(9), np.inf, np.ones(150)], ValueError, r"sample_weight\[9\] is inf"),
        (np.r_[np.ones(3), -0.5, np.ones(156)], ValueError, r"\[3\] = -0.5 is negative.*>= 0"),
        (np.zeros(160), ValueError, "all zero: give at least one row a positive weight"),
        (np.r_[1.0, 1.0, np.zeros(158)], ValueError, "only 2 rows have a positive sample_weight"),
        (np.array(["a"] * 160), TypeError, "real numbers"),
        (np.ones(160) * 1j, TypeError, "real numbers"),
        (np.full(160, 1e308), ValueError, "divide the weights by a constant"),
    ],
)
def test_bad_weights_name_the_fix(weights, error, match):
    with pytest.raises(error, match=match):
        GaussianMixture(3).fit(clusters(), sample_weight=weights)


def test_weights_are_not_changed_and_bad_score_weights_refused():
    x, w = clusters(), np.arange(160, dtype=float) % 3
    kept = w.copy()
    model = GaussianMixture(3, seed=0).fit(x, sample_weight=w)
    np.testing.assert_array_equal(w, kept)
    with pytest.raises(ValueError, match="all zero"):
        model.bic(x, sample_weight=np.zeros(160))
    with pytest.raises(ValueError, match="one weight per row"):
        model.score(x, sample_weight=np.ones(3))


# -- warm start and scikit-learn's wording in the model itself -----------------------------------
def test_warm_start_continues_and_compares_with_the_last_bound():
    x = clusters()
    params = {"tol": 0.0, "max_iter": 4, **start(x, "full")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warm = GaussianMixture(3, warm_start=True, **params).fit(x)
        first = warm.lower_bounds_
        warm.fit(x)
        cold = GaussianMixture(3, **{**params, "max_iter": 8}).fit(x)
    np.testing.assert_allclose(first + warm.lower_bounds_, cold.lower_bounds_, rtol=0, atol=1e-12)
    loose = GaussianMixture(3, warm_start=True, tol=1.0, max_iter=1, **start(x, "full"))
    with pytest.warns(ConvergenceWarning):
        loose.fit(x)  # the first fit has no bound to compare with
    loose.fit(x)  # the second compares with it: a change below tol=1 stops it
    assert loose.converged_ and loose.n_iter_ == 1
    with pytest.raises(ValueError, match="warm_start continues a mixture fitted on"):
        loose.fit(np.hstack([x, x]))


def test_warnings_and_errors_start_with_sklearn_words():
    x = clusters()
    with pytest.warns(ConvergenceWarning) as caught:
        GaussianMixture(3, max_iter=1, **start(x, "full")).fit(x)
    assert str(caught[0].message).startswith(gmm.NOT_CONVERGED)
    repeated = np.vstack([np.ones((5, 2)), np.zeros((5, 2))])
    with pytest.raises(gmm.IllDefinedCovarianceError) as error:
        GaussianMixture(4, reg_covar=0.0, dequantize=False).fit(repeated)
    assert str(error.value).startswith(gmm.ILL_DEFINED) and "reg_covar=0" in str(error.value)
    assert isinstance(error.value, ValueError) and "rows of responsibility" in str(error.value)


# -- under torchrun ----------------------------------------------------------------------------
WORKER = """
import sys, warnings
import numpy as np, torch, torch.distributed as dist
from genlab.models import GaussianMixture

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
x, w = np.load(sys.argv[1])["x"], np.load(sys.argv[1])["w"]
rows = slice(*np.linspace(0, len(x), world + 1).astype(int)[rank : rank + 2])
warnings.simplefilter("ignore")
model = GaussianMixture(3, max_iter=15, tol=0, seed=5, chunk_size=64)
model.fit(torch.from_numpy(x[rows]), sample_weight=w[rows])
if rank == 0:
    np.savez(sys.argv[2], bounds=model.lower_bounds_, means=model.means_.numpy())
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_weighted_shards_equal_one_weighted_fit(tmp_path):
    """Each process passes its shard's weights: totals, the weighted k-means init sample and
    the statistics are all-reduced, so two processes give the one-process weighted fit."""
    x = clusters()
    w = np.random.default_rng(8).integers(0, 4, len(x)).astype(float)
    np.savez(tmp_path / "data.npz", x=x, w=w)
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = [str(tmp_path / "worker.py"), str(tmp_path / "data.npz"), str(tmp_path / "out.npz")]
    done = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = np.load(tmp_path / "out.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one = GaussianMixture(3, max_iter=15, tol=0, seed=5, chunk_size=64).fit(x, sample_weight=w)
    np.testing.assert_allclose(two["bounds"], one.lower_bounds_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(two["means"], one.means_.numpy(), rtol=0, atol=1e-10)
