"""The Dataset record every loader returns, a lazy row reader for large `.npy` files, the one
image rule, and the checks every loader shares (dtypes, float32 values, memory, counts)."""

from __future__ import annotations

import copy
import math
import os
import tokenize
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch

DataKind = Literal["points", "image", "text"]


GAP_BYTES = 16384
"""Rows of an index read (`NpyArray[rows]`) closer than this many bytes are read in one
`os.preadv`, with the rows between them (4 pages: cheaper than a second system call)."""


class NpyArray:
    """Rows of a 2-D (or higher) `.npy` file, read on demand with `os.pread`.

    Unlike `np.load(mmap_mode="r")`, nothing stays mapped: reading rows `[a, b)` costs
    `(b - a) * row_bytes` of memory and no more, so a file larger than RAM can be streamed.
    Indexing with a slice or an integer array returns a `torch.Tensor` of the file's dtype
    in native byte order (big-endian files are converted as they are read). An index array
    is read in sorted order, one `os.preadv` per run of nearby rows (`GAP_BYTES`), and
    returned in the order given (repeats allowed): a training batch of contiguous windows
    costs one system call per window.

    A row window `[start, stop)` of the file (see `rows`) behaves as an array of its own:
    `len`, `shape` and indexing all refer to the window, so row 0 is file row `start`.

    The header is checked when the file is opened: the dtype must be bool, integer or
    float (`check_dtype`: complex, string, object and structured arrays are refused), the
    shape non-negative and the file exactly as long as the shape says. Every read checks
    its values (`float32_problem`): genlab computes in float32, so NaN, infinity, floats
    beyond float32's range and integers that float32 would round raise a ValueError naming
    the file row.

    Args:
        path: the `.npy` file.
        start: first file row of the window.
        stop: end (exclusive) of the window in file rows; None for the end of the file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a `.npy` file, a corrupt or edited header, an unsupported dtype, a
            Fortran-ordered or 0-d array, or a bad window.
    """

    def __init__(self, path: str | os.PathLike, start: int = 0, stop: int | None = None):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            shape, fortran_order, file_dtype = _read_npy_header(f, self.path)
            self.offset = f.tell()
        if fortran_order:
            raise ValueError(
                f"{self.path}: Fortran-ordered arrays cannot be read row by row; save it "
                "C-ordered: np.save(path, np.ascontiguousarray(a))"
            )
        if len(shape) < 1:
            raise ValueError(f"{self.path}: a 0-d array has no rows; save an (n, d) array")
        if any(s < 0 for s in shape):
            raise ValueError(
                f"{self.path}: the .npy header gives the negative shape {shape}; the file "
                "is corrupt or its header was edited: save the array again with np.save"
            )
        self.file_dtype = file_dtype
        self.dtype = check_dtype(file_dtype, self.path)
        self.row_bytes = math.prod(shape[1:]) * file_dtype.itemsize
        self.file_rows = int(shape[0])
        data = self.path.stat().st_size - self.offset
        needed = self.file_rows * self.row_bytes
        if data != needed:
            problem = "is truncated" if data < needed else "has bytes after the array"
            raise ValueError(
                f"{self.path}: the .npy header's shape {shape} ({file_dtype}) needs "
                f"{needed} bytes of data, the file holds {data}: it {problem}, or its "
                "header was edited; save the array again with np.save"
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

    def _reserve(self, count: int) -> None:
        """Refuse a read of `count` rows that would not fit in this machine's memory."""
        check_memory(
            count * self.row_bytes,
            f"reading {count} rows of {self.path}",
            "read fewer rows at a time (a row window: .rows(start, stop))",
        )

    def _pread_into(self, fd: int, view: memoryview, start: int, count: int) -> None:
        """Fill `view` with the raw bytes of rows [start, start + count) of this window."""
        nbytes, done = count * self.row_bytes, 0
        first = self.offset + (self.start + start) * self.row_bytes
        while done < nbytes:
            got = os.preadv(fd, [view[done:nbytes]], first + done)
            if got == 0:
                raise ValueError(f"{self.path}: file ended early while reading rows")
            done += got

    def _check_values(self, rows: np.ndarray, index: np.ndarray | int) -> None:
        """Raise a ValueError naming the file row of the first value float32 cannot hold;
        `rows[k]` is row `index[k]` of this window (or `index + k` for an int)."""
        problem = float32_problem(rows)
        if problem is None:
            return
        (row, *within), why = problem
        row = index + row if isinstance(index, int) else int(index[row])
        where = {0: "", 1: f", column {within[0]}"}.get(len(within), f", at {tuple(within)}")
        raise ValueError(f"{self.path}, row {self.start + row}{where} {why}")

    def _convert(self, buf: bytearray, count: int) -> np.ndarray:
        rows = np.frombuffer(buf, dtype=self.file_dtype).reshape((count, *self.shape[1:]))
        return rows if self.file_dtype == self.dtype else rows.astype(self.dtype)

    def _read_rows(self, fd: int, start: int, stop: int) -> np.ndarray:
        count = max(stop - start, 0)
        buf = bytearray(count * self.row_bytes)
        self._pread_into(fd, memoryview(buf), start, count)
        rows = self._convert(buf, count)
        self._check_values(rows, start)
        return rows

    def _read_sorted(self, wanted: np.ndarray) -> np.ndarray:
        """Rows `wanted` (sorted, distinct, at least one) with one `os.preadv` per run.

        A run is a stretch of wanted rows less than `GAP_BYTES` apart (the rows between are
        read and dropped), so a batch of w-row windows costs one read per window, and an
        interleaved share of one (rows 0, 2, 4, ... under torchrun) no more. Only the
        wanted rows are value-checked.
        """
        gap = GAP_BYTES // self.row_bytes if self.row_bytes else 0  # rows read through
        new_run = np.ones(wanted.size, dtype=bool)
        new_run[1:] = np.diff(wanted) > gap + 1
        run = np.cumsum(new_run) - 1  # the run of each wanted row
        firsts = wanted[new_run]
        counts = wanted[np.append(new_run[1:], True)] - firsts + 1
        starts = np.cumsum(counts) - counts  # where each run lands in the buffer
        total = int(counts.sum())
        self._reserve(total)
        buf = bytearray(total * self.row_bytes)
        view = memoryview(buf)
        fd = self._open()
        try:
            for first, count, at in zip(firsts.tolist(), counts.tolist(), starts.tolist(),
                                        strict=True):  # fmt: skip
                self._pread_into(fd, view[at * self.row_bytes :], first, count)
        finally:
            os.close(fd)
        rows = self._convert(buf, total)
        if total != wanted.size:  # drop the rows read through
            rows = rows[starts[run] + wanted - firsts[run]]
        self._check_values(rows, wanted)
        return rows

    def _open(self) -> int:
        return os.open(self.path, os.O_RDONLY)

    def __getitem__(self, index: slice | int | np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(index, int | np.integer) and not isinstance(index, bool):
            index = int(index)
            row = index + len(self) if index < 0 else index
            if not 0 <= row < len(self):
                raise IndexError(f"row {index} out of range for {len(self)} rows")
            return self[row : row + 1][0]
        if isinstance(index, slice) and (index.step or 1) > 0:
            start, stop, step = index.indices(len(self))
            self._reserve(max(stop - start, 0))
            fd = self._open()
            try:
                rows = self._read_rows(fd, start, max(start, stop))
            finally:
                os.close(fd)
            return torch.from_numpy(rows[::step].copy() if step != 1 else rows)
        if isinstance(index, slice):  # negative step: gather the rows it names
            index = np.arange(len(self))[index]
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        self._reserve(idx.size)
        if idx.size == 0:
            return torch.from_numpy(np.empty((0, *self.shape[1:]), dtype=self.dtype))
        wanted, inverse = np.unique(idx, return_inverse=True)
        rows = self._read_sorted(wanted)
        in_order = wanted.size == idx.size and bool((wanted == idx).all())  # sorted, distinct
        return torch.from_numpy(rows if in_order else rows[inverse.reshape(-1)])

    def __repr__(self) -> str:
        full = self.start == 0 and self.stop == self.file_rows
        window = "" if full else f", start={self.start}, stop={self.stop}"
        return f"NpyArray({str(self.path)!r}{window}, shape={self.shape}, dtype={self.dtype})"


_HEADER_ERRORS = (ValueError, TypeError, SyntaxError, RecursionError, tokenize.TokenError)
"""What NumPy's header parser raises for a corrupt header (it evaluates a Python literal)."""


def _read_npy_header(f: BinaryIO, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the header of an open `.npy` file."""
    try:
        version = np.lib.format.read_magic(f)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran_order, dtype = read_header(f)
    except _HEADER_ERRORS as e:
        raise ValueError(
            f"{path}: not a valid .npy file ({_one_line(e)}); save the array with np.save"
        ) from None
    return tuple(int(s) for s in shape), bool(fortran_order), dtype


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (NumPy's header messages span several)."""
    return " ".join(str(e).split()) or type(e).__name__


def check_dtype(dtype: np.dtype, path: str | os.PathLike) -> np.dtype:
    """The native-byte-order twin of a file's dtype, if genlab can read it: bool, integer or
    float (up to float64). Anything else raises a ValueError naming the file and the fix."""
    kind = dtype.kind
    if kind in "biu" or (kind == "f" and dtype.itemsize <= 8):
        return dtype if dtype.isnative else dtype.newbyteorder("=")
    if kind == "c":
        why = (
            "the array holds complex numbers; save the real and imaginary parts as separate "
            "columns, e.g. np.save(path, np.concatenate([a.real, a.imag], axis=1))"
        )
    elif dtype.hasobject:
        why = "the array holds Python objects (they would need pickle); save an array of numbers"
    elif dtype.names is not None or dtype.subdtype is not None:
        why = (
            f"it is a structured array ({dtype}); save one array of numbers, e.g. "
            "numpy.lib.recfunctions.structured_to_unstructured(a)"
        )
    elif kind in "US":
        why = f"the array holds strings ({dtype}); convert them to numbers, e.g. a.astype(float)"
    elif kind in "Mm":
        why = f"the array holds dates or times ({dtype}); convert them to numbers first"
    elif kind == "f":
        why = f"the array holds {dtype} numbers, which torch cannot read; save a.astype(np.float64)"
    else:
        why = (
            f"the array holds raw {dtype} values; save an array of numbers (bool, integer or float)"
        )
    raise ValueError(f"{path}: {why}")


FLOAT32_MAX = float(np.finfo(np.float32).max)


def float32_problem(values: np.ndarray) -> tuple[tuple[int, ...], str] | None:
    """(index, what is wrong) for the first value of `values` (n, ...) that float32 cannot
    hold as it is, in row order, else None. The text reads after a place: "holds nan, ...".

    genlab computes in float32, so a value must be finite and within float32's range
    (floats are rounded to float32's 24 bits of precision, as every model computes), and an
    integer must be exact in float32 (at most 24 significant bits: every |k| <= 2**24,
    and larger multiples of powers of two). Bool and small integer dtypes always are.
    """
    kind, size = values.dtype.kind, values.dtype.itemsize
    if kind == "f":
        bad = ~np.isfinite(values)
        if size > 4:  # float16 and float32 always fit
            with np.errstate(invalid="ignore"):
                bad |= np.abs(values) > FLOAT32_MAX
    elif kind in "iu" and size >= 4:
        bad = ~_exact_in_float32(values)
    else:
        return None
    if not bad.any():
        return None
    index = tuple(int(i) for i in np.unravel_index(int(bad.argmax()), bad.shape))
    value = values[index]
    if kind == "f" and not np.isfinite(value):
        why = f"holds {value}, which is not a finite number; drop or fill in such values"
    elif kind == "f":
        why = (
            f"holds {value:g}, beyond the range of float32 (±{FLOAT32_MAX:.3g}), in which "
            "genlab computes; rescale the data"
        )
    else:
        why = (
            f"holds the integer {value}, which float32 (in which genlab computes) would "
            "round: integers up to 2**24 are exact; rescale the data, or save it as floats "
            "to accept the rounding"
        )
    return index, why


def _exact_in_float32(k: np.ndarray) -> np.ndarray:
    """Which integers of `k` float32 represents exactly: those of <= 24 significant bits."""
    magnitude = k.astype(np.uint64) if k.dtype.kind == "u" else np.abs(k.astype(np.int64))
    magnitude = magnitude.view(np.uint64)  # |int64 min| wraps to itself: 2**63 as uint64
    lowest_bit = magnitude & (~magnitude + np.uint64(1))
    significant = magnitude // np.maximum(lowest_bit, np.uint64(1))
    return significant < np.uint64(2**24)


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


# --- sizes --------------------------------------------------------------------------------


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def format_size(nbytes: float) -> str:
    """A byte count for people: "512 bytes", "1.5 GiB", "7.28 TiB"."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def check_memory(nbytes: int, what: str, fix: str) -> None:
    """Raise ValueError when `what` would need more than this machine's physical memory.

    The message says how much it would need, how much there is, and `fix`:
    "<what> would need 7.28 TiB of memory, more than this machine's 125 GiB; <fix>".
    """
    total = physical_memory()
    if total is not None and nbytes > total:
        raise ValueError(
            f"{what} would need {format_size(nbytes)} of memory, more than this machine's "
            f"{format_size(total)}; {fix}"
        )


def check_count(n: object, what: str = "n") -> int:
    """`n` as an int if it is a positive integer (bool refused), else a ValueError."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
        raise ValueError(f"{what} must be a positive integer or None, got {n!r}")
    return int(n)


SEED_MAX = 2**63 - 1
"""The largest seed, as every seed option of genlab (TrainConfig.seed) takes."""


def check_seed(seed: object) -> int:
    """`seed` as an int if it is an integer in [0, SEED_MAX] (bool refused), else a ValueError."""
    if (
        isinstance(seed, bool)
        or not isinstance(seed, int | np.integer)
        or not 0 <= seed <= SEED_MAX
    ):
        raise ValueError(f"seed must be an integer in [0, 2**63 - 1], got {seed!r}")
    return int(seed)


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

    def describe(self) -> str:
        """What the data is, for messages: "text (1,234 characters)", "images of shape
        (1, 8, 8)", "points of dimension 2" (with the name, when there is one)."""
        of = f"{self.name!r}: " if self.name else ""
        if self.kind == "text":
            return f"{of}text ({len(self):,} characters)"
        if self.kind == "image":
            return f"{of}images of shape {self.event_shape}"
        shape = self.event_shape
        return f"{of}points of dimension {self.dim}" + (f" {shape}" if len(shape) > 1 else "")

    def require_kind(self, kinds: Collection[DataKind], what: str) -> None:
        """Raise a ValueError unless this data's kind is one of `kinds`.

        Args:
            kinds: the kinds `what` accepts, e.g. ("points", "image").
            what: who needs them, the subject of the message, e.g. "the gmm family".

        The message says what the data is (`describe`) and what to give instead:
        "the gmm family models points or images, not text ('text:a.txt': text (90
        characters)); give it numbers (a built-in data set, a .npy or .csv file), or use a
        model of text".
        """
        if self.kind in kinds:
            return
        wanted = " or ".join(KIND_NAMES[k] for k in kinds)
        if self.kind == "text":
            fix = (
                "give it numbers (a built-in data set, a .npy or .csv file), or use a model of text"
            )
        elif "text" in kinds:
            fix = "give it a text corpus as text:FILE"
        else:
            fix = f"give it {wanted}"
        raise ValueError(
            f"{what} models {wanted}, not {KIND_NAMES[self.kind]} ({self.describe()}); {fix}"
        )


KIND_NAMES: dict[str, str] = {"points": "points", "image": "images", "text": "text"}
"""How messages name each `DataKind`."""
