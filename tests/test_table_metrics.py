"""genlab.table_metrics: each metric against a hand-computed value (and scipy/numpy where they
compute the same thing)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from scipy.stats.contingency import association as scipy_association
from sklearn.dummy import DummyClassifier, DummyRegressor

from genlab import table_metrics as tm


# -- per-column statistics ------------------------------------------------------------------------
def test_ks_statistic_by_hand_and_against_scipy():
    # F_a at 1, 2, 2.5, 3, 4: 1/3, 2/3, 2/3, 1, 1; F_b: 0, 0, 1/2, 1/2, 1 -> max |diff| = 2/3
    assert tm.ks_statistic([1, 2, 3], [2.5, 4]) == pytest.approx(2 / 3)
    # ties: F_a(1) = 2/3, F_b(1) = 1/3; F(2) = 1 on both sides -> 1/3
    assert tm.ks_statistic([1, 1, 2], [1, 2, 2]) == pytest.approx(1 / 3)
    assert tm.ks_statistic([1, np.nan, 2], [1, 2]) == 0.0  # NaN cells are dropped
    assert math.isnan(tm.ks_statistic([], [1.0]))
    g = np.random.default_rng(0)
    a, b = g.normal(size=57), g.normal(0.3, 1.2, size=41).round(1)
    assert tm.ks_statistic(a, b) == pytest.approx(scipy.stats.ks_2samp(a, b).statistic)


def test_total_variation_by_hand():
    # p_a: x 1/2, y 1/4, z 1/4; p_b: x 1/4, y 1/2, w 1/4 -> ½ (1/4 + 1/4 + 1/4 + 1/4) = 1/2
    assert tm.total_variation(list("xxyz"), list("xyyw")) == pytest.approx(0.5)
    assert tm.total_variation(["a", None, "b"], ["b", "a", np.nan]) == 0.0  # missing dropped
    assert tm.total_variation([True, False], ["True", "True"]) == pytest.approx(0.5)
    assert tm.total_variation(list("ab"), list("cd")) == 1.0
    assert math.isnan(tm.total_variation([None], ["a"]))


def test_column_fidelity_by_hand():
    real = pd.DataFrame({"x": [1.0, 2.0, 3.0, np.nan], "c": ["a", "a", "b", "b"]})
    syn = pd.DataFrame({"x": [2.5, 4.0, np.nan, np.nan], "c": ["a", "b", "b", "b"]})
    out = tm.column_fidelity(real, syn)
    assert out["columns"]["x"]["statistic"] == "ks"
    assert out["columns"]["x"]["value"] == pytest.approx(2 / 3)
    assert out["columns"]["c"]["statistic"] == "tv"
    assert out["columns"]["c"]["value"] == pytest.approx(0.25)  # ½ (|1/2-1/4| + |1/2-3/4|)
    assert out["columns"]["x"]["missing_real"] == 0.25
    assert out["columns"]["x"]["missing_synthetic"] == 0.5
    assert out["ks_mean"] == pytest.approx(2 / 3) and out["tv_mean"] == pytest.approx(0.25)
    assert out["missing_difference"] == pytest.approx(0.125)  # (1/4 + 0) / 2
    assert out["column_score"] == pytest.approx(1 - (2 / 3 + 0.25) / 2)


# -- dependence -----------------------------------------------------------------------------------
def test_cramers_v_by_hand_and_against_scipy():
    # the table [[6, 4], [2, 8]]: rows 10, 10; columns 8, 12; E = [[4, 6], [4, 6]];
    # chi2 = 4/4 + 4/6 + 4/4 + 4/6 = 10/3; V = sqrt(10/3 / (20 * 1)) = sqrt(1/6)
    a = ["r0"] * 10 + ["r1"] * 10
    b = ["c0"] * 6 + ["c1"] * 4 + ["c0"] * 2 + ["c1"] * 8
    assert tm.cramers_v(a, b) == pytest.approx(math.sqrt(1 / 6))
    assert tm.cramers_v(list("aabb"), list("xxyy")) == pytest.approx(1.0)
    assert tm.cramers_v(list("aaaa"), list("xyxy")) == 0.0  # one category: no association
    g = np.random.default_rng(1)
    u, v = g.integers(0, 3, 200), g.integers(0, 4, 200)
    v = np.where(g.random(200) < 0.4, u, v)
    table = pd.crosstab(u, v).to_numpy()
    assert tm.cramers_v(u, v) == pytest.approx(scipy_association(table, method="cramer"))


def test_correlation_ratio_and_pearson_by_hand():
    # y = 1, 3 | 5, 7: means 2 | 6, overall 4; between 2*4 + 2*4 = 16, total 9+1+1+9 = 20
    assert tm.correlation_ratio(list("aabb"), [1, 3, 5, 7]) == pytest.approx(math.sqrt(0.8))
    assert tm.correlation_ratio(list("abab"), [2, 2, 2, 2]) == 0.0
    assert tm.pearson(np.array([1, 2, 3]), np.array([2, 4, 7])) == pytest.approx(
        np.corrcoef([1, 2, 3], [2, 4, 7])[0, 1]
    )
    assert tm.pearson(np.array([1.0, 2.0]), np.array([5.0, 5.0])) == 0.0


def test_pairwise_dependence_by_hand():
    real = pd.DataFrame(
        {"x": [1.0, 2.0, 3.0, 4.0], "y": [2.0, 4.0, 6.0, 8.0], "c": list("aabb"), "d": list("xxyy")}
    )
    syn = pd.DataFrame(
        {"x": [1.0, 2.0, 3.0, 4.0], "y": [8.0, 6.0, 4.0, 2.0], "c": list("abab"), "d": list("xxyy")}
    )
    out = tm.pairwise_dependence(real, syn)
    assert out["correlation_difference"] == pytest.approx(2.0)  # r = 1 vs r = -1
    assert out["cramers_v_difference"] == pytest.approx(1.0)  # V = 1 vs V = 0
    # eta(c, x): real x = 1, 2 | 3, 4 (between 4, total 5) -> sqrt(0.8); syn 1, 3 | 2, 4
    # (between 1) -> sqrt(0.2); eta(c, y) alike; eta(d, x) and eta(d, y): sqrt(0.8) on both
    diff = math.sqrt(0.8) - math.sqrt(0.2)
    assert out["correlation_ratio_difference"] == pytest.approx((diff + diff + 0 + 0) / 4)
    assert out["association_difference"] == pytest.approx((2 + 1 + 2 * diff) / 6)
    assert out["max_difference"] == pytest.approx(2.0) and out["max_pair"] == ["x", "y"]
    assert out["real"]["x"]["y"] == pytest.approx(1.0)


def test_association_uses_rows_where_both_are_observed():
    frame = pd.DataFrame({"x": [1.0, 2.0, np.nan, 3.0], "y": [1.0, 2.0, 100.0, 3.0]})
    assert tm.association(frame, "x", "y", tm.column_kinds(frame)) == pytest.approx(1.0)


# -- ML efficacy ----------------------------------------------------------------------------------
def _labelled(labels: str, start: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"x": start + np.arange(len(labels), dtype=float), "y": list(labels)})


def test_ml_efficacy_with_a_majority_classifier_by_hand():
    train, test, syn = _labelled("aaab"), _labelled("aaab"), _labelled("bbba")
    out = tm.ml_efficacy(train, test, syn, "y", estimator=DummyClassifier())
    # real: predicts "a" -> F1(a) = 2 * (3/4 * 1) / (3/4 + 1) = 6/7, F1(b) = 0 -> 3/7
    # synthetic: predicts "b" -> F1(a) = 0, F1(b) = 2 * (1/4 * 1) / (1/4 + 1) = 2/5 -> 1/5
    assert out["task"] == "classification" and out["metric"] == "macro_f1"
    assert out["score_real"] == pytest.approx(3 / 7)
    assert out["score_synthetic"] == pytest.approx(1 / 5)
    assert out["ratio"] == pytest.approx((1 / 5) / (3 / 7))
    assert out["difference"] == pytest.approx(3 / 7 - 1 / 5)


def test_ml_efficacy_regression_with_a_mean_regressor_by_hand():
    train = pd.DataFrame({"x": [0.0, 1.0], "t": [1.0, 3.0]})  # mean 2
    test = pd.DataFrame({"x": [0.0, 1.0, 2.0], "t": [1.0, 2.0, 3.0]})
    syn = pd.DataFrame({"x": [0.0, 1.0, 5.0], "t": [3.0, 3.0, np.nan]})  # mean 3 (NaN dropped)
    out = tm.ml_efficacy(train, test, syn, "t", estimator=DummyRegressor())
    assert out["task"] == "regression" and out["metric"] == "r2"
    assert out["score_real"] == pytest.approx(0.0)  # predicting the test mean
    assert out["score_synthetic"] == pytest.approx(1 - 5 / 2)  # SS_res 4+1+0, SS_tot 2
    assert out["ratio"] is None and out["n_synthetic"] == 2


def test_ml_efficacy_forest_on_copies_and_on_flipped_labels():
    g = np.random.default_rng(0)
    x = g.normal(size=120)
    frame = pd.DataFrame(
        {"x": x, "noise": g.choice(list("uvw"), 120), "y": np.where(x > 0, "p", "n")}
    )
    train, test = frame[:80], frame[80:]
    same = tm.ml_efficacy(train, test, train.copy(), "y")
    assert same["score_real"] > 0.9 and same["ratio"] == pytest.approx(1.0)
    flipped = train.assign(y=np.where(train["x"] > 0, "n", "p"))
    assert tm.ml_efficacy(train, test, flipped, "y")["score_synthetic"] < 0.1


# -- privacy --------------------------------------------------------------------------------------
def test_gower_distances_by_hand():
    train = pd.DataFrame({"x": [0.0, 10.0], "c": ["a", "b"]})  # range of x: 10
    queries = pd.DataFrame({"x": [5.0, np.nan], "c": ["a", "b"]})
    encode = tm.GowerEncoding(train, tm.column_kinds(train))
    d = tm.gower_distances(encode(queries), encode(train))
    # (5/10 + 0) / 2, (5/10 + 1) / 2; (1 + 1) / 2, (1 + 0) / 2 (one side missing counts 1)
    np.testing.assert_allclose(d, [[0.25, 0.75], [1.0, 0.5]])
    np.testing.assert_allclose(tm.closest_distances(encode(queries), encode(train)), [0.25, 0.5])
    both_missing = pd.DataFrame({"x": [np.nan], "c": [None]})
    assert tm.gower_distances(encode(both_missing), encode(both_missing))[0, 0] == 0.0


def test_closest_distances_in_blocks_match_brute_force(monkeypatch):
    g = np.random.default_rng(2)
    frame = pd.DataFrame({"x": g.normal(size=50), "c": g.choice(list("ab"), 50)})
    encode = tm.GowerEncoding(frame, tm.column_kinds(frame))
    q, r = encode(frame[:30]), encode(frame[30:])
    brute = tm.gower_distances(q, r).min(1)
    monkeypatch.setattr(tm, "CHUNK_BYTES", 8 * 20 * 2 * 7)  # blocks of 7 queries
    np.testing.assert_array_equal(tm.closest_distances(q, r), brute)


def test_dcr_privacy_by_hand():
    train = pd.DataFrame({"x": [0.0, 4.0, 8.0]})  # range 8
    holdout = pd.DataFrame({"x": [1.0, 6.0]})
    syn = pd.DataFrame({"x": [0.0, 5.0, 7.0, 2.0]})
    out = tm.dcr_privacy(train, holdout, syn)
    # DCR of syn: 0, 1/8, 1/8, 2/8 -> median 1/8; of the holdout: 1/8, 2/8 -> median 3/16
    assert out["dcr_synthetic_median"] == pytest.approx(1 / 8)
    assert out["dcr_holdout_median"] == pytest.approx(3 / 16)
    assert out["dcr_ratio"] == pytest.approx(2 / 3)
    assert out["exact_match_rate"] == 0.25 and out["holdout_exact_match_rate"] == 0.0
    # to the holdout: 1/8, 1/8, 1/8, 1/8 -> closer to train: yes, tie, tie, no -> (1 + .5 + .5) / 4
    assert out["share_closer_to_train"] == pytest.approx(0.5)
    assert out["share_expected"] == pytest.approx(3 / 5)


def test_dcr_privacy_flags_copies():
    g = np.random.default_rng(3)
    frame = pd.DataFrame({"x": g.normal(size=60), "c": g.choice(list("abc"), 60)})
    train, holdout = frame[:40], frame[40:]
    copies = tm.dcr_privacy(train, holdout, train.sample(30, random_state=0))
    assert copies["exact_match_rate"] == 1.0 and copies["share_closer_to_train"] == 1.0
    assert copies["dcr_ratio"] == 0.0
    fresh = tm.dcr_privacy(train, holdout, holdout)
    assert fresh["share_closer_to_train"] == 0.0 and fresh["dcr_ratio"] == pytest.approx(1.0)


# -- all of them, and bad input -------------------------------------------------------------------
def test_table_metrics_of_the_test_table_itself():
    g = np.random.default_rng(4)
    x = g.normal(size=80)
    c = pd.Series(g.choice(list("abc"), 80)).where(g.random(80) > 0.1)  # 10% missing
    frame = pd.DataFrame({"x": x, "n": g.integers(0, 5, 80), "b": x > 0, "c": c})
    train, test = frame[:50], frame[50:]
    out = tm.table_metrics(train, test, test, target="b", estimator=DummyClassifier())
    assert set(tm.SUMMARY_KEYS) <= set(out)
    assert out["column_score"] == 1.0 and out["ks_mean"] == 0.0 and out["tv_mean"] == 0.0
    assert out["association_difference"] == 0.0 and out["missing_difference"] == 0.0
    assert out["share_closer_to_train"] == 0.0 and out["exact_match_rate"] == 0.0
    assert out["ml_efficacy"] == pytest.approx(out["ml_score_synthetic"] / out["ml_score_real"])
    assert out["table_details"]["fidelity"]["columns"]["b"]["kind"] == "categorical"
    assert tm.table_metrics(train, test, test)["ml_efficacy"] is None  # no target


def test_column_kinds():
    frame = pd.DataFrame({"f": [1.5], "i": [2], "b": [True], "s": ["a"],
                          "k": pd.Categorical(["u"])})  # fmt: skip
    assert tm.column_kinds(frame) == {"f": "numeric", "i": "numeric", "b": "categorical",
                                      "s": "categorical", "k": "categorical"}  # fmt: skip
    assert tm.column_kinds(frame, categorical=["i"])["i"] == "categorical"


def test_bad_input_is_named():
    real = pd.DataFrame({"x": [1.0, 2.0], "c": ["a", "b"]})
    with pytest.raises(TypeError, match="pandas DataFrame"):
        tm.column_fidelity(real.to_numpy(), real)
    with pytest.raises(ValueError, match=r"missing \['c'\]"):
        tm.column_fidelity(real, real[["x"]])
    with pytest.raises(ValueError, match="no rows"):
        tm.pairwise_dependence(real, real[:0])
    with pytest.raises(ValueError, match="target 'z' is not a column"):
        tm.ml_efficacy(real, real, real, "z")
    with pytest.raises(ValueError, match="no row with an observed 'c'"):
        tm.ml_efficacy(real, real, real.assign(c=None), "c")
    with pytest.raises(TypeError, match=r"column 'd'.*datetime"):
        tm.column_kinds(pd.DataFrame({"d": pd.to_datetime(["2024-01-01"])}))
    with pytest.raises(ValueError, match="not columns"):
        tm.column_kinds(real, categorical=["nope"])


# -- in compare and genlab eval -------------------------------------------------------------------
def _mixed_table(n: int, seed: int = 0) -> pd.DataFrame:
    g = np.random.default_rng(seed)
    kind = g.choice(["a", "b", "c"], n)
    size = np.where(kind == "a", 1.0, 3.0) + g.normal(0, 0.3, n)
    flag = pd.Series(g.random(n) > 0.5).where(g.random(n) > 0.1)  # 10% missing
    return pd.DataFrame({"kind": kind, "size": size.round(2), "count": g.integers(0, 4, n),
                         "flag": flag})  # fmt: skip


def test_compare_on_a_table_reports_the_table_metrics(tmp_path):
    from genlab.compare import TABLE_KEYS, Settings, compare
    from genlab.data.tables import TableTransform, table_dataset

    frame = _mixed_table(160)
    transform = TableTransform().fit(frame[:120])
    train, test = table_dataset(frame[:120], transform), table_dataset(frame[120:], transform)
    settings = Settings(n_samples=80, nfe_steps=(2,), nfe_samples=40, gmm_components=(1, 2),
                        gmm_extend=False, gmm_study_dims=(2,), gmm_study_seconds=1.0,
                        max_nll_points=20, ode_tolerance=1e-2)  # fmt: skip
    small = {"flow": {"hidden": 32, "depth": 2, "sample_steps": 4, "sample_method": "euler"}}
    records = compare(train, ["gmm", "flow"], test=test, budget_steps=3, settings=settings,
                      options=small, out=tmp_path, progress=False)  # fmt: skip
    gmm, flow, floor = records
    for r in records:
        assert r["status"] == "ok", r["errors"]
        assert all(r[k] is not None for k in TABLE_KEYS if k != "ml_efficacy"), r["family"]
        assert r["ml_efficacy"] is None  # no table_target (genlab eval's test measures it)
        assert r["details"]["table_metrics"]["privacy"]["n_synthetic"] == 80
    assert flow["nfe_curve"]["points"]  # sampled with as_frame=False at every step count
    copies = floor["details"]["table_metrics"]["exact_match_rate"]
    assert copies == 1.0 and floor["share_closer_to_train"] > 0.9  # the train rows themselves
    assert gmm["details"]["table_metrics"]["exact_match_rate"] < 0.5  # a density does not copy
    report = (tmp_path / "report.md").read_text()
    assert "column score" in report and "Cramér's V" in report
    with pytest.raises(ValueError, match="table_target 'nope' is not a column"):
        compare(train, ["gmm"], test=test, budget_steps=1, progress=False,
                settings=Settings(table_target="nope"))  # fmt: skip


def test_genlab_eval_on_a_table_file(tmp_path):
    import json

    from typer.testing import CliRunner

    from genlab.cli import app

    path = tmp_path / "t.csv"
    _mixed_table(200).to_csv(path, index=False)
    runner = CliRunner()
    fit = runner.invoke(app, ["fit", "gmm", "--data", str(path), "--out", str(tmp_path / "m"),
                              "--components", "3"])  # fmt: skip
    assert fit.exit_code == 0, fit.output
    out = runner.invoke(app, ["eval", str(tmp_path / "m"), "--data", str(path), "--target",
                              "kind", "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    record = json.loads(out.output)
    assert set(tm.SUMMARY_KEYS) <= set(record)
    assert record["table_details"]["ml_efficacy"]["n_test"] == 20  # the last 10% of the rows
    assert record["table_details"]["privacy"]["n_train"] == 180
    assert 0 <= record["column_score"] <= 1 and record["ml_efficacy"] > 0.5
    bad = runner.invoke(app, ["eval", str(tmp_path / "m"), "--data", str(path), "--target", "z"])
    assert isinstance(bad.exception, ValueError) and "not a column" in str(bad.exception)
