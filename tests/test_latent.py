"""Latent models: the bound against closed forms and enumeration, the nested folder, sampling
from a GMM prior on codes, the CLI, and compare's latent presets."""

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from typer.testing import CliRunner

import genlab
from genlab import metrics
from genlab.cli import app
from genlab.compare import check_families, family_class, resolve_name
from genlab.data import Dataset, load_dataset
from genlab.models import Autoencoder, GenerativeModel, Latent, NotFittedError
from genlab.models.latent import (
    elbo_with_prior,
    gaussian_entropy,
    levels_as_tokens,
    prior_budget,
    split_budget,
    tokens_as_levels,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_AE = {"hidden": 16, "depth": 1, "batch_size": 64, "warmup_steps": 5}


# -- the maths ------------------------------------------------------------------------------------
def test_gaussian_entropy_matches_scipy():
    log_var = torch.tensor([[0.3, -1.2, 2.0], [0.0, 0.0, 0.0]])
    want = [multivariate_normal(cov=np.diag(np.exp(v))).entropy() for v in log_var.numpy()]
    assert torch.allclose(gaussian_entropy(log_var), torch.tensor(want, dtype=torch.float64))


def test_elbo_with_prior_is_the_mean_of_the_draws_plus_the_entropy():
    log_px = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    log_pz = torch.tensor([[-1.0, -2.0], [0.5, 1.5]])
    got = elbo_with_prior(log_px, log_pz, torch.tensor([0.25, -1.0]))
    assert torch.allclose(got, torch.tensor([0.5 + 0.25, 1.0 - 1.0], dtype=torch.float64))


def test_tokens_round_trip_through_the_prior_levels():
    for k in (2, 9, 1000, 2**20):
        t = torch.randint(0, k, (50, 7))
        values = tokens_as_levels(t, k)
        assert values.min() >= 0 and values.max() <= 1
        assert torch.equal(levels_as_tokens(values, k), t)


def test_budget_split():
    assert split_budget(100.0, 10, 0.3) == (30.0, 3)
    assert split_budget(None, 2, 0.99) == (None, 1)  # the prior keeps a step
    seconds, steps = prior_budget(100.0, 10, 35.0, 3, 0.3)
    assert seconds == 65.0 and steps == 7
    assert prior_budget(100.0, None, 150.0, None, 0.5)[0] == pytest.approx(5.0)  # overrun


# -- the bound on a linear-Gaussian model (closed form) -------------------------------------------
@dataclass(frozen=True)
class StubConfig:
    pass


class LinearGaussianAE(GenerativeModel):
    """x = A z + b + s e (A, S diagonal), with a posterior that is exact for the prior
    N(m, diag v) when `exact`, else shifted: the autoencoder interface, in closed form."""

    config_class = StubConfig
    log_prob_kind = "bound"
    latent_kind = "continuous"
    latent_shape = (2,)

    def __init__(self):
        super().__init__(device="cpu")
        self.a = torch.tensor([1.5, -0.7])
        self.b = torch.tensor([0.3, 1.0])
        self.s2 = 0.2
        self.m, self.v, self.exact = torch.zeros(2), torch.ones(2), True
        self.event_shape = (2,)
        self.weight = torch.nn.Parameter(torch.zeros(1))  # a tensor, so `device` resolves

    def posterior(self, x):
        precision = 1 / self.v + self.a**2 / self.s2
        var = 1 / precision
        mean = var * (self.m / self.v + self.a * (x - self.b) / self.s2)
        return (mean if self.exact else mean + 0.5), var.log().expand_as(mean)

    def encode(self, x):
        return (x - self.b) / self.a

    def decode(self, z):
        return self.a * z + self.b

    def decoder_log_prob(self, x, z):
        return torch.distributions.Normal(self.decode(z), math.sqrt(self.s2)).log_prob(x).sum(1)

    def reconstruction_error(self, x):
        return 0.0


def test_bound_is_exact_with_the_exact_posterior_and_below_it_otherwise():
    g = torch.Generator().manual_seed(0)
    ae = LinearGaussianAE()
    z = torch.randn(2000, 2, generator=g) * torch.tensor([0.8, 1.3]) + torch.tensor([0.5, -1.0])
    x = ae.decode(z) + math.sqrt(ae.s2) * torch.randn(2000, 2, generator=g)
    model = Latent(autoencoder=ae, prior="gmm",
                   prior_options={"n_components": 1, "covariance_type": "diag"}).fit(x)  # fmt: skip
    means, covs, _ = model.prior.ellipses_2d()
    ae.m, ae.v = means[0].float(), torch.diagonal(covs[0]).float()
    # the exact marginal p(x) = N(A m + b, A^2 v + s^2) per dimension (A, v diagonal)
    test = x[:20]
    cov = np.diag((ae.a**2 * ae.v + ae.s2).numpy())
    exact = multivariate_normal(mean=(ae.a * ae.m + ae.b).numpy(), cov=cov).logpdf(test.numpy())
    tight = model.log_prob(test, k=4000).double().numpy()
    assert np.allclose(tight, exact, atol=0.05)
    ae.exact = False
    loose = model.log_prob(test, k=4000).double().numpy()
    assert (loose < exact - 0.05).all()
    assert model.log_prob_kind == "bound" and model.log_prob_space == "continuous"


# -- a real autoencoder ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moons():
    return load_dataset("moons", n=1000)


@pytest.fixture(scope="module")
def fitted(moons):
    """A KL autoencoder with a 2-D latent and an 8-component GMM prior on its codes."""
    ae = {**TINY_AE, "latent_shape": "2", "hidden": 32, "max_steps": 60, "lr": 3e-3}
    return Latent(autoencoder=ae, prior="gmm", prior_options={"n_components": 8},
                  device="cpu").fit(moons)  # fmt: skip


def test_gmm_prior_on_codes_samples_the_data(moons):
    """2-D codes of 2-D data by an invertible (linear) autoencoder: the latent GMM's samples
    are as close to the data as a GMM fitted on the data itself."""
    test = load_dataset("moons", split="test", n=1000)
    model = Latent(autoencoder=LinearGaussianAE(), prior="gmm",
                   prior_options={"n_components": 8}).fit(moons)  # fmt: skip
    samples = model.sample(1000, seed=0)
    assert samples.shape == (1000, 2)
    plain = genlab.models.GaussianMixture(8).fit(moons).sample(1000, seed=0)
    got, ref = metrics.mmd(samples, test.x), metrics.mmd(plain, test.x)
    floor = metrics.mmd(load_dataset("moons", n=1000, seed=5).x, test.x)  # the data itself
    assert got < max(2 * ref, abs(floor) + 1e-3), (got, ref, floor)
    prior_only = metrics.mmd(model.prior.sample(1000, seed=0), test.x)  # undecoded codes
    assert prior_only > 10 * got


def test_nested_folder_round_trip(fitted, moons, tmp_path):
    x = moons.x[:50]
    folder = fitted.save(tmp_path / "m")
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors",
                                                 "autoencoder", "prior"}  # fmt: skip
    meta = json.loads((folder / "config.json").read_text())
    assert meta["family"] == "latent" and set(meta["fitted"]["parts"]) == {"autoencoder", "prior"}
    loaded = genlab.load(folder, device="cpu")
    assert torch.equal(loaded.log_prob(x), fitted.log_prob(x))
    assert torch.equal(loaded.sample(20, seed=1), fitted.sample(20, seed=1))
    assert loaded.split_ == fitted.split_
    ae, prior = genlab.load(folder / "autoencoder"), genlab.load(folder / "prior")
    codes = fitted.autoencoder.encode(x)
    assert torch.equal(ae.encode(x), codes)
    assert torch.equal(prior.log_prob(codes), fitted.prior.log_prob(codes))
    reuse = Latent(autoencoder=folder / "autoencoder", prior="gmm",
                   prior_options={"n_components": 2}).fit(moons)  # fmt: skip
    assert reuse.split_["autoencoder"].startswith("reused")
    assert torch.equal(reuse.autoencoder.encode(x), codes)
    assert not any(p.requires_grad for p in reuse.autoencoder.parameters())  # frozen


def test_fsq_bound_is_one_term_of_the_enumerated_marginal(moons):
    """FSQ: 9 codes at one position, so log p(x) = logsumexp_t log P(t) + log p(x | t) is a
    sum of 9 terms; the bound is the term at the encoder's token, and the autoregressive
    prior is a mass over the 9 tokens."""
    ae = {**TINY_AE, "latent": "fsq", "levels": "3,3", "max_steps": 60}
    prior = {"n_layer": 1, "n_head": 1, "n_embd": 8, "max_steps": 20, "batch_size": 64}
    model = Latent(autoencoder=ae, prior="autoregressive", prior_options=prior,
                   device="cpu").fit(moons)  # fmt: skip
    assert model.latent_kind_ == "tokens" and model.log_prob_kind == "bound"
    x, ae_ = moons.x[:30], model.autoencoder
    tokens = torch.arange(9)[:, None]
    log_pt = model.prior.log_prob(tokens_as_levels(tokens, 9)).double()
    assert torch.logsumexp(log_pt, 0).item() == pytest.approx(0.0, abs=1e-5)
    codes = ae_.tokens_to_codes(tokens)
    terms = torch.stack([ae_.decoder_log_prob(x, codes[t].expand(len(x), -1)).double()
                         + log_pt[t] for t in range(9)], 1)  # fmt: skip
    bound = model.log_prob(x).double()
    mine = ae_.encode_tokens(x)[:, 0]
    assert torch.allclose(bound, terms[torch.arange(len(x)), mine], atol=1e-4)
    assert (bound <= torch.logsumexp(terms, 1) + 1e-5).all()
    assert model.sample(5, seed=0).shape == (5, 2)


# -- refusals --------------------------------------------------------------------------------------
def test_refusals(moons):
    with pytest.raises(ValueError, match="prior must be a registered family"):
        Latent(autoencoder=TINY_AE, prior="nope").fit(moons)
    with pytest.raises(NotFittedError, match="autoencoder is not fitted"):
        Latent(autoencoder=Autoencoder())
    with pytest.raises(ValueError, match="exclude each other"):
        Latent(autoencoder="run/ae", autoencoder_options={"hidden": 8})
    with pytest.raises(ValueError, match="autoencoder_share"):
        Latent(autoencoder_share=1.0)
    with pytest.raises(NotFittedError):
        Latent().sample(2)


def test_density_prior_on_tokens_is_refused(moons):
    ae = {**TINY_AE, "latent": "fsq", "levels": "3,3", "max_steps": 5}
    with pytest.raises(ValueError, match="log-mass"):
        Latent(autoencoder=ae, prior="gmm", prior_options={"n_components": 1}).fit(moons)


# -- the CLI and compare ---------------------------------------------------------------------------
def test_cli_fit_latent_and_reuse_its_autoencoder(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    common = ["--data", "moons", "--n", "300", "--no-progress", "--prior", "gmm"]
    result = runner.invoke(app, ["fit", "latent", *common, "--out", str(out), "--max-steps",
                                 "40", "--autoencoder-options",
                                 "latent_shape=2,hidden=16,depth=1",
                                 "--prior-options", "n_components=3"])  # fmt: skip
    assert result.exit_code == 0, result.output
    model = genlab.load(out)
    assert model.prior.config.n_components == 3 and model.split_["autoencoder_steps"] == 20
    again = tmp_path / "again"
    result = runner.invoke(app, ["fit", "latent", *common, "--out", str(again),
                                 "--autoencoder", str(out / "autoencoder")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "reused" in result.output
    x = load_dataset("moons", n=10).x
    assert torch.equal(genlab.load(again).autoencoder.encode(x), model.autoencoder.encode(x))
    bad = runner.invoke(app, ["fit", "latent", *common, "--out", str(tmp_path / "bad"),
                              "--prior-options", "oops"])  # fmt: skip
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


def test_compare_presets():
    assert check_families("latent-gmm,latent-autoregressive:small,vae") == [
        "latent-gmm", "latent-autoregressive:small", "vae"]  # fmt: skip
    assert family_class("latent-diffusion") is Latent
    assert resolve_name("latent-autoregressive")[1]["autoencoder_options"]["latent"] == "fsq"
    assert resolve_name("latent-gmm") == ("latent", Latent.presets["latent-gmm"])
    with pytest.raises(ValueError, match="presets"):
        check_families("latent-nope")


def test_compare_reports_the_split_and_reconstructions(tmp_path):
    from genlab.compare import Settings, compare

    digits = load_dataset("digits", n=300)
    test = load_dataset("digits", split="test", n=100)
    options = {
        "latent-gmm": {
            "autoencoder_options": {**TINY_AE},
            "prior_options": {"covariance_type": "diag"},
        }
    }
    settings = Settings(n_samples=50, gmm_components=(1, 2))
    records = compare(Dataset(digits.x, None, digits.event_shape, "image", "digits",
                              digits.levels), ["latent-gmm"],
                      test=Dataset(test.x, None, test.event_shape, "image", "digits",
                                   test.levels),
                      budget_steps=10, out=tmp_path, settings=settings, options=options,
                      progress=False)  # fmt: skip
    r = records[0]
    assert r["status"] == "ok", r["errors"]
    assert r["log_prob_kind"] == "bound" and r["nll_space"] == "discrete (log-mass)"
    split = r["details"]["split"]  # the preset's share, 0.9 of the 10 steps
    assert split["autoencoder_steps"] == 9 and split["prior_steps"] is None  # EM: no steps
    assert 0 <= r["details"]["reconstruction_mse"] < 1
    assert (tmp_path / r["figures"]["reconstructions"]).is_file()
    report = (tmp_path / "report.md").read_text()
    assert "latent-gmm budget split: autoencoder" in report
    assert "reconstruction error" in report


def test_labels_and_guidance_go_through_the_prior():
    data = load_dataset("moons", n=1000)
    model = Latent(
        prior="flow",
        prior_options={"hidden": 64, "max_steps": 200, "batch_size": 256},
        autoencoder_options={"latent_shape": "2", "hidden": 32, "depth": 1, "max_steps": 200},
    ).fit(data.x, data.y)
    assert model.conditional
    means = [data.x[data.y == c].mean(0) for c in (0, 1)]
    for c in (0, 1):
        drawn = model.sample(400, seed=0, y=c).mean(0)
        # each class's samples lie nearer their own moon's mean than the other's
        assert (drawn - means[c]).norm() < (drawn - means[1 - c]).norm()
    guided = model.sample(400, seed=0, y=0, guidance=2.0)
    assert torch.isfinite(guided).all() and not torch.equal(guided, model.sample(400, seed=0, y=0))
