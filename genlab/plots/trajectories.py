"""Sampler trajectories (S+1, n, ...) from noise (index 0) to samples (index -1):
`trajectories_2d` (paths of 2-D points) and `trajectory_grid` (the denoising sequence)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from genlab.plots.base import (
    DATA_COLOUR,
    DPI,
    SAMPLE_COLOUR,
    PathLike,
    bounds_of,
    check_points,
    evenly,
    figure_2d,
    finish_2d,
    png_path,
    positive_int,
    save_png,
    scatter,
    to_numpy,
)
from genlab.plots.images import tile_images

NOISE_COLOUR = "#3182bd"
PATH_COLOUR = "#9e9ac8"


def trajectory_points(trajectory: Any) -> np.ndarray:
    """(S+1, n, 2) finite points with S+1 >= 2 time points and n >= 1."""
    arr = to_numpy(trajectory, "trajectory")
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


def trajectory_images(trajectory: Any) -> np.ndarray:
    """(S+1, n, C, H, W) images with C in {1, 3}, S+1 >= 2 time points and n >= 1, no NaN."""
    arr = to_numpy(trajectory, "trajectory")
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

    path = png_path(path)
    arr = trajectory_points(trajectory)
    n_paths = positive_int(n_paths, "n_paths")
    data = None if data is None else check_points(data, "data")
    chosen = arr[:, evenly(n_paths, arr.shape[1])]  # (S+1, k, 2)
    boxes = [chosen.reshape(-1, 2), arr[0], arr[-1]] + ([] if data is None else [data])
    fig, ax = figure_2d(bounds_of(boxes))
    if data is not None:
        scatter(ax, data, DATA_COLOUR, 0.4, "data")
    width = float(np.clip(20.0 / chosen.shape[1], 0.3, 1.0))
    lines = LineCollection(list(chosen.transpose(1, 0, 2)), colors=PATH_COLOUR, linewidths=width,
                           alpha=0.6, label="paths")  # fmt: skip
    ax.add_collection(lines)
    scatter(ax, arr[0], NOISE_COLOUR, 0.7, "start (noise)")
    scatter(ax, arr[-1], SAMPLE_COLOUR, 0.8, "end (samples)")
    return finish_2d(fig, ax, path, title, legend=True)


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
    path = png_path(path)
    arr = trajectory_images(trajectory)
    n_rows = positive_int(n_rows, "n_rows")
    n_cols = positive_int(n_cols, "n_cols", minimum=2)
    steps = evenly(n_cols, arr.shape[0])
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
    return save_png(fig, path)
