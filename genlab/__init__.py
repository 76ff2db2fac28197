"""genlab: to generate is to sample from a learned distribution.

import genlab
from genlab.models import GaussianMixture
m = GaussianMixture(n_components=8).fit(x)
m.save("runs/gmm"); m2 = genlab.load("runs/gmm")
"""

from genlab.models.folder import load

__version__ = "0.1.0"
__all__ = ["__version__", "load"]
