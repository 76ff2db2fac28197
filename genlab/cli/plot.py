"""`genlab plot`: pictures of a saved model, chosen by what the model says it can do
(`ellipses_2d`, `quick_log_prob`, `picture_sample`, `has_encoder`, `trajectory_picture`,
`editable`) and by the shape of its samples (`genlab.data.shape_kind`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

import genlab
from genlab import plots
from genlab.checkpoints import LOG_FILE, read_log
from genlab.cli.common import (
    ModelDir,
    NOption,
    RootOption,
    SeedOption,
    app,
    check_suffix,
    data_name,
    echo_err,
)
from genlab.data import Dataset, load_dataset, shape_kind
from genlab.models import GenerativeModel
from genlab.models.base import CONFIG_FILE

PLOT_SAMPLES = {"points": 1000, "image": 64}
"""Default number of model samples drawn by `genlab plot`."""

ENCODER_PLOT = {"reconstructions": 12, "latent_points": 2000}
"""Models with an encoder: test images in the reconstructions grid, test points in the latent
map."""


def rows(x: Any) -> torch.Tensor:
    """All rows of a data set's x (a tensor, or a lazily read `NpyArray`) as a tensor."""
    return x if isinstance(x, torch.Tensor) else x[:]


def labels_for(model: GenerativeModel, test: Dataset, k: int) -> torch.Tensor | None:
    """The first k test labels when the model is class-conditional, else None."""
    return test.y[:k] if model.conditional and test.y is not None else None


def plot_points(
    model: GenerativeModel, test: Dataset | None, n_samples: int, seed: int, out: Path, title: str
) -> Path:
    """The 2-D density (cheap `quick_log_prob` options, `density_grid` points a side), model
    samples, the test points and, for a mixture, its components' ellipses."""
    samples = model.sample(n_samples, seed=seed).detach().cpu()
    return plots.density_2d(
        lambda points: model.log_prob(torch.from_numpy(points), **model.quick_log_prob).cpu(),
        out,
        samples=samples,
        data=None if test is None else rows(test.x),
        ellipses=model.ellipses_2d(),
        grid=model.density_grid,
        title=title,
    )


def plot_images(model: GenerativeModel, n_samples: int, seed: int, out: Path, title: str) -> Path:
    """A grid of samples drawn with `picture_sample` (vae: its decoder means E[x | z])."""
    images = model.sample(n_samples, seed=seed, **model.picture_sample)
    if model.picture_sample.get("mean"):
        title = f"{title} (decoder means)"
    return plots.sample_grid(images.detach().cpu(), out, title=title)


def plot_encoder(model: GenerativeModel, test: Dataset, kind: str, model_dir: Path) -> list[Path]:
    """MODEL_DIR/reconstructions.png (images: test images above decode(encode(x).mu)) and,
    for a 2-D latent space, MODEL_DIR/latent.png (posterior means coloured by label)."""
    written = []
    if kind == "image":
        k = min(ENCODER_PLOT["reconstructions"], len(test))
        x = rows(test.x[:k])
        recon = model.reconstruct(x, labels_for(model, test, k)).detach().cpu()
        title = "test images and their reconstructions"
        path = model_dir / "reconstructions.png"
        written.append(plots.sample_grid(torch.cat([x, recon]), path, nrow=k, title=title))
    m = min(ENCODER_PLOT["latent_points"], len(test))
    mu = model.encode(test.x[:m], labels_for(model, test, m)).mu.detach().cpu()
    if mu.shape[1] == 2:
        labels = None if test.y is None else test.y[:m]
        written.append(plots.scatter_2d(mu, model_dir / "latent.png", labels=labels,
                                        title="posterior means of test data"))  # fmt: skip
    return written


def plot_trajectory(
    model: GenerativeModel, test: Dataset | None, kind: str, seed: int, model_dir: Path
) -> list[Path]:
    """MODEL_DIR/<name>.png (paths of 2-D points, or image rows from noise to sample) and,
    when the family animates, MODEL_DIR/samples.gif, from one sample(..., return_trajectory)."""
    picture = model.trajectory_picture
    n = picture.paths if kind == "points" else picture.images
    run = model.sample(n, seed=seed, return_trajectory=True, **picture.options)
    how = [str(picture.options["method"])] if "method" in picture.options else []
    how += [f"{model.nfe_} NFE"] if model.nfe_ is not None else []
    title = f"{model.family} {picture.name}" + (f" ({', '.join(how)})" if how else "")
    path = model_dir / f"{picture.name}.png"
    data = None if test is None or kind != "points" else rows(test.x)
    if kind == "points":
        written = [plots.trajectories_2d(run.trajectory, path, data=data, title=title)]
    else:
        written = [plots.trajectory_grid(run.trajectory, path, title=title)]
    if picture.animate:
        written.append(plots.animate(run.trajectory, model_dir / "samples.gif", data=data,
                                     title=model.family))  # fmt: skip
    return written


EDIT_PLOT = {"images": 8, "points": 200, "steps": 20, "strengths": (0.2, 0.4, 0.6, 0.8, 1.0),
             "resample": 2}  # fmt: skip
"""The editing figure: rows of inputs (test data, else model samples), the sampler steps of
every edit, SDEdit's strengths (points: the first, third and fifth) and the inpainting's
RePaint resampling rounds per step (`inpaint(resample=)`)."""


def edit_inputs(model: GenerativeModel, test: Dataset | None, k: int, seed: int) -> torch.Tensor:
    """k rows to edit: the first k test rows, else k model samples (images clipped to
    [0, 1], the range `inpaint` and `sample(init=...)` take)."""
    if test is not None:
        return rows(test.x[: min(k, len(test))]).float()
    x = model.sample(k, seed=seed, steps=EDIT_PLOT["steps"]).detach()
    return x.clamp(0.0, 1.0) if shape_kind(tuple(model.event_shape)) == "image" else x


def plot_editing(
    model: GenerativeModel, test: Dataset | None, kind: str, seed: int, model_dir: Path
) -> list[Path]:
    """MODEL_DIR/editing.png: images: rows of originals, the masked inputs (right half
    grey), the inpainted results (with EDIT_PLOT's resampling), SDEdit at each of EDIT_PLOT's
    strengths, and the reconstruction from the inverted noise; 2-D points: arrows from
    inputs to SDEdit results at three strengths and to samples of y given x (inpainting the
    second coordinate).
    Conditional models edit with the test labels (else the null label). A model that cannot
    edit this way (a ValueError) gets a note instead."""
    options = dict(model.trajectory_picture.options) if model.trajectory_picture else {}
    options.setdefault("steps", EDIT_PLOT["steps"])
    try:
        x = edit_inputs(model, test, EDIT_PLOT["points" if kind == "points" else "images"], seed)
        labels = labels_for(model, test, len(x)) if test is not None else None
        edits = edit_figure(model, x, labels, kind, seed, options)
    except ValueError as e:
        echo_err(f"genlab: note: no editing figure: {e}")
        return []
    title = f"{model.family} editing ({len(x)} {'rows' if kind == 'points' else 'images'})"
    path = model_dir / "editing.png"
    if kind == "points":
        data = None if test is None else rows(test.x)
        return [plots.edit_points_2d(edits, path, data=data, title=title)]
    return [plots.edit_rows(edits, path, title=title)]


def edit_figure(
    model: GenerativeModel,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    kind: str,
    seed: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    """The edits of `plot_editing`: points: label -> (inputs, outputs); images: label ->
    a row of images."""
    k = len(x)

    def sdedit(s: float) -> torch.Tensor:
        return model.sample(k, seed=seed, init=x, strength=s, y=labels, **options).cpu()

    if kind == "points":
        panels: dict[str, Any] = {f"SDEdit, strength {s:g}": (x.cpu(), sdedit(s))
                                  for s in EDIT_PLOT["strengths"][::2]}  # fmt: skip
        given_x = model.inpaint(x, torch.tensor([0, 1]), seed=seed, y=labels,
                                resample=EDIT_PLOT["resample"], **options)  # fmt: skip
        panels["inpaint: y given x"] = (x.cpu(), given_x.cpu())
        return panels
    mask = torch.zeros(1, *model.event_shape, dtype=torch.bool)
    mask[..., model.event_shape[-1] // 2 :] = True
    steps = options["steps"]
    noise = model.invert(x, y=labels, steps=steps)
    back = model.sample(k, noise=noise, y=labels, **model.inversion_sampler(steps=steps))
    inpainted = model.inpaint(x, mask, seed=seed, y=labels, resample=EDIT_PLOT["resample"],
                              **options)  # fmt: skip
    figure = {"original": x.cpu(), "masked (right half)": torch.where(mask, 0.5, x).cpu(),
              "inpainted": inpainted.cpu()}  # fmt: skip
    figure |= {f"SDEdit {s:g}": sdedit(s) for s in EDIT_PLOT["strengths"]}
    figure["inverted, regenerated"] = back.cpu()
    return figure


def plot_history(model: GenerativeModel, model_dir: Path) -> list[Path]:
    """MODEL_DIR/history.png: EM log-likelihoods, or the run's loss curves (`plot_log`)."""
    curve = model.fit_curve()
    if curve is None:
        return plot_log(model_dir, f"{model.family} training")
    label, values = curve
    path = model_dir / "history.png"
    return [plots.curve({"train": values}, path, ylabel=label, title=f"{model.family} training")]


def best_row(rows: list[dict[str, float]]) -> dict[str, float] | None:
    """The validation row of the lowest val_loss (the first of equals: the one the trainer
    kept as best), or None without validation rows."""
    val = [r for r in rows if isinstance(r.get("val_loss"), int | float)]
    finite = [r for r in val if math.isfinite(r["val_loss"])]
    return min(finite, key=lambda r: r["val_loss"]) if finite else None


def plot_log(run_dir: Path, title: str, path: Path | None = None) -> list[Path]:
    """`path` (default RUN_DIR/history.png) from the trainer's log.jsonl: the training loss
    and, when the run validated, the validation loss against the step, the best step marked
    (nothing without training rows)."""
    logged = read_log(run_dir / LOG_FILE, math.inf)
    train = [r for r in logged if "loss" in r]
    val = [r for r in logged if "val_loss" in r]
    if not train:
        return []
    drawn = plots.loss_curves(
        ([r["step"] for r in train], [r["loss"] for r in train]),
        path or run_dir / "history.png",
        val=([r["step"] for r in val], [r["val_loss"] for r in val]) if val else None,
        ylabel="loss (the family's training objective)",
        title=title,
    )
    best = best_row(logged)
    if best is not None:
        typer.echo(f"best validation loss {best['val_loss']:.5g} at step {best['step']}")
    return [drawn]


@app.command()
def plot(
    model_dir: ModelDir,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Overlay this data set's test points (2-D models); for a model with an "
            "encoder (vae), also reconstruct and encode them.",
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
            callback=check_suffix((".png",)),
            help="The .png to write (default: MODEL_DIR/plot.png).",
        ),
    ] = None,
) -> None:
    """Plot a saved model: its density and samples (2-D points) or a sample grid (images).

    For 2-D point models: filled density contours, model samples, the test points of --data
    and, for a mixture (gmm), each component's 1- and 2-sigma ellipses. For a model with an
    encoder (vae) and --data, also MODEL_DIR/reconstructions.png (images) and, with a 2-D
    latent space, MODEL_DIR/latent.png (posterior means coloured by label). For a model that
    samples along a trajectory, also its picture: MODEL_DIR/trajectories.png (flow: from
    noise to samples, with MODEL_DIR/samples.gif, the samples moving) or
    MODEL_DIR/denoising.png (diffusion: the denoising sequence of a few samples). For flow
    and diffusion also MODEL_DIR/editing.png: images inpainted (right half), SDEdit at
    strengths 0.2-1.0 and reconstructed from their inverted noise; 2-D points moved by SDEdit
    and resampled given their first coordinate (of --data, else of model samples). Also writes
    MODEL_DIR/history.png when the model kept its training curve (EM log-likelihoods, or
    the trainer's log.jsonl: training and validation loss against the step, the best step
    marked). For other models (text, points of another dimension) it says why there is no
    picture of samples, draws the rest, and fails when that is nothing. A run folder without
    a saved model yet (a run in progress, or killed) gets only its curves: MODEL_DIR/history.png
    (or --out).
    """
    if not (model_dir / CONFIG_FILE).is_file() and (model_dir / LOG_FILE).is_file():
        written = plot_log(model_dir, f"{model_dir.name} training", out)
        if not written:
            raise ValueError(f"{model_dir / LOG_FILE} holds no training rows yet: nothing to draw")
        typer.echo(f"wrote {written[0]}")
        return
    model = genlab.load(model_dir)
    shape = tuple(model.event_shape or ())
    kind = shape_kind(shape)
    cannot = cannot_draw(model)
    if cannot is not None and out is not None:
        raise ValueError(f"cannot write {out}: {cannot}")
    out = out or model_dir / "plot.png"
    title = model.family if data is None else f"{model.family} on {data_name(data)}"
    test = None if data is None else load_dataset(data, split="test", n=n, seed=seed, root=root)
    if test is not None and not model.is_text and tuple(test.event_shape) != shape:
        raise ValueError(
            f"--data {data} has samples of shape {tuple(test.event_shape)}, but the model's "
            f"have shape {shape}: pass the data set the model was fitted on"
        )
    written: list[Path] = []
    if cannot is None and kind == "image":
        if data is not None and not model.has_encoder:
            echo_err("genlab: note: --data is only drawn for 2-D point models; ignoring it")
        written.append(plot_images(model, samples or PLOT_SAMPLES["image"], seed, out, title))
    elif cannot is None:
        written.append(plot_points(model, test, samples or PLOT_SAMPLES["points"], seed, out,
                                   title))  # fmt: skip
    if model.has_encoder and test is not None:
        written += plot_encoder(model, test, kind, model_dir)
    if model.trajectory_picture is not None and cannot is None:
        written += plot_trajectory(model, test, kind, seed, model_dir)
    if getattr(model, "editable", False) and cannot is None:
        written += plot_editing(model, test, kind, seed, model_dir)
    written += plot_history(model, model_dir)
    if not written:
        raise ValueError(f"nothing to draw: {cannot}, and {model_dir} holds no training curve")
    if cannot is not None:
        echo_err(f"genlab: note: {cannot}; drew the other pictures only")
    for path in written:
        typer.echo(f"wrote {path}")


def cannot_draw(model: GenerativeModel) -> str | None:
    """Why `genlab plot` cannot picture the model's samples (None when it can: 2-D points
    and images)."""
    shape = tuple(model.event_shape or ())
    if model.is_text:
        return (
            "genlab plot draws 2-D point and image models, and this is a text model: read its "
            "samples with genlab sample"
        )
    if shape_kind(shape) != "image" and shape != (2,):
        return (
            f"genlab plot draws 2-D point and image models, and this model's samples have shape "
            f"{shape}: write them with genlab sample --out FILE.npy"
        )
    return None
