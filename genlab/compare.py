"""Run model families on one data set with one budget, measure them alike, and write a report.

    from genlab.compare import compare
    records = compare("digits", ["gmm", "vae", "flow"], budget_seconds=60, out="runs/cmp")

(`out` gets report.html, report.md and records.json, written by `genlab.report`.)

Each family is fitted on the train split (neural families with `max_time` or `max_steps` set
to the budget; the GMM picks its number of components by BIC, fitting until the budget is
spent) and measured on the test split with `genlab.metrics`:

- NLL on one scale: bits/dim of the discrete data for quantised images (a density at
  uniformly dequantised test points, `metrics.discrete_bits_per_dim`; a log-mass, for models
  whose `log_prob_space` is "discrete", at the test points themselves), else of the density;
  each labelled with the family's `log_prob_kind` (exact, bound or estimate).
- Sample quality against the test split: MMD² and sliced W2 (and the energy distance) of the
  samples; for labelled images also, in the features of a small classifier trained on the
  train split (`feature_classifier`, cached on disk), the Fréchet distance, k-NN precision
  and recall, and the entropy of the classes it assigns to samples (class coverage). Image
  samples are first put on the data's grid (`metrics.quantize`), as an image file would.
- Cost: training seconds and steps, sampling seconds per 1,000 samples, the sampler's NFE
  (`model.nfe_` where the family counts it), parameters.

The floor row ("data") measures real train images against the same test split with the
same number of samples: what a model that samples the data distribution itself would score.
A family that is not registered is reported as "missing"; one that cannot model the data
(the autoregressive family on continuous points) as "not applicable", with the reason; one
that fails, with its error; the others go on. The records are plain dicts (JSON-able), one
per family plus the floor.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlab import metrics, plots
from genlab.data import Dataset, load_dataset
from genlab.measures import (
    TrainedClassifier,
    accepts,
    cache_root,
    dequantized,
    feature_classifier,
    gmm_nll_vs_components,
    held_out_nll,
)
from genlab.models import FAMILIES, GaussianMixture, GenerativeModel
from genlab.report import FLOOR, json_safe, nfe_figure, study_figure, write_report

DEFAULT_FAMILIES: tuple[str, ...] = ("gmm", "vae", "flow", "diffusion", "autoregressive")
RECORD_KEYS: tuple[str, ...] = (
    "data", "family", "status", "error", "log_prob_kind", "nll_space", "nll_nats",
    "bits_per_dim", "mmd", "sliced_wasserstein", "energy_distance", "fid", "precision", "recall",
    "class_entropy_bits", "train_seconds", "train_steps", "nll_seconds",
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

    def train_options(self) -> dict[str, Any]:
        """The `genlab.train.TrainConfig` fields max_time and max_steps."""
        return {"max_time": self.seconds, "max_steps": self.steps}

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
class Settings:
    """How much is measured (sample counts, grids, solver tolerance, the classifier's training)."""

    n_samples: int = 1000  # model samples per family (and train rows of the floor row)
    nfe_steps: tuple[int, ...] = (2, 5, 10, 20, 50)  # sampler steps of the quality-vs-NFE curve
    nfe_samples: int = 500  # samples per point of that curve
    gmm_components: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # the BIC sweep and the study's K
    gmm_study_dims: tuple[int, ...] | None = None  # None: 2, 4, 8, ... up to the data's dim
    gmm_study_seconds: float = 20.0  # the NLL-vs-components study stops after this
    density_grid: int = 60  # grid points per axis of the 2-D density plots
    max_nll_points: int | None = None  # test points for the NLL (None: all)
    ode_tolerance: float = 1e-4  # rtol = atol of log_prob's adaptive ODE solve (flow, diffusion)
    knn_k: int = 3  # the neighbour of k-NN precision and recall
    classifier_epochs: int = 15
    classifier_seconds: float = 120.0

    def __post_init__(self) -> None:
        minimum = {"n_samples": 2, "nfe_samples": 2, "density_grid": 2, "knn_k": 1,
                   "classifier_epochs": 1}  # fmt: skip
        for name, low in minimum.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        for name in ("nfe_steps", "gmm_components") + (
            ("gmm_study_dims",) if self.gmm_study_dims is not None else ()
        ):
            values = getattr(self, name)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
                raise ValueError(f"{name} must hold integers >= 1, got {values!r}")
        for name in ("ode_tolerance", "gmm_study_seconds", "classifier_seconds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ValueError(f"{name} must be a number > 0, got {v!r}")


# -- small helpers --------------------------------------------------------------------------------
def _rows(data: Dataset) -> torch.Tensor:
    """All rows of a data set's x as a tensor (reading a lazy `NpyArray`)."""
    return data.x if isinstance(data.x, torch.Tensor) else data.x[:]


def n_parameters(model: GenerativeModel) -> int:
    """The model's free parameters: its own count if it has one, else its tensors' sizes."""
    count = getattr(model, "n_parameters", None)
    if count is not None:
        return int(count)
    return sum(p.numel() for p in model.parameters())


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

    @property
    def images(self) -> bool:
        return self.train.kind == "image"

    @property
    def quality_metric(self) -> str:
        return "fid" if self.classifier is not None else "sliced_wasserstein"

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
        out["fid"] = metrics.frechet_distance(run.test_features, feats)
        out.update(metrics.precision_recall(run.test_features, feats, k=run.settings.knn_k))
        out["class_entropy_bits"] = metrics.class_entropy(labels, run.classifier.n_classes)
    return out


# -- fitting: a GMM by BIC, a neural family within the budget --------------------------------------
def _fit_gmm(train: Dataset, run: _Run, options: dict[str, Any]) -> tuple[GenerativeModel, dict]:
    """Fit full-covariance GMMs over `settings.gmm_components` (or options["n_components"])
    and keep the lowest BIC on the train split. With a budget of seconds the sweep stops
    before a K whose fit, predicted from the last one (cost ∝ K), would overrun it; EM has no
    step budget, so a step budget runs the whole sweep."""
    grid = [options.pop("n_components")] if "n_components" in options else None
    grid = grid or [k for k in run.settings.gmm_components if k <= len(train)]
    options = {"covariance_type": "full", "seed": run.seed, **options}
    if run.device is not None:
        options.setdefault("device", run.device)
    start, best, bics, last = time.perf_counter(), None, {}, None
    for k in grid:
        elapsed = time.perf_counter() - start
        seconds = run.budget.seconds
        if seconds is not None and last is not None and elapsed + last[1] * k / last[0] > seconds:
            bics[str(k)] = "skipped: predicted to overrun the budget (EM's cost grows with K)"
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = GaussianMixture(k, **options).fit(train, progress=False)
                bic = model.bic(train)
            except ValueError as e:  # e.g. a covariance that is not positive definite
                bics[str(k)] = _error_text(e)
                continue
        bics[str(k)], last = bic, (k, time.perf_counter() - start - elapsed)
        run.say(f"  gmm: K={k} BIC={bic:.6g} ({time.perf_counter() - start:.1f} s)")
        if best is None or bic < best[1]:
            best = (model, bic)
    if best is None:
        raise ValueError(f"no GMM could be fitted: {bics}")
    model = best[0]
    return model, {
        "n_components": model.config.n_components,
        "bic": bics,
        "converged": bool(model.converged_),
        "em_iterations": model.n_iter_,
    }


def _vae_defaults(train: Dataset) -> dict[str, Any]:
    quantised = train.kind == "image" and train.levels is not None
    return {"likelihood": "discretized"} if quantised else {"latent_dim": min(16, train.dim)}


SMALL_IMAGE_DIM = 256
"""Images of at most this many pixels (8 x 8 digits, 16 x 16) count as small: compare gives the
iterative families an MLP (the UNet costs 15-30x more CPU time per step there) and the
autoregressive family a 2-layer, 64-wide transformer, so that a budget of seconds trains them
for hundreds of steps rather than tens."""


def _flow_defaults(train: Dataset) -> dict[str, Any]:
    small = train.kind == "image" and train.dim <= SMALL_IMAGE_DIM
    return {"sample_steps": 20, "sample_method": "heun", **({"net": "mlp"} if small else {})}


def _diffusion_defaults(train: Dataset) -> dict[str, Any]:
    return {"net": "mlp"} if train.kind == "image" and train.dim <= SMALL_IMAGE_DIM else {}


def _autoregressive_defaults(train: Dataset) -> dict[str, Any]:
    return {"n_layer": 2, "n_embd": 64} if train.dim <= SMALL_IMAGE_DIM else {}


FAMILY_DEFAULTS: dict[str, Callable[[Dataset], dict[str, Any]]] = {
    "vae": _vae_defaults,
    "flow": _flow_defaults,
    "diffusion": _diffusion_defaults,
    "autoregressive": _autoregressive_defaults,
}
"""Constructor defaults inside compare, for short budgets (the caller's `options` override
them): a VAE with a discretised likelihood on quantised images; a flow sampled with 20 Heun
steps (40 NFE, near diffusion's 20-step DPM-Solver++ default in cost) instead of 50 (the
quality-vs-NFE curve shows other step counts); small nets on small images (`SMALL_IMAGE_DIM`)."""


def not_applicable(family: str, train: Dataset) -> str | None:
    """Why `family` cannot model `train` at all (None when it can)."""
    if family == "autoregressive" and (train.kind != "image" or train.levels is None):
        return (
            f"the autoregressive family models text and quantised images (pixel values on a "
            f"grid of levels); {train.name!r} holds continuous {train.kind}"
        )
    return None


def _fit_neural(
    family: str, train: Dataset, run: _Run, options: dict[str, Any]
) -> tuple[GenerativeModel, dict]:
    """Construct the family with the budget as max_time / max_steps and fit it on the train
    Dataset as `genlab fit` gives it (quantised images keep their `levels`: a family that
    models a density of them dequantises them itself, as flow does), without its labels."""
    kwargs = {
        **(FAMILY_DEFAULTS[family](train) if family in FAMILY_DEFAULTS else {}),
        "seed": run.seed,
        **run.budget.train_options(),
        **options,
    }
    if run.device is not None:
        kwargs.setdefault("device", run.device)
    model = FAMILIES[family](**kwargs)
    model.fit(dataclasses.replace(train, y=None), progress=run.progress)
    result = getattr(model, "train_result_", None)
    chosen = {
        k: v for k, v in kwargs.items() if k not in ("seed", "device", "max_time", "max_steps")
    }
    return model, {"steps": getattr(result, "steps", None), "options": chosen}


FITTERS: dict[str, Callable[[Dataset, _Run, dict], tuple[GenerativeModel, dict]]] = {
    "gmm": lambda train, run, options: _fit_gmm(dequantized(train, run.seed + 1), run, options),
}
"""Families fitted by a function of their own; every other family goes through `_fit_neural`."""


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
    if family not in FAMILIES:
        record.update(
            status="missing",
            error=f"family {family!r} is not registered "
            f"(registered: {', '.join(sorted(FAMILIES))})",
        )
        run.say(f"{family}: missing ({record['error']})")
        return record
    reason = not_applicable(family, run.train)
    if reason is not None:
        record.update(status="not applicable", error=reason)
        run.say(f"{family}: not applicable: {reason}")
        return record
    run.say(f"{family}: fitting on {len(run.train)} samples (budget {run.budget})")
    options = dict(run.options.get(family, {}))
    fitter = FITTERS.get(family, lambda train, r, o: _fit_neural(family, train, r, o))
    start = time.perf_counter()
    try:
        model, details = fitter(run.train, run, options)
    except Exception as e:
        record.update(
            status="failed", error=_error_text(e), details={"traceback": traceback.format_exc()}
        )
        run.say(f"{family}: failed: {record['error']}")
        return record
    model.eval()
    record["train_seconds"] = time.perf_counter() - start
    record["train_steps"] = details.pop("steps", None)
    record["details"] = details
    record["log_prob_kind"] = model.log_prob_kind
    record["n_parameters"] = _measure(record, "n_parameters", lambda: n_parameters(model))
    run.say(f"{family}: fitted in {record['train_seconds']:.1f} s; measuring")
    _measure(record, "nll", lambda: _measure_nll(model, record, run))
    samples = _measure(record, "samples", lambda: _measure_samples(model, record, run))
    if samples is not None:
        quality = _measure(record, "quality", lambda: _quality(samples, run))
        record.update(quality or {})
        _measure(record, "figures", lambda: _family_figures(model, samples, record, run))
    if accepts(model.sample, "steps"):
        _measure(record, "nfe_curve", lambda: _nfe_curve(model, record, run))
    if record["status"] == "partial":
        record["error"] = "; ".join(f"{k}: {v}" for k, v in record["errors"].items())
    return record


def _measure_nll(model: GenerativeModel, record: dict[str, Any], run: _Run) -> None:
    test = run.test
    limit = run.settings.max_nll_points
    if limit is not None and limit < len(test):
        test = dataclasses.replace(test, x=_rows(test)[:limit], y=None)
    start = time.perf_counter()
    tol = run.settings.ode_tolerance
    result = held_out_nll(model, test, run.seed, rtol=tol, atol=tol)
    record.update(
        nll_nats=result.nll,
        bits_per_dim=result.bits_per_dim,
        nll_space=result.space,
        nll_seconds=time.perf_counter() - start,
    )


def _measure_samples(model: GenerativeModel, record: dict[str, Any], run: _Run) -> torch.Tensor:
    n = run.settings.n_samples
    start = time.perf_counter()
    samples = model.sample(n, seed=run.seed)
    seconds = time.perf_counter() - start
    record.update(
        sample_seconds_per_1000=seconds * 1000 / n, n_samples=n, nfe=getattr(model, "nfe_", None)
    )
    if tuple(samples.shape) != (n, *run.train.event_shape):
        raise ValueError(f"sample({n}) returned shape {tuple(samples.shape)}")
    return _as_samples(samples, run)


def _nfe_curve(model: GenerativeModel, record: dict[str, Any], run: _Run) -> None:
    """Sample at each of `settings.nfe_steps` and record (steps, NFE, quality, seconds)."""
    curve, metric = [], run.quality_metric
    n = run.settings.nfe_samples
    for steps in run.settings.nfe_steps:
        start = time.perf_counter()
        samples = _as_samples(model.sample(n, seed=run.seed, steps=steps), run)
        seconds = time.perf_counter() - start
        nfe = getattr(model, "nfe_", None)
        quality = _quality(samples, run)
        curve.append({"steps": steps, "nfe": nfe, metric: quality[metric], "seconds": seconds})
    record["nfe_curve"] = {"metric": metric, "n_samples": n, "points": curve}


DENSITY_PLOT_SOLVER = {"method": "rk4", "steps": 16}
"""log_prob options of the 2-D density pictures, for families whose log_prob integrates an
ODE (it takes `method` and `steps`): a fixed-step solver, which is enough for a picture and
much faster than the default adaptive one on a grid of thousands of points."""


def _density_fn(model: GenerativeModel) -> tuple[Callable[[np.ndarray], torch.Tensor], str]:
    """log_prob for a density picture of 2-D points, and a note on how it was computed."""
    kwargs = {}
    if all(accepts(model.log_prob, k) for k in DENSITY_PLOT_SOLVER):
        kwargs = dict(DENSITY_PLOT_SOLVER)

    def log_prob(points: np.ndarray) -> torch.Tensor:
        return model.log_prob(torch.from_numpy(points).float(), **kwargs).detach().cpu()

    note = f" ({kwargs['method']}, {kwargs['steps']} steps)" if kwargs else ""
    return log_prob, note


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
            plots.density_2d(
                log_prob,
                path,
                samples=samples[:1000],
                data=run.test_points[:1000],
                grid=run.settings.density_grid,
                title=f"{family}: density{note} and samples",
            )
            record["figures"]["density"] = run.relative(path)


# -- the floor row and the GMM study --------------------------------------------------------------
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
    c = run.classifier
    if c is not None:
        record["details"]["classifier"] = {"test_accuracy": c.accuracy, "cached": c.cached,
                                           "folder": None if c.folder is None else str(c.folder),
                                           "n_classes": c.n_classes}  # fmt: skip
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


def _gmm_study(record: dict[str, Any], run: _Run) -> None:
    dim = run.train.dim
    dims = run.settings.gmm_study_dims or tuple(
        sorted({2**i for i in range(1, int(math.log2(dim)) + 1)} | {dim})
    )
    train = _rows(dequantized(run.train, run.seed + 1))
    test = _rows(dequantized(run.test, run.seed))
    study = gmm_nll_vs_components(train, test, dims, run.settings.gmm_components, seed=run.seed,
                                  max_seconds=run.settings.gmm_study_seconds,
                                  device=run.device)  # fmt: skip
    record["details"]["nll_vs_components"] = study
    path = run.figure("gmm-nll-vs-components")
    if path is not None and study_figure(study, path) is not None:
        record["figures"]["nll_vs_components"] = run.relative(path)


# -- the public entry points ----------------------------------------------------------------------
def _load_pair(data: str | Dataset, test: Dataset | None, n_train, n_test, seed, root):
    if isinstance(data, Dataset):
        if test is None:
            raise ValueError("pass test=<Dataset> with a train Dataset (or a data set name)")
        return data, test
    if test is not None:
        raise ValueError("test= is only for a train Dataset; a named data set has its own split")
    train = load_dataset(data, split="train", n=n_train, seed=seed, root=root)
    return train, load_dataset(data, split="test", n=n_test, seed=seed, root=root)


def _check_data(train: Dataset, test: Dataset) -> None:
    if train.kind not in ("points", "image"):
        raise ValueError(
            f"compare measures points and images; {train.name!r} holds {train.kind} data"
        )
    if tuple(train.event_shape) != tuple(test.event_shape):
        raise ValueError(
            f"train and test samples differ in shape: {train.event_shape} vs {test.event_shape}"
        )
    if len(train) < 2 or len(test) < 2:
        raise ValueError("compare needs at least 2 train and 2 test samples")


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
        families: registry names; names not registered are reported as "missing".
        budget_seconds: wall-clock training seconds of each neural family (max_time); the GMM's
            BIC sweep stops once they are spent.
        budget_steps: optimisation steps of each neural family (max_steps). At least one of
            the two budgets is needed; with both, training stops at whichever ends first.
        test: the test `Dataset` when `data` is a Dataset.
        out: a folder for figures (out/figures/<data>/), records.json, report.html and
            report.md (with `report`); None writes nothing.
        seed: seeds of the models, the samplers, the dequantisation and the floor's draw.
        options: per-family constructor keyword arguments that override the defaults (e.g.
            {"vae": {"latent_dim": 8}}); for the GMM, `n_components` skips the BIC sweep.
        settings: sample counts, grids and the classifier's training (`Settings`).
        device: "cpu" / "cuda" for every model and the classifier (None: cuda when present).
        progress: print what is happening and show the families' training progress bars.
        report: with `out`, write records.json, report.html and report.md.

    Returns:
        One record per family in the order given, then the floor row (family "data"): dicts
        with the keys `RECORD_KEYS`. status is "ok", "partial" (some measurement failed; see
        "errors"), "failed" (fitting failed; see "error"), "missing" (not registered) or
        "not applicable" (the family cannot model this kind of data; "error" says why).
    """
    if isinstance(families, str):
        families = [f.strip() for f in families.split(",")]
    families = [str(f) for f in families]
    if not families or not all(families):
        raise ValueError("families must name at least one family, e.g. ['gmm', 'vae']")
    budget = Budget(budget_seconds, budget_steps)
    settings = settings or Settings()
    train, test = _load_pair(data, test, n_train, n_test, seed, root)
    _check_data(train, test)
    run = _Run(train, test, _data_label(data, train), budget, int(seed), settings, options or {},
               None if out is None else Path(out), device, progress)  # fmt: skip
    test_points = _rows(test).float()
    run.test_points = _as_samples(test_points, run) if run.images else test_points
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
    gmm = next((r for r in records if r["family"] == "gmm"), None)
    if gmm is not None and gmm["status"] in ("ok", "partial"):
        run.say(f"{run.name}: GMM test NLL vs components as the PCA dimension grows")
        _measure(gmm, "nll_vs_components", lambda: _gmm_study(gmm, run))
    floor = _floor_record(run)
    floor["errors"].update(floor_errors)
    curves = {r["family"]: r["nfe_curve"] for r in records if r.get("nfe_curve")}
    path = run.figure("quality-vs-nfe")
    if curves and path is not None:
        metric = run.quality_metric
        drawn = _measure(floor, "quality_vs_nfe", lambda: nfe_figure(curves, metric, path))
        if drawn is not None:
            floor["figures"]["quality_vs_nfe"] = run.relative(drawn)
    records = [json_safe(r) for r in [*records, floor]]
    if out is not None and report:
        write_report(records, out)
    return records


def _data_label(data: str | Dataset, train: Dataset) -> str:
    name = train.name if isinstance(data, Dataset) else str(data)
    return Path(name).stem if Path(name).suffix in (".npy", ".csv") else (name or "data")
