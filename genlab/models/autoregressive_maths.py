"""The token families' pure functions (autoregressive; masked diffusion shares the sizes and
the sampling filters): the default sizes, the sliding-context rule of scoring and generation
beyond block_size, and the sampling filters (temperature, top-k, top-p) with a categorical
draw from a local generator; and the checks of a saved model's fitted facts.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

MAX_LAYERS = 1000  # transformer blocks (more is an error of units, not a network)
TEXT_BLOCK_SIZE = 64  # block_size=None for text (nanoGPT's CPU recipe)
SMALL_IMAGE_PIXELS = 256  # images of at most this many pixels get the small transformer


def default_size(kind: str, dim: int) -> tuple[int, int]:
    """(n_layer, n_embd) where the config leaves them None: 2 blocks 64 wide for images of at
    most `SMALL_IMAGE_PIXELS` (256) pixels (8 x 8 digits, 16 x 16), so that a budget of seconds
    trains them for hundreds of steps rather than tens; else (text, larger images) 4 blocks
    128 wide, nanoGPT's CPU recipe size."""
    return (2, 64) if kind == "image" and dim <= SMALL_IMAGE_PIXELS else (4, 128)


# -- the maths, as pure functions ----------------------------------------------------------------
def context_start(t: int, block_size: int, stride: int) -> int:
    """s(t): the first position of the context that predicts token t (t >= 1).

    0 while t <= block_size; then the window [s, t) moves by `stride` each time it would
    exceed block_size tokens: s(t) = stride * (floor((t - block_size - 1) / stride) + 1).
    """
    return 0 if t <= block_size else stride * ((t - block_size - 1) // stride + 1)


def scoring_windows(length: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """The forward passes that give every next-token log-probability of a sequence.

    Returns (start, size, skip) triples: inputs x[start : start + size] predict tokens
    start + 1 .. start + size, of which the first `skip` belong to an earlier window and the
    rest have context start s(t) = start. Together the windows score tokens 1..length-1 once.
    """
    last = length - 1  # the last target
    windows, start = [], 0
    while True:
        size = min(block_size, last - start)
        skip = 0 if start == 0 else block_size - stride
        windows.append((start, size, skip))
        if start + size >= last:
            return windows
        start += stride


def filter_logits(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """Log-probabilities of the sampling distribution: softmax(logits / temperature), keeping
    only the top_k likeliest tokens and then the smallest set whose mass reaches top_p
    (nucleus), renormalised; removed tokens get -inf.

    Shapes: logits (n, V)  ->  (n, V) float32 log-probabilities.
    """
    logits = (
        logits.float()
    )  # the largest logit subtracted first: a tiny temperature cannot overflow
    logits = (logits - logits.amax(-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the likelier tokens
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before >= top_p)
        logits = logits.masked_fill(drop, -math.inf)
    return torch.log_softmax(logits, dim=-1)


def draw_categorical(probs: Tensor, generator: torch.Generator) -> Tensor:
    """One draw per row of (unnormalised) probabilities (n, V) -> (n,): the first index whose
    cumulative mass exceeds u * total, u ~ U[0, 1) (zero mass: never drawn; one rand a row)."""
    cdf = probs.cumsum(-1)
    u = torch.rand(len(probs), 1, generator=generator, device=generator.device)  # then moved
    u = u.to(probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    finite = isinstance(temperature, int | float) and math.isfinite(temperature)
    if not (finite and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, int | float) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


# -- checks of a saved model's fitted facts ---------------------------------------------------
def _check_width(n_embd: int | None, n_head: int) -> None:
    if n_embd is not None and n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")


def check_fitted_facts(config: Any, event_shape: tuple[int, ...], fitted: dict[str, Any]) -> None:
    """The fitted facts of config.json, checked before use (an edited or truncated
    config.json is a ValueError naming the fact).

    Raises:
        ValueError: a missing fact, or one of the wrong type or value.
    """
    for name in ("kind", "tokenizer", "block_size"):
        if name not in fitted:
            raise ValueError(f"fitted.{name} is missing")
    if fitted["kind"] not in ("text", "image"):
        raise ValueError(f"fitted.kind must be 'text' or 'image', got {fitted['kind']!r}")
    for name in ("block_size", "n_layer", "n_embd"):
        value = fitted.get(name)
        value = getattr(config, name) if value is None else value  # old folders
        if name != "block_size" and value is None:
            raise ValueError(f"fitted.{name} is missing (and the config's {name} is None)")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"fitted.{name} must be an integer >= 1, got {value!r}")
        if name == "n_layer" and value > MAX_LAYERS:
            raise ValueError(f"fitted.n_layer must be at most {MAX_LAYERS}, got {value!r}")
    _check_width(fitted.get("n_embd") or config.n_embd, config.n_head)
    if (fitted["kind"] == "text") != (event_shape == ()):
        raise ValueError(
            f"fitted.event_shape {list(event_shape)} does not fit kind {fitted['kind']!r} "
            "(text models have event_shape [], image models an image's shape)"
        )


def check_tokenizer(tok: Any, kind: str, event_shape: tuple[int, ...], block_size: int) -> None:
    """The tokenizer must match the model: its kind, and for images the event shape and
    a block_size that holds every pixel."""
    if (tok.kind == "image") != (kind == "image"):
        raise ValueError(f"a {tok.kind} tokenizer cannot serve a {kind} model")
    if kind == "image":
        if tok.event_shape != event_shape:
            raise ValueError(
                f"fitted.tokenizer.event_shape {list(tok.event_shape)} differs from "
                f"fitted.event_shape {list(event_shape)}"
            )
        if block_size < tok.length - 1:
            raise ValueError(
                f"fitted.block_size {block_size} is shorter than the "
                f"{tok.length - 1} pixels of an image"
            )
