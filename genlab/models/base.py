"""The protocol every family implements, and the model folder (config.json + model.safetensors).

A model is an `nn.Module` whose constructor stores hyperparameters in a frozen dataclass config
and whose `fit` learns from data. Fitted state lives in the module's `state_dict` (parameters
and buffers), which is exactly what `model.safetensors` holds; `config.json` holds the family
name, the config and the few fitted facts (such as `event_shape`) needed to rebuild the module
before the tensors are loaded. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import safetensors.torch
import torch
from torch import nn

from genlab import metrics, train
from genlab.data.dataset import (
    ArrayLike,
    Dataset,
    NpyArray,
    check_memory,
    check_seed,
    image_geometry,
    shape_kind,
)
from genlab.io import read_folder, write_folder_atomically
from genlab.solvers import local_generator
from genlab.train import DivergedError  # defined beside the loop that raises it

LogProbKind = Literal["exact", "bound", "estimate"]
FIT_CHECK_SAMPLES = 16  # seeded draws after training that must be finite (`_check_trained`)
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
    """None or "auto": `default_device()`; else the named device, which must exist here.

    Raises:
        ValueError: an unknown device name, or CUDA asked for on a machine without it.
    """
    return default_device() if device is None or device == "auto" else train.checked_device(device)


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
    if any(int(s) == 0 for s in x.shape[1:]):
        raise ValueError(
            f"x has samples of shape {tuple(x.shape[1:])}, with no values: each sample needs "
            "at least one number (a zero-width column set?)"
        )
    if y is not None:
        if not isinstance(y, torch.Tensor):
            labels = np.asarray(y)
            if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
                raise TypeError(
                    f"y must hold integer class labels, got values of dtype {labels.dtype}; "
                    "map names to 0..K-1 first"
                )
            y = labels
        y = torch.as_tensor(y)
        if y.shape != (len(x),):
            raise ValueError(f"y must have shape ({len(x)},), got {tuple(y.shape)}")
    return x, y, tuple(int(s) for s in x.shape[1:])


def iter_chunks(x: ArrayLike, chunk_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, rows[start:start + chunk_size]) over the first axis of x."""
    for start in range(0, len(x), chunk_size):
        yield start, x[start : start + chunk_size]


MAX_CLASSES = 65_536  # labels are class indices; a larger max(y) is an id, not a class


def check_train_labels(y: torch.Tensor | None) -> int | None:
    """n_classes = max(y) + 1 for integer labels in [0, MAX_CLASSES); None without labels."""
    if y is None:
        return None
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if int(y.min()) < 0:
        raise ValueError(f"labels must be >= 0, got a minimum of {int(y.min())}")
    if int(y.max()) + 1 > MAX_CLASSES:
        raise ValueError(
            f"labels must be 0..K-1 class indices (K at most {MAX_CLASSES}); got a maximum of "
            f"{int(y.max()):.4g}: relabel them (e.g. numpy.unique(y, return_inverse=True))"
        )
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


class TrainingData(NamedTuple):
    """What a family's `fit` learns from, decided once from the input (`from_input`).

    Attributes:
        x: (n, *event_shape) rows, float32 (a lazy `NpyArray` stays lazy); None for text.
        y: (n,) int64 labels passed to fit as `y=` (a Dataset's own labels are not used:
            conditioning is asked for, never implied), or None.
        event_shape: the shape of one sample (() for text).
        kind: "points", "image" (an image shape, `genlab.data.image_shape`, with values in
            [0, 1]) or "text".
        levels: grey levels of quantised images (a Dataset's `levels`), else None.
        text: the corpus of a text data set, else None.
        name: the data set's name ("" for tensors).
        n_classes: max(y) + 1, or None without labels.
    """

    x: ArrayLike | None
    y: torch.Tensor | None
    event_shape: tuple[int, ...]
    kind: Literal["points", "image", "text"]
    levels: int | None
    text: str | None
    name: str
    n_classes: int | None

    @classmethod
    def from_input(cls, x: Any, y: Any = None) -> TrainingData:
        """From a Dataset, a str (text), a Tensor, a NumPy array or a list of rows.

        Raises:
            TypeError, ValueError: unsupported types, empty or non-finite data, bad labels.
        """
        if isinstance(x, str) or (isinstance(x, Dataset) and x.kind == "text"):
            text = x if isinstance(x, str) else x.text
            if y is not None:
                raise ValueError("text models take no labels y")
            if not isinstance(text, str) or not text:
                raise ValueError("the training text is empty")
            name = x.name if isinstance(x, Dataset) else ""
            return cls(None, None, (), "text", None, text, name, None)
        dataset = x if isinstance(x, Dataset) else None
        rows, y, event_shape = as_data(x.x if dataset is not None else x, y)
        if isinstance(rows, torch.Tensor):
            rows = rows.float() if rows.dtype != torch.float32 else rows
            check_finite(rows)
        kind = dataset.kind if dataset is not None else shape_kind(event_shape)
        if kind == "image" and isinstance(rows, torch.Tensor):
            kind = "image" if bool(rows.min() >= 0) and bool(rows.max() <= 1) else "points"
        levels = dataset.levels if dataset is not None and kind == "image" else None
        name = dataset.name if dataset is not None else ""
        return cls(rows, y, event_shape, kind, levels, None, name, check_train_labels(y))

    @property
    def dim(self) -> int:
        return int(np.prod(self.event_shape, dtype=np.int64))

    @property
    def square_image(self) -> tuple[int, int] | None:
        """(channels, side) of square images (what conv nets need), else None."""
        return image_geometry(self.event_shape) if self.kind == "image" else None

    def rows(self) -> torch.Tensor:
        """All of x as a float32 tensor (reading a lazy `NpyArray`)."""
        if self.x is None:
            raise ValueError("text data has no rows of numbers")
        x = self.x if isinstance(self.x, torch.Tensor) else self.x[:]
        x = x.float() if x.dtype != torch.float32 else x
        check_finite(x)
        return x


class Budget(NamedTuple):
    """What `fit_for_budget` may spend and how: wall-clock seconds and/or optimisation steps
    (None: no limit of that kind), the seed, the device, a progress bar, and the caller's
    options for the family (constructor options; a family may reserve keys of its own)."""

    seconds: float | None = None
    steps: int | None = None
    seed: int = 0
    device: str | None = None
    progress: bool = False
    options: Mapping[str, Any] = {}


class TrajectoryPicture(NamedTuple):
    """How `genlab plot` and compare draw a family's sampling trajectory."""

    name: str  # the picture's file stem ("trajectories", "denoising")
    options: Mapping[str, Any]  # sample options of the drawn run
    paths: int  # 2-D points drawn as paths
    images: int  # image rows drawn from noise to sample
    animate: bool  # also write a GIF of the samples moving


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

    # -- what the family can do (callers ask these; they never inspect the class) -------------
    #: keyword options of `sample` besides n and seed (what `genlab sample` may pass)
    sample_options: ClassVar[frozenset[str]] = frozenset()
    #: keyword options of `log_prob` besides x and y (e.g. an ODE solver's)
    log_prob_options: ClassVar[frozenset[str]] = frozenset()
    #: `log_prob` options for many points at once (density pictures, quick scores)
    quick_log_prob: ClassVar[Mapping[str, Any]] = {}
    #: side of the grid of a 2-D density picture (each point costs one log_prob)
    density_grid: ClassVar[int] = 200
    #: `sample` options of pictures of image samples (a VAE draws its decoder means)
    picture_sample: ClassVar[Mapping[str, Any]] = {}
    #: how a sampling trajectory is drawn (None: the family samples in one go)
    trajectory_picture: ClassVar[TrajectoryPicture | None] = None
    #: whether `encode`/`reconstruct` exist (pictures of reconstructions and latents)
    has_encoder: ClassVar[bool] = False
    #: the kinds of data the family models (`TrainingData.kind`)
    data_kinds: ClassVar[frozenset[str]] = frozenset({"points", "image"})
    #: whether `fit(x, y)` trains a class-conditional model on labels y
    takes_labels: ClassVar[bool] = False
    #: whether `fit` takes out / checkpoint_every / resume (a checkpointed, resumable run)
    resumable: ClassVar[bool] = False
    #: the data set `genlab fit <family>` uses when --data is not given
    example_data: ClassVar[str] = "moons"
    #: whether the family has a components-vs-dimension study (`sweep`, the GMM's)
    component_study: ClassVar[bool] = False
    #: the network evaluations of the last `sample` (iterative families), else None
    nfe_: int | None = None

    def __init_subclass__(cls, family: str | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if family is not None:
            cls.family = family
            FAMILIES[family] = cls

    #: the config fields that may also be passed positionally, in order
    positional: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, device: str | torch.device | None = None, **options: Any):
        """Store the options (the fields of `config_class`, declared once there) as a frozen,
        validated config; `device`: "cuda", "cpu" or None (cuda when present)."""
        super().__init__()
        self.config = self.make_config(*args, **options)
        self.device_ = resolve_device(device)
        self.event_shape: tuple[int, ...] | None = None

    @classmethod
    def make_config(cls, *args: Any, **options: Any) -> Any:
        """The config from positional (`positional`) and keyword options.

        Raises:
            TypeError: too many positional options, one given twice, or an unknown name.
            ValueError: a value that breaks its field's rule.
        """
        if len(args) > len(cls.positional):
            raise TypeError(
                f"{cls.__name__} takes at most {len(cls.positional)} positional options "
                f"{cls.positional}, got {len(args)}; pass the others by name"
            )
        for name, value in zip(cls.positional, args, strict=False):
            if name in options:
                raise TypeError(f"{cls.__name__} got {name!r} twice")
            options[name] = value
        names = [f.name for f in dataclasses.fields(cls.config_class)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise TypeError(
                f"{cls.__name__} has no option {', '.join(map(repr, unknown))}; "
                f"its options are {sorted(names)}"
            )
        return cls.config_class(**options)

    # -- protocol -------------------------------------------------------------------------------
    def fit(self, x: Any, y: Any = None) -> GenerativeModel:
        raise NotImplementedError

    def sample(self, n: int, *, seed: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, x: Any) -> torch.Tensor:
        raise NotImplementedError

    def _build(self, event_shape: tuple[int, ...], fitted: dict[str, Any]) -> None:
        raise NotImplementedError

    #: the JSON-able fitted facts that config.json stores besides the tensors: each name k
    #: is the attribute `k_` (set by `_build` from the `fitted` dict it is given)
    fitted_facts: ClassVar[tuple[str, ...]] = ()

    def _fitted_meta(self) -> dict[str, Any]:
        """config.json's "fitted": event_shape and the `fitted_facts`."""
        facts = {name: getattr(self, f"{name}_") for name in self.fitted_facts}
        return {"event_shape": list(self.event_shape or ()), **facts}

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
        check_finite(x)
        if x.dtype != torch.float32:
            x = x.float()
            if not torch.isfinite(x).all():
                raise ValueError(
                    "x holds values beyond the range of float32 (about 3.4e38), in which the "
                    "model computes: rescale the data"
                )
        return x

    @staticmethod
    def check_n(n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        return int(n)

    def check_sample_size(self, n: int) -> int:
        """`check_n`, and that n float32 samples of `event_shape` fit in memory (what every
        `sample` calls first, so an absurd n is refused before anything is allocated).

        Raises:
            ValueError: n is not a non-negative integer, or the samples cannot fit in memory.
        """
        n = self.check_n(n)
        size = n * math.prod(self.event_shape or ()) * 4
        check_memory(size, f"sample(n={n})", "draw fewer samples (in batches)")
        return n

    @property
    def device(self) -> torch.device:
        """Where the fitted tensors live (follows `.to(...)`); before fit, the requested device."""
        for t in self.buffers():
            return t.device
        for t in self.parameters():
            return t.device
        return self.device_

    def generator(self, seed: int | None) -> torch.Generator:
        """A local RNG on the model's device: seeded when asked, else from OS entropy (the
        global RNG is never read or advanced)."""
        return local_generator(None if seed is None else check_seed(seed), self.device)

    @property
    def is_text(self) -> bool:
        """Whether the model generates text (`sample` returns strings)."""
        return False

    @property
    def conditional(self) -> bool:
        """Whether the fitted model is class-conditional (sample and log_prob take y)."""
        return False

    def fit_curve(self) -> tuple[str, list[float]] | None:
        """(label, values) of a training curve the model keeps itself (EM's lower bounds), or
        None (a neural family's curve is its run's log.jsonl)."""
        return None

    @property
    def n_parameters(self) -> int:
        """Free parameters (the network's trainable tensors' sizes; a GMM counts its own)."""
        return sum(p.numel() for p in self.parameters())

    def ellipses_2d(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(means (K, 2), covariances (K, 2, 2), weights (K,)) of a 2-D mixture's components,
        for pictures; None for families without components."""
        return None

    @classmethod
    def unsupported(cls, data: TrainingData) -> str | None:
        """Why this family cannot model `data` at all (None when it can): by default, data of
        a kind outside `data_kinds`."""
        if data.kind not in cls.data_kinds:
            kinds = " or ".join(sorted(cls.data_kinds))
            return f"the {cls.family} family models {kinds}, not {data.kind}"
        return None

    def fit_summary(self) -> dict[str, Any]:
        """Rows of `genlab fit`'s summary beside the score (fitted choices, iterations)."""
        return {}

    def score_rows(self, data: Dataset, limit: int = 1000) -> tuple[str, float]:
        """(label, mean log-likelihood in nats) of up to `limit` training rows, quickly
        (`quick_log_prob`): what `genlab fit` prints. Densities of quantised images are
        scored at dequantised rows, as evaluation measures them."""
        x = data.x[:limit]
        x = x if isinstance(x, torch.Tensor) else x[:]
        if data.levels is not None and self.log_prob_space == "continuous":
            x = metrics.dequantize(x.float(), data.levels, generator=local_generator(0))
        part = "" if len(x) == len(data) else f" (first {len(x)})"
        value = float(self.log_prob(x, **self.quick_log_prob).double().mean())
        return f"train log-likelihood{part}", value

    @classmethod
    def fit_for_budget(cls, data: Dataset, budget: Budget) -> tuple[GenerativeModel, dict]:
        """Fit within a budget (what compare calls): a neural family trains with max_time /
        max_steps; a family with its own model selection (the GMM's BIC) overrides this.
        Returns the model and details for the record ("steps", "options")."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        fields = dataclasses.asdict(self.config)
        return ", ".join(f"{k}={v!r}" for k, v in fields.items())

    # -- the model folder -----------------------------------------------------------------------
    #: whether every floating tensor of a fitted model is finite: `save` and `load` refuse
    #: NaN/inf ones (diverged, edited or corrupt); a family whose buffers may legitimately
    #: hold infinities sets this False
    finite_tensors: ClassVar[bool] = True

    def save(self, path: str | os.PathLike) -> Path:
        """Write `path/config.json` and `path/model.safetensors` as a whole: after a kill at
        any instant the folder holds the previous model or this one, never a mix
        (`genlab.io.write_folder_atomically`). config.json records the weights' sha256.

        Raises:
            NotFittedError: before fit.
            ValueError: a tensor holds NaN or infinity (`finite_tensors`).
            OSError: the folder cannot be written.
        """
        self.check_is_fitted()
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        bad = first_nonfinite(tensors) if self.finite_tensors else None
        if bad is not None:
            raise ValueError(
                f"cannot save this {type(self).__name__}: tensor {bad[0]} holds {bad[1]} (the "
                "training diverged, or the tensors were changed); re-fit it"
            )
        weights = safetensors.torch.save(tensors)
        meta = {
            "genlab_format": FORMAT_VERSION,
            "family": self.family,
            "config": dataclasses.asdict(self.config),
            "fitted": self._fitted_meta(),
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
        }
        config = (json.dumps(meta, indent=2) + "\n").encode()
        return write_folder_atomically(Path(path), {CONFIG_FILE: config, WEIGHTS_FILE: weights})

    @classmethod
    def from_config(cls, config: dict[str, Any], device: str | torch.device | None = None):
        names = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ValueError(f"unknown {cls.family} config keys {unknown}; known: {sorted(names)}")
        return cls(**config, device=device)


class NeuralModel(GenerativeModel):
    """A family trained by the one loop, `genlab.train.fit`, on its `loss(batch, step)`.

    `fit` is written once here: the input becomes a `TrainingData` (kind, levels, labels
    decided once), the family refuses what it cannot model (`unsupported`), then its set-up
    hook `_setup(data)` builds the networks and fitted buffers (under a private RNG seeded by
    config.seed, so initialisation depends on the seed alone) and returns the tensors the
    trainer draws batches from: (rows, labels or None).
    """

    train_result_: train.TrainResult | None = None
    takes_labels: ClassVar[bool] = True
    resumable: ClassVar[bool] = True

    def fit(
        self,
        x: Any,
        y: Any = None,
        *,
        out: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        progress: bool | None = None,
        callback: Any = None,
        callback_every: int | None = None,
    ) -> NeuralModel:
        """Set the family up for the data and train it with `genlab.train.fit`.

        Args:
            x: (n, *event_shape) Tensor, array or Dataset (its kind and levels are used, its
                labels are not), or a text (a str or a text Dataset) for text families.
            y: (n,) integer labels for a class-conditional model, or None.
            out: folder of checkpoint.pt and log.jsonl (None: no files).
            checkpoint_every, resume, progress, callback, callback_every: see
                `genlab.train.fit`.
        """
        data = TrainingData.from_input(x, y)
        reason = self.unsupported(data)
        if reason is not None:
            raise ValueError(reason)
        with torch.random.fork_rng(devices=[]):  # the nets' init follows config.seed alone
            torch.manual_seed(self.config.seed)
            rows, labels = self._setup(data)
        self.train_result_ = train.fit(
            self, rows, labels, self.config, out=out, checkpoint_every=checkpoint_every,
            resume=resume, callback=callback, callback_every=callback_every, progress=progress,
            device=self.device_,
        )  # fmt: skip
        self.eval()
        self._check_trained()
        return self

    def _check_trained(self) -> None:
        """Refuse (DivergedError) weights that training left non-finite, or finite weights
        whose samples are not (a few seeded draws; text models: the weights alone), so a
        diverged model is never returned, nor saved, as a success."""
        steps = self.train_result_.steps
        bad = first_nonfinite(self.state_dict()) if self.finite_tensors else None
        if bad is not None:
            raise DivergedError(
                f"training diverged: after {steps} steps tensor {bad[0]} holds {bad[1]}; lower "
                "the learning rate (lr) or check the data for extreme values"
            )
        if self.is_text:
            return
        nfe = self.nfe_
        try:
            with torch.no_grad():
                samples = self.sample(FIT_CHECK_SAMPLES, seed=0)
        except RuntimeError as e:  # e.g. sampling from NaN probabilities
            samples, detail = None, f" ({e})"
        else:
            detail = ""
        finally:
            self.nfe_ = nfe
        if samples is None or not torch.isfinite(samples).all():
            raise DivergedError(
                f"training diverged: it ended (after {steps} steps) with weights whose samples "
                f"are NaN/inf{detail}; lower the learning rate (lr) or check the data"
            )

    def _setup(self, data: TrainingData) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Build the networks and fitted buffers for `data`, set `event_shape`, and return
        the (rows, labels) the trainer draws batches from."""
        raise NotImplementedError

    def loss(self, batch: tuple[torch.Tensor, ...], step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def dequantize_batch(self, x: torch.Tensor, levels: int | None) -> torch.Tensor:
        """Fresh uniform dequantisation (k + u) / levels of quantised images in a training
        batch (the trainer's RNG), so a density is that of the dequantised data, as
        evaluation measures it; x unchanged when levels is None."""
        if levels is None:
            return x
        k = torch.round(x * (levels - 1))
        return (k + torch.rand_like(x)) / levels

    def fit_summary(self) -> dict[str, Any]:
        result = self.train_result_
        if result is None:
            return {}
        rows: dict[str, Any] = {"steps": result.steps}
        last = result.history[-1] if result.history else {}
        if "loss" in last:
            rows["final loss"] = float(last["loss"])
        return rows

    @classmethod
    def fit_for_budget(cls, data: Dataset, budget: Budget) -> tuple[GenerativeModel, dict]:
        """Construct with max_time=seconds / max_steps=steps (and `options`) and fit on the
        data as `genlab fit` gives it, without its labels."""
        b = budget
        kwargs = {"seed": b.seed, "max_time": b.seconds, "max_steps": b.steps, **b.options}
        if b.device is not None:
            kwargs.setdefault("device", b.device)
        model = cls(**kwargs)
        model.fit(dataclasses.replace(data, y=None), progress=b.progress)
        return model, {"steps": model.train_result_.steps, "options": dict(b.options)}


def first_nonfinite(tensors: Mapping[str, torch.Tensor]) -> tuple[str, str] | None:
    """(name, "NaN" or "infinity") of the first floating tensor that is not finite, or None."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name, "NaN" if bool(torch.isnan(t).any()) else "infinity"
    return None


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> GenerativeModel:
    """Load a model folder written by `save`, dispatching on the family named in config.json.

    The folder's current version is read (`genlab.io.resolve_folder`: a save killed after it
    was complete is finished, an interrupted one ignored), then every part is checked before
    use: config.json's structure, family, config rules and fitted facts, the weights'
    sha256 (when recorded) and finiteness.

    Raises:
        FileNotFoundError: no such folder, or config.json / model.safetensors is missing.
        ValueError: a corrupt, edited or foreign file (the message names the file and field).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    device = resolve_device(device)
    files = read_folder(folder, (CONFIG_FILE, WEIGHTS_FILE))
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (config_path, weights_path):
        if files[p.name] is None:
            raise FileNotFoundError(f"{folder} is not a genlab model folder: {p.name} is missing")
    cls, meta = _read_meta(config_path, files[CONFIG_FILE])
    weights = files[WEIGHTS_FILE]
    digest = meta.get("weights_sha256")
    if digest is not None and hashlib.sha256(weights).hexdigest() != digest:
        raise ValueError(
            f"{weights_path} does not match its config.json (its sha256 differs from the one "
            "recorded): the folder was edited or mixed from two saves; restore it or re-fit"
        )
    try:
        tensors = safetensors.torch.load(weights)
    except Exception as e:
        raise ValueError(f"{weights_path}: corrupt or foreign safetensors file ({e})") from None
    bad = first_nonfinite(tensors) if cls.finite_tensors else None
    if bad is not None:
        raise ValueError(
            f"{weights_path} is edited or corrupt: tensor {bad[0]} holds {bad[1]}; re-fit or "
            "restore the folder"
        )
    model = _build_model(cls, meta, config_path, device)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights_path} does not match its config.json: {e}") from None
    return model.to(model.device_)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_meta(config_path: Path, raw: bytes) -> tuple[type[GenerativeModel], dict[str, Any]]:
    """config.json parsed, with its structure checked: (the family's class, the dict)."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{config_path}: corrupt config.json ({e}); restore it or re-fit"
        ) from None
    if not isinstance(meta, dict) or "family" not in meta or "config" not in meta:
        raise ValueError(f"{config_path}: not a genlab config (no 'family' and 'config' keys)")
    version = meta.get("genlab_format", 0)
    if not _is_int(version):
        raise ValueError(f"{config_path}: genlab_format must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{config_path}: written by a newer genlab (format {version})")
    import genlab.models  # noqa: F401  (registers every family)

    family = meta["family"]
    if not isinstance(family, str) or family not in FAMILIES:
        raise ValueError(f"{config_path}: unknown family {family!r}; known: {sorted(FAMILIES)}")
    for key in ("config", "fitted"):
        if not isinstance(meta.get(key, {}), dict):
            raise ValueError(
                f"{config_path}: {key!r} must be a JSON object, got {type(meta[key]).__name__}"
            )
    if not isinstance(meta.get("weights_sha256", ""), str):
        raise ValueError(f"{config_path}: 'weights_sha256' must be a string of hex digits")
    return FAMILIES[family], meta


def _build_model(
    cls: type[GenerativeModel], meta: dict[str, Any], config_path: Path, device: torch.device
) -> GenerativeModel:
    """The family's module from config.json's config and fitted facts, checked: a config
    that breaks its rules, or fitted facts the family cannot use, is a ValueError naming
    the file."""
    try:
        model = cls.from_config(meta["config"], device=device)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"{config_path}: 'config': {e}") from None
    fitted = meta.get("fitted", {})
    shape = fitted.get("event_shape", [])
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise ValueError(
            f"{config_path}: fitted.event_shape must be a list of non-negative integers, got "
            f"{shape!r}; restore the folder or re-fit"
        )
    what = f"{config_path}: fitted.event_shape {shape}"
    check_memory(math.prod(shape) * 8, what, "the file is edited or corrupt; restore it or re-fit")
    event_shape = tuple(shape)
    try:
        model._build(event_shape, fitted)
    except Exception as e:  # KeyError, TypeError, a tokenizer's bare Exception, ...
        detail = f"missing {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ValueError(
            f"{config_path}: the fitted facts are edited or corrupt ({detail}); re-fit the model"
        ) from None
    model.event_shape = event_shape
    return model
