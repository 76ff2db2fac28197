"""Figures of edits: `edit_rows` (labelled rows of images: originals, masked inputs,
inpainted results, SDEdit at several strengths, inversion reconstructions) and
`edit_points_2d` (2-D points: one panel per edit, an arrow from each input to its result).

Matplotlib and NumPy only: the edits are computed by the caller (`genlab plot`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from genlab.plots.base import (
    DATA_COLOUR,
    SAMPLE_COLOUR,
    PathLike,
    bounds_of,
    check_points,
    equal_scale,
    marker_size,
    png_path,
    save_png,
)
from genlab.plots.images import tile_images

INPUT_COLOUR = "#3182bd"
ROW_HEIGHT = 1.0  # inches per row of images
LABEL_WIDTH = 1.6  # inches for the row labels


def edit_rows(rows: Mapping[str, Any], path: PathLike, title: str | None = None) -> Path:
    """Write labelled rows of images, one row per entry of `rows`, to `path`.

    Args:
        rows: label -> images, each (k, C, H, W) with C in {1, 3}, or (k, H, W), values in
            [0, 1] (clipped); every row must have the same image size, k may differ.
        path: the .png file.
        title: optional figure title.
    """
    path = png_path(path)
    if not rows:
        raise ValueError("rows must hold at least one row of images")
    mosaics = {str(label): tile_images(images, nrow=len(images)) for label, images in rows.items()}
    heights = {m.shape[0] for m in mosaics.values()}
    if len(heights) != 1:
        raise ValueError("every row of images must have the same image height")
    widest = max(m.shape[1] for m in mosaics.values())
    aspect = widest / heights.pop()
    width = min(max(ROW_HEIGHT * aspect, 3.0), 12.0)
    row_height = width / aspect
    top = 0.4 * bool(title)
    fig = Figure(figsize=(width + LABEL_WIDTH, row_height * len(mosaics) + top + 0.1))
    axes = fig.subplots(len(mosaics), 1, squeeze=False)[:, 0]
    for ax, (label, mosaic) in zip(axes, mosaics.items(), strict=True):
        pad = np.ones((mosaic.shape[0], widest - mosaic.shape[1], *mosaic.shape[2:]))
        ax.imshow(np.concatenate([mosaic, pad], axis=1), cmap="gray", vmin=0.0, vmax=1.0,
                  interpolation="nearest")  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=LABEL_WIDTH / (width + LABEL_WIDTH), right=0.99, bottom=0.01,
                        top=1 - (top + 0.05) / fig.get_figheight(), hspace=0.05)  # fmt: skip
    return save_png(fig, path)


def edit_points_2d(
    panels: Mapping[str, tuple[Any, Any]],
    path: PathLike,
    data: Any = None,
    title: str | None = None,
) -> Path:
    """Write one panel per edit of 2-D points: the data (grey), the inputs (blue), their edits
    (orange) and an arrow from each input to its edit.

    Args:
        panels: label -> (inputs, outputs), both (n, 2) with the same n (row i edited to row i).
        path: the .png file.
        data: optional (m, 2) points drawn beneath (e.g. the test data).
        title: optional figure title.
    """
    path = png_path(path)
    if not panels:
        raise ValueError("panels must hold at least one (inputs, outputs) pair")
    pairs = {}
    for label, (start, end) in panels.items():
        start, end = check_points(start, f"{label} inputs"), check_points(end, f"{label} outputs")
        if start.shape != end.shape:
            raise ValueError(
                f"{label}: inputs and outputs must have the same shape, got {start.shape} and "
                f"{end.shape}"
            )
        pairs[str(label)] = (start, end)
    drawn = [p for pair in pairs.values() for p in pair]
    background = None if data is None else check_points(data, "data")
    bounds = bounds_of(drawn + ([] if background is None else [background]))
    cols = min(len(pairs), 2)
    rows = math.ceil(len(pairs) / cols)
    wx, wy = bounds[1] - bounds[0], bounds[3] - bounds[2]
    ratio = float(np.clip(wy / wx, 0.4, 1.5)) if equal_scale(bounds) else 1.0
    fig = Figure(figsize=(4.5 * cols, (4.5 * ratio + 0.4) * rows + 0.4 * bool(title)))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (label, (start, end)) in zip(axes, pairs.items(), strict=False):
        if background is not None:
            ax.scatter(*background.T, s=marker_size(len(background)), c=DATA_COLOUR, alpha=0.2,
                       lw=0, label="data")  # fmt: skip
        delta = end - start
        ax.quiver(*start.T, *delta.T, angles="xy", scale_units="xy", scale=1.0, width=0.003,
                  color="#999999", alpha=0.6)  # fmt: skip
        size = 2 * marker_size(len(start))
        ax.scatter(*start.T, s=size, c=INPUT_COLOUR, lw=0, label="input")
        ax.scatter(*end.T, s=size, c=SAMPLE_COLOUR, lw=0, label="edited")
        ax.set_xlim(bounds[0], bounds[1])
        ax.set_ylim(bounds[2], bounds[3])
        if equal_scale(bounds):
            ax.set_aspect("equal", adjustable="box")
        ax.set_title(label, fontsize="medium")
    for ax in axes[len(pairs) :]:
        ax.set_axis_off()
    axes[0].legend(loc="upper right", markerscale=2, fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)
