"""ODE solvers for dx/dt = f(t, x) on batches: Euler, midpoint, Heun, RK4 and Dormand–Prince 5(4).

Plain functions over a callable `f(t, x)`, never a model: `t` is a 0-d tensor of the state's
dtype and device, and `x` is the state, a tensor or a tuple of tensors (so a sample and its
log-density change integrate together); `f` returns the same structure with the same shapes.

    sol = solve(f, x0, 1.0, 0.0, method="heun", steps=50, return_trajectory=True)
    sol.x, sol.nfe, sol.times, sol.trajectory     # (n, d), 100, (51,), (51, n, d)
    sol = solve(f, x0, 0.0, 1.0, method="dopri5", rtol=1e-6, atol=1e-6)
    sol = solve(f, x0, 1.0, 0.0, method="euler", steps=50,
                callback=lambda step, t, x: step == 10)        # sol.stopped; sol.x at t = 0.8

Fixed-step methods take `steps` uniform steps from t0 to t1, or the explicit grid `times`
(increasing, or decreasing to integrate backwards). Their explicit Runge–Kutta tableaux
(Butcher: nodes c, weights b, stage matrix a) and orders, with evaluations of f per step:

    euler     order 1, 1 NFE   c = (0),             b = (1)
    midpoint  order 2, 2 NFE   c = (0, 1/2),        b = (0, 1),          a21 = 1/2
    heun      order 2, 2 NFE   c = (0, 1),          b = (1/2, 1/2),      a21 = 1
    rk4       order 4, 4 NFE   c = (0, 1/2, 1/2, 1), b = (1/6, 1/3, 1/3, 1/6),
                               a21 = 1/2, a32 = 1/2, a43 = 1

"dopri5" is Dormand & Prince's adaptive 5(4) pair (the tableau is `DOPRI5_A`, `DOPRI5_B`,
`DOPRI5_E` below): 7 stages, of which the last is f at the new point and is reused as the first
stage of the next step ("first same as last"), so 6 NFE per attempted step plus 2 at the start
(f(t0, x0) and one probe for the initial step size). It advances with the 5th-order solution and
controls the step with the embedded 4th-order one, as torchdiffeq's `dopri5` does.

After each step (each accepted step of dopri5) `callback(step, t, x)` sees the number of steps
taken (1, 2, ...), the time reached and the state there; returning True stops the integration
(`Solution.stopped`), as diffusers' `callback_on_step_end` and k-diffusion's `callback` let a
caller watch or cut a sampling loop. `progress` draws a tqdm bar over the steps
(`StepMonitor`, which the diffusion samplers' own step loops use too).

References: Hairer, Nørsett & Wanner, Solving ODEs I (2nd ed.), sections II.1, II.4 and II.5;
Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae".
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

State = Tensor | tuple[Tensor, ...]
"""An ODE state: one tensor, or a tuple of tensors integrated together."""
Field = Callable[[Tensor, State], State]
"""f(t, x) -> dx/dt, with t a 0-d tensor and the output shaped like x."""
StepCallback = Callable[[int, float, Any], bool | None]
"""callback(step, t, x) after each step: steps taken so far (from 1), the time reached, the state
there; True stops, None or False goes on."""
Method = Literal["euler", "midpoint", "heun", "rk4", "dopri5"]
METHODS: tuple[str, ...] = ("euler", "midpoint", "heun", "rk4", "dopri5")


class SolverError(RuntimeError, ValueError):
    """The adaptive solver could not meet its tolerance (too many steps, or a step size that
    underflows: a stiff field, or one that returns NaN/inf): a ValueError to callers, so the
    CLI reports it as one line."""


SAFETY = 0.9  # the step-size controller aims at 0.9 of the step that would just meet the tolerance
MIN_FACTOR = 0.2  # the next step is at least 0.2 and at most 10 times the current one
MAX_FACTOR = 10.0
MAX_STEPS = 10_000  # attempted dopri5 steps before giving up


@dataclass(frozen=True)
class Solution:
    """The result of `solve`.

    Attributes:
        x: the state at t1 (the last of `times`): a tensor, or a tuple of tensors if x0 was one.
        nfe: number of evaluations of f.
        times: (S+1,) times of the returned states, the state's dtype and device: the step grid
            of a fixed-step method, the accepted steps of dopri5, or the `times` passed in.
        trajectory: None unless asked for; else (S+1, *x.shape), the states at `times` (index 0
            is x0), a tuple of such for a tuple state.
        stopped: whether the callback stopped the integration (then `x` is the state at the
            last of `times`, short of t1).
    """

    x: State
    nfe: int
    times: Tensor
    trajectory: State | None = None
    stopped: bool = False


# -- state arithmetic (a tensor or a tuple of tensors) ---------------------------------------------
def _leaves(x: State) -> tuple[Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def _map(fn: Callable[..., Tensor], *states: State) -> State:
    """fn applied leaf by leaf, keeping the structure of the first state."""
    if isinstance(states[0], tuple):
        return tuple(fn(*leaves) for leaves in zip(*states, strict=True))
    return fn(*states)


def _combine(x: State, dt: float, terms: Sequence[tuple[float, State]]) -> State:
    """x + dt * sum_i c_i k_i for terms [(c_i, k_i), ...], skipping zero coefficients."""
    terms = [(c, k) for c, k in terms if c != 0]

    def leaf(x_leaf: Tensor, *k_leaves: Tensor) -> Tensor:
        out = x_leaf
        for (c, _), k_leaf in zip(terms, k_leaves, strict=True):
            out = out + (dt * c) * k_leaf
        return out

    return _map(leaf, x, *(k for _, k in terms))


def _rms(x: State) -> float:
    """Root mean square over every element of every leaf (computed in float64)."""
    leaves = _leaves(x)
    total = sum(float(leaf.double().square().sum()) for leaf in leaves)
    return math.sqrt(total / sum(leaf.numel() for leaf in leaves))


# -- watching the steps: callbacks and progress bars ----------------------------------------------
def check_callback(callback: Any) -> StepCallback | None:
    """callback, which must be None or callable as callback(step, t, x).

    Raises:
        TypeError: anything else.
    """
    if callback is not None and not callable(callback):
        raise TypeError(
            f"callback must be a function callback(step, t, x) -> bool | None, or None; got "
            f"{type(callback).__name__}"
        )
    return callback


def progress_bar(progress: Any, total: int | None, desc: str) -> tqdm:
    """A tqdm bar of `total` steps (None: a count without an end) on stderr, left off the
    screen when done; progress=None shows it only on a TTY (as the trainer does), and only
    on rank 0 of torch.distributed.

    Raises:
        TypeError: progress is not None, True or False.
    """
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None (a TTY only), got {progress!r}")
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    hide = True if rank else (None if progress is None else not progress)
    return tqdm(total=total, desc=desc, unit="step", disable=hide, leave=False)


class StepMonitor:
    """What runs after each step of a sampler: the caller's callback and a progress bar.

    `monitor(t, x)` counts the step, advances the bar and calls callback(step, t, view(x))
    (`view` maps the sampler's state to what the caller sees, e.g. data space); it returns
    True when the callback asks to stop. Use it as a context manager (the bar is closed).

    Raises (from the call):
        TypeError: the callback returned something other than None, True or False.
    """

    def __init__(
        self,
        callback: StepCallback | None,
        progress: bool | None,
        total: int | None,
        desc: str,
        view: Callable[[Any], Any] | None = None,
    ):
        self.callback = check_callback(callback)
        self.bar = progress_bar(progress, total, desc)
        self.view, self.steps = view, 0

    def __call__(self, t: float, x: Any) -> bool:
        self.steps += 1
        self.bar.update(1)
        if self.bar.total is None and not self.bar.disable:
            self.bar.set_postfix(t=f"{float(t):.4f}", refresh=False)
        if self.callback is None:
            return False
        out = self.callback(self.steps, float(t), x if self.view is None else self.view(x))
        if out is None or isinstance(out, bool):
            return bool(out)
        raise TypeError(
            f"callback returned {type(out).__name__}: it must return None or False to go on, "
            "True to stop"
        )

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> StepMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- fixed-step methods ----------------------------------------------------------------------------
def euler_step(f: Field, t: Tensor, dt: float, x: State) -> State:
    """One explicit Euler step, order 1, 1 NFE: x + dt f(t, x)."""
    return _combine(x, dt, [(1.0, f(t, x))])


def midpoint_step(f: Field, t: Tensor, dt: float, x: State) -> State:
    """One explicit midpoint step, order 2, 2 NFE: x + dt f(t + dt/2, x + dt/2 f(t, x))."""
    k1 = f(t, x)
    k2 = f(t + dt / 2, _combine(x, dt, [(0.5, k1)]))
    return _combine(x, dt, [(1.0, k2)])


def heun_step(f: Field, t: Tensor, dt: float, x: State) -> State:
    """One Heun step (explicit trapezoid), order 2, 2 NFE: x + dt/2 (k1 + k2), with
    k1 = f(t, x) and k2 = f(t + dt, x + dt k1)."""
    k1 = f(t, x)
    k2 = f(t + dt, _combine(x, dt, [(1.0, k1)]))
    return _combine(x, dt, [(0.5, k1), (0.5, k2)])


def rk4_step(f: Field, t: Tensor, dt: float, x: State) -> State:
    """One classical Runge–Kutta step, order 4, 4 NFE: x + dt/6 (k1 + 2 k2 + 2 k3 + k4)."""
    k1 = f(t, x)
    k2 = f(t + dt / 2, _combine(x, dt, [(0.5, k1)]))
    k3 = f(t + dt / 2, _combine(x, dt, [(0.5, k2)]))
    k4 = f(t + dt, _combine(x, dt, [(1.0, k3)]))
    return _combine(x, dt, [(1 / 6, k1), (1 / 3, k2), (1 / 3, k3), (1 / 6, k4)])


FIXED_STEPS: dict[str, Callable[[Field, Tensor, float, State], State]] = {
    "euler": euler_step,
    "midpoint": midpoint_step,
    "heun": heun_step,
    "rk4": rk4_step,
}
"""Fixed-step method name -> one step x(t) -> x(t + dt)."""
NFE_PER_STEP: dict[str, int] = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "dopri5": 6}
"""Evaluations of f per step (dopri5: per attempted step, after the first)."""


# -- Dormand–Prince 5(4) ---------------------------------------------------------------------------
DOPRI5_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DOPRI5_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
"""Stage matrix: row i gives the weights of k_1..k_i in stage i+1. The last row equals the
5th-order weights, so stage 7 is f at the new point (first same as last)."""
DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
"""5th-order weights: the solution carried forward."""
DOPRI5_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
"""Embedded 4th-order weights."""
DOPRI5_E = tuple(b - b4 for b, b4 in zip(DOPRI5_B, DOPRI5_B4, strict=True))
"""Error weights b - b4: the error estimate is dt * sum_i E_i k_i."""


def dopri5_step(f: Field, t: Tensor, dt: float, x: State, k1: State) -> tuple[State, State, State]:
    """One Dormand–Prince 5(4) step from (t, x), given k1 = f(t, x); 6 NFE.

    Returns:
        (x_new, error, k7): the 5th-order state at t + dt, the difference between the 5th- and
        4th-order solutions, and k7 = f(t + dt, x_new), the next step's k1.
    """
    ks = [k1]
    for c, row in zip(DOPRI5_C[1:], DOPRI5_A[1:], strict=True):
        stage = _combine(x, dt, list(zip(row, ks, strict=False)))
        ks.append(f(t + c * dt, stage))
    x_new = _combine(x, dt, list(zip(DOPRI5_B, ks, strict=True)))
    zero = _map(torch.zeros_like, x)
    error = _combine(zero, dt, list(zip(DOPRI5_E, ks, strict=True)))
    return x_new, error, ks[-1]


def error_ratio(error: State, x_old: State, x_new: State, rtol: float, atol: float) -> float:
    """RMS over all elements of error / (atol + rtol max(|x_old|, |x_new|)); <= 1 accepts."""
    scaled = _map(
        lambda e, a, b: e / (atol + rtol * torch.maximum(a.abs(), b.abs())), error, x_old, x_new
    )
    return _rms(scaled)


def step_factor(ratio: float, accepted: bool) -> float:
    """Next step / this step = 0.9 ratio^(-1/5), clipped to [0.2, 10] (to [0.2, 1] after a
    rejection); the exponent 1/5 is 1/(q+1) for the 4th-order error estimate."""
    if not math.isfinite(ratio):
        return MIN_FACTOR
    factor = MAX_FACTOR if ratio == 0 else SAFETY * ratio ** (-1 / 5)
    return min(max(factor, MIN_FACTOR), MAX_FACTOR if accepted else 1.0)


def initial_step(
    f: Field, t0: float, x0: State, f0: State, direction: float, rtol: float, atol: float
) -> float:
    """Hairer's starting step size (Solving ODEs I, II.4), 1 NFE, as a positive number.

    With sc = atol + rtol |x0| and d0 = rms(x0 / sc), d1 = rms(f0 / sc): h0 = 0.01 d0 / d1
    (1e-6 if either is tiny); an Euler probe gives d2 = rms((f(t0 + h0, x0 + h0 f0) - f0) / sc) / h0
    and h1 = (0.01 / max(d1, d2))^(1/5); the step is min(100 h0, h1).
    """
    scale = _map(lambda v: atol + rtol * v.abs(), x0)
    d0 = _rms(_map(torch.div, x0, scale))
    d1 = _rms(_map(torch.div, f0, scale))
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    like = _leaves(x0)[0]
    t_probe = torch.tensor(t0 + direction * h0, dtype=like.dtype, device=like.device)
    f1 = f(t_probe, _combine(x0, direction * h0, [(1.0, f0)]))
    d2 = _rms(_map(lambda a, b, s: (a - b) / s, f1, f0, scale)) / h0
    h1 = max(1e-06, h0 * 0.001) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1)


def _solve_dopri5(
    f: Field,
    x0: State,
    outputs: list[float],
    rtol: float,
    atol: float,
    max_steps: int,
    keep_steps: bool,
    keep_states: bool,
    on_step: Callable[[float, State], bool] | None = None,
) -> tuple[State, list[float], list[State], bool]:
    """Integrate through each time in `outputs`, never stepping past the next one; after each
    accepted step, on_step(t, x) returning True stops there.

    Returns the final state, the times kept (every accepted step when `keep_steps`, else
    `outputs`, and the time reached when stopped) with the states there (only when
    `keep_states`, else an empty list), and whether on_step stopped it.
    """
    like = _leaves(x0)[0]

    def as_time(t: float) -> Tensor:
        return torch.tensor(t, dtype=like.dtype, device=like.device)

    t, x = outputs[0], x0
    direction = 1.0 if outputs[-1] > outputs[0] else -1.0
    k1 = f(as_time(t), x)
    h = min(initial_step(f, t, x, k1, direction, rtol, atol), abs(outputs[-1] - t))
    times = [t]
    states = [x] if keep_states else []
    attempts = 0
    for target in outputs[1:]:
        while (target - t) * direction > 0:
            if attempts >= max_steps:
                raise SolverError(
                    f"dopri5 took more than max_steps={max_steps} steps and stopped at t={t:.6g} "
                    f"before t1={outputs[-1]:.6g} at rtol={rtol:g}, atol={atol:g}; loosen "
                    "rtol/atol, raise max_steps, or use a fixed-step method if f is stiff"
                )
            if h < 1e-12 * max(1.0, abs(t)):
                raise SolverError(
                    f"dopri5 step size underflow ({h:.3g}) at t={t:.6g} with rtol={rtol:g}, "
                    f"atol={atol:g}: f may return NaN/inf or be stiff; loosen rtol/atol or "
                    "check f"
                )
            attempts += 1
            lands = h >= abs(target - t)
            h_try = abs(target - t) if lands else h
            x_new, error, k_new = dopri5_step(f, as_time(t), direction * h_try, x, k1)
            ratio = error_ratio(error, x, x_new, rtol, atol)
            accepted = ratio <= 1.0
            if accepted:
                t = target if lands else t + direction * h_try
                x, k1 = x_new, k_new
                if keep_steps:
                    times.append(t)
                    states.extend([x] if keep_states else [])
                if on_step is not None and on_step(t, x):
                    if not keep_steps:
                        times.append(t)
                        states.extend([x] if keep_states else [])
                    return x, times, states, True
            h = h_try * step_factor(ratio, accepted)
        if not keep_steps:
            times.append(target)
            states.extend([x] if keep_states else [])
    return x, times, states, False


# -- checks ----------------------------------------------------------------------------------------
def _check_state(x0: Any) -> tuple[Tensor, ...]:
    if isinstance(x0, Tensor):
        leaves: tuple[Any, ...] = (x0,)
    elif isinstance(x0, tuple) and x0 and all(isinstance(v, Tensor) for v in x0):
        leaves = x0
    else:
        raise TypeError(
            f"x0 must be a tensor or a non-empty tuple of tensors, got {type(x0).__name__}"
        )
    for i, leaf in enumerate(leaves):
        name = "x0" if isinstance(x0, Tensor) else f"x0[{i}]"
        if not leaf.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {leaf.dtype}; use .float()")
        if leaf.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(leaf.shape)})")
        if not bool(torch.isfinite(leaf).all()):
            raise ValueError(f"{name} contains NaN or infinity")
    return leaves


class _CountedField:
    """f with a call counter, checking that each output has the structure and shapes of x."""

    def __init__(self, f: Field, x0: State):
        self.f, self.nfe = f, 0
        self.is_tuple = isinstance(x0, tuple)
        self.shapes = [leaf.shape for leaf in _leaves(x0)]

    def __call__(self, t: Tensor, x: State) -> State:
        self.nfe += 1
        out = self.f(t, x)
        ok = isinstance(out, tuple) == self.is_tuple and all(
            isinstance(v, Tensor) for v in _leaves(out)
        )
        if not ok or [v.shape for v in _leaves(out)] != self.shapes:
            got = (
                [tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__ for v in out]
                if isinstance(out, tuple)
                else (tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__)
            )
            want = [tuple(s) for s in self.shapes] if self.is_tuple else tuple(self.shapes[0])
            raise ValueError(
                f"f(t, x) must return the structure and shapes of x: {want}, got {got}"
            )
        return out


def _check_projected(x: Any, x0: State) -> None:
    """project(t, x) must return the structure and shapes of the state."""
    want = [leaf.shape for leaf in _leaves(x0)]
    ok = isinstance(x, tuple) == isinstance(x0, tuple) and all(
        isinstance(v, Tensor) for v in _leaves(x)
    )
    if not ok or [v.shape for v in _leaves(x)] != want:
        raise ValueError(
            "project(t, x) must return the structure and shapes of x "
            f"({[tuple(s) for s in want]}), got {type(x).__name__}"
        )


def _check_times(times: Any) -> list[float]:
    try:
        grid = torch.as_tensor(
            times.detach().cpu() if isinstance(times, Tensor) else times, dtype=torch.float64
        )
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"times must be a 1-D sequence of numbers: {err}") from None
    if grid.ndim != 1 or len(grid) < 2:
        raise ValueError(
            f"times must be 1-D with at least 2 entries, got shape {tuple(grid.shape)}"
        )
    if not bool(torch.isfinite(grid).all()):
        raise ValueError("times contains NaN or infinity")
    gaps = grid.diff()
    if not (bool((gaps > 0).all()) or bool((gaps < 0).all())):
        raise ValueError("times must be strictly increasing or strictly decreasing")
    return grid.tolist()


def _check_endpoint(value: Any, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _time_grid(t0: Any, t1: Any, method: str, steps: Any, times: Any) -> list[float]:
    """The times to step through (fixed-step) or to stop at (dopri5), from t0 to t1."""
    if times is not None:
        if steps is not None:
            raise ValueError("pass either steps or times, not both")
        grid = _check_times(times)
        for value, end, name in ((t0, grid[0], "t0"), (t1, grid[-1], "t1")):
            if value is not None and abs(_check_endpoint(value, name) - end) > 1e-9 * max(
                1.0, abs(end)
            ):
                raise ValueError(f"{name}={value} differs from the end of times ({end}); pass None")
        return grid
    start, end = _check_endpoint(t0, "t0"), _check_endpoint(t1, "t1")
    if start == end:
        raise ValueError(f"t0 and t1 must differ, got both {start}")
    if method == "dopri5":
        if steps is not None:
            raise ValueError("dopri5 chooses its own steps: pass rtol/atol instead of steps")
        return [start, end]
    if steps is None:
        raise ValueError(f"method {method!r} needs steps=<int >= 1> or an explicit times grid")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return torch.linspace(start, end, int(steps) + 1, dtype=torch.float64).tolist()


def _check_tolerance(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


# -- the entry point -------------------------------------------------------------------------------
def solve(
    f: Field,
    x0: State,
    t0: float | None,
    t1: float | None,
    *,
    method: Method = "heun",
    steps: int | None = None,
    times: Sequence[float] | Tensor | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    return_trajectory: bool = False,
    max_steps: int = MAX_STEPS,
    callback: StepCallback | None = None,
    progress: bool | None = False,
    project: Callable[[Tensor, State], State] | None = None,
) -> Solution:
    """Integrate dx/dt = f(t, x) from x(t0) = x0 to t1.

    Args:
        f: the field, f(t, x) with t a 0-d tensor of x's dtype and device; returns dx/dt with
            the structure and shapes of x. Gradients flow as usual (no grad mode is set here).
        x0: (B, ...) initial state, or a tuple of such (all finite, floating point).
        t0, t1: start and end times; t0 > t1 integrates backwards. May be None when `times`
            is given (else they must equal its ends).
        method: "euler", "midpoint", "heun", "rk4" (fixed steps) or "dopri5" (adaptive).
        steps: number of uniform steps for a fixed-step method (not for dopri5).
        times: 1-D strictly monotone grid (>= 2 entries) instead of t0/t1/steps. Fixed-step
            methods step along it; dopri5 adapts its steps between its entries, never stepping
            over one, and returns the states there.
        rtol, atol: dopri5's tolerances: a step is accepted when the RMS over all elements of
            error / (atol + rtol max(|x_old|, |x_new|)) is <= 1. Ignored by fixed-step methods.
        return_trajectory: also return the states at `Solution.times`.
        max_steps: dopri5's limit on attempted steps (RuntimeError past it).
        callback: callback(step, t, x) after each step (each accepted one for dopri5): the
            steps taken so far (1, 2, ...), the time reached (a float) and the state there
            (the solver's own tensors: do not modify them in place). Returning True stops the
            integration there: the `Solution` then ends at that time, `stopped` set.
        progress: a tqdm bar over the steps on stderr (fixed-step: out of the total; dopri5:
            a count with the time reached); None: only on a TTY.
        project: project(t, x) -> x after every step of a fixed-step method, with t the time
            reached (a 0-d tensor, like f's); the projected state is the one carried on, kept
            in the trajectory and shown to the callback (e.g. inpainting's reset of the known
            pixels). Not applied to x0 (the caller projects its start itself). Fixed-step
            methods only: dopri5's error control would see the projection as error.

    Returns:
        A `Solution` (x, nfe, times, trajectory, stopped). NFE: steps * (1, 2, 2, 4) for
        euler, midpoint, heun, rk4; 2 + 6 * attempted steps for dopri5.

    Raises:
        ValueError: unknown method, bad steps/times/tolerances, non-finite x0, or f returning
            the wrong structure or shape, a project with dopri5. TypeError: x0 not a floating
            tensor (tuple), a callback or project that is not callable, a callback that returns
            something other than None/True/False.
        RuntimeError: dopri5 exceeded max_steps or its step size underflowed.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    like = _check_state(x0)[0]
    if project is not None:
        if not callable(project):
            raise TypeError(
                f"project must be a function project(t, x) -> x, or None; got "
                f"{type(project).__name__}"
            )
        if method == "dopri5":
            raise ValueError(
                "project needs a fixed-step method (euler, midpoint, heun, rk4): dopri5's error "
                "control cannot follow a projected state; pass method='heun' (or another "
                "fixed-step method) with steps or times"
            )
    grid = _time_grid(t0, t1, method, steps, times)
    field = _CountedField(f, x0)
    if method == "dopri5":
        rtol, atol = _check_tolerance(rtol, "rtol"), _check_tolerance(atol, "atol")
        if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral):
            raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
        max_steps = int(max_steps)
    total = None if method == "dopri5" else len(grid) - 1
    with StepMonitor(callback, progress, total, f"ODE ({method})") as monitor:
        x, kept_times, states, stopped = _integrate(
            field,
            x0,
            grid,
            method,
            rtol,
            atol,
            max_steps,
            times is None,
            return_trajectory,
            monitor,
            project,
        )
    trajectory = None
    if return_trajectory:
        trajectory = _map(lambda *leaves: torch.stack(leaves), *states)
    return Solution(
        x=x,
        nfe=field.nfe,
        times=torch.tensor(kept_times, dtype=like.dtype, device=like.device),
        trajectory=trajectory,
        stopped=stopped,
    )


def _integrate(
    field: Field,
    x0: State,
    grid: list[float],
    method: str,
    rtol: float,
    atol: float,
    max_steps: int,
    keep_steps: bool,
    keep_states: bool,
    on_step: Callable[[float, State], bool] | None,
    project: Callable[[Tensor, State], State] | None = None,
) -> tuple[State, list[float], list[State], bool]:
    """`solve`'s loop: (x at the end, the times kept, the states there, stopped); a fixed-step
    method applies project(t_reached, x) after each step."""
    if method == "dopri5":
        return _solve_dopri5(
            field, x0, grid, rtol, atol, max_steps, keep_steps, keep_states, on_step
        )
    like = _leaves(x0)[0]
    step = FIXED_STEPS[method]
    x, states = x0, [x0]
    for k, (t_start, t_end) in enumerate(itertools.pairwise(grid)):
        t = torch.tensor(t_start, dtype=like.dtype, device=like.device)
        x = step(field, t, t_end - t_start, x)
        if project is not None:
            reached = torch.tensor(t_end, dtype=like.dtype, device=like.device)
            x = project(reached, x)
            _check_projected(x, x0)
        if keep_states:
            states.append(x)
        if on_step is not None and on_step(t_end, x):
            return x, grid[: k + 2], states, True
    return x, grid, states, False


# -- the likelihood of a continuous normalising flow ----------------------------------------------
LOG_2PI = math.log(2 * math.pi)
Divergence = Literal["exact", "hutchinson"]


def exact_divergence(f: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """(f(x), div f(x)) with the trace of df/dx summed exactly, one backward pass per dimension.

    (B, ...) -> ((B, ...), (B,)); rows must not interact (f acts row-wise).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = f(x)
        flat_v = v.reshape(len(x), -1)
        d = flat_v.shape[1]
        div = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for i in range(d):
            (grad,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=i < d - 1)
            div = div + grad.reshape(len(x), -1)[:, i]
    return v.detach(), div.detach()


def hutchinson_divergence(
    f: Callable[[Tensor], Tensor], x: Tensor, probes: Tensor
) -> tuple[Tensor, Tensor]:
    """(f(x), mean_k e_k^T (df/dx) e_k): Hutchinson's unbiased estimate of the divergence.

    probes: (K, B, ...) with E[e e^T] = I (Rademacher); one vector-Jacobian product each.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = f(x)
        div = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for k, e in enumerate(probes):
            (vjp,) = torch.autograd.grad(v, x, grad_outputs=e, retain_graph=k < len(probes) - 1)
            div = div + (vjp * e).reshape(len(x), -1).sum(1)
    return v.detach(), div.detach() / len(probes)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over all but the first axis: (B, ...) -> (B,) nats."""
    flat = z.reshape(len(z), -1)
    return -0.5 * (flat.shape[1] * LOG_2PI + flat.square().sum(1))


def local_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator of its own: seeded when asked, else from the operating system's entropy
    (never from, and never advancing, torch's global RNG)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


class ODELikelihood(NamedTuple):
    """`log_likelihood`'s record: log p (B,) in nats, the solver's NFE (the most of any batch
    of rows) and the estimator of the divergence ("exact trace" or "hutchinson (k rademacher
    probes)")."""

    log_prob: Tensor
    nfe: int
    estimator: str


def log_likelihood(
    field: Callable[..., Tensor],
    x: Tensor,
    t0: float,
    t1: float,
    *,
    context: Tensor | None = None,
    divergence: Divergence = "exact",
    probes: int = 1,
    seed: int | None = 0,
    rows: int | None = None,
    method: Method = "dopri5",
    steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    progress: bool | None = False,
) -> ODELikelihood:
    """log p_t0(x) of the flow dx/dt = field(t, x) whose end p_t1 is N(0, I) (nats): (B,).

    The instantaneous change of variables (Chen et al. 2018): integrating (x, delta) with
    d delta/dt = div field(t, x) from t0 (the data) to t1 (the noise) gives

        log p_t0(x(t0)) = log N(x(t1); 0, I) + delta(t1)

    The divergence is the exact Jacobian trace (one autograd pass per dimension) or
    Hutchinson's unbiased estimate with `probes` Rademacher vectors per row (FFJORD,
    Grathwohl et al. 2019), drawn once per call from a local generator seeded by `seed`
    (None: fresh probes from OS entropy) and held fixed along each path.

    Args:
        field: f(t, x) with t a 0-d tensor and x (B', ...) rows that do not interact; with
            `context`, f(t, x, c) where c holds the context rows of those x rows.
        x: (B, ...) points at t0.
        context: (B, ...) per-row conditioning (e.g. class labels), sliced with x, or None.
        rows: rows per ODE solve (None: all at once); dopri5 controls the error of a whole
            solve, so results depend slightly on this batching.
        method, steps, rtol, atol: the solver (`solve`).
        progress: one tqdm bar over the solver steps of all batches of rows (out of the
            total for a fixed-step method; a count for dopri5); None: only on a TTY.
    """
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
    if divergence == "exact":
        estimator = "exact trace"
    else:
        estimator = f"hutchinson ({probes} rademacher probe{'s' * (probes > 1)})"
    g = local_generator(seed, x.device)
    rows = max(1, rows or len(x))
    fixed = method != "dopri5" and isinstance(steps, int)
    total = -(-len(x) // rows) * steps if fixed else None
    options = {"method": method, "steps": steps, "rtol": rtol, "atol": atol}
    out, nfe = [], 0
    with StepMonitor(None, progress, total, f"log p ({estimator})") as monitor:
        for start in range(0, len(x), rows):
            xb = x[start : start + rows]
            cb = None if context is None else context[start : start + rows]
            e = None
            if divergence == "hutchinson":
                bits = torch.randint(0, 2, (probes, *xb.shape), generator=g, device=xb.device)
                e = (2 * bits - 1).to(xb.dtype)

            def f(t: Tensor, state: tuple[Tensor, Tensor], e: Tensor | None = e, cb=cb) -> tuple:
                v = (lambda u: field(t, u)) if cb is None else (lambda u: field(t, u, cb))
                return (
                    exact_divergence(v, state[0])
                    if e is None
                    else hutchinson_divergence(v, state[0], e)
                )

            zero = torch.zeros(len(xb), dtype=xb.dtype, device=xb.device)
            sol = solve(f, (xb, zero), t0, t1, callback=lambda _, t, s: monitor(t, s), **options)
            nfe = max(nfe, sol.nfe)
            x1, delta = sol.x
            out.append(standard_normal_log_prob(x1) + delta)
    log_p = torch.cat(out) if out else x.new_zeros(0)
    return ODELikelihood(log_p, nfe, estimator)
