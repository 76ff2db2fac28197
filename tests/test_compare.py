"""`genlab compare` and its report: records, labels, the floor row, unknown and inapplicable
families, the cached feature classifier (and its repair), the CLI, and report.html in a real
headless browser."""

from __future__ import annotations

import dataclasses
import html
import itertools
import json
import math
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from typer.testing import CliRunner

from genlab import evaluation
from genlab.cli import app, run
from genlab.compare import RECORD_KEYS, Budget, Settings, compare, parse_budget
from genlab.data import load_dataset
from genlab.models import FAMILIES, GaussianMixture, recipes
from genlab.models.base import Budget as FitBudget
from genlab.nets.classifier import FeatureClassifier
from genlab.nets.conv import ConvEncoder
from genlab.report import FLOOR, json_safe, write_report

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = Settings(n_samples=100, nfe_steps=(2, 4), nfe_samples=50, gmm_components=(1, 2),
                gmm_study_dims=(2, 8), gmm_study_seconds=5.0, density_grid=12,
                ode_tolerance=1e-2, classifier_epochs=30, classifier_seconds=10.0)  # fmt: skip
TINY_NETS = {
    "vae": {"hidden": 32},
    "flow": {"hidden": 32, "depth": 1, "base_channels": 8},
    "diffusion": {"hidden": 32, "base_channels": 8},
    "autoregressive": {"n_layer": 1, "n_head": 2, "n_embd": 16},
}
IMAGE_FAMILIES = ["gmm", "vae", "flow", "diffusion", "autoregressive"]
STEPS = 8
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("cache")
        mp.setenv(evaluation.CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def digits(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp-digits")
    records = compare("digits", IMAGE_FAMILIES, budget_steps=STEPS, n_train=300, n_test=100,
                      settings=TINY, options=TINY_NETS, out=out, progress=False)  # fmt: skip
    return records, out


@pytest.fixture(scope="module")
def moons(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp-moons")
    records = compare("moons", ["gmm", "flow", "autoregressive"], budget_steps=STEPS,
                      n_train=300, n_test=100, settings=TINY, options=TINY_NETS, out=out,
                      progress=False)  # fmt: skip
    return records, out


def by_family(records):
    return {r["family"]: r for r in records}


# -- records ---------------------------------------------------------------------------------------
def test_records_are_plain_dicts_in_order_with_every_key(digits):
    records, out = digits
    assert [r["family"] for r in records] == [*IMAGE_FAMILIES, FLOOR]
    assert all(type(r) is dict and tuple(r) == RECORD_KEYS for r in records)
    assert all(r["data"] == "digits" for r in records)
    assert json.loads((out / "records.json").read_text()) == json.loads(json.dumps(records))


def test_every_registered_family_is_measured_and_labelled(digits):
    rows = by_family(digits[0])
    for family in ["gmm", "vae", "flow", "diffusion", "autoregressive"]:
        r = rows[family]
        assert r["status"] == "ok", (family, r["error"])
        assert r["log_prob_kind"] in ("exact", "bound", "estimate")
        assert 0 < r["bits_per_dim"] < 100 and math.isfinite(r["nll_nats"])  # 8 steps: poor
        assert r["n_parameters"] > 0 and r["train_seconds"] > 0
        assert r["sample_seconds_per_1000"] > 0 and r["n_samples"] == TINY.n_samples
        for key in ("mmd", "sliced_wasserstein", "frechet_classifier", "precision", "recall"):
            assert r[key] is not None and math.isfinite(r[key]), (family, key)
        assert 0 <= r["class_entropy_bits"] <= math.log2(10) + 1e-9
    assert (
        rows["gmm"]["log_prob_kind"] == "exact"
        and rows["autoregressive"]["log_prob_kind"] == "exact"
    )
    assert rows["vae"]["log_prob_kind"] == "estimate"
    assert rows["flow"]["log_prob_kind"] == "estimate"  # 64 dimensions > exact_trace_max_dim
    assert rows["autoregressive"]["nll_space"] == "discrete (log-mass)"
    assert rows["flow"]["nll_space"] == "discrete (dequantised density)"
    assert all(rows[f]["train_steps"] == STEPS for f in ["vae", "flow", "diffusion"])


def test_log_prob_kind_comes_from_the_model(moons):
    rows = by_family(moons[0])
    assert rows["flow"]["log_prob_kind"] == "exact"  # 2 dimensions: exact trace
    assert rows["flow"]["nll_space"] == "continuous density"
    assert rows["gmm"]["details"]["n_components"] in TINY.gmm_components


def test_nfe_and_quality_vs_nfe_of_iterative_families(digits):
    rows = by_family(digits[0])
    recipe = recipes.RECIPES.get(("flow", "small_image"))  # compare forces no sampler:
    flow = recipes.resolve(FAMILIES["flow"].config_class(), TINY_NETS["flow"], recipe)
    assert flow.sample_method == "heun" and rows["flow"]["nfe"] == 2 * flow.sample_steps
    assert rows["diffusion"]["nfe"] == 20  # DPM-Solver++ with 20 steps
    for family in ("flow", "diffusion"):
        curve = rows[family]["nfe_curve"]
        assert curve["metric"] == "frechet_classifier"
        assert len(curve["points"]) == len(TINY.nfe_steps)
        nfes = [p["nfe"] for p in curve["points"]]
        assert nfes == sorted(nfes) and nfes[0] < nfes[-1]
    assert rows["gmm"]["nfe_curve"] is None and rows["vae"]["nfe_curve"] is None


def test_an_unknown_family_is_an_error_before_anything_loads(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("data loaded before the families were checked")

    monkeypatch.setattr("genlab.compare.load_dataset", no_loading)
    with pytest.raises(ValueError, match=r"unknown family 'gan': the families are .*gmm"):
        compare("moons", ["gmm", "gan"], budget_steps=1, settings=TINY, progress=False)
    with pytest.raises(ValueError, match=r"unknown families 'gan', 'nope'"):
        compare("moons", "gan,gmm,nope", budget_steps=1, settings=TINY, progress=False)
    monkeypatch.delitem(FAMILIES, "diffusion")  # as if the family had not landed
    with pytest.raises(ValueError, match="unknown family 'diffusion'"):
        compare("moons", ["diffusion"], budget_steps=1, settings=TINY, progress=False)


def test_autoregressive_is_not_applicable_to_points(moons):
    r = by_family(moons[0])["autoregressive"]
    assert r["status"] == "not applicable"
    assert "continuous points" in r["error"] and r["train_seconds"] is None


def test_floor_row_is_real_train_data_against_test(digits):
    rows = by_family(digits[0])
    floor = rows[FLOOR]
    assert floor["status"] == "ok" and floor["n_samples"] == TINY.n_samples
    assert floor["train_seconds"] is None and floor["bits_per_dim"] is None
    assert floor["details"]["n_train"] == 300 and floor["details"]["n_test"] == 100
    assert floor["class_entropy_bits"] > 3.0  # real digits cover the 10 classes
    models = [rows[f]["frechet_classifier"] for f in ["vae", "flow", "diffusion", "autoregressive"]]
    assert floor["frechet_classifier"] < min(models)  # 8 training steps are far from the data
    assert floor["details"]["classifier"]["test_accuracy"] > 0.5


def test_gmm_nll_vs_components_study(digits):
    study = by_family(digits[0])["gmm"]["details"]["nll_vs_components"]
    assert study["dims"] == [2, 8] and study["components"] == list(TINY.gmm_components)
    assert all(len(row) == 2 and all(v is None or math.isfinite(v) for v in row)
               for row in study["test_bits_per_dim"])  # fmt: skip


def test_gmm_study_matches_a_direct_fit():
    """One cell of the study is the mean test NLL, in bits per projected dimension, of a GMM
    fitted on the PCA projection, computed here with numpy's SVD and the GMM directly."""
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(200, 5, generator=g), torch.randn(50, 5, generator=g)
    study = evaluation.gmm_nll_vs_components(train, test, [3], [2], seed=0)
    mean = train.double().mean(0)
    axes = torch.from_numpy(np.linalg.svd((train.double() - mean).numpy())[2][:3].T)
    model = GaussianMixture(2, seed=0).fit((train.double() - mean) @ axes)
    nll = -model.log_prob((test.double() - mean) @ axes).double().mean().item()
    assert study["test_bits_per_dim"][0][0] == pytest.approx(nll / (3 * math.log(2)), rel=1e-4)


def test_held_out_nll_is_discrete_bits_of_a_dequantised_density():
    """A density of quantised data: bits/dim = (-mean log p(dequantised) + D ln L) / (D ln 2),
    written out here; a log-mass model (log_prob_space "discrete") is scored at the grid."""
    train = load_dataset("digits", split="train", n=300)
    test = load_dataset("digits", split="test", n=80)
    model = GaussianMixture(1, seed=0).fit(evaluation.dequantized(train, 1).x)  # a tensor
    result = evaluation.held_out_nll(model, test, seed=5, rtol=0.1)  # rtol: not a GMM option
    u = torch.rand(test.x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.allclose(result.points.double(), (test.x.double() * 16 + u) / 17, atol=1e-6)
    log_p = model.log_prob(result.points).double()
    expected = (-log_p.mean().item() + 64 * math.log(17)) / (64 * math.log(2))
    assert result.bits_per_dim == pytest.approx(expected, rel=1e-6)
    assert result.space == "discrete (dequantised density)"


class LogProbSpy:
    """Just what held_out_nll reads of a model: a density that records its keyword options."""

    log_prob_space = "continuous"
    log_prob_options = frozenset({"rtol", "steps"})

    def __init__(self):
        self.calls = []

    def log_prob(self, x, **options):
        self.calls.append(options)
        return -0.5 * (x.reshape(len(x), -1).double() ** 2).sum(1)


def test_held_out_nll_passes_only_the_models_log_prob_options():
    spy, moons = LogProbSpy(), load_dataset("moons", n=20)
    result = evaluation.held_out_nll(spy, moons, rtol=0.1, atol=0.2, steps=3, method="rk4")
    assert spy.calls == [{"rtol": 0.1, "steps": 3}]  # atol and method: not its options
    evaluation.held_out_nll(spy, moons)
    assert spy.calls[-1] == {}
    expected = 0.5 * (moons.x.double() ** 2).sum(1).mean().item()
    assert result.nll == pytest.approx(expected) and result.space == "continuous density"


def test_evaluate_model_reports_the_nll_and_sample_metrics():
    train, test = load_dataset("moons", n=200), load_dataset("moons", split="test", n=60)
    model = GaussianMixture(2, seed=0).fit(train)
    result = evaluation.evaluate_model(model, test, seed=3)
    held_out = evaluation.held_out_nll(model, test, 3)
    assert result["family"] == "gmm" and result["n_test"] == 60
    assert result["log_prob_kind"] == "exact"
    assert result["nll"] == pytest.approx(held_out.nll)
    assert result["bits_per_dim"] == pytest.approx(held_out.bits_per_dim)
    assert {"mmd", "sliced_wasserstein", "energy_distance"} <= set(result)
    text = dataclasses.replace(test, kind="text")
    with pytest.raises(ValueError, match="text model needs text data"):
        evaluation.evaluate_model(model, text, seed=0)


def test_gmm_study_goes_through_the_familys_sweep(monkeypatch):
    """Each PCA dimension is one call of FAMILIES["gmm"].sweep; its mean test NLL (nats per
    sample) becomes bits/dim, and skipped or failed K become None."""
    calls = []

    def sweep(x, components, *, test, seed, max_seconds, device):
        calls.append((x.shape, test.shape, list(components), seed, max_seconds, device))
        d = x.shape[1]
        return [{"n_components": 1, "test_nll": d * math.log(2), "bic": 0.0, "seconds": 0.0},
                {"n_components": 2, "skipped": "predicted to overrun", "test_nll": None},
                {"n_components": 4, "error": "ValueError: no", "test_nll": 1.0}]  # fmt: skip

    monkeypatch.setattr(FAMILIES["gmm"], "sweep", staticmethod(sweep), raising=False)
    train, test = torch.randn(40, 6), torch.randn(10, 6)
    study = evaluation.gmm_nll_vs_components(train, test, [2, 3, 9], [1, 2, 4], seed=7,
                                             max_seconds=30.0, device="cpu")  # fmt: skip
    assert study["dims"] == [2, 3] and study["components"] == [1, 2, 4]
    assert study["test_bits_per_dim"] == [[1.0, None, None], [1.0, None, None]]
    assert [c[:4] for c in calls] == [((40, 2), (10, 2), [1, 2, 4], 7),
                                      ((40, 3), (10, 3), [1, 2, 4], 7)]  # fmt: skip
    assert all(0 < c[4] <= 30.0 and c[5] == "cpu" for c in calls)
    over = evaluation.gmm_nll_vs_components(train, test, [2], [1], max_seconds=-1.0)
    assert over["test_bits_per_dim"] == [[None]] and len(calls) == 2  # no time: no fit


# -- each family's own defaults ------------------------------------------------------------------
def test_compare_fits_through_the_familys_own_recipe(monkeypatch):
    """compare forces no defaults: each family's fit_for_budget gets the budget, the seed and
    the caller's options only (the GMM also its components from Settings), and the record's
    details are what the family returned."""
    calls, returned = {}, {}
    for name in ("gmm", "flow"):
        original = FAMILIES[name].fit_for_budget

        def spy(cls, data, budget, *, _original=original, _name=name):
            calls[_name] = budget._asdict()
            model, details = _original(data, budget)
            returned[_name] = {k: v for k, v in details.items() if k != "steps"}
            return model, details

        monkeypatch.setattr(FAMILIES[name], "fit_for_budget", classmethod(spy))
    settings = dataclasses.replace(TINY, nfe_steps=(2,), gmm_study_dims=(2,))
    records = compare("moons", ["gmm", "flow"], budget_steps=3, n_train=100, n_test=50, seed=4,
                      settings=settings, options={"flow": TINY_NETS["flow"]},
                      progress=False)  # fmt: skip
    rows = by_family(records)
    assert calls["flow"]["options"] == TINY_NETS["flow"]  # no forced net, steps or solver
    assert calls["gmm"]["options"] == {"components": TINY.gmm_components,
                                       "extend_components": True}  # fmt: skip
    for name in ("gmm", "flow"):
        assert {k: calls[name][k] for k in ("seconds", "steps", "seed")} == {
            "seconds": None, "steps": 3, "seed": 4}  # fmt: skip
        assert rows[name]["status"] == "ok", rows[name]["error"]
        details = {k: v for k, v in rows[name]["details"].items() if k != "nll_vs_components"}
        assert details == json_safe(returned[name])
    assert rows["flow"]["train_steps"] == 3
    assert "net" not in rows["flow"]["details"].get("options", {})


# -- the GMM's sweep extended as far as the budget affords --------------------------------------
def test_the_bic_sweep_keeps_doubling_k_while_bic_improves_within_the_budget():
    """Thin rings need far more than the listed K: the sweep doubles K past the list while
    BIC improves, stops at the first K whose BIC is worse, and picks the best."""
    train = load_dataset("rings", n=3000)
    _, details = GaussianMixture.fit_for_budget(
        train, FitBudget(seconds=120, options={"components": (1, 2, 4)})
    )
    ks = [int(k) for k in details["bic"]]
    assert ks[:3] == [1, 2, 4] and len(ks) > 4  # extended past the list
    assert ks[3:] == [8 * 2**i for i in range(len(ks) - 3)]  # by doubling
    bics = [details["bic"][str(k)] for k in ks]
    assert all(isinstance(b, float) for b in bics)
    assert bics[-1] > min(bics)  # it stopped after BIC got worse...
    assert all(b < a for a, b in itertools.pairwise(bics[:-1]))  # ...not before
    assert details["n_components"] == ks[int(np.argmin(bics))] > 4


def test_the_extension_is_off_on_request_and_for_a_steps_budget():
    train = load_dataset("rings", n=1000)
    off = {"components": (1, 2), "extend_components": False}
    for budget in (FitBudget(seconds=60, options=off),
                   FitBudget(steps=5, options={"components": (1, 2)})):  # fmt: skip
        _, details = GaussianMixture.fit_for_budget(train, budget)
        assert list(details["bic"]) == ["1", "2"]


def test_an_extension_predicted_to_overrun_is_recorded_and_ends_the_sweep(monkeypatch):
    from genlab.models import gmm_selection

    real = gmm_selection.iteration_cost

    def cost(options, k, n, d):  # K = 8 and above "cost" a hundred thousand times more
        return real(options, k, n, d) * (1e5 if k >= 8 else 1)

    monkeypatch.setattr(gmm_selection, "iteration_cost", cost)
    train = load_dataset("8gaussians", n=2000)  # BIC improves from K = 1 to 4 (and 8)
    _, details = GaussianMixture.fit_for_budget(
        train, FitBudget(seconds=5, options={"components": (1, 2, 4)})
    )
    assert list(details["bic"]) == ["1", "2", "4", "8"]
    assert details["bic"]["8"] == gmm_selection.OVERRUN


# -- quality against NFE, one-step samplers, variants ---------------------------------------------
def test_the_default_nfe_curve_starts_at_one_step():
    assert Settings().nfe_steps[0] == 1


def test_a_step_count_a_run_cannot_sample_at_is_skipped_with_a_note(monkeypatch):
    flow = FAMILIES["flow"]
    real = flow.sample

    def sample(self, n, **kwargs):
        if kwargs.get("steps") == 1:
            raise ValueError("this sampler needs at least 2 steps")
        return real(self, n, **kwargs)

    monkeypatch.setattr(flow, "sample", sample)
    settings = dataclasses.replace(TINY, nfe_steps=(1, 2, 3), gmm_study_dims=(2,))
    (record, _) = compare("moons", ["flow"], budget_steps=3, n_train=100, n_test=50,
                          settings=settings, options={"flow": TINY_NETS["flow"]},
                          progress=False)  # fmt: skip
    assert record["status"] == "ok", record["error"]
    curve = record["nfe_curve"]
    assert [p["steps"] for p in curve["points"]] == [2, 3]
    assert curve["skipped"] == [{"steps": 1, "reason": "ValueError: this sampler needs at "
                                 "least 2 steps"}]  # fmt: skip


def test_a_variant_label_runs_a_family_again_with_its_own_options():
    settings = dataclasses.replace(TINY, nfe_steps=(2,), gmm_study_dims=(2,))
    options = {"flow": TINY_NETS["flow"], "flow:wide": {**TINY_NETS["flow"], "hidden": 48}}
    records = compare("moons", ["flow", "flow:wide"], budget_steps=2, n_train=100, n_test=50,
                      settings=settings, options=options, progress=False)  # fmt: skip
    rows = by_family(records)
    assert rows["flow"]["status"] == rows["flow:wide"]["status"] == "ok"
    assert rows["flow:wide"]["n_parameters"] > rows["flow"]["n_parameters"]
    with pytest.raises(ValueError, match="unknown family 'flw:x'"):
        compare("moons", ["flw:x"], budget_steps=2)


def test_cli_compare_options_reach_the_family(tmp_path, monkeypatch, capsys):
    from genlab.cli import compare as cli_compare

    seen = {}
    monkeypatch.setattr(cli_compare.comparison, "compare",
                        lambda *a, **k: seen.update(k) or [])  # fmt: skip
    monkeypatch.setattr(cli_compare.reporting, "write_report",
                        lambda records, out: {"html": "h", "md": "m", "json": "j"})  # fmt: skip
    argv = ["compare", "--data", "moons", "--families", "flow,flow:meanflow", "--budget", "2steps",
            "--out", str(tmp_path / "o"), "--options", "flow.hidden=32,flow:meanflow.objective=x",
            "--options", "flow.lr=0.002"]  # fmt: skip
    assert run(argv) == 0
    assert seen["options"] == {"flow": {"hidden": 32, "lr": 0.002},
                               "flow:meanflow": {"objective": "x"}}  # fmt: skip
    for bad, message in [("flow.nope=1", "no option 'nope'"), ("vae.hidden=3", "not one of"),
                         ("hidden=3", "FAMILY.KEY=VALUE")]:  # fmt: skip
        assert run([*argv[:-2], "--options", bad]) == 2
        assert message in capsys.readouterr().err


# -- the feature classifier ------------------------------------------------------------------------
def test_feature_classifier_is_cached_and_reloaded(cache):
    train = load_dataset("digits", split="train", n=200)
    test = load_dataset("digits", split="test", n=50)
    first = evaluation.feature_classifier(train, test, epochs=1, seconds=5.0)
    second = evaluation.feature_classifier(train, test, epochs=1, seconds=5.0)
    assert not first.cached and second.cached and first.folder == second.folder
    assert first.folder.parent == cache / "classifiers"
    assert (first.folder / "config.json").is_file()
    x = test.x[:20]
    assert torch.equal(first.features_and_labels(x)[0], second.features_and_labels(x)[0])
    other = evaluation.feature_classifier(load_dataset("digits", split="train", n=150), test,
                                          epochs=1, seconds=5.0)  # fmt: skip
    assert not other.cached and other.folder != first.folder


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16), (8, 8), (2,), (4, 5), (1, 6, 8)])
def test_feature_classifier_net_shapes(shape):
    net = FeatureClassifier(shape, n_classes=7, feature_dim=12, channels=(4, 8))
    square = shape in ((1, 8, 8), (3, 16, 16), (8, 8))  # genlab.data.dataset.image_geometry
    assert isinstance(net.body, ConvEncoder) == square
    x = torch.randn(5, *shape)
    assert net.features(x).shape == (5, 12) and net(x).shape == (5, 7)
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(5, 9))
    with pytest.raises(ValueError, match="n_classes"):
        FeatureClassifier(shape, n_classes=0)


def test_feature_classifier_needs_labels():
    moons = load_dataset("moons", n=50)
    no_labels = dataclasses.replace(load_dataset("digits", n=50), y=None)
    with pytest.raises(ValueError, match="no labels"):
        evaluation.feature_classifier(no_labels, moons)


# -- budgets and bad input -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, seconds, steps",
    [("120s", 120.0, None), ("2m", 120.0, None), ("1.5h", 5400.0, None), ("90 sec", 90.0, None),
     ("8steps", None, 8), ("500", None, 500)],
)  # fmt: skip
def test_parse_budget(text, seconds, steps):
    assert parse_budget(text) == Budget(seconds=seconds, steps=steps)


@pytest.mark.parametrize("text", ["", "fast", "-3s", "2.5steps", "0s", "10 parsecs"])
def test_parse_budget_rejects_nonsense(text):
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text)


def test_compare_rejects_bad_arguments():
    with pytest.raises(ValueError, match="seconds or steps"):
        compare("moons", ["gmm"], n_train=50, n_test=50)
    with pytest.raises(ValueError, match="at least one family"):
        compare("moons", [], budget_steps=1)
    with pytest.raises(ValueError, match="n_samples"):
        Settings(n_samples=1)
    with pytest.raises(ValueError, match="unknown data set 'moonz'"):
        compare("moonz", ["gmm"], budget_steps=1)
    with pytest.raises(ValueError, match="compare measures points, images and text"):
        compare(load_dataset(f"text:{Path(__file__)}"), ["gmm"], test=load_dataset("moons", n=10),
                budget_steps=1)  # fmt: skip


# -- the report -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(digits, moons, tmp_path_factory):
    """One report of both data sets, as `genlab compare --data digits,moons` writes it."""
    out = tmp_path_factory.mktemp("report")
    for _, folder in (digits, moons):
        shutil.copytree(folder / "figures", out / "figures", dirs_exist_ok=True)
    paths = write_report(digits[0] + moons[0], out)
    return paths, digits[0] + moons[0], out


def test_report_files_and_figures_exist(report):
    paths, records, out = report
    assert all(p.is_file() for p in paths.values())
    figures = {key: rel for r in records for key, rel in r["figures"].items()}
    assert {"samples", "density", "quality_vs_nfe", "nll_vs_components"} <= set(figures)
    for r in records:
        assert all((out / rel).is_file() for rel in r["figures"].values())
    md = paths["md"].read_text()
    assert "## digits" in md and "## moons" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links and all((out / rel).is_file() for rel in links)
    assert "not applicable" in md and "autoregressive (not applicable)" in md


def test_report_html_is_self_contained(report):
    page = report[0]["html"].read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert len(sources) >= 10 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count("<table>") == 2  # one table per data set


CHECK_SCRIPT = """<script>
(function () {
  var errors = [];
  var original = console.error;
  console.error = function () {
    errors.push(Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
  window.addEventListener("error", function (e) {
    var t = e.target;
    errors.push(e.message || ("failed to load " + (t && (t.currentSrc || t.src || t.tagName))));
  }, true);
  window.addEventListener("load", function () {
    var images = Array.prototype.map.call(document.images, function (i) {
      return {alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight};
    });
    var out = document.createElement("pre");
    out.id = "genlab-check";
    out.textContent = JSON.stringify({errors: errors, images: images});
    document.body.appendChild(out);
  });
})();
</script>"""
"""Injected first into <head> of a copy of the page: records console errors and failed loads
(capture phase), then on load writes every image's natural size into the DOM as JSON."""


def open_in_chromium(page: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """(the check script's JSON, the console lines chromium logged) for `page`."""
    assert Path(CHROMIUM).is_file(), (
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) to run "
        "the browser test of report.html"
    )
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("<head>", "<head>" + CHECK_SCRIPT, 1))
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
         "--enable-logging=stderr", "--v=0", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="genlab-check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the check script did not run; DOM tail: {result.stdout[-500:]}"
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(html.unescape(found.group(1))), console


def test_report_opens_in_headless_chromium_without_errors(report, tmp_path):
    paths, records, _ = report
    check, console = open_in_chromium(paths["html"], tmp_path)
    assert check["errors"] == [] and console == []
    images = check["images"]
    n_figures = sum(len(r["figures"]) for r in records)
    assert len(images) == n_figures
    assert all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in images), images


def test_browser_check_catches_a_broken_figure(report, tmp_path):
    """The check can fail: a figure whose data is not a PNG shows as not loaded."""
    broken = tmp_path / "broken.html"
    page = report[0]["html"].read_text()
    broken.write_text(re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,AAAA", page, count=1))
    check, _ = open_in_chromium(broken, tmp_path)
    assert sum(i["width"] == 0 for i in check["images"]) == 1 and len(check["errors"]) == 1


# -- the CLI ---------------------------------------------------------------------------------------
def test_cli_compare_prints_a_table_and_writes_the_report(tmp_path, cache):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        app,
        ["compare", "--data", "moons,circles", "--families", "gmm,autoregressive", "--budget",
         "5steps", "--out", str(out), "--samples", "50", "--n", "200", "--n-test", "60",
         "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps the table to the terminal
    assert "moons: test split, budget 5 steps per family" in text
    assert "circles: test split" in text and "MMD²" in text
    assert "autoregressive: not applicable" in text
    records = json.loads((out / "records.json").read_text())
    assert [(r["data"], r["family"]) for r in records] == [
        ("moons", "gmm"), ("moons", "autoregressive"), ("moons", FLOOR),
        ("circles", "gmm"), ("circles", "autoregressive"), ("circles", FLOOR),
    ]  # fmt: skip
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert abs(records[2]["mmd"]) < 0.05  # the floor: train against test samples


def test_cli_compare_rejects_a_bad_budget(tmp_path):
    result = CliRunner().invoke(app, ["compare", "--budget", "soon", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "not understood" in result.output


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "moons,moonz"], "unknown data set 'moonz'"),
        (["--data", "moons", "--families", "gmm,gan"], "unknown family 'gan': the families are"),
        (["--data", "moons,digits", "--n-test", "5000"], "n=5000 but the 'test' split of 'digits'"),
    ],
)
def test_cli_compare_checks_every_name_before_training(tmp_path, capsys, monkeypatch, argv,
                                                       message):  # fmt: skip
    def no_training(*args, **kwargs):
        raise AssertionError("trained before every name was checked")

    monkeypatch.setattr(FAMILIES["gmm"], "fit_for_budget", classmethod(no_training))
    out = tmp_path / "cmp"
    code = run(["compare", *argv, "--budget", "2steps", "--out", str(out), "--no-progress",
                "--n", "50"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("genlab: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


# -- a corrupt feature-classifier cache is rebuilt -----------------------------------------------
def corrupt_weights(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def edit_config(key, value):
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config[key] = value
        (folder / "config.json").write_text(json.dumps(config))

    return edit


@pytest.mark.parametrize(
    "damage, reason",
    [
        (corrupt_weights, "model.safetensors"),
        (lambda folder: (folder / "config.json").write_text("{ torn"), "config.json"),
        (lambda folder: (folder / "config.json").unlink(), "config.json"),
        (lambda folder: (folder / "model.safetensors").unlink(), "model.safetensors"),
        (edit_config("channels", [4]), "channels"),
        (edit_config("test_accuracy", "high"), "test_accuracy"),
        (edit_config("version", 99), "version"),
    ],
    ids=["torn-weights", "torn-config", "no-config", "no-weights", "other-arch", "accuracy",
         "version"],
)  # fmt: skip
def test_a_corrupt_feature_classifier_cache_is_rebuilt(tmp_path, monkeypatch, damage, reason):
    monkeypatch.setenv(evaluation.CACHE_ENV, str(tmp_path))
    train = load_dataset("digits", split="train", n=100)
    test = load_dataset("digits", split="test", n=30)
    first = evaluation.feature_classifier(train, test, epochs=1, seconds=5.0)
    damage(first.folder)
    with pytest.warns(UserWarning, match="rebuilt the feature classifier cache at .*corrupt"):
        rebuilt = evaluation.feature_classifier(train, test, epochs=1, seconds=5.0)
    assert not rebuilt.cached and reason in rebuilt.rebuilt and rebuilt.folder == first.folder
    x = test.x[:10]
    assert torch.equal(first.features_and_labels(x)[0], rebuilt.features_and_labels(x)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the repaired cache loads without a word
        again = evaluation.feature_classifier(train, test, epochs=1, seconds=5.0)
    assert again.cached and again.rebuilt is None


def test_a_classifier_cache_holding_nan_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv(evaluation.CACHE_ENV, str(tmp_path))
    train = load_dataset("digits", split="train", n=100)
    test = load_dataset("digits", split="test", n=30)
    first = evaluation.feature_classifier(train, test, epochs=1, seconds=5.0)
    weights = first.folder / "model.safetensors"
    state = safetensors.torch.load_file(weights)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], math.nan)
    safetensors.torch.save_file(state, weights)
    with pytest.warns(UserWarning, match="NaN"):
        assert not evaluation.feature_classifier(train, test, epochs=1, seconds=5.0).cached


def test_labels_that_are_not_class_indices_are_refused():
    train = load_dataset("digits", split="train", n=50)
    huge = dataclasses.replace(train, y=train.y.clone())
    huge.y[0] = 10**9
    with pytest.raises(ValueError, match="class indices"):
        evaluation.feature_classifier(huge, train, cache=False)
