"""The contract every family keeps: tiny fit, seeded sampling, finite log_prob, save -> load."""

import dataclasses
import json

import pytest
import torch

import genlab
from genlab.data import load_dataset
from genlab.models import (
    FAMILIES,
    VAE,
    Autoregressive,
    Diffusion,
    FlowMatching,
    GaussianMixture,
    NotFittedError,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# One tiny, fast configuration per family, and the data it is fitted on. A new family must add
# itself here (test_every_family_is_covered fails otherwise).
FACTORIES = {
    "gmm": (lambda: GaussianMixture(3, covariance_type="full", max_iter=20), "moons"),
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
