"""The `genlab` command line: fit a model, draw samples, evaluate it, plot it.

    genlab fit gmm --data moons --components 8 --out runs/moons-gmm
    genlab sample runs/moons-gmm -n 1000 --out samples.npy
    genlab eval runs/moons-gmm --data moons --json
    genlab plot runs/moons-gmm --data moons

This module parses arguments, calls `genlab.data`, `genlab.models`, `genlab.metrics` and
`genlab.plots`, and prints; the maths lives in those modules. Errors in the user's input
(unknown options, bad values, unknown data sets, missing or corrupt model folders) end the
program with one line `genlab: error: ...` on stderr and exit code 2 (usage) or 1 (runtime);
set GENLAB_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import numpy as np
import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import genlab
from genlab import metrics, plots
from genlab.data import BUILTINS, Dataset, load_dataset
from genlab.models import GaussianMixture, GenerativeModel
from genlab.models.gmm import CovarianceType, InitMethod

USER_ERRORS = (ValueError, TypeError, OSError)
"""Exceptions that report bad input or a missing file; shown as one line, not a traceback."""

PLOT_SAMPLES = {"points": 1000, "image": 64}
"""Default number of model samples drawn by `genlab plot`."""

console = Console(highlight=False)

app = typer.Typer(
    name="genlab",
    help="Generative modelling: fit a distribution to data, sample from it, evaluate, plot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
fit_app = typer.Typer(
    help="Fit a model to a data set's train split and save it to a folder.",
    no_args_is_help=True,
)
app.add_typer(fit_app, name="fit")

# -- options shared by several commands -----------------------------------------------------------
DataOption = Annotated[
    str,
    typer.Option(
        "--data",
        "-d",
        help=f"Data set: one of {', '.join(BUILTINS)}, or a .npy/.csv file.",
        show_default=True,
    ),
]
NOption = Annotated[
    int | None,
    typer.Option(
        "--n",
        min=1,
        help="Number of data points (toys: drawn; others: the first N of the split). "
        "Default: the whole split (toys: 10,000 train, 2,000 test).",
    ),
]
SeedOption = Annotated[
    int, typer.Option("--seed", min=0, help="Seed of the data draw and of the model's randomness.")
]
RootOption = Annotated[
    Path | None,
    typer.Option("--root", help="Folder holding the MNIST files (default: $GENLAB_DATA)."),
]
ModelDir = Annotated[
    Path,
    typer.Argument(
        metavar="MODEL_DIR", help="A model folder written by `genlab fit`.", show_default=False
    ),
]


# -- helpers --------------------------------------------------------------------------------------
def _load_data(
    name: str, split: Literal["train", "test"], n: int | None, seed: int, root: Path | None
) -> Dataset:
    """`load_dataset` with the CLI's arguments (a thin wrapper, so every command loads alike)."""
    return load_dataset(name, split=split, n=n, seed=seed, root=root)


def _load_model(folder: Path) -> GenerativeModel:
    """`genlab.load`, on the CPU when no GPU is visible."""
    return genlab.load(folder)


def _as_tensor(x: Any) -> torch.Tensor:
    """All rows of a data set's x (a tensor, or a lazily read `NpyArray`) as a tensor."""
    return x if isinstance(x, torch.Tensor) else x[:]


def _data_name(name: str) -> str:
    """A short name for titles and default folders: "moons", or a file's stem."""
    return name if name in BUILTINS else Path(name).stem


def _shape_kind(event_shape: Sequence[int]) -> Literal["points", "image", "other"]:
    """How samples of this shape are drawn: 2-D points, images (C, H, W) / (H, W), or neither."""
    shape = tuple(event_shape)
    if shape == (2,):
        return "points"
    if len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3)):
        return "image"
    return "other"


def _n_parameters(model: GenerativeModel) -> int:
    """The model's free parameters (its own count if it has one, else its tensors' sizes)."""
    count = getattr(model, "n_parameters", None)
    if count is not None:
        return int(count)
    return sum(p.numel() for p in model.parameters())


def _print_table(title: str, rows: dict[str, Any]) -> None:
    table = Table(title=escape(title), show_header=False, box=None, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(escape(key), escape(_format(value)))
    console.print(table)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _gmm_ellipses(model: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(means (K, 2), covariances (K, 2, 2), weights (K,)) of a 2-D mixture, any covariance type."""
    k, cov = model.config.n_components, model.covariances_.cpu()
    as_matrices: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "full": lambda c: c,
        "tied": lambda c: c.expand(k, 2, 2),
        "diag": torch.diag_embed,
        "spherical": lambda c: c[:, None, None] * torch.eye(2, dtype=c.dtype),
    }
    return model.means_.cpu(), as_matrices[model.config.covariance_type](cov), model.weights_.cpu()


def _write_sample_png(samples: torch.Tensor, path: Path, title: str) -> Path:
    """A scatter of 2-D points or a grid of images, chosen by the samples' shape."""
    kind = _shape_kind(samples.shape[1:])
    if kind == "points":
        return plots.scatter_2d(samples, path, title=title)
    if kind == "image":
        return plots.sample_grid(samples, path, title=title)
    raise ValueError(
        f"cannot draw samples of shape {tuple(samples.shape[1:])} as a picture (only 2-D points "
        "and images); write them with --out FILE.npy instead"
    )


def _check_suffix(allowed: tuple[str, ...]) -> Callable[[Path | None], Path | None]:
    """A typer callback rejecting --out paths without one of the allowed suffixes."""

    def check(path: Path | None) -> Path | None:
        if path is not None and path.suffix.lower() not in allowed:
            raise typer.BadParameter(f"{str(path)!r} must end in {' or '.join(allowed)}")
        return path

    return check


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Print each warning raised inside as one line `genlab: warning: ...` on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        yield
    for w in caught:
        _echo_err(f"genlab: warning: {w.message}")


def _echo_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- fit ------------------------------------------------------------------------------------------
def _dequantized(data: Dataset, seed: int) -> Dataset:
    """Quantised data (levels set) with uniform noise: (k + u) / levels; other data unchanged."""
    if data.levels is None:
        return data
    g = torch.Generator().manual_seed(seed)
    x = metrics.dequantize(_as_tensor(data.x), data.levels, generator=g)
    return dataclasses.replace(data, x=x)


def _fit(model: GenerativeModel, data: Dataset, progress: bool) -> float:
    """Fit on the data set and return the wall-clock time in seconds."""
    start = time.perf_counter()
    model.fit(data, progress=progress)
    return time.perf_counter() - start


def _report_fit(
    model: GenerativeModel, data: Dataset, out: Path, seconds: float, details: dict[str, Any]
) -> None:
    """Save the model to `out` and print a summary (family-specific rows in `details`)."""
    train_loglik = -metrics.nll(model.log_prob(data.x))
    model.save(out)
    rows = {
        "train log-likelihood": f"{train_loglik:.5g} nats/sample",
        **details,
        "parameters": _n_parameters(model),
        "time": f"{seconds:.2f} s",
    }
    _print_table(f"{model.family} on {data.name} ({len(data)} train samples)", rows)
    typer.echo(f"saved {out}")


@fit_app.command("gmm")
def fit_gmm(
    data: DataOption = "moons",
    components: Annotated[int, typer.Option("--components", "-k", min=1, help="K.")] = 8,
    covariance: Annotated[
        CovarianceType,
        typer.Option(help="Covariance per component: full, one tied, diagonal or spherical."),
    ] = "full",
    max_iter: Annotated[int, typer.Option(min=0, help="EM iterations per initialisation.")] = 100,
    tol: Annotated[
        float, typer.Option(min=0.0, help="Stop when the mean log-likelihood changes less.")
    ] = 1e-3,
    reg_covar: Annotated[
        float, typer.Option(min=0.0, help="Added to each covariance's diagonal.")
    ] = 1e-6,
    init: Annotated[
        InitMethod,
        typer.Option(help="How the first parameters are chosen."),
    ] = "kmeans",
    n_init: Annotated[int, typer.Option(min=1, help="Initialisations; the best is kept.")] = 1,
    seed: SeedOption = 0,
    n: NOption = None,
    dtype: Annotated[
        Literal["float32", "float64"],
        typer.Option(help="Precision of the E-step (float64: scikit-learn's answers)."),
    ] = "float64",
    dequantize: Annotated[
        bool,
        typer.Option(
            help="Fit quantised images (digits, MNIST) on uniformly dequantised pixels "
            "(k + u) / levels, so that eval's bits/dim are those of the discrete data."
        ),
    ] = True,
    root: RootOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Model folder (default: runs/DATA-gmm).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Fit a Gaussian mixture by EM (exact log-likelihood)."""
    train = _load_data(data, "train", n, seed, root)
    if dequantize:
        train = _dequantized(train, seed)
    model = GaussianMixture(
        components,
        covariance_type=covariance,
        tol=tol,
        reg_covar=reg_covar,
        max_iter=max_iter,
        n_init=n_init,
        init=init,
        seed=seed,
        dtype=dtype,
    )
    seconds = _fit(model, train, progress)
    details = {"iterations": model.n_iter_, "converged": model.converged_}
    _report_fit(model, train, out or Path("runs") / f"{_data_name(data)}-gmm", seconds, details)


# -- sample ---------------------------------------------------------------------------------------
@app.command()
def sample(
    model_dir: ModelDir,
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="Number of samples.")] = 1000,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the sampler.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            callback=_check_suffix((".npy", ".png")),
            help="FILE.npy (the array) or FILE.png (a scatter of 2-D points or an image grid) "
            "(default: MODEL_DIR/samples.npy).",
        ),
    ] = None,
) -> None:
    """Draw samples from a saved model and write them as .npy or .png."""
    model = _load_model(model_dir)
    samples = model.sample(n, seed=seed).detach().cpu()
    out = out or model_dir / "samples.npy"
    if out.suffix.lower() == ".npy":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, samples.numpy())
    else:
        _write_sample_png(samples, out, title=f"{n} samples from {model.family}")
    typer.echo(f"wrote {out} ({n} samples of shape {tuple(samples.shape[1:])})")


# -- eval -----------------------------------------------------------------------------------------
def evaluate_model(model: GenerativeModel, test: Dataset, seed: int) -> dict[str, Any]:
    """Test-set NLL (nats/sample), bits/dim, and sample metrics.

    For quantised data (`test.levels` set) a density is evaluated at dequantised test points
    and bits_per_dim is that of the discrete data (an upper bound in expectation); a model
    whose `log_prob_space` is "discrete" is evaluated on the quantised points directly;
    otherwise bits_per_dim is the continuous density's. The sample metrics compare
    `len(test)` model samples (drawn with `seed`) with the test data.
    """
    x = _as_tensor(test.x)
    discrete = model.log_prob_space == "discrete"
    at = x if discrete else _as_tensor(_dequantized(test, seed).x)
    log_p = model.log_prob(at)
    nll = metrics.nll(log_p)
    if test.levels is None or discrete:
        bpd = metrics.bits_per_dim(nll, test.dim)
    else:
        bpd = metrics.discrete_bits_per_dim(log_p, test.dim, test.levels)
    samples = model.sample(len(x), seed=seed).detach().cpu()
    return {
        "family": model.family,
        "data": test.name,
        "n_test": len(x),
        "log_prob_kind": model.log_prob_kind,
        "nll": nll,
        "bits_per_dim": bpd,
        **metrics.sample_metrics(samples, at.cpu(), seed=seed),
    }


@app.command("eval")
def evaluate(
    model_dir: ModelDir,
    data: Annotated[
        str,
        typer.Option(
            "--data", "-d", help=f"Data set: one of {', '.join(BUILTINS)}, or a .npy/.csv file."
        ),
    ],
    n: NOption = None,
    seed: SeedOption = 0,
    root: RootOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object and nothing else.")
    ] = False,
) -> None:
    """Evaluate a saved model on a data set's test split.

    Reports nll (mean negative log-likelihood, nats per sample), bits_per_dim (of the discrete
    data for quantised images, evaluated at dequantised pixels; else of the continuous
    density), log_prob_kind (exact, bound or estimate), and mmd, sliced_wasserstein and
    energy_distance between as many model samples as test points and the test data.
    """
    model = _load_model(model_dir)
    result = evaluate_model(model, _load_data(data, "test", n, seed, root), seed)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _print_table(f"{model_dir} on {data} (test split)", result)


# -- plot -----------------------------------------------------------------------------------------
def _plot_points(
    model: GenerativeModel, test: Dataset | None, n_samples: int, seed: int, out: Path, title: str
) -> Path:
    samples = model.sample(n_samples, seed=seed).detach().cpu()
    ellipses = _gmm_ellipses(model) if isinstance(model, GaussianMixture) else None
    return plots.density_2d(
        lambda points: model.log_prob(torch.from_numpy(points)).cpu(),
        out,
        samples=samples,
        data=None if test is None else _as_tensor(test.x),
        ellipses=ellipses,
        title=title,
    )


@app.command()
def plot(
    model_dir: ModelDir,
    data: Annotated[
        str | None,
        typer.Option("--data", "-d", help="Overlay this data set's test points (2-D models)."),
    ] = None,
    n: NOption = None,
    seed: SeedOption = 0,
    root: RootOption = None,
    samples: Annotated[
        int | None,
        typer.Option(min=1, help="Model samples to draw (default: 1000 points or 64 images)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            callback=_check_suffix((".png",)),
            help="The .png to write (default: MODEL_DIR/plot.png).",
        ),
    ] = None,
) -> None:
    """Plot a saved model: its density and samples (2-D points) or a sample grid (images).

    For 2-D point models: filled density contours, model samples, the test points of --data
    and, for a Gaussian mixture, each component's 1- and 2-sigma ellipses. Also writes
    MODEL_DIR/history.png when the model kept its training curve (EM log-likelihoods).
    """
    model = _load_model(model_dir)
    out = out or model_dir / "plot.png"
    kind = _shape_kind(model.event_shape or ())
    title = model.family if data is None else f"{model.family} on {_data_name(data)}"
    if kind == "points":
        test = None if data is None else _load_data(data, "test", n, seed, root)
        written = [_plot_points(model, test, samples or PLOT_SAMPLES["points"], seed, out, title)]
    elif kind == "image":
        if data is not None:
            _echo_err("genlab: note: --data is only drawn for 2-D point models; ignoring it")
        images = model.sample(samples or PLOT_SAMPLES["image"], seed=seed).detach().cpu()
        written = [plots.sample_grid(images, out, title=title)]
    else:
        raise ValueError(
            f"genlab plot draws 2-D point and image models; this model's samples have shape "
            f"{model.event_shape}"
        )
    history = getattr(model, "lower_bounds_", None)
    if history:
        written.append(
            plots.curve(
                {"train": history},
                model_dir / "history.png",
                ylabel="mean log-likelihood (nats)",
                title=f"{model.family} training",
            )
        )
    for path in written:
        typer.echo(f"wrote {path}")


# -- entry point ----------------------------------------------------------------------------------
def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on `argv` (default: sys.argv[1:]) and return the exit code.

    0 on success (and for --help), 2 for usage errors (unknown options, bad values), 1 for
    runtime errors in the user's input (unknown data set, missing or corrupt model folder).
    """
    command = typer.main.get_command(app)
    debug = os.environ.get("GENLAB_DEBUG", "") not in ("", "0")
    try:
        with _warnings_as_lines():
            result = command.main(
                args=None if argv is None else list(argv), prog_name="genlab", standalone_mode=False
            )
    except typer.TyperException as e:  # click's usage errors (exit code 2) and file errors
        message = _one_line(e.format_message())
        if not message:  # no arguments: the help was printed
            return e.exit_code
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None and e.exit_code == 2 else ""
        _echo_err(f"genlab: error: {message}{hint}")
        return e.exit_code
    except typer.Abort:
        _echo_err("genlab: error: aborted")
        return 1
    except USER_ERRORS as e:
        if debug:
            raise
        _echo_err(f"genlab: error: {_one_line(str(e)) or type(e).__name__}")
        return 1
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: run the CLI and exit with its code."""
    sys.exit(run(argv))
