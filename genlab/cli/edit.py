"""`genlab edit`: edit given images (or points) with a saved flow or diffusion model:
inpainting (--mask), SDEdit / img2img (--strength) and inversion to noise (--invert).

    genlab edit runs/digits-flow --input digit.png --mask mask.png --out inpainted.png
    genlab edit runs/digits-flow --input digit.png --strength 0.6 --n 8 --out variations.png
    genlab edit runs/digits-flow --input digit.png --invert --out noise.npy
    genlab edit runs/moons-flow --input points.npy --mask mask.npy --out conditional.npy

Inputs: a PNG (grey or colour, read with Pillow and converted to the model's channels:
L, LA, RGB or RGBA for 1-4 channels; 8-bit values / 255) of exactly the model's image size,
or resized to it with --resize (bilinear; the mask nearest-neighbour); or a .npy of rows
(n, *event_shape), or one row (*event_shape), for any model, points included. Mask: a PNG
of the image's size, white (> 127) = generate, black = keep (diffusers' convention), applied
to every channel; or a .npy of 0/1 (1 = generate) of a shape `inpaint` takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

import genlab
from genlab import plots
from genlab.cli.common import ModelDir, app, check_suffix
from genlab.cli.sample import sampler_options, write_sample_png
from genlab.data import image_shape
from genlab.models import GenerativeModel

PNG_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
"""Pillow's mode for images of 1-4 channels."""


def read_png(path: Path, shape: tuple[int, int, int], resize: bool, mask: bool) -> np.ndarray:
    """A PNG as (C, H, W) float32 in [0, 1] (mask: (1, H, W) 0/1, white = 1), converted to
    the model's channels and, with `resize`, resized to its (H, W).

    Raises:
        ValueError: not a readable image, or of another size without `resize`.
    """
    from PIL import Image, UnidentifiedImageError  # Pillow: matplotlib's own dependency

    channels, height, width = shape
    try:
        with Image.open(path) as image:
            image.load()
            picture = image.convert("L" if mask else PNG_MODES[channels])
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image Pillow can read (pass a PNG)") from None
    if picture.size != (width, height):
        if not resize:
            raise ValueError(
                f"{path} is {picture.size[0]} x {picture.size[1]} pixels, but the model makes "
                f"{width} x {height} images (samples of shape {shape}): pass a "
                f"{width} x {height} image, or --resize to resize it"
            )
        how = Image.Resampling.NEAREST if mask else Image.Resampling.BILINEAR
        picture = picture.resize((width, height), how)
    arr = np.asarray(picture, dtype=np.float32)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return (arr > 127).astype(np.float32) if mask else arr / 255.0


def read_rows(path: Path, what: str, event_shape: tuple[int, ...], resize: bool) -> np.ndarray:
    """--input or --mask as rows (n, *event_shape) (a mask may broadcast: see `inpaint`)."""
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{what} {path} is not a readable .npy array ({e})") from None
        return arr[None] if arr.ndim == len(event_shape) else arr
    geometry = image_shape(event_shape)
    if geometry is None:
        raise ValueError(
            f"{what} {path}: this model's samples have shape {event_shape}, not images: pass "
            "a .npy of rows"
        )
    arr = read_png(path, geometry, resize, mask=what == "--mask")
    return arr.reshape(1, *(arr.shape if len(event_shape) == 3 else arr.shape[1:]))


def write_png(images: torch.Tensor, path: Path, per_row: int) -> None:
    """One image as a PNG of its own size, several as a grid (`per_row` a row, 1 pixel of
    white between), 8-bit."""
    from PIL import Image

    shape = image_shape(tuple(images.shape[1:]))
    if shape is None or shape[0] not in (1, 3):
        raise ValueError(
            f"cannot write samples of shape {tuple(images.shape[1:])} as a PNG (grey or RGB "
            "images only); write them with --out FILE.npy instead"
        )
    images = images.reshape(len(images), *shape)
    mosaic = plots.tile_images(images, nrow=per_row, pad=int(len(images) > 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(mosaic * 255).astype(np.uint8)).save(path, format="PNG")


def write_output(samples: torch.Tensor, path: Path, per_row: int, title: str) -> None:
    samples = samples.detach().cpu()
    if not torch.isfinite(samples).all():
        raise ValueError("the edited samples contain NaN or infinity (nothing written)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        np.save(path, samples.numpy())
    elif image_shape(tuple(samples.shape[1:])) is not None:
        write_png(samples, path, per_row)
    else:
        write_sample_png(samples, path, title=title)


def check_editable(model: GenerativeModel, model_dir: Path) -> None:
    if not getattr(model, "editable", False):
        raise ValueError(
            f"genlab edit needs a flow or diffusion model, and {model_dir} holds a "
            f"{model.family} model"
        )


@app.command()
def edit(
    model_dir: ModelDir,
    input_: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            callback=check_suffix((".png", ".npy")),
            help="The image (.png) or rows (.npy) to edit.",
        ),
    ],
    mask: Annotated[
        Path | None,
        typer.Option(
            callback=check_suffix((".png", ".npy")),
            help="Inpaint: a PNG, white = generate, black = keep (or a .npy of 0/1, 1 = generate).",
        ),
    ] = None,
    strength: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="SDEdit: start at this noise level (0: the input, 1: a fresh sample); with "
            "--mask, the inpainting's start.",
        ),
    ] = None,
    invert: Annotated[
        bool, typer.Option("--invert", help="Write the input's noise (the ODE's) as .npy.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            callback=check_suffix((".png", ".npy")),
            help="FILE.png or FILE.npy (default: MODEL_DIR/edited.png for images, "
            "edited.npy for points, noise.npy with --invert).",
        ),
    ] = None,
    n: Annotated[
        int, typer.Option("-n", "--n", min=1, help="Samples per input (a grid row each).")
    ] = 1,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the noise.")] = 0,
    steps: Annotated[int | None, typer.Option(min=1, help="Solver/sampler steps.")] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="The sampler (flow: heun, ...; diffusion: ddim, dpm++, ...); "
            "with --invert, the ODE solver (euler, midpoint, heun, rk4)."
        ),
    ] = None,
    label: Annotated[
        int | None, typer.Option("--label", min=0, help="Class label (conditional models).")
    ] = None,
    guidance: Annotated[
        float | None, typer.Option(help="Classifier-free guidance weight w (with --label).")
    ] = None,
    resize: Annotated[
        bool, typer.Option("--resize", help="Resize PNGs to the model's image size.")
    ] = False,
) -> None:
    """Edit an image (or points) with a saved flow or diffusion model.

    --mask: inpaint (generate where the mask is white, keep the rest exactly); --strength S
    without a mask: SDEdit (noise the input to level S, then sample back: small S stays
    close to it); --invert: map the input to its noise by the deterministic ODE (.npy, the
    noise `genlab sample`'s models start from). --n N draws N samples per input, written as
    a grid (one row per input). PNG inputs must have the model's image size (or --resize).
    """
    model = genlab.load(model_dir)
    check_editable(model, model_dir)
    shape = tuple(model.event_shape)
    if invert and (mask is not None or strength is not None or n != 1):
        raise ValueError("--invert writes the input's noise: pass it without --mask, "
                         "--strength or --n")  # fmt: skip
    if not invert and mask is None and strength is None:
        raise ValueError("pass --mask (inpaint), --strength (SDEdit) or --invert")
    image = image_shape(shape) is not None
    out = out or model_dir / ("noise.npy" if invert else "edited.png" if image else "edited.npy")
    if invert and out.suffix.lower() != ".npy":
        raise ValueError(f"--invert writes noise, an array: pass --out FILE.npy, not {out}")
    x = torch.from_numpy(read_rows(input_, "--input", shape, resize))
    if invert:
        noise = model.invert(x, y=label, steps=steps, method=method, guidance=guidance or 0.0)
        write_output(noise, out, 1, "noise")
        rows = f"{len(x)} input{'s' * (len(x) > 1)}"
        typer.echo(f"wrote {out} (the noise of {rows}, shape {shape}, {model.nfe_} NFE)")
        return
    options = sampler_options(model, steps=steps, method=method, guidance=guidance, y=label)
    x = x.repeat_interleave(n, dim=0)
    if mask is not None:
        m = torch.from_numpy(read_rows(mask, "--mask", shape, resize))
        if len(m) > 1 and len(m) * n == len(x):
            m = m.repeat_interleave(n, dim=0)
        what = "inpainted"
        edited = model.inpaint(x, m, seed=seed, strength=1.0 if strength is None else strength,
                               **options)  # fmt: skip
    else:
        what = f"SDEdit at strength {strength:g} of"
        edited = model.sample(len(x), seed=seed, init=x, strength=strength, **options)
    write_output(edited, out, n, f"{what} {len(x) // n} input(s)")
    inputs = len(x) // n
    typer.echo(f"wrote {out} ({what} {inputs} input{'s' * (inputs > 1)} x {n} "
               f"sample{'s' * (n > 1)} of shape {shape})")  # fmt: skip
