"""One-step flows: MeanFlow's target and loss, its one-call sampler against the exact average
velocity of Gaussian data, reflow's two phases, grids and user time grids, save/load."""

import itertools
import math

import pytest
import torch

import genlab
from genlab import train
from genlab.models.flow import (
    FlowMatching,
    adaptive_weighted,
    draw_time_pairs,
    flow_grid,
    mean_flow_steps,
    meanflow_target,
    reflow_budgets,
)
from genlab.nets import MLP
from genlab.nets.embeddings import SinusoidalEmbedding, set_time_scale
from genlab.schedules import PATHS

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
M, S = 1.5, 0.4  # data x ~ N(M, S^2) (per dimension)


# -- the exact average velocity of Gaussian data on the linear path -----------------------------
def mean_sd(t):
    """z_t = (1 - t) x + t eps with x ~ N(M, S^2): mean and sd of z_t."""
    return (1 - t) * M, torch.sqrt((1 - t) ** 2 * S**2 + t**2)


def exact_flow_map(z, t, r):
    """The ODE of the marginal field maps z_t to z_r linearly: it is the monotone map between
    the Gaussians N(mu_t, sd_t^2) and N(mu_r, sd_r^2)."""
    (mt, st), (mr, sr) = mean_sd(t), mean_sd(r)
    return mr + (sr / st) * (z - mt)


def exact_u(z, r, t):
    """u(z, r, t) = (z_t - z_r) / (t - r) along the exact ODE; the velocity v(z, t) at r = t."""
    r, t = r.reshape(-1, *[1] * (z.ndim - 1)), t.reshape(-1, *[1] * (z.ndim - 1))
    gap = t - r
    safe = torch.where(gap > 1e-7, gap, torch.ones_like(gap))
    avg = (z - exact_flow_map(z, t, r)) / safe
    return torch.where(gap > 1e-7, avg, exact_v(z, t))


def exact_v(z, t):
    """The marginal velocity: d/dt of the flow map, v = -M + (dsd/dt / sd) (z - mu_t)."""
    t = t.reshape(-1, *[1] * (z.ndim - 1)) if torch.is_tensor(t) else t
    m, sd = mean_sd(t)
    dsd = (-(1 - t) * S**2 + t) / sd
    return -M + dsd / sd * (z - m)


def test_one_step_with_the_exact_average_velocity_gives_exact_samples():
    eps = torch.randn(20_000, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    calls = []

    def u(z, r, t):
        calls.append(1)
        return exact_u(z, r, t)

    for grid in ([1.0, 0.0], [1.0, 0.7, 0.2, 0.0]):
        calls.clear()
        x, reached, _ = mean_flow_steps(u, eps, grid)
        assert len(calls) == len(grid) - 1 and reached == grid
        torch.testing.assert_close(x, M + S * eps)  # exactly the data's monotone map


def test_meanflow_target_is_the_mean_flow_identity_on_the_exact_field():
    # with the marginal velocity as tangent, the exact u is a fixed point of the target
    g = torch.Generator().manual_seed(1)
    z = torch.randn(64, 3, dtype=F64, generator=g)
    t = torch.rand(64, dtype=F64, generator=g) * 0.9 + 0.05
    r = t * torch.rand(64, dtype=F64, generator=g)
    u, target = meanflow_target(exact_u, z, r, t, exact_v(z, t))
    torch.testing.assert_close(target, u, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(u, exact_u(z, r, t))


def test_meanflow_target_against_autograd_and_finite_differences_on_a_net():
    torch.manual_seed(0)
    net = MLP(2, 2, hidden=(16, 16), time_dim=8, time_inputs=2).double()

    def u(z, r, t):
        return net(z, torch.stack([t, t - r], 1))

    g = torch.Generator().manual_seed(2)
    z, v = torch.randn(5, 2, dtype=F64, generator=g), torch.randn(5, 2, dtype=F64, generator=g)
    t = torch.rand(5, dtype=F64, generator=g) * 0.5 + 0.4
    r = t - 0.3
    pred, target = meanflow_target(u, z, r, t, v)
    assert pred.requires_grad and not target.requires_grad
    pred2, target2 = meanflow_target(u, z, r, t, v, jvp="double_backward")  # the loss's way
    assert pred2.requires_grad and not target2.requires_grad
    torch.testing.assert_close(target2, target)
    torch.testing.assert_close(pred2, pred)
    h = 1e-7  # d/ds u(z + s v, r, t + s) at s = 0, central differences (the time features
    dudt = (u(z + h * v, r, t + h) - u(z - h * v, r, t - h)) / (2 * h)  # turn fast: small h)
    torch.testing.assert_close(target, v - (t - r)[:, None] * dudt, rtol=1e-5, atol=1e-6)
    # and by reverse-mode autograd, one output coordinate at a time
    rows = []
    for i in range(2):
        zz, tt = z.clone().requires_grad_(True), t.clone().requires_grad_(True)
        gz, gt = torch.autograd.grad(u(zz, r, tt)[:, i].sum(), (zz, tt))
        rows.append((gz * v).sum(1) + gt)
    torch.testing.assert_close(target, v - (t - r)[:, None] * torch.stack(rows, 1))


def test_a_trained_meanflow_learns_the_exact_one_step_map_of_gaussian_data():
    # data N(M, S^2) is standardised by the model, so in its space data and noise are both
    # N(0, 1) and the exact one-step map is the identity: sample(noise=eps) = loc + scale eps
    x = torch.randn(2048, 1, generator=torch.Generator().manual_seed(0)) * S + M
    model = FlowMatching(objective="meanflow", hidden=32, depth=2, max_steps=300, batch_size=256,
                         lr=3e-3, seed=0).fit(x)  # fmt: skip
    assert model.config.meanflow_ratio == 0.75 and model.config.time_embed_scale == 1.0
    eps = torch.randn(4000, 1, generator=torch.Generator().manual_seed(1))
    one_step = model.sample(4000, noise=eps)
    assert model.nfe_ == 1
    exact = model._to_data_space(eps)
    # the old defaults (ratio 0.25, features of t * 1000) gave 0.43 here, each fix alone 0.2
    assert float((one_step - exact).square().mean().sqrt()) < 0.15 * S
    assert float(one_step.std()) == pytest.approx(S, rel=0.1)
    assert float(one_step.mean()) == pytest.approx(M, abs=0.1 * S)


def test_time_features_scale_and_its_t_derivative():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    big, small = SinusoidalEmbedding(8).double(), SinusoidalEmbedding(8, scale=1.0).double()
    k = torch.arange(4, dtype=F64)
    angle = t[:, None] * 10_000.0 ** (-k / 4)
    torch.testing.assert_close(small(t), torch.cat([angle.cos(), angle.sin()], 1))
    torch.testing.assert_close(big(t), small(1000 * t))

    # d emb / dt is bounded by the scale: rough at 1000, smooth at 1
    def slope(emb):
        return torch.autograd.functional.jacobian(lambda s: emb(s).sum(0), t).abs().max()

    assert 100 < float(slope(big)) <= 1000 + 1e-9 and float(slope(small)) <= 1 + 1e-12
    net = MLP(2, 2, hidden=(8,), time_dim=8, time_inputs=2, time_scale=3.0)
    scales = {m.scale for m in net.modules() if isinstance(m, SinusoidalEmbedding)}
    assert scales == {3.0}
    set_time_scale(net, 1.0)
    assert {m.scale for m in net.modules() if isinstance(m, SinusoidalEmbedding)} == {1.0}
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="time scale"):
            SinusoidalEmbedding(8, scale=bad)


def test_time_pairs_and_adaptive_weight():
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(1000, generator=g), torch.rand(1000, generator=g)
    r, t = draw_time_pairs(a, b, 0.25)
    assert int((r < t).sum()) == 250 and bool((r <= t).all())
    torch.testing.assert_close(t, torch.maximum(a, b))
    err = torch.tensor([0.0, 1.0, 3.0])
    assert float(adaptive_weighted(err, 0.0)) == pytest.approx(4 / 3)
    expected = (1 / (1 + 1e-3) + 3 / (3 + 1e-3)) / 3
    assert float(adaptive_weighted(err, 1.0)) == pytest.approx(expected)


def fitted(objective, n=256, dim=2, **options):
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(0)) * S + M
    base = {"hidden": 16, "depth": 1, "max_steps": 6, "warmup_steps": 1, "batch_size": 32}
    return FlowMatching(objective=objective, **{**base, **options}).fit(x), x


def test_meanflow_with_r_equal_t_is_the_flow_matching_loss(monkeypatch):
    model, x = fitted("meanflow", meanflow_ratio=0.0, meanflow_power=0.0, max_steps=1)
    model.train()
    torch.manual_seed(5)
    loss = model.loss((x[:64],), 0)["loss"]
    torch.manual_seed(5)  # the same draws by hand: eps, then two times, t = max
    z0 = model._train_rows(x[:64])
    eps = torch.randn_like(z0)
    t = torch.maximum(model._train_times(z0), model._train_times(z0))
    x_t = model.schedule.marginal(z0, eps, t)
    v = model.schedule.velocity(z0, eps, t)
    fm = (model.net(x_t, torch.stack([t, torch.zeros_like(t)], 1)) - v).square().mean()
    torch.testing.assert_close(loss, fm)


def test_meanflow_samples_in_one_net_call_and_keeps_log_prob():
    model, x = fitted("meanflow")
    assert model.config.sample_steps == 1 and model.config.sample_method == "euler"
    assert model.config.time_sampling == "logit_normal" and model.config.time_location == -0.4
    calls = []
    model.net.register_forward_hook(lambda *a: calls.append(1))
    out = model.sample(100, seed=0)
    assert out.shape == (100, 2) and model.nfe_ == 1 and len(calls) == 1
    calls.clear()
    traj = model.sample(10, seed=0, steps=3, return_trajectory=True)
    assert model.nfe_ == 3 and len(calls) == 3 and traj.trajectory.shape == (4, 10, 2)
    torch.testing.assert_close(traj.times, torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]))
    with pytest.raises(ValueError, match="one-step rule"):
        model.sample(4, seed=0, method="heun")
    log_p = model.log_prob(x[:8], method="rk4", steps=4)
    assert log_p.shape == (8,) and bool(torch.isfinite(log_p).all())
    # log_prob integrates the instantaneous velocity u(z, t, t)
    z = torch.randn(4, 2)
    u = model.net(z, torch.stack([torch.full((4,), 0.3), torch.zeros(4)], 1))
    torch.testing.assert_close(model.velocity(z, 0.3), u)
    torch.testing.assert_close(model.mean_velocity(z, 0.3, 0.3), u)


def test_given_sample_options_win_over_the_one_step_defaults():
    model, _ = fitted("meanflow", sample_steps=4, time_sampling="uniform", max_steps=1)
    assert model.config.sample_steps == 4 and model.config.time_sampling == "uniform"
    assert model.sample(3, seed=0).shape == (3, 2) and model.nfe_ == 4


def test_reflow_budgets_split_steps_and_time():
    cfg = FlowMatching(objective="reflow", max_steps=11, max_time=10.0, reflow_share=0.5).config
    teacher, student = reflow_budgets(cfg)
    assert teacher.objective == "standard" and student.objective == "reflow"
    assert teacher.max_steps + student.max_steps == 11 and teacher.max_steps == 6
    assert teacher.max_time == student.max_time == 5.0
    assert reflow_budgets(FlowMatching(objective="reflow").config)[0].max_steps == round(
        0.8 * train.DEFAULT_MAX_STEPS
    )


def test_reflow_trains_on_the_teachers_own_pairs(monkeypatch):
    seen = []
    real = FlowMatching._reflow_pairs

    def spy(self, n, labels):
        pairs = real(self, n, labels)
        eps, z1 = pairs[:, 0], pairs[:, 1]
        # the pairs are the teacher's ODE solutions from their noise (its own sampler)
        sample = self.sample(n, noise=eps, method="heun", steps=10)
        torch.testing.assert_close(self._to_data_space(z1), sample)
        seen.append(pairs)
        return pairs

    monkeypatch.setattr(FlowMatching, "_reflow_pairs", spy)
    model, x = fitted("reflow", max_steps=8, reflow_end_share=0.0)
    assert len(seen) == 1 and seen[0].shape == (len(x), 2, 2)
    assert model.reflow_["teacher_steps"] == 6 and model.reflow_["student_steps"] == 2
    assert model.train_result_.steps == 8
    assert model.config.sample_steps == 1 and model.config.sample_method == "euler"
    model.sample(5, seed=0)
    assert model.nfe_ == 1
    # the second phase's loss is the regression along the pairs' straight paths
    model.train()
    torch.manual_seed(0)
    loss = model.loss((seen[0][:16],), 0)["loss"]
    torch.manual_seed(0)
    eps, z1 = seen[0][:16, 0], seen[0][:16, 1]
    t = model._train_times(z1)
    x_t = (1 - t)[:, None] * z1 + t[:, None] * eps
    torch.testing.assert_close(loss, (model.net(x_t, t) - (eps - z1)).square().mean())


def test_reflow_pairs_and_the_noise_end_share(monkeypatch):
    """reflow_pairs sets how many pairs the teacher draws (labels resampled for them);
    reflow_end_share puts that share of the student's rows at t = 1, where the loss is the
    distillation regression |v(eps, 1) - (eps - x1)|^2 of the one-step Euler sampler."""
    seen = []
    real = FlowMatching._reflow_pairs

    def spy(self, n, labels):
        seen.append((n, None if labels is None else labels.clone()))
        return real(self, n, labels)

    monkeypatch.setattr(FlowMatching, "_reflow_pairs", spy)
    model, x = fitted(
        "reflow", max_steps=8, reflow_pairs=300, reflow_end_share=0.25, reflow_steps=3
    )
    assert seen[0][0] == 300 and model.reflow_["pairs"] == 300
    pairs = real(model, 16, None)  # reflow_steps Heun steps of the ODE from the pairs' noise
    sample = model.sample(16, noise=pairs[:, 0], method="heun", steps=3)
    torch.testing.assert_close(model._to_data_space(pairs[:, 1]), sample)
    model.train()
    torch.manual_seed(0)
    loss = model.loss((pairs,), 0)["loss"]
    torch.manual_seed(0)
    eps, z1 = pairs[:, 0], pairs[:, 1]
    t = model._train_times(z1)
    t[:4] = 1.0  # round(0.25 * 16) rows at the noise end
    x_t = (1 - t)[:, None] * z1 + t[:, None] * eps
    torch.testing.assert_close(x_t[:4], eps[:4])
    torch.testing.assert_close(loss, (model.net(x_t, t) - (eps - z1)).square().mean())
    data_rows = model._train_rows(x[:16])  # a data batch keeps its drawn times
    torch.manual_seed(0)
    plain = model.loss((x[:16],), 0)["loss"]
    torch.manual_seed(0)
    eps = torch.randn_like(data_rows)  # the loss's order: noise, then times
    t = model._train_times(data_rows)
    assert (t < 1).all()
    torch.testing.assert_close(
        plain,
        (model.net((1 - t)[:, None] * data_rows + t[:, None] * eps, t) - (eps - data_rows))
        .square()
        .mean(),
    )
    # labels: the classes' own for one pair per row, else drawn from them
    y = torch.arange(256) % 4
    seen.clear()
    FlowMatching(
        objective="reflow",
        hidden=8,
        depth=1,
        max_steps=4,
        warmup_steps=1,
        batch_size=32,
        reflow_pairs=1000,
    ).fit(x, y)
    n, labels = seen[0]
    assert n == 1000 and labels.shape == (1000,) and set(labels.tolist()) == {0, 1, 2, 3}
    assert abs(float((labels == 0).float().mean()) - 0.25) < 0.06
    with pytest.raises(ValueError, match="reflow's 10,000,000 pairs would need"):
        FlowMatching(objective="reflow", reflow_pairs=10_000_000, max_steps=2).fit(
            torch.randn(64, 4000)
        )


def test_reflow_resumes_each_phase(tmp_path):
    x = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    opts = {"objective": "reflow", "hidden": 8, "depth": 1, "warmup_steps": 1,
            "batch_size": 32}  # fmt: skip
    whole = FlowMatching(max_steps=8, **opts).fit(x, out=tmp_path / "a")
    # a run cut in its first phase: its teacher checkpoint holds 3 of its 6 steps
    FlowMatching(max_steps=4, **opts).fit(x, out=tmp_path / "b")  # teacher 3 + student 1
    cut = tmp_path / "b"
    (cut / train.CHECKPOINT_FILE).unlink()
    resumed = FlowMatching(max_steps=8, **opts).fit(x, out=cut, resume=True)
    assert resumed.reflow_["teacher_steps"] == 6 and resumed.train_result_.steps == 8
    assert (tmp_path / "a" / "reflow_teacher" / train.CHECKPOINT_FILE).is_file()
    # resuming a finished run retrains nothing and lands on the same weights
    again = FlowMatching(max_steps=8, **opts).fit(x, out=tmp_path / "a", resume=True)
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)
    # a larger budget on resume trains the teacher further: the student restarts on new pairs
    longer = FlowMatching(max_steps=10, **opts).fit(x, out=tmp_path / "a", resume=True)
    assert longer.reflow_["teacher_steps"] == 8 and longer.reflow_["student_steps"] == 2
    # validation serves the teacher only (its last weights draw the pairs): no best weights
    held = FlowMatching(max_steps=4, val_fraction=0.25, eval_every=1, **opts).fit(x)
    assert held.train_result_.best_state is None and held.reflow_["pairs"] == 128


@pytest.mark.parametrize("objective", ["standard", "meanflow", "reflow"])
def test_save_load_round_trip(tmp_path, objective):
    model, _ = fitted(objective, max_steps=4)
    model.save(tmp_path / objective)
    loaded = genlab.load(tmp_path / objective)
    assert loaded.config == model.config
    torch.testing.assert_close(loaded.sample(16, seed=3), model.sample(16, seed=3))
    assert loaded.nfe_ == model.nfe_


def test_standard_default_keys_and_defaults_unchanged():
    model, _ = fitted("standard", max_steps=1)
    assert not any("time_embed_extra" in k for k in model.state_dict())
    assert model.config.sample_steps == 50 and model.config.sample_method == "heun"
    assert model.config.time_embed_scale == 1000.0 and model.config.meanflow_ratio == 0.25
    # MeanFlow's point defaults are for points only: images keep the measured digits recipe
    digits = torch.rand(16, 1, 8, 8)
    image = FlowMatching(objective="meanflow", max_steps=1, hidden=8, depth=1).fit(digits)
    assert image.config.time_embed_scale == 1000.0 and image.config.meanflow_ratio == 0.25
    options = {"time_embed_scale": 50.0, "meanflow_ratio": 0.5}
    given = FlowMatching(objective="meanflow", max_steps=1, hidden=8, depth=1, **options)
    given.fit(torch.randn(32, 2))
    assert given.config.time_embed_scale == 50.0 and given.config.meanflow_ratio == 0.5
    meanflow, _ = fitted("meanflow", max_steps=1)
    assert any("time_embed_extra" in k for k in meanflow.state_dict())


# -- grids, user times, the editing hooks ---------------------------------------------------------
def test_flow_grids():
    linear = PATHS["linear"](0.0)
    assert flow_grid(linear, "uniform", 4) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert flow_grid(linear, "uniform", 2, t_start=0.5) == pytest.approx([0.5, 0.25, 0.0])
    power = [0.5 * (1 - i / 4) ** 1.5 for i in range(5)]  # t^(2/3) linear, to 0
    assert flow_grid(linear, "power", 4, t_start=0.5) == pytest.approx(power, rel=1e-12)
    for name in ("logsnr", "karras"):
        g = flow_grid(linear, name, 6)
        assert len(g) == 7 and g[0] == 1.0 and g[-1] == 0.0
        assert g[1] == pytest.approx(80 / 81) and g[-2] == pytest.approx(0.002 / 1.002)
        assert all(a > b for a, b in itertools.pairwise(g))
        assert flow_grid(linear, name, 1) == [1.0, 0.0]


def test_times_and_grid_in_sample():
    model, _ = fitted("standard", max_steps=2)
    a = model.sample(8, seed=0, steps=4, method="euler")
    b = model.sample(8, seed=0, method="euler", times=[1.0, 0.75, 0.5, 0.25, 0.0])
    torch.testing.assert_close(a, b)
    assert model.nfe_ == 4
    c = model.sample(8, seed=0, method="euler", steps=5, grid="karras")
    assert model.nfe_ == 5 and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="start at"):
        model.sample(8, seed=0, times=[0.9, 0.0])
    with pytest.raises(ValueError, match="dopri5"):
        model.sample(8, seed=0, method="dopri5", times=[1.0, 0.0])
    with pytest.raises(ValueError, match="grid must be one of"):
        model.sample(8, seed=0, grid="cosine")


def test_init_strength_and_projection_hooks(monkeypatch):
    model, x = fitted("standard", max_steps=2)
    z_init = model._to_model_space(x[:8])
    projected = []

    def start(self, init, strength, eps):
        return (eps, 1.0) if init is None else (0.5 * z_init + 0.5 * eps, float(strength))

    def project(self, z, t):
        projected.append(t)
        return z

    monkeypatch.setattr(FlowMatching, "_edit_start", start)
    monkeypatch.setattr(FlowMatching, "_project_step", project)
    eps = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    out = model.sample(8, noise=eps, init=x[:8], strength=0.5, steps=2, method="euler")
    assert projected == pytest.approx([0.5, 0.25, 0.0]) and model.nfe_ == 2
    z, t = 0.5 * z_init + 0.5 * eps, 0.5  # two Euler steps by hand from t = 0.5
    for dt in (0.25, 0.25):
        z = z - dt * model.velocity(z, t)
        t -= dt
    torch.testing.assert_close(out, model._to_data_space(z))
    calls = []
    model.net.register_forward_hook(lambda *a: calls.append(1))
    monkeypatch.setattr(FlowMatching, "_edit_start", lambda self, i, s, e: (z_init, 0.0))
    same = model.sample(8, init=x[:8], strength=0.0)
    assert not calls and model.nfe_ == 0
    torch.testing.assert_close(same, x[:8])
    # a MeanFlow model projects after each of its steps too
    monkeypatch.setattr(FlowMatching, "_edit_start", start)
    meanflow, _ = fitted("meanflow", max_steps=1)
    projected.clear()
    meanflow.sample(8, noise=eps, steps=2)
    assert projected == pytest.approx([1.0, 0.5, 0.0])


def test_dopri5_with_a_projection_is_refused():
    model, _ = fitted("standard", max_steps=1)
    model._projection = lambda z, t: z
    try:
        with pytest.raises(ValueError, match="fixed-step method"):
            model.sample(4, seed=0, method="dopri5")
    finally:
        model._projection = None
    assert math.isfinite(float(model.sample(4, seed=0, method="dopri5").sum()))
