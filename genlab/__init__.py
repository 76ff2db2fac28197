"""genlab: to generate is to sample from a learned distribution.

import genlab
from genlab.models import GaussianMixture
m = GaussianMixture(n_components=8).fit(x)
m.save("runs/gmm"); m2 = genlab.load("runs/gmm")

`load` and the submodules (`genlab.models`, `genlab.train`, ...) are imported on first use
(PEP 562 module `__getattr__`), so `import genlab.train` or `import genlab.data` does not pay
for importing every model family (scipy, the tokenizers, ...).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genlab.models.folder import load

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:
    """`load` (from genlab.models.folder) and the submodules, imported when first asked for."""
    if name == "load":
        from genlab.models.folder import load

        globals()["load"] = load
        return load
    return _submodule(__name__, name)


def _submodule(package: str, name: str) -> Any:
    """`package.name` imported, when it is a submodule (for a PEP 562 `__getattr__`);
    else the AttributeError that a missing attribute raises."""
    if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
        return importlib.import_module(f"{package}.{name}")
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
