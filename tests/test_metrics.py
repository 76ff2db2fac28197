"""Metrics against independent references: brute-force loops, scipy, closed forms, hand sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch

from genlab import metrics

# --------------------------------------------------------------------------------------------
# Brute-force references (plain Python/NumPy loops)
# --------------------------------------------------------------------------------------------


def brute_mmd(x: np.ndarray, y: np.ndarray, bandwidths: list[float]) -> float:
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)

    def k(a, b):
        d2 = float(np.sum((a - b) ** 2))
        return sum(math.exp(-d2 / (2 * h * h)) for h in bandwidths) / len(bandwidths)

    n, m = len(x), len(y)
    s_xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j)
    s_yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    s_xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    return s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2 * s_xy / (n * m)


def brute_energy(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)

    def mean_dist(a, b):
        return sum(np.linalg.norm(ai - bj) for ai in a for bj in b) / (len(a) * len(b))

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def sort_and_match_w2(u: np.ndarray, v: np.ndarray) -> float:
    assert len(u) == len(v)
    return math.sqrt(float(np.mean((np.sort(u) - np.sort(v)) ** 2)))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(params=["direct", "gram"])
def distance_path(request, monkeypatch):
    """Run a test through both pairwise-distance code paths (direct differences, Gram)."""
    limit = 10**9 if request.param == "direct" else 0
    monkeypatch.setattr(metrics, "DIRECT_DISTANCE_MAX_DIM", limit)
    return request.param


# --------------------------------------------------------------------------------------------
# Likelihood metrics
# --------------------------------------------------------------------------------------------


def test_nll_and_bits_per_dim_by_hand():
    lp = torch.tensor([-1.0, -2.0, -4.5])
    assert metrics.nll(lp) == pytest.approx(7.5 / 3, rel=1e-15)
    assert metrics.nll(np.array([0.5, 1.5])) == pytest.approx(-1.0, rel=1e-15)
    assert metrics.bits_per_dim(7.5 / 3, 4) == pytest.approx(2.5 / (4 * 0.6931471805599453))
    assert metrics.bits_per_dim(math.log(2) * 10, 10) == pytest.approx(1.0, rel=1e-15)


def test_discrete_bits_per_dim_uniform_density_is_log2_levels():
    # The uniform density on [0,1)^D has log p = 0 everywhere: exactly log2(levels) bits/dim.
    for levels, expected in [(256, 8.0), (2, 1.0), (10, math.log2(10))]:
        assert metrics.discrete_bits_per_dim(torch.zeros(17), 5, levels) == pytest.approx(
            expected, rel=1e-14
        )


def test_discrete_bits_per_dim_by_hand():
    log_p = torch.tensor([3.0, 1.0], dtype=torch.float64)  # mean 2 nats
    d, levels = 3, 16
    expected = (-2.0 + d * math.log(16)) / (d * math.log(2))  # = 4 − 2/(3 ln 2)
    assert metrics.discrete_bits_per_dim(log_p, d, levels) == pytest.approx(expected, rel=1e-14)
    assert expected == pytest.approx(4 - 2 / (3 * math.log(2)), rel=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [2, 5, 256])
def test_dequantize_stays_in_its_cell(dtype, levels):
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, levels, (400, 3, 7), generator=g)
    x = (k.double() / (levels - 1)).to(dtype)
    y = metrics.dequantize(x, levels, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == dtype
    assert (y >= 0).all() and (y < 1).all()
    assert torch.equal(torch.floor(y.double() * levels).long(), k)
    # u = y·levels − k is U[0,1): mean 1/2, variance 1/12 (8400 draws, so ± ~0.01).
    u = y.double() * levels - k
    assert u.mean().item() == pytest.approx(0.5, abs=0.02)
    assert u.var().item() == pytest.approx(1 / 12, abs=0.01)


@pytest.mark.parametrize("levels", [255, 256])
def test_dequantize_float32_rounding_never_leaves_the_cell(levels):
    # Rounding (k + u)/levels to float32 lands on the next cell edge for ~1e-5 of the draws
    # when u is close to 1; dequantize must nudge those back inside.
    k = torch.full((2_000_000,), levels - 1)
    x = (k / (levels - 1)).float()
    y = metrics.dequantize(x, levels, generator=torch.Generator().manual_seed(0))
    assert (y < 1).all()
    assert torch.equal(torch.floor(y.double() * levels).long(), k)


def test_dequantize_generator_reproducible_and_accepts_bool_and_numpy():
    x = torch.tensor([[True, False], [False, True]])
    a = metrics.dequantize(x, 2, generator=torch.Generator().manual_seed(3))
    b = metrics.dequantize(x.numpy(), 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert torch.equal(torch.floor(a * 2).long(), x.long())


def test_dequantize_rejects_off_grid_data():
    k = torch.arange(256).float()
    with pytest.raises(ValueError, match="levels"):
        metrics.dequantize(k, 256)  # forgot to divide by 255
    with pytest.raises(ValueError, match="off that grid"):
        metrics.dequantize(k / 255, 16)  # wrong number of levels
    with pytest.raises(ValueError, match="levels"):
        metrics.dequantize(k / 255 * 2 - 1, 256)  # data in [−1, 1]
    with pytest.raises(ValueError, match="NaN"):
        metrics.dequantize(torch.tensor([0.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.dequantize(torch.tensor([0.0, 1.0]), 1)


# --------------------------------------------------------------------------------------------
# MMD
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [4096, 7, 3, 1])
def test_mmd_matches_brute_force_loops(rng, chunk_size, distance_path):
    x = rng.normal(size=(13, 2, 2))  # flattened to D = 4
    y = rng.normal(loc=0.4, size=(9, 4))
    hs = [0.5, 1.3, 4.0]
    expected = brute_mmd(x, y, hs)
    got = metrics.mmd(torch.from_numpy(x), torch.from_numpy(y), hs, chunk_size=chunk_size)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-13)


def test_mmd_default_bandwidths_are_median_heuristic(rng):
    x = rng.normal(size=(17, 3))  # 28 points pooled: an even number (378) of distances
    y = rng.normal(scale=2.0, size=(11, 3))
    med = float(np.median(scipy.spatial.distance.pdist(np.concatenate([x, y]))))
    expected = brute_mmd(x, y, [s * med for s in (0.25, 0.5, 1.0, 2.0, 4.0)])
    assert metrics.median_distance(x, y) == pytest.approx(med, rel=1e-12)
    assert metrics.mmd(x, y) == pytest.approx(expected, rel=1e-10)


def test_mmd_is_symmetric(rng):
    x = torch.from_numpy(rng.normal(size=(40, 3)))
    y = torch.from_numpy(rng.normal(loc=0.5, size=(25, 3)))
    assert metrics.mmd(x, y) == pytest.approx(metrics.mmd(y, x), rel=1e-10)
    assert metrics.mmd(x, y, [1.0], chunk_size=8) == pytest.approx(
        metrics.mmd(y, x, [1.0]), rel=1e-10
    )


def test_mmd_is_unbiased_for_equal_distributions():
    # V-statistic bias would be ≈ (2/n)(1 − E k(x, x')) ≈ 0.03 here, dozens of standard errors.
    g = torch.Generator().manual_seed(0)
    values = np.array(
        [
            metrics.mmd(torch.randn(30, 2, generator=g), torch.randn(30, 2, generator=g), [1.0])
            for _ in range(300)
        ]
    )
    stderr = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(values.mean()) < 4 * stderr
    assert (values < 0).any()  # unbiasedness implies negative values occur
    assert np.abs(values).max() < 0.2


def test_mmd_grows_with_distance_between_distributions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g)
    near = metrics.mmd(x, torch.randn(300, 2, generator=g), [1.0])
    mid = metrics.mmd(x, torch.randn(300, 2, generator=g) + 1.0, [1.0])
    far = metrics.mmd(x, torch.randn(300, 2, generator=g) + 4.0, [1.0])
    assert abs(near) < 0.02
    assert 0.1 < mid < far
    # Closed form for N(0, I) vs N(δ, I) in d = 2 with h = 1 (Gaussian integrals):
    # MMD² = 2 (1/3)^{d/2} (1 − exp(−|δ|²/6)), here |δ|² = 32 → ≈ 0.664.
    assert far == pytest.approx(2 / 3 * (1 - math.exp(-32 / 6)), abs=0.03)


def test_mmd_is_translation_invariant_at_large_offsets(rng, distance_path):
    x, y = rng.normal(size=(50, 3)), rng.normal(loc=0.3, size=(40, 3))
    shift = 1e6
    assert metrics.mmd(x + shift, y + shift, [0.7, 2.0]) == pytest.approx(
        metrics.mmd(x, y, [0.7, 2.0]), rel=1e-8
    )


# --------------------------------------------------------------------------------------------
# Energy distance
# --------------------------------------------------------------------------------------------


def test_energy_distance_is_scipy_squared_in_1d(rng, distance_path):
    u = rng.normal(size=57)
    v = rng.standard_t(df=3, size=41) + 0.3
    expected = scipy.stats.energy_distance(u, v) ** 2  # scipy returns the square root
    assert metrics.energy_distance(torch.from_numpy(u), v) == pytest.approx(expected, rel=1e-10)
    assert metrics.energy_distance(u[:, None], v[:, None], chunk_size=5) == pytest.approx(
        expected, rel=1e-10
    )


@pytest.mark.parametrize("chunk_size", [4096, 4])
def test_energy_distance_matches_brute_force_in_3d(rng, chunk_size, distance_path):
    x = rng.normal(size=(14, 3))
    y = rng.uniform(-1, 2, size=(11, 3))
    got = metrics.energy_distance(x, y, chunk_size=chunk_size)
    assert got == pytest.approx(brute_energy(x, y), rel=1e-10)
    assert metrics.energy_distance(y, x) == pytest.approx(got, rel=1e-10)


def test_energy_distance_zero_for_identical_samples(rng):
    x = rng.normal(size=(20, 2))
    assert metrics.energy_distance(x, x[::-1].copy()) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Sliced Wasserstein
# --------------------------------------------------------------------------------------------


def test_sliced_wasserstein_1d_is_sort_and_match(rng):
    u, v = rng.normal(size=200), rng.exponential(size=200)
    # In 1-D every direction is ±1, so SW2 is the exact empirical W2.
    assert metrics.sliced_wasserstein(u, v, n_projections=3) == pytest.approx(
        sort_and_match_w2(u, v), rel=1e-12
    )


def test_sliced_wasserstein_1d_unequal_sizes_matches_replicated_samples(rng):
    # Repeating each point of u 2× and of v 3× leaves both empirical measures unchanged and
    # makes the sizes equal (60), where sort-and-match is exact.
    u, v = rng.normal(size=30), rng.normal(loc=1.0, scale=0.5, size=20)
    expected = sort_and_match_w2(np.repeat(u, 2), np.repeat(v, 3))
    assert metrics.sliced_wasserstein(u, v) == pytest.approx(expected, rel=1e-12)
    assert metrics.sliced_wasserstein(v, u) == pytest.approx(expected, rel=1e-12)
    # And scipy's W1 never exceeds W2 (Jensen).
    assert scipy.stats.wasserstein_distance(u, v) <= expected + 1e-12


def test_sliced_wasserstein_1d_gaussians_closed_form():
    # W2(N(a, s²), N(b, s²)) = |a − b|; independent samples of unequal sizes.
    g = torch.Generator().manual_seed(0)
    a = 0.7 * torch.randn(20000, generator=g) - 1.0
    b = 0.7 * torch.randn(15000, generator=g) + 0.5
    assert metrics.sliced_wasserstein(a, b, n_projections=4) == pytest.approx(1.5, abs=0.03)


def test_sliced_wasserstein_shift_closed_form():
    # For y = x + v, W2² along θ is exactly (θ·v)², whose mean over uniform unit θ in d = 3 is
    # |v|²/d = 2.25; with 20,000 directions the Monte Carlo error is ≈ 0.014.
    g = torch.Generator().manual_seed(0)
    v = torch.tensor([1.5, 1.5, 1.5])
    x = torch.randn(100, 3, generator=g)
    sw = metrics.sliced_wasserstein(x, x + v, n_projections=20000, seed=1)
    assert sw**2 == pytest.approx(2.25, abs=0.05)
    # Independent samples: same closed form up to sampling error.
    y = torch.randn(2000, 3, generator=g) + v
    sw = metrics.sliced_wasserstein(torch.randn(2000, 3, generator=g), y, n_projections=2000)
    assert sw**2 == pytest.approx(2.25, abs=0.25)


def test_sliced_wasserstein_seeded_and_flattens(rng):
    x = torch.from_numpy(rng.normal(size=(50, 2, 3)))
    y = torch.from_numpy(rng.normal(size=(60, 6)))
    a = metrics.sliced_wasserstein(x, y, n_projections=16, seed=5)
    assert a == metrics.sliced_wasserstein(x, y, n_projections=16, seed=5)
    assert a != metrics.sliced_wasserstein(x, y, n_projections=16, seed=6)
    assert metrics.sliced_wasserstein(x, x, seed=5) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------
# sample_metrics
# --------------------------------------------------------------------------------------------


def test_sample_metrics_small_inputs_use_all_points(rng):
    x, y = rng.normal(size=(80, 2)), rng.normal(loc=0.5, size=(70, 2))
    out = metrics.sample_metrics(x, y, seed=2)
    assert set(out) == {"mmd", "sliced_wasserstein", "energy_distance"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["mmd"] == pytest.approx(brute_mmd(x, y, _default_bandwidths(x, y)), rel=1e-9)
    assert out["energy_distance"] == pytest.approx(brute_energy(x, y), rel=1e-9)
    assert out["sliced_wasserstein"] == metrics.sliced_wasserstein(x, y, seed=2)


def _default_bandwidths(x, y):
    med = float(np.median(scipy.spatial.distance.pdist(np.concatenate([x, y]))))
    return [s * med for s in (0.25, 0.5, 1.0, 2.0, 4.0)]


def test_sample_metrics_subsamples_large_inputs_deterministically(monkeypatch):
    monkeypatch.setattr(metrics, "SAMPLE_METRICS_MAX_POINTS", 300)  # 5,000 in use; fast here
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 2, generator=g)
    y = torch.randn(200, 2, generator=g) + 2.0
    a = metrics.sample_metrics(x, y, seed=0)
    assert a == metrics.sample_metrics(x, y, seed=0)
    b = metrics.sample_metrics(x, y, seed=1)
    assert a["mmd"] != b["mmd"] and a["energy_distance"] != b["energy_distance"]
    # Only 300 points of x are used: the result differs from the full-sample value.
    assert a["energy_distance"] != pytest.approx(metrics.energy_distance(x, y), rel=1e-9)
    # Shift of 2 along each axis: SW2² ≈ |v|²/d = 4, energy and MMD clearly positive.
    assert a["sliced_wasserstein"] == pytest.approx(2.0, abs=0.3)
    assert a["mmd"] > 0.1 and a["energy_distance"] > 1.0


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------

TWO_SAMPLE = [metrics.mmd, metrics.sliced_wasserstein, metrics.energy_distance]


@pytest.mark.parametrize("fn", [*TWO_SAMPLE, metrics.sample_metrics])
def test_two_sample_metrics_reject_bad_inputs(fn):
    ok = torch.randn(5, 3)
    with pytest.raises(ValueError, match="at least"):
        fn(torch.empty(0, 3), ok)
    with pytest.raises(ValueError, match="same number of dimensions"):
        fn(ok, torch.randn(5, 4))
    with pytest.raises(ValueError, match="NaN"):
        fn(ok, torch.tensor([[0.0, float("nan"), 1.0]] * 3))
    with pytest.raises(ValueError, match="infinite"):
        fn(np.array([[np.inf, 0.0, 0.0]] * 3), ok)
    with pytest.raises(ValueError, match="scalar"):
        fn(torch.tensor(1.0), ok)
    with pytest.raises(TypeError, match="real numbers"):
        fn(np.array([["a", "b", "c"]] * 3), ok)


def test_mmd_rejects_single_samples_and_bad_bandwidths():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.mmd(x[:1], x)
    with pytest.raises(ValueError, match="bandwidths"):
        metrics.mmd(x, x, [1.0, 0.0])
    with pytest.raises(ValueError, match="bandwidths"):
        metrics.mmd(x, x, [])
    with pytest.raises(ValueError, match="chunk_size"):
        metrics.mmd(x, x, chunk_size=0)
    with pytest.raises(ValueError, match="n_projections"):
        metrics.sliced_wasserstein(x, x, n_projections=0)


def test_likelihood_metrics_reject_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        metrics.nll(torch.empty(0))
    with pytest.raises(ValueError, match="1-D"):
        metrics.nll(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="infinite"):
        metrics.nll(torch.tensor([0.0, -float("inf")]))
    with pytest.raises(ValueError, match="NaN"):
        metrics.discrete_bits_per_dim(torch.tensor([float("nan")]), 2, 256)
    with pytest.raises(ValueError, match="dim"):
        metrics.bits_per_dim(1.0, 0)
    with pytest.raises(ValueError, match="finite"):
        metrics.bits_per_dim(float("nan"), 3)
    with pytest.raises(TypeError, match="dim"):
        metrics.bits_per_dim(1.0, 2.5)
    with pytest.raises(ValueError, match="levels"):
        metrics.discrete_bits_per_dim(torch.zeros(3), 2, 1)
