"""Time grids: spacing against closed forms computed independently with numpy, ends, errors."""

import math

import numpy as np
import pytest
import torch

from genlab.grids import GRIDS, check_times, time_grid
from genlab.models.diffusion_maths import sampling_times
from genlab.schedules import PATHS, SCHEDULES

SCHEDS = {"linear": SCHEDULES["linear"](), "cosine": SCHEDULES["cosine"]()}


def linear_beta_ratio(t: np.ndarray, b0: float = 1e-4, b1: float = 0.02, n: int = 1000):
    """sigma / alpha of DDPM's linear betas, from its closed form (not from genlab):
    alpha_bar = exp(-g), g = n (b0 t + (b1 - b0) t^2 / 2), so sigma / alpha = sqrt(e^g - 1)."""
    g = n * (b0 * t + (b1 - b0) * t**2 / 2)
    return np.sqrt(np.expm1(g))


@pytest.mark.parametrize("sched", SCHEDS, ids=str)
@pytest.mark.parametrize("name", GRIDS)
def test_grids_decrease_between_their_ends(sched, name):
    grid = time_grid(SCHEDS[sched], name, 12, t_max=0.9, t_min=1e-3)
    assert grid.dtype == torch.float64 and grid.shape == (13,)
    assert (grid.diff() < 0).all()
    assert grid[0].item() == 0.9 and grid[-1].item() == 1e-3
    zero = time_grid(SCHEDS[sched], name, 12, t_min=1e-3, to_zero=True)
    assert zero.shape == (13,) and zero[0].item() == 1.0 and zero[-2].item() == 1e-3
    assert zero[-1].item() == 0.0 and (zero.diff() < 0).all()


def test_uniform_and_quadratic_spacing_and_one_step():
    s = SCHEDS["cosine"]
    np.testing.assert_allclose(time_grid(s, "uniform", 4).numpy(), [1, 0.75, 0.5, 0.25, 0])
    root = time_grid(s, "quadratic", 8, t_max=0.81).sqrt().numpy()
    np.testing.assert_allclose(np.diff(root), -0.9 / 8, rtol=1e-12)
    assert time_grid(s, "karras", 1, t_min=0.1).tolist() == [1.0, 0.1]
    assert time_grid(s, "karras", 1, t_min=0.1, to_zero=True).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("sched", SCHEDS, ids=str)
def test_logsnr_grid_has_constant_log_snr_steps(sched):
    s = SCHEDS[sched]
    lam = s.log_snr(time_grid(s, "logsnr", 10, t_max=0.95, t_min=2e-3))
    np.testing.assert_allclose(lam.diff().numpy(), float(lam[-1] - lam[0]) / 10, rtol=1e-7)


@pytest.mark.parametrize("to_zero", [False, True])
def test_karras_grid_matches_edm_formula_in_numpy(to_zero):
    """EDM eq. 5 with rho = 7, r = sigma / alpha, from linear_beta_ratio: the grid's times
    have the ratios r_i = (r_max^(1/rho) + i / (N - 1) (r_min^(1/rho) - r_max^(1/rho)))^rho."""
    steps, t_max, t_min, rho = 10, 1.0, 1e-3, 7.0
    grid = time_grid(SCHEDS["linear"], "karras", steps, t_max=t_max, t_min=t_min, to_zero=to_zero)
    n = steps if to_zero else steps + 1
    r_max, r_min = linear_beta_ratio(np.array([t_max, t_min]))
    i = np.arange(n)
    want = (r_max ** (1 / rho) + i / (n - 1) * (r_min ** (1 / rho) - r_max ** (1 / rho))) ** rho
    np.testing.assert_allclose(linear_beta_ratio(grid[:n].numpy()), want, rtol=1e-8)
    assert grid[-1].item() == (0.0 if to_zero else t_min)


def test_karras_rho_one_is_uniform_in_ratio_and_rho_large_tends_to_logsnr():
    s = SCHEDS["cosine"]
    ratio = lambda g: (s.sigma(g) / s.alpha(g)).numpy()  # noqa: E731
    r = ratio(time_grid(s, "karras", 6, t_max=0.8, t_min=0.1, rho=1.0))
    np.testing.assert_allclose(np.diff(r), (r[-1] - r[0]) / 6, rtol=1e-8)
    big = time_grid(s, "karras", 6, t_max=0.8, t_min=0.1, rho=1e6)
    torch.testing.assert_close(
        big, time_grid(s, "logsnr", 6, t_max=0.8, t_min=0.1), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("rho", [None, 1.25, 3.0])
def test_power_grid_matches_its_formula_in_numpy(rho):
    """t_i = (t_max^(1/p) + i / N (t_min^(1/p) - t_max^(1/p)))^p, p = rho (1.5 by default)."""
    steps, t_max, t_min = 9, 0.9, 0.0
    grid = time_grid(SCHEDS["cosine"], "power", steps, t_max=t_max, t_min=t_min, rho=rho)
    p, i = 1.5 if rho is None else rho, np.arange(steps + 1)
    want = (t_max ** (1 / p) + i / steps * (t_min ** (1 / p) - t_max ** (1 / p))) ** p
    np.testing.assert_allclose(grid.numpy(), want, rtol=1e-12, atol=1e-300)
    assert grid[0].item() == t_max and grid[-1].item() == 0.0


def test_power_grid_with_rho_one_is_uniform_and_two_is_quadratic():
    s = SCHEDS["linear"]
    for rho, name in ((1.0, "uniform"), (2.0, "quadratic")):
        power = time_grid(s, "power", 7, t_max=0.8, t_min=1e-3, rho=rho)
        torch.testing.assert_close(power, time_grid(s, name, 7, t_max=0.8, t_min=1e-3),
                                   rtol=1e-12, atol=0)  # fmt: skip


@pytest.mark.parametrize("sched", SCHEDS, ids=str)
def test_chains_power_grid_runs_to_zero_off_the_chain(sched):
    """The chain's "power" grid is `time_grid` to t = 0, not to 1 / T as "quadratic" is."""
    got = sampling_times(SCHEDS[sched], 1000, 15, "power", t_max=0.6)
    want = 0.6 * (1 - np.arange(16) / 15) ** 1.5
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("grid", ["quadratic", "logsnr"])
@pytest.mark.parametrize("sched", SCHEDS, ids=str)
def test_same_numbers_as_the_chains_sampling_times(grid, sched):
    s, timesteps = SCHEDS[sched], 1000
    want = sampling_times(s, timesteps, 17, grid)
    got = time_grid(s, grid, 17, t_min=1 / timesteps)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)


def test_flow_path_log_snr_grids_need_t_max_below_one():
    path = PATHS["linear"]()
    with pytest.raises(ValueError, match=r"finite log-SNR.*t_max < 1"):
        time_grid(path, "karras", 5, t_min=1e-3)
    grid = time_grid(path, "karras", 5, t_max=0.999, t_min=1e-3)
    assert (grid.diff() < 0).all() and time_grid(path, "uniform", 5)[0] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "linear"}, ValueError, "unknown time grid 'linear'; choose one of uniform"),
        ({"steps": 0}, ValueError, "steps must be an integer >= 1"),
        ({"steps": 2.0}, ValueError, "steps must be an integer >= 1"),
        ({"steps": True}, ValueError, "steps must be an integer >= 1"),
        ({"t_max": 1.5}, ValueError, r"t_max must be in \(0, 1\]"),
        ({"t_max": "1"}, TypeError, "t_max must be a real number"),
        ({"t_min": 0.5, "t_max": 0.5}, ValueError, r"t_min must be in \[0, t_max\)"),
        ({"t_min": math.nan}, ValueError, "t_min must be finite"),
        ({"rho": 0.0}, ValueError, "rho must be > 0"),
        ({"name": "logsnr"}, ValueError, "needs t_min > 0.*to_zero=True"),
        ({"name": "karras"}, ValueError, "needs t_min > 0"),
        ({"to_zero": True}, ValueError, "to_zero=True needs t_min > 0"),
        ({"to_zero": 1}, TypeError, "to_zero must be True or False"),
    ],
)
def test_time_grid_rejects_bad_arguments(kwargs, error, match):
    args = {"name": "uniform", "steps": 4} | kwargs
    with pytest.raises(error, match=match):
        time_grid(SCHEDS["cosine"], args.pop("name"), args.pop("steps"), **args)


@pytest.mark.parametrize(
    "times", [[1.0, 0.5, 0.0], np.array([0.6, 0.2]), torch.tensor([0.9, 0.1], dtype=torch.float32)]
)
def test_check_times_accepts_decreasing_grids(times):
    grid = check_times(times)
    assert grid.dtype == torch.float64 and grid.ndim == 1
    np.testing.assert_allclose(grid.numpy(), np.asarray(times, dtype=np.float64))


def test_check_times_returns_a_copy():
    times = torch.tensor([1.0, 0.0], dtype=torch.float64)
    check_times(times)[0] = 0.5
    assert times[0] == 1.0


@pytest.mark.parametrize(
    ("times", "error", "match"),
    [
        ("1, 0", TypeError, "1-D sequence, array or tensor"),
        (0.5, TypeError, "1-D sequence, array or tensor"),
        (["1", "0"], TypeError, "real numbers"),
        (torch.tensor([True, False]), TypeError, "real numbers"),
        ([[1.0, 0.0]], ValueError, r"must be 1-D, got shape \(1, 2\)"),
        ([1.0], ValueError, "at least 2 entries"),
        ([1.0, math.nan, 0.0], ValueError, "must be finite"),
        ([0.0, 0.5, 1.0], ValueError, "strictly decreasing.*sort them"),
        ([1.0, 0.5, 0.5, 0.0], ValueError, "strictly decreasing.*drop repeats"),
        ([1.2, 0.5], ValueError, r"within \[0, 1\]"),
        ([0.5, -0.1], ValueError, r"within \[0, 1\]"),
    ],
)
def test_check_times_names_the_problem(times, error, match):
    with pytest.raises(error, match=match):
        check_times(times)
