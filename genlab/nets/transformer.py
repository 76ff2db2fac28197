"""A GPT-style decoder-only transformer over token ids, with a key/value cache.

    idx (B, T) -> token embedding [+ learned position] -> dropout
               -> n_layer x Block -> LayerNorm -> logits = h @ W_te^T      (B, T, vocab_size)

    Block(x) = x + Attn(LN(x));  x + MLP(LN(x))                            (pre-norm)
    Attn: q, k, v = split(W_qkv h), heads of size d = n_embd / n_head, causal softmax attention
          softmax(q k^T / sqrt(d) + mask) v through F.scaled_dot_product_attention
    MLP:  W_2 GELU(W_1 h), hidden 4 n_embd

Positions are rotary (RoPE, Su et al. 2021: q and k of each head are rotated by an angle
proportional to their position, so q_i . k_j depends on i - j only) or a learned table added to
the token embedding. The output layer is tied to the token embedding (one matrix, so
`state_dict` holds it once). Init (GPT-2): weights N(0, 0.02), the residual output projections
N(0, 0.02 / sqrt(2 n_layer)), zero biases.

A `KVCache` holds the keys and values of the positions seen so far: `forward(idx, cache)`
processes only the new positions of idx and attends to the cached ones, so generating one
more token costs one position, not the whole prefix. Positions in the cache are 0, 1, ...;
the window of a cache holds at most block_size positions (the caller starts a new cache to
slide the window). Nets know nothing of losses: the family computes cross-entropy.

`causal=False` drops the mask: every position attends to every other (a bidirectional encoder,
as masked-token models need). It has no cache (the keys of earlier positions would change with
later tokens), and the same parameters, so its state_dict keys are the causal network's.
`forward(idx, at=mask)` (bidirectional only) returns the logits at the True positions of the
(B, T) bool `mask` only, (number of True, vocab) in row-major order: the last block computes
queries, its MLP and the output layer only there (keys and values still come from every
position), which a masked-token model needs at its masked positions only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Positions = Literal["rope", "learned"]
POSITIONS = ("rope", "learned")
INIT_STD = 0.02
ROPE_BASE = 10_000.0


# -- the maths, as pure functions ----------------------------------------------------------------
def rope_tables(length: int, head_dim: int, base: float = ROPE_BASE) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles theta_{p,i} = p * base^(-2i / head_dim), in float64.

    Returns two (length, head_dim / 2) tensors for positions p = 0..length-1; `forward` uses
    them as one complex64 table exp(i theta) (`apply_rope`).
    """
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    freqs = base ** (-2.0 * i / head_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * freqs[None, :]
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: Tensor, rotation: Tensor) -> Tensor:
    """Rotate each pair (x_{2i}, x_{2i+1}) of x, read as the complex number x_{2i} + i x_{2i+1},
    by multiplying it with rotation = exp(i theta):

        (a, b) -> (a cos theta - b sin theta, a sin theta + b cos theta)

    Shapes: x (..., T, d), rotation (T, d / 2) complex64  ->  (..., T, d), in x's dtype.
    """
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()  # bf16: in float32
    pairs = torch.view_as_complex(work.unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)


def causal_attention(
    q: Tensor, k: Tensor, v: Tensor, past: int = 0, dropout_p: float = 0.0, causal: bool = True
) -> Tensor:
    """softmax(q k^T / sqrt(d) + M) v, where query i (absolute position past + i) sees keys
    0..past + i only (M = -inf elsewhere); causal=False: every key (M = 0, no cache).

    Shapes: q (B, nh, T, d), k and v (B, nh, past + T, d)  ->  (B, nh, T, d).
    """
    T, S = q.shape[-2], k.shape[-2]
    if past + T != S:
        raise ValueError(f"k has {S} positions, expected past + T = {past} + {T}")
    if not causal:
        if past:
            raise ValueError("bidirectional attention takes no cached positions")
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if T == 1:  # one new query sees every key
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=past)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


# -- the key/value cache -------------------------------------------------------------------------
@dataclass
class KVCache:
    """Keys and values of the positions processed so far, per layer.

    Attributes:
        keys, values: (n_layer, B, n_head, capacity, head_dim) buffers; positions
            0..length-1 are filled (keys after the rotary rotation).
        length: number of filled positions.
    """

    keys: Tensor
    values: Tensor
    length: int = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]


# -- blocks --------------------------------------------------------------------------------------
def dropout_layer(p: float) -> nn.Module:
    """nn.Dropout(p), or nn.Identity when p = 0 (one call less per position at generation)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (causal=False: bidirectional); rotary positions when
    given rope tables.

    Shapes: x (B, T, C)  ->  (B, T, C). With a cache of `length` filled positions, x holds the
    T new positions, written to the cache at length..length+T-1 (for `layer`).
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, causal: bool = True):
        super().__init__()
        self.n_head, self.head_dim, self.causal = n_head, n_embd // n_head, causal
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = dropout
        self.resid_dropout = dropout_layer(dropout)

    def heads(self, x: Tensor, rope: Tensor | None, past: int = 0) -> tuple[Tensor, ...]:
        """q, k, v (B, nh, T, d) each of x (B, T, C) at positions past..past+T-1, q and k
        rotated when given rope tables."""
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is None:
            return qkv.unbind(0)
        q, k = apply_rope(qkv[:2], rope[past : past + T]).unbind(0)  # rotated together
        return q, k, qkv[2]

    def forward(
        self,
        x: Tensor,
        rope: Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        B, T, C = x.shape
        past = 0 if cache is None else cache.length
        q, k, v = self.heads(x, rope, past)
        if cache is not None:
            cache.keys[layer, :, :, past : past + T] = k
            cache.values[layer, :, :, past : past + T] = v
            k = cache.keys[layer, :, :, : past + T]
            v = cache.values[layer, :, :, : past + T]
        p = self.dropout if self.training else 0.0
        y = causal_attention(q, k, v, past=past, dropout_p=p, causal=self.causal)  # (B, nh, T, d)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.proj(y))


class FeedForward(nn.Module):
    """W_2 GELU(W_1 x), hidden width 4 n_embd, then dropout: (B, T, C) -> (B, T, C)."""

    def __init__(self, n_embd: int, dropout: float, bias: bool):
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = dropout_layer(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm decoder block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, causal: bool = True):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias, causal)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = FeedForward(n_embd, dropout, bias)

    def forward(self, x: Tensor, rope: Tensor | None, cache: KVCache | None, layer: int) -> Tensor:
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        return x + self.mlp(self.ln_2(x))

    def forward_at(self, x: Tensor, rope: Tensor | None, at: Tensor) -> Tensor:
        """The block's output at the positions `at` only (bidirectional, no cache): keys and
        values from every position, queries, projection and MLP at `at`.

        Shapes: x (B, T, C), at (B, T) bool  ->  (number of True in at, C), row-major.
        """
        a, (B, T, C) = self.attn, x.shape
        q, k, v = a.heads(self.ln_1(x), rope)  # (B, nh, T, d)
        width = int(at.sum(-1).max()) if at.numel() else 0  # queries per row, padded
        if width == 0:
            return x.new_zeros((0, C))
        pos = torch.where(at, torch.arange(T, device=x.device), T).sort(-1).values[:, :width]
        keep, pos = pos < T, pos.clamp(max=T - 1)  # (B, width)
        q = q.gather(2, pos[:, None, :, None].expand(B, a.n_head, width, a.head_dim))
        p = a.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, width, C)
        h = x.gather(1, pos[..., None].expand(B, width, C)) + a.resid_dropout(a.proj(y))
        return (h + self.mlp(self.ln_2(h)))[keep]


# -- the network ---------------------------------------------------------------------------------
def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class Transformer(nn.Module):
    """Decoder-only transformer: token ids in, next-token logits out (see the module docstring).

    Args:
        vocab_size: number of token ids V.
        block_size: the most positions one forward pass (or one cache) holds.
        n_layer, n_head, n_embd: depth, heads and width (n_embd divisible by n_head; the head
            size even for rotary positions).
        dropout: on the embeddings, attention weights and residual branches (training only).
        positions: "rope" (rotary) or "learned" (a table of block_size vectors).
        bias: biases in the Linear layers and LayerNorms.
        causal: each position sees the earlier ones only (a decoder, the default); False:
            every position sees every other (bidirectional; no cache).

    Shapes:
        idx: (B, T) long in [0, V), T <= block_size - cache.length  ->  logits (B, T, V) float.
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        positions: Positions = "rope",
        bias: bool = False,
        causal: bool = True,
    ):
        super().__init__()
        sizes = {"vocab_size": vocab_size, "block_size": block_size, "n_layer": n_layer,
                 "n_head": n_head, "n_embd": n_embd}  # fmt: skip
        for name, value in sizes.items():
            _check_int(name, value, 1)
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if positions == "rope" and (n_embd // n_head) % 2:
            raise ValueError(
                f"rotary positions need an even head size; n_embd / n_head = {n_embd // n_head}"
            )
        if not (isinstance(dropout, int | float) and 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be True or False, got {causal!r}")
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.positions, self.causal = positions, causal

        self.wte = nn.Embedding(vocab_size, n_embd)  # also the output layer (tied)
        self.wpe = nn.Embedding(block_size, n_embd) if positions == "learned" else None
        self.drop = dropout_layer(dropout)
        self.blocks = nn.ModuleList(
            Block(n_embd, n_head, dropout, bias, causal) for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        if positions == "rope":
            cos, sin = rope_tables(block_size, n_embd // n_head)
            rotation = torch.complex(cos, sin).to(torch.complex64)  # (block_size, d / 2)
            self.register_buffer("rope", rotation, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) weights and embeddings, zero biases, and N(0, 0.02/sqrt(2L))
        for the two residual output projections of every block."""
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=INIT_STD)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, std=INIT_STD / math.sqrt(2 * self.n_layer))

    def new_cache(self, batch: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for `batch` sequences of up to block_size positions."""
        shape = (self.n_layer, batch, self.n_head, self.block_size, self.n_embd // self.n_head)
        w = self.wte.weight
        dtype = dtype or w.dtype
        return KVCache(torch.zeros(shape, dtype=dtype, device=w.device),
                       torch.zeros(shape, dtype=dtype, device=w.device))  # fmt: skip

    def forward(
        self, idx: Tensor, cache: KVCache | None = None, at: Tensor | None = None
    ) -> Tensor:
        if not isinstance(idx, Tensor) or idx.ndim != 2:
            shape = tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__
            raise ValueError(f"idx must be a (B, T) tensor of token ids, got {shape}")
        if idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise TypeError(f"idx must hold integer token ids, got dtype {idx.dtype}")
        if cache is not None and not self.causal:
            raise ValueError("a bidirectional transformer (causal=False) has no cache")
        past = 0 if cache is None else cache.length
        T = idx.shape[1]
        if past + T > self.block_size:
            raise ValueError(
                f"{past} cached + {T} new positions exceed block_size {self.block_size}; "
                "crop the context or start a new cache"
            )
        h = self.wte(idx)
        if self.wpe is not None:
            h = h + self.wpe(torch.arange(past, past + T, device=idx.device))
        h = self.drop(h)
        rope = self.rope if self.positions == "rope" else None
        if at is not None:  # logits at some positions only: the last block computes just them
            if self.causal or tuple(at.shape) != tuple(idx.shape) or at.dtype != torch.bool:
                raise ValueError("at= takes a (B, T) bool tensor, bidirectional nets only")
            for block in self.blocks[:-1]:
                h = block(h, rope, None, 0)
            return F.linear(self.ln_f(self.blocks[-1].forward_at(h, rope, at)), self.wte.weight)
        for layer, block in enumerate(self.blocks):
            h = block(h, rope, cache, layer)
        if cache is not None:
            cache.length = past + T
        return F.linear(self.ln_f(h), self.wte.weight)

    def extra_repr(self) -> str:
        causal = "" if self.causal else ", causal=False"
        return f"block_size={self.block_size}, positions={self.positions!r}{causal}"
