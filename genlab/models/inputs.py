"""What the families accept as input, checked once: rows (`as_data`), labels
(`check_train_labels`, `as_labels`), finiteness, and `TrainingData`, the record in which a
neural `fit` decides the kind of data, its levels and its labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from genlab.data.dataset import ArrayLike, Dataset, NpyArray, image_geometry, shape_kind


def as_data(x: Any, y: Any = None) -> tuple[ArrayLike, torch.Tensor | None, tuple[int, ...]]:
    """Accept a Dataset, a Tensor, a NumPy array (or a list of rows) and return (x, y, event_shape).

    Raises:
        TypeError: x is of an unsupported type or dtype.
        ValueError: x is empty or 0-/1-dimensional.
    """
    if isinstance(x, Dataset):
        y = x.y if y is None else y
        x = x.x
    elif isinstance(x, np.ndarray | list | tuple):
        arr = np.asarray(x)
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ):
            raise TypeError(f"x must hold numbers, got an array of dtype {arr.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(arr))
    elif not isinstance(x, torch.Tensor | NpyArray):
        raise TypeError(
            f"x must be a Tensor, a NumPy array or a genlab Dataset, got {type(x).__name__}"
        )
    if isinstance(x, torch.Tensor) and (x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"x must hold real numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(
            f"x must have shape (n_samples, *event_shape), got shape {tuple(x.shape)}; "
            "reshape a single feature with x.reshape(-1, 1)"
        )
    if len(x) == 0:
        raise ValueError("x is empty: fit needs at least one sample")
    if any(int(s) == 0 for s in x.shape[1:]):
        raise ValueError(
            f"x has samples of shape {tuple(x.shape[1:])}, with no values: each sample needs "
            "at least one number (a zero-width column set?)"
        )
    if y is not None:
        if not isinstance(y, torch.Tensor):
            labels = np.asarray(y)
            if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
                raise TypeError(
                    f"y must hold integer class labels, got values of dtype {labels.dtype}; "
                    "map names to 0..K-1 first"
                )
            y = labels
        y = torch.as_tensor(y)
        if y.shape != (len(x),):
            raise ValueError(f"y must have shape ({len(x)},), got {tuple(y.shape)}")
    return x, y, tuple(int(s) for s in x.shape[1:])


def iter_chunks(x: ArrayLike, chunk_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, rows[start:start + chunk_size]) over the first axis of x."""
    for start in range(0, len(x), chunk_size):
        yield start, x[start : start + chunk_size]


STAT_CHUNK_VALUES = 1 << 22
"""Values per chunk of a streamed statistic (`moments`, `value_range`): 32 MiB in float64."""


def stat_chunk_rows(x: ArrayLike, chunk_values: int = STAT_CHUNK_VALUES) -> int:
    """Rows per chunk of a streamed statistic of x: chunk_values / D, at least 1."""
    return max(1, chunk_values // max(math.prod(x.shape[1:]), 1))


class Moments(NamedTuple):
    """Per-dimension statistics of rows x (n, *event_shape) flattened to (n, D), in float64.

    Attributes:
        n: rows.
        mean: (D,) mean of each dimension.
        std: (D,) population standard deviation (1/n, not 1/(n - 1)) of each dimension.
        min, max: the smallest and largest value of all of x.
    """

    n: int
    mean: torch.Tensor
    std: torch.Tensor
    min: float
    max: float


def moments(x: ArrayLike, chunk_values: int = STAT_CHUNK_VALUES) -> Moments:
    """Mean, standard deviation, min and max of x in one pass over chunks of rows.

    Memory is bounded by a chunk of `chunk_values` values (in float64), whatever len(x):
    a lazy `NpyArray` is read chunk by chunk (and its values checked as they are read), and
    its values are rounded to float32 first, as every batch is (so a file and the same rows
    as a float32 tensor give the same statistics).
    Within one chunk the statistics are torch's own, `mean(0)` and `std(0, correction=0)`
    in float64 (so data of one chunk gives exactly those); chunks are merged by the
    pairwise update of Chan, Golub & LeVeque (1979), "Updating formulae and a pairwise
    algorithm for computing sample variances": with counts a, b, means m_a, m_b and sums
    of squared deviations M_a, M_b, delta = m_b - m_a,

        m = m_a + delta b / (a + b),   M = M_a + M_b + delta^2 a b / (a + b),

    which stays accurate where the textbook sum of squares minus the squared sum cancels.
    """
    size = stat_chunk_rows(x, chunk_values)
    lo, hi = math.inf, -math.inf
    if len(x) <= size:  # one chunk: torch's statistics as they are
        flat = _as_float32(x[:]).reshape(len(x), -1).double()
        lo, hi = float(flat.min()), float(flat.max())
        return Moments(len(x), flat.mean(0), flat.std(0, correction=0), lo, hi)
    count, mean, m2 = 0, None, None
    for _, chunk in iter_chunks(x, size):
        chunk = _as_float32(chunk)
        low, high = torch.aminmax(chunk)  # one pass, in float32 (exact: min and max of values)
        lo, hi = min(lo, float(low)), max(hi, float(high))
        flat = chunk.reshape(len(chunk), -1).double()
        b, mean_b = len(flat), flat.mean(0)
        m2_b = flat.sub_(mean_b).square_().sum(0)  # in place: one float64 chunk in memory
        if mean is None:
            count, mean, m2 = b, mean_b, m2_b
            continue
        delta, total = mean_b - mean, count + b
        mean = mean + delta * (b / total)
        m2 = m2 + m2_b + delta.square() * (count * b / total)
        count = total
    return Moments(count, mean, (m2 / count).sqrt(), lo, hi)


def value_range(x: ArrayLike, chunk_values: int = STAT_CHUNK_VALUES) -> tuple[float, float]:
    """(min, max) of all values of x, over chunks of rows (bounded memory, as `moments`)."""
    lo, hi = math.inf, -math.inf
    for _, chunk in iter_chunks(x, stat_chunk_rows(x, chunk_values)):
        low, high = torch.aminmax(_as_float32(chunk))
        lo, hi = min(lo, float(low)), max(hi, float(high))
    return lo, hi


def _as_float32(rows: torch.Tensor) -> torch.Tensor:
    """Rows as the float32 values genlab computes with (a file's float64 or integers are
    rounded as `TrainingData.rows` and every training batch round them)."""
    return rows if rows.dtype == torch.float32 else rows.float()


MAX_CLASSES = 65_536  # labels are class indices; a larger max(y) is an id, not a class


def check_train_labels(y: torch.Tensor | None) -> int | None:
    """n_classes = max(y) + 1 for integer labels in [0, MAX_CLASSES); None without labels."""
    if y is None:
        return None
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if int(y.min()) < 0:
        raise ValueError(f"labels must be >= 0, got a minimum of {int(y.min())}")
    if int(y.max()) + 1 > MAX_CLASSES:
        raise ValueError(
            f"labels must be 0..K-1 class indices (K at most {MAX_CLASSES}); got a maximum of "
            f"{int(y.max()):.4g}: relabel them (e.g. numpy.unique(y, return_inverse=True))"
        )
    return int(y.max()) + 1


def as_labels(y: Any, n: int, n_classes: int) -> torch.Tensor:
    """(n,) int64 labels from an int (every sample that class), a sequence or a tensor,
    checked to be integers in [0, n_classes), the classes seen in fit."""
    if isinstance(y, int | np.integer) and not isinstance(y, bool):
        y = torch.full((n,), int(y), dtype=torch.long)
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"y must be an int or have shape ({n},), got shape {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(
            f"labels must lie in [0, {n_classes}) (the classes seen in fit); got values in "
            f"[{int(y.min())}, {int(y.max())}]"
        )
    return y.long()


def labels_from_names(y: Any, names: tuple[str, ...] | None) -> Any:
    """y with class names replaced by their label values (label k is `names[k]`): a str gives
    an int, a sequence of str an (n,) int64 tensor; labels of any other kind come back as
    they are.

    Raises:
        ValueError: a name not among `names`, or names given to a model without them.
    """
    if isinstance(y, str):
        return int(labels_from_names([y], names)[0])
    if y is None or isinstance(y, torch.Tensor | int | np.integer):
        return y
    values = np.asarray(y, dtype=object)
    if values.ndim != 1 or not values.size or not all(isinstance(v, str) for v in values):
        return y
    if names is None:
        raise ValueError(
            f"label {values[0]!r} is a name, but this model's labels have none (it was fitted "
            "on integer labels): pass y as an integer class 0..K-1"
        )
    index = {name: k for k, name in enumerate(names)}
    unknown = sorted({v for v in values.tolist() if v not in index})
    if unknown:
        shown = ", ".join(map(repr, names[:20])) + (", ..." if len(names) > 20 else "")
        raise ValueError(
            f"unknown label {', '.join(map(repr, unknown[:5]))}: this model's labels are {shown}"
        )
    return torch.tensor([index[v] for v in values.tolist()], dtype=torch.int64)


def check_finite(x: torch.Tensor, what: str = "x") -> None:
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=tuple(range(1, x.ndim))).nonzero()[0, 0])
        raise ValueError(
            f"{what} contains NaN or infinity (first in row {bad}); clean the data first"
        )


class TrainingData(NamedTuple):
    """What a family's `fit` learns from, decided once from the input (`from_input`).

    Attributes:
        x: (n, *event_shape) rows, float32 (a lazy `NpyArray` stays lazy: `lazy_rows`,
            `moments`); None for text.
        y: (n,) int64 labels passed to fit as `y=` (a Dataset's own labels are not used:
            conditioning is asked for, never implied), or None.
        event_shape: the shape of one sample (() for text).
        kind: "points", "image" (an image shape, `genlab.data.image_shape`, with values in
            [0, 1]) or "text".
        levels: grey levels of quantised images (a Dataset's `levels`), else None.
        text: the corpus of a text data set, else None.
        name: the data set's name ("" for tensors).
        n_classes: max(y) + 1, or None without labels.
        label_names: the class name of each label value (label k is `label_names[k]`) when
            y is given with a Dataset that names its classes (an image folder's
            `label_names`), else None.
    """

    x: ArrayLike | None
    y: torch.Tensor | None
    event_shape: tuple[int, ...]
    kind: Literal["points", "image", "text"]
    levels: int | None
    text: str | None
    name: str
    n_classes: int | None
    label_names: tuple[str, ...] | None = None

    @classmethod
    def from_input(cls, x: Any, y: Any = None) -> TrainingData:
        """From a Dataset, a str (text), a Tensor, a NumPy array or a list of rows.

        Raises:
            TypeError, ValueError: unsupported types, empty or non-finite data, bad labels.
        """
        if isinstance(x, str) or (isinstance(x, Dataset) and x.kind == "text"):
            text = x if isinstance(x, str) else x.text
            if y is not None:
                raise ValueError("text models take no labels y")
            if not isinstance(text, str) or not text:
                raise ValueError("the training text is empty")
            name = x.name if isinstance(x, Dataset) else ""
            return cls(None, None, (), "text", None, text, name, None)
        dataset = x if isinstance(x, Dataset) else None
        rows, y, event_shape = as_data(x.x if dataset is not None else x, y)
        if isinstance(rows, torch.Tensor):
            rows = rows.float() if rows.dtype != torch.float32 else rows
            check_finite(rows)
        kind = dataset.kind if dataset is not None else shape_kind(event_shape)
        if kind == "image":  # images hold values in [0, 1] (a lazy file: one streamed pass)
            lo, hi = value_range(rows)
            kind = "image" if lo >= 0 and hi <= 1 else "points"
        levels = dataset.levels if dataset is not None and kind == "image" else None
        name = dataset.name if dataset is not None else ""
        n_classes, names = check_train_labels(y), None
        if n_classes is not None:  # a Dataset that names its classes (an image folder's)
            names = _dataset_label_names(getattr(dataset, "label_names", None), n_classes)
        return cls(rows, y, event_shape, kind, levels, None, name, n_classes, names)

    @property
    def dim(self) -> int:
        return int(np.prod(self.event_shape, dtype=np.int64))

    @property
    def square_image(self) -> tuple[int, int] | None:
        """(channels, side) of square images (what conv nets need), else None."""
        return image_geometry(self.event_shape) if self.kind == "image" else None

    def lazy_rows(self) -> ArrayLike:
        """x as it is: a float32 tensor, or a lazy `NpyArray` (of the file's dtype, whose
        values are checked as rows are read); what a family hands the trainer to stream."""
        if self.x is None:
            raise ValueError("text data has no rows of numbers")
        return self.x

    def moments(self) -> Moments:
        """Per-dimension mean and std (float64) and the min and max of x, streamed over
        chunks of rows (`moments`): a lazy `NpyArray` is never held whole."""
        return moments(self.lazy_rows())

    def rows(self) -> torch.Tensor:
        """All of x as a float32 tensor (reading a lazy `NpyArray`)."""
        if self.x is None:
            raise ValueError("text data has no rows of numbers")
        x = self.x if isinstance(self.x, torch.Tensor) else self.x[:]
        x = x.float() if x.dtype != torch.float32 else x
        check_finite(x)
        return x


def _dataset_label_names(names: Any, n_classes: int) -> tuple[str, ...] | None:
    """The names of labels 0..n_classes - 1 from a Dataset's `label_names` (None: none)."""
    if names is None:
        return None
    if n_classes > len(names):
        raise ValueError(
            f"y has labels up to {n_classes - 1}, but the data set names only {len(names)} "
            f"classes ({', '.join(map(repr, names[:5]))}...): pass the data set's own labels"
        )
    return tuple(names[:n_classes])
