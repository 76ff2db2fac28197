"""Autoregressive transformers over token sequences: text, or images as pixel sequences.

    log p(x) = log p(x_0) + sum_{t >= 1} log p(x_t | x_{s(t)}, ..., x_{t-1})          (nats)

Each conditional is a softmax over the next token from a causal `genlab.nets.Transformer`,
trained with next-token cross-entropy (nats per token).

Text: the corpus is tokenised (characters, UTF-8 bytes or byte-level BPE learned on the
training text) and the model is trained on random windows of block_size + 1 tokens, as
nanoGPT does; it is a distribution over excerpts of the corpus. The first token of an excerpt
has no context and takes the token frequencies of the training text, add-one smoothed (a
buffer); every later token is predicted by the transformer.

Unseen characters: the char vocabulary holds the training text's characters and one unknown
token `<unk>` (the last id), to which every other character maps (a held-out text, a prompt).
It never occurs in training, so the transformer learns to give it little probability, and
its first-token probability is the add-one smoothed count of zero occurrences: a text with
unseen characters has a finite log_prob, that of the text with each of them replaced by
`<unk>`, and `evaluate_text` / `unknown_chars_` report how many there were. A sample may
draw `<unk>`, which decodes as U+FFFD. Byte and BPE vocabularies encode every text (char
models saved before the unknown token existed refuse unseen characters by name).

Images: pixels k / (levels - 1) become tokens k in raster order after one start token (a
begin token, or the class label of a conditional model), so p(x_0) is the transformer's first
prediction. Only the `levels` pixel tokens are ever predicted: the softmax runs over them.

The context s(t) (`context_start`): a forward pass holds at most block_size positions. While
t <= block_size the context is the whole prefix; beyond, the window moves forward by
stride = block_size // 2 whenever it is full, so a context has between block_size - stride
and block_size tokens. `log_prob`, the evaluation of long texts (windows of block_size with
that stride), cached generation (a new cache when the window moves) and uncached generation
follow this one rule, so `log_prob` is exact for the distribution sampled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genlab import sampling, train
from genlab.data.dataset import Dataset
from genlab.data.tokenizers import (
    TOKENIZERS,
    ImageTokenizer,
    StreamDecoder,
    Tokenizer,
    TokenizerName,
    requantise,
    tokenizer_from_json,
    train_tokenizer,
)
from genlab.models import limits
from genlab.models.autoregressive_maths import (  # re-exported: the maths' home
    MAX_LAYERS,
    TEXT_BLOCK_SIZE,
    _check_width,
    check_fitted_facts,
    check_sampling,
    check_tokenizer,
    context_start,
    default_size,
    draw_categorical,
    filter_logits,
    scoring_windows,
)
from genlab.models.base import (
    NeuralModel,
    TrainingData,
    as_data,
    as_labels,
    check_finite,
    check_memory,
)
from genlab.nets.transformer import POSITIONS, Positions, Transformer
from genlab.options import Choice, Flag, Integer, Real, option

DEFAULT_NEW_TOKENS = 256  # max_new_tokens of text `sample` / `generate` when not given
EVAL_TOKENS = 1 << 16  # positions per forward pass when scoring


# -- config ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AutoregressiveConfig(train.TrainConfig):
    tokenizer: TokenizerName = option(
        "char", "Text: char, byte (UTF-8) or bpe (byte-level BPE learned on the corpus).",
        Choice(TOKENIZERS),
    )  # fmt: skip
    vocab_size: int = option(512, "BPE vocabulary size (256 bytes + merges).", Integer(257))
    n_layer: int | None = option(
        None, "Transformer blocks (None: 2 for images of <= 256 pixels, else 4).",
        Integer(1, MAX_LAYERS, optional=True),
    )  # fmt: skip
    n_head: int = option(4, "Attention heads.", Integer(1))
    n_embd: int | None = option(
        None, "Width, divisible by n_head (None: 64 for images of <= 256 pixels, else 128).",
        Integer(1, optional=True),
    )  # fmt: skip
    block_size: int | None = option(
        None, "Context window in tokens (None: 64 for text, the pixels of an image).",
        Integer(1, optional=True),
    )  # fmt: skip
    dropout: float = option(0.0, "Dropout rate (training only).", Real(0, 1, high_open=True))
    positions: Positions = option(
        "rope", "rope (rotary) or learned position embeddings.", Choice(POSITIONS)
    )
    bias: bool = option(False, "Biases in the Linear layers and LayerNorms.", Flag())
    levels: int | None = option(
        None, "Images: grey levels (None: the data's; 2 binarises).", Integer(2, optional=True)
    )
    batch_size: int = option(32, "Windows or images per step (the global batch).", Integer(1))
    lr: float = option(2e-3, "Peak learning rate (AdamW).", Real(0, low_open=True))

    def __post_init__(self):
        super().__post_init__()
        _check_width(self.n_embd, self.n_head)


def _check_int(name: str, v: Any, minimum: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")


# -- the model ------------------------------------------------------------------------------------
class Autoregressive(NeuralModel, family="autoregressive"):
    """A causal transformer over text or pixel tokens; `log_prob` is exact (module docstring).

    Args:
        tokenizer: text only: "char" (the training text's characters and an unknown token
            `<unk>` for any other), "byte" (UTF-8 bytes) or "bpe" (byte-level BPE learned on
            the training text); byte and bpe encode every text.
        vocab_size: the BPE vocabulary size (256 bytes + merges); ignored otherwise.
        n_layer, n_head, n_embd: depth, attention heads and width of the transformer
            (n_layer, n_embd None: `default_size`; the values used are `n_layer_`, `n_embd_`).
        block_size: the most tokens one forward pass sees (None: 64 for text, the number of
            pixels for images; images need at least that many).
        dropout: dropout of the transformer (training only).
        positions: "rope" (rotary) or "learned" position embeddings.
        bias: biases in the transformer's Linear layers and LayerNorms.
        levels: images: model pixels on this many grey levels (None: the data's; MNIST with
            levels=2 is binarised at 1/2).
        device: "cuda", "cpu" or None (cuda when present).
        **train_options: the fields of `genlab.train.TrainConfig` (max_steps, max_time,
            batch_size (default 32 windows), lr (default 2e-3), weight_decay, warmup_steps,
            min_lr_ratio, grad_clip, ema_decay, seed, precision, compile). Measured on the
            shared 2-core CPU at nanoGPT's CPU recipe size, the opt-in precision="bf16" and
            compile=True each cut a step by ~15-35%; compile first costs ~30 s (noisy runs).

    Text models: `sample` returns strings, `generate` streams one, `log_prob` takes strings
    (or (n, T) token ids) and `evaluate_text` reports nats and bits per character. Unseen
    characters (a held-out text's, say) are scored as `<unk>`, so their log_prob is finite,
    and counted (`evaluate_text(...)["unknown_chars"]`, `unknown_chars_`); a prompt must be
    encodable, as it is returned as given (module docstring). Image
    models: `fit(x, y)` with labels trains p(x | y), the label being the start token;
    `sample(n, y=...)` and `log_prob(x, y=...)` take labels, and without them draw or sum
    over y with the training label frequencies.
    """

    log_prob_kind = "exact"
    log_prob_space = "discrete"
    config_class = AutoregressiveConfig
    fitted_facts = ("kind", "block_size", "n_layer", "n_embd")
    positional: ClassVar[tuple[str, ...]] = ("tokenizer",)
    sample_options: ClassVar[frozenset[str]] = frozenset(
        {"prompt", "max_new_tokens", "temperature", "top_k", "top_p", "y"}
    )
    example_data: ClassVar[str] = "digits"

    # -- building ---------------------------------------------------------------------------------
    def _build(self, event_shape: tuple[int, ...], fitted: dict[str, Any]) -> None:
        """The transformer and buffers for the fitted facts, each checked (`check_fitted_facts`)."""
        cfg = self.config
        check_fitted_facts(self.config, event_shape, fitted)
        self.kind_: Literal["text", "image"] = fitted["kind"]
        self.tokenizer_: Tokenizer = tokenizer_from_json(fitted["tokenizer"])
        self.block_size_: int = int(fitted["block_size"])
        self.n_layer_ = int(fitted.get("n_layer") or cfg.n_layer)  # old folders: the config's
        self.n_embd_ = int(fitted.get("n_embd") or cfg.n_embd)
        check_tokenizer(self.tokenizer_, self.kind_, event_shape, self.block_size_)
        self.stride_ = max(1, self.block_size_ // 2)  # of the context rule (module docstring)
        vocab = self.tokenizer_.vocab_size
        #: tokens that can be predicted: the pixel tokens of an image model, all text tokens
        self.n_out_ = self.tokenizer_.levels if self.kind_ == "image" else vocab
        self.net = limits.build_within_memory(
            lambda: Transformer(vocab, self.block_size_, self.n_layer_, cfg.n_head, self.n_embd_,
                                cfg.dropout, cfg.positions, cfg.bias),
            "the transformer", "use a smaller n_embd, n_layer or block_size (or fewer levels)",
        )  # fmt: skip
        if self.kind_ == "text":
            self.register_buffer("first_token_log_probs", torch.zeros(vocab))
        elif self.tokenizer_.n_classes is not None:
            self.register_buffer("class_prior", torch.zeros(self.tokenizer_.n_classes))
        self.to(self.device_)

    def _fitted_meta(self) -> dict[str, Any]:
        return super()._fitted_meta() | {"tokenizer": self.tokenizer_.to_json()}

    @property
    def is_text(self) -> bool:
        return self.is_fitted and self.kind_ == "text"

    @property
    def conditional(self) -> bool:
        return self.is_fitted and self.kind_ == "image" and self.tokenizer_.n_classes is not None

    # -- training ---------------------------------------------------------------------------------
    data_kinds = frozenset({"text", "image"})

    @classmethod
    def unsupported(cls, data: TrainingData) -> str | None:
        """The family models text and quantised images: it refuses data without grey levels
        whose values leave [0, 1] (continuous points such as moons). Values in [0, 1] without
        levels can still be put on a grid by levels= (`_setup` asks for it)."""
        if data.kind == "text" or data.levels is not None:
            return None
        x = data.x
        if isinstance(x, Tensor) and not bool((x >= 0).all() and (x <= 1).all()):
            of = f" of {data.name!r}" if data.name else ""
            if bool((x >= 0).all() and (x == x.round()).all()):  # integer pixels, e.g. 0..255
                return (
                    f"images must be k / (levels - 1) in [0, 1]; the values{of} are integers "
                    f"in [0, {float(x.max()):g}]: divide 8-bit images (0..255) by 255"
                )
            return (
                "the autoregressive family models text and quantised images (pixel values on "
                f"a grid of levels), not the continuous {data.kind}{of}; use another family"
            )
        return None

    def _setup(self, data: TrainingData) -> tuple[Tensor, None]:
        """Tokenise the data and build the transformer. Text: train the tokeniser, set
        p(x_0), return every window of block_size + 1 tokens; images: quantise, set p(y),
        return the (n, 1 + D) token rows [start] + pixels (labels live in the start token)."""
        n_layer, n_embd = default_size(data.kind, data.dim)
        size = {"n_layer": self.config.n_layer or n_layer, "n_embd": self.config.n_embd or n_embd}
        _check_width(size["n_embd"], self.config.n_head)
        if data.kind == "text":
            return self._setup_text(data.text, size), None
        return self._setup_images(data, size), None

    def _setup_text(self, text: str, size: dict[str, int]) -> Tensor:
        cfg = self.config
        tokenizer = train_tokenizer(cfg.tokenizer, text, cfg.vocab_size, unknown=True)
        tokens = torch.tensor(tokenizer.encode(text), dtype=torch.long)
        block = cfg.block_size or TEXT_BLOCK_SIZE
        if len(tokens) < block + 2:
            raise ValueError(f"the text has {len(tokens)} tokens, too few for windows of "
                             f"block_size + 1 = {block + 1}; use a longer text or a smaller "
                             "block_size")  # fmt: skip
        fitted = {"kind": "text", "tokenizer": tokenizer.to_json(), "block_size": block, **size}
        self._build((), fitted)
        self.event_shape = ()
        counts = torch.bincount(tokens, minlength=tokenizer.vocab_size).double() + 1.0
        self.first_token_log_probs.copy_((counts / counts.sum()).log())
        return tokens.unfold(0, block + 1, 1)  # a view: every window, no copy

    def _setup_images(self, data: TrainingData, size: dict[str, int]) -> Tensor:
        levels = self.config.levels or data.levels
        if levels is None:
            raise ValueError(
                "the images' grey levels are unknown: pass levels= (e.g. 17 for digits, 256 "
                "for 8-bit images), or a Dataset that carries them"
            )
        x = data.rows()
        if self.config.levels is not None:  # requantise to the model's levels
            x = requantise(x, levels)
        tokenizer = ImageTokenizer(levels, data.event_shape, data.n_classes)
        rows = tokenizer.encode(x, data.y)
        block = self.config.block_size or tokenizer.length - 1
        if block < tokenizer.length - 1:
            raise ValueError(
                f"block_size={block} is shorter than the {tokenizer.length - 1} pixels of an "
                f"image; use block_size={tokenizer.length - 1} (or None)"
            )
        fitted = {"kind": "image", "tokenizer": tokenizer.to_json(), "block_size": block, **size}
        self._build(data.event_shape, fitted)
        self.event_shape = data.event_shape
        if data.n_classes is not None:
            counts = torch.bincount(data.y.long(), minlength=data.n_classes).double()
            self.class_prior.copy_(counts / counts.sum())
        return rows

    def _holdout(
        self, data: TrainingData, fraction: float
    ) -> tuple[TrainingData, TrainingData] | None:
        """Text: the last `fraction` of the characters is the validation text (random windows
        of one corpus overlap, so a random hold-out would leak); images, and a text whose end
        would hold fewer than 4 (block_size + 1) characters: None (the trainer's random rows:
        windows then overlap the training ones)."""
        if data.kind != "text":
            return None
        held = round(len(data.text) * fraction)
        if held < 4 * ((self.config.block_size or TEXT_BLOCK_SIZE) + 1):
            return None
        cut = len(data.text) - held
        return data._replace(text=data.text[:cut]), data._replace(text=data.text[cut:])

    def _val_rows(self, data: TrainingData) -> tuple[Tensor, None]:
        """Validation rows like `_setup`'s, with the fitted tokeniser: every window of
        block_size + 1 tokens of a text (unseen characters become `<unk>`), or the token rows
        [start] + pixels of images (requantised to the model's levels when set).

        Raises:
            ValueError: a validation text shorter than block_size + 1 tokens.
        """
        if data.kind == "text":
            tokens = torch.tensor(self.tokenizer_.encode(data.text), dtype=torch.long)
            if len(tokens) < self.block_size_ + 1:
                raise ValueError(
                    f"the validation text has {len(tokens)} tokens, too few for one window of "
                    f"block_size + 1 = {self.block_size_ + 1}; use a longer validation text"
                )
            return tokens.unfold(0, self.block_size_ + 1, 1), None
        x = data.rows()
        if self.config.levels is not None:
            x = requantise(x, self.tokenizer_.levels)
        return self.tokenizer_.encode(x, data.y), None

    def loss(self, batch: tuple[Tensor, ...], step: int) -> dict[str, Tensor]:
        """Mean next-token cross-entropy of rows (B, L): -log p(x_t | x_<t), nats per token."""
        rows = batch[0]
        logits = self.net(rows[:, :-1])[..., : self.n_out_]
        return {"loss": F.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten())}

    # -- exact log-probabilities ------------------------------------------------------------------
    @torch.no_grad()
    def token_log_probs(self, tokens: Tensor) -> Tensor:
        """log p(x_t | x_{s(t)}, ..., x_{t-1}) for t = 1..T-1 of token rows (n, T): (n, T-1) nats.

        The rows are scored in the windows of `scoring_windows` (a batch of windows of equal
        size per forward pass, about EVAL_TOKENS positions each).
        """
        self.check_is_fitted()
        self.eval()
        tokens = tokens.to(self.device, torch.long)
        n, length = tokens.shape
        rows_per_pass = max(1, EVAL_TOKENS // min(length, self.block_size_ + 1))
        if n > rows_per_pass:  # bounded memory: a few rows at a time
            return torch.cat([self.token_log_probs(part) for part in tokens.split(rows_per_pass)])
        out = torch.empty(n, max(length - 1, 0), device=self.device)
        windows = scoring_windows(length, self.block_size_, self.stride_) if length > 1 else []
        by_size: dict[int, list[tuple[int, int]]] = {}
        for start, size, skip in windows:
            by_size.setdefault(size, []).append((start, skip))
        for size, group in by_size.items():
            per_pass = max(1, EVAL_TOKENS // (size * n))
            for i in range(0, len(group), per_pass):
                part = group[i : i + per_pass]
                idx = torch.cat([tokens[:, s : s + size + 1] for s, _ in part])  # (w n, size+1)
                logits = self.net(idx[:, :-1])[..., : self.n_out_].float()
                lp = torch.log_softmax(logits, -1).gather(-1, idx[:, 1:, None])[..., 0]
                for j, (start, skip) in enumerate(part):
                    out[:, start + skip : start + size] = lp[j * n : (j + 1) * n, skip:]
        return out

    def log_prob(self, x: Any, y: Any = None) -> Tensor:
        """Exact log p(x), nats: (n,).

        Text models: x is a str, a list of str, a text Dataset (its whole text: n = 1) or
        (n, T) token ids; log p = log p(x_0) + sum of the next-token log-probabilities.
        Characters outside a char vocabulary are scored as the unknown token (module
        docstring); `unknown_chars_` counts them.
        Image models: a log-mass of x (n, *event_shape) in [0, 1] on the grid (levels= set: x
        rounded to it, as in fit); y labels if conditional (None: log sum_y p(y) p(x | y)).

        Raises:
            ValueError: images with values outside [0, 1] or off the grid, bad labels; NaN
                scores (`limits.log_prob_result`: the weights diverged or were edited).
        """
        self.check_is_fitted()
        if self.kind_ == "text":
            if y is not None:
                raise ValueError("text models take no labels y")
            rows = self._token_rows(x)
            self.unknown_chars_ = sum(self._unknown(t) for t in rows)
            return limits.log_prob_result(torch.cat([self._text_log_prob(t) for t in rows]))
        return limits.log_prob_result(self._image_log_prob(x, y))

    def _image_log_prob(self, x: Any, y: Any) -> Tensor:
        pixels = self._pixel_tokens(x)
        n, tok = len(pixels), self.tokenizer_

        def image_log_prob(labels: Tensor | None) -> Tensor:
            rows = torch.cat([tok.start_tokens(n, labels)[:, None], pixels], dim=1)
            return self.token_log_probs(rows).sum(-1)

        if y is not None:  # (refused by `_labels` when the model is unconditional)
            return image_log_prob(self._labels(y, n))
        if not self.conditional:
            return image_log_prob(None)
        per_class = [image_log_prob(torch.full((n,), c)) for c in range(tok.n_classes)]
        log_prior = self.class_prior.log()[:, None]
        return torch.logsumexp(torch.stack(per_class) + log_prior, dim=0)

    def _unknown(self, tokens: Tensor) -> int:
        """How many of the tokens are the unknown token (0 for a vocabulary without one)."""
        unk = self.tokenizer_.unk_id
        return 0 if unk is None else int((tokens == unk).sum())

    def _text_log_prob(self, tokens: Tensor) -> Tensor:
        first = self.first_token_log_probs[tokens[:, 0].to(self.device)]
        return first + self.token_log_probs(tokens).sum(-1)

    def _token_rows(self, x: Any) -> list[Tensor]:
        """Text input as a list of (n_i, T_i) long token tensors."""
        if isinstance(x, Dataset):
            x = x.text
        if isinstance(x, str):
            x = [x]
        if isinstance(x, Tensor):
            if x.ndim != 2 or x.dtype.is_floating_point or x.shape[1] == 0:
                raise ValueError(f"token ids must be an (n, T) integer tensor, got {x.shape}")
            if len(x) and (int(x.min()) < 0 or int(x.max()) >= self.n_out_):
                raise ValueError(f"token ids must lie in [0, {self.n_out_})")
            return [x.long()]
        if not isinstance(x, Sequence) or not all(isinstance(s, str) for s in x):
            raise TypeError("a text model's log_prob takes a str, a list of str or token ids")
        if any(not s for s in x):
            raise ValueError("cannot score an empty string")
        return [torch.tensor([self.tokenizer_.encode(s)]) for s in x]

    def _pixel_tokens(self, x: Any) -> Tensor:
        """Validated images (n, *event_shape) -> (n, D) pixel tokens."""
        x = x.x if isinstance(x, Dataset) else x
        x, _, _ = as_data(x)
        self.check_event_shape(x)
        x = (x if isinstance(x, Tensor) else x[:]).float()
        check_finite(x)
        if self.config.levels is not None:  # as in fit: on the model's grid
            x = requantise(x, self.config.levels)
        return self.tokenizer_.pixels_to_tokens(x)

    def _labels(self, y: Any, n: int) -> Tensor:
        if not self.conditional:
            raise ValueError("this model was fitted without labels, so it takes no y")
        return as_labels(y, n, self.tokenizer_.n_classes)

    def evaluate_text(self, text: str | Dataset) -> dict[str, float]:
        """Scores of a text (e.g. the validation split) under a text model.

        Returns:
            loss: -log p(text) / characters (nats/char, exact), bits_per_char = loss / ln 2,
            nats_per_token, n_chars, n_tokens, window_loss: the mean next-token loss
            (nats/token) over consecutive windows of block_size + 1 tokens, each predicted
            from its window's start only (nanoGPT's `estimate_loss`, on random windows; NaN
            for a text shorter than one window), and unknown_chars: the characters outside
            the vocabulary, scored as the unknown token (module docstring).
        """
        self.check_is_fitted()
        if not self.is_text:
            raise ValueError("evaluate_text needs a text model")
        text = text.text if isinstance(text, Dataset) else text
        (tokens,) = self._token_rows(text)
        nll = -float(limits.log_prob_result(self._text_log_prob(tokens)).double().sum())
        n_tokens, block = tokens.shape[1], self.block_size_
        cut, window = (n_tokens - 1) // block * block, math.nan
        if cut:  # rows i = tokens [i B, (i + 1) B]: B inputs and B targets, windows overlap by 1
            rows = tokens[0, : cut + 1].unfold(0, block + 1, block)
            window = -float(self.token_log_probs(rows).double().mean())
        return {"loss": nll / len(text), "bits_per_char": nll / len(text) / math.log(2),
                "nats_per_token": nll / n_tokens, "n_chars": len(text), "n_tokens": n_tokens,
                "window_loss": window, "unknown_chars": self._unknown(tokens)}  # fmt: skip

    # -- what `genlab fit` prints -----------------------------------------------------------------
    def score_rows(self, data: Dataset, limit: int = 1000) -> tuple[str, float]:
        """Images: the mean exact log-likelihood (nats) of up to `limit` training rows (with
        their labels for a conditional model). Text: log p of the first `limit` windows'
        worth of characters (limit * block_size), per character."""
        if self.is_text:
            text = data.text[: limit * self.block_size_]
            part = "" if len(text) == len(data.text) else f" (first {len(text)} characters)"
            (tokens,) = self._token_rows(text)
            per_char = float(self._text_log_prob(tokens).double().sum()) / len(text)
            return f"train log-likelihood per character{part}", per_char
        x = data.x[:limit]
        y = data.y[: len(x)] if self.conditional and data.y is not None else None
        part = "" if len(x) == len(data) else f" (first {len(x)})"
        return f"train log-likelihood{part}", float(self.log_prob(x, y).double().mean())

    def fit_summary(self) -> dict[str, Any]:
        return super().fit_summary() | {
            "vocabulary": self.tokenizer_.vocab_size, "block size": self.block_size_,
            "transformer": f"{self.n_layer_} blocks, {self.n_embd_} wide",
        }  # fmt: skip

    # -- sampling ---------------------------------------------------------------------------------
    @torch.inference_mode()  # no_grad, and less bookkeeping per op
    def _generate_tokens(
        self, context: Tensor, max_new: int, g: torch.Generator, temperature: float,
        top_k: int | None, top_p: float | None, use_cache: bool,
    ) -> Iterator[Tensor]:  # fmt: skip
        """Yield (n,) new tokens one step at a time after the (n, T0) context (T0 >= 0).

        Each token is drawn from filter_logits(logits of its context [s(t), t)). With the
        cache, only the newest position is computed per step; when s(t) moves, the cache is
        refilled with the new window. A text without context starts from p(x_0).
        """
        self.eval()
        n, t0 = context.shape
        seq = torch.empty(n, t0 + max_new, dtype=torch.long, device=self.device)
        seq[:, :t0] = context
        cache, cache_start, self.nfe_ = None, -1, 0
        for t in range(t0, t0 + max_new):
            if t == 0:
                logits = self.first_token_log_probs.expand(n, -1)
            else:
                s = context_start(t, self.block_size_, self.stride_)
                if use_cache and s != cache_start:  # a new window: a new cache, filled below
                    cache, cache_start = self.net.new_cache(n), s
                first = s + cache.length if use_cache else s  # the positions not yet computed
                logits = self.net(seq[:, first:t], cache if use_cache else None)[:, -1]
                self.nfe_ += 1
                limits.check_outputs(logits, "the transformer's logits")  # before any draw
            probs = filter_logits(logits[:, : self.n_out_], temperature, top_k, top_p).exp()
            seq[:, t] = draw_categorical(probs, g)
            yield seq[:, t]

    def sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        prompt: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        y: Any = None,
        use_cache: bool = True,
    ) -> Tensor | list[str]:
        """Draw n samples (a pure function of the model, n, the options and seed).

        Text models: n strings, each the prompt followed by max_new_tokens (default 256)
        generated tokens, decoded; without a prompt the first token is drawn from p(x_0).
        Image models: (n, *event_shape) float32 images in [0, 1]; y (an int or (n,) labels)
        for a conditional model, else labels drawn from the training frequencies.
        temperature, top_k and top_p shape each next-token distribution (`filter_logits`);
        top_k=1 is greedy decoding. use_cache=False recomputes every context in full (the same
        draws, slower: for timing). Sets `nfe_`: transformer forward passes.

        seed seeds a CPU generator (None: OS entropy); `generator` is a torch.Generator to
        draw from instead (advanced in place; not with seed): seed=s is the same as
        generator=torch.Generator().manual_seed(s). Every draw (labels, then one uniform per
        row and token) is made on the generator's device and moved to the model's, so a seed
        draws the same numbers on a CPU and on CUDA.
        """
        self.check_is_fitted()
        n = self.check_sample_size(n)
        check_sampling(temperature, top_k, top_p)
        limits.check_flag(use_cache, "use_cache")
        g = sampling.resolve_generator(seed, generator)
        options = (g, temperature, top_k, top_p, use_cache)
        if self.kind_ == "text":
            if y is not None:
                raise ValueError("text models take no labels y")
            tokens = self._draw(*self._text_context(prompt, n, max_new_tokens), options)
            return [self.tokenizer_.decode(row.tolist()) for row in tokens]
        if prompt is not None or max_new_tokens is not None:
            raise ValueError("image models take no prompt or max_new_tokens")
        labels = None if y is None else self._labels(y, n)
        if labels is None and self.conditional:  # y ~ the training label frequencies
            labels = sampling.categorical(self.class_prior, max(n, 1), g)[:n]
        context = self.tokenizer_.start_tokens(n, labels)[:, None]
        return self.tokenizer_.decode(self._draw(context, self.tokenizer_.length - 1, options))

    def _draw(self, context: Tensor, new: int, options: tuple) -> Tensor:
        """(n, T0) context -> (n, T0 + new) tokens on the CPU: `_generate_tokens` run out."""
        drawn = [t[:, None].cpu() for t in self._generate_tokens(context, new, *options)]
        return torch.cat([context.cpu(), *drawn], dim=1)

    def _text_context(self, prompt: str | None, n: int, max_new: int | None):
        max_new = DEFAULT_NEW_TOKENS if max_new is None else max_new
        _check_int("max_new_tokens", max_new, 0)
        ids = self.tokenizer_.encode(prompt) if prompt else []
        unk = self.tokenizer_.unk_id
        if unk is not None and unk in ids:  # a char vocabulary: id i is character i
            c = prompt[ids.index(unk)]
            raise ValueError(
                f"character {c!r} (U+{ord(c):04X}) at position {ids.index(unk)} of the prompt is "
                "not in this model's vocabulary (the characters of its training text), and a "
                "prompt is returned as given; remove it, or train with tokenizer='byte' or 'bpe'"
            )
        length = len(ids) + int(max_new)  # int64 tokens, on the device and gathered on the CPU
        check_memory(16.0 * n * length, f"{n:,} texts of {length:,} tokens",
                     "ask for fewer samples or a smaller max_new_tokens")  # fmt: skip
        return torch.tensor([ids] * n, dtype=torch.long).reshape(n, len(ids)), max_new

    def generate(
        self,
        prompt: str = "",
        *,
        max_new_tokens: int = DEFAULT_NEW_TOKENS,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        use_cache: bool = True,
    ) -> Iterator[str]:
        """Stream one text continuation of `prompt`: yields the new text piece by piece
        (each complete character as soon as its tokens are drawn; the prompt not repeated).

        Same distribution as `sample(1, prompt=...)` with the same seed.
        """
        self.check_is_fitted()
        if not self.is_text:
            raise ValueError("generate streams text: this is an image model; use sample")
        check_sampling(temperature, top_k, top_p)
        context, new = self._text_context(prompt, 1, max_new_tokens)
        decoder = StreamDecoder(self.tokenizer_)
        tokens = self._generate_tokens(context, new, self.generator(seed), temperature, top_k,
                                       top_p, use_cache)  # fmt: skip
        for token in tokens:
            if piece := decoder.push(token.tolist()):
                yield piece
        if tail := decoder.flush():
            yield tail
