"""The masked-diffusion family's pure functions: masking schedules, the ELBO's weights and its
Monte-Carlo draws, the steps of the unmasking samplers, and the infill template.

Absorbing-state ("masked") diffusion (MDLM, Sahoo et al. 2024; MD4, Shi et al. 2024): at time
t in [0, 1] each token of x_0 is kept with probability alpha(t) and replaced by [MASK]
otherwise, alpha(0) = 1 (data) and alpha(1) = 0 (all masks). The continuous-time ELBO, with the
SUBS parameterisation (no mass on [MASK], revealed tokens carried over), is

    -log p(x_0) <= NELBO = int_0^1 w(t) E_{x_t} [ sum_{i masked} -log p_theta(x_0^i | x_t) ] dt,
    w(t) = -alpha'(t) / (1 - alpha(t))                                 (linear: w = 1 / t).

Summed over the masks M of each size k (P(M) = (1 - alpha)^k alpha^(m - k) for m free tokens),
the time integral is int_0^1 w (1 - alpha)^k alpha^(m - k) dt = B(k, m - k + 1) whatever the
schedule (substitute a = alpha(t)), so

    NELBO = sum_{k=1}^m (1 / k) E_{|M| = k} [ CE(M) ] = m E_{k ~ U{1..m}} E_{|M| = k} [ CE(M) / k ],

CE(M) = sum_{i in M} -log p_theta(x_0^i | x_0 with M masked). The right-hand side is what
`log_prob` estimates (`draw_masks`): its terms are mean cross-entropies, so its variance is
bounded, while the t-form's (1 / t times a rare masked token near t = 0) is not. Training uses
the t-form, with t stratified over the batch (`draw_times`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

ScheduleName = Literal["linear", "cosine"]
TRAIN_T_MIN = 1e-3  # training draws t in [TRAIN_T_MIN, 1] (w(t) ~ 1 / t; MDLM's sampling_eps)


# -- masking schedules: alpha(t), the probability that a token is still unmasked ------------------
def _linear(t: Tensor) -> tuple[Tensor, Tensor]:
    return 1.0 - t, torch.full_like(t, -1.0)


def _cosine(t: Tensor) -> tuple[Tensor, Tensor]:
    half_pi = math.pi / 2
    return torch.cos(half_pi * t), -half_pi * torch.sin(half_pi * t)


SCHEDULES: dict[str, Callable[[Tensor], tuple[Tensor, Tensor]]] = {
    "linear": _linear,  # alpha = 1 - t: a fraction t of the tokens masked
    "cosine": _cosine,  # alpha = cos(pi t / 2): MaskGIT's schedule, fewer masks early
}


def alpha(t: Tensor, schedule: ScheduleName) -> Tensor:
    """alpha(t) in [0, 1], computed in float64, returned in t's dtype."""
    return SCHEDULES[schedule](t.double())[0].clamp(0.0, 1.0).to(t.dtype)


def elbo_weight(t: Tensor, schedule: ScheduleName) -> Tensor:
    """w(t) = -alpha'(t) / (1 - alpha(t)) > 0 (1 / t for the linear schedule), for t in (0, 1]."""
    a, da = SCHEDULES[schedule](t.double())
    return (-da / (1.0 - a)).to(t.dtype)


def unmask_probability(t: float, s: float, schedule: ScheduleName) -> float:
    """(alpha(s) - alpha(t)) / (1 - alpha(t)): the probability that a token masked at time t
    is revealed by time s < t (MDLM's ancestral step); 1 at s = 0."""
    a_t, a_s = (float(alpha(torch.tensor(v, dtype=torch.float64), schedule)) for v in (t, s))
    return 1.0 if a_t >= 1.0 else min(1.0, max(0.0, (a_s - a_t) / (1.0 - a_t)))


def time_grid(steps: int) -> list[float]:
    """The sampler's times 1 = t_0 > t_1 > ... > t_steps = 0, uniform in t."""
    return [1.0 - j / steps for j in range(steps + 1)]


# -- the Monte-Carlo draws -------------------------------------------------------------------------
def draw_times(n: int, generator: torch.Generator | None, stratified: bool) -> Tensor:
    """(n,) float32 times in [TRAIN_T_MIN, 1]: u_i = (u + i / n) mod 1 for one u ~ U[0, 1)
    (stratified: low-discrepancy, each t-interval of width 1/n holds one) or n independent
    uniforms, then t = TRAIN_T_MIN + (1 - TRAIN_T_MIN) u (generator None: the global RNG,
    which the trainer owns)."""
    if stratified:
        u = (torch.rand(1, generator=generator) + torch.arange(n) / n) % 1.0
    else:
        u = torch.rand(n, generator=generator)
    return TRAIN_T_MIN + (1.0 - TRAIN_T_MIN) * u


def draw_masks(
    free: Tensor, draw: int, draws: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One draw of the ELBO's mask sets (module docstring), for each row.

    The number masked is k = ceil(u m) with u = (draw + v) / draws, v ~ U[0, 1) (stratified
    over the `draws` draws of a row, so k ~ U{1..m} over them), then a uniform subset of size k
    of the row's m free positions.

    Shapes: free (n, L) bool  ->  masked (n, L) bool (inside free), k (n,) float (0 where m = 0).
    """
    n, length = free.shape
    m = free.sum(-1)
    u = (draw + torch.rand(n, generator=generator)) / draws
    k = torch.ceil(u * m).clamp(min=1).minimum(m)
    scores = torch.rand(n, length, generator=generator).masked_fill(~free, math.inf)
    rank = scores.argsort(-1).argsort(-1)  # 0 for the lowest score
    return rank < k[:, None], k.float()


def draw_step_masks(
    free: Tensor, draw: int, draws: int, steps: int, schedule: ScheduleName,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One draw of the T-step (discrete-time) ELBO, the bound of what `steps` = T ancestral
    sampler steps draw (MDLM's discrete-time form, SUBS: no prior or reconstruction term):

        NELBO_T = sum_{j=1}^T E_{x_t} [ (alpha(s) - alpha(t)) / (1 - alpha(t)) CE(masked) ],
        t = j / T, s = (j - 1) / T,

    estimated by j ~ U{1..T} (stratified over the draws, as in `draw_masks`) and x_t: each
    free token masked with probability 1 - alpha(t). NELBO_T >= NELBO, with equality as T -> oo.

    Shapes: free (n, L) bool -> masked (n, L) bool, coefficient (n,) float64: the draw's
    estimate is coefficient * CE(masked) (T times the step's weight).
    """
    n, _ = free.shape
    u = (draw + torch.rand(n, generator=generator, dtype=torch.float64)) / draws
    j = torch.ceil(u * steps).clamp(1, steps)
    t, s = j / steps, (j - 1) / steps
    a_t, a_s = alpha(t, schedule), alpha(s, schedule)
    masked = (torch.rand(free.shape, generator=generator) < (1 - a_t)[:, None].float()) & free
    coef = steps * (a_s - a_t) / (1 - a_t).clamp(min=1e-12)
    return masked, coef


# -- the samplers' steps --------------------------------------------------------------------------
def reveal_steps(
    free: Tensor, steps: int, schedule: ScheduleName, generator: torch.Generator
) -> Tensor:
    """The step at which the ancestral sampler reveals each free position, drawn up front.

    A token masked at t = 1 is still masked at time s with probability 1 - alpha(s), so with
    one u ~ U[0, 1) per position it is revealed at the first step j (from t_j to t_{j+1} of
    `time_grid`) with alpha(t_{j+1}) > u: P(step j | masked at t_j) = (alpha(t_{j+1}) -
    alpha(t_j)) / (1 - alpha(t_j)), the law of `unmask_probability`'s coin flips, step after
    step. The times do not depend on the tokens drawn, so the sampler knows before each step
    which rows reveal anything (the others need no forward pass).

    Shapes: free (n, L) bool  ->  (n, L) long in [0, steps), -1 where not free.
    """
    a = alpha(torch.tensor(time_grid(steps)[1:], dtype=torch.float64), schedule)  # up to 1
    u = torch.rand(free.shape, generator=generator, dtype=torch.float64, device=generator.device)
    step = torch.searchsorted(a, u.cpu().flatten(), right=True).reshape(free.shape)
    return step.clamp(max=steps - 1).to(free.device).masked_fill(~free, -1)


def masked_after(free_count: Tensor, s: float, schedule: ScheduleName) -> Tensor:
    """The number of free tokens left masked at time s by the confidence sampler:
    round(m (1 - alpha(s))), 0 at s = 0. Shapes: (n,) -> (n,) long."""
    rate = 1.0 - float(alpha(torch.tensor(s, dtype=torch.float64), schedule))
    return torch.round(free_count.double() * rate).long()


def most_confident(confidence: Tensor, masked: Tensor, count: Tensor) -> Tensor:
    """The `count` masked positions of each row with the highest confidence (ties by position).

    Shapes: confidence (n, L) float, masked (n, L) bool, count (n,) long  ->  (n, L) bool.
    """
    score = confidence.masked_fill(~masked, -math.inf)
    rank = score.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    return (rank < count[:, None]) & masked


def guided_log_probs(cond: Tensor, uncond: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance on log-probabilities: (1 + w) log p(x | y) - w log p(x)
    (renormalised by the sampler's softmax). Shapes: (..., V) -> (..., V)."""
    return cond if guidance == 0 else (1.0 + guidance) * cond - guidance * uncond


# -- infill templates ------------------------------------------------------------------------------
def parse_infill(
    template: str, placeholder: str, encode: Callable[[str], list[int]]
) -> list[int | None]:
    """A template's tokens: each `placeholder` character is one free token (None), and each run
    of other characters is encoded as it is (its tokens fixed).

    "ROMEO:____ love ____" with placeholder "_" is 6 fixed characters, 4 free tokens, 6 fixed
    characters and 4 free tokens (char tokenizer).

    Raises:
        ValueError: an empty template or placeholder, a placeholder longer than one character.
    """
    if not isinstance(template, str) or not template:
        raise ValueError("infill must be a non-empty string, the placeholder marking free tokens")
    if not isinstance(placeholder, str) or len(placeholder) != 1:
        raise ValueError(f"placeholder must be one character, got {placeholder!r}")
    out: list[int | None] = []
    run = ""
    for c in template + placeholder:  # a final placeholder flushes the last run
        if c == placeholder:
            if run:
                out.extend(encode(run))
            out.append(None)
            run = ""
        else:
            run += c
    return out[:-1]
