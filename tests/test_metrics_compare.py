"""The metrics of `genlab compare` against independent references: scipy's matrix square root,
Gaussian closed forms, scikit-learn's nearest neighbours, brute-force loops and scipy's entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from sklearn.neighbors import NearestNeighbors

from genlab import metrics


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# -- Fréchet distance -----------------------------------------------------------------------------
def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """FID's formula with scipy.linalg.sqrtm of the (non-symmetric) product Σ_a Σ_b."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def with_moments(z: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Rows whose sample mean and unbiased sample covariance are exactly `mean` and `cov`."""
    z = z - z.mean(0)
    whiten = np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False)))
    return z @ whiten.T @ np.linalg.cholesky(cov).T + mean


def test_frechet_distance_matches_scipy_sqrtm(rng):
    a = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 0.5
    expected = scipy_frechet(a, b)
    got = metrics.frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert got == pytest.approx(expected, rel=1e-6)
    assert metrics.frechet_distance(b, a) == pytest.approx(got, rel=1e-9)  # symmetric


def test_frechet_distance_closed_form_for_gaussians(rng):
    """Commuting (diagonal) covariances: |μa - μb|² + Σ_i (√σa_i - √σb_i)²; one covariance
    a multiple of the other: |μa - μb|² + tr Σ (1 - √c)²."""
    mean_a, mean_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    a = with_moments(rng.normal(size=(500, 3)), mean_a, np.diag(var_a))
    b = with_moments(rng.normal(size=(400, 3)), mean_b, np.diag(var_b))
    closed = ((mean_a - mean_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    assert metrics.frechet_distance(a, b) == pytest.approx(closed, rel=1e-9)

    sigma = np.array([[2.0, 0.6], [0.6, 1.0]])
    c = with_moments(rng.normal(size=(300, 2)), np.zeros(2), sigma)
    d = with_moments(rng.normal(size=(300, 2)), np.ones(2), 4.0 * sigma)
    closed = 2.0 + np.trace(sigma) * (1 - 2.0) ** 2
    assert metrics.frechet_distance(c, d) == pytest.approx(closed, rel=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero(rng):
    a = rng.normal(size=(100, 4))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert metrics.frechet_distance(a, a + 3.0) == pytest.approx(4 * 9.0, rel=1e-9)


def test_frechet_distance_rejects_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="same number of dimensions"):
        metrics.frechet_distance(np.zeros((4, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.frechet_distance(np.full((4, 2), np.nan), np.zeros((5, 2)))


# -- k-NN radii, precision and recall -------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3])
def test_knn_radii_match_sklearn(rng, k):
    x = rng.normal(size=(150, 5))
    nn = NearestNeighbors(n_neighbors=k + 1).fit(x)
    expected = nn.kneighbors(x)[0][:, k]  # column 0 is the point itself
    got = metrics.knn_radii(torch.from_numpy(x), k=k, chunk_size=40).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_knn_radii_gram_path_above_the_direct_dimension(rng):
    x = rng.normal(size=(60, metrics.DIRECT_DISTANCE_MAX_DIM + 7))
    expected = NearestNeighbors(n_neighbors=3).fit(x).kneighbors(x)[0][:, 2]
    np.testing.assert_allclose(metrics.knn_radii(x, k=2).numpy(), expected, rtol=1e-8)


def brute_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # index 0 is the point itself (distance 0)

    def inside(points, centres, r):
        return np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, r, strict=True))
                        for p in points])  # fmt: skip

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_match_brute_force(rng):
    real = rng.normal(size=(80, 3))
    fake = rng.normal(size=(70, 3)) * 1.5 + 0.5
    precision, recall = brute_precision_recall(real, fake, k=3)
    got = metrics.precision_recall(real, fake, k=3, chunk_size=16)
    assert 0 < precision < 1 and 0 < recall < 1  # the case is not degenerate
    assert got["precision"] == pytest.approx(precision)
    assert got["recall"] == pytest.approx(recall)


def test_precision_recall_identical_sets_are_one_and_far_sets_zero(rng):
    real = rng.normal(size=(100, 4))
    assert metrics.precision_recall(real, real.copy()) == {"precision": 1.0, "recall": 1.0}
    far = metrics.precision_recall(real, rng.normal(size=(90, 4)) + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0}


def test_precision_recall_mode_collapse_keeps_precision_loses_recall(rng):
    """Fakes that copy a quarter of the reals are all on the real manifold (precision 1), but
    the fake manifold misses most reals (recall well below 1)."""
    real = rng.normal(size=(200, 2))
    fake = real[np.argsort(real[:, 0])[:50]]  # the left-most quarter only
    got = metrics.precision_recall(real, fake, k=3)
    assert got["precision"] == 1.0
    assert got["recall"] < 0.5


def test_precision_recall_reject_too_few_points():
    with pytest.raises(ValueError, match="more than 3 points"):
        metrics.precision_recall(np.zeros((3, 2)), np.ones((10, 2)), k=3)


# -- class entropy and quantisation ---------------------------------------------------------------
def test_class_entropy_matches_scipy(rng):
    labels = rng.integers(0, 7, size=500)
    expected = scipy.stats.entropy(np.bincount(labels, minlength=10), base=2)
    assert metrics.class_entropy(torch.from_numpy(labels), 10) == pytest.approx(expected)
    direct = -sum(p * math.log2(p) for p in np.bincount(labels) / len(labels) if p > 0)
    assert metrics.class_entropy(labels, 10) == pytest.approx(direct)


def test_class_entropy_extremes():
    assert metrics.class_entropy(torch.arange(10).repeat(3), 10) == pytest.approx(math.log2(10))
    one_class = metrics.class_entropy(torch.full((20,), 4), 10)
    assert one_class == 0.0 and math.copysign(1.0, one_class) == 1.0  # not -0.0


def test_class_entropy_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"lie in \[0, 10\)"):
        metrics.class_entropy(torch.tensor([0, 10]), 10)
    with pytest.raises(TypeError, match="integers"):
        metrics.class_entropy(torch.tensor([0.0, 1.0]), 10)
    with pytest.raises(ValueError, match="non-empty"):
        metrics.class_entropy(torch.zeros(0, dtype=torch.long), 10)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_quantize_inverts_dequantize_and_fixes_grid_values(levels):
    k = torch.arange(levels, dtype=torch.float64).repeat(20)
    grid = k / (levels - 1)
    noisy = metrics.dequantize(grid, levels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(metrics.quantize(noisy, levels), grid)
    assert torch.equal(metrics.quantize(grid, levels), grid)


def test_quantize_clamps_and_refuses_nan():
    out = metrics.quantize(torch.tensor([-0.5, 0.49, 0.51, 1.7]), 3)
    assert out.tolist() == [0.0, 0.5, 0.5, 1.0]
    with pytest.raises(ValueError, match="NaN"):
        metrics.quantize(torch.tensor([0.1, float("nan")]), 3)
    with pytest.raises(ValueError, match="levels"):
        metrics.quantize(torch.tensor([0.1]), 1)
