"""Model families behind one protocol: fit, sample, log_prob, save (see `base.py`).

The names below are imported on first use (PEP 562 module `__getattr__`): importing
`genlab.models.base` or one family does not import the others (the flow family alone brings
scipy.optimize). `FAMILIES` first imports every built-in family (`import_families`), and
`load` does so before it looks the folder's family up, so each family is registered in time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from genlab import _submodule

if TYPE_CHECKING:
    from genlab.models.autoencoder import Autoencoder
    from genlab.models.autoregressive import Autoregressive
    from genlab.models.base import (
        FAMILIES,
        ConvergenceWarning,
        DivergedError,
        GenerativeModel,
        NotFittedError,
    )
    from genlab.models.bgmm import BayesianGaussianMixture
    from genlab.models.diffusion import Diffusion
    from genlab.models.flow import FlowMatching
    from genlab.models.folder import load
    from genlab.models.gmm import GaussianMixture
    from genlab.models.latent import Latent
    from genlab.models.masked_diffusion import MaskedDiffusion
    from genlab.models.vae import VAE

__all__ = [
    "FAMILIES",
    "VAE",
    "Autoencoder",
    "Autoregressive",
    "BayesianGaussianMixture",
    "ConvergenceWarning",
    "Diffusion",
    "DivergedError",
    "FlowMatching",
    "GaussianMixture",
    "GenerativeModel",
    "Latent",
    "MaskedDiffusion",
    "NotFittedError",
    "load",
]

#: each exported name -> the module defining it
_HOMES = {
    "FAMILIES": "base",
    "ConvergenceWarning": "base",
    "DivergedError": "base",
    "GenerativeModel": "base",
    "NotFittedError": "base",
    "Autoencoder": "autoencoder",
    "Autoregressive": "autoregressive",
    "BayesianGaussianMixture": "bgmm",
    "Diffusion": "diffusion",
    "FlowMatching": "flow",
    "GaussianMixture": "gmm",
    "Latent": "latent",
    "MaskedDiffusion": "masked_diffusion",
    "VAE": "vae",
    "load": "folder",
}
#: the built-in families' names, in their order in FAMILIES (each one's module is its name)
BUILTIN_FAMILIES = (
    "autoencoder", "autoregressive", "bgmm", "diffusion", "flow", "gmm", "latent",
    "masked_diffusion", "vae",
)  # fmt: skip


def import_families() -> dict[str, type[GenerativeModel]]:
    """Import every built-in family (a family registers itself in `FAMILIES` when its class
    is defined) and return `FAMILIES`, the built-in families first in `BUILTIN_FAMILIES`'
    order whichever was imported first, then any other registered family."""
    from genlab.models.base import FAMILIES

    for name in BUILTIN_FAMILIES:
        importlib.import_module(f"{__name__}.{name}")
    if tuple(FAMILIES)[: len(BUILTIN_FAMILIES)] != BUILTIN_FAMILIES:
        others = {k: v for k, v in FAMILIES.items() if k not in BUILTIN_FAMILIES}
        ordered = {name: FAMILIES[name] for name in BUILTIN_FAMILIES} | others
        FAMILIES.clear()
        FAMILIES.update(ordered)
    return FAMILIES


def __getattr__(name: str) -> Any:
    """The exported names and the submodules, imported when first asked for."""
    if name in _HOMES:
        if name == "FAMILIES":
            value: Any = import_families()
        else:
            value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
        globals()[name] = value
        return value
    return _submodule(__name__, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
