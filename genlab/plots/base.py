"""What every figure module shares: array checks, PNG paths and saving, 2-D axes and bounds.

Matplotlib and NumPy only. Every figure draws on a fresh `matplotlib.figure.Figure` (the Agg
canvas; pyplot's global state is never touched) and `save_png` writes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

PathLike = str | os.PathLike
Bounds = tuple[float, float, float, float]
"""(x_min, x_max, y_min, y_max) of a 2-D plot."""

DATA_COLOUR = "#444444"
SAMPLE_COLOUR = "#e6550d"
MARGIN = 0.1  # fraction of the data's range added on each side by default bounds
DPI = 100


def to_numpy(x: Any, name: str) -> np.ndarray:
    """A float64 NumPy array from an array, a nested list or a (CPU or GPU) torch tensor."""
    if hasattr(x, "detach"):  # torch tensors, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must hold real numbers, got an array of dtype {arr.dtype}")
    return arr.astype(np.float64)


def check_points(x: Any, name: str) -> np.ndarray:
    """(n, 2) finite points, n >= 1."""
    arr = to_numpy(x, name)
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) == 0:
        raise ValueError(f"{name} must have shape (n, 2) with n >= 1, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity; drop those rows first")
    return arr


def png_path(path: PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    return path


def finish_2d(fig: Figure, ax: Any, path: Path, title: str | None, legend: bool) -> Path:
    """Legend (top right) when asked, title, tight layout, then `save_png`."""
    if legend:
        ax.legend(loc="upper right", markerscale=3, fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_png(fig, path)


def save_png(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    fig.clear()  # free the artists now rather than at garbage collection
    return path


def equal_scale(bounds: Bounds) -> bool:
    """Whether x and y share one scale: unless their ranges differ more than 4-fold."""
    wx, wy = bounds[1] - bounds[0], bounds[3] - bounds[2]
    return max(wx, wy) <= 4 * min(wx, wy)


def figure_2d(bounds: Bounds) -> tuple[Figure, Any]:
    """A figure and axes for a 2-D plot, shaped like the box when both axes share one scale."""
    wx, wy = bounds[1] - bounds[0], bounds[3] - bounds[2]
    ratio = float(np.clip(wy / wx, 0.5, 1.5)) if equal_scale(bounds) else 1.0
    fig = Figure(figsize=(6.5, 6.5 * ratio + 0.5))
    ax = fig.add_subplot()
    ax.set_xlim(bounds[0], bounds[1])
    ax.set_ylim(bounds[2], bounds[3])
    if equal_scale(bounds):
        ax.set_aspect("equal", adjustable="box")
    return fig, ax


def marker_size(n: int) -> float:
    """Marker area in points^2: large for a few points, small for many."""
    return float(np.clip(3000.0 / max(n, 1), 1.0, 16.0))


def bounds_of(arrays: Sequence[np.ndarray], margin: float = MARGIN) -> Bounds:
    """The bounding box of the points in `arrays`, widened by `margin` of its size each side."""
    pts = np.concatenate(arrays)
    lo, hi = pts.min(0), pts.max(0)
    span = hi - lo
    span = np.where(span > 0, span, 1.0)  # a single point or a line still gets a box
    lo, hi = lo - margin * span, hi + margin * span
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def evenly(count: int, total: int) -> np.ndarray:
    """min(count, total) distinct indices in [0, total), evenly spread, first and last included."""
    return np.unique(np.round(np.linspace(0, total - 1, min(count, total))).astype(int))


def scatter(ax: Any, points: np.ndarray, colour: str, alpha: float, label: str | None) -> None:
    """(n, 2) points as small dots, sized by their number (`marker_size`)."""
    ax.scatter(*points.T, s=marker_size(len(points)), c=colour, alpha=alpha, lw=0, label=label)
