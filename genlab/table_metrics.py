"""Synthetic-data metrics for tables: real pandas DataFrames against synthetic ones.

    from genlab.table_metrics import table_metrics
    scores = table_metrics(real_train, real_test, synthetic, target="species")

Four questions, after SDV/SDMetrics and synthcity, each a module-level function:

- `column_fidelity`: does each column look right on its own? The two-sample Kolmogorov–Smirnov
  statistic for numbers (`ks_statistic`: sup_x |F_real(x) − F_syn(x)|) and the total
  variation distance for categories (`total_variation`: ½ Σ_c |p_real(c) − p_syn(c)|), both
  on the observed (non-missing) cells, in [0, 1], 0 for identical distributions; and the
  missing-cell rates side by side.
- `pairwise_dependence`: are the columns related as in the real table? The association
  matrix (`association_matrix`: Pearson correlation for two numbers, Cramér's V for two
  categories, the correlation ratio η for a number and a category) of each table, and the
  mean absolute difference of their entries, per kind of pair.
- `ml_efficacy`: is the table useful? A scikit-learn model (a random forest, or the estimator
  given) trained on synthetic rows and scored on real test rows, against the same model
  trained on the real train rows: macro F1 for a categorical target, R² for a numeric one.
- `dcr_privacy`: does it copy its training rows? The distance to the closest real training
  record (DCR, in the Gower distance `gower_distances`) of each synthetic row, against that
  of a real holdout row, which the model never saw (the standard holdout DCR test). A
  generator that copies gets distances near 0 and a share of rows whose closest real row is
  a train row (`share_closer_to_train`) near 1; one that samples afresh from the data
  distribution, n_train / (n_train + n_holdout) (½ for halves).

Column kinds come from the real table (`column_kinds`): numbers (float or integer dtypes) are
"numeric"; booleans, strings, pandas categoricals and objects are "categorical". Missing cells
(NaN, None, pd.NA) are left out of each column's statistics and counted in its missing rate.
Everything here takes DataFrames and returns floats and dicts: nothing knows about models.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

ColumnKind = Literal["numeric", "categorical"]

MISSING = "<missing>"
"""The category a missing cell of a categorical feature becomes for the ML-efficacy model."""

CHUNK_BYTES = 32 * 2**20
"""Working memory of one block of `gower_distances` (queries x records x columns)."""


# -- inputs ---------------------------------------------------------------------------------------
def _check_frame(frame: Any, name: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(
            f"{name} must be a pandas DataFrame, got {type(frame).__name__}; "
            "pass pd.DataFrame(...) or a table model's sample"
        )
    if len(frame) == 0:
        raise ValueError(f"{name} has no rows; the metrics need at least one")
    return frame


def column_kinds(frame: pd.DataFrame, categorical: Collection[str] = ()) -> dict[str, ColumnKind]:
    """Each column's kind: "numeric" for float and integer dtypes, "categorical" for booleans,
    strings, pandas categoricals and objects, and for the columns named in `categorical`
    (e.g. integer codes).

    Raises:
        TypeError: a column of another dtype (datetimes, complex numbers), naming it.
        ValueError: a name in `categorical` that is not a column.
    """
    _check_frame(frame, "the table")
    unknown = [c for c in categorical if c not in frame.columns]
    if unknown:
        raise ValueError(f"categorical names {unknown} that are not columns of the table")
    kinds: dict[str, ColumnKind] = {}
    for name in frame.columns:
        dtype = frame[name].dtype
        if name in categorical or pd.api.types.is_bool_dtype(dtype):
            kinds[name] = "categorical"
        elif pd.api.types.is_complex_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype):
            raise TypeError(
                f"column {name!r} has dtype {dtype}, neither numbers nor categories; convert "
                "it (e.g. a date to its year or to seconds) or drop it"
            )
        elif pd.api.types.is_numeric_dtype(dtype):
            kinds[name] = "numeric"
        else:
            kinds[name] = "categorical"
    return kinds


def _check_pair(
    real: pd.DataFrame, synthetic: pd.DataFrame, kinds: Mapping[str, ColumnKind] | None
) -> dict[str, ColumnKind]:
    """The kinds of `real`'s columns, checked to be the columns of `synthetic` too."""
    _check_frame(real, "the real table")
    _check_frame(synthetic, "the synthetic table")
    missing = [c for c in real.columns if c not in synthetic.columns]
    extra = [c for c in synthetic.columns if c not in real.columns]
    if missing or extra:
        raise ValueError(
            f"the synthetic table's columns differ from the real table's (missing {missing}, "
            f"extra {extra}); sample from a model fitted on this table"
        )
    kinds = dict(kinds) if kinds is not None else column_kinds(real)
    unknown = [c for c in kinds if c not in real.columns]
    if unknown:
        raise ValueError(f"kinds names {unknown} that are not columns of the real table")
    return kinds


def _numbers(column: pd.Series) -> np.ndarray:
    """The observed cells of a numeric column as float64 (missing cells dropped)."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return values[np.isfinite(values)]


def _categories(column: pd.Series) -> pd.Series:
    """The observed cells of a categorical column as strings (missing cells dropped), so that
    True, "True" and a pandas category "True" are the same category."""
    observed = column[column.notna()]
    return observed.astype(object).map(str)


# -- per-column fidelity --------------------------------------------------------------------------
def ks_statistic(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """The two-sample Kolmogorov–Smirnov statistic sup_x |F_a(x) − F_b(x)| of the empirical
    CDFs of two samples of numbers (NaN dropped), in [0, 1]; NaN when a sample is empty.

    The supremum is attained at a sample point, so it is the maximum over the pooled points
    of |#{a <= x}/n_a − #{b <= x}/n_b|.
    """
    a = np.sort(np.asarray(a, dtype=np.float64))
    b = np.sort(np.asarray(b, dtype=np.float64))
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) == 0 or len(b) == 0:
        return math.nan
    pooled = np.concatenate([a, b])
    fa = np.searchsorted(a, pooled, side="right") / len(a)
    fb = np.searchsorted(b, pooled, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def total_variation(a: Sequence[Any] | pd.Series, b: Sequence[Any] | pd.Series) -> float:
    """The total variation distance ½ Σ_c |p_a(c) − p_b(c)| between the category frequencies
    of two samples (missing cells dropped; categories compared as strings), in [0, 1]; NaN
    when a sample has no observed cell. A category only one sample has counts in full."""
    a, b = _categories(pd.Series(a)), _categories(pd.Series(b))
    if len(a) == 0 or len(b) == 0:
        return math.nan
    pa, pb = a.value_counts(normalize=True), b.value_counts(normalize=True)
    pa, pb = pa.align(pb, fill_value=0.0)
    return float(0.5 * np.abs(pa.to_numpy() - pb.to_numpy()).sum())


def _nanmean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def column_fidelity(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    kinds: Mapping[str, ColumnKind] | None = None,
) -> dict[str, Any]:
    """Per-column fidelity of `synthetic` to `real`.

    Returns:
        {"columns": {name: {"kind", "statistic" ("ks" or "tv"), "value" (in [0, 1]; NaN when
        a side has no observed cell), "missing_real", "missing_synthetic" (missing-cell
        rates)}}, "ks_mean" (mean KS over numeric columns, or None), "tv_mean" (mean TV over
        categorical columns, or None), "missing_difference" (mean |missing_real −
        missing_synthetic| over columns), "column_score" (1 − the mean statistic over all
        columns: SDMetrics' Column Shapes score, 1 for identical marginals)}.
    """
    kinds = _check_pair(real, synthetic, kinds)
    columns: dict[str, dict[str, Any]] = {}
    for name, kind in kinds.items():
        r, s = real[name], synthetic[name]
        if kind == "numeric":
            value, statistic = ks_statistic(_numbers(r), _numbers(s)), "ks"
        else:
            value, statistic = total_variation(r, s), "tv"
        columns[name] = {"kind": kind, "statistic": statistic, "value": value,
                         "missing_real": float(r.isna().mean()),
                         "missing_synthetic": float(s.isna().mean())}  # fmt: skip
    values = [c["value"] for c in columns.values()]
    mean = _nanmean(values)
    return {
        "columns": columns,
        "ks_mean": _nanmean([c["value"] for c in columns.values() if c["statistic"] == "ks"]),
        "tv_mean": _nanmean([c["value"] for c in columns.values() if c["statistic"] == "tv"]),
        "missing_difference": _nanmean(
            [abs(c["missing_real"] - c["missing_synthetic"]) for c in columns.values()]
        ),
        "column_score": None if mean is None else 1.0 - mean,
    }


# -- pairwise dependence --------------------------------------------------------------------------
def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r = cov(x, y) / (sd(x) sd(y)) of paired numbers; 0 when a side is constant
    (no linear dependence can be measured), NaN with fewer than 2 pairs."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / denominator if denominator > 0 else 0.0


def cramers_v(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Cramér's V = sqrt(χ² / (n (min(r, c) − 1))) of two paired categorical samples, with χ²
    Pearson's statistic Σ (O − E)² / E of their r x c contingency table (E = row total x
    column total / n, no continuity correction); in [0, 1], 0 when a side has one category,
    NaN with no pairs."""
    table = pd.crosstab(pd.Series(list(a)), pd.Series(list(b))).to_numpy(dtype=np.float64)
    n = table.sum()
    if n == 0:
        return math.nan
    k = min(table.shape) - 1
    if k == 0:
        return 0.0
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return math.sqrt(min(chi2 / (n * k), 1.0))


def correlation_ratio(categories: Sequence[Any], values: Sequence[float]) -> float:
    """The correlation ratio η = sqrt(Σ_c n_c (ȳ_c − ȳ)² / Σ_i (y_i − ȳ)²) of numbers y by
    category c: the share of y's spread explained by the category, in [0, 1]; 0 when y is
    constant, NaN with no pairs."""
    y = np.asarray(values, dtype=np.float64)
    if len(y) == 0:
        return math.nan
    total = float(((y - y.mean()) ** 2).sum())
    if total == 0:
        return 0.0
    groups = pd.Series(y).groupby(pd.Series(list(categories)).to_numpy())
    between = float((groups.count() * (groups.mean() - y.mean()) ** 2).sum())
    return math.sqrt(min(between / total, 1.0))


def association(frame: pd.DataFrame, a: str, b: str, kinds: Mapping[str, ColumnKind]) -> float:
    """The association of columns a and b on the rows where both are observed: Pearson's r
    (two numbers), Cramér's V (two categories) or the correlation ratio η (one of each)."""
    both = frame[[a, b]].dropna()
    if kinds[a] == "numeric" and kinds[b] == "numeric":
        return pearson(_numbers(both[a]), _numbers(both[b]))
    if kinds[a] == "categorical" and kinds[b] == "categorical":
        return cramers_v(_categories(both[a]), _categories(both[b]))
    cat, num = (a, b) if kinds[a] == "categorical" else (b, a)
    return correlation_ratio(_categories(both[cat]), both[num].to_numpy(dtype=np.float64))


def association_matrix(
    frame: pd.DataFrame, kinds: Mapping[str, ColumnKind] | None = None
) -> pd.DataFrame:
    """The symmetric matrix of `association` between every pair of columns (1 on the
    diagonal): Pearson's r in [−1, 1] for numbers, Cramér's V and η in [0, 1] otherwise."""
    kinds = dict(kinds) if kinds is not None else column_kinds(frame)
    names = list(kinds)
    out = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            out.loc[a, b] = out.loc[b, a] = association(frame, a, b, kinds)
    return out


_PAIR_KIND = {
    ("numeric", "numeric"): "correlation",
    ("categorical", "categorical"): "cramers_v",
    ("categorical", "numeric"): "correlation_ratio",
    ("numeric", "categorical"): "correlation_ratio",
}


def pairwise_dependence(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    kinds: Mapping[str, ColumnKind] | None = None,
) -> dict[str, Any]:
    """How far the synthetic table's column associations are from the real table's.

    For each pair of columns, |A_real − A_syn| of their `association` (Pearson's r differences
    are in [0, 2], Cramér's V and η differences in [0, 1]); a pair whose association is NaN
    in either table (no rows where both are observed) is left out.

    Returns:
        {"correlation_difference" (mean over number pairs), "cramers_v_difference" (mean over
        category pairs), "correlation_ratio_difference" (mean over mixed pairs), each None
        without such pairs; "association_difference" (mean over all pairs), "max_difference"
        and "max_pair" ([a, b]), "real" and "synthetic" (the matrices as nested dicts)}.
    """
    kinds = _check_pair(real, synthetic, kinds)
    a_real, a_syn = association_matrix(real, kinds), association_matrix(synthetic, kinds)
    names = list(kinds)
    by_kind: dict[str, list[float]] = {k: [] for k in set(_PAIR_KIND.values())}
    worst, worst_pair = -1.0, None
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d = abs(float(a_real.loc[a, b]) - float(a_syn.loc[a, b]))
            if not math.isfinite(d):
                continue
            by_kind[_PAIR_KIND[kinds[a], kinds[b]]].append(d)
            if d > worst:
                worst, worst_pair = d, [a, b]
    every = [d for ds in by_kind.values() for d in ds]
    return {
        "correlation_difference": _nanmean(by_kind["correlation"]),
        "cramers_v_difference": _nanmean(by_kind["cramers_v"]),
        "correlation_ratio_difference": _nanmean(by_kind["correlation_ratio"]),
        "association_difference": _nanmean(every),
        "max_difference": worst if worst_pair else None,
        "max_pair": worst_pair,
        "real": a_real.to_dict(),
        "synthetic": a_syn.to_dict(),
    }


# -- machine-learning efficacy --------------------------------------------------------------------
def _features(frame: pd.DataFrame, kinds: Mapping[str, ColumnKind], target: str) -> pd.DataFrame:
    """The feature columns for scikit-learn: numbers as float64 (NaN kept: the forest handles
    missing values), categories as strings with missing cells `MISSING`."""
    out = {}
    for name, kind in kinds.items():
        if name == target:
            continue
        column = frame[name]
        if kind == "numeric":
            out[name] = pd.to_numeric(column, errors="coerce").astype(np.float64)
        else:
            out[name] = column.astype(object).map(str).where(column.notna(), MISSING)
    return pd.DataFrame(out, index=frame.index)


def _pipeline(
    kinds: Mapping[str, ColumnKind], target: str, task: str, estimator: Any, seed: int
) -> Any:
    """One-hot encoded categories (unknown ones ignored), numbers as they are, then the
    estimator (default: a random forest of 100 trees, `random_state=seed`)."""
    from sklearn.base import clone
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    categorical = [c for c, k in kinds.items() if k == "categorical" and c != target]
    encode = ColumnTransformer(
        [("categories", OneHotEncoder(handle_unknown="ignore"), categorical)],
        remainder="passthrough",
    )
    if estimator is None:
        forest = RandomForestClassifier if task == "classification" else RandomForestRegressor
        estimator = forest(n_estimators=100, random_state=seed, n_jobs=1)
    else:
        estimator = clone(estimator)
    return make_pipeline(encode, estimator)


def _score(task: str, truth: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import f1_score, r2_score

    if task == "classification":
        return float(f1_score(truth, predicted, average="macro", zero_division=0.0))
    return float(r2_score(truth, predicted))


def ml_efficacy(
    real_train: pd.DataFrame,
    real_test: pd.DataFrame,
    synthetic: pd.DataFrame,
    target: str,
    *,
    kinds: Mapping[str, ColumnKind] | None = None,
    estimator: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train on synthetic, test on real (TSTR) against train on real, test on real (TRTR).

    One scikit-learn pipeline (categories one-hot encoded, then `estimator`, by default a
    random forest of 100 trees seeded with `seed`) is fitted on the synthetic rows and, again,
    on the real train rows, and both predict `target` on the real test rows. The score is the
    macro F1 (categorical target: classification; labels compared as strings) or R²
    (numeric target: regression). Rows whose target is missing are dropped.

    Args:
        estimator: an unfitted scikit-learn classifier or regressor (cloned, so it is not
            changed), e.g. LogisticRegression(); None: the random forest.

    Returns:
        {"target", "task" ("classification" or "regression"), "metric" ("macro_f1" or
        "r2"), "score_real" (TRTR), "score_synthetic" (TSTR), "difference" (real −
        synthetic), "ratio" (synthetic / real, None unless score_real > 0), "n_train_real",
        "n_synthetic", "n_test"}.

    Raises:
        ValueError: `target` is not a column, or a table has no row with an observed target.
    """
    kinds = _check_pair(real_train, synthetic, kinds)
    _check_pair(real_train, real_test, kinds)
    if target not in kinds:
        raise ValueError(
            f"target {target!r} is not a column of the table; choose one of {list(kinds)}"
        )
    task = "classification" if kinds[target] == "categorical" else "regression"

    def rows(frame: pd.DataFrame, name: str) -> tuple[pd.DataFrame, np.ndarray]:
        frame = frame[frame[target].notna()]
        if len(frame) == 0:
            raise ValueError(f"the {name} table has no row with an observed {target!r}")
        y = frame[target]
        if task == "classification":
            y = y.astype(object).map(str).to_numpy()
        else:
            y = pd.to_numeric(y, errors="coerce").to_numpy(dtype=np.float64)
        return _features(frame, kinds, target), y

    x_real, y_real = rows(real_train, "real train")
    x_syn, y_syn = rows(synthetic, "synthetic")
    x_test, y_test = rows(real_test, "real test")
    scores = {}
    for name, x, y in (("real", x_real, y_real), ("synthetic", x_syn, y_syn)):
        model = _pipeline(kinds, target, task, estimator, seed).fit(x, y)
        scores[name] = _score(task, y_test, model.predict(x_test))
    real, syn = scores["real"], scores["synthetic"]
    return {"target": target, "task": task,
            "metric": "macro_f1" if task == "classification" else "r2",
            "score_real": real, "score_synthetic": syn, "difference": real - syn,
            "ratio": syn / real if real > 0 else None, "n_train_real": len(y_real),
            "n_synthetic": len(y_syn), "n_test": len(y_test)}  # fmt: skip


# -- privacy: distance to the closest record ------------------------------------------------------
class GowerEncoding:
    """A table's cells for `gower_distances`: numbers scaled by the real train range R_j
    ((n, p) float64, NaN for missing), categories as integer codes ((n, q), −1 for missing)."""

    def __init__(self, reference: pd.DataFrame, kinds: Mapping[str, ColumnKind]):
        self.numeric = [c for c, k in kinds.items() if k == "numeric"]
        self.categorical = [c for c, k in kinds.items() if k == "categorical"]
        ranges = []
        for name in self.numeric:
            values = _numbers(reference[name])
            span = float(values.max() - values.min()) if len(values) else 0.0
            ranges.append(span if span > 0 else 1.0)
        self.ranges = np.asarray(ranges, dtype=np.float64)
        self.codes = {name: {} for name in self.categorical}

    def __call__(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        numbers = np.zeros((len(frame), len(self.numeric)))
        for j, name in enumerate(self.numeric):
            column = pd.to_numeric(frame[name], errors="coerce")
            numbers[:, j] = column.to_numpy(np.float64, na_value=np.nan) / self.ranges[j]
        codes = np.full((len(frame), len(self.categorical)), -1, dtype=np.int64)
        for j, name in enumerate(self.categorical):
            column, table = frame[name], self.codes[name]
            observed = _categories(column)
            for value in observed.unique():
                table.setdefault(value, len(table))
            codes[column.notna().to_numpy(), j] = observed.map(table).to_numpy(np.int64)
        return numbers, codes


def gower_distances(
    queries: tuple[np.ndarray, np.ndarray], records: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """The (n_q, n_r) Gower distances between rows of two `GowerEncoding` outputs:
    d(x, y) = (1/p) Σ_j d_j with d_j = |x_j − y_j| / R_j for a number (R_j the real train
    range; not clipped, so values beyond it count more than 1), [x_j ≠ y_j] for a category,
    and, for a missing cell, 0 when both are missing and 1 when one is."""
    (qn, qc), (rn, rc) = queries, records
    p = qn.shape[1] + qc.shape[1]
    diff = np.abs(qn[:, None, :] - rn[None, :, :])
    q_missing, r_missing = np.isnan(qn)[:, None, :], np.isnan(rn)[None, :, :]
    diff = np.where(q_missing & r_missing, 0.0, np.where(q_missing | r_missing, 1.0, diff))
    mismatch = (qc[:, None, :] != rc[None, :, :]).sum(-1)
    return (diff.sum(-1) + mismatch) / max(p, 1)


def closest_distances(
    queries: tuple[np.ndarray, np.ndarray], records: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """(n_q,) the Gower distance of each query row to its closest record, in blocks of
    queries that keep the working memory under `CHUNK_BYTES`."""
    n_r, p = len(records[0]), records[0].shape[1] + records[1].shape[1]
    block = max(1, CHUNK_BYTES // (8 * max(n_r, 1) * max(p, 1)))
    out = []
    for start in range(0, len(queries[0]), block):
        part = tuple(a[start : start + block] for a in queries)
        out.append(gower_distances(part, records).min(1))
    return np.concatenate(out) if out else np.zeros(0)


def dcr_privacy(
    real_train: pd.DataFrame,
    real_holdout: pd.DataFrame,
    synthetic: pd.DataFrame,
    *,
    kinds: Mapping[str, ColumnKind] | None = None,
) -> dict[str, Any]:
    """The distance-to-closest-record (DCR) test of a synthetic table against its training rows.

    DCR(x) = min over real train rows t of the Gower distance d(x, t) (`gower_distances`,
    ranges from the train rows). The synthetic rows' DCRs are set against the real holdout's
    (rows the model never saw: what a fresh draw from the data distribution gets). And each
    synthetic row's closest real row is in the train or in the holdout set (ties count ½):
    for rows drawn afresh from the data distribution, exchangeable with the n_train + n_holdout
    real rows, the share in the train set is n_train / (n_train + n_holdout)
    ("share_expected"); a generator that copies its training rows gets a share near 1.

    Returns:
        {"dcr_synthetic_median", "dcr_holdout_median", "dcr_synthetic_p05",
        "dcr_holdout_p05" (5th percentiles), "dcr_ratio" (synthetic median / holdout median;
        ≈ 1 or above: no closer than fresh data; None when the holdout median is 0),
        "exact_match_rate" (synthetic rows at distance 0 of a train row),
        "holdout_exact_match_rate" (the same for the holdout: duplicates in the data itself),
        "share_closer_to_train", "share_expected", "n_train", "n_holdout", "n_synthetic"}.
    """
    kinds = _check_pair(real_train, synthetic, kinds)
    _check_pair(real_train, real_holdout, kinds)
    encode = GowerEncoding(real_train, kinds)
    train, holdout, syn = encode(real_train), encode(real_holdout), encode(synthetic)
    dcr_syn, dcr_holdout = closest_distances(syn, train), closest_distances(holdout, train)
    to_holdout = closest_distances(syn, holdout)
    share = float(np.mean((dcr_syn < to_holdout) + 0.5 * (dcr_syn == to_holdout)))
    median_syn, median_holdout = float(np.median(dcr_syn)), float(np.median(dcr_holdout))
    return {"dcr_synthetic_median": median_syn, "dcr_holdout_median": median_holdout,
            "dcr_synthetic_p05": float(np.percentile(dcr_syn, 5)),
            "dcr_holdout_p05": float(np.percentile(dcr_holdout, 5)),
            "dcr_ratio": median_syn / median_holdout if median_holdout > 0 else None,
            "exact_match_rate": float(np.mean(dcr_syn == 0)),
            "holdout_exact_match_rate": float(np.mean(dcr_holdout == 0)),
            "share_closer_to_train": share,
            "share_expected": len(real_train) / (len(real_train) + len(real_holdout)),
            "n_train": len(real_train), "n_holdout": len(real_holdout),
            "n_synthetic": len(synthetic)}  # fmt: skip


# -- all of them ----------------------------------------------------------------------------------
SUMMARY_KEYS: tuple[str, ...] = (
    "column_score", "ks_mean", "tv_mean", "missing_difference", "association_difference",
    "correlation_difference", "cramers_v_difference", "ml_score_synthetic", "ml_score_real",
    "ml_efficacy", "dcr_ratio", "share_closer_to_train", "share_expected", "exact_match_rate",
)  # fmt: skip
"""The flat keys of `table_metrics` (what `genlab eval` and compare's records show)."""


def table_metrics(
    real_train: pd.DataFrame,
    real_test: pd.DataFrame,
    synthetic: pd.DataFrame,
    *,
    target: str | None = None,
    kinds: Mapping[str, ColumnKind] | None = None,
    estimator: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every table metric of `synthetic`, a sample of a model fitted on `real_train`.

    Fidelity and dependence are measured against `real_test` (as compare measures every
    sample against the test split), ML efficacy trains on `synthetic` / `real_train` and
    scores on `real_test`, and the DCR test uses `real_test` as the holdout.

    Args:
        target: the column ML efficacy predicts; None: not measured (the key is None).

    Returns:
        The flat `SUMMARY_KEYS` (ml_efficacy: the TSTR / TRTR ratio of `ml_efficacy`) and
        "table_details": {"fidelity", "dependence", "ml_efficacy", "privacy"}, the four
        functions' records.
    """
    kinds = _check_pair(real_train, synthetic, kinds)
    _check_pair(real_train, real_test, kinds)
    fidelity = column_fidelity(real_test, synthetic, kinds)
    dependence = pairwise_dependence(real_test, synthetic, kinds)
    efficacy = None
    if target is not None:
        efficacy = ml_efficacy(real_train, real_test, synthetic, target, kinds=kinds,
                               estimator=estimator, seed=seed)  # fmt: skip
    privacy = dcr_privacy(real_train, real_test, synthetic, kinds=kinds)
    learned = {} if efficacy is None else {"ml_score_synthetic": efficacy["score_synthetic"],
                                           "ml_score_real": efficacy["score_real"],
                                           "ml_efficacy": efficacy["ratio"]}  # fmt: skip
    found = {**fidelity, **dependence, **privacy, **learned}
    summary = {key: found.get(key) for key in SUMMARY_KEYS}
    details = {"fidelity": fidelity, "dependence": dependence, "ml_efficacy": efficacy,
               "privacy": privacy}  # fmt: skip
    return {**summary, "table_details": details}
