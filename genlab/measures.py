"""What `genlab compare` and `genlab eval` measure with a model or a data set, beyond the
tensor-in functions of `genlab.metrics`:

- `held_out_nll`: the test NLL on one bits/dim scale for densities and log-masses alike;
- `feature_classifier`: the feature space of image samples. A small `FeatureClassifier`
  (genlab/nets/classifier.py) is trained on the labelled train split; its penultimate layer is
  the space of the Fréchet distance and of k-NN precision/recall, and its predicted labels give
  the class coverage of samples. It is cached on disk (config.json + model.safetensors, no
  pickle), keyed by a hash of the train split and of the recipe, so it is trained once;
- `gmm_nll_vs_components`: where a Gaussian mixture stops being enough as the dimension grows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import re
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
from genlab.models import GaussianMixture, GenerativeModel
from genlab.nets.classifier import FeatureClassifier

CLASSIFIER_VERSION = 1
CACHE_ENV = "GENLAB_CACHE"
ARCHITECTURE = {"feature_dim": 128, "channels": [32, 64]}
BATCH_SIZE = 128
LR = 2e-3


# -- the NLL on one scale (shared with `genlab eval`) ---------------------------------------------
def accepts(fn: Any, name: str) -> bool:
    """Whether the callable `fn` takes a keyword argument `name` (or **kwargs)."""
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


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
    Otherwise the bits/dim are the continuous density's. `log_prob_options` (e.g. an ODE
    solver's rtol and atol) go to `model.log_prob` where its signature takes them.
    """
    x = _rows(test)
    discrete = model.log_prob_space == "discrete"
    at = x if discrete else _rows(dequantized(test, seed))
    options = {k: v for k, v in log_prob_options.items() if accepts(model.log_prob, k)}
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


# -- the feature classifier -----------------------------------------------------------------------
@dataclass
class TrainedClassifier:
    """A `FeatureClassifier` trained on a train split, with its test accuracy and cache folder."""

    net: FeatureClassifier
    n_classes: int
    accuracy: float
    folder: Path | None
    cached: bool

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
    The accuracy reported is on `test` (measured when the classifier is trained).

    Raises:
        ValueError: the data set has no labels.
    """
    if train.y is None or test.y is None:
        raise ValueError(f"{train.name!r} has no labels: a feature classifier needs them")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n_classes = int(max(int(train.y.max()), int(test.y.max()))) + 1
    folder = cache_root() / "classifiers" / classifier_key(train, epochs, seed)
    arch = {"event_shape": list(train.event_shape), "n_classes": n_classes, **ARCHITECTURE}
    if cache and (folder / "model.safetensors").is_file():
        config = json.loads((folder / "config.json").read_text())
        net = FeatureClassifier(**arch)
        net.load_state_dict(safetensors.torch.load_file(folder / "model.safetensors"))
        net = net.to(device).eval()
        return TrainedClassifier(net, n_classes, float(config["test_accuracy"]), folder, True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureClassifier(**arch).to(device)
    x, y = _rows(train).float(), train.y.long()
    train_classifier(net, x, y, epochs=epochs, seconds=seconds, seed=seed)
    result = TrainedClassifier(net, n_classes, 0.0, None, False)
    _, predicted = result.features_and_labels(_rows(test))
    result.accuracy = float((predicted == test.y.cpu()).double().mean())
    if cache:
        config = {**arch, "test_accuracy": result.accuracy, "data": train.name,
                  "n_train": len(train), "version": CLASSIFIER_VERSION}  # fmt: skip
        result.folder = _save_classifier(net, config, folder)
    return result


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
def gmm_nll_vs_components(
    train: torch.Tensor,
    test: torch.Tensor,
    dims: Sequence[int],
    components: Sequence[int],
    *,
    seed: int = 0,
    max_seconds: float = math.inf,
    device: str | None = None,
) -> dict[str, Any]:
    """Test NLL (bits per dimension) of full-covariance GMMs on the data projected by PCA.

    The data are centred by the train mean and projected on the top-d principal axes of the
    train split, for each d in `dims`; for each K in `components` a GMM is fitted to the
    projected train split and its mean test NLL divided by d ln 2 is recorded (bits/dim of a
    continuous density of the projected data). Where the curve in K turns up, more components
    overfit: a mixture stops being enough at that dimension. A fit predicted (from the last
    one, cost ∝ K d²) to end after `max_seconds` is skipped (None).

    Args:
        train: (n, D) continuous train points (dequantised images, flattened).
        test: (m, D) test points.
        dims: projection dimensions (those above D are dropped).
        components: numbers of components K.

    Returns:
        {"dims": [d...], "components": [K...], "test_bits_per_dim": [[bpd or None per K] per
        d], "seconds": float}.
    """
    train = train.reshape(len(train), -1).double()
    test = test.reshape(len(test), -1).double()
    mean = train.mean(0)
    _, _, vh = torch.linalg.svd(train - mean, full_matrices=False)
    dims = [d for d in dims if d <= train.shape[1]]
    start, table, last = time.perf_counter(), [], None
    for d in dims:
        axes = vh[:d].T
        tr, te = (train - mean) @ axes, (test - mean) @ axes
        row = []
        for k in components:
            elapsed = time.perf_counter() - start
            # EM's cost grows like K d^2: skip fits predicted to end past max_seconds
            guess = 0.0 if last is None else last[2] * (k * d * d) / (last[0] * last[1] ** 2)
            if elapsed + guess > max_seconds or k > len(tr):
                row.append(None)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    kw = {} if device is None else {"device": device}
                    model = GaussianMixture(k, seed=seed, **kw).fit(tr)
                    row.append(metrics.bits_per_dim(metrics.nll(model.log_prob(te).cpu()), d))
                except ValueError:
                    row.append(None)
            last = (k, d, time.perf_counter() - start - elapsed)
        table.append(row)
    return {
        "dims": dims,
        "components": list(components),
        "test_bits_per_dim": table,
        "seconds": time.perf_counter() - start,
    }
