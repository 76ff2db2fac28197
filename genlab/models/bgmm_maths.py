"""The pure maths of variational Bayesian Gaussian mixtures (`genlab.models.bgmm` runs the loop).

The model (Bishop 2006, PRML §10.2; Blei & Jordan 2006 for the Dirichlet-process weights):

    weights   pi ~ Dirichlet(alpha_0 / K, ...)   or the stick-breaking DP prior
              pi_k = v_k prod_{j<k} (1 - v_j),  v_k ~ Beta(1, gamma)   (truncated at K)
    precision Lambda_k ~ Wishart(W_0, nu_0),    mean mu_k | Lambda_k ~ N(m_0, (beta_0 Lambda_k)^-1)

and a factorised posterior q(pi) q(mu, Lambda) q(z) whose updates alternate:

- E-step: log rho_nk = E[log pi_k] + E[log N(x_n | mu_k, Lambda_k)], where (with D dimensions)

      E[log N(x | mu_k, Lambda_k)] = log N(x | m_k, nu_k W_k) - D / (2 beta_k) - D/2 log nu_k
                                     + 1/2 (D log 2 + sum_{i<D} digamma((nu_k - i) / 2)),

  a Gaussian log-density with precision nu_k W_k plus a per-component constant. So the E-step is
  the EM path's: one product Theta phi(Z)^T with `gmm_maths.natural_parameters` given those
  constants in place of log w_k (`e_step_parameters`), then a log-sum-exp.
- M-step: from the weighted statistics N_k, xbar_k, S_k (the EM path's `gmm_maths.m_step`),
  alpha_k (or the Beta pair a_k, b_k), beta_k = beta_0 + N_k, m_k, nu_k = nu_0 + N_k and
  W_k^-1 = W_0^-1 + N_k S_k + beta_0 N_k / beta_k (xbar_k - m_0)(xbar_k - m_0)^T (`m_step`).
- the lower bound (`lower_bound`), with scikit-learn's simplifications: constants dropped, so it
  is a total in nats up to an additive constant that depends only on the priors and n.

Conventions follow scikit-learn 1.9's `sklearn/mixture/_bayesian_mixture.py` (learnt from, not
copied): `covariance_prior` is W_0^-1, and `covariances` are stored normalised,
Sigma_k = W_k^-1 / nu_k = E[Lambda_k]^-1, so `precision_cholesky` gives U_k U_k^T = nu_k W_k.
Tied mixtures share one (nu, W); diag and spherical ones use per-dimension Gamma posteriors
(scikit-learn's treatment). Tensors are float64; means are centred (x - c) by the caller.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, get_args

import torch

from genlab.models import gmm_maths
from genlab.models.gmm_maths import log_det_cholesky, natural_parameters, precision_cholesky

__all__ = [
    "WEIGHT_PRIORS",
    "Posterior",
    "Priors",
    "WeightPrior",
    "e_step_constants",
    "e_step_parameters",
    "expected_log_weights",
    "log_dirichlet_norm",
    "log_wishart_norm",
    "lower_bound",
    "m_step",
    "posterior_weights",
    "prior_shape",
]

WeightPrior = Literal["dirichlet_process", "dirichlet_distribution"]
WEIGHT_PRIORS: tuple[str, ...] = get_args(WeightPrior)


class Priors(NamedTuple):
    """The prior's hyperparameters: gamma (DP) or alpha_0 (Dirichlet) `weight_concentration`,
    beta_0 `mean_precision`, m_0 `mean` (D,) (centred), nu_0 `degrees_of_freedom` (> D - 1) and
    W_0^-1 `covariance` ((D, D) full/tied, (D,) diag, () spherical)."""

    weight_concentration: float
    mean_precision: float
    mean: torch.Tensor
    degrees_of_freedom: float
    covariance: torch.Tensor


class Posterior(NamedTuple):
    """The variational posterior: `weight_concentration` (2, K) Beta pairs (a_k, b_k) of the
    stick-breaking DP or (K,) Dirichlet alpha_k; beta_k `mean_precision` (K,); m_k `means`
    (K, D) (centred); nu_k `degrees_of_freedom` (K,) (() for tied); `covariances`
    W_k^-1 / nu_k and their `precisions_cholesky` U_k (U_k U_k^T = nu_k W_k), in the covariance
    type's shape."""

    weight_concentration: torch.Tensor
    mean_precision: torch.Tensor
    means: torch.Tensor
    degrees_of_freedom: torch.Tensor
    covariances: torch.Tensor
    precisions_cholesky: torch.Tensor


def prior_shape(covariance_type: str, d: int) -> tuple[int, ...]:
    """Shape of W_0^-1 (`covariance_prior`) for a covariance type."""
    return {"full": (d, d), "tied": (d, d), "diag": (d,), "spherical": ()}[covariance_type]


# -- the weights -----------------------------------------------------------------------------------
def expected_log_weights(concentration: torch.Tensor, prior_type: str) -> torch.Tensor:
    """E_q[log pi_k] (K,).

    DP: digamma(a_k) - digamma(a_k + b_k) + sum_{j<k} [digamma(b_j) - digamma(a_j + b_j)];
    Dirichlet: digamma(alpha_k) - digamma(sum_j alpha_j).
    """
    psi = torch.special.digamma
    if prior_type == "dirichlet_process":
        a, b = concentration
        psi_sum = psi(a + b)
        rest = (psi(b) - psi_sum).cumsum(0)
        return psi(a) - psi_sum + torch.cat([rest.new_zeros(1), rest[:-1]])
    return psi(concentration) - psi(concentration.sum())


def posterior_weights(concentration: torch.Tensor, prior_type: str) -> torch.Tensor:
    """E_q[pi] (K,), normalised: the point-estimate mixture's weights.

    DP: E[v_k] prod_{j<k} (1 - E[v_j]) with E[v_k] = a_k / (a_k + b_k); Dirichlet: alpha / sum.
    """
    if prior_type == "dirichlet_process":
        a, b = concentration
        total = a + b
        stick = (b / total)[:-1].cumprod(0)
        w = a / total * torch.cat([stick.new_ones(1), stick])
    else:
        w = concentration
    return w / w.sum()


# -- E-step -------------------------------------------------------------------------------------
def expected_log_det(degrees_of_freedom: torch.Tensor, d: int) -> torch.Tensor:
    """E_q[log |Lambda_k|] - log |nu_k W_k|
    = D log 2 - D log nu_k + sum_{i<D} digamma((nu_k - i) / 2): (K,) (() for tied); scikit-learn's
    "log_lambda" less log |W_k|, with the normalisation by nu_k taken out."""
    i = torch.arange(d, dtype=degrees_of_freedom.dtype, device=degrees_of_freedom.device)
    half = 0.5 * (degrees_of_freedom.unsqueeze(-1) - i)
    return d * math.log(2.0) - d * degrees_of_freedom.log() + torch.special.digamma(half).sum(-1)


def e_step_constants(post: Posterior, prior_type: str) -> torch.Tensor:
    """The per-component constant (K,) that replaces log w_k in the E-step:
    E[log pi_k] + 1/2 (E[log|Lambda_k|] - log|nu_k W_k|) - D / (2 beta_k), nats."""
    d = post.means.shape[1]
    return (
        expected_log_weights(post.weight_concentration, prior_type)
        + 0.5 * expected_log_det(post.degrees_of_freedom, d)
        - 0.5 * d / post.mean_precision
    )


def e_step_parameters(post: Posterior, covariance_type: str, prior_type: str) -> torch.Tensor:
    """Theta (K, p) of the variational E-step: Theta_k . phi(z) = log rho_k (nats), i.e.

        E[log pi_k] + log N(z | m_k, nu_k W_k)
            + 1/2 (E[log|Lambda_k|] - log|nu_k W_k|) - D / (2 beta_k),

    in `gmm_maths.natural_parameters`' layout, so the E-step is the EM path's product."""
    const = e_step_constants(post, prior_type)
    return natural_parameters(const, post.means, post.precisions_cholesky, covariance_type)


# -- M-step -------------------------------------------------------------------------------------
def m_step(
    stats: torch.Tensor,
    priors: Priors,
    covariance_type: str,
    prior_type: str,
    reg_covar: float,
) -> Posterior:
    """The posterior from the statistics R^T phi(z) (K, p) of centred rows (float64).

    With N_k = sum_n r_nk (+ 10 eps), xbar_k and S_k (+ reg_covar I) from `gmm_maths.m_step`:
    DP a_k = 1 + N_k, b_k = gamma + sum_{j>k} N_j (Dirichlet alpha_k = alpha_0 + N_k);
    beta_k = beta_0 + N_k; m_k = (beta_0 m_0 + N_k xbar_k) / beta_k; nu_k = nu_0 + N_k; and
    nu_k Sigma_k = W_0^-1 + N_k S_k + (beta_0 N_k / beta_k) (xbar_k - m_0)(xbar_k - m_0)^T
    (tied: nu = nu_0 + N / K and the sums over components / K; diag: per dimension; spherical:
    the mean over dimensions).

    Raises:
        ValueError: a covariance that is not positive definite (`precision_cholesky`).
    """
    d = priors.mean.numel()
    moments = gmm_maths.m_step(stats, covariance_type, reg_covar, d)
    nk = stats[:, 0] + 10 * torch.finfo(stats.dtype).eps
    k = len(nk)
    if prior_type == "dirichlet_process":
        after = nk.flip(0).cumsum(0).flip(0)[1:]  # sum_{j>k} N_j, summed from the end
        concentration = torch.stack(
            [1.0 + nk, priors.weight_concentration + torch.cat([after, nk.new_zeros(1)])]
        )
    else:
        concentration = priors.weight_concentration + nk
    beta0, m0 = priors.mean_precision, priors.mean
    beta = beta0 + nk
    xbar, s = moments.means, moments.covariances
    means = (beta0 * m0 + nk.unsqueeze(1) * xbar) / beta.unsqueeze(1)
    diff = xbar - m0
    shrink = beta0 / beta  # (K,)
    if covariance_type == "full":
        nu = priors.degrees_of_freedom + nk
        outer = diff.unsqueeze(-1) * diff.unsqueeze(-2)
        scatter = priors.covariance + nk[:, None, None] * (s + shrink[:, None, None] * outer)
        cov = scatter / nu[:, None, None]
    elif covariance_type == "tied":
        nu = priors.degrees_of_freedom + nk.sum() / k
        between = ((nk / beta).unsqueeze(1) * diff).T @ diff
        cov = (priors.covariance + s * nk.sum() / k + beta0 / k * between) / nu
    elif covariance_type == "diag":
        nu = priors.degrees_of_freedom + nk
        cov = priors.covariance + nk.unsqueeze(1) * (s + shrink.unsqueeze(1) * diff**2)
        cov = cov / nu.unsqueeze(1)
    else:
        nu = priors.degrees_of_freedom + nk
        cov = (priors.covariance + nk * (s + shrink * (diff**2).mean(1))) / nu
    nu = torch.as_tensor(nu, dtype=stats.dtype, device=stats.device)
    return Posterior(concentration, beta, means, nu, cov, precision_cholesky(cov, covariance_type))


# -- the lower bound ----------------------------------------------------------------------------
def log_wishart_norm(
    degrees_of_freedom: torch.Tensor, log_det_chol: torch.Tensor, d: int
) -> torch.Tensor:
    """log B(W, nu) of the Wishart normaliser, less the D(D-1)/4 log pi constant:
    -(nu log|W|^(1/2) + nu D/2 log 2 + sum_{i<D} lgamma((nu - i) / 2)), with
    `log_det_chol` = log |W|^(1/2)."""
    i = torch.arange(d, dtype=degrees_of_freedom.dtype, device=degrees_of_freedom.device)
    lgam = torch.lgamma(0.5 * (degrees_of_freedom.unsqueeze(-1) - i)).sum(-1)
    return -(
        degrees_of_freedom * log_det_chol + degrees_of_freedom * d * 0.5 * math.log(2.0) + lgam
    )


def log_dirichlet_norm(concentration: torch.Tensor) -> torch.Tensor:
    """log C(alpha) = lgamma(sum alpha) - sum lgamma(alpha)."""
    return torch.lgamma(concentration.sum()) - torch.lgamma(concentration).sum()


def lower_bound(
    sum_r_log_r: torch.Tensor | float,
    post: Posterior,
    covariance_type: str,
    prior_type: str,
) -> float:
    """The variational lower bound (total nats, up to a constant), scikit-learn's form:

        -sum_nk r_nk log r_nk - sum_k log B(W_k, nu_k) - log C(q(pi)) - D/2 sum_k log beta_k,

    with log C(q(pi)) = -sum_k log Beta(a_k, b_k) (DP) or the Dirichlet normaliser, and
    W_k = (nu_k Sigma_k)^-1. `sum_r_log_r` is the responsibilities' sum of r log r from the
    E-step that led to `post`."""
    k, d = post.means.shape
    nu = post.degrees_of_freedom
    log_det = log_det_cholesky(post.precisions_cholesky, covariance_type, d) - 0.5 * d * nu.log()
    wishart = log_wishart_norm(nu, log_det, d)
    wishart = k * wishart if covariance_type == "tied" else wishart.sum()
    if prior_type == "dirichlet_process":
        a, b = post.weight_concentration
        log_beta = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
        weight_norm = -log_beta.sum()
    else:
        weight_norm = log_dirichlet_norm(post.weight_concentration)
    total = -sum_r_log_r - wishart - weight_norm - 0.5 * d * post.mean_precision.log().sum()
    return float(total)
