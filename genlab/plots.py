"""Figures for samples, densities and training curves, written as PNG files.

Matplotlib and NumPy only: nothing here knows about models. Every function takes arrays
(NumPy arrays, or anything with `.detach().cpu().numpy()` such as torch tensors), draws on a
fresh `matplotlib.figure.Figure` (the Agg canvas; pyplot's global state is never touched, so
nothing is left open), writes a PNG to `path` (parent folders are created) and returns it as a
`Path`. Bad shapes or values raise `ValueError`. Sampler trajectories (S+1, n, ...) from noise
to samples have `trajectories_2d`, `trajectory_grid` (PNG) and `animate` (an animated GIF).

    from genlab import plots
    plots.density_2d(model.log_prob, "density.png", samples=model.sample(500), data=x)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

PathLike = str | os.PathLike
Bounds = tuple[float, float, float, float]
"""(x_min, x_max, y_min, y_max) of a 2-D plot."""

DATA_COLOUR = "#444444"
SAMPLE_COLOUR = "#e6550d"
ELLIPSE_COLOUR = "#31a354"
DENSITY_CMAP = "Blues"  # white at zero density: points stay visible over the tails
MARGIN = 0.1  # fraction of the data's range added on each side by default bounds
CHUNK = 16_384  # grid points per call of log_prob_fn
DPI = 100


# -- inputs ---------------------------------------------------------------------------------------
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """A float64 NumPy array from an array, a nested list or a (CPU or GPU) torch tensor."""
    if hasattr(x, "detach"):  # torch tensors, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must hold real numbers, got an array of dtype {arr.dtype}")
    return arr.astype(np.float64)


def _points(x: Any, name: str) -> np.ndarray:
    """(n, 2) finite points, n >= 1."""
    arr = _to_numpy(x, name)
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) == 0:
        raise ValueError(f"{name} must have shape (n, 2) with n >= 1, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity; drop those rows first")
    return arr


def _png_path(path: PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    return path


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    fig.clear()  # free the artists now rather than at garbage collection
    return path


def _equal_scale(bounds: Bounds) -> bool:
    """Whether x and y share one scale: unless their ranges differ more than 4-fold."""
    wx, wy = bounds[1] - bounds[0], bounds[3] - bounds[2]
    return max(wx, wy) <= 4 * min(wx, wy)


def _figure_2d(bounds: Bounds) -> tuple[Figure, Any]:
    """A figure and axes for a 2-D plot, shaped like the box when both axes share one scale."""
    wx, wy = bounds[1] - bounds[0], bounds[3] - bounds[2]
    ratio = float(np.clip(wy / wx, 0.5, 1.5)) if _equal_scale(bounds) else 1.0
    fig = Figure(figsize=(6.5, 6.5 * ratio + 0.5))
    ax = fig.add_subplot()
    ax.set_xlim(bounds[0], bounds[1])
    ax.set_ylim(bounds[2], bounds[3])
    if _equal_scale(bounds):
        ax.set_aspect("equal", adjustable="box")
    return fig, ax


def _marker_size(n: int) -> float:
    """Marker area in points^2: large for a few points, small for many."""
    return float(np.clip(3000.0 / max(n, 1), 1.0, 16.0))


# -- image grids ----------------------------------------------------------------------------------
def tile_images(images: Any, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images into one mosaic (pad pixels of white between and around them).

    Args:
        images: (n, C, H, W) with C in {1, 3}, or (n, H, W); values in [0, 1] (clipped).
        nrow: images per row; default ceil(sqrt(n)).
        pad: pixels between images.

    Returns:
        (rows * (H + pad) + pad, nrow * (W + pad) + pad) for grey images, with a trailing
        axis of 3 for colour ones.
    """
    arr = _to_numpy(images, "images")
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or len(arr) == 0 or 0 in arr.shape[2:]:
        raise ValueError(
            "images must have shape (n, C, H, W) with C in {1, 3}, or (n, H, W), and n >= 1; "
            f"got {_to_numpy(images, 'images').shape}"
        )
    if np.isnan(arr).any():
        raise ValueError("images contain NaN")
    n, c, h, w = arr.shape
    if nrow is None:
        nrow = math.ceil(math.sqrt(n))
    if isinstance(nrow, bool) or not isinstance(nrow, int | np.integer) or nrow < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow!r}")
    nrow = min(int(nrow), n)
    rows = math.ceil(n / nrow)
    mosaic = np.ones((c, rows * (h + pad) + pad, nrow * (w + pad) + pad))
    for i, image in enumerate(np.clip(arr, 0.0, 1.0)):
        top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        mosaic[:, top : top + h, left : left + w] = image
    return mosaic[0] if c == 1 else mosaic.transpose(1, 2, 0)


def sample_grid(
    images: Any, path: PathLike, nrow: int | None = None, title: str | None = None
) -> Path:
    """Write a grid of images (grey for one channel) to `path`.

    Args:
        images: (n, C, H, W) with C in {1, 3}, or (n, H, W); values in [0, 1] (clipped, so
            model samples that overshoot are shown saturated).
        path: the .png file.
        nrow: images per row; default ceil(sqrt(n)).
        title: optional figure title.
    """
    path = _png_path(path)
    mosaic = tile_images(images, nrow)
    height, width = mosaic.shape[:2]
    scale = max(6.0 / max(height, width), 1.1 / DPI)  # 6 inches, or >= 1 pixel per pixel
    fig = Figure(figsize=(max(width * scale, 2.0), max(height * scale, 2.0) + 0.4 * bool(title)))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96 - 0.08 * bool(title)))
    ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# -- 2-D points and densities ---------------------------------------------------------------------
def _bounds(arrays: Sequence[np.ndarray], margin: float = MARGIN) -> Bounds:
    """The bounding box of the points in `arrays`, widened by `margin` of its size each side."""
    pts = np.concatenate(arrays)
    lo, hi = pts.min(0), pts.max(0)
    span = hi - lo
    span = np.where(span > 0, span, 1.0)  # a single point or a line still gets a box
    lo, hi = lo - margin * span, hi + margin * span
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


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
    means = _to_numpy(ellipses[0], "ellipse means")
    covs = _to_numpy(ellipses[1], "ellipse covariances")
    weights = _to_numpy(ellipses[2], "ellipse weights")
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
        lp = _to_numpy(log_prob_fn(rows), "log_prob_fn's output").reshape(-1)
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
    path = _png_path(path)
    if isinstance(grid, bool) or not isinstance(grid, int | np.integer) or grid < 2:
        raise ValueError(f"grid must be an integer >= 2, got {grid!r}")
    samples = None if samples is None else _points(samples, "samples")
    data = None if data is None else _points(data, "data")
    comps = None if ellipses is None else _check_ellipses(ellipses)
    if bounds is not None:
        bounds = _check_bounds(bounds)
    elif data is not None or samples is not None:
        bounds = _bounds([data if data is not None else samples])
    elif comps is not None:
        means, covs, _ = comps
        sd = np.sqrt(np.clip(np.diagonal(covs, axis1=1, axis2=2), 0.0, None))
        bounds = _bounds([means - 2 * sd, means + 2 * sd])
    else:
        raise ValueError("pass bounds=(x_min, x_max, y_min, y_max), or data or samples to fit")

    xs = np.linspace(bounds[0], bounds[1], grid)
    ys = np.linspace(bounds[2], bounds[3], grid)
    gx, gy = np.meshgrid(xs, ys)  # (grid, grid), row i is y = ys[i]
    density = _evaluate_density(log_prob_fn, np.stack([gx.ravel(), gy.ravel()], 1))

    fig, ax = _figure_2d(bounds)
    ax.contourf(
        gx, gy, density.reshape(grid, grid), levels=np.linspace(0, 1, 15), cmap=DENSITY_CMAP
    )
    if data is not None:
        ax.scatter(*data.T, s=_marker_size(len(data)), c=DATA_COLOUR, alpha=0.6, lw=0, label="data")
    if samples is not None:
        ax.scatter(
            *samples.T,
            s=_marker_size(len(samples)),
            c=SAMPLE_COLOUR,
            alpha=0.7,
            lw=0,
            label="samples",
        )
    if comps is not None:
        _draw_ellipses(ax, *comps)
    if data is not None or samples is not None:
        ax.legend(loc="upper right", markerscale=3, fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


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
    path = _png_path(path)
    points = _points(points, "points")
    reference = None if reference is None else _points(reference, "reference")
    if labels is not None:
        labels = _to_numpy(labels, "labels").reshape(-1)
        if labels.shape != (len(points),) or not np.all(labels == np.round(labels)):
            raise ValueError(f"labels must be {len(points)} integers, one per point")
    fig, ax = _figure_2d(_bounds([points] if reference is None else [points, reference]))
    if reference is not None:
        ax.scatter(
            *reference.T,
            s=_marker_size(len(reference)),
            c=DATA_COLOUR,
            alpha=0.5,
            lw=0,
            label="reference",
        )
    size = _marker_size(len(points))
    if labels is None:
        ax.scatter(*points.T, s=size, c=SAMPLE_COLOUR, alpha=0.7, lw=0, label="points")
    else:
        colours = matplotlib.colormaps["tab10"]
        for i, label in enumerate(np.unique(labels)):
            rows = labels == label
            ax.scatter(*points[rows].T, s=size, color=colours(i % 10), alpha=0.7, lw=0,
                       label=str(int(label)))  # fmt: skip
    if reference is not None or labels is not None:
        ax.legend(loc="upper right", markerscale=3, fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


# -- curves ---------------------------------------------------------------------------------------
def curve(
    ys: Mapping[str, Sequence[float]],
    path: PathLike,
    xlabel: str = "iteration",
    ylabel: str = "",
    title: str | None = None,
) -> Path:
    """Line plot of named series against their step 1, 2, ... (log-likelihoods, losses).

    Args:
        ys: name -> 1-D sequence of values (NaN gaps are allowed); one line per name.
        path: the .png file.
        xlabel, ylabel: axis labels.
        title: optional axes title.
    """
    path = _png_path(path)
    if not isinstance(ys, Mapping) or len(ys) == 0:
        raise ValueError("ys must be a non-empty dict of name -> sequence of values")
    series = {}
    for name, values in ys.items():
        arr = _to_numpy(values, f"ys[{name!r}]")
        if arr.ndim != 1 or len(arr) == 0:
            raise ValueError(
                f"ys[{name!r}] must be a non-empty 1-D sequence, got shape {arr.shape}"
            )
        if np.isinf(arr).any():
            raise ValueError(f"ys[{name!r}] contains infinity")
        series[str(name)] = arr
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, arr in series.items():
        steps = np.arange(1, len(arr) + 1)
        ax.plot(steps, arr, marker="o" if len(arr) <= 30 else None, markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


# -- trajectories: from noise (index 0) to samples (index -1) -------------------------------------
NOISE_COLOUR = "#3182bd"
PATH_COLOUR = "#9e9ac8"
GIF_DPI = 80
MAX_ANIMATED_IMAGES = 64  # images per frame of an animated grid


def _trajectory_points(trajectory: Any) -> np.ndarray:
    """(S+1, n, 2) finite points with S+1 >= 2 time points and n >= 1."""
    arr = _to_numpy(trajectory, "trajectory")
    if arr.ndim != 3 or arr.shape[2] != 2:
        raise ValueError(
            f"trajectory of 2-D points must have shape (S+1, n, 2), got {arr.shape}; "
            "image trajectories (S+1, n, C, H, W) go to trajectory_grid"
        )
    if arr.shape[0] < 2 or arr.shape[1] == 0:
        raise ValueError(f"trajectory needs >= 2 time points and >= 1 path, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("trajectory contains NaN or infinity; drop those paths first")
    return arr


def _trajectory_images(trajectory: Any) -> np.ndarray:
    """(S+1, n, C, H, W) images with C in {1, 3}, S+1 >= 2 time points and n >= 1, no NaN."""
    arr = _to_numpy(trajectory, "trajectory")
    if arr.ndim != 5 or arr.shape[2] not in (1, 3) or 0 in arr.shape[1:]:
        raise ValueError(
            "image trajectory must have shape (S+1, n, C, H, W) with C in {1, 3} and n >= 1, "
            f"got {arr.shape}"
        )
    if arr.shape[0] < 2:
        raise ValueError(f"trajectory needs >= 2 time points, got {arr.shape[0]}")
    if np.isnan(arr).any():
        raise ValueError("trajectory contains NaN")
    return arr


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _evenly(count: int, total: int) -> np.ndarray:
    """min(count, total) distinct indices in [0, total), evenly spread, first and last included."""
    return np.unique(np.round(np.linspace(0, total - 1, min(count, total))).astype(int))


def trajectories_2d(
    trajectory: Any,
    path: PathLike,
    *,
    data: Any = None,
    n_paths: int = 200,
    title: str | None = None,
) -> Path:
    """Paths of 2-D points from noise to samples: thin lines, blue starts, orange ends.

    Args:
        trajectory: (S+1, n, 2) states of an ODE/SDE sampler, index 0 the noise and index -1
            the samples (e.g. `SampleTrajectory.trajectory` of a flow or diffusion model).
        path: the .png file.
        data: optional (m, 2) data points, drawn in grey underneath.
        n_paths: paths drawn as lines (evenly chosen among the n); every start and end point
            is drawn.
        title: optional axes title.
    """
    from matplotlib.collections import LineCollection

    path = _png_path(path)
    arr = _trajectory_points(trajectory)
    n_paths = _positive_int(n_paths, "n_paths")
    data = None if data is None else _points(data, "data")
    chosen = arr[:, _evenly(n_paths, arr.shape[1])]  # (S+1, k, 2)
    boxes = [chosen.reshape(-1, 2), arr[0], arr[-1]] + ([] if data is None else [data])
    fig, ax = _figure_2d(_bounds(boxes))
    if data is not None:
        ax.scatter(*data.T, s=_marker_size(len(data)), c=DATA_COLOUR, alpha=0.4, lw=0, label="data")
    width = float(np.clip(20.0 / chosen.shape[1], 0.3, 1.0))
    lines = LineCollection(list(chosen.transpose(1, 0, 2)), colors=PATH_COLOUR, linewidths=width,
                           alpha=0.6, label="paths")  # fmt: skip
    ax.add_collection(lines)
    size = _marker_size(arr.shape[1])
    ax.scatter(*arr[0].T, s=size, c=NOISE_COLOUR, alpha=0.7, lw=0, label="start (noise)")
    ax.scatter(*arr[-1].T, s=size, c=SAMPLE_COLOUR, alpha=0.8, lw=0, label="end (samples)")
    ax.legend(loc="upper right", markerscale=3, fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def trajectory_grid(
    trajectory: Any,
    path: PathLike,
    *,
    n_rows: int = 8,
    n_cols: int = 10,
    title: str | None = None,
) -> Path:
    """The denoising sequence: one row per sample, columns from noise (left) to sample (right).

    Args:
        trajectory: (S+1, n, C, H, W) images with C in {1, 3}, index 0 the noise; values are
            clipped to [0, 1], so noise outside the data range shows saturated.
        path: the .png file.
        n_rows: samples shown (the first min(n_rows, n)).
        n_cols: time points shown, min(n_cols, S+1) evenly chosen, first and last included;
            the tick under each column is its index into the trajectory.
        title: optional figure title.
    """
    path = _png_path(path)
    arr = _trajectory_images(trajectory)
    n_rows = _positive_int(n_rows, "n_rows")
    n_cols = _positive_int(n_cols, "n_cols", minimum=2)
    steps = _evenly(n_cols, arr.shape[0])
    rows = min(n_rows, arr.shape[1])
    frames = arr[steps][:, :rows].transpose(1, 0, 2, 3, 4)  # (rows, cols, C, H, W)
    mosaic = tile_images(frames.reshape(-1, *arr.shape[2:]), nrow=len(steps))
    height, width = mosaic.shape[:2]
    scale = max(8.0 / max(height, width), 1.1 / DPI)
    extra = 0.4 + 0.4 * bool(title)  # inches for the tick labels and the title
    fig = Figure(figsize=(max(width * scale, 3.0), max(height * scale, 2.0) + extra))
    ax = fig.add_subplot()
    ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    w_cell = arr.shape[4] + 1
    ax.set_xticks([1 + w_cell * i + (w_cell - 1) / 2 for i in range(len(steps))])
    ax.set_xticklabels([str(int(s)) for s in steps], fontsize="small")
    ax.set_yticks([])
    ax.set_xlabel("step (0 = noise)")
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _gif_path(path: PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"path must end in .gif, got {str(path)!r}")
    return path


def animate(
    trajectory: Any,
    path: PathLike,
    *,
    fps: float = 12,
    data: Any = None,
    title: str | None = None,
    max_frames: int = 120,
) -> Path:
    """An animated GIF of a sampler's trajectory: 2-D points moving, or an image grid changing.

    Axis limits (points) and grey levels (images, clipped to [0, 1]) are fixed across frames.

    Args:
        trajectory: (S+1, n, 2) points or (S+1, n, C, H, W) images (C in {1, 3}; the first 64
            are shown), index 0 the noise and index -1 the samples.
        path: the .gif file.
        fps: frames per second.
        data: optional (m, 2) data points drawn in grey under moving points.
        title: optional title; the frame's index into the trajectory is appended.
        max_frames: frames written: min(max_frames, S+1), evenly chosen, first and last included.
    """
    from matplotlib.animation import FuncAnimation, PillowWriter
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = _gif_path(path)
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps <= 100:
        raise ValueError(f"fps must be a number in (0, 100], got {fps!r}")
    max_frames = _positive_int(max_frames, "max_frames", minimum=2)
    ndim = _to_numpy(trajectory, "trajectory").ndim
    if ndim == 3:
        arr = _trajectory_points(trajectory)
        data = None if data is None else _points(data, "data")
    elif ndim == 5:
        arr = _trajectory_images(trajectory)[:, :MAX_ANIMATED_IMAGES]
        if data is not None:
            raise ValueError("data overlays only 2-D point trajectories, not images")
    else:
        raise ValueError(
            "trajectory must have shape (S+1, n, 2) (points) or (S+1, n, C, H, W) (images), "
            f"got {ndim} dimensions"
        )
    frames = _evenly(max_frames, arr.shape[0])
    last = arr.shape[0] - 1

    if ndim == 3:
        fig, ax = _figure_2d(_bounds([arr.reshape(-1, 2)] + ([] if data is None else [data])))
        fig.set_size_inches(4.5, 4.5 * fig.get_figheight() / fig.get_figwidth())
        if data is not None:
            ax.scatter(*data.T, s=_marker_size(len(data)), c=DATA_COLOUR, alpha=0.4, lw=0)
        artist = ax.scatter(*arr[0].T, s=_marker_size(arr.shape[1]), c=SAMPLE_COLOUR, lw=0)
        fig.tight_layout()

        def show(i: int) -> None:
            artist.set_offsets(arr[i])
    else:
        mosaic = tile_images(arr[0])
        fig = Figure(figsize=(4.5, 4.5 * mosaic.shape[0] / mosaic.shape[1] + 0.4))
        ax = fig.add_axes((0.02, 0.02, 0.96, 0.88))
        ax.set_axis_off()
        artist = ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")

        def show(i: int) -> None:
            artist.set_data(tile_images(arr[i]))

    label = ax.set_title("")

    def update(i: int) -> list[Any]:
        show(i)
        label.set_text(f"{title + ': ' if title else ''}step {i}/{last}")
        return [artist, label]

    FigureCanvasAgg(fig)  # an Agg canvas of its own: pyplot is never involved
    path.parent.mkdir(parents=True, exist_ok=True)
    animation = FuncAnimation(fig, update, frames=[int(i) for i in frames], blit=False)
    animation.save(path, writer=PillowWriter(fps=fps), dpi=GIF_DPI)
    fig.clear()
    return path


# -- y against x, one line per name (quality vs NFE, NLL vs components) ---------------------------
def xy_curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: PathLike,
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    logx: bool = False,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Lines of y against x, one per name, with a marker at each point.

    Args:
        series: name -> (xs, ys), two 1-D sequences of the same length >= 1 (finite xs, and
            positive ones with logx; NaN ys leave gaps).
        path: the .png file.
        xlabel, ylabel: axis labels.
        title: optional axes title.
        logx: a logarithmic x axis (ticks at the xs when there are at most 12 of them).
        ylim: optional (bottom, top) of the y axis; points beyond it are cut off.
    """
    path = _png_path(path)
    if not isinstance(series, Mapping) or len(series) == 0:
        raise ValueError("series must be a non-empty dict of name -> (xs, ys)")
    if ylim is not None:
        ylim = (float(ylim[0]), float(ylim[1]))
        if not (math.isfinite(ylim[0]) and math.isfinite(ylim[1]) and ylim[0] < ylim[1]):
            raise ValueError(f"ylim must be finite (bottom, top) with bottom < top, got {ylim}")
    lines = {}
    for name, pair in series.items():
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"series[{name!r}] must be a pair (xs, ys)")
        xs, ys = _to_numpy(pair[0], f"xs of {name!r}"), _to_numpy(pair[1], f"ys of {name!r}")
        if xs.ndim != 1 or xs.shape != ys.shape or len(xs) == 0:
            raise ValueError(
                f"series[{name!r}] needs 1-D xs and ys of one length >= 1, got shapes "
                f"{xs.shape} and {ys.shape}"
            )
        if not np.isfinite(xs).all() or (logx and (xs <= 0).any()) or np.isinf(ys).any():
            raise ValueError(
                f"series[{name!r}] has non-finite values{' or xs <= 0 (logx)' if logx else ''}"
            )
        lines[str(name)] = (xs, ys)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, (xs, ys) in lines.items():
        ax.plot(xs, ys, marker="o", markersize=4, label=name)
    if logx:
        ax.set_xscale("log")
        ticks = np.unique(np.concatenate([xs for xs, _ in lines.values()]))
        if len(ticks) <= 12:
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)
