"""The contract every family keeps: tiny fit, seeded sampling, finite log_prob, save -> load."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import genlab
from genlab.data import load_dataset
from genlab.models import (
    FAMILIES,
    VAE,
    Autoencoder,
    Autoregressive,
    BayesianGaussianMixture,
    Diffusion,
    FlowMatching,
    GaussianMixture,
    Latent,
    MaskedDiffusion,
    NotFittedError,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# One tiny, fast configuration per family, and the data it is fitted on. A new family must add
# itself here (test_every_family_is_covered fails otherwise).
FACTORIES = {
    "gmm": (lambda: GaussianMixture(3, covariance_type="full", max_iter=20), "moons"),
    "bgmm": (lambda: BayesianGaussianMixture(5, max_iter=50, tol=1.0), "moons"),
    "autoregressive": (  # text or quantised images, not points: 8 x 8 digits as pixel sequences
        lambda: Autoregressive(n_layer=1, n_head=2, n_embd=16, max_steps=20, batch_size=32),
        "digits",
    ),
    "vae": (lambda: VAE(latent_dim=2, hidden=32, max_steps=30, warmup_steps=5), "moons"),
    "flow": (
        lambda: FlowMatching(hidden=32, depth=2, max_steps=30, warmup_steps=5, sample_steps=8),
        "moons",
    ),
    "diffusion": (lambda: Diffusion(hidden=32, max_steps=30, warmup_steps=5), "moons"),
    "masked_diffusion": (  # like autoregressive: digits as pixel sequences
        lambda: MaskedDiffusion(n_layer=1, n_head=2, n_embd=16, max_steps=20, sample_steps=8),
        "digits",
    ),
    "autoencoder": (lambda: Autoencoder(hidden=32, max_steps=30, warmup_steps=5), "moons"),
    "latent": (
        lambda: Latent(
            prior="gmm",
            prior_options={"n_components": 2, "max_iter": 20},
            autoencoder_options={
                "latent_shape": "2",
                "hidden": 16,
                "depth": 1,
                "max_steps": 30,
                "warmup_steps": 5,
            },
        ),
        "moons",
    ),
}


def test_every_family_is_covered():
    assert set(FACTORIES) == set(FAMILIES)


@pytest.fixture(params=sorted(FACTORIES), scope="module")
def fitted(request):
    make, data = FACTORIES[request.param]
    ds = load_dataset(data, n=400)
    test = load_dataset(data, split="test", n=200)
    return make().fit(ds), ds, test


def test_unfitted_model_refuses_to_sample():
    for make, _ in FACTORIES.values():
        model = make()
        with pytest.raises(NotFittedError):
            model.sample(2)
        with pytest.raises(NotFittedError):
            model.log_prob(torch.zeros(2, 2))


def test_sample_shape_and_seed(fitted):
    model, ds, _ = fitted
    s = model.sample(17, seed=3)
    assert s.shape == (17, *ds.event_shape)
    assert torch.isfinite(s).all()
    assert torch.equal(s, model.sample(17, seed=3))
    assert not torch.equal(s, model.sample(17, seed=4))


def test_log_prob_is_finite_and_labelled(fitted):
    model, _, test = fitted
    lp = model.log_prob(test)
    assert lp.shape == (len(test),)
    assert torch.isfinite(lp).all()
    assert model.log_prob_kind in ("exact", "bound", "estimate")


def test_save_load_keeps_log_prob(fitted, tmp_path):
    model, _, test = fitted
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["config"] == dataclasses.asdict(model.config)
    loaded = genlab.load(tmp_path / "m")
    assert type(loaded) is type(model)
    torch.testing.assert_close(loaded.log_prob(test), model.log_prob(test))


# -- what every family declares about itself (callers ask, they never inspect) -----------------
@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_declared_options_are_accepted(family):
    """Every option a family declares is a keyword of its method (an independent check, so a
    declaration cannot drift from the code)."""
    import inspect

    cls = FAMILIES[family]
    sample_params = inspect.signature(cls.sample).parameters
    assert set(cls.sample_options) <= set(sample_params)
    log_prob_params = inspect.signature(cls.log_prob).parameters
    assert set(cls.log_prob_options) <= set(log_prob_params)
    assert set(cls.quick_log_prob) <= set(cls.log_prob_options) | {"k"}
    assert set(cls.picture_sample) <= set(cls.sample_options)


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_options_are_declared_once_with_help_and_rule(family):
    """Each config field has a help text; the constructor takes exactly the config's fields."""
    from genlab.options import options

    cls = FAMILIES[family]
    declared = list(options(cls.config_class))
    assert declared and all(o.help for o in declared), [o.name for o in declared if not o.help]
    with pytest.raises(TypeError, match="no option 'no_such_option'"):
        cls(no_such_option=1)
    model = FACTORIES[family][0]()
    assert {o.name for o in declared} == set(dataclasses.asdict(model.config))


def test_fit_sample_and_log_prob_leave_the_global_rng_alone():
    """A library never touches RNG state it does not own: after fit, sample and log_prob, the
    caller's torch, NumPy and Python generators continue as if nothing had run."""
    import random

    import numpy as np

    for family, (make, data) in FACTORIES.items():
        ds = load_dataset(data, n=200)
        torch.manual_seed(11), np.random.seed(12), random.seed(13)
        expected = (torch.rand(4), np.random.rand(2), random.random())
        torch.manual_seed(11), np.random.seed(12), random.seed(13)
        model = make().fit(ds)
        model.sample(3)
        model.log_prob(load_dataset(data, split="test", n=5))
        got = (torch.rand(4), np.random.rand(2), random.random())
        assert torch.equal(got[0], expected[0]), family
        assert np.array_equal(got[1], expected[1]) and got[2] == expected[2], family


# -- folders saved by earlier versions keep loading ---------------------------------------------
FIXTURES = Path(__file__).parent / "fixtures" / "v1"


@pytest.mark.parametrize("folder", sorted(p.name for p in FIXTURES.iterdir()))
def test_folders_saved_before_the_redesign_load_and_score_the_same(folder):
    """tests/fixtures/v1: one folder per family (and data kind) written by the code before the
    one-source-of-truth redesign, with the log_prob it gave then (expected.json)."""
    model = genlab.load(FIXTURES / folder)
    expected = json.loads((FIXTURES / folder / "expected.json").read_text())
    family, data = folder.split("-", 1)
    assert model.family == family
    if family in ("flow", "diffusion"):  # a loaded model keeps the net it was fitted with
        assert model.net_ == ("unet" if data == "digits" else "mlp")  # (the old rule's UNet)
    if data == "text":
        lp = model.log_prob(["ROMEO: to be", "First Citizen"])
    else:
        x = load_dataset(data, split="test", n=5).x[:5]
        options = {"steps": 4, "method": "rk4"} if family in ("flow", "diffusion") else {}
        lp = model.log_prob(x, **options)
    torch.testing.assert_close(lp.double(), torch.tensor(expected["log_prob"]).double(),
                               rtol=1e-4, atol=1e-3)  # fmt: skip
    if "sample" in expected:
        # the defaults sample alike; diffusion's dpm++ default was 3M quadratic until 2026-12-03
        old = {"method": "dpm++", "order": 3, "grid": "quadratic"} if family == "diffusion" else {}
        s = model.sample(3, seed=0, **old).flatten(1)[:, :6].double()
        torch.testing.assert_close(s, torch.tensor(expected["sample"]).double(), rtol=1e-4,
                                   atol=1e-4)  # fmt: skip


def test_absurd_sample_sizes_are_refused_before_allocating(fitted):
    """sample(n) checks n float32 samples against the machine's memory first
    (`GenerativeModel.check_sample_size`), whatever the family."""
    model, _, _ = fitted
    with pytest.raises(ValueError, match=r"sample\(n=1000000000000000\) would need .* of memory"):
        model.sample(10**15, seed=0)


def test_trainer_and_data_imports_leave_the_families_unimported():
    """`genlab.load` and the families are imported on first use (PEP 562 `__getattr__`), so
    `import genlab.train` / `genlab.data` skip them; `load` still registers every family."""
    import subprocess
    import sys

    code = (
        "import json, sys, genlab.train, genlab.data\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('genlab.models.'))))\n"
        "from genlab import load\n"
        f"print(type(load({str(FIXTURES / 'gmm-moons')!r}, device='cpu')).__name__)\n"
        "from genlab.models import FAMILIES\n"
        "print(json.dumps(list(FAMILIES)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported, loaded, families = out.stdout.splitlines()
    heavy = {f"genlab.models.{f}" for f in ("flow", "diffusion", "vae", "autoregressive", "gmm",
                                         "masked_diffusion", "autoencoder", "latent")}  # fmt: skip
    assert not heavy & set(json.loads(imported)), imported
    assert loaded == "GaussianMixture"
    assert json.loads(families) == ["autoencoder", "autoregressive", "bgmm", "diffusion", "flow",
                                   "gmm", "latent", "masked_diffusion", "vae"]  # fmt: skip
