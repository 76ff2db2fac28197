"""EDM Heun and UniPC against the closed forms of Gaussian data N(m, s^2 I).

For data N(m, s^2 I) and x_t = alpha x0 + sigma eps, the exact denoiser is
x0_hat = m + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha m), and the probability-flow ODE
maps x(t_a) to x(t_b) = alpha_b m + sqrt(alpha_b^2 s^2 + sigma_b^2)
/ sqrt(alpha_a^2 s^2 + sigma_a^2) (x(t_a) - alpha_a m): the references below.
"""

import math

import numpy as np
import pytest
import torch

from genlab.grids import time_grid
from genlab.models.diffusion_samplers import edm_gammas, edm_heun, unipc, unipc_orders
from genlab.schedules import SCHEDULES

M, S = 0.7, 0.5
SCHEDS = {name: SCHEDULES[name]() for name in ("linear", "cosine", "rectified")}
"""Two variance-preserving schedules and the rectified one (alpha = 1 - t, sigma = t)."""


def coefs(schedule, t: float) -> tuple[float, float]:
    tt = torch.tensor(t, dtype=torch.float64)
    return float(schedule.alpha(tt)), float(schedule.sigma(tt))


def gaussian_denoiser(schedule, calls=None):
    def denoise(x, t):
        assert t.ndim == 0 and t.dtype == x.dtype
        if calls is not None:
            calls.append((float(t), x.clone()))
        a, sg = coefs(schedule, float(t))
        x0 = M + a * S**2 / (a**2 * S**2 + sg**2) * (x - a * M)
        return x0, (x - a * x0) / sg if sg > 0 else torch.zeros_like(x)

    return denoise


def exact_flow(schedule, x, t_a: float, t_b: float):
    (a_a, s_a), (a_b, s_b) = coefs(schedule, t_a), coefs(schedule, t_b)
    return a_b * M + math.sqrt(a_b**2 * S**2 + s_b**2) / math.sqrt(a_a**2 * S**2 + s_a**2) * (
        x - a_a * M
    )


def start(n=64, d=2, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def slope(sampler, schedule, steps, t_max=1.0, t_min=1e-3):
    """The order p of error ~ steps^-p, fitted to max-abs errors against exact_flow."""
    x = start()
    errors = []
    for n in steps:
        grid = time_grid(schedule, "logsnr", n, t_max=t_max, t_min=t_min)
        out, _ = sampler(gaussian_denoiser(schedule), x, grid, schedule)
        errors.append((out - exact_flow(schedule, x, t_max, t_min)).abs().max().item())
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0], errors


@pytest.mark.parametrize("sched", SCHEDS, ids=str)
def test_heun_converges_at_second_order(sched):
    p, errors = slope(edm_heun, SCHEDS[sched], [16, 32, 64, 128])
    assert 1.8 < p < 2.3, (p, errors)
    assert errors[-1] < 5e-3


@pytest.mark.parametrize("sched", SCHEDS, ids=str)
def test_heun_in_t_converges_at_second_order(sched):
    """variable="t": the same Heun steps in the schedule's time (the rectified path's choice,
    where r(1) = 2e4 makes a step in r coarse: on its uniform 30-step grid, error 0.17 in r
    against 3e-3 in t), second order on every schedule."""
    p, errors = slope(lambda *a: edm_heun(*a, variable="t"), SCHEDS[sched], [16, 32, 64, 128])
    assert 1.8 < p < 2.3, (p, errors)
    assert errors[-1] < 5e-3
    with pytest.raises(ValueError, match="variable must be one of"):
        edm_heun(gaussian_denoiser(SCHEDS[sched]), start(4), [1.0, 0.0], SCHEDS[sched],
                 variable="sigma")  # fmt: skip


@pytest.mark.parametrize("sched", SCHEDS, ids=str)
@pytest.mark.parametrize(
    ("order", "variant", "low"), [(1, "bh2", 1.8), (2, "bh2", 2.6), (2, "bh1", 2.6)]
)
def test_unipc_order_one_and_two_with_corrector(sched, order, variant, low):
    """UniC raises UniP-p to order p + 1 (Zhao et al. 2023): measured about 2 and 3."""

    def sampler(*args):
        return unipc(*args, order=order, variant=variant)

    p, errors = slope(sampler, SCHEDS[sched], [32, 64, 128, 256])
    assert low < p < low + 0.8, (p, errors)


@pytest.mark.parametrize("sched", SCHEDS, ids=str)
def test_unipc_order_three_is_about_third_order_and_beats_order_two(sched):
    """The warm-up's first step (order 1 + corrector, local error h^3) caps order 3 at ~3."""
    s = SCHEDS[sched]
    p, errors = slope(lambda *a: unipc(*a, order=3), s, [64, 128, 256])
    assert 2.6 < p < 3.8, (p, errors)
    _, errors_2 = slope(lambda *a: unipc(*a, order=2), s, [64, 128, 256])
    assert all(e3 < e2 / 3 for e3, e2 in zip(errors, errors_2, strict=True))


def test_unipc_weights_reduce_to_dpm_solver_pp_2m_without_corrector():
    """UniP-2 (rho = 1/2, B(h) = e^-h - 1) is DPM-Solver++(2M): compare one step with the
    chain's `dpm_solver_pp_step` from the same history (no corrector: a 2-step grid's last)."""
    from genlab.models.diffusion_maths import dpm_solver_pp_step, half_log_snr

    s = SCHEDS["cosine"]
    grid = torch.tensor([0.8, 0.5, 0.3], dtype=torch.float64)
    calls = []
    x = start()
    out, nfe = unipc(gaussian_denoiser(s, calls), x, grid, s, order=2)
    assert nfe == 2 and unipc_orders(2, 2) == [1, 1]  # lower order final: the last step is 1
    out_2m, _ = unipc(gaussian_denoiser(s), x, grid, s, order=2, lower_order_final=False)
    ab = [coefs(s, float(t))[0] ** 2 for t in grid]
    d0 = gaussian_denoiser(s)(calls[1][1], torch.tensor(0.5, dtype=torch.float64))[0]
    d1 = gaussian_denoiser(s)(x, torch.tensor(0.8, dtype=torch.float64))[0]
    # the state at 0.5 after the corrector, recomputed from the sampler's step-1 on_step
    seen = []
    unipc(gaussian_denoiser(s), x, grid, s, order=2, lower_order_final=False,
          on_step=lambda k, t, z: seen.append(z))  # fmt: skip
    lams = [half_log_snr(ab[1]), half_log_snr(ab[0])]
    want = dpm_solver_pp_step(seen[0], [d0, d1], lams, ab[1], ab[2], 2)
    torch.testing.assert_close(out_2m, want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out, out_2m)


@pytest.mark.parametrize("sched", SCHEDS, ids=str)
def test_sdedit_start_below_one(sched):
    s = SCHEDS[sched]
    x = start()
    grid = time_grid(s, "logsnr", 64, t_max=0.6, t_min=1e-3)
    want = exact_flow(s, x, 0.6, 1e-3)
    for sampler in (edm_heun, unipc):
        out, _ = sampler(gaussian_denoiser(s), x, grid, s)
        assert (out - want).abs().max() < 5e-3


@pytest.mark.parametrize("sched", SCHEDS, ids=str)
def test_nfe_counts(sched):
    s = SCHEDS[sched]
    x = start(8)
    to_zero = time_grid(s, "karras", 10, t_min=1e-3, to_zero=True)
    for grid, heun_nfe in ((to_zero, 19), (to_zero[:-1], 18)):
        calls = []
        out, nfe = edm_heun(gaussian_denoiser(s, calls), x, grid, s)
        assert nfe == heun_nfe == len(calls) and torch.isfinite(out).all()
        calls = []
        out, nfe = unipc(gaussian_denoiser(s, calls), x, grid, s, order=3)
        assert nfe == len(grid) - 1 == len(calls) and torch.isfinite(out).all()


def test_a_last_step_to_zero_returns_the_denoised_state():
    s = SCHEDS["cosine"]
    grid = torch.tensor([1.0, 0.4, 0.0], dtype=torch.float64)
    for sampler in (edm_heun, unipc):
        calls = []
        out, _ = sampler(gaussian_denoiser(s, calls), start(), grid, s)
        t_last, x_last = calls[-1]
        assert t_last == pytest.approx(0.4)
        x0_hat, _ = gaussian_denoiser(s)(x_last, torch.tensor(0.4, dtype=torch.float64))
        torch.testing.assert_close(out, x0_hat, rtol=0, atol=0)


def test_orders_warm_up_and_step_down():
    assert unipc_orders(6, 3) == [1, 2, 3, 3, 2, 1]
    assert unipc_orders(6, 3, lower_order_final=False) == [1, 2, 3, 3, 3, 3]
    assert unipc_orders(1, 2) == [1]


def test_edm_gammas_follow_algorithm_two():
    ratios = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    g = edm_gammas(ratios, churn=1.2, s_tmin=0.5, s_tmax=50.0)
    torch.testing.assert_close(g, torch.tensor([0.0, 0.3, 0.3, 0.0], dtype=torch.float64))
    big = edm_gammas(ratios, churn=80.0, s_tmin=0.0, s_tmax=math.inf)
    assert torch.allclose(big, torch.full((4,), math.sqrt(2) - 1, dtype=torch.float64))


def test_churned_heun_samples_have_the_data_mean_and_variance():
    """From the exact marginal at EDM's sigma_max = 80 (r = sigma / alpha), churned Heun on
    EDM's grid lands on N(m, s^2). Measured (std): 0.522 / 0.506 / 0.5006 at 18 / 32 / 64
    steps without churn, 0.540 / 0.516 / 0.506 with churn = 0.2 steps (a larger
    discretisation error than the ODE's, shrinking with the steps)."""
    s = SCHEDS["cosine"]
    t_max = float(s.t_of_log_snr(torch.tensor(-2 * math.log(80.0), dtype=torch.float64)))
    a, sg = coefs(s, t_max)
    n = 20_000
    noise = torch.randn(n, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = a * M + math.sqrt(a**2 * S**2 + sg**2) * noise
    grid = time_grid(s, "karras", 64, t_max=t_max, t_min=2e-3, to_zero=True)
    gen = torch.Generator().manual_seed(2)
    out, nfe = edm_heun(gaussian_denoiser(s), x, grid, s, churn=13.0, generator=gen)
    assert nfe == 127
    # standard errors: mean 0.5 / sqrt(2e4) = 0.0035, std about 0.0025
    assert abs(out.mean().item() - M) < 0.015
    assert abs(out.std().item() - S) < 0.015
    deterministic, _ = edm_heun(gaussian_denoiser(s), x, grid, s)
    assert (out - deterministic).abs().mean() > 0.05  # churn moved the samples
    again, _ = edm_heun(gaussian_denoiser(s), x, grid, s, churn=13.0,
                        generator=torch.Generator().manual_seed(2))  # fmt: skip
    torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_churn_keeps_the_noise_level_below_t_one():
    """The raised level r^ = (1 + gamma) r_i is mapped back to t by t_of_log_snr and capped at
    t = 1; the denoiser sees the raised time."""
    s = SCHEDS["linear"]
    calls = []
    grid = time_grid(s, "logsnr", 4, t_max=1.0, t_min=0.05)
    edm_heun(gaussian_denoiser(s, calls), start(8), grid, s, churn=1.0,
             generator=torch.Generator().manual_seed(0))  # fmt: skip
    first = [t for t, _ in calls[::2]]
    assert first[0] == 1.0  # t_0 = 1 cannot be raised
    for t_eval, t_grid in zip(first[1:], grid[1:-1].tolist(), strict=True):
        a, sg = coefs(s, t_eval)
        a0, s0 = coefs(s, t_grid)
        assert sg / a == pytest.approx(1.25 * s0 / a0, rel=1e-9)


@pytest.mark.parametrize("sampler", [edm_heun, unipc])
def test_project_is_applied_and_used(sampler):
    """project pins coordinate 0 to alpha_t * 2 (an inpainting of the value 2): the output
    keeps it exactly, and the model is evaluated only at projected states."""
    s = SCHEDS["cosine"]
    seen_t = []

    def project(x, t):
        seen_t.append(t)
        x = x.clone()
        x[:, 0] = coefs(s, t)[0] * 2.0
        return x

    calls = []
    grid = time_grid(s, "logsnr", 8, t_max=0.9, t_min=1e-3)
    x = start()
    x[:, 0] = coefs(s, 0.9)[0] * 2.0
    out, _ = sampler(gaussian_denoiser(s, calls), x, grid, s, project=project)
    assert set(grid[1:].tolist()) == set(seen_t)
    assert (out[:, 0] == coefs(s, 1e-3)[0] * 2.0).all()
    # Heun's first evaluation of each step is at the projected state (its second, at the
    # Euler point, is not); UniPC evaluates only projected predictions
    for t, z in calls[2::2] if sampler is edm_heun else calls[1:]:
        torch.testing.assert_close(z[:, 0], torch.full_like(z[:, 0], coefs(s, t)[0] * 2.0))
    free, _ = sampler(gaussian_denoiser(s), x, grid, s)
    torch.testing.assert_close(out[:, 1], free[:, 1])  # coordinate 1 is independent


@pytest.mark.parametrize("sampler", [edm_heun, unipc])
def test_on_step_sees_every_step_and_stops(sampler):
    s = SCHEDS["cosine"]
    grid = time_grid(s, "karras", 6, t_min=1e-2, to_zero=True)
    seen = []
    out, _ = sampler(gaussian_denoiser(s), start(), grid, s,
                     on_step=lambda k, t, z: seen.append((k, t, z)))  # fmt: skip
    assert [k for k, _, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert [t for _, t, _ in seen] == grid[1:].tolist()
    torch.testing.assert_close(seen[-1][2], out, rtol=0, atol=0)
    stopped, nfe_3 = sampler(gaussian_denoiser(s), start(), grid, s, on_step=lambda k, t, z: k == 3)
    torch.testing.assert_close(stopped, seen[2][2], rtol=0, atol=0)
    assert nfe_3 == (6 if sampler is edm_heun else 4)
    if sampler is edm_heun:  # the first 3 steps do not depend on the rest of the grid
        head, _ = edm_heun(gaussian_denoiser(s), start(), grid[:4], s)
        torch.testing.assert_close(head, stopped, rtol=0, atol=0)


def test_float32_state_and_a_list_grid():
    s = SCHEDS["linear"]
    x = start().float()
    for sampler in (edm_heun, unipc):
        out, _ = sampler(gaussian_denoiser(s), x, [1.0, 0.5, 0.1, 0.0], s)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"churn": -1.0}, ValueError, "churn must be a number >= 0"),
        ({"churn": math.inf}, ValueError, "churn must be a number >= 0, finite"),
        ({"s_noise": math.nan}, ValueError, "s_noise must be a number"),
        ({"s_tmin": 2.0, "s_tmax": 1.0}, ValueError, "need s_tmin <= s_tmax"),
        ({"generator": 3}, TypeError, "CPU torch.Generator"),
        ({"project": 3}, TypeError, "project must be a callable or None"),
        ({"times": [0.0, 1.0]}, ValueError, "strictly decreasing"),
    ],
)
def test_edm_heun_rejects_bad_arguments(kwargs, error, match):
    s = SCHEDS["cosine"]
    times = kwargs.pop("times", [1.0, 0.0])
    with pytest.raises(error, match=match):
        edm_heun(gaussian_denoiser(s), start(4), times, s, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"order": 4}, ValueError, "order must be 1, 2 or 3"),
        ({"order": True}, ValueError, "order must be 1, 2 or 3"),
        ({"variant": "bh3"}, ValueError, "variant must be one of bh1, bh2"),
        ({"on_step": "x"}, TypeError, "on_step must be a callable or None"),
    ],
)
def test_unipc_rejects_bad_arguments(kwargs, error, match):
    s = SCHEDS["cosine"]
    with pytest.raises(error, match=match):
        unipc(gaussian_denoiser(s), start(4), [1.0, 0.0], s, **kwargs)


def test_samplers_reject_a_bad_denoiser_and_alpha_zero():
    from genlab.schedules import PATHS

    s = SCHEDS["cosine"]
    with pytest.raises(TypeError, match="denoise must be a callable"):
        unipc(None, start(4), [1.0, 0.0], s)
    with pytest.raises(ValueError, match="shaped like x"):
        edm_heun(lambda x, t: (x[:1], x), start(4), [1.0, 0.0], s)
    path = PATHS["linear"]()
    with pytest.raises(ValueError, match=r"alpha.*start the grid below t = 1"):
        edm_heun(gaussian_denoiser(path), start(4), [1.0, 0.0], path)
    with pytest.raises(ValueError, match="start the grid below t = 1"):
        unipc(gaussian_denoiser(path), start(4), [1.0, 0.5], path)


def test_heun_in_t_starts_at_pure_noise_and_churns_below_it():
    """variable="t" takes a flow path's t = 1 (alpha = 0) as its first time: that step is
    unraised (the denoiser sees t = 1 first), later steps inside [s_tmin, s_tmax] are raised,
    and the churned chain still lands on N(m, s^2); variable="r" refuses alpha = 0."""
    from genlab.schedules import PATHS

    path = PATHS["linear"]()
    n = 20_000
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grid = torch.linspace(1.0, 0.0, 41, dtype=torch.float64)
    calls = []
    gen = torch.Generator().manual_seed(4)
    out, nfe = edm_heun(gaussian_denoiser(path, calls), x, grid, path, churn=40.0, s_tmin=0.1,
                        s_tmax=3.0, generator=gen, variable="t")  # fmt: skip
    assert nfe == 79 and calls[0][0] == 1.0
    off_grid = sorted(t for t, _ in calls if min(abs(t - float(g)) for g in grid) > 1e-9)
    r = grid[1:-1] / (1 - grid[1:-1])  # the starts below t = 1; gamma = min(40 / 40, sqrt 2 - 1)
    r_hat = (1 + math.sqrt(2) - 1) * r[(r >= 0.1) & (r <= 3.0)]
    expected = sorted((r_hat / (1 + r_hat)).tolist())  # t of r^ on the straight path
    assert len(expected) > 10
    np.testing.assert_allclose(off_grid, expected, rtol=1e-7)  # t_of_log_snr in float64
    assert abs(out.mean().item() - M) < 0.015 and abs(out.std().item() - S) < 0.015
    with pytest.raises(ValueError, match="start the grid below t = 1"):
        edm_heun(gaussian_denoiser(path), x[:4], grid, path, variable="r")
