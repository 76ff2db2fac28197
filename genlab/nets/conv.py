"""Convolutional encoder and decoder for square images of a fixed size (VAE-style nets).

Both halve / double the spatial size once per entry of `channels` with 3x3 kernels:

    encoder  size s -> ceil(s / 2)            (Conv2d, stride 2, padding 1)
    decoder  size ceil(s / 2) -> s exactly    (ConvTranspose2d, stride 2, padding 1,
                                               output_padding = 1 if s is even else 0)

so 28 -> 14 -> 7 and back, 8 -> 4 -> 2 and back, and odd sizes (e.g. 5 -> 3 -> 2) round-trip
too. A label y, when the net has `n_classes`, enters once, before the first nonlinearity, as
a learned bias (`LabelEmbedding`); y=None means the null label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from genlab.nets.embeddings import LabelEmbedding, check_labels, init_weights, null_labels


def halved_sizes(image_size: int, n: int) -> list[int]:
    """[image_size, ceil(image_size/2), ...], n + 1 entries: the sizes after each stride-2 conv."""
    sizes = [image_size]
    for _ in range(n):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def _check_args(image_size: int, channels: Sequence[int], **sizes: int) -> tuple[int, ...]:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4:
        raise ValueError(f"image_size must be an integer >= 4, got {image_size!r}")
    channels = tuple(channels)
    if not channels or any(
        isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels
    ):
        raise ValueError(f"channels must be a non-empty sequence of integers >= 1, got {channels}")
    return channels


def _label(
    y: Tensor | None, batch: int, embed: LabelEmbedding | None, net: str, device: torch.device
) -> Tensor | None:
    """The label embedding (B, dim) of y (null when y is None); None for an unconditional net."""
    check_labels(y, batch, None if embed is None else embed.n_classes, net)
    if embed is None:
        return None
    return embed(null_labels(batch, embed.n_classes, device) if y is None else y)


class ConvEncoder(nn.Module):
    """Strided 3x3 convolutions with SiLU, then one Linear to `out_dim` (no final activation).

        x (B, C, s, s) -> [Conv s2 -> SiLU] x len(channels) -> flatten -> Linear -> (B, out_dim)

    With `n_classes`, LabelEmbedding(y) (size channels[0]) is added per channel after the
    first convolution. Init: LeCun-normal weights, zero biases.

    Args:
        in_channels: C of the input images.
        image_size: s (>= 4); the input must be exactly (s, s).
        out_dim: output size (e.g. 2 * latent_dim for a Gaussian posterior).
        channels: output channels of each stride-2 convolution.
        n_classes: number of classes for a label-conditioned encoder, else None.

    Shapes:
        x: (B, in_channels, image_size, image_size), y: (B,) long or None  ->  (B, out_dim).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        out_dim: int,
        channels: Sequence[int] = (32, 64),
        n_classes: int | None = None,
    ):
        super().__init__()
        channels = _check_args(image_size, channels, in_channels=in_channels, out_dim=out_dim)
        self.in_channels, self.image_size, self.out_dim = in_channels, image_size, out_dim
        self.channels, self.n_classes = channels, n_classes
        ins = (in_channels, *channels[:-1])
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(ins, channels, strict=True)
        )
        self.final_size = halved_sizes(image_size, len(channels))[-1]
        self.linear = nn.Linear(channels[-1] * self.final_size**2, out_dim)
        self.label_embed = LabelEmbedding(n_classes, channels[0]) if n_classes is not None else None
        init_weights(self)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        s, c = self.image_size, self.in_channels
        if x.ndim != 4 or x.shape[1:] != (c, s, s):
            raise ValueError(f"x must have shape (B, {c}, {s}, {s}), got {tuple(x.shape)}")
        label = _label(y, x.shape[0], self.label_embed, "this ConvEncoder", x.device)
        h = x
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i == 0 and label is not None:
                h = h + label[:, :, None, None]
            h = nn.functional.silu(h)
        return self.linear(h.flatten(1))


class ConvDecoder(nn.Module):
    """One Linear to a small feature map, then stride-2 transposed convolutions to the image.

        z (B, in_dim) -> Linear -> (B, channels[0], s_0, s_0)
          -> [SiLU -> ConvT s2] x len(channels) -> (B, out_channels, image_size, image_size)

    where s_0 is image_size halved (rounding up) len(channels) times; the last transposed
    convolution maps to `out_channels` and its output is raw (logits or means: no final
    activation). With `n_classes`, LabelEmbedding(y) of size channels[0] * s_0^2 is added to
    the Linear's output, which is the same as concatenating one_hot(y) to z. Init: LeCun-normal
    weights, zero biases.

    Args:
        in_dim: size of z.
        out_channels: channels of the output image.
        image_size: side of the output image (>= 4).
        channels: channels of the feature maps, from the smallest map up.
        n_classes: number of classes for a label-conditioned decoder, else None.

    Shapes:
        z: (B, in_dim), y: (B,) long or None  ->  (B, out_channels, image_size, image_size).
    """

    def __init__(
        self,
        in_dim: int,
        out_channels: int,
        image_size: int,
        channels: Sequence[int] = (64, 32),
        n_classes: int | None = None,
    ):
        super().__init__()
        channels = _check_args(image_size, channels, in_dim=in_dim, out_channels=out_channels)
        self.in_dim, self.out_channels, self.image_size = in_dim, out_channels, image_size
        self.channels, self.n_classes = channels, n_classes
        sizes = halved_sizes(image_size, len(channels))[::-1]  # smallest first
        self.start_size = sizes[0]
        self.linear = nn.Linear(in_dim, channels[0] * self.start_size**2)
        outs = (*channels[1:], out_channels)
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=(big + 1) % 2)
            for a, b, big in zip(channels, outs, sizes[1:], strict=True)
        )
        self.label_embed = (
            LabelEmbedding(n_classes, channels[0] * self.start_size**2)
            if n_classes is not None
            else None
        )
        init_weights(self)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.in_dim:
            raise ValueError(f"z must have shape (B, {self.in_dim}), got {tuple(z.shape)}")
        h = self.linear(z)
        label = _label(y, z.shape[0], self.label_embed, "this ConvDecoder", z.device)
        if label is not None:
            h = h + label
        h = h.view(z.shape[0], self.channels[0], self.start_size, self.start_size)
        for deconv in self.deconvs:
            h = deconv(nn.functional.silu(h))
        return h
