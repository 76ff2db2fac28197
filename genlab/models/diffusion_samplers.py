"""Diffusion samplers over a denoiser callable: EDM's Heun sampler (with churn) and UniPC.

Pure functions in model space for any `genlab.schedules.Schedule` x_t = alpha_t x_0 + sigma_t eps
(t in [0, 1], t = 0 the data; VP schedules, alpha^2 + sigma^2 = 1, and general paths such as
the rectified alpha = 1 - t, sigma = t alike). The model enters only as

    denoise(x, t) -> (x0_hat, eps_hat)     x (B, ...) at time t, a 0-d tensor of x's dtype/device

and both samplers walk a grid `times` (float64, strictly decreasing, (S + 1,); `genlab.grids`):
it may start below 1 (SDEdit: x is then noised data at times[0]) and may end at 0.

    x, nfe = edm_heun(denoise, x, times, schedule)                   # 2 S - 1 NFE if it ends at 0
    x, nfe = edm_heun(denoise, x, times, schedule, churn=40.0, generator=g)   # stochastic
    x, nfe = unipc(denoise, x, times, schedule, order=2)             # S NFE

Both take `project(x, t) -> x`, applied to the state after every step at the time it reached
(inpainting keeps the known pixels there; not applied to the initial state, which is the
caller's), and `on_step(step, t, x) -> bool | None`, called after every step (and after
`project`) with the steps taken so far (1, 2, ...), the time reached and the state; True stops
and the state reached is returned with the NFE spent so far. Both return (x, nfe).

References: Karras, Aittala, Aila & Laine (2022), "Elucidating the Design Space of
Diffusion-Based Generative Models" (EDM), Algorithm 2 and eq. 4-5; Zhao, Bai, Rao, Zhou & Lu
(2023), "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models", Algorithms 2-3 (B(h) variants bh1 / bh2); Lu et al. (2022), "DPM-Solver++" (data
prediction, lower-order final steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from genlab.grids import check_times
from genlab.schedules import Schedule

Denoise = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""denoise(x, t) -> (x0_hat, eps_hat): x (B, ...), t a 0-d tensor of x's dtype and device."""
Project = Callable[[Tensor, float], Tensor]
"""project(x, t) -> x: the state after a step at the time t it reached (e.g. inpainting)."""
OnStep = Callable[[int, float, Tensor], bool | None]
"""on_step(step, t, x): steps taken so far (from 1), the time reached, the state; True stops."""

HEUN_VARIABLES = ("r", "t")
"""What EDM's Heun steps in: the noise-to-signal ratio r = sigma / alpha (EDM's choice, for
VP schedules) or the schedule's own time t (for straight paths, where r(1) = 1 / alpha(1) is
huge: one trapezoidal step from r = 2e4 down to r = 15 misses by O(r) on the rectified path)."""

UNIPC_VARIANTS = ("bh1", "bh2")
"""UniPC's choices of B(h) with hh = -h (data prediction): bh1: B = hh, bh2: B = e^hh - 1."""


# -- shared checks -----------------------------------------------------------------------------
def _check_common(denoise: object, x: object, times: object, schedule: object, project, on_step):
    if not callable(denoise):
        raise TypeError(f"denoise must be a callable (x, t) -> (x0_hat, eps_hat), got {denoise!r}")
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point or x.ndim < 1:
        raise TypeError(f"x must be a float tensor (B, ...), got {type(x).__name__}")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a genlab.schedules.Schedule, got {schedule!r}")
    for fn, name in ((project, "project"), (on_step, "on_step")):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be a callable or None, got {fn!r}")
    return check_times(times)


def _real(value: object, name: str, low: float = 0.0, allow_inf: bool = False) -> float:
    ok = isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)
    if not ok or math.isnan(value) or value < low or (math.isinf(value) and not allow_inf):
        bound = f">= {low:g}" + ("" if allow_inf else ", finite")
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


def _coefficients(schedule: Schedule, grid: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, sigma) on the grid in float64; a NaN sigma at t = 0 (rounding in a schedule's
    sqrt(1 - alpha_bar) just below 0) is read as sigma = 0, the data."""
    alphas, sigmas = schedule.alpha(grid).double(), schedule.sigma(grid).double()
    sigmas = torch.where(torch.isnan(sigmas) & (grid == 0), 0.0, sigmas)
    if not bool(torch.isfinite(alphas).all() and torch.isfinite(sigmas).all()):
        raise ValueError(f"the schedule's alpha or sigma is not finite on the grid {grid.tolist()}")
    return alphas, sigmas


def _denoised(denoise: Denoise, x: Tensor, t: float) -> Tensor:
    x0_hat, _ = denoise(x, torch.tensor(t, dtype=x.dtype, device=x.device))
    if not isinstance(x0_hat, Tensor) or x0_hat.shape != x.shape:
        raise ValueError(
            f"denoise must return (x0_hat, eps_hat) shaped like x {tuple(x.shape)}, got "
            f"{getattr(x0_hat, 'shape', type(x0_hat).__name__)}"
        )
    return x0_hat


def _finish_step(x: Tensor, t: float, step: int, project, on_step) -> tuple[Tensor, bool]:
    if project is not None:
        x = project(x, t)
    return x, bool(on_step is not None and on_step(step, t, x))


# -- EDM Heun ----------------------------------------------------------------------------------
def edm_gammas(ratios: Tensor, churn: float, s_tmin: float, s_tmax: float) -> Tensor:
    """EDM's churn per step (Algorithm 2): gamma_i = min(S_churn / N, sqrt(2) - 1) where the
    noise-to-signal ratio r_i = sigma_i / alpha_i lies in [S_tmin, S_tmax], else 0; ratios
    (N + 1,) the grid's r_i (the last one, the end of the last step, is not a step's start)."""
    n = len(ratios) - 1
    start = ratios[:-1]
    inside = (start >= s_tmin) & (start <= s_tmax)
    gamma = min(churn / n, math.sqrt(2.0) - 1.0)
    return torch.where(inside, gamma, 0.0).to(torch.float64)


def edm_heun(
    denoise: Denoise,
    x: Tensor,
    times: Tensor | Sequence[float],
    schedule: Schedule,
    *,
    churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    project: Project | None = None,
    on_step: OnStep | None = None,
    variable: str = "r",
) -> tuple[Tensor, int]:
    """Karras et al. (2022) Algorithm 2 (Heun, 2nd order, optional churn) on the grid `times`.

    In the variance-exploding variable y = x / alpha with noise level r = sigma / alpha
    (EDM eq. 4 with s(t) = alpha), the probability-flow ODE is dy/dr = (y - x0_hat) / r.
    Step i from r_i to r_{i+1}, with gamma_i = `edm_gammas` (s_tmin, s_tmax in units of r):

        r^ = (1 + gamma_i) r_i,  t^ = schedule.t_of_log_snr(-2 log r^) (capped at t = 1)
        y^ = y_i + sqrt(r^^2 - r_i^2) s_noise z,   z ~ N(0, I) from `generator`
        d = (y^ - D(y^, t^)) / r^,   y_{i+1} = y^ + (r_{i+1} - r^) d                   (Euler)
        d' = (y_{i+1} - D(y_{i+1}, t_{i+1})) / r_{i+1}
        y_{i+1} = y^ + (r_{i+1} - r^) (d + d') / 2                                    (Heun)

    The Heun correction is skipped on a step to r = 0 (t = 0 of a VP schedule), where Euler
    gives y_{i+1} = D(y^). variable="t" (`HEUN_VARIABLES`) takes the same Euler and Heun steps
    in the schedule's time instead (EDM's Algorithm 1 with the path's own s(t) = alpha,
    sigma(t)): from x^ = alpha(t^) y^ with the probability-flow field
    f(x, t) = alpha'(t) x0_hat + sigma'(t) eps_hat,

        x_{i+1} = x^ + (t_{i+1} - t^) f(x^, t^),   then   x^ + (t_{i+1} - t^) (f + f') / 2

    (the churn is added in r as above); on a straight path f is nearly constant along a
    trajectory, as flow matching's Heun sampler uses it. churn = 0 (default) is
    deterministic: EDM's Algorithm 1. The churn noise is drawn on the CPU (`generator` must
    be a CPU generator; None uses torch's global one) and moved to x's device, so a seed
    gives the same samples on every device.

    NFE: 2 per step, 1 for a step to r = 0: 2 S - 1 on a grid ending at t = 0, else 2 S.
    Returns (x at the last time reached, NFE). Needs alpha > 0 on the grid, except, with
    variable="t", at its first time (a flow path's t = 1, alpha = 0, r infinite: that step is
    taken unraised)."""
    grid = _check_common(denoise, x, times, schedule, project, on_step)
    churn = _real(churn, "churn")
    s_tmin = _real(s_tmin, "s_tmin", allow_inf=True)
    s_tmax = _real(s_tmax, "s_tmax", allow_inf=True)
    s_noise = _real(s_noise, "s_noise")
    if variable not in HEUN_VARIABLES:
        raise ValueError(f"variable must be one of {', '.join(HEUN_VARIABLES)}, got {variable!r}")
    if s_tmax < s_tmin:
        raise ValueError(f"need s_tmin <= s_tmax, got s_tmin={s_tmin!r}, s_tmax={s_tmax!r}")
    cpu = isinstance(generator, torch.Generator) and generator.device.type == "cpu"
    if generator is not None and not cpu:
        raise TypeError(f"generator must be a CPU torch.Generator or None, got {generator!r}")
    alphas, sigmas = _coefficients(schedule, grid)
    pure_noise = alphas <= 0
    if bool(pure_noise[1:].any()) or (variable == "r" and bool(pure_noise[0])):
        raise ValueError(
            f"edm_heun needs alpha(t) > 0 on the grid (it works in y = x / alpha; "
            f'variable="t" allows alpha = 0 at the first time only), but alpha = 0 at t = '
            f"{grid[pure_noise].tolist()}: start the grid below t = 1"
        )
    ratios = torch.where(pure_noise, math.inf, sigmas / torch.where(pure_noise, 1.0, alphas))
    gammas = edm_gammas(ratios, churn, s_tmin, s_tmax)
    nfe = 0
    for i in range(len(grid) - 1):
        t_i, t_next = float(grid[i]), float(grid[i + 1])
        r_i, r_next = float(ratios[i]), float(ratios[i + 1])
        t_hat, r_hat, a_hat = t_i, r_i, float(alphas[i])
        if a_hat == 0.0:  # pure noise (a flow path at t = 1): no room to raise, no y
            x, used = _heun_in_t(denoise, x, t_i, t_next, r_next, schedule)
            nfe += used
            x, stop = _finish_step(x, t_next, i + 1, project, on_step)
            if stop:
                break
            continue
        y = x / a_hat
        if gammas[i] > 0:
            lam_hat = -2.0 * math.log((1.0 + float(gammas[i])) * r_i)
            t_hat = float(schedule.t_of_log_snr(torch.tensor(lam_hat, dtype=torch.float64)))
            t_hat = min(t_hat, 1.0)
            t_hat_ = torch.tensor(t_hat, dtype=torch.float64)
            a_hat = float(schedule.alpha(t_hat_))
            r_hat = float(schedule.sigma(t_hat_)) / a_hat  # the r the denoiser sees at t^
            if r_hat <= r_i:  # no room above r_i (capped at t = 1): an unraised step
                t_hat, r_hat, a_hat = t_i, r_i, float(alphas[i])
            elif s_noise > 0:
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                y = y + math.sqrt(r_hat**2 - r_i**2) * s_noise * z
        if variable == "t":
            x, used = _heun_in_t(denoise, a_hat * y, t_hat, t_next, r_next, schedule)
            nfe += used
            x, stop = _finish_step(x, t_next, i + 1, project, on_step)
            if stop:
                break
            continue
        x0_hat = _denoised(denoise, a_hat * y, t_hat)
        nfe += 1
        if r_next == 0.0:
            y_next = x0_hat  # Euler to r = 0: y^ + (0 - r^) (y^ - D) / r^ = D
        else:
            d = (y - x0_hat) / r_hat
            y_next = y + (r_next - r_hat) * d
            x0_next = _denoised(denoise, float(alphas[i + 1]) * y_next, t_next)
            nfe += 1
            d_next = (y_next - x0_next) / r_next
            y_next = y + (r_next - r_hat) * 0.5 * (d + d_next)
        x, stop = _finish_step(float(alphas[i + 1]) * y_next, t_next, i + 1, project, on_step)
        if stop:
            break
    return x, nfe


def _heun_in_t(
    denoise: Denoise, x: Tensor, t: float, t_next: float, r_next: float, schedule: Schedule
) -> tuple[Tensor, int]:
    """One Heun step of the probability-flow ODE in t from (x, t) to t_next (`edm_heun` with
    variable="t"): (x at t_next, NFE). A step to r = 0 (the data) is the Euler step, which
    there lands on alpha(t_next) x0_hat."""

    def field(x_: Tensor, t_: float) -> tuple[Tensor, Tensor]:
        tt = torch.tensor(t_, dtype=x_.dtype, device=x_.device)
        x0_hat, eps_hat = denoise(x_, tt)
        if not isinstance(x0_hat, Tensor) or x0_hat.shape != x_.shape:
            _denoised(lambda *_: (x0_hat, eps_hat), x_, t_)  # the shape error
        t64 = torch.tensor(t_, dtype=torch.float64)
        d_alpha, d_sigma = float(schedule.d_alpha(t64)), float(schedule.d_sigma(t64))
        return d_alpha * x0_hat + d_sigma * eps_hat, x0_hat

    f, x0_hat = field(x, t)
    if r_next == 0.0:
        t_next_ = torch.tensor(t_next, dtype=torch.float64)
        return float(schedule.alpha(t_next_)) * x0_hat, 1
    x_euler = x + (t_next - t) * f
    f_next, _ = field(x_euler, t_next)
    return x + (t_next - t) * 0.5 * (f + f_next), 2


# -- UniPC -------------------------------------------------------------------------------------
def unipc_orders(steps: int, order: int, lower_order_final: bool = True) -> list[int]:
    """The predictor order of each step: min(order, k + 1) at step k (warm-up: step k has k + 1
    model evaluations to use), and with lower_order_final also <= steps - k (the last steps
    step down, as DPM-Solver++ and UniPC do: it steadies few-step sampling)."""
    return [min(order, k + 1, steps - k if lower_order_final else order) for k in range(steps)]


def unipc_weights(h: float, rs: list[float], variant: str, corrector: bool) -> np.ndarray:
    """The UniPC weights rho of the divided differences (Zhao et al. 2023, Algorithms 2-3).

    Data prediction, hh = -h with h = lambda_t - lambda_s > 0 the step in half log-SNR
    lambda = log(alpha / sigma), B(h) = hh (bh1) or e^hh - 1 (bh2). With
    phi_1(u) = (e^u - 1) / u, phi_{k+1}(u) = (phi_k(u) - 1 / k!) / u, the right-hand side is
    g_k = k! hh phi_{k+1}(hh) / B(h), k = 1..K, and R_{jk} = r_k^(j - 1) (Vandermonde in the
    ratios r_k = (lambda_{s_k} - lambda_s) / h of the older points; the corrector's last
    point is t itself, r = 1). The predictor of order p has K = p - 1 ratios (rs) and
    solves R rho = g on them, except p = 2: rho = 1/2; the corrector has rs + [1] and K = p,
    except p = 1: rho = 1/2 (both the simplified choices of UniPC's reference code).
    """
    points = list(rs) + ([1.0] if corrector else [])
    k = len(points)
    if k == 0:
        return np.zeros(0)
    if k == 1:
        return np.array([0.5])
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    phi = math.expm1(hh) / hh  # phi_1(hh)
    g, factorial = [], 1.0
    for j in range(1, k + 1):
        factorial *= j  # j!
        phi = (phi - 1.0 / factorial) / hh  # phi_{j+1}(hh)
        g.append(factorial * hh * phi / b_h)
    vander = np.vander(np.array(points, dtype=np.float64), k, increasing=True).T
    return np.linalg.solve(vander, np.array(g))


def unipc(
    denoise: Denoise,
    x: Tensor,
    times: Tensor | Sequence[float],
    schedule: Schedule,
    *,
    order: int = 2,
    variant: str = "bh2",
    lower_order_final: bool = True,
    project: Project | None = None,
    on_step: OnStep | None = None,
) -> tuple[Tensor, int]:
    """UniPC (Zhao et al. 2023): the multistep UniP-p predictor with the UniC corrector, data
    prediction, one model evaluation per step.

    With lambda = log(alpha / sigma), h = lambda_t - lambda_s, the newest data prediction
    m_0 = x0_hat at s, the older ones m_k at s_k and D_k = (m_k - m_0) / r_k (`unipc_weights`):

        predictor   x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) m_0
                          - alpha_t B(h) sum_k rho_k D_k                     (order p)
        corrector   the same with the corrector's weights and D_t = m_t - m_0, where
                    m_t = D(x_t^pred, t): the model at the predicted point   (order p + 1)

    m_t is also the next step's newest history entry, so the corrector costs no extra NFE;
    the last step has no corrector. The orders follow `unipc_orders` (warm-up, and with
    lower_order_final the last steps step down; order 1 is DDIM + corrector). A step to
    sigma = 0 (t = 0) is taken at order 1 and gives x = alpha_t m_0. `project` is applied to
    the predicted point before the model sees it and to the corrected state.

    order: 1, 2 or 3 (the reference code suggests 2 for guided and 3 for unconditional
    sampling). variant: B(h) = hh ("bh1", suggested there below 10 unguided steps) or
    e^hh - 1 ("bh2", otherwise). With order 2, bh2 and no corrector the predictor is
    DPM-Solver++(2M). NFE: S on a grid of S steps (`project` is called twice a step, on the
    prediction and on the corrected state, once on the last). Returns (x reached, NFE).
    """
    grid = _check_common(denoise, x, times, schedule, project, on_step)
    if isinstance(order, bool) or not isinstance(order, int) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(UNIPC_VARIANTS)}, got {variant!r}")
    if not isinstance(lower_order_final, bool):
        raise TypeError(f"lower_order_final must be True or False, got {lower_order_final!r}")
    alphas, sigmas = _coefficients(schedule, grid)
    lams = (torch.log(alphas) - torch.log(sigmas)).tolist()  # half log-SNR, +inf at sigma = 0
    bad = [float(t) for t, v in zip(grid, lams, strict=True) if not math.isfinite(v)]
    if bad and (len(bad) > 1 or lams[-1] != math.inf):
        raise ValueError(
            "unipc needs alpha > 0 and sigma > 0 on the grid (sigma = 0 only at its end), but "
            f"the log-SNR is infinite at t = {bad}: start the grid below t = 1"
        )
    steps = len(grid) - 1
    orders = unipc_orders(steps, order, lower_order_final)
    history = [_denoised(denoise, x, float(grid[0]))]  # newest first
    nfe = 1
    for k in range(steps):
        t_next = float(grid[k + 1])
        a_t, s_t, s_s = float(alphas[k + 1]), float(sigmas[k + 1]), float(sigmas[k])
        lam_s, lam_t = lams[k], lams[k + 1]
        if s_t == 0.0:  # the last step, to the data: h = inf, x_t = alpha_t m_0 (DDIM)
            x, _ = _finish_step(a_t * history[0], t_next, k + 1, project, on_step)
            break
        p = orders[k]
        h = lam_t - lam_s
        base = (s_t / s_s) * x - a_t * math.expm1(-h) * history[0]
        b_h = -h if variant == "bh1" else math.expm1(-h)
        rs = [(lams[k - j] - lam_s) / h for j in range(1, p)]
        diffs = [(history[j] - history[0]) / rs[j - 1] for j in range(1, p)]
        x_pred = base
        if p > 1:
            rho = unipc_weights(h, rs, variant, corrector=False)
            x_pred = base - a_t * b_h * sum(float(w) * d for w, d in zip(rho, diffs, strict=True))
        if k == steps - 1:
            x, _ = _finish_step(x_pred, t_next, k + 1, project, on_step)
            break
        if project is not None:
            x_pred = project(x_pred, t_next)
        m_t = _denoised(denoise, x_pred, t_next)
        nfe += 1
        rho_c = unipc_weights(h, rs, variant, corrector=True)
        corr = float(rho_c[-1]) * (m_t - history[0])
        for w, d in zip(rho_c[:-1], diffs, strict=True):
            corr = corr + float(w) * d
        history = [m_t, *history[: order - 1]]
        x, stop = _finish_step(base - a_t * b_h * corr, t_next, k + 1, project, on_step)
        if stop:
            break
    return x, nfe
