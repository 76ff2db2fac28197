"""Model + data set -> numbers: what `genlab eval` and `genlab compare` measure, beyond the
tensor-in functions of `genlab.metrics`:

- `held_out_nll`: the test NLL on one bits/dim scale for densities and log-masses alike;
- `evaluate_model`: `genlab eval`'s record (the NLL and the sample metrics, or a text
  model's scores);
- `feature_classifier`: the feature space of image samples. A small `FeatureClassifier`
  (genlab/nets/classifier.py) is trained on the labelled train split; its penultimate layer is
  the space of the Fréchet distance and of k-NN precision/recall, and its predicted labels give
  the class coverage of samples. It is cached on disk (config.json + model.safetensors, no
  pickle), keyed by a hash of the train split and of the recipe, so it is trained once; a
  cache entry that does not load or does not match its recipe is rebuilt, with a warning;
- `gmm_nll_vs_components`: where a Gaussian mixture stops being enough as the dimension grows
  (fitted through the family's own `sweep`), and, next to the BIC sweep, how many components a
  Dirichlet-process mixture keeps (model selection without BIC).

Nothing here names a family class: a model says what it accepts (`log_prob_options`,
`log_prob_space`, `is_text`) and families are found in `genlab.models.FAMILIES`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import safetensors.torch
import torch

from genlab import metrics
from genlab.data import Dataset
from genlab.models import FAMILIES, GenerativeModel
from genlab.nets.classifier import FeatureClassifier

CLASSIFIER_VERSION = 1
CACHE_ENV = "GENLAB_CACHE"
ARCHITECTURE = {"feature_dim": 128, "channels": [32, 64]}
BATCH_SIZE = 128
LR = 2e-3
MAX_CLASSES = 1000  # labels beyond max(this, train samples) are not class indices


# -- the NLL on one scale (shared by `genlab eval` and compare) -----------------------------------
class HeldOutNLL(NamedTuple):
    """Test NLL of a model: nats per sample, bits/dim, what the bits/dim measure, and the points
    log_prob was evaluated at ((n, *event_shape): dequantised for densities of quantised data)."""

    nll: float
    bits_per_dim: float
    space: str
    points: torch.Tensor


def dequantized(data: Dataset, seed: int) -> Dataset:
    """Quantised data (levels set) with uniform noise: (k + u) / levels; other data unchanged."""
    if data.levels is None:
        return data
    g = torch.Generator().manual_seed(seed)
    x = metrics.dequantize(_rows(data), data.levels, generator=g)
    return dataclasses.replace(data, x=x)


def held_out_nll(
    model: GenerativeModel, test: Dataset, seed: int = 0, **log_prob_options: Any
) -> HeldOutNLL:
    """The test NLL of `model` on one bits/dim scale.

    For quantised data (`test.levels` set), a density (`log_prob_space` "continuous") is
    evaluated at test points dequantised with `seed` and bits/dim are those of the discrete
    data (`metrics.discrete_bits_per_dim`, an upper bound in expectation); a model whose
    `log_prob_space` is "discrete" gives log-masses of the quantised points themselves.
    Otherwise the bits/dim are the continuous density's. Of `log_prob_options` (e.g. an ODE
    solver's rtol and atol), those the model declares in `model.log_prob_options` go to
    `model.log_prob`; the others are dropped, so one call serves every family.
    """
    x = _rows(test)
    discrete = model.log_prob_space == "discrete"
    at = x if discrete else _rows(dequantized(test, seed))
    accepted = model.log_prob_options
    options = {k: v for k, v in log_prob_options.items() if k in accepted}
    log_p = model.log_prob(at, **options).detach().cpu()
    nll = metrics.nll(log_p)
    if test.levels is None or discrete:
        bpd = metrics.bits_per_dim(nll, test.dim)
    else:
        bpd = metrics.discrete_bits_per_dim(log_p, test.dim, test.levels)
    if test.levels is None:
        space = "continuous density"
    else:
        space = "discrete (log-mass)" if discrete else "discrete (dequantised density)"
    return HeldOutNLL(nll, bpd, space, at)


def _evaluate_text(model: GenerativeModel, test: Dataset) -> dict[str, Any]:
    """A text model on a text: its `evaluate_text` scores (loss in nats/char, exact;
    bits_per_char; window_loss, nanoGPT's validation loss; counts) with what was measured."""
    if test.kind != "text" or not model.is_text:
        raise ValueError(
            f"a text model needs text data (--data text:FILE.txt) and text data a text model; "
            f"got a {model.family} model and {test.kind} data"
        )
    scores = model.evaluate_text(test)
    return {"family": model.family, "data": test.name, "n_test": len(test),
            "log_prob_kind": model.log_prob_kind, **scores}  # fmt: skip


def _table_test(model: GenerativeModel, test: Dataset) -> Dataset:
    """A table's test split encoded as the model encodes its rows: re-encoded by the model's
    `table_transform_` when it differs from the one the split was encoded with (a model
    fitted on another table file); any other data set as it is."""
    transform = getattr(model, "table_transform_", None)
    if getattr(test, "frame", None) is None or transform is None:
        return test
    if test.transform is not None and test.transform.to_json() == transform.to_json():
        return test
    from genlab.data.tables import table_dataset

    return table_dataset(test.frame, transform, name=test.name)


def evaluate_table(
    model: GenerativeModel,
    samples: torch.Tensor,
    train: Dataset,
    test: Dataset,
    *,
    target: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The table metrics (`genlab.table_metrics.table_metrics`) of a table model's encoded
    samples, decoded by its transform (else the test split's): fidelity and dependence against
    `test.frame`, ML efficacy of `target` (None: not measured) trained on the samples vs on
    `train.frame`, and the DCR test of the samples against `train.frame` with `test.frame` as
    the holdout.

    Returns:
        The flat `table_metrics.SUMMARY_KEYS` and "table_details".
    """
    from genlab import table_metrics

    transform = getattr(model, "table_transform_", None) or test.transform
    frame = transform.inverse_transform(samples)
    return table_metrics.table_metrics(train.frame, test.frame, frame, target=target, seed=seed)


def evaluate_model(
    model: GenerativeModel,
    test: Dataset,
    seed: int,
    train: Dataset | None = None,
    target: str | None = None,
) -> dict[str, Any]:
    """`genlab eval`'s record: test NLL (nats/sample), bits/dim and sample metrics.

    For quantised data (`test.levels` set) a density is evaluated at dequantised test points
    and bits_per_dim is that of the discrete data (an upper bound in expectation); a model
    whose `log_prob_space` is "discrete" is evaluated on the quantised points directly;
    otherwise bits_per_dim is the continuous density's (`held_out_nll`). The sample metrics
    (`metrics.sample_metrics`: MMD², sliced W2, energy distance) compare `len(test)` model
    samples, drawn with `seed`, with the points the NLL was evaluated at. A text model (or
    text data) reports the model's `evaluate_text(test)` instead. On a table (a
    `genlab.data.tables.TableDataset`) the NLL and sample metrics are those of the encoded
    rows (encoded as the model encodes them), and with the `train` split the table metrics
    are added (`evaluate_table`; ML efficacy predicts `target`, None: not measured).

    Returns:
        {"family", "data", "n_test", "log_prob_kind", "nll", "bits_per_dim", "mmd",
        "sliced_wasserstein", "energy_distance"} (a text model: its scores instead of the
        last five), and for a table with `train` the `table_metrics.SUMMARY_KEYS` and
        "table_details".

    Raises:
        ValueError: a text model on numbers, or a model of numbers on text; a `target` that
            is not a column.
    """
    if test.kind == "text" or model.is_text:
        return _evaluate_text(model, test)
    test = _table_test(model, test)
    table = getattr(test, "frame", None) is not None
    if table and target is not None and target not in test.frame.columns:
        raise ValueError(
            f"--target {target!r} is not a column of the table; its columns are "
            f"{list(test.frame.columns)}"
        )
    held_out = held_out_nll(model, test, seed)
    options = {"as_frame": False} if table else {}
    samples = model.sample(len(test), seed=seed, **options).detach().cpu()
    record = {
        "family": model.family,
        "data": test.name,
        "n_test": len(test),
        "log_prob_kind": model.log_prob_kind,
        "nll": held_out.nll,
        "bits_per_dim": held_out.bits_per_dim,
        **metrics.sample_metrics(samples, held_out.points.cpu(), seed=seed),
    }
    if table and train is not None:
        record.update(evaluate_table(model, samples, train, test, target=target, seed=seed))
    return record


# -- the feature classifier -----------------------------------------------------------------------
@dataclass
class TrainedClassifier:
    """A `FeatureClassifier` trained on a train split, with its test accuracy and cache folder
    (`cached`: loaded from it; `rebuilt`: why the cache entry found there was replaced)."""

    net: FeatureClassifier
    n_classes: int
    accuracy: float
    folder: Path | None
    cached: bool
    rebuilt: str | None = None

    @torch.no_grad()
    def features_and_labels(
        self, x: torch.Tensor, batch: int = 1024
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (n, feature_dim) float64 on the CPU, predicted labels (n,) int64)."""
        self.net.eval()
        device = next(self.net.parameters()).device
        feats, labels = [], []
        for start in range(0, len(x), batch):
            f = self.net.features(x[start : start + batch].to(device, torch.float32))
            feats.append(f.double().cpu())
            labels.append(self.net.head(f).argmax(1).cpu())
        return torch.cat(feats), torch.cat(labels)


def cache_root() -> Path:
    """`$GENLAB_CACHE`, else ~/.cache/genlab."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "genlab")


def _rows(data: Dataset) -> torch.Tensor:
    return data.x if isinstance(data.x, torch.Tensor) else data.x[:]


def classifier_key(train: Dataset, epochs: int, seed: int) -> str:
    """A folder name: the data set's name and a hash of its shape, values and labels and of
    the classifier's recipe (so another split or data set gets a classifier of its own)."""
    x, y = _rows(train).float().contiguous(), train.y
    recipe = {"name": train.name, "shape": list(x.shape), "levels": train.levels, "seed": seed,
              "version": CLASSIFIER_VERSION, "epochs": epochs, **ARCHITECTURE}  # fmt: skip
    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    h.update(x.numpy().tobytes())
    h.update(y.numpy().astype(np.int64).tobytes())
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(train.name).stem or "data")[:40]
    return f"{stem}-{h.hexdigest()[:16]}"


def train_classifier(
    net: FeatureClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    seconds: float,
    seed: int,
) -> None:
    """Minimise the cross-entropy with AdamW (batches of `BATCH_SIZE`, learning rate `LR`) for
    `epochs` passes, stopping early after the first epoch that ends past `seconds`."""
    device = next(net.parameters()).device
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(BATCH_SIZE):
            logits = net(x[idx].to(device))
            loss = torch.nn.functional.cross_entropy(logits, y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if time.perf_counter() - start > seconds:
            break
    net.eval()


def feature_classifier(
    train: Dataset,
    test: Dataset,
    *,
    epochs: int = 15,
    seconds: float = 120.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    cache: bool = True,
) -> TrainedClassifier:
    """The feature classifier of a labelled image data set: loaded from the cache, or trained.

    The cache is `cache_root()/classifiers/<name>-<hash>/` (config.json + model.safetensors).
    The accuracy reported is on `test` (measured when the classifier is trained). A cache
    entry that does not load (truncated, edited, of another recipe: `load_cached`) is
    deleted and rebuilt, with a warning "rebuilt the feature classifier cache at ...".

    Raises:
        ValueError: the data set has no labels.
    """
    if train.y is None or test.y is None:
        raise ValueError(f"{train.name!r} has no labels: a feature classifier needs them")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    low, high = int(min(train.y.min(), test.y.min())), int(max(train.y.max(), test.y.max()))
    limit = max(MAX_CLASSES, len(train))
    if low < 0 or high >= limit:
        raise ValueError(
            f"{train.name!r}: labels must be class indices 0..K-1 with K at most {limit}; "
            f"they span [{low}, {high}]"
        )
    n_classes = high + 1
    folder = cache_root() / "classifiers" / classifier_key(train, epochs, seed)
    arch = {"event_shape": list(train.event_shape), "n_classes": n_classes, **ARCHITECTURE}
    rebuilt = None
    if cache and (folder.exists() or folder.is_symlink()):
        try:
            net, accuracy = load_cached(folder, arch)
            return TrainedClassifier(net.to(device).eval(), n_classes, accuracy, folder, True)
        except ValueError as e:
            rebuilt = str(e)
            _discard(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureClassifier(**arch).to(device)
    x, y = _rows(train).float(), train.y.long()
    train_classifier(net, x, y, epochs=epochs, seconds=seconds, seed=seed)
    result = TrainedClassifier(net, n_classes, 0.0, None, False, rebuilt)
    _, predicted = result.features_and_labels(_rows(test))
    result.accuracy = float((predicted == test.y.cpu()).double().mean())
    if cache:
        config = {**arch, "test_accuracy": result.accuracy, "data": train.name,
                  "n_train": len(train), "version": CLASSIFIER_VERSION}  # fmt: skip
        result.folder = _save_classifier(net, config, folder)
        if rebuilt is not None:
            warnings.warn(
                f"rebuilt the feature classifier cache at {folder}: it was corrupt ({rebuilt})",
                stacklevel=2,
            )
    return result


def load_cached(folder: Path, arch: dict[str, Any]) -> tuple[FeatureClassifier, float]:
    """(net, test accuracy) of a cache entry written by `feature_classifier` for `arch`.

    Raises:
        ValueError: saying what is wrong: a missing or unreadable file, a config.json of
            another recipe (version, architecture) or without a test accuracy in [0, 1],
            tensors that do not fit the net, or tensors holding NaN or infinity.
    """
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"config.json: {type(e).__name__}: {e}") from None
    if not isinstance(config, dict):
        raise ValueError("config.json does not hold an object")
    for key, value in {**arch, "version": CLASSIFIER_VERSION}.items():
        if config.get(key) != value:
            raise ValueError(f"config.json has {key}={config.get(key)!r}, expected {value!r}")
    accuracy = config.get("test_accuracy")
    if (
        isinstance(accuracy, bool)
        or not isinstance(accuracy, int | float)
        or not 0 <= accuracy <= 1
    ):
        raise ValueError(f"config.json has test_accuracy={accuracy!r}, not a number in [0, 1]")
    try:
        state = safetensors.torch.load_file(folder / "model.safetensors")
    except Exception as e:  # safetensors raises its own error types for torn files
        raise ValueError(f"model.safetensors: {type(e).__name__}: {e}") from None
    net = FeatureClassifier(**arch)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        message = " ".join(str(e).split())[:300]
        raise ValueError(f"model.safetensors does not fit the net: {message}") from None
    if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
        raise ValueError("model.safetensors holds NaN or infinity")
    return net, float(accuracy)


def _discard(folder: Path) -> None:
    """Remove a corrupt cache entry (moved aside first, so no reader sees half of it)."""
    aside = folder.with_name(f"{folder.name}.corrupt-{os.getpid()}")
    os.replace(folder, aside)
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside)
    else:
        aside.unlink()


def _save_classifier(net: FeatureClassifier, config: dict[str, Any], folder: Path) -> Path:
    """Write config.json + model.safetensors into a temporary folder, then rename it into place
    (a concurrent writer of the same key loses the race harmlessly)."""
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    safetensors.torch.save_file(state, tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    try:
        os.replace(tmp, folder)
    except OSError:  # another process put it there first
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
    return folder


# -- the GMM study -------------------------------------------------------------------------------
def _bits(fit: dict[str, Any] | None, d: int) -> float | None:
    """A sweep entry's mean test NLL in bits per dimension, or None (skipped, failed, inf)."""
    if not fit or fit.get("error") or fit.get("skipped") or fit.get("test_nll") is None:
        return None
    nll = float(fit["test_nll"])
    return metrics.bits_per_dim(nll, d) if math.isfinite(nll) else None


def gmm_nll_vs_components(
    train: torch.Tensor,
    test: torch.Tensor,
    dims: Sequence[int],
    components: Sequence[int],
    *,
    seed: int = 0,
    max_seconds: float = math.inf,
    device: str | None = None,
    family: str = "gmm",
    selection_family: str | None = "bgmm",
) -> dict[str, Any]:
    """Test NLL (bits per dimension) of mixtures with K components on the data projected by PCA.

    The data are centred by the train mean and projected on the top-d principal axes of the
    train split, for each d in `dims`; the family's `sweep` (the GMM's: full covariances, one
    EM fit per K in `components`) fits the projected train split and scores the projected
    test split, and its mean test NLL divided by d ln 2 is recorded (bits/dim of a continuous
    density of the projected data). Where the curve in K turns up, more components overfit:
    a mixture stops being enough at that dimension. The study stops after `max_seconds`: each
    sweep gets what is left, and skips a K it predicts (cost ∝ K d²) to overrun it (None).

    Args:
        train: (n, D) continuous train points (dequantised images, flattened).
        test: (m, D) test points.
        dims: projection dimensions (those above D are dropped).
        components: numbers of components K.
        family: the registry name of a family with a components sweep (`component_study`).
        selection_family: the registry name of a family that selects its own number of
            components (`select_components`: the Dirichlet-process mixture), fitted after each
            sweep with K = max(components) on the time left: model selection without BIC,
            shown next to the sweep. None (or a name not registered): not fitted.

    Returns:
        {"dims": [d...], "components": [K...], "test_bits_per_dim": [[bpd or None per K] per
        d], "seconds": float}, and with a selection family "bic_free": {"family",
        "n_components": K, "effective_components": [components kept (weight > 1e-2) or None
        per d], "test_bits_per_dim": [bpd or None per d], "notes": [None or why not, per d]}.
    """
    sweep = FAMILIES[family].sweep
    train = train.reshape(len(train), -1).double()
    test = test.reshape(len(test), -1).double()
    mean = train.mean(0)
    _, _, vh = torch.linalg.svd(train - mean, full_matrices=False)
    dims = [d for d in dims if d <= train.shape[1]]
    components = [int(k) for k in components]
    selector = selection_family if selection_family in FAMILIES else None
    free = {"family": selector, "n_components": max(components, default=1),
            "effective_components": [], "test_bits_per_dim": [], "notes": []}  # fmt: skip
    start, table = time.perf_counter(), []
    for d in dims:
        left = max_seconds - (time.perf_counter() - start)
        if left <= 0:
            table.append([None] * len(components))
            _add_bic_free(free, (None, None, "skipped: the study's time was spent"))
            continue
        axes = vh[:d].T
        tr, te = (train - mean) @ axes, (test - mean) @ axes
        fits = sweep(tr, components, test=te, seed=seed, max_seconds=left, device=device)
        by_k = {int(f["n_components"]): f for f in fits}
        table.append([_bits(by_k.get(k), d) for k in components])
        if selector is not None:
            left = max_seconds - (time.perf_counter() - start)
            cell = _bic_free(selector, tr, te, fits, free["n_components"], seed=seed,
                             left=left, device=device)  # fmt: skip
            _add_bic_free(free, cell)
    study = {
        "dims": dims,
        "components": components,
        "test_bits_per_dim": table,
        "seconds": time.perf_counter() - start,
    }
    return {**study, "bic_free": free} if selector is not None else study


def _add_bic_free(free: dict[str, Any], cell: tuple[Any, Any, Any]) -> None:
    for key, value in zip(("effective_components", "test_bits_per_dim", "notes"), cell,
                          strict=True):  # fmt: skip
        free[key].append(value)


def _bic_free(
    family: str,
    train: torch.Tensor,
    test: torch.Tensor,
    fits: Sequence[dict[str, Any]],
    k: int,
    *,
    seed: int,
    left: float,
    device: str | None,
) -> tuple[int | None, float | None, str | None]:
    """(components kept, test bits/dim, None) of one `select_components` fit with K = k, or
    (None, None, why): skipped when no time is left or when the sweep's largest fit predicts
    (cost ∝ K) that it would overrun; a failed fit gives its error."""
    if left <= 0:
        return None, None, "skipped: the study's time was spent"
    done = [f for f in fits if f.get("model") is not None and f.get("seconds")]
    if done:
        last = max(done, key=lambda f: f["n_components"])
        if last["seconds"] * k / last["n_components"] > left:
            return None, None, f"skipped: predicted to overrun the study's time (K={k})"
    record = FAMILIES[family].select_components(train, k, test=test, seed=seed,
                                                max_seconds=left, device=device)  # fmt: skip
    if record["error"]:
        return None, None, record["error"]
    return record["effective_components"], _bits(record, train.shape[1]), None
