"""Per-data-kind defaults (`genlab.models.recipes`): what is given wins, the rest takes the
recipe of the data's kind at fit, the resolved config is what is saved, and the CLI counts
only options really given."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import genlab
from genlab.cli import run
from genlab.data import Dataset, load_dataset
from genlab.models import FAMILIES, Diffusion, FlowMatching, recipes
from genlab.models.base import Budget
from genlab.models.inputs import TrainingData
from genlab.models.recipes import RECIPES, Recipe, data_kind, recipe_for, resolve

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"max_steps": 2, "ema_decay": None, "warmup_steps": 0}


@pytest.fixture
def test_recipes(monkeypatch):
    """Recipes with values no default has, so that where a value came from is visible."""
    table = {
        ("flow", "points"): Recipe("flow", "points", {"hidden": 12, "lr": 2e-3, "depth": 2}),
        ("flow", "small_image"): Recipe("flow", "small_image", {"hidden": 20}),
        ("diffusion", "points"): Recipe("diffusion", "points", {"hidden": 24}),
    }
    monkeypatch.setattr(recipes, "RECIPES", table)
    return table


def points(n: int = 64) -> torch.Tensor:
    return load_dataset("moons", n=n).x


def images(side: int, n: int = 16) -> Dataset:
    x = torch.rand(n, 1, side, side)
    return Dataset(x=x, y=None, event_shape=(1, side, side), kind="image", name="img")


def test_an_unset_option_takes_the_recipe_and_a_given_one_wins(test_recipes):
    m = FlowMatching(hidden=8, **TINY).fit(points())
    assert m.config.hidden == 8  # given
    assert m.config.lr == 2e-3 and m.config.depth == 2  # the recipe's
    assert m.config.batch_size == FlowMatching.config_class().batch_size  # no recipe: default
    assert m.recipe_.name == "flow/points"
    assert m.fit_summary()["recipe"] == "flow/points: lr=0.002, depth=2"


def test_a_positional_option_counts_as_given(test_recipes):
    m = Diffusion("linear", **TINY)
    assert "schedule" in m.given_options
    m.fit(points())
    assert m.config.hidden == 24


def test_the_network_is_built_from_the_resolved_config(test_recipes):
    m = FlowMatching(**TINY).fit(points())
    widths = {p.shape[0] for n, p in m.net.named_parameters() if n.endswith("bias")}
    assert 12 in widths and FlowMatching.config_class().hidden not in widths


def test_save_and_load_keep_the_resolved_values(test_recipes, tmp_path, monkeypatch):
    m = FlowMatching(**TINY).fit(points())
    m.save(tmp_path / "m")
    stored = json.loads((tmp_path / "m" / "config.json").read_text())["config"]
    assert stored["hidden"] == 12 and stored["lr"] == 2e-3
    monkeypatch.setattr(recipes, "RECIPES", {})  # a later version's recipes differ
    loaded = genlab.load(tmp_path / "m")
    assert loaded.config == m.config
    x = points(8)
    torch.testing.assert_close(loaded.log_prob(x, steps=4, method="rk4"),
                               m.log_prob(x, steps=4, method="rk4"))  # fmt: skip


def test_each_kind_picks_its_recipe(test_recipes):
    assert data_kind(TrainingData.from_input(points())) == "points"
    assert data_kind(TrainingData.from_input(images(8))) == "small_image"
    assert data_kind(TrainingData.from_input(images(16))) == "small_image"  # 256 pixels
    assert data_kind(TrainingData.from_input(images(28))) == "image"
    digits = load_dataset("digits")
    assert recipe_for("flow", TrainingData.from_input(digits)).name == "flow/small_image"
    assert recipe_for("flow", TrainingData.from_input(images(28))) is None  # none measured
    assert recipe_for("gmm", TrainingData.from_input(points())) is None
    m = FlowMatching(**TINY).fit(images(8))
    assert m.config.hidden == 20 and m.config.lr == FlowMatching.config_class().lr


def test_a_second_fit_resolves_afresh_for_its_data(test_recipes):
    m = FlowMatching(**TINY)
    m.fit(points())
    assert m.config.hidden == 12
    m.fit(images(8))
    assert m.config.hidden == 20 and m.config.lr == FlowMatching.config_class().lr


def test_fit_for_budget_reports_the_recipe_and_caller_options_win(test_recipes):
    train = load_dataset("moons", n=200)
    model, details = FlowMatching.fit_for_budget(
        train, Budget(steps=2, options={"hidden": 10, "ema_decay": None})
    )
    assert model.config.hidden == 10 and model.config.lr == 2e-3
    assert details["recipe"] == "flow/points: lr=0.002, depth=2"


def test_resolve_ignores_unknown_options_and_keeps_the_checks():
    cfg = FlowMatching.config_class()
    r = Recipe("flow", "points", {"hidden": 7, "not_an_option_yet": 1})
    assert resolve(cfg, (), r).hidden == 7
    assert resolve(cfg, ("hidden",), r) == cfg
    assert resolve(cfg, (), None) is cfg
    with pytest.raises(ValueError, match="hidden"):
        resolve(cfg, (), Recipe("flow", "points", {"hidden": 0}))


@pytest.mark.parametrize("key", sorted(RECIPES))
def test_every_shipped_recipe_is_valid_for_its_family(key):
    recipe = RECIPES[key]
    assert recipe.kind in recipes.KINDS and recipe.source.startswith("python benchmarks/")
    cls = FAMILIES[recipe.family]
    names = {f.name for f in dataclasses.fields(cls.config_class)}
    assert set(recipe.options) <= names, set(recipe.options) - names
    resolve(cls.config_class(), (), recipe)  # the config's own checks pass


def test_the_cli_counts_only_options_really_given(test_recipes, tmp_path):
    common = ["--data", "moons", "--n", "64", "--max-steps", "2", "--no-progress"]
    assert run(["fit", "flow", *common, "--out", str(tmp_path / "a")]) == 0
    a = json.loads((tmp_path / "a" / "config.json").read_text())["config"]
    assert a["hidden"] == 12 and a["lr"] == 2e-3  # CLI defaults did not count as given
    assert run(["fit", "flow", *common, "--hidden", "128", "--out", str(tmp_path / "b")]) == 0
    b = json.loads((tmp_path / "b" / "config.json").read_text())["config"]
    assert b["hidden"] == 128 and b["lr"] == 2e-3  # given equal to the default: still given
    toml = tmp_path / "c.toml"
    toml.write_text("lr = 0.005\n")
    c_out = str(tmp_path / "c")
    assert run(["fit", "flow", *common, "--config", str(toml), "--out", c_out]) == 0
    c = json.loads((tmp_path / "c" / "config.json").read_text())["config"]
    assert c["lr"] == 0.005 and c["hidden"] == 12  # a TOML value is given


def test_compare_fits_small_data_with_one_thread():
    """`genlab.compare.fit_threads`: one thread when every data set is small (toys, digits),
    all available cores as soon as one is larger (MNIST's 784 pixels)."""
    from genlab.compare import SMALL_DATA_DIM, fit_threads

    moons = load_dataset("moons", n=16)
    small = Dataset(torch.rand(4, 1, 16, 16), None, (1, 16, 16), "image", "16x16")
    large = Dataset(torch.rand(4, 1, 28, 28), None, (1, 28, 28), "image", "28x28")
    assert small.dim == SMALL_DATA_DIM < large.dim
    assert fit_threads([moons, small], 2) == 1
    assert fit_threads([moons, large], 2) == 2
    assert fit_threads([large], 1) == 1
    with pytest.raises(ValueError, match="available"):
        fit_threads([moons], 0)


def test_a_recipe_schedule_is_the_one_the_diffusion_trains_and_saves(tmp_path):
    """The shipped points recipe sets schedule="rectified": the schedule object, the net's skip
    and the saved folder all follow the resolved config, not the constructor's default."""
    from genlab.schedules import LinearBetaSchedule, RectifiedSchedule

    model = Diffusion(hidden=16, batch_size=32, **TINY)
    assert isinstance(model.schedule, LinearBetaSchedule)  # the config's default before fit
    model.fit(points())
    assert model.config.schedule == "rectified" and model.config.prediction == "v"
    assert isinstance(model.schedule, RectifiedSchedule)
    assert model.net.schedule is model.schedule
    model.save(tmp_path / "m")
    loaded = genlab.load(tmp_path / "m")
    assert isinstance(loaded.schedule, RectifiedSchedule)
    x = points(8)
    torch.testing.assert_close(loaded.log_prob(x, method="rk4", steps=4),
                               model.log_prob(x, method="rk4", steps=4))  # fmt: skip
    given = Diffusion("linear", hidden=16, batch_size=32, **TINY).fit(points())
    assert isinstance(given.schedule, LinearBetaSchedule)  # a given schedule wins
