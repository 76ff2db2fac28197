"""Run model families on one data set with one budget, measure them alike, and write a report.

    from genlab.compare import compare
    records = compare("digits", ["gmm", "vae", "flow"], budget_seconds=60, out="runs/cmp")

(`out` gets report.html, report.md and records.json, written by `genlab.report`.)

Each family is fitted on the train split by its own `fit_for_budget` (the family decides its
defaults: neural families train with `max_time` / `max_steps` set to the budget, with the
recipe of `genlab.models.recipes` for the data's kind under the caller's options; the GMM picks
its number of components by BIC among `Settings.gmm_components`, then keeps doubling K while
BIC improves and the EM cost model says the fit ends within the budget (`gmm_extend`), so
that on 2-D data it gets the K it needs) and measured on the test split with
`genlab.evaluation` and `genlab.metrics`:

- NLL on one scale: bits/dim of the discrete data for quantised images (a density at
  uniformly dequantised test points, `metrics.discrete_bits_per_dim`; a log-mass, for models
  whose `log_prob_space` is "discrete", at the test points themselves), else of the density;
  each labelled with the family's `log_prob_kind` (exact, bound or estimate).
- Sample quality against the test split: MMD² and sliced W2 (and the energy distance) of the
  samples; for labelled images also, in the features of a small classifier trained on the
  train split (`feature_classifier`, cached on disk), the Fréchet distance
  ("frechet_classifier": in those features, not Inception's), k-NN precision and recall, and
  the entropy of the classes it assigns to samples (class coverage). Image samples are first
  put on the data's grid (`metrics.quantize`), as an image file would.
- Tables (`genlab.data.tables.TableDataset`: a .csv with text columns, a .parquet file): the
  NLL and sample metrics of the encoded rows, and `genlab.table_metrics` on the samples
  decoded to the table's columns (`_table_quality`: per-column KS / total variation, the
  association-matrix difference, ML efficacy of `Settings.table_target`, the DCR privacy
  test with the test rows as the holdout); the floor row is real train rows.
- Text (`text:FILE`; `_measure_text`): bits/char of the test text (exact, or a bound with
  its Monte-Carlo standard error), sampling seconds per 1,000 characters (and at each of
  `Settings.text_steps` for a family whose sample takes steps), and sample quality without an
  outside model: the first exact family's (autoregressive) bits/char of every family's
  samples, character n-gram distances to the test text and the share of known words; the
  floor row is excerpts of the train text.
- Cost: training seconds and steps, sampling seconds per 1,000 samples, the sampler's NFE
  (`model.nfe_` where the family counts it), parameters (`model.n_parameters`); for families
  whose `sample` takes `steps` (`sample_options`), quality against NFE from one step
  (`Settings.nfe_steps`; a step count a run cannot sample at is noted in "skipped").

A family may run more than once under variant labels "family:name", each with its own
options: `compare(data, ["flow", "flow:meanflow"], options={"flow:meanflow": {"objective":
"meanflow"}})` (`genlab compare --families flow,flow:meanflow --options
flow:meanflow.objective=meanflow`) puts a one-step flow beside the standard one.

The floor row ("data") measures real train images against the same test split with the
same number of samples: what a model that samples the data distribution itself would score.
A family name that is not registered is an error before anything is loaded or trained
(`check_families`), and so is a data set that does not load (`load_pair`). A family that
cannot model the data (its `unsupported(data)` gives a reason, e.g. the autoregressive family
on continuous points) is reported as "not applicable", with the reason; one that fails, with
its error; the others go on.
The records are plain dicts (JSON-able), one per family plus the floor. Nothing here names a
family class: what differs between families, they say themselves (`genlab.models.base`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlab import metrics, plots
from genlab.data import Dataset, load_dataset
from genlab.evaluation import (
    TrainedClassifier,
    cache_root,
    dequantized,
    feature_classifier,
    gmm_nll_vs_components,
    held_out_nll,
)
from genlab.models import FAMILIES, GenerativeModel
from genlab.models.base import Budget as FitBudget
from genlab.models.base import TrainingData
from genlab.options import Constraint, Flag, Integer, Real, option, validate
from genlab.report import FLOOR, QUALITY_LABELS, json_safe, write_report

DEFAULT_FAMILIES: tuple[str, ...] = ("gmm", "vae", "flow", "diffusion", "autoregressive")
TABLE_KEYS: tuple[str, ...] = (
    "column_score", "ks_mean", "tv_mean", "association_difference", "ml_efficacy", "dcr_ratio",
    "share_closer_to_train",
)  # fmt: skip
"""The table metrics (`genlab.table_metrics`) a record of a table shows; all of them are in its
details["table_metrics"]."""
TEXT_KEYS: tuple[str, ...] = (
    "bits_per_char", "bits_per_char_stderr", "sample_seconds_per_1000_chars",
    "reference_bits_per_char", "ngram_tv", "known_words",
)  # fmt: skip
"""What a record of text shows (`_measure_text`); the family's scores are in details["text"]."""
RECORD_KEYS: tuple[str, ...] = (
    "data", "family", "status", "error", "log_prob_kind", "nll_space", "nll_nats",
    "bits_per_dim", "mmd", "sliced_wasserstein", "energy_distance", "frechet_classifier",
    "precision", "recall", "class_entropy_bits", *TABLE_KEYS, *TEXT_KEYS, "train_seconds",
    "train_steps",
    "nll_seconds",
    "sample_seconds_per_1000", "nfe", "n_parameters", "n_samples", "details", "nfe_curve",
    "figures", "errors",
)  # fmt: skip
"""Every record has these keys (None where a value does not apply or could not be measured)."""


# -- budgets and settings -------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """The training budget of each family: wall-clock seconds, optimisation steps, or both."""

    seconds: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.seconds is None and self.steps is None:
            raise ValueError("a budget needs seconds or steps (e.g. budget_seconds=120)")
        seconds = self.seconds
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not (math.isfinite(seconds) and seconds > 0)
        ):
            raise ValueError(f"budget seconds must be a finite number > 0, got {seconds!r}")
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1
        ):
            raise ValueError(f"budget steps must be an integer >= 1, got {self.steps!r}")

    def __str__(self) -> str:
        parts = [] if self.seconds is None else [f"{self.seconds:g} s"]
        return " or ".join(parts + ([] if self.steps is None else [f"{self.steps} steps"]))


_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_budget(text: str) -> Budget:
    """A budget from text: "120s", "90 sec", "2m", "1.5h" (seconds), "500steps" or "500" (steps).

    Raises:
        ValueError: text that is none of these, or not positive.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(text).lower())
    unit = match.group(2) if match else None
    if match is None or (unit not in _UNITS and unit not in ("", "step", "steps")):
        raise ValueError(
            f"budget {text!r} not understood: give seconds ('120s', '2m', '1h') or steps "
            "('500steps', or a plain '500')"
        )
    value = float(match.group(1))
    if unit in _UNITS:
        return Budget(seconds=value * _UNITS[unit])
    if value != int(value):
        raise ValueError(f"budget {text!r}: steps must be a whole number")
    return Budget(steps=int(value))


@dataclass(frozen=True)
class Counts(Constraint):
    """A tuple of integers >= 1 (sampler steps, numbers of components, dimensions)."""

    optional: bool = False

    def accepts(self, v: Any) -> bool:
        return isinstance(v, tuple | list) and all(Integer(1).accepts(k) for k in v)

    def describe(self) -> str:
        return "a tuple of integers >= 1"


POSITIVE, OPTIONAL = Real(0.0, low_open=True), {"optional": True}


@dataclass(frozen=True)
class Settings:
    """How much is measured (sample counts, grids, solver tolerance, the classifier's training)."""

    # fmt: off
    n_samples: int = option(1000, "Model samples per family (and floor rows).", Integer(2))
    nfe_steps: tuple[int, ...] = option((1, 2, 5, 10, 20, 50), "Steps of quality vs NFE "
                                        "(1: one-step objectives; a run that cannot sample "
                                        "at a step count skips it with a note).", Counts())
    nfe_samples: int = option(500, "Samples per point of quality vs NFE.", Integer(2))
    gmm_components: tuple[int, ...] = option((1, 2, 4, 8, 16, 32), "K of the GMM's BIC sweep "
                                             "and of the components study.", Counts())
    gmm_extend: bool = option(True, "Extend the GMM's BIC sweep beyond gmm_components (doubling "
                              "K) while BIC improves and the budget affords it.", Flag())
    gmm_study_dims: tuple[int, ...] | None = option(None, "PCA dimensions of the study (None: "
                                                    "2, 4, 8, ... up to D).", Counts(**OPTIONAL))
    gmm_study_seconds: float = option(20.0, "The components study stops after this.", POSITIVE)
    density_grid: int | None = option(None, "Grid side of 2-D density pictures (None: the "
                                      "family's own).", Integer(2, **OPTIONAL))
    max_nll_points: int | None = option(None, "Test points of the NLL (None: all).",
                                        Integer(1, **OPTIONAL))
    ode_tolerance: float = option(1e-4, "rtol = atol of ODE likelihoods.", POSITIVE)
    knn_k: int = option(3, "The neighbour of k-NN precision and recall.", Integer(1))
    classifier_epochs: int = option(15, "Epochs of the feature classifier.", Integer(1))
    classifier_seconds: float = option(120.0, "The classifier trains at most this.", POSITIVE)
    table_target: str | None = option(None, "The column ML efficacy predicts on a table (None: "
                                      "not measured).")
    text_samples: int = option(64, "Text: samples per family and per point of the steps "
                               "curve.", Integer(1))
    text_tokens: int = option(64, "Text: tokens per sample (max_new_tokens; at most a masked "
                              "model's block_size).", Integer(1))
    text_steps: tuple[int, ...] = option((8, 16, 32, 64), "Text: sampler steps of the speed and "
                                         "quality curve (families whose sample takes steps).",
                                         Counts())
    text_test_chars: int | None = option(20_000, "Text: test characters scored (None: all).",
                                         Integer(1, **OPTIONAL))
    # fmt: on

    def __post_init__(self) -> None:
        validate(self)


# -- threads --------------------------------------------------------------------------------------
SMALL_DATA_DIM = 256
"""Data of at most this many dimensions (2-D toys, 8 x 8 digits) get small networks (the
recipes' MLPs of 128-256 units, batches of 128-256), whose steps are too short to share
between threads: `fit_threads` gives them one."""


def fit_threads(datasets: Sequence[Dataset], available: int) -> int:
    """The torch threads to fit compare's families with, given `available` free cores: one
    when every data set is small (dim <= SMALL_DATA_DIM), else `available`. The caller (the
    CLI, the one place genlab sets threads) applies it once, before anything trains; torch
    cannot raise its thread count again within a process, so there is no per-family switch.

    Why one: a step of these nets takes a millisecond or two, so OpenMP's fork/join and
    spin-waiting cost more than the second core gives back: the main job's flow took 2,482
    steps of digits in 20 s with 2 threads, about 8,000 on one quiet core (BENCHMARKS.md,
    issue 17; `benchmarks/compare_threads.py` measures 1 against 2 threads side by side).
    """
    if isinstance(available, bool) or not isinstance(available, int) or available < 1:
        raise ValueError(f"available must be an integer >= 1, got {available!r}")
    return 1 if all(d.dim <= SMALL_DATA_DIM for d in datasets) else available


# -- small helpers --------------------------------------------------------------------------------
def _rows(data: Dataset) -> torch.Tensor:
    """All rows of a data set's x as a tensor (reading a lazy `NpyArray`)."""
    return data.x if isinstance(data.x, torch.Tensor) else data.x[:]


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _new_record(data: str, family: str) -> dict[str, Any]:
    record = dict.fromkeys(RECORD_KEYS)
    record.update(data=data, family=family, status="ok", details={}, figures={}, errors={})
    return record


# -- the run --------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What every family's measurement shares on one data set."""

    train: Dataset
    test: Dataset
    name: str
    budget: Budget
    seed: int
    settings: Settings
    options: Mapping[str, Mapping[str, Any]]
    out: Path | None
    device: str | None
    progress: bool
    classifier: TrainedClassifier | None = None
    test_points: torch.Tensor | None = None  # the reference of the sample metrics
    test_features: torch.Tensor | None = None
    text_reference: tuple[str, GenerativeModel] | None = None  # (family, model): exact log_prob
    text_samples: dict[tuple[str, int | None], list[str]] = dataclasses.field(default_factory=dict)
    train_words: frozenset[str] = frozenset()

    @property
    def images(self) -> bool:
        return self.train.kind == "image"

    @property
    def text(self) -> bool:
        return self.train.kind == "text"

    @property
    def test_text(self) -> str:
        """The test characters scored: the first `settings.text_test_chars` (None: all)."""
        return self.test.text[: self.settings.text_test_chars]

    @property
    def table(self) -> bool:
        """A table (`genlab.data.tables.TableDataset`: encoded rows, `frame`, `transform`)."""
        return getattr(self.train, "frame", None) is not None

    @property
    def sample_kwargs(self) -> dict[str, Any]:
        """What `sample` needs beyond (n, seed): the encoded rows of a table model."""
        return {"as_frame": False} if self.table else {}

    @property
    def quality_metric(self) -> str:
        if self.text:
            return "reference_bits_per_char" if self.text_reference else "trigram_tv"
        return "frechet_classifier" if self.classifier is not None else "sliced_wasserstein"

    def figure(self, stem: str) -> Path | None:
        """out/figures/<data>/<stem>.png, or None without `out`."""
        if self.out is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)
        return self.out / "figures" / safe / f"{re.sub(r'[^A-Za-z0-9_-]+', '_', stem)}.png"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()

    def say(self, message: str) -> None:
        if self.progress:
            print(message, file=sys.stderr, flush=True)


def _as_samples(samples: torch.Tensor, run: _Run) -> torch.Tensor:
    """Model samples on the CPU as float32; image samples put on the data's grid (or in [0, 1])."""
    samples = samples.detach().cpu().float()
    if not torch.isfinite(samples).all():
        raise ValueError("the samples contain NaN or infinity")
    if run.images:
        levels = run.train.levels
        samples = metrics.quantize(samples, levels) if levels else samples.clamp(0.0, 1.0)
    return samples


def _quality(samples: torch.Tensor, run: _Run) -> dict[str, float]:
    """MMD², sliced W2, energy distance against the test split; for labelled images also the
    Fréchet distance, k-NN precision/recall and class entropy in the classifier's features."""
    out = metrics.sample_metrics(samples, run.test_points, seed=run.seed)
    if run.classifier is not None:
        feats, labels = run.classifier.features_and_labels(samples)
        out["frechet_classifier"] = metrics.frechet_distance(run.test_features, feats)
        out.update(metrics.precision_recall(run.test_features, feats, k=run.settings.knn_k))
        out["class_entropy_bits"] = metrics.class_entropy(labels, run.classifier.n_classes)
    return out


def _table_quality(rows: Any, record: dict[str, Any], run: _Run) -> None:
    """The table metrics (`genlab.table_metrics.table_metrics`) of synthetic rows, at most as
    many as the floor's (`len(train)`): a DataFrame, or encoded rows decoded by the train
    split's transform. Fidelity and dependence are against the test rows, ML efficacy predicts
    `settings.table_target` (None: not measured), the DCR test's holdout is the test rows."""
    from genlab import table_metrics

    n = min(run.settings.n_samples, len(run.train))
    if hasattr(rows, "iloc"):
        frame = rows.iloc[:n]
    else:
        frame = run.train.transform.inverse_transform(rows[:n])
    target = run.settings.table_target
    scores = table_metrics.table_metrics(run.train.frame, run.test.frame, frame, target=target,
                                         seed=run.seed)  # fmt: skip
    details = scores.pop("table_details")
    record.update({key: scores[key] for key in TABLE_KEYS})
    record["details"]["table_metrics"] = {**scores, **details}


# -- fitting: each family by its own recipe ------------------------------------------------------
def settings_options(settings: Settings) -> dict[str, dict[str, Any]]:
    """Family options that come from compare's `Settings` (the caller's `options` override
    them): the components swept by families with a components study (the GMM's BIC
    sweep over `settings.gmm_components`, extended by doubling K while BIC improves and the
    budget affords it unless `settings.gmm_extend` is False)."""
    components = {"components": tuple(settings.gmm_components),
                  "extend_components": settings.gmm_extend}  # fmt: skip
    return {name: components for name, cls in FAMILIES.items() if cls.component_study}


VARIANT_SEPARATOR = ":"


def resolve_name(name: str) -> tuple[str, dict[str, Any]]:
    """(registered family, preset options) of a family name or variant label "name:variant":
    a registered family gives {}; a preset that a family declares in its `presets` (the
    latent family's "latent-gmm": {"prior": "gmm"}, ...) gives the family and its options.

    Raises:
        KeyError: a name that is neither.
    """
    base = name.split(VARIANT_SEPARATOR, 1)[0]
    if base in FAMILIES:
        return base, {}
    for family, cls in FAMILIES.items():
        presets = getattr(cls, "presets", {})
        if base in presets:
            return family, dict(presets[base])
    raise KeyError(base)


def family_class(name: str) -> type[GenerativeModel]:
    """The registered class of a family name, a preset ("latent-gmm") or a variant label
    "family:variant" (e.g. "flow:meanflow", run with the options given for that label)."""
    return FAMILIES[resolve_name(name)[0]]


def not_applicable(family: str, train: Dataset) -> str | None:
    """Why the registered `family` cannot model `train` at all (None when it can): the
    family's own answer, `unsupported`, to the data as its `fit` would see it."""
    return family_class(family).unsupported(TrainingData.from_input(train))


def _fit(family: str, run: _Run) -> tuple[GenerativeModel, dict[str, Any]]:
    """`FAMILIES[family].fit_for_budget` on the train Dataset as `genlab fit` gives it
    (quantised images keep their `levels`): the family chooses its own defaults for the
    budget, and returns the model and details ("steps", the options it chose, ...)."""
    cls = family_class(family)
    options = {**settings_options(run.settings).get(cls.family, {}),
               **resolve_name(family)[1], **run.options.get(family, {})}  # fmt: skip
    budget = FitBudget(run.budget.seconds, run.budget.steps, run.seed, run.device,
                       run.progress, options)  # fmt: skip
    return cls.fit_for_budget(run.train, budget)


# -- one family -----------------------------------------------------------------------------------
def _measure(record: dict[str, Any], what: str, fn: Callable[[], Any]) -> Any:
    """Run one measurement; on failure note the error in record["errors"] and return None."""
    try:
        return fn()
    except Exception as e:
        record["errors"][what] = _error_text(e)
        record["status"] = "partial"
        return None


def _run_family(family: str, run: _Run) -> dict[str, Any]:
    record = _new_record(run.name, family)
    reason = not_applicable(family, run.train)
    if reason is not None:
        record.update(status="not applicable", error=reason)
        run.say(f"{family}: not applicable: {reason}")
        return record
    run.say(f"{family}: fitting on {len(run.train)} samples (budget {run.budget})")
    start = time.perf_counter()
    try:
        model, details = _fit(family, run)
    except Exception as e:
        trace = {"traceback": traceback.format_exc()}
        record.update(status="failed", error=_error_text(e), details=trace)
        run.say(f"{family}: failed: {record['error']}")
        return record
    model.eval()
    record["train_seconds"] = time.perf_counter() - start
    details = dict(details)
    record["train_steps"] = details.pop("steps", None)
    record["details"] = details
    record["log_prob_kind"] = model.log_prob_kind
    record["n_parameters"] = _measure(record, "n_parameters", lambda: int(model.n_parameters))
    run.say(f"{family}: fitted in {record['train_seconds']:.1f} s; measuring")
    if run.text:
        return _measure_text(model, record, run)
    _measure(record, "nll", lambda: _measure_nll(model, record, run))
    samples = _measure(record, "samples", lambda: _measure_samples(model, record, run))
    if samples is not None:
        quality = _measure(record, "quality", lambda: _quality(samples, run))
        record.update(quality or {})
        if run.table:
            _measure(record, "table_metrics", lambda: _table_quality(samples, record, run))
        _measure(record, "figures", lambda: _family_figures(model, samples, record, run))
    if model.has_encoder and run.images:
        _measure(record, "reconstructions", lambda: _reconstructions(model, record, run))
    if "steps" in model.sample_options:
        _measure(record, "nfe_curve", lambda: _nfe_curve(model, record, run))
    if record["status"] == "partial":
        record["error"] = "; ".join(f"{k}: {v}" for k, v in record["errors"].items())
    return record


def _measure_nll(model: GenerativeModel, record: dict[str, Any], run: _Run) -> None:
    test = run.test
    limit = run.settings.max_nll_points
    if limit is not None and limit < len(test):
        rows = {"frame": test.frame.iloc[:limit]} if run.table else {}  # a TableDataset's
        test = dataclasses.replace(test, x=_rows(test)[:limit], y=None, **rows)
    start = time.perf_counter()
    tol = run.settings.ode_tolerance
    result = held_out_nll(model, test, run.seed, rtol=tol, atol=tol)
    record.update(nll_nats=result.nll, bits_per_dim=result.bits_per_dim, nll_space=result.space,
                  nll_seconds=time.perf_counter() - start)  # fmt: skip


def _measure_samples(model: GenerativeModel, record: dict[str, Any], run: _Run) -> torch.Tensor:
    n = run.settings.n_samples
    start = time.perf_counter()
    samples = model.sample(n, seed=run.seed, **run.sample_kwargs)
    seconds = time.perf_counter() - start
    record.update(sample_seconds_per_1000=seconds * 1000 / n, n_samples=n, nfe=model.nfe_)
    if tuple(samples.shape) != (n, *run.train.event_shape):
        raise ValueError(f"sample({n}) returned shape {tuple(samples.shape)}")
    return _as_samples(samples, run)


def _nfe_curve(model: GenerativeModel, record: dict[str, Any], run: _Run) -> None:
    """Sample at each of `settings.nfe_steps` and record (steps, NFE, quality, seconds). A
    step count the model cannot sample at (its `sample` raises ValueError, e.g. a sampler
    that needs 2 steps) is left out of the points with a note in "skipped"."""
    curve, skipped, metric = [], [], run.quality_metric
    n = run.settings.nfe_samples
    for steps in run.settings.nfe_steps:
        start = time.perf_counter()
        try:
            drawn = model.sample(n, seed=run.seed, steps=steps, **run.sample_kwargs)
        except (ValueError, NotImplementedError) as e:
            skipped.append({"steps": steps, "reason": _error_text(e)})
            continue
        samples = _as_samples(drawn, run)
        seconds = time.perf_counter() - start
        quality = _quality(samples, run)
        curve.append({"steps": steps, "nfe": model.nfe_, metric: quality[metric],
                      "seconds": seconds})  # fmt: skip
    record["nfe_curve"] = {"metric": metric, "n_samples": n, "points": curve}
    if skipped:
        record["nfe_curve"]["skipped"] = skipped


def _density_fn(model: GenerativeModel) -> tuple[Callable[[np.ndarray], torch.Tensor], str]:
    """log_prob for a density picture of 2-D points with the family's cheap options
    (`quick_log_prob`: e.g. a fixed-step ODE solver), and a note saying which."""
    quick = dict(model.quick_log_prob)

    def log_prob(points: np.ndarray) -> torch.Tensor:
        return model.log_prob(torch.from_numpy(points).float(), **quick).detach().cpu()

    note = ", ".join(f"{k}={v}" for k, v in quick.items())
    return log_prob, f" ({note})" if note else ""


def _family_figures(
    model: GenerativeModel, samples: torch.Tensor, record: dict[str, Any], run: _Run
) -> None:
    """Image samples as a grid; 2-D points as the model's density with its samples."""
    family = record["family"]
    if run.images:
        path = run.figure(f"{family}-samples")
        if path is not None:
            plots.sample_grid(samples[:64], path, title=f"{family} samples")
            record["figures"]["samples"] = run.relative(path)
    elif run.train.event_shape == (2,):
        path = run.figure(f"{family}-density")
        if path is not None:
            log_prob, note = _density_fn(model)
            plots.density_2d(log_prob, path, samples=samples[:1000], data=run.test_points[:1000],
                             ellipses=model.ellipses_2d(),
                             grid=run.settings.density_grid or model.density_grid,
                             title=f"{family}: density{note} and samples")  # fmt: skip
            record["figures"]["density"] = run.relative(path)


RECONSTRUCTION_ROWS = 256  # test images of the reconstruction error (16 are drawn)


def _reconstructions(model: GenerativeModel, record: dict[str, Any], run: _Run) -> None:
    """A family with an encoder (`has_encoder`: vae, latent): the mean squared error of its
    reconstructions of the first test images (put on the data's grid, as samples are) in
    details["reconstruction_mse"], and the figure of 16 of them under the originals."""
    x = run.test_points[:RECONSTRUCTION_ROWS]
    recon = _as_samples(model.reconstruct(x), run)
    record["details"]["reconstruction_mse"] = float(((recon - x) ** 2).mean())
    path = run.figure(f"{record['family']}-reconstructions")
    if path is not None:
        k = min(16, len(x))
        plots.sample_grid(torch.cat([x[:k], recon[:k]]), path, nrow=k,
                          title=f"{record['family']}: test images and reconstructions")  # fmt: skip
        record["figures"]["reconstructions"] = run.relative(path)


# -- text: bits/char, sampling speed and sample quality without an outside model ----------------
NGRAM_ORDERS: tuple[int, ...] = (1, 2, 3, 4)
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The words of a text: maximal runs of letters, digits and underscores, lower-cased."""
    return _WORD.findall(text.lower())


def ngram_distance(texts: Sequence[str], reference: str, n: int) -> float:
    """Total variation 1/2 sum_g |p(g) - q(g)| between the frequencies p of the character
    n-grams inside each of `texts` and q of those of `reference`: 0 for the same frequencies,
    1 for disjoint n-grams (a finite sample of the reference's own source scores above 0: the
    floor row measures that).

    Raises:
        ValueError: texts or a reference without an n-gram (all shorter than n characters).
    """
    p = Counter(t[i : i + n] for t in texts for i in range(len(t) - n + 1))
    q = Counter(reference[i : i + n] for i in range(len(reference) - n + 1))
    total_p, total_q = sum(p.values()), sum(q.values())
    if not total_p or not total_q:
        raise ValueError(f"no {n}-grams to compare: the texts are shorter than {n} characters")
    return 0.5 * sum(abs(p[g] / total_p - q[g] / total_q) for g in p.keys() | q.keys())


def text_quality(texts: Sequence[str], reference: str, vocabulary: frozenset[str]) -> dict:
    """Sample quality of texts without a model: "ngram_tv" {n: `ngram_distance`} against the
    reference (held-out) text for n in NGRAM_ORDERS, and "known_words", the fraction of the
    texts' words (`words`) that occur in `vocabulary` (the training text's words)."""
    found = [w for t in texts for w in words(t)]
    known = sum(w in vocabulary for w in found) / len(found) if found else math.nan
    tv = {str(n): ngram_distance(texts, reference, n) for n in NGRAM_ORDERS}
    return {"ngram_tv": tv, "known_words": known}


def _draw_text(model: GenerativeModel, run: _Run, steps: int | None) -> tuple[list[str], float]:
    """`settings.text_samples` texts of `settings.text_tokens` tokens (max_new_tokens where
    the family takes it; `steps` sampler steps) and the seconds per 1,000 characters."""
    options: dict[str, Any] = {"seed": run.seed}
    if "max_new_tokens" in model.sample_options:
        options["max_new_tokens"] = run.settings.text_tokens
    if steps is not None:
        options["steps"] = steps
    start = time.perf_counter()
    texts = model.sample(run.settings.text_samples, **options)
    seconds = time.perf_counter() - start
    if not (isinstance(texts, list) and all(isinstance(t, str) for t in texts)):
        raise ValueError(f"a text model's sample returned {type(texts).__name__}, not strings")
    return texts, 1000 * seconds / max(1, sum(len(t) for t in texts))


def _measure_text(model: GenerativeModel, record: dict[str, Any], run: _Run) -> dict[str, Any]:
    """A text family: bits/char of the test text (`evaluate_text`: exact, or a bound with its
    Monte-Carlo standard error), sampling seconds per 1,000 characters (at each of
    `settings.text_steps` for a family whose sample takes steps: the curve), and the samples'
    `text_quality`; the samples are kept for the reference model's scores (`_score_text`)."""
    family = record["family"]

    def nll() -> None:
        start = time.perf_counter()
        scores = model.evaluate_text(run.test_text)
        record.update(bits_per_char=scores["bits_per_char"], nll_seconds=time.perf_counter() -
                      start, bits_per_char_stderr=scores.get("bits_per_char_stderr"))  # fmt: skip
        record["details"]["text"] = scores

    _measure(record, "nll", nll)
    if run.text_reference is None and model.log_prob_kind == "exact":
        run.text_reference = (family, model)

    def samples() -> None:
        texts, per_1000 = _draw_text(model, run, None)
        run.text_samples[(family, None)] = texts
        quality = text_quality(texts, run.test_text, run.train_words)
        record.update(sample_seconds_per_1000_chars=per_1000, n_samples=len(texts),
                      nfe=model.nfe_, **quality)  # fmt: skip
        record["details"]["sample_examples"] = texts[:3]

    _measure(record, "samples", samples)

    def curve() -> None:
        points = []
        for steps in run.settings.text_steps:
            texts, per_1000 = _draw_text(model, run, steps)
            run.text_samples[(family, steps)] = texts
            points.append({"steps": steps, "nfe": model.nfe_, "seconds_per_1000_chars": per_1000,
                           "trigram_tv": ngram_distance(texts, run.test_text, 3)})  # fmt: skip
        record["nfe_curve"] = {"metric": "trigram_tv", "n_samples": run.settings.text_samples,
                               "points": points}  # fmt: skip

    if "steps" in model.sample_options:
        _measure(record, "nfe_curve", curve)
    if record["status"] == "partial":
        record["error"] = "; ".join(f"{k}: {v}" for k, v in record["errors"].items())
    return record


def _text_floor(run: _Run) -> dict[str, Any]:
    """Excerpts of the train text (as many as a family's samples, of text_tokens characters)
    measured like samples: the floor of the n-gram distances and of the reference's bits."""
    record = _new_record(run.name, FLOOR)
    n, length, text = run.settings.text_samples, run.settings.text_tokens, run.train.text
    g = torch.Generator().manual_seed(run.seed)
    starts = torch.randint(0, max(1, len(text) - length), (n,), generator=g).tolist()
    texts = [text[s : s + length] for s in starts]
    run.text_samples[(FLOOR, None)] = texts
    record["n_samples"] = n
    record.update(_measure(record, "quality", lambda: text_quality(
        texts, run.test_text, run.train_words)) or {})  # fmt: skip
    record["details"] = {"n_train": len(text), "n_test": len(run.test.text),
                         "test_chars_scored": len(run.test_text), "event_shape": [],
                         "kind": "text", "levels": None, "budget": str(run.budget),
                         "seed": run.seed}  # fmt: skip
    return record


def _score_text(records: list[dict[str, Any]], floor: dict[str, Any], run: _Run) -> None:
    """The reference model's bits/char of every family's samples, of each curve point's and of
    the floor's excerpts ("reference_bits_per_char"; the reference: the first family whose
    log_prob is exact, e.g. the autoregressive one; its own samples score about its entropy)."""
    if run.text_reference is None:
        raise ValueError("no family with an exact log_prob (e.g. autoregressive) to score samples")
    family, reference = run.text_reference
    floor["details"]["reference"] = family

    def bits(texts: list[str]) -> float | None:
        texts = [t for t in texts if t]
        if not texts:
            return None
        nats = -float(reference.log_prob(texts).double().sum())
        return nats / sum(len(t) for t in texts) / math.log(2)

    for r in [*records, floor]:
        texts = run.text_samples.get((r["family"], None))
        if texts is not None:
            r["reference_bits_per_char"] = _measure(r, "reference_bits_per_char",
                                                    lambda t=texts: bits(t))  # fmt: skip
        for point in (r.get("nfe_curve") or {}).get("points", []):
            point["reference_bits_per_char"] = bits(run.text_samples[(r["family"], point["steps"])])
        if r.get("nfe_curve"):
            r["nfe_curve"]["metric"] = "reference_bits_per_char"


# -- the floor row and the components study ------------------------------------------------------
def _floor_record(run: _Run) -> dict[str, Any]:
    """Real train samples (as many as a model's) against the test split: the metrics' floor."""
    record = _new_record(run.name, FLOOR)
    g = torch.Generator().manual_seed(run.seed)
    n = min(run.settings.n_samples, len(run.train))
    idx = torch.randperm(len(run.train), generator=g)[:n]
    samples = _rows(run.train)[idx].float()
    record["n_samples"] = n
    record.update(_measure(record, "quality", lambda: _quality(samples, run)) or {})
    record["details"] = {"n_train": len(run.train), "n_test": len(run.test),
                         "event_shape": list(run.train.event_shape), "kind": run.train.kind,
                         "levels": run.train.levels, "budget": str(run.budget),
                         "seed": run.seed}  # fmt: skip
    if run.table:
        rows = run.train.frame.iloc[idx.numpy()]
        _measure(record, "table_metrics", lambda: _table_quality(rows, record, run))
    c = run.classifier
    if c is not None:
        record["details"]["classifier"] = {"test_accuracy": c.accuracy, "cached": c.cached,
                                           "folder": None if c.folder is None else str(c.folder),
                                           "n_classes": c.n_classes,
                                           "rebuilt": c.rebuilt}  # fmt: skip
    path = run.figure("data-test")
    if path is not None:
        test = run.test_points
        if run.images:
            plots.sample_grid(test[:64], path, title="test data")
        elif run.train.event_shape == (2,):
            plots.scatter_2d(test[:1000], path, title="test data")
        else:
            path = None
        if path is not None:
            record["figures"]["samples"] = run.relative(path)
    return record


def _component_study(record: dict[str, Any], run: _Run) -> None:
    """Test NLL against components as the PCA dimension grows (`gmm_nll_vs_components`), for
    a family with `component_study`; the mixtures fit dequantised train points."""
    family, dim = record["family"], run.train.dim
    dims = run.settings.gmm_study_dims or tuple(
        sorted({2**i for i in range(1, int(math.log2(dim)) + 1)} | {dim})
    )
    train = _rows(dequantized(run.train, run.seed + 1))
    test = _rows(dequantized(run.test, run.seed))
    study = gmm_nll_vs_components(train, test, dims, run.settings.gmm_components, seed=run.seed,
                                  max_seconds=run.settings.gmm_study_seconds,
                                  device=run.device, family=family)  # fmt: skip
    record["details"]["nll_vs_components"] = study
    path = run.figure(f"{family}-nll-vs-components")
    title = f"{family}: test NLL vs components, PCA dimension d"
    if path is not None and plots.study_figure(study, path, title=title) is not None:
        record["figures"]["nll_vs_components"] = run.relative(path)


# -- the public entry points ----------------------------------------------------------------------
def check_families(families: str | Sequence[str]) -> list[str]:
    """The family names of a comparison (a comma-separated str or a sequence), checked.

    Raises:
        ValueError: no names, an empty name, or a name that is not registered (the message
            lists the registered families).
    """
    if isinstance(families, str):
        families = [f.strip() for f in families.split(",")]
    families = [str(f) for f in families]
    if not families or not all(families):
        raise ValueError("families must name at least one family, e.g. ['gmm', 'vae']")

    unknown = [f for f in families if not known_family(f)]
    if unknown:
        presets = sorted(p for cls in FAMILIES.values() for p in getattr(cls, "presets", {}))
        raise ValueError(
            f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(map(repr, unknown))}: "
            f"the families are {', '.join(sorted(FAMILIES))}"
            + (f" (and the presets {', '.join(presets)})" if presets else "")
        )
    return families


def known_family(name: str) -> bool:
    """Whether `name` is a registered family, a variant label or a preset (`resolve_name`)."""
    try:
        resolve_name(name)
    except KeyError:
        return False
    return True


def load_pair(
    data: str | os.PathLike | Dataset,
    test: Dataset | None = None,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
) -> tuple[Dataset, Dataset]:
    """The (train, test) pair compare measures on: a data set's two splits (`load_dataset`),
    or a train Dataset and its `test`; checked to be points, images of one shape or text, with
    at least 2 samples (characters) each. `genlab compare` loads every data set first, so
    that a bad name fails before anything trains.

    Raises:
        ValueError, FileNotFoundError: a data set that does not load (the message names it),
            splits of different kinds or shapes or with fewer than 2 samples.
    """
    if isinstance(data, Dataset):
        if test is None:
            raise ValueError("pass test=<Dataset> with a train Dataset (or a data set name)")
        train = data
    elif test is not None:
        raise ValueError("test= is only for a train Dataset; a named data set has its own split")
    else:
        train = load_dataset(data, split="train", n=n_train, seed=seed, root=root)
        test = load_dataset(data, split="test", n=n_test, seed=seed, root=root)
    if train.kind not in ("points", "image", "text") or test.kind != train.kind:
        raise ValueError(
            f"compare measures points, images and text; {train.name!r} holds {train.kind} data"
            f" and its test split {test.kind}"
        )
    if tuple(train.event_shape) != tuple(test.event_shape):
        raise ValueError(
            f"train and test samples differ in shape: {train.event_shape} vs {test.event_shape}"
        )
    if len(train) < 2 or len(test) < 2:
        raise ValueError("compare needs at least 2 train and 2 test samples")
    return train, test


def compare(
    data: str | Dataset,
    families: Sequence[str] = DEFAULT_FAMILIES,
    *,
    budget_seconds: float | None = None,
    budget_steps: int | None = None,
    test: Dataset | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    root: str | os.PathLike | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    settings: Settings | None = None,
    device: str | None = None,
    progress: bool = True,
    report: bool = True,
) -> list[dict[str, Any]]:
    """Fit each family on the train split with the same budget and measure it on the test split.

    Args:
        data: a data set name (`genlab.data.load_dataset`; with n_train, n_test, seed and
            root), or a train `Dataset` (then pass `test`).
        families: registry names (a name not registered is a ValueError), or variant
            labels "family:variant" (e.g. "flow:meanflow") to run a family a second time
            with the options given for that label (options={"flow:meanflow":
            {"objective": "meanflow"}}); its record's "family" is the label.
        budget_seconds: wall-clock training seconds of each family (a neural family's
            max_time; the GMM's BIC sweep stops once they are spent).
        budget_steps: optimisation steps of each neural family (max_steps). At least one of
            the two budgets is needed; with both, training stops at whichever ends first.
        test: the test `Dataset` when `data` is a Dataset.
        out: a folder for figures (out/figures/<data>/), records.json, report.html and
            report.md (with `report`); None writes nothing.
        seed: seeds of the models, the samplers, the dequantisation and the floor's draw.
        options: per-family (or per-variant-label) options for `fit_for_budget`, over the
            family's own defaults (e.g. {"vae": {"latent_dim": 8}}; options a caller gives
            win over the family's recipe for the data, `genlab.models.recipes`); the GMM gets
            {"components": settings.gmm_components, "extend_components":
            settings.gmm_extend} first (`settings_options`).
        settings: sample counts, grids and the classifier's training (`Settings`).
        device: "cpu" / "cuda" for every model and the classifier (None: cuda when present).
        progress: print what is happening and show the families' training progress bars.
        report: with `out`, write records.json, report.html and report.md.

    Returns:
        One record per family in the order given, then the floor row (family "data"): dicts
        with the keys `RECORD_KEYS`. status is "ok", "partial" (some measurement failed; see
        "errors"), "failed" (fitting failed; see "error") or "not applicable" (the family
        cannot model this kind of data; "error" says why).

    Raises:
        ValueError: an unknown family (`check_families`), a bad budget or settings, or data
            that does not load (`load_pair`), all before anything trains.
    """
    families = check_families(families)
    budget = Budget(budget_seconds, budget_steps)
    settings = settings or Settings()
    train, test = load_pair(data, test, n_train=n_train, n_test=n_test, seed=seed, root=root)
    run = _Run(train, test, _data_label(data, train), budget, int(seed), settings, options or {},
               None if out is None else Path(out), device, progress)  # fmt: skip
    test_points = _rows(test).float()
    run.test_points = _as_samples(test_points, run) if run.images else test_points
    if run.text:
        run.train_words = frozenset(words(train.text))
    target = settings.table_target
    if run.table and target is not None and target not in run.train.frame.columns:
        raise ValueError(
            f"table_target {target!r} is not a column of {run.name!r}; its columns are "
            f"{list(run.train.frame.columns)}"
        )
    floor_errors = {}
    if run.images and train.y is not None and test.y is not None:
        run.say(f"{run.name}: feature classifier (cache: {cache_root() / 'classifiers'})")
        try:
            run.classifier = feature_classifier(
                train, test, epochs=settings.classifier_epochs,
                seconds=settings.classifier_seconds, seed=run.seed, device=device,
            )  # fmt: skip
            run.test_features, _ = run.classifier.features_and_labels(run.test_points)
            run.say(f"{run.name}: classifier test accuracy {run.classifier.accuracy:.3f}")
        except Exception as e:
            floor_errors["classifier"] = _error_text(e)
    records = [_run_family(family, run) for family in families]
    for r in records:
        cls = family_class(r["family"])
        if cls.component_study and r["status"] in ("ok", "partial"):
            run.say(f"{run.name}: {r['family']} test NLL vs components as the dimension grows")
            _measure(r, "nll_vs_components", lambda r=r: _component_study(r, run))
    floor = _text_floor(run) if run.text else _floor_record(run)
    floor["errors"].update(floor_errors)
    if run.text:
        _measure(floor, "reference_bits_per_char", lambda: _score_text(records, floor, run))
    curves = {r["family"]: r["nfe_curve"] for r in records if r.get("nfe_curve")}
    path = run.figure("quality-vs-nfe")
    if curves and path is not None:
        metric = run.quality_metric
        label = QUALITY_LABELS.get(metric, metric)
        drawn = _measure(floor, "quality_vs_nfe",
                         lambda: plots.nfe_figure(curves, metric, path, ylabel=label))  # fmt: skip
        if drawn is not None:
            floor["figures"]["quality_vs_nfe"] = run.relative(drawn)
    records = [json_safe(r) for r in [*records, floor]]
    if out is not None and report:
        write_report(records, out)
    return records


def _data_label(data: str | Dataset, train: Dataset) -> str:
    name = train.name if isinstance(data, Dataset) else str(data)
    suffixes = (".npy", ".csv", ".parquet", ".pq")
    return Path(name).stem if Path(name).suffix in suffixes else (name or "data")
