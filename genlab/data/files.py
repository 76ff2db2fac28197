"""The user's own data files: `.npy` (read lazily, row by row) and numeric `.csv`.

Files have no split of their own, so rows are split by position: "train" is the first 90%
of the rows (`9 * rows // 10`), "test" the remaining 10%, "all" every row. Shuffle the
file first if its rows are ordered (for example by class).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from genlab.data.dataset import Dataset, NpyArray, shape_kind

FILE_SUFFIXES = (".npy", ".csv")
_NPY_MAGIC = b"\x93NUMPY"


class ChannelNpyArray(NpyArray):
    """A 3-D (n, H, W) `.npy` file read as (n, 1, H, W): a grey-scale channel axis is added.

    The bytes of a row are unchanged, so only the reported shape differs from `NpyArray`;
    row windows (`rows`) keep the channel axis.
    """

    def __init__(self, path: str | os.PathLike, start: int = 0, stop: int | None = None):
        super().__init__(path, start, stop)
        if self.ndim != 3:
            raise ValueError(f"{self.path}: expected a 3-D (n, H, W) array, got shape {self.shape}")
        self.shape = (self.shape[0], 1, *self.shape[1:])


def is_data_file(name: str | os.PathLike) -> bool:
    """Whether `name` names a data file: it ends in .npy or .csv, or is an existing file."""
    return str(name).lower().endswith(FILE_SUFFIXES) or Path(name).is_file()


def split_rows(total: int, split: str) -> tuple[int, int]:
    """The rows [start, stop) of a split: train the first 90%, test the last 10%, all every row."""
    cut = 9 * total // 10
    return {"train": (0, cut), "test": (cut, total), "all": (0, total)}[split]


def read_csv(path: str | os.PathLike) -> torch.Tensor:
    """A numeric comma-separated file as an (n, d) float32 tensor.

    Blank lines are skipped, and so is the first line if any of its cells is not a number
    (a header). Every other line must hold d numbers.

    Raises:
        ValueError: a cell is not a number, a line has the wrong number of cells, or there
            are no data rows; the message names the line (counted from 1).
    """
    path = Path(path)
    rows: list[list[float]] = []
    first = True
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            cells = line.strip().split(",")
            try:
                values = [float(cell) for cell in cells]
            except ValueError:
                if first:  # a header row
                    first = False
                    continue
                bad = next(c for c in cells if not _is_number(c))
                raise ValueError(
                    f"{path}, line {lineno}: cell {bad.strip()!r} is not a number"
                ) from None
            first = False
            if rows and len(values) != len(rows[0]):
                raise ValueError(
                    f"{path}, line {lineno}: {len(values)} cells, but earlier rows have "
                    f"{len(rows[0])}"
                )
            rows.append(values)
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return torch.from_numpy(np.asarray(rows, dtype=np.float32))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _open_array(path: Path) -> NpyArray | torch.Tensor:
    """The whole file: a lazy NpyArray for .npy (3-D gains a channel axis), a tensor for CSV."""
    suffix = path.suffix.lower()
    if suffix == ".npy" or (suffix != ".csv" and _starts_with(path, _NPY_MAGIC)):
        array = NpyArray(path)
        return ChannelNpyArray(path) if array.ndim == 3 else array
    return read_csv(path)


def _starts_with(path: Path, prefix: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(prefix)) == prefix


def load_file(path: str | os.PathLike, split: str) -> Dataset:
    """Rows of a `.npy` or `.csv` file as a Dataset (y is None, levels None).

    Shapes: (n, d) gives kind "points"; (n, H, W) is read as (n, 1, H, W); the kind of
    (n, C, H, W) is "image" when `image_shape` says so, else "points". A `.npy` file stays
    on disk: x is an `NpyArray` window of the split's rows, of the file's dtype. A `.csv`
    file is read into a float32 tensor.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is malformed, its shape is not 2-, 3- or 4-D, or the split
            has no rows.
    """
    path = Path(path)
    x = _open_array(path)
    if not 2 <= len(x.shape) <= 4:
        raise ValueError(
            f"{path}: expected a 2-D (n, d), 3-D (n, H, W) or 4-D (n, C, H, W) array, "
            f"got shape {tuple(x.shape)}"
        )
    start, stop = split_rows(len(x), split)
    if start == stop:
        raise ValueError(
            f"{path}: the {split!r} split is empty ({len(x)} rows; train is the first 90%, "
            "test the last 10%); use split='all'"
        )
    x = x.rows(start, stop) if isinstance(x, NpyArray) else x[start:stop]
    event_shape = tuple(int(s) for s in x.shape[1:])
    kind = shape_kind(event_shape)
    return Dataset(x=x, y=None, event_shape=event_shape, kind=kind, name=str(path))
