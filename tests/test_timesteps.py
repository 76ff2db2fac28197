"""`genlab.timesteps`: the training-time distributions against their densities (KS and
histogram tests), closed forms, ranges, reproducibility and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genlab import timesteps
from genlab.schedules import PATHS, SCHEDULES
from genlab.timesteps import T_EPS, TIME_SAMPLINGS, draw_times, time_density

N = 100_000
SCHEDULE_CASES = {
    "flow linear": PATHS["linear"](),
    "flow vp": PATHS["vp"](),
    "diffusion linear": SCHEDULES["linear"](),
    "diffusion cosine": SCHEDULES["cosine"](),
}
CASES = [
    (name, sched, loc, scale)
    for sched in SCHEDULE_CASES
    for name, loc, scale in [
        ("uniform", None, None),
        ("logit_normal", None, None),
        ("logit_normal", 0.5, 0.7),
        ("lognormal", None, None),
        ("lognormal", -0.5, 0.8),
    ]
]


def grid_cdf(name, schedule, loc, scale, points: int = 200_001):
    """(t, CDF(t)) on a fine grid by the trapezoid rule on `time_density` (the reference)."""
    t = torch.linspace(T_EPS, 1 - T_EPS, points, dtype=torch.float64)
    p = time_density(name, t, schedule, loc, scale)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64),
                     torch.cumsum((p[1:] + p[:-1]) / 2 * (t[1:] - t[:-1]), 0)])  # fmt: skip
    return t, cdf


@pytest.mark.parametrize(("name", "sched", "loc", "scale"), CASES)
def test_draws_follow_the_density_by_kolmogorov_smirnov(name, sched, loc, scale):
    schedule = SCHEDULE_CASES[sched]
    g = torch.Generator().manual_seed(0)
    x = draw_times(name, N, schedule, location=loc, scale=scale, generator=g, dtype=torch.float64)
    t, cdf = grid_cdf(name, schedule, loc, scale)
    assert abs(float(cdf[-1]) - 1) < 2e-3  # the density integrates to 1 on (0, 1)
    model = torch.from_numpy(np.interp(x.sort().values.numpy(), t.numpy(), cdf.numpy()))
    empirical = torch.arange(1, N + 1, dtype=torch.float64) / N
    ks = float((model - empirical).abs().max())
    assert ks < 1.95 / math.sqrt(N) + 2e-3, ks  # 0.1% critical value, plus quadrature error


@pytest.mark.parametrize("sched", ["flow linear", "diffusion linear"])
@pytest.mark.parametrize("name", ["logit_normal", "lognormal"])
def test_histogram_matches_the_density(name, sched):
    schedule = SCHEDULE_CASES[sched]
    g = torch.Generator().manual_seed(1)
    x = draw_times(name, N, schedule, generator=g, dtype=torch.float64)
    edges = torch.linspace(0, 1, 21, dtype=torch.float64)
    counts = torch.histc(x, bins=20, min=0, max=1)
    t, cdf = grid_cdf(name, schedule, None, None)
    expected = N * torch.diff(torch.from_numpy(np.interp(edges.numpy(), t.numpy(), cdf.numpy())))
    # Poisson: each bin within 5 standard deviations (and a floor for nearly empty bins)
    assert ((counts - expected).abs() <= 5 * expected.sqrt() + 5).all(), (counts, expected)


def test_lognormal_on_the_linear_path_is_logit_normal():
    """On x_t = (1 - t) x0 + t eps, sigma / alpha = t / (1 - t), so log sigma ~ N(m, s^2) is
    logit t ~ N(m, s^2): both draws and densities agree in closed form."""
    path = PATHS["linear"]()
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    a = time_density("lognormal", t, path, -1.2, 1.2)
    b = time_density("logit_normal", t, path, -1.2, 1.2)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    closed = torch.exp(-((torch.logit(t) + 1.2) ** 2) / (2 * 1.44)) / (
        1.2 * math.sqrt(2 * math.pi) * t * (1 - t)
    )
    torch.testing.assert_close(b, closed, rtol=1e-6, atol=0)  # Normal(m, s) holds float32 m, s
    draws = draw_times("lognormal", N, path, generator=torch.Generator().manual_seed(2),
                       dtype=torch.float64)  # fmt: skip
    median = float(draws.median())
    assert abs(median - 1 / (1 + math.exp(1.2))) < 0.01  # sigmoid(m), m = -1.2


def test_logit_normal_median_and_uniform_moments():
    g = torch.Generator().manual_seed(3)
    x = draw_times("logit_normal", N, PATHS["linear"](), location=0.8, generator=g)
    assert abs(float(x.median()) - 1 / (1 + math.exp(-0.8))) < 0.01
    u = draw_times("uniform", N, PATHS["linear"](), generator=g, dtype=torch.float64)
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    # uniform ignores location and scale
    path = PATHS["linear"]()
    moved = draw_times("uniform", 10, path, location=3.0, scale=9.0,
                       generator=torch.Generator().manual_seed(4))  # fmt: skip
    plain = draw_times("uniform", 10, path, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(moved, plain, rtol=0, atol=0)
    assert (time_density("uniform", torch.rand(5), PATHS["linear"]()) == 1).all()


@pytest.mark.parametrize("name", TIME_SAMPLINGS)
def test_ranges_dtype_device_and_reproducibility(name):
    schedule = SCHEDULES["linear"]()
    extreme = {"location": 30.0 if name != "uniform" else None, "scale": 0.1}
    for kwargs in ({}, extreme, {"location": -30.0, "scale": 0.1}):
        x = draw_times(name, 1000, schedule, generator=torch.Generator().manual_seed(0), **kwargs)
        assert x.shape == (1000,) and x.dtype == torch.float32 and x.device.type == "cpu"
        assert bool(((x >= T_EPS) & (x <= 1 - T_EPS)).all())
    x64 = draw_times(name, 7, schedule, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert x64.dtype == torch.float64
    again = draw_times(name, 7, schedule, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(5))  # fmt: skip
    torch.testing.assert_close(x64, again, rtol=0, atol=0)
    assert draw_times(name, 0, schedule).shape == (0,)


def test_a_local_generator_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    draw_times("lognormal", 100, SCHEDULES["cosine"](), generator=torch.Generator().manual_seed(1))
    assert torch.equal(before, torch.random.get_rng_state())


def test_defaults_are_the_papers():
    assert timesteps.DEFAULT_LOCATION["logit_normal"] == 0.0  # SD3
    assert timesteps.DEFAULT_SCALE["logit_normal"] == 1.0
    assert timesteps.DEFAULT_LOCATION["lognormal"] == -1.2  # EDM's P_mean
    assert timesteps.DEFAULT_SCALE["lognormal"] == 1.2  # EDM's P_std


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "beta"}, "time sampling must be one of"),
        ({"scale": 0.0}, "scale > 0"),
        ({"scale": -1.0}, "scale > 0"),
        ({"location": math.inf}, "finite location"),
        ({"location": math.nan}, "finite location"),
    ],
)
def test_bad_options_are_value_errors(kwargs, match):
    args = {"name": "logit_normal", **kwargs}
    name = args.pop("name")
    with pytest.raises(ValueError, match=match):
        draw_times(name, 10, PATHS["linear"](), **args)
