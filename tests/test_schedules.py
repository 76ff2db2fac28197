"""Schedules: coefficients against closed forms, derivatives against autograd, inverses."""

import math

import numpy as np
import pytest
import torch

from genlab.schedules import (
    LOG_SNR_END,
    PATHS,
    SCHEDULES,
    CosinePath,
    CosineSchedule,
    LinearBetaSchedule,
    LinearPath,
    RectifiedSchedule,
)

ALL = [LinearPath(), LinearPath(0.01), CosinePath(), LinearBetaSchedule(), CosineSchedule(),
       RectifiedSchedule(), RectifiedSchedule(0.1)]  # fmt: skip
VP = [CosinePath(), LinearBetaSchedule(), CosineSchedule()]
INTERIOR = torch.linspace(0.01, 0.99, 41, dtype=torch.float64)


def test_registries_name_the_classes():
    assert {"linear": LinearPath, "vp": CosinePath} == PATHS
    assert {"linear": LinearBetaSchedule, "cosine": CosineSchedule,
            "rectified": RectifiedSchedule} == SCHEDULES  # fmt: skip


@pytest.mark.parametrize("s", ALL, ids=repr)
def test_derivatives_match_autograd(s):
    t = INTERIOR.clone().requires_grad_(True)
    for coef, deriv in ((s.alpha, s.d_alpha), (s.sigma, s.d_sigma)):
        (grad,) = torch.autograd.grad(coef(t).sum(), t)
        torch.testing.assert_close(deriv(t.detach()), grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("s", ALL, ids=repr)
def test_log_snr_is_decreasing_and_inverted(s):
    lam = s.log_snr(INTERIOR)
    assert (lam.diff() < 0).all()
    torch.testing.assert_close(s.t_of_log_snr(lam), INTERIOR, rtol=0, atol=1e-9)
    # the closed-form inverses agree with the generic bisection of the base class
    generic = type(s).__mro__[-2].t_of_log_snr(s, lam)
    torch.testing.assert_close(generic, INTERIOR, rtol=0, atol=1e-9)


@pytest.mark.parametrize("s", ALL, ids=repr)
def test_log_snr_is_log_alpha2_over_sigma2(s):
    expected = torch.log(s.alpha(INTERIOR) ** 2 / s.sigma(INTERIOR) ** 2)
    torch.testing.assert_close(s.log_snr(INTERIOR), expected)


@pytest.mark.parametrize("s", VP, ids=repr)
def test_variance_preserving(s):
    torch.testing.assert_close(s.alpha(INTERIOR) ** 2 + s.sigma(INTERIOR) ** 2,
                               torch.ones_like(INTERIOR))  # fmt: skip


def test_variance_preserving_flags():
    assert all(s.variance_preserving for s in VP if not isinstance(s, CosinePath))
    assert not RectifiedSchedule.variance_preserving and not LinearPath.variance_preserving


def test_rectified_schedule_is_the_straight_path_ending_at_log_snr_end():
    """alpha = 1 - (1 - a_end) t, sigma = t (SD3's path with alpha(1) = a_end > 0), by hand."""
    s = RectifiedSchedule()
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    a_end = math.exp(LOG_SNR_END / 2)
    torch.testing.assert_close(s.alpha(t), 1 - (1 - a_end) * t)
    torch.testing.assert_close(s.sigma(t), t)
    assert float(s.log_snr(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(LOG_SNR_END)
    assert float(s.log_snr(torch.tensor(0.5, dtype=torch.float64))) == pytest.approx(
        2 * math.log((1 - (1 - a_end) / 2) / 0.5)
    )
    # not variance preserving: alpha^2 + sigma^2 is about 1/2 half-way
    assert float(s.alpha(t[2]) ** 2 + s.sigma(t[2]) ** 2) == pytest.approx(0.5, abs=1e-4)
    x0, eps = torch.randn(5, 3), torch.randn(5, 3)
    tt = torch.rand(5)
    torch.testing.assert_close(s.velocity(x0, eps, tt), -(1 - a_end) * x0 + eps)
    with pytest.raises(ValueError, match="alpha_end"):
        RectifiedSchedule(0.0)


def test_linear_path_endpoints_and_velocity():
    s = LinearPath(sigma_min=0.1)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(s.alpha(t), torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(s.sigma(t), torch.tensor([0.1, 1.0], dtype=torch.float64))
    x0, eps = torch.randn(5, 3), torch.randn(5, 3)
    tt = torch.rand(5)
    expected_xt = (1 - tt)[:, None] * x0 + (0.1 + 0.9 * tt)[:, None] * eps
    torch.testing.assert_close(s.marginal(x0, eps, tt), expected_xt)
    torch.testing.assert_close(s.velocity(x0, eps, tt), -x0 + 0.9 * eps)


def test_marginal_broadcasts_over_images_and_keeps_dtype():
    s = CosineSchedule()
    x0, eps = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t = torch.rand(4)
    xt = s.marginal(x0, eps, t)
    assert xt.dtype == torch.float32 and xt.shape == x0.shape
    i = 2
    torch.testing.assert_close(xt[i], s.alpha(t[i]) * x0[i] + s.sigma(t[i]) * eps[i])


def test_linear_betas_match_ddpm_product():
    """alpha_bar(i/T) from the continuous view against DDPM's discrete prod (1 - beta_i)."""
    T = 1000
    betas = np.linspace(1e-4, 0.02, T)
    ddpm = np.concatenate([[1.0], np.cumprod(1 - betas)])
    ours = LinearBetaSchedule(timesteps=T).discrete_alpha_bars(T).numpy()
    assert ours.dtype == np.float64 and ours.shape == (T + 1,)
    # log prod(1 - beta) = -sum beta - sum beta^2 / 2 - ...: the continuous view keeps the first
    # term, so the gap in log alpha_bar is at most about sum beta^2 / 2 (0.07 at i = T).
    gap = np.abs(np.log(ours) - np.log(ddpm))
    steps = np.arange(T + 1) / T
    integral = T * (1e-4 * steps + (0.02 - 1e-4) * steps**2 / 2)  # the continuous -log alpha_bar
    first_order = np.abs(np.concatenate([[0.0], np.cumsum(betas)]) - integral)
    bound = first_order + 0.5 * np.concatenate([[0.0], np.cumsum(betas**2)]) * 1.05 + 1e-12
    assert (gap <= bound).all()
    assert gap[-1] > 0.5 * bound[-1]  # and it is that term, not something larger hidden by slack
    assert (np.diff(ours) < 0).all() and ours[0] == 1.0


def test_cosine_schedule_is_nichol_dhariwal_with_time_scaled():
    s, T = 0.008, 1000
    steps = np.arange(T + 1) / T

    def f(u):
        return np.cos((u + s) / (1 + s) * np.pi / 2) ** 2

    schedule = CosineSchedule(s)
    c = schedule._c  # time is scaled by c < 1 so that log_snr(1) is finite
    assert 0.999 < c < 1
    ours = schedule.discrete_alpha_bars(T).numpy()
    np.testing.assert_allclose(ours, f(c * steps) / f(0), rtol=1e-10, atol=0)
    np.testing.assert_allclose(ours[:900], f(steps[:900]) / f(0), rtol=1e-3)
    assert (np.diff(ours) < 0).all()
    assert math.isclose(float(CosineSchedule(s).log_snr(torch.tensor(1.0))), LOG_SNR_END,
                        rel_tol=1e-9)  # fmt: skip


def test_float32_in_float32_out_and_integer_times_refused():
    s = LinearBetaSchedule()
    assert s.alpha(torch.rand(3)).dtype == torch.float32
    with pytest.raises(TypeError, match="float"):
        s.alpha(torch.tensor([1, 2]))


@pytest.mark.parametrize(
    "make",
    [
        lambda: LinearPath(sigma_min=1.0),
        lambda: LinearPath(sigma_min=-0.1),
        lambda: LinearBetaSchedule(beta_start=0.0),
        lambda: LinearBetaSchedule(beta_start=0.1, beta_end=0.01),
        lambda: LinearBetaSchedule(timesteps=0),
        lambda: CosineSchedule(s=-1.0),
    ],
)
def test_impossible_parameters_raise(make):
    with pytest.raises(ValueError):
        make()


def test_discrete_alpha_bars_checks_timesteps():
    with pytest.raises(ValueError, match="timesteps"):
        CosineSchedule().discrete_alpha_bars(0)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_data_end_is_exact_not_nan(name):
    """At t = 0 every VP schedule is the data itself: sigma = 0, alpha = 1, log-SNR = +inf
    (the cosine schedule's g(0) rounded to -2e-18 once made sigma(0) NaN)."""
    schedule = SCHEDULES[name]()
    t = torch.tensor(0.0, dtype=torch.float64)
    assert float(schedule.sigma(t)) == 0.0
    assert float(schedule.alpha(t)) == 1.0
    assert math.isinf(float(schedule.log_snr(t))) and float(schedule.log_snr(t)) > 0
