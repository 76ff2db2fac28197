"""Networks: tensor in, tensor out. `forward(x, t=None, y=None)`; no losses, no time sampling.

Time t is a float in [0, 1] of shape (B,) (or a scalar, broadcast); labels y are (B,) long in
[0, n_classes], where n_classes is the null label of classifier-free guidance. Every net
initialises itself; see each class for shapes.
"""

from genlab.nets.conv import ConvDecoder, ConvEncoder
from genlab.nets.embeddings import LabelEmbedding, SinusoidalEmbedding, count_parameters
from genlab.nets.mlp import MLP
from genlab.nets.transformer import KVCache, Transformer
from genlab.nets.unet import UNet

__all__ = [
    "MLP",
    "ConvDecoder",
    "ConvEncoder",
    "KVCache",
    "LabelEmbedding",
    "SinusoidalEmbedding",
    "Transformer",
    "UNet",
    "count_parameters",
]
