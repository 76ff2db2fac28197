"""Tests of the genlab command line: fit, sample, eval, plot, --help and one-line errors."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import genlab
import genlab.cli.fit as fit_module
from genlab import evaluation
from genlab.cli import app, common, run
from genlab.cli.fit import fit_command
from genlab.cli.sample import SAMPLER_FLAGS
from genlab.data import load_dataset
from genlab.models import FAMILIES, DivergedError, GenerativeModel
from genlab.options import Choice, Flag, Integer, Real, validate
from genlab.options import option as field
from genlab.options import options as config_options

REPO = Path(__file__).resolve().parents[1]
EVAL_KEYS = {
    "family",
    "data",
    "n_test",
    "log_prob_kind",
    "nll",
    "bits_per_dim",
    "mmd",
    "sliced_wasserstein",
    "energy_distance",
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def one_default_thread(monkeypatch):
    """`genlab fit`'s default --threads honours OMP_NUM_THREADS: 1 here, like `one_thread`,
    so no command spends its start measuring busy cores (tests of that measure it apart)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("genlab: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def assert_png(path: Path) -> np.ndarray:
    assert path.is_file()
    image = mpimg.imread(path)[..., :3]
    assert min(image.shape[:2]) >= 100 and image.std() > 0.01
    return image


@pytest.fixture(scope="module")
def moons_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "moons-gmm"
    argv = [
        "fit",
        "gmm",
        "--data",
        "moons",
        "--n",
        "500",
        "--components",
        "6",
        "--max-iter",
        "20",
        "--seed",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert run(argv) == 0
    return out


# -- fit ------------------------------------------------------------------------------------------
def test_fit_gmm_writes_model_folder_and_summary(tmp_path, capsys):
    out = tmp_path / "m"
    code, stdout, err = cli(
        capsys,
        "fit",
        "gmm",
        "--data",
        "moons",
        "--n",
        "500",
        "--components",
        "4",
        "--covariance",
        "diag",
        "--max-iter",
        "20",
        "--tol",
        "1e-4",
        "--init",
        "random_from_data",
        "--out",
        out,
    )
    assert code == 0, err
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["family"] == "gmm"
    assert config["config"]["n_components"] == 4
    assert config["config"]["covariance_type"] == "diag"
    assert config["config"]["init"] == "random_from_data"
    assert config["config"]["dtype"] == "float64"
    for label in ("train log-likelihood", "iterations", "converged", "parameters", "time"):
        assert label in stdout
    assert f"saved {out}" in stdout
    model = genlab.load(out)
    assert model.n_parameters == 19  # 4 diag components in 2-D: 3 weights + 8 means + 8 variances
    assert re.search(r"parameters\s+19\b", stdout)
    assert len(model.lower_bounds_) == model.n_iter_ <= 20


def test_fit_default_out_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, _ = cli(capsys, "fit", "gmm", "--n", "200", "-k", "2", "--max-iter", "5")
    assert code == 0
    assert (tmp_path / "runs" / "moons-gmm" / "config.json").is_file()


def test_fit_progress_bar_shows_log_likelihood(tmp_path, capsys):
    code, _, err = cli(
        capsys,
        "fit",
        "gmm",
        "--n",
        "200",
        "-k",
        "2",
        "--max-iter",
        "3",
        "--tol",
        "0",
        "--out",
        tmp_path / "m",
    )
    assert code == 0
    assert re.search(r"log.?lik", err, re.IGNORECASE)  # the bar's postfix, on stderr
    warning_lines = [line for line in err.splitlines() if line.startswith("genlab: warning:")]
    assert len(warning_lines) == 1 and "converge" in warning_lines[0]  # not a warnings.warn dump
    assert "warnings.warn" not in err


# -- sample ---------------------------------------------------------------------------------------
def test_sample_npy_and_png(moons_model, tmp_path, capsys):
    code, stdout, _ = cli(capsys, "sample", moons_model, "-n", "100", "--out", tmp_path / "x.npy")
    assert code == 0
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (100, 2) and np.isfinite(x).all()
    assert "x.npy" in stdout

    again = tmp_path / "again.npy"
    assert cli(capsys, "sample", moons_model, "-n", "100", "--out", again)[0] == 0
    np.testing.assert_array_equal(np.load(again), x)  # same default seed, same samples
    assert cli(capsys, "sample", moons_model, "-n", "100", "--seed", "5", "--out", again)[0] == 0
    assert not np.array_equal(np.load(again), x)

    code, _, _ = cli(capsys, "sample", moons_model, "-n", "100", "--out", tmp_path / "x.png")
    assert code == 0
    assert_png(tmp_path / "x.png")


def test_sample_rejects_other_suffixes(moons_model, tmp_path, capsys):
    code, _, err = cli(capsys, "sample", moons_model, "--out", tmp_path / "x.txt")
    assert code == 2
    assert_one_line_error(code, err, ".npy or .png")
    assert not (tmp_path / "x.txt").exists()


def test_sample_refuses_options_the_family_does_not_take(moons_model, tmp_path, capsys):
    out = tmp_path / "x.npy"
    code, _, err = cli(capsys, "sample", moons_model, "--steps", "10", "--top-k", "3", "--out", out)
    assert_one_line_error(code, err, "gmm model's sample takes no --steps, --top-k")
    assert code == 1 and not out.exists()


# -- eval -----------------------------------------------------------------------------------------
def test_eval_json(moons_model, capsys):
    code, stdout, _ = cli(capsys, "eval", moons_model, "--data", "moons", "--n", "400", "--json")
    assert code == 0
    result = json.loads(stdout)  # the whole of stdout is one JSON object
    assert set(result) == EVAL_KEYS
    assert result["family"] == "gmm" and result["log_prob_kind"] == "exact"
    assert result["n_test"] == 400
    for key in ("nll", "bits_per_dim", "mmd", "sliced_wasserstein", "energy_distance"):
        assert math.isfinite(result[key])
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (2 * math.log(2)))
    test = load_dataset("moons", "test", n=400)  # --seed 0 by default
    log_prob = genlab.load(moons_model).log_prob(test.x).double()
    assert result["nll"] == pytest.approx(-log_prob.mean().item(), rel=1e-5)
    assert result["mmd"] < 0.05 and result["energy_distance"] < 0.2


def test_eval_table(moons_model, capsys):
    code, stdout, _ = cli(capsys, "eval", moons_model, "--data", "moons", "--n", "300")
    assert code == 0
    for key in EVAL_KEYS:
        assert key in stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(stdout)


# -- plot -----------------------------------------------------------------------------------------
def test_plot_points_model(moons_model, tmp_path, capsys):
    out = tmp_path / "density.png"
    code, stdout, _ = cli(
        capsys,
        "plot",
        moons_model,
        "--data",
        "moons",
        "--n",
        "300",
        "--samples",
        "200",
        "--out",
        out,
    )
    assert code == 0
    image = assert_png(out)
    green = (image[..., 1] > image[..., 0] + 0.15) & (image[..., 1] > image[..., 2] + 0.05)
    assert green.sum() > 200  # the mixture's component ellipses
    assert_png(moons_model / "history.png")
    assert f"wrote {out}" in stdout and "history.png" in stdout


def test_plot_default_out(moons_model, capsys):
    code, stdout, _ = cli(capsys, "plot", moons_model)
    assert code == 0
    assert_png(moons_model / "plot.png")
    assert str(moons_model / "plot.png") in stdout


@pytest.mark.parametrize("covariance", ["tied", "spherical"])
def test_plot_ellipses_for_other_covariance_types(tmp_path, capsys, covariance):
    out = tmp_path / covariance
    assert (
        run(
            [
                "fit",
                "gmm",
                "--n",
                "300",
                "-k",
                "3",
                "--covariance",
                covariance,
                "--max-iter",
                "10",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    code, _, _ = cli(capsys, "plot", out, "--samples", "100")
    assert code == 0
    assert_png(out / "plot.png")


def test_digits_fit_sample_plot(tmp_path, capsys):
    out = tmp_path / "digits"
    code, _, err = cli(
        capsys,
        "fit",
        "gmm",
        "--data",
        "digits",
        "--n",
        "300",
        "-k",
        "2",
        "--covariance",
        "diag",
        "--max-iter",
        "5",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0, err
    assert genlab.load(out).event_shape == (1, 8, 8)

    code, _, _ = cli(capsys, "sample", out, "-n", "30", "--out", tmp_path / "grid.png")
    assert code == 0
    assert_png(tmp_path / "grid.png")
    code, _, _ = cli(capsys, "sample", out, "-n", "7", "--out", tmp_path / "d.npy")
    assert np.load(tmp_path / "d.npy").shape == (7, 1, 8, 8)

    code, stdout, _ = cli(capsys, "plot", out)
    assert code == 0
    assert_png(out / "plot.png")
    assert_png(out / "history.png")

    code, stdout, _ = cli(capsys, "eval", out, "--data", "digits", "--n", "50", "--json")
    assert code == 0
    result = json.loads(stdout)
    assert result["n_test"] == 50
    # fitted on dequantised pixels, so bits/dim are the discrete data's: better than the
    # uniform distribution over 17 levels (log2 17 = 4.09) and positive
    assert 0 < result["bits_per_dim"] < math.log2(17)


# -- vae ------------------------------------------------------------------------------------------
VAE_ARGS = ("--n", "300", "--latent-dim", "2", "--hidden", "32", "--batch-size", "64")


@pytest.fixture(scope="module")
def digits_vae(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "digits-vae"
    argv = ["fit", "vae", "--data", "digits", *VAE_ARGS, "--max-steps", "20", "--out", str(out)]
    assert run([*argv, "--no-progress"]) == 0
    return out


def test_fit_vae_writes_model_checkpoint_and_log(digits_vae, capsys):
    for name in ("config.json", "model.safetensors", "checkpoint.pt", "log.jsonl"):
        assert (digits_vae / name).is_file()
    config = json.loads((digits_vae / "config.json").read_text())
    assert config["family"] == "vae"
    assert config["config"]["latent_dim"] == 2 and config["config"]["max_steps"] == 20
    assert config["fitted"]["likelihood"] == "discretized" and config["fitted"]["levels"] == 17
    log = [json.loads(line) for line in (digits_vae / "log.jsonl").read_text().splitlines()]
    trained = [row for row in log if "loss" in row]  # validation rows hold val_loss
    assert trained[-1]["step"] == 20 and math.isfinite(trained[-1]["loss"])


def test_fit_vae_summary_and_resume(tmp_path, capsys):
    out = tmp_path / "m"
    argv = ["fit", "vae", "-d", "digits", *VAE_ARGS, "--out", out, "--no-progress"]
    code, stdout, err = cli(capsys, *argv, "--max-steps", "10", "--checkpoint-every", "5")
    assert code == 0, err
    for label in ("train ELBO", "steps", "final loss", "likelihood", "parameters", "time"):
        assert label in stdout
    assert re.search(r"steps\s+10\b", stdout) and f"saved {out}" in stdout
    x = load_dataset("digits", "test", n=20).x
    before = genlab.load(out).log_prob(x)

    code, stdout, err = cli(capsys, *argv, "--max-steps", "10", "--resume")  # a finished run
    assert code == 0, err
    assert re.search(r"steps\s+10\b", stdout)
    np.testing.assert_array_equal(genlab.load(out).log_prob(x).numpy(), before.numpy())

    code, stdout, err = cli(capsys, *argv, "--max-steps", "15", "--resume")  # 5 more steps
    assert code == 0, err
    assert re.search(r"steps\s+15\b", stdout)
    assert [r["step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())][
        -1
    ] == 15

    code, _, err = cli(capsys, *argv, "--max-steps", "15", "--lr", "0.1", "--resume")
    assert_one_line_error(code, err, "lr")  # a resumed run keeps its options


def test_vae_sample_eval_plot(digits_vae, tmp_path, capsys):
    code, _, _ = cli(capsys, "sample", digits_vae, "-n", "16", "--out", tmp_path / "grid.png")
    assert code == 0
    assert_png(tmp_path / "grid.png")
    code, _, _ = cli(capsys, "sample", digits_vae, "-n", "5", "--out", tmp_path / "s.npy")
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (5, 1, 8, 8) and np.allclose(samples * 16, np.round(samples * 16))

    code, stdout, _ = cli(capsys, "eval", digits_vae, "-d", "digits", "--n", "40", "--json")
    assert code == 0
    result = json.loads(stdout)
    assert result["family"] == "vae" and result["log_prob_kind"] == "estimate"
    assert all(
        math.isfinite(result[key]) for key in EVAL_KEYS - {"family", "data", "log_prob_kind"}
    )
    # a mass over 17 levels a pixel: more than 0 and, after any training, below uniform
    assert 0 < result["bits_per_dim"] < math.log2(17)

    code, stdout, _ = cli(capsys, "plot", digits_vae, "--data", "digits", "--n", "100")
    assert code == 0
    for name in ("plot.png", "reconstructions.png", "latent.png", "history.png"):
        assert_png(digits_vae / name)
        assert name in stdout


def test_vae_on_points_conditional(tmp_path, capsys):
    out = tmp_path / "moons"
    argv = ["fit", "vae", "-d", "moons", "--n", "300", "--latent-dim", "2", "--hidden", "32"]
    code, _, err = cli(capsys, *argv, "--max-steps", "10", "--conditional", "--out", out)
    assert code == 0, err
    model = genlab.load(out)
    assert model.conditional and model.likelihood_ == "gaussian"
    code, _, _ = cli(capsys, "plot", out, "--data", "moons", "--n", "200", "--samples", "100")
    assert code == 0
    assert_png(out / "plot.png")
    assert_png(out / "latent.png")

    code, _, err = cli(capsys, "fit", "vae", "-d", "swissroll", "--conditional", "--out", out)
    assert_one_line_error(code, err, "--conditional", "labels")


# -- errors ---------------------------------------------------------------------------------------
def test_unknown_data_set(tmp_path, capsys):
    code, stdout, err = cli(capsys, "fit", "gmm", "--data", "nonesuch", "--out", tmp_path / "m")
    assert code == 1
    assert_one_line_error(code, err, "unknown data set 'nonesuch'")
    assert stdout == ""
    assert not (tmp_path / "m").exists()


def test_missing_model_dir(tmp_path, capsys):
    for command in (["sample"], ["eval", "--data", "moons"], ["plot"]):
        code, _, err = cli(capsys, command[0], tmp_path / "nowhere", *command[1:])
        assert code == 1
        assert_one_line_error(code, err, "nowhere")


def test_corrupt_config(moons_model, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(moons_model, broken)
    (broken / "config.json").write_text("{ not json")
    code, _, err = cli(capsys, "sample", broken, "--out", tmp_path / "x.npy")
    assert_one_line_error(code, err, "config.json")
    assert code == 1


def test_model_and_data_shapes_disagree(moons_model, capsys):
    code, stdout, err = cli(capsys, "eval", moons_model, "--data", "digits", "--json")
    assert_one_line_error(code, err, "shape")
    assert stdout == ""


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["fit", "gmm", "--bogus"], "No such option: --bogus"),
        (["fit", "gmm", "--covariance", "round"], "--covariance"),
        (["fit", "gmm", "--components", "0"], "--components"),
        (["fit", "nonesuch"], "No such command"),
        (["fit", "vae", "--likelihood", "poisson"], "--likelihood"),
        (["fit", "vae", "--max-steps", "0"], "--max-steps"),
        (["eval", "somewhere"], "--data"),
        (["sample"], "MODEL_DIR"),
    ],
)
def test_usage_errors_exit_2(capsys, argv, fragment):
    code, stdout, err = cli(capsys, *argv)
    assert code == 2
    assert_one_line_error(code, err, fragment, "--help")
    assert stdout == ""


@pytest.mark.parametrize(
    "argv",
    [[], ["fit"], ["fit", "gmm"], ["fit", "vae"], ["sample"], ["eval"], ["plot"]],
    ids=" ".join,
)
def test_help(capsys, argv):
    code, stdout, err = cli(capsys, *argv, "--help")
    assert code == 0, err
    assert "Usage" in stdout and "genlab" in stdout


def test_help_lists_every_command_and_option(capsys):
    _, stdout, _ = cli(capsys, "--help")
    for command in ("fit", "sample", "eval", "plot"):
        assert command in stdout
    # the training options every neural family shares (by name: rich's help table at 80
    # columns may shorten long names)
    vae = typer.main.get_command(app).commands["fit"].commands["vae"]
    options = {name for param in vae.params for name in param.opts}
    for option in ("--latent-dim", "--likelihood", "--beta", "--conditional", "--max-steps",
                   "--max-time", "--batch-size", "--lr", "--seed", "--checkpoint-every",
                   "--resume", "--out"):  # fmt: skip
        assert option in options
    _, stdout, _ = cli(capsys, "fit", "gmm", "--help")
    for option in (
        "--data",
        "--components",
        "--covariance",
        "--max-iter",
        "--tol",
        "--reg-covar",
        "--init",
        "--n-init",
        "--seed",
        "--n",
        "--dtype",
        "--root",
        "--out",
    ):
        assert option in stdout


def test_python_m_genlab_entry_point(tmp_path):
    """The real entry point: `python -m genlab` exits with code 1 and a one-line error."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bad = subprocess.run(
        [sys.executable, "-m", "genlab", "sample", "missing-dir"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert bad.returncode == 1
    assert_one_line_error(bad.returncode, bad.stderr, "missing-dir")


# -- the generated fit commands -------------------------------------------------------------------
def fit_command_params(family: str) -> dict[str, Any]:
    command = typer.main.get_command(app).commands["fit"].commands[family]
    return {param.name: param for param in command.params}


def cli_options(family: str):
    return [opt for opt in config_options(FAMILIES[family].config_class) if opt.cli]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fit_defaults_are_the_config_defaults(family):
    """Every option of `genlab fit FAMILY` has its config field's flag and default, and the
    defaults are those of the Python API (`FAMILY()`)."""
    cls = FAMILIES[family]
    params = fit_command_params(family)
    api = asdict(cls().config)
    assert cli_options(family), f"{family} declares no options with option(...)"
    for opt in cli_options(family):
        param = params[opt.name]
        assert opt.flag in param.opts and (opt.short is None or opt.short in param.opts)
        assert param.default == opt.default == api[opt.name], opt.name
        assert type(param.default) is type(opt.default), opt.name
    assert params["data_"].default == cls.example_data
    assert {"n_", "root_", "out_", "device_", "progress_"} <= set(params)
    assert ("conditional_" in params) == cls.takes_labels
    assert ("resume_" in params) == ("checkpoint_every_" in params) == hasattr(cls, "train_result_")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fit_without_options_builds_the_default_model(family, monkeypatch):
    """What the command hands on, after parsing its defaults, is the API's default config."""
    seen = {}
    monkeypatch.setattr(fit_module, "fit_and_report", lambda cls, config, **run: seen.update(
        cls=cls, config=config, run=run))  # fmt: skip
    assert run(["fit", family]) == 0
    cls = FAMILIES[family]
    assert seen["cls"] is cls and cls(**seen["config"]).config == cls().config
    # only options really given are handed on (none here): the family's recipe for the data
    # fills the rest at fit (`genlab.models.recipes`)
    assert seen["config"] == {}
    assert seen["run"]["data"] == cls.example_data and seen["run"]["out"] is None


def flag_in(flag: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fit_help_lists_every_config_option(family, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich shortens long names in a narrow table
    code, stdout, err = cli(capsys, "fit", family, "--help")
    assert code == 0, err
    for opt in config_options(FAMILIES[family].config_class):
        assert flag_in(opt.flag, stdout) == opt.cli, opt.flag
    for flag in ("--data", "--n", "--root", "--out", "--progress", "--no-progress"):
        assert flag_in(flag, stdout)


@dataclass(frozen=True)
class ToyConfig:
    width: int = field(3, "Width [in cells].", Integer(1), short="-w")
    mode: Literal["a", "b"] | None = field("a", "Mode.", Choice(("a", "b"), optional=True))
    scale: float | None = field(1.0, "Scale.", Real(0, low_open=True, optional=True))
    order: Literal[1, 2] = field(1, "Order.", Choice((1, 2)))
    fast: bool = field(False, "Go fast.", Flag())
    secret: int = field(7, "Only from Python.", Integer(0), cli=False)
    seed: int = field(0, "Seed.", Integer(0))

    def __post_init__(self):
        validate(self)
        if self.fast and self.width > 5:
            raise ValueError("fast needs width <= 5")


class Toy(GenerativeModel):
    """A toy family, not registered: its command is generated all the same."""

    family = "toy"
    config_class = ToyConfig
    log_prob_kind = "exact"
    example_data = "circles"


def toy_cli(cls: type[GenerativeModel] = Toy) -> typer.Typer:
    toy = typer.Typer(add_completion=False, rich_markup_mode="rich")
    toy.command("toy")(fit_command(cls))
    toy.command("other")(lambda: None)  # a group, so that `toy` is named
    return toy


def test_a_new_family_needs_no_cli_edit(monkeypatch):
    seen = {}
    monkeypatch.setattr(fit_module, "fit_and_report", lambda cls, config, **run: seen.update(
        config=config, run=run))  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(toy_cli(), ["toy"])
    assert result.exit_code == 0, result.output
    assert seen["config"] == {}  # only options really given are handed on (`recipes`)
    assert seen["run"] == {"data": "circles", "n": None, "root": None, "channels": None,
                           "size": None, "out": None,
                           "device": None, "progress": True, "config_file": None,
                           "threads": None}  # fmt: skip
    argv = ["toy", "-w", "4", "--mode", "none", "--scale", "None", "--order", "2", "--fast"]
    assert runner.invoke(toy_cli(), argv).exit_code == 0
    assert seen["config"] == {"width": 4, "mode": None, "scale": None, "order": 2, "fast": True}

    for argv, message in [
        (["-w", "0"], "width must be an integer >= 1, got 0"),
        (["--width", "two"], "'two' is not an integer"),
        (["--mode", "c"], "'c' is not one of a, b or none"),
        (["--order", "3"], "'3' is not one of 1, 2"),
        (["--scale", "0"], "scale must be a number > 0 or None, got 0.0"),
        (["--secret", "1"], "No such option"),
    ]:
        result = runner.invoke(toy_cli(), ["toy", *argv])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), argv
    help_text = runner.invoke(toy_cli(), ["toy", "--help"]).output
    assert "Width [in cells]." in help_text and "A toy family" in help_text


def test_toy_family_rules_across_options_are_runtime_errors():
    result = CliRunner().invoke(toy_cli(), ["toy", "--fast", "-w", "6"])
    assert isinstance(result.exception, ValueError) and "fast needs width" in str(result.exception)


def test_generated_options_for_labels_and_training():
    class Trained(Toy):
        takes_labels = True
        resumable = True

    command = typer.main.get_command(toy_cli(Trained)).commands["toy"]
    flags = {flag for param in command.params for flag in param.opts}
    assert {"--conditional", "--checkpoint-every", "--resume"} <= flags
    command = typer.main.get_command(toy_cli()).commands["toy"]
    assert not {"--conditional", "--checkpoint-every", "--resume"} & {
        flag for param in command.params for flag in param.opts
    }


def test_a_field_taking_a_run_flag_is_refused():
    @dataclass(frozen=True)
    class Clash:
        where: str = field("here", "Where.", flag="--out")

    class Bad(Toy):
        config_class = Clash

    with pytest.raises(TypeError, match="--out"):
        fit_command(Bad)


# -- sample: sampler options the model does not take ------------------------------------------
SAMPLER_VALUES = {"--steps": "3", "--method": "heun", "--guidance": "1.5", "--label": "0",
                  "--eta": "0.5", "--order": "2", "--grid": "uniform", "--prompt": "hi",
                  "--max-new-tokens": "4", "--temperature": "0.9", "--top-k": "2",
                  "--top-p": "0.9", "--times": "1,0.5,0", "--churn": "1.0",
                  "--s-tmin": "0.1", "--s-tmax": "3",
                  "--infill": "a__b", "--placeholder": "_", "--confidence": None}  # fmt: skip


def test_every_sampler_flag_is_checked(moons_model, tmp_path, capsys):
    assert set(SAMPLER_VALUES) == set(SAMPLER_FLAGS.values())
    model = genlab.load(moons_model)
    out = tmp_path / "x.npy"
    for key, flag in SAMPLER_FLAGS.items():
        if key in model.sample_options:
            continue
        value = () if SAMPLER_VALUES[flag] is None else (SAMPLER_VALUES[flag],)  # a switch
        code, _, err = cli(capsys, "sample", moons_model, flag, *value, "--out", out)
        assert_one_line_error(code, err, f"gmm model's sample takes no {flag};")
        assert code == 1 and not out.exists()


# -- eval --json is strict JSON -------------------------------------------------------------------
def reject_constant(name: str):
    raise ValueError(f"not strict JSON: {name}")


def test_eval_json_is_strict(moons_model, capsys, monkeypatch):
    argv = ("eval", moons_model, "--data", "moons", "--n", "100", "--json")
    code, stdout, _ = cli(capsys, *argv)
    assert code == 0
    assert json.loads(stdout, parse_constant=reject_constant)["n_test"] == 100

    def non_finite(model, test, seed):
        return {"family": model.family, "n_test": len(test), "nll": math.nan,
                "bits_per_dim": math.inf, "mmd": -math.inf, "extra": [math.nan, 1.0]}  # fmt: skip

    monkeypatch.setattr(evaluation, "evaluate_model", non_finite)
    code, stdout, _ = cli(capsys, *argv)
    assert code == 0
    result = json.loads(stdout, parse_constant=reject_constant)
    assert result == {"family": "gmm", "n_test": 100, "nll": None, "bits_per_dim": None,
                      "mmd": None, "extra": [None, 1.0]}  # fmt: skip


# -- the other families through the command line ------------------------------------------------
def test_flow_fit_sample_plot(tmp_path, capsys):
    out = tmp_path / "flow"
    argv = ["fit", "flow", "--n", "200", "--hidden", "16", "--depth", "1", "--batch-size", "64",
            "--coupling", "ot", "--sample-steps", "2", "--max-steps", "5", "--out", out,
            "--no-progress"]  # fmt: skip
    code, stdout, err = cli(capsys, *argv)
    assert code == 0, err
    assert re.search(r"steps\s+5\b", stdout) and "train log-likelihood" in stdout
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["coupling"] == "ot" and config["sample_steps"] == 2
    argv = [
        "sample",
        out,
        "-n",
        "50",
        "--steps",
        "2",
        "--method",
        "heun",
        "--out",
        tmp_path / "s.npy",
    ]
    code, _, err = cli(capsys, *argv)
    assert code == 0, err
    assert np.load(tmp_path / "s.npy").shape == (50, 2)
    code, stdout, err = cli(capsys, "plot", out, "--data", "moons", "--n", "100", "--samples", "50")
    assert code == 0, err
    for name in ("plot.png", "trajectories.png", "history.png"):
        assert_png(out / name)
    assert (out / "samples.gif").is_file() and "samples.gif" in stdout


def test_diffusion_fit_sample_plot(tmp_path, capsys):
    out = tmp_path / "diffusion"
    argv = ["fit", "diffusion", "--n", "200", "--hidden", "16", "--timesteps", "20",
            "--batch-size", "64", "--max-steps", "5", "--out", out, "--no-progress"]  # fmt: skip
    code, _, err = cli(capsys, *argv)
    assert code == 0, err
    code, _, err = cli(capsys, "sample", out, "-n", "30", "--method", "ddim", "--steps", "3",
                       "--out", tmp_path / "s.npy")  # fmt: skip
    assert code == 0, err
    assert np.load(tmp_path / "s.npy").shape == (30, 2)
    code, stdout, err = cli(capsys, "plot", out, "--samples", "50")
    assert code == 0, err
    assert_png(out / "denoising.png") is not None and "denoising.png" in stdout


def tiny_text_fit(tmp_path: Path, steps: int) -> tuple[Path, Path, list]:
    """(corpus, out, argv) of a tiny character-level autoregressive fit."""
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("the cat sat on the mat. " * 60)
    out = tmp_path / "ar"
    argv = ["fit", "autoregressive", "--data", f"text:{corpus}", "--n-layer", "1", "--n-head",
            "2", "--n-embd", "16", "--block-size", "16", "--max-steps", str(steps), "--out",
            out, "--no-progress"]  # fmt: skip
    return corpus, out, argv


def test_autoregressive_on_text(tmp_path, capsys):
    corpus, out, argv = tiny_text_fit(tmp_path, 5)
    code, stdout, err = cli(capsys, *argv)
    assert code == 0, err
    assert "validation loss" in stdout and "nats/char" in stdout and "train characters" in stdout
    code, stdout, err = cli(capsys, "sample", out, "--prompt", "the", "--max-new-tokens", "5")
    assert code == 0, err
    assert stdout.startswith("the") and len(stdout.strip()) >= 4
    code, _, err = cli(capsys, "sample", out, "--steps", "3")
    assert_one_line_error(code, err, "--steps")
    code, stdout, err = cli(capsys, "eval", out, "--data", f"text:{corpus}", "--json")
    assert code == 0, err
    result = json.loads(stdout, parse_constant=reject_constant)
    assert result["family"] == "autoregressive" and result["loss"] > 0


# -- every failure is one line, never a traceback -------------------------------------------------
def raising(error: BaseException):
    def fail(*args, **kwargs):
        raise error

    return fail


ALLOC = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
         "memory: you tried to allocate 8000000000000 bytes. Error code 12")  # fmt: skip


@pytest.mark.parametrize(
    "error, code, fragments",
    [
        (KeyboardInterrupt(), 130, ["interrupted"]),
        (MemoryError(), 1, ["more memory than the machine has", "smaller"]),
        (RuntimeError(ALLOC), 1, ["more memory than the machine has (tried to allocate 8 TB)"]),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), 1, ["2 GiB"]),
        (DivergedError("loss is nan at step 3: lower lr"), 1, ["loss is nan at step 3"]),
        (FloatingPointError("overflow in exp"), 1, ["overflow in exp"]),
        (json.JSONDecodeError("Expecting value", "{", 1), 1, ["Expecting value"]),
        (KeyError("event_shape"), 1, ["internal error (KeyError: 'event_shape')",
                                      "GENLAB_DEBUG=1"]),
        (RuntimeError("shape mismatch"), 1, ["internal error (RuntimeError: shape mismatch)"]),
    ],
    ids=["interrupt", "memory", "alloc", "cuda-oom", "diverged", "fpe", "json", "bug", "runtime"],
)  # fmt: skip
def test_every_failure_is_one_line(error, code, fragments, monkeypatch, capsys):
    monkeypatch.setattr(fit_module, "fit_and_report", raising(error))
    got, stdout, err = cli(capsys, "fit", "gmm")
    assert got == code and stdout == ""
    assert_one_line_error(got, err, *fragments)


def test_genlab_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setattr(fit_module, "fit_and_report", raising(KeyError("event_shape")))
    monkeypatch.setenv("GENLAB_DEBUG", "1")
    with pytest.raises(KeyError):
        run(["fit", "gmm"])


def test_a_file_that_is_not_utf8_is_named(tmp_path, monkeypatch, capsys):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café au lait".encode("latin1"))
    monkeypatch.setattr(fit_module, "fit_and_report",
                        lambda *a, **k: latin1.read_text(encoding="utf-8"))  # fmt: skip
    code, _, err = cli(capsys, "fit", "gmm")
    assert_one_line_error(code, err, f"{latin1} is not UTF-8 text", "iconv")


# -- fit: nothing lost ----------------------------------------------------------------------------
GMM_FIT = ("fit", "gmm", "--n", "200", "-k", "2", "--max-iter", "5", "--no-progress")


def test_a_scoring_failure_keeps_the_saved_model(tmp_path, monkeypatch, capsys):
    out = tmp_path / "m"
    failure = ValueError("the held-out text has a symbol the vocabulary lacks")
    monkeypatch.setattr(fit_module, "score_row", raising(failure))
    code, stdout, err = cli(capsys, *GMM_FIT, "--out", out)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "scoring" in line]
    assert len(warnings) == 1 and warnings[0].startswith("genlab: warning: ")
    assert f"the model is saved in {out}, but scoring it failed: the held-out" in warnings[0]
    assert f"saved {out}" in stdout and "Traceback" not in err
    assert genlab.load(out).sample(5).shape == (5, 2)


def test_a_non_finite_score_is_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(FAMILIES["gmm"], "score_rows", lambda self, data: ("train score", math.nan))
    code, _, err = cli(capsys, *GMM_FIT, "--out", tmp_path / "m")
    assert code == 0 and "genlab: warning:" in err and "the train score is nan" in err


def test_out_must_name_a_genlab_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = cli(capsys, *GMM_FIT, "--out", "")
    assert_one_line_error(code, err)
    assert code == 1 and "saved" not in stdout and sorted(tmp_path.iterdir()) == []
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    code, _, err = cli(capsys, *GMM_FIT, "--out", mine)
    assert_one_line_error(code, err, str(mine))
    assert (mine / "config.json").read_text() == '{"my": "settings"}'
    assert sorted(p.name for p in mine.iterdir()) == ["config.json"]


@pytest.mark.parametrize("family", ["gmm", "vae", "flow", "diffusion"])
def test_text_data_for_a_family_of_numbers_says_which_family_models_text(family, tmp_path, capsys):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("the cat sat on the mat. " * 20)
    out = tmp_path / "m"
    code, _, err = cli(capsys, "fit", family, "--data", f"text:{corpus}", "--out", out,
                       "--no-progress")  # fmt: skip
    assert_one_line_error(code, err, "text", "autoregressive")
    assert "reshape" not in err and not (out / "config.json").exists()


@pytest.mark.parametrize("device", ["cuda:99", "gpu"])
def test_an_unavailable_device_is_one_line(device, tmp_path, capsys):
    code, _, err = cli(capsys, *GMM_FIT, "--device", device, "--out", tmp_path / "m")
    assert_one_line_error(code, err, "device")
    assert "internal error" not in err and not (tmp_path / "m" / "config.json").exists()


# -- plot: says what it cannot draw ---------------------------------------------------------------
@pytest.fixture(scope="module")
def points_5d(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    np.save(folder / "five.npy", np.random.default_rng(0).normal(size=(200, 5)).astype("f4"))
    out = folder / "gmm5"
    argv = ["fit", "gmm", "--data", str(folder / "five.npy"), "-k", "2", "--max-iter", "5",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert run(argv) == 0
    return out


def test_plot_says_why_it_cannot_draw_5d_points(points_5d, tmp_path, capsys):
    code, stdout, err = cli(capsys, "plot", points_5d)
    assert code == 0, err
    assert "genlab: note:" in err and "shape (5,)" in err and "2-D point and image" in err
    assert not (points_5d / "plot.png").exists() and "history.png" in stdout
    code, _, err = cli(capsys, "plot", points_5d, "--out", tmp_path / "p.png")
    assert_one_line_error(code, err, "cannot write", "shape (5,)", "genlab sample")
    assert not (tmp_path / "p.png").exists()
    code, _, err = cli(capsys, "plot", points_5d, "--data", "moons")
    assert_one_line_error(code, err, "shape (2,)", "shape (5,)")


def test_plot_fails_when_it_draws_nothing(tmp_path, capsys):
    _, out, argv = tiny_text_fit(tmp_path, 3)
    assert cli(capsys, *argv)[0] == 0
    code, stdout, err = cli(capsys, "plot", out)
    assert code == 0 and "text model" in err and "history.png" in stdout
    (out / "log.jsonl").unlink()
    (out / "history.png").unlink()
    code, stdout, err = cli(capsys, "plot", out)
    assert_one_line_error(code, err, "nothing to draw", "text model", "no training curve")
    assert stdout == "" and not (out / "history.png").exists()


def test_sample_writes_no_non_finite_samples(moons_model, tmp_path, monkeypatch, capsys):
    def broken(self, n, *, seed=None):
        return torch.full((n, 2), math.nan)

    monkeypatch.setattr(FAMILIES["gmm"], "sample", broken)
    out = tmp_path / "x.npy"
    code, stdout, err = cli(capsys, "sample", moons_model, "-n", "5", "--out", out)
    assert_one_line_error(code, err, "NaN or infinity", "nothing written")
    assert code == 1 and stdout == "" and not out.exists()


@pytest.mark.parametrize("out", ["", "."])
def test_compare_refuses_an_out_that_names_no_folder(out, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "compare", "--data", "moons", "--budget", "2steps", "--out", out)
    assert_one_line_error(code, err, "folder")
    assert not list(tmp_path.iterdir())  # nothing written into the current directory


# -- real runs: --version, --config, --threads, --precision, --val, --loggers, curves ------------
def test_version(capsys):
    code, stdout, _ = cli(capsys, "--version")
    assert code == 0
    assert stdout.strip() == f"genlab {importlib.metadata.version('genlab')}"


def capture_fit(monkeypatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(fit_module, "fit_and_report", lambda cls, config, **run: seen.update(
        config=config, run=run))  # fmt: skip
    return seen


def test_config_file_values_and_command_line_precedence(tmp_path, monkeypatch, capsys):
    seen = capture_fit(monkeypatch)
    toml = tmp_path / "run.toml"
    toml.write_text(
        'data = "circles"\nn = 200\ncomponents = 3\nmax_iter = 7\ncovariance-type = "diag"\n'
        "progress = false\nseed = 4\nreg_covar = 1e-4\n"
    )
    code, _, err = cli(capsys, "fit", "gmm", "--config", toml)
    assert code == 0, err
    assert seen["config"]["n_components"] == 3 and seen["config"]["max_iter"] == 7
    assert seen["config"]["covariance_type"] == "diag" and seen["config"]["seed"] == 4
    assert seen["config"]["reg_covar"] == 1e-4
    assert seen["run"]["data"] == "circles" and seen["run"]["n"] == 200
    assert seen["run"]["progress"] is False and seen["run"]["config_file"] == toml
    # the command line wins over the file, before or after --config
    code, _, err = cli(capsys, "fit", "gmm", "-k", "2", "--config", toml, "--max-iter", "9",
                       "--progress", "--data", "moons")  # fmt: skip
    assert code == 0, err
    assert seen["config"]["n_components"] == 2 and seen["config"]["max_iter"] == 9
    assert seen["config"]["covariance_type"] == "diag"  # still from the file
    assert seen["run"]["progress"] is True and seen["run"]["data"] == "moons"
    # training options of a neural family, with dashes or underscores
    flow_toml = 'max-steps = 12\nbatch_size = 32\nlr = 2e-3\nval = "none"\n'
    (tmp_path / "flow.toml").write_text(flow_toml)
    code, _, err = cli(capsys, "fit", "flow", "--config", tmp_path / "flow.toml", "--lr", "0.01")
    assert code == 0, err
    assert (seen["config"]["max_steps"], seen["config"]["batch_size"]) == (12, 32)
    assert seen["config"]["lr"] == 0.01 and seen["run"]["val"] == "none"


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("bogus = 1\nmax_iter = 3\nwhat-else = 2\n", ["unknown option(s) 'bogus', 'what-else'"]),
        ("max_iter = -1\n", ["max_iter = -1", "max_iter must be an integer >= 0"]),
        ('covariance = "round"\n', ["covariance = 'round'", "not one of full"]),
        ("max_iter = 3\nmax-iter = 4\n", ["given twice"]),
        ("max_iter = [3]\n", ["not a table or list"]),
        ("progress = 3\n", ["progress = 3"]),
        ("config = 'other.toml'\n", ["unknown option(s) 'config'"]),
        ("max_iter = \n", ["is not valid TOML"]),
    ],
)
def test_config_file_errors_are_usage_errors(text, fragments, tmp_path, monkeypatch, capsys):
    seen = capture_fit(monkeypatch)
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    code, stdout, err = cli(capsys, "fit", "gmm", "--config", toml)
    assert code == 2 and not seen and stdout == ""
    assert_one_line_error(code, err, "bad.toml", *fragments)


def test_config_file_missing(tmp_path, capsys):
    code, _, err = cli(capsys, "fit", "gmm", "--config", tmp_path / "none.toml")
    assert_one_line_error(code, err, "none.toml")


def test_threads_option_sets_torch_threads_and_only_lowers_them(tmp_path, monkeypatch, capsys):
    from genlab.models import GaussianMixture

    inside: list[int] = []
    real_fit = GaussianMixture.fit

    def spy(self, *args, **kwargs):
        inside.append(torch.get_num_threads())
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(GaussianMixture, "fit", spy)
    argv = ["fit", "gmm", "--n", "100", "-k", "2", "--max-iter", "3", "--no-progress"]
    code, stdout, err = cli(capsys, *argv, "--threads", "1", "--out", tmp_path / "m")
    assert code == 0, err
    assert inside == [1] and torch.get_num_threads() == 1  # never raised back (MKL, see doc)
    assert "1 thread (" in stdout.splitlines()[0]  # the run's header
    assert re.search(r"threads\s+1\b", stdout)  # and its summary
    code, stdout, err = cli(capsys, *argv, "--threads", "3", "--out", tmp_path / "m")
    assert code == 0, err
    assert inside == [1, 1]  # more than the process has: capped, and the header says so
    assert "3 asked, but this process runs 1" in stdout.splitlines()[0]
    code, _, err = cli(capsys, *argv, "--threads", "0", "--out", tmp_path / "m")
    assert code == 2 and "--threads" in err


def test_raising_threads_after_lowering_is_never_done(monkeypatch):
    """The CLI's thread context never calls set_num_threads with more than the current count
    (that breaks MKL's batched LU in torch 2.13)."""
    calls: list[int] = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch, "set_num_interop_threads", lambda n: None)
    with common.torch_threads(common.ThreadChoice(1, 2)) as chosen:
        assert chosen.threads == 1
    with common.torch_threads(common.ThreadChoice(4, 2)) as chosen:
        assert (chosen.threads, chosen.capped_from) == (2, 4)
    assert calls == [1]  # lowered once; 4 was capped at 2, and nothing was restored upward


def test_default_threads_leave_the_busy_cores(monkeypatch):
    monkeypatch.setattr(common, "usable_cores", lambda: 4)
    for busy, expected in [(0.0, 4), (0.4, 4), (1.0, 3), (1.6, 2), (3.9, 1), (8.0, 1)]:
        monkeypatch.setattr(common, "busy_cores", lambda busy=busy: busy)
        choice = common.default_threads()
        assert (choice.threads, choice.usable, choice.busy) == (expected, 4, busy)
    monkeypatch.setattr(common, "usable_cores", lambda: 1)
    monkeypatch.setattr(common, "busy_cores", lambda: pytest.fail("measured for one core"))
    assert common.default_threads().threads == 1
    assert common.choose_threads(3) == common.ThreadChoice(3, 1)
    assert common.ThreadChoice(1, 2, 1.0).describe() == (
        "1 thread (2 usable cores, 1.0 kept busy by other processes)"
    )


def test_busy_cores_from_proc_stat(monkeypatch):
    """Two CPUs: one busy for 80 of 100 jiffies, the other for 20 of 100: 1.0 busy core."""
    stat = "cpu  9 9 9 9\ncpu0 10 0 5 80 5 0 0 0 0 0\ncpu1 1 1 1 1 1 1 1 1\nintr 1 2\n"
    with monkeypatch.context() as m:
        m.setattr(common.Path, "read_text", lambda self: stat)
        assert common._cpu_times({0}) == (15.0, 100.0)  # user + system; not idle + iowait
        assert common._cpu_times({0, 1}) == (21.0, 108.0)
    monkeypatch.setattr(common.os, "sched_getaffinity", lambda pid: {0, 1})
    samples = iter([(0.0, 0.0), (100.0, 200.0)])
    monkeypatch.setattr(common, "_cpu_times", lambda cpus: next(samples))
    monkeypatch.setattr(common.time, "sleep", lambda s: None)
    assert common.busy_cores() == pytest.approx(1.0)


def test_usable_cores_honours_omp_num_threads(monkeypatch):
    assert common.usable_cores() == 1  # OMP_NUM_THREADS=1 (the fixture)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 1 <= common.usable_cores() <= (os.cpu_count() or 1)


def test_gmm_precision_is_its_dtype(tmp_path, monkeypatch, capsys):
    out = tmp_path / "m"
    argv = ["fit", "gmm", "--n", "100", "-k", "2", "--max-iter", "3", "--no-progress"]
    code, _, err = cli(capsys, *argv, "--precision", "fp32", "--out", out)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["config"]["dtype"] == "float32"
    for bad in ("bf16", "fp16"):
        code, _, err = cli(capsys, *argv, "--precision", bad, "--out", tmp_path / bad)
        assert_one_line_error(code, err, f"--precision {bad}", "--dtype")
    code, _, err = cli(capsys, *argv, "--precision", "fp8", "--out", out)
    assert code == 2 and "'fp8' is not one of fp32, bf16, fp16" in err


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_has_the_run_options(family):
    params = fit_command_params(family)
    flags = {flag for param in params.values() for flag in param.opts}
    assert {"--threads", "--config", "--precision", "--device"} <= flags
    trained = FAMILIES[family].resumable
    assert ({"--val", "--loggers"} <= flags) == trained
    assert ("--val" in flags) == ("--loggers" in flags) == trained
    if trained:  # the trainer's shared options, generated from TrainConfig
        for flag in ("--eval-every", "--patience", "--val-fraction", "--grad-accum-steps",
                     "--data-window", "--precision", "--compile"):  # fmt: skip
            assert flag in flags, flag


FLOW_ARGS = ("--n", "200", "--hidden", "16", "--depth", "1", "--batch-size", "50",
             "--sample-steps", "2", "--no-progress")  # fmt: skip


def test_validation_on_the_test_split_prints_the_best_step(tmp_path, capsys):
    out = tmp_path / "flow"
    argv = ["fit", "flow", "-d", "moons", *FLOW_ARGS, "--max-steps", "20", "--eval-every", "5",
            "--out", out, "--loggers", "csv"]  # fmt: skip
    code, stdout, err = cli(capsys, *argv)
    assert code == 0, err
    assert "validation: the test split (2000 samples)" in stdout.splitlines()[0]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    val = [r for r in log if "val_loss" in r]
    assert [r["step"] for r in val] == [5, 10, 15, 20]
    best = min(val, key=lambda r: r["val_loss"])
    assert re.search(rf"best step\s+{best['step']}\b", stdout)
    assert re.search(rf"best val loss\s+{best['val_loss']:.6g}\b", stdout)
    assert genlab.load(out / "best").family == "flow"
    # --loggers csv: the same rows in log.csv
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["val_loss"]) for r in rows if r["val_loss"]] == [r["val_loss"] for r in val]
    assert [int(r["step"]) for r in rows] == [r["step"] for r in log]

    code, stdout, err = cli(capsys, "plot", out)  # the curves, best step marked
    assert code == 0, err
    assert_png(out / "history.png")
    assert f"best validation loss {best['val_loss']:.5g} at step {best['step']}" in stdout


def test_val_none_and_val_fraction(tmp_path, capsys):
    argv = ["fit", "flow", "-d", "moons", *FLOW_ARGS, "--max-steps", "4", "--eval-every", "2"]
    code, stdout, err = cli(capsys, *argv, "--val", "none", "--out", tmp_path / "a")
    assert code == 0, err
    assert "best step" not in stdout and re.search(r"validation\s+none", stdout)
    assert not any("val_loss" in line for line in (tmp_path / "a" / "log.jsonl").open())
    code, stdout, err = cli(capsys, *argv, "--val-fraction", "0.1", "--out", tmp_path / "b")
    assert code == 0, err
    assert "0.1 of the train split" in stdout and "best step" in stdout
    code, _, err = cli(capsys, *argv, "--val", "test", "--val-fraction", "0.1", "--out",
                       tmp_path / "c")  # fmt: skip
    assert_one_line_error(code, err, "--val test and --val-fraction 0.1")
    code, _, err = cli(capsys, *argv, "--val", "train", "--out", tmp_path / "c")
    assert code == 2 and "'train' is not one of test, none" in err


def test_bad_loggers_are_usage_errors(tmp_path, capsys, monkeypatch):
    code, _, err = cli(capsys, "fit", "flow", "--loggers", "csv,wandb", "--out", tmp_path / "m")
    assert code == 2
    assert_one_line_error(code, err, "unknown logger 'wandb'")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # tensorboard missing
    code, _, err = cli(capsys, "fit", "flow", "-d", "moons", *FLOW_ARGS, "--max-steps", "2",
                       "--loggers", "tensorboard", "--out", tmp_path / "m")  # fmt: skip
    assert code == 1
    assert_one_line_error(code, err, "pip install 'genlab[tensorboard]'")


def write_log(folder: Path, rows: list[dict[str, float]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_plot_curves_of_a_run_without_a_model_yet(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rows = []
    for step in range(50, 501, 50):
        rows.append({"step": step, "loss": 3.0 / step**0.5, "lr": 1e-3, "seconds": step / 10})
        if step % 100 == 0:
            val = {100: 0.9, 200: 0.7, 300: 0.6, 400: 0.6, 500: 0.65}[step]
            rows.append({"step": step, "val_loss": val, "seconds": step / 10})
    write_log(run_dir, rows)
    with open(run_dir / "log.jsonl", "a") as f:
        f.write('{"step": 550, "lo')  # a torn last line of a running job
    code, stdout, err = cli(capsys, "plot", run_dir)
    assert code == 0, err
    assert "best validation loss 0.6 at step 300" in stdout  # the first of equal minima
    with_val = assert_png(run_dir / "history.png")

    write_log(tmp_path / "plain", [r for r in rows if "loss" in r])  # no validation rows
    code, stdout, err = cli(capsys, "plot", tmp_path / "plain", "--out", tmp_path / "c.png")
    assert code == 0, err
    assert "best" not in stdout
    plain = assert_png(tmp_path / "c.png")
    assert with_val.shape == plain.shape and not np.array_equal(with_val, plain)

    write_log(tmp_path / "empty", [{"step": 10, "val_loss": 1.0, "seconds": 1.0}])
    code, _, err = cli(capsys, "plot", tmp_path / "empty")
    assert_one_line_error(code, err, "no training rows")


def test_loss_curves_checks_its_input(tmp_path):
    from genlab import plots

    with pytest.raises(ValueError, match="train needs 1-D steps and values of one length"):
        plots.loss_curves(([1, 2], [1.0]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="val must be a pair"):
        plots.loss_curves(([1, 2], [1.0, 0.5]), tmp_path / "x.png", val=[1, 2, 3])
    path = plots.loss_curves(([1, 2], [1.0, 0.5]), tmp_path / "x.png",
                             val=([2], [float("nan")]))  # fmt: skip
    assert_png(path)


# -- benchmarks/gpu_check.py: its CPU path and its message without CUDA ----------------------------
def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_without_cuda_says_so(monkeypatch, capsys):
    gpu_check = gpu_check_module()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--device cpu" in err


def test_gpu_check_dry_run_on_cpu(tmp_path, capsys):
    gpu_check = gpu_check_module()
    out = tmp_path / "rows.json"
    argv = ["--device", "cpu", "--steps", "2", "--cpu-steps", "2", "--families", "gmm,flow",
            "--quick-score"]  # fmt: skip
    assert gpu_check.main([*argv, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["family"], r["steps"], r["failures"]) for r in rows] == [
        ("gmm", 2, []), ("flow", 2, [])]  # fmt: skip
    assert all(r["reload_max_diff"] == 0 and r["steps_per_s"] > 0 for r in rows)
    assert "2 of 2 checks passed" in capsys.readouterr().out


def test_times_must_be_numbers(moons_model, tmp_path, capsys):
    """--times is a comma-separated grid; anything else is one line naming the syntax."""
    code, _, err = cli(capsys, "sample", moons_model, "--times", "1,half,0",
                       "--out", tmp_path / "x.npy")  # fmt: skip
    assert_one_line_error(code, err, "--times must be comma-separated numbers")
    assert code == 1 and not (tmp_path / "x.npy").exists()
