"""Trajectory figures: real PNG/GIF files with the expected frames; bad shapes raise."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from PIL import Image

from genlab import plots
from genlab.plots.base import evenly


def point_trajectory(steps: int = 6, n: int = 40, seed: int = 0) -> np.ndarray:
    """(steps+1, n, 2): straight lines from Gaussian noise to a small cluster at (3, 0)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n, 2))
    samples = 0.2 * rng.normal(size=(n, 2)) + np.array([3.0, 0.0])
    s = np.linspace(0.0, 1.0, steps + 1)[:, None, None]
    return (1 - s) * noise + s * samples


def image_trajectory(steps: int = 9, n: int = 5, seed: int = 0) -> np.ndarray:
    """(steps+1, n, 1, 6, 6): uniform noise fading into a bright square on black."""
    rng = np.random.default_rng(seed)
    target = np.zeros((n, 1, 6, 6))
    target[:, :, 1:5, 1:5] = 1.0
    noise = rng.uniform(size=(n, 1, 6, 6))
    s = np.linspace(0.0, 1.0, steps + 1)[:, None, None, None, None]
    return (1 - s) * noise + s * target


def read_png(path) -> np.ndarray:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)[..., :3]
    assert image.std() > 0.01, "the image is a single colour"
    return image


def gif_frames(path) -> list[np.ndarray]:
    assert path.read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    with Image.open(path) as gif:
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("RGB"), dtype=np.float64))
    return frames


# -- trajectories_2d -------------------------------------------------------------------------------
def test_trajectories_2d_writes_a_png(tmp_path):
    traj = torch.from_numpy(point_trajectory())  # tensors are accepted too
    data = np.random.default_rng(1).normal(size=(30, 2)) + np.array([3.0, 0.0])
    out = plots.trajectories_2d(traj, tmp_path / "sub" / "paths.png", data=data, n_paths=10,
                                title="paths")  # fmt: skip
    image = read_png(out)
    # noise (blue) and samples (orange) both appear
    blue = (image[..., 2] > image[..., 0] + 0.2).sum()
    orange = (image[..., 0] > image[..., 2] + 0.3).sum()
    assert blue > 20 and orange > 20


def test_trajectories_2d_draws_more_ink_with_more_paths(tmp_path):
    traj = point_trajectory(n=60)
    few = read_png(plots.trajectories_2d(traj, tmp_path / "few.png", n_paths=1))
    many = read_png(plots.trajectories_2d(traj, tmp_path / "many.png", n_paths=60))
    assert (many.mean(-1) < 0.95).sum() > (few.mean(-1) < 0.95).sum()


@pytest.mark.parametrize(
    ("trajectory", "match"),
    [
        (np.zeros((5, 10)), r"\(S\+1, n, 2\)"),
        (np.zeros((5, 10, 3)), r"\(S\+1, n, 2\)"),
        (np.zeros((1, 10, 2)), ">= 2 time points"),
        (np.zeros((4, 0, 2)), ">= 1 path"),
        (np.full((3, 4, 2), np.nan), "NaN"),
    ],
)
def test_trajectories_2d_rejects_bad_shapes(tmp_path, trajectory, match):
    with pytest.raises(ValueError, match=match):
        plots.trajectories_2d(trajectory, tmp_path / "x.png")


def test_trajectories_2d_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        plots.trajectories_2d(point_trajectory(), tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="n_paths"):
        plots.trajectories_2d(point_trajectory(), tmp_path / "x.png", n_paths=0)
    with pytest.raises(ValueError, match="data"):
        plots.trajectories_2d(point_trajectory(), tmp_path / "x.png", data=np.zeros((3, 3)))


# -- trajectory_grid -------------------------------------------------------------------------------
def test_trajectory_grid_goes_from_noise_to_sample(tmp_path):
    traj = image_trajectory(steps=9, n=5)
    out = plots.trajectory_grid(traj, tmp_path / "grid.png", n_rows=3, n_cols=4, title="denoise")
    image = read_png(out).mean(-1)
    assert image.shape[1] > image.shape[0]  # 4 columns by 3 rows
    # the mosaic is the block of rows and columns that are mostly ink; its left quarter (noise)
    # is full of mid-grey pixels, its right quarter (the square, 0 or 1) has almost none
    rows = np.flatnonzero((image < 0.9).mean(1) > 0.3)
    cols = np.flatnonzero((image < 0.9).mean(0) > 0.3)
    mosaic = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    quarter = mosaic.shape[1] // 4
    mid_grey = (mosaic > 0.15) & (mosaic < 0.85)
    assert mid_grey[:, :quarter].mean() > 5 * mid_grey[:, -quarter:].mean()


def test_trajectory_grid_columns_are_evenly_chosen():
    assert evenly(4, 10).tolist() == [0, 3, 6, 9]
    assert evenly(10, 4).tolist() == [0, 1, 2, 3]  # never more columns than steps
    assert evenly(2, 101).tolist() == [0, 100]


@pytest.mark.parametrize(
    ("trajectory", "match"),
    [
        (np.zeros((5, 3, 8, 8)), r"\(S\+1, n, C, H, W\)"),
        (np.zeros((5, 3, 2, 8, 8)), "C in"),
        (np.zeros((1, 3, 1, 8, 8)), ">= 2 time points"),
        (np.full((3, 2, 1, 4, 4), np.nan), "NaN"),
    ],
)
def test_trajectory_grid_rejects_bad_shapes(tmp_path, trajectory, match):
    with pytest.raises(ValueError, match=match):
        plots.trajectory_grid(trajectory, tmp_path / "x.png")


def test_trajectory_grid_rejects_bad_counts(tmp_path):
    with pytest.raises(ValueError, match="n_cols"):
        plots.trajectory_grid(image_trajectory(), tmp_path / "x.png", n_cols=1)
    with pytest.raises(ValueError, match="n_rows"):
        plots.trajectory_grid(image_trajectory(), tmp_path / "x.png", n_rows=0)


# -- animate ---------------------------------------------------------------------------------------
def test_animate_points_writes_one_frame_per_time_point(tmp_path):
    traj = point_trajectory(steps=6)
    out = plots.animate(traj, tmp_path / "anim" / "points.gif", fps=10, data=traj[-1], title="t")
    frames = gif_frames(out)
    assert len(frames) == 7
    assert len({f.shape for f in frames}) == 1  # fixed canvas
    assert np.abs(frames[0] - frames[-1]).mean() > 0.5  # the points moved


def test_animate_images_and_frame_limit(tmp_path):
    traj = image_trajectory(steps=9, n=4)
    frames = gif_frames(plots.animate(traj, tmp_path / "images.gif"))
    assert len(frames) == 10
    limited = gif_frames(plots.animate(traj, tmp_path / "few.gif", max_frames=4))
    assert len(limited) == 4
    # the first frame is noise, the last the crisp square: it has far fewer mid-grey pixels
    grey = [((f.mean(-1) > 40) & (f.mean(-1) < 215)).sum() for f in (limited[0], limited[-1])]
    assert grey[1] < grey[0] / 2


def test_animate_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\.gif"):
        plots.animate(point_trajectory(), tmp_path / "x.png")
    with pytest.raises(ValueError, match="dimensions"):
        plots.animate(np.zeros((4, 5, 2, 2)), tmp_path / "x.gif")
    with pytest.raises(ValueError, match=">= 2 time points"):
        plots.animate(np.zeros((1, 5, 2)), tmp_path / "x.gif")
    with pytest.raises(ValueError, match=r"\(S\+1, n, 2\)"):
        plots.animate(np.zeros((3, 5, 4)), tmp_path / "x.gif")
    with pytest.raises(ValueError, match="fps"):
        plots.animate(point_trajectory(), tmp_path / "x.gif", fps=0)
    with pytest.raises(ValueError, match="data"):
        plots.animate(image_trajectory(), tmp_path / "x.gif", data=np.zeros((3, 2)))
    assert not (tmp_path / "x.gif").exists()
