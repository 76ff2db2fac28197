"""Model families behind one protocol: fit, sample, log_prob, save (see `base.py`)."""

from genlab.models.base import (
    FAMILIES,
    ConvergenceWarning,
    GenerativeModel,
    NotFittedError,
    load,
)
from genlab.models.gmm import GaussianMixture
from genlab.models.vae import VAE

__all__ = [
    "FAMILIES",
    "VAE",
    "ConvergenceWarning",
    "GaussianMixture",
    "GenerativeModel",
    "NotFittedError",
    "load",
]
