"""Embeddings of time and class labels, and the helpers every net in `genlab.nets` shares.

Time t is continuous, in [0, 1]. `SinusoidalEmbedding` multiplies it by `scale` (default
`TIME_SCALE`, 1000) before taking sines and cosines, so that t in [0, 1] spans the same phases as
the integer steps 0..999 of DDPM, and the low frequencies of the bank still turn by a useful
angle. A net whose output is differentiated in t (MeanFlow's d/dt u) wants a smaller scale: the
features' t-derivatives grow with it (up to `scale` per unit t).

Labels are integers in [0, n_classes); the extra index n_classes is the *null* label that
classifier-free guidance trains on (label dropout) and samples with. Which labels to drop, and
how often, is the family's business; the embedding only reserves the row.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

TIME_SCALE = 1000.0  # t in [0, 1] is embedded as t * TIME_SCALE


class SinusoidalEmbedding(nn.Module):
    """Fixed sinusoidal features of a continuous time (Transformer / DDPM positional encoding).

    With half = dim // 2, s = TIME_SCALE * t and k = 0, ..., half - 1::

        omega_k = max_period ** (-k / half)
        emb(t) = [cos(s omega_0), ..., cos(s omega_{half-1}),
                  sin(s omega_0), ..., sin(s omega_{half-1})]        (+ one zero if dim is odd)

    with s = scale * t instead when `scale` is given. The periods run geometrically from 2 pi
    to about 2 pi max_period in units of s, so d emb / dt is at most `scale` in size. No
    parameters or buffers: the output follows t's device and dtype (computed in at least
    float32), so the nets cast t to the dtype of x first.

    Args:
        dim: output size (>= 2).
        max_period: the longest period, in units of t * scale.
        scale: the multiplier of t (default TIME_SCALE); a plain attribute, not saved in a
            state_dict (the family's config stores it).

    Shapes:
        t: (B,) float, times in [0, 1]  ->  (B, dim), in the dtype of t.
    """

    def __init__(self, dim: int, max_period: float = 10_000.0, scale: float = TIME_SCALE):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim must be an integer >= 2, got {dim!r}")
        if not max_period > 1:
            raise ValueError(f"max_period must be > 1, got {max_period!r}")
        self.dim = dim
        self.max_period = float(max_period)
        self.scale = check_time_scale(scale)

    def forward(self, t: Tensor) -> Tensor:
        if not isinstance(t, Tensor) or t.ndim != 1:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"t must be a 1-D tensor of shape (B,), got {shape}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"t must be a float tensor of times in [0, 1], got dtype {t.dtype}")
        half = self.dim // 2
        work = torch.float64 if t.dtype == torch.float64 else torch.float32  # never fp16 here
        k = torch.arange(half, device=t.device, dtype=torch.float64)
        freqs = torch.exp(-math.log(self.max_period) / half * k).to(work)  # (half,)
        args = (t.to(work) * self.scale)[:, None] * freqs[None, :]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 * half)
        if self.dim % 2:
            emb = nn.functional.pad(emb, (0, 1))
        return emb.to(t.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period:g}, scale={self.scale:g}"


def check_time_scale(scale: float) -> float:
    """scale as a float, finite and > 0 (the multiplier of t in the time features)."""
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < math.inf:
        raise ValueError(f"the time scale must be a finite number > 0 (e.g. 1000), got {scale!r}")
    return float(scale)


def set_time_scale(module: nn.Module, scale: float) -> nn.Module:
    """Give every `SinusoidalEmbedding` inside `module` the multiplier `scale` (for a net
    built without a time_scale argument, e.g. the UNet); returns module."""
    scale = check_time_scale(scale)
    for m in module.modules():
        if isinstance(m, SinusoidalEmbedding):
            m.scale = scale
    return module


def time_mlp(frequencies: int, out_dim: int, scale: float = TIME_SCALE) -> nn.Sequential:
    """t (B,) -> (B, out_dim): a sinusoidal embedding of `frequencies` features (t times
    `scale`), then Linear-SiLU-Linear (the time conditioning shared by the MLP and the UNet)."""
    return nn.Sequential(
        SinusoidalEmbedding(frequencies, scale=scale),
        nn.Linear(frequencies, out_dim),
        nn.SiLU(),
        nn.Linear(out_dim, out_dim),
    )


class LabelEmbedding(nn.Module):
    """A learned vector per class, plus one for the null label (index `n_classes`).

    Rows are initialised N(0, 1). The null row is trained like any other whenever the family
    feeds it (label dropout for classifier-free guidance); `y=None` in the nets means "all null".

    Args:
        n_classes: number of real classes (>= 1).
        dim: embedding size.

    Shapes:
        y: (B,) long, in [0, n_classes]  ->  (B, dim).
    """

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"n_classes must be an integer >= 1, got {n_classes!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        self.n_classes = n_classes
        self.dim = dim
        self.embedding = nn.Embedding(n_classes + 1, dim)
        nn.init.normal_(self.embedding.weight, std=1.0)

    @property
    def null_index(self) -> int:
        """The index of the null label (= n_classes)."""
        return self.n_classes

    def forward(self, y: Tensor) -> Tensor:
        if not isinstance(y, Tensor) or y.ndim != 1:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y must be a 1-D tensor of shape (B,), got {shape}")
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise TypeError(f"y must be an integer (long) tensor of class indices, got {y.dtype}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.n_classes):
            raise ValueError(
                f"labels must lie in [0, {self.n_classes}) or be {self.n_classes} (the null "
                f"label); got values in [{int(y.min())}, {int(y.max())}]"
            )
        return self.embedding(y.long())

    def extra_repr(self) -> str:
        return f"n_classes={self.n_classes} (+1 null), dim={self.dim}"


# ---- helpers shared by the nets ------------------------------------------------------------


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars (parameters with `requires_grad`) in `module`."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def init_weights(module: nn.Module) -> None:
    """LeCun-normal init for every Linear / Conv / ConvTranspose in `module`, zero biases.

    Weights ~ N(0, 1 / fan_in), so a layer preserves the variance of its input; the norms
    (LayerNorm / GroupNorm) start at the identity. Nets call this once, then zero the layers
    they want to start at zero, picked by reference.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            w = m.weight
            if isinstance(m, nn.ConvTranspose2d):  # weight is (in, out / groups, kh, kw)
                fan_in = w.shape[0] * w[0, 0].numel() // (m.stride[0] * m.stride[1])
            else:
                fan_in = w[0].numel()
            nn.init.normal_(w, std=1.0 / math.sqrt(max(fan_in, 1)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of `module` to zero and return it (used for residual outputs)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def time_batch(t: Tensor | float | None, x: Tensor) -> Tensor:
    """Bring `t` to shape (B,) and to the device and dtype of `x` (B = x.shape[0]).

    A float, a 0-d tensor or a (1,) tensor is broadcast over the batch.

    Raises:
        ValueError: `t` is None, or its shape is neither (), (1,) nor (B,).
        TypeError: `t` is an integer tensor (times are floats in [0, 1]).
    """
    if t is None:
        raise ValueError("t is required: pass times of shape (B,) in [0, 1]")
    if not isinstance(t, Tensor):
        t = torch.tensor(float(t))
    if not (t.dtype.is_floating_point):
        raise TypeError(
            f"t must be a float tensor of times in [0, 1], got dtype {t.dtype} "
            "(divide integer step indices by the number of steps)"
        )
    batch_size = x.shape[0]
    t = t.to(device=x.device, dtype=x.dtype if x.dtype.is_floating_point else t.dtype)
    if t.ndim == 0 or t.shape == (1,):
        return t.reshape(1).expand(batch_size)
    if t.shape != (batch_size,):
        raise ValueError(f"t must have shape () or (B,) = ({batch_size},), got {tuple(t.shape)}")
    return t


def time_columns(t: Tensor | float | None, x: Tensor, inputs: int) -> list[Tensor]:
    """The `inputs` times of a net with that many time inputs, each (B,) on x's device and
    dtype (`time_batch`).

    inputs = 1: t is (), (1,) or (B,) (`time_batch`). inputs = k >= 2: t is (B, k), one
    column per time (e.g. MeanFlow's (t, t - r)), or (k,) broadcast over the batch.

    Raises:
        ValueError: t is None or of another shape. TypeError: an integer tensor.
    """
    if inputs == 1:
        return [time_batch(t, x)]
    if not isinstance(t, Tensor) or not (
        (t.ndim == 2 and t.shape[1] == inputs) or t.shape == (inputs,)
    ):
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(
            f"this net takes {inputs} times per row: pass t of shape (B, {inputs}) (or "
            f"({inputs},) for all rows), got {got}"
        )
    return [time_batch(t[..., k], x) for k in range(inputs)]


def check_time_inputs(time_inputs: int) -> int:
    """time_inputs, an integer >= 1 (the number of times a net embeds)."""
    if isinstance(time_inputs, bool) or not isinstance(time_inputs, int) or time_inputs < 1:
        raise ValueError(f"time_inputs must be an integer >= 1, got {time_inputs!r}")
    return time_inputs


def check_labels(y: Tensor | None, batch_size: int, n_classes: int | None, net: str) -> None:
    """Raise ValueError when `y` is passed to an unconditional net or has the wrong batch."""
    if y is None:
        return
    if n_classes is None:
        raise ValueError(f"{net} was built without n_classes, so it takes no labels y")
    if isinstance(y, Tensor) and y.ndim == 1 and y.shape[0] != batch_size:
        raise ValueError(f"y must have shape (B,) = ({batch_size},), got {tuple(y.shape)}")


def null_labels(batch_size: int, n_classes: int, device: torch.device) -> Tensor:
    """(B,) long tensor filled with the null label `n_classes`."""
    return torch.full((batch_size,), n_classes, dtype=torch.long, device=device)
