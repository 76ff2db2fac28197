"""ODE solvers against closed-form solutions: convergence orders, tolerances, NFE, trajectories,
and the ODE log-likelihood against the density of a linear flow."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.linalg import expm

from genlab.solvers import (
    DOPRI5_A,
    DOPRI5_B,
    DOPRI5_B4,
    DOPRI5_C,
    FIXED_STEPS,
    METHODS,
    NFE_PER_STEP,
    ODELikelihood,
    Solution,
    dopri5_step,
    log_likelihood,
    rk4_step,
    solve,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
ORDERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
ROTATION = torch.tensor([[-0.1, -2.0], [2.0, -0.1]], dtype=F64)  # a damped rotation
X0 = torch.tensor([[1.0, 0.0], [0.3, -0.5], [-2.0, 1.5]], dtype=F64)  # (3, 2)


def rotation_field(t, x):
    return x @ ROTATION.T


def rotation_exact(t):
    """x(t) = x0 expm(A t)^T, with scipy's matrix exponential as the reference."""
    return X0 @ torch.from_numpy(expm(ROTATION.numpy() * t)).T


def cos_field(t, x):
    return torch.cos(t) * x


def cos_exact(t0, t1, x0=X0):
    """x' = cos(t) x  =>  x(t1) = x(t0) exp(sin t1 - sin t0)."""
    return x0 * math.exp(math.sin(t1) - math.sin(t0))


PROBLEMS = {
    "rotation": (rotation_field, 0.0, 2.0, lambda: rotation_exact(2.0)),
    "cos": (cos_field, 0.0, 2.0, lambda: cos_exact(0.0, 2.0)),
}


def max_error(x, ref):
    return (x - ref).abs().max().item()


# -- fixed-step methods ----------------------------------------------------------------------------
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("method", sorted(ORDERS))
def test_fixed_step_order_of_convergence(method, problem):
    f, t0, t1, exact = PROBLEMS[problem]
    ref = exact()
    errors = [max_error(solve(f, X0, t0, t1, method=method, steps=s).x, ref) for s in (32, 64)]
    order = math.log2(errors[0] / errors[1])
    assert order == pytest.approx(ORDERS[method], abs=0.2), errors


def test_rk4_is_far_more_accurate_than_euler_at_equal_nfe():
    ref = rotation_exact(2.0)
    euler = solve(rotation_field, X0, 0.0, 2.0, method="euler", steps=80)
    rk4 = solve(rotation_field, X0, 0.0, 2.0, method="rk4", steps=20)
    assert euler.nfe == rk4.nfe == 80
    assert max_error(rk4.x, ref) < 1e-3 * max_error(euler.x, ref)


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_nfe_is_steps_times_stages(method):
    calls = []

    def f(t, x):
        calls.append(float(t))
        return -x

    sol = solve(f, X0, 0.0, 1.0, method=method, steps=7)
    assert (
        sol.nfe
        == len(calls)
        == 7 * NFE_PER_STEP[method]
        == 7 * (1, 2, 2, 4)[["euler", "midpoint", "heun", "rk4"].index(method)]
    )


def test_euler_by_hand_and_time_argument():
    seen = []

    def f(t, x):
        seen.append(t)
        return torch.full_like(x, 1.0) * t

    sol = solve(f, torch.zeros(2, dtype=F64), 0.0, 1.0, method="euler", steps=4)
    # x_{k+1} = x_k + 0.25 t_k with t_k = 0, .25, .5, .75  =>  x = 0.25 * 1.5
    assert torch.allclose(sol.x, torch.full((2,), 0.375, dtype=F64))
    assert all(t.ndim == 0 and t.dtype == F64 for t in seen)
    assert [float(t) for t in seen] == [0.0, 0.25, 0.5, 0.75]
    seen.clear()
    solve(f, torch.zeros(2), 0.0, 1.0, method="heun", steps=1)
    assert all(t.dtype == torch.float32 for t in seen) and len(seen) == 2


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_trajectory_shape_times_and_endpoints(method):
    sol = solve(rotation_field, X0, 0.0, 2.0, method=method, steps=5, return_trajectory=True)
    assert isinstance(sol, Solution)
    assert sol.trajectory.shape == (6, 3, 2)
    assert sol.times.shape == (6,) and sol.times.dtype == F64
    assert torch.allclose(sol.times, torch.linspace(0.0, 2.0, 6, dtype=F64))
    assert torch.equal(sol.trajectory[0], X0)
    assert torch.equal(sol.trajectory[-1], sol.x)
    assert solve(rotation_field, X0, 0.0, 2.0, method=method, steps=5).trajectory is None


def test_explicit_nonuniform_times_grid():
    times = torch.tensor([0.0, 0.1, 0.25, 0.45, 0.7, 0.95, 1.2, 1.45, 1.7, 2.0], dtype=F64)
    sol = solve(rotation_field, X0, None, None, method="rk4", times=times, return_trajectory=True)
    assert sol.nfe == 9 * 4 and torch.equal(sol.times, times)
    for t, state in zip(times.tolist(), sol.trajectory, strict=True):
        assert max_error(state, rotation_exact(t)) < 0.01
    for i in range(9):  # each state is one RK4 step of its own length from the previous one
        one_step = rk4_step(rotation_field, times[i], float(times[i + 1] - times[i]),
                            sol.trajectory[i])  # fmt: skip
        assert torch.allclose(sol.trajectory[i + 1], one_step, rtol=0, atol=1e-14)


@pytest.mark.parametrize("method", [*sorted(ORDERS), "dopri5"])
def test_backward_integration_returns_to_start(method):
    kwargs = {"rtol": 1e-9, "atol": 1e-9} if method == "dopri5" else {"steps": 200}
    forward = solve(cos_field, X0, 0.5, 3.0, method=method, **kwargs)
    back = solve(cos_field, forward.x, 3.0, 0.5, method=method, return_trajectory=True, **kwargs)
    tol = {"euler": 0.05, "midpoint": 1e-4, "heun": 1e-4}.get(method, 1e-7)
    assert max_error(back.x, X0) < tol
    assert max_error(back.x, cos_exact(3.0, 0.5, forward.x)) < tol
    assert back.times[0] == 3.0 and back.times[-1] == 0.5
    assert bool((back.times.diff() < 0).all())


def test_gradients_flow_through_the_solver():
    x0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    sol = solve(lambda t, x: -0.7 * x, x0, 0.0, 1.0, method="rk4", steps=20)
    sol.x.sum().backward()
    assert torch.allclose(x0.grad, torch.full((2,), math.exp(-0.7), dtype=F64), atol=1e-7)


# -- tuple states ----------------------------------------------------------------------------------
def decay_with_integral(t, state):
    """x' = -x and l' = sum of x over its last axis: l(t) = sum(x0) (1 - e^-t)."""
    x, _ = state
    return -x, x.sum(-1)


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5"])
def test_tuple_state_integrates_jointly(method):
    kwargs = {"rtol": 1e-8, "atol": 1e-8} if method == "dopri5" else {"steps": 100}
    state0 = (X0, torch.zeros(3, dtype=F64))
    sol = solve(
        decay_with_integral, state0, 0.0, 2.0, method=method, return_trajectory=True, **kwargs
    )
    x, integral = sol.x
    tol = 0.02 if method == "euler" else 1e-6
    assert max_error(x, X0 * math.exp(-2.0)) < tol
    assert max_error(integral, X0.sum(-1) * (1 - math.exp(-2.0))) < tol
    xs, ls = sol.trajectory
    steps = len(sol.times)
    assert xs.shape == (steps, 3, 2) and ls.shape == (steps, 3)
    assert torch.equal(ls[0], state0[1]) and torch.equal(xs[-1], x)


# -- Dormand–Prince 5(4) ---------------------------------------------------------------------------
def test_dopri5_tableau_consistency():
    """Row sums of the stage matrix equal the nodes; both weight vectors sum to 1."""
    for c, row in zip(DOPRI5_C, DOPRI5_A, strict=True):
        assert sum(row) == pytest.approx(c, abs=1e-14)
    assert sum(DOPRI5_B) == pytest.approx(1.0, abs=1e-14)
    assert sum(DOPRI5_B4) == pytest.approx(1.0, abs=1e-14)
    assert DOPRI5_A[-1] == DOPRI5_B[:-1]  # first same as last


def test_dopri5_step_orders_five_and_four():
    """Stepping with a fixed dt: the 5th-order solution converges at order 5, the embedded
    solution x_new - error at order 4."""
    ref = rotation_exact(2.0)
    errors5, errors4 = [], []
    for steps in (16, 32):
        dt = 2.0 / steps
        x5 = x4 = X0
        for i in range(steps):
            t = torch.tensor(i * dt, dtype=F64)
            x5, _, _ = dopri5_step(rotation_field, t, dt, x5, rotation_field(t, x5))
            x_new, error, _ = dopri5_step(rotation_field, t, dt, x4, rotation_field(t, x4))
            x4 = x_new - error  # the embedded 4th-order solution
        errors5.append(max_error(x5, ref))
        errors4.append(max_error(x4, ref))
    assert math.log2(errors5[-2] / errors5[-1]) == pytest.approx(5.0, abs=0.4)
    assert math.log2(errors4[-2] / errors4[-1]) == pytest.approx(4.0, abs=0.4)


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_dopri5_meets_tolerance_and_nfe_grows(problem):
    f, t0, t1, exact = PROBLEMS[problem]
    ref = exact()
    nfes = []
    for tol in (1e-3, 1e-6, 1e-9):
        sol = solve(f, X0, t0, t1, method="dopri5", rtol=tol, atol=tol)
        assert max_error(sol.x, ref) < 10 * tol * (1 + ref.abs().max().item())
        assert (sol.nfe - 2) % 6 == 0  # 2 to start, then 6 per attempted step (FSAL)
        nfes.append(sol.nfe)
    assert nfes[0] < nfes[1] < nfes[2]


def test_dopri5_trajectory_is_the_accepted_steps():
    sol = solve(rotation_field, X0, 0.0, 2.0, method="dopri5", rtol=1e-6, atol=1e-6,
                return_trajectory=True)  # fmt: skip
    steps = len(sol.times)
    assert steps >= 3 and sol.trajectory.shape == (steps, 3, 2)
    assert sol.times[0] == 0.0 and sol.times[-1] == 2.0  # lands exactly on t1
    assert bool((sol.times.diff() > 0).all())
    assert (sol.nfe - 2) // 6 >= steps - 1  # accepted <= attempted
    for t, state in zip(sol.times.tolist(), sol.trajectory, strict=True):
        assert max_error(state, rotation_exact(t)) < 1e-4


def test_dopri5_with_output_times():
    times = [0.0, 0.25, 1.0, 1.7, 2.0]
    sol = solve(rotation_field, X0, 0.0, 2.0, method="dopri5", times=times, rtol=1e-8,
                atol=1e-8, return_trajectory=True)  # fmt: skip
    assert sol.times.tolist() == times and sol.trajectory.shape == (5, 3, 2)
    for t, state in zip(times, sol.trajectory, strict=True):
        assert max_error(state, rotation_exact(t)) < 1e-6


def test_dopri5_max_steps_guard_names_the_tolerances():
    with pytest.raises(RuntimeError, match=r"rtol=1e-10.*atol=1e-10"):
        solve(rotation_field, X0, 0.0, 10.0, method="dopri5", rtol=1e-10, atol=1e-10, max_steps=5)


def test_dopri5_gives_up_on_a_nan_field():
    def f(t, x):
        return x * float("nan") if float(t) > 0.5 else -x

    with pytest.raises(RuntimeError, match="NaN"):
        solve(f, X0, 0.0, 1.0, method="dopri5")


# -- bad inputs ------------------------------------------------------------------------------------
def minus(t, x):
    return -x


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "rk45", "steps": 4}, ValueError, "one of"),
        ({"method": "euler"}, ValueError, "steps"),
        ({"method": "euler", "steps": 0}, ValueError, "steps"),
        ({"method": "euler", "steps": 2.5}, ValueError, "steps"),
        ({"method": "euler", "steps": True}, ValueError, "steps"),
        ({"method": "dopri5", "steps": 10}, ValueError, "rtol/atol"),
        ({"method": "heun", "steps": 4, "times": [0.0, 1.0]}, ValueError, "not both"),
        ({"method": "heun", "times": [0.0, 0.5, 0.4, 1.0]}, ValueError, "strictly"),
        ({"method": "heun", "times": [0.0, 0.0, 1.0]}, ValueError, "strictly"),
        ({"method": "heun", "times": [[0.0, 1.0]]}, ValueError, "1-D"),
        ({"method": "heun", "times": [0.0]}, ValueError, "at least 2"),
        ({"method": "heun", "times": [0.0, float("nan"), 1.0]}, ValueError, "NaN"),
        ({"method": "heun", "times": [0.0, 0.5, 2.0]}, ValueError, "t1"),
        ({"method": "dopri5", "rtol": 0.0}, ValueError, "rtol"),
        ({"method": "dopri5", "atol": float("nan")}, ValueError, "atol"),
        ({"method": "dopri5", "max_steps": 0}, ValueError, "max_steps"),
    ],
)
def test_bad_options_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        solve(minus, X0, 0.0, 1.0, **kwargs)


def test_bad_states_and_times_raise():
    with pytest.raises(ValueError, match="differ"):
        solve(minus, X0, 1.0, 1.0, method="euler", steps=3)
    with pytest.raises(ValueError, match="finite"):
        solve(minus, X0, 0.0, float("inf"), method="euler", steps=3)
    with pytest.raises(TypeError, match="floating"):
        solve(minus, torch.ones(3, dtype=torch.long), 0.0, 1.0, method="euler", steps=3)
    with pytest.raises(ValueError, match="NaN"):
        solve(minus, torch.tensor([1.0, float("nan")]), 0.0, 1.0, method="euler", steps=3)
    with pytest.raises(ValueError, match="empty"):
        solve(minus, torch.ones(0, 2), 0.0, 1.0, method="euler", steps=3)
    with pytest.raises(TypeError, match="tuple of tensors"):
        solve(minus, [X0], 0.0, 1.0, method="euler", steps=3)
    with pytest.raises(TypeError, match="tuple of tensors"):
        solve(minus, np.ones(3), 0.0, 1.0, method="euler", steps=3)


@pytest.mark.parametrize("method", METHODS)
def test_field_with_wrong_output_raises(method):
    options = {} if method == "dopri5" else {"steps": 3}
    with pytest.raises(ValueError, match="shapes of x"):
        solve(lambda t, x: x.sum(-1), X0, 0.0, 1.0, method=method, **options)
    with pytest.raises(ValueError, match="shapes of x"):
        solve(lambda t, s: -s[0], (X0, X0[:, 0]), 0.0, 1.0, method=method, **options)


def test_registry_lists_every_method():
    assert METHODS == ("euler", "midpoint", "heun", "rk4", "dopri5")
    assert set(FIXED_STEPS) == set(METHODS) - {"dopri5"}


# -- the ODE log-likelihood (instantaneous change of variables) --------------------------------
LINEAR = torch.tensor([[0.3, -0.8], [0.5, -0.2]], dtype=F64)  # dx/dt = A x, tr A = 0.1


def linear_field(t, x):
    return x @ LINEAR.T


def linear_flow_log_density(x: torch.Tensor, t0: float, t1: float) -> np.ndarray:
    """x(t1) = M x(t0) with M = expm(A (t1 - t0)); if x(t1) ~ N(0, I), then
    x(t0) ~ N(0, (M^T M)^{-1}) (scipy's density as the reference)."""
    m = expm(LINEAR.numpy() * (t1 - t0))
    return stats.multivariate_normal(np.zeros(2), np.linalg.inv(m.T @ m)).logpdf(x.numpy())


def test_log_likelihood_of_a_linear_flow_is_the_gaussian_density():
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    expected = linear_flow_log_density(x, 0.0, 1.5)
    exact = log_likelihood(linear_field, x, 0.0, 1.5, rtol=1e-9, atol=1e-9)
    assert isinstance(exact, ODELikelihood) and exact.estimator == "exact trace"
    np.testing.assert_allclose(exact.log_prob.numpy(), expected, rtol=0, atol=1e-7)
    fixed = log_likelihood(linear_field, x, 0.0, 1.5, method="rk4", steps=20, rows=7)
    np.testing.assert_allclose(fixed.log_prob.numpy(), expected, rtol=0, atol=1e-5)
    assert fixed.nfe == 80
    wrong = log_likelihood(linear_field, x, 0.0, 1.0, method="rk4", steps=20)  # other t1
    assert np.abs(wrong.log_prob.numpy() - expected).max() > 0.05


def test_hutchinson_log_likelihood_is_unbiased():
    """For a linear field each probe e gives the divergence e^T A e, constant along the path:
    the estimate varies from probe to probe, its mean over many rows is the exact value."""
    point = torch.tensor([[0.4, -1.1]], dtype=F64)
    exact = log_likelihood(linear_field, point, 0.0, 1.5, method="rk4", steps=10).log_prob
    many = point.expand(4000, 2)
    est = log_likelihood(linear_field, many, 0.0, 1.5, divergence="hutchinson", probes=1,
                         method="rk4", steps=10, rows=1000)  # fmt: skip
    assert est.estimator == "hutchinson (1 rademacher probe)"
    lp = est.log_prob
    assert lp.std() > 0.1  # a genuine estimate (e^T A e = 0.1 +- 0.3 over the four signs)
    assert abs(float(lp.mean() - exact)) < 4 * float(lp.std()) / math.sqrt(len(lp))
    four = log_likelihood(linear_field, many[:500], 0.0, 1.5, divergence="hutchinson",
                          probes=4, method="rk4", steps=10)  # fmt: skip
    assert four.estimator == "hutchinson (4 rademacher probes)"
    assert four.log_prob.std() < lp.std()  # more probes, less variance


def test_log_likelihood_seed_semantics():
    """Same seed, same probes (whatever the global RNG does); seed=None: fresh probes from the
    OS, not from torch's global generator, whose state is left alone."""
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=F64)

    def estimate(seed):
        options = {"divergence": "hutchinson", "method": "euler", "steps": 2, "rows": 20}
        return log_likelihood(linear_field, x, 0.0, 1.0, seed=seed, **options).log_prob

    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = estimate(3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    torch.testing.assert_close(estimate(3), a, rtol=0, atol=0)
    assert not torch.equal(estimate(4), a)
    torch.manual_seed(0)
    fresh = estimate(None)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(0)
    assert not torch.equal(estimate(None), fresh)  # not drawn from the (reseeded) global RNG


def test_log_likelihood_refuses_an_unknown_divergence():
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(linear_field, X0, 0.0, 1.0, divergence="trace")


def test_log_likelihood_context_travels_with_its_rows():
    """Per-row context (labels) is sliced with x: dx/dt = -c x contracts each row by its own
    rate, so log p(x) = log N(x e^{-c}; 0, I) - c D exactly (div = -c D), batched or not."""
    x = torch.randn(7, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    rate = torch.arange(7, dtype=F64) / 4
    field = lambda t, u, c: -c[:, None] * u  # noqa: E731
    got = log_likelihood(field, x, 0.0, 1.0, context=rate, rows=3, method="rk4", steps=20)
    x1 = x * torch.exp(-rate)[:, None]
    expected = -0.5 * (3 * math.log(2 * math.pi) + x1.square().sum(1)) - 3 * rate
    torch.testing.assert_close(got.log_prob, expected, rtol=1e-6, atol=1e-6)


# -- project(t, x) after each fixed step -----------------------------------------------------------
@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "rk4"])
def test_project_runs_after_every_step_at_the_time_reached(method):
    seen = []

    def project(t, x):
        assert isinstance(t, torch.Tensor) and t.ndim == 0 and t.dtype == F64
        seen.append(float(t))
        return x.clamp(max=0.25)  # a projection onto {x <= 0.25}

    times = [1.0, 0.7, 0.3, 0.0]
    sol = solve(
        lambda t, x: torch.ones_like(x),
        X0,
        None,
        None,
        method=method,
        times=times,
        project=project,
        return_trajectory=True,
    )
    assert seen == pytest.approx(times[1:])
    # dx/dt = 1 going backwards lowers x by the step; each step then clamps at 0.25
    expected = [X0]
    for a, b in itertools.pairwise(times):
        expected.append((expected[-1] + (b - a)).clamp(max=0.25))
    torch.testing.assert_close(sol.x, expected[-1])
    torch.testing.assert_close(sol.trajectory, torch.stack(expected))
    assert sol.nfe == 3 * NFE_PER_STEP[method]


def test_project_is_what_the_next_step_and_the_callback_see():
    # project resets x to 0 after each step: every step then starts from 0, so with
    # dx/dt = x + 1 and Euler, x after a step of dt is exactly dt before the reset.
    before, after = [], []

    def f(t, x):
        before.append(x.clone())
        return x + 1

    sol = solve(
        f,
        torch.ones(2, 1, dtype=F64),
        0.0,
        1.0,
        method="euler",
        steps=4,
        project=lambda t, x: torch.zeros_like(x),
        callback=lambda step, t, x: after.append(x.clone()),
    )
    assert torch.equal(before[0], torch.ones(2, 1, dtype=F64))
    assert all(torch.equal(b, torch.zeros(2, 1, dtype=F64)) for b in before[1:])
    assert all(torch.equal(a, torch.zeros(2, 1, dtype=F64)) for a in after) and len(after) == 4
    assert torch.equal(sol.x, torch.zeros(2, 1, dtype=F64))


def test_project_on_tuple_states_and_identity_changes_nothing():
    state = (X0, torch.zeros(3, dtype=F64))
    f = lambda t, s: (rotation_field(t, s[0]), s[0].sum(1))  # noqa: E731
    plain = solve(f, state, 0.0, 1.0, method="rk4", steps=7)
    same = solve(f, state, 0.0, 1.0, method="rk4", steps=7, project=lambda t, s: s)
    for a, b in zip(plain.x, same.x, strict=True):
        assert torch.equal(a, b)


def test_project_needs_a_fixed_step_method_and_a_callable():
    with pytest.raises(ValueError, match="fixed-step method"):
        solve(rotation_field, X0, 0.0, 1.0, method="dopri5", project=lambda t, x: x)
    with pytest.raises(TypeError, match="project must be a function"):
        solve(rotation_field, X0, 0.0, 1.0, method="euler", steps=2, project=3)
    with pytest.raises(ValueError, match="structure and shapes"):
        solve(rotation_field, X0, 0.0, 1.0, method="euler", steps=2, project=lambda t, x: x[:1])
