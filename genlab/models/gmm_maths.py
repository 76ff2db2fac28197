"""The pure maths of Gaussian mixtures fitted by EM: feature maps, natural parameters, the E-
and M-steps, and the initialisation (`genlab.models.gmm` runs the loop over them).

    log p(x) = logsumexp_k [ log w_k + log N(x | mu_k, Sigma_k) ]        (exact, nats)

With the precision P_k = Sigma_k^-1 = U_k U_k^T (U_k: Cholesky factor of the precision) and the
data centred at a fixed point c (z = x - c, nu_k = mu_k - c), every log-term is linear in the
feature map phi(z) = [1, z, z_i z_j (i <= j)]:

    log w_k + log N(z | nu_k, P_k) = Theta_k . phi(z),
    Theta_k = [log w_k - D/2 log 2pi + log|U_k| - nu_k^T P_k nu_k / 2,  P_k nu_k,  -P_k / 2 (vech)]

so an E-step is one matrix product Theta phi(Z)^T (K x n) and a log-sum-exp, and the
M-step's sufficient statistics (sum r, sum r z, sum r z z^T) are one product R^T phi(Z)
(K x p). diag and spherical mixtures use the smaller maps [1, z, z^2] and [1, z, |z|^2];
tied shares one P across components. Every function here is tensor in, tensor out, and is
tested alone (tests/test_gmm.py), after scikit-learn's `_estimate_gaussian_parameters` and
`_compute_precision_cholesky`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = [
    "ESTEPS",
    "FEATURES",
    "LLOYD_STEPS",
    "Params",
    "Whitening",
    "add_second_moments",
    "cheaper_estep",
    "component_noise",
    "component_residuals",
    "covariance_shape",
    "covariances_from_precisions",
    "dense_covariances",
    "e_step",
    "estep_seconds",
    "exp_shifted",
    "feature_statistics",
    "initial_responsibilities",
    "kmeans_plusplus",
    "lloyd",
    "log_det_cholesky",
    "lower_triangular_inverse",
    "m_step",
    "n_features",
    "n_free_parameters",
    "natural_parameters",
    "normalise_logits",
    "positive_definite",
    "precision_cholesky",
    "precision_cholesky_or_none",
    "residual_e_step",
    "residual_logits",
    "residual_m_step",
    "responsibility_statistics",
    "second_moments_shape",
    "triangle_blocks",
    "triangle_fraction",
    "whitening",
    "whitening_to",
]

LLOYD_STEPS = 10  # Lloyd iterations after k-means++ seeding for init="kmeans"


class Params(NamedTuple):
    """Mixture parameters in float64: weights (K,), means (K, D), covariances (type's shape)."""

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor


# -- feature maps phi(z) and the natural parameters Theta, one pair per covariance type ----------
def _vech_index(d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    i, j = torch.triu_indices(d, d, device=device)
    return i, j


def _full_features(z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(n, D) -> phi(z)^T (1 + D + D(D+1)/2, n): [1, z, z_i z_j for i <= j] (row-major vech).

    Built transposed, one contiguous broadcast product per row of the upper triangle: 5-20x
    faster than gathering columns; matrix products take the transposed view for free.
    """
    n, d = z.shape
    phi = z.new_empty(1 + d + d * (d + 1) // 2, n) if out is None else out
    phi[0] = 1
    phi[1 : 1 + d] = z.T
    start = 1 + d
    for i in range(d):
        torch.mul(phi[1 + i : 2 + i], phi[1 + i : 1 + d], out=phi[start : start + d - i])
        start += d - i
    return phi


def _diag_features(z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(n, D) -> phi(z)^T (1 + 2D, n): [1, z, z^2]."""
    n, d = z.shape
    phi = z.new_empty(1 + 2 * d, n) if out is None else out
    phi[0] = 1
    phi[1 : 1 + d] = z.T
    torch.mul(phi[1 : 1 + d], phi[1 : 1 + d], out=phi[1 + d :])
    return phi


def _spherical_features(z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(n, D) -> phi(z)^T (2 + D, n): [1, z, |z|^2]."""
    n, d = z.shape
    phi = z.new_empty(2 + d, n) if out is None else out
    phi[0] = 1
    phi[1 : 1 + d] = z.T
    torch.linalg.vector_norm(z, dim=1, out=phi[1 + d]).square_()
    return phi


FEATURES: dict[str, Callable[..., torch.Tensor]] = {
    "full": _full_features,
    "tied": _full_features,
    "diag": _diag_features,
    "spherical": _spherical_features,
}


def n_features(covariance_type: str, d: int) -> int:
    """Length of phi(z) for data of dimension d."""
    return {"full": 1 + d + d * (d + 1) // 2, "diag": 1 + 2 * d, "spherical": 2 + d}[
        "full" if covariance_type == "tied" else covariance_type
    ]


def precision_cholesky(covariances: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """U with U U^T = Sigma^-1 (upper triangular for full/tied, 1/sigma for diag/spherical).

    Raises:
        ValueError: a covariance is not positive definite (collapsed component).
    """
    u = precision_cholesky_or_none(covariances, covariance_type)
    if u is None:
        raise ValueError(
            "Fitting the mixture failed: some components have an ill-defined covariance (a "
            "component collapsed onto too few or identical points); increase reg_covar, use "
            "fewer components, or scale the data"
        )
    return u


def precision_cholesky_or_none(
    covariances: torch.Tensor, covariance_type: str
) -> torch.Tensor | None:
    """`precision_cholesky`, or None when a covariance is not positive definite: one
    factorisation serves as the positive-definiteness check and gives the factor.

    full/tied: Sigma = L L^T (Cholesky), U = L^-T (a triangular solve against I), as
    scikit-learn's `_compute_precision_cholesky`.
    """
    if covariance_type in ("full", "tied"):
        chol, info = torch.linalg.cholesky_ex(covariances)
        if (info != 0).any():
            return None
        return lower_triangular_inverse(chol).mT
    if (covariances <= 0).any():
        return None
    return covariances.rsqrt()


def lower_triangular_inverse(chol: torch.Tensor, base: int = 64) -> torch.Tensor:
    """L^-1 of lower-triangular L (..., D, D), by blocks: with L = [[A, 0], [C, B]],
    L^-1 = [[A^-1, 0], [-B^-1 C A^-1, B^-1]], recursing on A and B down to `base` columns
    (there a triangular solve against I). About D^3 / 3 flops, most of them in matrix products,
    against D^3 for one solve against I: 20% faster at D = 784 (one thread, float64)."""
    d = chol.shape[-1]
    if d <= base:
        eye = torch.eye(d, dtype=chol.dtype, device=chol.device)
        return torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
    h = (d // 2 + 15) // 16 * 16  # a split at a multiple of 16 columns
    out = torch.zeros_like(chol)
    a_inv = out[..., :h, :h]
    a_inv.copy_(lower_triangular_inverse(chol[..., :h, :h], base))
    b_inv = out[..., h:, h:]
    b_inv.copy_(lower_triangular_inverse(chol[..., h:, h:], base))
    out[..., h:, :h] = -(b_inv @ (chol[..., h:, :h] @ a_inv))
    return out


def positive_definite(covariances: torch.Tensor, covariance_type: str) -> bool:
    """Whether every covariance is positive definite (full/tied: its Cholesky succeeds)."""
    if covariance_type in ("full", "tied"):
        return bool((torch.linalg.cholesky_ex(covariances).info == 0).all())
    return bool((covariances > 0).all())


def log_det_cholesky(prec_chol: torch.Tensor, covariance_type: str, d: int) -> torch.Tensor:
    """log |U_k| = log sqrt|P_k| for each component: (K,) (a scalar for tied)."""
    if covariance_type in ("full", "tied"):
        return prec_chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    if covariance_type == "diag":
        return prec_chol.log().sum(-1)
    return d * prec_chol.log()


def natural_parameters(
    log_weights: torch.Tensor, nu: torch.Tensor, prec_chol: torch.Tensor, covariance_type: str
) -> torch.Tensor:
    """Theta (K, p) with Theta_k . phi(z) = log w_k + log N(z | nu_k, P_k), nats."""
    k, d = nu.shape
    log_det = log_det_cholesky(prec_chol, covariance_type, d)
    if covariance_type in ("full", "tied"):
        prec = prec_chol @ prec_chol.mT  # (K, D, D) or (D, D)
        prec = prec.expand(k, d, d)
        linear = (prec @ nu.unsqueeze(-1)).squeeze(-1)  # (K, D)
        i, j = _vech_index(d, nu.device)
        quadratic = -prec[:, i, j] * torch.where(i == j, 0.5, 1.0).to(prec)
    else:
        prec = prec_chol**2  # (K, D) or (K,)
        prec_d = prec if covariance_type == "diag" else prec.unsqueeze(-1).expand(k, d)
        linear = prec_d * nu
        quadratic = -0.5 * (prec if covariance_type == "diag" else prec.unsqueeze(-1))
    const = log_weights - 0.5 * d * math.log(2 * math.pi) + log_det - 0.5 * (linear * nu).sum(-1)
    return torch.cat([const.unsqueeze(-1), linear, quadratic], dim=1)


def m_step(stats: torch.Tensor, covariance_type: str, reg_covar: float, d: int) -> Params:
    """Weights, centred means nu and covariances from the statistics R^T phi(z) (K, p), float64.

    Sigma_k = sum r z z^T / N_k - nu_k nu_k^T + reg I (tied: pooled over components).
    """
    nk = stats[:, 0] + 10 * torch.finfo(stats.dtype).eps
    nu = stats[:, 1 : 1 + d] / nk.unsqueeze(-1)
    second = stats[:, 1 + d :]
    if covariance_type in ("full", "tied"):
        i, j = _vech_index(d, stats.device)
        s2 = stats.new_zeros(len(stats), d * d)  # index_copy_: 2.3x faster than s2[:, i, j] =
        s2.index_copy_(1, i * d + j, second).index_copy_(1, j * d + i, second)
        cov = _dense_covariances(s2.view(len(stats), d, d), nk, nu, covariance_type, reg_covar)
    elif covariance_type == "diag":
        cov = second / nk.unsqueeze(-1) - nu**2 + reg_covar
    else:
        cov = (second[:, 0] / nk - (nu**2).sum(-1)) / d + reg_covar
    return Params(nk / nk.sum(), nu, cov)


def _dense_covariances(
    s2: torch.Tensor, nk: torch.Tensor, nu: torch.Tensor, covariance_type: str, reg_covar: float
) -> torch.Tensor:
    """full/tied covariances from dense second moments s2 = sum r z z^T (K, D, D), N_k (K,)
    and means nu (K, D): S2_k / N_k - nu_k nu_k^T + reg I (tied: pooled)."""
    if covariance_type == "full":  # in place on s2 (the callers' own): (K, D, D) f64 is big
        cov = s2.div_(nk[:, None, None]).sub_(nu.unsqueeze(-1) * nu.unsqueeze(-2))
    else:
        cov = (s2.sum(0) - torch.einsum("k,ki,kj->ij", nk, nu, nu)) / nk.sum()
    cov.diagonal(dim1=-2, dim2=-1).add_(reg_covar)  # + reg I
    return cov


def e_step(
    phi_t: torch.Tensor, theta: torch.Tensor, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row log p(x) (n,) and responsibilities R^T (K, n) from phi^T (p, n) and Theta (K, p).

    Rows of data are columns here: with K x n logits, both matrix products of an EM pass
    take their fastest BLAS layouts (measured 1.5-5x faster than n x K in float64). The
    logits are computed into `out` when given, and R^T overwrites them (`exp_shifted`).
    """
    logits = torch.mm(theta, phi_t, out=out)
    top = logits.amax(dim=0, keepdim=True)
    e = exp_shifted(logits.sub_(top))
    total = e.sum(dim=0, keepdim=True)
    return (top + total.log()).squeeze(0), e.div_(total)


def exp_shifted(shifted: torch.Tensor) -> torch.Tensor:
    """exp of logits minus their row maximum, in place, with every term below e^-46 (float32)
    or e^-300 (float64) of the row's largest set to 0.

    The CPU exp is 10-25x slower when most results underflow (PERF.md), and responsibilities
    of ~1e-35 multiplied by the data in the statistics' products give subnormal floats, which
    made those products 16x slower here; what is dropped is below 1e-20 (1e-130) of the
    row's total, far under the dtype's rounding.
    """
    floor = -46.0 if shifted.dtype == torch.float32 else -300.0
    e = shifted.clamp_(min=floor).exp_()
    return torch.nn.functional.threshold_(e, 1.001 * math.exp(floor), 0.0)


# -- the residual path: whitened residuals and Gram matrices, for large D -----------------------
# With U_k upper triangular, (z - nu_k) U_k costs D^2 per row and component, against the feature
# map's D^2/2 per product; but its matrix products have D-sized inner dimensions and stream the
# data once, where phi(z) (D^2/2 columns) makes every product memory-bound at large D. Only the
# upper triangles are computed (`triangle_blocks`): (b + 1) / 2b of the full products. For full
# covariances both steps work on the residuals z - nu_k about the current means (one batched
# product over components per block), so float32 loses nothing to the cancellation of
# S2 / N - mu mu^T when a tight component sits far from the centre.
RESIDUAL_BLOCK_WIDTH = 128  # columns per triangular block (at least MIN_BLOCKS blocks)
MIN_BLOCKS = 4  # 4 blocks: 62% of the full products; more, narrower blocks ran slower here
BLOCK_ALIGN = 16  # block edges at multiples of 16 columns (one AVX-512 register of float32)


class Whitening(NamedTuple):
    """The E-step's parameters on the residual path, in the compute dtype.

    `means` (K, D): nu_k. `factors`: the precision Cholesky factors U_k (K, D, D) for full, U
    (D, D) for tied, 1/sigma_k (K, D) or (K, 1) for diag/spherical. `shift`: nu_k U (K, D) for
    tied (the residuals are z U - nu_k U there), else unused (empty). `const` (K,): log w_k -
    D/2 log 2pi + log |U_k| (nats). `blocks`: `triangle_blocks(D)`.
    """

    means: torch.Tensor
    factors: torch.Tensor
    shift: torch.Tensor
    const: torch.Tensor
    blocks: tuple[tuple[int, int], ...]


def triangle_blocks(d: int) -> tuple[tuple[int, int], ...]:
    """Column ranges [j0, j1) splitting D into max(MIN_BLOCKS, D / RESIDUAL_BLOCK_WIDTH) blocks
    (fewer when D is small): the products below skip the zero part of each triangle block.
    Inner edges fall on multiples of BLOCK_ALIGN columns when blocks are at least twice that
    wide (D = 784: 8% faster E- and M-step products than edges at multiples of 130.67)."""
    b = max(1, min(d, max(MIN_BLOCKS, round(d / RESIDUAL_BLOCK_WIDTH))))
    edges = [round(d * i / b) for i in range(b + 1)]
    if d >= 2 * BLOCK_ALIGN * b:
        edges = [BLOCK_ALIGN * round(e / BLOCK_ALIGN) for e in edges[:-1]] + [d]
    return tuple((edges[i], edges[i + 1]) for i in range(b))


def triangle_fraction(d: int) -> float:
    """The fraction of a D x D product that `triangle_blocks` computes."""
    return sum(j1 * (j1 - j0) for j0, j1 in triangle_blocks(d)) / d**2


def whitening(
    log_weights: torch.Tensor, nu: torch.Tensor, prec_chol: torch.Tensor, covariance_type: str
) -> Whitening:
    """The residual path's E-step parameters (float64 in, float64 out; `whitening_to` casts)."""
    d = nu.shape[1]
    const = log_weights - 0.5 * d * math.log(2 * math.pi)
    const = const + log_det_cholesky(prec_chol, covariance_type, d)
    factors, shift = prec_chol, nu.new_empty(0)
    if covariance_type == "tied":
        shift = nu @ prec_chol
    elif covariance_type == "spherical":
        factors = prec_chol.unsqueeze(-1)
    return Whitening(nu, factors, shift, const, triangle_blocks(d))


def whitening_to(w: Whitening, dtype: torch.dtype) -> Whitening:
    """w with its tensors in `dtype`."""
    return Whitening(*(t.to(dtype) for t in w[:4]), w.blocks)


def component_residuals(z: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """z - nu_k for every component: (K, n, D) from rows z (n, D) and means (K, D)."""
    return z.unsqueeze(0) - means.unsqueeze(1)


def residual_logits(
    z: torch.Tensor, w: Whitening, covariance_type: str, dz: torch.Tensor | None = None
) -> torch.Tensor:
    """log w_k + log N(z | nu_k, P_k) = const_k - |(z - nu_k) U_k|^2 / 2: (n, K), nats.

    full: per triangle block of columns [j0, j1), one batched product over components
    (z - nu_k)[:, :j1] U_k[:j1, j0:j1], squared and summed. tied: one product z U, then the
    residuals zU - nu_k U. diag/spherical: (z - nu_k) / sigma_k. dz: `component_residuals`
    (K, n, D) when the caller has them (full, diag, spherical).
    """
    n = len(z)
    if covariance_type == "tied":
        r = (z @ w.factors).unsqueeze(1) - w.shift  # (n, K, D)
        return torch.linalg.vector_norm(r, dim=-1).square_().mul_(-0.5).add_(w.const)
    dz = component_residuals(z, w.means) if dz is None else dz
    if covariance_type != "full":
        r = dz * w.factors.unsqueeze(1)
        return torch.linalg.vector_norm(r, dim=-1).square_().T.mul(-0.5).add_(w.const)
    out = z.new_zeros(len(w.const), n)
    for j0, j1 in w.blocks:
        y = torch.bmm(dz[:, :, :j1], w.factors[:, :j1, j0:j1])  # (K, n, j1 - j0)
        out.add_(y.square_().sum(-1))
    return out.T.mul(-0.5).add_(w.const)


def normalise_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row log p (n,) and responsibilities (n, K) from logits (n, K), in place
    (`exp_shifted`, as `e_step`; rows are rows here, the residual path's layout)."""
    top = logits.amax(dim=1, keepdim=True)
    e = exp_shifted(logits.sub_(top))
    total = e.sum(dim=1, keepdim=True)
    return (top + total.log()).squeeze(1), e.div_(total)


def residual_e_step(
    z: torch.Tensor, w: Whitening, covariance_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row log p(x) (n,) and responsibilities R^T (K, n) (a transposed view), as `e_step`
    returns them, from whitened residuals."""
    lp, resp = normalise_logits(residual_logits(z, w, covariance_type))
    return lp, resp.T


def second_moments_shape(covariance_type: str, k: int, d: int) -> tuple[int, ...]:
    """Shape of `add_second_moments`'s float64 accumulator."""
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]


def add_second_moments(
    acc: torch.Tensor,
    z: torch.Tensor,
    resp: torch.Tensor,
    covariance_type: str,
    blocks: tuple[tuple[int, int], ...],
    dz: torch.Tensor | None = None,
) -> None:
    """acc += a chunk's second moments, computed in z's dtype and summed in float64.

    full: the weighted Gram matrices about `dz`'s means, acc[k, i, j] += sum_n r_nk dz_kni
    dz_knj for i <= j (upper triangle blocks, one batched product per block; the lower part
    is left undefined), dz = `component_residuals` (K, n, D) (None: about the centre, dz = z).
    tied: the pooled sum_n (sum_k r_nk) z_n z_n^T (D, D). diag: R^T z^2 (K, D). spherical:
    R^T |z|^2 (K,). resp: (n, K), sample weights included.
    """
    if covariance_type == "full":
        dz = z.unsqueeze(0).expand(resp.shape[1], -1, -1) if dz is None else dz
        weighted = dz * resp.T.unsqueeze(2)  # (K, n, D)
        for i0, i1 in blocks:
            acc[:, i0:i1, i0:] += torch.bmm(dz[:, :, i0:i1].mT, weighted[:, :, i0:])
    elif covariance_type == "tied":
        acc += (z * resp.sum(1, keepdim=True)).T @ z
    elif covariance_type == "diag":
        acc += resp.T @ z.square()
    else:
        acc += resp.T @ z.square().sum(1)


def feature_statistics(
    nk: torch.Tensor,
    s1: torch.Tensor,
    acc: torch.Tensor,
    covariance_type: str,
    about: torch.Tensor | None = None,
) -> torch.Tensor:
    """The statistics (K, p) in the layout of R^T phi(z) (what `m_step` takes) from sum r
    (K,), sum r z (K, D) and `add_second_moments`'s accumulator, all float64.

    full: the Gram matrices G_k about `about` = a_k (K, D) (None: the centre) become, in
    acc itself, sum r z z^T = G_k + a_k S1_k^T + S1_k a_k^T - N_k a_k a_k^T. tied: the pooled second
    moments are spread evenly over the K rows (m_step uses only their sum over components,
    the only part the residual path computes).
    """
    k, d = s1.shape
    if covariance_type == "full" and about is not None:  # in place: acc may hold GBs
        _raw_second_moments(acc, nk, s1, about)
    if covariance_type in ("full", "tied"):
        i, j = _vech_index(d, acc.device)
        upper = acc.reshape(-1, d * d).index_select(1, i * d + j)  # (K, p) or (1, p)
        second = upper if covariance_type == "full" else (upper / k).expand(k, -1)
    else:
        second = acc if covariance_type == "diag" else acc.unsqueeze(1)
    return torch.cat([nk.unsqueeze(1), s1, second], dim=1)


def _raw_second_moments(
    acc: torch.Tensor, nk: torch.Tensor, s1: torch.Tensor, about: torch.Tensor
) -> None:
    """Gram matrices G_k about a_k (K, D, D) -> sum r z z^T = G_k + a_k S1_k^T + S1_k a_k^T -
    N_k a_k a_k^T, in place (acc may hold GBs)."""
    a, s = about.unsqueeze(2), s1.unsqueeze(2)  # (K, D, 1)
    acc.baddbmm_(a, s.mT).baddbmm_(s, a.mT).baddbmm_(a, (-nk[:, None, None] * a).mT)


def residual_m_step(
    nk: torch.Tensor,
    s1: torch.Tensor,
    acc: torch.Tensor,
    covariance_type: str,
    reg_covar: float,
    about: torch.Tensor | None = None,
) -> Params:
    """`m_step(feature_statistics(nk, s1, acc, covariance_type, about))`, the same numbers,
    without the (K, p) layout for full covariances: the upper triangles of the Gram matrices
    (made raw second moments in place, as `feature_statistics` does) are mirrored into dense
    (K, D, D) second moments directly, where the vech round trip cost about 10% of an EM
    iteration at D = 784 (K = 4, one thread). acc is overwritten."""
    if covariance_type != "full":
        return m_step(feature_statistics(nk, s1, acc, covariance_type, about),
                      covariance_type, reg_covar, s1.shape[1])  # fmt: skip
    if about is not None:
        _raw_second_moments(acc, nk, s1, about)
    d = s1.shape[1]
    upper = torch.ones(d, d, dtype=torch.bool, device=acc.device).triu_()
    s2 = torch.where(upper, acc, acc.mT)  # the upper triangle, mirrored
    nk = nk + 10 * torch.finfo(nk.dtype).eps
    nu = s1 / nk.unsqueeze(-1)
    return Params(nk / nk.sum(), nu, _dense_covariances(s2, nk, nu, covariance_type, reg_covar))


def responsibility_statistics(
    z: torch.Tensor, resp: torch.Tensor, covariance_type: str, budget: int = 2**21
) -> torch.Tensor:
    """sum_n r_nk phi(z_n): the statistics (K, p) of `m_step` for rows z (n, D) and
    responsibilities resp (n, K) (weights included), from Gram matrices over chunks of
    about `budget` / (K D) rows: no (p, n) feature map, whose D(D+1)/2 rows overflow memory
    at image dimensions. Computed in z's dtype, summed in float64."""
    n, d = z.shape
    k = resp.shape[1]
    f64 = {"dtype": torch.float64, "device": z.device}
    nk, s1 = resp.sum(0, dtype=torch.float64), (resp.T @ z).to(torch.float64)
    acc = torch.zeros(second_moments_shape(covariance_type, k, d), **f64)
    rows, blocks = max(1, budget // (k * d)), triangle_blocks(d)
    for start in range(0, n, rows):
        add_second_moments(acc, z[start : start + rows], resp[start : start + rows],
                           covariance_type, blocks)  # fmt: skip
    return feature_statistics(nk, s1, acc, covariance_type)


# -- which path: a cost model, calibrated on a 2-core AVX-512 machine (PERF.md) -------------------
GEMM_FLOPS = 1.0e11  # float32 flop/s of one core in these products (float64: half)
STREAM_BYTES = 1.0e10  # bytes/s of one core through tensors that overflow the caches
ESTEPS: tuple[str, ...] = ("features", "residuals")


def estep_seconds(path: str, covariance_type: str, k: int, d: int, itemsize: int = 4) -> float:
    """Modelled seconds per row and EM iteration (one E-step and one M-step) on one core.

    features: the products Theta phi^T and R^T phi (4 K p flops per row) and the memory
    traffic of phi (written once, read twice: 3 p elements per row), p = `n_features`.
    residuals: full: 4 K D^2 f flops (f = `triangle_fraction`) and ~12 K D elements of
    residuals, their casts, squares and weighted copies per row; tied: 4 D^2 f flops and the
    (K, D) residuals; diag/spherical: ~6 K D elementwise operations. The constants were fitted
    to both paths timed side by side at D = 16..384, K = 4..64 (one thread, float32).
    """
    flops = GEMM_FLOPS * 4 / itemsize
    if path == "features":
        p = n_features(covariance_type, d)
        return 4 * k * p / flops + 3 * p * itemsize / STREAM_BYTES
    f = triangle_fraction(d)
    if covariance_type == "full":
        return 4 * k * d * d * f / flops + 12 * k * d * itemsize / STREAM_BYTES
    if covariance_type == "tied":
        return 4 * d * d / flops + 4 * k * d * itemsize / STREAM_BYTES
    return 6 * k * d * itemsize / STREAM_BYTES


def cheaper_estep(covariance_type: str, k: int, d: int, itemsize: int = 4) -> str:
    """The path `estep_seconds` models as faster (features on a tie)."""
    return min(ESTEPS, key=lambda path: estep_seconds(path, covariance_type, k, d, itemsize))


class _Scratch:
    """Tensors reused from chunk to chunk: a fresh multi-MB tensor per chunk costs page faults
    (measured: building phi into a reused buffer is 1.5-3x faster)."""

    def __init__(self, device: torch.device):
        self.device, self.store = device, {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        t = self.store.get(name)
        if t is None or t.shape != shape or t.dtype != dtype:
            t = self.store[name] = torch.empty(shape, dtype=dtype, device=self.device)
        return t


def covariance_shape(covariance_type: str, k: int, d: int) -> tuple[int, ...]:
    """Shape of the covariance (and precision) parameters of a covariance type."""
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]


def n_free_parameters(covariance_type: str, k: int, d: int) -> int:
    """Free parameters of a mixture: K-1 weights, K*D means and the covariances' free entries."""
    cov = {"full": k * d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": k * d, "spherical": k}
    return cov[covariance_type] + k * d + k - 1


def covariances_from_precisions(precisions: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """Sigma = P^-1 (through the Cholesky factor of P for full/tied, 1/P otherwise).

    Raises:
        ValueError: P is not symmetric positive definite (full, tied) or not positive.
    """
    if covariance_type in ("full", "tied"):
        if not torch.allclose(precisions, precisions.mT):
            raise ValueError("precisions_init must be symmetric")
        chol, info = torch.linalg.cholesky_ex(precisions)
        if (info != 0).any():
            raise ValueError("precisions_init must be symmetric positive definite")
        return torch.cholesky_inverse(chol)
    if (precisions <= 0).any():
        raise ValueError("precisions_init must be positive")
    return 1.0 / precisions


def component_noise(
    z: torch.Tensor, labels: torch.Tensor, covariances: torch.Tensor, covariance_type: str
) -> torch.Tensor:
    """L_k z for standard normal rows z (n, D) of components `labels` (n,), with
    L_k L_k^T = Sigma_k: the draws x - mu_k of each row's component."""
    if covariance_type == "full":
        noise = torch.empty_like(z)
        chol = torch.linalg.cholesky(covariances)
        for k in labels.unique():
            rows = labels == k
            noise[rows] = z[rows] @ chol[k].T
        return noise
    if covariance_type == "tied":
        return z @ torch.linalg.cholesky(covariances).T
    if covariance_type == "diag":
        return z * covariances[labels].sqrt()
    return z * covariances[labels].sqrt().unsqueeze(1)


def dense_covariances(
    covariances: torch.Tensor, covariance_type: str, k: int, d: int
) -> torch.Tensor:
    """The (K, D, D) covariance matrices from any covariance type's parameters."""
    eye = torch.eye(d, dtype=covariances.dtype, device=covariances.device)
    as_matrices: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "full": lambda c: c,
        "tied": lambda c: c.expand(k, d, d),
        "diag": torch.diag_embed,
        "spherical": lambda c: c[:, None, None] * eye,
    }
    return as_matrices[covariance_type](covariances)


# -- initialisation -----------------------------------------------------------------------------
def kmeans_plusplus(
    x: torch.Tensor, k: int, g: torch.Generator, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007): (k, D) centres from rows of x.

    With `weights` (m,) >= 0 it seeds as if row i were repeated w_i times (after
    scikit-learn's weighted `kmeans_plusplus`): the first centre is drawn with probability
    w_i / sum w, the next ones with probability w_i d_i^2 / sum w d^2 (d_i: distance to the
    closest centre so far), and the best of the 2 + log k candidates minimises sum w d^2; a row
    of weight 0 is never chosen. g is a CPU generator (random draws are made on the CPU, then
    moved to x's device).
    """
    n = len(x)
    trials = 2 + int(math.log(k))
    if weights is None:
        first = torch.randint(n, (1,), generator=g)
    else:
        first = torch.multinomial(weights.cpu(), 1, generator=g)
    centres = [x[first.to(x.device)]]
    closest = torch.cdist(x, centres[0]).squeeze(1) ** 2
    for _ in range(1, k):
        mass = closest if weights is None else closest * weights
        total = mass.sum()
        if total <= 0:  # fewer distinct points (of positive weight) than k: pick any
            if weights is None:
                idx = torch.randint(n, (trials,), generator=g)
            else:
                idx = torch.multinomial(weights.cpu(), trials, replacement=True, generator=g)
        else:
            idx = torch.multinomial((mass / total).cpu(), trials, replacement=True, generator=g)
        idx = idx.to(x.device)
        cand = torch.minimum(closest.unsqueeze(0), (torch.cdist(x[idx], x) ** 2))  # (trials, n)
        potential = cand.sum(1) if weights is None else cand @ weights
        best = int(potential.argmin())
        centres.append(x[idx[best]].unsqueeze(0))
        closest = cand[best]
    return torch.cat(centres)


def lloyd(
    x: torch.Tensor, centres: torch.Tensor, steps: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """A few Lloyd iterations; an empty cluster keeps its centre.

    With `weights` (m,) each centre moves to the weighted mean sum w_i x_i / sum w_i of its
    rows (a cluster of total weight 0 keeps its centre), as if row i were repeated w_i times.
    """
    for _ in range(steps):
        labels = torch.cdist(x, centres).argmin(1)
        if weights is None:
            counts = torch.bincount(labels, minlength=len(centres)).to(x.dtype)
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
        else:
            counts = centres.new_zeros(len(centres)).index_add_(0, labels, weights.to(x.dtype))
            sums = torch.zeros_like(centres).index_add_(0, labels, x * weights.unsqueeze(1))
        moved = counts > 0
        centres = torch.where(moved.unsqueeze(1), sums / counts.clamp(min=1).unsqueeze(1), centres)
    return centres


def initial_responsibilities(
    x: torch.Tensor, k: int, method: str, g: torch.Generator, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """(m, K) responsibilities of the init sample x (m, D) for the first M-step.

    `weights` (m,) >= 0 (optional): the rows' sample weights; k-means++ seeding, the Lloyd
    steps and "random_from_data" (K distinct rows drawn with probability proportional to w)
    then treat row i as w_i copies of itself. "random" draws the same responsibilities
    whatever the weights (the weights enter the first M-step, not the draws). A sample with
    fewer than K rows of positive weight is seeded as if unweighted.
    """
    if weights is not None and int((weights > 0).sum()) < k:
        weights = None
    if method == "random":
        r = torch.rand(len(x), k, generator=g, dtype=x.dtype).to(x.device)
        return r / r.sum(1, keepdim=True)
    if method == "random_from_data":
        if weights is None:
            chosen = torch.randperm(len(x), generator=g)[:k]
        else:
            chosen = torch.multinomial(weights.cpu(), k, replacement=False, generator=g)
        centres = x[chosen.to(x.device)]
    else:
        centres = kmeans_plusplus(x, k, g, weights)
        if method == "kmeans":
            centres = lloyd(x, centres, LLOYD_STEPS, weights)
    labels = torch.cdist(x, centres).argmin(1)
    return torch.nn.functional.one_hot(labels, k).to(x.dtype)
