"""`genlab sample`: draw samples from a saved model and write them as .npy, as .png (a scatter
or a grid), or as a folder of PNG files, one per image (text models print theirs, token by
token)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

import genlab
from genlab import plots
from genlab.cli.common import LabelOption, ModelDir, app, parse_label
from genlab.data import save_image_folder, shape_kind
from genlab.models import GenerativeModel

SAMPLER_FLAGS = {
    "steps": "--steps", "method": "--method", "guidance": "--guidance", "y": "--label",
    "eta": "--eta", "order": "--order", "grid": "--grid", "prompt": "--prompt",
    "max_new_tokens": "--max-new-tokens",
    "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
    "churn": "--churn", "s_tmin": "--s-tmin", "s_tmax": "--s-tmax", "times": "--times",
    "infill": "--infill",
    "placeholder": "--placeholder", "confidence": "--confidence",
}  # fmt: skip
"""The keywords of a family's `sample` that `genlab sample` can pass, and their options."""


def parse_times(text: str | None) -> list[float] | None:
    """--times "1,0.5,0.1,0" as floats (the model checks the grid itself)."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"--times must be comma-separated numbers, e.g. 1,0.5,0.1,0; got {text!r}"
        ) from None


def sampler_options(model: GenerativeModel, **given: Any) -> dict[str, Any]:
    """The given (not None) sampler keywords, checked against `model.sample_options`.

    Raises:
        ValueError: naming the options the model's `sample` does not take.
    """
    chosen = {k: v for k, v in given.items() if v is not None}
    refused = [SAMPLER_FLAGS[k] for k in chosen if k not in model.sample_options]
    if refused:
        raise ValueError(
            f"a {model.family} model's sample takes no {', '.join(refused)}; "
            f"see 'genlab sample --help'"
        )
    return chosen


OUT_SUFFIXES = (".npy", ".png", ".csv", ".parquet")
"""The files --out may name; a name ending in / (or an existing folder) is a folder of PNGs."""
GRID_FILE = "grid.png"


def is_folder_out(text: str) -> bool:
    """Whether --out names a folder: it ends in a slash, or is an existing folder."""
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def check_out(text: str | None) -> str | None:
    """A typer callback refusing an --out that is neither a known file nor a folder."""
    if text is None or is_folder_out(text) or Path(text).suffix.lower() in OUT_SUFFIXES:
        return text
    raise typer.BadParameter(
        f"{text!r} must end in {' or '.join(OUT_SUFFIXES)} (a file), or in / (a folder of PNGs)"
    )


def write_sample_folder(samples: torch.Tensor, folder: Path, title: str) -> str:
    """One PNG per image sample (`folder/0000.png`, ...: `save_image_folder`, 8 bits per
    channel) and a grid of them, `folder/grid.png`; returns what was written, for the message.

    Raises:
        ValueError: the samples are not images, or the folder is not empty.
    """
    shape = tuple(samples.shape[1:])
    if shape_kind(shape) != "image":
        raise ValueError(
            f"--out {folder}/ writes images, one PNG each; this model samples points of shape "
            f"{shape}: use --out FILE.npy (or FILE.png for a scatter of 2-D points)"
        )
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"--out {folder}/ is not empty: choose a new folder or empty it")
    files = save_image_folder(samples, folder)
    plots.sample_grid(samples, folder / GRID_FILE, title=title)
    return f"{folder}/ ({files[0].name} to {files[-1].name}, and {GRID_FILE})"


def write_sample_png(samples: torch.Tensor, path: Path, title: str) -> Path:
    """A scatter of 2-D points or a grid of images, chosen by the samples' shape."""
    shape = tuple(samples.shape[1:])
    if shape_kind(shape) == "image":
        return plots.sample_grid(samples, path, title=title)
    if shape == (2,):
        return plots.scatter_2d(samples, path, title=title)
    raise ValueError(
        f"cannot draw samples of shape {shape} as a picture (only 2-D points and images); "
        "write them with --out FILE.npy instead"
    )


def sample_text(
    model: GenerativeModel, n: int, seed: int, out: Path | None, options: dict[str, Any]
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
        typer.Option("-n", "--n", min=1, help="Number of samples (default: 1000; text: 1)."),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the sampler.")] = 0,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            callback=check_out,
            help="FILE.npy (the array), FILE.png (a scatter of 2-D points or an image grid), "
            "DIR/ (one PNG per image and DIR/grid.png), or FILE.csv / FILE.parquet (rows as a "
            "table) (default: MODEL_DIR/samples.npy; a model of a table: samples.csv).",
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
    label: LabelOption = None,
    eta: Annotated[
        float | None, typer.Option(min=0.0, help="DDIM noise (0: deterministic, 1: DDPM).")
    ] = None,
    order: Annotated[
        int | None,
        typer.Option(min=1, max=3, help="dpm++ / unipc: multistep order (1-3; default 2 / 3)."),
    ] = None,
    grid: Annotated[
        str | None,
        typer.Option(
            help="Flow and diffusion: time grid (uniform, quadratic, power, logsnr, karras)."
        ),
    ] = None,
    times: Annotated[
        str | None,
        typer.Option(help="Flow and diffusion: your own decreasing time grid, e.g. 1,0.5,0.1,0."),
    ] = None,
    churn: Annotated[
        float | None,
        typer.Option(min=0.0, help="Flow and diffusion heun sampler: EDM's S_churn."),
    ] = None,
    s_tmin: Annotated[
        float | None,
        typer.Option(min=0.0, help="With --churn: churn only where sigma/alpha >= this."),
    ] = None,
    s_tmax: Annotated[
        float | None,
        typer.Option(min=0.0, help="With --churn: churn only where sigma/alpha <= this."),
    ] = None,
    infill: Annotated[
        str | None,
        typer.Option(
            help="Masked diffusion: a text whose placeholders are generated, e.g. "
            '"ROMEO:____ love ____".'
        ),
    ] = None,
    placeholder: Annotated[
        str | None, typer.Option(help="Masked diffusion: the free character of --infill (_).")
    ] = None,
    confidence: Annotated[
        bool | None,
        typer.Option(
            "--confidence/--no-confidence",
            help="Masked diffusion: unmask the most confident tokens first.",
        ),
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Text models: the prompt.")] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="Text models: tokens to generate.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Token samplers: softmax temperature (> 0).")
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(min=1, help="Token samplers: keep the k likeliest tokens.")
    ] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Token samplers: nucleus mass in (0, 1].")
    ] = None,
) -> None:
    """Draw samples from a saved model and write them as .npy, .png or a folder of PNGs.

    Sampler options (--steps, --method, --guidance, --label, --eta, --order, --grid, --times,
    --churn, --s-tmin, --s-tmax, --prompt, --max-new-tokens, --temperature, --top-k, --top-p,
    --infill, --placeholder, --confidence) are passed to the model's `sample` when given; a
    model whose `sample` does not take one of them reports it.
    """
    model = genlab.load(model_dir)
    label = parse_label(label, model.label_names_)
    options = sampler_options(model, steps=steps, method=method, guidance=guidance, y=label,
                              eta=eta, order=order, grid=grid, prompt=prompt,
                              max_new_tokens=max_new_tokens,
                              temperature=temperature, top_k=top_k, top_p=top_p,
                              times=parse_times(times), churn=churn, s_tmin=s_tmin,
                              s_tmax=s_tmax, infill=infill,
                              placeholder=placeholder, confidence=confidence)  # fmt: skip
    if model.is_text:
        sample_text(model, n or 1, seed, None if out is None else Path(out), options)
        return
    n = 1000 if n is None else n
    table_out = out is not None and Path(out).suffix.lower() in (".csv", ".parquet")
    if model.table_transform_ is not None or table_out:  # rows as a table (genlab.data.tables)
        from genlab.data.tables import write_table
        from genlab.models.tabular import sample_frame

        frame = sample_frame(model, n, seed, **options)
        path = write_table(frame, Path(out) if out is not None else model_dir / "samples.csv")
        typer.echo(f"wrote {path} ({n} rows of {frame.shape[1]} columns)")
        return
    samples = model.sample(n, seed=seed, **options).detach().cpu()
    if not torch.isfinite(samples).all():
        raise ValueError(
            f"the samples of {model_dir} contain NaN or infinity (nothing written): the model "
            "is broken; re-fit it or restore the folder"
        )
    title = f"{n} samples from {model.family}"
    if out is not None and is_folder_out(out):
        written = write_sample_folder(samples, Path(out), title)
        typer.echo(f"wrote {written} ({n} samples of shape {tuple(samples.shape[1:])})")
        return
    out = Path(out) if out is not None else model_dir / "samples.npy"
    if out.suffix.lower() == ".npy":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, samples.numpy())
    else:
        write_sample_png(samples, out, title=title)
    typer.echo(f"wrote {out} ({n} samples of shape {tuple(samples.shape[1:])})")
