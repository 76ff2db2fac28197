"""Grids of images: `tile_images` (a mosaic array) and `sample_grid` (a PNG)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from genlab.plots.base import (
    DPI,
    PathLike,
    png_path,
    save_png,
    to_numpy,
)


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
    arr = to_numpy(images, "images")
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or len(arr) == 0 or 0 in arr.shape[2:]:
        raise ValueError(
            "images must have shape (n, C, H, W) with C in {1, 3}, or (n, H, W), and n >= 1; "
            f"got {to_numpy(images, 'images').shape}"
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
    path = png_path(path)
    mosaic = tile_images(images, nrow)
    height, width = mosaic.shape[:2]
    scale = max(6.0 / max(height, width), 1.1 / DPI)  # 6 inches, or >= 1 pixel per pixel
    fig = Figure(figsize=(max(width * scale, 2.0), max(height * scale, 2.0) + 0.4 * bool(title)))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96 - 0.08 * bool(title)))
    ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return save_png(fig, path)
