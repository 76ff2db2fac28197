"""The autoencoder's latent maths as pure functions (`genlab.models.autoencoder` builds on them):
finite scalar quantisation (FSQ; Mentzer, Minnen, Agustsson & Tschannen, 2023) and the bounds.

FSQ quantises each of C latent channels to its own number of levels L_c, with no codebook:

    bound(z)_c = tanh(z_c + shift_c) * half_c - offset_c,    half_c = (L_c - 1)(1 - eps) / 2
    zhat_c     = round(bound(z)_c) / (L_c // 2)              (straight-through round)

offset_c = 1/2 for even L_c (0 for odd), shift_c = atanh(offset_c / half_c), so round(bound(.))
takes exactly L_c integer values: -(L_c - 1)/2 .. (L_c - 1)/2 (odd), -L_c/2 .. L_c/2 - 1
(even). zhat lies on a grid in [-1, 1]. The digit of channel c is d_c = zhat_c (L_c // 2) +
L_c // 2 in {0, .., L_c - 1}, and the code index is the mixed-radix number
sum_c d_c prod_{c' < c} L_c', in {0, .., prod_c L_c - 1}. Channels are on the last axis here.

Bounds of log p(x) (nats), for the generative model z ~ p(z), x ~ p(x | z):

    KL latent:   ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || N(0, I))             <= log p(x)
    FSQ latent:  log p(x | zhat(x)) - P log K                                        <= log p(x)

where P is the number of latent positions and K = prod_c L_c the codes per position: with the
uniform prior p(code) = K^-P, p(x) = sum_codes p(code) p(x | code) >= K^-P p(x | zhat(x)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

FSQ_EPS = 1e-3  # keeps tanh's image inside the outer bins (Mentzer et al.'s reference)


def round_ste(x: Tensor) -> Tensor:
    """round(x) in the forward pass, the identity's gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def _levels(levels: Sequence[int] | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(levels, dtype=like.dtype, device=like.device)


def fsq_bound(z: Tensor, levels: Sequence[int] | Tensor, eps: float = FSQ_EPS) -> Tensor:
    """tanh(z + shift) * half - offset per channel (last axis): (..., C) -> (..., C), whose
    rounding takes exactly L_c values (see the module docstring)."""
    lv = _levels(levels, z)
    half = (lv - 1) * (1 - eps) / 2
    offset = torch.where(torch.remainder(lv, 2) == 1, 0.0, 0.5).to(z.dtype)
    shift = torch.atanh(offset / half)
    return torch.tanh(z + shift) * half - offset


def fsq_quantize(z: Tensor, levels: Sequence[int] | Tensor) -> Tensor:
    """zhat = round_ste(bound(z)) / (L // 2): (..., C) -> (..., C) on the grid in [-1, 1],
    with the straight-through gradient d zhat / d z = bound'(z) / (L // 2)."""
    lv = _levels(levels, z)
    return round_ste(fsq_bound(z, lv)) / torch.div(lv, 2, rounding_mode="floor")


def fsq_grid(levels: int) -> Tensor:
    """The L values zhat takes on one channel of L levels, ascending: (L,) float64."""
    half = levels // 2
    return (torch.arange(levels, dtype=torch.float64) - half) / half


def fsq_basis(levels: Sequence[int]) -> Tensor:
    """Place values of the mixed-radix code index: (1, L_0, L_0 L_1, ...), (C,) int64."""
    return torch.tensor([math.prod(levels[:c]) for c in range(len(levels))], dtype=torch.long)


def fsq_codes_to_indices(zhat: Tensor, levels: Sequence[int]) -> Tensor:
    """Code index sum_c d_c basis_c of grid values zhat: (..., C) float -> (...) int64."""
    lv = torch.tensor(levels, dtype=torch.long, device=zhat.device)
    half = torch.div(lv, 2, rounding_mode="floor")
    digits = torch.round(zhat.double() * half + half).long().clamp(min=0)
    digits = torch.minimum(digits, lv - 1)
    return (digits * fsq_basis(levels).to(zhat.device)).sum(-1)


def fsq_indices_to_codes(indices: Tensor, levels: Sequence[int]) -> Tensor:
    """Grid values zhat of code indices: (...) int64 -> (..., C) float32."""
    lv = torch.tensor(levels, dtype=torch.long, device=indices.device)
    half = torch.div(lv, 2, rounding_mode="floor")
    digits = torch.div(indices[..., None], fsq_basis(levels).to(indices.device),
                       rounding_mode="floor") % lv  # fmt: skip
    return ((digits - half).float() / half.float()).to(torch.float32)


def uniform_code_log_prob(levels: Sequence[int], positions: int) -> float:
    """log p(codes) = -P log K of the uniform prior over K = prod(levels) codes at each of
    P positions, nats."""
    return -positions * sum(math.log(n) for n in levels)
