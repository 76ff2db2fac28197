"""A compact UNet for square images, conditioned on time t and optionally a class label y.

    x (B, C, s, s) -> conv3x3 -> down path -> middle -> up path (with skips) -> GN, SiLU, conv3x3

Down path, per level l (channels base_channels * channel_mults[l], size s_l):
num_res_blocks ResBlocks (each followed by attention if s_l is in attention_resolutions), then
a stride-2 conv, s_{l+1} = ceil(s_l / 2), except at the last level. Middle: ResBlock,
[attention], ResBlock. Up path, mirrored: num_res_blocks + 1 ResBlocks per level, each taking
one skip by concatenation, then nearest upsampling to exactly s_{l-1} and a conv3x3. Because
upsampling goes to the stored size, odd sizes are exact: 28 -> 14 -> 7 -> 4 -> 7 -> 14 -> 28.

Conditioning: emb = MLP(SinusoidalEmbedding(t)) [+ LabelEmbedding(y)], of size
4 * base_channels; every ResBlock adds Linear(SiLU(emb)) per channel after its first conv.
y=None with n_classes set means the null label (classifier-free guidance).

Init: LeCun-normal weights, zero biases; the last conv of every ResBlock, the output
projection of every attention block and the final conv are zero, so each block starts as the
identity and the untrained UNet outputs exactly zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from genlab.nets import embeddings
from genlab.nets.conv import halved_sizes

HEAD_DIM = 32  # attention heads have 32 channels where the width allows


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the most groups that divide `channels`, at most 32, of >= 4 channels each.

    Four channels per group keep the statistics defined even on 1x1 feature maps.
    """
    most = max(1, min(32, channels // 4))
    groups = next(g for g in range(most, 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def num_heads_for(channels: int) -> int:
    """channels // HEAD_DIM heads when that divides evenly, else a single head."""
    return channels // HEAD_DIM if channels % HEAD_DIM == 0 else 1


class ResBlock(nn.Module):
    """x + conv(drop(SiLU(GN(conv(SiLU(GN(x))) + Linear(emb))))), with a 1x1 skip if widths differ.

    Shapes:
        x: (B, in_ch, H, W), emb: (B, emb_dim), already passed through SiLU  ->  (B, out_ch, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        embeddings.init_weights(self)
        embeddings.zero_module(self.conv2)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, pre-GroupNorm, residual.

        h = GN(x);  [q; k; v] = W_qkv h + b_qkv   (1x1 conv, head j = channels j*d:(j+1)*d)
        out_j = softmax(q_j^T k_j / sqrt(d)) v_j    (F.scaled_dot_product_attention)
        return x + W_proj [out_1; ...; out_nh] + b_proj

    Shapes:
        x: (B, C, H, W)  ->  (B, C, H, W); internally q, k, v are (B, nh, H*W, d), d = C / nh.
    """

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.channels, self.num_heads = channels, num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        embeddings.init_weights(self)
        embeddings.zero_module(self.proj)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        nh, d = self.num_heads, C // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(B, 3, nh, d, H * W)
        q, k, v = (a.transpose(-1, -2) for a in qkv.unbind(1))  # (B, nh, HW, d) each
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, d)
        out = out.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(out)


class Downsample(nn.Module):
    """3x3 conv with stride 2: (B, C, s, s) -> (B, C, ceil(s/2), ceil(s/2))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest upsampling to exactly (size, size), then a 3x3 conv."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, size=(self.size, self.size), mode="nearest"))


class Stage(nn.ModuleList):
    """A ResBlock followed by optional attention blocks; forward(h, emb)."""

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


class UNet(nn.Module):
    """Compact DDPM-style UNet (see the module docstring for the layout and init).

    The untrained net outputs zero: the final conv and every residual branch's output conv
    (ResBlock.conv2, AttentionBlock.proj) are zero-initialised, so each block starts as the
    identity.

    Args:
        in_channels: C of the input images.
        image_size: side s of the (square) inputs; inputs must be exactly (s, s).
        out_channels: channels of the output; None means in_channels.
        base_channels: width of the first level; the time embedding has 4 * base_channels.
        channel_mults: width multiplier per level; len(channel_mults) - 1 downsamplings.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sides at which to add self-attention, e.g. (4,)
            for 8x8 inputs with channel_mults (1, 2), or (7,) for 28x28 with (1, 2, 2).
            Each must be one of the sides reached; heads have 32 channels where possible.
        n_classes: number of classes for a label-conditioned net, else None.
        dropout: dropout inside the ResBlocks.
        time_inputs: times per row (1: t is (B,); k: t is (B, k), each time embedded by its
            own time MLP and the embeddings summed, e.g. MeanFlow's (t, t - r)). The default
            1 keeps the state_dict keys of a one-time net (extras: `time_embed_extra.{j}`).

    Shapes:
        x: (B, in_channels, s, s), t: (B,) float in [0, 1] (or a scalar; (B, k) with
        time_inputs=k), y: (B,) long or None
        ->  (B, out_channels or in_channels, s, s), raw.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (),
        n_classes: int | None = None,
        dropout: float = 0.0,
        time_inputs: int = 1,
    ):
        super().__init__()
        time_inputs = embeddings.check_time_inputs(time_inputs)
        out_channels = in_channels if out_channels is None else out_channels
        channel_mults, attention_resolutions = tuple(channel_mults), tuple(attention_resolutions)
        ints = [
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("base_channels", base_channels),
            ("num_res_blocks", num_res_blocks),
            *[("channel_mults", m) for m in channel_mults],
        ]
        for name, v in ints:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must hold integers >= 1, got {v!r}")
        if not channel_mults:
            raise ValueError("channel_mults must name at least one level, e.g. (1, 2)")
        n_levels = len(channel_mults)
        if not isinstance(image_size, int) or image_size < 2 ** (n_levels - 1):
            raise ValueError(
                f"image_size must be an integer >= 2**(len(channel_mults) - 1) = "
                f"{2 ** (n_levels - 1)}, got {image_size!r}"
            )
        sizes = halved_sizes(image_size, n_levels - 1)  # side at each level
        unreachable = [r for r in attention_resolutions if r not in sizes]
        if unreachable:
            raise ValueError(
                f"attention_resolutions {unreachable} are not among the feature-map sides "
                f"{tuple(sizes)} of a {image_size}x{image_size} input with {n_levels} levels; "
                "pick from those or change channel_mults"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        self.n_classes, self.time_inputs = n_classes, time_inputs

        emb_dim = 4 * base_channels
        self.time_embed = embeddings.time_mlp(base_channels, emb_dim)
        self.time_embed_extra = nn.ModuleList(
            embeddings.time_mlp(base_channels, emb_dim) for _ in range(time_inputs - 1)
        )
        self.label_embed = (
            embeddings.LabelEmbedding(n_classes, emb_dim) if n_classes is not None else None
        )

        def stage(in_ch: int, out_ch: int, size: int) -> Stage:
            layers = [ResBlock(in_ch, out_ch, emb_dim, dropout)]
            if size in attention_resolutions:
                layers.append(AttentionBlock(out_ch, num_heads_for(out_ch)))
            return Stage(layers)

        self.input_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        ch, skips = base_channels, [base_channels]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(stage(ch, base_channels * mult, sizes[level]))
                ch = base_channels * mult
                skips.append(ch)
            if level < n_levels - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)

        self.middle = stage(ch, ch, sizes[-1])
        self.middle.append(ResBlock(ch, ch, emb_dim, dropout))

        self.up = nn.ModuleList()
        for level in reversed(range(n_levels)):
            for _ in range(num_res_blocks + 1):
                self.up.append(
                    stage(ch + skips.pop(), base_channels * channel_mults[level], sizes[level])
                )
                ch = base_channels * channel_mults[level]
            if level > 0:
                self.up.append(Upsample(ch, sizes[level - 1]))
        assert not skips  # every skip is consumed exactly once

        self.out_norm = group_norm(ch)
        self.out_conv = nn.Conv2d(ch, out_channels, 3, padding=1)

        embeddings.init_weights(self)
        for m in self.modules():
            if isinstance(m, ResBlock | AttentionBlock):
                m.reset_parameters()
        embeddings.zero_module(self.out_conv)

    def forward(
        self, x: Tensor, t: Tensor | float | None = None, y: Tensor | None = None
    ) -> Tensor:
        s, c = self.image_size, self.in_channels
        if x.ndim != 4 or x.shape[1:] != (c, s, s):
            raise ValueError(f"x must have shape (B, {c}, {s}, {s}), got {tuple(x.shape)}")
        emb = F.silu(self.embed(x, t, y))

        h = self.input_conv(x)
        hs = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else layer(h, emb)
            hs.append(h)
        h = self.middle(h, emb)
        for layer in self.up:
            h = layer(h) if isinstance(layer, Upsample) else layer(torch.cat([h, hs.pop()], 1), emb)
        return self.out_conv(F.silu(self.out_norm(h)))

    def embed(self, x: Tensor, t: Tensor | float | None, y: Tensor | None) -> Tensor:
        """The conditioning vector (B, 4 * base_channels): time MLP(s) plus label embedding."""
        batch = x.shape[0]
        if t is None:
            raise ValueError("UNet needs t: pass times of shape (B,) in [0, 1]")
        embeddings.check_labels(y, batch, self.n_classes, "this UNet")
        first, *others = embeddings.time_columns(t, x, self.time_inputs)
        emb = self.time_embed(first)
        for embed, column in zip(self.time_embed_extra, others, strict=True):
            emb = emb + embed(column)
        if self.label_embed is not None:
            emb = emb + self.label_embed(
                embeddings.null_labels(batch, self.n_classes, x.device) if y is None else y
            )
        return emb
