"""The `genlab` command line: fit a model, draw samples, evaluate it, plot it.

    genlab fit gmm --data moons --components 8 --out runs/moons-gmm
    genlab fit vae --data digits --latent-dim 16 --max-time 60 --out runs/digits-vae
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
import inspect
import json
import math
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
from genlab import compare as comparison
from genlab import measures, metrics, plots
from genlab import report as reporting
from genlab.data import BUILTINS, Dataset, load_dataset
from genlab.models import VAE, GaussianMixture, GenerativeModel
from genlab.models.autoregressive import Autoregressive, Positions, TokenizerName
from genlab.models.diffusion import Diffusion, LossWeightName, PredictionName, ScheduleName
from genlab.models.diffusion import NetName as DiffusionNetName
from genlab.models.flow import CouplingName, FlowMatching, FlowNetName, PathName, SolverName
from genlab.models.gmm import CovarianceType, InitMethod
from genlab.models.vae import LikelihoodName, NetName
from genlab.train import LOG_FILE, read_log

USER_ERRORS = (ValueError, TypeError, OSError)
"""Exceptions that report bad input or a missing file; shown as one line, not a traceback."""

PLOT_SAMPLES = {"points": 1000, "image": 64}
"""Default number of model samples drawn by `genlab plot`."""

DEFAULT_MAX_STEPS = 2000
"""Training steps of a neural family when neither --max-steps nor --max-time is given."""

VAE_ELBO_ROWS = 2000
"""`genlab fit vae` reports the ELBO of at most this many training samples."""

VAE_PLOT = {"iwae_k": 16, "grid": 100, "reconstructions": 12, "latent_points": 2000}
"""`genlab plot` of a VAE: importance samples and grid side of the 2-D density, test images
in the reconstructions grid, test points in the latent map."""

FLOW_PLOT = {"grid": 50, "steps": 4, "method": "rk4", "paths": 500, "images": 64}
"""`genlab plot` of a flow: grid side and fixed-step solver of the 2-D density (every grid point
is an ODE solve with an exact trace), and the samples drawn as trajectories (points, images)."""

FLOW_SCORE = {"rows": 500, "steps": 10, "method": "rk4"}
"""`genlab fit flow` reports the log-likelihood of at most this many training samples."""

DIFFUSION_PLOT = {"grid": 50, "steps": 4, "method": "rk4", "paths": 300, "images": 8}
"""`genlab plot` of a diffusion model: grid side and fixed-step solver of the 2-D density (an
ODE solve per grid point), and the samples whose denoising sequence is drawn (points, images)."""

DIFFUSION_SAMPLER = {"method": "dpm++", "steps": 20}
"""The sampler of `genlab plot`'s denoising sequence of a diffusion model."""

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
        help=f"Data set: one of {', '.join(BUILTINS)}, a .npy/.csv file, or text:FILE.txt "
        "(a UTF-8 corpus for the autoregressive family).",
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


# -- training options shared by the neural families -----------------------------------------------
MaxStepsOption = Annotated[
    int | None,
    typer.Option(
        "--max-steps",
        min=1,
        help=f"Optimisation steps (default: {DEFAULT_MAX_STEPS}, or no limit with --max-time); "
        "training stops at whichever budget ends first.",
        show_default=False,
    ),
]
MaxTimeOption = Annotated[
    float | None,
    typer.Option("--max-time", min=0.001, help="Wall-clock training budget in seconds."),
]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Samples per step.")]
LrOption = Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW); > 0.")]
CheckpointEveryOption = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-every",
        min=1,
        help="Steps between checkpoints in the --out folder (one is always written at the end).",
    ),
]
FitOutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Model folder: config.json, model.safetensors and, for trained networks, "
        "checkpoint.pt and log.jsonl (default: runs/DATA-FAMILY).",
    ),
]
ProgressOption = Annotated[bool, typer.Option(help="Show a progress bar.")]
ResumeOption = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue exactly from OUT/checkpoint.pt (same options; --max-steps and "
        "--max-time may grow).",
    ),
]


@dataclasses.dataclass(frozen=True)
class TrainFlags:
    """The training options of `genlab fit <neural family>`, parsed once per command."""

    max_steps: int | None
    max_time: float | None
    batch_size: int
    lr: float
    seed: int
    checkpoint_every: int | None
    resume: bool
    progress: bool

    def config(self) -> dict[str, Any]:
        """The `TrainConfig` fields: max_steps defaults to DEFAULT_MAX_STEPS without max_time."""
        max_steps = self.max_steps
        if max_steps is None and self.max_time is None:
            max_steps = DEFAULT_MAX_STEPS
        return {"max_steps": max_steps, "max_time": self.max_time,
                "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed}  # fmt: skip

    def fit_kwargs(self, out: Path) -> dict[str, Any]:
        """The keyword arguments of `model.fit`: checkpoints and log.jsonl go to `out`."""
        return {"out": out, "checkpoint_every": self.checkpoint_every, "resume": self.resume}


def _train_report(model: GenerativeModel) -> dict[str, Any]:
    """Summary rows of a `genlab.train.fit` run: steps and the last logged loss."""
    result = model.train_result_
    last = result.history[-1] if result.history else {}
    rows = {"steps": result.steps}
    if "loss" in last:
        rows["final loss"] = float(last["loss"])
    return rows


# -- helpers --------------------------------------------------------------------------------------
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
    return measures.dequantized(data, seed)


def _fit(model: GenerativeModel, data: Dataset, progress: bool, **kwargs: Any) -> float:
    """Fit on the data set (keyword arguments go to `fit`); return the wall-clock seconds."""
    start = time.perf_counter()
    model.fit(data, progress=progress, **kwargs)
    return time.perf_counter() - start


def _report_fit(
    model: GenerativeModel,
    data: Dataset,
    out: Path,
    seconds: float,
    details: dict[str, Any],
    score: tuple[str, float] | None = None,
) -> None:
    """Save the model to `out` and print a summary (family-specific rows in `details`).

    `score` is (label, nats per sample) shown first; by default the train log-likelihood.
    """
    label, value = score or ("train log-likelihood", -metrics.nll(model.log_prob(data.x)))
    model.save(out)
    rows = {
        label: f"{value:.5g} nats/sample",
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
    out: FitOutOption = None,
    progress: ProgressOption = True,
) -> None:
    """Fit a Gaussian mixture by EM (exact log-likelihood)."""
    train = load_dataset(data, split="train", n=n, seed=seed, root=root)
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


@fit_app.command("vae")
def fit_vae(
    data: DataOption = "digits",
    latent_dim: Annotated[int, typer.Option(min=1, help="Size of the latent z.")] = 16,
    likelihood: Annotated[
        LikelihoodName,
        typer.Option(
            help="p(x|z): auto (bernoulli for binary data, discretized logistic for quantised "
            "images, else gaussian), or one of those."
        ),
    ] = "auto",
    beta: Annotated[
        float, typer.Option(min=0.0, help="Weight of the KL term (1: the ELBO).")
    ] = 1.0,
    kl_warmup_steps: Annotated[
        int, typer.Option(min=0, help="Steps over which the KL weight rises from 0 to beta.")
    ] = 0,
    hidden: Annotated[
        int, typer.Option(min=8, help="MLP width (conv nets: channels hidden/8, hidden/4).")
    ] = 256,
    net: Annotated[NetName, typer.Option(help="auto: conv for square images, else mlp.")] = "auto",
    conditional: Annotated[
        bool, typer.Option("--conditional", help="Condition on the data set's labels.")
    ] = False,
    max_steps: MaxStepsOption = None,
    max_time: MaxTimeOption = None,
    batch_size: BatchSizeOption = 128,
    lr: LrOption = 1e-3,
    seed: SeedOption = 0,
    checkpoint_every: CheckpointEveryOption = None,
    resume: ResumeOption = False,
    n: NOption = None,
    root: RootOption = None,
    out: FitOutOption = None,
    progress: ProgressOption = True,
) -> None:
    """Fit a variational autoencoder (log-likelihood: an importance-weighted estimate)."""
    flags = TrainFlags(max_steps, max_time, batch_size, lr, seed, checkpoint_every, resume,
                       progress)  # fmt: skip
    train = load_dataset(data, split="train", n=n, seed=seed, root=root)
    if conditional and train.y is None:
        raise ValueError(f"--conditional needs labels, and {data!r} has none")
    if likelihood == "gaussian":  # a density: fit quantised images dequantised, as eval does
        train = _dequantized(train, seed)
    model = VAE(latent_dim, likelihood=likelihood, beta=beta, kl_warmup_steps=kl_warmup_steps,
                hidden=hidden, net=net, **flags.config())  # fmt: skip
    out = out or Path("runs") / f"{_data_name(data)}-vae"
    y = train.y if conditional else None
    seconds = _fit(model, train, flags.progress, y=y, **flags.fit_kwargs(out))
    rows = train.x[:VAE_ELBO_ROWS]
    elbo = float(model.elbo(rows, None if y is None else y[: len(rows)]).mean())
    details = {**_train_report(model), "likelihood": model.likelihood_, "net": model.net_,
               "conditional": conditional}  # fmt: skip
    label = "train ELBO" if len(rows) == len(train) else f"train ELBO (first {len(rows)})"
    _report_fit(model, train, out, seconds, details, score=(label, elbo))


@fit_app.command("flow")
def fit_flow(
    data: DataOption = "moons",
    path: Annotated[
        PathName, typer.Option(help="Probability path: linear (conditional OT) or vp (cosine).")
    ] = "linear",
    coupling: Annotated[
        CouplingName,
        typer.Option(help="Noise-data pairs: independent, or ot (exact minibatch transport)."),
    ] = "independent",
    sigma_min: Annotated[
        float, typer.Option(min=0.0, max=0.999, help="Width of the linear path at the data.")
    ] = 0.0,
    hidden: Annotated[int, typer.Option(min=1, help="MLP width.")] = 128,
    depth: Annotated[int, typer.Option(min=1, help="MLP residual blocks.")] = 3,
    base_channels: Annotated[int, typer.Option(min=4, help="UNet width (images).")] = 32,
    net: Annotated[
        FlowNetName, typer.Option(help="auto: unet for square images, else mlp.")
    ] = "auto",
    conditional: Annotated[
        bool,
        typer.Option("--conditional", help="Condition on the labels (classifier-free guidance)."),
    ] = False,
    label_dropout: Annotated[
        float, typer.Option(min=0.0, max=0.999, help="Null-label rate of conditional training.")
    ] = 0.1,
    sample_steps: Annotated[
        int, typer.Option(min=1, help="Default solver steps of sample, eval and plot.")
    ] = 50,
    sample_method: Annotated[
        SolverName, typer.Option(help="Default solver of sample, eval and plot.")
    ] = "heun",
    max_steps: MaxStepsOption = None,
    max_time: MaxTimeOption = None,
    batch_size: BatchSizeOption = 256,
    lr: LrOption = 1e-3,
    seed: SeedOption = 0,
    checkpoint_every: CheckpointEveryOption = None,
    resume: ResumeOption = False,
    n: NOption = None,
    root: RootOption = None,
    out: FitOutOption = None,
    progress: ProgressOption = True,
) -> None:
    """Fit a flow-matching model (exact log-likelihood along the ODE; quantised images are
    dequantised afresh in every batch)."""
    flags = TrainFlags(max_steps, max_time, batch_size, lr, seed, checkpoint_every, resume,
                       progress)  # fmt: skip
    train = load_dataset(data, split="train", n=n, seed=seed, root=root)
    if conditional and train.y is None:
        raise ValueError(f"--conditional needs labels, and {data!r} has none")
    model = FlowMatching(path, coupling=coupling, sigma_min=sigma_min, net=net, hidden=hidden,
                         depth=depth, base_channels=base_channels, label_dropout=label_dropout,
                         sample_steps=sample_steps, sample_method=sample_method,
                         **flags.config())  # fmt: skip
    out = out or Path("runs") / f"{_data_name(data)}-flow"
    y = train.y if conditional else None
    seconds = _fit(model, train, flags.progress, y=y, **flags.fit_kwargs(out))
    rows = _as_tensor(train.x[: FLOW_SCORE["rows"]])
    if train.levels is not None:  # a density of the dequantised data, as eval measures it
        rows = metrics.dequantize(rows, train.levels, generator=torch.Generator().manual_seed(seed))
    log_p = model.log_prob(rows, steps=FLOW_SCORE["steps"], method=FLOW_SCORE["method"])
    label = "train log-likelihood" + ("" if len(rows) == len(train) else f" (first {len(rows)})")
    details = {**_train_report(model), "path": path, "coupling": coupling, "net": model.net_name_,
               "log_prob": model.log_prob_estimator_, "conditional": conditional}  # fmt: skip
    _report_fit(model, train, out, seconds, details, score=(label, -metrics.nll(log_p)))


@fit_app.command("diffusion")
def fit_diffusion(
    data: DataOption = "moons",
    schedule: Annotated[
        ScheduleName, typer.Option(help="Noise schedule: linear (DDPM's betas) or cosine.")
    ] = "linear",
    prediction: Annotated[
        PredictionName, typer.Option(help="What the net predicts: eps, x0 or v.")
    ] = "eps",
    timesteps: Annotated[int, typer.Option(min=2, help="T, the length of the chain.")] = 1000,
    loss_weight: Annotated[
        LossWeightName, typer.Option(help="Loss weighting: simple, min_snr or truncated_snr.")
    ] = "simple",
    hidden: Annotated[int, typer.Option(min=8, help="MLP width (points).")] = 256,
    base_channels: Annotated[int, typer.Option(min=4, help="UNet width (images).")] = 32,
    net: Annotated[
        DiffusionNetName, typer.Option(help="auto: unet for square images, else mlp.")
    ] = "auto",
    conditional: Annotated[
        bool,
        typer.Option("--conditional", help="Condition on the labels (classifier-free guidance)."),
    ] = False,
    label_dropout: Annotated[
        float, typer.Option(min=0.0, max=0.999, help="Null-label rate of conditional training.")
    ] = 0.1,
    max_steps: MaxStepsOption = None,
    max_time: MaxTimeOption = None,
    batch_size: BatchSizeOption = 256,
    lr: LrOption = 1e-3,
    seed: SeedOption = 0,
    checkpoint_every: CheckpointEveryOption = None,
    resume: ResumeOption = False,
    n: NOption = None,
    root: RootOption = None,
    out: FitOutOption = None,
    progress: ProgressOption = True,
) -> None:
    """Fit a denoising diffusion model (log-likelihood exact along the probability-flow ODE;
    quantised images are dequantised afresh in every batch). Sample with
    `genlab sample DIR --method ddpm|ddim|dpm++|ode --steps N`."""
    flags = TrainFlags(max_steps, max_time, batch_size, lr, seed, checkpoint_every, resume,
                       progress)  # fmt: skip
    train = load_dataset(data, split="train", n=n, seed=seed, root=root)
    if conditional and train.y is None:
        raise ValueError(f"--conditional needs labels, and {data!r} has none")
    model = Diffusion(schedule, prediction, timesteps, net, hidden=hidden,
                      base_channels=base_channels, loss_weight=loss_weight,
                      label_dropout=label_dropout, **flags.config())  # fmt: skip
    out = out or Path("runs") / f"{_data_name(data)}-diffusion"
    y = train.y if conditional else None
    seconds = _fit(model, train, flags.progress, y=y, **flags.fit_kwargs(out))
    rows = _as_tensor(train.x[: FLOW_SCORE["rows"]])
    if train.levels is not None:  # a density of the dequantised data, as eval measures it
        rows = metrics.dequantize(rows, train.levels, generator=torch.Generator().manual_seed(seed))
    log_p = model.log_prob(rows, steps=FLOW_SCORE["steps"], method=FLOW_SCORE["method"])
    label = "train log-likelihood" + ("" if len(rows) == len(train) else f" (first {len(rows)})")
    details = {**_train_report(model), "schedule": schedule, "prediction": prediction,
               "net": model.net_, "log_prob": model.log_prob_kind,
               "conditional": conditional}  # fmt: skip
    _report_fit(model, train, out, seconds, details, score=(label, -metrics.nll(log_p)))


AR_SCORE_ROWS = 1000
"""`genlab fit autoregressive` on images reports the log-likelihood of at most this many rows."""


@fit_app.command("autoregressive")
def fit_autoregressive(
    data: DataOption = "digits",
    tokenizer: Annotated[
        TokenizerName,
        typer.Option(
            help="Text: char (the corpus's characters), byte (UTF-8 bytes) or bpe (byte-level "
            "BPE learned on the corpus)."
        ),
    ] = "char",
    vocab_size: Annotated[
        int, typer.Option(min=257, help="BPE vocabulary size (256 bytes + merges).")
    ] = 512,
    n_layer: Annotated[int, typer.Option(min=1, help="Transformer blocks.")] = 4,
    n_head: Annotated[int, typer.Option(min=1, help="Attention heads.")] = 4,
    n_embd: Annotated[int, typer.Option(min=1, help="Width (divisible by --n-head).")] = 128,
    block_size: Annotated[
        int | None,
        typer.Option(
            min=1, help="Context window in tokens (default: 64 for text, the pixels of an image)."
        ),
    ] = None,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.999, help="Dropout rate.")] = 0.0,
    positions: Annotated[
        Positions, typer.Option(help="rope (rotary) or learned position embeddings.")
    ] = "rope",
    levels: Annotated[
        int | None,
        typer.Option(min=2, help="Images: grey levels (default: the data's; 2 binarises)."),
    ] = None,
    conditional: Annotated[
        bool, typer.Option("--conditional", help="Images: a class-label start token.")
    ] = False,
    precision: Annotated[
        Literal["fp32", "bf16"], typer.Option(help="bf16: bfloat16 autocast in training.")
    ] = "fp32",
    compile_loss: Annotated[
        bool, typer.Option("--compile", help="torch.compile the loss (slow first step).")
    ] = False,
    max_steps: MaxStepsOption = None,
    max_time: MaxTimeOption = None,
    batch_size: BatchSizeOption = 32,
    lr: LrOption = 2e-3,
    seed: SeedOption = 0,
    checkpoint_every: CheckpointEveryOption = None,
    resume: ResumeOption = False,
    n: NOption = None,
    root: RootOption = None,
    out: FitOutOption = None,
    progress: ProgressOption = True,
) -> None:
    """Fit an autoregressive transformer to text (--data text:FILE.txt) or to images as pixel
    sequences (exact log-likelihood); a text model reports its validation loss per character."""
    flags = TrainFlags(max_steps, max_time, batch_size, lr, seed, checkpoint_every, resume,
                       progress)  # fmt: skip
    train = load_dataset(data, split="train", n=n, seed=seed, root=root)
    if conditional and train.y is None:
        raise ValueError(f"--conditional needs labels, and {data!r} has none")
    model = Autoregressive(tokenizer, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                           n_embd=n_embd, block_size=block_size, dropout=dropout,
                           positions=positions, levels=levels, precision=precision,
                           compile=compile_loss, **flags.config())  # fmt: skip
    out = out or Path("runs") / f"{_data_name(data)}-autoregressive"
    y = train.y if conditional else None
    seconds = _fit(model, train, flags.progress, y=y, **flags.fit_kwargs(out))
    details = {**_train_report(model), "vocabulary": model.tokenizer_.vocab_size,
               "block size": model.block_size_}  # fmt: skip
    if train.kind != "text":
        rows = _as_tensor(train.x[:AR_SCORE_ROWS])
        part = "" if len(rows) == len(train) else f" (first {len(rows)})"
        label = f"train log-likelihood{part}"
        score = float(model.log_prob(rows, y=None if y is None else y[: len(rows)]).mean())
        _report_fit(model, train, out, seconds, details, score=(label, score))
        return
    scores = model.evaluate_text(load_dataset(data, split="test", root=root))
    model.save(out)
    rows = {"validation loss": f"{scores['loss']:.4f} nats/char "
                               f"({scores['bits_per_char']:.4f} bits/char)",
            **details, "tokenizer": model.config.tokenizer, "parameters": _n_parameters(model),
            "time": f"{seconds:.2f} s"}  # fmt: skip
    _print_table(f"autoregressive on {_data_name(data)} ({len(train)} train characters)", rows)
    typer.echo(f"saved {out}")


# -- sample ---------------------------------------------------------------------------------------
SAMPLER_FLAGS = {
    "steps": "--steps", "method": "--method", "guidance": "--guidance", "y": "--label",
    "eta": "--eta", "order": "--order", "grid": "--grid", "prompt": "--prompt",
    "max_new_tokens": "--max-new-tokens",
    "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
}  # fmt: skip
"""The keywords of a family's `sample` that `genlab sample` can pass, and their options."""


def sampler_options(model: GenerativeModel, **given: Any) -> dict[str, Any]:
    """The given (not None) sampler keywords, checked against the signature of `model.sample`.

    Raises:
        ValueError: the model's `sample` does not take one of them.
    """
    options = {k: v for k, v in given.items() if v is not None}
    accepted = inspect.signature(model.sample).parameters
    refused = [SAMPLER_FLAGS[k] for k in options if k not in accepted]
    if refused:
        raise ValueError(
            f"a {model.family} model's sample takes no {', '.join(refused)}; "
            f"see 'genlab sample --help'"
        )
    return options


def _sample_text(
    model: Autoregressive, n: int, seed: int, out: Path | None, options: dict[str, Any]
) -> None:
    """Print n continuations of the prompt, streaming each token's text as it is drawn; the
    i-th (0-based) uses seed + i, a blank line separates them."""
    if out is not None:
        raise ValueError("text models print their samples; redirect the output (> FILE.txt)")
    if "y" in options:
        raise ValueError("text models take no --label")
    prompt = options.pop("prompt", "")
    # one position per step is too little work to share: on the busy 2-core machine two
    # threads streamed 17 tokens/s against 408 for one (Shakespeare model, 200 tokens)
    torch.set_num_threads(1)
    for i in range(n):
        print(("\n" if i else "") + prompt, end="", flush=True)
        for piece in model.generate(prompt, seed=seed + i, **options):
            print(piece, end="", flush=True)
        print(flush=True)


@app.command()
def sample(
    model_dir: ModelDir,
    n: Annotated[
        int | None,
        typer.Option("-n", "--n", min=1, help="Number of samples [default: 1000; text: 1]."),
    ] = None,
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
    steps: Annotated[
        int | None, typer.Option(min=1, help="Iterative families: solver/sampler steps.")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="Iterative families: the solver or sampler (e.g. heun, dpm++)."),
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(help="Classifier-free guidance weight w (conditional models; 0: none)."),
    ] = None,
    label: Annotated[
        int | None, typer.Option("--label", min=0, help="Class label y of every sample.")
    ] = None,
    eta: Annotated[
        float | None, typer.Option(min=0.0, help="DDIM noise (0: deterministic, 1: DDPM).")
    ] = None,
    order: Annotated[
        int | None, typer.Option(min=1, max=3, help="Diffusion dpm++: multistep order (1-3).")
    ] = None,
    grid: Annotated[
        str | None,
        typer.Option(help="Diffusion ddpm/ddim/dpm++: time grid (uniform, quadratic, logsnr)."),
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Text models: the prompt.")] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="Text models: tokens to generate.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Autoregressive: softmax temperature (> 0).")
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(min=1, help="Autoregressive: keep the k likeliest tokens.")
    ] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Autoregressive: nucleus mass in (0, 1].")
    ] = None,
) -> None:
    """Draw samples from a saved model and write them as .npy or .png.

    Sampler options (--steps, --method, --guidance, --label, --eta, --order, --grid, --prompt,
    --max-new-tokens, --temperature, --top-k, --top-p) are passed to the model's `sample` when
    given; a model whose `sample` does not take one of them reports it.
    """
    model = genlab.load(model_dir)
    options = sampler_options(model, steps=steps, method=method, guidance=guidance, y=label,
                              eta=eta, order=order, grid=grid, prompt=prompt,
                              max_new_tokens=max_new_tokens,
                              temperature=temperature, top_k=top_k, top_p=top_p)  # fmt: skip
    if getattr(model, "is_text", False):
        _sample_text(model, n or 1, seed, out, options)
        return
    n = 1000 if n is None else n
    samples = model.sample(n, seed=seed, **options).detach().cpu()
    out = out or model_dir / "samples.npy"
    if out.suffix.lower() == ".npy":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, samples.numpy())
    else:
        _write_sample_png(samples, out, title=f"{n} samples from {model.family}")
    typer.echo(f"wrote {out} ({n} samples of shape {tuple(samples.shape[1:])})")


# -- eval -----------------------------------------------------------------------------------------
def _evaluate_text(model: GenerativeModel, test: Dataset) -> dict[str, Any]:
    """A text model on a text: loss (nats/char, exact), bits_per_char, window_loss (nats per
    token over consecutive block_size windows, nanoGPT's validation loss) and counts."""
    if test.kind != "text" or not getattr(model, "is_text", False):
        raise ValueError(
            f"a text model needs text data (--data text:FILE.txt) and text data a text model; "
            f"got a {model.family} model and {test.kind} data"
        )
    scores = model.evaluate_text(test)
    return {"family": model.family, "data": test.name, "n_test": len(test),
            "log_prob_kind": model.log_prob_kind, **scores}  # fmt: skip


def evaluate_model(model: GenerativeModel, test: Dataset, seed: int) -> dict[str, Any]:
    """Test-set NLL (nats/sample), bits/dim, and sample metrics.

    For quantised data (`test.levels` set) a density is evaluated at dequantised test points
    and bits_per_dim is that of the discrete data (an upper bound in expectation); a model
    whose `log_prob_space` is "discrete" is evaluated on the quantised points directly;
    otherwise bits_per_dim is the continuous density's. The sample metrics compare
    `len(test)` model samples (drawn with `seed`) with the test data.
    """
    if test.kind == "text" or getattr(model, "is_text", False):
        return _evaluate_text(model, test)
    held_out = measures.held_out_nll(model, test, seed)  # the one NLL scale, shared
    samples = model.sample(len(test), seed=seed).detach().cpu()
    return {
        "family": model.family,
        "data": test.name,
        "n_test": len(test),
        "log_prob_kind": model.log_prob_kind,
        "nll": held_out.nll,
        "bits_per_dim": held_out.bits_per_dim,
        **metrics.sample_metrics(samples, held_out.points.cpu(), seed=seed),
    }


@app.command("eval")
def evaluate(
    model_dir: ModelDir,
    data: Annotated[
        str,
        typer.Option(
            "--data",
            "-d",
            help=f"Data set: one of {', '.join(BUILTINS)}, a .npy/.csv file, or text:FILE.txt.",
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
    A text model on text (--data text:FILE.txt, whose test split is the last 10% of the
    characters) reports loss (nats/char, exact), bits_per_char, nats_per_token, window_loss
    (nanoGPT's validation loss: nats/token over consecutive block_size windows) and counts.
    """
    model = genlab.load(model_dir)
    result = evaluate_model(
        model, load_dataset(data, split="test", n=n, seed=seed, root=root), seed
    )
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
    kwargs, grid = {}, 200
    if isinstance(model, VAE):  # an IWAE estimate per grid point: fewer points and draws
        kwargs, grid = {"k": VAE_PLOT["iwae_k"]}, VAE_PLOT["grid"]
    if isinstance(model, FlowMatching):  # an ODE solve per grid point: fewer, fixed steps
        kwargs = {"steps": FLOW_PLOT["steps"], "method": FLOW_PLOT["method"]}
        grid = FLOW_PLOT["grid"]
    if isinstance(model, Diffusion):  # an ODE solve per grid point: fewer, fixed steps
        kwargs = {"steps": DIFFUSION_PLOT["steps"], "method": DIFFUSION_PLOT["method"]}
        grid = DIFFUSION_PLOT["grid"]
    return plots.density_2d(
        lambda points: model.log_prob(torch.from_numpy(points), **kwargs).cpu(),
        out,
        samples=samples,
        data=None if test is None else _as_tensor(test.x),
        ellipses=ellipses,
        grid=grid,
        title=title,
    )


def _plot_images(model: GenerativeModel, n_samples: int, seed: int, out: Path, title: str) -> Path:
    """A grid of samples; for a VAE, of decoder means E[x | z] (the customary smooth grid)."""
    if isinstance(model, VAE):
        images, title = model.sample(n_samples, seed=seed, mean=True), f"{title} (decoder means)"
    else:
        images = model.sample(n_samples, seed=seed)
    return plots.sample_grid(images.detach().cpu(), out, title=title)


def _plot_vae_reconstructions(model: VAE, test: Dataset, path: Path) -> Path:
    """Test images (top row) above their reconstructions decode(encode(x).mu) (bottom row)."""
    k = min(VAE_PLOT["reconstructions"], len(test))
    x = _as_tensor(test.x[:k])
    y = test.y[:k] if model.conditional else None
    recon = model.reconstruct(x, y).detach().cpu()
    return plots.sample_grid(
        torch.cat([x, recon]), path, nrow=k, title="test images and their reconstructions"
    )


def _plot_vae_latents(model: VAE, test: Dataset, path: Path) -> Path:
    """Posterior means of test points in a 2-D latent space, coloured by label when known."""
    m = min(VAE_PLOT["latent_points"], len(test))
    labels = None if test.y is None else test.y[:m]
    mu = model.encode(test.x[:m], labels if model.conditional else None).mu.detach().cpu()
    return plots.scatter_2d(mu, path, title="posterior means of test data", labels=labels)


def _plot_flow(model: FlowMatching, test: Dataset | None, seed: int, model_dir: Path) -> list[Path]:
    """MODEL_DIR/trajectories.png (paths of 2-D points, or image rows from noise to sample) and
    MODEL_DIR/samples.gif (the samples moving), from one `sample(..., return_trajectory=True)`."""
    kind = _shape_kind(model.event_shape or ())
    n = FLOW_PLOT["paths"] if kind == "points" else FLOW_PLOT["images"]
    run = model.sample(n, seed=seed, return_trajectory=True)
    title = f"flow ({model.config.sample_method}, {model.nfe_} NFE)"
    data = None if test is None or kind != "points" else _as_tensor(test.x)
    if kind == "points":
        picture = plots.trajectories_2d(run.trajectory, model_dir / "trajectories.png", data=data,
                                        title=title)  # fmt: skip
    else:
        picture = plots.trajectory_grid(run.trajectory, model_dir / "trajectories.png", title=title)
    gif = plots.animate(run.trajectory, model_dir / "samples.gif", data=data, title="flow")
    return [picture, gif]


def _plot_diffusion(model: Diffusion, test: Dataset | None, seed: int, model_dir: Path) -> Path:
    """MODEL_DIR/denoising.png: the denoising sequence of a few samples (paths of 2-D points,
    or image rows from noise to sample), from one `sample(..., return_trajectory=True)`."""
    kind = _shape_kind(model.event_shape or ())
    n = DIFFUSION_PLOT["paths"] if kind == "points" else DIFFUSION_PLOT["images"]
    run = model.sample(n, seed=seed, return_trajectory=True, **DIFFUSION_SAMPLER)
    title = f"diffusion denoising ({DIFFUSION_SAMPLER['method']}, {model.nfe_} NFE)"
    path = model_dir / "denoising.png"
    if kind == "points":
        data = None if test is None else _as_tensor(test.x)
        return plots.trajectories_2d(run.trajectory, path, data=data, title=title)
    return plots.trajectory_grid(run.trajectory, path, n_rows=n, title=title)


def _plot_history(model: GenerativeModel, model_dir: Path) -> list[Path]:
    """MODEL_DIR/history.png: EM log-likelihoods, or the loss rows of the trainer's log.jsonl."""
    title = f"{model.family} training"
    history = getattr(model, "lower_bounds_", None)
    if history:
        path = model_dir / "history.png"
        return [plots.curve({"train": history}, path, ylabel="mean log-likelihood (nats)",
                            title=title)]  # fmt: skip
    rows = [r for r in read_log(model_dir / LOG_FILE, math.inf) if "loss" in r]
    if not rows:
        return []
    every = rows[0]["step"]
    return [plots.curve({"loss": [r["loss"] for r in rows]}, model_dir / "history.png",
                        xlabel=f"log row (every {every} steps)", ylabel="training loss",
                        title=title)]  # fmt: skip


@app.command()
def plot(
    model_dir: ModelDir,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Overlay this data set's test points (2-D models); for a VAE, also "
            "reconstruct and encode them.",
        ),
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
    and, for a Gaussian mixture, each component's 1- and 2-sigma ellipses. For a VAE with
    --data, also MODEL_DIR/reconstructions.png (images) and, with a 2-D latent space,
    MODEL_DIR/latent.png (posterior means coloured by label). For a flow, also
    MODEL_DIR/trajectories.png (generation step by step, from noise to samples) and
    MODEL_DIR/samples.gif (the samples moving). For a diffusion model, also
    MODEL_DIR/denoising.png (the denoising sequence of a few samples). Also writes
    MODEL_DIR/history.png when the model kept its training curve (EM log-likelihoods, or
    the trainer's log.jsonl).
    """
    model = genlab.load(model_dir)
    out = out or model_dir / "plot.png"
    kind = _shape_kind(model.event_shape or ())
    title = model.family if data is None else f"{model.family} on {_data_name(data)}"
    test = None if data is None else load_dataset(data, split="test", n=n, seed=seed, root=root)
    if kind == "points":
        written = [_plot_points(model, test, samples or PLOT_SAMPLES["points"], seed, out, title)]
    elif kind == "image":
        if data is not None and not isinstance(model, VAE):
            _echo_err("genlab: note: --data is only drawn for 2-D point models; ignoring it")
        written = [_plot_images(model, samples or PLOT_SAMPLES["image"], seed, out, title)]
    elif getattr(model, "is_text", False):  # text: the training curve only (genlab sample)
        written = []
    else:
        raise ValueError(
            f"genlab plot draws 2-D point and image models; this model's samples have shape "
            f"{model.event_shape}"
        )
    if isinstance(model, VAE) and test is not None:
        if kind == "image":
            written.append(
                _plot_vae_reconstructions(model, test, model_dir / "reconstructions.png")
            )
        if model.config.latent_dim == 2:
            written.append(_plot_vae_latents(model, test, model_dir / "latent.png"))
    if isinstance(model, FlowMatching):
        written += _plot_flow(model, test, seed, model_dir)
    if isinstance(model, Diffusion):
        written.append(_plot_diffusion(model, test, seed, model_dir))
    written += _plot_history(model, model_dir)
    for path in written:
        typer.echo(f"wrote {path}")


# -- compare --------------------------------------------------------------------------------------
def _parse_budget_option(text: str) -> comparison.Budget:
    try:
        return comparison.parse_budget(text)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def _print_comparison(records: list[dict[str, Any]], title: str) -> None:
    """One column per family (and the floor row), one row per measure: fits 80 columns."""
    columns = reporting.table_columns(records)
    table = Table(title=escape(title), title_justify="left", box=None, padding=(0, 1))
    table.add_column("", style="bold")
    for r in records:
        table.add_column(escape(r["family"]), justify="right")
    cells = reporting.summary_rows(records, columns)
    for i, (key, heading) in enumerate(columns):
        if key != "family":
            table.add_row(escape(heading), *(escape(row[i]) for row in cells))
    console.print(table)
    for r in records:
        if r["status"] != "ok":
            console.print(escape(f"  {r['family']}: {r['status']}: {r['error']}"))


@app.command("compare")
def compare_families(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            "-d",
            help="Data set(s), comma-separated (one report section each): "
            f"{', '.join(BUILTINS)}, or .npy/.csv files.",
        ),
    ] = "digits",
    families: Annotated[
        str, typer.Option("--families", "-f", help="Families to compare, comma-separated.")
    ] = ",".join(comparison.DEFAULT_FAMILIES),
    budget: Annotated[
        str,
        typer.Option(
            "--budget",
            "-b",
            help="Training budget of each family: seconds ('120s', '2m', '1h') or optimisation "
            "steps ('500steps', or a plain 500).",
        ),
    ] = "120s",
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder of report.html, report.md, records.json."),
    ] = Path("runs/compare"),
    samples: Annotated[
        int, typer.Option("--samples", min=2, help="Model samples measured per family.")
    ] = 1000,
    n: NOption = None,
    n_test: Annotated[
        int | None,
        typer.Option("--n-test", min=2, help="Test samples (default: the whole test split)."),
    ] = None,
    seed: SeedOption = 0,
    root: RootOption = None,
    progress: Annotated[bool, typer.Option(help="Show progress and training bars.")] = True,
) -> None:
    """Fit families on the same data with the same budget; compare NLL, samples and cost.

    Each family trains on the train split (neural families for --budget; the GMM picks its
    components by BIC within it) and is measured on the test split: NLL in bits/dim on one
    scale (labelled exact, bound or estimate), MMD and sliced W2 of samples, and for labelled
    images the Fréchet distance, precision/recall and class entropy in the features of a small
    classifier (cached in $GENLAB_CACHE or ~/.cache/genlab); training and sampling time, NFE
    and parameters. A family that is not available is reported as missing, one that fails
    with its error. Writes OUT/report.html (self-contained), OUT/report.md and the figures.
    """
    parsed = _parse_budget_option(budget)
    names = [d.strip() for d in data.split(",") if d.strip()]
    wanted = [f.strip() for f in families.split(",") if f.strip()]
    if not names or not wanted:
        raise typer.BadParameter("--data and --families must each name at least one")
    settings = comparison.Settings(n_samples=samples)
    records: list[dict[str, Any]] = []
    for name in names:
        found = comparison.compare(name, wanted, budget_seconds=parsed.seconds,
                                   budget_steps=parsed.steps, out=out, seed=seed, n_train=n,
                                   n_test=n_test, root=root, settings=settings,
                                   progress=progress, report=False)  # fmt: skip
        _print_comparison(found, f"{_data_name(name)}: test split, budget {parsed} per family")
        records += found
    paths = reporting.write_report(records, out)
    typer.echo(f"wrote {paths['html']}, {paths['md']} and {paths['json']}")


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
