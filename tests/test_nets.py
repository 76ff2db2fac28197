"""genlab.nets: shapes, closed-form parameter counts, a naive-attention oracle, conditioning,
gradient flow, input checks and tiny overfits."""

import math

import pytest
import torch
from torch import nn

from genlab.nets import (
    MLP,
    ConvDecoder,
    ConvEncoder,
    LabelEmbedding,
    SinusoidalEmbedding,
    UNet,
    count_parameters,
)
from genlab.nets.embeddings import TIME_SCALE
from genlab.nets.unet import AttentionBlock, ResBlock

pytestmark = pytest.mark.usefixtures("one_thread")


def unzero(module: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Fill every all-zero parameter (zero-initialised outputs, biases) with small noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def small_unet(size: int = 8, **kw) -> UNet:
    return UNet(1, size, base_channels=8, channel_mults=(1, 2), **kw)


# ---- embeddings ------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [8, 7])
def test_sinusoidal_matches_formula(dim):
    emb = SinusoidalEmbedding(dim, max_period=500.0).double()
    t = torch.tensor([0.0, 0.013, 0.5, 1.0], dtype=torch.float64)
    half = dim // 2
    expected = torch.zeros(len(t), dim, dtype=torch.float64)
    for i, ti in enumerate(t.tolist()):
        for k in range(half):
            angle = TIME_SCALE * ti * 500.0 ** (-k / half)
            expected[i, k] = math.cos(angle)
            expected[i, half + k] = math.sin(angle)
    out = emb(t)
    assert out.shape == (4, dim) and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-9)


def test_sinusoidal_separates_times():
    emb = SinusoidalEmbedding(32)
    t = torch.linspace(0, 1, 101)
    e = emb(t)
    dist = torch.cdist(e, e) + torch.eye(len(t)) * 1e3
    assert dist.min() > 0.1  # neighbouring times 0.01 apart are distinct
    assert (emb(torch.tensor([0.0])) - emb(torch.tensor([1e-3]))).abs().max() > 0.5
    assert len(list(emb.parameters())) == 0 and not emb.state_dict()
    with pytest.raises(ValueError, match="1-D"):
        emb(torch.zeros(3, 1))


def test_label_embedding_null_and_range():
    emb = LabelEmbedding(3, 5)
    assert emb.null_index == 3 and emb.embedding.num_embeddings == 4
    y = torch.tensor([0, 1, 2, 3, 3])
    out = emb(y)
    assert out.shape == (5, 5)
    torch.testing.assert_close(out[3], emb.embedding.weight[3])
    torch.testing.assert_close(out[3], out[4])
    assert not torch.allclose(out[0], out[3])
    for bad in ([4], [-1], [0, 7]):
        with pytest.raises(ValueError, match="null"):
            emb(torch.tensor(bad))
    with pytest.raises(TypeError, match="integer"):
        emb(torch.tensor([0.0, 1.0]))


# ---- shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("time_dim,n_classes", [(None, None), (16, None), (None, 3), (16, 3)])
def test_mlp_shapes(time_dim, n_classes):
    net = MLP(2, 5, hidden=(32, 32, 16), time_dim=time_dim, n_classes=n_classes)
    x = torch.randn(7, 2)
    t = torch.rand(7) if time_dim else None
    y = torch.randint(0, 3, (7,)) if n_classes else None
    assert net(x, t, y).shape == (7, 5)
    if n_classes:
        assert net(x, t).shape == (7, 5)  # y=None: null label
    if time_dim:  # a scalar t broadcasts over the batch
        torch.testing.assert_close(net(x, 0.3, y), net(x, torch.full((7,), 0.3), y))


@pytest.mark.parametrize("size", [8, 28])
@pytest.mark.parametrize("n_classes", [None, 10])
def test_conv_shapes(size, n_classes):
    enc = ConvEncoder(3, size, 12, n_classes=n_classes)
    dec = ConvDecoder(6, 3, size, n_classes=n_classes)
    x, z = torch.randn(2, 3, size, size), torch.randn(2, 6)
    y = torch.tensor([0, 9]) if n_classes else None
    assert enc(x, y).shape == (2, 12)
    assert dec(z, y).shape == (2, 3, size, size)
    assert enc(x).shape == (2, 12) and dec(z).shape == (2, 3, size, size)


@pytest.mark.parametrize("size", [4, 5, 7, 9, 13])
def test_odd_sizes_round_trip(size):
    dec = ConvDecoder(4, 2, size, channels=(8, 8, 8))
    assert dec(torch.randn(2, 4)).shape == (2, 2, size, size)
    enc = ConvEncoder(2, size, 3, channels=(8, 8, 8))
    assert enc(torch.randn(2, 2, size, size)).shape == (2, 3)
    unet = UNet(2, size, base_channels=8, channel_mults=(1, 1, 2))
    assert unet(torch.randn(2, 2, size, size), torch.rand(2)).shape == (2, 2, size, size)


@pytest.mark.parametrize(
    "size,kw",
    [
        (8, {}),
        (8, {"attention_resolutions": (4,), "n_classes": 10, "out_channels": 2}),
        (28, {}),
        (28, {"channel_mults": (1, 2, 2), "attention_resolutions": (7,), "n_classes": 10}),
    ],
)
def test_unet_shapes_and_zero_start(size, kw):
    net = UNet(1, size, **kw)
    x, t = torch.randn(2, 1, size, size), torch.rand(2)
    out = net(x, t)  # y=None: null label when n_classes is set
    assert out.shape == (2, kw.get("out_channels", 1), size, size)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised final conv
    if "n_classes" in kw:
        assert net(x, t, torch.tensor([3, 10])).shape == out.shape


def test_float64_nets():
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t = torch.rand(3)  # float32 times into a float64 net
    assert unzero(small_unet().double())(x, t).dtype == torch.float64
    assert MLP(2, 2, (8,), time_dim=4).double()(x[:, 0, 0, :2], t).dtype == torch.float64


# ---- parameter counts --------------------------------------------------------------------------


def test_mlp_parameter_count_closed_form():
    def linear(a, b):
        return a * b + b

    assert count_parameters(MLP(2, 2, hidden=(32, 32))) == (
        linear(2, 32) + 2 * (2 * 32 + linear(32, 32)) + 2 * 32 + linear(32, 2)
    )
    net = MLP(3, 2, hidden=(16, 16, 8), time_dim=6, n_classes=4)
    c = 16  # conditioning width = hidden[0]
    expected = linear(6, c) + linear(c, c) + 5 * c + linear(3, 16)
    for a, b in [(16, 16), (16, 16), (16, 8)]:  # LayerNorm, FiLM, Linear per block
        expected += 2 * a + linear(c, 2 * a) + linear(a, b)
    expected += 2 * 8 + linear(8, 2)
    assert count_parameters(net) == expected


def test_conv_parameter_counts_closed_form():
    # 9 -> 5 -> 3 with 3x3 stride-2 convs
    enc = ConvEncoder(3, 9, 5, channels=(4, 6), n_classes=2)
    assert count_parameters(enc) == (3 * 4 * 9 + 4) + (4 * 6 * 9 + 6) + (6 * 9 * 5 + 5) + 3 * 4
    dec = ConvDecoder(5, 3, 9, channels=(6, 4), n_classes=2)
    assert count_parameters(dec) == (5 * 54 + 54) + (6 * 4 * 9 + 4) + (4 * 3 * 9 + 3) + 3 * 54
    frozen = ConvEncoder(3, 9, 5, channels=(4, 6))
    frozen.linear.requires_grad_(False)
    assert count_parameters(frozen) == (3 * 4 * 9 + 4) + (4 * 6 * 9 + 6)


def test_unet_parameter_budgets():
    n8, n28 = count_parameters(UNet(1, 8)), count_parameters(UNet(1, 28))
    assert 100_000 < n8 < 1_000_000 and 100_000 < n28 < 2_000_000
    big = UNet(1, 28, channel_mults=(1, 2, 2), attention_resolutions=(7,), n_classes=10)
    assert count_parameters(big) < 2_000_000
    assert count_parameters(UNet(1, 8, attention_resolutions=(4,), n_classes=10)) < 1_000_000


# ---- attention against a naive oracle ----------------------------------------------------------


@pytest.mark.parametrize("channels,heads", [(8, 1), (8, 2)])
def test_attention_matches_naive(channels, heads):
    torch.manual_seed(0)
    block = unzero(AttentionBlock(channels, heads), seed=1, std=0.3).double()
    x = torch.randn(2, channels, 3, 2, dtype=torch.float64)
    out = block(x)

    d = channels // heads
    wqkv = block.qkv.weight[:, :, 0, 0]
    bqkv = block.qkv.bias
    wp, bp = block.proj.weight[:, :, 0, 0], block.proj.bias
    expected = torch.empty_like(x)
    for b in range(2):
        h = block.norm(x[b : b + 1])[0].reshape(channels, -1)  # (C, N)
        q, k, v = (wqkv @ h + bqkv[:, None]).split(channels)  # (C, N) each
        heads_out = []
        for j in range(heads):
            sl = slice(j * d, (j + 1) * d)
            scores = q[sl].T @ k[sl] / math.sqrt(d)  # (N, N)
            weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            weights = weights / weights.sum(dim=1, keepdim=True)
            heads_out.append(v[sl] @ weights.T)  # (d, N): sum_m v_m w_nm
        o = torch.cat(heads_out) if heads > 1 else heads_out[0]
        expected[b] = x[b] + (wp @ o + bp[:, None]).reshape(channels, 3, 2)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_attention_and_resblocks_start_as_identity():
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(AttentionBlock(8, 2)(x), x)
    torch.testing.assert_close(ResBlock(8, 8, 16)(x, torch.randn(2, 16)), x)


# ---- conditioning and gradients ------------------------------------------------------------------


def test_mlp_conditioning_changes_output():
    torch.manual_seed(0)
    net = MLP(2, 2, hidden=(32, 32), time_dim=16, n_classes=3)
    x = torch.randn(5, 2)
    y = torch.zeros(5, dtype=torch.long)
    base = net(x, torch.full((5,), 0.2), y)
    assert (base - net(x, torch.full((5,), 0.7), y)).abs().max() > 1e-3
    assert (base - net(x, torch.full((5,), 0.2), y + 1)).abs().max() > 1e-3
    assert (base - net(x, torch.full((5,), 0.2))).abs().max() > 1e-3  # null label


def test_unet_conditioning_changes_output():
    torch.manual_seed(0)
    net = unzero(small_unet(n_classes=3))
    x = torch.randn(2, 1, 8, 8)
    y = torch.tensor([0, 1])
    base = net(x, torch.tensor([0.1, 0.1]), y)
    assert (base - net(x, torch.tensor([0.9, 0.9]), y)).abs().max() > 1e-3
    assert (base - net(x, torch.tensor([0.1, 0.1]), torch.tensor([2, 2]))).abs().max() > 1e-3


NETS = {
    "mlp": lambda: (MLP(2, 2, (16, 16), time_dim=8, n_classes=3), (torch.randn(4, 2),), True),
    "encoder": lambda: (ConvEncoder(1, 8, 4, n_classes=3), (torch.randn(4, 1, 8, 8),), False),
    "decoder": lambda: (ConvDecoder(3, 1, 8, n_classes=3), (torch.randn(4, 3),), False),
    "unet": lambda: (
        small_unet(attention_resolutions=(4,), n_classes=3),
        (torch.randn(4, 1, 8, 8),),
        True,
    ),
}


@pytest.mark.parametrize("name", list(NETS))
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    net, (x,), timed = NETS[name]()
    unzero(net)
    y = torch.tensor([0, 1, 2, 3])  # every row of the label table, the null one included
    out = net(x, torch.rand(4), y) if timed else net(x, y)
    out.square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().max() > 0, pname


def test_unet_time_embedding_gets_gradient_at_init():
    torch.manual_seed(0)
    net = small_unet()
    x, t, target = torch.randn(2, 1, 8, 8), torch.rand(2), torch.randn(2, 1, 8, 8)
    (net(x, t) - target).square().mean().backward()
    # zero-initialised outputs: only the final conv learns on the first step...
    assert net.time_embed[1].weight.grad.abs().max() == 0
    assert net.out_conv.weight.grad.abs().max() > 0
    net.zero_grad()
    unzero(net)  # ...and once the outputs move, the time embedding does too
    (net(x, t) - target).square().mean().backward()
    assert net.time_embed[1].weight.grad.abs().max() > 0


# ---- bad inputs ------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    mlp = MLP(2, 2, (8,), time_dim=4)
    with pytest.raises(ValueError, match="pass t"):
        mlp(torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        mlp(torch.randn(3, 3), torch.rand(3))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        mlp(torch.randn(3, 2), torch.rand(4))
    with pytest.raises(TypeError, match="float"):
        mlp(torch.randn(3, 2), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="n_classes"):
        mlp(torch.randn(3, 2), torch.rand(3), torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="time_dim=None"):
        MLP(2, 2, (8,))(torch.randn(3, 2), torch.rand(3))

    enc = ConvEncoder(1, 8, 4, n_classes=2)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        enc(torch.randn(2, 3, 8, 8))  # wrong channels
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        enc(torch.randn(2, 1, 9, 9))  # wrong size
    with pytest.raises(ValueError, match="null"):
        enc(torch.randn(2, 1, 8, 8), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"shape \(B, 4\)"):
        ConvDecoder(4, 1, 8)(torch.randn(2, 5))

    unet = small_unet()
    with pytest.raises(ValueError, match="needs t"):
        unet(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        unet(torch.randn(2, 2, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        unet(torch.randn(2, 1, 16, 16), torch.rand(2))
    with pytest.raises(ValueError, match="without n_classes"):
        unet(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 1]))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="attention_resolutions"):
        UNet(1, 28, attention_resolutions=(7,))  # (1, 2) reaches 28 and 14 only
    with pytest.raises(ValueError, match="image_size"):
        ConvEncoder(1, 3, 4)
    with pytest.raises(ValueError, match="channels"):
        ConvDecoder(4, 1, 8, channels=())
    with pytest.raises(ValueError, match="hidden"):
        MLP(2, 2, hidden=())
    with pytest.raises(ValueError, match="dropout"):
        UNet(1, 8, dropout=1.0)


# ---- tiny overfits ----------------------------------------------------------------------------


def overfit(net, inputs, target, steps=60, lr=3e-3) -> tuple[float, float]:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = (net(*inputs) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


@pytest.mark.parametrize("name", list(NETS))
def test_overfits_a_tiny_batch(name):
    torch.manual_seed(0)
    net, (x,), timed = NETS[name]()
    y = torch.tensor([0, 1, 2, 3])
    inputs = (x, torch.rand(4), y) if timed else (x, y)
    with torch.no_grad():
        target = torch.randn_like(net(*inputs))
    first, last = overfit(net, inputs, target)
    assert last < 0.05 * first, (first, last)


# -- a second time input (MeanFlow's (t, t - r)) ------------------------------------------------
def test_two_time_inputs_embed_each_time_and_keep_one_time_nets_unchanged():
    torch.manual_seed(0)
    one = MLP(3, 3, hidden=(8, 8), time_dim=8)
    torch.manual_seed(0)
    two = MLP(3, 3, hidden=(8, 8), time_dim=8, time_inputs=2)
    extra = {k for k in two.state_dict() if k.startswith("time_embed_extra.")}
    assert set(two.state_dict()) - extra == set(one.state_dict()) and extra
    x = torch.randn(4, 3)
    t = torch.rand(4, 2)
    out = two(x, t)
    assert out.shape == (4, 3) and not torch.allclose(out, two(x, t.flip(1)))
    assert torch.allclose(two(x, t[0]), two(x, t[:1].expand(4, 2)))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        two(x, t[:, 0])
    with pytest.raises(ValueError, match="time_inputs"):
        MLP(3, 3, time_dim=None, time_inputs=2)
    u = UNet(1, 8, base_channels=4, time_inputs=2)
    assert any(k.startswith("time_embed_extra.") for k in u.state_dict())
    assert u(torch.randn(2, 1, 8, 8), torch.rand(2, 2)).shape == (2, 1, 8, 8)
    assert not any("extra" in k for k in UNet(1, 8, base_channels=4).state_dict())


def test_the_mlp_goes_through_torch_func_jvp():
    torch.manual_seed(0)
    net = MLP(2, 2, hidden=(8,), time_dim=8, time_inputs=2).double()
    x, dx = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    t = torch.rand(3, 2, dtype=torch.float64)
    out, tangent = torch.func.jvp(lambda a: net(a, t), (x,), (dx,))
    jac = torch.autograd.functional.jacobian(lambda a: net(a, t), x)  # (3, 2, 3, 2)
    torch.testing.assert_close(tangent, torch.einsum("bidj,dj->bi", jac, dx))
    torch.testing.assert_close(out, net(x, t))


# -- Fourier features of the input (input_frequencies) ------------------------------------------
def test_fourier_features_match_the_formula_and_keep_plain_nets_unchanged():
    from genlab.nets.mlp import fourier_features

    x = torch.tensor([[0.25, -1.5], [2.0, 0.1]], dtype=torch.float64)
    got = fourier_features(x, 3)
    angles = [2**k * math.pi * float(v) for row in x for v in row for k in range(3)]
    sines = torch.tensor([math.sin(a) for a in angles], dtype=torch.float64).reshape(2, 6)
    cosines = torch.tensor([math.cos(a) for a in angles], dtype=torch.float64).reshape(2, 6)
    assert got.shape == (2, 2 * 7)  # [x (2), sin (coordinate-major, k), cos (same)]
    torch.testing.assert_close(got[:, :2], x)
    torch.testing.assert_close(got[:, 2:8], sines)
    torch.testing.assert_close(got[:, 8:], cosines)
    assert fourier_features(x, 0) is x
    torch.manual_seed(0)
    plain = MLP(2, 2, hidden=(8, 8), time_dim=8)
    torch.manual_seed(0)
    rich = MLP(2, 2, hidden=(8, 8), time_dim=8, input_frequencies=4)
    assert set(plain.state_dict()) == set(rich.state_dict())
    assert rich.input.in_features == 2 * 9 and plain.input.in_features == 2
    for bad in (-1, 17, 2.0, True):
        with pytest.raises(ValueError, match="input_frequencies"):
            MLP(2, 2, input_frequencies=bad)


def test_cond_dim_sizes_the_conditioning_and_keeps_the_default_net():
    """cond_dim=C: the time MLP ends at C and FiLM maps C -> 2 x width; None is hidden[0], the
    state_dict of every net saved before the option (same keys, same shapes)."""
    torch.manual_seed(0)
    plain = MLP(2, 2, hidden=(8, 8), time_dim=8, n_classes=3)
    default = MLP(2, 2, hidden=(8, 8), time_dim=8, n_classes=3, cond_dim=None)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {
        k: v.shape for k, v in default.state_dict().items()
    }
    narrow = MLP(2, 2, hidden=(8, 8), time_dim=8, n_classes=3, cond_dim=3)
    assert set(narrow.state_dict()) == set(plain.state_dict())
    assert narrow.blocks[0].film.weight.shape == (16, 3)
    assert narrow.label_embed(torch.tensor([0, 3])).shape == (2, 3)
    out = narrow(torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 3]))
    assert out.shape == (4, 2) and torch.isfinite(out).all()
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="cond_dim must be"):
            MLP(2, 2, time_dim=8, cond_dim=bad)
    with pytest.raises(ValueError, match="has neither"):
        MLP(2, 2, cond_dim=4)


def test_fourier_features_resolve_a_high_frequency_target_a_raw_mlp_cannot():
    """Fit y = sin(16 pi x) on [-1, 1] with the same small net and steps: the features' net
    gets the error far below the raw net's (Tancik et al. 2020's spectral-bias claim)."""
    x = torch.linspace(-1, 1, 256)[:, None]
    y = torch.sin(16 * math.pi * x)
    losses = {}
    for octaves in (0, 5):
        torch.manual_seed(0)
        net = MLP(1, 1, hidden=(32, 32), input_frequencies=octaves)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(300):
            opt.zero_grad()
            loss = (net(x) - y).square().mean()
            loss.backward()
            opt.step()
        losses[octaves] = loss.item()
    assert losses[5] < 0.05 * losses[0], losses


def test_a_shared_time_embeds_one_row_and_matches_the_per_row_forward():
    """A sampler's expanded scalar t (stride 0) embeds one row under no_grad: the output equals
    the per-row forward (a fresh tensor of the same times), labels and two times included."""
    torch.manual_seed(0)
    rows = []
    labelled = MLP(2, 2, hidden=(16, 16), time_dim=8, n_classes=3)
    two_times = MLP(2, 2, hidden=(16,), time_dim=8, time_inputs=2)
    for net, t in (
        (labelled, torch.tensor(0.3).expand(50)),
        (two_times, torch.tensor([0.7, 0.2]).expand(50, 2)),
    ):
        net = unzero(net)
        seen: list[int] = []
        net.time_embed.register_forward_hook(
            lambda m, args, out, seen=seen: seen.append(len(args[0]))
        )
        x = torch.randn(50, 2)
        y = torch.randint(0, 3, (50,)) if net.n_classes else None
        with torch.no_grad():
            shared = net(x, t, y)
            per_row = net(x, t.clone(), y)  # contiguous: one embedding per row
        with torch.enable_grad():
            grad_path = net(x, t, y)  # training keeps the per-row path
        assert seen == [1, 50, 50]
        torch.testing.assert_close(shared, per_row, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(shared, grad_path.detach(), rtol=1e-5, atol=1e-6)
        rows.append(shared)
    assert not torch.allclose(rows[0][:1].expand(50, 2), rows[0])  # rows still differ by x
