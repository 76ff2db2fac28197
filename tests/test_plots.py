"""Tests of genlab.plots: every function writes a real, non-blank PNG; shapes are checked."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from genlab import plots


def read_png(path) -> np.ndarray:
    """(H, W, 3) floats in [0, 1], after checking the file is a non-blank PNG."""
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)[..., :3]
    assert image.shape[0] >= 100 and image.shape[1] >= 100
    assert image.std() > 0.01, "the image is a single colour"
    return image


def gaussian_log_prob(mean: tuple[float, float], std: float = 0.7):
    """log N(x | mean, std^2 I) for (m, 2) points."""

    def log_prob(points: np.ndarray) -> np.ndarray:
        z = (points - np.asarray(mean)) / std
        return -0.5 * (z**2).sum(1) - math.log(2 * math.pi * std**2)

    return log_prob


# -- sample_grid / tile_images --------------------------------------------------------------------
def test_tile_images_places_each_image_in_reading_order():
    images = np.zeros((5, 1, 8, 8))
    images[3] = 1.0  # the 4th image: row 1, column 1 with nrow=2
    mosaic = plots.tile_images(images, nrow=2, pad=1)
    assert mosaic.shape == (3 * 9 + 1, 2 * 9 + 1)
    assert (mosaic[10:18, 10:18] == 1).all()
    assert (mosaic[1:9, 1:9] == 0).all()
    assert (mosaic[0] == 1).all()  # white padding


def test_tile_images_clips_and_keeps_colour():
    images = np.full((4, 3, 5, 6), 2.0)
    images[:, 1] = -1.0
    mosaic = plots.tile_images(images)
    assert mosaic.shape == (2 * 6 + 1, 2 * 7 + 1, 3)
    assert mosaic[1, 1].tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("shape", [(16, 1, 8, 8), (16, 8, 8), (7, 3, 10, 12)])
def test_sample_grid_writes_png(tmp_path, shape):
    images = np.random.default_rng(0).random(shape)
    path = plots.sample_grid(torch.from_numpy(images), tmp_path / "sub" / "grid.png", title="x")
    assert path == tmp_path / "sub" / "grid.png"
    read_png(path)


@pytest.mark.parametrize("shape", [(4, 2, 8, 8), (8, 8), (0, 1, 8, 8), (4, 1, 8, 8, 1)])
def test_sample_grid_rejects_bad_shapes(tmp_path, shape):
    with pytest.raises(ValueError, match="images must have shape"):
        plots.sample_grid(np.zeros(shape), tmp_path / "grid.png")


def test_sample_grid_rejects_bad_nrow_and_suffix(tmp_path):
    with pytest.raises(ValueError, match="nrow"):
        plots.sample_grid(np.zeros((4, 8, 8)), tmp_path / "grid.png", nrow=0)
    with pytest.raises(ValueError, match=r"\.png"):
        plots.sample_grid(np.zeros((4, 8, 8)), tmp_path / "grid.jpg")
    assert not any(tmp_path.iterdir())


# -- density_2d -----------------------------------------------------------------------------------
def test_density_2d_is_darkest_at_the_mode(tmp_path):
    bounds = (-4.0, 4.0, -4.0, 4.0)
    left = read_png(
        plots.density_2d(gaussian_log_prob((-2.0, 0.0)), tmp_path / "l.png", bounds=bounds)
    )
    right = read_png(
        plots.density_2d(gaussian_log_prob((2.0, 0.0)), tmp_path / "r.png", bounds=bounds)
    )
    assert left.shape == right.shape
    half = left.shape[1] // 2
    # "Blues": high density is dark, zero density is white.
    assert left[:, :half].mean() < left[:, half:].mean() - 0.02
    assert right[:, half:].mean() < right[:, :half].mean() - 0.02
    # The deepest blue (blue minus red: 0 for white, black text and grey) marks the mode.
    mode_left = np.unravel_index((left[..., 2] - left[..., 0]).argmax(), left.shape[:2])[1]
    mode_right = np.unravel_index((right[..., 2] - right[..., 0]).argmax(), right.shape[:2])[1]
    assert mode_left < half < mode_right


def test_density_2d_calls_log_prob_on_float32_chunks(tmp_path):
    calls = []

    def log_prob(points):
        calls.append((points.dtype, points.shape))
        return torch.from_numpy(gaussian_log_prob((0.0, 0.0))(points))  # tensors are accepted

    plots.density_2d(log_prob, tmp_path / "d.png", bounds=(-3, 3, -3, 3), grid=150)
    assert sum(shape[0] for _, shape in calls) == 150 * 150
    assert all(dtype == np.float32 and shape[1] == 2 for dtype, shape in calls)
    assert max(shape[0] for _, shape in calls) <= plots.CHUNK
    assert len(calls) == math.ceil(150 * 150 / plots.CHUNK)


def test_density_2d_with_overlays_and_default_bounds(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(300, 2))
    samples = torch.from_numpy(rng.normal(size=(200, 2)))
    ellipses = (
        np.array([[0.0, 0.0], [1.0, 1.0]]),
        np.array([np.eye(2), [[1.0, 0.5], [0.5, 0.5]]]),
        np.array([0.7, 0.3]),
    )
    plain = read_png(
        plots.density_2d(gaussian_log_prob((0, 0), 1.0), tmp_path / "p.png", data=data)
    )
    full = read_png(
        plots.density_2d(
            gaussian_log_prob((0, 0), 1.0),
            tmp_path / "f.png",
            samples=samples,
            data=data,
            ellipses=ellipses,
            title="overlays",
        )
    )
    assert plain.shape == full.shape

    def greenish(img):  # the ellipses' green, absent from "Blues" and grey/orange dots
        return ((img[..., 1] > img[..., 0] + 0.15) & (img[..., 1] > img[..., 2] + 0.05)).sum()

    def orange(img):
        return ((img[..., 0] > 0.8) & (img[..., 2] < 0.4)).sum()

    assert greenish(full) > 200 and greenish(plain) == 0
    assert orange(full) > 50 and orange(plain) == 0


def test_ellipse_geometry_from_eigen_decomposition():
    width, height, angle = plots.ellipse_geometry(np.diag([4.0, 1.0]), n_sigma=2.0)
    assert (width, height) == pytest.approx((8.0, 4.0))
    assert angle % 180 == pytest.approx(0.0, abs=1e-9)
    rotated = np.array([[2.0, 1.0], [1.0, 2.0]])  # eigenvalues 3 along (1, 1), 1 along (1, -1)
    width, height, angle = plots.ellipse_geometry(rotated, n_sigma=1.0)
    assert (width, height) == pytest.approx((2 * math.sqrt(3), 2.0))
    assert angle % 180 == pytest.approx(45.0)
    with pytest.raises(ValueError, match="positive semi-definite"):
        plots.ellipse_geometry(np.array([[1.0, 0.0], [0.0, -1.0]]), 1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"samples": np.zeros((10, 3))}, r"samples must have shape \(n, 2\)"),
        ({"data": np.zeros(10)}, r"data must have shape \(n, 2\)"),
        ({"data": np.full((3, 2), np.nan)}, "NaN"),
        ({"ellipses": (np.zeros((2, 2)), np.zeros((2, 3, 3)), np.ones(2))}, "ellipses must be"),
        (
            {"ellipses": (np.zeros((1, 2)), np.array([[[1.0, 2.0], [0.0, 1.0]]]), np.ones(1))},
            "symmetric",
        ),
        ({"bounds": (1, 0, 0, 1)}, "bounds"),
        ({"grid": 1, "bounds": (0, 1, 0, 1)}, "grid"),
        ({}, "pass bounds"),
    ],
)
def test_density_2d_rejects_bad_input(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plots.density_2d(gaussian_log_prob((0, 0)), tmp_path / "d.png", **kwargs)
    assert not (tmp_path / "d.png").exists()


def test_density_2d_rejects_bad_log_prob_output(tmp_path):
    bounds = (0, 1, 0, 1)
    with pytest.raises(ValueError, match=r"\(m,\) log-densities"):
        plots.density_2d(lambda p: np.zeros((len(p), 2)), tmp_path / "d.png", bounds=bounds)
    with pytest.raises(ValueError, match="NaN"):
        plots.density_2d(lambda p: np.full(len(p), np.nan), tmp_path / "d.png", bounds=bounds)
    with pytest.raises(ValueError, match="-inf everywhere"):
        plots.density_2d(lambda p: np.full(len(p), -np.inf), tmp_path / "d.png", bounds=bounds)


# -- scatter_2d and curve -------------------------------------------------------------------------
def test_scatter_2d_draws_points_and_reference(tmp_path):
    rng = np.random.default_rng(1)
    alone = read_png(plots.scatter_2d(rng.normal(size=(500, 2)), tmp_path / "a.png"))
    both = read_png(
        plots.scatter_2d(
            torch.randn(500, 2), tmp_path / "b.png", title="t", reference=rng.normal(size=(400, 2))
        )
    )
    grey = lambda img: ((np.ptp(img, axis=2) < 0.05) & (img.mean(2) < 0.6)).sum()  # noqa: E731
    assert grey(both) > grey(alone) + 100  # the reference's grey dots


def test_scatter_2d_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"points must have shape \(n, 2\)"):
        plots.scatter_2d(np.zeros((5, 3)), tmp_path / "s.png")
    with pytest.raises(ValueError, match=r"reference must have shape \(n, 2\)"):
        plots.scatter_2d(np.zeros((5, 2)), tmp_path / "s.png", reference=np.zeros((0, 2)))


def test_curve_writes_png(tmp_path):
    history = -1.0 / np.arange(1, 41)
    image = read_png(
        plots.curve({"train": history, "test": history - 0.1}, tmp_path / "c.png", ylabel="nats")
    )
    assert image.shape[1] > image.shape[0]  # landscape
    read_png(plots.curve({"one point": [1.5]}, tmp_path / "one.png"))


@pytest.mark.parametrize(
    "ys, match",
    [
        ({}, "non-empty dict"),
        ({"a": []}, "non-empty 1-D"),
        ({"a": [[1, 2]]}, "non-empty 1-D"),
        ({"a": [1, np.inf]}, "infinity"),
        ({"a": ["x"]}, "real numbers"),
    ],
)
def test_curve_rejects_bad_input(tmp_path, ys, match):
    with pytest.raises(ValueError, match=match):
        plots.curve(ys, tmp_path / "c.png")


# -- xy_curves ------------------------------------------------------------------------------------
def test_xy_curves_draws_one_coloured_line_per_series(tmp_path):
    series = {"euler": ([2, 5, 10, 100], [0.3, 0.1, 0.05, 0.04]), "heun": ([2, 10], [0.2, 0.04])}
    image = read_png(plots.xy_curves(series, tmp_path / "q.png", xlabel="NFE", logx=True))
    saturated = (image.max(-1) - image.min(-1)) > 0.3  # default colours: blue and orange lines
    blue = saturated & (image[..., 2] > image[..., 0])
    orange = saturated & (image[..., 0] > image[..., 2])
    assert blue.sum() > 50 and orange.sum() > 50


@pytest.mark.parametrize(
    "series, match",
    [
        ({}, "non-empty"),
        ({"a": ([1, 2], [1.0])}, "one length"),
        ({"a": ([0, 1], [1.0, 2.0])}, "xs <= 0"),
        ({"a": ([1, 2], [1.0, math.inf])}, "non-finite"),
    ],
)
def test_xy_curves_rejects_bad_series(tmp_path, series, match):
    with pytest.raises(ValueError, match=match):
        plots.xy_curves(series, tmp_path / "q.png", logx=True)


# -- compare's figures, drawn from its records ----------------------------------------------------
def test_nfe_figure_skips_points_without_a_value(tmp_path):
    curves = {
        "flow": {
            "points": [{"nfe": 4, "frechet_classifier": 3.0}, {"nfe": 8, "frechet_classifier": 1.0}]
        },
        "diffusion": {"points": [{"nfe": None, "frechet_classifier": 2.0}]},
    }
    path = plots.nfe_figure(curves, "frechet_classifier", tmp_path / "nfe.png", ylabel="FD")
    read_png(path)
    empty = {"diffusion": curves["diffusion"]}
    assert plots.nfe_figure(empty, "frechet_classifier", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_study_figure_and_its_y_range(tmp_path):
    study = {"dims": [2, 8], "components": [1, 2, 4],
             "test_bits_per_dim": [[3.0, 2.0, 2.5], [5.0, None, 9000.0]]}  # fmt: skip
    read_png(plots.study_figure(study, tmp_path / "study.png", title="gmm"))
    series = {"d = 2": ([1, 2, 4], [3.0, 2.0, 2.5]), "d = 8": ([1, 4], [5.0, 9000.0])}
    # from the lowest NLL to the highest first point, padded by 10%: the 9000 runs off the top
    assert plots.study_ylim(series) == pytest.approx((2.0 - 0.3, 5.0 + 0.3))
    nothing = {"dims": [2], "components": [1], "test_bits_per_dim": [[None]]}
    assert plots.study_figure(nothing, tmp_path / "none.png") is None
