"""The user's own data files: `.npy` (read lazily, row by row) and numeric `.csv`.

Files have no split of their own, so rows are split by position: "train" is the first 90%
of the rows (`9 * rows // 10`), "test" the remaining 10%, "all" every row. Shuffle the
file first if its rows are ordered (for example by class).

genlab computes in float32. A `.npy` file of bool, integer or float numbers (either byte
order) is read as it is, and every read is checked: NaN, infinity, floats beyond float32's
range and integers float32 would round (beyond 2**24) are refused, naming the row; floats are
rounded to float32 when a model reads them. Complex, string, object and structured arrays
are refused when the file is opened. A CSV file's numbers are float32 after reading (rounded),
and an empty or non-finite cell is refused, naming its line and column.

Tables with text columns go to `genlab.data.tables` (categories, booleans, missing cells): a
`.parquet` file always, and a `.csv` file whose first line is a header and which has a text
column (`is_table_csv`); the Dataset is then a `TableDataset` of encoded rows.
"""

from __future__ import annotations

import csv
import os
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from genlab.data.dataset import (
    Dataset,
    NpyArray,
    check_memory,
    float32_problem,
    physical_memory,
    shape_kind,
)
from genlab.data.text import decode_utf8

FILE_SUFFIXES = (".npy", ".csv", ".parquet", ".pq")
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
    """Whether `name` names a data file: it ends in .npy, .csv or .parquet, or is an existing
    file."""
    return str(name).lower().endswith(FILE_SUFFIXES) or Path(name).is_file()


def split_rows(total: int, split: str) -> tuple[int, int]:
    """The rows [start, stop) of a split: train the first 90%, test the last 10%, all every row."""
    cut = 9 * total // 10
    return {"train": (0, cut), "test": (cut, total), "all": (0, total)}[split]


CSV_BYTES_PER_VALUE = 12
"""Memory a CSV value takes while the file is read (float64 while parsing, then float32)."""


def read_csv(path: str | os.PathLike) -> torch.Tensor:
    """A numeric comma-separated UTF-8 file as an (n, d) float32 tensor.

    Blank lines (and lines of empty cells only, as spreadsheets export) are skipped. The
    first line is a header when none of its cells is a number; every other line must hold
    d numbers, finite and within float32's range (values are rounded to float32, in which
    genlab computes). Cells may be quoted ("1.5").

    Raises:
        ValueError: the file is not UTF-8, a cell is empty or not a finite number, a line
            has the wrong number of cells, there are no data rows, or the numbers would
            not fit in memory; the message names the line (counted from 1) and the column.
    """
    path = Path(path)
    limit = (physical_memory() or 2**62) // CSV_BYTES_PER_VALUE
    values, lines = array("d"), array("q")  # the numbers, and each row's line number
    width, header = None, None
    with open(path, "rb") as f:
        reader = csv.reader(_utf8_lines(f, path))
        try:
            for cells in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in cells):
                    continue
                if width is None and header is None and not any(map(_is_number, cells)):
                    header = (line, len(cells))
                    continue
                row = [_number(cell, column, path, line) for column, cell in enumerate(cells, 1)]
                if width is None and header is not None and header[1] != len(row):
                    raise ValueError(
                        f"{path}, line {line}: {len(row)} cells, but the header (line "
                        f"{header[0]}) has {header[1]}"
                    )
                if width is not None and len(row) != width:
                    raise ValueError(
                        f"{path}, line {line}: {len(row)} cells, but earlier rows have {width}"
                    )
                width = len(row)
                values.extend(row)
                lines.append(line)
                if len(values) > limit:
                    check_memory(
                        len(values) * CSV_BYTES_PER_VALUE, f"reading {path}", "use fewer rows"
                    )
        except csv.Error as e:  # a lone carriage return, an unclosed quote
            raise ValueError(f"{path}, line {reader.line_num}: not readable as CSV ({e})") from None
    if width is None:
        raise ValueError(f"{path}: no data rows")
    table = np.frombuffer(values, dtype=np.float64).reshape(-1, width)
    problem = float32_problem(table)
    if problem is not None:
        (row, column), why = problem
        raise ValueError(f"{path}, line {lines[row]}, column {column + 1} {why}")
    return torch.from_numpy(table.astype(np.float32))


def _utf8_lines(f: BinaryIO, path: Path) -> Iterator[str]:
    """The lines of a binary file decoded as UTF-8 (errors name the byte offset)."""
    offset = 0
    for raw in f:
        yield decode_utf8(raw, path, offset)
        offset += len(raw)


def _number(cell: str, column: int, path: Path, line: int) -> float:
    """The number in a data cell, or a ValueError naming the line and the column."""
    try:
        return float(cell)
    except ValueError:
        pass
    if not cell.strip():
        raise ValueError(
            f"{path}, line {line}, column {column} is empty; every cell of a data row needs a "
            "number: fill it in or drop the row"
        )
    separator = next((s for s in (";", "\t", "|") if s in cell), None)
    hint = (
        f"; genlab reads comma-separated values and this line looks separated by {separator!r}"
        if separator
        else " (only the first line may be a header, and a header holds no numbers)"
    )
    raise ValueError(
        f"{path}, line {line}: cell {cell.strip()!r} (column {column}) is not a number{hint}"
    )


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


SNIFF_ROWS = 1000
"""Data rows of a CSV file `is_table_csv` reads to decide whether it is a table."""


def is_table_csv(path: str | os.PathLike, rows: int = SNIFF_ROWS) -> bool:
    """Whether a CSV file is a table with text columns (read by `genlab.data.tables`): its
    first non-blank line is a header (no cell is a number) and, within the next `rows` data
    rows, some column holds at least two non-empty cells and none that is a number (nor
    numbers joined by ';', tab or '|', a file of another separator). Otherwise (and for a
    file that is not UTF-8 CSV) it is numeric, read by `read_csv`, which names any bad cell.
    """
    text: dict[int, int] = {}  # column -> text cells seen, or -1 once a number is seen
    header = False
    try:
        with open(path, "rb") as f:
            reader = csv.reader(_utf8_lines(f, Path(path)))
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue
                if not header:
                    if any(map(_is_number, cells)):
                        return False
                    header = True
                    continue
                for column, cell in enumerate(cells):
                    if not cell.strip() or text.get(column) == -1:
                        continue
                    numeric = _is_number(cell) or _separated_numbers(cell)
                    text[column] = -1 if numeric else text.get(column, 0) + 1
                rows -= 1
                if rows <= 0:
                    break
    except (ValueError, csv.Error):  # not UTF-8 or not CSV: read_csv names the problem
        return False
    return any(count >= 2 for count in text.values())


def _separated_numbers(cell: str) -> bool:
    """Whether a cell is numbers joined by ';', tab or '|' (a file of another separator)."""
    return any(
        len(parts := cell.split(sep)) > 1 and all(map(_is_number, parts))
        for sep in (";", "\t", "|")
    )


def _open_array(path: Path) -> NpyArray | torch.Tensor:
    """The whole file: a lazy NpyArray for .npy (3-D gains a channel axis), a tensor for CSV.

    A file of another suffix is sniffed: .npy by its magic bytes, else CSV unless it holds
    binary data (a NUL byte among its first 4 KiB)."""
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        with open(path, "rb") as f:
            head = f.read(4096)
        if head.startswith(_NPY_MAGIC):
            suffix = ".npy"
        elif b"\0" in head:
            raise ValueError(
                f"{path} is neither a .npy file nor comma-separated text (it holds binary "
                "data); save the array with np.save, or as UTF-8 comma-separated text"
            )
    if suffix == ".npy":
        lazy = NpyArray(path)
        return ChannelNpyArray(path) if lazy.ndim == 3 else lazy
    return read_csv(path)


def load_file(path: str | os.PathLike, split: str) -> Dataset:
    """Rows of a `.npy` or `.csv` file as a Dataset (y is None, levels None); a table (a
    `.parquet` file, or a CSV file with text columns: `is_table_csv`) as a `TableDataset`
    (`genlab.data.tables.load_table`).

    Shapes: (n, d) gives kind "points"; (n, H, W) is read as (n, 1, H, W); the kind of
    (n, C, H, W) is "image" when `image_shape` says so, else "points". A `.npy` file stays
    on disk: x is an `NpyArray` window of the split's rows, of the file's dtype. A `.csv`
    file is read into a float32 tensor.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is malformed or of an unsupported dtype (`NpyArray`,
            `read_csv`), its shape is not 2-, 3- or 4-D, it has no rows or no columns, or
            the split has no rows.
    """
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq") or (
        path.suffix.lower() != ".npy" and is_table_csv(path)
    ):
        from genlab.data import tables  # pandas is imported only for tables

        return tables.load_table(path, split)
    x = _open_array(path)
    if not 2 <= len(x.shape) <= 4:
        raise ValueError(
            f"{path}: expected a 2-D (n, d), 3-D (n, H, W) or 4-D (n, C, H, W) array, "
            f"got shape {tuple(x.shape)}; reshape it, e.g. a.reshape(len(a), -1)"
        )
    if len(x) == 0:
        raise ValueError(f"{path} has no rows (shape {tuple(x.shape)}); a data set needs samples")
    if 0 in x.shape[1:]:
        raise ValueError(
            f"{path} has no columns: its samples have shape {tuple(x.shape[1:])}, which "
            "holds no values; save an array with at least one value per row"
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
