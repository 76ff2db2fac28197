"""A small classifier whose penultimate layer is a feature space for comparing image samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor, nn

from genlab.data.dataset import image_geometry
from genlab.nets.conv import ConvEncoder
from genlab.nets.mlp import MLP


class FeatureClassifier(nn.Module):
    """Images or vectors -> features -> class logits.

        x (B, *event_shape) -> body -> SiLU -> features (B, feature_dim) -> Linear -> (B, n_classes)

    The body is a `ConvEncoder` (stride-2 3x3 convolutions, then a Linear) for square images
    (`genlab.data.dataset.image_geometry`: (C, S, S), or (S, S) as one channel), else an `MLP`
    on the flattened sample. `features` returns the penultimate layer,
    the space in which Fréchet distance and k-NN precision/recall of samples are measured.

    Args:
        event_shape: shape of one sample.
        n_classes: number of classes.
        feature_dim: size of the feature layer.
        channels: channels of the convolutions (square images) or widths of the MLP.

    Shapes:
        x: (B, *event_shape) -> logits (B, n_classes); features (B, feature_dim).
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        n_classes: int,
        feature_dim: int = 128,
        channels: Sequence[int] = (32, 64),
    ):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        for name, v in (("n_classes", n_classes), ("feature_dim", feature_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.geometry = image_geometry(self.event_shape)  # (channels, side) or None
        if self.geometry is not None:
            c, side = self.geometry
            self.body: nn.Module = ConvEncoder(c, side, feature_dim, tuple(channels))
        else:
            d = int(np.prod(self.event_shape))
            self.body = MLP(d, feature_dim, hidden=tuple(4 * c for c in channels))
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: Tensor) -> Tensor:
        """The penultimate layer: (B, *event_shape) -> (B, feature_dim)."""
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"x must have shape (B, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )
        if self.geometry is None:
            return nn.functional.silu(self.body(x.reshape(len(x), -1)))
        c, side = self.geometry  # (S, S) grey images get their channel axis
        return nn.functional.silu(self.body(x.reshape(len(x), c, side, side)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, n_classes)."""
        return self.head(self.features(x))
