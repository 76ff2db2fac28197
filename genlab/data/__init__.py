"""Data sets as `Dataset` records: 2-D toys, digits, MNIST, the user's .npy/.csv files and
folders of images.

from genlab.data import load_dataset
train = load_dataset("8gaussians", n=5000, seed=1)      # x: (5000, 2) float32
test = load_dataset("digits", split="test")              # x: (360, 1, 8, 8)
big = load_dataset("features.npy")                       # x: a lazy NpyArray
pets = load_dataset("photos/", size=64, channels=3)      # x: (n, 3, 64, 64), y from cat/, dog/
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

from genlab.data import dataset
from genlab.data.dataset import Dataset, NpyArray, image_geometry, image_shape, shape_kind
from genlab.data.files import is_data_file, load_file
from genlab.data.folders import FolderDataset, ImageFolderArray, load_folder, save_image_folder
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
    "FolderDataset",
    "ImageFolderArray",
    "NpyArray",
    "image_geometry",
    "image_shape",
    "load_dataset",
    "load_folder",
    "load_text",
    "save_image_folder",
    "shape_kind",
]


def load_dataset(
    name: str | os.PathLike,
    split: Split = "train",
    n: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    *,
    channels: int | None = None,
    size: int | tuple[int, int] | None = None,
    stream: bool | None = None,
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
      returned lazily as an `NpyArray`. A table (a .parquet file, or a .csv file with a
      header and text columns) is a `genlab.data.tables.TableDataset`: x its encoded rows,
      `frame` the original rows, `transform` fitted on the train split.
    - A folder of PNG/JPEG/WebP images (`genlab.data.folders.load_folder`): x (n, C, H, W)
      in {k / 255}, y from class sub-folders (`label_names` says which is which), train /
      test from train/ and test/ sub-folders or else by a hash of each file's path (about
      10% test), "all" = train then test; unreadable files are skipped and named. Held in
      memory, or read lazily (an `ImageFolderArray`) when larger than a share of it.
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
        channels: image folders: 1 (grey), 3 (RGB) or 4 (RGBA); None: as the files are.
        size: image folders: N or (H, W) to resize and centre-crop to; None: the files'
            own (common) size.
        stream: image folders: True to read rows from the files batch by batch, False to
            hold them in memory; None: decide by their size.

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
    named = isinstance(name, str) and (name in BUILTINS or name.startswith(TEXT_PREFIX))
    folder = not named and Path(name).is_dir()
    if not folder:
        _image_options_only_for_folders(name, channels, size, stream)
    if isinstance(name, str) and name in TOY_SAMPLERS:
        return load_toy(name, split, n, seed)
    if name == "digits":
        return _first_rows(load_digits(split), n, split)
    if name == "mnist":
        return _first_rows(load_mnist(split, root), n, split)
    if isinstance(name, str) and name.startswith(TEXT_PREFIX):
        return load_text(name, split, n)
    if folder:
        return load_folder(name, split, n, channels=channels, size=size, stream=stream)
    if is_data_file(name):
        return _first_rows(load_file(name, split), n, split)
    if Path(name).suffix or os.sep in os.fspath(name):
        raise FileNotFoundError(
            f"{os.fspath(name)}: no such file (nor a built-in data set: {', '.join(BUILTINS)})"
        )
    raise ValueError(
        f"unknown data set {os.fspath(name)!r}: use one of {', '.join(BUILTINS)}, "
        "a file path ending in .npy or .csv, or a folder of images"
    )


def _image_options_only_for_folders(name: object, *options: object) -> None:
    """Refuse channels/size/stream (`options`, in that order) for data other than a folder."""
    names = ("channels", "size", "stream")
    given = [k for k, v in zip(names, options, strict=True) if v is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} apply to folders of images only, not to {os.fspath(name)!r}; "
            "leave them out"
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
    if getattr(data, "frame", None) is not None:  # a table (genlab.data.tables.TableDataset)
        return dataclasses.replace(data, x=x, y=y, frame=data.frame.iloc[:n])
    return dataclasses.replace(data, x=x, y=y)
