"""Model families behind one protocol: fit, sample, log_prob, save (see `base.py`)."""

from genlab.models.base import FAMILIES, GenerativeModel, NotFittedError, load
from genlab.models.gmm import GaussianMixture

__all__ = ["FAMILIES", "GaussianMixture", "GenerativeModel", "NotFittedError", "load"]
