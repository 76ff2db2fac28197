"""Editing with the continuous families: `invert` (data -> noise by the ODE), SDEdit
(`sample(init=, strength=)`) and `inpaint`, against closed forms on Gaussian data and on tiny
trained models of both families."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from genlab.models import Diffusion, FlowMatching
from genlab.models.continuous import check_mask, check_strength

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = {"flow": FlowMatching, "diffusion": Diffusion}
M = torch.tensor([0.7, -1.2], dtype=torch.float64)  # the Gaussian's mean and std, model space
S = torch.tensor([0.5, 1.5], dtype=torch.float64)


# -- exact fields of N(M, diag(S^2)) data ---------------------------------------------------------
def gaussian_moments(schedule, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(alpha, sigma, d_alpha, d_sigma, mean_t, std_t) of x_t = alpha x0 + sigma eps at times
    t (B,), x0 ~ N(M, S^2) per dimension: mean_t = alpha M, std_t^2 = alpha^2 S^2 + sigma^2."""
    t = t.double()[:, None]
    a, s = schedule.alpha(t), schedule.sigma(t)
    da, ds = schedule.d_alpha(t), schedule.d_sigma(t)
    return a, s, da, ds, a * M, (a**2 * S**2 + s**2).sqrt()


class ExactVelocity(nn.Module):
    """The marginal velocity E[alpha' x0 + sigma' eps | x_t = x] of N(M, S^2) data:
    v = alpha' M + (alpha' alpha S^2 + sigma' sigma) / std_t^2 (x - alpha M)."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, x, t, y=None):
        a, s, da, ds, mean, std = gaussian_moments(self.schedule, t)
        v = da * M + (da * a * S**2 + ds * s) / std**2 * (x.double() - mean)
        return v.to(x.dtype)


class ExactEps(nn.Module):
    """The optimal eps-prediction of N(M, S^2) data: eps_hat = (x - alpha x0_hat) / sigma with
    x0_hat = E[x0 | x_t = x] = M + alpha S^2 / std_t^2 (x - alpha M)."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, x, t, y=None):
        a, s, _, _, mean, std = gaussian_moments(self.schedule, t)
        x0 = M + a * S**2 / std**2 * (x.double() - mean)
        return ((x.double() - a * x0) / s).to(x.dtype)


def exact_model(family: str, **options):
    """A 'fitted' 2-D model of either family whose network is the exact field of N(M, S^2),
    with an identity normalisation (model space = data space)."""
    cls = FAMILIES[family]
    model = cls(hidden=8, **options)
    model._build((2,), {"net": "mlp", "kind": "points", "n_classes": None, "levels": None})
    model.event_shape = (2,)
    if family == "flow":
        model = model.double()
        model.net = ExactVelocity(model.schedule)
    else:
        model.net = ExactEps(model.schedule)
    model.data_loc.zero_()
    model.data_scale.fill_(1.0)
    return model


def standardised_map(schedule, x: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    """The ODE's flow map from t0 to t1 for Gaussian data: (x - mean_t) / std_t is constant
    along the deterministic paths, so x(t1) = mean_t1 + std_t1 (x(t0) - mean_t0) / std_t0."""
    _, _, _, _, m0, s0 = gaussian_moments(schedule, torch.tensor([t0]))
    _, _, _, _, m1, s1 = gaussian_moments(schedule, torch.tensor([t1]))
    return m1 + s1 * (x.double() - m0) / s0


@pytest.fixture(scope="module")
def points() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return M + S * torch.randn(6, 2, generator=g, dtype=torch.float64)


# -- tiny trained models ---------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["flow", "diffusion"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def point_model(family):
    """A briefly trained model of either family on 2-D Gaussian points."""
    g = torch.Generator().manual_seed(1)
    x = (M + S * torch.randn(400, 2, generator=g, dtype=torch.float64)).float()
    cls = FAMILIES[family]
    return cls(hidden=16, max_steps=40, warmup_steps=2, ema_decay=None, seed=0).fit(
        x, progress=False
    )


@pytest.fixture(scope="module")
def image_model(family):
    """A briefly trained model of either family on random 1 x 6 x 6 images in [0, 1]."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(200, 1, 6, 6, generator=g)
    cls = FAMILIES[family]
    return cls(hidden=16, max_steps=20, warmup_steps=2, ema_decay=None, seed=0).fit(
        x, progress=False
    )


def few_steps(model) -> dict:
    """Cheap fixed-step sampler options of either family."""
    return {"steps": 6} if model.family == "flow" else {"method": "ddim", "steps": 6}


def test_the_exact_fields_are_the_gaussian_ones():
    """The test fields themselves: the flow velocity carries N(0, 1) at t = 1 to N(M, S^2)
    (the flow map of the closed form) and the eps-prediction's x0_hat at t ~ 0 is x."""
    model = exact_model("flow")
    eps = torch.randn(4000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = model.sample(4000, noise=eps, method="rk4", steps=40)
    torch.testing.assert_close(x, M + S * eps, atol=1e-6, rtol=0)
    diffusion = exact_model("diffusion")
    z = torch.tensor([[0.3, -0.2]])
    eps_hat = diffusion.net(z, torch.tensor([1e-6]))
    assert eps_hat.abs().max() < 1e-2


# -- pure checks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, True, "0.5", None])
def test_check_strength_refuses_anything_but_a_number_in_the_unit_interval(value):
    with pytest.raises(ValueError, match="strength"):
        check_strength(value)


def test_check_strength_accepts_numbers():
    assert check_strength(0) == 0.0
    assert check_strength(np.float32(0.25)) == 0.25
    assert check_strength(1) == 1.0


def test_check_mask_broadcasts_and_converts():
    mask = check_mask(torch.tensor([[1, 0]]), 3, (2,))
    assert mask.dtype == torch.bool and mask.shape == (3, 2)
    assert mask[:, 0].all() and not mask[:, 1].any()
    image = check_mask(np.ones((1, 1, 4, 4), dtype=bool), 2, (3, 4, 4))
    assert image.shape == (2, 3, 4, 4) and image.all()
    assert check_mask([0.0, 1.0], 2, (2,)).tolist() == [[False, True], [False, True]]


@pytest.mark.parametrize(
    ("mask", "error", "fragment"),
    [
        (torch.ones(3, 2), ValueError, "shape"),  # 3 rows for n = 2
        (torch.ones(2, 3), ValueError, "shape"),
        (torch.ones(2, 2, 1), ValueError, "shape"),
        (torch.full((2, 2), 0.5), ValueError, "0 or 1"),
        (torch.tensor([[math.nan, 1.0]]), ValueError, "0 or 1"),
        ("right half", TypeError, "mask"),
        (np.array([["a", "b"]]), TypeError, "mask"),
    ],
)
def test_check_mask_refuses_bad_masks(mask, error, fragment):
    with pytest.raises(error, match=fragment):
        check_mask(mask, 2, (2,))


# -- invert ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["linear", "vp"])
def test_flow_invert_is_the_closed_form_flow_map(points, path):
    """For N(M, S^2) data and the exact marginal velocity, the flow map from the data (t = 0)
    to the noise (t = 1) is z_1 = (z_0 - M) / S (linear path: mean_t = (1 - t) M,
    std_t^2 = (1 - t)^2 S^2 + t^2, and (z - mean_t) / std_t is constant along a path)."""
    model = exact_model("flow", path=path)
    noise = model.invert(points, method="rk4", steps=64)
    assert noise.shape == points.shape
    torch.testing.assert_close(noise, (points - M) / S, atol=1e-7, rtol=0)
    assert model.nfe_ == 4 * 64


def test_diffusion_invert_is_the_closed_form_ode_map(points):
    """Diffusion's probability-flow ODE from t0 = 1 / T to t = 1 keeps (z - alpha M) / std_t
    constant for Gaussian data: z_1 = alpha_1 M + std_1 (z - alpha_t0 M) / std_t0."""
    model = exact_model("diffusion")
    noise = model.invert(points.float(), method="rk4", steps=100)
    expected = standardised_map(model.schedule, points, 1 / model.config.timesteps, 1.0)
    torch.testing.assert_close(noise.double(), expected, atol=2e-4, rtol=0)


def test_flow_invert_round_trip_error_falls_with_steps(points):
    """invert then sample back with the same solver: the reconstruction error of heun falls
    about 4x per doubling of the steps (second order), on the exact Gaussian flow."""
    model = exact_model("flow")
    errors = []
    for steps in (4, 8, 16, 32):
        noise = model.invert(points, steps=steps)
        back = model.sample(len(points), noise=noise, **model.inversion_sampler(steps=steps))
        errors.append(float((back - points).abs().max()))
    assert errors[-1] < 1e-3
    for coarse, fine in itertools.pairwise(errors):
        assert fine < coarse / 2.5


def test_invert_round_trip_of_trained_models(point_model):
    """Both families, a trained network: the round trip error falls with the steps and is
    small at 64 heun steps."""
    x = point_model.sample(50, seed=4, **few_steps(point_model))
    errors = []
    for steps in (4, 16, 64):
        noise = point_model.invert(x, steps=steps)
        assert noise.shape == x.shape and torch.isfinite(noise).all()
        back = point_model.sample(50, noise=noise, **point_model.inversion_sampler(steps=steps))
        errors.append(float((back - x).abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-2 * float(x.abs().max())


def test_inverted_data_look_like_standard_normal_noise():
    """Inverting many draws of N(M, S^2) gives noise with mean ~0 and std ~1."""
    model = exact_model("flow")
    g = torch.Generator().manual_seed(5)
    x = M + S * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    noise = model.invert(x, steps=20)
    assert noise.mean(0).abs().max() < 0.06
    assert (noise.std(0) - 1).abs().max() < 0.05


def test_inversion_sampler_names_the_matching_ode():
    assert exact_model("flow").inversion_sampler(steps=7) == {"method": "heun", "steps": 7}
    assert exact_model("flow").inversion_sampler() == {"method": "heun", "steps": 50}
    diffusion = exact_model("diffusion")
    assert diffusion.inversion_sampler(steps=7) == {"method": "ode", "solver": "heun", "steps": 7}
    assert diffusion.inversion_sampler("dopri5") == {"method": "ode", "solver": "dopri5"}


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_invert_refuses_bad_input(family):
    model = exact_model(family)
    with pytest.raises(ValueError, match=r"x must be rows of shape \(n, 2\)"):
        model.invert(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"NaN|finite"):
        model.invert(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(TypeError, match="x must be rows"):
        model.invert("image.png")
    with pytest.raises(ValueError, match="steps"):
        model.invert(torch.zeros(3, 2), steps=0)


# -- SDEdit: sample(init=, strength=) ------------------------------------------------------------
def test_strength_zero_returns_the_input_exactly(point_model, image_model):
    g = torch.Generator().manual_seed(6)
    images, points = torch.rand(50, 1, 6, 6, generator=g), torch.randn(200, 2, generator=g)
    for model, x in ((point_model, points), (image_model, images)):
        out = model.sample(len(x), seed=7, init=x, strength=0.0, **few_steps(model))
        assert torch.equal(out, x), model.family
        assert model.nfe_ == 0


def test_strength_one_is_plain_sampling(point_model, image_model):
    g = torch.Generator().manual_seed(8)
    images, points = torch.rand(5, 1, 6, 6, generator=g), torch.randn(5, 2, generator=g)
    for model, x in ((point_model, points), (image_model, images)):
        plain = model.sample(5, seed=9, **few_steps(model))
        edited = model.sample(5, seed=9, init=x, strength=1.0, **few_steps(model))
        assert torch.equal(edited, plain), model.family


def test_sdedit_moves_away_from_the_input_as_strength_grows(point_model):
    x = point_model.sample(200, seed=10, **few_steps(point_model))
    distances = []
    for s in (0.1, 0.5, 1.0):
        out = point_model.sample(200, seed=11, init=x, strength=s, **few_steps(point_model))
        assert out.shape == x.shape and torch.isfinite(out).all()
        distances.append(float((out - x).norm(dim=1).mean()))
    assert distances[0] < distances[1] < distances[2]


@pytest.mark.parametrize("strength", [0.3, 0.7])
def test_flow_sdedit_is_the_closed_form_on_gaussian_data(points, strength):
    """From z_s = alpha(s) x + sigma(s) eps the exact flow ODE keeps (z - mean_t) / std_t, so
    SDEdit returns M + S (z_s - mean_s) / std_s."""
    model = exact_model("flow")
    eps = torch.randn(len(points), 2, generator=torch.Generator().manual_seed(12),
                      dtype=torch.float64)  # fmt: skip
    out = model.sample(len(points), noise=eps, init=points, strength=strength, method="rk4",
                       steps=40)  # fmt: skip
    a, s = model._alpha_sigma(strength)
    expected = standardised_map(model.schedule, a * points + s * eps, strength, 0.0)
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=0)


def test_one_init_row_serves_all_samples(point_model):
    x = point_model.sample(1, seed=13, **few_steps(point_model))
    out = point_model.sample(4, seed=14, init=x, strength=0.5, **few_steps(point_model))
    assert out.shape == (4, 2)
    assert len({tuple(row.tolist()) for row in out}) == 4  # different noise, different edits


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_sdedit_refuses_bad_input(family):
    model = exact_model(family)
    x = torch.zeros(3, 2)
    for bad in (-0.5, 1.2, "half", True):
        with pytest.raises(ValueError, match="strength"):
            model.sample(3, init=x, strength=bad)
    with pytest.raises(ValueError, match=r"init must be rows of shape \(n, 2\)"):
        model.sample(3, init=torch.zeros(3, 4), strength=0.5)
    with pytest.raises(ValueError, match="init has 2 rows for n=3"):
        model.sample(3, init=torch.zeros(2, 2), strength=0.5)
    with pytest.raises(ValueError, match="pass them as init"):
        model.sample(3, strength=0.5)
    with pytest.raises(TypeError, match="init must be rows"):
        model.sample(3, init="points.npy", strength=0.5)


def test_image_init_must_lie_in_the_unit_interval(image_model):
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        image_model.sample(1, init=torch.full((1, 1, 6, 6), 2.0), strength=0.5)


# -- inpaint ------------------------------------------------------------------------------------
def half_mask(n: int = 1) -> torch.Tensor:
    """Generate the right half of 6 x 6 images."""
    mask = torch.zeros(n, 1, 6, 6, dtype=torch.bool)
    mask[..., 3:] = True
    return mask


def test_inpaint_keeps_known_pixels_exactly_and_changes_the_rest(image_model):
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(15))
    mask = half_mask()
    out = image_model.inpaint(x, mask, seed=0, **few_steps(image_model))
    assert out.shape == x.shape and out.dtype == x.dtype
    keep = ~mask.expand_as(x)
    assert torch.equal(out[keep], x[keep])  # bit for bit
    assert (out[~keep] - x[~keep]).abs().mean() > 0.05
    assert image_model._projection is None


def test_inpaint_keeps_float64_inputs_bit_for_bit(point_model):
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(16))
    x = x + torch.rand(5, 2, dtype=torch.float64) * 1e-9  # digits beyond float32's
    out = point_model.inpaint(x, [0, 1], seed=1, **few_steps(point_model))
    assert out.dtype == torch.float64
    assert torch.equal(out[:, 0], x[:, 0])
    assert not torch.equal(out[:, 1], x[:, 1])


def test_inpaint_is_seeded_and_the_projection_follows_the_start_noise(point_model):
    x = point_model.sample(20, seed=17, **few_steps(point_model))
    a = point_model.inpaint(x, [[0, 1]], seed=3, **few_steps(point_model))
    b = point_model.inpaint(x, [[0, 1]], seed=3, **few_steps(point_model))
    c = point_model.inpaint(x, [[0, 1]], seed=4, **few_steps(point_model))
    assert torch.equal(a, b) and not torch.equal(a, c)
    eps = torch.randn(20, 2, generator=torch.Generator().manual_seed(3))
    d = point_model.inpaint(x, [[0, 1]], noise=eps, **few_steps(point_model))
    assert torch.equal(a, d)  # seed=s draws the noise torch.randn(n, ..., seed s)


def test_inpaint_with_an_empty_mask_returns_the_input_and_a_full_mask_samples(point_model):
    x = point_model.sample(6, seed=18, **few_steps(point_model))
    kept = point_model.inpaint(x, torch.zeros(2, dtype=torch.bool), seed=5,
                               **few_steps(point_model))  # fmt: skip
    assert torch.equal(kept, x)
    full = point_model.inpaint(x, torch.ones(2), seed=5, **few_steps(point_model))
    plain = point_model.sample(6, seed=5, **few_steps(point_model))
    torch.testing.assert_close(full, plain.to(full.dtype))


def test_flow_inpaint_of_one_coordinate_samples_it_given_the_other():
    """Independent coordinates of the exact Gaussian flow: the field of a diagonal Gaussian
    acts per coordinate, so inpainting coordinate 1 keeps coordinate 0 and carries the start
    noise eps_1 to M_1 + S_1 eps_1 (the flow map), whatever coordinate 0 holds."""
    model = exact_model("flow")
    x = torch.zeros(50, 2, dtype=torch.float64)
    x[:, 0] = 5.0  # far from the data: must not matter
    eps = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = model.inpaint(x, [0, 1], noise=eps, method="rk4", steps=20)
    assert torch.equal(out[:, 0], x[:, 0])
    torch.testing.assert_close(out[:, 1], M[1] + S[1] * eps[:, 1], atol=1e-6, rtol=0)


def test_inpaint_with_strength_starts_from_the_noised_input(point_model):
    x = point_model.sample(200, seed=19, **few_steps(point_model))
    near = point_model.inpaint(x, [0, 1], seed=6, strength=0.2, **few_steps(point_model))
    far = point_model.inpaint(x, [0, 1], seed=6, **few_steps(point_model))
    assert torch.equal(near[:, 0], x[:, 0])
    assert (near[:, 1] - x[:, 1]).abs().mean() < (far[:, 1] - x[:, 1]).abs().mean()


def test_inpaint_refuses_bad_input(point_model):
    x = torch.zeros(3, 2)
    options = few_steps(point_model)
    with pytest.raises(ValueError, match="mask must have shape"):
        point_model.inpaint(x, torch.ones(3, 3), **options)
    with pytest.raises(ValueError, match="mask must have shape"):
        point_model.inpaint(x, torch.ones(2, 2), **options)
    with pytest.raises(ValueError, match="0 or 1"):
        point_model.inpaint(x, torch.full((3, 2), 0.5), **options)
    with pytest.raises(TypeError, match="mask"):
        point_model.inpaint(x, "mask.png", **options)
    with pytest.raises(ValueError, match="strength"):
        point_model.inpaint(x, [0, 1], strength=2.0, **options)
    with pytest.raises(ValueError, match=r"x must be rows of shape \(n, 2\)"):
        point_model.inpaint(torch.zeros(3, 5), [0, 1], **options)
    with pytest.raises(ValueError, match="inpaint takes no init"):
        point_model.inpaint(x, [0, 1], init=x, **options)
    with pytest.raises(ValueError):  # the family's own check, then the projection is cleared
        point_model.inpaint(x, [0, 1], steps=-1)
    assert point_model._projection is None


def test_inpaint_needs_a_fixed_step_method(point_model):
    if point_model.family == "flow":
        bad = {"method": "dopri5"}
    else:
        bad = {"method": "ode", "solver": "dopri5"}
    with pytest.raises(ValueError, match="fixed-step"):
        point_model.inpaint(torch.zeros(3, 2), [0, 1], **bad)
    assert point_model._projection is None


@pytest.mark.parametrize("family", ["diffusion"], indirect=True)
def test_diffusion_inpaint_runs_every_sampler(point_model):
    """Every diffusion sampler keeps the known coordinate (the flow has one ODE sampler)."""
    x = point_model.sample(5, seed=20, method="ddim", steps=5)
    for options in ({"method": "ddpm", "steps": 5}, {"method": "ddim", "steps": 5},
                    {"method": "dpm++", "steps": 5},
                    {"method": "ode", "solver": "heun", "steps": 5},
                    {"method": "ddim", "steps": 5, "resample": 1},
                    {"method": "heun", "steps": 4}, {"method": "unipc", "steps": 5}):  # fmt: skip
        out = point_model.inpaint(x, [1, 0], seed=0, **options)
        assert torch.equal(out[:, 1], x[:, 1]), options
        assert not torch.equal(out[:, 0], x[:, 0]), options


class CorrelatedVelocity(nn.Module):
    """The exact marginal velocity of N(M, C) data, C = [[S_0^2, r S_0 S_1], [r S_0 S_1,
    S_1^2]]: v = alpha' M + (alpha' alpha C + sigma' sigma I)(alpha^2 C + sigma^2 I)^-1
    (x - alpha M)."""

    def __init__(self, schedule, rho: float):
        super().__init__()
        self.schedule = schedule
        off = rho * S[0] * S[1]
        self.C = torch.stack([torch.stack([S[0] ** 2, off]), torch.stack([off, S[1] ** 2])])

    def forward(self, x, t, y=None):
        a, s, da, ds, mean, _ = gaussian_moments(self.schedule, t)
        eye = torch.eye(2, dtype=torch.float64)
        cov = a[:, :, None] ** 2 * self.C + s[:, :, None] ** 2 * eye
        cross = (da * a)[:, :, None] * self.C + (ds * s)[:, :, None] * eye
        r = torch.linalg.solve(cov, (x.double() - mean)[:, :, None])
        return (da * M + (cross @ r)[:, :, 0]).to(x.dtype)


def test_resampling_brings_inpainting_closer_to_the_true_conditional():
    """y given x of a correlated Gaussian (rho = 0.9, x one std above its mean: y | x has mean
    M_1 + rho S_1 = 0.15, where the marginal's is -1.2). Plain replacement along the ODE is
    far from it (diffusers' inpainting has the same bias); RePaint's resampling rounds move
    the samples towards it, each round costing 2 NFE per step."""
    rho = 0.9
    model = exact_model("flow")
    model.net = CorrelatedVelocity(model.schedule, rho)
    x = torch.zeros(1000, 2, dtype=torch.float64)
    x[:, 0] = M[0] + S[0]
    target = float(M[1] + rho * S[1])
    gaps = []
    for rounds in (0, 2, 8):
        out = model.inpaint(x, [0, 1], seed=0, steps=10, resample=rounds)
        assert torch.equal(out[:, 0], x[:, 0])
        assert model.nfe_ == 20 + rounds * 2 * 9  # no resampling after the last step (t = 0)
        gaps.append(abs(float(out[:, 1].mean()) - target))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[0] > 0.8 and gaps[2] < 0.6 * gaps[0]


@pytest.mark.parametrize("value", [-1, 1.5, True, "3", 10**6])
def test_resample_must_be_a_small_count(point_model, value):
    with pytest.raises(ValueError, match="resample"):
        point_model.inpaint(torch.zeros(2, 2), [0, 1], resample=value, **few_steps(point_model))
