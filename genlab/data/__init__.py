"""Data sets as `Dataset` records: 2-D toys, digits, MNIST and the user's .npy/.csv files.

from genlab.data import load_dataset
train = load_dataset("8gaussians", n=5000, seed=1)      # x: (5000, 2) float32
test = load_dataset("digits", split="test")              # x: (360, 1, 8, 8)
big = load_dataset("features.npy")                       # x: a lazy NpyArray
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

from genlab.data import dataset
from genlab.data.dataset import Dataset, NpyArray, image_geometry, image_shape, shape_kind
from genlab.data.files import is_data_file, load_file
from genlab.data.images import load_digits, load_mnist
from genlab.data.text import TEXT_PREFIX, load_text
from genlab.data.toys import TOY_SAMPLERS, TOYS, load_toy

Split = Literal["train", "test", "all"]
SPLITS: tuple[str, ...] = ("train", "test", "all")
BUILTINS: tuple[str, ...] = (*TOYS, "digits", "mnist")

__all__ = [
    "BUILTINS",
    "TOYS",
    "Dataset",
    "NpyArray",
    "image_geometry",
    "image_shape",
    "load_dataset",
    "load_text",
    "shape_kind",
]


def load_dataset(
    name: str | os.PathLike,
    split: Split = "train",
    n: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
) -> Dataset:
    """Load a built-in data set or a data file, with a fixed train/test split.

    - Toys (`TOYS`): a fresh draw of n points, x (n, 2) float32 in about [-4, 4], y the
      (n,) int64 component (or None). Train, test and "all" are independent draws, each a
      pure function of (name, split, n, seed). Default n: 10,000 (train, all), 2,000 (test).
    - "digits": scikit-learn's 8 x 8 digits, x (n, 1, 8, 8) in {k / 16}, y (n,) int64;
      a fixed split of 1,437 train / 360 test images, "all" = train then test.
    - "mnist": the IDX files in `root` (or $GENLAB_DATA), or its mnist/ subfolder; x
      (n, 1, 28, 28) in {k / 255}, y (n,) int64; "all" = train then test.
    - A path ending in .npy or .csv, or any existing file: train = the first 90% of its
      rows, test = the last 10%, all = every row (see `genlab.data.files`). A .npy file is
      returned lazily as an `NpyArray`.
    - "text:PATH": a UTF-8 text corpus (`genlab.data.text.load_text`): train = the first 90%
      of its characters, test = the last 10%; n keeps the first n characters.

    A built-in name wins over a file of the same name; pass "./moons" for the file.

    Args:
        name: a name from `BUILTINS`, or a file path.
        split: "train", "test" or "all".
        n: number of samples. Toys draw n; the others take the first n of the split
            (None: the whole split).
        seed: seed of the toys' random draw (ignored by the other data sets).
        root: folder holding the MNIST files (default: $GENLAB_DATA).

    Returns:
        A `Dataset` with x of shape (n, *event_shape).

    Raises:
        ValueError: unknown name, bad split, n or seed (an integer in [0, 2**63 - 1]), a
            malformed or unsupported file, n larger than the split, or n points that
            would not fit in memory; every message names the problem and the fix.
        TypeError: name is neither a str nor a path.
        FileNotFoundError: a file (or an MNIST file) is missing, or a name that looks like
            a path (it has a suffix or a folder) names no file.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(name, str | os.PathLike):
        raise TypeError(f"name must be a data set name or a file path, got {name!r}")
    n = None if n is None else dataset.check_count(n)
    seed = dataset.check_seed(seed)
    if isinstance(name, str) and name in TOY_SAMPLERS:
        return load_toy(name, split, n, seed)
    if name == "digits":
        return _first_rows(load_digits(split), n, split)
    if name == "mnist":
        return _first_rows(load_mnist(split, root), n, split)
    if isinstance(name, str) and name.startswith(TEXT_PREFIX):
        return load_text(name, split, n)
    if is_data_file(name):
        return _first_rows(load_file(name, split), n, split)
    if Path(name).suffix or os.sep in os.fspath(name):
        raise FileNotFoundError(
            f"{os.fspath(name)}: no such file (nor a built-in data set: {', '.join(BUILTINS)})"
        )
    raise ValueError(
        f"unknown data set {os.fspath(name)!r}: use one of {', '.join(BUILTINS)}, "
        "or a file path ending in .npy or .csv"
    )


def _first_rows(data: Dataset, n: int | None, split: str) -> Dataset:
    """The first n samples of `data` (all of them for n=None)."""
    if n is None or n == len(data):
        return data
    if n > len(data):
        raise ValueError(
            f"n={n} but the {split!r} split of {data.name!r} has only {len(data)} samples"
        )
    x = data.x.rows(0, n) if isinstance(data.x, NpyArray) else data.x[:n].clone()
    y = None if data.y is None else data.y[:n].clone()
    return dataclasses.replace(data, x=x, y=y)
