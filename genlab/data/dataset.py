"""The Dataset record every loader returns, and a lazy row reader for large `.npy` files."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

DataKind = Literal["points", "image", "text"]


class NpyArray:
    """Rows of a 2-D (or higher) `.npy` file, read on demand with `os.pread`.

    Unlike `np.load(mmap_mode="r")`, nothing stays mapped: reading rows `[a, b)` costs
    `(b - a) * row_bytes` of memory and no more, so a file larger than RAM can be streamed.
    Indexing with a slice or an integer array returns a `torch.Tensor` of the file's dtype.

    A row window `[start, stop)` of the file (see `rows`) behaves as an array of its own:
    `len`, `shape` and indexing all refer to the window, so row 0 is file row `start`.

    Args:
        path: the `.npy` file.
        start: first file row of the window.
        stop: end (exclusive) of the window in file rows; None for the end of the file.
    """

    def __init__(self, path: str | os.PathLike, start: int = 0, stop: int | None = None):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read_header is None:
                    raise ValueError(f"unsupported .npy format version {version}")
                shape, fortran_order, dtype = read_header(f)
            except ValueError as e:
                raise ValueError(f"{self.path}: not a valid .npy file ({e})") from None
            self.offset = f.tell()
        if fortran_order:
            raise ValueError(
                f"{self.path}: Fortran-ordered arrays cannot be streamed; save it C-ordered"
            )
        if dtype.hasobject:
            raise ValueError(
                f"{self.path}: object arrays are not supported (they would need pickle)"
            )
        if len(shape) < 1:
            raise ValueError(f"{self.path}: a 0-d array has no rows")
        self.dtype = dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self.file_rows = int(shape[0])
        expected = self.offset + self.file_rows * self.row_bytes
        size = self.path.stat().st_size
        if size < expected:
            raise ValueError(
                f"{self.path}: truncated .npy file ({size} bytes, the header promises {expected})"
            )
        stop = self.file_rows if stop is None else stop
        self.start, self.stop = _check_window(start, stop, self.file_rows)
        self.shape: tuple[int, ...] = (self.stop - self.start, *shape[1:])

    def rows(self, start: int, stop: int | None = None) -> NpyArray:
        """A view of rows `[start, stop)` of this array, 0 <= start <= stop <= len(self).

        Nothing is read: the view shares the file, and its row 0 is this array's row `start`.
        """
        start, stop = _check_window(start, len(self) if stop is None else stop, len(self))
        view = copy.copy(self)
        view.start, view.stop = self.start + start, self.start + stop
        view.shape = (stop - start, *self.shape[1:])
        return view

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _read_rows(self, fd: int, start: int, stop: int) -> np.ndarray:
        count = max(stop - start, 0)
        nbytes = count * self.row_bytes
        first = self.offset + (self.start + start) * self.row_bytes
        buf = bytearray(nbytes)
        view, done = memoryview(buf), 0
        while done < nbytes:
            got = os.preadv(fd, [view[done:]], first + done)
            if got == 0:
                raise ValueError(f"{self.path}: file ended early while reading rows")
            done += got
        return np.frombuffer(buf, dtype=self.dtype).reshape((count, *self.shape[1:]))

    def _open(self) -> int:
        return os.open(self.path, os.O_RDONLY)

    def __getitem__(self, index: slice | int | np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(index, int | np.integer) and not isinstance(index, bool):
            index = int(index)
            row = index + len(self) if index < 0 else index
            if not 0 <= row < len(self):
                raise IndexError(f"row {index} out of range for {len(self)} rows")
            return self[row : row + 1][0]
        fd = self._open()
        try:
            if isinstance(index, slice) and (index.step or 1) > 0:
                start, stop, step = index.indices(len(self))
                rows = self._read_rows(fd, start, max(start, stop))
                return torch.from_numpy(rows[::step].copy() if step != 1 else rows)
            if isinstance(index, slice):  # negative step: gather the rows it names
                index = np.arange(len(self))[index]
            idx = np.asarray(index, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
                raise IndexError(f"row index out of range for {len(self)} rows")
            out = np.empty((idx.size, *self.shape[1:]), dtype=self.dtype)
            for pos in np.argsort(idx, kind="stable"):
                out[pos] = self._read_rows(fd, int(idx[pos]), int(idx[pos]) + 1)[0]
            return torch.from_numpy(out)
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        full = self.start == 0 and self.stop == self.file_rows
        window = "" if full else f", start={self.start}, stop={self.stop}"
        return f"NpyArray({str(self.path)!r}{window}, shape={self.shape}, dtype={self.dtype})"


def _check_window(start: int, stop: int, n_rows: int) -> tuple[int, int]:
    """Validate the row window `[start, stop)` of an array of `n_rows` rows."""
    for bound in (start, stop):
        if isinstance(bound, bool) or not isinstance(bound, int | np.integer):
            raise TypeError(f"row window bounds must be integers, got {bound!r}")
    if not 0 <= start <= stop <= n_rows:
        raise ValueError(
            f"row window [{start}, {stop}) must satisfy 0 <= start <= stop <= {n_rows}"
        )
    return int(start), int(stop)


ArrayLike = torch.Tensor | NpyArray


def image_shape(event_shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(C, H, W) when samples of this shape are images, else None: the one rule of genlab.

    An image is (H, W) (one channel) or (C, H, W) with 1 <= C <= 4 channels, H, W >= 4.
    Loaders, families, plots and the feature classifier all ask this function.
    """
    shape = tuple(int(s) for s in event_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) == 3 and 1 <= shape[0] <= 4 and min(shape[1:]) >= 4:
        return shape
    return None


def image_geometry(event_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(channels, side) of a square image (`image_shape` with H == W), else None: what the
    convolutional nets (UNet, ConvEncoder) need."""
    shape = image_shape(event_shape)
    return (shape[0], shape[1]) if shape is not None and shape[1] == shape[2] else None


def shape_kind(event_shape: tuple[int, ...]) -> Literal["points", "image"]:
    """ "image" for image shapes (`image_shape`), else "points" (vectors of any shape)."""
    return "image" if image_shape(event_shape) is not None else "points"


@dataclass(frozen=True)
class Dataset:
    """Samples of one data set.

    Attributes:
        x: (n, *event_shape) samples: float32 for points and images (images in [0, 1] as
            k / (levels - 1)), int32 code points for text; a `NpyArray` for lazily read files.
        y: (n,) int64 class labels, or None.
        event_shape: shape of one sample.
        kind: "points", "image" or "text".
        name: the data set's name (or file path).
        levels: number of grey levels of a quantised image data set (digits 17, MNIST 256).
        text: the characters of a text data set (kind "text", whose x holds their (n,) int32
            Unicode code points and event_shape is ()), else None.
    """

    x: ArrayLike
    y: torch.Tensor | None
    event_shape: tuple[int, ...]
    kind: DataKind
    name: str = ""
    levels: int | None = None
    text: str | None = None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def dim(self) -> int:
        """Number of scalar dimensions of one sample, prod(event_shape)."""
        return int(np.prod(self.event_shape, dtype=np.int64))
