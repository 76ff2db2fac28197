"""The sampling contract (`genlab.sampling`, `genlab.solvers.StepMonitor`): seed and generator,
given starting noise, per-step callbacks that can stop sampling, progress bars; against closed
forms where they are cheap (a linear ODE, the Gaussian-to-Gaussian flow map)."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from genlab import sampling, solvers
from genlab.models import VAE, Autoregressive, Diffusion, FlowMatching

pytestmark = pytest.mark.usefixtures("one_thread")

POINTS = torch.from_numpy(
    np.random.default_rng(0).multivariate_normal([1.0, -2.0], [[1.0, 0.6], [0.6, 0.5]], 300)
).float()
FAST = {"hidden": 16, "max_steps": 10, "warmup_steps": 2, "ema_decay": None}
# every sampler of the ODE families, cheap: (family, options)
SAMPLERS = [
    ("flow", {"method": "heun", "steps": 6}),
    ("flow", {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3}),
    ("diffusion", {"method": "ddpm", "steps": 8}),
    ("diffusion", {"method": "ddim", "steps": 6}),
    ("diffusion", {"method": "ddim", "steps": 6, "eta": 1.0}),
    ("diffusion", {"method": "dpm++", "steps": 6, "eta": 0.0}),
    ("diffusion", {"method": "ode", "steps": 5, "solver": "rk4"}),
]
DETERMINISTIC = [s for s in SAMPLERS if s[1].get("method") != "ddpm" and not s[1].get("eta")]
FIXED = [s for s in SAMPLERS if "steps" in s[1]]


@pytest.fixture(scope="module")
def models():
    flow = FlowMatching(**FAST).fit(POINTS, progress=False)
    diffusion = Diffusion(timesteps=50, **FAST).fit(POINTS, progress=False)
    return {"flow": flow, "diffusion": diffusion}


def seeded(s: int) -> torch.Generator:
    return torch.Generator().manual_seed(s)


def ids(cases):
    return [f"{f}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for f, o in cases]


# -- seed and generator ------------------------------------------------------------------------
@pytest.mark.parametrize("family, options", SAMPLERS, ids=ids(SAMPLERS))
def test_seed_is_a_cpu_generator_seeded_with_it(models, family, options):
    model = models[family]
    a = model.sample(5, seed=3, **options)
    b = model.sample(5, generator=seeded(3), **options)
    assert torch.equal(a, b)
    assert not torch.equal(a, model.sample(5, seed=4, **options))


def test_a_generator_is_advanced_in_place_and_the_global_rng_is_left_alone(models):
    model = models["diffusion"]
    state = torch.get_rng_state()
    g = seeded(0)
    first, second = model.sample(4, generator=g, method="ddpm", steps=5), None
    second = model.sample(4, generator=g, method="ddpm", steps=5)
    assert not torch.equal(first, second)  # the second call continues the stream
    g2 = seeded(0)
    assert torch.equal(first, model.sample(4, generator=g2, method="ddpm", steps=5))
    assert torch.equal(second, model.sample(4, generator=g2, method="ddpm", steps=5))
    assert torch.equal(state, torch.get_rng_state())


# -- given noise -------------------------------------------------------------------------------
@pytest.mark.parametrize("family, options", DETERMINISTIC, ids=ids(DETERMINISTIC))
def test_deterministic_samplers_map_given_noise_whatever_the_seed(models, family, options):
    model = models[family]
    noise = torch.randn(5, 2, generator=seeded(11))  # what seed=11 draws first
    from_seed = model.sample(5, seed=11, **options)
    assert torch.equal(model.sample(5, noise=noise, **options), from_seed)
    assert torch.equal(model.sample(5, noise=noise, seed=99, **options), from_seed)
    assert torch.equal(model.sample(5, noise=noise.double(), **options), from_seed)


@pytest.mark.parametrize(
    "options", [{"method": "ddpm", "steps": 8}, {"method": "ddim", "eta": 1.0}]
)
def test_stochastic_samplers_take_later_noise_from_the_generator(models, options):
    model = models["diffusion"]
    noise = torch.randn(5, 2, generator=seeded(1))
    a = model.sample(5, noise=noise, seed=2, **options)
    assert torch.equal(a, model.sample(5, noise=noise, generator=seeded(2), **options))
    assert not torch.equal(a, model.sample(5, noise=noise, seed=3, **options))


class NormalVelocity(nn.Module):
    """The exact velocity of the linear path (sigma_min = 0) to N(m, diag(s^2)) in model space:
    x_t ~ N((1 - t) m, (1 - t)^2 s^2 + t^2), and E[eps - x0 | x_t = x] is
    -m + (t - (1 - t) s^2) (x - (1 - t) m) / ((1 - t)^2 s^2 + t^2)."""

    def __init__(self, m: torch.Tensor, s: torch.Tensor):
        super().__init__()
        self.m, self.s2 = m.double(), s.double().square()

    def forward(self, x, t, y=None):
        t = t.double()[:, None]
        var = (1 - t) ** 2 * self.s2 + t**2
        return (-self.m + (t - (1 - t) * self.s2) * (x.double() - (1 - t) * self.m) / var).to(
            x.dtype
        )


def test_flow_carries_given_noise_along_the_closed_form_map():
    """The Gaussian flow map is x(0) = m + s * x(1) per dimension: from given noise, the
    samples are loc + scale * (m + s * noise) in data space."""
    model = FlowMatching(hidden=8, depth=1)
    model._build((2,), {"net": "mlp", "n_classes": None, "levels": None})
    model.event_shape = (2,)
    model = model.double()
    loc, scale = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.5])
    m, s = torch.tensor([0.3, -0.7]), torch.tensor([1.5, 0.4])
    model.data_loc.copy_(loc)
    model.data_scale.copy_(scale)
    model.net = NormalVelocity(m, s)
    noise = torch.randn(50, 2, generator=seeded(5), dtype=torch.float64)
    out = model.sample(50, noise=noise, method="dopri5", rtol=1e-9, atol=1e-9)
    expected = loc.double() + scale.double() * (m.double() + s.double() * noise)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


# -- callbacks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family, options", SAMPLERS, ids=ids(SAMPLERS))
def test_the_callback_sees_every_step_in_order(models, family, options):
    model = models[family]
    seen = []
    out = model.sample(5, seed=0, callback=lambda k, t, x: seen.append((k, t, x)), **options)
    assert torch.equal(out, model.sample(5, seed=0, **options))  # watching changes nothing
    steps = [k for k, _, _ in seen]
    times = [t for _, t, _ in seen]
    assert steps == list(range(1, len(seen) + 1))
    if "steps" in options:
        assert len(seen) == options["steps"]
    assert all(a > b for a, b in itertools.pairwise([1.0, *times]))  # from 1 towards the data
    assert all(isinstance(t, float) for t in times)
    end = 1 / model.config.timesteps if options.get("method") == "ode" else None
    if family == "flow" or end is not None:
        assert times[-1] == pytest.approx(0.0 if end is None else end, abs=1e-12)
    assert all(x.shape == (5, 2) for _, _, x in seen)
    torch.testing.assert_close(seen[-1][2], out)  # the last state is the samples


@pytest.mark.parametrize("family, options", FIXED, ids=ids(FIXED))
def test_a_callback_returning_true_stops_and_its_state_is_returned(models, family, options):
    model = models[family]
    seen = []

    def stop_at_3(k, t, x):
        seen.append((k, t, x.clone()))
        return k == 3

    out = model.sample(5, seed=0, callback=stop_at_3, **options)
    assert [k for k, _, _ in seen] == [1, 2, 3]
    assert torch.equal(out, seen[-1][2])
    assert not torch.allclose(out, model.sample(5, seed=0, **options))  # it did stop early
    traj = model.sample(5, seed=0, callback=lambda k, t, x: k == 3, return_trajectory=True,
                        **options)  # fmt: skip
    assert len(traj.trajectory) == len(traj.times) == 4  # the start and 3 steps
    assert torch.equal(traj.samples, out)
    assert float(traj.times[-1]) == pytest.approx(seen[-1][1])


def test_a_callback_stops_dopri5_after_an_accepted_step(models):
    model = models["flow"]
    seen = []
    out = model.sample(4, seed=0, method="dopri5", rtol=1e-4, atol=1e-4,
                       callback=lambda k, t, x: seen.append((t, x)) or k == 2)  # fmt: skip
    assert len(seen) == 2 and 0 < seen[-1][0] < 1
    assert torch.equal(out, seen[-1][1])


def test_solve_calls_back_with_the_states_of_its_trajectory():
    """dx/dt = -x (x(t) = x0 exp(t0 - t)): the callback's states are the trajectory's, and a
    stop at step k ends the solution at time t0 + k dt."""
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    full = solvers.solve(lambda t, x: -x, x0, 0.0, 1.0, method="rk4", steps=10,
                         return_trajectory=True)  # fmt: skip
    seen = []
    sol = solvers.solve(lambda t, x: -x, x0, 0.0, 1.0, method="rk4", steps=10,
                        callback=lambda k, t, x: seen.append((k, t, x)) or k == 4,
                        return_trajectory=True)  # fmt: skip
    assert sol.stopped and not full.stopped
    assert [k for k, _, _ in seen] == [1, 2, 3, 4]
    assert [t for _, t, _ in seen] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    for k, _, x in seen:
        assert torch.equal(x, full.trajectory[k])
    assert torch.equal(sol.x, full.trajectory[4]) and sol.nfe == 16
    torch.testing.assert_close(sol.times, full.times[:5])
    torch.testing.assert_close(sol.x, x0 * math.exp(-0.4), rtol=1e-6, atol=0)
    # dopri5: one call per accepted step, at the accepted times
    seen.clear()
    sol = solvers.solve(lambda t, x: -x, x0, 0.0, 1.0, method="dopri5",
                        callback=lambda k, t, x: seen.append((k, t, x)))  # fmt: skip
    assert [t for _, t, _ in seen] == pytest.approx(sol.times[1:].tolist())
    torch.testing.assert_close(seen[-1][2], x0 * math.exp(-1.0), rtol=1e-4, atol=0)


def test_vae_and_autoregressive_take_a_generator():
    vae = VAE(latent_dim=1, hidden=16, max_steps=20, warmup_steps=2).fit(POINTS, progress=False)
    assert torch.equal(vae.sample(6, seed=2), vae.sample(6, generator=seeded(2)))
    z = torch.randn(6, 1, generator=seeded(2))  # the latents seed=2 draws first
    assert torch.equal(vae.sample(6, seed=2, mean=True), vae.sample(6, noise=z, mean=True))
    assert torch.equal(vae.sample(6, noise=z, mean=True, seed=9), vae.sample(6, noise=z, mean=True))
    with pytest.raises(ValueError, match=r"shape \(6, 1\)"):
        vae.sample(6, noise=torch.randn(6, 2))
    with pytest.raises(ValueError, match="not both"):
        vae.sample(6, seed=1, generator=seeded(1))
    text = Autoregressive(
        block_size=8, n_layer=1, n_head=2, n_embd=16, max_steps=5, warmup_steps=1
    ).fit("the cat sat on the mat. " * 20, progress=False)
    a = text.sample(3, seed=4, max_new_tokens=12)
    assert a == text.sample(3, generator=seeded(4), max_new_tokens=12)
    assert a != text.sample(3, seed=5, max_new_tokens=12)
    with pytest.raises(ValueError, match="not both"):
        text.sample(3, seed=4, generator=seeded(4))


# -- progress bars -----------------------------------------------------------------------------
def test_progress_bars_draw_on_stderr(models, capsys):
    flow, diffusion = models["flow"], models["diffusion"]
    assert torch.equal(
        flow.sample(3, seed=0, steps=4, progress=True), flow.sample(3, seed=0, steps=4)
    )
    assert "ODE (heun)" in capsys.readouterr().err
    diffusion.sample(3, seed=0, method="ddim", steps=4, progress=True)
    assert "ddim sampling" in capsys.readouterr().err
    flow.sample(3, seed=0, method="dopri5", progress=True, rtol=1e-2, atol=1e-2)
    assert "ODE (dopri5)" in capsys.readouterr().err
    lp = flow.log_prob(POINTS[:4], method="rk4", steps=3, progress=True)
    assert "log p (exact trace)" in capsys.readouterr().err
    torch.testing.assert_close(lp, flow.log_prob(POINTS[:4], method="rk4", steps=3))
    flow.sample(3, seed=0, steps=4, progress=False)
    assert capsys.readouterr().err == ""


# -- bad input ---------------------------------------------------------------------------------
BAD = [
    ({"noise": torch.randn(4, 2)}, ValueError, r"shape \(5, 2\)"),
    ({"noise": torch.randn(5, 3)}, ValueError, r"shape \(5, 2\)"),
    ({"noise": torch.full((5, 2), math.nan)}, ValueError, "NaN"),
    ({"noise": torch.zeros(5, 2, dtype=torch.long)}, TypeError, "float"),
    ({"noise": [[0.0, 1.0]] * 5}, TypeError, "float tensor"),
    ({"seed": 1, "generator": torch.Generator()}, ValueError, "seed or generator, not both"),
    ({"generator": 3}, TypeError, "torch.Generator"),
    ({"seed": -1}, ValueError, "seed"),
    ({"callback": 3}, TypeError, "callback must be a function"),
    ({"callback": lambda k, t, x: "stop"}, TypeError, "True to stop"),
    ({"progress": "yes"}, TypeError, "progress must be"),
]


@pytest.mark.parametrize("family", ["flow", "diffusion"])
@pytest.mark.parametrize("options, error, fragment", BAD)
def test_bad_sampling_arguments_are_refused(models, family, options, error, fragment):
    with pytest.raises(error, match=fragment):
        models[family].sample(5, steps=3, **options)


def test_noise_helpers_name_the_fix():
    with pytest.raises(ValueError, match=r"torch.randn\(3, 2\)"):
        sampling.check_noise(torch.zeros(2, 2), (3, 2), "noise")
    assert sampling.check_noise(np.zeros((3, 2)), (3, 2), "noise").shape == (3, 2)
    g = sampling.resolve_generator(7, None)
    assert g.device.type == "cpu" and g.initial_seed() == 7
