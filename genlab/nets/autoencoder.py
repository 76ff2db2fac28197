"""Encoder and decoder nets of an autoencoder with a latent of any shape: tensor in, tensor out.

Images (square, C x s x s) go through residual convolutions that halve the side once between
consecutive entries of `channels` (a stride-2 3x3 convolution) and grow it back in the decoder
(nearest-neighbour upsampling to the exact size, then a 3x3 convolution):

    encoder  (B, C, s, s) -> stem -> [ResBlock x blocks, Down] ... -> (B, out_channels, h, h)
    decoder  (B, in_channels, h, h) -> stem -> [ResBlock x blocks, Up] ... -> (B, C_out, s, s)

with h = s halved (rounding up) len(channels) - 1 times (`latent_side`): 28 -> 14 -> 7, 8 -> 4
-> 2. Vectors go through `VectorNet`: the residual `MLP` of `genlab.nets.mlp`, or, with depth
0, a single Linear map (which can represent the identity). The nets know nothing of
likelihoods, KL terms or quantisation; the family reads their outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from genlab.nets.conv import halved_sizes
from genlab.nets.embeddings import init_weights, zero_module
from genlab.nets.mlp import MLP
from genlab.nets.unet import group_norm


def latent_side(image_size: int, levels: int) -> int:
    """The side of the latent map of a `levels`-level conv encoder: image_size halved
    (rounding up) levels - 1 times."""
    return halved_sizes(image_size, levels - 1)[-1]


def _check_channels(channels: Sequence[int]) -> tuple[int, ...]:
    channels = tuple(channels)
    if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1
                           for c in channels):  # fmt: skip
        raise ValueError(f"channels must be a non-empty sequence of integers >= 1, got {channels}")
    return channels


def _check_sizes(**sizes: int) -> None:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


class ResBlock(nn.Module):
    """h + Conv(SiLU(GN(Conv(SiLU(GN(h)))))), channels unchanged; the second conv starts at
    zero, so a block starts as the identity. (B, c, s, s) -> (B, c, s, s)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.norm2 = group_norm(channels), group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        u = self.conv1(F.silu(self.norm1(h)))
        return h + self.conv2(F.silu(self.norm2(u)))


class LatentConvEncoder(nn.Module):
    """Residual conv encoder: (B, in_channels, s, s) -> (B, out_channels, h, h), raw outputs.

    Args:
        in_channels: C of the images.
        image_size: s (the images are s x s).
        out_channels: channels of the latent map (e.g. 2 x latent channels for a Gaussian
            posterior's mean and log-variance).
        channels: width of each resolution level, from the image's up; the side halves
            between consecutive levels (len(channels) - 1 times).
        blocks: residual blocks per level (0: the level is a plain convolution path).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64),
        blocks: int = 1,
    ):
        super().__init__()
        channels = _check_channels(channels)
        _check_sizes(in_channels=in_channels, image_size=image_size, out_channels=out_channels)
        self.in_channels, self.image_size, self.out_channels = in_channels, image_size, out_channels
        self.latent_size = latent_side(image_size, len(channels))
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, c in enumerate(channels):
            layers += [ResBlock(c) for _ in range(blocks)]
            if i + 1 < len(channels):
                layers.append(nn.Conv2d(c, channels[i + 1], 3, stride=2, padding=1))
        self.body = nn.Sequential(*layers)
        self.norm = group_norm(channels[-1])
        self.out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)
        init_weights(self)
        for m in self.body.modules():
            if isinstance(m, ResBlock):
                zero_module(m.conv2)

    def forward(self, x: Tensor) -> Tensor:
        s, c = self.image_size, self.in_channels
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"x must have shape (B, {c}, {s}, {s}), got {tuple(x.shape)}")
        return self.out(F.silu(self.norm(self.body(self.stem(x)))))


class _Up(nn.Module):
    """Nearest-neighbour upsampling to `size` x `size`, then a 3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int, size: int):
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(F.interpolate(h, size=(self.size, self.size), mode="nearest"))


class LatentConvDecoder(nn.Module):
    """Residual conv decoder: (B, in_channels, h, h) -> (B, out_channels, s, s), raw outputs.

    The mirror of `LatentConvEncoder` with the same `channels` (given from the image's level
    up, as the encoder's): h = `latent_side(image_size, len(channels))`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: int,
        channels: Sequence[int] = (32, 64),
        blocks: int = 1,
    ):
        super().__init__()
        channels = _check_channels(channels)
        _check_sizes(in_channels=in_channels, image_size=image_size, out_channels=out_channels)
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        sizes = halved_sizes(image_size, len(channels) - 1)  # the image's side first
        self.latent_size = sizes[-1]
        self.stem = nn.Conv2d(in_channels, channels[-1], 3, padding=1)
        layers: list[nn.Module] = []
        for i in reversed(range(len(channels))):
            layers += [ResBlock(channels[i]) for _ in range(blocks)]
            if i > 0:
                layers.append(_Up(channels[i], channels[i - 1], sizes[i - 1]))
        self.body = nn.Sequential(*layers)
        self.norm = group_norm(channels[0])
        self.out = nn.Conv2d(channels[0], out_channels, 3, padding=1)
        init_weights(self)
        for m in self.body.modules():
            if isinstance(m, ResBlock):
                zero_module(m.conv2)

    def forward(self, z: Tensor) -> Tensor:
        h, c = self.latent_size, self.in_channels
        if z.ndim != 4 or tuple(z.shape[1:]) != (c, h, h):
            raise ValueError(f"z must have shape (B, {c}, {h}, {h}), got {tuple(z.shape)}")
        return self.out(F.silu(self.norm(self.body(self.stem(z)))))


class VectorNet(nn.Module):
    """(B, in_dim) -> (B, out_dim): the residual `MLP` (depth blocks of width hidden), or with
    depth=0 one Linear map (initialised LeCun-normal; it can represent the identity)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 256, depth: int = 2):
        super().__init__()
        _check_sizes(in_dim=in_dim, out_dim=out_dim, hidden=hidden)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be an integer >= 0, got {depth!r}")
        self.in_dim, self.out_dim = in_dim, out_dim
        if depth == 0:
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
            init_weights(self.net)
        else:
            self.net = MLP(in_dim, out_dim, (hidden,) * depth)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"x must have shape (B, {self.in_dim}), got {tuple(x.shape)}")
        return self.net(x)
