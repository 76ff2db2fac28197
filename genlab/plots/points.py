"""2-D points and densities: `density_2d` (filled contours of exp(log p) with overlays),
`scatter_2d`, and the n-sigma ellipses of Gaussian components (`ellipse_geometry`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.patches import Ellipse

from genlab.plots.base import (
    DATA_COLOUR,
    SAMPLE_COLOUR,
    Bounds,
    PathLike,
    bounds_of,
    check_points,
    figure_2d,
    finish_2d,
    marker_size,
    png_path,
    scatter,
    to_numpy,
)

ELLIPSE_COLOUR = "#31a354"
DENSITY_CMAP = "Blues"  # white at zero density: points stay visible over the tails
CHUNK = 16_384  # grid points per call of log_prob_fn


def _check_bounds(bounds: Any) -> Bounds:
    b = tuple(float(v) for v in bounds)
    if len(b) != 4 or not all(math.isfinite(v) for v in b) or b[0] >= b[1] or b[2] >= b[3]:
        raise ValueError(
            f"bounds must be finite (x_min, x_max, y_min, y_max) with min < max, got {bounds!r}"
        )
    return b  # type: ignore[return-value]


def _check_ellipses(ellipses: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means (K, 2), covariances (K, 2, 2) symmetric positive semi-definite, weights (K,))."""
    if not isinstance(ellipses, tuple | list) or len(ellipses) != 3:
        raise ValueError(
            "ellipses must be a tuple (means (K, 2), covariances (K, 2, 2), weights (K,))"
        )
    means = to_numpy(ellipses[0], "ellipse means")
    covs = to_numpy(ellipses[1], "ellipse covariances")
    weights = to_numpy(ellipses[2], "ellipse weights")
    k = len(means)
    if means.shape != (k, 2) or covs.shape != (k, 2, 2) or weights.shape != (k,) or k == 0:
        raise ValueError(
            "ellipses must be (means (K, 2), covariances (K, 2, 2), weights (K,)) with K >= 1; "
            f"got shapes {means.shape}, {covs.shape}, {weights.shape}"
        )
    if not (np.isfinite(means).all() and np.isfinite(covs).all() and np.isfinite(weights).all()):
        raise ValueError("ellipse means, covariances and weights must be finite")
    if not np.allclose(covs, covs.transpose(0, 2, 1), rtol=1e-5, atol=1e-8):
        raise ValueError("ellipse covariances must be symmetric")
    if (weights < 0).any():
        raise ValueError("ellipse weights must be non-negative")
    return means, covs, weights


def ellipse_geometry(cov: np.ndarray, n_sigma: float) -> tuple[float, float, float]:
    """(width, height, angle in degrees) of the n-sigma ellipse of a 2x2 covariance.

    With Sigma = V diag(l1 <= l2) V^T, the ellipse {x : x^T Sigma^-1 x = n^2} has semi-axes
    n sqrt(l2) along v2 and n sqrt(l1) along v1; `width` lies along v2, rotated by `angle`.
    """
    eigvals, eigvecs = np.linalg.eigh(cov)
    if eigvals[0] < -1e-8 * max(abs(eigvals[1]), 1.0):
        raise ValueError(f"ellipse covariances must be positive semi-definite, got {cov.tolist()}")
    eigvals = np.clip(eigvals, 0.0, None)
    angle = math.degrees(math.atan2(eigvecs[1, 1], eigvecs[0, 1]))
    return 2 * n_sigma * math.sqrt(eigvals[1]), 2 * n_sigma * math.sqrt(eigvals[0]), angle


def _draw_ellipses(ax: Any, means: np.ndarray, covs: np.ndarray, weights: np.ndarray) -> None:
    """1- and 2-sigma ellipses; line width and opacity grow with the component's weight."""
    relative = weights / weights.max() if weights.max() > 0 else np.ones_like(weights)
    for mean, cov, r in zip(means, covs, relative, strict=True):
        for n_sigma, style in ((1.0, "-"), (2.0, "--")):
            width, height, angle = ellipse_geometry(cov, n_sigma)
            ax.add_patch(
                Ellipse(
                    tuple(mean),
                    width,
                    height,
                    angle=angle,
                    fill=False,
                    linestyle=style,
                    edgecolor=ELLIPSE_COLOUR,
                    linewidth=0.5 + 1.5 * r,
                    alpha=0.3 + 0.7 * r,
                )
            )
        ax.plot(*mean, marker="+", color=ELLIPSE_COLOUR, alpha=0.3 + 0.7 * r, markersize=6)


def _evaluate_density(
    log_prob_fn: Callable[[np.ndarray], Any], points: np.ndarray, chunk: int = CHUNK
) -> np.ndarray:
    """exp(log p - max log p) at (m, 2) points, calling log_prob_fn on float32 chunks."""
    out = []
    for start in range(0, len(points), chunk):
        rows = points[start : start + chunk].astype(np.float32)
        lp = to_numpy(log_prob_fn(rows), "log_prob_fn's output").reshape(-1)
        if lp.shape != (len(rows),):
            raise ValueError(
                f"log_prob_fn must map (m, 2) points to (m,) log-densities; "
                f"got {lp.shape} for m={len(rows)}"
            )
        out.append(lp)
    lp = np.concatenate(out)
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise ValueError("log_prob_fn returned NaN or +inf on the plotting grid")
    top = lp.max()
    if not np.isfinite(top):
        raise ValueError("log_prob_fn is -inf everywhere on the plotting grid; widen bounds")
    return np.exp(lp - top)


def density_2d(
    log_prob_fn: Callable[[np.ndarray], Any],
    path: PathLike,
    samples: Any = None,
    data: Any = None,
    ellipses: tuple[Any, Any, Any] | None = None,
    bounds: Bounds | None = None,
    grid: int = 200,
    title: str | None = None,
) -> Path:
    """Filled contours of a 2-D density p(x) = exp(log_prob_fn(x)), with optional overlays.

    The density is shown relative to its maximum on the grid (white is zero), so any
    normalising constant cancels.

    Args:
        log_prob_fn: maps a (m, 2) float32 NumPy array of points to (m,) log-densities in nats
            (a NumPy array or a tensor); called on chunks of at most 16,384 points. A genlab
            model's `log_prob` accepts NumPy arrays, so `model.log_prob` can be passed as is.
        path: the .png file.
        samples: (n, 2) model samples, drawn as small orange dots.
        data: (m, 2) data points, drawn as small grey dots under the samples.
        ellipses: (means (K, 2), covariances (K, 2, 2), weights (K,)) of Gaussian components,
            drawn as 1-sigma (solid) and 2-sigma (dashed) ellipses from the eigen-decomposition
            of each covariance; heavier components get thicker, more opaque lines.
        bounds: (x_min, x_max, y_min, y_max); default: the box around `data` (else `samples`,
            else the 2-sigma ellipses) widened by 10% each side.
        grid: grid points per axis (grid * grid evaluations).
        title: optional axes title.

    Raises:
        ValueError: bad shapes, non-finite points, no way to choose bounds, or a log_prob_fn
            that returns the wrong shape or NaN.
    """
    path = png_path(path)
    if isinstance(grid, bool) or not isinstance(grid, int | np.integer) or grid < 2:
        raise ValueError(f"grid must be an integer >= 2, got {grid!r}")
    samples = None if samples is None else check_points(samples, "samples")
    data = None if data is None else check_points(data, "data")
    comps = None if ellipses is None else _check_ellipses(ellipses)
    if bounds is not None:
        bounds = _check_bounds(bounds)
    elif data is not None or samples is not None:
        bounds = bounds_of([data if data is not None else samples])
    elif comps is not None:
        means, covs, _ = comps
        sd = np.sqrt(np.clip(np.diagonal(covs, axis1=1, axis2=2), 0.0, None))
        bounds = bounds_of([means - 2 * sd, means + 2 * sd])
    else:
        raise ValueError("pass bounds=(x_min, x_max, y_min, y_max), or data or samples to fit")

    xs = np.linspace(bounds[0], bounds[1], grid)
    ys = np.linspace(bounds[2], bounds[3], grid)
    gx, gy = np.meshgrid(xs, ys)  # (grid, grid), row i is y = ys[i]
    density = _evaluate_density(log_prob_fn, np.stack([gx.ravel(), gy.ravel()], 1))

    fig, ax = figure_2d(bounds)
    ax.contourf(
        gx, gy, density.reshape(grid, grid), levels=np.linspace(0, 1, 15), cmap=DENSITY_CMAP
    )
    if data is not None:
        scatter(ax, data, DATA_COLOUR, 0.6, "data")
    if samples is not None:
        scatter(ax, samples, SAMPLE_COLOUR, 0.7, "samples")
    if comps is not None:
        _draw_ellipses(ax, *comps)
    return finish_2d(fig, ax, path, title, legend=data is not None or samples is not None)


def scatter_2d(
    points: Any,
    path: PathLike,
    title: str | None = None,
    reference: Any = None,
    labels: Any = None,
) -> Path:
    """Scatter plot of (n, 2) points (orange), over optional (m, 2) reference points (grey).

    With `labels` ((n,) integers, such as classes), each point takes its label's colour
    (tab10, cycling) and the legend names the labels.
    """
    path = png_path(path)
    points = check_points(points, "points")
    reference = None if reference is None else check_points(reference, "reference")
    if labels is not None:
        labels = to_numpy(labels, "labels").reshape(-1)
        if labels.shape != (len(points),) or not np.all(labels == np.round(labels)):
            raise ValueError(f"labels must be {len(points)} integers, one per point")
    fig, ax = figure_2d(bounds_of([points] if reference is None else [points, reference]))
    if reference is not None:
        scatter(ax, reference, DATA_COLOUR, 0.5, "reference")
    if labels is None:
        scatter(ax, points, SAMPLE_COLOUR, 0.7, "points")
    else:
        size, colours = marker_size(len(points)), matplotlib.colormaps["tab10"]
        for i, label in enumerate(np.unique(labels)):
            rows = labels == label
            ax.scatter(*points[rows].T, s=size, color=colours(i % 10), alpha=0.7, lw=0,
                       label=str(int(label)))  # fmt: skip
    return finish_2d(fig, ax, path, title, legend=reference is not None or labels is not None)
