"""Autoencoder: FSQ maths against brute force, exact reconstruction of identity-capable latents,
the bounds against closed forms, the latent interface, save/load, errors."""

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

import genlab
from genlab.data import load_dataset
from genlab.models import Autoencoder, NotFittedError
from genlab.models.autoencoder_maths import (
    fsq_bound,
    fsq_codes_to_indices,
    fsq_grid,
    fsq_indices_to_codes,
    fsq_quantize,
    round_ste,
    uniform_code_log_prob,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"hidden": 32, "warmup_steps": 5, "ema_decay": None}


def gaussian_points(n: int = 400, seed: int = 0) -> np.ndarray:
    cov = np.array([[1.0, 0.6], [0.6, 0.5]])
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal([1.0, -2.0], cov, size=n).astype(np.float32)


# -- FSQ maths ----------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [3, 4, 5, 8, 9])
def test_fsq_rounding_takes_exactly_the_levels_grid(levels):
    """round(bound(z)) over a fine sweep of z takes exactly L integers, and zhat the L values
    of `fsq_grid` (ascending, in [-1, 1]), each over an interval of z."""
    z = torch.linspace(-20, 20, 200_001, dtype=torch.float64)[:, None]
    zhat = fsq_quantize(z, [levels])[:, 0]
    values = torch.unique(zhat)
    torch.testing.assert_close(values, fsq_grid(levels))
    assert values.min() >= -1 and values.max() <= 1
    assert (zhat[1:] >= zhat[:-1]).all()  # monotone in z
    assert torch.equal(fsq_quantize(torch.zeros(1, 1, dtype=torch.float64), [levels]),
                       torch.zeros(1, 1, dtype=torch.float64))  # fmt: skip


def test_fsq_straight_through_gradient():
    """d zhat / d z is bound'(z) / (L // 2) (rounding passes the gradient unchanged), and
    round_ste's value is the rounded one."""
    levels = [8, 5]
    z = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z.requires_grad_(True)
    fsq_quantize(z, levels).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    (fsq_bound(z2, levels) / torch.tensor([4.0, 2.0], dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)
    assert (z.grad > 0).all()
    x = torch.tensor([0.4, 0.6, -1.5], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y.detach(), torch.round(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))


def test_code_index_round_trip_is_a_bijection():
    """All prod(levels) digit combinations map to distinct indices 0..K-1 (brute force over
    the grid), and indices -> codes -> indices is the identity."""
    levels = [8, 5, 5, 3]
    grid = list(itertools.product(*[fsq_grid(n).tolist() for n in levels]))
    codes = torch.tensor(grid, dtype=torch.float32)
    idx = fsq_codes_to_indices(codes, levels)
    assert sorted(idx.tolist()) == list(range(math.prod(levels)))
    torch.testing.assert_close(fsq_indices_to_codes(idx, levels), codes)
    every = torch.arange(math.prod(levels))
    assert torch.equal(fsq_codes_to_indices(fsq_indices_to_codes(every, levels), levels), every)
    # mixed radix: index = d0 + 8 d1 + 40 d2 + 200 d3, digits d_c = zhat_c (L//2) + L//2
    code = torch.tensor([[fsq_grid(8)[3], fsq_grid(5)[1], fsq_grid(5)[4], fsq_grid(3)[2]]])
    assert int(fsq_codes_to_indices(code.float(), levels)) == 3 + 8 * 1 + 40 * 4 + 200 * 2
    assert uniform_code_log_prob(levels, 7) == pytest.approx(-7 * math.log(600))


# -- identity-capable latents reconstruct exactly -----------------------------------------------
def linear_autoencoder(latent: str, x: np.ndarray, **options) -> Autoencoder:
    """A depth-0 (linear) autoencoder built on x (one training step), weights then set by
    hand below."""
    return Autoencoder(latent, depth=0, max_steps=1, **TINY, **options).fit(x)


def test_kl_identity_latent_reconstructs_exactly():
    """Vectors with latent dim = data dim and linear nets set to the identity (posterior
    variance at its floor): reconstruct(x) == x and encode(x) is the standardised x."""
    x = gaussian_points()
    ae = linear_autoencoder("kl", x, latent_shape=2)
    with torch.no_grad():
        enc, dec = ae.encoder.net, ae.decoder.net
        enc.weight.zero_(), enc.bias.zero_(), dec.bias.zero_()
        enc.weight[:2].copy_(torch.eye(2))
        enc.bias[2:].fill_(-30.0)
        dec.weight.copy_(torch.eye(2))
    xt = torch.from_numpy(x[:50])
    torch.testing.assert_close(ae.reconstruct(xt), xt, rtol=0, atol=1e-5)
    std = (xt - ae.data_loc) / ae.data_scale
    torch.testing.assert_close(ae.encode(xt), std, rtol=0, atol=1e-5)
    assert ae.reconstruction_error(xt) < 1e-10
    assert ae.latent_kind == "continuous" and ae.codebook_size is None


def test_fsq_reconstructs_data_on_its_grid_exactly():
    """Vectors already on the FSQ grid of levels (5, 5): a linear encoder z = 1.5 x keeps
    round(bound(z)) on the same grid point (tanh(1.5) 2 > 1.5, tanh(0.75) 2 in (0.5, 1.5)), an
    identity decoder returns it: every one of the 25 points reconstructs exactly and gets
    its own token, and decode_tokens(encode_tokens(x)) == x."""
    g = fsq_grid(5).float()
    x = torch.cartesian_prod(g, g).repeat(4, 1)  # (100, 2), every grid point 4 times
    ae = linear_autoencoder("fsq", x.numpy(), levels=(5, 5))
    loc, scale = ae.data_loc, ae.data_scale  # the gaussian likelihood standardises x
    with torch.no_grad():  # model space is (x - loc) / scale: undo it in the encoder
        ae.encoder.net.weight.copy_(torch.diag(1.5 * scale))
        ae.encoder.net.bias.copy_(1.5 * loc)
        ae.decoder.net.weight.copy_(torch.diag(1 / scale))
        ae.decoder.net.bias.copy_(-loc / scale)
    assert ae.latent_shape == (2,) and ae.codebook_size == 25 and ae.latent_kind == "tokens"
    torch.testing.assert_close(ae.encode(x), x, rtol=0, atol=0)
    torch.testing.assert_close(ae.reconstruct(x), x, rtol=0, atol=1e-6)
    tokens = ae.encode_tokens(x)
    assert tokens.shape == (100, 1) and tokens.dtype == torch.long
    assert sorted(set(tokens[:25, 0].tolist())) == list(range(25))
    torch.testing.assert_close(ae.decode_tokens(tokens), x, rtol=0, atol=1e-6)


def test_trained_linear_kl_autoencoder_learns_to_reconstruct():
    """Learned, not set: a linear KL autoencoder with a 2-D latent on correlated 2-D data
    reconstructs to a small fraction of the data's variance (untrained: of order 1)."""
    x = gaussian_points(1000)
    untrained = Autoencoder("kl", latent_shape=2, depth=0, max_steps=1, **TINY).fit(x)
    ae = Autoencoder("kl", latent_shape=2, depth=0, max_steps=400, lr=3e-2, **TINY).fit(x)
    var = float(x.var(0).mean())
    assert ae.reconstruction_error(x) < 0.01 * var < untrained.reconstruction_error(x)


# -- the bounds ---------------------------------------------------------------------------------
def test_kl_log_prob_is_the_elbo_and_below_the_exact_likelihood():
    """Linear-Gaussian model with hand-set weights: in standardised units u, q(z | u) =
    N(u, e^v I), p(u | z) = N(z, I), p(z) = N(0, I), so the ELBO is in closed form,

        ELBO = sum_d [-1/2 log 2 pi - 1/2 e^v - 1/2 (u_d^2 + e^v - 1 - v)] - sum log scale,

    log_prob (k draws) matches it to Monte Carlo error, and it lies below the exact
    log p(x) = log N(u; 0, 2 I) - sum log scale."""
    x = gaussian_points()
    ae = linear_autoencoder("kl", x, latent_shape=2)
    v = -1.0
    with torch.no_grad():
        enc, dec = ae.encoder.net, ae.decoder.net
        enc.weight.zero_(), enc.bias.zero_(), dec.bias.zero_()
        enc.weight[:2].copy_(torch.eye(2))
        enc.bias[2:].fill_(v)
        dec.weight.copy_(torch.eye(2))
        ae.log_scale.zero_()
    xt = torch.from_numpy(x[:20]).double()
    u = (xt - ae.data_loc.double()) / ae.data_scale.double()
    log_det = ae.data_scale.double().log().sum()
    elbo = (-0.5 * math.log(2 * math.pi) - 0.5 * math.exp(v)
            - 0.5 * (u**2 + math.exp(v) - 1 - v)).sum(1) - log_det  # fmt: skip
    lp = ae.log_prob(xt.float(), k=4000, seed=0).double()
    torch.testing.assert_close(lp, elbo, rtol=0, atol=0.05)
    exact = torch.from_numpy(stats.norm(0, math.sqrt(2)).logpdf(u.numpy()).sum(1)) - log_det
    assert (lp < exact).all() and (elbo < exact).all()
    z = ae.encode(xt.float())
    recon = ae.decoder_log_prob(xt.float(), z).double()  # at z = u: -1/2 log 2 pi per dim
    torch.testing.assert_close(recon, torch.full((20,), -math.log(2 * math.pi)).double() - log_det,
                               rtol=0, atol=1e-4)  # fmt: skip
    post = ae.posterior(xt.float())
    torch.testing.assert_close(post.log_var, torch.full((20, 2), v), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def digits_fsq():
    ds = load_dataset("digits", n=300)
    ae = Autoencoder("fsq", levels=(5, 4, 3), net="conv", max_steps=20, **TINY).fit(ds)
    return ae, ds


def test_fsq_log_prob_is_decoder_bits_plus_uniform_codes(digits_fsq):
    ae, ds = digits_fsq
    x = ds.x[:16]
    assert ae.latent_shape == (3, 2, 2) and ae.positions == 4 and ae.codebook_size == 60
    expected = ae.decoder_log_prob(x, ae.encode(x)).double() - 4 * math.log(60)
    torch.testing.assert_close(ae.log_prob(x).double(), expected, rtol=1e-6, atol=1e-3)
    assert ae.log_prob_kind == "bound" and ae.log_prob_space == "discrete"
    assert ae.likelihood_ == "discretized" and ae.net_ == "conv"


def test_discretized_decoder_is_a_normalised_mass(digits_fsq):
    """Summed over the 17 grey levels of one pixel, exp(decoder log p) is 1 (a mass)."""
    ae, ds = digits_fsq
    x = ds.x[:1].repeat(17, 1, 1, 1).clone()
    x.view(17, -1)[:, 0] = torch.arange(17) / 16
    z = ae.encode(ds.x[:1]).repeat(17, 1, 1, 1)
    lp = ae.decoder_log_prob(x, z).double()
    rest = lp[0] - torch.logsumexp(lp, 0)  # log P(pixel 0 = its value); sum_k P(k) = 1
    total = torch.logsumexp(lp - (lp[0] - rest), 0)
    torch.testing.assert_close(total, torch.tensor(0.0, dtype=torch.float64), atol=1e-5, rtol=0)


# -- the interface B relies on ------------------------------------------------------------------
@pytest.mark.parametrize("net", ["mlp", "conv"])
@pytest.mark.parametrize("latent", ["kl", "fsq"])
def test_latent_interface_shapes(latent, net):
    ds = load_dataset("digits", n=200)
    ae = Autoencoder(latent, net=net, max_steps=5, **TINY).fit(ds)
    expected = {("kl", "mlp"): (16,), ("fsq", "mlp"): (4, 4), ("kl", "conv"): (4, 2, 2),
                ("fsq", "conv"): (4, 2, 2)}  # fmt: skip
    assert ae.latent_shape == expected[latent, net]  # the defaults for 8 x 8 images
    x = ds.x[:7]
    z = ae.encode(x)
    assert z.shape == (7, *ae.latent_shape) and z.dtype == torch.float32
    out = ae.decode(z)
    assert out.shape == (7, *ds.event_shape) and (out >= 0).all() and (out <= 1).all()
    assert ae.decoder_log_prob(x, z).shape == (7,)
    assert isinstance(ae.reconstruction_error(x), float)
    s = ae.sample(5, seed=1)
    assert s.shape == (5, *ds.event_shape) and torch.equal(s, ae.sample(5, seed=1))
    if latent == "kl":
        post = ae.posterior(x)
        assert torch.equal(post.mean, z) and post.log_var.shape == z.shape
        with pytest.raises(ValueError, match="FSQ"):
            ae.encode_tokens(x)
    else:
        tokens = ae.encode_tokens(x)
        assert tokens.shape == (7, ae.positions) and tokens.max() < ae.codebook_size
        assert torch.equal(ae.tokens_to_codes(tokens), z)
        torch.testing.assert_close(ae.decode_tokens(tokens), out)
        with pytest.raises(ValueError, match="KL"):
            ae.posterior(x)


def test_sample_decodes_prior_codes(digits_fsq):
    """sample(n, seed, mean=True) is decode of the prior's codes drawn from the same seeded
    generator: uniform token ids (FSQ) or N(0, I) latents (KL)."""
    ae, ds = digits_fsq
    tokens = torch.randint(0, 60, (6, 4), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ae.sample(6, seed=5, mean=True), ae.decode_tokens(tokens))
    kl = Autoencoder("kl", net="conv", max_steps=2, **TINY).fit(ds)
    z = torch.randn(6, *kl.latent_shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(kl.sample(6, seed=5, mean=True), kl.decode(z))
    draws = kl.sample(6, seed=5)  # x ~ p(x | z): on the data's grid of 17 levels
    assert torch.equal(draws * 16, torch.round(draws * 16))


def test_save_load_round_trip(digits_fsq, tmp_path):
    ae, ds = digits_fsq
    ae.save(tmp_path / "ae")
    meta = json.loads((tmp_path / "ae" / "config.json").read_text())
    assert meta["config"] == dataclasses.asdict(ae.config)
    assert meta["config"]["levels"] == "5,4,3"
    loaded = genlab.load(tmp_path / "ae")
    assert type(loaded) is Autoencoder and loaded.latent_shape == ae.latent_shape
    x = ds.x[:10]
    assert torch.equal(loaded.encode_tokens(x), ae.encode_tokens(x))
    torch.testing.assert_close(loaded.log_prob(x), ae.log_prob(x))
    torch.testing.assert_close(loaded.sample(4, seed=0), ae.sample(4, seed=0))


# -- bad input ----------------------------------------------------------------------------------
def test_options_are_checked_and_normalised():
    assert Autoencoder(levels=[8, 5, 5, 5], latent_shape=(4, 7, 7)).config.latent_shape == "4,7,7"
    assert Autoencoder(levels="8x5").config.levels == "8,5"
    for bad, match in [({"levels": (8, 2)}, ">= 3"), ({"levels": "a,b"}, "levels"),
                       ({"latent_shape": (0, 3)}, "latent_shape"), ({"latent": "vq"}, "latent"),
                       ({"levels": (2**16,) * 3}, "codes per position")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            Autoencoder(**bad)


def test_bad_latents_and_tokens_are_refused(digits_fsq):
    ae, ds = digits_fsq
    with pytest.raises(ValueError, match="channel per level"):
        Autoencoder("fsq", latent_shape=(4, 2, 2), levels=(5, 5), max_steps=1).fit(ds)
    with pytest.raises(ValueError, match="halved"):
        Autoencoder("kl", latent_shape=(4, 3, 3), net="conv", max_steps=1).fit(ds)
    with pytest.raises(ValueError, match=r"\(C,\) or \(C, P\)"):
        Autoencoder("kl", latent_shape=(4, 3, 3), max_steps=1).fit(ds)
    with pytest.raises(ValueError, match="square images"):
        Autoencoder("kl", net="conv", max_steps=1).fit(gaussian_points())
    with pytest.raises(ValueError, match="shape"):
        ae.decode(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[0, 60\)"):
        ae.decode_tokens(torch.full((2, 4), 60))
    with pytest.raises(TypeError, match="integer"):
        ae.decode_tokens(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="labels"):
        Autoencoder(max_steps=1).fit(ds.x, torch.zeros(len(ds.x), dtype=torch.long))
    with pytest.raises(NotFittedError):
        Autoencoder().encode(ds.x[:2])


# -- the nets -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("side", "levels", "latent"), [(28, 3, 7), (8, 2, 4), (5, 3, 2), (9, 1, 9)]
)
def test_conv_nets_map_images_to_latents_and_back(side, levels, latent):
    from genlab.nets.autoencoder import LatentConvDecoder, LatentConvEncoder, latent_side

    channels = tuple(8 * 2**i for i in range(levels))
    assert latent_side(side, levels) == latent
    enc = LatentConvEncoder(2, side, 6, channels, blocks=1)
    dec = LatentConvDecoder(3, 4, side, channels, blocks=1)
    x = torch.randn(5, 2, side, side)
    assert enc(x).shape == (5, 6, latent, latent)
    assert dec(torch.randn(5, 3, latent, latent)).shape == (5, 4, side, side)
    with pytest.raises(ValueError, match="shape"):
        enc(torch.randn(5, 2, side + 1, side + 1))


def test_res_blocks_start_as_the_identity_and_depth_zero_is_linear():
    from genlab.nets.autoencoder import LatentConvEncoder, ResBlock, VectorNet

    block = LatentConvEncoder(1, 8, 2, (8, 16), blocks=1).body[0]  # as the encoder builds it
    assert isinstance(block, ResBlock)
    h = torch.randn(3, 8, 5, 5)
    torch.testing.assert_close(block(h), h)
    net = VectorNet(3, 4, depth=0)
    assert isinstance(net.net, torch.nn.Linear)
    x = torch.randn(6, 3)
    torch.testing.assert_close(net(x), x @ net.net.weight.T + net.net.bias)
    with pytest.raises(ValueError, match="depth"):
        VectorNet(3, 4, depth=-1)
