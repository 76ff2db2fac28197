"""The VAE's likelihoods and bounds as pure functions (`genlab.models.vae` builds on them):
KL of a diagonal Gaussian to N(0, I), the IWAE bound, and the decoders p(x | z) — Bernoulli,
discretised logistic (quantised images) and Gaussian — with the rule that picks one.
All in nats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.data.dataset import ArrayLike
from genlab.models.inputs import iter_chunks, stat_chunk_rows, value_range
from genlab.solvers import LOG_2PI

LikelihoodName = Literal["auto", "bernoulli", "gaussian", "discretized"]
LOG_SCALE_MIN = -7.0  # floor of the discretized logistic's log-scale (in [0, 1] units)
MAX_LEVELS = 256  # largest number of grey levels `infer_levels` looks for


# -- the maths, as pure functions ----------------------------------------------------------------
def gaussian_kl(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mu, diag exp(log_var)) || N(0, I)) = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2).

    (B, L), (B, L) -> (B,) nats.
    """
    return 0.5 * (mu.square() + log_var.exp() - 1.0 - log_var).sum(-1)


def normal_log_prob(z: Tensor, mu: Tensor | float = 0.0, log_var: Tensor | float = 0.0) -> Tensor:
    """log N(z | mu, diag exp(log_var)) summed over the last axis: (..., L) -> (...) nats."""
    log_var = torch.as_tensor(log_var, dtype=z.dtype, device=z.device)
    return -0.5 * (LOG_2PI + log_var + (z - mu).square() * torch.exp(-log_var)).sum(-1)


def iwae_bound(log_w: Tensor) -> Tensor:
    """log (1/k) sum_i exp(log_w_i): (n, k) log importance weights -> (n,) nats."""
    return torch.logsumexp(log_w, dim=-1) - math.log(log_w.shape[-1])


def kl_weight(step: int, beta: float, warmup_steps: int) -> float:
    """beta_t = beta * min(1, step / warmup_steps): the KL weight at a (0-based) training step."""
    return beta if warmup_steps <= 0 else beta * min(1.0, step / warmup_steps)


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log p(x | logits) = x log sigmoid(l) + (1 - x) log sigmoid(-l), elementwise, nats."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")


def log1mexp(d: Tensor) -> Tensor:
    """log(1 - exp(-d)) for d > 0, accurate for small and large d (Maechler, 2012)."""
    return torch.where(d < math.log(2), torch.log(-torch.expm1(-d)), torch.log1p(-torch.exp(-d)))


def discretized_logistic_log_prob(x: Tensor, loc: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """log P(x) of a logistic(loc, s) integrated over the bin of x, elementwise, nats.

    x = k / (levels - 1) has the bin [x - h, x + h], h = 1 / (2 (levels - 1)); the first bin
    extends to -inf and the last to +inf, so the probabilities of the `levels` values sum to 1.
    With a = (x + h - loc) / s and b = (x - h - loc) / s, the middle bins use the exact identity

        sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(-(a - b))),

    which stays accurate in both tails (no difference of nearly equal numbers).
    """
    half = 0.5 / (levels - 1)
    inv_s = torch.exp(-log_scale)
    a = (x + half - loc) * inv_s
    b = (x - half - loc) * inv_s
    middle = F.logsigmoid(a) + F.logsigmoid(-b) + log1mexp(a - b)
    k = torch.round(x * (levels - 1))
    return torch.where(
        k <= 0, F.logsigmoid(a), torch.where(k >= levels - 1, F.logsigmoid(-b), middle)
    )


def gaussian_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log N(x | mean, exp(log_scale)^2), elementwise, nats."""
    return -0.5 * LOG_2PI - log_scale - 0.5 * ((x - mean) * torch.exp(-log_scale)).square()


def _sample_discretized(loc: Tensor, log_scale: Tensor, g: torch.Generator, levels: int):
    """A draw of the discretized logistic: a logistic draw rounded to the nearest level and
    clamped to [0, 1], so the edge levels take the tails (as in the mass above)."""
    u = torch.rand(loc.shape, generator=g, device=loc.device).clamp(1e-6, 1 - 1e-6)
    v = loc + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
    return torch.round(v * (levels - 1)).clamp(0, levels - 1) / (levels - 1)


class Likelihood(NamedTuple):
    """A decoder family p(x | z) as functions of its parameters theta (a tuple of (B, D))."""

    n_outputs: int  # decoder outputs per dimension (the Gaussian's scale is a model parameter)
    space: Literal["discrete", "continuous"]  # a log-mass or a log-density
    log_prob: Callable  # (x, theta, levels) -> elementwise log p(x | z)
    mean: Callable  # theta -> E[x | z] (discretized: the location clipped to [0, 1])
    sample: Callable  # (theta, generator, levels) -> a draw x ~ p(x | z)


LIKELIHOOD_FNS = {
    "bernoulli": Likelihood(
        1, "discrete", lambda x, th, _: bernoulli_log_prob(x, *th),
        lambda th: torch.sigmoid(th[0]),
        lambda th, g, _: torch.bernoulli(torch.sigmoid(th[0]), generator=g),
    ),
    "discretized": Likelihood(
        2, "discrete", lambda x, th, levels: discretized_logistic_log_prob(x, *th, levels),
        lambda th: th[0].clamp(0.0, 1.0),
        lambda th, g, levels: _sample_discretized(*th, g, levels),
    ),
    "gaussian": Likelihood(
        1, "continuous", lambda x, th, _: gaussian_log_prob(x, *th),
        lambda th: th[0],
        lambda th, g, _: th[0] + th[1].exp() * torch.randn(th[0].shape, generator=g,
                                                           device=th[0].device),
    ),
}  # fmt: skip


# -- choosing the likelihood and the nets from the data ------------------------------------------
def infer_levels(x: ArrayLike, max_levels: int = MAX_LEVELS) -> int | None:
    """The smallest L in [2, max_levels] with x * (L - 1) integral everywhere, or None.

    x must lie in [0, 1] (None otherwise). Candidates are found on the distinct values of the
    first million entries, then checked on all of x.
    """
    if math.prod(x.shape) == 0 or not _in_unit(*value_range(x)):
        return None
    head = x[: math.ceil(1_000_000 / max(math.prod(x.shape[1:]), 1))]  # rows of 1M values
    values = torch.unique(head.reshape(-1)[:1_000_000].double())
    if len(values) > max_levels:
        return None
    for levels in range(2, max_levels + 1):
        if _on_grid(values, levels):
            return levels if _on_grid(x, levels) else None
    return None


def _on_grid(x: ArrayLike, levels: int, tol: float = 1e-3) -> bool:
    """Whether every x * (levels - 1) is within tol of an integer (in chunks of rows: bounded
    memory, and a lazy `NpyArray` is streamed)."""
    for _, chunk in iter_chunks(x, stat_chunk_rows(x)):
        scaled = chunk.reshape(-1).double() * (levels - 1)
        if not bool(((scaled - scaled.round()).abs() <= tol).all()):
            return False
    return True


def _in_unit(lo: float, hi: float) -> bool:
    return lo >= 0 and hi <= 1


def resolve_likelihood(
    x: ArrayLike, likelihood: LikelihoodName, kind: str, levels: int | None
) -> tuple[str, int | None]:
    """(likelihood, levels) for training data x: "auto" resolved, explicit choices checked.

    auto: binary data (all 0 or 1) -> bernoulli; images in [0, 1] on a grid of `levels` (the
    data set's, or inferred) -> discretized; anything else -> gaussian.
    """
    lo, hi = value_range(x)  # x may be a lazy NpyArray: every pass streams chunks of rows
    in_unit = _in_unit(lo, hi)
    chunks = (chunk for _, chunk in iter_chunks(x, stat_chunk_rows(x)))
    binary = in_unit and all(bool(((c == 0) | (c == 1)).all()) for c in chunks)
    if likelihood == "bernoulli" or (likelihood == "auto" and (binary or levels == 2)):
        if not in_unit:
            raise ValueError(
                'likelihood="bernoulli" needs data in [0, 1] (binary for a normalised mass); '
                f"got values in [{lo:g}, {hi:g}]"
            )
        return "bernoulli", 2
    if likelihood == "discretized" or (likelihood == "auto" and kind == "image" and in_unit):
        if in_unit and (levels is None or not _on_grid(x, levels)):
            levels = infer_levels(x)  # none given, or the given ones do not fit the values
        if in_unit and levels is not None:
            return "discretized", levels
        if likelihood == "discretized":
            raise ValueError(
                'likelihood="discretized" needs quantised data k / (levels - 1) in [0, 1] with '
                f"at most {MAX_LEVELS} levels; use likelihood='gaussian' for continuous data"
            )
    return "gaussian", None
