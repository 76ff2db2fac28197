"""Tests of tables: genlab.data.tables (reading, checks, the per-column transform) and
genlab.models.tabular (every continuous family fits a DataFrame and samples one)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import special, stats

import genlab
from genlab.data import load_dataset
from genlab.data.files import is_table_csv
from genlab.data.tables import (
    TableDataset,
    TableTransform,
    cell_knots,
    check_table,
    decimal_places,
    knots_cdf,
    quantile_forward,
    quantile_inverse,
    read_table,
    write_table,
)
from genlab.models import VAE, Diffusion, FlowMatching, GaussianMixture

TRANSFORMS = [(n, c) for n in ("quantile", "standardise") for c in ("onehot", "ordinal")]


def mixed_table(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """Every column type: numbers, integers (with and without missing cells), booleans,
    text categories (with missing cells), a pandas Categorical with an unused category,
    nullable Int64 and boolean columns with NA."""
    rng = np.random.default_rng(seed)
    number = np.round(rng.normal(10, 3, n), 2)
    number[rng.random(n) < 0.1] = np.nan
    whole = rng.integers(0, 5, n).astype(np.float64) * 100
    whole[rng.random(n) < 0.2] = np.nan  # float with NaN, integral values: "integer"
    colour = rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]).astype(object)
    colour[rng.random(n) < 0.15] = np.nan
    size = pd.Categorical(
        rng.choice(["S", "M", "L"], n), categories=["S", "M", "L", "XL"], ordered=True
    )
    count = pd.array(rng.integers(-3, 4, n), dtype="Int64")
    count[rng.random(n) < 0.1] = pd.NA
    flag = pd.array(rng.random(n) < 0.3, dtype="boolean")
    flag[rng.random(n) < 0.1] = pd.NA
    return pd.DataFrame({
        "number": number, "age": rng.integers(18, 90, n), "whole": whole,
        "ok": rng.random(n) < 0.6, "colour": pd.array(colour, dtype="str"), "size": size,
        "count": count, "flag": flag, "x32": rng.normal(size=n).astype(np.float32),
    })  # fmt: skip


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same columns, dtypes, missing cells and values (numbers to float32's round-off)."""
    assert list(a.columns) == list(b.columns)
    for c in a.columns:
        assert a[c].dtype == b[c].dtype, (c, a[c].dtype, b[c].dtype)
        assert (a[c].isna().to_numpy() == b[c].isna().to_numpy()).all(), c
        x, y = a[c].dropna(), b[c].dropna()
        if pd.api.types.is_float_dtype(a[c].dtype):
            np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=1e-5, atol=1e-6, err_msg=c)
        else:
            assert x.tolist() == y.tolist(), c


# -- the transform --------------------------------------------------------------------------------
@pytest.mark.parametrize("numbers, categories", TRANSFORMS)
def test_every_column_type_round_trips(numbers, categories):
    df = mixed_table()
    t = TableTransform(numbers, categories).fit(df)
    x = t.transform(df)
    assert x.dtype == np.float32 and x.shape == (len(df), t.width) and np.isfinite(x).all()
    assert t.kinds == {"number": "number", "age": "integer", "whole": "integer", "ok": "boolean",
                       "colour": "category", "size": "category", "count": "integer",
                       "flag": "boolean", "x32": "number"}  # fmt: skip
    onehot = categories == "onehot"
    # indicators for number, whole, colour, count, flag; one-hot: ok 2, colour 3, size 3, flag 2
    assert t.width == 9 + 5 + (6 if onehot else 0)
    assert_same_table(t.inverse_transform(x), df)
    # every encoded column is about N(0, 1) on the train rows (a missing number's value is
    # N(0, 1) noise); standardised columns without missing cells exactly
    assert np.abs(x.mean(0)).max() < 0.2 and np.abs(x.std(0) - 1).max() < 0.15
    if numbers == "standardise":
        full = [t.names.index(c) for c in ("age", "x32")]
        assert np.abs(x[:, full].mean(0)).max() < 1e-5
        assert np.abs(x[:, full].std(0) - 1).max() < 1e-4


def test_round_trip_through_json_is_the_same_transform():
    df = mixed_table()
    t = TableTransform("quantile", "onehot", seed=3).fit(df)
    back = TableTransform.from_json(json.loads(json.dumps(t.to_json())))
    assert np.array_equal(back.transform(df), t.transform(df))
    assert back.names == t.names and "colour=red" in t.names and "colour:missing" in t.names
    with pytest.raises(ValueError, match="not a table column record"):
        TableTransform.from_json({**t.to_json(), "columns": [{"name": "a", "kind": "date"}]})


def test_noise_follows_the_row_position():
    df = mixed_table()
    t = TableTransform().fit(df)
    assert np.array_equal(t.transform(df.iloc[:50]), t.transform(df)[:50])
    assert not np.array_equal(t.transform(df, seed=1), t.transform(df, seed=2))


def test_quantile_scaling_is_the_normal_score_of_the_rank():
    """z_i = Phi^-1((r_i - 1/2) / n), r_i the rank of v_i: Hazen's plotting positions, by
    scipy's rankdata (values of full precision: no dequantisation within a rounding cell)."""
    v = np.random.default_rng(0).gamma(2.0, size=500)
    df = pd.DataFrame({"v": v, "c": np.where(v > 2, "a", "b")})
    ours = TableTransform("quantile").fit(df).transform(df)[:, 0]
    expected = stats.norm.ppf((stats.rankdata(v) - 0.5) / len(v))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_rounded_numbers_are_dequantised_within_their_rounding_cell():
    v = np.round(np.random.default_rng(3).normal(40, 5, 300), 1)  # 0.1 mm: many ties
    df = pd.DataFrame({"v": v, "c": np.where(v > 40, "a", "b")})
    t = TableTransform("standardise").fit(df)
    spec = t.columns[0]
    raw = t.transform(df)[:, 0] * spec.scale[0] + spec.loc[0]
    assert spec.decimals == 1 and len(np.unique(raw)) == len(v)  # no two rows tie
    assert np.abs(raw - v).max() <= 0.05 + 1e-4
    assert_same_table(t.inverse_transform(t.transform(df)), df)


def test_standardise_matches_scikit_learn():
    from sklearn.preprocessing import StandardScaler

    v = np.random.default_rng(1).normal(5, 2, 300)
    df = pd.DataFrame({"v": v, "c": np.where(v > 5, "a", "b")})
    ours = TableTransform("standardise").fit(df).transform(df)[:, 0]
    theirs = StandardScaler().fit_transform(v[:, None])[:, 0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_cell_knots_and_the_quantile_maps_by_hand():
    xs, ps = cell_knots({0: 3, 2: 1, 5: 0})  # P(0) = 3/4 on [0, 1), P(2) = 1/4 on [2, 3)
    assert xs == [0, 1, 2, 3] and ps == [0, 0.75, 0.75, 1]
    xs, ps = np.asarray(xs), np.asarray(ps)
    np.testing.assert_allclose(knots_cdf(np.array([0.5, 1.5, 2.5]), xs, ps), [0.375, 0.75, 0.875])
    z = quantile_forward(np.array([0.5, 2.5]), xs, ps)
    np.testing.assert_allclose(z, stats.norm.ppf([0.375, 0.875]))
    np.testing.assert_allclose(quantile_inverse(z, xs, ps), [0.5, 2.5])
    assert decimal_places(np.array([39.1, 40.25])) == 2 and decimal_places(np.array([1.0])) == 0
    assert decimal_places(np.array([np.pi])) is None


def test_marginals_of_independent_normal_codes_are_the_train_marginals(monkeypatch):
    """Quantile scaling makes every encoded column N(0, 1): decoding independent N(0, 1)
    draws gives each column's train distribution (ordinal categories when they are
    quantile-scaled too, integers, the missing rate of an indicator): P(missing) =
    P(z >= Phi^-1(1 - p)) = p exactly."""
    monkeypatch.setattr("genlab.data.tables.QUANTILE_CATEGORIES", True)
    rng = np.random.default_rng(0)
    n = 400
    colour = rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1]).astype(object)
    colour[:40] = np.nan  # 10% missing
    df = pd.DataFrame({"colour": pd.array(colour, dtype="str"), "k": rng.integers(0, 3, n)})
    t = TableTransform("quantile", "ordinal").fit(df)
    z = np.random.default_rng(1).standard_normal((40_000, t.width))
    back = t.inverse_transform(z)
    assert abs(back["colour"].isna().mean() - 0.1) < 0.01
    # the ordinal column's own marginal: a missing cell's value is spread over the K cells
    want = (df["colour"].value_counts() + 40 / 3) / n
    got = back["colour"].value_counts() / back["colour"].notna().sum()
    for c in "abc":
        assert abs(got[c] - want[c]) < 0.015
    want_k = df["k"].value_counts(normalize=True).sort_index()
    got_k = back["k"].value_counts(normalize=True).sort_index()
    assert back["k"].dtype == np.int64 and set(got_k.index) == {0, 1, 2}
    np.testing.assert_allclose(got_k.to_numpy(), want_k.to_numpy(), atol=0.015)
    # the indicator's threshold, by hand
    spec = t.columns[0]
    xs, ps = map(np.asarray, spec.knots[-1])
    threshold = special.ndtri(0.9)
    assert quantile_inverse(np.array([threshold - 1e-6]), xs, ps)[0] < 1.0
    assert quantile_inverse(np.array([threshold + 1e-6]), xs, ps)[0] >= 1.0


def test_categories_are_standardised_and_their_indicators_quantile_scaled():
    df = mixed_table()
    t = TableTransform().fit(df)  # numbers="quantile", categories="onehot"
    x = t.transform(df)
    spec = dict(zip(t.kinds, t.columns, strict=True))["colour"]
    assert spec.knots[:3] == [None] * 3 and spec.knots[3] is not None
    cells = [t.names.index(f"colour={c}") for c in ("blue", "green", "red")]
    np.testing.assert_allclose(x[:, cells].mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(x[:, cells].std(0), 1, atol=1e-5)
    raw = np.asarray(x[:, cells]) * spec.scale[:3] + spec.loc[:3]  # e_k + u back
    assert ((raw >= 1).sum(1) == df["colour"].notna().to_numpy()).all()


def test_decoding_only_gives_seen_categories_and_whole_integers():
    df = mixed_table()
    t = TableTransform().fit(df)
    wild = np.random.default_rng(2).normal(0, 10, (500, t.width))  # far outside the data
    back = t.inverse_transform(wild)
    assert set(back["colour"].dropna()) <= {"red", "green", "blue"}
    assert set(back["size"].dropna()) <= {"S", "M", "L"}  # "XL" is declared, never seen
    assert list(back["size"].cat.categories) == ["S", "M", "L", "XL"] and back["size"].cat.ordered
    assert back["age"].between(df["age"].min(), df["age"].max()).all()
    whole = back["whole"].dropna()
    assert (whole == np.round(whole)).all() and back["whole"].dtype == np.float64


def test_transform_refuses_rows_unlike_the_train_rows():
    df = mixed_table()
    t = TableTransform().fit(df)
    other = df.copy()
    other.loc[3, "colour"] = "purple"
    with pytest.raises(ValueError, match=r"column 'colour' holds 'purple' \(row 3\), a category"):
        t.transform(other)
    other = df.copy()
    other.loc[5, "age"] = np.nan
    with pytest.raises(ValueError, match=r"column 'age' has a missing cell \(row 5\)"):
        t.transform(other)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['ok'\]"):
        t.transform(df.drop(columns=["ok"]))
    with pytest.raises(ValueError, match=r"shape \(n, 20\)"):
        t.inverse_transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="not fitted"):
        TableTransform().transform(df)
    with pytest.raises(ValueError, match="numbers must be one of"):
        TableTransform(numbers="minmax")


# -- bad tables -----------------------------------------------------------------------------------
def _base(n: int = 30) -> dict:
    rng = np.random.default_rng(0)
    return {"v": rng.normal(size=n), "c": rng.choice(["a", "b"], n)}


@pytest.mark.parametrize(
    "column, match",
    [
        ([np.nan] * 30, r"column 'bad' is empty \(every cell is missing\); drop it"),
        (["same"] * 30, r"column 'bad' holds a single value \('same'\) in every row"),
        (["1.5", "2", "x"] * 10, r"column 'bad' mixes numbers and text: it holds 'x' \(row 2\)"),
        ([1, "a", 2.5] * 10, r"column 'bad' mixes values of several types \(float, int, str\)"),
        ([f"id{i}" for i in range(30)], r"column 'bad' holds a different text in almost every"),
        (pd.date_range("2020-01-01", periods=30), r"column 'bad' holds datetime64.*convert it"),
        ([1.0, np.inf] * 15, r"column 'bad' holds infinity"),
    ],
)
def test_bad_columns_get_a_clear_message(column, match):
    df = pd.DataFrame({**_base(), "bad": column})
    error = TypeError if "datetime" in match else ValueError
    with pytest.raises(error, match=match):
        check_table(df)
    with pytest.raises(error, match=match):
        GaussianMixture(n_components=1).fit(df)


def test_bad_tables_get_a_clear_message():
    with pytest.raises(ValueError, match=r"is empty \(shape \(0, 0\)\)"):
        check_table(pd.DataFrame())
    with pytest.raises(ValueError, match="column names must be text, got 0"):
        check_table(pd.DataFrame({0: [1.0, 2.0]}))
    with pytest.raises(ValueError, match="'a' appears twice"):
        check_table(pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], columns=["a", "a"]))
    with pytest.raises(TypeError, match="must be a pandas DataFrame"):
        check_table(np.zeros((3, 2)))
    # a single value with missing cells is fine: its indicator carries the information
    df = pd.DataFrame({**_base(), "one": ["x"] * 20 + [None] * 10})
    assert check_table(df)["one"] == "category"


# -- files ----------------------------------------------------------------------------------------
def test_csv_with_text_columns_is_a_table_and_numeric_csv_is_not(tmp_path):
    df = mixed_table(100)
    path = tmp_path / "t.csv"
    write_table(df, path)
    assert is_table_csv(path)
    train, test, full = (load_dataset(path, split=s) for s in ("train", "test", "all"))
    assert isinstance(train, TableDataset)
    assert train.transform.to_json() == test.transform.to_json()
    assert len(train) == 90 and len(test) == 10 and train.x.dtype == torch.float32
    assert train.event_shape == (train.transform.width,) and train.kind == "points"
    assert torch.equal(torch.cat([train.x, test.x]), full.x)  # noise by row position
    assert list(test.frame["colour"].fillna("")) == list(read_table(path)["colour"][90:].fillna(""))
    head = load_dataset(path, n=7)
    assert len(head.frame) == 7 and torch.equal(head.x, train.x[:7])
    assert "a table of 90 rows and 9 columns" in train.describe()
    numeric = tmp_path / "n.csv"
    numeric.write_text("a,b\n1,2\n3,4\n")
    assert not is_table_csv(numeric) and not isinstance(load_dataset(numeric), TableDataset)
    for text in ("x;y\n1;2\n3;4\n", '"x","y"\n"1",oops\n', "a,b\n1,2\n3,oops\n5,6\n"):
        numeric.write_text(text)  # another separator, one row, a typo: today's numeric reader
        assert not is_table_csv(numeric)


def test_parquet_is_read_as_a_table(tmp_path):
    df = mixed_table(60)
    path = write_table(df, tmp_path / "t.parquet")
    data = load_dataset(path)  # the train split, on which the transform was fitted
    assert isinstance(data, TableDataset) and len(data) == 54
    assert_same_table(data.transform.inverse_transform(data.x), read_table(path)[:54])


# -- every continuous family ----------------------------------------------------------------------
FAMILIES = [
    (GaussianMixture, {"n_components": 3}, {}),
    (VAE, {"max_steps": 5}, {}),
    (FlowMatching, {"max_steps": 5}, {"method": "rk4", "steps": 4}),
    (Diffusion, {"max_steps": 5}, {"steps": 10}),
]


@pytest.mark.parametrize("cls, options, sampler", FAMILIES, ids=lambda v: getattr(v, "family", ""))
def test_every_continuous_family_fits_and_samples_a_table(tmp_path, cls, options, sampler):
    df = mixed_table(80)
    model = cls(**options, device="cpu").fit(df)
    samples = model.sample(40, seed=0, **sampler)
    assert isinstance(samples, pd.DataFrame) and list(samples.columns) == list(df.columns)
    assert (samples.dtypes == df.dtypes.replace({np.dtype(bool): np.dtype(bool)})).all()
    assert set(samples["colour"].dropna()) <= {"red", "green", "blue"}
    assert samples["age"].between(18, 89).all()
    encoded = model.sample(40, seed=0, as_frame=False, **sampler)
    assert isinstance(encoded, torch.Tensor) and encoded.shape == (40, model.table_transform_.width)
    lp = model.log_prob(df.head(6), **model.quick_log_prob)
    assert lp.shape == (6,) and torch.isfinite(lp).all()
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["fitted"]["table"]["columns"][0]["name"] == "number"
    loaded = genlab.load(tmp_path / "m", device="cpu")
    assert_same_table(loaded.sample(40, seed=0, **sampler), samples)


def test_missing_rates_and_category_frequencies_are_preserved():
    rng = np.random.default_rng(0)
    n = 1500
    group = rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1])
    value = np.where(group == "a", 0.0, 3.0) + rng.normal(size=n)
    value[rng.random(n) < 0.25] = np.nan
    df = pd.DataFrame({"group": pd.array(group, dtype="str"), "value": value})
    model = GaussianMixture(n_components=6, seed=0).fit(df)
    samples = model.sample(4000, seed=1)
    assert abs(samples["value"].isna().mean() - df["value"].isna().mean()) < 0.03
    got, want = (t["group"].value_counts(normalize=True) for t in (samples, df))
    for c in "abc":
        assert abs(got[c] - want[c]) < 0.03
    # the dependence is learned: group a's values are lower
    means = samples.groupby("group")["value"].mean()
    assert means["a"] < 1.0 < means["b"]


def test_fit_options_val_and_a_model_of_plain_rows():
    df = mixed_table(80)
    t = TableTransform(numbers="standardise", categories="ordinal")
    model = VAE(max_steps=4, eval_every=2, device="cpu").fit(df, table_transform=t, val=df[:20])
    assert model.table_transform_ is t and model.train_result_.best_step is not None
    assert model.event_shape == (t.width,)
    with pytest.raises(TypeError, match="table_transform is for a pandas DataFrame"):
        GaussianMixture(n_components=1).fit(torch.randn(20, 2), table_transform=t)
    plain = GaussianMixture(n_components=1).fit(torch.randn(30, 2))
    assert plain.table_transform_ is None and isinstance(plain.sample(3, seed=0), torch.Tensor)
    with pytest.raises(ValueError, match="not fitted on a table"):
        plain.sample(3, seed=0, as_frame=True)
    with pytest.raises(TypeError, match="fitted on rows of numbers, not a table"):
        plain.log_prob(df)
    model.fit(torch.randn(30, 3))  # a later fit on rows forgets the table
    assert model.table_transform_ is None


# -- the CLI --------------------------------------------------------------------------------------
def test_cli_fits_a_csv_table_and_writes_samples_as_csv_and_parquet(tmp_path, capsys):
    from genlab.cli import run as cli

    df = mixed_table(100)
    path = write_table(df, tmp_path / "t.csv")
    out = tmp_path / "run"
    assert cli(["fit", "gmm", "--data", str(path), "--out", str(out), "--components", "2"]) == 0
    assert cli(["sample", str(out), "-n", "30"]) == 0
    samples = read_table(out / "samples.csv")
    assert list(samples.columns) == list(df.columns) and len(samples) == 30
    assert set(samples["colour"].dropna()) <= {"red", "green", "blue"}
    assert cli(["sample", str(out), "-n", "20", "--out", str(tmp_path / "s.parquet")]) == 0
    assert len(read_table(tmp_path / "s.parquet")) == 20
    assert "wrote" in capsys.readouterr().out
    assert cli(["sample", str(out), "--out", str(tmp_path / "s.npy")]) != 0
    err = capsys.readouterr().err
    assert "genlab: error: a table is written as FILE.csv or FILE.parquet" in err


def test_a_gap_only_in_the_test_rows_loads_both_splits(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=50).round(3), "c": rng.choice(["x", "y"], 50)})
    frame.loc[48, "a"] = np.nan  # row 48 is in the last 10%: the test split
    path = tmp_path / "late.csv"
    frame.to_csv(path, index=False)
    train, test = load_dataset(path, split="train"), load_dataset(path, split="test")
    assert not train.frame["a"].isna().any() and test.frame["a"].isna().sum() == 1
    spec = {c.name: c for c in train.transform.columns}["a"]
    assert spec.missing  # an indicator for the file's gap, though train has none
    decoded = train.transform.inverse_transform(train.x.numpy())
    assert not decoded["a"].isna().any()  # train rows decode without a gap
    back = test.transform.inverse_transform(test.x.numpy())
    assert back["a"].isna().tolist() == test.frame["a"].isna().tolist()
