"""The protocol every family implements, and the model folder (config.json + model.safetensors).

A model is an `nn.Module` whose constructor stores hyperparameters in a frozen dataclass config
and whose `fit` learns from data. Fitted state lives in the module's `state_dict` (parameters
and buffers), which is exactly what `model.safetensors` holds; `config.json` holds the family
name, the config and the few fitted facts (such as `event_shape`) needed to rebuild the module
before the tensors are loaded. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
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
    check_memory,
    check_seed,
)
from genlab.io import write_folder_atomically
from genlab.models import tabular
from genlab.models.inputs import (  # re-exported: the protocol's inputs
    MAX_CLASSES,  # noqa: F401
    TrainingData,
    as_data,
    as_labels,  # noqa: F401
    check_finite,
    check_train_labels,  # noqa: F401
    iter_chunks,  # noqa: F401
    labels_from_names,
)
from genlab.solvers import local_generator
from genlab.train import DivergedError  # defined beside the loop that raises it

LogProbKind = Literal["exact", "bound", "estimate"]
COMPARE_VAL_FRACTION = 0.05  # held out by `NeuralModel.fit_for_budget` (compare)
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


# -- class names of labels ------------------------------------------------------------------------
LABEL_METHODS: dict[str, int | None] = {"sample": None, "log_prob": 1}
"""The methods whose y may hold class names, and y's position among their arguments after
self (None: keyword only)."""


def _wrap_label_names(cls: type[GenerativeModel]) -> None:
    """Wrap the `LABEL_METHODS` a family defines itself so that names in y become label
    values (`labels_from_names` with `label_names_`), and its `_build` (what `genlab.load`
    calls) so that it restores `label_names_` from config.json's fitted.label_names."""
    for name, position in LABEL_METHODS.items():
        method = cls.__dict__.get(name)
        if method is not None and not getattr(method, "_names_wrapped", False):
            setattr(cls, name, _named_labels(method, position))
    build = cls.__dict__.get("_build")
    if build is not None and not getattr(build, "_names_wrapped", False):
        cls._build = _restoring_label_names(build)


def _named_labels(method: Any, position: int | None) -> Any:
    @functools.wraps(method)
    def wrapper(self: GenerativeModel, *args: Any, **kwargs: Any) -> Any:
        if "y" in kwargs:
            kwargs["y"] = labels_from_names(kwargs["y"], self.label_names_)
        elif position is not None and len(args) > position:
            y = labels_from_names(args[position], self.label_names_)
            args = (*args[:position], y, *args[position + 1 :])
        return method(self, *args, **kwargs)

    wrapper._names_wrapped = True
    return wrapper


def _restoring_label_names(build: Any) -> Any:
    @functools.wraps(build)
    def wrapper(self: GenerativeModel, event_shape: tuple[int, ...], fitted: dict[str, Any]):
        build(self, event_shape, fitted)
        names = fitted.get("label_names")
        if names is not None and (
            not isinstance(names, list) or not all(isinstance(v, str) for v in names)
            or len(set(names)) != len(names)
        ):  # fmt: skip
            raise ValueError(f"fitted.label_names must be a list of distinct strings: {names!r}")
        self.label_names_ = None if names is None else tuple(names)

    wrapper._names_wrapped = True
    return wrapper


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
    #: the `genlab.data.tables.TableTransform` of a model fitted on a table, else None
    table_transform_: Any = None
    #: the class name of each label value (label k is `label_names_[k]`) of a model fitted on
    #: named classes (an image folder's sub-folders), so that
    #: `sample(y="cat")` and `log_prob(x, y=["cat", ...])` take names; None: integer labels
    label_names_: tuple[str, ...] | None = None

    def __init_subclass__(cls, family: str | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if family is not None:
            cls.family = family
            FAMILIES[family] = cls
        tabular.wrap_family(cls)  # tables in fit / log_prob, out of sample (models/tabular.py)
        _wrap_label_names(cls)  # y="cat" in sample / log_prob; label_names_ back at load

    #: the config fields that may also be passed positionally, in order
    positional: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, device: str | torch.device | None = None, **options: Any):
        """Store the options (the fields of `config_class`, declared once there) as a frozen,
        validated config; `device`: "cuda", "cpu" or None (cuda when present)."""
        super().__init__()
        self.config = self.make_config(*args, **options)
        #: the options the caller gave (by name or position): a neural family's `fit` fills
        #: the others from the recipe for the data's kind (`genlab.models.recipes`)
        self.given_options: frozenset[str] = frozenset(options) | frozenset(
            self.positional[: len(args)]
        )
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
        names = {} if self.label_names_ is None else {"label_names": list(self.label_names_)}
        return {"event_shape": list(self.event_shape or ()), **facts, **tabular.table_meta(self),
                **names}  # fmt: skip

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

    Validation (`fit(..., val=...)` or config.val_fraction): the family's hook
    `_val_rows(data)` turns held-out data into rows like those of `_setup` (the default:
    `data.x`, `data.y`), and `_holdout(data, fraction)` may split the training data itself
    (text holds out its end); the trainer evaluates `loss` on them (see `genlab.train`),
    keeps the best weights (`load_best`) and, with `out`, the model folder out/best/.
    """

    train_result_: train.TrainResult | None = None
    #: the recipe the last fit used (`genlab.models.recipes.Recipe`), or None
    recipe_: Any = None
    takes_labels: ClassVar[bool] = True
    resumable: ClassVar[bool] = True
    #: whether `fit_for_budget` (compare) ends on the best validation evaluation's weights
    #: (True) or on the last (EMA) weights (False: a family whose validation loss is too noisy
    #: to rank late checkpoints; the loss is still evaluated and reported)
    selects_by_validation: ClassVar[bool] = True

    def fit(
        self,
        x: Any,
        y: Any = None,
        *,
        val: Any = None,
        out: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        progress: bool | None = None,
        callback: Any = None,
        callback_every: int | None = None,
        loggers: Sequence[str] = (),
    ) -> NeuralModel:
        """Set the family up for the data and train it with `genlab.train.fit`.

        Args:
            x: (n, *event_shape) Tensor, array or Dataset (its kind and levels are used, its
                labels are not), or a text (a str or a text Dataset) for text families.
            y: (n,) integer labels for a class-conditional model, or None.
            val: validation data like x (a Dataset, whose labels are used when y is given,
                a Tensor, an array, or a text), evaluated every config.eval_every steps
                (None: config.val_fraction of the training data, when set). The model ends
                with the last weights; `load_best()` switches to the best evaluation's.
            out: folder of checkpoint.pt and log.jsonl (None: no files); with validation,
                out/best/ holds the best evaluation's model folder (`genlab.load` reads it).
            checkpoint_every, resume, progress, callback, callback_every, loggers: see
                `genlab.train.fit`.

        Raises:
            ValueError: data the family cannot model, validation data unlike the training
                data, bad training options (see `genlab.train.fit`).
        """
        rows, labels, val_rows = self._prepare_fit(x, y, val)
        self.train_result_ = train.fit(
            self, rows, labels, self.config, val=val_rows, out=out,
            checkpoint_every=checkpoint_every, resume=resume, callback=callback,
            callback_every=callback_every, progress=progress, device=self.device_,
            save_best=self.save, loggers=loggers,
        )  # fmt: skip
        self.eval()
        self._check_trained()
        return self

    def _apply_recipe(self, data: TrainingData) -> None:
        """Fill the options the caller did not give (`given_options`) from the family's recipe
        for the data's kind (`genlab.models.recipes.recipe_for`), before the networks are
        built: `self.config` becomes the resolved config, which is what `save` writes (so a
        loaded model is never resolved again). A second fit resolves afresh from the
        constructor's config, for its own data."""
        from genlab.models import recipes  # the recipes name family options: below models/

        requested = getattr(self, "_requested_config", None) or self.config
        self._requested_config = requested
        self.recipe_ = recipes.recipe_for(self.family, data)
        self.config = recipes.resolve(requested, self.given_options, self.recipe_)

    def _val_input(self, val: Any, data: TrainingData) -> TrainingData:
        """Validation data as a TrainingData like the training data's: the same kind and
        event shape, labels (a Dataset's own) exactly when training has them.

        Raises:
            ValueError: another kind or shape, or labels missing for a conditional fit.
        """
        labels = None
        if data.y is not None:
            labels = val.y if isinstance(val, Dataset) else None
            if labels is None:
                raise ValueError(
                    "this fit is class-conditional (y given), so val needs labels too: pass a "
                    "Dataset with labels y as val"
                )
        val_data = TrainingData.from_input(val, labels)
        if (val_data.kind == "text") != (data.kind == "text"):
            raise ValueError(
                f"val holds {val_data.kind} but the training data is {data.kind}: pass "
                "validation data of the same kind"
            )
        if val_data.event_shape != data.event_shape:
            raise ValueError(
                f"val has samples of shape {val_data.event_shape}, the training data "
                f"{data.event_shape}: pass validation data of the same shape"
            )
        if data.n_classes is not None and val_data.n_classes > data.n_classes:
            raise ValueError(
                f"val has labels up to {val_data.n_classes - 1}, beyond the training "
                f"labels' 0..{data.n_classes - 1}"
            )
        return val_data

    def _holdout(
        self, data: TrainingData, fraction: float
    ) -> tuple[TrainingData, TrainingData] | None:
        """(training data, validation data) for config.val_fraction, or None to let the
        trainer hold out random rows (`genlab.train.holdout_rows`): the default."""
        return None

    def _val_rows(self, data: TrainingData) -> tuple[Any, torch.Tensor | None]:
        """The (rows, labels) of validation data, like `_setup`'s (called after it): by
        default the data's own rows and labels."""
        return data.x, data.y

    def load_best(self) -> NeuralModel:
        """Switch to the weights of the best validation evaluation of the last fit (kept in
        memory; out/best/ holds the same as a model folder). Returns self.

        Raises:
            ValueError: the last fit had no validation data (val= or val_fraction).
        """
        self.check_is_fitted()
        result = self.train_result_
        if result is None or result.best_state is None:
            raise ValueError(
                "no best weights: the last fit had no validation data; fit with val= or "
                "val_fraction= to keep them"
            )
        state = self.state_dict()
        with torch.no_grad():
            for k, v in result.best_state.items():
                state[k].copy_(v)
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

    def _prepare_fit(self, x: Any, y: Any, val: Any) -> tuple[Any, Any, Any]:
        """(rows, labels, val_rows) for `train.fit`: the data checked against the family, the
        recipe applied, validation data given or held out (config.val_fraction), and the
        networks built (`_setup`) under config.seed without touching the caller's RNG."""
        data = TrainingData.from_input(x, y)
        reason = self.unsupported(data)
        if reason is not None:
            raise ValueError(reason)
        self._apply_recipe(data)
        val_data = None if val is None else self._val_input(val, data)
        if val_data is None and self.config.val_fraction is not None:
            split = self._holdout(data, self.config.val_fraction)
            if split is not None:
                data, val_data = split
        with torch.random.fork_rng(devices=[]):  # the nets' init follows config.seed alone
            torch.manual_seed(self.config.seed)
            rows, labels = self._setup(data)
        self.label_names_ = data.label_names  # after _setup, whose _build may reset them
        return rows, labels, None if val_data is None else self._val_rows(val_data)

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
        if self.recipe_ is not None:
            rows["recipe"] = self.recipe_.describe(self.given_options)
        last = [row for row in result.history if "loss" in row]
        if last:
            rows["final loss"] = float(last[-1]["loss"])
        if result.best_step is not None:
            rows["best step"] = result.best_step
            rows["best val loss"] = result.best_val_loss
            if result.stopped_early:
                rows["stopped early"] = True
        return rows

    @classmethod
    def fit_for_budget(cls, data: Dataset, budget: Budget) -> tuple[GenerativeModel, dict]:
        """Construct with max_time=seconds / max_steps=steps (and `options`) and fit on the
        data as `genlab fit` gives it, without its labels, holding out COMPARE_VAL_FRACTION
        of it for validation (unless `options` set val_fraction) and ending with the best
        evaluation's weights (`load_best`) where the family `selects_by_validation`, else
        with the last (EMA) weights ("weights" in the details says which)."""
        b = budget
        kwargs = {"seed": b.seed, "max_time": b.seconds, "max_steps": b.steps,
                  "val_fraction": COMPARE_VAL_FRACTION, **b.options}  # fmt: skip
        if b.device is not None:
            kwargs.setdefault("device", b.device)
        model = cls(**kwargs)
        model.fit(dataclasses.replace(data, y=None), progress=b.progress)
        result = model.train_result_
        chosen = result.best_state is not None and cls.selects_by_validation
        if chosen:
            model.load_best()
        details = {"steps": result.steps, "options": dict(b.options),
                   "weights": "best validation" if chosen else "last"}  # fmt: skip
        if model.recipe_ is not None:
            details["recipe"] = model.recipe_.describe(model.given_options)
        if result.best_step is not None:
            details |= {"best_step": result.best_step, "best_val_loss": result.best_val_loss}
        return model, details


def first_nonfinite(tensors: Mapping[str, torch.Tensor]) -> tuple[str, str] | None:
    """(name, "NaN" or "infinity") of the first floating tensor that is not finite, or None."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name, "NaN" if bool(torch.isnan(t).any()) else "infinity"
    return None
