"""`animate`: an animated GIF of a sampler's trajectory (2-D points moving, or images changing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from genlab.plots import base
from genlab.plots.images import tile_images
from genlab.plots.trajectories import trajectory_images, trajectory_points

GIF_DPI = 80
MAX_ANIMATED_IMAGES = 64  # images per frame of an animated grid


def _gif_path(path: base.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"path must end in .gif, got {str(path)!r}")
    return path


def animate(
    trajectory: Any,
    path: base.PathLike,
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
    max_frames = base.positive_int(max_frames, "max_frames", minimum=2)
    ndim = base.to_numpy(trajectory, "trajectory").ndim
    if ndim == 3:
        arr = trajectory_points(trajectory)
        data = None if data is None else base.check_points(data, "data")
    elif ndim == 5:
        arr = trajectory_images(trajectory)[:, :MAX_ANIMATED_IMAGES]
        if data is not None:
            raise ValueError("data overlays only 2-D point trajectories, not images")
    else:
        raise ValueError(
            "trajectory must have shape (S+1, n, 2) (points) or (S+1, n, C, H, W) (images), "
            f"got {ndim} dimensions"
        )
    frames = base.evenly(max_frames, arr.shape[0])
    last = arr.shape[0] - 1

    if ndim == 3:
        fig, ax = base.figure_2d(
            base.bounds_of([arr.reshape(-1, 2)] + ([] if data is None else [data]))
        )
        fig.set_size_inches(4.5, 4.5 * fig.get_figheight() / fig.get_figwidth())
        if data is not None:
            base.scatter(ax, data, base.DATA_COLOUR, 0.4, None)
        artist = ax.scatter(*arr[0].T, s=base.marker_size(arr.shape[1]), c=base.SAMPLE_COLOUR, lw=0)
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
