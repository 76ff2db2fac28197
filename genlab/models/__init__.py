"""Model families behind one protocol: fit, sample, log_prob, save (see `base.py`)."""

from genlab.models.autoregressive import Autoregressive
from genlab.models.base import (
    FAMILIES,
    ConvergenceWarning,
    DivergedError,
    GenerativeModel,
    NotFittedError,
)
from genlab.models.diffusion import Diffusion
from genlab.models.flow import FlowMatching
from genlab.models.folder import load
from genlab.models.gmm import GaussianMixture
from genlab.models.vae import VAE

__all__ = [
    "FAMILIES",
    "VAE",
    "Autoregressive",
    "ConvergenceWarning",
    "Diffusion",
    "DivergedError",
    "FlowMatching",
    "GaussianMixture",
    "GenerativeModel",
    "NotFittedError",
    "load",
]
