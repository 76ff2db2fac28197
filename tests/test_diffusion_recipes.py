"""Diffusion training recipes: the loss weights against their formulas, EDM's preconditioning
as v-prediction, the loss as a weighted eps-MSE, the training-time draws and the MLP depth."""

import math

import pytest
import torch

from genlab.models import Diffusion
from genlab.models.diffusion import (
    LOSS_WEIGHTS,
    edm_preconditioning,
    loss_weight,
    to_x0_eps,
)
from genlab.schedules import SCHEDULES

pytestmark = pytest.mark.usefixtures("one_thread")

LAMBDAS = torch.linspace(-12.0, 12.0, 49, dtype=torch.float64)


@pytest.mark.parametrize(
    "name, formula",
    [
        ("simple", lambda snr: torch.ones_like(snr)),
        ("min_snr", lambda snr: torch.minimum(snr, torch.full_like(snr, 5.0)) / snr),
        ("truncated_snr", lambda snr: torch.maximum(snr, torch.ones_like(snr)) / snr),
        # EDM: lambda(sigma) = (sigma^2 + 1) / sigma^2 on the x0-MSE = sigma^2 eps-MSE
        ("edm", lambda snr: (1 / snr + 1) / (1 / snr) * (1 / snr)),
        # rectified flow: 1 / alpha^2 with alpha = r / (1 + r), r = sqrt(snr) = alpha / sigma
        ("flow", lambda snr: ((snr.sqrt() + 1) / snr.sqrt()) ** 2),
    ],
)
def test_each_loss_weight_is_its_formula(name, formula):
    """w in eps-MSE units: the x0-MSE weight (min(snr, 5), max(snr, 1), EDM's lambda) divided
    by snr, since |x0_hat - x0|^2 = |eps_hat - eps|^2 / snr."""
    snr = LAMBDAS.exp()
    torch.testing.assert_close(loss_weight(LAMBDAS, name), formula(snr))
    assert set(LOSS_WEIGHTS) == {"simple", "min_snr", "truncated_snr", "edm", "flow"}


def test_edm_weight_is_the_v_mse():
    """EDM's weight on the eps-MSE is 1 + 1/snr, the factor that turns it into the v-MSE."""
    g = torch.Generator().manual_seed(0)
    t = torch.rand(64, 1, generator=g, dtype=torch.float64) * 0.98 + 0.01
    schedule = SCHEDULES["linear"]()
    a, s = schedule.alpha(t), schedule.sigma(t)
    x0, eps, err = (torch.randn(64, 3, generator=g, dtype=torch.float64) for _ in range(3))
    x_t = a * x0 + s * eps
    v, v_hat = a * eps - s * x0, a * (eps + err) - s * to_x0_eps(eps + err, x_t, a, s, "eps")[0]
    w = loss_weight(schedule.log_snr(t[:, 0]), "edm")
    torch.testing.assert_close((v_hat - v).square().sum(1), w * err.square().sum(1))


def test_flow_weight_is_the_rectified_velocity_mse():
    """On the rectified path (alpha_end -> 0: alpha = 1 - t, sigma = t) the "flow" weight turns
    the eps-MSE into flow matching's |u_hat - u|^2 with u = d x_t / dt = eps - x0."""
    from genlab.schedules import RectifiedSchedule

    g = torch.Generator().manual_seed(1)
    t = torch.rand(64, 1, generator=g, dtype=torch.float64) * 0.98 + 0.01
    schedule = RectifiedSchedule(alpha_end=1e-12)
    a, s = schedule.alpha(t), schedule.sigma(t)
    x0, eps, err = (torch.randn(64, 3, generator=g, dtype=torch.float64) for _ in range(3))
    x_t = a * x0 + s * eps
    x0_hat, eps_hat = to_x0_eps(eps + err, x_t, a, s, "eps")
    u, u_hat = schedule.velocity(x0, eps, t[:, 0]), schedule.velocity(x0_hat, eps_hat, t[:, 0])
    torch.testing.assert_close(u, eps - x0)
    w = loss_weight(schedule.log_snr(t[:, 0]), "flow")
    torch.testing.assert_close((u_hat - u).square().sum(1), w * err.square().sum(1))


def test_edm_preconditioning_is_its_table_and_v_prediction():
    """Karras et al. Table 1 (sigma_data = 1), and D = c_skip y + c_out F(c_in y) with
    y = x_t / alpha, sigma = sigma_t / alpha_t is the x0 of v-prediction with F = -v_hat."""
    sigma = torch.tensor([0.01, 0.3, 1.0, 4.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, lam = edm_preconditioning(sigma, sigma_data=0.5)
    torch.testing.assert_close(c_skip, 0.25 / (sigma**2 + 0.25))
    torch.testing.assert_close(c_out, sigma * 0.5 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(c_in, 1 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(lam, (sigma**2 + 0.25) / (0.5 * sigma) ** 2)
    schedule = SCHEDULES["cosine"]()
    t = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=torch.float64)
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    g = torch.Generator().manual_seed(1)
    x_t, v_hat = (torch.randn(4, 2, generator=g, dtype=torch.float64) for _ in range(2))
    c_skip, c_out, c_in, _ = edm_preconditioning(s / a)
    torch.testing.assert_close(c_in * x_t / a, x_t)  # the VP input is EDM's c_in y
    edm = c_skip * x_t / a + c_out * -v_hat
    torch.testing.assert_close(to_x0_eps(v_hat, x_t, a, s, "v")[0], edm)


def _model(**options) -> Diffusion:
    """An untrained Diffusion on 2-D points (built as `fit` builds it, without training)."""
    torch.manual_seed(0)
    model = Diffusion(hidden=16, max_steps=1, warmup_steps=0, timesteps=100, **options)
    model._build((2,), {"kind": "points", "net": "mlp", "levels": None, "n_classes": None})
    model.event_shape = (2,)
    return model


@pytest.mark.parametrize("weight", ["simple", "min_snr", "edm"])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_the_loss_is_a_weighted_eps_mse(weight, prediction):
    """loss = mean_b w(lambda_t) |eps_hat - eps|^2 / D, recomputed from the same draws."""
    model = _model(prediction=prediction, loss_weight=weight, time_sampling="logit_normal")
    x = torch.randn(32, 2)
    torch.manual_seed(5)
    got = model.loss((x,), 0)
    torch.manual_seed(5)
    z0 = model._train_rows(x)
    t = model._train_times(z0)
    eps = torch.randn_like(z0)
    a, s = model.schedule.alpha(t)[:, None], model.schedule.sigma(t)[:, None]
    x_t = a * z0 + s * eps
    with torch.no_grad():
        _, eps_hat = to_x0_eps(model.net(x_t, t, None), x_t, a, s, prediction)
    mse = (eps_hat - eps).square().mean(1)
    expected = (loss_weight(model.schedule.log_snr(t), weight) * mse).mean()
    torch.testing.assert_close(got["loss"].detach(), expected)
    torch.testing.assert_close(got["eps_mse"], mse.mean())


def test_uniform_time_sampling_keeps_the_discrete_draw(monkeypatch):
    """time_sampling="uniform" draws t = i / T (old behaviour); the others call _train_times."""
    seen = []
    for sampling in ("uniform", "lognormal"):
        model = _model(time_sampling=sampling)
        inner = model.net.forward
        monkeypatch.setattr(model.net, "forward", lambda x, t, y=None, f=inner: (
            seen.append(t.detach().clone()), f(x, t, y))[1])  # fmt: skip
        torch.manual_seed(0)
        model.loss((torch.randn(512, 2),), 0)
    grid = seen[0] * 100
    torch.testing.assert_close(grid, grid.round(), atol=1e-4, rtol=0)
    assert grid.min() >= 1 and grid.max() <= 100
    lognormal = seen[1] * 100
    assert (lognormal - lognormal.round()).abs().max() > 0.1  # continuous
    # EDM's lognormal puts the median at sigma = exp(-1.2): log-SNR 2.4
    median = float(model.schedule.log_snr(seen[1]).median())
    assert abs(median - 2.4) < 0.3


@pytest.mark.parametrize("depth", [1, 5])
def test_depth_sets_the_residual_blocks(depth):
    model = _model(depth=depth)
    assert len(model.net.net.blocks) == depth
    assert len(_model().net.net.blocks) == 3  # the default: today's three
    assert "depth" in model.size_options
    assert math.isfinite(float(model.sample(4, seed=0, steps=3).sum()))


def test_bad_recipe_options_are_refused():
    with pytest.raises(ValueError, match="depth"):
        Diffusion(depth=0)
    with pytest.raises(ValueError, match="loss_weight"):
        Diffusion(loss_weight="sigmoid")
