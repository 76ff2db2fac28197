"""Diffusion: the optimal Gaussian denoiser through every sampler and the PF-ODE likelihood,
schedule identities against direct Gaussian conditioning, the bound, errors, save/load, the CLI."""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import genlab
from genlab.cli import run
from genlab.data import load_dataset
from genlab.models import Diffusion, FlowMatching
from genlab.models.diffusion import (
    ddim_step,
    ddpm_step,
    dpm_solver_pp_orders,
    dpm_solver_pp_sde_step,
    dpm_solver_pp_step,
    from_x0_eps,
    half_log_snr,
    posterior,
    sampling_times,
    to_x0_eps,
)
from genlab.schedules import SCHEDULES, Schedule

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN = np.array([1.0, -2.0])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])
LOC, SCALE = torch.tensor([0.7, -1.8]), torch.tensor([1.3, 0.6])  # a non-trivial standardisation
N = 6000
FIXTURES = Path(__file__).parent / "fixtures" / "v1"


# -- the closed-form optimal denoiser of Gaussian data --------------------------------------------
class GaussianDenoiser(nn.Module):
    """The optimal prediction for model-space data z0 ~ N(m, S), computed in float64:

    x_t ~ N(alpha m, C),  C = alpha^2 S + sigma^2 I,  E[eps | x_t] = sigma C^{-1} (x_t - alpha m),
    E[z0 | x_t] = m + alpha S C^{-1} (x_t - alpha m),  v = alpha eps - sigma z0.
    """

    def __init__(self, mean, cov, schedule: Schedule, prediction: str):
        super().__init__()
        self.m = torch.as_tensor(mean, dtype=torch.float64)
        self.S = torch.as_tensor(cov, dtype=torch.float64)
        self.schedule, self.prediction = schedule, prediction

    def forward(self, x, t, y=None):
        t = t.double()
        a, s = self.schedule.alpha(t)[:, None, None], self.schedule.sigma(t)[:, None, None]
        cov_t = a**2 * self.S + s**2 * torch.eye(len(self.m), dtype=torch.float64)
        r = torch.linalg.solve(cov_t, (x.double() - a[:, :, 0] * self.m)[:, :, None])
        eps = (s * r)[:, :, 0]
        x0 = self.m + (a * self.S @ r)[:, :, 0]
        out = {"eps": eps, "x0": x0, "v": a[:, :, 0] * eps - s[:, :, 0] * x0}[self.prediction]
        return out.to(x.dtype)


def gaussian_diffusion(prediction="eps", schedule="linear", **options) -> Diffusion:
    """A Diffusion on 2-D points whose net is the exact denoiser of N(MEAN, COV) (data space)."""
    model = Diffusion(schedule, prediction, **options)
    fitted = {"kind": "points", "net": "mlp", "levels": None, "n_classes": None}
    model._build((2,), fitted)
    model.event_shape = (2,)
    model.data_loc.copy_(LOC)
    model.data_scale.copy_(SCALE)
    m = (MEAN - LOC.numpy()) / SCALE.numpy()
    S = COV / np.outer(SCALE.numpy(), SCALE.numpy())
    model.net = GaussianDenoiser(m, S, model.schedule, prediction)
    return model.eval()


def assert_gaussian_moments(x: torch.Tensor, n_sigma: float = 5.0):
    """Sample mean and covariance of x (n, 2) against MEAN and COV, within n_sigma standard
    errors (mean: sqrt(S_ii / n); covariance: sqrt((S_ii S_jj + S_ij^2) / n))."""
    x = x.double().numpy()
    n = len(x)
    se_mean = np.sqrt(np.diag(COV) / n)
    np.testing.assert_array_less(np.abs(x.mean(0) - MEAN), n_sigma * se_mean)
    se_cov = np.sqrt((np.outer(np.diag(COV), np.diag(COV)) + COV**2) / n)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - COV), n_sigma * se_cov)


@pytest.mark.parametrize(
    "method, options",
    [
        ("ddpm", {"steps": 1000}),
        ("ddpm", {"steps": 100}),
        ("ddim", {"steps": 100}),
        ("ddim", {"steps": 100, "eta": 1.0}),
        ("dpm++", {"steps": 25, "eta": 0.0, "grid": "quadratic"}),  # 3M, the ODE
        ("dpm++", {"steps": 100, "eta": 1.0}),  # SDE 2M on the uniform grid
        ("dpm++", {"steps": 25, "order": 2, "grid": "logsnr"}),
        ("dpm++", {"steps": 40, "order": 1, "eta": 0.0}),
        ("dpm++", {"steps": 50, "grid": "uniform"}),
        ("dpm++", {"steps": 25, "grid": "power"}),
        ("heun", {"steps": 30}),  # 2nd order: at 15 steps the covariance is 10% off
        ("heun", {"steps": 30, "churn": 3.0, "s_tmax": 50.0}),
        ("heun", {"steps": 30, "grid": "logsnr"}),
        ("unipc", {"steps": 20}),
        ("unipc", {"steps": 20, "order": 2, "grid": "karras"}),
        ("dpm++", {"steps": 25, "grid": "karras", "eta": 0.0}),
        ("dpm++", {"steps": 50, "eta": 1.0}),
        ("ddim", {"steps": 50, "grid": "karras"}),
        ("ode", {"steps": 50, "solver": "heun"}),
        ("ode", {"steps": 20, "solver": "rk4"}),
        ("ode", {}),
    ],
)
def test_every_sampler_draws_the_gaussian(method, options):
    model = gaussian_diffusion()
    x = model.sample(N, seed=1, method=method, **options)
    assert x.shape == (N, 2)
    assert_gaussian_moments(x)
    expected_nfe = options.get("steps", 1000)
    if method == "ode" and options:
        expected_nfe = options["steps"] * {"heun": 2, "rk4": 4}[options["solver"]]
    if method == "heun":  # 2 per step, 1 for the last step on a grid ending at 0 (uniform)
        expected_nfe = 2 * options["steps"] - (options.get("grid", "uniform") == "uniform")
    if options:
        assert model.nfe_ == expected_nfe
    else:
        assert model.nfe_ > 10  # dopri5: adaptive


@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_parameterisations_and_schedules_draw_the_gaussian(prediction, schedule):
    model = gaussian_diffusion(prediction, schedule)
    assert_gaussian_moments(model.sample(N, seed=2, method="dpm++", steps=30))
    assert_gaussian_moments(model.sample(N, seed=3, method="ddim", steps=100))


def test_too_few_deterministic_steps_are_detectably_wrong():
    """The moment check can fail: DDIM with 2 uniform steps misses the covariance."""
    x = gaussian_diffusion().sample(N, seed=1, method="ddim", steps=2)
    with pytest.raises(AssertionError):
        assert_gaussian_moments(x)


def test_pf_ode_log_prob_is_the_gaussian_log_density():
    model = gaussian_diffusion()
    x = torch.from_numpy(stats.multivariate_normal(MEAN, COV).rvs(50, random_state=0)).float()
    expected = stats.multivariate_normal(MEAN, COV).logpdf(x.double().numpy())
    assert model.log_prob_kind == "exact"
    got = model.log_prob(x).double().numpy()
    # 1e-2: the ODE starts at t = 1 / T (a blur of sigma = 0.01) and ends at N(0, I) rather
    # than N(alpha_1 m, ...) with alpha_1 = 7e-3; both shift log p by a few 1e-3 here.
    np.testing.assert_allclose(got, expected, atol=1e-2)
    fixed = model.log_prob(x, method="rk4", steps=40).double().numpy()
    np.testing.assert_allclose(fixed, expected, atol=1e-2)


def test_hutchinson_log_prob_is_unbiased_around_the_exact_value():
    """Each row draws its own probe: 400 copies of a point average to its exact log p."""
    exact = gaussian_diffusion()
    estimate = gaussian_diffusion(exact_trace_max_dim=1, hutchinson_probes=1)
    assert estimate.log_prob_kind == "estimate"
    x = torch.tensor([[0.0, -2.5]])
    lp = float(exact.log_prob(x, method="rk4", steps=10))
    est = estimate.log_prob(x.expand(400, 2), method="rk4", steps=10, seed=0).double()
    assert est.std() > 0.05  # a genuine estimate ...
    assert abs(float(est.mean()) - lp) < 4 * float(est.std()) / 20 + 0.01  # ... unbiased


def test_vlb_lies_below_the_exact_log_density():
    """vlb <= log p in expectation (bits: the bound's NLL >= the exact NLL), and close to it."""
    model = gaussian_diffusion()
    x = torch.from_numpy(stats.multivariate_normal(MEAN, COV).rvs(200, random_state=1)).float()
    exact = stats.multivariate_normal(MEAN, COV).logpdf(x.double().numpy()).mean()
    vlb = float(model.vlb(x, seed=0).mean())
    assert vlb <= exact + 0.01
    assert exact - vlb < 0.1


# -- schedule identities, conversions, steps -----------------------------------------------------
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_alpha_bar_is_monotone(name):
    ab = SCHEDULES[name]().discrete_alpha_bars(1000)
    assert ab[0] == pytest.approx(1.0) and 0 < ab[-1] < 1e-3
    assert (ab[1:] < ab[:-1]).all()


@pytest.mark.parametrize("ab_t, ab_s", [(0.5, 0.9), (0.01, 0.02), (0.98, 0.999)])
def test_posterior_matches_gaussian_conditioning(ab_t, ab_s):
    """q(x_s | x_t, x0) from the joint Gaussian of (x_s, x_t) given x0:
    Var x_s = 1 - ab_s, Var x_t = 1 - ab_t, Cov = sqrt(ab_t / ab_s) (1 - ab_s)."""
    c0, ct, var = posterior(ab_t, ab_s)
    cov = math.sqrt(ab_t / ab_s) * (1 - ab_s)
    gain = cov / (1 - ab_t)  # mean = sqrt(ab_s) x0 + gain (x_t - sqrt(ab_t) x0)
    assert ct == pytest.approx(gain)
    assert c0 == pytest.approx(math.sqrt(ab_s) - gain * math.sqrt(ab_t))
    assert var == pytest.approx(1 - ab_s - cov**2 / (1 - ab_t))


def test_ddim_with_eta_one_is_the_ddpm_step():
    g = torch.Generator().manual_seed(0)
    x_t, x0, noise = (torch.randn(5, 3, generator=g) for _ in range(3))
    ab_t, ab_s = 0.3, 0.7
    eps = (x_t - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
    torch.testing.assert_close(ddim_step(x0, eps, ab_t, ab_s, 1.0, noise),
                               ddpm_step(x_t, x0, ab_t, ab_s, noise))  # fmt: skip
    assert not torch.allclose(ddim_step(x0, eps, ab_t, ab_s, 0.0, noise),
                              ddpm_step(x_t, x0, ab_t, ab_s, noise))  # fmt: skip


def test_ddim_eta_one_and_ddpm_share_their_marginals():
    """Same seed, same noise: the two samplers take the same steps, so the same samples."""
    model = gaussian_diffusion()
    a = model.sample(
        500, seed=4, method="ddim", steps=10, eta=1.0, grid="uniform", return_trajectory=True
    )
    b = model.sample(500, seed=4, method="ddpm", steps=10, return_trajectory=True)
    torch.testing.assert_close(a.trajectory, b.trajectory, atol=1e-4, rtol=1e-4)
    assert a.trajectory.shape == (11, 500, 2) and a.times[0] == 1 and a.times[-1] == 0


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_conversions_round_trip(prediction):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    t = torch.rand(4, 1, generator=g).double() * 0.98 + 0.01
    alpha, sigma = torch.cos(t * math.pi / 2).float(), torch.sin(t * math.pi / 2).float()
    x_t = alpha * x0 + sigma * eps
    out = from_x0_eps(x0, eps, alpha, sigma, prediction)
    got_x0, got_eps = to_x0_eps(out, x_t, alpha, sigma, prediction)
    torch.testing.assert_close(got_x0, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_eps, eps, atol=1e-4, rtol=1e-4)


def test_sampling_grids():
    schedule = SCHEDULES["linear"]()
    uniform = sampling_times(schedule, 1000, 4, "uniform")
    torch.testing.assert_close(
        uniform, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    )
    logsnr = sampling_times(schedule, 1000, 5, "logsnr")
    assert logsnr[0] == 1 and logsnr[-1] == pytest.approx(1e-3)
    steps = schedule.log_snr(logsnr).diff()
    torch.testing.assert_close(steps, steps.mean().expand(5), atol=1e-6, rtol=1e-6)
    quadratic = sampling_times(schedule, 1000, 4, "quadratic")
    assert quadratic[0] == 1 and quadratic[-1] == pytest.approx(1e-3)
    roots = quadratic.sqrt().diff()
    torch.testing.assert_close(roots, roots.mean().expand(4))


def test_dpm_solver_pp_orders_warm_up_and_step_down():
    assert dpm_solver_pp_orders(6, 3) == [1, 2, 3, 3, 2, 1]
    assert dpm_solver_pp_orders(5, 2) == [1, 2, 2, 2, 1]
    assert dpm_solver_pp_orders(2, 3) == [1, 1]


def _dpm_solver_pp_error(steps: int, order: int) -> float:
    """Max error at t = 0.05 of `steps` DPM-Solver++ updates of fixed order (after warm-up) on
    1-D data N(m, v), against the exact probability-flow map (linear: with c_t = alpha_t^2 v +
    sigma_t^2, x_t = alpha_t m + sqrt(c_t / c_1) (x_1 - alpha_1 m)); the data prediction is
    E[x_0 | x_t] = m + alpha_t v (x_t - alpha_t m) / c_t.
    """
    schedule, m, v, t_end = SCHEDULES["linear"](), 0.7, 0.05, 0.05
    lam_ends = schedule.log_snr(torch.tensor([1.0, t_end], dtype=torch.float64))
    times = schedule.t_of_log_snr(
        torch.linspace(*lam_ends.tolist(), steps + 1, dtype=torch.float64)
    )
    times[0], times[-1] = 1.0, t_end
    ab = schedule.alpha_bar(times).tolist()
    x1 = torch.tensor([-1.5, 0.3, 2.0], dtype=torch.float64)
    x, history, lams = x1.clone(), [], []
    for k in range(steps):
        a = math.sqrt(ab[k])
        x0 = m + a * v * (x - a * m) / (a * a * v + 1 - ab[k])
        history, lams = [x0, *history[:2]], [half_log_snr(ab[k]), *lams[:2]]
        x = dpm_solver_pp_step(x, history, lams, ab[k], ab[k + 1], min(order, k + 1))
    a1, a = math.sqrt(ab[0]), math.sqrt(ab[-1])
    exact = a * m + math.sqrt(a * a * v + 1 - ab[-1]) / math.sqrt(a1 * a1 * v + 1 - ab[0]) * (
        x1 - a1 * m
    )
    return float((x - exact).abs().max())


@pytest.mark.parametrize("order, low, high", [(1, 0.9, 1.1), (2, 1.9, 2.5), (3, 2.5, 4.2)])
def test_dpm_solver_pp_converges_at_its_order(order, low, high):
    """The observed order log2(err(N) / err(2N)) on N = 20, 40, 80 (3M: the published
    coefficients, whose order approaches 3 on this range)."""
    errors = [_dpm_solver_pp_error(n, order) for n in (20, 40, 80)]
    rates = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    assert all(low <= r <= high for r in rates), (errors, rates)


def test_sde_dpm_solver_pp_is_ddpm_at_first_order_and_the_ode_at_eta_zero():
    g = torch.Generator().manual_seed(2)
    x, x0, x0_old, noise = (torch.randn(5, 2, generator=g) for _ in range(4))
    ab_t, ab_s, ab_old = 0.3, 0.6, 0.1
    lams = [half_log_snr(ab_t), half_log_snr(ab_old)]
    torch.testing.assert_close(dpm_solver_pp_sde_step(x, [x0], lams, ab_t, ab_s, 1, 1.0, noise),
                               ddpm_step(x, x0, ab_t, ab_s, noise))  # fmt: skip
    for order in (1, 2):
        torch.testing.assert_close(
            dpm_solver_pp_sde_step(x, [x0, x0_old], lams, ab_t, ab_s, order, 0.0, noise),
            dpm_solver_pp_step(x, [x0, x0_old], lams, ab_t, ab_s, order),
        )


def test_dpm_solver_pp_first_order_is_ddim():
    x, x0 = torch.randn(5, 2), torch.randn(5, 2)
    ab_t, ab_s = 0.3, 0.6
    eps = (x - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
    got = dpm_solver_pp_step(x, [x0], [half_log_snr(ab_t)], ab_t, ab_s, 1)
    torch.testing.assert_close(got, ddim_step(x0, eps, ab_t, ab_s, 0.0, torch.zeros(5, 2)))


def test_guidance_combines_cond_and_null_in_one_batch():
    model = gaussian_diffusion()
    model.n_classes_ = 3
    calls = []

    class Fake(nn.Module):
        def forward(self, x, t, y):
            calls.append(len(x))
            return y[:, None].float().expand(len(x), 2)  # the label as the output

    model.net = Fake()
    y = torch.tensor([0, 2])
    out = model.denoiser(torch.zeros(2, 2), torch.ones(2), y, guidance=0.5)
    torch.testing.assert_close(out, torch.tensor([[-1.5, -1.5], [1.5, 1.5]]))  # 3 + 1.5 (y - 3)
    assert calls == [4]


def test_log_prob_seeds_its_probes_as_the_flow_does():
    """The seed semantics of the shared ODE log_prob (tested in full in test_flow.py), on a
    diffusion model: seed=None is fresh probes (no longer seed 0), and neither sample nor
    log_prob touches the global RNG."""
    model = gaussian_diffusion(exact_trace_max_dim=1)
    x = torch.from_numpy(stats.multivariate_normal(MEAN, COV).rvs(20, random_state=3)).float()
    state = torch.get_rng_state()
    default = model.log_prob(x, method="euler", steps=2)
    assert model.log_prob_estimator_.startswith("hutchinson")
    assert not torch.equal(model.log_prob(x, seed=None, method="euler", steps=2), default)
    model.sample(5, method="ddpm", steps=3)  # seed=None: noise from a generator of its own
    assert torch.equal(torch.get_rng_state(), state)


def test_both_families_pick_the_same_net():
    """One rule (`genlab.models.continuous.auto_net`): an MLP for the 8 x 8 digits, for either
    family; a UNet only for larger square images."""
    digits = load_dataset("digits", n=32)
    for cls in (Diffusion, FlowMatching):
        model = cls(max_steps=1, hidden=8, warmup_steps=0).fit(digits)
        assert model.net_ == "mlp" and model.kind_ == "image", cls
    big = torch.rand(4, 1, 20, 20)
    model = Diffusion(max_steps=1, base_channels=4, warmup_steps=0, timesteps=10).fit(big)
    assert model.net_ == "unet" and model.sample(2, seed=0, steps=2).shape == (2, 1, 20, 20)


def test_declared_capabilities():
    assert Diffusion.sample_options == {"steps", "method", "eta", "y", "guidance",
                                        "return_trajectory", "grid", "order", "solver", "rtol",
                                        "atol", "churn", "s_tmin", "s_tmax", "s_noise", "times",
                                        "init", "strength"}  # fmt: skip
    assert Diffusion.log_prob_options == {"steps", "method", "rtol", "atol", "seed"}
    assert Diffusion.quick_log_prob == {"method": "rk4", "steps": 4}
    picture = Diffusion.trajectory_picture
    assert (picture.name, dict(picture.options), picture.paths, picture.images,
            picture.animate) == ("denoising", {"method": "dpm++", "steps": 20}, 300, 8,
                                 False)  # fmt: skip
    model = Diffusion("cosine", "v", 50, "mlp")  # the positional options
    assert (model.config.schedule, model.config.prediction, model.config.timesteps,
            model.config.net) == ("cosine", "v", 50, "mlp")  # fmt: skip
    assert model.schedule.alpha(torch.tensor(0.5)) == SCHEDULES["cosine"]().alpha(
        torch.tensor(0.5))  # fmt: skip


# -- training, images, save / load, errors ---------------------------------------------------------
def test_fit_sample_save_load(tmp_path):
    model = Diffusion(hidden=32, max_steps=40, warmup_steps=5, batch_size=64)
    model.fit(load_dataset("moons", n=300))
    assert model.kind_ == "points" and model.net_ == "mlp"
    summary = model.fit_summary()  # the rows `genlab fit` prints
    assert summary["steps"] == 40 and math.isfinite(summary["final loss"])
    # the points recipe (genlab.models.recipes) sets the schedule and the prediction
    rows = {"schedule": "rectified", "prediction": "v", "net": "mlp", "log_prob": "exact",
            "conditional": False}  # fmt: skip
    assert {k: summary[k] for k in rows} == rows
    s = model.sample(50, seed=0, method="dpm++", steps=15)
    assert s.shape == (50, 2) and model.nfe_ == 15
    run_ = model.sample(8, seed=0, method="ode", steps=5, solver="euler", return_trajectory=True)
    assert run_.trajectory.shape == (6, 8, 2) and model.nfe_ == 5
    model.save(tmp_path / "m")
    loaded = genlab.load(tmp_path / "m")
    torch.testing.assert_close(loaded.sample(50, seed=0, method="dpm++", steps=15), s)
    x = torch.randn(5, 2)
    torch.testing.assert_close(loaded.log_prob(x, method="rk4", steps=4),
                               model.log_prob(x, method="rk4", steps=4))  # fmt: skip


def test_dpm_solver_pp_defaults_to_2m_on_the_uniform_grid():
    """dpm++ without order or grid is 2M on the uniform grid (3M quadratic before 2026-12-03,
    still there when asked for), and at 15 NFE it draws the Gaussian of the exact denoiser."""
    model = gaussian_diffusion("v", "rectified")
    default = model.sample(N, seed=1, method="dpm++", steps=15)
    assert model.nfe_ == 15
    explicit = model.sample(N, seed=1, method="dpm++", steps=15, order=2, grid="uniform")
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    old = model.sample(N, seed=1, method="dpm++", steps=15, order=3, grid="quadratic")
    assert float((old - default).abs().max()) > 1e-4
    assert_gaussian_moments(default)


def test_the_points_default_sampler_is_the_churned_heun_of_the_config(tmp_path):
    """The points recipe sets config.sample_method "heun", 25 steps and churn 40 in
    CHURN_WINDOW: sample() without a method is exactly that call (49 NFE), saved and loaded;
    a given method or churn option wins; given config options win over the recipe's."""
    from genlab.models.diffusion import CHURN_WINDOW

    model = Diffusion(hidden=16, max_steps=5, warmup_steps=1, batch_size=32)
    model.fit(load_dataset("moons", n=100))
    cfg = model.config
    assert (cfg.sample_method, cfg.sample_method_steps, cfg.sample_churn) == ("heun", 25, 40.0)
    s = model.sample(64, seed=0)
    assert model.nfe_ == 49
    low, high = CHURN_WINDOW
    explicit = model.sample(64, seed=0, method="heun", steps=25, churn=40.0, s_tmin=low,
                            s_tmax=high)  # fmt: skip
    torch.testing.assert_close(s, explicit, rtol=0, atol=0)
    ode = model.sample(64, seed=0, method="heun", steps=25)  # no churn: the ODE
    assert float((ode - s).abs().max()) > 1e-3
    wide = model.sample(64, seed=0, churn=40.0)  # the caller's churn, over every level
    assert float((wide - s).abs().max()) > 1e-3
    assert model.sample(8, seed=0, steps=5) is not None and model.nfe_ == 9
    model.save(tmp_path / "m")
    torch.testing.assert_close(genlab.load(tmp_path / "m").sample(64, seed=0), s)
    plain = Diffusion("rectified", "v", hidden=16, max_steps=2, warmup_steps=1, batch_size=32,
                      sample_method="dpm++", sample_method_steps=0)  # fmt: skip
    plain.fit(load_dataset("moons", n=100))
    plain.sample(8, seed=0)
    assert plain.nfe_ == 20


def test_dpm_grid_is_power_on_points_uniform_elsewhere_and_old_folders_keep_uniform():
    """config.dpm_grid is the ODE dpm++'s grid when sample() gets none: the points recipe's "power",
    the config default "uniform" for images and for folders saved before the option."""
    model = Diffusion(hidden=16, max_steps=2, warmup_steps=1, batch_size=32)
    model.fit(load_dataset("moons", n=100))
    assert model.config.dpm_grid == "power"
    s = model.sample(64, seed=0, method="dpm++", steps=15)
    torch.testing.assert_close(s, model.sample(64, seed=0, method="dpm++", steps=15, grid="power"),
                               rtol=0, atol=0)  # fmt: skip
    uniform = model.sample(64, seed=0, method="dpm++", steps=15, grid="uniform")
    assert float((uniform - s).abs().max()) > 1e-4
    sde = model.sample(64, seed=0, method="dpm++", steps=15, eta=1.0)  # the SDE: not measured
    sde_uniform = model.sample(64, seed=0, method="dpm++", steps=15, eta=1.0, grid="uniform")
    torch.testing.assert_close(sde, sde_uniform, rtol=0, atol=0)  # on it, so the uniform grid
    given = Diffusion(hidden=16, max_steps=2, warmup_steps=1, batch_size=32, dpm_grid="karras")
    given.fit(load_dataset("moons", n=100))
    assert given.config.dpm_grid == "karras"
    images = Diffusion(timesteps=50, hidden=16, max_steps=2, warmup_steps=1, batch_size=16)
    images.fit(load_dataset("digits", n=32))
    assert images.config.dpm_grid == "uniform"
    old = genlab.load(FIXTURES / "diffusion-moons")
    assert old.config.dpm_grid == "uniform"
    plain = old.sample(8, seed=0, method="dpm++", steps=6)
    torch.testing.assert_close(
        plain, old.sample(8, seed=0, method="dpm++", steps=6, grid="uniform")
    )
    with pytest.raises(ValueError, match="dpm_grid"):
        Diffusion(dpm_grid="cosine")


def test_conditional_images_with_guidance():
    digits = load_dataset("digits", n=64)
    model = Diffusion(timesteps=50, net="unet", base_channels=8, max_steps=2, warmup_steps=0,
                      batch_size=16)  # fmt: skip
    model.fit(digits, y=digits.y)
    assert model.net_ == "unet" and model.kind_ == "image" and model.log_prob_kind == "estimate"
    s = model.sample(4, seed=0, method="ddim", steps=3, y=7, guidance=2.0)
    assert s.shape == (4, 1, 8, 8) and s.min() >= 0 and s.max() <= 1 and model.nfe_ == 3
    guided = {"method": "dpm++", "steps": 6, "y": 7, "guidance": 2.0, "eta": 0.0}  # 2M
    torch.testing.assert_close(model.sample(4, seed=0, **guided),
                               model.sample(4, seed=0, order=2, **guided))  # fmt: skip
    assert not torch.equal(model.sample(4, seed=0, **guided),
                           model.sample(4, seed=0, order=3, **guided))  # fmt: skip
    assert torch.isfinite(model.log_prob(digits.x[:3], method="euler", steps=2)).all()
    assert torch.isfinite(model.vlb(digits.x[:2], decoder="discretized")).all()


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"prediction": "score"}, "prediction must be one of"),
        ({"schedule": "sigmoid"}, "schedule must be one of"),
        ({"timesteps": 1}, "timesteps"),
        ({"timesteps": 10**12}, r"timesteps must be an integer in \[2, 100000\]"),
        ({"label_dropout": 1.0}, "label_dropout"),
        ({"loss_weight": "snr"}, "loss_weight"),
    ],
)
def test_bad_options_are_refused(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        Diffusion(**options)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"method": "euler"}, "method must be one of"),
        ({"steps": 0}, "steps must be"),
        ({"method": "ddpm", "steps": 1001}, "at most"),
        ({"method": "dpm++", "steps": 10**12}, "at most 100,000"),
        ({"method": "ode", "solver": "heun", "steps": 10**6}, "at most 100,000"),
        ({"method": "ddim", "eta": 1.5}, "eta must be"),
        ({"method": "heun", "eta": 0.5}, "eta applies"),
        ({"method": "dpm++", "eta": 0.5, "order": 3}, "orders 1 and 2"),
        ({"method": "dpm++", "order": 4}, "order must be"),
        ({"method": "dpm++", "order": True}, "order must be"),
        ({"method": "ddim", "order": 2}, "order applies"),
        ({"method": "ode", "grid": "logsnr"}, "grid must be"),
        ({"method": "ddim", "solver": "rk4"}, "solver must be"),
        ({"method": "ode", "solver": "dopri5", "steps": 3}, "pass steps"),
        ({"y": 1}, "without labels"),
        ({"guidance": 1.0}, "needs labels"),
    ],
)
def test_bad_sampler_calls_are_refused(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        gaussian_diffusion().sample(3, **options)


def test_bad_calls_are_refused():
    with pytest.raises(TypeError, match="options are"):
        Diffusion(hiden=3)
    with pytest.raises(ValueError, match="square images"):
        Diffusion(net="unet", max_steps=1).fit(torch.randn(10, 2))
    with pytest.raises(ValueError, match="not fitted"):
        Diffusion().sample(2)
    model = gaussian_diffusion()
    with pytest.raises(ValueError, match="NaN"):
        model.log_prob(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="decoder"):
        model.vlb(torch.zeros(2, 2), decoder="bernoulli")
    with pytest.raises(ValueError, match="quantised images"):
        model.vlb(torch.zeros(2, 2), decoder="discretized")
    assert model.sample(0).shape == (0, 2)
    with pytest.raises(ValueError, match="more than 10000 standard deviations"):
        model.vlb(torch.tensor([[0.0, 0.0], [1e6, 0.0]]))  # no closed form there: refused


def test_clipped_images_of_a_diverged_denoiser_raise_instead_of_looking_fine():
    from genlab.models import DivergedError

    model = Diffusion(hidden=16, max_steps=2, ema_decay=None).fit(
        load_dataset("digits", n=64), progress=False
    )
    with torch.no_grad():
        for p in model.net.parameters():
            p.fill_(1e30)
    for method in ("ddim", "dpm++", "ddpm"):  # x0_hat clipping would turn inf into +-1
        with pytest.raises(DivergedError, match="denoiser's outputs are not finite"):
            model.sample(2, method=method, steps=2, seed=0)


# -- the command line ----------------------------------------------------------------------------
def test_cli_fit_sample_eval_plot(tmp_path, capsys):
    out = tmp_path / "moons-diff"
    assert run(["fit", "diffusion", "--data", "moons", "--n", "300", "--max-steps", "20",
                "--hidden", "16", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    assert "saved" in capsys.readouterr().out
    npy = tmp_path / "s.npy"
    assert run(["sample", str(out), "-n", "9", "--method", "dpm++", "--steps", "15",
                "--out", str(npy)]) == 0  # fmt: skip
    assert np.load(npy).shape == (9, 2)
    assert run(["sample", str(out), "-n", "9", "--method", "dpm++", "--steps", "15", "--order",
                "2", "--grid", "logsnr", "--seed", "3", "--out", str(npy)]) == 0  # fmt: skip
    expected = genlab.load(out).sample(9, seed=3, method="dpm++", steps=15, order=2, grid="logsnr")
    np.testing.assert_allclose(np.load(npy), expected.numpy(), rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert run(["eval", str(out), "--data", "moons", "--n", "50", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["family"] == "diffusion" and result["log_prob_kind"] == "exact"
    assert math.isfinite(result["bits_per_dim"])
    assert run(["plot", str(out), "--data", "moons", "--n", "100"]) == 0
    assert (out / "denoising.png").is_file() and (out / "plot.png").is_file()
    assert run(["sample", str(out), "-n", "3", "--method", "ode", "--eta", "0.5"]) == 1


# -- the new samplers against the exact probability-flow map, grids, times, editing ----------------
def exact_ode_map(model: Diffusion, z1: torch.Tensor, t: float) -> torch.Tensor:
    """The probability-flow ODE's map from t = 1 to t for model-space data N(m, S), in data
    space: z_t = alpha_t m + C_t^(1/2) C_1^(-1/2) (z_1 - alpha_1 m), C_t = alpha_t^2 S +
    sigma_t^2 I (all C_t share S's eigenvectors, so the square roots commute)."""
    net, sch = model.net, model.schedule
    evals, evecs = torch.linalg.eigh(net.S)

    def coefs(time):
        tt = torch.tensor(time, dtype=torch.float64)
        return float(sch.alpha(tt)), float(sch.sigma(tt))

    (a1, s1), (a, s) = coefs(1.0), coefs(t)
    gain = ((a**2 * evals + s**2) / (a1**2 * evals + s1**2)).sqrt()
    matrix = evecs @ torch.diag(gain) @ evecs.T
    z = a * net.m + (z1.double() - a1 * net.m) @ matrix.T
    return z * SCALE.double() + LOC.double()


def _ode_error(method: str, steps: int, **options) -> float:
    """Max distance of `method` from the exact map (end time 1 / T) from one fixed noise."""
    model = gaussian_diffusion()
    z1 = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    x = model.sample(200, noise=z1, method=method, steps=steps, **options)
    return float((x.double() - exact_ode_map(model, z1, 1e-3)).norm(dim=1).max())


@pytest.mark.parametrize(
    "method, options, low, bound",
    [
        ("heun", {"grid": "karras"}, 1.8, 0.08),  # EDM's Heun: 2nd order
        ("heun", {"grid": "logsnr"}, 1.8, 0.08),
        ("unipc", {"order": 2, "grid": "logsnr"}, 1.8, 0.08),
        ("unipc", {"order": 3, "grid": "logsnr"}, 2.6, 3e-3),
        ("unipc", {"order": 3, "grid": "karras"}, 2.6, 3e-2),
        ("dpm++", {"order": 2, "grid": "karras", "eta": 0.0}, 1.8, 0.08),
    ],
)
def test_new_samplers_converge_to_the_exact_ode_map(method, options, low, bound):
    """The largest error (data units, 200 points) against the closed-form probability-flow
    map shrinks at the sampler's order (log2 of the error ratio from 32 to 64 steps)."""
    coarse, fine = _ode_error(method, 32, **options), _ode_error(method, 64, **options)
    assert math.log2(coarse / fine) > low, (coarse, fine)
    assert fine < bound / 4 and coarse < bound


def test_dpm_solver_pp_on_the_power_grid_converges_to_the_exact_map_at_zero():
    """2M on the power grid (t^(2/3) uniform, ending at t = 0) approaches the closed-form ODE
    map at t = 0 at second order, and at 16 steps is closer to it than on the uniform grid."""
    model = gaussian_diffusion()
    z1 = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))

    def error(steps: int, grid: str) -> float:
        x = model.sample(200, noise=z1, method="dpm++", steps=steps, order=2, grid=grid)
        assert model.nfe_ == steps
        return float((x.double() - exact_ode_map(model, z1, 0.0)).norm(dim=1).max())

    coarse, fine = error(32, "power"), error(64, "power")
    assert math.log2(coarse / fine) > 1.7 and fine < 0.01, (coarse, fine)
    assert error(16, "power") < 0.5 * error(16, "uniform")


def test_times_is_the_named_grid_and_may_end_at_zero():
    model = gaussian_diffusion()
    for method, grid in [("dpm++", "karras"), ("heun", "logsnr"), ("unipc", "quadratic"),
                         ("ddim", "uniform"), ("ddpm", "uniform"), ("dpm++", "power")]:  # fmt: skip
        times = sampling_times(model.schedule, 1000, 8, grid)
        a = model.sample(50, seed=0, method=method, times=times)
        b = model.sample(50, seed=0, method=method, steps=8, grid=grid)
        torch.testing.assert_close(a, b)
    z1 = torch.randn(300, 2, generator=torch.Generator().manual_seed(1))
    to_zero = torch.cat([sampling_times(model.schedule, 1000, 48, "karras"), torch.zeros(1)])
    x = model.sample(300, noise=z1, method="heun", times=to_zero)
    assert model.nfe_ == 2 * 49 - 1  # the last step, to t = 0, is one Euler evaluation
    assert float((x.double() - exact_ode_map(model, z1, 0.0)).norm(dim=1).max()) < 0.03
    x = model.sample(300, noise=z1, method="ode", times=torch.linspace(1, 1e-3, 41))
    assert model.nfe_ == 80  # heun
    assert float((x.double() - exact_ode_map(model, z1, 1e-3)).norm(dim=1).max()) < 0.01
    run_ = model.sample(4, seed=0, method="unipc", times=[1.0, 0.5, 0.1, 0.01],
                        return_trajectory=True)  # fmt: skip
    assert run_.trajectory.shape == (4, 4, 2) and model.nfe_ == 3
    torch.testing.assert_close(run_.times, torch.tensor([1.0, 0.5, 0.1, 0.01]))


def test_sampling_times_delegates_to_the_shared_grids():
    from genlab import grids

    schedule = SCHEDULES["cosine"]()
    for name in ("quadratic", "logsnr", "karras"):
        torch.testing.assert_close(sampling_times(schedule, 500, 7, name),
                                   grids.time_grid(schedule, name, 7, t_min=1 / 500))  # fmt: skip
    half = sampling_times(schedule, 1000, 5, "uniform", t_max=0.5004)
    torch.testing.assert_close(half, torch.tensor([0.5004, 0.4, 0.3, 0.2, 0.1, 0.0],
                                                  dtype=torch.float64))  # fmt: skip
    with pytest.raises(ValueError, match="pass steps <= 500"):
        sampling_times(schedule, 1000, 501, "uniform", t_max=0.5)


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpm++", "heun", "unipc", "ode"])
def test_every_sampler_calls_the_editing_hooks(method, monkeypatch):
    """_edit_start sets the start (here t = 0.6), and _project_step sees the state at the
    start and after every step, at the times the trajectory reports."""
    model = gaussian_diffusion()
    seen = []

    def edit_start(init, strength, eps):
        return eps * 0.5, 0.6

    def project(z, t):
        seen.append(t)
        return z

    monkeypatch.setattr(model, "_edit_start", edit_start)
    monkeypatch.setattr(model, "_project_step", project)
    options = {"solver": "rk4"} if method == "ode" else {}
    run_ = model.sample(5, seed=0, method=method, steps=6, return_trajectory=True, **options)
    # unipc also projects its predicted point before the corrector's evaluation there
    visited = [t for k, t in enumerate(seen) if k == 0 or t != seen[k - 1]]
    assert seen[0] == pytest.approx(0.6) and len(visited) == 7
    torch.testing.assert_close(torch.tensor(visited, dtype=torch.float64), run_.times.double(),
                               atol=1e-6, rtol=0)  # fmt: skip
    assert run_.times[-1] < 0.6 / 6


@pytest.mark.parametrize(
    "method, options",
    [("ddpm", {}), ("ddim", {"steps": 40}), ("dpm++", {"steps": 15}), ("heun", {"steps": 10}),
     ("unipc", {"steps": 15}), ("ode", {"steps": 20, "solver": "heun"})],
)  # fmt: skip
def test_sdedit_from_data_draws_the_gaussian(method, options):
    """init drawn from the data and noised to t = 0.5 is a draw of x_0.5, so every sampler run
    from there returns the data distribution (the exact denoiser); ddpm from the chain step
    500 takes 500 steps."""
    model = gaussian_diffusion()
    init = torch.from_numpy(stats.multivariate_normal(MEAN, COV).rvs(N, random_state=5)).float()
    x = model.sample(N, seed=6, method=method, init=init, strength=0.5, **options)
    assert_gaussian_moments(x)
    assert float((x - init).norm(dim=1).mean()) > 0.3  # re-generated, not copied
    assert model.nfe_ == {"ddpm": 500, "heun": 19, "ode": 40}.get(method, options.get("steps"))


def test_strength_zero_returns_init_without_a_network_call():
    model = gaussian_diffusion()

    class Refuse(nn.Module):
        def forward(self, *args):
            raise AssertionError("no network call expected")

    model.net = Refuse()
    init = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    for method in ("ddpm", "dpm++", "heun", "unipc", "ode"):
        torch.testing.assert_close(model.sample(2, method=method, init=init, strength=0.0), init)
        assert model.nfe_ == 0
    tiny = model.sample(
        2, seed=0, method="dpm++", grid="quadratic", init=init, strength=5e-4
    )  # below 1 / T, where the quadratic grid ends: no step
    assert model.nfe_ == 0 and float((tiny - init).abs().max()) < 0.05


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"method": "ddim", "churn": 1.0}, "apply to method='heun' only"),
        ({"method": "dpm++", "s_noise": 1.01}, "apply to method='heun' only"),
        ({"method": "heun", "churn": -1.0}, "churn must be"),
        ({"method": "dpm++", "times": [1.0, 0.5], "steps": 3}, "without steps and grid"),
        ({"method": "dpm++", "times": [1.0, 0.5, 0.5]}, "strictly decreasing"),
        ({"method": "ode", "times": [1.0, 0.5, 0.0]}, "ending above 0"),
        ({"method": "heun", "order": 2}, "order applies"),
        ({"method": "ode", "grid": "karras"}, "grid must be"),
        ({"method": "dpm++", "grid": "cosine"}, "grid must be"),
        ({"method": "ddpm", "init": [[0.0, 0.0]] * 3, "strength": 0.1, "steps": 200},
         "pass steps <= 100"),
        ({"method": "dpm++", "init": [[0.0, 0.0]] * 3, "strength": 0.5, "times": [1.0, 0.1]},
         "starting at the strength"),
    ],
)  # fmt: skip
def test_bad_new_sampler_calls_are_refused(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        gaussian_diffusion().sample(3, **options)


# -- the rectified schedule: every sampler on a path that is not variance preserving --------------
@pytest.mark.parametrize(
    "method, options",
    [
        ("ddpm", {"steps": 100}),
        ("ddim", {"steps": 100}),
        ("ddim", {"steps": 100, "eta": 1.0}),
        ("dpm++", {"steps": 25}),  # 3M, the ODE, quadratic grid
        ("dpm++", {"steps": 100, "eta": 1.0}),  # SDE 2M, uniform grid
        ("heun", {"steps": 30}),  # in t (`HEUN_VARIABLES`)
        ("heun", {"steps": 30, "churn": 3.0, "s_tmax": 50.0}),
        ("unipc", {"steps": 20}),
        ("ode", {"steps": 50, "solver": "heun"}),
    ],
)
def test_every_sampler_draws_the_gaussian_on_the_rectified_schedule(method, options):
    """alpha = 1 - t, sigma = t (alpha^2 + sigma^2 = 1/2 half-way): the same moments."""
    model = gaussian_diffusion("eps", "rectified")
    assert not model.schedule.variance_preserving
    assert_gaussian_moments(model.sample(N, seed=1, method=method, **options))


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_rectified_parameterisations_draw_the_gaussian(prediction):
    model = gaussian_diffusion(prediction, "rectified")
    assert_gaussian_moments(model.sample(N, seed=2, method="dpm++", steps=20))
    assert_gaussian_moments(model.sample(N, seed=3, method="heun", steps=20))


@pytest.mark.parametrize("t, s", [(0.5, 0.1), (0.99, 0.98), (1.0, 0.5), (0.02, 0.01), (0.3, 0.0)])
def test_general_posterior_matches_gaussian_conditioning(t, s):
    """q(x_s | x_t, x0) on the rectified path from the joint Gaussian of (x_s, x_t) given x0,
    computed without the transition kernel: x_s = a_s x0 + s_s e1, x_t = a_t x0 + the
    forward step from s, so Cov(x_s, x_t) = (a_t / a_s) s_s^2, Var x_t = s_t^2."""
    from genlab.models.diffusion_maths import path_point

    sched = SCHEDULES["rectified"]()
    (a_t, s_t), (a_s, s_s) = path_point(sched, t), path_point(sched, s)
    c0, ct, var = posterior((a_t, s_t), (a_s, s_s))
    cov = a_t / a_s * s_s**2
    gain = cov / s_t**2  # mean = a_s x0 + gain (x_t - a_t x0)
    assert ct == pytest.approx(gain, abs=1e-12)
    assert c0 == pytest.approx(a_s - gain * a_t, abs=1e-12)
    assert var == pytest.approx(s_s**2 - cov**2 / s_t**2, abs=1e-12)
    # and a Monte Carlo check of the regression coefficients (independent of the algebra)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(200_000, generator=g, dtype=torch.float64)
    xs = a_s * x0 + s_s * torch.randn(200_000, generator=g, dtype=torch.float64)
    a_ts, var_ts = a_t / a_s, s_t**2 - (a_t / a_s) ** 2 * s_s**2
    xt = a_ts * xs + math.sqrt(var_ts) * torch.randn(200_000, generator=g, dtype=torch.float64)
    design = torch.stack([x0, xt], 1)
    coef = torch.linalg.lstsq(design, xs[:, None]).solution[:, 0]
    resid = xs - design @ coef
    assert float(coef[0]) == pytest.approx(c0, abs=0.01)
    assert float(coef[1]) == pytest.approx(ct, abs=0.01)
    assert float(resid.var()) == pytest.approx(var, abs=0.01 * max(var, 1e-3) + 1e-4)


def test_vp_alpha_bar_and_general_points_give_the_same_steps():
    """A VP alpha_bar and its (alpha, sigma) pair are the same point of the path."""
    from genlab.models.diffusion_maths import clip_x0, coefficients

    g = torch.Generator().manual_seed(3)
    x, x0, old, noise = (torch.randn(5, 2, generator=g, dtype=torch.float64) for _ in range(4))
    ab_t, ab_s, ab_old = 0.3, 0.6, 0.1
    pt, ps, po = coefficients(ab_t), coefficients(ab_s), coefficients(ab_old)
    assert posterior(pt, ps) == pytest.approx(posterior(ab_t, ab_s), rel=1e-12)
    assert half_log_snr(pt) == pytest.approx(half_log_snr(ab_t), rel=1e-12)
    eps = (x - pt[0] * x0) / pt[1]
    pairs = [
        (ddpm_step(x, x0, pt, ps, noise), ddpm_step(x, x0, ab_t, ab_s, noise)),
        (ddim_step(x0, eps, pt, ps, 0.5, noise), ddim_step(x0, eps, ab_t, ab_s, 0.5, noise)),
        (clip_x0(x0, x, pt)[1], clip_x0(x0, x, ab_t)[1]),
    ]
    lams = [half_log_snr(ab_t), half_log_snr(ab_old)]
    for order in (1, 2):
        pairs.append((dpm_solver_pp_step(x, [x0, old], lams, pt, ps, order),
                      dpm_solver_pp_step(x, [x0, old], lams, ab_t, ab_s, order)))  # fmt: skip
        pairs.append((dpm_solver_pp_sde_step(x, [x0, old], lams, pt, ps, order, 1.0, noise),
                      dpm_solver_pp_sde_step(x, [x0, old], lams, ab_t, ab_s, order, 1.0,
                                             noise)))  # fmt: skip
    for a, b in pairs:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert po != pt


def test_rectified_ddim_is_exact_on_a_point_mass():
    """For data at one point c the denoiser is exact (x0 = c) and x_t = a_t c + s_t eps is a
    straight line in (a, s): one DDIM step from t = 1 lands on a_s c + s_s eps exactly."""
    sched = SCHEDULES["rectified"]()
    from genlab.models.diffusion_maths import path_point

    c, eps = torch.tensor([[1.5, -0.5]]), torch.tensor([[0.3, 2.0]])
    (a_t, s_t), (a_s, s_s) = path_point(sched, 1.0), path_point(sched, 0.25)
    got = ddim_step(c, eps, (a_t, s_t), (a_s, s_s), 0.0, torch.zeros(1, 2))
    torch.testing.assert_close(got, a_s * c + s_s * eps)
    assert not torch.allclose(ddim_step(c, eps, a_t**2, a_s**2, 0.0, torch.zeros(1, 2)), got)


@pytest.mark.parametrize(
    "method, options, low",
    [("dpm++", {"order": 2, "grid": "logsnr", "eta": 0.0}, 1.8),
     ("unipc", {"order": 2, "grid": "logsnr"}, 1.8),
     ("heun", {"grid": "uniform"}, 1.8)],
)  # fmt: skip
def test_rectified_samplers_converge_to_the_exact_ode_map(method, options, low):
    """On the rectified path the error against the closed-form probability-flow map shrinks
    at the sampler's order (32 -> 64 steps; heun steps in t there and ends at t = 0)."""

    def error(steps):
        model = gaussian_diffusion("eps", "rectified")
        z1 = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
        x = model.sample(200, noise=z1, method=method, steps=steps, **options)
        t_end = 0.0 if options["grid"] == "uniform" else 1e-3
        return float((x.double() - exact_ode_map(model, z1, t_end)).norm(dim=1).max())

    coarse, fine = error(32), error(64)
    assert math.log2(coarse / fine) > low, (coarse, fine)
    assert fine < 0.03


def test_rectified_log_prob_and_vlb_against_the_gaussian_density():
    model = gaussian_diffusion("eps", "rectified")
    x = torch.from_numpy(stats.multivariate_normal(MEAN, COV).rvs(200, random_state=1)).float()
    exact = stats.multivariate_normal(MEAN, COV).logpdf(x.double().numpy())
    np.testing.assert_allclose(model.log_prob(x[:50]).double().numpy(), exact[:50], atol=1e-2)
    vlb = float(model.vlb(x, seed=0).mean())
    assert vlb <= exact.mean() + 0.01
    assert exact.mean() - vlb < 0.1


def test_standard_normal_skip_is_the_optimal_denoiser_of_n01_on_any_path():
    """With a zero net the skip alone is E[x0 | x_t] = alpha x_t / (alpha^2 + sigma^2) for
    N(0, I) data; on the rectified path the net sees x_t / sqrt(alpha^2 + sigma^2)."""
    from genlab.models.diffusion_maths import StandardNormalSkip

    seen = []

    class Zero(nn.Module):
        def forward(self, x, t, y=None):
            seen.append(x)
            return torch.zeros_like(x)

    sched = SCHEDULES["rectified"]()
    x, t = torch.randn(6, 2, dtype=torch.float64), torch.full((6,), 0.5, dtype=torch.float64)
    a, s = float(sched.alpha(t[0])), float(sched.sigma(t[0]))
    out = StandardNormalSkip(Zero(), sched, "x0")(x, t)
    torch.testing.assert_close(out, a * x / (a * a + s * s))
    torch.testing.assert_close(seen[-1], x / math.sqrt(a * a + s * s))
    eps = StandardNormalSkip(Zero(), sched, "eps")(x, t)
    torch.testing.assert_close(eps, s * x / (a * a + s * s))
    vp = SCHEDULES["linear"]()
    StandardNormalSkip(Zero(), vp, "x0")(x, t)
    assert seen[-1] is x  # VP: the input as before
