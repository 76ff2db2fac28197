"""Flow matching: its maths against closed forms and brute force, the optimal Gaussian velocity
through every solver, training against a GMM, conditioning, images, errors and the CLI."""

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
from genlab import metrics
from genlab.cli import run
from genlab.data import load_dataset
from genlab.models import Diffusion, FlowMatching, GaussianMixture
from genlab.models.base import TrainingData
from genlab.models.continuous import (
    SMALL_IMAGE_PIXELS,
    auto_net,
    drop_labels,
    exact_divergence,
    guided,
    hutchinson_divergence,
    resolve_net,
    standard_normal_log_prob,
)
from genlab.models.flow import ot_pairing
from genlab.nets import MLP
from genlab.schedules import Schedule
from genlab.solvers import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN = np.array([1.0, -2.0])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])
LOC, SCALE = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.5])  # a non-trivial standardisation
STEPS = {"euler": 200, "midpoint": 40, "heun": 40, "rk4": 20, "dopri5": None}
FIXTURES = Path(__file__).parent / "fixtures" / "v1"


# -- the closed-form optimal velocity of a Gaussian target ---------------------------------------
class GaussianVelocity(nn.Module):
    """E[alpha' x0 + sigma' eps | x_t = x] for x0 ~ N(m, S), eps ~ N(0, I), computed in float64:

    x_t ~ N(alpha m, C),  C = alpha^2 S + sigma^2 I,  Cov(u, x_t) = alpha' alpha S + sigma' sigma I
    v(x, t) = alpha' m + (alpha' alpha S + sigma' sigma I) C^{-1} (x - alpha m)
    """

    def __init__(self, mean: np.ndarray, cov: np.ndarray, schedule: Schedule):
        super().__init__()
        self.m = torch.as_tensor(mean, dtype=torch.float64)
        self.S = torch.as_tensor(cov, dtype=torch.float64)
        self.schedule = schedule

    def forward(self, x, t, y=None):
        t = t.double()
        a, s = (c(t)[:, None, None] for c in (self.schedule.alpha, self.schedule.sigma))
        da, ds = (c(t)[:, None, None] for c in (self.schedule.d_alpha, self.schedule.d_sigma))
        eye = torch.eye(len(self.m), dtype=torch.float64)
        cov_t = a**2 * self.S + s**2 * eye
        cross = da * a * self.S + ds * s * eye
        r = (x.double() - a[:, :, 0] * self.m)[:, :, None]
        return (da[:, :, 0] * self.m + (cross @ torch.linalg.solve(cov_t, r))[:, :, 0]).to(x.dtype)


def gaussian_flow(path: str, sigma_min: float = 0.0, **options) -> FlowMatching:
    """A 'fitted' 2-D flow in float64 whose net is the exact optimal velocity for N(MEAN, COV)."""
    model = FlowMatching(path, sigma_min=sigma_min, hidden=8, depth=1, **options)
    model._build((2,), {"net": "mlp", "n_classes": None, "levels": None})
    model.event_shape = (2,)
    model = model.double()
    model.data_loc.copy_(LOC)
    model.data_scale.copy_(SCALE)
    z_mean = (MEAN - LOC.numpy()) / SCALE.numpy()
    z_cov = COV / np.outer(SCALE.numpy(), SCALE.numpy())
    model.net = GaussianVelocity(z_mean, z_cov, model.schedule)
    return model


def gaussian_points(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).multivariate_normal(MEAN, COV, size=n))


# -- pure functions ------------------------------------------------------------------------------
def test_standard_normal_log_prob_matches_scipy():
    z = torch.randn(5, 3, 2, dtype=torch.float64)
    expected = stats.multivariate_normal(np.zeros(6), np.eye(6)).logpdf(z.reshape(5, -1).numpy())
    np.testing.assert_allclose(standard_normal_log_prob(z).numpy(), expected, rtol=1e-12)


def test_ot_pairing_is_the_brute_force_optimum():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(7, 2, generator=g), torch.randn(7, 2, generator=g)
    perm = ot_pairing(x0, eps)
    assert sorted(perm.tolist()) == list(range(7))

    def cost(p) -> float:
        return float((x0 - eps[torch.as_tensor(list(p))]).square().sum())

    best = min(cost(p) for p in itertools.permutations(range(7)))
    assert cost(perm) == pytest.approx(best, rel=1e-6)
    assert cost(perm) < cost(range(7))


def test_ot_pairing_within_groups_keeps_each_group():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(40, 3, generator=g), torch.randn(40, 3, generator=g)
    groups = torch.arange(40) % 3
    perm = ot_pairing(x0, eps, groups)
    assert torch.equal(groups[perm], groups)
    assert sorted(perm.tolist()) == list(range(40))
    for k in range(3):  # each group's pairing is optimal on its own
        idx = (groups == k).nonzero().flatten()
        sub = ot_pairing(x0[idx], eps[idx])
        assert torch.equal(perm[idx], idx[sub])


def test_exact_divergence_matches_the_analytic_trace():
    a = torch.tensor([[0.5, -1.0, 2.0], [0.3, 1.5, 0.0], [1.0, 2.0, -0.7]], dtype=torch.float64)

    def f(x):  # div f = tr(A) + sum_i cos(x_i) + x_1^2 (from d(x_1^2 x_0)/dx_0)
        return (
            x @ a.T + torch.sin(x) + torch.stack([x[:, 1] ** 2 * x[:, 0], 0 * x[:, 1], x[:, 0]], 1)
        )

    x = torch.randn(6, 3, dtype=torch.float64)
    v, div = exact_divergence(f, x)
    expected = torch.trace(a) + torch.cos(x).sum(1) + x[:, 1] ** 2
    torch.testing.assert_close(div, expected)
    torch.testing.assert_close(v, f(x))


def test_hutchinson_over_all_sign_vectors_is_the_exact_trace():
    """E[e^T J e] = tr J; averaged over all 2^d Rademacher vectors the identity is exact."""
    w = torch.randn(4, 4, dtype=torch.float64)

    def f(x):
        return torch.tanh(x @ w)

    x = torch.randn(5, 4, dtype=torch.float64)
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)), dtype=torch.float64)
    probes = signs[:, None, :].expand(16, 5, 4)
    _, estimate = hutchinson_divergence(f, x, probes)
    _, exact = exact_divergence(f, x)
    torch.testing.assert_close(estimate, exact)
    _, one = hutchinson_divergence(f, x, probes[:1])  # a single probe is not the trace
    assert not torch.allclose(one, exact)


def test_guidance_and_label_dropout():
    cond, uncond = torch.tensor([3.0]), torch.tensor([1.0])
    assert guided(cond, uncond, 0.0) == cond
    assert guided(cond, uncond, -1.0) == uncond
    assert guided(cond, uncond, 2.0) == 1.0 + 3 * 2.0
    torch.manual_seed(0)
    y = torch.zeros(20_000, dtype=torch.long)
    dropped = (drop_labels(y, 0.1, 5) == 5).float().mean()
    assert abs(float(dropped) - 0.1) < 0.01
    assert torch.equal(drop_labels(y, 0.0, 5), y)


# -- the optimal Gaussian velocity: every solver, and the exact likelihood -----------------------
@pytest.mark.parametrize("path", ["linear", "vp"])
@pytest.mark.parametrize("method", METHODS)
def test_solvers_carry_noise_to_the_gaussian_target(path, method):
    model = gaussian_flow(path)
    n = 10_000
    run_ = model.sample(n, seed=1, method=method, steps=STEPS[method], return_trajectory=True)
    s = run_.samples.numpy()
    assert run_.samples.shape == (n, 2) and run_.trajectory.shape[1:] == (n, 2)
    assert float(run_.times[0]) == 1.0 and float(run_.times[-1]) == 0.0
    torch.testing.assert_close(run_.trajectory[-1], run_.samples)
    # the start is the noise N(0, I) mapped to data space: loc + scale * eps
    start = (run_.trajectory[0] - LOC.double()) / SCALE.double()
    assert abs(float(start.mean())) < 0.03 and abs(float(start.std()) - 1) < 0.03
    se_mean = np.sqrt(np.diag(COV) / n)
    np.testing.assert_array_less(np.abs(s.mean(0) - MEAN), 5 * se_mean)
    se_cov = np.sqrt((COV**2 + np.outer(np.diag(COV), np.diag(COV))) / n)
    np.testing.assert_array_less(np.abs(np.cov(s.T) - COV), 5 * se_cov + 2e-3)
    expected_nfe = {"euler": 200, "midpoint": 80, "heun": 80, "rk4": 80}
    assert model.nfe_ == expected_nfe.get(method, model.nfe_) > 0


@pytest.mark.parametrize("path", ["linear", "vp"])
def test_churned_heun_carries_noise_to_the_gaussian_target(path):
    """EDM's stochastic Heun on the denoiser the exact velocity implies: the same target as
    the ODE (the churn keeps every marginal), other samples than the ODE's, reproducible by
    the seed; the step from t = 1 (alpha = 0) is unraised, the last one an Euler step."""
    model = gaussian_flow(path)
    n = 10_000
    options = {"method": "heun", "steps": 40, "churn": 40.0, "s_tmin": 0.1, "s_tmax": 3.0}
    run_ = model.sample(n, seed=1, return_trajectory=True, **options)
    s = run_.samples.numpy()
    assert model.nfe_ == 79 and run_.trajectory.shape == (41, n, 2)
    assert float(run_.times[0]) == 1.0 and float(run_.times[-1]) == 0.0
    se_mean = np.sqrt(np.diag(COV) / n)
    np.testing.assert_array_less(np.abs(s.mean(0) - MEAN), 5 * se_mean)
    se_cov = np.sqrt((COV**2 + np.outer(np.diag(COV), np.diag(COV))) / n)
    np.testing.assert_array_less(np.abs(np.cov(s.T) - COV), 5 * se_cov + 5e-3)
    ode = model.sample(n, seed=1, method="heun", steps=40)
    assert float((run_.samples - ode).abs().mean()) > 0.05  # the churn moved the samples
    torch.testing.assert_close(model.sample(n, seed=1, **options), run_.samples, rtol=0, atol=0)
    with pytest.raises(ValueError, match="apply to method='heun' only"):
        model.sample(4, method="euler", steps=4, churn=1.0)
    with pytest.raises(ValueError, match="churn must be a number >= 0"):
        model.sample(4, method="heun", steps=4, churn=-1.0)


def test_flow_denoiser_inverts_the_velocity_on_every_path():
    """x0_hat and eps_hat of `flow_denoiser` rebuild x = a x0_hat + s eps_hat and
    v = a' x0_hat + s' eps_hat exactly (linear with sigma_min, and vp)."""
    from genlab.models.flow import flow_denoiser

    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for path, sigma_min in (("linear", 0.0), ("linear", 0.1), ("vp", 0.0)):
        schedule = gaussian_flow(path, sigma_min).schedule
        for t in (1.0, 0.7, 0.2):
            tt = torch.tensor(t, dtype=torch.float64)
            x0, eps = flow_denoiser(lambda *_: v, schedule)(x, tt)
            a, s = float(schedule.alpha(tt)), float(schedule.sigma(tt))
            da, ds = float(schedule.d_alpha(tt)), float(schedule.d_sigma(tt))
            torch.testing.assert_close(a * x0 + s * eps, x)
            torch.testing.assert_close(da * x0 + ds * eps, v)


@pytest.mark.parametrize("path, sigma_min", [("linear", 0.0), ("vp", 0.0), ("linear", 0.1)])
def test_log_prob_is_the_exact_gaussian_density(path, sigma_min):
    """With sigma_min > 0 the model's t = 0 marginal is the target blurred by N(0, sigma_min^2 I)
    in model space: in data space, N(MEAN, COV + sigma_min^2 diag(SCALE^2))."""
    model = gaussian_flow(path, sigma_min)
    x = gaussian_points(300, seed=2)
    cov0 = COV + sigma_min**2 * np.diag(SCALE.numpy() ** 2)
    expected = stats.multivariate_normal(MEAN, cov0).logpdf(x.numpy())
    lp = model.log_prob(x)
    assert model.log_prob_kind == "exact" and model.log_prob_estimator_ == "exact trace"
    np.testing.assert_allclose(lp.numpy(), expected, atol=1e-3)
    fixed = model.log_prob(x[:50], method="rk4", steps=40)
    np.testing.assert_allclose(fixed.numpy(), expected[:50], atol=1e-3)


def test_hutchinson_log_prob_is_unbiased():
    """exact_trace_max_dim=0 switches to Hutchinson; the mean over many probes (one per row
    of repeated points) agrees with the exact log-density."""
    model = gaussian_flow("linear", exact_trace_max_dim=0)
    assert model.log_prob_kind == "estimate"
    points = gaussian_points(3, seed=3)
    x = points.repeat_interleave(2000, 0)
    lp = model.log_prob(x, method="rk4", steps=10, seed=0).reshape(3, 2000)
    assert model.log_prob_estimator_.startswith("hutchinson")
    exact = stats.multivariate_normal(MEAN, COV).logpdf(points.numpy())
    assert lp.std(1).min() > 0.01  # the probes do vary
    np.testing.assert_allclose(lp.mean(1).numpy(), exact, atol=5 * float(lp.std(1).max()) / 44)
    torch.testing.assert_close(model.log_prob(x[:10], method="rk4", steps=10, seed=0), lp[0, :10])


# -- training ------------------------------------------------------------------------------------
def test_trained_flow_beats_a_gmm_on_circles():
    """A tiny flow (1,000 steps of 512, ~10 s) against the CLI's default mixture (K = 8, full
    covariances, EM to convergence: it would not improve with more time). The MMD uses narrow
    kernels (0.05-0.2 x the median distance), which see the width of the rings; at the
    median bandwidth both are within the estimator's noise (~2e-4) of zero."""
    train, test = load_dataset("circles", n=4000), load_dataset("circles", split="test", n=3000)
    flow = FlowMatching(hidden=64, depth=3, max_steps=1000, batch_size=512, lr=3e-3,
                        warmup_steps=20, ema_decay=0.99, sample_steps=10).fit(train)  # fmt: skip
    gmm = GaussianMixture(8, max_iter=200).fit(train.x)
    median = metrics.median_distance(test.x.double(), test.x.double())
    narrow = [0.05 * median, 0.1 * median, 0.2 * median]
    mmd_flow = metrics.mmd(flow.sample(3000, seed=1), test.x, narrow)
    mmd_gmm = metrics.mmd(gmm.sample(3000, seed=1), test.x, narrow)
    assert mmd_flow < 0.5 * mmd_gmm, (mmd_flow, mmd_gmm)
    nll = -float(flow.log_prob(test.x[:300], method="rk4", steps=10).mean())
    assert nll < -float(gmm.log_prob(test.x[:300]).mean()) + 0.3  # a sane, comparable NLL


def test_conditional_flow_with_guidance_and_ot(tmp_path):
    train = load_dataset("8gaussians", n=3000)
    model = FlowMatching(coupling="ot", hidden=64, depth=2, max_steps=400, batch_size=256,
                         lr=3e-3, warmup_steps=20, ema_decay=0.99, sample_steps=10)  # fmt: skip
    model.fit(train, y=train.y)
    assert model.conditional and model.n_classes_ == 8
    summary = model.fit_summary()  # the rows `genlab fit` prints
    assert summary["steps"] == 400 and math.isfinite(summary["final loss"])
    rows = {"path": "linear", "coupling": "ot", "net": "mlp", "log_prob": "exact trace",
            "conditional": True}  # fmt: skip
    assert {k: summary[k] for k in rows} == rows
    centres = (
        2
        * math.sqrt(2)
        * torch.stack(
            [torch.cos(torch.arange(8) * math.pi / 4), torch.sin(torch.arange(8) * math.pi / 4)], 1
        )
    )

    def hit_rate(samples, k):
        return float(
            (torch.cdist(samples.double(), centres.double()).argmin(1) == k).float().mean()
        )

    plain = model.sample(500, seed=0, y=3)
    guided_ = model.sample(500, seed=0, y=3, guidance=2.0)
    assert model.nfe_ == 20  # cond and uncond rows in one batched call per evaluation
    assert hit_rate(plain, 3) > 0.8 and hit_rate(guided_, 3) >= hit_rate(plain, 3)
    unconditional = model.sample(800, seed=0)  # the null label: all eight components
    assert len(torch.unique(torch.cdist(unconditional, centres).argmin(1))) == 8
    labels = torch.arange(10) % 8
    lp_right = model.log_prob(centres[labels], y=labels, method="rk4", steps=10)
    lp_wrong = model.log_prob(centres[labels], y=(labels + 4) % 8, method="rk4", steps=10)
    assert (lp_right > lp_wrong + 3).all()
    three = labels == 3  # each label's rows are solved on their own: the same values
    alone = model.log_prob(centres[labels][three], y=3, method="rk4", steps=10)
    torch.testing.assert_close(lp_right[three], alone)
    model.save(tmp_path / "m")
    loaded = genlab.load(tmp_path / "m")
    torch.testing.assert_close(loaded.sample(20, seed=5, y=1), model.sample(20, seed=5, y=1))


def test_image_flow_maps_to_unit_interval_with_its_jacobian():
    """The untrained UNet outputs exactly zero, so the flow is the identity in [-1, 1] space:
    log p(x) = log N(2x - 1; 0, I) + D log 2 (Hutchinson of a zero Jacobian is exact)."""
    digits = load_dataset("digits", n=64)
    model = FlowMatching(net="unet", base_channels=8, max_steps=2, warmup_steps=1, sample_steps=4)
    model.fit(digits)
    assert model.net_ == "unet" and model.levels_ == digits.levels and model.kind_ == "image"
    assert model.log_prob_kind == "estimate"
    samples = model.sample(6, seed=0)
    assert samples.shape == (6, 1, 8, 8) and torch.isfinite(samples).all()
    blank = FlowMatching(base_channels=8)
    blank._build((1, 8, 8), {"net": "unet", "n_classes": None, "levels": 17})
    blank.event_shape = (1, 8, 8)
    blank.data_loc.fill_(0.5)
    blank.data_scale.fill_(0.5)
    x = digits.x[:5]
    expected = standard_normal_log_prob(2 * x - 1) + 64 * math.log(2)
    torch.testing.assert_close(blank.log_prob(x, method="euler", steps=2), expected)
    assert "hutchinson" in blank.log_prob_estimator_


def test_genlab_eval_reports_the_bits_per_dim_of_an_image_flow(tmp_path, capsys):
    """One step at lr 1e-9 leaves the zero-initialised UNet's field ~0, so the flow is the
    identity in [-1, 1] space and the density of y = (k + u) / 17 is N(2y - 1; 0, I) 2^64:
    bits/dim = (-mean log p + 64 ln 17) / (64 ln 2), at the points eval dequantises (seed 0)."""
    model = FlowMatching(net="unet", base_channels=8, max_steps=1, lr=1e-9, warmup_steps=0,
                         sample_steps=2)  # fmt: skip
    model.fit(load_dataset("digits", n=32)).save(tmp_path / "m")
    assert run(["eval", str(tmp_path / "m"), "--data", "digits", "--n", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    test = load_dataset("digits", split="test", n=20)
    y = metrics.dequantize(test.x, 17, generator=torch.Generator().manual_seed(0))
    log_p = standard_normal_log_prob(2 * y.double() - 1) + 64 * math.log(2)
    expected = (-float(log_p.mean()) + 64 * math.log(17)) / (64 * math.log(2))
    assert result["log_prob_kind"] == "estimate"
    assert result["bits_per_dim"] == pytest.approx(expected, abs=1e-3)
    assert run(["plot", str(tmp_path / "m")]) == 0  # image rows from noise to sample, and a GIF
    for name in ("trajectories.png", "samples.gif"):
        assert (tmp_path / "m" / name).stat().st_size > 1000


def test_log_prob_seeds_its_probes_and_leaves_the_global_rng_alone():
    """seed=0 (the default): the same Hutchinson probes every call; seed=None: fresh probes
    from the OS, not from torch's global generator, which sample and log_prob never touch."""
    model = gaussian_flow("linear", exact_trace_max_dim=0)
    x = gaussian_points(20, seed=4)
    options = {"method": "euler", "steps": 2}
    torch.manual_seed(0)
    state = torch.get_rng_state()
    default = model.log_prob(x, **options)
    assert model.log_prob_nfe_ == 2 and model.log_prob_estimator_.startswith("hutchinson")
    torch.testing.assert_close(model.log_prob(x, seed=0, **options), default, rtol=0, atol=0)
    assert not torch.equal(model.log_prob(x, seed=1, **options), default)
    fresh = model.log_prob(x, seed=None, **options)
    model.sample(5, steps=2)  # seed=None: fresh noise, from a generator of its own
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(0)
    assert not torch.equal(model.log_prob(x, seed=None, **options), fresh)
    assert not torch.equal(model.sample(5, steps=2), model.sample(5, steps=2))


def test_labelled_log_prob_draws_the_probes_of_the_unlabelled_call():
    """Labels travel with their rows through `solvers.log_likelihood` (its `context`): the
    probes come from one generator seeded once, row for row as without labels, so a field
    that ignores the label gives the unlabelled values for any labels."""
    model = gaussian_flow("linear", exact_trace_max_dim=0)
    model.n_classes_ = 2  # a 'conditional' flow whose field ignores the label
    x = gaussian_points(12, seed=5)
    options = {"method": "rk4", "steps": 2}
    plain = model.log_prob(x, **options)
    torch.testing.assert_close(model.log_prob(x, y=0, **options), plain)
    torch.testing.assert_close(model.log_prob(x, y=torch.arange(12) % 2, **options), plain)
    assert not torch.equal(plain, model.log_prob(x, seed=1, **options))


# -- the network rule, old model folders, what the family declares -------------------------------
@pytest.mark.parametrize(
    "shape, unit, expected",
    [
        ((2,), False, "mlp"),
        ((1, 8, 8), True, "mlp"),  # 64 pixels: the digits
        ((1, 16, 16), True, "mlp"),  # 256: still small
        ((1, 17, 17), True, "unet"),
        ((3, 28, 28), True, "unet"),
        ((1, 28, 20), True, "mlp"),  # not square: no conv net
        ((1, 28, 28), False, "mlp"),  # image-shaped, but values outside [0, 1]: points
    ],
)
def test_auto_net_is_an_mlp_for_points_and_small_images(shape, unit, expected):
    x = torch.rand(3, *shape) if unit else 3 * torch.randn(3, *shape)
    data = TrainingData.from_input(x)
    assert SMALL_IMAGE_PIXELS == 256
    assert auto_net(data) == resolve_net("auto", data) == expected
    assert resolve_net("mlp", data) == "mlp"


def test_the_flow_picks_the_mlp_for_digits():
    model = FlowMatching(max_steps=1, hidden=8, depth=1).fit(load_dataset("digits", n=32))
    assert model.net_ == "mlp" and model.kind_ == "image" and model.levels_ == 17
    assert model.sample(2, seed=0, steps=2).shape == (2, 1, 8, 8)


def test_declared_capabilities():
    assert FlowMatching.sample_options == {"steps", "method", "y", "guidance",
                                           "return_trajectory", "rtol", "atol", "init",
                                           "strength", "times", "grid", "churn", "s_tmin",
                                           "s_tmax", "s_noise"}  # fmt: skip
    assert FlowMatching.log_prob_options == {"steps", "method", "rtol", "atol", "seed"}
    assert FlowMatching.quick_log_prob == {"method": "rk4", "steps": 4}
    assert FlowMatching.density_grid == 50 and FlowMatching.takes_labels
    picture = FlowMatching.trajectory_picture
    assert (picture.name, picture.paths, picture.images, picture.animate) == (
        "trajectories", 500, 64, True)  # fmt: skip
    assert FlowMatching("vp").config.path == "vp"  # the one positional option
    with pytest.raises(ValueError, match="not text"):
        FlowMatching(max_steps=1).fit("some text")


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"path": "curved"}, "path must be one of"),
        ({"coupling": "sinkhorn"}, "coupling must be one of"),
        ({"path": "vp", "sigma_min": 0.1}, "sigma_min"),
        ({"sigma_min": 1.0}, "sigma_min"),
        ({"label_dropout": 1.0}, "label_dropout"),
        ({"hutchinson_probes": 0}, "hutchinson_probes"),
        ({"sample_method": "leapfrog"}, "sample_method"),
    ],
)
def test_bad_options_are_refused(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        FlowMatching(**options)


def test_bad_calls_are_refused():
    with pytest.raises(TypeError, match="options are"):
        FlowMatching(hiden=3)
    with pytest.raises(ValueError, match="square images"):
        FlowMatching(net="unet", max_steps=1).fit(torch.randn(10, 2))
    model = gaussian_flow("linear")
    with pytest.raises(ValueError, match="method must be one of"):
        model.sample(3, method="leapfrog")
    with pytest.raises(ValueError, match="without labels"):
        model.sample(3, y=1)
    with pytest.raises(ValueError, match="needs labels"):
        model.sample(3, guidance=1.0)
    with pytest.raises(ValueError, match="dopri5 chooses its own steps"):
        model.sample(3, method="dopri5", steps=4)
    with pytest.raises(ValueError, match="NaN"):
        model.log_prob(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(torch.zeros(3, 3))
    assert model.sample(0).shape == (0, 2)


# -- the command line ----------------------------------------------------------------------------
def test_cli_fit_eval_plot_sample(tmp_path, capsys):
    out = tmp_path / "cb-flow"
    args = ["fit", "flow", "--data", "checkerboard", "--n", "500", "--max-steps", "20",
            "--hidden", "16", "--depth", "1", "--coupling", "ot", "--sample-steps", "4",
            "--out", out, "--no-progress"]  # fmt: skip
    assert run([str(a) for a in args]) == 0
    assert "saved" in capsys.readouterr().out
    assert genlab.load(out).config.coupling == "ot"
    assert run(["eval", str(out), "--data", "checkerboard", "--n", "100", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["family"] == "flow" and result["log_prob_kind"] == "exact"
    assert math.isfinite(result["nll"]) and math.isfinite(result["mmd"])
    assert run(["plot", str(out), "--data", "checkerboard", "--n", "200"]) == 0
    for name in ("plot.png", "trajectories.png", "samples.gif", "history.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 1000
    npy = tmp_path / "s.npy"
    assert run(["sample", str(out), "-n", "7", "--steps", "3", "--method", "euler",
                "--out", str(npy)]) == 0  # fmt: skip
    assert np.load(npy).shape == (7, 2)
    assert run(["sample", str(out), "-n", "7", "--eta", "0.5", "--out", str(npy)]) == 1


# -- bad input: far points, absurd sizes, diverged weights ----------------------------------------
NORMAL = torch.tensor([[1.0, -2.0], [0.0, -1.5]])
FAR = torch.tensor([[1e18, -2.0], [3.0, 1e10], [1e5, 1e5]])


@pytest.fixture(scope="module", params=["flow", "diffusion"])
def tiny_ode_model(request):
    """A briefly trained flow or diffusion on 2-D Gaussian points (both share log_prob)."""
    cls = genlab.models.FAMILIES[request.param]
    x = gaussian_points(300, 0).float()
    return cls(hidden=16, max_steps=30, warmup_steps=2, ema_decay=None).fit(x, progress=False)


@pytest.mark.parametrize("options", [{"rtol": 1e-3, "atol": 1e-3}, {"method": "rk4", "steps": 4}])
def test_far_points_get_a_closed_form_and_leave_the_other_rows_unchanged(tiny_ode_model, options):
    model = tiny_ode_model
    alone = model.log_prob(NORMAL, **options)
    mixed = model.log_prob(torch.cat([NORMAL[:1], FAR, NORMAL[1:]]), **options)
    assert model.log_prob_far_rows_ == 3
    torch.testing.assert_close(mixed[[0, 4]], alone, rtol=0, atol=0)  # as if the far were absent
    far = mixed[1:4]
    assert torch.isfinite(far).all() and bool(far.max() < alone.min())
    u = (FAR.double() - model.data_loc.double()) / model.data_scale.double()
    closed = standard_normal_log_prob(u) - model.data_scale.double().log().sum()
    torch.testing.assert_close(far, closed.float())  # the base density N(z; 0, I), in closed form
    with pytest.raises(ValueError, match="beyond the range of float32"):
        model.log_prob(torch.tensor([[1e20, 0.0], [1.0, -2.0]]), **options)
    model.log_prob(NORMAL, **options)
    assert model.log_prob_far_rows_ == 0


def test_absurd_sizes_and_steps_are_refused_up_front(tiny_ode_model):
    model, name = tiny_ode_model, type(tiny_ode_model).__name__
    method = {"FlowMatching": "heun", "Diffusion": "ddim"}[name]
    with pytest.raises(ValueError, match="at most 100,000"):
        model.sample(2, method=method, steps=10**12)
    with pytest.raises(ValueError, match="at most 100,000"):
        model.log_prob(NORMAL, method="rk4", steps=10**12)
    with pytest.raises(ValueError, match=r"return_trajectory .* of memory"):
        model.sample(10**7, method=method, steps=10**5, return_trajectory=True)
    with pytest.raises(ValueError, match="of memory"):
        model.sample(10**12)
    with pytest.raises(ValueError, match=r"network .* of memory.*smaller hidden"):
        type(model)(hidden=10**6, max_steps=1).fit(gaussian_points(10, 0).float())
    with pytest.raises(ValueError, match="more memory than any machine"):  # 10**24 weights
        type(model)(hidden=10**12, max_steps=1).fit(gaussian_points(10, 0).float())
    with pytest.raises(ValueError):  # beyond 64 bits (torch's message until base checks seeds)
        model.sample(2, seed=2**70)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63 - 1\]"):
        model.log_prob(NORMAL, method="rk4", steps=2, seed=2**64)
    for tolerance in ({"rtol": -1.0}, {"atol": math.nan}):  # refused even where unused
        with pytest.raises(ValueError, match="must be a finite number > 0"):
            model.sample(2, method=method, steps=2, **tolerance)
        with pytest.raises(ValueError, match="must be a finite number > 0"):
            model.log_prob(NORMAL, method="rk4", steps=2, **tolerance)
    with pytest.raises(TypeError, match="return_trajectory must be True or False"):
        model.sample(2, method=method, steps=2, return_trajectory="yes")


def test_a_diverged_field_raises_instead_of_sampling_inf(tiny_ode_model):
    import copy

    from genlab.models import DivergedError

    model = copy.deepcopy(tiny_ode_model)
    with torch.no_grad():
        for p in model.net.parameters():
            p.fill_(1e30)
    with pytest.raises(DivergedError, match="not finite"):
        model.sample(4, seed=0)
    with pytest.raises(ValueError, match="not finite"):
        model.log_prob(NORMAL, method="rk4", steps=2)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"depth": 10**6}, "depth must be"),
        ({"sample_steps": 10**12}, "sample_steps must be"),
        ({"hutchinson_probes": 10**12}, "hutchinson_probes must be"),
    ],
)
def test_absurd_flow_options_are_refused(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        FlowMatching(**options)


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_input_frequencies_reach_the_net_and_survive_save_load(tmp_path, family):
    """input_frequencies=L widens the MLP's first layer to D (1 + 2L) inputs; the folder keeps
    L, so the loaded model samples the same points; a saved model without it (L = 0) is the
    plain net."""
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    opts = {"hidden": 16, "depth": 1, "max_steps": 3, "warmup_steps": 1, "batch_size": 32}
    cls = {"flow": FlowMatching, "diffusion": Diffusion}[family]
    model = cls(input_frequencies=3, **opts).fit(x)
    first = next(m for m in model.net.modules() if isinstance(m, MLP)).input
    assert first.in_features == 2 * 7
    model.save(tmp_path / "m")
    assert (
        json.loads((tmp_path / "m" / "config.json").read_text())["config"]["input_frequencies"] == 3
    )
    loaded = genlab.load(tmp_path / "m")
    torch.testing.assert_close(loaded.sample(8, seed=1), model.sample(8, seed=1))
    plain = cls(**opts).fit(x)
    images = torch.rand(4, 1, 20, 20)  # 400 pixels: net="auto" gives a UNet
    with pytest.raises(ValueError, match=r"input_frequencies=2 feeds an MLP.*net='mlp'"):
        cls(input_frequencies=2, **opts).fit(images)
    assert next(m for m in plain.net.modules() if isinstance(m, MLP)).input.in_features == 2


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_cond_width_sizes_the_conditioning_and_survives_save_load(tmp_path, family):
    """cond_width=C makes the time embedding C wide and each FiLM map C -> 2 x hidden; the
    folder keeps C (the loaded model samples the same points); without it the conditioning is
    the hidden width, as in every folder saved before the option; a UNet refuses it."""
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    opts = {"hidden": 16, "depth": 2, "max_steps": 3, "warmup_steps": 1, "batch_size": 32}
    cls = {"flow": FlowMatching, "diffusion": Diffusion}[family]
    model = cls(cond_width=5, **opts).fit(x)
    net = next(m for m in model.net.modules() if isinstance(m, MLP))
    assert [b.film.in_features for b in net.blocks] == [5, 5]
    assert [b.film.out_features for b in net.blocks] == [32, 32]
    assert net.time_embed[-1].out_features == 5
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["config"]["cond_width"] == 5
    loaded = genlab.load(tmp_path / "m")
    torch.testing.assert_close(loaded.sample(8, seed=1), model.sample(8, seed=1))
    plain = next(m for m in cls(**opts).fit(x).net.modules() if isinstance(m, MLP))
    assert [b.film.in_features for b in plain.blocks] == [16, 16]
    with pytest.raises(ValueError, match=r"cond_width=4 sizes an MLP.*net='mlp'"):
        cls(cond_width=4, **opts).fit(torch.rand(4, 1, 20, 20))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="cond_width"):
            cls(cond_width=bad)


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_dropout_reaches_the_net_trains_and_is_off_when_sampling(tmp_path, family):
    """dropout=p puts nn.Dropout(p) in every residual block (MLP and UNet); a fitted or loaded
    model samples in eval mode, so its samples repeat under one seed and match the saved
    folder's, while the same net in train mode drops units (its outputs change from call to
    call)."""
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    opts = {"hidden": 16, "depth": 2, "max_steps": 3, "warmup_steps": 1, "batch_size": 32}
    cls = {"flow": FlowMatching, "diffusion": Diffusion}[family]
    model = cls(dropout=0.3, **opts).fit(x)
    drops = [m.p for m in model.net.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.3, 0.3]
    assert not model.training
    torch.testing.assert_close(model.sample(8, seed=1), model.sample(8, seed=1))
    model.save(tmp_path / "m")
    loaded = genlab.load(tmp_path / "m")
    assert not loaded.training and loaded.config.dropout == 0.3
    torch.testing.assert_close(loaded.sample(8, seed=1), model.sample(8, seed=1))
    net = next(m for m in loaded.net.modules() if isinstance(m, MLP)).train()
    z, t = torch.randn(64, 2), torch.full((64,), 0.5)
    assert not torch.equal(net(z, t), net(z, t))
    unet = cls(dropout=0.2, **{**opts, "base_channels": 4}).fit(torch.rand(4, 1, 20, 20))
    assert {m.p for m in unet.net.modules() if isinstance(m, torch.nn.Dropout)} == {0.2}
    with pytest.raises(ValueError, match="dropout"):
        cls(dropout=1.0)
