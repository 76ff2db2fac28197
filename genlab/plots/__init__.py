"""Figures for samples, densities, curves and sampler trajectories, written as PNG (or GIF) files.

Matplotlib and NumPy only: nothing here knows about models. Every function takes arrays
(NumPy arrays, or anything with `.detach().cpu().numpy()` such as torch tensors), draws on a
fresh `matplotlib.figure.Figure` (the Agg canvas; pyplot's global state is never touched, so
nothing is left open), writes a PNG to `path` (parent folders are created) and returns it as a
`Path`. Bad shapes or values raise `ValueError`.

- `images`: `tile_images`, `sample_grid`;
- `points`: `density_2d`, `scatter_2d`, `ellipse_geometry`;
- `curves`: `curve`, `xy_curves`, `loss_curves`, and compare's `nfe_figure` and `study_figure`;
- `trajectories`: `trajectories_2d`, `trajectory_grid` (from noise to samples);
- `animation`: `animate` (an animated GIF of a trajectory);
- `editing`: `edit_rows` (labelled rows of edited images), `edit_points_2d` (input -> edit
  arrows of 2-D points).

    from genlab import plots
    plots.density_2d(model.log_prob, "density.png", samples=model.sample(500), data=x)
"""

from genlab.plots.animation import animate
from genlab.plots.base import Bounds, PathLike
from genlab.plots.curves import (
    curve,
    loss_curves,
    nfe_figure,
    study_figure,
    study_ylim,
    xy_curves,
)
from genlab.plots.editing import edit_points_2d, edit_rows
from genlab.plots.images import sample_grid, tile_images
from genlab.plots.points import CHUNK, density_2d, ellipse_geometry, scatter_2d
from genlab.plots.trajectories import trajectories_2d, trajectory_grid

__all__ = [
    "CHUNK",
    "Bounds",
    "PathLike",
    "animate",
    "curve",
    "density_2d",
    "edit_points_2d",
    "edit_rows",
    "ellipse_geometry",
    "loss_curves",
    "nfe_figure",
    "sample_grid",
    "scatter_2d",
    "study_figure",
    "study_ylim",
    "tile_images",
    "trajectories_2d",
    "trajectory_grid",
    "xy_curves",
]
