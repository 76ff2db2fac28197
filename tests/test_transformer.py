"""The decoder-only transformer: cache vs no cache, attention vs a naive loop, causality, init."""

import math

import pytest
import torch
import torch.nn.functional as F

from genlab.nets import Transformer, count_parameters
from genlab.nets.transformer import apply_rope, causal_attention, rope_tables

pytestmark = pytest.mark.usefixtures("one_thread")


def make_net(positions="rope", **kwargs):
    torch.manual_seed(0)
    options = {"vocab_size": 11, "block_size": 24, "n_layer": 2, "n_head": 2, "n_embd": 16}
    return Transformer(**{**options, **kwargs}, positions=positions).eval()


def naive_causal_attention(q, k, v, past=0):
    """softmax over keys 0..past+i of q_i . k_j / sqrt(d), one query at a time."""
    B, H, T, d = q.shape
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                scores = [
                    float(q[b, h, i] @ k[b, h, j]) / math.sqrt(d) for j in range(past + i + 1)
                ]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                for j, w in enumerate(weights):
                    out[b, h, i] += w / total * v[b, h, j]
    return out


@pytest.mark.parametrize("past", [0, 3])
def test_causal_attention_matches_a_naive_loop(past):
    g = torch.Generator().manual_seed(1)
    T = 5
    q = torch.randn(2, 2, T, 4, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, past + T, 4, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, past + T, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        causal_attention(q, k, v, past), naive_causal_attention(q, k, v, past)
    )


def test_one_new_query_attends_to_every_cached_key():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 1, n, 4, generator=g, dtype=torch.float64) for n in (1, 6, 6))
    torch.testing.assert_close(
        causal_attention(q, k, v, past=5), naive_causal_attention(q, k, v, 5)
    )


def test_attention_layer_matches_naive_computation_from_its_weights():
    net = make_net("learned").double()
    attn = net.blocks[0].attn
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    W = attn.qkv.weight.detach()  # (3C, C): rows q, k, v; head h = columns h*d:(h+1)*d of each
    q, k, v = (x @ W[i * 16 : (i + 1) * 16].T for i in range(3))
    heads = [
        naive_causal_attention(*(t[:, None, :, h * 8 : (h + 1) * 8] for t in (q, k, v)))
        for h in range(2)
    ]
    expected = torch.cat([o[:, 0] for o in heads], dim=-1) @ attn.proj.weight.detach().T
    torch.testing.assert_close(attn(x, rope=None), expected)


def test_rope_rotates_pairs_by_position_angles():
    cos, sin = rope_tables(5, 4)
    assert cos.shape == (5, 2)
    torch.testing.assert_close(
        cos[3, 1], torch.tensor(math.cos(3 * 10_000 ** (-2 / 4)), dtype=torch.float64)
    )
    x = torch.randn(1, 1, 5, 4, dtype=torch.float64)
    rotation = torch.complex(cos, sin)
    out = apply_rope(x, rotation)
    a, b = x[..., 0::2], x[..., 1::2]
    torch.testing.assert_close(out[..., 0::2], a * cos - b * sin)
    torch.testing.assert_close(out[..., 1::2], a * sin + b * cos)


def test_rope_scores_depend_on_relative_position_only():
    cos, sin = rope_tables(20, 8)
    rotation = torch.complex(cos, sin)
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 8, generator=g, dtype=torch.float64)
    placed = torch.zeros(1, 1, 20, 8, dtype=torch.float64)

    def score(i, j):
        qs, ks = placed.clone(), placed.clone()
        qs[0, 0, i], ks[0, 0, j] = q, k
        return float(apply_rope(qs, rotation)[0, 0, i] @ apply_rope(ks, rotation)[0, 0, j])

    assert score(7, 3) == pytest.approx(score(15, 11), rel=1e-9)
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_cached_and_uncached_logits_agree(positions):
    net = make_net(positions)
    idx = torch.randint(11, (3, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = net(idx)
        cache = net.new_cache(3)
        chunks = [net(idx[:, :6], cache)]  # prefill
        chunks += [net(idx[:, t : t + 1], cache) for t in range(6, 12)]  # one position each
        chunks.append(net(idx[:, 12:], cache))  # several new positions after a prefix
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_no_position_sees_the_future(positions):
    net = make_net(positions)
    idx = torch.randint(11, (1, 16), generator=torch.Generator().manual_seed(5))
    t = 9
    changed = idx.clone()
    changed[0, t] = (idx[0, t] + 1) % 11
    with torch.no_grad():
        a, b = net(idx), net(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=0, rtol=0)
    assert (a[:, t:] - b[:, t:]).abs().amax(dim=-1).min() > 1e-6  # every later position moves


def test_output_layer_is_tied_to_the_token_embedding():
    net = make_net()
    assert not any("head" in name for name in net.state_dict())
    hidden = {}
    net.ln_f.register_forward_hook(lambda m, i, o: hidden.update(h=o))
    idx = torch.randint(11, (2, 5))
    logits = net(idx)
    torch.testing.assert_close(logits, hidden["h"] @ net.wte.weight.T)
    logits.sum().backward()
    assert net.wte.weight.grad is not None


@pytest.mark.parametrize("positions, bias", [("rope", False), ("learned", True)])
def test_parameter_count_by_hand(positions, bias):
    V, B, L, C = 11, 24, 2, 16
    net = make_net(positions, bias=bias)
    ln = C * (2 if bias else 1)
    per_block = (
        2 * ln  # two LayerNorms
        + 3 * C * C + (3 * C if bias else 0)  # qkv
        + C * C + (C if bias else 0)  # attention output
        + 4 * C * C + (4 * C if bias else 0)  # MLP in
        + 4 * C * C + (C if bias else 0)  # MLP out
    )  # fmt: skip
    expected = V * C + (B * C if positions == "learned" else 0) + L * per_block + ln
    assert count_parameters(net) == expected


def test_residual_projections_use_the_scaled_init():
    net = Transformer(50, 32, n_layer=8, n_head=4, n_embd=64)
    std = torch.cat([b.attn.proj.weight.detach().flatten() for b in net.blocks]).std()
    assert float(std) == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert float(net.blocks[0].mlp.fc.weight.detach().std()) == pytest.approx(0.02, rel=0.1)


def test_dropout_acts_in_training_only():
    net = make_net(dropout=0.5)
    idx = torch.randint(11, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(net(idx), net(idx))
        net.train()
        assert not torch.equal(net(idx), net(idx))


def test_training_a_step_lowers_the_loss():
    net = make_net().train()
    idx = torch.randint(11, (4, 12), generator=torch.Generator().manual_seed(6))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(net(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0] - 0.5


def test_bad_input_raises():
    net = make_net()
    with pytest.raises(ValueError, match="exceed block_size"):
        net(torch.zeros(1, 25, dtype=torch.long))
    cache = net.new_cache(1)
    net(torch.zeros(1, 20, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="start a new cache"):
        net(torch.zeros(1, 5, dtype=torch.long), cache)
    with pytest.raises(TypeError, match="integer token ids"):
        net(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        net(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        Transformer(10, 8, n_head=3, n_embd=16)
    with pytest.raises(ValueError, match="even head size"):
        Transformer(10, 8, n_head=2, n_embd=6)
    with pytest.raises(ValueError, match="positions"):
        Transformer(10, 8, positions="alibi")
    with pytest.raises(ValueError, match="dropout"):
        Transformer(10, 8, dropout=1.0)


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_logits_at_some_positions_equal_the_full_pass_there(positions):
    torch.manual_seed(0)
    net = Transformer(40, 16, n_layer=2, n_head=2, n_embd=16, positions=positions, causal=False)
    net.eval()
    idx = torch.randint(0, 40, (3, 16))
    at = torch.rand(3, 16) < 0.4
    at[1] = False  # a row without positions
    at[2, :] = True  # a row with every position
    with torch.no_grad():
        full = net(idx)[at]
        some = net(idx, at=at)
    assert some.shape == (int(at.sum()), 40)
    torch.testing.assert_close(some, full, atol=1e-5, rtol=1e-5)
    assert net(idx, at=torch.zeros(3, 16, dtype=torch.bool)).shape == (0, 40)


def test_logits_at_positions_are_refused_by_a_causal_net_or_a_bad_mask():
    causal = Transformer(40, 16, n_layer=1, n_head=2, n_embd=16)
    bidirectional = Transformer(40, 16, n_layer=1, n_head=2, n_embd=16, causal=False)
    idx = torch.randint(0, 40, (2, 8))
    with pytest.raises(ValueError, match="bidirectional"):
        causal(idx, at=torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        bidirectional(idx, at=torch.ones(2, 8))
