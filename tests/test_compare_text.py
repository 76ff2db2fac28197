"""`genlab compare --data text:FILE`: the text measures (n-gram distances, known words) against
hand-computed values, and autoregressive beside masked diffusion on one budget (bits/char
exact vs bound, sampling speed at several step counts, the reference model's bits/char of
every family's samples), in the API, the report and the CLI."""

from __future__ import annotations

import json
import math

import pytest

from genlab.cli import app
from genlab.compare import Settings, compare, ngram_distance, text_quality, words
from genlab.report import FLOOR

pytestmark = pytest.mark.usefixtures("one_thread")

CORPUS = "the cat sat on the mat. the dog ate the hat! a cat and a dog sat. " * 40
TINY = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "warmup_steps": 1}
SETTINGS = Settings(text_samples=6, text_tokens=16, text_steps=(2, 8), text_test_chars=200)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(CORPUS)
    return path


@pytest.fixture(scope="module")
def text_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp-text")
    families = ["autoregressive", "masked_diffusion", "gmm"]
    options = {"autoregressive": TINY, "masked_diffusion": TINY}
    records = compare(f"text:{corpus}", families, budget_steps=4, settings=SETTINGS,
                      options=options, out=out, progress=False)  # fmt: skip
    return {r["family"]: r for r in records}, out


# -- the measures ----------------------------------------------------------------------------------
def test_ngram_distance_against_hand_counts():
    # "abab": a, b, a, b / ab, ba, ab; "aabb": a, a, b, b / aa, ab, bb
    assert ngram_distance(["abab"], "aabb", 1) == 0.0
    assert ngram_distance(["abab"], "aabb", 2) == pytest.approx(0.5 * (1 / 3 + 1 / 3 + 2 / 3))
    assert ngram_distance(["ab", "ab"], "xy", 1) == 1.0  # disjoint
    # n-grams never span two texts: "ab" + "ab" has no "ba"
    assert ngram_distance(["ab", "ab"], "abab", 2) == pytest.approx(0.5 * (1 / 3 + 1 / 3))
    with pytest.raises(ValueError, match="shorter than 3"):
        ngram_distance(["ab"], "abc", 3)


def test_text_quality_counts_known_words():
    assert words("The cat's HAT.") == ["the", "cat", "s", "hat"]
    q = text_quality(["the cat zzz", "dog"], "the cat", frozenset({"the", "cat", "dog"}))
    assert q["known_words"] == pytest.approx(3 / 4)
    assert set(q["ngram_tv"]) == {"1", "2", "3", "4"} and 0 < q["ngram_tv"]["2"] <= 1


# -- compare on text -------------------------------------------------------------------------------
def test_text_compare_reports_exact_bits_beside_the_bound(text_run):
    records, _ = text_run
    ar, md = records["autoregressive"], records["masked_diffusion"]
    assert ar["status"] == md["status"] == "ok", (ar["error"], md["error"])
    assert ar["log_prob_kind"] == "exact" and md["log_prob_kind"] == "bound"
    assert ar["train_steps"] == md["train_steps"] == 4  # the same budget
    for r in (ar, md):
        scores = r["details"]["text"]
        assert r["bits_per_char"] == pytest.approx(scores["loss"] / math.log(2))
        assert scores["n_chars"] == 200  # text_test_chars of the 264 test characters
        assert 0 < r["bits_per_char"] < 8
    assert md["bits_per_char_stderr"] > 0
    assert records["gmm"]["status"] == "not applicable"


def test_text_compare_times_samples_and_scores_them_with_the_exact_model(text_run):
    records, _ = text_run
    ar, md, floor = records["autoregressive"], records["masked_diffusion"], records[FLOOR]
    assert floor["details"]["reference"] == "autoregressive"
    for r in (ar, md, floor):
        assert r["n_samples"] == 6 and 0 <= r["known_words"] <= 1
        assert all(0 <= v <= 1 for v in r["ngram_tv"].values())
        assert 0 < r["reference_bits_per_char"] < 10
    # after a few steps the models are far from the text; real excerpts are near it
    assert floor["ngram_tv"]["3"] < min(ar["ngram_tv"]["3"], md["ngram_tv"]["3"])
    assert floor["reference_bits_per_char"] < md["reference_bits_per_char"]
    assert ar["sample_seconds_per_1000_chars"] > 0 and ar.get("nfe_curve") is None
    points = md["nfe_curve"]["points"]
    assert [p["steps"] for p in points] == [2, 8] and md["nfe_curve"]["metric"] == (
        "reference_bits_per_char"
    )
    for p in points:
        assert p["nfe"] <= p["steps"] and p["seconds_per_1000_chars"] > 0
        assert 0 < p["reference_bits_per_char"] < 10 and 0 <= p["trigram_tv"] <= 1
    assert len(md["details"]["sample_examples"]) == 3


def test_text_report_and_cli(text_run, corpus, tmp_path):
    _, out = text_run
    md = (out / "report.md").read_text()
    assert "bits/char" in md and "n-gram TV" in md and "ref. bits/char of samples" in md
    assert "masked_diffusion sampling per 1,000 characters: 2 steps" in md
    assert (out / "figures").is_dir() and "quality_vs_nfe" in json.dumps(
        json.loads((out / "records.json").read_text())
    )
    from typer.testing import CliRunner

    opts = ",".join(f"{f}.{k}={v}" for f in ("autoregressive", "masked_diffusion")
                    for k, v in TINY.items() if k != "block_size")  # fmt: skip
    result = CliRunner().invoke(app, ["compare", "--data", f"text:{corpus}", "--families",
                                      "autoregressive,masked_diffusion", "--budget", "2steps",
                                      "--options", opts, "--out", str(tmp_path / "cli"),
                                      "--no-progress", "--threads", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "bits/char" in result.output and "n-gram TV" in result.output
    records = json.loads((tmp_path / "cli" / "records.json").read_text())
    assert {r["family"] for r in records} == {"autoregressive", "masked_diffusion", FLOOR}
