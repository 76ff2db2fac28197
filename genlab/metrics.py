"""Likelihood metrics (NLL, bits/dim, dequantisation) and two-sample metrics (MMD, SW2, energy).

Every function takes torch tensors (NumPy arrays and nested lists are converted), computes in
float64 and returns Python floats. Samples of any event shape are flattened to (n, D) with
`x.reshape(len(x), -1)`; a 1-D array of n numbers is n one-dimensional samples.

Units: log-densities and NLLs are in nats; `bits_per_dim` and `discrete_bits_per_dim` convert
to bits per dimension. The two-sample metrics are in the units of the data (MMD² is unitless,
sliced W2 is a length, the squared energy distance is a length).

Nothing here knows about models: pass `model.log_prob(x)` (a tensor), not the model.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

Tensor = torch.Tensor

DEFAULT_BANDWIDTH_SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Default MMD bandwidths, as multiples of the median pairwise distance of the pooled samples."""

MEDIAN_POINTS_PER_SAMPLE = 500
"""Points taken (evenly spaced) from each sample to estimate the median distance: ≤ 1,000 pooled."""

SAMPLE_METRICS_MAX_POINTS = 5000
"""`sample_metrics` subsamples each side to at most this many points."""

DIRECT_DISTANCE_MAX_DIM = 64
"""Up to this D, pairwise distances use direct differences (exact to rounding, fast at small D);
above it, the BLAS Gram expansion |a|² + |b|² − 2a·b (absolute error ≈ eps · |a|²)."""


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _as_float64(x: Any, name: str) -> Tensor:
    """A detached float64 tensor (on x's device) from a Tensor, NumPy array or nested list."""
    if not isinstance(x, Tensor):
        arr = np.asarray(x)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name} must hold real numbers, got an array of dtype {arr.dtype}")
        if np.iscomplexobj(arr):
            raise TypeError(f"{name} must hold real numbers, got complex dtype {arr.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.is_complex():
        raise TypeError(f"{name} must hold real numbers, got complex dtype {x.dtype}")
    return x.detach().to(torch.float64)


def _check_finite(x: Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} infinite values; "
            "drop or fix those entries before computing metrics"
        )


def _as_samples(x: Any, name: str, min_n: int = 1) -> Tensor:
    """Samples as a finite float64 (n, D) tensor, n ≥ min_n, D ≥ 1."""
    x = _as_float64(x, name)
    if x.ndim == 0:
        raise ValueError(f"{name} must be a batch of samples, got a scalar")
    if len(x) < min_n:
        raise ValueError(f"{name} needs at least {min_n} sample(s), got {len(x)}")
    x = x.reshape(len(x), -1)
    if x.shape[1] == 0:
        raise ValueError(f"{name} has samples of zero dimensions (shape {tuple(x.shape)})")
    _check_finite(x, name)
    return x


def _as_sample_pair(x: Any, y: Any, min_n: int = 1) -> tuple[Tensor, Tensor]:
    """Both samples as (n, D) and (m, D) float64 tensors on x's device."""
    x = _as_samples(x, "x", min_n)
    y = _as_samples(y, "y", min_n).to(x.device)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same number of dimensions per sample, got {x.shape[1]} and "
            f"{y.shape[1]} (after flattening each sample)"
        )
    return x, y


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got a bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


# --------------------------------------------------------------------------------------------
# Likelihood metrics
# --------------------------------------------------------------------------------------------


def nll(log_prob: Tensor) -> float:
    """Mean negative log-likelihood, in nats per sample.

    Args:
        log_prob: (n,) per-sample log-densities log p(x_i), in nats.

    Returns:
        −(1/n) Σ_i log p(x_i), in nats.

    Raises:
        ValueError: `log_prob` is empty, not 1-D, or holds NaN/±inf (a sample of zero density
            has infinite NLL; report that separately).
    """
    lp = _as_float64(log_prob, "log_prob")
    if lp.ndim != 1:
        raise ValueError(
            f"log_prob must be 1-D with one log-density per sample, got shape {tuple(lp.shape)}"
        )
    if len(lp) == 0:
        raise ValueError("log_prob is empty")
    _check_finite(lp, "log_prob")
    return float(-lp.mean())


def bits_per_dim(nll_nats: float, dim: int) -> float:
    """Convert an NLL in nats per sample to bits per dimension: nll / (dim · ln 2).

    Args:
        nll_nats: NLL in nats per sample (for instance from `nll`).
        dim: number of dimensions D of one sample (784 for a 28×28 image).

    Returns:
        Bits per dimension.
    """
    dim = _positive_int(dim, "dim")
    value = float(nll_nats)
    if not math.isfinite(value):
        raise ValueError(f"nll_nats must be finite, got {value}")
    return value / (dim * math.log(2.0))


def dequantize(x: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation of data stored on the grid x = k / (levels − 1).

    Recovers the integer k = round(x · (levels − 1)) ∈ {0, …, levels − 1} and returns
    y = (k + u) / levels with u ~ U[0, 1), so y ∈ [0, 1) and floor(y · levels) = k
    (checked in float64 arithmetic; y is nudged by one ulp where the cast to the output
    dtype would cross a cell edge).

    Args:
        x: quantised data of any shape, with values k / (levels − 1) in [0, 1].
        levels: number of quantisation levels (256 for 8-bit images, 2 for binary data).
        generator: optional torch.Generator for u; the global RNG is used when None.

    Returns:
        Tensor of x's shape and device; dtype float32 or float64 (x's own when it is one of
        them, otherwise float32).

    Raises:
        ValueError: levels < 2, or x holds NaN/inf or values off the grid k / (levels − 1)
            (data in [0, 255] or [−1, 1], or the wrong `levels`).
    """
    levels = _positive_int(levels, "levels", minimum=2)
    if not isinstance(x, Tensor):
        x = torch.as_tensor(np.asarray(x))
    out_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    x64 = _as_float64(x, "x")
    _check_finite(x64, "x")

    scaled = x64 * (levels - 1)
    k = scaled.round()
    eps = torch.finfo(x.dtype).eps if x.dtype.is_floating_point else 0.0
    tol = min(0.25, max(1e-2, 2.0 * eps * (levels - 1)))
    off_grid = (scaled - k).abs() > tol
    if off_grid.any() or (k < 0).any() or (k > levels - 1).any():
        raise ValueError(
            f"x must hold values k / (levels - 1) for integers k in [0, {levels - 1}] "
            f"(levels={levels}); got values in [{float(x64.min()):g}, {float(x64.max()):g}]"
            f"{' off that grid' if off_grid.any() else ''}. Rescale the data to [0, 1] or fix "
            "`levels`"
        )

    device = generator.device if generator is not None else x64.device
    u = torch.rand(x64.shape, generator=generator, dtype=torch.float64, device=device)
    y = ((k + u.to(x64.device)) / levels).to(out_dtype)

    # One ulp nudge where rounding to out_dtype pushed y out of its cell [k, k + 1) / levels.
    cell = torch.floor(y.to(torch.float64) * levels)
    y = torch.where(cell > k, torch.nextafter(y, torch.zeros_like(y)), y)
    y = torch.where(cell < k, torch.nextafter(y, torch.ones_like(y)), y)
    return y


def discrete_bits_per_dim(log_p: Tensor, dim: int, levels: int) -> float:
    """Bits per dimension of discrete data from continuous log-densities of its dequantisation.

    With y = (k + u) / levels ∈ [0, 1)^D (see `dequantize`) and a density p on [0, 1)^D,

        bpd = (−(1/n) Σ_i log p(y_i) + D · ln(levels)) / (D · ln 2).

    The D · ln(levels) term is the log-volume of one quantisation cell, levels^−D. By Jensen,
    −log P(k) = −log ∫_cell p ≤ D · ln(levels) − E_u[log p((k + u) / levels)], so with uniform
    dequantisation this is, in expectation over u, an upper bound on the discrete NLL of the
    model P(k) = ∫_cell p (Theis, van den Oord & Bethge, 2016).

    The density must be over y in [0, 1)^D: if the model saw the data rescaled (say to
    [−1, 1]), add the log-Jacobian of that map (D · ln 2 for [−1, 1]) to `log_p` first.

    Args:
        log_p: (n,) log-densities log p(y_i) in nats, of dequantised y_i ∈ [0, 1)^D.
        dim: number of dimensions D of one sample.
        levels: number of quantisation levels (256 for 8-bit data).

    Returns:
        Bits per dimension (a uniform p on [0, 1)^D gives exactly log2(levels)).
    """
    dim = _positive_int(dim, "dim")
    levels = _positive_int(levels, "levels", minimum=2)
    return bits_per_dim(nll(log_p) + dim * math.log(levels), dim)


# --------------------------------------------------------------------------------------------
# Two-sample metrics
# --------------------------------------------------------------------------------------------


def _pairwise_sum(
    a: Tensor,
    b: Tensor | None,
    f: Callable[[Tensor], Tensor],
    chunk_size: int,
) -> float:
    """Σ_ij f(|a_i − b_j|²) over (chunk_size × chunk_size) blocks, in float64.

    With b=None the sum runs over pairs i ≠ j of a (the diagonal is excluded), and only the
    blocks on or above the block diagonal are computed, counting off-diagonal blocks twice.
    `f` maps a block of squared distances to a block of values of the same shape. Distances
    come from direct differences when D ≤ `DIRECT_DISTANCE_MAX_DIM`, else the Gram expansion.
    """
    symmetric = b is None
    b = a if b is None else b
    direct = a.shape[1] <= DIRECT_DISTANCE_MAX_DIM
    a_sq = (a * a).sum(1)
    b_sq = (b * b).sum(1)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(0, len(a), chunk_size):
        ai, ai_sq = a[i : i + chunk_size], a_sq[i : i + chunk_size]
        for j in range(i if symmetric else 0, len(b), chunk_size):
            bj, bj_sq = b[j : j + chunk_size], b_sq[j : j + chunk_size]
            if direct:
                d2 = torch.cdist(ai, bj, compute_mode="donot_use_mm_for_euclid_dist").square_()
            else:  # Gram expansion; inputs are centred, so the cancellation stays small
                d2 = torch.addmm(ai_sq[:, None] + bj_sq[None, :], ai, bj.T, alpha=-2.0)
                d2.clamp_(min=0)
            values = f(d2)
            if symmetric and i == j:
                values.fill_diagonal_(0.0)
                total += values.sum()
            elif symmetric:
                total += 2.0 * values.sum()
            else:
                total += values.sum()
    return float(total)


def _evenly_spaced(x: Tensor, k: int) -> Tensor:
    """min(len(x), k) rows of x at evenly spaced indices (deterministic)."""
    n = len(x)
    if n <= k:
        return x
    return x[torch.arange(k, device=x.device) * n // k]


def median_distance(x: Tensor, y: Tensor) -> float:
    """Median pairwise Euclidean distance of the pooled samples (the MMD bandwidth heuristic).

    Uses up to `MEDIAN_POINTS_PER_SAMPLE` evenly spaced points of each sample (≤ 1,000 pooled),
    so it is deterministic and symmetric in (x, y). Ties at zero (repeated points) are skipped:
    if the median is 0 the median of the positive distances is used, and 1.0 if all points
    coincide.

    Args:
        x: (n, D) samples.
        y: (m, D) samples.
    """
    x, y = _as_sample_pair(x, y)
    pooled = torch.cat(
        [_evenly_spaced(x, MEDIAN_POINTS_PER_SAMPLE), _evenly_spaced(y, MEDIAN_POINTS_PER_SAMPLE)]
    )
    d = torch.pdist(pooled)
    d = d[d > 0]
    if len(d) == 0:
        return 1.0
    return float(torch.quantile(d, 0.5))


def mmd(
    x: Tensor,
    y: Tensor,
    bandwidths: Sequence[float] | None = None,
    chunk_size: int = 4096,
) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy (Gretton et al., 2012).

    With the kernel k(a, b) = (1/H) Σ_h exp(−|a − b|² / (2 h²)) (a mean of H Gaussian kernels),

        MMD²_u = 1/(n(n−1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m−1)) Σ_{i≠j} k(y_i, y_j)
                 − 2/(nm) Σ_{i,j} k(x_i, y_j).

    Being unbiased, it is 0 in expectation when x and y come from the same distribution and
    can then be negative. Kernel sums are accumulated over (chunk_size × chunk_size) blocks,
    so memory stays bounded (about 3 blocks of float64) for n, m in the tens of thousands.

    Args:
        x: (n, ...) samples, n ≥ 2; each flattened to D numbers.
        y: (m, ...) samples, m ≥ 2, with the same D.
        bandwidths: kernel widths h (data units). Default: `DEFAULT_BANDWIDTH_SCALES`
            (0.25, 0.5, 1, 2, 4) times `median_distance(x, y)`, symmetric in (x, y). The
            default depends on the data; pass fixed widths to compare runs on one scale.
        chunk_size: rows per block.

    Returns:
        MMD²_u (unitless, at most 2 in absolute value).
    """
    x, y = _as_sample_pair(x, y, min_n=2)
    chunk_size = _positive_int(chunk_size, "chunk_size")
    if bandwidths is None:
        median = median_distance(x, y)
        bandwidths = [s * median for s in DEFAULT_BANDWIDTH_SCALES]
    h = [float(b) for b in bandwidths]
    if len(h) == 0 or not all(math.isfinite(b) and b > 0 for b in h):
        raise ValueError(f"bandwidths must be a non-empty list of positive numbers, got {h}")
    gammas = [1.0 / (2.0 * b * b) for b in h]

    def kernel(d2: Tensor) -> Tensor:
        out = torch.zeros_like(d2)
        tmp = torch.empty_like(d2)
        for g in gammas:
            torch.mul(d2, -g, out=tmp)
            out += tmp.exp_()
        return out.div_(len(gammas))

    centre = torch.cat([x, y]).mean(0)  # distances are shift-invariant; centring aids precision
    x, y = x - centre, y - centre
    n, m = len(x), len(y)
    k_xx = _pairwise_sum(x, None, kernel, chunk_size)
    k_yy = _pairwise_sum(y, None, kernel, chunk_size)
    k_xy = _pairwise_sum(x, y, kernel, chunk_size)
    return k_xx / (n * (n - 1)) + k_yy / (m * (m - 1)) - 2.0 * k_xy / (n * m)


def _w2_squared_1d(xs: Tensor, ys: Tensor) -> Tensor:
    """Exact W2² between empirical measures, per column of sorted (n, P) and (m, P) inputs.

    W2² = ∫_0^1 (F⁻¹(t) − G⁻¹(t))² dt. Both quantile functions are constant between the
    merged grid points {i/n} ∪ {j/m}, so the integral is a weighted sum over that grid; for
    n = m it reduces to sort-and-match, mean_i (x_(i) − y_(i))².
    """
    n, m = len(xs), len(ys)
    if n == m:
        return ((xs - ys) ** 2).mean(0)
    kw = {"dtype": torch.float64, "device": xs.device}
    t = torch.cat([torch.arange(1, n + 1, **kw) / n, torch.arange(1, m + 1, **kw) / m])
    t = t.sort().values
    width = torch.diff(t, prepend=t.new_zeros(1))  # interval (t_{k−1}, t_k]; some are empty
    mid = t - width / 2
    ix = torch.floor(mid * n).long().clamp_(0, n - 1)
    iy = torch.floor(mid * m).long().clamp_(0, m - 1)
    return (width[:, None] * (xs[ix] - ys[iy]) ** 2).sum(0)


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance (Rabin et al., 2011; Bonneel et al., 2015).

        SW2(x, y) = ( (1/P) Σ_p W2²(θ_p·x, θ_p·y) )^{1/2},

    over P directions θ_p drawn uniformly on the unit sphere (normalised Gaussians from a local
    generator seeded by `seed`). Each 1-D W2² is exact for the empirical measures: sort and
    match for n = m, and an integral of the squared difference of the quantile functions on the
    merged grid {i/n} ∪ {j/m} otherwise. For x ~ P and y ~ P shifted by v, SW2² → |v|²/D.

    Args:
        x: (n, ...) samples, each flattened to D numbers.
        y: (m, ...) samples with the same D.
        n_projections: number of directions P.
        seed: seed of the directions; the same seed gives the same value.

    Returns:
        SW2, in the units of the data.
    """
    x, y = _as_sample_pair(x, y)
    n_projections = _positive_int(n_projections, "n_projections")
    gen = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(x.shape[1], n_projections, generator=gen, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)  # (D, P) unit columns
    xs = (x @ theta).sort(dim=0).values  # (n, P)
    ys = (y @ theta).sort(dim=0).values  # (m, P)
    return math.sqrt(float(_w2_squared_1d(xs, ys).mean()))


def energy_distance(x: Tensor, y: Tensor, chunk_size: int = 4096) -> float:
    """Squared energy distance (Székely & Rizzo), V-statistic.

        E²(x, y) = 2 E|X − Y| − E|X − X'| − E|Y − Y'|
                 = 2/(nm) Σ_ij |x_i − y_j| − 1/n² Σ_ij |x_i − x_j| − 1/m² Σ_ij |y_i − y_j|.

    This is the SQUARE of `scipy.stats.energy_distance`, which returns the square root (the
    metric); in 1-D, `energy_distance(x, y) == scipy.stats.energy_distance(x, y) ** 2`. It is
    ≥ 0 and 0 only when the two empirical measures coincide. Memory is bounded by
    (chunk_size × chunk_size) blocks.

    Args:
        x: (n, ...) samples, each flattened to D numbers.
        y: (m, ...) samples with the same D.
        chunk_size: rows per block.

    Returns:
        E², in the units of the data (a distance, not a squared distance).
    """
    x, y = _as_sample_pair(x, y)
    chunk_size = _positive_int(chunk_size, "chunk_size")
    centre = torch.cat([x, y]).mean(0)
    x, y = x - centre, y - centre
    n, m = len(x), len(y)
    d_xy = _pairwise_sum(x, y, torch.sqrt, chunk_size)
    d_xx = _pairwise_sum(x, None, torch.sqrt, chunk_size)
    d_yy = _pairwise_sum(y, None, torch.sqrt, chunk_size)
    return 2.0 * d_xy / (n * m) - d_xx / (n * n) - d_yy / (m * m)


def sample_metrics(samples: Tensor, reference: Tensor, seed: int = 0) -> dict[str, float]:
    """MMD², sliced W2 and squared energy distance between model samples and reference data.

    Each side is subsampled without replacement to at most `SAMPLE_METRICS_MAX_POINTS`
    (5,000) points with a local generator seeded by `seed`, which also seeds the sliced-W2
    directions; default MMD bandwidths are used.

    Args:
        samples: (n, ...) model samples.
        reference: (m, ...) reference samples with the same flattened dimension D.
        seed: seed of the subsampling and the projections.

    Returns:
        {"mmd": MMD²_u, "sliced_wasserstein": SW2, "energy_distance": E²}.
    """
    x, y = _as_sample_pair(samples, reference, min_n=2)
    gen = torch.Generator().manual_seed(int(seed))

    def subsample(z: Tensor) -> Tensor:
        if len(z) <= SAMPLE_METRICS_MAX_POINTS:
            return z
        idx = torch.randperm(len(z), generator=gen)[:SAMPLE_METRICS_MAX_POINTS]
        return z[idx.to(z.device)]

    x, y = subsample(x), subsample(y)
    return {
        "mmd": mmd(x, y),
        "sliced_wasserstein": sliced_wasserstein(x, y, seed=seed),
        "energy_distance": energy_distance(x, y),
    }


# --------------------------------------------------------------------------------------------
# Image samples on the data's grid, and metrics in a feature space
# --------------------------------------------------------------------------------------------


def quantize(y: Tensor, levels: int) -> Tensor:
    """Each entry's grid value k / (levels − 1), with k = clamp(floor(y · levels), 0, levels − 1).

    The inverse of `dequantize` ((k + u) / levels ↦ k / (levels − 1) for u ∈ [0, 1)), which
    also maps grid values k / (levels − 1) to themselves (k · levels / (levels − 1) lies in
    [k, k + 1) for k < levels − 1; the top level, and anything above 1 or below 0, is
    clamped). It puts samples of density models (fitted to dequantised data) and of discrete
    models on one grid, as writing them to an image file would.

    Args:
        y: values of any shape (NaN is refused).
        levels: number of quantisation levels (≥ 2).

    Returns:
        A tensor of y's shape and device: y's dtype if floating, else float32.
    """
    levels = _positive_int(levels, "levels", minimum=2)
    if not isinstance(y, Tensor):
        y = torch.as_tensor(np.asarray(y))
    if torch.isnan(y).any():
        raise ValueError("y contains NaN; drop those samples before quantising")
    out_dtype = y.dtype if y.dtype.is_floating_point else torch.float32
    k = torch.floor(y.to(torch.float64) * levels).clamp_(0, levels - 1)
    return (k / (levels - 1)).to(out_dtype)


def _distances(a: Tensor, b: Tensor) -> Tensor:
    """(len(a), len(b)) Euclidean distances: direct differences up to `DIRECT_DISTANCE_MAX_DIM`
    dimensions, the Gram expansion above it."""
    if a.shape[1] <= DIRECT_DISTANCE_MAX_DIM:
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
    d2 = torch.addmm((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :], a, b.T, alpha=-2.0)
    return d2.clamp_(min=0).sqrt_()


def knn_radii(x: Tensor, k: int = 3, chunk_size: int = 2048) -> Tensor:
    """Distance from each point to its k-th nearest neighbour among the *other* points.

    Args:
        x: (n, ...) points, n > k, each flattened to D numbers.
        k: which neighbour (1: the nearest).
        chunk_size: rows per block of the (n, n) distance matrix.

    Returns:
        (n,) float64 radii r_k(x_i) (0 when k other points coincide with x_i).
    """
    x = _as_samples(x, "x")
    k = _positive_int(k, "k")
    chunk_size = _positive_int(chunk_size, "chunk_size")
    if len(x) <= k:
        raise ValueError(f"k={k} nearest neighbours need more than {k} points, got {len(x)}")
    radii = []
    for i in range(0, len(x), chunk_size):
        d = _distances(x[i : i + chunk_size], x)
        rows = torch.arange(len(d), device=x.device)
        d[rows, rows + i] = math.inf  # a point is not its own neighbour
        radii.append(d.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(radii)


def _fraction_inside(points: Tensor, centres: Tensor, radii: Tensor, chunk_size: int) -> float:
    """Fraction of `points` within radii[j] of some centre j (closed balls)."""
    inside = []
    for i in range(0, len(points), chunk_size):
        d = _distances(points[i : i + chunk_size], centres)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: Tensor, fake: Tensor, k: int = 3, chunk_size: int = 2048
) -> dict[str, float]:
    """Improved precision and recall of generated samples (Kynkäänniemi et al., 2019).

    Each set's manifold is the union of balls around its points, of radius the distance to
    the point's k-th nearest neighbour in the same set:

        precision = (1/m) Σ_j 1[∃ i: |fake_j − real_i| ≤ r_k(real_i)]   (fakes on the real manifold)
        recall    = (1/n) Σ_i 1[∃ j: |real_i − fake_j| ≤ r_k(fake_j)]   (reals on the fake manifold)

    Precision measures fidelity, recall diversity; both lie in [0, 1]. Computed in a feature
    space (a classifier's penultimate layer for images), in float64, by (chunk_size × ·) blocks.

    Args:
        real: (n, ...) reference points (features), n > k.
        fake: (m, ...) generated points with the same flattened dimension D, m > k.
        k: the neighbour that sets each ball's radius (the paper's default is 3).
        chunk_size: rows per block of distances.

    Returns:
        {"precision": float, "recall": float}.
    """
    real, fake = _as_sample_pair(real, fake)
    chunk_size = _positive_int(chunk_size, "chunk_size")
    real_radii = knn_radii(real, k, chunk_size)
    fake_radii = knn_radii(fake, k, chunk_size)
    return {
        "precision": _fraction_inside(fake, real, real_radii, chunk_size),
        "recall": _fraction_inside(real, fake, fake_radii, chunk_size),
    }


def class_entropy(labels: Tensor, n_classes: int) -> float:
    """Entropy of the label frequencies, in bits: H = −Σ_c p_c log2 p_c, p_c = #{labels = c} / n.

    With the labels a classifier gives to samples, H measures class coverage: log2(n_classes)
    when every class is equally frequent, 0 when all samples fall in one class.

    Args:
        labels: (n,) integer labels in [0, n_classes).
        n_classes: number of classes C.

    Returns:
        H in bits, in [0, log2 C].
    """
    n_classes = _positive_int(n_classes, "n_classes")
    labels = torch.as_tensor(labels if isinstance(labels, Tensor) else np.asarray(labels))
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ValueError(
            f"labels must lie in [0, {n_classes}), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    p = torch.bincount(labels.cpu().long(), minlength=n_classes).double() / len(labels)
    p = p[p > 0]
    entropy = float(-(p * p.log2()).sum())
    return entropy if entropy > 0 else 0.0  # one class: 0.0, not -0.0


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of features (FID's formula).

        FD = |μ_a − μ_b|² + tr(Σ_a + Σ_b − 2 (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2})

    (Heusel et al., 2017; Dowson & Landau, 1982), with μ the means and Σ the unbiased
    covariances (divisor n − 1). tr (Σ_a Σ_b)^{1/2} is computed as the sum of the square roots
    of the eigenvalues of the symmetric PSD matrix Σ_a^{1/2} Σ_b Σ_a^{1/2}, in float64 (small
    negative eigenvalues from round-off are clipped to 0). In Inception features it is the FID;
    genlab uses a small classifier's features (see `genlab.compare`).

    Args:
        feats_a: (n, D) features, n ≥ 2.
        feats_b: (m, D) features, m ≥ 2.

    Returns:
        FD ≥ 0, in squared feature units.
    """
    a, b = _as_sample_pair(feats_a, feats_b, min_n=2)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = (a - mu_a).T @ (a - mu_a) / (len(a) - 1)
    cov_b = (b - mu_b).T @ (b - mu_b) / (len(b) - 1)
    w, v = torch.linalg.eigh(cov_a)
    sqrt_a = (v * w.clamp(min=0).sqrt()) @ v.T
    middle = sqrt_a @ cov_b @ sqrt_a
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2.0 * tr_sqrt
    return max(float(value), 0.0)
