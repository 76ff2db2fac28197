"""A residual MLP for vectors, optionally conditioned on time t and a class label y by FiLM."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from genlab.nets.embeddings import (
    TIME_SCALE,
    LabelEmbedding,
    check_labels,
    check_time_inputs,
    check_time_scale,
    init_weights,
    null_labels,
    time_columns,
    time_mlp,
)

MAX_INPUT_FREQUENCIES = 16  # 2^15 pi: beyond float32's resolution of a unit-scale input


def fourier_features(x: Tensor, octaves: int) -> Tensor:
    """[x, sin(2^k pi x), cos(2^k pi x) for k < octaves] along the last axis: (B, D) ->
    (B, D (1 + 2 octaves)); x itself for octaves = 0."""
    if octaves == 0:
        return x
    freqs = math.pi * 2.0 ** torch.arange(octaves, device=x.device, dtype=x.dtype)  # (L,)
    angles = (x[..., None] * freqs).flatten(-2)  # (B, D L)
    return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)


class FiLMBlock(nn.Module):
    """Pre-norm residual block: h + Linear(Dropout(SiLU(FiLM(LayerNorm(h), c)))).

    FiLM: u -> u * (1 + scale) + shift, with (scale, shift) = Linear(SiLU(c)). The skip is
    dropped when the width changes (in_dim != out_dim).

    Shapes:
        h: (B, in_dim), c: (B, cond_dim) or None  ->  (B, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, cond_dim: int | None, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.film = nn.Linear(cond_dim, 2 * in_dim) if cond_dim is not None else None
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)
        self.residual = in_dim == out_dim

    def forward(self, h: Tensor, c: Tensor | None = None) -> Tensor:
        u = self.norm(h)
        if self.film is not None:
            scale, shift = self.film(c).chunk(2, dim=-1)  # c is already SiLU'd: (B, in_dim) each
            u = u * (1 + scale) + shift
        u = self.linear(self.dropout(nn.functional.silu(u)))
        return h + u if self.residual else u


class MLP(nn.Module):
    """Residual MLP with LayerNorm and SiLU; time and label enter every block by FiLM.

        h_0 = Linear(x)                                          (B, hidden[0])
              or Linear([x, sin(2^k pi x), cos(2^k pi x)]_k)  with input_frequencies = L
        h_i = h_{i-1} + Linear(SiLU(FiLM(LN(h_{i-1}), c)))        one block per entry of hidden
        out = Linear(LN(h_L))                                    (B, out_dim), raw

    with c = MLP_t(SinusoidalEmbedding(t)) + LabelEmbedding(y) of size cond_dim (with
    time_inputs = k > 1 times per row, sum_j MLP_t,j(SinusoidalEmbedding(t_j)), each time
    with its own MLP: e.g. MeanFlow's (t, t - r)). Why this
    shape: the pre-norm residual form keeps gradients well scaled at any depth and lets one
    net serve both as a velocity / score / noise predictor (t, y) and as a VAE encoder or
    decoder (neither); FiLM (a per-unit scale and shift) lets t change the function, not just
    add a bias. Where consecutive widths differ, that block has no skip.

    Init: LeCun-normal weights, zero biases; residual branch outputs are scaled down by
    1/sqrt(number of blocks) (nanoGPT-style), so the stream keeps its scale at any depth.

    Args:
        in_dim, out_dim: input and output sizes.
        hidden: widths of the residual stream, one block per entry.
        time_dim: size of the sinusoidal time embedding; None for a net without t.
        n_classes: number of classes for a label-conditioned net; None for none. y=None then
            means the null label (index n_classes).
        dropout: dropout probability inside each block.
        time_inputs: times per row (1: t is (B,); k: t is (B, k)); needs time_dim. The default
            1 keeps the state_dict keys of a one-time net (the extra embeddings are
            `time_embed_extra.{j}`).
        time_scale: the multiplier of t in the sinusoidal features (`SinusoidalEmbedding`);
            the default TIME_SCALE (1000) is every saved net's.
        input_frequencies: L > 0 feeds the first layer x and its Fourier features
            sin(2^k pi x), cos(2^k pi x), k = 0..L-1, per coordinate (NeRF's positional
            encoding, Mildenhall et al. 2020; Tancik et al. 2020: an MLP on raw coordinates
            learns high frequencies slowly). 0 (the default, every saved net's): x alone.
        cond_dim: width of the conditioning vector c (time and label embeddings) that each
            block's FiLM maps to its scale and shift; None (every saved net's): hidden[0].
            Training embeds every row's own t, so the time MLP (2 cond_dim^2) and FiLM
            (2 cond_dim x width per block) cost more than the blocks' linears when cond_dim
            equals the width.

    Shapes:
        x: (B, in_dim), t: (B,) float in [0, 1] (or a scalar; (B, k) with time_inputs=k),
        y: (B,) long  ->  (B, out_dim).

    The forward pass is plain tensor maths (no data-dependent Python branches on values), so
    `torch.func.jvp` and `torch.func.vmap` go through it.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 256, 256),
        time_dim: int | None = None,
        n_classes: int | None = None,
        dropout: float = 0.0,
        time_inputs: int = 1,
        time_scale: float = TIME_SCALE,
        input_frequencies: int = 0,
        cond_dim: int | None = None,
    ):
        super().__init__()
        hidden = tuple(hidden)
        time_inputs = check_time_inputs(time_inputs)
        time_scale = check_time_scale(time_scale)
        if time_inputs > 1 and time_dim is None:
            raise ValueError(f"time_inputs={time_inputs} needs a time_dim (e.g. 64)")
        for name, v in [("in_dim", in_dim), ("out_dim", out_dim), *[("hidden", h) for h in hidden]]:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must hold integers >= 1, got {v!r}")
        if (
            isinstance(input_frequencies, bool)
            or not isinstance(input_frequencies, int)
            or not (0 <= input_frequencies <= MAX_INPUT_FREQUENCIES)
        ):
            raise ValueError(
                f"input_frequencies must be an integer in [0, {MAX_INPUT_FREQUENCIES}], "
                f"got {input_frequencies!r}"
            )
        if not hidden:
            raise ValueError("hidden must name at least one width, e.g. (256, 256, 256)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_dim, self.out_dim, self.hidden = in_dim, out_dim, hidden
        self.time_dim, self.n_classes, self.time_inputs = time_dim, n_classes, time_inputs

        cond_dim = conditioning_width(cond_dim, time_dim is not None or n_classes is not None,
                                      hidden[0])  # fmt: skip
        self.time_embed = None
        if time_dim is not None:
            self.time_embed = time_mlp(time_dim, cond_dim, time_scale)
        self.time_embed_extra = nn.ModuleList(
            time_mlp(time_dim, cond_dim, time_scale) for _ in range(time_inputs - 1)
        )
        self.label_embed = LabelEmbedding(n_classes, cond_dim) if n_classes is not None else None

        self.input_frequencies = input_frequencies
        self.input = nn.Linear(in_dim * (1 + 2 * input_frequencies), hidden[0])
        widths = (hidden[0], *hidden)
        self.blocks = nn.ModuleList(
            FiLMBlock(a, b, cond_dim, dropout) for a, b in itertools.pairwise(widths)
        )
        self.norm = nn.LayerNorm(hidden[-1])
        self.output = nn.Linear(hidden[-1], out_dim)

        init_weights(self)
        with torch.no_grad():
            for block in self.blocks:
                if block.residual:
                    block.linear.weight.mul_(len(self.blocks) ** -0.5)

    def forward(
        self, x: Tensor, t: Tensor | float | None = None, y: Tensor | None = None
    ) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"x must have shape (B, {self.in_dim}), got {tuple(x.shape)}")
        c = self._condition(x, t, y)
        h = self.input(fourier_features(x, self.input_frequencies))
        for block in self.blocks:
            h = block(h, c)
        return self.output(self.norm(h))

    def _condition(self, x: Tensor, t: Tensor | float | None, y: Tensor | None) -> Tensor | None:
        """SiLU(c) for the FiLM layers, (B, hidden[0]); None for an unconditional net."""
        batch = x.shape[0]
        if self.time_embed is None and t is not None:
            raise ValueError("this MLP was built with time_dim=None, so it takes no t")
        check_labels(y, batch, self.n_classes, "this MLP")
        c = None
        if self.time_embed is not None:
            if t is None:
                raise ValueError(f"this MLP was built with time_dim={self.time_dim}: pass t")
            columns = time_columns(t, x, self.time_inputs)
            if all(shared_time(column) for column in columns):
                columns = [column[:1] for column in columns]  # one row, broadcast below
            first, *others = columns
            c = self.time_embed(first)
            for embed, column in zip(self.time_embed_extra, others, strict=True):
                c = c + embed(column)
        if self.label_embed is not None:
            if y is None:
                y = null_labels(batch, self.n_classes, x.device)
            e = self.label_embed(y)
            c = e if c is None else c + e
        return None if c is None else nn.functional.silu(c)  # (B or 1, hidden[0])


def conditioning_width(cond_dim: int | None, conditioned: bool, width: int) -> int | None:
    """The width of c: cond_dim, or the first hidden width; None for a net without t or y."""
    if cond_dim is not None and (
        isinstance(cond_dim, bool) or not isinstance(cond_dim, int) or cond_dim < 1
    ):
        raise ValueError(f"cond_dim must be an integer >= 1 or None, got {cond_dim!r}")
    if not conditioned:
        if cond_dim is not None:
            raise ValueError(
                "cond_dim sizes the time and label conditioning, and this MLP has neither "
                "(time_dim=None, n_classes=None): drop cond_dim"
            )
        return None
    return width if cond_dim is None else cond_dim


def shared_time(t: Tensor) -> bool:
    """Whether every row of the time column t (B,) is one stored value (an expanded scalar,
    stride 0, as `time_batch` and the diffusion samplers pass it) in a no-grad forward
    outside torch.func: the time embedding and FiLM then run on one row and broadcast. At
    hidden 128 they are ~70% of a row's multiply-adds (time MLP 2 x 128^2, FiLM 3 x 128 x 256
    against 3 x 128^2); DPM-Solver++ 15 on 4,000 points took 0.12 s against 0.42 s per row
    (`benchmarks/shared_time.py`, BENCHMARKS.md). Training (grad on, one t per row) and jvp /
    vmap keep the per-row path (`is_functorch_wrapped_tensor`, torch's private test for
    torch.func's wrappers)."""
    return (
        not torch.is_grad_enabled()
        and t.ndim == 1
        and len(t) > 1
        and t.stride(0) == 0
        and not torch._C._functorch.is_functorch_wrapped_tensor(t)
    )
