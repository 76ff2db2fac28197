"""Masked (absorbing-state) discrete diffusion over token sequences: text, or images as pixels.

    x_t: each token of x_0 kept with probability alpha(t), else [MASK]          (t in [0, 1])
    log p(x_0) >= -int_0^1 w(t) E[ sum_{i masked} -log p_theta(x_0^i | x_t) ] dt     (nats)

with w(t) = -alpha'(t) / (1 - alpha(t)) (linear schedule alpha = 1 - t: w = 1 / t), the
continuous-time ELBO of MDLM (Sahoo et al. 2024). p_theta is a softmax over the real tokens (no
mass on [MASK]) from a bidirectional `genlab.nets.Transformer` (causal=False) that reads the
vocabulary plus one [MASK] token and no time (MDLM's SUBS parameterisation: the revealed tokens
are carried over, so the network needs only x_t). Training minimises the bound per token (nats),
t stratified over the batch; `log_prob` is the bound (`log_prob_kind = "bound"`), estimated
over mask sets with a fixed seed, and `log_prob_stderr_` is its Monte-Carlo standard error
(`masked_diffusion_maths`: the estimator and why its variance is bounded).

Sequences have block_size tokens. Text: trained on random windows of block_size tokens of the
corpus (tokenisers as in the autoregressive family: char with `<unk>`, byte, BPE). A text is
scored in consecutive chunks of block_size tokens, each on its own (log p >= the sum of the
chunks' bounds, as MDLM evaluates); a sequence shorter than block_size (a short text, the last
chunk, or a sample with fewer tokens) is the first tokens of a window whose other positions
stay [MASK] and are never revealed, in `log_prob` and in `sample` alike. Images: the row
[start] + pixels of `ImageTokenizer` (start = the class label of a conditional model, or a
begin token), the start token never masked; a conditional model also learns p(x) with the
start token masked (class_dropout), which gives classifier-free guidance.

Sampling starts from masks and runs `steps` steps down the time grid t = 1, 1 - 1/steps, .., 0:
ancestrally (each masked token revealed with probability (alpha(s) - alpha(t)) / (1 - alpha(t))
from t to s, drawn from p_theta; revealed tokens stay) or by confidence (MaskGIT: the tokens
drawn with the highest probability are revealed, as many as the schedule says). The last step
reveals every free token. Fixed tokens (a prompt, an infill template's) are never changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genlab import sampling, train
from genlab.data.dataset import Dataset
from genlab.data.tokenizers import (
    TOKENIZERS,
    ImageTokenizer,
    Tokenizer,
    TokenizerName,
    requantise,
    tokenizer_from_json,
    train_tokenizer,
)
from genlab.models import limits
from genlab.models import masked_diffusion_maths as mdm
from genlab.models.autoregressive_maths import (
    MAX_LAYERS,
    TEXT_BLOCK_SIZE,
    _check_width,
    check_fitted_facts,
    check_sampling,
    check_tokenizer,
    default_size,
    draw_categorical,
    filter_logits,
)
from genlab.models.base import NeuralModel, TrainingData, as_data, as_labels, check_finite
from genlab.models.masked_diffusion_maths import ScheduleName
from genlab.nets.transformer import POSITIONS, Positions, Transformer
from genlab.options import Choice, Flag, Integer, Real, option

EVAL_TOKENS = 1 << 15  # positions per forward pass when scoring
Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")


# -- config ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskedDiffusionConfig(train.TrainConfig):
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
        None, "Tokens per sequence (None: 64 for text, 1 + the pixels of an image).",
        Integer(2, optional=True),
    )  # fmt: skip
    dropout: float = option(0.0, "Dropout rate (training only).", Real(0, 1, high_open=True))
    positions: Positions = option(
        "rope", "rope (rotary) or learned position embeddings.", Choice(POSITIONS)
    )
    bias: bool = option(False, "Biases in the Linear layers and LayerNorms.", Flag())
    levels: int | None = option(
        None, "Images: grey levels (None: the data's; 2 binarises).", Integer(2, optional=True)
    )
    schedule: ScheduleName = option(
        "linear", "Masking schedule alpha(t): linear (1 - t) or cosine (cos(pi t / 2)).",
        Choice(tuple(mdm.SCHEDULES)),
    )  # fmt: skip
    stratified: bool = option(
        True, "Training: stratified (low-discrepancy) times t over the batch.", Flag()
    )
    class_dropout: float = option(
        0.1, "Conditional images: fraction of rows trained without their label (guidance).",
        Real(0, 1, high_open=True),
    )  # fmt: skip
    sample_steps: int = option(
        64, "Sampling steps when sample() is given none.", Integer(1, limits.MAX_STEPS)
    )
    log_prob_samples: int = option(
        16, "Monte-Carlo draws of mask sets per sequence in log_prob (the bound).",
        Integer(1, limits.MAX_STEPS),
    )  # fmt: skip
    batch_size: int = option(32, "Sequences per step (the global batch).", Integer(1))
    lr: float = option(2e-3, "Peak learning rate (AdamW).", Real(0, low_open=True))

    def __post_init__(self):
        super().__post_init__()
        _check_width(self.n_embd, self.n_head)


class MaskedSamples(NamedTuple):
    """What `sample(..., return_trajectory=True)` returns.

    Attributes:
        samples: what `sample` returns otherwise (strings, or (n, *event_shape) images).
        tokens: (steps + 1, n, L) long token rows after each step (the first: all free
            positions masked), [MASK] being `mask_id`.
        mask_id: the id of [MASK].
        frames: the rows as text (a masked position shown as the placeholder) or as images
            (masked pixels NaN): steps + 1 lists of n strings, or (steps + 1, n, *event_shape).
    """

    samples: Any
    tokens: Tensor
    mask_id: int
    frames: Any


# -- the model ------------------------------------------------------------------------------------
class MaskedDiffusion(NeuralModel, family="masked_diffusion"):
    """A bidirectional transformer that unmasks text or pixel tokens in any order; `log_prob`
    is the continuous-time ELBO, a lower bound (module docstring).

    Args:
        tokenizer, vocab_size: text tokeniser (as the autoregressive family's).
        n_layer, n_head, n_embd, dropout, positions, bias: the transformer (n_layer, n_embd
            None: `default_size`; the values used are `n_layer_`, `n_embd_`).
        block_size: tokens per sequence (None: 64 for text; 1 + the pixels for images).
        levels: images: grey levels (None: the data's).
        schedule: the masking schedule alpha(t), "linear" or "cosine" (the bound is the same
            integral for both: only training's time weighting and the sampler's pace differ).
        stratified: training times stratified over the batch.
        class_dropout: conditional images: the fraction of rows trained with the label masked.
        sample_steps: the default number of sampling steps.
        log_prob_samples: Monte-Carlo draws per sequence in `log_prob`.
        device: "cuda", "cpu" or None (cuda when present).
        **train_options: the fields of `genlab.train.TrainConfig` (max_steps, max_time,
            batch_size (default 32), lr (default 2e-3), ...).
    """

    log_prob_kind = "bound"
    log_prob_space = "discrete"
    config_class = MaskedDiffusionConfig
    fitted_facts = ("kind", "block_size", "n_layer", "n_embd")
    positional: ClassVar[tuple[str, ...]] = ("tokenizer",)
    sample_options: ClassVar[frozenset[str]] = frozenset(
        {"steps", "temperature", "top_k", "top_p", "confidence", "prompt", "infill",
         "placeholder", "max_new_tokens", "y", "guidance", "precision"}
    )  # fmt: skip
    log_prob_options: ClassVar[frozenset[str]] = frozenset({"samples", "seed", "given", "steps"})
    example_data: ClassVar[str] = "digits"
    data_kinds = frozenset({"text", "image"})
    #: the Monte-Carlo standard error (nats) of each row of the last `log_prob`
    log_prob_stderr_: Tensor | None = None

    # -- building ---------------------------------------------------------------------------------
    def _build(self, event_shape: tuple[int, ...], fitted: dict[str, Any]) -> None:
        cfg = self.config
        check_fitted_facts(cfg, event_shape, fitted)
        self.kind_: Literal["text", "image"] = fitted["kind"]
        self.tokenizer_: Tokenizer = tokenizer_from_json(fitted["tokenizer"])
        self.block_size_ = int(fitted["block_size"])
        self.n_layer_ = int(fitted.get("n_layer") or cfg.n_layer)
        self.n_embd_ = int(fitted.get("n_embd") or cfg.n_embd)
        check_tokenizer(self.tokenizer_, self.kind_, event_shape, self.block_size_)
        if self.kind_ == "image" and self.block_size_ != self.tokenizer_.length:
            raise ValueError(
                f"fitted.block_size {self.block_size_} must be the {self.tokenizer_.length} "
                "tokens of an image row ([start] + pixels)"
            )
        #: [MASK] is the id after the tokeniser's; predicted tokens: text ones, or pixel levels
        self.mask_id_ = self.tokenizer_.vocab_size
        self.n_out_ = self.tokenizer_.levels if self.kind_ == "image" else self.mask_id_
        self.net = limits.build_within_memory(
            lambda: Transformer(self.mask_id_ + 1, self.block_size_, self.n_layer_, cfg.n_head,
                                self.n_embd_, cfg.dropout, cfg.positions, cfg.bias, causal=False),
            "the transformer", "use a smaller n_embd, n_layer or block_size (or fewer levels)",
        )  # fmt: skip
        if self.conditional:
            self.register_buffer("class_prior", torch.zeros(self.tokenizer_.n_classes))
        self.to(self.device_)

    def _fitted_meta(self) -> dict[str, Any]:
        return super()._fitted_meta() | {"tokenizer": self.tokenizer_.to_json()}

    @property
    def is_text(self) -> bool:
        return self.is_fitted and self.kind_ == "text"

    @property
    def conditional(self) -> bool:
        tok = getattr(self, "tokenizer_", None)
        return tok is not None and tok.kind == "image" and tok.n_classes is not None

    # -- training ---------------------------------------------------------------------------------
    @classmethod
    def unsupported(cls, data: TrainingData) -> str | None:
        """Text and quantised images (values in [0, 1]) only."""
        if data.kind == "text" or data.levels is not None:
            return None
        x = data.x
        if isinstance(x, Tensor) and not bool((x >= 0).all() and (x <= 1).all()):
            return (
                "the masked_diffusion family models text and quantised images (pixels k / "
                f"(levels - 1) in [0, 1]), not the continuous {data.kind}; use another family"
            )
        return None

    def _setup(self, data: TrainingData) -> tuple[Tensor, None]:
        """Text: train the tokeniser and return every window of block_size tokens; images:
        quantise, set p(y), return the (n, 1 + D) rows [start] + pixels."""
        n_layer, n_embd = default_size(data.kind, data.dim)
        size = {"n_layer": self.config.n_layer or n_layer, "n_embd": self.config.n_embd or n_embd}
        _check_width(size["n_embd"], self.config.n_head)
        cfg = self.config
        if data.kind == "text":
            tokenizer = train_tokenizer(cfg.tokenizer, data.text, cfg.vocab_size, unknown=True)
            tokens = torch.tensor(tokenizer.encode(data.text), dtype=torch.long)
            block = cfg.block_size or TEXT_BLOCK_SIZE
            if len(tokens) < block + 1:
                raise ValueError(f"the text has {len(tokens)} tokens, too few for windows of "
                                 f"block_size = {block}; use a longer text or a smaller "
                                 "block_size")  # fmt: skip
            fitted = {"kind": "text", "tokenizer": tokenizer.to_json(), "block_size": block}
            self._build((), fitted | size)
            self.event_shape = ()
            return tokens.unfold(0, block, 1), None  # a view: every window
        levels = cfg.levels or data.levels
        if levels is None:
            raise ValueError("the images' grey levels are unknown: pass levels= (e.g. 17 for "
                             "digits), or a Dataset that carries them")  # fmt: skip
        x = data.rows()
        x = requantise(x, levels) if cfg.levels is not None else x
        tokenizer = ImageTokenizer(levels, data.event_shape, data.n_classes)
        if cfg.block_size not in (None, tokenizer.length):
            raise ValueError(
                f"block_size={cfg.block_size}: an image row has {tokenizer.length} tokens "
                f"([start] + pixels); use block_size={tokenizer.length} (or None)"
            )
        fitted = {"kind": "image", "tokenizer": tokenizer.to_json(),
                  "block_size": tokenizer.length}  # fmt: skip
        self._build(data.event_shape, fitted | size)
        self.event_shape = data.event_shape
        if data.n_classes is not None:
            counts = torch.bincount(data.y.long(), minlength=data.n_classes).double()
            self.class_prior.copy_(counts / counts.sum())
        return tokenizer.encode(x, data.y), None

    def _holdout(self, data: TrainingData, fraction: float):
        """Text: the last `fraction` of the characters (windows of one corpus overlap, so a
        random hold-out would leak), when it holds 4 windows; images: the trainer's rows."""
        if data.kind != "text":
            return None
        held = round(len(data.text) * fraction)
        if held < 4 * (self.config.block_size or TEXT_BLOCK_SIZE):
            return None
        cut = len(data.text) - held
        return data._replace(text=data.text[:cut]), data._replace(text=data.text[cut:])

    def _val_rows(self, data: TrainingData) -> tuple[Tensor, None]:
        if data.kind == "text":
            tokens = torch.tensor(self.tokenizer_.encode(data.text), dtype=torch.long)
            if len(tokens) < self.block_size_:
                raise ValueError(f"the validation text has {len(tokens)} tokens, fewer than "
                                 f"block_size = {self.block_size_}")  # fmt: skip
            return tokens.unfold(0, self.block_size_, 1), None
        x = data.rows()
        if self.config.levels is not None:
            x = requantise(x, self.tokenizer_.levels)
        return self.tokenizer_.encode(x, data.y), None

    def _free(self, rows: Tensor) -> Tensor:
        """(n, L) bool: the positions the diffusion masks (all but an image's start token)."""
        free = torch.ones_like(rows, dtype=torch.bool)
        if self.kind_ == "image":
            free[:, 0] = False
        return free

    def loss(self, batch: tuple[Tensor, ...], step: int) -> dict[str, Tensor]:
        """The ELBO's t-form per token (nats): mean over rows of
        w(t) * sum_{i masked} -log p_theta(x_0^i | x_t) / (free tokens), t stratified."""
        rows = batch[0].long()
        b, device, cfg = len(rows), rows.device, self.config
        free = self._free(rows)
        t = mdm.draw_times(b, None, cfg.stratified).to(device)
        rate = 1.0 - mdm.alpha(t, cfg.schedule)
        masked = (torch.rand(rows.shape, device=device) < rate[:, None]) & free
        x_t = rows.masked_fill(masked, self.mask_id_)
        if self.conditional and cfg.class_dropout > 0:
            drop = torch.rand(b, device=device) < cfg.class_dropout
            x_t[:, 0] = torch.where(drop, self.mask_id_, x_t[:, 0])
        logits = self.net(x_t, at=masked)[:, : self.n_out_].float()  # (number masked, V)
        ce = torch.zeros(rows.shape, device=device)
        ce[masked] = F.cross_entropy(logits, rows[masked], reduction="none")
        per_row = mdm.elbo_weight(t, cfg.schedule) * ce.sum(-1) / free.sum(-1)
        return {"loss": per_row.mean()}

    # -- the bound --------------------------------------------------------------------------------
    @torch.no_grad()
    def token_bound(
        self, rows: Tensor, free: Tensor, samples: int, generator: torch.Generator,
        steps: int | None = None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Monte-Carlo estimate of the ELBO of the free tokens of each row given the others
        (a position that is neither free nor a token, [MASK], stays masked throughout):

            log p(x_free | x_fixed) >= -m E_k E_{|M| = k} [CE(M) / k]

        (`masked_diffusion_maths`; steps=T: the bound of T ancestral steps instead,
        `draw_step_masks`). Returns (bound, stderr): (n,) float64 nats, the mean of
        `samples` stratified draws and its standard error (the draws' std / sqrt(samples); 0
        where m <= 1, whose bound is exact: -log p_theta(x_i | the rest)).

        Shapes: rows (n, L) long, free (n, L) bool, L <= block_size.
        """
        self.eval()
        n, length = rows.shape
        per_pass = max(1, EVAL_TOKENS // length)
        if n > per_pass:
            pairs = zip(rows.split(per_pass), free.split(per_pass), strict=True)
            parts = [self.token_bound(r, f, samples, generator, steps) for r, f in pairs]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        rows, free = rows.to(self.device), free.to(self.device)
        m = free.sum(-1).double()
        draws = torch.empty(samples, n, dtype=torch.float64, device=self.device)
        for j in range(samples):
            if steps is None:
                masked, k = mdm.draw_masks(free.cpu(), j, samples, generator)
                coef = torch.where(k > 0, m.cpu() / k.clamp(min=1).double(), 0.0)
            else:
                masked, coef = mdm.draw_step_masks(free.cpu(), j, samples, steps,
                                                   self.config.schedule, generator)  # fmt: skip
            masked, coef = masked.to(self.device), coef.to(self.device)
            x_t = rows.masked_fill(masked, self.mask_id_)
            logits = self.net(x_t, at=masked)[:, : self.n_out_].float()  # (number masked, V)
            limits.check_outputs(logits, "the transformer's logits")
            lp = torch.log_softmax(logits, -1).gather(-1, rows[masked][:, None])[:, 0]
            ce = torch.zeros(masked.shape, dtype=torch.float64, device=self.device)
            ce[masked] = -lp.double()
            ce = ce.sum(-1)
            draws[j] = -coef * ce
        stderr = draws.std(0) / math.sqrt(samples) if samples > 1 else torch.zeros_like(m)
        exact = (m <= 1) if steps is None else (m == 0)
        return draws.mean(0), torch.where(exact, 0.0, stderr).nan_to_num()

    def log_prob(
        self, x: Any, y: Any = None, *, samples: int | None = None, seed: int = 0,
        given: Tensor | None = None, steps: int | None = None,
    ) -> Tensor:  # fmt: skip
        """A lower bound on log p(x) (the ELBO, nats): (n,); `log_prob_stderr_` holds each
        row's Monte-Carlo standard error.

        Text: a str, a list of str, a text Dataset (its whole text) or (n, T) token ids; cut
        into chunks of block_size tokens scored on their own, a shorter chunk padded with
        [MASK]s never revealed (module docstring); unseen characters are the unknown token.
        Images: (n, *event_shape) in [0, 1] on the grid; y labels of a conditional model
        (None: log sum_y p(y) exp(bound_y), a bound on log p(x)).

        Args:
            samples: mask-set draws per sequence (None: config.log_prob_samples).
            seed: of the draws (the same seed: the same bound, on any device).
            given: (n, T) bool for token ids (or (n, *event_shape) for images): positions
                conditioned on, never masked: the bound is then on log p(x_free | x_given)
                (with one free token, exactly its conditional log-probability).
            steps: None: the continuous-time bound; T: the bound of the distribution that
                `sample(steps=T)` draws by ancestral unmasking (looser; equal as T -> oo).

        Raises:
            ValueError: bad inputs (off-grid pixels, ids out of range, a `given` of another
                shape, sequences longer than block_size with `given`), NaN scores.
        """
        self.check_is_fitted()
        samples = self.config.log_prob_samples if samples is None else samples
        samples = limits.check_steps(samples, "samples")  # each draw: one forward pass
        g = sampling.resolve_generator(seed, None)
        steps = None if steps is None else limits.check_steps(steps)
        if self.kind_ == "text":
            if y is not None:
                raise ValueError("text models take no labels y")
            bound, stderr = self._text_bound(x, given, samples, g, steps)
        else:
            bound, stderr = self._image_bound(x, y, given, samples, seed, steps)
        self.log_prob_stderr_ = stderr.float().cpu()
        return limits.log_prob_result(bound).cpu()

    def _text_bound(self, x: Any, given: Any, samples: int, g, steps) -> tuple[Tensor, Tensor]:
        seqs = self._token_seqs(x)
        self.unknown_chars_ = sum(int((s == self.tokenizer_.unk_id).sum()) for s in seqs)
        L = self.block_size_
        if given is not None:
            if not (isinstance(x, Tensor) and x.shape[1] <= L):
                raise ValueError(f"given= takes (n, T) token ids with T <= block_size = {L}")
            given = self._check_given(given, x.shape)
        bound, stderr, owner, sizes = self._chunk_bounds(seqs, given, samples, g, steps)
        self.chunk_bounds_, self.chunk_sizes_ = bound.cpu(), sizes  # for evaluate_text
        total = torch.zeros(len(seqs), dtype=torch.float64, device=bound.device)
        var = torch.zeros_like(total)
        return total.index_add_(0, owner, bound), var.index_add_(0, owner, stderr**2).sqrt()

    def _chunk_bounds(
        self, seqs: list[Tensor], given: Tensor | None, samples: int, g, steps
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The bound and stderr (nats) of each chunk of block_size tokens of each sequence, the
        sequence it belongs to and its number of tokens: four (chunks,) tensors."""
        L = self.block_size_
        rows, free, owner, sizes = [], [], [], []
        for i, s in enumerate(seqs):
            for c in range(0, len(s), L):
                chunk = s[c : c + L]
                row = torch.full((L,), self.mask_id_, dtype=torch.long)
                row[: len(chunk)] = chunk
                f = torch.zeros(L, dtype=torch.bool)
                f[: len(chunk)] = True if given is None else ~given[i, c : c + L]
                rows.append(row), free.append(f), owner.append(i), sizes.append(len(chunk))
        bound, stderr = self.token_bound(torch.stack(rows), torch.stack(free), samples, g,
                                         steps)  # fmt: skip
        return bound, stderr, torch.tensor(owner, device=bound.device), torch.tensor(sizes)

    def _check_given(self, given: Any, shape: tuple[int, ...]) -> Tensor:
        given = torch.as_tensor(given)
        if given.dtype != torch.bool or tuple(given.shape) != tuple(shape):
            raise ValueError(f"given must be a bool tensor of shape {tuple(shape)}, got "
                             f"{given.dtype} {tuple(given.shape)}")  # fmt: skip
        return given.cpu()

    def _token_seqs(self, x: Any) -> list[Tensor]:
        """Text input as a list of (T_i,) long token tensors."""
        if isinstance(x, Dataset):
            x = x.text
        if isinstance(x, str):
            x = [x]
        if isinstance(x, Tensor):
            if x.ndim != 2 or x.dtype.is_floating_point or x.shape[1] == 0:
                raise ValueError(f"token ids must be an (n, T) integer tensor, got {x.shape}")
            if len(x) and (int(x.min()) < 0 or int(x.max()) >= self.n_out_):
                raise ValueError(f"token ids must lie in [0, {self.n_out_})")
            return list(x.long().cpu())
        if not isinstance(x, Sequence) or not all(isinstance(s, str) for s in x):
            raise TypeError("a text model's log_prob takes a str, a list of str or token ids")
        if any(not s for s in x):
            raise ValueError("cannot score an empty string")
        return [torch.tensor(self.tokenizer_.encode(s), dtype=torch.long) for s in x]

    def _image_bound(self, x: Any, y: Any, given: Any, samples: int, seed: int, steps):
        x = x.x if isinstance(x, Dataset) else x
        x, _, _ = as_data(x)
        self.check_event_shape(x)
        x = (x if isinstance(x, Tensor) else x[:]).float()
        check_finite(x)
        if self.config.levels is not None:
            x = requantise(x, self.config.levels)
        pixels = self.tokenizer_.pixels_to_tokens(x)
        n, tok = len(pixels), self.tokenizer_
        free = torch.ones(n, tok.length, dtype=torch.bool)
        free[:, 0] = False
        if given is not None:
            free[:, 1:] = ~self._check_given(given, x.shape).reshape(n, -1)

        def bound(labels: Tensor | None) -> tuple[Tensor, Tensor]:
            rows = torch.cat([tok.start_tokens(n, labels)[:, None], pixels], dim=1)
            g = sampling.resolve_generator(seed, None)  # each class: the same mask draws
            return self.token_bound(rows, free, samples, g, steps)

        if y is not None or not self.conditional:
            return bound(None if y is None else self._labels(y, n))
        per_class = [bound(torch.full((n,), c)) for c in range(tok.n_classes)]
        log_joint = (
            torch.stack([b for b, _ in per_class]) + self.class_prior.double().log()[:, None]
        )
        weights = torch.softmax(log_joint, 0)  # the delta method for the stderr of logsumexp
        stderr = (weights**2 * torch.stack([s for _, s in per_class]) ** 2).sum(0).sqrt()
        return torch.logsumexp(log_joint, 0), stderr

    def _labels(self, y: Any, n: int) -> Tensor:
        if not self.conditional:
            raise ValueError("this model was fitted without labels, so it takes no y")
        return as_labels(y, n, self.tokenizer_.n_classes)

    def evaluate_text(
        self, text: str | Dataset, samples: int | None = None, steps: int | None = None
    ) -> dict[str, float]:
        """Scores of a text under a text model, on the autoregressive family's scale.

        Returns:
            loss: -bound / characters (nats/char, an upper bound on the NLL), bits_per_char
            = loss / ln 2 and its Monte-Carlo standard error bits_per_char_stderr,
            nats_per_token, n_chars, n_tokens, window_loss (the bound per token of the full
            chunks of block_size tokens), log_prob_samples and unknown_chars.
        """
        self.check_is_fitted()
        if not self.is_text:
            raise ValueError("evaluate_text needs a text model")
        text = text.text if isinstance(text, Dataset) else text
        bound = float(self.log_prob(text, samples=samples, steps=steps).double().sum())
        stderr = float(self.log_prob_stderr_.double().sum())
        chunks, sizes = self.chunk_bounds_, self.chunk_sizes_
        n_tokens, full = int(sizes.sum()), sizes == self.block_size_
        window = -float(chunks[full].sum()) / int(sizes[full].sum()) if full.any() else math.nan
        nats = -bound / len(text)
        return {"loss": nats, "bits_per_char": nats / math.log(2),
                "bits_per_char_stderr": stderr / len(text) / math.log(2),
                "nats_per_token": -bound / n_tokens, "n_chars": len(text), "n_tokens": n_tokens,
                "window_loss": window, "log_prob_samples": samples or self.config.log_prob_samples,
                "unknown_chars": self.unknown_chars_}  # fmt: skip

    def score_rows(self, data: Dataset, limit: int = 1000) -> tuple[str, float]:
        """The mean bound (nats) of up to `limit` training images; text: the bound of the first
        limit * block_size characters, per character."""
        if self.is_text:
            text = data.text[: limit * self.block_size_]
            part = "" if len(text) == len(data.text) else f" (first {len(text)} characters)"
            per_char = float(self.log_prob(text).double().sum()) / len(text)
            return f"train log-likelihood bound per character{part}", per_char
        x = data.x[:limit]
        y = data.y[: len(x)] if self.conditional and data.y is not None else None
        part = "" if len(x) == len(data) else f" (first {len(x)})"
        return f"train log-likelihood bound{part}", float(self.log_prob(x, y).double().mean())

    def fit_summary(self) -> dict[str, Any]:
        return super().fit_summary() | {
            "vocabulary": self.tokenizer_.vocab_size, "sequence length": self.block_size_,
            "transformer": f"{self.n_layer_} bidirectional blocks, {self.n_embd_} wide",
        }  # fmt: skip

    # -- sampling ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def unmask(
        self, rows: Tensor, free: Tensor, steps: int, g: torch.Generator, *,
        temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
        confidence: bool = False, guidance: float = 0.0, precision: Precision = "float32",
        trajectory: list | None = None,
    ) -> Tensor:  # fmt: skip
        """Run the sampler from t = 1 to 0 on rows (n, L) whose free positions are [MASK]:
        returns (n, L) rows with every free position revealed (module docstring). Other
        positions, tokens or [MASK]s, never change.

        Ancestral: each free position's reveal step is drawn up front (`mdm.reveal_steps`, the
        law of the step-by-step coin flips), so a step runs the network only on the rows that
        reveal a token in it, and normalises the logits only at those tokens; a row's input
        changes only when it reveals, so nothing is recomputed (MDLM's caching, per row).
        Confidence: the rows that still have tokens to reveal. Sets `nfe_`: forward passes
        (of a sub-batch; at most one per step, two with guidance)."""
        self.eval()
        rows, free = rows.to(self.device).clone(), free.to(self.device)
        free = free & (rows == self.mask_id_)
        schedule, self.nfe_ = self.config.schedule, 0
        total = free.sum(-1)
        when = None if confidence else mdm.reveal_steps(free, steps, schedule, g)
        if trajectory is not None:
            trajectory.append(rows.to("cpu", copy=True))
        for j, s in enumerate(mdm.time_grid(steps)[1:]):
            if confidence:  # as many as the schedule says, per row
                count = free.sum(-1) - mdm.masked_after(total, s, schedule).to(self.device)
                active = count > 0
            else:
                reveal = when == j
                active = reveal.any(-1)
            idx = active.nonzero()[:, 0]
            if len(idx):
                sub = rows[idx]
                at = free[idx] if confidence else reveal[idx]  # the positions to draw
                lp = filter_logits(self._log_probs(sub, at, guidance, precision), temperature,
                                   top_k, top_p)  # fmt: skip
                drawn = draw_categorical(lp.exp(), g)
                if confidence:
                    conf = torch.full(sub.shape, -math.inf, device=self.device)
                    conf[at] = lp.gather(-1, drawn[:, None])[:, 0]
                    at = mdm.most_confident(conf, at, count[idx])
                    drawn = torch.zeros_like(sub).masked_scatter_(free[idx], drawn)[at]
                sub[at] = drawn
                rows[idx] = sub
                free[idx] &= ~at
            if trajectory is not None:
                trajectory.append(rows.to("cpu", copy=True))
        return rows.cpu()

    def _log_probs(self, rows: Tensor, at: Tensor, guidance: float, precision: Precision) -> Tensor:
        """log p_theta(x^i | rows) over the real tokens at the positions `at` (k, L) bool:
        (number of positions, V) float32 (guided when asked; the network in `precision`)."""
        lp = self._position_log_probs(rows, at, precision)
        limits.check_outputs(lp.nan_to_num(neginf=0.0), "the transformer's logits")
        if guidance == 0 or not self.conditional:
            return lp
        uncond = rows.clone()
        uncond[:, 0] = self.mask_id_
        return mdm.guided_log_probs(lp, self._position_log_probs(uncond, at, precision), guidance)

    def _position_log_probs(self, rows: Tensor, at: Tensor, precision: Precision) -> Tensor:
        bf16 = precision == "bfloat16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = self.net(rows, at=at)
        self.nfe_ += 1
        return torch.log_softmax(logits[:, : self.n_out_].float(), -1)

    def sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        confidence: bool = False,
        prompt: str | None = None,
        infill: str | None = None,
        placeholder: str = "_",
        max_new_tokens: int | None = None,
        y: Any = None,
        guidance: float = 0.0,
        precision: Precision = "float32",
        return_trajectory: bool = False,
    ) -> Any:
        """Draw n samples by unmasking (a pure function of the model, n, the options and seed).

        Text models: n strings. Without prompt or infill: block_size tokens (max_new_tokens:
        fewer). prompt: a prefix kept exactly, then max_new_tokens (default: up to
        block_size) free tokens. infill: a template in which each `placeholder` character
        ("_" by default) is one free token and every other character is kept exactly, e.g.
        "ROMEO:____ love ____" (at most block_size tokens; not with prompt). Image models:
        (n, *event_shape) float32 images in [0, 1]; y (an int or (n,) labels) for a
        conditional model (None: drawn from the training frequencies) and guidance w >= 0
        (classifier-free: (1 + w) log p(x | y) - w log p(x)).

        Args:
            steps: sampler steps (None: config.sample_steps); each costs at most one forward
                pass (two with guidance).
            temperature, top_k, top_p: shape each token's distribution (`filter_logits`).
            confidence: reveal the most confident draws (MaskGIT), as many per step as the
                schedule says, instead of ancestral sampling (MDLM).
            precision: the network's arithmetic while sampling: "float32", or "bfloat16"
                (autocast: about 2x faster on CPUs with AVX-512 BF16 / AMX and on GPUs; the
                logits are normalised in float32, each token's probabilities rounded to
                ~3 significant digits).
            seed, generator: seed=s is generator=torch.Generator().manual_seed(s); every draw
                comes from it (the global RNG is never used).
            return_trajectory: return `MaskedSamples` (the samples and every step's rows).

        Raises:
            ValueError: steps < 1, a prompt or template longer than block_size, characters
                outside a char vocabulary in a prompt or template, prompt with infill, text
                options for images, bad sampling options.
        """
        self.check_is_fitted()
        n = self.check_sample_size(n)
        steps = limits.check_steps(self.config.sample_steps if steps is None else steps)
        check_sampling(temperature, top_k, top_p)
        limits.check_flag(confidence, "confidence")
        limits.check_flag(return_trajectory, "return_trajectory")
        if not (isinstance(guidance, int | float) and math.isfinite(guidance) and guidance >= 0):
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        g = sampling.resolve_generator(seed, generator)
        if self.kind_ == "text":
            if y is not None or guidance:
                raise ValueError("text models take no labels y or guidance")
            template = self._text_template(prompt, infill, placeholder, max_new_tokens)
            rows, free = self._template_rows(template, n)
        else:
            if prompt is not None or infill is not None or max_new_tokens is not None:
                raise ValueError("image models take no prompt, infill or max_new_tokens")
            labels = None if y is None else self._labels(y, n)
            if labels is None and self.conditional:
                labels = sampling.categorical(self.class_prior.cpu(), max(n, 1), g)[:n]
            rows = torch.full((n, self.block_size_), self.mask_id_, dtype=torch.long)
            rows[:, 0] = self.tokenizer_.start_tokens(n, labels)
            free = self._free(rows)
        path: list | None = [] if return_trajectory else None
        out = self.unmask(rows, free, steps, g, temperature=temperature, top_k=top_k,
                          top_p=top_p, confidence=confidence, guidance=float(guidance),
                          precision=precision, trajectory=path)  # fmt: skip
        length = len(template) if self.is_text else None
        samples = self._decode(out, placeholder, length)
        if not return_trajectory:
            return samples
        tokens = torch.stack(path)
        frames = [self._decode(r, placeholder, length) for r in tokens] if self.is_text else None
        if not self.is_text:
            pixels = tokens[..., 1:].float()
            frames = (pixels / (self.tokenizer_.levels - 1)).masked_fill(
                pixels == self.mask_id_, math.nan
            )
            frames = frames.reshape(len(tokens), n, *self.event_shape)
        return MaskedSamples(samples, tokens, self.mask_id_, frames)

    def _decode(self, rows: Tensor, placeholder: str, length: int | None = None) -> Any:
        """Images: (n, *event_shape); text: the first `length` tokens of each row as a string,
        each [MASK] shown as the placeholder (runs of tokens decoded together, so multi-byte
        characters survive)."""
        if not self.is_text:
            return self.tokenizer_.decode(rows[:, 1:])
        out = []
        for row in rows[:, :length].tolist():
            pieces, run = [], []
            for tok in [*row, self.mask_id_]:
                if tok == self.mask_id_:
                    pieces += [self.tokenizer_.decode(run), placeholder]
                    run = []
                else:
                    run.append(tok)
            out.append("".join(pieces[:-1]))
        return out

    def _text_template(
        self, prompt: str | None, infill: str | None, placeholder: str, max_new: int | None
    ) -> list[int | None]:
        """The tokens of one text sample: fixed ids, None for free positions."""
        L = self.block_size_
        if prompt is not None and infill is not None:
            raise ValueError("pass prompt (a prefix) or infill (a template), not both")
        if infill is not None:
            if max_new is not None:
                raise ValueError("infill fixes the length; it takes no max_new_tokens")
            template = mdm.parse_infill(infill, placeholder, self.tokenizer_.encode)
            self._check_known(template, infill, "infill template")
            if len(template) > L:
                raise ValueError(f"the infill template has {len(template)} tokens, more than "
                                 f"block_size = {L}; shorten it")  # fmt: skip
            return template
        ids = self.tokenizer_.encode(prompt) if prompt else []
        self._check_known(ids, prompt, "prompt")
        if len(ids) > L:
            raise ValueError(f"the prompt has {len(ids)} tokens, more than block_size = {L}; "
                             "shorten it")  # fmt: skip
        new = L - len(ids) if max_new is None else max_new
        if isinstance(new, bool) or not isinstance(new, int | np.integer) or new < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {new!r}")
        if len(ids) + new > L:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens ({new}) exceed "
                             f"block_size = {L}")  # fmt: skip
        return [*ids, *([None] * int(new))]

    def _check_known(self, ids: list[int | None], text: str | None, what: str) -> None:
        unk = self.tokenizer_.unk_id
        if unk is not None and unk in ids:
            known = set(self.tokenizer_.chars)
            bad = next(c for c in text if c not in known)
            raise ValueError(
                f"character {bad!r} (U+{ord(bad):04X}) of the {what} is not in this model's "
                "vocabulary (the characters of its training text), and fixed tokens are kept "
                "as given; remove it, or train with tokenizer='byte' or 'bpe'"
            )

    def _template_rows(self, template: list[int | None], n: int) -> tuple[Tensor, Tensor]:
        """(n, L) rows: the fixed ids, [MASK] elsewhere; free: the template's None positions."""
        rows = torch.full((n, self.block_size_), self.mask_id_, dtype=torch.long)
        free = torch.zeros(n, self.block_size_, dtype=torch.bool)
        for i, tok in enumerate(template):
            if tok is None:
                free[:, i] = True
            else:
                rows[:, i] = tok
        return rows, free

    def generate(
        self, prompt: str = "", *, seed: int | None = None, **options: Any
    ) -> Iterator[str]:
        """The text of one `sample(1, prompt=prompt, seed=seed, **options)` after the prompt,
        in one piece (every token is revealed only at the end: nothing to stream)."""
        (text,) = self.sample(1, seed=seed, prompt=prompt or None, **options)
        yield text[len(prompt) :] if text.startswith(prompt) else text
