"""Line plots: `curve` (series against their step), `xy_curves` (y against x, one line per
name), `loss_curves` (a run's training and validation loss against the step, its best step
marked), and the two figures of `genlab compare` drawn from its records: `nfe_figure` (sample
quality against NFE) and `study_figure` (test NLL against mixture components)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from genlab.plots.base import (
    PathLike,
    png_path,
    save_png,
    to_numpy,
)


def _finish(fig: Figure, ax: Any, path: Path, xlabel: str, ylabel: str, title: str | None):
    """Axis labels, a light grid, the legend and the title; then write the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_png(fig, path)


def curve(
    ys: Mapping[str, Sequence[float]],
    path: PathLike,
    xlabel: str = "iteration",
    ylabel: str = "",
    title: str | None = None,
) -> Path:
    """Line plot of named series against their step 1, 2, ... (log-likelihoods, losses).

    Args:
        ys: name -> 1-D sequence of values (NaN gaps are allowed); one line per name.
        path: the .png file.
        xlabel, ylabel: axis labels.
        title: optional axes title.
    """
    path = png_path(path)
    if not isinstance(ys, Mapping) or len(ys) == 0:
        raise ValueError("ys must be a non-empty dict of name -> sequence of values")
    series = {}
    for name, values in ys.items():
        arr = to_numpy(values, f"ys[{name!r}]")
        if arr.ndim != 1 or len(arr) == 0:
            raise ValueError(
                f"ys[{name!r}] must be a non-empty 1-D sequence, got shape {arr.shape}"
            )
        if np.isinf(arr).any():
            raise ValueError(f"ys[{name!r}] contains infinity")
        series[str(name)] = arr
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, arr in series.items():
        steps = np.arange(1, len(arr) + 1)
        ax.plot(steps, arr, marker="o" if len(arr) <= 30 else None, markersize=3, label=name)
    return _finish(fig, ax, path, xlabel, ylabel, title)


def _pair_arrays(
    pair: Any, what: str, names: tuple[str, str], labels: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """`pair` (a tuple or list of two sequences) as two 1-D arrays of one length >= 1.

    Args:
        pair: the (first, second) sequences.
        what: names the pair in errors (e.g. "series['a']", "train").
        names: what the two parts are called in errors (e.g. ("xs", "ys")).
        labels: the names `to_numpy` gives each part in its own errors.
    """
    first, second = names
    if not isinstance(pair, tuple | list) or len(pair) != 2:
        raise ValueError(f"{what} must be a pair ({first}, {second})")
    a, b = to_numpy(pair[0], labels[0]), to_numpy(pair[1], labels[1])
    if a.ndim != 1 or a.shape != b.shape or len(a) == 0:
        raise ValueError(
            f"{what} needs 1-D {first} and {second} of one length >= 1, got shapes {a.shape} "
            f"and {b.shape}"
        )
    return a, b


def xy_curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: PathLike,
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    logx: bool = False,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Lines of y against x, one per name, with a marker at each point.

    Args:
        series: name -> (xs, ys), two 1-D sequences of the same length >= 1 (finite xs, and
            positive ones with logx; NaN ys leave gaps).
        path: the .png file.
        xlabel, ylabel: axis labels.
        title: optional axes title.
        logx: a logarithmic x axis (ticks at the xs when there are at most 12 of them).
        ylim: optional (bottom, top) of the y axis; points beyond it are cut off.
    """
    path = png_path(path)
    if not isinstance(series, Mapping) or len(series) == 0:
        raise ValueError("series must be a non-empty dict of name -> (xs, ys)")
    if ylim is not None:
        ylim = (float(ylim[0]), float(ylim[1]))
        if not (math.isfinite(ylim[0]) and math.isfinite(ylim[1]) and ylim[0] < ylim[1]):
            raise ValueError(f"ylim must be finite (bottom, top) with bottom < top, got {ylim}")
    lines = {}
    for name, pair in series.items():
        xs, ys = _pair_arrays(
            pair, f"series[{name!r}]", ("xs", "ys"), (f"xs of {name!r}", f"ys of {name!r}")
        )
        if not np.isfinite(xs).all() or (logx and (xs <= 0).any()) or np.isinf(ys).any():
            raise ValueError(
                f"series[{name!r}] has non-finite values{' or xs <= 0 (logx)' if logx else ''}"
            )
        lines[str(name)] = (xs, ys)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, (xs, ys) in lines.items():
        ax.plot(xs, ys, marker="o", markersize=4, label=name)
    if logx:
        ax.set_xscale("log")
        ticks = np.unique(np.concatenate([xs for xs, _ in lines.values()]))
        if len(ticks) <= 12:
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
    if ylim is not None:
        ax.set_ylim(*ylim)
    return _finish(fig, ax, path, xlabel, ylabel, title)


def _steps_and_values(pair: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    steps, values = _pair_arrays(
        pair, name, ("steps", "values"), (f"{name} steps", f"{name} values")
    )
    if not np.isfinite(steps).all() or np.isinf(values).any():
        raise ValueError(f"{name} has non-finite steps or infinite values")
    return steps, values


def loss_curves(
    train: tuple[Sequence[float], Sequence[float]],
    path: PathLike,
    *,
    val: tuple[Sequence[float], Sequence[float]] | None = None,
    ylabel: str = "loss",
    title: str | None = None,
) -> Path:
    """A run's training loss (and validation loss) against the optimisation step, with the
    best validation step marked: the first step of the lowest validation loss, the one a
    trainer that keeps a strictly better model would have kept.

    Args:
        train: (steps, losses), 1-D of one length (NaN losses leave gaps).
        path: the .png file.
        val: optional (steps, validation losses) like `train`.
        ylabel: the y axis label (say the unit: nats per sample, per token, ...).
        title: optional axes title.
    """
    path = png_path(path)
    steps, losses = _steps_and_values(train, "train")
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(steps, losses, marker="o" if len(steps) <= 30 else None, markersize=3,
            label="training loss")  # fmt: skip
    if val is not None:
        val_steps, val_losses = _steps_and_values(val, "val")
        ax.plot(val_steps, val_losses, marker="o", markersize=3, label="validation loss")
        if not np.isnan(val_losses).all():
            best = int(np.nanargmin(val_losses))
            step, value = val_steps[best], val_losses[best]
            ax.axvline(step, color="0.5", linestyle=":", linewidth=1)
            ax.plot([step], [value], marker="*", markersize=12, color="C3", linestyle="none",
                    label=f"best: step {step:g}, {value:.4g}")  # fmt: skip
    return _finish(fig, ax, path, "step", ylabel, title)


# -- the figures of `genlab compare`, drawn from its records ---------------------------------------
def nfe_figure(
    curves: Mapping[str, Mapping[str, Any]],
    metric: str,
    path: PathLike,
    *,
    ylabel: str | None = None,
) -> Path | None:
    """Sample quality against NFE, one line per iterative family.

    Args:
        curves: family -> its record's "nfe_curve" ({"points": [{"nfe": int, metric: float}]}).
        metric: the quality key plotted (e.g. "frechet_classifier"; lower is better).
        path: the .png file.
        ylabel: the y axis label (default: `metric`).

    Returns:
        The path, or None when no curve has a finite point.
    """
    series = {}
    for family, nfe_curve in curves.items():
        kept = [p for p in nfe_curve["points"] if p.get("nfe") and p.get(metric) is not None]
        if kept:
            series[family] = ([p["nfe"] for p in kept], [p[metric] for p in kept])
    if not series:
        return None
    return xy_curves(
        series,
        path,
        xlabel="NFE (network evaluations per sample)",
        ylabel=metric if ylabel is None else ylabel,
        title="sample quality vs NFE",
        logx=True,
    )


def study_ylim(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
) -> tuple[float, float]:
    """From the lowest NLL to the highest NLL of the fewest components (plus 10%), so that
    the curves of overfitting mixtures, which can climb by thousands of bits, run off the top
    instead of flattening the rest."""
    lowest = min(min(ys) for _, ys in series.values())
    top = max(max(lowest, ys[0]) for _, ys in series.values())
    pad = 0.1 * (top - lowest) or 1.0
    return lowest - pad, top + pad


def study_figure(
    study: Mapping[str, Any], path: PathLike, *, title: str | None = None
) -> Path | None:
    """A mixture's test NLL against its components K, one line per PCA dimension d.

    Args:
        study: `genlab.evaluation.gmm_nll_vs_components`'s result ({"dims": [d...],
            "components": [K...], "test_bits_per_dim": [[bits/dim or None per K] per d]}).
        path: the .png file.
        title: the axes title (default: the GMM's).

    Returns:
        The path, or None when no fit gave a number.
    """
    series = {}
    for d, row in zip(study["dims"], study["test_bits_per_dim"], strict=True):
        pairs = [(k, v) for k, v in zip(study["components"], row, strict=True) if v is not None]
        if pairs:
            series[f"d = {d}"] = ([k for k, _ in pairs], [v for _, v in pairs])
    if not series:
        return None
    return xy_curves(
        series,
        path,
        xlabel="components K",
        ylabel="test NLL (bits/dim, PCA-d)",
        title=title or "GMM: test NLL vs components, PCA dimension d",
        logx=True,
        ylim=study_ylim(series),
    )
