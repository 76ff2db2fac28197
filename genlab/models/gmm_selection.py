"""Model selection for Gaussian mixtures: one fit per number of components K (`sweep`), and
the lowest BIC within a budget (`by_bic`, what compare calls through `fit_for_budget`).

    BIC = -2 sum_i log p(x_i) + n_parameters log n        (lower is better)
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from genlab import metrics
from genlab.data.dataset import Dataset
from genlab.models import gmm_maths
from genlab.models.base import Budget, GenerativeModel, as_data
from genlab.solvers import local_generator

SWEEP_COMPONENTS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # `by_bic`'s default sweep
OVERRUN = "skipped: predicted to overrun the budget (by the EM cost model, `iteration_cost`)"
MAX_EXTENDED_COMPONENTS = 4096  # where `sweep(extend=True)` stops doubling K in any case


def iteration_cost(options: dict[str, Any], k: int, n: int, d: int) -> float:
    """Modelled seconds of one EM iteration of a K-component mixture on n rows of dimension d:
    the E/M pass on the path the mixture will take (`gmm_maths.estep_seconds` of
    `options["estep"]`, "auto": the cheaper one, as `GaussianMixture` chooses) plus the
    M-step's Cholesky factorisations and triangular inverses (~4/3 D^3 float64 flops per
    covariance). Only ratios between K are used (`sweep` scales the last fit's time)."""
    ct = options.get("covariance_type", "full")
    itemsize = 4 if options.get("dtype", "float64") == "float32" else 8
    path = options.get("estep", "auto")
    if path == "auto":
        path = gmm_maths.cheaper_estep(ct, k, d, itemsize)
    n_cov = {"full": k, "tied": 1}.get(ct, 0)
    mstep = n_cov * 4 / 3 * d**3 / (gmm_maths.GEMM_FLOPS / 2)
    return n * gmm_maths.estep_seconds(path, ct, k, d, itemsize) + mstep


def dequantized_rows(x: Any, seed: int | None) -> Any:
    """x as a mixture learns from it: a Dataset of quantised images (`levels` set) becomes its
    rows dequantised once, (k + u) / levels with u ~ U[0, 1) from a generator seeded `seed`
    (None: fresh), so that the density is that of the dequantised data, as evaluation
    measures it; anything else is returned unchanged."""
    if not isinstance(x, Dataset) or x.levels is None:
        return x
    rows = x.x if isinstance(x.x, torch.Tensor) else x.x[:]
    return metrics.dequantize(rows.float(), x.levels, generator=local_generator(seed))


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def sweep(
    cls: type[GenerativeModel],
    x: Any,
    components: Sequence[int],
    *,
    test: Any = None,
    seed: int | None = 0,
    max_seconds: float = math.inf,
    device: str | torch.device | None = None,
    extend: bool = False,
    **options: Any,
) -> list[dict[str, Any]]:
    """Fit one mixture per number of components K: the one fitting path of model
    selection (BIC) and of the components-vs-dimension study.

    With `extend`, after the listed K the sweep keeps doubling K (the largest listed, times
    2, 4, ...) while the last fit has the lowest BIC so far (BIC still improves), K stays at
    most the number of rows and MAX_EXTENDED_COMPONENTS, and the cost model predicts the fit
    ends within `max_seconds`; the first doubling predicted to overrun is recorded as skipped
    and ends the sweep. Thin 2-D structure (rings) wants K of 64-128, beyond a fixed list.

    A K whose fit, predicted from the last one (scaled by `iteration_cost`, which knows
    the E/M path each K takes), would end after `max_seconds` (counted from the start of
    the sweep) is skipped (the first fit is always made), as is a K above the number of
    rows. A fit that fails with ValueError (a covariance that is not positive definite) is
    recorded, not raised; convergence warnings are silenced.

    Args:
        x: (n, *event_shape) training rows, or a Dataset (quantised images dequantised as
            `fit` does, once for all K).
        components: the numbers of components K, in the order fitted.
        test: held-out rows (a quantised Dataset is dequantised with `seed`, as evaluation
            does) whose mean log-likelihood is recorded, or None.
        seed, device, **options: the constructor's seed, device and other options.

    Returns:
        One dict per K: "n_components", "bic" (on x; lower is better), "test_nll" (mean
        nats per test row), "seconds", "model", "error" and "skipped" (a reason), each
        None where it does not apply.
    """
    if options.get("dequantize", True):
        x = dequantized_rows(x, None if seed is None else seed + 1)
        test = dequantized_rows(test, seed)
    x, _, event_shape = as_data(x)
    d = math.prod(event_shape)
    start, last, records = time.perf_counter(), None, []
    for i, k in enumerate(_components(components, records, extend, len(x))):
        record = dict.fromkeys(("bic", "test_nll", "seconds", "model", "error", "skipped"))
        records.append({"n_components": k, **record})
        began, n = time.perf_counter(), len(x)
        if k > n:
            records[-1]["skipped"] = f"skipped: K={k} > {n} rows"
            continue
        # the first fit has no prediction; later ones scale the last by the modelled cost
        ratio = None if last is None else (
            iteration_cost(options, k, n, d) / iteration_cost(options, last[0], n, d)
        )  # fmt: skip
        if ratio is not None and began - start + last[1] * ratio > max_seconds:
            records[-1]["skipped"] = OVERRUN
            if i >= len(components):  # an extension that does not fit ends the sweep
                break
            continue
        model = cls(k, seed=seed, device=device, **options)  # bad options raise here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model.fit(x, progress=False)
                records[-1]["bic"] = model.bic(x)
                if test is not None:
                    records[-1]["test_nll"] = -model.score(test)
                records[-1]["model"] = model
            except ValueError as e:  # e.g. a covariance that is not positive definite
                records[-1]["error"] = _error_text(e)
        last = (k, time.perf_counter() - began)
        records[-1]["seconds"] = last[1]
    return records


def _components(
    listed: Sequence[int], records: list[dict[str, Any]], extend: bool, n: int
) -> Iterator[int]:
    """The K of `sweep`: the listed ones, then (with `extend`) doublings of the largest while
    the last record has the lowest BIC so far (`records` grows as the sweep fits)."""
    yield from listed
    if not extend or not listed:
        return
    k = max(listed)
    while True:
        bics = [r["bic"] for r in records if r["bic"] is not None]
        last = records[-1]["bic"] if records else None
        if last is None or len(bics) < 2 or last > min(bics):
            return
        k *= 2
        if k > min(n, MAX_EXTENDED_COMPONENTS):
            return
        yield k


def by_bic(cls: type[GenerativeModel], data: Dataset, budget: Budget) -> tuple[Any, dict]:
    """Sweep K (`sweep`) and keep the lowest BIC on the training data (EM has no step
    budget: `steps` is ignored; `seconds` bounds the sweep; `progress` shows no bar).

    options: constructor options (covariance_type "full" unless given), plus
    `n_components` (fit that K only) or the reserved `components` (the K to sweep,
    default `SWEEP_COMPONENTS`, those above the number of rows dropped) and
    `extend_components` (default True: with a `seconds` budget, keep doubling K beyond the
    listed ones while BIC improves and the cost model says the fit ends within the budget,
    `sweep(extend=True)`; a steps-only budget never extends).

    Returns:
        (model, {"steps": None, "n_components", "bic": {str(K): BIC or the reason it
        has none}, "converged", "em_iterations", "options"}).

    Raises:
        ValueError: no K could be fitted.
    """
    options = {"covariance_type": "full", **budget.options}
    grid = options.pop("components", SWEEP_COMPONENTS)
    extend = bool(options.pop("extend_components", True)) and budget.seconds is not None
    if "n_components" in options:
        grid, extend = [options.pop("n_components")], False
    else:
        grid = [k for k in grid if k <= len(data)]
    seconds = math.inf if budget.seconds is None else budget.seconds
    records = sweep(cls, data, grid, seed=budget.seed, max_seconds=seconds,
                    device=budget.device, extend=extend, **options)  # fmt: skip
    bics = {str(r["n_components"]): r["bic"] if r["bic"] is not None
            else r["error"] or r["skipped"] for r in records}  # fmt: skip
    fitted = [r for r in records if r["model"] is not None]
    if not fitted:
        raise ValueError(f"no GMM could be fitted: {bics}")
    model = min(fitted, key=lambda r: r["bic"])["model"]
    k = model.config.n_components
    return model, {"steps": None, "n_components": k, "bic": bics,
                   "converged": bool(model.converged_), "em_iterations": model.n_iter_,
                   "options": {**options, "n_components": k}}  # fmt: skip
