"""Tables with real columns: read `.csv`/`.parquet` into pandas, check them, and map them to
float32 rows a continuous family can model and back (`TableTransform`).

Public API (what families, evaluation and compare use):

    read_table(path) -> pd.DataFrame            .csv (pandas) or .parquet (pyarrow, the extra)
    check_table(df, what="the table")           ValueError/TypeError naming a bad column and the fix
    column_kinds(df) -> {name: kind}            "number" | "integer" | "boolean" | "category"
    is_table(x) -> bool                         a pandas DataFrame (pandas is not imported for it)
    TableTransform(numbers=, categories=, seed=)
        .fit(df) -> self                        learns each column's encoding from the train rows
        .transform(df, seed=None) -> (n, width) float32 numpy rows (`seed`: the dequantisation)
        .inverse_transform(x) -> pd.DataFrame   the original names, dtypes and category sets
        .columns: tuple[ColumnSpec]; .kinds; .width; .names (the encoded columns' names)
        .to_json() -> dict; TableTransform.from_json(d)   (what config.json stores)
    TableDataset(Dataset)                       x: encoded rows; .frame: the split's original rows;
                                                .transform: fitted on the file's train split
    load_table(path, split) -> TableDataset     what load_dataset("file.csv" / "file.parquet") gives

Encoding of one column (`ColumnSpec`), in two stages. First raw values, every discrete one
dequantised into a cell of volume 1 (so a density of the rows bounds the probability of the
discrete cells, and decoding only ever gives a category seen in training):
- number: its value v, dequantised within its rounding cell when the train values have few
  decimals d (`decimal_places`): v + (u - 1/2) 10^-d (measurements to 0.1 mm tie often, and
  a density on tied values grows spikes); back: rounded to d decimals.
- integer (integer dtypes, and floats whose values are all whole): k + u, u ~ U[0, 1);
  back: floor, clipped to the train [min, max].
- boolean and category: categories="onehot" (default): e_k + u, u ~ U[0, 1)^K, K columns,
  back: argmax; categories="ordinal": k + u, one column, back: floor.
- a column with missing cells in training gains an indicator m + u (m = 1: missing), back:
  missing where it is >= 1; a missing number's value column holds N(0, 1) noise (after the
  second stage), a missing category's one-hot columns u alone (ordinal: K u).
Then every encoded column is scaled, numbers="quantile" (default): z = Phi^-1(F(raw)) with F
the piecewise-linear CDF of the train rows' raw values (exact for dequantised cells:
`cell_knots`, of indicators and integers of few values; for numbers up to 1,000
quantiles at Hazen's plotting positions, `quantile_knots`, as scikit-learn's
QuantileTransformer(output_distribution="normal") but without mapping the extremes to
|z| = 5.2), so every encoded column is N(0, 1) on the train rows, a missing rate p is the
mass of z >= Phi^-1(1 - p), and samples stay within the train range; the value columns of
categories are standardised (`QUANTILE_CATEGORIES`). Or numbers="standardise": every column
z = (raw - mean) / std.

The dequantisation noise is a pure function of `seed` and the row position (the i-th row of a
call draws the same u whatever the split), so train, test and "all" agree.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import special

from genlab.data.dataset import Dataset

ColumnKind = Literal["number", "integer", "boolean", "category"]
Numbers = Literal["quantile", "standardise"]
Categories = Literal["onehot", "ordinal"]
NUMBERS: tuple[str, ...] = ("quantile", "standardise")
CATEGORIES: tuple[str, ...] = ("onehot", "ordinal")
TABLE_SUFFIXES = (".parquet", ".pq")

N_QUANTILES = 1000
"""Train quantiles kept per quantile-normalised number column (fewer for fewer rows)."""
CDF_CLIP = 1e-7
"""F(v) is clipped to [CDF_CLIP, 1 - CDF_CLIP] before Phi^-1 (|z| <= 5.2), as scikit-learn."""
EXACT_CELLS = 32
"""An integer column of at most this many distinct train values is scaled by its exact CDF
(`cell_knots`: only those values are sampled); one of more by the quantiles of k + u, which
interpolate between the train values (ages 18..90 sample ages never seen too)."""
MAX_CATEGORIES = 1000
"""A text column with more distinct values is refused: one-hot would be too wide to learn."""
IDENTIFIER_ROWS = 10
IDENTIFIER_RATIO = 0.9
"""A text column of at least IDENTIFIER_ROWS values, more than IDENTIFIER_RATIO of them
distinct, is an identifier (names, ids), not a category: refused."""
FORMAT = 1  # of `TableTransform.to_json`


def is_table(x: Any) -> bool:
    """Whether x is a pandas DataFrame (without importing pandas when it is not loaded)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(x, pandas.DataFrame)


# -- reading -------------------------------------------------------------------------------------
def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A `.csv` (comma-separated UTF-8, first line the header) or `.parquet` file as a DataFrame.

    Empty cells and pandas' missing markers ("NA", "NaN", "null", ...) are missing values.

    Raises:
        FileNotFoundError: no such file.
        ImportError: a parquet file without pyarrow (pip install 'genlab[parquet]').
        ValueError: the file cannot be parsed (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() in TABLE_SUFFIXES:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ImportError(
                f"reading {path} needs pyarrow: pip install 'genlab[parquet]' (or pyarrow)"
            ) from None
        try:
            return pd.read_parquet(path)
        except Exception as e:  # pyarrow's ArrowInvalid and friends
            raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    try:
        return pd.read_csv(path, encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); convert it to UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path}: not readable as a comma-separated table ({e})") from None


# -- column kinds and the checks -----------------------------------------------------------------
def _is_number_text(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def column_kind(series: pd.Series, name: str, what: str = "the table") -> ColumnKind:
    """The kind of one column, after checking it can be modelled.

    Raises:
        ValueError: an all-missing column, a single value in every row, numbers mixed with
            text, an identifier-like text column, too many categories, dates or infinities.
        TypeError: a column of a type genlab cannot encode (dates, complex, objects).
    """
    col = f"{what}: column {name!r}"
    present = series.dropna()
    if len(present) == 0:
        raise ValueError(
            f"{col} is empty (every cell is missing); drop it, e.g. df.drop(columns=[{name!r}])"
        )
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        kind: ColumnKind = "category"
    elif pd.api.types.is_bool_dtype(dtype):
        kind = "boolean"
    elif pd.api.types.is_integer_dtype(dtype):
        kind = "integer"
    elif pd.api.types.is_float_dtype(dtype):
        values = present.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(
                f"{col} holds infinity; replace it with a finite number or a missing cell"
            )
        kind = "integer" if np.all(values == np.round(values)) else "number"
    elif pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        kind = _object_kind(present, col)
    else:
        raise TypeError(
            f"{col} holds {dtype} values, which genlab cannot model; convert it to numbers "
            "(e.g. dates to days: (df[c] - df[c].min()).dt.days) or to text categories"
        )
    if kind in ("category", "boolean"):
        distinct = present.nunique()
        if kind == "category" and distinct > MAX_CATEGORIES:
            raise ValueError(
                f"{col} has {distinct:,} distinct values, more than the {MAX_CATEGORIES:,} "
                "categories genlab encodes; drop it or group rare values into 'other'"
            )
        if (
            kind == "category"
            and len(present) >= IDENTIFIER_ROWS
            and (distinct > IDENTIFIER_RATIO * len(present))
        ):
            raise ValueError(
                f"{col} holds a different text in almost every row ({distinct} distinct of "
                f"{len(present)}): an identifier or free text, not a category; drop it"
            )
    if present.nunique() == 1 and len(present) == len(series):
        raise ValueError(
            f"{col} holds a single value ({present.iloc[0]!r}) in every row: it carries no "
            f"information to learn; drop it, e.g. df.drop(columns=[{name!r}])"
        )
    return kind


def _object_kind(present: pd.Series, col: str) -> ColumnKind:
    """The kind of a text/object column: boolean, category, or numbers stored as objects."""
    values = present.tolist()
    types = {type(v) for v in values}
    if types <= {bool, np.bool_}:
        return "boolean"
    if types <= {str}:
        numeric = [_is_number_text(v) for v in values]
        if any(numeric) and sum(numeric) >= len(values) / 2:
            row = present.index[numeric.index(False)]
            example = values[numeric.index(True)]
            raise ValueError(
                f"{col} mixes numbers and text: it holds {values[numeric.index(False)]!r} "
                f"(row {row}) where other rows hold numbers such as {example!r}; fix those "
                "cells, leave missing ones empty, or convert the column"
            )
        return "category"
    if all(isinstance(v, int | float | np.integer | np.floating) for v in values) and not (
        types & {bool, np.bool_}
    ):
        numbers = np.asarray(values, dtype=np.float64)
        return "integer" if np.all(numbers == np.round(numbers)) else "number"
    names = sorted(t.__name__ for t in types)
    raise ValueError(
        f"{col} mixes values of several types ({', '.join(names)}); give every cell of a "
        "column one type (numbers, text or True/False), e.g. df[c].astype(str)"
    )


def check_table(df: Any, what: str = "the table") -> dict[str, ColumnKind]:
    """Check a DataFrame can be modelled and return its column kinds (`column_kind`).

    Raises:
        TypeError: not a DataFrame, or a column of an unsupported type.
        ValueError: no rows or columns, column names not distinct strings, or a bad column.
    """
    if not is_table(df):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {df.shape}); it needs rows and columns")
    names = list(df.columns)
    bad = [c for c in names if not isinstance(c, str)]
    if bad:
        raise ValueError(
            f"{what}: column names must be text, got {bad[0]!r}; name them, e.g. "
            "df.columns = [str(c) for c in df.columns]"
        )
    if len(set(names)) != len(names):
        dup = next(c for c in names if names.count(c) > 1)
        raise ValueError(f"{what}: the column name {dup!r} appears twice; rename one of them")
    return {name: column_kind(df[name], name, what) for name in names}


def column_kinds(df: pd.DataFrame) -> dict[str, ColumnKind]:
    """{column name: kind} of a table, checked (`check_table`)."""
    return check_table(df)


# -- one column's encoding -----------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnSpec:
    """How one column is encoded (module docstring); JSON-able fields only.

    Attributes:
        name, kind, dtype: the column, its kind and its pandas dtype as text ("float64", "str",
            "category", "Int64", ...).
        encoding: "onehot" or "ordinal" (boolean, category), "value" (number, integer).
        scaling: "quantile" or "standardise", of every encoded column.
        missing: whether the train rows had missing cells (the column then has an indicator).
        categories: the categories seen in training, sorted (boolean: [False, True]).
        dtype_categories, ordered: a pandas Categorical's own categories and order.
        low, high: the train range of an integer column.
        decimals: the decimal places of a number column's train values (at most
            MAX_DECIMALS; None: more), to which samples are rounded.
        knots: quantile scaling: per encoded column [xs, ps], the knots of the piecewise-linear
            CDF of its raw values (exact for dequantised cells, `cell_knots`).
        loc, scale: standardise scaling: per encoded column the mean and std of its raw values.
    """

    name: str
    kind: ColumnKind
    dtype: str
    encoding: str
    scaling: str
    missing: bool = False
    categories: list | None = None
    dtype_categories: list | None = None
    ordered: bool = False
    low: int | None = None
    high: int | None = None
    decimals: int | None = None
    knots: list | None = None
    loc: list | None = None
    scale: list | None = None

    @property
    def onehot(self) -> bool:
        return self.encoding == "onehot"

    @property
    def value_width(self) -> int:
        """Encoded columns of the value (without the indicator)."""
        return len(self.categories) if self.onehot else 1

    @property
    def width(self) -> int:
        return self.value_width + int(self.missing)

    @property
    def names(self) -> list[str]:
        """Names of the encoded columns: "c", "c=value" (one-hot), "c:missing"."""
        own = [f"{self.name}={v}" for v in self.categories] if self.onehot else [self.name]
        return own + ([f"{self.name}:missing"] if self.missing else [])


MAX_DECIMALS = 6


def decimal_places(values: np.ndarray) -> int | None:
    """The fewest decimal places d <= MAX_DECIMALS with every value equal to itself rounded
    to d places (measurements in mm: 1), else None."""
    for d in range(MAX_DECIMALS + 1):
        if np.array_equal(np.round(values, d), values):
            return d
    return None


def _plain(v: Any) -> Any:
    """A value as JSON's own type (numpy scalars to Python)."""
    return v.item() if isinstance(v, np.generic) else v


def cell_knots(counts: dict[int, float]) -> list[list[float]]:
    """[xs, ps]: the knots of the CDF of k + u, u ~ U[0, 1), k drawn with weights `counts`:
    it rises linearly by P(k) over each cell [k, k + 1) and is flat between cells."""
    total = float(sum(counts.values()))
    xs: list[float] = []
    ps: list[float] = []
    cdf = 0.0
    for k in sorted(k for k, c in counts.items() if c > 0):
        if not xs or xs[-1] != k:
            xs.append(float(k))
            ps.append(cdf)
        cdf += counts[k] / total
        xs.append(float(k + 1))
        ps.append(min(cdf, 1.0))
    ps[-1] = 1.0
    return [xs, ps]


def quantile_knots(values: np.ndarray, count: int = N_QUANTILES) -> list[list[float]]:
    """[xs, ps]: `count` (at most len(values)) quantiles xs of `values` at Hazen's plotting
    positions ps_i = (i + 1/2) / count: for count = n the sorted values themselves, the i-th
    at F = (i + 1/2) / n, so the smallest maps to Phi^-1(1 / 2n) (about -2.6 for 120 rows)
    rather than to the clip (|z| = 5.2) where positions i / (n - 1) would put it."""
    count = int(min(count, len(values)))
    ps = (np.arange(count) + 0.5) / count
    return [np.quantile(values, ps, method="hazen").tolist(), ps.tolist()]


def knots_cdf(v: np.ndarray, xs: np.ndarray, ps: np.ndarray) -> np.ndarray:
    """F(v), piecewise linear through the knots, averaged over both directions so that tied
    xs map to the middle of their probabilities (scikit-learn's QuantileTransformer)."""
    return 0.5 * (np.interp(v, xs, ps) - np.interp(-v, -xs[::-1], -ps[::-1]))


def quantile_forward(v: np.ndarray, xs: np.ndarray, ps: np.ndarray) -> np.ndarray:
    """z = Phi^-1(clip(F(v))), clipped to [CDF_CLIP, 1 - CDF_CLIP] (|z| <= 5.2)."""
    return special.ndtri(np.clip(knots_cdf(v, xs, ps), CDF_CLIP, 1 - CDF_CLIP))


def quantile_inverse(z: np.ndarray, xs: np.ndarray, ps: np.ndarray) -> np.ndarray:
    """v = F^-1(Phi(z)), within [xs[0], xs[-1]] for every z."""
    return np.interp(special.ndtr(z), ps, xs)


def _codes(series: pd.Series, spec: ColumnSpec, what: str) -> np.ndarray:
    """(n,) int64 category index of each cell (-1 where missing).

    Raises:
        ValueError: a category not seen in training."""
    index = {_plain(c): k for k, c in enumerate(spec.categories)}
    missing = series.isna().to_numpy()
    codes = np.full(len(series), -1, dtype=np.int64)
    for i, v in enumerate(series.tolist()):
        if missing[i]:
            continue
        k = index.get(_plain(v))
        if k is None:
            raise ValueError(
                f"{what}: column {spec.name!r} holds {v!r} (row {series.index[i]}), a category "
                f"the transform did not see in training ({spec.categories[:10]}); fit on rows "
                "holding every category, or drop such rows"
            )
        codes[i] = k
    return codes


def _numbers(series: pd.Series, spec: ColumnSpec, what: str) -> np.ndarray:
    """(n,) float64 values (NaN where missing)."""
    try:
        return pd.to_numeric(series, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
    except (ValueError, TypeError):
        raise ValueError(
            f"{what}: column {spec.name!r} held numbers in training but holds text now; give "
            "it numbers"
        ) from None


def _raw(series: pd.Series, spec: ColumnSpec, u: np.ndarray, what: str) -> np.ndarray:
    """(n, width) raw values of one column, before scaling: v (number; NaN where missing;
    v + (u - 1/2) 10^-d for values of d decimals), k + u (integer), e_k + u (onehot), k + u
    (ordinal; a missing cell K u), then m + u (the indicator); u (n, width) U[0, 1) noise."""
    out = np.empty((len(series), spec.width))
    if spec.kind in ("boolean", "category"):
        codes = _codes(series, spec, what)
        if spec.onehot:
            value = u[:, : spec.value_width].copy()
            rows = np.flatnonzero(codes >= 0)
            value[rows, codes[rows]] += 1.0
        else:
            value = np.where(codes >= 0, codes + u[:, 0], u[:, 0] * len(spec.categories))[:, None]
    else:
        v = _numbers(series, spec, what)
        if spec.kind == "integer":
            v = np.floor(v) + u[:, 0]
        elif spec.decimals is not None:  # a rounded measurement: anywhere in its rounding cell
            v = v + (u[:, 0] - 0.5) * 10.0**-spec.decimals
        value = v[:, None]
    out[:, : spec.value_width] = value
    if spec.missing:
        out[:, -1] = series.isna().to_numpy() + u[:, -1]
    return out


def _cell_counts(series: pd.Series, spec: ColumnSpec, what: str) -> list[dict[int, float]] | None:
    """Per encoded column, the weights of its cells k (raw value k + u), for exact CDF knots;
    None for the value of a number, or of an integer of more than EXACT_CELLS values."""
    n, miss = len(series), series.isna().to_numpy()
    n_miss = int(miss.sum())
    counts: list[dict[int, float]] = []
    if spec.kind in ("boolean", "category"):
        codes = _codes(series, spec, what)
        per = np.bincount(codes[codes >= 0], minlength=len(spec.categories))
        if spec.onehot:
            counts = [{0: n - int(c), 1: int(c)} for c in per]
        else:  # a missing cell is spread over [0, K)
            counts = [{k: int(c) + n_miss / len(per) for k, c in enumerate(per)}]
    else:
        v = _numbers(series, spec, what)
        present = v[~miss].astype(np.int64)
        if spec.kind != "integer" or len(np.unique(present)) > EXACT_CELLS:
            return None
        ks, cs = np.unique(present, return_counts=True)
        counts = [{int(k): int(c) for k, c in zip(ks, cs, strict=True)}]
    if spec.missing:
        counts.append({0: n - n_miss, 1: n_miss})
    return counts


QUANTILE_CATEGORIES = False
"""Whether numbers="quantile" also quantile-scales the value columns of categories (False:
they are standardised, keeping the one-hot cells' geometry; their indicators are
quantile-scaled either way). Measured on penguins (GMM, 8 components, 3 seeds, 300 train
rows, 1,000 samples): standardised categories lower the Cramér's V difference to 0.041 from
0.068 at about equal column fidelity (KS 0.034 against 0.031, TV 0.020 against 0.021) and
missing rates (gap 0.002); standardising everything instead widens the gap to 0.03."""


def _fit_scaling(series: pd.Series, spec: ColumnSpec, raw: np.ndarray, what: str) -> ColumnSpec:
    """The spec with the scaling of every encoded column fitted on the train rows' raw values
    (a number's value on its present cells only): loc and scale for each, and under
    numbers="quantile" the knots of its CDF (None for a column that is standardised)."""
    present = ~series.isna().to_numpy()
    columns = [raw[:, j] for j in range(spec.width)]
    if spec.kind in ("number", "integer"):
        columns[0] = columns[0][present]
    loc = [float(c.mean()) for c in columns]
    scale = [float(c.std()) if c.std() > 0 else 1.0 for c in columns]
    spec = dataclasses.replace(spec, loc=loc, scale=scale)
    if spec.scaling == "standardise":
        return spec
    counts = _cell_counts(series, spec, what)
    if counts is None:  # a number (or a wide integer): empirical quantiles of its value
        knots = [quantile_knots(columns[0])]
        if spec.missing:
            n_miss = int((~present).sum())
            knots.append(cell_knots({0: len(present) - n_miss, 1: n_miss}))
    else:
        knots = [cell_knots(c) for c in counts]
    if spec.kind in ("boolean", "category") and not QUANTILE_CATEGORIES:
        knots[: spec.value_width] = [None] * spec.value_width
    if spec.missing and present.all():  # an indicator for gaps the train rows lack: no CDF
        knots[-1] = None  # to invert there; standardised, a gap encodes beyond every train row
    return dataclasses.replace(spec, knots=knots)


def _scale(raw: np.ndarray, spec: ColumnSpec) -> np.ndarray:
    """(n, width) encoded values from raw ones: z = Phi^-1(F(raw)) or (raw - loc) / scale."""
    out = (raw - np.asarray(spec.loc)) / np.asarray(spec.scale)
    for j, knots in enumerate(spec.knots or ()):
        if knots is not None:
            xs, ps = map(np.asarray, knots)
            out[:, j] = quantile_forward(np.nan_to_num(raw[:, j]), xs, ps)
    return out


def _unscale(z: np.ndarray, spec: ColumnSpec) -> np.ndarray:
    """Raw values from encoded ones (the inverse of `_scale`)."""
    out = z * np.asarray(spec.scale) + np.asarray(spec.loc)
    for j, knots in enumerate(spec.knots or ()):
        if knots is not None:
            xs, ps = map(np.asarray, knots)
            out[:, j] = quantile_inverse(z[:, j], xs, ps)
    return out


# -- the transform -------------------------------------------------------------------------------
class TableTransform:
    """The per-column map between a table and float32 rows (the module docstring gives it).

    Args:
        numbers: the scaling of every encoded column: "quantile" (to N(0, 1) marginals,
            the default) or "standardise".
        categories: "onehot" (default: K columns) or "ordinal" (one column) for boolean and
            category columns.
        seed: seed of the dequantisation noise of `fit` and of `transform`'s default.
    """

    def __init__(
        self, numbers: Numbers = "quantile", categories: Categories = "onehot", seed: int = 0
    ):
        if numbers not in NUMBERS:
            raise ValueError(f"numbers must be one of {NUMBERS}, got {numbers!r}")
        if categories not in CATEGORIES:
            raise ValueError(f"categories must be one of {CATEGORIES}, got {categories!r}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.numbers, self.categories, self.seed = numbers, categories, int(seed)
        self.columns: tuple[ColumnSpec, ...] | None = None

    def __repr__(self) -> str:
        state = "unfitted" if self.columns is None else f"{len(self.columns)} columns"
        return (
            f"TableTransform(numbers={self.numbers!r}, categories={self.categories!r}, "
            f"seed={self.seed}; {state})"
        )

    # -- fitted facts --
    @property
    def is_fitted(self) -> bool:
        return self.columns is not None

    def _fitted(self) -> tuple[ColumnSpec, ...]:
        if self.columns is None:
            raise ValueError("this TableTransform is not fitted yet: call fit(df) first")
        return self.columns

    @property
    def kinds(self) -> dict[str, ColumnKind]:
        """{column name: kind}, in the table's order."""
        return {c.name: c.kind for c in self._fitted()}

    @property
    def width(self) -> int:
        """Encoded columns in all (the models' event_shape is (width,))."""
        return sum(c.width for c in self._fitted())

    @property
    def names(self) -> list[str]:
        """The encoded columns' names, in order (`ColumnSpec.names`)."""
        return [n for c in self._fitted() for n in c.names]

    # -- fit --
    def fit(
        self, df: pd.DataFrame, what: str = "the table", may_miss: tuple[str, ...] = ()
    ) -> TableTransform:
        """Learn each column's encoding from the (train) rows of df; returns self. Columns in
        `may_miss` get a missing-cell indicator even when these rows have no missing cell (a
        file's test rows may: `load_table`); it is 0 on every train row, so samples keep them.

        Raises:
            TypeError, ValueError: a bad table (`check_table`).
        """
        kinds = check_table(df, what)
        specs = []
        for name, kind in kinds.items():
            series = df[name]
            spec = dict(name=name, kind=kind, dtype=str(series.dtype), scaling=self.numbers,
                        missing=bool(series.isna().any()) or name in may_miss)  # fmt: skip
            if isinstance(series.dtype, pd.CategoricalDtype):
                spec["dtype_categories"] = [_plain(c) for c in series.dtype.categories]
                spec["ordered"] = bool(series.dtype.ordered)
            if kind == "boolean":
                spec |= {"encoding": self.categories, "categories": [False, True]}
            elif kind == "category":
                cats = sorted({_plain(v) for v in series.dropna().tolist()}, key=_sort_key)
                spec |= {"encoding": self.categories, "categories": cats}
            else:
                spec["encoding"] = "value"
            if kind == "integer":
                present = series.dropna()
                spec |= {"low": int(present.min()), "high": int(present.max())}
            if kind == "number":
                spec["decimals"] = decimal_places(series.dropna().to_numpy(dtype=np.float64))
            specs.append(ColumnSpec(**spec))
        noise = self._noise(len(df), specs, self.seed)[0]
        at, fitted = 0, []
        for spec in specs:
            u = noise[:, at : at + spec.width]
            at += spec.width
            raw = _raw(df[spec.name], spec, u, what)
            fitted.append(_fit_scaling(df[spec.name], spec, raw, what))
        self.columns = tuple(fitted)
        return self

    @staticmethod
    def _noise(n: int, specs: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(U[0, 1) noise (n, width), N(0, 1) noise (n, columns)): row i's draws are the same
        whatever n (drawn row by row from one stream)."""
        width = sum(c.width for c in specs)
        draws = np.random.default_rng(seed).random((n, width + len(specs)))
        return draws[:, :width], special.ndtri(np.clip(draws[:, width:], CDF_CLIP, 1 - CDF_CLIP))

    def fit_transform(self, df: pd.DataFrame, seed: int | None = None) -> np.ndarray:
        return self.fit(df).transform(df, seed)

    # -- transform --
    def transform(
        self, df: pd.DataFrame, seed: int | None = None, what: str = "the table"
    ) -> np.ndarray:
        """(n, width) float32 rows of df, dequantised with U[0, 1) noise of `seed` (None: the
        transform's seed); the i-th row draws the same noise in every call.

        Raises:
            ValueError: a missing column, cells of another kind than in training, a category
                not seen in training, or missing cells in a column that had none.
        """
        specs = self._fitted()
        if not is_table(df):
            raise TypeError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
        absent = [c.name for c in specs if c.name not in df.columns]
        if absent:
            raise ValueError(
                f"{what} lacks the column(s) {absent} of the table the transform was fitted on"
            )
        noise, gauss = self._noise(len(df), specs, self.seed if seed is None else seed)
        out = np.empty((len(df), self.width), dtype=np.float64)
        at = 0
        for j, spec in enumerate(specs):
            series = df[spec.name]
            miss = series.isna().to_numpy()
            if miss.any() and not spec.missing:
                row = series.index[int(np.argmax(miss))]
                raise ValueError(
                    f"{what}: column {spec.name!r} has a missing cell (row {row}) but had none "
                    "in training, so the transform has no indicator for it; fill it or drop "
                    "the row"
                )
            z = _scale(_raw(series, spec, noise[:, at : at + spec.width], what), spec)
            if spec.kind in ("number", "integer"):  # a missing number's value: N(0, 1) noise
                z[:, 0] = np.where(miss, gauss[:, j], z[:, 0])
            out[:, at : at + spec.width] = z
            at += spec.width
        return out.astype(np.float32)

    # -- inverse --
    def inverse_transform(self, x: Any) -> pd.DataFrame:
        """The table of encoded rows x (n, width) (a Tensor or an array): the original column
        names, dtypes and category sets; integers whole and within the train range; missing
        cells where the indicator says so.

        Raises:
            ValueError: x of another width, or not finite.
        """
        specs = self._fitted()
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise ValueError(
                f"encoded rows must have shape (n, {self.width}), got {tuple(x.shape)}"
            )
        if not np.isfinite(x).all():
            raise ValueError("encoded rows hold NaN or infinity: the model is broken")
        columns, at = {}, 0
        for spec in specs:
            raw = _unscale(x[:, at : at + spec.width], spec)
            at += spec.width
            miss = raw[:, -1] >= 1.0 if spec.missing else np.zeros(len(x), dtype=bool)
            columns[spec.name] = _decode(raw[:, : spec.value_width], spec, miss)
        return pd.DataFrame(columns)

    # -- JSON --
    def to_json(self) -> dict[str, Any]:
        """What config.json stores: the options and every column's spec."""
        return {
            "format": FORMAT,
            "numbers": self.numbers,
            "categories": self.categories,
            "seed": self.seed,
            "columns": [dataclasses.asdict(c) for c in self._fitted()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableTransform:
        """The transform `to_json` wrote.

        Raises:
            ValueError: not such a record (edited or corrupt)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a table transform record (format {FORMAT}): {str(data)[:80]}")
        t = cls(data["numbers"], data["categories"], data["seed"])
        names = {f.name for f in dataclasses.fields(ColumnSpec)}
        specs = []
        for c in data["columns"]:
            if (
                not isinstance(c, dict)
                or not set(c) <= names
                or c.get("kind") not in ("number", "integer", "boolean", "category")
                or c.get("encoding") not in ("value", *CATEGORIES)
                or c.get("scaling") not in NUMBERS
            ):
                raise ValueError(f"not a table column record: {str(c)[:80]}")
            specs.append(ColumnSpec(**c))
        t.columns = tuple(specs)
        return t


def _sort_key(v: Any) -> tuple[str, Any]:
    """Categories sort by type name, then value (text and numbers never compared)."""
    return (type(v).__name__, v)


def _decode(raw: np.ndarray, spec: ColumnSpec, miss: np.ndarray) -> Any:
    """One column of the table from its raw value columns (n, value_width) and the rows that
    are missing: argmax (onehot), floor (ordinal, integer; clipped to the train range)."""
    if spec.kind in ("boolean", "category"):
        k = len(spec.categories)
        if spec.onehot:
            codes = raw.argmax(axis=1)
        else:
            codes = np.clip(np.floor(raw[:, 0]), 0, k - 1).astype(np.int64)
        cells = [None if m else spec.categories[c] for c, m in zip(codes, miss, strict=True)]
        return _typed(cells, spec, miss)
    v = raw[:, 0]
    if spec.kind == "integer":
        v = np.clip(np.floor(v), spec.low, spec.high)
    elif spec.decimals is not None:
        v = np.round(v, spec.decimals)
    return _typed(np.where(miss, np.nan, v), spec, miss)


def _typed(values: Any, spec: ColumnSpec, miss: np.ndarray) -> Any:
    """Values as a pandas array of the spec's dtype (a nullable one where cells are missing
    and the plain dtype cannot hold them: int64 -> Int64, bool -> boolean)."""
    dtype = spec.dtype
    if dtype == "category":
        return pd.Categorical(
            values, categories=spec.dtype_categories or spec.categories, ordered=spec.ordered
        )
    any_missing = bool(miss.any())
    if spec.kind == "integer" and dtype.startswith(("int", "uint")):
        dtype = "Int64" if any_missing else dtype
    if spec.kind == "boolean" and dtype == "bool" and any_missing:
        dtype = "boolean"
    if spec.kind == "boolean" and dtype == "object":
        return pd.array([np.nan if v is None else v for v in values], dtype=object)
    if spec.kind in ("number", "integer") and dtype == "object":
        dtype = "float64"
    return pd.array(values, dtype=dtype)


# -- the data set ----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TableDataset(Dataset):
    """A table as a Dataset: x the encoded (n, width) float32 rows (kind "points"), `frame`
    the same rows as the original DataFrame, `transform` the `TableTransform` fitted on the
    file's train split (every split of one file shares it). A family fitted on it keeps the
    transform (`genlab.models.tabular`), so its samples come back as a table."""

    frame: Any = field(default=None)
    transform: TableTransform | None = None

    def __post_init__(self):
        assert self.frame is not None and len(self.frame) == len(self.x), "frame != x rows"

    def describe(self) -> str:
        of = f"{self.name!r}: " if self.name else ""
        return (
            f"{of}a table of {len(self.frame):,} rows and {self.frame.shape[1]} columns "
            f"(encoded as points of dimension {self.dim})"
        )


def table_dataset(
    frame: pd.DataFrame, transform: TableTransform, name: str = "", seed: int | None = None
) -> TableDataset:
    """A TableDataset of the rows of `frame` encoded by a fitted transform."""
    import torch

    x = torch.from_numpy(transform.transform(frame, seed, what=name or "the table"))
    frame = frame.reset_index(drop=True)
    return TableDataset(
        x=x, y=None, event_shape=(transform.width,), kind="points", name=name,
        frame=frame, transform=transform,
    )  # fmt: skip


def load_table(
    path: str | os.PathLike,
    split: str,
    split_rows: Any = None,
    transform: TableTransform | None = None,
) -> TableDataset:
    """A table file's split as a TableDataset: the transform is fitted on the train split (the
    first 90% of the rows, `genlab.data.files.split_rows`), every row is encoded with the
    transform's seed by its position in the file, and the split's rows are kept.

    Raises:
        FileNotFoundError, ValueError, ImportError: see `read_table`, `check_table`; an empty
            split; a category of the split unseen in the train split.
    """
    if split_rows is None:
        from genlab.data.files import split_rows
    frame = read_table(path)
    what = str(path)
    if len(frame) == 0:
        raise ValueError(f"{path} has no data rows")
    start, stop = split_rows(len(frame), split)
    cut = split_rows(len(frame), "train")[1]
    if cut == 0 or start == stop:
        empty = "train" if cut == 0 else split
        raise ValueError(
            f"{path}: the {empty!r} split is empty ({len(frame)} rows; train is the first 90%, "
            "test the last 10%); use more rows, or split='all'"
        )
    transform = transform or TableTransform()
    if not transform.is_fitted:  # an indicator for every column with a gap anywhere in the file
        gaps = tuple(str(c) for c in frame.columns if frame[c].isna().any())
        transform.fit(frame.iloc[:cut], what, may_miss=gaps)
    check_table(frame, what)  # the test rows too: a bad column anywhere is named
    x = transform.transform(frame.iloc[:stop], what=what)[start:stop]  # noise by position
    import torch

    return TableDataset(
        x=torch.from_numpy(np.ascontiguousarray(x)), y=None, event_shape=(transform.width,),
        kind="points", name=what, frame=frame.iloc[start:stop].reset_index(drop=True),
        transform=transform,
    )  # fmt: skip


WRITE_SUFFIXES = (".csv", ".parquet")


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a DataFrame as `.csv` (no index; missing cells empty) or `.parquet` (pyarrow),
    creating the folder; returns the path.

    Raises:
        ValueError: another suffix.
        ImportError: .parquet without pyarrow (pip install 'genlab[parquet]').
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(f"a table is written as FILE.csv or FILE.parquet, not {path.name!r}")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ImportError(
                f"writing {path} needs pyarrow: pip install 'genlab[parquet]', or write .csv"
            ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path
