"""The protocol every family implements, and the model folder (config.json + model.safetensors).

A model is an `nn.Module` whose constructor stores hyperparameters in a frozen dataclass config
and whose `fit` learns from data. Fitted state lives in the module's `state_dict` (parameters
and buffers), which is exactly what `model.safetensors` holds; `config.json` holds the family
name, the config and the few fitted facts (such as `event_shape`) needed to rebuild the module
before the tensors are loaded. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import safetensors.torch
import torch
from torch import nn

from genlab.data.dataset import ArrayLike, Dataset, NpyArray
from genlab.train import atomic_write

LogProbKind = Literal["exact", "bound", "estimate"]
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

FAMILIES: dict[str, type[GenerativeModel]] = {}


class NotFittedError(ValueError, AttributeError):
    """Raised when `sample`, `log_prob` or `save` is called before `fit`."""


class ConvergenceWarning(UserWarning):
    """Fitting stopped at its iteration budget before meeting its tolerance."""


def default_device() -> torch.device:
    """`cuda` when a GPU is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    return default_device() if device is None or device == "auto" else torch.device(device)


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def as_data(x: Any, y: Any = None) -> tuple[ArrayLike, torch.Tensor | None, tuple[int, ...]]:
    """Accept a Dataset, a Tensor, a NumPy array (or a list of rows) and return (x, y, event_shape).

    Raises:
        TypeError: x is of an unsupported type or dtype.
        ValueError: x is empty or 0-/1-dimensional.
    """
    if isinstance(x, Dataset):
        y = x.y if y is None else y
        x = x.x
    elif isinstance(x, np.ndarray | list | tuple):
        arr = np.asarray(x)
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ):
            raise TypeError(f"x must hold numbers, got an array of dtype {arr.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(arr))
    elif not isinstance(x, torch.Tensor | NpyArray):
        raise TypeError(
            f"x must be a Tensor, a NumPy array or a genlab Dataset, got {type(x).__name__}"
        )
    if isinstance(x, torch.Tensor) and (x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"x must hold real numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(
            f"x must have shape (n_samples, *event_shape), got shape {tuple(x.shape)}; "
            "reshape a single feature with x.reshape(-1, 1)"
        )
    if len(x) == 0:
        raise ValueError("x is empty: fit needs at least one sample")
    if y is not None:
        y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
        if y.shape != (len(x),):
            raise ValueError(f"y must have shape ({len(x)},), got {tuple(y.shape)}")
    return x, y, tuple(int(s) for s in x.shape[1:])


def iter_chunks(x: ArrayLike, chunk_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, rows[start:start + chunk_size]) over the first axis of x."""
    for start in range(0, len(x), chunk_size):
        yield start, x[start : start + chunk_size]


def image_geometry(event_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(channels, side) of a square image event shape (C, S, S) or (S, S), S >= 4; else None."""
    if len(event_shape) == 2:
        event_shape = (1, *event_shape)
    if len(event_shape) == 3 and event_shape[1] == event_shape[2] >= 4:
        return event_shape[0], event_shape[1]
    return None


def check_train_labels(y: torch.Tensor | None) -> int | None:
    """n_classes = max(y) + 1 for integer labels >= 0; None without labels."""
    if y is None:
        return None
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if int(y.min()) < 0:
        raise ValueError(f"labels must be >= 0, got a minimum of {int(y.min())}")
    return int(y.max()) + 1


def as_labels(y: Any, n: int, n_classes: int) -> torch.Tensor:
    """(n,) int64 labels from an int (every sample that class), a sequence or a tensor,
    checked to be integers in [0, n_classes), the classes seen in fit."""
    if isinstance(y, int | np.integer) and not isinstance(y, bool):
        y = torch.full((n,), int(y), dtype=torch.long)
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"y must be an int or have shape ({n},), got shape {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(
            f"labels must lie in [0, {n_classes}) (the classes seen in fit); got values in "
            f"[{int(y.min())}, {int(y.max())}]"
        )
    return y.long()


def check_finite(x: torch.Tensor, what: str = "x") -> None:
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=tuple(range(1, x.ndim))).nonzero()[0, 0])
        raise ValueError(
            f"{what} contains NaN or infinity (first in row {bad}); clean the data first"
        )


class GenerativeModel(nn.Module):
    """A distribution learned from samples: `fit`, `sample`, `log_prob`, `save`.

    Subclasses set `family` (via `class X(GenerativeModel, family="name")`), `config_class`
    (a frozen dataclass whose fields are the constructor's keyword arguments) and
    `log_prob_kind` ("exact", "bound" or "estimate"), and implement `fit`, `sample`,
    `log_prob` and `_build(event_shape, fitted)`, which creates the fitted modules and
    buffers (with any values) so that a saved state_dict can be loaded into them.
    """

    family: ClassVar[str]
    config_class: ClassVar[type]
    log_prob_kind: ClassVar[LogProbKind]
    #: "continuous": log_prob is a density over real-valued x (nats); "discrete": a log-mass
    #: over quantised x (images stored as k / (levels - 1)). Evaluation reads it to put both
    #: on one bits/dim scale (dequantising only for densities). A family may make it a property.
    log_prob_space: Literal["continuous", "discrete"] = "continuous"

    def __init_subclass__(cls, family: str | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if family is not None:
            cls.family = family
            FAMILIES[family] = cls

    def __init__(self, config: Any, device: str | torch.device | None = None):
        super().__init__()
        self.config = config
        self.device_ = resolve_device(device)
        self.event_shape: tuple[int, ...] | None = None

    # -- protocol -------------------------------------------------------------------------------
    def fit(self, x: Any, y: Any = None) -> GenerativeModel:
        raise NotImplementedError

    def sample(self, n: int, *, seed: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, x: Any) -> torch.Tensor:
        raise NotImplementedError

    def _build(self, event_shape: tuple[int, ...], fitted: dict[str, Any]) -> None:
        raise NotImplementedError

    def _fitted_meta(self) -> dict[str, Any]:
        """JSON-able fitted facts besides tensors (subclasses extend)."""
        return {"event_shape": list(self.event_shape or ())}

    # -- helpers for subclasses -------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.event_shape is not None

    def check_is_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(x) before using it"
            )

    def check_event_shape(self, x: ArrayLike) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"x has samples of shape {tuple(x.shape[1:])}, but the model was fitted on "
                f"samples of shape {self.event_shape}"
            )

    def checked_rows(self, x: Any) -> torch.Tensor:
        """x (a Dataset, tensor or array) as float32 (n, *event_shape) on the model's device,
        after checking that the model is fitted, the event shape matches and x is finite."""
        self.check_is_fitted()
        x, _, _ = as_data(x.x if isinstance(x, Dataset) else x)
        self.check_event_shape(x)
        x = (x if isinstance(x, torch.Tensor) else x[:]).to(self.device)
        x = x.float() if x.dtype != torch.float32 else x
        check_finite(x)
        return x

    @staticmethod
    def check_n(n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        return int(n)

    @property
    def device(self) -> torch.device:
        """Where the fitted tensors live (follows `.to(...)`); before fit, the requested device."""
        for t in self.buffers():
            return t.device
        for t in self.parameters():
            return t.device
        return self.device_

    def generator(self, seed: int | None) -> torch.Generator:
        """A local RNG on the model's device: seeded when asked, else from the global RNG."""
        g = torch.Generator(device=self.device)
        g.manual_seed(int(seed) if seed is not None else int(torch.randint(2**62, ()).item()))
        return g

    def extra_repr(self) -> str:
        fields = dataclasses.asdict(self.config)
        return ", ".join(f"{k}={v!r}" for k, v in fields.items())

    # -- the model folder -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write `path/config.json` and `path/model.safetensors`, each atomically (temp, rename)."""
        self.check_is_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        meta = {
            "genlab_format": FORMAT_VERSION,
            "family": self.family,
            "config": dataclasses.asdict(self.config),
            "fitted": self._fitted_meta(),
        }
        weights = safetensors.torch.save(tensors)
        atomic_write(folder / WEIGHTS_FILE, lambda f: f.write(weights))
        config = (json.dumps(meta, indent=2) + "\n").encode()
        atomic_write(folder / CONFIG_FILE, lambda f: f.write(config))
        return folder

    @classmethod
    def from_config(cls, config: dict[str, Any], device: str | torch.device | None = None):
        names = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ValueError(f"unknown {cls.family} config keys {unknown}; known: {sorted(names)}")
        return cls(**config, device=device)


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> GenerativeModel:
    """Load a model folder written by `save`, dispatching on the family named in config.json."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{folder} is not a genlab model folder: {p.name} is missing")
    try:
        meta = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path}: corrupt config.json ({e})") from None
    if not isinstance(meta, dict) or "family" not in meta or "config" not in meta:
        raise ValueError(f"{config_path}: not a genlab config (no 'family' and 'config' keys)")
    if meta.get("genlab_format", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: written by a newer genlab (format {meta['genlab_format']})"
        )
    family = meta["family"]
    import genlab.models  # noqa: F401  (registers every family)

    if family not in FAMILIES:
        raise ValueError(f"{config_path}: unknown family {family!r}; known: {sorted(FAMILIES)}")
    cls = FAMILIES[family]
    try:
        tensors = safetensors.torch.load_file(weights_path)
    except Exception as e:
        raise ValueError(f"{weights_path}: corrupt or foreign safetensors file ({e})") from None
    fitted = meta.get("fitted", {})
    model = cls.from_config(meta["config"], device=device)
    event_shape = tuple(int(s) for s in fitted.get("event_shape", ()))
    model._build(event_shape, fitted)
    model.event_shape = event_shape
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights_path} does not match its config.json: {e}") from None
    return model.to(model.device_)
