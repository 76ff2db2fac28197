"""Where training batches come from: the row order of every epoch (`batch_indices`) and the
rows themselves (`RowSource`), in memory, on the device or streamed from a `.npy` file.

The order is a pure function of (seed, epoch), so a run resumes exactly from the position
(epoch, index) its checkpoint stores. With window w > 1 an epoch shuffles windows of w
contiguous rows instead of single rows, so a batch is batch_size / w contiguous runs of the
file: a few large reads instead of one read per row (webdataset's shards and
`torch.utils.data` samplers over chunked files follow the same idea, one level coarser).

`RowSource` holds x (and y) where batches are cheapest to draw: an in-memory tensor moves to
the device once when it fits there (each batch is then an index on the device), else stays
on the host and each batch is gathered into pinned memory and copied; a `genlab.data.NpyArray`
is read batch by batch with one `os.preadv` per contiguous run, so memory stays bounded by a
batch whatever the file's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from genlab.data.dataset import NpyArray

STREAM_WINDOW = 64
"""Rows per contiguous window of a batch read from a `.npy` file (`default_window`): 64 rows
of 16 float32 columns are 4 KiB, one page, per read."""

DEVICE_SHARE = 0.5
"""An in-memory data set moves to a CUDA device when it takes at most this share of the
device's free memory (the rest is left to the model, its activations and the optimiser)."""


def default_window(x: torch.Tensor | NpyArray) -> int:
    """Rows per contiguous window when no `data_window` is given: 1 (single rows, exactly
    the order of earlier versions) for an in-memory tensor, `STREAM_WINDOW` for an NpyArray."""
    return STREAM_WINDOW if isinstance(x, NpyArray) else 1


def window_permutation(n_windows: int, seed: int, epoch: int) -> torch.Tensor:
    """The window order of `epoch`: a permutation of range(n_windows) from a CPU generator
    seeded by (seed, epoch), mixed into the 32 bits torch's CPU generator uses (with one row
    per window, this is the row order of `genlab.train.epoch_permutation`)."""
    mixed = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1)[0]
    generator = torch.Generator().manual_seed(int(mixed))
    return torch.randperm(n_windows, generator=generator)


def _check_int(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def positions_to_rows(
    positions: torch.Tensor,
    order: torch.Tensor,
    n: int,
    window: int,
    short_slot: int | None = None,
) -> torch.Tensor:
    """Rows at `positions` of an epoch that lists the windows `order` one after another.

    Window k holds rows [k w, min((k + 1) w, n)): all hold w rows but the last, which holds
    r = n - (W - 1) w (1 <= r <= w, W = ceil(n / w)). If the short window sits at slot j of
    `order`, slot s starts at position s w for s <= j and at s w - (w - r) after it, so a
    position p maps to (slot, offset) in closed form, without listing the n rows.
    `short_slot` is j when the caller knows it (found in `order` otherwise).
    """
    n_windows = len(order)
    short = n - (n_windows - 1) * window  # rows of the last window, 1..window
    if short == window:  # every window is full (always so for window = 1)
        slot, offset = positions // window, positions % window
    else:
        j = _short_slot(order) if short_slot is None else short_slot
        after = positions - (j * window + short)  # positions after the short window, from 0
        late = after >= 0
        slot = torch.where(late, j + 1 + after.clamp(min=0) // window, positions // window)
        offset = torch.where(late, after.clamp(min=0) % window, positions % window)
    return order[slot] * window + offset


def _short_slot(order: torch.Tensor) -> int:
    """The slot of the last (possibly short) window in a window order."""
    return int((order == len(order) - 1).nonzero()[0, 0])


def batch_indices(
    n: int, batch_size: int, seed: int, epoch: int = 0, index: int = 0, window: int = 1
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (epoch, index, rows) forever, starting at position (epoch, index).

    An epoch lists the ceil(n / window) windows of `window` contiguous rows (the last one
    holds the n mod window rows left, if any) in the order `window_permutation(seed, epoch)`,
    which gives every row once; batch `index` is positions [index b, (index + 1) b) of that
    list, b = min(batch_size, n). An epoch has n // batch_size batches (the incomplete last
    one is dropped: its rows wait for a later epoch), or a single batch of all n rows when
    n < batch_size. With window = 1 this is exactly the order of earlier versions
    (`genlab.train.iterate_batches`); with window w a batch is about b / w + 1 contiguous
    runs. Memory: one int64 per window (0.8 MB for 50M rows at w = 64) plus a batch.

    Args:
        n: rows of the data.
        batch_size: rows per batch.
        seed: seed of the data order (TrainConfig.seed).
        epoch, index: the position to start from (a checkpoint's `RunState.data`).
        window: rows per contiguous window.

    Yields:
        (epoch, index, rows): rows is a (b,) int64 CPU tensor of row indices in [0, n).
    """
    n, batch_size = _check_int(n, "n", 1), _check_int(batch_size, "batch_size", 1)
    epoch, index = _check_int(epoch, "epoch", 0), _check_int(index, "index", 0)
    window = _check_int(window, "window", 1)
    window = min(window, n)
    n_windows = math.ceil(n / window)
    per_epoch, size = max(n // batch_size, 1), min(batch_size, n)
    while True:
        order = window_permutation(n_windows, seed, epoch)
        short_slot = _short_slot(order) if window > 1 else None
        for i in range(index, per_epoch):
            if window == 1:
                rows = order[i * size : (i + 1) * size]
            else:
                positions = torch.arange(i * size, (i + 1) * size)
                rows = positions_to_rows(positions, order, n, window, short_slot)
            yield epoch, i, rows
        epoch, index = epoch + 1, 0


def _fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether `nbytes` of data may live on `device` (CUDA: DEVICE_SHARE of its free memory)."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= DEVICE_SHARE * free
    return True  # other accelerators (mps): no query of free memory; try


class RowSource:
    """The rows a trainer draws batches from, held where batches are cheapest to take.

    - An in-memory tensor (x, and y) moves to the device once when it fits there (on the CPU
      it already is: no copy; on CUDA when it takes at most `DEVICE_SHARE` of the free
      memory, `torch.cuda.mem_get_info`); a batch is then an index on the device.
    - Otherwise it stays on the host, and each batch is gathered into pinned memory (CUDA)
      and copied asynchronously.
    - A `genlab.data.NpyArray` is read batch by batch from its file (`NpyArray[rows]`: one
      `os.preadv` per contiguous run of the sorted rows), so memory is bounded by a batch;
      its values are checked as they are read, and converted to float32.

    Args:
        x: (n, ...) Tensor or NpyArray.
        y: (n,) labels, or None.
        device: where batches go.

    Attributes:
        resident: whether x lives on the device (False for a host tensor and an NpyArray).
    """

    def __init__(
        self, x: torch.Tensor | NpyArray, y: torch.Tensor | None, device: str | torch.device
    ):
        if not isinstance(x, torch.Tensor | NpyArray):
            raise TypeError(f"x must be a Tensor or a genlab NpyArray, got {type(x).__name__}")
        if y is not None and (not isinstance(y, torch.Tensor) or len(y) != len(x)):
            raise ValueError(f"y must be None or a tensor with {len(x)} rows, like x")
        self.device = torch.device(device)
        self.streamed = isinstance(x, NpyArray)
        self.x, self.resident = x, False
        if not self.streamed:
            self.x, self.resident = self._place(x)
        self.y, self._y_resident = (None, True) if y is None else self._place(y)
        self._pin = self.device.type == "cuda"

    def _place(self, t: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(t on the device, True) when it fits there, else (t on the host, False)."""
        if t.device == self.device:
            return t, True
        if _fits_on(self.device, t.numel() * t.element_size()):
            return t.to(self.device), True
        return t.cpu(), False

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)

    def _host_batch(self, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """t[rows] gathered on the host (into pinned memory for CUDA) and sent to the device."""
        if not self._pin:
            return t[rows].to(self.device)
        out = torch.empty((len(rows), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
        torch.index_select(t, 0, rows, out=out)
        return out.to(self.device, non_blocking=True)

    def take(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(x[rows],) or (x[rows], y[rows]) on the device, in the order of `rows`.

        Args:
            rows: (b,) int64 row indices (on the CPU, as `batch_indices` yields them).

        Returns:
            x rows in the tensor's dtype (the families hand float32 rows; token rows stay
            integers), float32 from an NpyArray; y int64 as given.
        """
        rows = rows.cpu()
        if self.streamed:
            batch = self.x[rows]
            batch = batch if batch.dtype == torch.float32 else batch.float()
            x = batch.pin_memory().to(self.device, non_blocking=True) if self._pin else batch
            x = x.to(self.device)
        elif self.resident:
            x = self.x[rows.to(self.device)]
        else:
            x = self._host_batch(self.x, rows)
        if self.y is None:
            return (x,)
        y = self.y[rows.to(self.device)] if self._y_resident else self._host_batch(self.y, rows)
        return x, y
